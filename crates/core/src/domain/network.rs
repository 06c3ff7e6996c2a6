//! The network around a record or a person: a breadth-first walk over
//! records and their parties (donor, recipient, clinic, hospital), with no
//! I/O. A record's parties are one hop from it, so records that share a
//! party are two hops apart.
//!
//! The walk is a state machine the caller drives: it asks for the records
//! of the parties at its frontier ([`Walk::wanted`]), all at once, and is
//! fed them ([`Walk::feed`]); a record's own parties it knows from the
//! record. It keeps at most `max_nodes` nodes, nearest first, and says when
//! it had to leave some out.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};

/// The hops walked when a request names none.
pub const DEFAULT_DEPTH: u8 = 2;

/// The most hops walked.
pub const MAX_DEPTH: u8 = 3;

/// The nodes kept when a request names no bound.
pub const DEFAULT_MAX_NODES: usize = 500;

/// The largest bound a request may set.
pub const MAX_MAX_NODES: usize = 5000;

/// Who or where a record meets other records through.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Party {
    /// A donor, by hex fingerprint.
    Donor(String),
    /// A recipient, by hex fingerprint.
    Recipient(String),
    /// A clinic, by id.
    Clinic(String),
    /// A hospital, by id.
    Hospital(String),
}

impl Party {
    /// The fingerprint, clinic id or hospital id.
    pub fn key(&self) -> &str {
        match self {
            Party::Donor(k) | Party::Recipient(k) | Party::Clinic(k) | Party::Hospital(k) => k,
        }
    }

    /// How an edge between this party and one of its records reads.
    pub fn edge_kind(&self) -> EdgeKind {
        match self {
            Party::Donor(_) => EdgeKind::DonorOf,
            Party::Recipient(_) => EdgeKind::RecipientOf,
            Party::Clinic(_) => EdgeKind::PerformedAt,
            Party::Hospital(_) => EdgeKind::SubmittedBy,
        }
    }
}

/// A node of the network.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    /// A stored record, by id.
    Record(i64),
    /// A party of records.
    Party(Party),
}

/// A record as the walk sees it: its id and its four parties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordLinks {
    /// The record's id.
    pub id: i64,
    /// When the transplant took place: newer records are kept first.
    pub transplanted_at: DateTime<Utc>,
    /// The donor's hex fingerprint.
    pub donor: String,
    /// The recipient's hex fingerprint.
    pub recipient: String,
    /// The clinic's id.
    pub clinic: String,
    /// The submitting hospital's id.
    pub hospital: String,
}

impl RecordLinks {
    /// The record's parties, the people first.
    pub fn parties(&self) -> [Party; 4] {
        [
            Party::Donor(self.donor.clone()),
            Party::Recipient(self.recipient.clone()),
            Party::Clinic(self.clinic.clone()),
            Party::Hospital(self.hospital.clone()),
        ]
    }

    fn has(&self, party: &Party) -> bool {
        match party {
            Party::Donor(k) => *k == self.donor,
            Party::Recipient(k) => *k == self.recipient,
            Party::Clinic(k) => *k == self.clinic,
            Party::Hospital(k) => *k == self.hospital,
        }
    }
}

/// How a record and one of its parties meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EdgeKind {
    /// The donor gave the record's organ.
    DonorOf,
    /// The recipient received it.
    RecipientOf,
    /// The transplant was performed at the clinic.
    PerformedAt,
    /// The hospital submitted the record.
    SubmittedBy,
}

/// An edge: from a donor or recipient to a record, or from a record to
/// its clinic or hospital.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// The node it leaves.
    pub from: Node,
    /// The node it reaches.
    pub to: Node,
    /// How they meet.
    pub kind: EdgeKind,
}

/// Where a walk starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A record, as the store read it.
    Record(RecordLinks),
    /// A party.
    Party(Party),
}

/// The walk's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// The origin.
    pub origin: Node,
    /// Every node kept, nearest first, with its hops from the origin.
    pub nodes: Vec<(Node, u8)>,
    /// Every edge between two nodes kept.
    pub edges: Vec<Edge>,
    /// Whether nodes within the depth were left out.
    pub truncated: bool,
}

