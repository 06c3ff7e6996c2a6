//! `/network`: the network around a flag, a record or a person, walked by
//! the application layer ([`crate::investigation`], logged as `GetNetwork`
//! is), laid out by `layout-rs` (a graphviz-style layered layout) and drawn
//! as SVG by the page's template: every node a link to its page, coloured
//! by the worst open flag of its records, with the nodes and edges again as
//! tables for those who cannot see the drawing.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use layout::core::base::Orientation;
use layout::core::format::{ClipHandle, RenderBackend};
use layout::core::geometry::Point;
use layout::core::style::StyleAttr;
use layout::std_shapes::shapes::{Arrow, Element, ShapeKind};
use layout::topo::layout::VisualGraph;
use serde::Deserialize;

use super::Console;
use super::error::PageError;
use super::session::Signed;
use super::views::{Nav, path_segment};
use crate::domain::network::{EdgeKind, Node, Party};
use crate::domain::{Severity, Violations};
use crate::investigation::NetworkView;
use crate::wire::investigation::network_request;
use crate::wire::pb;
use crate::wire::pb::get_network_request::Origin;

/// The most nodes a drawing holds: beyond this it is unreadable, and the
/// page says the walk was cut.
pub const MAX_DRAWN: usize = 150;

/// The longest label drawn; the tables below show the whole id.
const LABEL_CHARS: usize = 26;

/// Nodes up to which the layout also minimises edge crossings. Its passes
/// grow with the square of a rank's width: for a record's network cut at
/// 150 nodes (most of them records in one rank) they took 47 ms of the
/// layout's 50, for 64 nodes 6 ms. Larger drawings keep the layered
/// ranks and routes, with the crossings as they fall.
const OPTIMISED_UP_TO: usize = 64;

/// The drawing's font size and node height, in SVG units.
const FONT: f64 = 13.0;
const NODE_HEIGHT: f64 = 28.0;
/// Space around the drawing (the template shifts it by as much).
const MARGIN: f64 = 8.0;

/// The page's query: one origin, and how far to walk.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NetworkQuery {
    /// A flag id.
    #[serde(default)]
    pub flag_id: String,
    /// A record id.
    #[serde(default)]
    pub record_id: String,
    /// A donor's fingerprint, hex.
    #[serde(default)]
    pub donor_fingerprint: String,
    /// A recipient's fingerprint, hex.
    #[serde(default)]
    pub recipient_fingerprint: String,
    /// Hops, 1 to 3; empty for the default.
    #[serde(default)]
    pub depth: String,
    /// Nodes drawn at most, up to [`MAX_DRAWN`]; empty for that.
    #[serde(default)]
    pub max_nodes: String,
}

