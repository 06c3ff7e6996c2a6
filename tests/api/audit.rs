//! Tests of audit: listing flags with filters and stable pagination, opening a
//! case, triage with etags and notes, and the append-only history.

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use tonic::Code;

use transplant_audit::domain::{Role, Severity};
use transplant_audit::rules::config::RuleSettings;
use transplant_audit::rules::{RuleId, RulesConfig};
use transplant_audit::wire::pb;
use transplant_audit::wire::pb::audit_service_client::AuditServiceClient;

use crate::helpers::*;

const CLINIC: &str = "DE-BER-01";
const TRACE_A: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACE_B: &str = "0af7651916cd43dd8448eb211c80319c";

async fn register(app: &TestApp, entry: pb::Clinic) {
    app.registry
        .clone()
        .upsert_clinic(pb::UpsertClinicRequest {
            clinic: Some(entry),
        })
        .await
        .expect("upsert clinic");
}

/// A server whose registry knows `DE-BER-01` in DE, so that the helper records
/// raise only the rule under test.
async fn app_with_clinic() -> TestApp {
    let app = spawn_app().await;
    register(&app, clinic(CLINIC, "DE")).await;
    app
}

/// Submits a record that must be accepted; returns its record id.
async fn accepted(app: &TestApp, record: pb::TransplantRecord) -> String {
    let ext = record.external_record_id.clone();
    let ack = submit(app, record)
        .await
        .unwrap_or_else(|s| panic!("submitting {ext}: {s:?}"));
    assert_eq!(
        ack.outcome,
        pb::Outcome::Accepted as i32,
        "record {ext} was not accepted: {ack:?}"
    );
    ack.record_id
}

/// Every flag of one record.
async fn flags_of(app: &TestApp, record_id: &str) -> Vec<pb::Flag> {
    all_flags(app, pb::ListFlagsRequest::default())
        .await
        .into_iter()
        .filter(|f| f.record_id == record_id)
        .collect()
}

/// Submits `record`, checks that it raises exactly `rule` and returns that flag.
async fn only_flag(app: &TestApp, record: pb::TransplantRecord, rule: &str) -> pb::Flag {
    let ext = record.external_record_id.clone();
    let id = accepted(app, record).await;
    let mut flags = flags_of(app, &id).await;
    let rules: Vec<&str> = flags.iter().map(|f| f.rule_id.as_str()).collect();
    assert_eq!(rules, [rule], "record {ext} should raise {rule} alone");
    flags.remove(0)
}

/// An ABO-incompatible record's one flag.
async fn abo_flag(app: &TestApp, ext: &str) -> pb::Flag {
    only_flag(app, abo_incompatible(ext), "ABO_INCOMPATIBLE").await
}

async fn list(
    app: &TestApp,
    request: pb::ListFlagsRequest,
) -> Result<pb::ListFlagsResponse, tonic::Status> {
    app.audit
        .clone()
        .list_flags(request)
        .await
        .map(tonic::Response::into_inner)
}