impl Network {
    /// The ids of the record nodes, nearest first.
    pub fn record_ids(&self) -> Vec<i64> {
        self.nodes
            .iter()
            .filter_map(|(n, _)| match n {
                Node::Record(id) => Some(*id),
                Node::Party(_) => None,
            })
            .collect()
    }

    /// The records of the graph a node joins: a record itself, a party's
    /// records in the graph.
    pub fn records_of(&self, node: &Node) -> Vec<i64> {
        match node {
            Node::Record(id) => vec![*id],
            Node::Party(_) => self
                .edges
                .iter()
                .filter_map(|e| match (&e.from, &e.to) {
                    (from, Node::Record(id)) if from == node => Some(*id),
                    (Node::Record(id), to) if to == node => Some(*id),
                    _ => None,
                })
                .collect(),
        }
    }
}

/// A walk in progress.
#[derive(Debug, Clone)]
pub struct Walk {
    origin: Node,
    depth: u8,
    max_nodes: usize,
    order: Vec<Node>,
    hops: HashMap<Node, u8>,
    records: HashMap<i64, RecordLinks>,
    /// The nodes at `level` hops, to expand next.
    frontier: Vec<Node>,
    level: u8,
    truncated: bool,
}

impl Walk {
    /// Starts a walk of at most `depth` hops keeping at most `max_nodes`
    /// nodes (at least the origin).
    pub fn new(origin: Origin, depth: u8, max_nodes: usize) -> Self {
        let origin_node = match &origin {
            Origin::Record(r) => Node::Record(r.id),
            Origin::Party(p) => Node::Party(p.clone()),
        };
        let mut walk = Walk {
            origin: origin_node.clone(),
            depth,
            max_nodes: max_nodes.max(1),
            order: vec![origin_node.clone()],
            hops: HashMap::from([(origin_node.clone(), 0)]),
            records: HashMap::new(),
            frontier: vec![origin_node],
            level: 0,
            truncated: false,
        };
        if let Origin::Record(r) = origin {
            walk.records.insert(r.id, r);
        }
        walk.expand_records();
        walk
    }

    /// The parties whose records the walk needs next; `None` once it is done.
    pub fn wanted(&self) -> Option<Vec<Party>> {
        if self.done() {
            return None;
        }
        let parties: Vec<Party> = self
            .frontier
            .iter()
            .filter_map(|n| match n {
                Node::Party(p) => Some(p.clone()),
                Node::Record(_) => None,
            })
            .collect();
        (!parties.is_empty()).then_some(parties)
    }

    /// How many records of each wanted party to read at most (newest
    /// transplant first, then highest id): one more than the walk can keep,
    /// so a party with more shows.
    pub fn per_party_limit(&self) -> usize {
        self.max_nodes + 1
    }