impl NetworkQuery {
    /// The query string of the same origin walked one hop beyond `depth`.
    fn deeper(&self, depth: u8) -> String {
        let depth = (depth + 1).to_string();
        let pairs: Vec<(&str, &str)> = [
            ("flag_id", self.flag_id.trim()),
            ("record_id", self.record_id.trim()),
            ("donor_fingerprint", self.donor_fingerprint.trim()),
            ("recipient_fingerprint", self.recipient_fingerprint.trim()),
            ("depth", depth.as_str()),
            ("max_nodes", self.max_nodes.trim()),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }

    /// The request as `GetNetwork` reads it, so the console and gRPC check
    /// it by the same rules.
    fn to_request(&self) -> Result<pb::GetNetworkRequest, Violations> {
        let mut v = Violations::default();
        let given: Vec<Origin> = [
            (&self.flag_id, Origin::FlagId as fn(String) -> Origin),
            (&self.record_id, Origin::RecordId),
            (&self.donor_fingerprint, Origin::DonorFingerprint),
            (&self.recipient_fingerprint, Origin::RecipientFingerprint),
        ]
        .into_iter()
        .filter(|(raw, _)| !raw.trim().is_empty())
        .map(|(raw, make)| make(raw.trim().to_owned()))
        .collect();
        if given.len() > 1 {
            v.add(
                "origin",
                "name only one of flag_id, record_id, donor_fingerprint or recipient_fingerprint",
            );
        }
        let depth = match self.depth.trim() {
            "" => None,
            raw => match raw.parse::<i32>() {
                Ok(d) => Some(d),
                Err(_) => {
                    v.add("depth", "must be a number of hops, 1 to 3");
                    None
                }
            },
        };
        let drawn = i32::try_from(MAX_DRAWN).unwrap_or(i32::MAX);
        let max_nodes = match self.max_nodes.trim() {
            "" => Some(drawn),
            raw => match raw.parse::<i32>() {
                Ok(n) if (1..=drawn).contains(&n) => Some(n),
                _ => {
                    v.add("max_nodes", format!("must be 1 to {MAX_DRAWN}"));
                    None
                }
            },
        };
        if !v.is_empty() {
            return Err(v);
        }
        Ok(pb::GetNetworkRequest {
            origin: given.into_iter().next(),
            depth,
            max_nodes,
        })
    }
}

/// A node as the page draws and lists it.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// `kind:key`, for tests and scripts.
    pub data: String,
    /// Record, Donor, Recipient, Clinic or Hospital.
    pub kind: &'static str,
    /// The whole id or fingerprint.
    pub name: String,
    /// What the drawing writes in the box.
    pub label: String,
    /// Its page.
    pub href: String,
    /// Hops from the origin.
    pub hops: u8,
    /// The worst open flag's severity, or "none".
    pub severity: &'static str,
    /// Open flags of its records.
    pub open_flags: usize,
    /// Whether it is where the walk started.
    pub origin: bool,
    /// The box: left, top, width, height.
    pub x: f64,
    /// Top.
    pub y: f64,
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
}

impl NodeView {
    /// The box's centre, where the label goes.
    pub fn cx(&self) -> f64 {
        self.x + self.w / 2.0
    }

    /// The box's middle line.
    pub fn cy(&self) -> f64 {
        self.y + self.h / 2.0
    }
}

/// An edge as the page draws and lists it.
#[derive(Debug, Clone)]
pub struct EdgeView {
    /// The drawn curve's path data.
    pub d: String,
    /// How the nodes meet, as a CSS class.
    pub class: &'static str,
    /// The node it leaves: index into the nodes.
    pub from: usize,
    /// How they meet, in words.
    pub relation: &'static str,
    /// The node it reaches.
    pub to: usize,
}

/// The network page.
#[derive(Template)]
#[template(path = "console/network.html")]
pub struct NetworkPage {
    /// The header.
    pub nav: Nav,
    /// Where the walk started, in words.
    pub title: String,
    /// Hops walked.
    pub depth: u8,
    /// The nodes, nearest first.
    pub nodes: Vec<NodeView>,
    /// The edges.
    pub edges: Vec<EdgeView>,
    /// Whether the walk was cut at `max_nodes` nodes.
    pub truncated: bool,
    /// The bound.
    pub max_nodes: usize,
    /// The drawing's width and height.
    pub width: f64,
    /// Height.
    pub height: f64,
    /// Severities, least first, for the legend.
    pub severities: &'static [Severity],
    /// The query of the same walk one hop further.
    pub deeper: String,
}

/// `GET /network?flag_id=…` (or `record_id`, `donor_fingerprint`,
/// `recipient_fingerprint`; and `depth`).
pub async fn network(
    State(console): State<Console>,
    signed: Signed,
    Query(query): Query<NetworkQuery>,
) -> Result<Response, PageError> {
    let asked = query
        .to_request()
        .and_then(|req| network_request(&req))
        .map_err(PageError::Invalid)?;
    let view = console
        .inner
        .investigation
        .network(&signed.actor(), &asked)
        .await?;
    let title = match &asked.start {
        crate::wire::investigation::NetworkStart::Flag(id) => format!("flag #{id}"),
        crate::wire::investigation::NetworkStart::Record(id) => format!("record {id}"),
        crate::wire::investigation::NetworkStart::Party(p) => {
            let (kind, ..) = describe(&Node::Party(p.clone()));
            format!("{} {}", kind.to_lowercase(), short(p.key()))
        }
    };
    let (nodes, edges, width, height) = draw(&view);
    let page = NetworkPage {
        nav: Nav::of(&signed),
        title,
        depth: asked.depth,
        nodes,
        edges,
        truncated: view.network.truncated,
        max_nodes: asked.max_nodes,
        width,
        height,
        severities: Severity::ALL,
        deeper: query.deeper(asked.depth),
    };
    Ok((StatusCode::OK, Html(page.render()?)).into_response())
}