/// The external record ids of every flag matching `request`, in listing order.
async fn listed(app: &TestApp, request: pb::ListFlagsRequest) -> Vec<String> {
    all_flags(app, request)
        .await
        .into_iter()
        .map(|f| f.external_record_id)
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

async fn get_flag(app: &TestApp, flag_id: &str) -> pb::GetFlagResponse {
    app.audit
        .clone()
        .get_flag(pb::GetFlagRequest {
            flag_id: flag_id.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("GetFlag {flag_id}: {s:?}"))
        .into_inner()
}

fn triage_request(
    flag_id: &str,
    to: pb::FlagStatus,
    note: &str,
    etag: &str,
) -> pb::UpdateFlagStatusRequest {
    pb::UpdateFlagStatusRequest {
        flag_id: flag_id.into(),
        status: to as i32,
        note: note.into(),
        etag: etag.into(),
    }
}

async fn update(
    app: &TestApp,
    flag_id: &str,
    to: pb::FlagStatus,
    note: &str,
    etag: &str,
) -> Result<pb::Flag, tonic::Status> {
    let response = app
        .audit
        .clone()
        .update_flag_status(triage_request(flag_id, to, note, etag))
        .await?;
    Ok(response.into_inner().flag.expect("the flag after the step"))
}

/// Moves a flag one legal step and returns it; panics on failure.
async fn step(app: &TestApp, flag: &pb::Flag, to: pb::FlagStatus, note: &str) -> pb::Flag {
    update(app, &flag.flag_id, to, note, &flag.etag)
        .await
        .unwrap_or_else(|s| panic!("moving flag {} to {to:?}: {s:?}", flag.flag_id))
}

/// The triage steps of a flag's history: every step after the one that raised it.
fn triage_steps(history: &[pb::FlagEvent]) -> Vec<&pb::FlagEvent> {
    history.iter().filter(|e| e.kind != "RAISED").collect()
}

/// The triage steps stored for a flag.
async fn events_of(app: &TestApp, flag_id: &str) -> i64 {
    let id: i64 = flag_id.parse().expect("numeric flag id");
    sqlx::query_scalar("SELECT count(*) FROM flag_events WHERE flag_id = $1 AND kind <> 'RAISED'")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .expect("count events")
}

fn assert_code(
    result: Result<impl std::fmt::Debug, tonic::Status>,
    code: Code,
    field: Option<&str>,
    what: &str,
) {
    let status = match result {
        Ok(v) => panic!("{what}: expected {code:?}, got success {v:?}"),
        Err(s) => s,
    };
    assert_eq!(status.code(), code, "{what}: wrong code ({status:?})");
    if let Some(field) = field {
        assert_eq!(
            violated_fields(&status),
            [field],
            "{what}: wrong field violations ({status:?})"
        );
    }
}

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("timestamp")
        .with_timezone(&Utc)
}

fn traced(
    request: pb::UpdateFlagStatusRequest,
    trace: &str,
) -> tonic::Request<pb::UpdateFlagStatusRequest> {
    let mut req = tonic::Request::new(request);
    let value = format!("00-{trace}-00f067aa0ba902b7-01");
    req.metadata_mut()
        .insert("traceparent", value.parse().expect("metadata value"));
    req
}

// ---------------------------------------------------------------- ListFlags filters

#[tokio::test]
async fn list_flags_filters_by_status() {
    let app = app_with_clinic().await;
    abo_flag(&app, "ST-OPEN").await;
    let review = abo_flag(&app, "ST-REVIEW").await;
    let dismissed = abo_flag(&app, "ST-DISMISSED").await;
    step(&app, &review, pb::FlagStatus::InReview, "").await;
    let d = step(&app, &dismissed, pb::FlagStatus::InReview, "").await;
    step(
        &app,
        &d,
        pb::FlagStatus::Dismissed,
        "declared protocol found",
    )
    .await;

    let by = |s: pb::FlagStatus| pb::ListFlagsRequest {
        status: s as i32,
        ..Default::default()
    };
    assert_eq!(
        listed(&app, by(pb::FlagStatus::Open)).await,
        ["ST-OPEN"],
        "status=OPEN"
    );
    assert_eq!(
        listed(&app, by(pb::FlagStatus::InReview)).await,
        ["ST-REVIEW"],
        "status=IN_REVIEW"
    );
    assert_eq!(
        listed(&app, by(pb::FlagStatus::Dismissed)).await,
        ["ST-DISMISSED"],
        "status=DISMISSED"
    );
    assert!(
        listed(&app, by(pb::FlagStatus::Confirmed)).await.is_empty(),
        "status=CONFIRMED matches nothing"
    );
    assert_eq!(
        sorted(listed(&app, by(pb::FlagStatus::Unspecified)).await),
        ["ST-DISMISSED", "ST-OPEN", "ST-REVIEW"],
        "an unspecified status is no filter"
    );
    let bad = pb::ListFlagsRequest {
        status: 42,
        ..Default::default()
    };
    assert_code(
        list(&app, bad).await,
        Code::InvalidArgument,
        Some("status"),
        "unknown status value",
    );
}

#[tokio::test]
async fn list_flags_filters_by_min_severity() {
    // No rule is LOW by default: make ISCHEMIA_IMPLAUSIBLE LOW to cover all four levels.
    let mut rules = RulesConfig::default();
    rules.rules.insert(
        RuleId::IschemiaImplausible,
        RuleSettings {
            enabled: true,
            severity: Some(Severity::Low),
        },
    );
    let app = spawn_app_with(rules).await;
    register(&app, clinic(CLINIC, "DE")).await;
    register(&app, clinic("AT-VIE-01", "AT")).await;

    let mut low = kidney("SEV-LOW");
    low.cold_ischemia_minutes = Some(600); // the timestamps say 120
    let low = only_flag(&app, low, "ISCHEMIA_IMPLAUSIBLE").await;
    let mut medium = kidney("SEV-MEDIUM");
    medium.clinic_id = "AT-VIE-01".into(); // registered in AT, procedure in DE
    let medium = only_flag(&app, medium, "CLINIC_COUNTRY_MISMATCH").await;
    let high = abo_flag(&app, "SEV-HIGH").await;
    let mut critical = kidney("SEV-CRITICAL");
    critical.organ = pb::Organ::Heart as i32;
    critical.laterality = pb::Laterality::NotApplicable as i32;
    let critical = only_flag(&app, critical, "LIVING_DONOR_ORGAN").await;
    for (flag, severity) in [
        (&low, pb::Severity::Low),
        (&medium, pb::Severity::Medium),
        (&high, pb::Severity::High),
        (&critical, pb::Severity::Critical),
    ] {
        assert_eq!(
            flag.severity, severity as i32,
            "severity of {}",
            flag.rule_id
        );
    }

    let at_least = |s: pb::Severity| pb::ListFlagsRequest {
        min_severity: s as i32,
        ..Default::default()
    };
    let all = ["SEV-CRITICAL", "SEV-HIGH", "SEV-LOW", "SEV-MEDIUM"];
    assert_eq!(
        sorted(listed(&app, at_least(pb::Severity::Unspecified)).await),
        all,
        "no minimum"
    );
    assert_eq!(
        sorted(listed(&app, at_least(pb::Severity::Low)).await),
        all,
        "min LOW"
    );
    assert_eq!(
        sorted(listed(&app, at_least(pb::Severity::Medium)).await),
        ["SEV-CRITICAL", "SEV-HIGH", "SEV-MEDIUM"],
        "min MEDIUM includes HIGH and CRITICAL, excludes LOW"
    );
    assert_eq!(
        sorted(listed(&app, at_least(pb::Severity::High)).await),
        ["SEV-CRITICAL", "SEV-HIGH"],
        "min HIGH"
    );
    assert_eq!(
        listed(&app, at_least(pb::Severity::Critical)).await,
        ["SEV-CRITICAL"],
        "min CRITICAL"
    );
    let bad = pb::ListFlagsRequest {
        min_severity: 9,
        ..Default::default()
    };
    assert_code(
        list(&app, bad).await,
        Code::InvalidArgument,
        Some("min_severity"),
        "unknown severity",
    );
}

#[tokio::test]
async fn list_flags_filters_by_rule_id_and_refuses_unknown_rules() {
    let app = app_with_clinic().await;
    register(&app, clinic("AT-VIE-01", "AT")).await;
    abo_flag(&app, "RULE-ABO").await;
    let mut mismatch = kidney("RULE-COUNTRY");
    mismatch.clinic_id = "AT-VIE-01".into();
    only_flag(&app, mismatch, "CLINIC_COUNTRY_MISMATCH").await;

    let by = |rule: &str| pb::ListFlagsRequest {
        rule_id: rule.into(),
        ..Default::default()
    };
    assert_eq!(listed(&app, by("ABO_INCOMPATIBLE")).await, ["RULE-ABO"]);
    assert_eq!(
        listed(&app, by("CLINIC_COUNTRY_MISMATCH")).await,
        ["RULE-COUNTRY"]
    );
    assert!(
        listed(&app, by("CLINIC_NOT_LICENSED")).await.is_empty(),
        "a known rule that raised nothing lists nothing"
    );
    for unknown in ["NOT_A_RULE", "abo_incompatible", "ABO_INCOMPATIBLE "] {
        assert_code(
            list(&app, by(unknown)).await,
            Code::InvalidArgument,
            Some("rule_id"),
            &format!("rule_id {unknown:?}"),
        );
    }
}

#[tokio::test]
async fn list_flags_filters_by_clinic_and_hospital() {
    let app = app_with_clinic().await;
    register(&app, clinic("DE-MUC-01", "DE")).await;
    abo_flag(&app, "CH-BER-H1").await;
    let mut munich = abo_incompatible("CH-MUC-H1");
    munich.clinic_id = "DE-MUC-01".into();
    only_flag(&app, munich, "ABO_INCOMPATIBLE").await;
    let mut other_hospital = abo_incompatible("CH-BER-H2");
    other_hospital.hospital_id = "H-DE-002".into();
    only_flag(&app, other_hospital, "ABO_INCOMPATIBLE").await;

    let clinic_filter = |c: &str| pb::ListFlagsRequest {
        clinic_id: c.into(),
        ..Default::default()
    };
    assert_eq!(
        sorted(listed(&app, clinic_filter(CLINIC)).await),
        ["CH-BER-H1", "CH-BER-H2"]
    );
    assert_eq!(
        listed(&app, clinic_filter("DE-MUC-01")).await,
        ["CH-MUC-H1"]
    );
    assert!(
        listed(&app, clinic_filter("DE-NOWHERE")).await.is_empty(),
        "unknown clinic lists nothing"
    );

    let hospital = |h: &str| pb::ListFlagsRequest {
        hospital_id: h.into(),
        ..Default::default()
    };
    assert_eq!(
        sorted(listed(&app, hospital("H-DE-001")).await),
        ["CH-BER-H1", "CH-MUC-H1"]
    );
    assert_eq!(listed(&app, hospital("H-DE-002")).await, ["CH-BER-H2"]);
    assert!(
        listed(&app, hospital("H-XX-999")).await.is_empty(),
        "unknown hospital lists nothing"
    );

    let both = pb::ListFlagsRequest {
        clinic_id: CLINIC.into(),
        hospital_id: "H-DE-001".into(),
        ..Default::default()
    };
    assert_eq!(
        listed(&app, both).await,
        ["CH-BER-H1"],
        "filters combine with AND"
    );
}

#[tokio::test]
async fn list_flags_filters_by_raised_range() {
    let app = app_with_clinic().await;
    let january = abo_flag(&app, "RANGE-JAN").await;
    let february = abo_flag(&app, "RANGE-FEB").await;
    let march = abo_flag(&app, "RANGE-MAR").await;
    // Pin raised_at far apart so the test does not depend on the clock.
    for (flag, when) in [
        (&january, "2025-01-10T12:00:00Z"),
        (&february, "2025-02-10T12:00:00Z"),
        (&march, "2025-03-10T12:00:00Z"),
    ] {
        let id: i64 = flag.flag_id.parse().expect("numeric id");
        sqlx::query("UPDATE flags SET raised_at = $2 WHERE id = $1")
            .bind(id)
            .bind(at(when))
            .execute(&app.pool)
            .await
            .expect("pin raised_at");
    }
    let range = |after: Option<&str>, before: Option<&str>| pb::ListFlagsRequest {
        raised_after: after.map(ts),
        raised_before: before.map(ts),
        ..Default::default()
    };
    assert_eq!(
        listed(&app, range(Some("2025-02-01T00:00:00Z"), None)).await,
        ["RANGE-MAR", "RANGE-FEB"],
        "raised_after"
    );
    assert_eq!(
        listed(&app, range(None, Some("2025-03-01T00:00:00Z"))).await,
        ["RANGE-FEB", "RANGE-JAN"],
        "raised_before"
    );
    assert_eq!(
        listed(
            &app,
            range(Some("2025-02-01T00:00:00Z"), Some("2025-03-01T00:00:00Z"))
        )
        .await,
        ["RANGE-FEB"],
        "both bounds"
    );
    assert_eq!(
        listed(
            &app,
            range(Some("2025-02-10T12:00:00Z"), Some("2025-03-10T12:00:00Z"))
        )
        .await,
        ["RANGE-FEB"],
        "raised_after is inclusive, raised_before exclusive"
    );
    assert!(
        listed(&app, range(Some("2025-03-10T12:00:01Z"), None))
            .await
            .is_empty(),
        "nothing raised after the last flag"
    );
    assert!(
        listed(
            &app,
            range(Some("2025-03-01T00:00:00Z"), Some("2025-02-01T00:00:00Z"))
        )
        .await
        .is_empty(),
        "an empty range lists nothing"
    );
    let bad = pb::ListFlagsRequest {
        raised_after: Some(prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        }),
        ..Default::default()
    };
    assert_code(
        list(&app, bad).await,
        Code::InvalidArgument,
        Some("raised_after"),
        "invalid timestamp",
    );
}

