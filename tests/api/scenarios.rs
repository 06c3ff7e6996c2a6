//! The scenarios of `tests/scenarios/` (copied from the shared public set;
//! `../shared/scenarios/` is read too when present, so new public scenarios
//! run without a copy): each record submitted in order through the real
//! server, then every record's flags compared with the exact expected set.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use transplant_audit::rules::RulesConfig;
use transplant_audit::wire::pb;

use crate::helpers::*;

fn scenario_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut by_name = BTreeMap::new();
    for dir in [
        root.join("tests/scenarios"),
        root.join("../shared/scenarios"),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                by_name.insert(entry.file_name(), path);
            }
        }
    }
    by_name.into_values().collect()
}

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn time(v: &Value, key: &str) -> Option<prost_types::Timestamp> {
    v.get(key).and_then(Value::as_str).map(ts)
}

/// A scenario enum value (`KIDNEY`) as its proto number (`ORGAN_KIDNEY`); 0 when absent.
fn enum_value(v: &Value, key: &str, prefix: &str, parse: fn(&str) -> Option<i32>) -> i32 {
    match v.get(key).and_then(Value::as_str) {
        None => 0,
        Some(name) => parse(&format!("{prefix}_{name}"))
            .unwrap_or_else(|| panic!("scenario value {key} = {name:?} is not in the proto")),
    }
}

fn age(v: &Value) -> Option<i32> {
    v.get("age_years")
        .and_then(Value::as_i64)
        .and_then(|a| i32::try_from(a).ok())
}

fn identifier(v: &Value) -> Option<pb::PersonIdentifier> {
    let id = v.get("identifier")?;
    Some(pb::PersonIdentifier {
        scheme: enum_value(id, "scheme", "IDENTIFIER_SCHEME", |s| {
            pb::IdentifierScheme::from_str_name(s).map(|e| e as i32)
        }),
        issuing_country: text(id, "issuing_country"),
        value: text(id, "value"),
    })
}

fn hla(v: &Value) -> Option<pb::HlaTyping> {
    let h = v.get("hla")?;
    let list = |k: &str| -> Vec<String> {
        h.get(k)
            .or_else(|| h.get(k.to_uppercase()))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    Some(pb::HlaTyping {
        a: list("a"),
        b: list("b"),
        dr: list("dr"),
    })
}

fn abo(v: &Value) -> i32 {
    enum_value(v, "abo", "ABO_GROUP", |s| {
        pb::AboGroup::from_str_name(s).map(|e| e as i32)
    })
}

fn sex(v: &Value) -> i32 {
    enum_value(v, "sex", "SEX", |s| {
        pb::Sex::from_str_name(s).map(|e| e as i32)
    })
}

fn rh(v: &Value) -> i32 {
    enum_value(v, "rh", "RH_FACTOR", |s| {
        pb::RhFactor::from_str_name(s).map(|e| e as i32)
    })
}

fn record(r: &Value) -> pb::TransplantRecord {
    let d = &r["donor"];
    let p = &r["recipient"];
    pb::TransplantRecord {
        external_record_id: text(r, "external_record_id"),
        hospital_id: text(r, "hospital_id"),
        clinic_id: text(r, "clinic_id"),
        procedure_country: text(r, "procedure_country"),
        organ: enum_value(r, "organ", "ORGAN", |s| {
            pb::Organ::from_str_name(s).map(|e| e as i32)
        }),
        laterality: enum_value(r, "laterality", "LATERALITY", |s| {
            pb::Laterality::from_str_name(s).map(|e| e as i32)
        }),
        procured_at: time(r, "procured_at"),
        transplanted_at: time(r, "transplanted_at"),
        cold_ischemia_minutes: r
            .get("cold_ischemia_minutes")
            .and_then(Value::as_i64)
            .and_then(|m| i32::try_from(m).ok()),
        machine_perfusion: r
            .get("machine_perfusion")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        donor: Some(pb::Donor {
            identifier: identifier(d),
            nationality: text(d, "nationality"),
            country_of_residence: text(d, "country_of_residence"),
            age_years: age(d),
            sex: sex(d),
            abo: abo(d),
            rh: rh(d),
            hla: hla(d),
            donor_type: enum_value(d, "donor_type", "DONOR_TYPE", |s| {
                pb::DonorType::from_str_name(s).map(|e| e as i32)
            }),
            relation_to_recipient: enum_value(d, "relation_to_recipient", "DONOR_RELATION", |s| {
                pb::DonorRelation::from_str_name(s).map(|e| e as i32)
            }),
            death_at: time(d, "death_at"),
            death_kind: enum_value(d, "death_kind", "DEATH_KIND", |s| {
                pb::DeathKind::from_str_name(s).map(|e| e as i32)
            }),
        }),
        recipient: Some(pb::Recipient {
            identifier: identifier(p),
            nationality: text(p, "nationality"),
            country_of_residence: text(p, "country_of_residence"),
            age_years: age(p),
            sex: sex(p),
            abo: abo(p),
            rh: rh(p),
            hla: hla(p),
        }),
        abo_exception: enum_value(r, "abo_exception", "ABO_EXCEPTION", |s| {
            pb::AboException::from_str_name(s).map(|e| e as i32)
        }),
    }
}

/// A scenario clinic as a registry entry.
pub fn scenario_clinic(c: &Value) -> pb::Clinic {
    let organs = c["licensed_organs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|o| pb::Organ::from_str_name(&format!("ORGAN_{o}")).map_or(0, |e| e as i32))
                .collect()
        })
        .unwrap_or_default();
    pb::Clinic {
        clinic_id: text(c, "clinic_id"),
        name: text(c, "name"),
        country: text(c, "country"),
        licensed_organs: organs,
        licence_valid_from: time(c, "licence_valid_from"),
        licence_valid_until: time(c, "licence_valid_until"),
        status: enum_value(c, "status", "CLINIC_STATUS", |s| {
            pb::ClinicStatus::from_str_name(s).map(|e| e as i32)
        }),
        status_effective_from: time(c, "status_effective_from"),
        ..pb::Clinic::default()
    }
}