/// The first characters of a fingerprint or an id.
fn short(key: &str) -> String {
    let mut s: String = key.chars().take(LABEL_CHARS).collect();
    if key.chars().count() > LABEL_CHARS {
        s.push('…');
    }
    s
}

/// A node's kind, whole name, short label and page.
fn describe(node: &Node) -> (&'static str, String, String, String) {
    match node {
        Node::Record(id) => (
            "Record",
            id.to_string(),
            format!("Record {id}"),
            format!("/records/{id}"),
        ),
        Node::Party(Party::Donor(fp)) => (
            "Donor",
            fp.clone(),
            format!("Donor {}", fp.chars().take(12).collect::<String>()),
            format!("/donors/{}", path_segment(fp)),
        ),
        Node::Party(Party::Recipient(fp)) => (
            "Recipient",
            fp.clone(),
            format!("Recipient {}", fp.chars().take(12).collect::<String>()),
            format!("/recipients/{}", path_segment(fp)),
        ),
        Node::Party(Party::Clinic(id)) => (
            "Clinic",
            id.clone(),
            format!("Clinic {}", short(id)),
            format!("/clinics/{}", path_segment(id)),
        ),
        Node::Party(Party::Hospital(id)) => (
            "Hospital",
            id.clone(),
            format!("Hospital {}", short(id)),
            format!(
                "/flags?{}",
                serde_urlencoded::to_string([("hospital_id", id)]).unwrap_or_default()
            ),
        ),
    }
}

fn relation(kind: EdgeKind) -> (&'static str, &'static str) {
    match kind {
        EdgeKind::DonorOf => ("edge-donor", "donor of"),
        EdgeKind::RecipientOf => ("edge-recipient", "recipient of"),
        EdgeKind::PerformedAt => ("edge-clinic", "performed at"),
        EdgeKind::SubmittedBy => ("edge-hospital", "submitted by"),
    }
}

/// What the layout draws, kept to be written by the page's template (so
/// that every label is escaped there): node boxes and edge curves, each by
/// the index it was given as its "properties".
#[derive(Debug, Default)]
struct Drawing {
    boxes: HashMap<usize, (Point, Point)>,
    curves: HashMap<usize, String>,
    right: f64,
    bottom: f64,
}

impl Drawing {
    fn grow(&mut self, p: Point) {
        self.right = self.right.max(p.x);
        self.bottom = self.bottom.max(p.y);
    }
}

/// An index given as an element's or arrow's properties.
fn index(properties: &Option<String>, prefix: char) -> Option<usize> {
    properties
        .as_deref()
        .and_then(|p| p.strip_prefix(prefix))
        .and_then(|i| i.parse().ok())
}

impl RenderBackend for Drawing {
    fn draw_rect(
        &mut self,
        xy: Point,
        size: Point,
        _look: &StyleAttr,
        properties: Option<String>,
        _clip: Option<ClipHandle>,
    ) {
        self.grow(xy.add(size));
        if let Some(i) = index(&properties, 'n') {
            self.boxes.insert(i, (xy, size));
        }
    }

    fn draw_line(&mut self, _: Point, _: Point, _: &StyleAttr, _: Option<String>) {}

    fn draw_circle(&mut self, xy: Point, size: Point, _: &StyleAttr, _: Option<String>) {
        self.grow(xy.add(size));
    }

    fn draw_text(&mut self, _: Point, _: &str, _: &StyleAttr) {}