#[tokio::test]
async fn list_flags_is_newest_first() {
    let app = app_with_clinic().await;
    for ext in ["ORDER-1", "ORDER-2", "ORDER-3", "ORDER-4"] {
        abo_flag(&app, ext).await;
    }
    let flags = all_flags(&app, pb::ListFlagsRequest::default()).await;
    let exts: Vec<&str> = flags
        .iter()
        .map(|f| f.external_record_id.as_str())
        .collect();
    assert_eq!(
        exts,
        ["ORDER-4", "ORDER-3", "ORDER-2", "ORDER-1"],
        "newest first"
    );
    for pair in flags.windows(2) {
        let (newer, older) = (&pair[0], &pair[1]);
        let raised = |f: &pb::Flag| {
            f.raised_at
                .map(|t| (t.seconds, t.nanos))
                .expect("raised_at")
        };
        assert!(
            raised(newer) >= raised(older),
            "raised_at must not increase down the list: {pair:?}"
        );
    }
}

// ---------------------------------------------------------------- pagination

#[tokio::test]
async fn pagination_walk_returns_every_flag_exactly_once() {
    let app = app_with_clinic().await;
    for i in 0..7 {
        abo_flag(&app, &format!("PAGE-{i}")).await;
    }
    let mut request = pb::ListFlagsRequest {
        page_size: 3,
        ..Default::default()
    };
    let mut sizes = Vec::new();
    let mut seen: Vec<i64> = Vec::new();
    loop {
        let page = list(&app, request.clone()).await.expect("page");
        sizes.push(page.flags.len());
        seen.extend(
            page.flags
                .iter()
                .map(|f| f.flag_id.parse::<i64>().expect("numeric id")),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(sizes.len() < 10, "pagination does not end");
        request.page_token = page.next_page_token;
    }
    assert_eq!(sizes, [3, 3, 1], "page sizes");
    let unique: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "a flag came twice: {seen:?}");
    let mut stored: Vec<i64> = sqlx::query_scalar("SELECT id FROM flags")
        .fetch_all(&app.pool)
        .await
        .expect("ids");
    stored.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(
        seen, stored,
        "the walk returns every stored flag, newest first"
    );

    // An exact multiple of the page size ends without an empty trailing page.
    let first = list(
        &app,
        pb::ListFlagsRequest {
            page_size: 7,
            ..Default::default()
        },
    )
    .await
    .expect("page");
    assert_eq!(first.flags.len(), 7);
    assert!(
        first.next_page_token.is_empty(),
        "no token when nothing follows"
    );
    // The default page size covers them all.
    let default = list(&app, pb::ListFlagsRequest::default())
        .await
        .expect("page");
    assert_eq!(default.flags.len(), 7);
    assert!(default.next_page_token.is_empty());
}

