//! Investigation cases: opened, worked and referred through the API; their
//! events attacked as an insider would; suggested groups that keep rings
//! apart; and the signed dossier checked offline.

use std::process::Command;

use tonic::Code;
use tonic::service::interceptor::InterceptedService;

use transplant_audit::wire::pb;
use transplant_audit::wire::pb::investigation_service_client::InvestigationServiceClient;

use crate::helpers::*;
use crate::ledger::{assert_intact, assert_named, keep, put_back, sealed_digests, stop, tamper};

type Client = InvestigationServiceClient<Authed>;

fn client(app: &TestApp, token: &str) -> Client {
    InvestigationServiceClient::new(InterceptedService::new(
        app.channel.clone(),
        Bearer::new(token),
    ))
}

fn ids(flags: &[i64]) -> Vec<String> {
    flags.iter().map(i64::to_string).collect()
}

/// Submits `record` and returns the ids of the flags raised on it.
async fn flags_of(app: &TestApp, record: pb::TransplantRecord) -> Vec<i64> {
    let ack = submit(app, record).await.expect("stored");
    let mut found: Vec<i64> = all_flags(app, pb::ListFlagsRequest::default())
        .await
        .into_iter()
        .filter(|f| f.record_id == ack.record_id)
        .map(|f| f.flag_id.parse().expect("an id"))
        .collect();
    found.sort_unstable();
    assert!(!found.is_empty(), "the record raised a flag");
    found
}

async fn registered(app: &TestApp) {
    app.registry
        .clone()
        .upsert_clinic(pb::UpsertClinicRequest {
            clinic: Some(clinic("DE-BER-01", "DE")),
        })
        .await
        .expect("clinic");
}

async fn open(app: &TestApp, flag_ids: &[i64]) -> pb::Case {
    client(app, &app.auditor_token)
        .create_case(pb::CreateCaseRequest {
            title: "Kidneys from one donor".into(),
            summary: "Three hospitals, one passport".into(),
            flag_ids: ids(flag_ids),
            note: String::new(),
        })
        .await
        .expect("case opened")
        .into_inner()
        .case
        .expect("a case")
}

async fn get(app: &TestApp, case_id: &str) -> pb::GetCaseResponse {
    client(app, &app.auditor_token)
        .get_case(pb::GetCaseRequest {
            case_id: case_id.into(),
        })
        .await
        .expect("get case")
        .into_inner()
}

fn status_change(case: &pb::Case, to: pb::CaseStatus, note: &str) -> pb::UpdateCaseStatusRequest {
    pb::UpdateCaseStatusRequest {
        case_id: case.case_id.clone(),
        status: to as i32,
        referred_to: String::new(),
        note: note.into(),
        etag: case.etag.clone(),
    }
}

#[tokio::test]
async fn a_case_is_opened_worked_referred_and_its_trail_verifies() {
    let app = spawn_app().await;
    registered(&app).await;
    let a = flags_of(&app, abo_incompatible("CASE-1")).await;
    let b = flags_of(&app, abo_incompatible("CASE-2")).await;
    let mut auditor = client(&app, &app.auditor_token);

    let case = open(&app, &a).await;
    assert_eq!(case.status, pb::CaseStatus::Open as i32);
    assert_eq!(case.flag_ids, ids(&a));
    let case = auditor
        .add_flags_to_case(pb::AddFlagsToCaseRequest {
            case_id: case.case_id.clone(),
            flag_ids: ids(&b),
            note: "same donor pattern".into(),
            etag: case.etag.clone(),
        })
        .await
        .expect("flags added")
        .into_inner()
        .case
        .expect("case");
    let case = auditor
        .assign_case(pb::AssignCaseRequest {
            case_id: case.case_id.clone(),
            assignee: "dr-weber".into(),
            ..Default::default()
        })
        .await
        .expect("assigned")
        .into_inner()
        .case
        .expect("case");
    assert_eq!(case.assignee, "dr-weber");
    let case = auditor
        .update_case_status(status_change(&case, pb::CaseStatus::Investigating, ""))
        .await
        .expect("investigating")
        .into_inner()
        .case
        .expect("case");
    let mut referral = status_change(&case, pb::CaseStatus::Referred, "<script>alert(1)</script>");
    referral.referred_to = "Staatsanwaltschaft Berlin".into();
    let case = auditor
        .update_case_status(referral)
        .await
        .expect("referred")
        .into_inner()
        .case
        .expect("case");
    assert_eq!(case.status, pb::CaseStatus::Referred as i32);
    assert_eq!(case.referred_to, "Staatsanwaltschaft Berlin");
    auditor
        .add_case_note(pb::AddCaseNoteRequest {
            case_id: case.case_id.clone(),
            note: "dossier sent".into(),
        })
        .await
        .expect("noted");

    let got = get(&app, &case.case_id).await;
    let kinds: Vec<i32> = got.history.iter().map(|e| e.kind).collect();
    use pb::CaseEventKind as K;
    let expected = [
        K::Opened,
        K::FlagAdded,
        K::FlagAdded,
        K::Assigned,
        K::StatusChanged,
        K::StatusChanged,
        K::Noted,
    ];
    assert_eq!(kinds, expected.map(|k| k as i32));
    assert_eq!(got.case.expect("case").etag, "7");
    assert_eq!(got.flags.len(), 2);
    assert!(
        got.flags
            .iter()
            .all(|f| f.record.is_some() && !f.history.is_empty())
    );
    let principal = &got.history[0].principal;
    assert!(principal.starts_with("tester-"), "{principal}");
    let reads: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM access_log WHERE action = 'GetCase' AND resource = 'case' AND resource_id = $1",
    )
    .bind(&case.case_id)
    .fetch_one(&app.pool)
    .await
    .expect("access log");
    assert_eq!(reads, 1, "the read is in the access log");

    let listed = auditor
        .list_cases(pb::ListCasesRequest {
            status: pb::CaseStatus::Referred as i32,
            assignee: "dr-weber".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.cases.len(), 1);
    let digests = sealed_digests(&app).await;
    let db = stop(app).await;
    assert_intact(&db, &digests);
}

