//! `InvestigationService` requests read as domain filters (each bad field
//! named), and its answers built from the domain.

use crate::domain::network::{
    DEFAULT_DEPTH, DEFAULT_MAX_NODES, EdgeKind, MAX_DEPTH, MAX_MAX_NODES, Network, Node, Party,
};
use crate::domain::search::{AccessEntry, AccessFilter, FlagSummary, RecordFilter};
use crate::domain::{Fingerprint, HospitalId, Violations};

use super::convert::{ProtoEnum, country, instant, optional, timestamp};
use super::listing::text;
use super::pb;

/// A hex fingerprint as `StoredRecord` gives it (64 hex digits, either case).
pub fn fingerprint(v: &mut Violations, field: &str, raw: &str) -> Option<Fingerprint> {
    if raw.is_empty() {
        return None;
    }
    let bytes = hex::decode(raw).ok().filter(|b| b.len() == 32);
    match bytes.as_deref().and_then(Fingerprint::from_slice) {
        Some(fp) => Some(fp),
        None => {
            v.add(
                field,
                "must be a fingerprint as StoredRecord gives it: 64 hex digits",
            );
            None
        }
    }
}

fn optional_country(
    v: &mut Violations,
    field: &str,
    raw: &str,
) -> Option<crate::domain::CountryCode> {
    if raw.is_empty() {
        return None;
    }
    country(v, field, raw)
}

fn hospital(v: &mut Violations, raw: &str) -> Option<String> {
    text(v, "hospital_id", raw)
        .map(|h| HospitalId::normalize(&h).into_string())
        .filter(|h| !h.is_empty())
}

/// The filters of a `SearchRecords` request, or every field that is not one.
pub fn record_filter(req: &pb::SearchRecordsRequest) -> Result<RecordFilter, Violations> {
    let mut v = Violations::default();
    let filter = RecordFilter {
        donor: fingerprint(&mut v, "donor_fingerprint", &req.donor_fingerprint),
        recipient: fingerprint(&mut v, "recipient_fingerprint", &req.recipient_fingerprint),
        clinic_id: text(&mut v, "clinic_id", &req.clinic_id),
        hospital_id: hospital(&mut v, &req.hospital_id),
        procedure_country: optional_country(&mut v, "procedure_country", &req.procedure_country),
        organ: optional(&mut v, "organ", req.organ),
        donor_type: optional(&mut v, "donor_type", req.donor_type),
        donor_nationality: optional_country(&mut v, "donor_nationality", &req.donor_nationality),
        non_resident_donor: req.non_resident_donor,
        non_resident_recipient: req.non_resident_recipient,
        transplanted_after: instant(
            &mut v,
            "transplanted_after",
            req.transplanted_after.as_ref(),
        ),
        transplanted_before: instant(
            &mut v,
            "transplanted_before",
            req.transplanted_before.as_ref(),
        ),
        has_open_flags: req.has_open_flags,
    };
    v.into_result(|| filter)
}

/// Where a `GetNetwork` walk starts, as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkStart {
    /// A record, by id.
    Record(i64),
    /// The record of a flag, by id.
    Flag(i64),
    /// A donor or a recipient.
    Party(Party),
}

/// A `GetNetwork` request read: the start, the depth and the bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRequest {
    /// Where the walk starts.
    pub start: NetworkStart,
    /// Hops, 1 to [`MAX_DEPTH`].
    pub depth: u8,
    /// Nodes kept at most.
    pub max_nodes: usize,
}

fn id(v: &mut Violations, field: &str, raw: &str) -> Option<i64> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Some(id),
        _ => {
            v.add(field, "must be an id this service returned");
            None
        }
    }
}