    fn draw_arrow(
        &mut self,
        path: &[(Point, Point)],
        _dashed: bool,
        _head: (bool, bool),
        _look: &StyleAttr,
        properties: Option<String>,
        _text: &str,
    ) {
        for (a, b) in path {
            self.grow(*a);
            self.grow(*b);
        }
        let (Some(i), [first, second, rest @ ..]) = (index(&properties, 'e'), path) else {
            return;
        };
        // The cubic Bézier the layout routed: an exit vector, then one
        // entry vector per point it passes.
        let mut d = format!(
            "M{:.1} {:.1} C{:.1} {:.1},{:.1} {:.1},{:.1} {:.1}",
            first.0.x,
            first.0.y,
            first.1.x,
            first.1.y,
            second.0.x,
            second.0.y,
            second.1.x,
            second.1.y
        );
        for p in rest {
            d.push_str(&format!(
                " S{:.1} {:.1},{:.1} {:.1}",
                p.0.x, p.0.y, p.1.x, p.1.y
            ));
        }
        self.curves.insert(i, d);
    }

    fn create_clip(&mut self, _: Point, _: Point, _: usize) -> ClipHandle {
        0
    }
}

/// Lays the network out and returns what the page draws and lists.
fn draw(view: &NetworkView) -> (Vec<NodeView>, Vec<EdgeView>, f64, f64) {
    let net = &view.network;
    let mut graph = VisualGraph::new(Orientation::LeftToRight);
    let mut look = StyleAttr::simple();
    look.font_size = FONT as usize;
    let mut handles = Vec::with_capacity(net.nodes.len());
    let mut positions: HashMap<&Node, usize> = HashMap::new();
    let mut nodes: Vec<NodeView> = Vec::with_capacity(net.nodes.len());
    for (i, (node, hops)) in net.nodes.iter().enumerate() {
        let (kind, name, label, href) = describe(node);
        let width = label.chars().count() as f64 * FONT * 0.62 + 20.0;
        let element = Element::create_with_properties(
            ShapeKind::new_box(&label),
            look.clone(),
            Orientation::LeftToRight,
            Point::new(width, NODE_HEIGHT),
            format!("n{i}"),
        );
        handles.push(graph.add_node(element));
        positions.insert(node, i);
        let open = view.open_flags_of(node);
        let worst = open.iter().map(|f| f.severity).max();
        nodes.push(NodeView {
            data: format!("{}:{}", kind.to_lowercase(), name),
            kind,
            name,
            label,
            href,
            hops: *hops,
            severity: worst.map(|s| s.as_str()).unwrap_or("none"),
            open_flags: open.len(),
            origin: *node == net.origin,
            x: 0.0,
            y: 0.0,
            w: width,
            h: NODE_HEIGHT,
        });
    }
    let mut edges = Vec::with_capacity(net.edges.len());
    for (i, e) in net.edges.iter().enumerate() {
        let (Some(&from), Some(&to)) = (positions.get(&e.from), positions.get(&e.to)) else {
            continue;
        };
        graph.add_edge(
            Arrow::simple_with_properties("", format!("e{i}")),
            handles[from],
            handles[to],
        );
        let (class, relation) = relation(e.kind);
        edges.push((
            i,
            EdgeView {
                d: String::new(),
                class,
                from,
                relation,
                to,
            },
        ));
    }
    let mut drawing = Drawing::default();
    if !nodes.is_empty() {
        let skip_optimisation = nodes.len() > OPTIMISED_UP_TO;
        graph.do_it(false, skip_optimisation, false, &mut drawing);
    }
    for (i, n) in nodes.iter_mut().enumerate() {
        if let Some((xy, size)) = drawing.boxes.get(&i) {
            n.x = xy.x;
            n.y = xy.y;
            n.w = size.x;
            n.h = size.y;
        }
    }
    let edges = edges
        .into_iter()
        .map(|(i, mut e)| {
            e.d = drawing.curves.remove(&i).unwrap_or_default();
            e
        })
        .collect();
    (
        nodes,
        edges,
        (drawing.right + 2.0 * MARGIN).ceil(),
        (drawing.bottom + 2.0 * MARGIN).ceil(),
    )
}