#[tokio::test]
async fn page_token_is_bound_to_its_filters() {
    let app = app_with_clinic().await;
    for i in 0..3 {
        abo_flag(&app, &format!("BOUND-{i}")).await;
    }
    let first = pb::ListFlagsRequest {
        status: pb::FlagStatus::Open as i32,
        page_size: 1,
        ..Default::default()
    };
    let token = list(&app, first.clone())
        .await
        .expect("first page")
        .next_page_token;
    assert!(
        !token.is_empty(),
        "three flags in pages of one leave more to read"
    );

    // Same filters, another page size: fine.
    let same = pb::ListFlagsRequest {
        page_token: token.clone(),
        page_size: 5,
        ..first.clone()
    };
    assert_eq!(list(&app, same).await.expect("same filters").flags.len(), 2);

    let others = [
        (
            "other status",
            pb::ListFlagsRequest {
                status: pb::FlagStatus::InReview as i32,
                ..first.clone()
            },
        ),
        (
            "no status",
            pb::ListFlagsRequest {
                status: 0,
                ..first.clone()
            },
        ),
        (
            "rule added",
            pb::ListFlagsRequest {
                rule_id: "ABO_INCOMPATIBLE".into(),
                ..first.clone()
            },
        ),
        (
            "severity added",
            pb::ListFlagsRequest {
                min_severity: pb::Severity::High as i32,
                ..first.clone()
            },
        ),
        (
            "clinic added",
            pb::ListFlagsRequest {
                clinic_id: CLINIC.into(),
                ..first.clone()
            },
        ),
        (
            "hospital added",
            pb::ListFlagsRequest {
                hospital_id: "H-DE-001".into(),
                ..first.clone()
            },
        ),
        (
            "range added",
            pb::ListFlagsRequest {
                raised_after: Some(ts("2020-01-01T00:00:00Z")),
                ..first.clone()
            },
        ),
    ];
    for (what, mut request) in others {
        request.page_token = token.clone();
        assert_code(
            list(&app, request).await,
            Code::InvalidArgument,
            Some("page_token"),
            what,
        );
    }
}

#[tokio::test]
async fn garbage_page_tokens_and_negative_page_sizes_are_invalid() {
    let app = app_with_clinic().await;
    abo_flag(&app, "GARBAGE-1").await;
    let garbage = [
        "garbage".to_owned(),
        "!!!not base64!!!".to_owned(),
        URL_SAFE_NO_PAD.encode("hello"),
        URL_SAFE_NO_PAD.encode("v1|0000000000000000|5"),
        URL_SAFE_NO_PAD.encode([0xff, 0xfe, 0x00]),
    ];
    for token in garbage {
        let request = pb::ListFlagsRequest {
            page_token: token.clone(),
            ..Default::default()
        };
        assert_code(
            list(&app, request).await,
            Code::InvalidArgument,
            Some("page_token"),
            &format!("token {token:?}"),
        );
    }
    for size in [-1, -50, i32::MIN] {
        let request = pb::ListFlagsRequest {
            page_size: size,
            ..Default::default()
        };
        assert_code(
            list(&app, request).await,
            Code::InvalidArgument,
            Some("page_size"),
            &format!("page_size {size}"),
        );
    }
}