/// A `GetNetwork` request, or every field that is wrong.
pub fn network_request(req: &pb::GetNetworkRequest) -> Result<NetworkRequest, Violations> {
    use pb::get_network_request::Origin;
    let mut v = Violations::default();
    let start = match &req.origin {
        None => {
            v.add(
                "origin",
                "name one of record_id, flag_id, donor_fingerprint or recipient_fingerprint",
            );
            None
        }
        Some(Origin::RecordId(raw)) => id(&mut v, "record_id", raw).map(NetworkStart::Record),
        Some(Origin::FlagId(raw)) => id(&mut v, "flag_id", raw).map(NetworkStart::Flag),
        Some(Origin::DonorFingerprint(raw)) => {
            required_fingerprint(&mut v, "donor_fingerprint", raw)
                .map(|fp| NetworkStart::Party(Party::Donor(hex::encode(fp.as_bytes()))))
        }
        Some(Origin::RecipientFingerprint(raw)) => {
            required_fingerprint(&mut v, "recipient_fingerprint", raw)
                .map(|fp| NetworkStart::Party(Party::Recipient(hex::encode(fp.as_bytes()))))
        }
    };
    let depth = match req.depth {
        None => Some(DEFAULT_DEPTH),
        Some(d) if (1..=i32::from(MAX_DEPTH)).contains(&d) => u8::try_from(d).ok(),
        Some(_) => {
            v.add(
                "depth",
                format!("must be 1 to {MAX_DEPTH} (unset: {DEFAULT_DEPTH})"),
            );
            None
        }
    };
    let max_nodes = match req.max_nodes.map(usize::try_from) {
        None => Some(DEFAULT_MAX_NODES),
        Some(Ok(n)) if (1..=MAX_MAX_NODES).contains(&n) => Some(n),
        Some(_) => {
            v.add(
                "max_nodes",
                format!("must be 1 to {MAX_MAX_NODES} (unset: {DEFAULT_MAX_NODES})"),
            );
            None
        }
    };
    match (start, depth, max_nodes) {
        (Some(start), Some(depth), Some(max_nodes)) if v.is_empty() => Ok(NetworkRequest {
            start,
            depth,
            max_nodes,
        }),
        _ => Err(v),
    }
}

fn required_fingerprint(v: &mut Violations, field: &str, raw: &str) -> Option<Fingerprint> {
    if raw.is_empty() {
        v.missing(field);
        return None;
    }
    fingerprint(v, field, raw)
}

/// The `ListFlags` filters an `ExportFlags` request carries, as a listing
/// request (page fields unset), so both read them one way.
pub fn export_as_listing(req: &pb::ExportFlagsRequest) -> pb::ListFlagsRequest {
    pb::ListFlagsRequest {
        status: req.status,
        min_severity: req.min_severity,
        rule_id: req.rule_id.clone(),
        clinic_id: req.clinic_id.clone(),
        hospital_id: req.hospital_id.clone(),
        raised_after: req.raised_after,
        raised_before: req.raised_before,
        page_size: 0,
        page_token: String::new(),
    }
}

/// The filters of a `ListAccessLog` request, or every field that is not one.
pub fn access_filter(req: &pb::ListAccessLogRequest) -> Result<AccessFilter, Violations> {
    let mut v = Violations::default();
    let filter = AccessFilter {
        principal: text(&mut v, "principal", &req.principal),
        key_id: text(&mut v, "key_id", &req.key_id),
        action: text(&mut v, "action", &req.action),
        resource: text(&mut v, "resource", &req.resource),
        resource_id: text(&mut v, "resource_id", &req.resource_id),
        after: instant(&mut v, "after", req.after.as_ref()),
        before: instant(&mut v, "before", req.before.as_ref()),
    };
    v.into_result(|| filter)
}

/// Domain to proto: a flag in brief.
pub fn summary_to_proto(f: &FlagSummary) -> pb::FlagSummary {
    pb::FlagSummary {
        flag_id: f.id.to_string(),
        rule_id: f.rule_id.clone(),
        severity: f.severity.to_proto(),
        status: f.status.to_proto(),
    }
}

/// Domain to proto: an access-log entry.
pub fn access_to_proto(e: &AccessEntry) -> pb::AccessLogEntry {
    pb::AccessLogEntry {
        entry_id: e.id.to_string(),
        at: Some(timestamp(e.at)),
        principal: e.principal.clone(),
        key_id: e.key_id.clone(),
        action: e.action.clone(),
        resource: e.resource.clone(),
        resource_id: e.resource_id.clone(),
        trace_id: e.trace_id.clone().unwrap_or_default(),
        own_trace_id: e.own_trace_id.clone().unwrap_or_default(),
    }
}

/// A node's id in a `GetNetworkResponse`: its kind and its key.
pub fn node_id(node: &Node) -> String {
    match node {
        Node::Record(id) => format!("record:{id}"),
        Node::Party(Party::Donor(k)) => format!("donor:{k}"),
        Node::Party(Party::Recipient(k)) => format!("recipient:{k}"),
        Node::Party(Party::Clinic(k)) => format!("clinic:{k}"),
        Node::Party(Party::Hospital(k)) => format!("hospital:{k}"),
    }
}

fn node_kind(node: &Node) -> pb::NodeKind {
    match node {
        Node::Record(_) => pb::NodeKind::Record,
        Node::Party(Party::Donor(_)) => pb::NodeKind::Donor,
        Node::Party(Party::Recipient(_)) => pb::NodeKind::Recipient,
        Node::Party(Party::Clinic(_)) => pb::NodeKind::Clinic,
        Node::Party(Party::Hospital(_)) => pb::NodeKind::Hospital,
    }
}