#[tokio::test]
async fn bad_case_changes_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    registered(&app).await;
    let a = flags_of(&app, abo_incompatible("BAD-1")).await;
    let b = flags_of(&app, abo_incompatible("BAD-2")).await;
    let case = open(&app, &a).await;
    let mut auditor = client(&app, &app.auditor_token);
    let events = || app.count("case_events");
    let before = events().await;

    let code = |r: Result<tonic::Response<pb::CreateCaseResponse>, tonic::Status>| {
        r.expect_err("refused").code()
    };
    let create = |title: &str, flag_ids: Vec<String>| pb::CreateCaseRequest {
        title: title.into(),
        flag_ids,
        ..Default::default()
    };
    assert_eq!(
        code(auditor.create_case(create(" ", vec![])).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(auditor.create_case(create("t\u{202e}x", vec![])).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(auditor.create_case(create("t", vec!["x".into()])).await),
        Code::InvalidArgument
    );
    let twice = ids(&[b[0], b[0]]);
    assert_eq!(
        code(auditor.create_case(create("t", twice)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(auditor.create_case(create("t", ids(&[999_999]))).await),
        Code::NotFound
    );
    let taken = auditor
        .create_case(create("t", ids(&[b[0], a[0]])))
        .await
        .expect_err("a flag in another case");
    assert_eq!(taken.code(), Code::FailedPrecondition);
    assert!(taken.message().contains(&case.case_id), "{taken:?}");
    assert_eq!(app.count("cases").await, 1, "no case half-opened");

    let status = |r: Result<tonic::Response<pb::UpdateCaseStatusResponse>, tonic::Status>| {
        r.expect_err("refused")
    };
    let skip = status(
        auditor
            .update_case_status(status_change(&case, pb::CaseStatus::Closed, "done"))
            .await,
    );
    assert_eq!(skip.code(), Code::FailedPrecondition, "OPEN cannot close");
    let mut stale = status_change(&case, pb::CaseStatus::Investigating, "");
    stale.etag = "5".into();
    assert_eq!(
        status(auditor.update_case_status(stale).await).code(),
        Code::Aborted
    );
    let mut no_etag = status_change(&case, pb::CaseStatus::Investigating, "");
    no_etag.etag.clear();
    assert_eq!(
        status(auditor.update_case_status(no_etag).await).code(),
        Code::InvalidArgument
    );
    let mut stray = status_change(&case, pb::CaseStatus::Investigating, "");
    stray.referred_to = "someone".into();
    assert_eq!(
        status(auditor.update_case_status(stray).await).code(),
        Code::InvalidArgument,
        "referred_to only with REFERRED"
    );
    let case = auditor
        .update_case_status(status_change(&case, pb::CaseStatus::Investigating, ""))
        .await
        .expect("investigating")
        .into_inner()
        .case
        .expect("case");
    let unnamed = status_change(&case, pb::CaseStatus::Referred, "sent");
    assert_eq!(
        status(auditor.update_case_status(unnamed).await).code(),
        Code::InvalidArgument,
        "a referral names whom"
    );
    let mut silent = status_change(&case, pb::CaseStatus::Referred, " ");
    silent.referred_to = "prosecutor".into();
    assert_eq!(
        status(auditor.update_case_status(silent).await).code(),
        Code::InvalidArgument,
        "a referral carries a note"
    );
    let after_move = events().await;
    assert_eq!(after_move, before + 1, "only the valid move was recorded");

    let removed = auditor
        .remove_flag_from_case(pb::RemoveFlagFromCaseRequest {
            case_id: case.case_id.clone(),
            flag_id: b[0].to_string(),
            ..Default::default()
        })
        .await
        .expect_err("not in the case");
    assert_eq!(removed.code(), Code::FailedPrecondition);
    let noted = auditor
        .add_case_note(pb::AddCaseNoteRequest {
            case_id: case.case_id.clone(),
            note: "\u{200b}".into(),
        })
        .await
        .expect_err("an invisible note");
    assert_eq!(noted.code(), Code::InvalidArgument);
    let unknown = auditor
        .add_case_note(pb::AddCaseNoteRequest {
            case_id: "424242".into(),
            note: "x".into(),
        })
        .await
        .expect_err("no such case");
    assert_eq!(unknown.code(), Code::NotFound);
    let nobody = auditor
        .assign_case(pb::AssignCaseRequest {
            case_id: case.case_id.clone(),
            assignee: " ".into(),
            ..Default::default()
        })
        .await
        .expect_err("nobody");
    assert_eq!(nobody.code(), Code::InvalidArgument);
    assert_eq!(events().await, after_move, "nothing else was recorded");
    assert_eq!(
        get(&app, &case.case_id).await.case.expect("case").etag,
        case.etag
    );
    app.stop().await;
}

#[tokio::test]
async fn only_auditors_change_cases_and_administrators_read_them() {
    let app = spawn_app().await;
    registered(&app).await;
    let a = flags_of(&app, abo_incompatible("ROLE-1")).await;
    let case = open(&app, &a).await;
    for token in [&app.hospital_token, &app.admin_token] {
        let mut c = client(&app, token);
        let denied = c
            .create_case(pb::CreateCaseRequest {
                title: "t".into(),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(denied.code(), Code::PermissionDenied);
        let denied = c
            .add_case_note(pb::AddCaseNoteRequest {
                case_id: case.case_id.clone(),
                note: "x".into(),
            })
            .await
            .expect_err("refused");
        assert_eq!(denied.code(), Code::PermissionDenied);
    }
    let mut admin = client(&app, &app.admin_token);
    admin
        .get_case(pb::GetCaseRequest {
            case_id: case.case_id.clone(),
        })
        .await
        .expect("an administrator reads");
    admin
        .list_cases(pb::ListCasesRequest::default())
        .await
        .expect("an administrator lists");
    app.stop().await;
}

#[tokio::test]
async fn a_case_changed_behind_the_service_is_refused_and_named() {
    let app = spawn_app().await;
    registered(&app).await;
    let a = flags_of(&app, abo_incompatible("INS-1")).await;
    let b = flags_of(&app, abo_incompatible("INS-2")).await;
    let c = flags_of(&app, abo_incompatible("INS-3")).await;
    let case = open(&app, &[a[0], b[0]]).await;
    let id = &case.case_id;
    let mut auditor = client(&app, &app.auditor_token);
    auditor
        .update_case_status(status_change(&case, pb::CaseStatus::Investigating, "on it"))
        .await
        .expect("investigating");
    sealed_digests(&app).await;

    // A closed case put back to INVESTIGATING in the table, or a flag slipped
    // in: the service signs nothing on top.
    let tables = ["cases", "case_flags", "case_events"];
    keep(&app, &tables).await;
    for sql in [
        format!("UPDATE cases SET status = 'OPEN', revision = 3 WHERE id = {id}"),
        format!("INSERT INTO case_flags VALUES ({}, {id})", c[0]),
        format!("DELETE FROM case_flags WHERE flag_id = {}", b[0]),
    ] {
        tamper(&app, &sql).await;
        let refused = auditor
            .add_case_note(pb::AddCaseNoteRequest {
                case_id: id.clone(),
                note: "more".into(),
            })
            .await
            .expect_err("a tampered case");
        assert_eq!(
            refused.code(),
            Code::FailedPrecondition,
            "{sql}: {refused:?}"
        );
        put_back(&app, &tables).await;
    }
    assert_eq!(app.count("case_events").await, 4, "nothing signed on top");

    auditor
        .add_case_note(pb::AddCaseNoteRequest {
            case_id: id.clone(),
            note: "the newest".into(),
        })
        .await
        .expect("noted");
    let digests = sealed_digests(&app).await;
    let db = stop(app).await;
    assert_intact(&db, &digests);
    keep(&db, &tables).await;
    let attacks = [
        (
            "status edited",
            format!("UPDATE cases SET status = 'CLOSED' WHERE id = {id}"),
            format!("case {id}"),
        ),
        (
            "a flag slipped in",
            format!("INSERT INTO case_flags VALUES ({}, {id})", c[0]),
            format!("case {id}"),
        ),
        (
            "a flag taken out",
            format!("DELETE FROM case_flags WHERE flag_id = {}", a[0]),
            format!("case {id}"),
        ),
        (
            "a note rewritten",
            format!("UPDATE case_events SET note = 'nothing' WHERE case_id = {id} AND step = 5"),
            format!("case {id} event 5"),
        ),
        (
            "the newest note deleted and the row rewound",
            format!(
                "DELETE FROM case_events WHERE case_id = {id} AND step = 5;
                 UPDATE cases SET revision = 4,
                     updated_at = (SELECT at FROM case_events WHERE case_id = {id} AND step = 4)
                 WHERE id = {id}"
            ),
            "case_events".to_owned(),
        ),
        (
            "the whole case deleted",
            format!(
                "DELETE FROM case_events WHERE case_id = {id}; DELETE FROM case_flags WHERE case_id = {id};
                 DELETE FROM cases WHERE id = {id}"
            ),
            "case_events".to_owned(),
        ),
    ];
    for (what, sql, name) in attacks {
        tamper(&db, &sql).await;
        assert_named(&db, &digests, what, &[name]);
        put_back(&db, &tables).await;
    }
    assert_intact(&db, &digests);
}

#[tokio::test]
async fn an_exported_dossier_verifies_offline_and_an_edited_one_names_the_field() {
    let app = spawn_app().await;
    registered(&app).await;
    let a = flags_of(&app, abo_incompatible("DOS-1")).await;
    amend(
        &app,
        abo_incompatible_amended("DOS-1"),
        "cold ischaemia added",
    )
    .await
    .expect("amended");
    let case = open(&app, &a).await;
    let mut auditor = client(&app, &app.auditor_token);
    auditor
        .add_case_note(pb::AddCaseNoteRequest {
            case_id: case.case_id.clone(),
            note: "referral prepared".into(),
        })
        .await
        .expect("noted");
    sealed_digests(&app).await;
    let exported = auditor
        .export_case(pb::ExportCaseRequest {
            case_id: case.case_id.clone(),
        })
        .await
        .expect("exported")
        .into_inner();
    assert!(exported.file_name.ends_with(".dossier.json"));
    let public_key = client(&app, &app.admin_token)
        .get_public_key(pb::GetPublicKeyRequest {})
        .await
        .expect("public key")
        .into_inner()
        .public_key;
    let missing = auditor
        .export_case(pb::ExportCaseRequest {
            case_id: "77777".into(),
        })
        .await
        .expect_err("no such case");
    assert_eq!(missing.code(), Code::NotFound);
    app.stop().await;

    let doc: serde_json::Value = serde_json::from_slice(&exported.dossier).expect("JSON");
    assert_eq!(
        doc["flags"][0]["record_versions"].as_array().map(Vec::len),
        Some(2)
    );
    assert!(
        doc["flags"][0]["steps"][0]["ledger"]["block"].is_i64(),
        "sealed steps name their block"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |doc: &serde_json::Value, key: &str| {
        let file = dir.path().join("case.dossier.json");
        std::fs::write(&file, serde_json::to_vec_pretty(doc).expect("JSON")).expect("write");
        // No database, no secret: only the file and the public key.
        Command::new(env!("CARGO_BIN_EXE_transplant-audit"))
            .arg("verify-dossier")
            .arg(&file)
            .args(["--public-key", key])
            .env_clear()
            .output()
            .expect("run verify-dossier")
    };
    let out = check(&doc, &public_key);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact"));

    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit); 3] = [
        ("/case_events/1/note", |d| {
            d["case_events"][1]["note"] = "nothing".into()
        }),
        ("/flags/0/record_versions/0/record/donor/age_years", |d| {
            d["flags"][0]["record_versions"][0]["record"]["donor"]["age_years"] = 30.into();
        }),
        ("/flags/0/steps/0/to_status", |d| {
            d["flags"][0]["steps"][0]["to_status"] = "DISMISSED".into();
        }),
    ];
    for (path, edit) in edits {
        let mut edited = doc.clone();
        edit(&mut edited);
        let out = check(&edited, &public_key);
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{path}: {said}");
        assert!(said.contains(path), "{path}: {said}");
    }
    let other = transplant_audit::domain::ledger::SigningKey::from_seed(&[9; 32]).public();
    let out = check(&doc, &other.to_string());
    assert_eq!(out.status.code(), Some(4), "another registry's key");
    let out = check(&doc, "not-hex");
    assert_eq!(out.status.code(), Some(2), "a key that is none");
}

/// The same record with the cold ischaemia time added.
fn abo_incompatible_amended(external_record_id: &str) -> pb::TransplantRecord {
    pb::TransplantRecord {
        cold_ischemia_minutes: Some(95),
        ..abo_incompatible(external_record_id)
    }
}

/// A record of a ring: its own persons unless `donor` names a shared one.
fn ring_record(id: &str, clinic_id: &str, day: u32, donor: Option<&str>) -> pb::TransplantRecord {
    let mut r = abo_incompatible(id);
    r.clinic_id = clinic_id.into();
    let mut at = ts("2025-01-01T10:00:00Z");
    at.seconds += i64::from(day) * 86_400;
    r.transplanted_at = Some(at);
    at.seconds -= 3600;
    r.procured_at = Some(at);
    if let (Some(d), Some(donor)) = (r.donor.as_mut(), donor) {
        d.identifier = identifier(donor);
    }
    r
}

#[tokio::test]
async fn suggested_cases_hold_each_ring_whole_and_apart() {
    let app = spawn_app().await;
    registered(&app).await;
    // Ring A: one donor's kidneys, three hospitals' worth, months apart, at
    // a registered clinic.
    let mut ring_a = Vec::new();
    for (i, day) in [0u32, 90, 200].into_iter().enumerate() {
        let r = ring_record(&format!("A-{i}"), "DE-BER-01", day, Some("SOLD-KIDNEY-1"));
        ring_a.extend(flags_of(&app, r).await);
    }
    // Ring B: an unregistered clinic, a transplant every three weeks.
    let mut ring_b = Vec::new();
    for (i, day) in [0u32, 21, 42, 63].into_iter().enumerate() {
        let r = ring_record(&format!("B-{i}"), "XX-BACKROOM", day, None);
        ring_b.extend(flags_of(&app, r).await);
    }
    // Alone: the same back room, but five months after the ring's last; and a
    // slip at the registered clinic.
    flags_of(&app, ring_record("B-late", "XX-BACKROOM", 63 + 150, None)).await;
    flags_of(&app, ring_record("lone", "DE-BER-01", 90, None)).await;
    ring_a.sort_unstable();
    ring_b.sort_unstable();

    let mut auditor = client(&app, &app.auditor_token);
    let suggested = auditor
        .suggest_cases(pb::SuggestCasesRequest::default())
        .await
        .expect("suggest")
        .into_inner();
    let groups: Vec<Vec<String>> = suggested
        .groups
        .iter()
        .map(|g| g.flag_ids.clone())
        .collect();
    assert_eq!(groups.len(), 2, "{suggested:?}");
    assert!(groups.contains(&ids(&ring_a)), "{groups:?} {ring_a:?}");
    assert!(groups.contains(&ids(&ring_b)), "{groups:?} {ring_b:?}");
    assert!(suggested.groups.iter().all(|g| !g.reasons.is_empty()));
    assert_eq!(
        auditor
            .suggest_cases(pb::SuggestCasesRequest::default())
            .await
            .expect("again")
            .into_inner(),
        suggested,
        "the same data, the same answer"
    );
    let negative = auditor
        .suggest_cases(pb::SuggestCasesRequest { max_groups: -1 })
        .await
        .expect_err("refused");
    assert_eq!(negative.code(), Code::InvalidArgument);

    // Once a ring is a case, it is no longer suggested.
    open(&app, &ring_b).await;
    let left = auditor
        .suggest_cases(pb::SuggestCasesRequest::default())
        .await
        .expect("suggest")
        .into_inner();
    let groups: Vec<Vec<String>> = left.groups.iter().map(|g| g.flag_ids.clone()).collect();
    assert_eq!(groups, [ids(&ring_a)]);
    app.stop().await;
}