#[tokio::test]
async fn pages_stay_stable_while_new_flags_arrive() {
    let app = app_with_clinic().await;
    for i in 0..5 {
        abo_flag(&app, &format!("STABLE-OLD-{i}")).await;
    }
    let existing: HashSet<String> = all_flags(&app, pb::ListFlagsRequest::default())
        .await
        .into_iter()
        .map(|f| f.flag_id)
        .collect();
    assert_eq!(existing.len(), 5);

    let mut request = pb::ListFlagsRequest {
        page_size: 2,
        ..Default::default()
    };
    let page1 = list(&app, request.clone()).await.expect("page 1");
    assert_eq!(page1.flags.len(), 2);
    let mut seen: Vec<String> = page1.flags.iter().map(|f| f.flag_id.clone()).collect();

    // New flags arrive between page 1 and page 2.
    for i in 0..3 {
        abo_flag(&app, &format!("STABLE-NEW-{i}")).await;
    }
    request.page_token = page1.next_page_token;
    while !request.page_token.is_empty() {
        let page = list(&app, request.clone()).await.expect("later page");
        seen.extend(page.flags.iter().map(|f| f.flag_id.clone()));
        request.page_token = page.next_page_token;
        assert!(seen.len() < 20, "pagination does not end");
    }
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "no flag twice across pages: {seen:?}"
    );
    let skipped: Vec<&String> = existing.difference(&unique).collect();
    assert!(
        skipped.is_empty(),
        "flags that existed at page 1 were skipped: {skipped:?}"
    );
    assert_eq!(
        all_flags(&app, pb::ListFlagsRequest::default()).await.len(),
        8,
        "a new walk sees the new flags"
    );
}

// ---------------------------------------------------------------- GetFlag

#[tokio::test]
async fn get_flag_returns_the_case_without_identifiers() {
    let app = app_with_clinic().await;
    // The same living donor gives a second kidney: ANATOMICAL_MAXIMUM with the first as evidence.
    let first = kidney("CASE-1");
    let mut second = kidney("CASE-2");
    second.laterality = pb::Laterality::Right as i32;
    second.donor = first.donor.clone();
    let first_id = accepted(&app, first).await;
    let flag = only_flag(&app, second, "ANATOMICAL_MAXIMUM").await;
    assert_eq!(
        flag.evidence_record_ids,
        std::slice::from_ref(&first_id),
        "evidence of the flag"
    );

    let case = get_flag(&app, &flag.flag_id).await;
    assert_eq!(
        case.flag.as_ref(),
        Some(&flag),
        "GetFlag's flag equals the listed one"
    );
    assert!(
        triage_steps(&case.history).is_empty(),
        "no triage yet: {:?}",
        case.history
    );
    assert_eq!(
        case.history[0].kind, "RAISED",
        "only the step that raised it"
    );

    let record = case.record.expect("the flagged record");
    assert_eq!(record.record_id, flag.record_id);
    assert_eq!(record.version, 1);
    let body = record.record.as_ref().expect("record body");
    assert_eq!(body.external_record_id, "CASE-2");
    assert_eq!(body.hospital_id, "H-DE-001");
    assert_eq!(body.clinic_id, CLINIC);
    assert_eq!(body.organ, pb::Organ::Kidney as i32);
    assert_eq!(body.laterality, pb::Laterality::Right as i32);
    let donor = body.donor.as_ref().expect("donor");
    let recipient = body.recipient.as_ref().expect("recipient");
    assert_eq!(donor.identifier, None, "donor identifier must be absent");
    assert_eq!(
        recipient.identifier, None,
        "recipient identifier must be absent"
    );
    assert_eq!(donor.abo, pb::AboGroup::O as i32);
    assert_eq!(donor.donor_type, pb::DonorType::Living as i32);
    let is_fingerprint = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(
        is_fingerprint(&record.donor_fingerprint),
        "donor fingerprint {:?}",
        record.donor_fingerprint
    );
    assert!(
        is_fingerprint(&record.recipient_fingerprint),
        "recipient fingerprint {:?}",
        record.recipient_fingerprint
    );
    assert_ne!(record.donor_fingerprint, record.recipient_fingerprint);

    assert_eq!(case.evidence.len(), 1, "one evidence record");
    let evidence = &case.evidence[0];
    assert_eq!(evidence.record_id, first_id);
    assert_eq!(
        evidence.donor_fingerprint, record.donor_fingerprint,
        "same donor, same fingerprint"
    );
    let evidence_body = evidence.record.as_ref().expect("evidence body");
    assert_eq!(evidence_body.external_record_id, "CASE-1");
    assert_eq!(
        evidence_body
            .donor
            .as_ref()
            .and_then(|d| d.identifier.as_ref()),
        None
    );
    assert_eq!(
        evidence_body
            .recipient
            .as_ref()
            .and_then(|r| r.identifier.as_ref()),
        None
    );

    let moved = step(&app, &flag, pb::FlagStatus::InReview, "looking").await;
    let case = get_flag(&app, &flag.flag_id).await;
    assert_eq!(
        case.flag.as_ref(),
        Some(&moved),
        "GetFlag shows the flag after triage"
    );
    assert_eq!(
        triage_steps(&case.history).len(),
        1,
        "history after one step"
    );
}

