//! Re-running rules over history: the admin RPC, the library with resume,
//! the `rescan` command, and rule quality for auditors.

use std::ops::ControlFlow;

use transplant_audit::domain::RecordId;
use transplant_audit::rescan::{self, RescanRequest};
use transplant_audit::rules::{ClinicWindow, Engine, RuleId, RulesConfig, WindowSpec};
use transplant_audit::store::rescan::TransplantRange;
use transplant_audit::wire::pb;

use crate::helpers::*;

const SURGE: &str = "CLINIC_FOREIGN_DONOR_SURGE";

fn foreign_unrelated(external_record_id: &str) -> pb::TransplantRecord {
    let mut r = kidney(external_record_id);
    let d = r.donor.as_mut().expect("donor");
    d.nationality = "MD".into();
    d.country_of_residence = "MD".into();
    d.relation_to_recipient = pb::DonorRelation::UnrelatedDirected as i32;
    r
}

fn surge_threshold(min_count: u32) -> RulesConfig {
    RulesConfig::from_toml_str(&format!("[surge]\nmin_count = {min_count}\n")).expect("config")
}

/// Five unrelated foreign donors at one registered clinic: one surge flag by default.
async fn five_foreign_donors() -> TestApp {
    let app = spawn_app().await;
    app.registry
        .clone()
        .upsert_clinic(pb::UpsertClinicRequest {
            clinic: Some(clinic("DE-BER-01", "DE")),
        })
        .await
        .expect("clinic");
    for i in 1..=5 {
        submit(&app, foreign_unrelated(&format!("F-{i}")))
            .await
            .expect("accepted");
    }
    app
}

async fn run_rescan(app: &TestApp, request: pb::RescanRequest) -> pb::RescanResponse {
    let mut stream = app
        .admin
        .clone()
        .rescan(request)
        .await
        .expect("rescan")
        .into_inner();
    let mut last = None;
    while let Some(message) = stream.message().await.expect("progress") {
        last = Some(message);
    }
    last.expect("a final message")
}

fn change<'a>(report: &'a pb::RescanReport, rule: &str) -> &'a pb::RuleChange {
    report
        .rules
        .iter()
        .find(|c| c.rule_id == rule)
        .expect("rule in report")
}