/// A JSON object of tables and scalars as TOML text (scenarios write
/// `rules_config` in JSON; the service reads TOML).
fn to_toml(v: &Value, path: &str) -> String {
    let Some(object) = v.as_object() else {
        return String::new();
    };
    let mut out = String::new();
    if !path.is_empty() {
        out.push_str(&format!("[{path}]\n"));
    }
    for (key, value) in object.iter().filter(|(_, v)| !v.is_object()) {
        out.push_str(&format!("{key} = {value}\n"));
    }
    for (key, value) in object.iter().filter(|(_, v)| v.is_object()) {
        let child = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        out.push_str(&to_toml(value, &child));
    }
    out
}

/// Loads one scenario, runs it through a fresh server and returns the mismatches.
async fn run_scenario(path: &Path, path_mode: Mode) -> Vec<String> {
    let raw = std::fs::read_to_string(path).expect("read scenario");
    let scenario: Value = serde_json::from_str(&raw).expect("scenario JSON");
    let rules: RulesConfig = match scenario.get("rules_config") {
        Some(v) if v.as_object().is_some_and(|o| !o.is_empty()) => {
            RulesConfig::from_toml_str(&to_toml(v, ""))
                .expect("rules_config matches the rules configuration")
        }
        _ => RulesConfig::default(),
    };
    let rules_toml = to_toml(
        scenario
            .get("rules_config")
            .unwrap_or(&Value::Object(Default::default())),
        "",
    );
    let app = spawn_app_with(rules).await;
    for c in scenario["clinics"].as_array().into_iter().flatten() {
        app.registry
            .clone()
            .upsert_clinic(pb::UpsertClinicRequest {
                clinic: Some(scenario_clinic(c)),
            })
            .await
            .expect("upsert scenario clinic");
    }
    let mut problems = Vec::new();
    let records: Vec<pb::TransplantRecord> = scenario["records"]
        .as_array()
        .into_iter()
        .flatten()
        .map(record)
        .collect();
    let acks = match path_mode {
        Mode::OneByOne => {
            let mut acks = Vec::new();
            for rec in &records {
                acks.push((
                    rec.external_record_id.clone(),
                    submit(&app, rec.clone()).await,
                ));
            }
            acks
        }
        Mode::Streamed => streamed(&app, &records).await,
        Mode::Imported => imported(&app, &scenario, &rules_toml).await,
    };
    for (id, ack) in acks {
        match ack {
            Ok(ack) if ack.outcome == pb::Outcome::Accepted as i32 => {}
            Ok(ack) => problems.push(format!("{id}: outcome {} instead of ACCEPTED", ack.outcome)),
            Err(status) => problems.push(format!("{id}: refused: {status:?}")),
        }
    }
    let flags = all_flags(&app, pb::ListFlagsRequest::default()).await;
    let mut raised: BTreeMap<String, BTreeMap<String, i32>> = BTreeMap::new();
    for f in &flags {
        raised
            .entry(f.external_record_id.clone())
            .or_default()
            .insert(f.rule_id.clone(), f.severity);
    }
    for e in scenario["expect"].as_array().into_iter().flatten() {
        let id = text(e, "record");
        let want: BTreeSet<String> = e["flags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        let got = raised.get(&id).cloned().unwrap_or_default();
        let got_ids: BTreeSet<String> = got.keys().cloned().collect();
        if got_ids != want {
            problems.push(format!("{id}: expected {want:?}, raised {got_ids:?}"));
        }
        if let Some(severity) = e.get("severity").and_then(Value::as_str) {
            let wanted =
                pb::Severity::from_str_name(&format!("SEVERITY_{severity}")).map(|s| s as i32);
            for (rule, got) in &got {
                if Some(*got) != wanted {
                    problems.push(format!(
                        "{id}: {rule} has severity {got}, expected {severity}"
                    ));
                }
            }
        }
    }
    // Each stored version reads back from its row exactly as it was hashed.
    let trail = app
        .admin
        .clone()
        .verify_audit_trail(pb::VerifyAuditTrailRequest::default())
        .await
        .expect("verify")
        .into_inner();
    if !trail.intact {
        problems.push(format!("the audit trail does not verify: {trail:?}"));
    }
    app.stop().await;
    problems
        .into_iter()
        .map(|p| {
            format!(
                "{}: {p}",
                path.file_name().unwrap_or_default().to_string_lossy()
            )
        })
        .collect()
}

/// How a scenario's records reach the server.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// One SubmitRecord call per record.
    OneByOne,
    /// SubmitRecords streams, one per run of consecutive records of one
    /// hospital, so the server stores them in batches.
    Streamed,
    /// The `import` command, from an NDJSON file of the scenario's records.
    Imported,
}

