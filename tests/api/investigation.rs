//! InvestigationService through the real server: record search by every
//! filter with keyset pagination, the network around a flag, flags as CSV,
//! the access log every read writes (and `verify` guards), and the keys
//! that may not call it.

use std::collections::{BTreeSet, HashMap};

use tonic::Code;
use transplant_audit::domain::{FingerprintKey, Role};
use transplant_audit::store::flags::Actor;
use transplant_audit::store::investigate::Read;
use transplant_audit::store::{PoolSettings, Store};
use transplant_audit::wire::pb;
use transplant_audit::wire::pb::get_network_request::Origin;
use transplant_audit::wire::pb::investigation_service_client::InvestigationServiceClient;

use crate::helpers::*;
use crate::ledger::{assert_intact, assert_named, sealed_digests, stop, tamper};

type Client = InvestigationServiceClient<Authed>;

fn auditor(app: &TestApp) -> Client {
    InvestigationServiceClient::new(app.authed(&app.auditor_token))
}

fn admin(app: &TestApp) -> Client {
    InvestigationServiceClient::new(app.authed(&app.admin_token))
}

/// A kidney record with its own donor, recipient, hospital, clinic and time.
struct Spec<'a> {
    id: &'a str,
    donor: &'a str,
    recipient: &'a str,
    hospital: &'a str,
    clinic: &'a str,
    at: &'a str,
}

fn record(s: &Spec) -> pb::TransplantRecord {
    let mut r = kidney(s.id);
    r.hospital_id = s.hospital.into();
    r.clinic_id = s.clinic.into();
    r.procured_at = Some(ts(&format!("{}T08:00:00Z", s.at)));
    r.transplanted_at = Some(ts(&format!("{}T10:00:00Z", s.at)));
    let d = r.donor.as_mut().expect("donor");
    d.identifier.as_mut().expect("identifier").value = s.donor.into();
    let p = r.recipient.as_mut().expect("recipient");
    p.identifier.as_mut().expect("identifier").value = s.recipient.into();
    r
}

/// Submits every record; returns the service's id of each, by external id.
async fn store_all(app: &TestApp, records: Vec<pb::TransplantRecord>) -> HashMap<String, String> {
    let mut ids = HashMap::new();
    for r in records {
        let external = r.external_record_id.clone();
        let ack = submit(app, r).await.expect("stored");
        ids.insert(external, ack.record_id);
    }
    ids
}

/// Every page of a search, following tokens; the external ids in order.
async fn search_all(client: &mut Client, mut request: pb::SearchRecordsRequest) -> Vec<String> {
    let mut found = Vec::new();
    loop {
        let page = client
            .search_records(request.clone())
            .await
            .expect("search")
            .into_inner();
        found.extend(page.results.into_iter().map(|r| external(&r)));
        if page.next_page_token.is_empty() {
            return found;
        }
        request.page_token = page.next_page_token;
    }
}