async fn surge_flags(app: &TestApp) -> Vec<String> {
    let request = pb::ListFlagsRequest {
        rule_id: SURGE.into(),
        ..Default::default()
    };
    let mut ids: Vec<String> = all_flags(app, request)
        .await
        .into_iter()
        .map(|f| f.external_record_id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_lower_threshold_adds_flags_once_and_a_dry_run_writes_nothing() {
    let app = five_foreign_donors().await;
    assert_eq!(surge_flags(&app).await, ["F-5"]);
    // The operator lowers the surge threshold to 3 and redeploys.
    let tuned = spawn_app_on(&app.database_url, surge_threshold(3)).await;
    let rules = vec![SURGE.to_owned()];

    let dry = run_rescan(
        &tuned,
        pb::RescanRequest {
            rule_ids: rules.clone(),
            dry_run: true,
            ..Default::default()
        },
    )
    .await;
    let report = dry.report.expect("report");
    assert!(report.dry_run && dry.run_id.is_empty());
    assert_eq!(report.processed, 5);
    let surge = change(&report, SURGE);
    assert_eq!(
        (surge.added, surge.still_raised, surge.no_longer_raised),
        (2, 1, 0)
    );
    assert_eq!(surge.added_record_ids.len(), 2);
    assert_eq!(
        surge_flags(&tuned).await,
        ["F-5"],
        "a dry run writes nothing"
    );
    assert_eq!(tuned.count("rescans").await, 0);

    let real = run_rescan(
        &tuned,
        pb::RescanRequest {
            rule_ids: rules.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(real.report.expect("report").flags_added, 2);
    assert!(!real.run_id.is_empty());
    assert_eq!(surge_flags(&tuned).await, ["F-3", "F-4", "F-5"]);

    let flags_before = tuned.count("flags").await;
    let again = run_rescan(
        &tuned,
        pb::RescanRequest {
            rule_ids: rules,
            ..Default::default()
        },
    )
    .await;
    let report = again.report.expect("report");
    assert_eq!(report.flags_added, 0, "a second run never duplicates");
    assert_eq!(change(&report, SURGE).still_raised, 3);
    assert_eq!(tuned.count("flags").await, flags_before);
    tuned.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_higher_threshold_reports_flags_it_would_no_longer_raise_and_keeps_them() {
    let app = five_foreign_donors().await;
    let strict = spawn_app_on(&app.database_url, surge_threshold(10)).await;
    let response = run_rescan(
        &strict,
        pb::RescanRequest {
            rule_ids: vec![SURGE.into()],
            ..Default::default()
        },
    )
    .await;
    let report = response.report.expect("report");
    let surge = change(&report, SURGE);
    assert_eq!(
        (surge.added, surge.still_raised, surge.no_longer_raised),
        (0, 0, 1)
    );
    assert_eq!(surge.no_longer_raised_flag_ids.len(), 1);
    assert_eq!(
        surge_flags(&strict).await,
        ["F-5"],
        "an auditor's case is never deleted"
    );
    strict.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn rescan_requests_are_validated() {
    let app = spawn_app().await;
    let mut admin = app.admin.clone();
    let bad = [
        (
            pb::RescanRequest {
                rule_ids: vec!["NOPE".into()],
                ..Default::default()
            },
            "rule_ids[0]",
        ),
        (
            pb::RescanRequest {
                resume_run_id: "x".into(),
                ..Default::default()
            },
            "resume_run_id",
        ),
        (
            pb::RescanRequest {
                resume_run_id: "1".into(),
                dry_run: true,
                ..Default::default()
            },
            "resume_run_id",
        ),
    ];
    for (request, field) in bad {
        let status = admin.rescan(request).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(violated_fields(&status), [field]);
    }
    let unknown = pb::RescanRequest {
        resume_run_id: "999".into(),
        ..Default::default()
    };
    let mut stream = admin.rescan(unknown).await.expect("stream").into_inner();
    let status = stream.message().await.expect_err("no such run");
    assert_eq!(status.code(), tonic::Code::NotFound);
    app.stop().await;
}

#[tokio::test]
async fn an_interrupted_rescan_resumes_where_it_stopped() {
    let app = five_foreign_donors().await;
    let store = app.store.clone();
    let engine = Engine::new(surge_threshold(1));
    let request = RescanRequest {
        rules: vec![RuleId::ClinicForeignDonorSurge],
        chunk_size: 2,
        ..Default::default()
    };
    // Stop after the first chunk, as a crash or a cancelled call would.
    let first = rescan::rescan(&store, &engine, request, |_| ControlFlow::Break(()))
        .await
        .expect("first part");
    assert_eq!((first.processed, first.flags_added), (2, 2));
    let run = first.run_id.expect("a recorded run");

    let resume = RescanRequest {
        resume: Some(run),
        chunk_size: 2,
        ..Default::default()
    };
    let rest = rescan::rescan(&store, &engine, resume, |_| ControlFlow::Continue(()))
        .await
        .expect("rest");
    assert_eq!(
        (rest.processed, rest.flags_added),
        (3, 2),
        "F-3 and F-4 added; F-5 was flagged at ingest"
    );
    assert_eq!(surge_flags(&app).await, ["F-1", "F-2", "F-3", "F-4", "F-5"]);

    let done = RescanRequest {
        resume: Some(run),
        ..Default::default()
    };
    let err = rescan::rescan(&store, &engine, done, |_| ControlFlow::Continue(()))
        .await
        .expect_err("finished");
    assert!(err.to_string().contains("already complete"), "{err}");
    app.stop().await;
}

#[tokio::test]
async fn the_rescan_command_prints_a_dry_run_report() {
    let app = five_foreign_donors().await;
    let rules = tempfile_with("[surge]\nmin_count = 3\n");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_transplant-audit"))
        .args(["rescan", "--dry-run", "--rule", SURGE])
        .env("DATABASE_URL", &app.database_url)
        .env("FINGERPRINT_KEY", hex_key())
        .env("RULES_CONFIG", rules.path())
        .output()
        .expect("run the binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("Dry run over 5 records; 2 flags would add."),
        "{stdout}"
    );
    assert!(stdout.contains("records/s"), "{stdout}");
    assert_eq!(surge_flags(&app).await, ["F-5"]);

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_transplant-audit"))
        .args(["rescan", "--rule", "NOPE"])
        .env("DATABASE_URL", &app.database_url)
        .env("FINGERPRINT_KEY", hex_key())
        .output()
        .expect("run the binary");
    assert_eq!(bad.status.code(), Some(2), "bad usage");
    assert!(
        String::from_utf8_lossy(&bad.stdout).is_empty()
            || !String::from_utf8_lossy(&bad.stdout).contains("Rescanned")
    );
    app.stop().await;
}

fn hex_key() -> String {
    TEST_KEY.iter().map(|b| format!("{b:02x}")).collect()
}

fn tempfile_with(text: &str) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write");
    file
}

#[tokio::test]
async fn rule_quality_counts_triage_outcomes_and_precision() {
    let app = spawn_app().await;
    for i in 0..3 {
        submit(&app, abo_incompatible(&format!("Q-{i}")))
            .await
            .expect("accepted");
    }
    let flags = all_flags(
        &app,
        pb::ListFlagsRequest {
            rule_id: "ABO_INCOMPATIBLE".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(flags.len(), 3);
    let mut audit = app.audit.clone();
    for (flag, outcome) in flags
        .iter()
        .zip([
            pb::FlagStatus::Confirmed,
            pb::FlagStatus::Confirmed,
            pb::FlagStatus::Dismissed,
        ])
        .take(3)
    {
        let step = |status: pb::FlagStatus, etag: &str| pb::UpdateFlagStatusRequest {
            flag_id: flag.flag_id.clone(),
            status: status as i32,
            note: "checked with the hospital".into(),
            etag: etag.into(),
        };
        audit
            .update_flag_status(step(pb::FlagStatus::InReview, "1"))
            .await
            .expect("review");
        audit
            .update_flag_status(step(outcome, "2"))
            .await
            .expect("close");
    }
    let quality = audit
        .get_rule_quality(pb::GetRuleQualityRequest::default())
        .await
        .expect("quality")
        .into_inner();
    assert_eq!(quality.rules.len(), RuleId::ALL.len());
    let abo = quality
        .rules
        .iter()
        .find(|q| q.rule_id == "ABO_INCOMPATIBLE")
        .expect("abo");
    assert_eq!((abo.confirmed, abo.dismissed, abo.open), (2, 1, 0));
    assert!((abo.precision.expect("precision") - 2.0 / 3.0).abs() < 1e-9);
    let unregistered = quality
        .rules
        .iter()
        .find(|q| q.rule_id == "CLINIC_UNREGISTERED")
        .expect("rule");
    assert_eq!(unregistered.open, 3);
    assert_eq!(
        unregistered.precision, None,
        "no precision before any flag is closed"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_bad_rules_configuration_stops_start_up_naming_the_key() {
    let database_url = fresh_database().await;
    for (config, key) in [
        ("[surge]\nmin_count = 0\n", "surge.min_count"),
        ("[rules.NOT_A_RULE]\nenabled = false\n", "NOT_A_RULE"),
        ("[cluster]\nwindow = 3\n", "window"),
    ] {
        let rules = tempfile_with(config);
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_transplant-audit"))
            .args(["serve", "--listen-addr", "127.0.0.1:0"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env("DATABASE_URL", &database_url)
            .env("FINGERPRINT_KEY", hex_key())
            .env("RULES_CONFIG", rules.path())
            .output()
            .expect("run the binary");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "started with {config:?}");
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
    }
}

/// A record of the window test: deceased donors to residents and to
/// non-residents, and foreign living donors related or not, at two clinics,
/// mostly in time order with some back-filled years earlier, and donors who
/// come back.
fn window_record(i: usize) -> pb::TransplantRecord {
    let mut r = kidney(&format!("W-{i:03}"));
    let day = if i % 13 == 5 {
        i as i64 * 3 - 900
    } else {
        i as i64 * 3
    };
    let at = chrono::DateTime::parse_from_rfc3339("2021-01-01T10:00:00Z").expect("instant")
        + chrono::Duration::days(day)
        + chrono::Duration::hours((i % 3) as i64);
    let stamp = |t: chrono::DateTime<chrono::FixedOffset>| prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    };
    r.transplanted_at = Some(stamp(at));
    r.procured_at = Some(stamp(at - chrono::Duration::hours(2)));
    if i % 2 == 1 {
        r.clinic_id = "DE-HAM-01".into();
    }
    r.laterality = if i % 4 < 2 {
        pb::Laterality::Left
    } else {
        pb::Laterality::Right
    } as i32;
    let donor = r.donor.as_mut().expect("donor");
    donor.identifier.as_mut().expect("identifier").value = format!("WD{}", i % 23);
    match i % 3 {
        0 | 2 => {
            donor.donor_type = pb::DonorType::Deceased as i32;
            donor.relation_to_recipient = 0;
            donor.death_at = Some(stamp(at - chrono::Duration::hours(5)));
            donor.death_kind = pb::DeathKind::Dbd as i32;
            if i % 3 == 0 {
                let recipient = r.recipient.as_mut().expect("recipient");
                recipient.nationality = "IL".into();
                recipient.country_of_residence = "IL".into();
            }
        }
        _ => {
            donor.nationality = if i % 4 == 1 { "MD" } else { "UA" }.into();
            donor.country_of_residence = donor.nationality.clone();
            donor.relation_to_recipient = if i % 5 == 0 {
                pb::DonorRelation::Sibling
            } else {
                pb::DonorRelation::UnrelatedDirected
            } as i32;
        }
    }
    r
}

fn sorted(mut window: ClinicWindow) -> ClinicWindow {
    window.foreign_unrelated_living.sort();
    window.foreign_living_donors.sort();
    window
}

#[tokio::test]
async fn a_rescan_loads_the_same_context_as_the_per_record_queries() {
    let app = spawn_app().await;
    for (id, country) in [("DE-BER-01", "DE"), ("DE-HAM-01", "DE")] {
        app.registry
            .clone()
            .upsert_clinic(pb::UpsertClinicRequest {
                clinic: Some(clinic(id, country)),
            })
            .await
            .expect("clinic");
    }
    for i in 0..90 {
        submit(&app, window_record(i)).await.expect("accepted");
    }
    let engine = Engine::default();
    let stored = app
        .store
        .records_between(RecordId(0), RecordId(i64::MAX), TransplantRange::default())
        .await
        .expect("records");
    assert_eq!(stored.len(), 90);
    let mut expected = Vec::new();
    for s in &stored {
        let record = &s.record;
        let spec = WindowSpec::for_record(record, engine.config());
        let window = app
            .store
            .clinic_window(&record.clinic_id, record.transplanted_at, spec, s.id)
            .await
            .expect("window");
        let history = app
            .store
            .donor_histories(&[record.donor.person.identifier], s.id)
            .await
            .expect("history")
            .remove(&record.donor.person.identifier)
            .unwrap_or_default();
        expected.push((s.id, sorted(window), history));
    }
    let count = |f: fn(&ClinicWindow) -> bool| expected.iter().filter(|(_, w, _)| f(w)).count();
    assert!(count(|w| w.deceased_transplants > 1) > 10);
    assert!(count(|w| w.deceased_to_non_residents > 1) > 10);
    assert!(count(|w| w.foreign_living_donors.len() > 1) > 10);
    assert!(count(|w| !w.foreign_unrelated_living.is_empty()) > 10);
    assert!(expected.iter().any(|(_, _, h)| h.len() > 2));
    // One chunk (every clinic's span too wide to cache), chunks whose spans
    // the cache follows, and chunks of one.
    for chunk_size in [1_000, 9, 4, 1] {
        let contexts = rescan::record_contexts(&app.store, &engine, chunk_size)
            .await
            .expect("contexts");
        let got: Vec<_> = contexts
            .into_iter()
            .map(|c| (c.id, sorted(c.window), c.donor_history))
            .collect();
        assert_eq!(got, expected, "chunks of {chunk_size}");
    }
}