    /// Takes the records of the wanted parties (in any order, repeats
    /// allowed; records of no wanted party are ignored) and walks on.
    pub fn feed(&mut self, found: Vec<RecordLinks>) {
        let Some(parties) = self.wanted() else {
            return;
        };
        let mut found = found;
        // Newest transplant first within each party, whatever order the
        // store gave.
        found.sort_by_key(|r| std::cmp::Reverse((r.transplanted_at, r.id)));
        found.dedup_by(|a, b| a.id == b.id);
        let mut next = Vec::new();
        'parties: for party in &parties {
            for r in found.iter().filter(|r| r.has(party)) {
                let node = Node::Record(r.id);
                if self.hops.contains_key(&node) {
                    continue;
                }
                if !self.add(node.clone()) {
                    break 'parties;
                }
                self.records.insert(r.id, r.clone());
                next.push(node);
            }
        }
        self.frontier = next;
        self.level += 1;
        self.expand_records();
    }

    /// The graph as walked so far.
    pub fn finish(self) -> Network {
        let mut edges = Vec::new();
        for node in &self.order {
            let Node::Record(id) = node else { continue };
            let Some(r) = self.records.get(id) else {
                continue;
            };
            for party in r.parties() {
                let party_node = Node::Party(party.clone());
                if !self.hops.contains_key(&party_node) {
                    continue;
                }
                let kind = party.edge_kind();
                let (from, to) = match kind {
                    EdgeKind::DonorOf | EdgeKind::RecipientOf => (party_node, node.clone()),
                    EdgeKind::PerformedAt | EdgeKind::SubmittedBy => (node.clone(), party_node),
                };
                edges.push(Edge { from, to, kind });
            }
        }
        let nodes = self
            .order
            .iter()
            .map(|n| (n.clone(), self.hops.get(n).copied().unwrap_or_default()))
            .collect();
        Network {
            origin: self.origin,
            nodes,
            edges,
            truncated: self.truncated,
        }
    }

    fn done(&self) -> bool {
        self.truncated || self.level >= self.depth || self.frontier.is_empty()
    }

    /// Adds a node one hop beyond the frontier; false (and the walk cut)
    /// when the bound is reached.
    fn add(&mut self, node: Node) -> bool {
        if self.order.len() >= self.max_nodes {
            self.truncated = true;
            self.frontier.clear();
            return false;
        }
        self.hops.insert(node.clone(), self.level + 1);
        self.order.push(node);
        true
    }

    /// While the frontier is records, steps to their parties, which the
    /// walk knows without asking.
    fn expand_records(&mut self) {
        while !self.done() && matches!(self.frontier.first(), Some(Node::Record(_))) {
            let frontier = std::mem::take(&mut self.frontier);
            let mut seen = BTreeSet::new();
            let mut next = Vec::new();
            'records: for node in &frontier {
                let Node::Record(id) = node else { continue };
                let Some(r) = self.records.get(id) else {
                    continue;
                };
                for party in r.parties() {
                    let party_node = Node::Party(party);
                    if self.hops.contains_key(&party_node) || !seen.insert(party_node.clone()) {
                        continue;
                    }
                    if !self.add(party_node.clone()) {
                        break 'records;
                    }
                    next.push(party_node);
                }
            }
            if self.truncated {
                return;
            }
            self.frontier = next;
            self.level += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: i64, donor: &str, recipient: &str, clinic: &str, hospital: &str) -> RecordLinks {
        RecordLinks {
            id,
            // Transplant order follows ids, except that 3 is the newest.
            transplanted_at: DateTime::from_timestamp(if id == 3 { 10_000 } else { id * 60 }, 0)
                .unwrap(),
            donor: donor.into(),
            recipient: recipient.into(),
            clinic: clinic.into(),
            hospital: hospital.into(),
        }
    }

    /// A store of records, answering the walk as the database would.
    fn run(store: &[RecordLinks], origin: Origin, depth: u8, max_nodes: usize) -> Network {
        let mut walk = Walk::new(origin, depth, max_nodes);
        let mut asked = 0;
        while let Some(parties) = walk.wanted() {
            asked += 1;
            assert!(asked <= 2, "one batch per party level");
            let limit = walk.per_party_limit();
            let mut found = Vec::new();
            for p in &parties {
                let mut of: Vec<_> = store.iter().filter(|r| r.has(p)).cloned().collect();
                of.sort_by_key(|r| std::cmp::Reverse((r.transplanted_at, r.id)));
                found.extend(of.into_iter().take(limit));
            }
            walk.feed(found);
        }
        walk.finish()
    }

    fn records(n: &Network) -> BTreeSet<i64> {
        n.record_ids().into_iter().collect()
    }

    fn registry() -> Vec<RecordLinks> {
        vec![
            rec(1, "d1", "r1", "c1", "h1"),
            rec(2, "d1", "r2", "c2", "h2"), // same donor, elsewhere
            rec(3, "d3", "r1", "c3", "h3"), // same recipient
            rec(4, "d4", "r4", "c1", "h4"), // same clinic
            rec(5, "d5", "r5", "c5", "h1"), // same hospital
            rec(6, "d6", "r6", "c2", "h6"), // shares only record 2's clinic
            rec(7, "d7", "r7", "c7", "h7"), // unrelated
        ]
    }

    #[test]
    fn depth_two_from_a_record_holds_every_record_sharing_a_party() {
        let store = registry();
        let n = run(&store, Origin::Record(store[0].clone()), 2, 500);
        assert_eq!(records(&n), BTreeSet::from([1, 2, 3, 4, 5]));
        assert!(!n.truncated);
        assert_eq!(n.origin, Node::Record(1));
        assert_eq!(n.nodes[0], (Node::Record(1), 0));
        let hops: HashMap<_, _> = n.nodes.iter().cloned().collect();
        assert_eq!(hops[&Node::Party(Party::Clinic("c1".into()))], 1);
        assert_eq!(hops[&Node::Record(4)], 2);
        // Record 2's clinic is not within two hops.
        assert!(!hops.contains_key(&Node::Party(Party::Clinic("c2".into()))));
    }

    #[test]
    fn depth_one_is_the_parties_and_three_their_parties() {
        let store = registry();
        let one = run(&store, Origin::Record(store[0].clone()), 1, 500);
        assert_eq!(records(&one), BTreeSet::from([1]));
        assert_eq!(one.nodes.len(), 5);
        assert_eq!(one.edges.len(), 4);
        let three = run(&store, Origin::Record(store[0].clone()), 3, 500);
        assert!(
            three
                .nodes
                .contains(&(Node::Party(Party::Clinic("c2".into())), 3))
        );
        assert_eq!(records(&three), BTreeSet::from([1, 2, 3, 4, 5]));
    }

    #[test]
    fn from_a_donor_depth_three_reaches_records_sharing_their_parties() {
        let store = registry();
        let origin = Origin::Party(Party::Donor("d1".into()));
        let one = run(&store, origin.clone(), 1, 500);
        assert_eq!(records(&one), BTreeSet::from([1, 2]));
        let three = run(&store, origin, 3, 500);
        assert_eq!(records(&three), BTreeSet::from([1, 2, 3, 4, 5, 6]));
    }

    #[test]
    fn edges_say_how_nodes_meet_and_join_only_kept_nodes() {
        let store = registry();
        let n = run(&store, Origin::Record(store[0].clone()), 2, 500);
        let donor = Node::Party(Party::Donor("d1".into()));
        let d1_edges: Vec<_> = n.edges.iter().filter(|e| e.from == donor).collect();
        assert_eq!(d1_edges.len(), 2, "donor of records 1 and 2");
        assert!(d1_edges.iter().all(|e| e.kind == EdgeKind::DonorOf));
        assert!(n.edges.contains(&Edge {
            from: Node::Record(4),
            to: Node::Party(Party::Clinic("c1".into())),
            kind: EdgeKind::PerformedAt,
        }));
        let kept: BTreeSet<_> = n.nodes.iter().map(|(n, _)| n.clone()).collect();
        assert!(
            n.edges
                .iter()
                .all(|e| kept.contains(&e.from) && kept.contains(&e.to))
        );
        assert_eq!(
            n.records_of(&Node::Party(Party::Hospital("h1".into()))),
            vec![1, 5]
        );
    }

    #[test]
    fn the_bound_keeps_the_nearest_and_says_it_cut() {
        let store = registry();
        let n = run(&store, Origin::Record(store[0].clone()), 2, 7);
        assert!(n.truncated);
        assert_eq!(n.nodes.len(), 7);
        // The origin and its four parties come before any record beyond.
        assert!(n.nodes[..5].iter().all(|(_, h)| *h <= 1));
        let exact = run(&store, Origin::Record(store[0].clone()), 2, 9);
        assert!(!exact.truncated, "nine nodes fit exactly");
        let cut_early = run(&store, Origin::Record(store[0].clone()), 2, 3);
        assert!(cut_early.truncated);
        assert_eq!(cut_early.nodes.len(), 3);
    }

    #[test]
    fn a_party_with_more_records_than_the_store_gave_is_a_cut() {
        let store: Vec<_> = (1..=20)
            .map(|i| rec(i, "d", &format!("r{i}"), "c", "h"))
            .collect();
        let n = run(&store, Origin::Party(Party::Clinic("c".into())), 1, 10);
        assert!(n.truncated);
        assert_eq!(n.nodes.len(), 10);
        // The newest transplants are the ones kept (record 3's is the newest).
        let newest: Vec<i64> = [3].into_iter().chain((13..=20).rev()).collect();
        assert_eq!(n.record_ids(), newest);
    }

    #[test]
    fn the_same_store_gives_the_same_graph_whatever_order_it_answers_in() {
        let store = registry();
        let a = run(&store, Origin::Record(store[0].clone()), 3, 500);
        let mut reversed = store.clone();
        reversed.reverse();
        let b = run(&reversed, Origin::Record(store[0].clone()), 3, 500);
        assert_eq!(a, b);
    }
}