fn external(r: &pb::RecordResult) -> String {
    r.record
        .as_ref()
        .and_then(|s| s.record.as_ref())
        .map(|t| t.external_record_id.clone())
        .expect("a record")
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

/// The fingerprints a search by clinic gives for the record `external_id`.
async fn fingerprints_of(client: &mut Client, external_id: &str) -> (String, String) {
    let page = client
        .search_records(pb::SearchRecordsRequest {
            page_size: 500,
            ..Default::default()
        })
        .await
        .expect("search")
        .into_inner();
    let hit = page
        .results
        .iter()
        .find(|r| external(r) == external_id)
        .and_then(|r| r.record.clone())
        .expect("the record");
    (hit.donor_fingerprint, hit.recipient_fingerprint)
}

#[tokio::test]
async fn a_donor_fingerprint_finds_exactly_that_donors_records_across_hospitals() {
    let app = spawn_app().await;
    let spec = |id, donor, hospital, clinic, at| Spec {
        id,
        donor,
        recipient: id,
        hospital,
        clinic,
        at,
    };
    store_all(
        &app,
        vec![
            record(&spec(
                "D-1",
                "DONOR-X",
                "H-DE-001",
                "DE-BER-01",
                "2025-01-10",
            )),
            record(&spec(
                "D-2",
                "DONOR-X",
                "H-DE-002",
                "DE-HAM-01",
                "2025-02-10",
            )),
            record(&spec(
                "D-3",
                "DONOR-X",
                "H-AT-001",
                "AT-VIE-01",
                "2025-03-10",
            )),
            record(&spec(
                "O-1",
                "DONOR-Y",
                "H-DE-001",
                "DE-BER-01",
                "2025-02-11",
            )),
            record(&spec(
                "O-2",
                "DONOR-Z",
                "H-DE-002",
                "DE-HAM-01",
                "2025-03-11",
            )),
        ],
    )
    .await;
    let mut client = auditor(&app);
    let (donor, _) = fingerprints_of(&mut client, "D-2").await;
    let found = search_all(
        &mut client,
        pb::SearchRecordsRequest {
            donor_fingerprint: donor.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(found, ["D-3", "D-2", "D-1"], "newest transplant first");
    // Upper-case hex is the same fingerprint.
    let upper = search_all(
        &mut client,
        pb::SearchRecordsRequest {
            donor_fingerprint: donor.to_uppercase(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(upper, found);
    // An admin may read too.
    let by_admin = search_all(
        &mut admin(&app),
        pb::SearchRecordsRequest {
            donor_fingerprint: donor,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_admin, found);
}

#[tokio::test]
async fn every_filter_selects_what_it_names() {
    let app = spawn_app().await;
    let a = kidney("F-A");
    let b = deceased_left_kidney("F-B", "DECEASED-B");
    let mut c = kidney("F-C");
    c.hospital_id = "H-DE-002".into();
    c.clinic_id = "DE-HAM-01".into();
    c.transplanted_at = Some(ts("2025-06-01T10:00:00Z"));
    c.procured_at = Some(ts("2025-06-01T08:00:00Z"));
    let donor = c.donor.as_mut().expect("donor");
    donor.nationality = "RO".into();
    donor.country_of_residence = "RO".into();
    let mut d = kidney("F-D");
    d.organ = pb::Organ::Liver as i32;
    d.laterality = pb::Laterality::NotApplicable as i32;
    d.procedure_country = "AT".into();
    d.clinic_id = "AT-VIE-01".into();
    d.hospital_id = "H-AT-001".into();
    d.transplanted_at = Some(ts("2024-12-01T10:00:00Z"));
    d.procured_at = Some(ts("2024-12-01T08:00:00Z"));
    let e = abo_incompatible("F-E");
    store_all(&app, vec![a, b, c, d, e]).await;
    let mut client = auditor(&app);
    let (donor_c, recipient_d) = (
        fingerprints_of(&mut client, "F-C").await.0,
        fingerprints_of(&mut client, "F-D").await.1,
    );

    // Which records have a flag still to decide, as ListFlags says.
    let mut open_records = BTreeSet::new();
    for status in [pb::FlagStatus::Open, pb::FlagStatus::InReview] {
        for f in all_flags(
            &app,
            pb::ListFlagsRequest {
                status: status as i32,
                ..Default::default()
            },
        )
        .await
        {
            open_records.insert(f.external_record_id);
        }
    }
    assert!(open_records.contains("F-E"), "ABO-incompatible is flagged");
    let all = set(&["F-A", "F-B", "F-C", "F-D", "F-E"]);
    let without_open: BTreeSet<String> = all.difference(&open_records).cloned().collect();

    let cases: Vec<(&str, pb::SearchRecordsRequest, BTreeSet<String>)> = vec![
        (
            "donor_fingerprint",
            pb::SearchRecordsRequest {
                donor_fingerprint: donor_c,
                ..Default::default()
            },
            set(&["F-C"]),
        ),
        (
            "recipient_fingerprint",
            pb::SearchRecordsRequest {
                recipient_fingerprint: recipient_d,
                ..Default::default()
            },
            set(&["F-D"]),
        ),
        (
            "clinic_id",
            pb::SearchRecordsRequest {
                clinic_id: "DE-BER-01".into(),
                ..Default::default()
            },
            set(&["F-A", "F-B", "F-E"]),
        ),
        (
            "hospital_id, in any spelling of its normal form",
            pb::SearchRecordsRequest {
                hospital_id: " h-de-002 ".into(),
                ..Default::default()
            },
            set(&["F-C"]),
        ),
        (
            "procedure_country",
            pb::SearchRecordsRequest {
                procedure_country: "AT".into(),
                ..Default::default()
            },
            set(&["F-D"]),
        ),
        (
            "organ",
            pb::SearchRecordsRequest {
                organ: pb::Organ::Liver as i32,
                ..Default::default()
            },
            set(&["F-D"]),
        ),
        (
            "donor_type",
            pb::SearchRecordsRequest {
                donor_type: pb::DonorType::Deceased as i32,
                ..Default::default()
            },
            set(&["F-B"]),
        ),
        (
            "donor_nationality",
            pb::SearchRecordsRequest {
                donor_nationality: "RO".into(),
                ..Default::default()
            },
            set(&["F-C"]),
        ),
        (
            "non_resident_donor",
            pb::SearchRecordsRequest {
                non_resident_donor: Some(true),
                ..Default::default()
            },
            set(&["F-C", "F-D"]),
        ),
        (
            "non_resident_donor false",
            pb::SearchRecordsRequest {
                non_resident_donor: Some(false),
                ..Default::default()
            },
            set(&["F-A", "F-B", "F-E"]),
        ),
        (
            "non_resident_recipient",
            pb::SearchRecordsRequest {
                non_resident_recipient: Some(true),
                ..Default::default()
            },
            set(&["F-D"]),
        ),
        (
            "transplanted_after",
            pb::SearchRecordsRequest {
                transplanted_after: Some(ts("2025-06-01T10:00:00Z")),
                ..Default::default()
            },
            set(&["F-C"]),
        ),
        (
            "transplanted_before",
            pb::SearchRecordsRequest {
                transplanted_before: Some(ts("2025-03-03T10:00:00Z")),
                ..Default::default()
            },
            set(&["F-D"]),
        ),
        (
            "has_open_flags",
            pb::SearchRecordsRequest {
                has_open_flags: Some(true),
                ..Default::default()
            },
            open_records.clone(),
        ),
        (
            "has_open_flags false",
            pb::SearchRecordsRequest {
                has_open_flags: Some(false),
                ..Default::default()
            },
            without_open,
        ),
        (
            "clinic and month together",
            pb::SearchRecordsRequest {
                clinic_id: "DE-BER-01".into(),
                transplanted_after: Some(ts("2025-03-01T00:00:00Z")),
                transplanted_before: Some(ts("2025-04-01T00:00:00Z")),
                donor_type: pb::DonorType::Living as i32,
                ..Default::default()
            },
            set(&["F-A", "F-E"]),
        ),
    ];
    for (what, request, expected) in cases {
        let found: BTreeSet<String> = search_all(&mut client, request).await.into_iter().collect();
        assert_eq!(found, expected, "{what}");
    }

    // Each result carries its flags.
    let page = client
        .search_records(pb::SearchRecordsRequest {
            clinic_id: "DE-BER-01".into(),
            ..Default::default()
        })
        .await
        .expect("search")
        .into_inner();
    let e = page
        .results
        .iter()
        .find(|r| external(r) == "F-E")
        .expect("F-E");
    assert!(
        e.flags.iter().any(|f| f.rule_id == "ABO_INCOMPATIBLE"
            && f.severity == pb::Severity::High as i32
            && f.status == pb::FlagStatus::Open as i32
            && !f.flag_id.is_empty()),
        "{:?}",
        e.flags
    );
    // Identifiers never leave: only fingerprints.
    for r in &page.results {
        let stored = r.record.as_ref().expect("record");
        let t = stored.record.as_ref().expect("content");
        assert!(t.donor.as_ref().expect("donor").identifier.is_none());
        assert!(
            t.recipient
                .as_ref()
                .expect("recipient")
                .identifier
                .is_none()
        );
        assert_eq!(stored.donor_fingerprint.len(), 64);
    }
}

#[tokio::test]
async fn pages_follow_each_other_without_gaps_or_repeats() {
    let app = spawn_app().await;
    // Seven records, three of them transplanted at the same instant.
    let days = [
        "2025-01-01",
        "2025-01-05",
        "2025-01-05",
        "2025-01-05",
        "2025-02-01",
        "2024-12-31",
        "2025-03-01",
    ];
    let records: Vec<_> = days
        .iter()
        .enumerate()
        .map(|(i, at)| {
            record(&Spec {
                id: &format!("P-{i}"),
                donor: &format!("PD-{i}"),
                recipient: &format!("PR-{i}"),
                hospital: "H-DE-001",
                clinic: "DE-BER-01",
                at,
            })
        })
        .collect();
    let ids = store_all(&app, records).await;
    let mut client = auditor(&app);
    let mut request = pb::SearchRecordsRequest {
        clinic_id: "DE-BER-01".into(),
        page_size: 2,
        ..Default::default()
    };
    let mut pages = 0;
    let mut seen = Vec::new();
    loop {
        let page = client
            .search_records(request.clone())
            .await
            .expect("page")
            .into_inner();
        pages += 1;
        assert!(page.results.len() <= 2);
        seen.extend(page.results.iter().map(external));
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert_eq!(pages, 4);
    // Newest transplant first; at one instant, the newest record first.
    let mut expected: Vec<(String, i64, String)> = days
        .iter()
        .enumerate()
        .map(|(i, at)| {
            let id = format!("P-{i}");
            let n: i64 = ids[&id].parse().expect("numeric id");
            ((*at).to_owned(), n, id)
        })
        .collect();
    expected.sort_by(|a, b| (&b.0, b.1).cmp(&(&a.0, a.1)));
    let expected: Vec<String> = expected.into_iter().map(|(_, _, id)| id).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn bad_requests_are_refused_and_read_nothing() {
    let app = spawn_app().await;
    let ids = store_all(&app, vec![kidney("B-1"), kidney("B-2"), kidney("B-3")]).await;
    let mut client = auditor(&app);
    let first = client
        .search_records(pb::SearchRecordsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("a page")
        .into_inner();
    let token = first.next_page_token;
    assert!(!token.is_empty());
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let log_before = app.count("access_log").await;

    let refused: Vec<(&str, pb::SearchRecordsRequest)> = vec![
        (
            "donor_fingerprint",
            pb::SearchRecordsRequest {
                donor_fingerprint: "not hex".into(),
                ..Default::default()
            },
        ),
        (
            "recipient_fingerprint",
            pb::SearchRecordsRequest {
                recipient_fingerprint: "ab".repeat(31),
                ..Default::default()
            },
        ),
        (
            "page_size",
            pb::SearchRecordsRequest {
                page_size: -1,
                ..Default::default()
            },
        ),
        (
            "page_token",
            pb::SearchRecordsRequest {
                page_size: 1,
                page_token: tampered,
                ..Default::default()
            },
        ),
        (
            "page_token",
            pb::SearchRecordsRequest {
                page_size: 1,
                clinic_id: "DE-BER-01".into(),
                page_token: token,
                ..Default::default()
            },
        ),
        (
            "procedure_country",
            pb::SearchRecordsRequest {
                procedure_country: "ZZ".into(),
                ..Default::default()
            },
        ),
    ];
    for (field, request) in refused {
        let status = client.search_records(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert_eq!(violated_fields(&status), [field], "{status:?}");
    }

    let network = |origin, depth| pb::GetNetworkRequest {
        origin: Some(origin),
        depth,
        max_nodes: None,
    };
    let record_id = ids["B-1"].clone();
    for (field, request) in [
        (
            "depth",
            network(Origin::RecordId(record_id.clone()), Some(0)),
        ),
        (
            "depth",
            network(Origin::RecordId(record_id.clone()), Some(4)),
        ),
        ("flag_id", network(Origin::FlagId("seven".into()), None)),
        (
            "donor_fingerprint",
            network(Origin::DonorFingerprint("xyz".into()), None),
        ),
        (
            "max_nodes",
            pb::GetNetworkRequest {
                origin: Some(Origin::RecordId(record_id.clone())),
                depth: None,
                max_nodes: Some(0),
            },
        ),
        (
            "origin",
            pb::GetNetworkRequest {
                origin: None,
                depth: None,
                max_nodes: None,
            },
        ),
    ] {
        let status = client.get_network(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert_eq!(violated_fields(&status), [field], "{status:?}");
    }
    for (what, origin) in [
        ("an unknown flag", Origin::FlagId("999999".into())),
        ("an unknown record", Origin::RecordId("999999".into())),
    ] {
        let status = client
            .get_network(network(origin, None))
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::NotFound, "{what}: {status:?}");
    }
    let status = client
        .export_flags(pb::ExportFlagsRequest {
            rule_id: "NO_SUCH_RULE".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown rule");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = admin(&app)
        .list_access_log(pb::ListAccessLogRequest {
            page_token: "forged".into(),
            ..Default::default()
        })
        .await
        .expect_err("forged token");
    assert_eq!(status.code(), Code::InvalidArgument);

    assert_eq!(
        app.count("access_log").await,
        log_before,
        "a refused call reads nothing, so logs nothing"
    );
}

#[tokio::test]
async fn the_network_from_a_flag_holds_every_record_sharing_a_party() {
    let app = spawn_app().await;
    let spec = |id, donor, recipient, hospital, clinic| Spec {
        id,
        donor,
        recipient,
        hospital,
        clinic,
        at: "2025-03-03",
    };
    let mut flagged = record(&spec("N-0", "ND", "NR", "H-DE-001", "DE-BER-01"));
    flagged.donor.as_mut().expect("donor").abo = pb::AboGroup::A as i32;
    flagged.recipient.as_mut().expect("recipient").abo = pb::AboGroup::O as i32;
    let ids = store_all(
        &app,
        vec![
            flagged,
            record(&spec("N-donor", "ND", "NR1", "H-AT-001", "AT-VIE-01")),
            record(&spec("N-recipient", "ND2", "NR", "H-FR-001", "FR-PAR-01")),
            record(&spec("N-clinic", "ND3", "NR3", "H-DE-002", "DE-BER-01")),
            record(&spec("N-hospital", "ND4", "NR4", "H-DE-001", "DE-HAM-01")),
            // Shares only N-donor's clinic: three hops away.
            record(&spec("N-far", "ND5", "NR5", "H-AT-002", "AT-VIE-01")),
            record(&spec("N-none", "ND6", "NR6", "H-IT-001", "IT-ROM-01")),
        ],
    )
    .await;
    let flag = all_flags(&app, pb::ListFlagsRequest::default())
        .await
        .into_iter()
        .find(|f| f.external_record_id == "N-0" && f.rule_id == "ABO_INCOMPATIBLE")
        .expect("the flag");
    let mut client = auditor(&app);
    let net = client
        .get_network(pb::GetNetworkRequest {
            origin: Some(Origin::FlagId(flag.flag_id.clone())),
            depth: None,
            max_nodes: None,
        })
        .await
        .expect("network")
        .into_inner();
    assert!(!net.truncated);
    let record_nodes: HashMap<String, &pb::NetworkNode> = net
        .nodes
        .iter()
        .filter(|n| n.kind == pb::NodeKind::Record as i32)
        .map(|n| (n.key.clone(), n))
        .collect();
    let want: BTreeSet<String> = ["N-0", "N-donor", "N-recipient", "N-clinic", "N-hospital"]
        .iter()
        .map(|e| ids[*e].clone())
        .collect();
    let got: BTreeSet<String> = record_nodes.keys().cloned().collect();
    assert_eq!(got, want, "depth 2 from the flag");
    assert_eq!(net.origin_node_id, format!("record:{}", ids["N-0"]));
    let origin = record_nodes[&ids["N-0"]];
    assert_eq!(origin.hops, 0);
    assert!(origin.open_flags.iter().any(|f| f.flag_id == flag.flag_id));
    assert_eq!(
        origin
            .record
            .as_ref()
            .and_then(|r| r.record.as_ref())
            .map(|r| r.external_record_id.as_str()),
        Some("N-0")
    );
    // The parties carry the open flags of their records.
    let clinic = net
        .nodes
        .iter()
        .find(|n| n.node_id == "clinic:DE-BER-01")
        .expect("the clinic");
    assert_eq!(clinic.hops, 1);
    assert!(clinic.open_flags.iter().any(|f| f.flag_id == flag.flag_id));
    // Edges say how they meet.
    let edge = |from: String, to: String, kind: pb::EdgeKind| pb::NetworkEdge {
        from_node_id: from,
        to_node_id: to,
        kind: kind as i32,
    };
    let donor = net
        .nodes
        .iter()
        .find(|n| n.kind == pb::NodeKind::Donor as i32 && n.hops == 1)
        .expect("the donor");
    for e in [
        edge(
            donor.node_id.clone(),
            format!("record:{}", ids["N-donor"]),
            pb::EdgeKind::DonorOf,
        ),
        edge(
            format!("record:{}", ids["N-clinic"]),
            "clinic:DE-BER-01".into(),
            pb::EdgeKind::PerformedAt,
        ),
        edge(
            format!("record:{}", ids["N-hospital"]),
            "hospital:H-DE-001".into(),
            pb::EdgeKind::SubmittedBy,
        ),
    ] {
        assert!(net.edges.contains(&e), "{e:?} in {:?}", net.edges);
    }
    let node_ids: BTreeSet<&str> = net.nodes.iter().map(|n| n.node_id.as_str()).collect();
    assert!(net.edges.iter().all(|e| {
        node_ids.contains(e.from_node_id.as_str()) && node_ids.contains(e.to_node_id.as_str())
    }));

    // Three hops reach the record that shares only N-donor's clinic.
    let far = client
        .get_network(pb::GetNetworkRequest {
            origin: Some(Origin::RecordId(ids["N-0"].clone())),
            depth: Some(3),
            max_nodes: None,
        })
        .await
        .expect("network")
        .into_inner();
    let far_keys: BTreeSet<&str> = far.nodes.iter().map(|n| n.key.as_str()).collect();
    assert!(!far_keys.contains(ids["N-far"].as_str()), "four hops away");
    assert!(far_keys.contains("AT-VIE-01"));
    assert!(!far_keys.contains(ids["N-none"].as_str()));

    // From the donor's fingerprint: the donor's records one hop away.
    let (donor_fp, _) = fingerprints_of(&mut client, "N-0").await;
    let by_donor = client
        .get_network(pb::GetNetworkRequest {
            origin: Some(Origin::DonorFingerprint(donor_fp.clone())),
            depth: Some(1),
            max_nodes: None,
        })
        .await
        .expect("network")
        .into_inner();
    assert_eq!(by_donor.origin_node_id, format!("donor:{donor_fp}"));
    let records: BTreeSet<&str> = by_donor
        .nodes
        .iter()
        .filter(|n| n.kind == pb::NodeKind::Record as i32)
        .map(|n| n.key.as_str())
        .collect();
    assert_eq!(
        records,
        BTreeSet::from([ids["N-0"].as_str(), ids["N-donor"].as_str()])
    );

    // A bound smaller than the graph keeps the nearest and says so.
    let cut = client
        .get_network(pb::GetNetworkRequest {
            origin: Some(Origin::FlagId(flag.flag_id)),
            depth: Some(2),
            max_nodes: Some(3),
        })
        .await
        .expect("network")
        .into_inner();
    assert!(cut.truncated);
    assert_eq!(cut.nodes.len(), 3);
    assert_eq!(cut.nodes[0].hops, 0);
}

/// Reads a CSV document back, header first.
fn parse_csv(bytes: &[u8]) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(bytes)
        .records()
        .map(|r| r.expect("a CSV row").iter().map(str::to_owned).collect())
        .collect()
}

#[tokio::test]
async fn flags_export_as_csv_that_parses_back_with_formulas_neutralised() {
    let app = spawn_app().await;
    let externals = [
        "=HYPERLINK(\"http://evil\",\"x\")",
        "@SUM(A1:A9)",
        "+1-1",
        "plain, \"quoted\"",
    ];
    let records = externals
        .iter()
        .enumerate()
        .map(|(i, external)| {
            let mut r = abo_incompatible(external);
            let people = [
                &mut r.donor.as_mut().expect("donor").identifier,
                &mut r.recipient.as_mut().expect("recipient").identifier,
            ];
            for (who, id) in people.into_iter().enumerate() {
                id.as_mut().expect("identifier").value = format!("CSV{i}P{who}");
            }
            r
        })
        .collect();
    store_all(&app, records).await;
    let listed = all_flags(
        &app,
        pb::ListFlagsRequest {
            rule_id: "ABO_INCOMPATIBLE".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(listed.len(), 4);
    let mut stream = auditor(&app)
        .export_flags(pb::ExportFlagsRequest {
            rule_id: "ABO_INCOMPATIBLE".into(),
            ..Default::default()
        })
        .await
        .expect("export")
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.message().await.expect("a chunk") {
        chunks.push(chunk.chunk);
    }
    assert!(chunks.len() >= 2, "the header, then the rows");
    let doc: Vec<u8> = chunks.concat();
    let rows = parse_csv(&doc);
    assert_eq!(rows[0], transplant_audit::wire::flags_csv::HEADER);
    assert_eq!(rows.len(), 5);
    let column = |name: &str| rows[0].iter().position(|c| c == name).expect(name);
    let (flag_id, external) = (column("flag_id"), column("external_record_id"));
    let exported: Vec<&str> = rows[1..].iter().map(|r| r[flag_id].as_str()).collect();
    let expected: Vec<&str> = listed.iter().map(|f| f.flag_id.as_str()).collect();
    assert_eq!(exported, expected, "every flag, newest first");
    let externals: BTreeSet<&str> = rows[1..].iter().map(|r| r[external].as_str()).collect();
    assert_eq!(
        externals,
        BTreeSet::from([
            "'=HYPERLINK(\"http://evil\",\"x\")",
            "'@SUM(A1:A9)",
            "'+1-1",
            "plain, \"quoted\"",
        ])
    );
    for row in &rows {
        for cell in row {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "{cell:?}"
            );
        }
    }
    // One access-log entry per exported flag, after the one naming the filter.
    let logged: Vec<(String, String)> = sqlx::query_as(
        "SELECT resource, resource_id FROM access_log WHERE action = 'ExportFlags' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .expect("log");
    assert_eq!(logged.len(), 5);
    assert_eq!(logged[0].0, "export");
    assert!(logged[0].1.contains("ABO_INCOMPATIBLE"), "{:?}", logged[0]);
    let logged_flags: BTreeSet<&str> = logged[1..].iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(logged_flags, expected.iter().copied().collect());
}

#[tokio::test]
async fn every_read_is_in_the_access_log_with_its_principal_and_trace() {
    let app = spawn_app().await;
    let ids = store_all(&app, vec![kidney("L-1"), abo_incompatible("L-2")]).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(pb::SearchRecordsRequest {
        clinic_id: "DE-BER-01".into(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-00f067aa0ba902b7-01")
            .parse()
            .expect("metadata"),
    );
    let found = auditor(&app)
        .search_records(request)
        .await
        .expect("search")
        .into_inner();
    assert_eq!(found.results.len(), 2);
    let flag = all_flags(&app, pb::ListFlagsRequest::default())
        .await
        .into_iter()
        .find(|f| f.external_record_id == "L-2")
        .expect("a flag");
    auditor(&app)
        .get_network(pb::GetNetworkRequest {
            origin: Some(Origin::FlagId(flag.flag_id.clone())),
            depth: Some(1),
            max_nodes: None,
        })
        .await
        .expect("network");

    let principal: String = sqlx::query_scalar(
        "SELECT p.name FROM api_keys k JOIN principals p ON p.id = k.principal_id
         WHERE k.key_id = $1",
    )
    .bind(key_id(&app.auditor_token))
    .fetch_one(&app.pool)
    .await
    .expect("principal");

    let mut log = admin(&app);
    let search_log = log
        .list_access_log(pb::ListAccessLogRequest {
            action: "SearchRecords".into(),
            ..Default::default()
        })
        .await
        .expect("access log")
        .into_inner()
        .entries;
    assert_eq!(search_log.len(), 3, "the search and its two records");
    assert!(search_log.iter().all(|e| e.principal == principal
        && e.key_id == key_id(&app.auditor_token)
        && e.trace_id == trace
        && !e.own_trace_id.is_empty()
        && e.own_trace_id == search_log[0].own_trace_id));
    let (queries, records): (Vec<_>, Vec<_>) =
        search_log.iter().partition(|e| e.resource == "search");
    assert_eq!(queries.len(), 1);
    assert!(queries[0].resource_id.contains("DE-BER-01"));
    let read: BTreeSet<&str> = records.iter().map(|e| e.resource_id.as_str()).collect();
    assert_eq!(
        read,
        BTreeSet::from([ids["L-1"].as_str(), ids["L-2"].as_str()])
    );

    // Who read record L-2, through any call.
    let of_record = log
        .list_access_log(pb::ListAccessLogRequest {
            resource: "record".into(),
            resource_id: ids["L-2"].clone(),
            ..Default::default()
        })
        .await
        .expect("access log")
        .into_inner()
        .entries;
    let actions: BTreeSet<&str> = of_record.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, BTreeSet::from(["SearchRecords", "GetNetwork"]));
    let network = log
        .list_access_log(pb::ListAccessLogRequest {
            resource: "network".into(),
            principal: principal.clone(),
            ..Default::default()
        })
        .await
        .expect("access log")
        .into_inner()
        .entries;
    assert_eq!(network.len(), 1);
    assert!(network[0].resource_id.contains(&flag.flag_id));

    // Pages of one entry each, newest first, no entry twice.
    let total = app.count("access_log").await;
    let mut request = pb::ListAccessLogRequest {
        page_size: 1,
        ..Default::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = log
            .list_access_log(request.clone())
            .await
            .expect("page")
            .into_inner();
        seen.extend(
            page.entries
                .into_iter()
                .map(|e| e.entry_id.parse::<i64>().expect("id")),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert_eq!(seen.len() as i64, total);
    assert!(seen.windows(2).all(|w| w[0] > w[1]));

    // Auditors do not read the log of reads.
    let status = auditor(&app)
        .list_access_log(pb::ListAccessLogRequest::default())
        .await
        .expect_err("admin only");
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn an_access_log_entry_edited_or_deleted_behind_the_service_is_named_by_verify() {
    let app = spawn_app().await;
    store_all(&app, vec![kidney("V-1")]).await;
    auditor(&app)
        .search_records(pb::SearchRecordsRequest::default())
        .await
        .expect("search");
    let digests = sealed_digests(&app).await;
    let (id, seq, resource_id): (i64, i64, String) = sqlx::query_as(
        "SELECT id, ledger_seq, resource_id FROM access_log
         WHERE action = 'SearchRecords' AND resource = 'record'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("the entry");
    let db = stop(app).await;
    assert_intact(&db, &digests);

    tamper(
        &db,
        &format!("UPDATE access_log SET resource_id = '1' || resource_id WHERE id = {id}"),
    )
    .await;
    assert_named(
        &db,
        &digests,
        "an edited record read",
        &[
            format!("access log entry {id} (access_log)"),
            "its content does not match its MAC".to_owned(),
        ],
    );
    tamper(
        &db,
        &format!("UPDATE access_log SET resource_id = '{resource_id}' WHERE id = {id}"),
    )
    .await;
    assert_intact(&db, &digests);

    tamper(&db, &format!("DELETE FROM access_log WHERE id = {id}")).await;
    assert_named(
        &db,
        &digests,
        "a deleted record read",
        &[format!(
            "the row sealed at sequence number {seq} (access_log)"
        )],
    );
}

/// How many methods InvestigationService has, as compiled.
fn investigation_methods() -> usize {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).expect("descriptors");
    set.file
        .iter()
        .flat_map(|f| &f.service)
        .find(|s| s.name() == "InvestigationService")
        .map(|s| s.method.len())
        .expect("the service")
}

#[tokio::test]
async fn hospital_keys_are_refused_on_every_call() {
    let app = spawn_app().await;
    store_all(&app, vec![kidney("K-1")]).await;
    let log_before = app.count("access_log").await;
    let hospital = app.key(Role::Hospital, Some("H-DE-001")).await;
    let mut client = InvestigationServiceClient::new(app.authed(&hospital));
    let mut codes = Vec::new();
    codes.push(
        client
            .search_records(pb::SearchRecordsRequest::default())
            .await
            .map(drop),
    );
    codes.push(
        client
            .get_network(pb::GetNetworkRequest {
                origin: Some(Origin::RecordId("1".into())),
                depth: None,
                max_nodes: None,
            })
            .await
            .map(drop),
    );
    codes.push(
        client
            .export_flags(pb::ExportFlagsRequest::default())
            .await
            .map(drop),
    );
    codes.push(
        client
            .list_access_log(pb::ListAccessLogRequest::default())
            .await
            .map(drop),
    );
    let case = || "1".to_owned();
    codes.push(
        client
            .create_case(pb::CreateCaseRequest {
                title: "t".into(),
                ..Default::default()
            })
            .await
            .map(drop),
    );
    codes.push(
        client
            .get_case(pb::GetCaseRequest { case_id: case() })
            .await
            .map(drop),
    );
    codes.push(
        client
            .list_cases(pb::ListCasesRequest::default())
            .await
            .map(drop),
    );
    codes.push(
        client
            .add_flags_to_case(pb::AddFlagsToCaseRequest {
                case_id: case(),
                flag_ids: vec!["1".into()],
                ..Default::default()
            })
            .await
            .map(drop),
    );
    codes.push(
        client
            .remove_flag_from_case(pb::RemoveFlagFromCaseRequest {
                case_id: case(),
                flag_id: "1".into(),
                ..Default::default()
            })
            .await
            .map(drop),
    );
    codes.push(
        client
            .assign_case(pb::AssignCaseRequest {
                case_id: case(),
                assignee: "a".into(),
                ..Default::default()
            })
            .await
            .map(drop),
    );
    codes.push(
        client
            .update_case_status(pb::UpdateCaseStatusRequest {
                case_id: case(),
                status: pb::CaseStatus::Investigating as i32,
                etag: "1".into(),
                ..Default::default()
            })
            .await
            .map(drop),
    );
    codes.push(
        client
            .add_case_note(pb::AddCaseNoteRequest {
                case_id: case(),
                note: "n".into(),
            })
            .await
            .map(drop),
    );
    codes.push(
        client
            .suggest_cases(pb::SuggestCasesRequest::default())
            .await
            .map(drop),
    );
    codes.push(
        client
            .export_case(pb::ExportCaseRequest { case_id: case() })
            .await
            .map(drop),
    );
    codes.push(
        client
            .get_public_key(pb::GetPublicKeyRequest {})
            .await
            .map(drop),
    );
    codes.push(
        client
            .get_clinic_activity(pb::GetClinicActivityRequest {
                clinic_id: "DE-BER-01".into(),
                from_month: "2025-01".into(),
                until_month: "2025-12".into(),
            })
            .await
            .map(drop),
    );
    codes.push(
        client
            .get_country_activity(pb::GetCountryActivityRequest {
                procedure_country: "DE".into(),
                year: 2025,
            })
            .await
            .map(drop),
    );
    assert_eq!(
        codes.len(),
        investigation_methods(),
        "every method of the service is called here"
    );
    for result in codes {
        let status = result.expect_err("refused");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    // Without a key, nothing either.
    let mut anonymous = InvestigationServiceClient::new(app.channel.clone());
    let status = anonymous
        .search_records(pb::SearchRecordsRequest::default())
        .await
        .expect_err("no key");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(app.count("access_log").await, log_before);
}

#[tokio::test]
async fn the_access_log_alone_skips_the_wal_flush_and_the_evidence_written_after_it_does_not() {
    // The log's write turns synchronous_commit off for its own
    // transaction; were it the session's, every record, flag and triage
    // step later written on that pooled connection would lose durability.
    let database_url = fresh_database().await;
    let key = FingerprintKey::from_bytes(&TEST_KEY).expect("key");
    let one = PoolSettings {
        max_connections: 1,
        ..PoolSettings::default()
    };
    let store = Store::connect(&database_url, &one, &key).expect("url");
    store.migrate().await.expect("migrate");
    let actor = Actor {
        key_id: "k1",
        principal: "auditor@registry.example",
        issued_by: None,
        trace_id: None,
        own_trace_id: None,
    };
    store
        .record_reads(&actor, "SearchRecords", &[Read::of("record", 1)])
        .await
        .expect("logged");
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(store.pool())
        .await
        .expect("the pool's only connection");
    assert_eq!(setting, "on");
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM access_log")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(logged, 1, "the entry is committed");
}