#[tokio::test]
async fn get_flag_refuses_unknown_and_malformed_ids() {
    let app = app_with_clinic().await;
    let flag = abo_flag(&app, "GET-ERR").await;
    let unknown = (flag.flag_id.parse::<i64>().expect("numeric") + 1000).to_string();
    let result = app
        .audit
        .clone()
        .get_flag(pb::GetFlagRequest { flag_id: unknown })
        .await;
    assert_code(result, Code::NotFound, None, "unknown flag id");
    for bad in ["abc", "", "0", "-3", "1.5", " 1", "99999999999999999999999"] {
        let result = app
            .audit
            .clone()
            .get_flag(pb::GetFlagRequest {
                flag_id: bad.into(),
            })
            .await;
        assert_code(
            result,
            Code::InvalidArgument,
            Some("flag_id"),
            &format!("flag_id {bad:?}"),
        );
    }
}

// ---------------------------------------------------------------- triage

#[tokio::test]
async fn triage_walks_the_lifecycle_and_records_every_step() {
    use pb::FlagStatus::{Confirmed, Dismissed, InReview, Open};
    let app = app_with_clinic().await;
    let mut flag = abo_flag(&app, "TRIAGE-1").await;
    assert_eq!(flag.status, Open as i32, "a new flag is OPEN");

    // (to, note, traceparent trace id)
    let steps: [(pb::FlagStatus, &str, Option<&str>); 8] = [
        (InReview, "", Some(TRACE_A)),
        (Confirmed, "broker paid the donor", None),
        (Open, "new evidence from the hospital", Some(TRACE_B)),
        (InReview, "second look", None),
        (Dismissed, "desensitisation protocol documented", None),
        (Open, "reopened by supervisor", None),
        (InReview, "", None),
        (Open, "back to the queue", None),
    ];
    let mut etags = vec![flag.etag.clone()];
    for (to, note, trace) in steps {
        let request = triage_request(&flag.flag_id, to, note, &flag.etag);
        let request = match trace {
            Some(t) => traced(request, t),
            None => tonic::Request::new(request),
        };
        let response = app
            .audit
            .clone()
            .update_flag_status(request)
            .await
            .unwrap_or_else(|s| panic!("moving to {to:?}: {s:?}"));
        let moved = response.into_inner().flag.expect("flag");
        assert_eq!(moved.status, to as i32, "status after moving to {to:?}");
        assert!(
            !etags.contains(&moved.etag),
            "etag {} reused after moving to {to:?}",
            moved.etag
        );
        assert_eq!(moved.flag_id, flag.flag_id);
        etags.push(moved.etag.clone());
        let read = get_flag(&app, &flag.flag_id).await.flag.expect("flag");
        assert_eq!(read.status, to as i32, "GetFlag sees the step to {to:?}");
        assert_eq!(read.etag, moved.etag, "GetFlag shows the returned etag");
        flag = moved;
    }

    let all = get_flag(&app, &flag.flag_id).await.history;
    assert_eq!(
        (all[0].kind.as_str(), all[0].principal.as_str(), all[0].step),
        ("RAISED", "rules", 1),
        "the rules raised it: the first step"
    );
    let history = triage_steps(&all);
    assert_eq!(
        history.len(),
        steps.len(),
        "one event per step: {history:?}"
    );
    let mut from = Open;
    for (i, ((to, note, trace), event)) in steps.iter().zip(&history).enumerate() {
        assert_eq!(event.from_status, from as i32, "event {i} from");
        assert_eq!(event.to_status, *to as i32, "event {i} to");
        assert_eq!(event.note, *note, "event {i} note");
        assert_eq!(event.trace_id, trace.unwrap_or(""), "event {i} trace id");
        assert!(!event.actor.is_empty(), "event {i} has an actor");
        assert!(event.at.is_some(), "event {i} has a time");
        from = *to;
    }
    let times: Vec<(i64, i32)> = history
        .iter()
        .map(|e| e.at.map(|t| (t.seconds, t.nanos)).unwrap_or_default())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "history oldest first: {times:?}"
    );
    assert_eq!(
        events_of(&app, &flag.flag_id).await,
        steps.len() as i64,
        "flag_events rows"
    );
}

#[tokio::test]
async fn illegal_transitions_fail_and_change_nothing() {
    use pb::FlagStatus::{Confirmed, Dismissed, InReview, Open};
    let app = app_with_clinic().await;
    let flag = abo_flag(&app, "ILLEGAL-1").await;

    let check_refused = |flag: pb::Flag, attempts: Vec<pb::FlagStatus>| {
        let app = &app;
        async move {
            let before = get_flag(app, &flag.flag_id).await;
            for to in attempts {
                let result = update(app, &flag.flag_id, to, "a note", &flag.etag).await;
                let from = pb::FlagStatus::try_from(flag.status).expect("status");
                assert_code(
                    result,
                    Code::FailedPrecondition,
                    None,
                    &format!("{from:?} -> {to:?}"),
                );
            }
            let after = get_flag(app, &flag.flag_id).await;
            assert_eq!(
                after.flag, before.flag,
                "a refused transition changes nothing"
            );
            assert_eq!(
                after.history, before.history,
                "a refused transition records nothing"
            );
        }
    };

    check_refused(flag.clone(), vec![Confirmed, Dismissed, Open]).await;
    assert_eq!(events_of(&app, &flag.flag_id).await, 0);

    let review = step(&app, &flag, InReview, "").await;
    check_refused(review.clone(), vec![InReview]).await;
    let confirmed = step(&app, &review, Confirmed, "confirmed").await;
    check_refused(confirmed.clone(), vec![Dismissed, InReview, Confirmed]).await;

    let other = abo_flag(&app, "ILLEGAL-2").await;
    let other = step(&app, &other, InReview, "").await;
    let dismissed = step(&app, &other, Dismissed, "not a case").await;
    check_refused(dismissed.clone(), vec![Confirmed, InReview, Dismissed]).await;
    assert_eq!(
        events_of(&app, &flag.flag_id).await,
        2,
        "only the legal steps were recorded"
    );
}

