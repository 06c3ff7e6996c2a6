//! The logs of a real run of the binary hold no identifier and no secret,
//! and every denial names the key id.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use tonic::transport::Channel;
use transplant_audit::api::pb;
use transplant_audit::api::pb::ingest_service_client::IngestServiceClient;
use transplant_audit::domain::Role;

use crate::helpers::*;

const IDENTIFIER: &str = "ZQXJ4471LOG";

fn with_identifier(id: &str, value: &str) -> pb::TransplantRecord {
    let mut r = kidney(id);
    r.donor
        .as_mut()
        .expect("donor")
        .identifier
        .as_mut()
        .expect("identifier")
        .value = value.into();
    r
}

#[tokio::test]
async fn a_full_run_logs_no_identifier_and_no_secret() {
    let database_url = fresh_database().await;
    // A server of the test's own first, to migrate and to make keys.
    let app = spawn_app_on(&database_url, Default::default()).await;
    let hospital = create_key(&app.store, Role::Hospital, Some(DEFAULT_HOSPITAL)).await;
    app.stop().await;
    let key_hex: String = TEST_KEY.iter().map(|b| format!("{b:02x}")).collect();

    let mut child = Command::new(env!("CARGO_BIN_EXE_transplant-audit"))
        .env("DATABASE_URL", &database_url)
        .env("FINGERPRINT_KEY", &key_hex)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server");
    let stderr = child.stderr.take().expect("stderr");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.recv())
            .await
            .expect("the server starts")
            .expect("a log line");
        log.push(line.clone());
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if entry["fields"]["message"] == "serving gRPC" {
            break entry["fields"]["addr"].as_str().expect("addr").to_owned();
        }
    };
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let mut ingest =
        IngestServiceClient::new(tonic::service::interceptor::InterceptedService::new(
            channel.clone(),
            Bearer::new(&hospital),
        ));
    for request in [
        with_identifier("LOG-1", IDENTIFIER),
        with_identifier("LOG-1", IDENTIFIER),
        with_identifier("LOG-2", &format!("{IDENTIFIER}'; DROP TABLE records")),
        {
            let mut other = with_identifier("LOG-3", IDENTIFIER);
            other.hospital_id = "H-DE-009".into();
            other
        },
    ] {
        let _ = ingest
            .submit_record(pb::SubmitRecordRequest {
                record: Some(request),
            })
            .await;
    }
    let mut forged = hospital.clone();
    forged.pop();
    forged.push('x');
    let mut intruder = IngestServiceClient::new(
        tonic::service::interceptor::InterceptedService::new(channel, Bearer::new(&forged)),
    );
    let refused = intruder
        .submit_record(pb::SubmitRecordRequest {
            record: Some(with_identifier("LOG-4", IDENTIFIER)),
        })
        .await;
    assert_eq!(
        refused.expect_err("forged").code(),
        tonic::Code::Unauthenticated
    );

    // SIGTERM, then read everything it logged until it exits.
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .expect("exit");
    assert!(status.success(), "graceful exit: {status:?}");
    while let Some(line) = lines.recv().await {
        log.push(line);
    }
    let text = log.join("\n");
    let secret = hospital.rsplit('_').next().expect("secret");
    let password = database_url
        .split('@')
        .next()
        .and_then(|s| s.rsplit(':').next())
        .unwrap_or("");
    for needle in [
        IDENTIFIER,
        &IDENTIFIER.to_lowercase(),
        secret,
        &hospital,
        &forged,
        &key_hex,
    ] {
        assert!(!text.contains(needle), "the logs contain {needle:?}");
    }
    if password.len() > 8 {
        assert!(
            !text.contains(password),
            "the logs contain the database password"
        );
    }
    let key_id = hospital.split('_').nth(1).expect("key id");
    assert!(
        log.iter()
            .any(|l| l.contains("record for another hospital refused") && l.contains(key_id)),
        "the denial is logged with the key id"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("unauthenticated call refused")),
        "the forged key is logged"
    );
    assert!(log.len() > 10, "the run logged something: {log:?}");
}