/// Imports the scenario's records with the binary, in batches of two so that
/// batches span records of different hospitals; every record must be accepted.
async fn imported(
    app: &TestApp,
    scenario: &Value,
    rules_toml: &str,
) -> Vec<(String, Result<pb::RecordAck, tonic::Status>)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("records.ndjson");
    let records = scenario["records"].as_array().cloned().unwrap_or_default();
    let lines: Vec<String> = records.iter().map(Value::to_string).collect();
    std::fs::write(&file, lines.join("\n")).expect("write");
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, rules_toml).expect("write rules");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_transplant-audit"))
        .arg("import")
        .arg(&file)
        .env("DATABASE_URL", &app.database_url)
        .env("FINGERPRINT_KEY", test_key_hex())
        .env("RULES_CONFIG", &rules)
        .env("INGEST_BATCH_SIZE", "2")
        .output()
        .expect("run import");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let accepted = format!(
        "{} records accepted, 0 duplicates, 0 refused",
        records.len()
    );
    let outcome = if output.status.success() && stdout.contains(&accepted) {
        Ok(pb::RecordAck {
            outcome: pb::Outcome::Accepted as i32,
            ..Default::default()
        })
    } else {
        Err(tonic::Status::internal(format!(
            "import: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        )))
    };
    vec![("import".to_owned(), outcome)]
}

/// Streams the records, each run of one hospital's consecutive records on
/// its own stream (a key submits for one hospital), in order.
async fn streamed(
    app: &TestApp,
    records: &[pb::TransplantRecord],
) -> Vec<(String, Result<pb::RecordAck, tonic::Status>)> {
    let mut acks = Vec::new();
    for run in records.chunk_by(|a, b| a.hospital_id == b.hospital_id) {
        let requests: Vec<_> = run
            .iter()
            .map(|r| pb::SubmitRecordsRequest {
                record: Some(r.clone()),
            })
            .collect();
        let mut stream = app
            .ingest_for(&run[0].hospital_id)
            .await
            .submit_records(tokio_stream::iter(requests))
            .await
            .expect("stream")
            .into_inner();
        for r in run {
            let ack = stream.message().await.and_then(|m| {
                m.and_then(|m| m.ack)
                    .ok_or_else(|| tonic::Status::data_loss("stream ended early"))
            });
            acks.push((r.external_record_id.clone(), ack));
        }
    }
    acks
}

#[tokio::test]
async fn scenarios_raise_exactly_the_expected_flags_one_by_one() {
    let files = scenario_files();
    assert!(files.len() >= 4, "scenario files missing: {files:?}");
    let mut problems = Vec::new();
    for file in &files {
        problems.extend(run_scenario(file, Mode::OneByOne).await);
    }
    assert!(
        problems.is_empty(),
        "scenario mismatches:\n{}",
        problems.join("\n")
    );
}

#[tokio::test]
async fn scenarios_raise_the_same_flags_through_the_batched_stream() {
    let files = scenario_files();
    let mut problems = Vec::new();
    for file in &files {
        problems.extend(run_scenario(file, Mode::Streamed).await);
    }
    assert!(
        problems.is_empty(),
        "scenario mismatches:\n{}",
        problems.join("\n")
    );
}

#[tokio::test]
async fn scenarios_raise_the_same_flags_through_an_import() {
    let files = scenario_files();
    let mut problems = Vec::new();
    for file in &files {
        problems.extend(run_scenario(file, Mode::Imported).await);
    }
    assert!(
        problems.is_empty(),
        "scenario mismatches:\n{}",
        problems.join("\n")
    );
}