#[tokio::test]
async fn closing_a_case_needs_a_note() {
    use pb::FlagStatus::{Confirmed, Dismissed, InReview};
    let app = app_with_clinic().await;
    let flag = abo_flag(&app, "NOTE-1").await;
    let review = step(&app, &flag, InReview, "").await;
    let before = get_flag(&app, &flag.flag_id).await;
    for (to, note) in [
        (Confirmed, ""),
        (Confirmed, "   "),
        (Dismissed, ""),
        (Dismissed, "\n\t "),
    ] {
        let result = update(&app, &review.flag_id, to, note, &review.etag).await;
        assert_code(
            result,
            Code::InvalidArgument,
            Some("note"),
            &format!("{to:?} with note {note:?}"),
        );
    }
    let after = get_flag(&app, &flag.flag_id).await;
    assert_eq!(after.flag, before.flag, "nothing changed without a note");
    assert_eq!(triage_steps(&after.history).len(), 1);
    let confirmed = step(&app, &review, Confirmed, "with a note").await;
    assert_eq!(confirmed.status, Confirmed as i32);
}

#[tokio::test]
async fn missing_garbage_and_stale_etags_are_refused() {
    use pb::FlagStatus::{InReview, Open};
    let app = app_with_clinic().await;
    let flag = abo_flag(&app, "ETAG-1").await;
    for etag in ["", "abc", "-1", "0", "1.0"] {
        let result = update(&app, &flag.flag_id, InReview, "", etag).await;
        assert_code(
            result,
            Code::InvalidArgument,
            Some("etag"),
            &format!("etag {etag:?}"),
        );
    }
    assert_eq!(
        events_of(&app, &flag.flag_id).await,
        0,
        "invalid etags change nothing"
    );

    let wrong = (flag.etag.parse::<i64>().expect("numeric etag") + 7).to_string();
    assert_code(
        update(&app, &flag.flag_id, InReview, "", &wrong).await,
        Code::Aborted,
        None,
        "etag never issued",
    );

    let moved = step(&app, &flag, InReview, "").await;
    assert_ne!(moved.etag, flag.etag, "the etag changes with each step");
    // A second auditor still holding the first etag.
    let stale = update(&app, &flag.flag_id, Open, "", &flag.etag).await;
    let (why, retry) = reason(stale.as_ref().expect_err("stale"));
    assert_eq!(
        (why.as_str(), retry),
        ("STALE_ETAG", false),
        "read again, not retry"
    );
    assert_code(stale, Code::Aborted, None, "stale etag");
    let now = get_flag(&app, &flag.flag_id).await;
    assert_eq!(
        now.flag.as_ref().map(|f| f.status),
        Some(InReview as i32),
        "stale write changed nothing"
    );
    assert_eq!(triage_steps(&now.history).len(), 1);

    let unknown = (flag.flag_id.parse::<i64>().expect("numeric") + 1000).to_string();
    assert_code(
        update(&app, &unknown, InReview, "", "1").await,
        Code::NotFound,
        None,
        "unknown flag",
    );
    assert_code(
        update(&app, "abc", InReview, "", "1").await,
        Code::InvalidArgument,
        Some("flag_id"),
        "bad flag id",
    );
    let unspecified = update(
        &app,
        &flag.flag_id,
        pb::FlagStatus::Unspecified,
        "",
        &moved.etag,
    )
    .await;
    assert_code(
        unspecified,
        Code::InvalidArgument,
        Some("status"),
        "unspecified status",
    );
    let mut request = triage_request(&flag.flag_id, Open, "", &moved.etag);
    request.status = 17;
    let unknown_status = app.audit.clone().update_flag_status(request).await;
    assert_code(
        unknown_status,
        Code::InvalidArgument,
        Some("status"),
        "unknown status value",
    );
}

/// Another auditor, with a key of their own, on a connection of their own.
async fn second_auditor(app: &TestApp) -> AuditServiceClient<Authed> {
    let token = app.key(Role::Auditor, None).await;
    AuditServiceClient::new(second_connection(app, &token).await)
}

#[tokio::test]
async fn two_auditors_racing_on_one_etag_one_wins() {
    let app = app_with_clinic().await;
    let mut alice = app.audit.clone();
    let mut bob = second_auditor(&app).await;
    for round in 0..6 {
        let flag = abo_flag(&app, &format!("RACE-{round}")).await;
        let a = triage_request(
            &flag.flag_id,
            pb::FlagStatus::InReview,
            "alice takes it",
            &flag.etag,
        );
        let b = triage_request(
            &flag.flag_id,
            pb::FlagStatus::InReview,
            "bob takes it",
            &flag.etag,
        );
        let (ra, rb) = tokio::join!(alice.update_flag_status(a), bob.update_flag_status(b));
        let results = [ra.map(|r| r.into_inner()), rb.map(|r| r.into_inner())];
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(
            wins, 1,
            "round {round}: exactly one auditor wins: {results:?}"
        );
        let loser = results
            .iter()
            .find_map(|r| r.as_ref().err())
            .expect("a loser");
        assert_eq!(
            loser.code(),
            Code::Aborted,
            "round {round}: the loser gets ABORTED: {loser:?}"
        );
        assert_eq!(
            events_of(&app, &flag.flag_id).await,
            1,
            "round {round}: exactly one flag_events row"
        );
        let case = get_flag(&app, &flag.flag_id).await;
        let winner = results
            .iter()
            .find_map(|r| r.as_ref().ok())
            .and_then(|r| r.flag.clone())
            .expect("winner");
        assert_eq!(
            case.flag.as_ref(),
            Some(&winner),
            "round {round}: stored flag is the winner's"
        );
        assert_eq!(triage_steps(&case.history).len(), 1);
    }
}