fn edge_kind(kind: EdgeKind) -> pb::EdgeKind {
    match kind {
        EdgeKind::DonorOf => pb::EdgeKind::DonorOf,
        EdgeKind::RecipientOf => pb::EdgeKind::RecipientOf,
        EdgeKind::PerformedAt => pb::EdgeKind::PerformedAt,
        EdgeKind::SubmittedBy => pb::EdgeKind::SubmittedBy,
    }
}

/// Domain to proto: a network, each node with its open flags (those of
/// its records in the graph) and each record node with its record.
pub fn network_to_proto(
    net: &Network,
    open_flags: &std::collections::HashMap<i64, Vec<FlagSummary>>,
    records: &std::collections::HashMap<i64, pb::StoredRecord>,
) -> pb::GetNetworkResponse {
    let nodes = net
        .nodes
        .iter()
        .map(|(node, hops)| {
            let open = net
                .records_of(node)
                .iter()
                .flat_map(|id| open_flags.get(id).into_iter().flatten())
                .map(summary_to_proto)
                .collect();
            pb::NetworkNode {
                node_id: node_id(node),
                kind: node_kind(node) as i32,
                key: match node {
                    Node::Record(id) => id.to_string(),
                    Node::Party(p) => p.key().to_owned(),
                },
                hops: i32::from(*hops),
                open_flags: open,
                record: match node {
                    Node::Record(id) => records.get(id).cloned(),
                    Node::Party(_) => None,
                },
            }
        })
        .collect();
    pb::GetNetworkResponse {
        origin_node_id: node_id(&net.origin),
        nodes,
        edges: net
            .edges
            .iter()
            .map(|e| pb::NetworkEdge {
                from_node_id: node_id(&e.from),
                to_node_id: node_id(&e.to),
                kind: edge_kind(e.kind) as i32,
            })
            .collect(),
        truncated: net.truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Violations) -> Vec<String> {
        v.0.into_iter().map(|f| f.field).collect()
    }

    #[test]
    fn fingerprints_are_64_hex_digits() {
        let good = "ab".repeat(32);
        let req = pb::SearchRecordsRequest {
            donor_fingerprint: good.to_uppercase(),
            ..Default::default()
        };
        let filter = record_filter(&req).unwrap();
        assert_eq!(filter.donor.map(|d| hex::encode(d.0)), Some(good));
        for bad in [
            "zz".repeat(32),
            "ab".repeat(31),
            "ab".repeat(33),
            "abc".into(),
        ] {
            let req = pb::SearchRecordsRequest {
                recipient_fingerprint: bad,
                ..Default::default()
            };
            assert_eq!(
                fields(record_filter(&req).unwrap_err()),
                ["recipient_fingerprint"]
            );
        }
    }

    #[test]
    fn bad_search_fields_are_each_named() {
        let req = pb::SearchRecordsRequest {
            procedure_country: "XX".into(),
            donor_nationality: "D".into(),
            organ: 99,
            donor_type: -1,
            transplanted_after: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: -1,
            }),
            ..Default::default()
        };
        assert_eq!(
            fields(record_filter(&req).unwrap_err()),
            [
                "procedure_country",
                "organ",
                "donor_type",
                "donor_nationality",
                "transplanted_after"
            ]
        );
    }

    #[test]
    fn network_depth_and_bound() {
        let req = |depth, max_nodes| pb::GetNetworkRequest {
            origin: Some(pb::get_network_request::Origin::FlagId("7".into())),
            depth,
            max_nodes,
        };
        let ok = network_request(&req(None, None)).unwrap();
        assert_eq!(
            (ok.start, ok.depth, ok.max_nodes),
            (NetworkStart::Flag(7), 2, 500)
        );
        assert_eq!(network_request(&req(Some(3), Some(5000))).unwrap().depth, 3);
        for depth in [0, 4, -1] {
            let refused = network_request(&req(Some(depth), None)).unwrap_err();
            assert_eq!(fields(refused), ["depth"]);
        }
        for max_nodes in [0, 5001, -1] {
            let refused = network_request(&req(None, Some(max_nodes))).unwrap_err();
            assert_eq!(fields(refused), ["max_nodes"]);
        }
        let none = pb::GetNetworkRequest::default();
        assert_eq!(fields(network_request(&none).unwrap_err()), ["origin"]);
        let bad_id = pb::GetNetworkRequest {
            origin: Some(pb::get_network_request::Origin::RecordId("x".into())),
            ..Default::default()
        };
        assert_eq!(fields(network_request(&bad_id).unwrap_err()), ["record_id"]);
    }
}
