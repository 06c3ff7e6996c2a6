//! `transplant-audit import`: NDJSON back-fills through the pipeline, killed
//! half-way and resumed, with bad lines refused by line number and field.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::helpers::*;

/// The import command against `app`'s database, in batches of `batch`.
fn import_command(app: &TestApp, file: &Path, batch: usize) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_transplant-audit"));
    command
        .arg("import")
        .arg(file)
        .env("DATABASE_URL", &app.database_url)
        .env("FINGERPRINT_KEY", test_key_hex())
        .env("INGEST_BATCH_SIZE", batch.to_string())
        .env("RUST_LOG", "warn");
    command
}

fn run(mut command: Command) -> (Output, String, String) {
    let output = command.output().expect("run import");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

/// A scenario-style JSON line for a plain kidney record.
fn line(id: &str) -> String {
    serde_json::json!({
        "external_record_id": id,
        "hospital_id": DEFAULT_HOSPITAL,
        "clinic_id": "DE-BER-01",
        "procedure_country": "DE",
        "organ": "KIDNEY",
        "laterality": "LEFT",
        "procured_at": "2025-03-03T08:00:00Z",
        "transplanted_at": "2025-03-03T10:00:00Z",
        "donor": {
            "identifier": {"scheme": "NATIONAL_ID", "issuing_country": "DE", "value": format!("D{id}")},
            "nationality": "DE", "country_of_residence": "DE", "age_years": 45,
            "sex": "FEMALE", "abo": "O", "rh": "POSITIVE",
            "donor_type": "LIVING", "relation_to_recipient": "SIBLING"
        },
        "recipient": {
            "identifier": {"scheme": "NATIONAL_ID", "issuing_country": "DE", "value": format!("R{id}")},
            "nationality": "DE", "country_of_residence": "DE", "age_years": 44,
            "sex": "MALE", "abo": "A", "rh": "POSITIVE"
        },
        "abo_exception": "NONE"
    })
    .to_string()
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn a_killed_import_resumes_and_stores_every_record_once() {
    const RECORDS: usize = 600;
    let app = spawn_app().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backfill.ndjson");
    let lines: Vec<String> = (0..RECORDS).map(|i| line(&format!("IMP-{i:04}"))).collect();
    std::fs::write(&file, lines.join("\n") + "\n").expect("write");

    let mut first = import_command(&app, &file, 10)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start import");
    // Kill it once some batches are checkpointed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done = count(&app, "SELECT COALESCE(max(lines_done), 0) FROM imports").await;
        if done >= 20 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    let stored_before = count(&app, "SELECT count(*) FROM records").await;
    assert!(
        (20..RECORDS as i64).contains(&stored_before),
        "killed half-way: {stored_before} stored"
    );

    let (output, stdout, stderr) = run(import_command(&app, &file, 10));
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("Resumed after line"), "{stdout}");
    assert!(
        stdout.contains(&format!("{RECORDS} lines: ")),
        "the report counts the whole file: {stdout}"
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM records").await,
        RECORDS as i64
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM (SELECT DISTINCT external_record_id FROM records) r"
        )
        .await,
        RECORDS as i64
    );

    // The same file again: nothing to do, nothing stored twice.
    let (output, stdout, _) = run(import_command(&app, &file, 10));
    assert!(output.status.success());
    assert!(stdout.contains("imported before"), "{stdout}");
    assert_eq!(
        count(&app, "SELECT count(*) FROM records").await,
        RECORDS as i64
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_lines_are_refused_by_line_and_field_and_the_rest_is_stored() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("mixed.ndjson");
    let conflicting = line("MIX-1").replace("\"age_years\":45", "\"age_years\":46");
    assert_ne!(conflicting, line("MIX-1"));
    let content = [
        line("MIX-1"),
        "{not json".to_owned(),
        String::new(),
        line("MIX-2").replace("\"KIDNEY\"", "\"KIDNY\""),
        line("MIX-3").replace("\"clinic_id\":\"DE-BER-01\",", ""),
        conflicting,
        line("MIX-4"),
    ]
    .join("\n");
    std::fs::write(&file, content).expect("write");

    let (output, stdout, stderr) = run(import_command(&app, &file, 3));
    assert_eq!(
        output.status.code(),
        Some(5),
        "refusals have their own status"
    );
    assert!(
        stdout.contains("7 lines: 2 records accepted, 0 duplicates, 4 refused"),
        "{stdout}"
    );
    for expected in [
        "line 2 (\"\") refused: record: is not JSON",
        "line 4 (\"MIX-2\") refused: record.organ: is not a known value of ORGAN",
        "line 5 (\"MIX-3\") refused: record.clinic_id: is required",
        "line 6 (\"MIX-1\") refused: record \"MIX-1\" of hospital \"H-DE-001\" was already submitted with different content",
    ] {
        assert!(stderr.contains(expected), "{expected:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("DMIX"), "no identifier in the output");
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT external_record_id FROM records ORDER BY 1")
            .fetch_all(&app.pool)
            .await
            .expect("ids");
    assert_eq!(stored, ["MIX-1", "MIX-4"]);
    app.stop().await;
}

#[tokio::test]
async fn a_missing_file_is_a_clear_error() {
    let app = spawn_app().await;
    let (output, _, stderr) = run(import_command(&app, Path::new("/nonexistent.ndjson"), 10));
    assert!(!output.status.success());
    assert!(stderr.contains("reading /nonexistent.ndjson"), "{stderr}");
    app.stop().await;
}