#[tokio::test]
async fn two_auditors_closing_one_case_differently_one_wins() {
    use pb::FlagStatus::{Confirmed, Dismissed, InReview};
    let app = app_with_clinic().await;
    let mut alice = app.audit.clone();
    let mut bob = second_auditor(&app).await;
    for round in 0..4 {
        let flag = abo_flag(&app, &format!("CLOSE-RACE-{round}")).await;
        let flag = step(&app, &flag, InReview, "").await;
        let a = triage_request(&flag.flag_id, Confirmed, "trafficking", &flag.etag);
        let b = triage_request(&flag.flag_id, Dismissed, "paperwork error", &flag.etag);
        let (ra, rb) = tokio::join!(
            tokio::spawn(async move { alice.update_flag_status(a).await.map(|r| r.into_inner()) }),
            tokio::spawn(async move { bob.update_flag_status(b).await.map(|r| r.into_inner()) }),
        );
        alice = app.audit.clone();
        bob = second_auditor(&app).await;
        let results = [ra.expect("join"), rb.expect("join")];
        let winners: Vec<&pb::UpdateFlagStatusResponse> =
            results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one wins: {results:?}"
        );
        let loser = results
            .iter()
            .find_map(|r| r.as_ref().err())
            .expect("a loser");
        assert_eq!(loser.code(), Code::Aborted, "round {round}: {loser:?}");
        let won = winners[0].flag.as_ref().expect("flag").status;
        let case = get_flag(&app, &flag.flag_id).await;
        assert_eq!(
            case.flag.as_ref().map(|f| f.status),
            Some(won),
            "round {round}: stored status is the winner's"
        );
        assert_eq!(
            triage_steps(&case.history).len(),
            2,
            "round {round}: IN_REVIEW and one close"
        );
        assert_eq!(triage_steps(&case.history)[1].to_status, won);
    }
}

// ---------------------------------------------------------------- append-only history

async fn refused(app: &TestApp, sql: &str) {
    let err = sqlx::query(sql)
        .execute(&app.pool)
        .await
        .err()
        .unwrap_or_else(|| panic!("{sql:?} succeeded"));
    let db = err
        .as_database_error()
        .unwrap_or_else(|| panic!("{sql:?}: not a database error: {err:?}"));
    assert!(
        db.message().contains("append-only"),
        "{sql:?} failed for another reason: {db:?}"
    );
}

#[tokio::test]
async fn history_tables_are_append_only_in_the_database() {
    let app = app_with_clinic().await;
    let flag = abo_flag(&app, "APPEND-1").await;
    let flag = step(&app, &flag, pb::FlagStatus::InReview, "original note").await;
    step(&app, &flag, pb::FlagStatus::Confirmed, "confirmed note").await;
    let mut amended = abo_incompatible("APPEND-1");
    amended.cold_ischemia_minutes = Some(120);
    amend(&app, amended, "add ischemia").await.expect("amend");
    assert_eq!(
        app.count("flag_events").await,
        4,
        "steps to protect: raised, two triage steps, re-evaluated by the amendment"
    );
    assert_eq!(
        app.count("record_versions").await,
        1,
        "the replaced version to protect"
    );

    let snapshot = |table: &'static str| {
        let pool = app.pool.clone();
        async move {
            let q = format!(
                "SELECT coalesce(string_agg(row_to_json(t)::text, E'\\n' ORDER BY row_to_json(t)::text), '') FROM {table} t"
            );
            sqlx::query_scalar::<_, String>(&q)
                .fetch_one(&pool)
                .await
                .expect("snapshot")
        }
    };
    let events_before = snapshot("flag_events").await;
    let versions_before = snapshot("record_versions").await;

    refused(&app, "UPDATE flag_events SET note = 'rewritten'").await;
    refused(
        &app,
        "UPDATE flag_events SET to_status = 'DISMISSED' WHERE to_status = 'CONFIRMED'",
    )
    .await;
    refused(&app, "DELETE FROM flag_events").await;
    refused(&app, "TRUNCATE flag_events").await;
    refused(&app, "UPDATE record_versions SET reason = 'rewritten'").await;
    refused(
        &app,
        "UPDATE record_versions SET body = '{}'::jsonb WHERE version = 1",
    )
    .await;
    refused(&app, "DELETE FROM record_versions").await;
    refused(&app, "TRUNCATE record_versions").await;

    assert_eq!(
        snapshot("flag_events").await,
        events_before,
        "flag_events unchanged"
    );
    assert_eq!(
        snapshot("record_versions").await,
        versions_before,
        "record_versions unchanged"
    );
    let history = get_flag(&app, &flag.flag_id).await.history;
    let notes: Vec<&str> = history.iter().map(|e| e.note.as_str()).collect();
    assert_eq!(notes, ["", "original note", "confirmed note", ""]);
}

#[tokio::test]
async fn flags_raised_before_they_carried_their_record_id_are_listed_with_it() {
    let app = app_with_clinic().await;
    abo_flag(&app, "BEFORE-MIGRATION").await;
    // The schema as it stood before flags carried the record's external id,
    // with the flag already in it.
    sqlx::query("ALTER TABLE flags DROP COLUMN external_record_id")
        .execute(&app.pool)
        .await
        .expect("drop the column");
    let forgotten = sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE description = 'flags carry external record id'",
    )
    .execute(&app.pool)
    .await
    .expect("forget the migration");
    assert_eq!(forgotten.rows_affected(), 1);
    let database_url = app.database_url.clone();
    app.stop().await;

    let app = spawn_app_on(&database_url, RulesConfig::default()).await;
    assert_eq!(
        listed(&app, pb::ListFlagsRequest::default()).await,
        ["BEFORE-MIGRATION"]
    );
}
