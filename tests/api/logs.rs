//! The logs of a real run of the binary hold no identifier and no secret,
//! every denial names the key id, and what the database layer logs stays
//! under the call that caused it.

use sqlx::Connection;
use transplant_audit::domain::Role;
use transplant_audit::wire::pb;
use transplant_audit::wire::pb::audit_service_client::AuditServiceClient;
use transplant_audit::wire::pb::ingest_service_client::IngestServiceClient;

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
    let key_hex = test_key_hex();
    let server = ServerProcess::start(&database_url, "debug").await;
    let mut ingest = IngestServiceClient::new(server.connect(&hospital).await);
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
    let mut intruder = IngestServiceClient::new(server.connect(&forged).await);
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
    server.signal(libc::SIGTERM);
    let (status, log) = server.drain().await;
    assert!(status.success(), "graceful exit: {status:?}");
    let text = log.join("\n");
    // The secret is everything after the key id; it may itself contain '_'.
    let secret = hospital.splitn(3, '_').nth(2).expect("secret");
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

#[tokio::test]
async fn a_slow_listing_statement_is_logged_under_its_call() {
    let database_url = fresh_database().await;
    let app = spawn_app_on(&database_url, Default::default()).await;
    let auditor = create_key(&app.store, Role::Auditor, None).await;
    app.stop().await;
    let server = ServerProcess::start(&database_url, "info").await;
    let mut audit = AuditServiceClient::new(server.connect(&auditor).await);
    // A transaction holding the flags table keeps the listing's statement
    // waiting past sqlx's slow-statement threshold (1 s).
    let mut holder = sqlx::PgConnection::connect(&database_url)
        .await
        .expect("connect");
    sqlx::raw_sql("BEGIN; LOCK TABLE flags IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .expect("lock");
    let listing = tokio::spawn(async move {
        audit
            .list_flags(pb::ListFlagsRequest::default())
            .await
            .map(|r| r.into_inner().flags.len())
    });
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    sqlx::raw_sql("COMMIT")
        .execute(&mut holder)
        .await
        .expect("release");
    assert_eq!(listing.await.expect("joined").expect("listed"), 0);

    server.signal(libc::SIGTERM);
    let (_, log) = server.drain().await;
    let slow = log
        .iter()
        .find(|l| l.contains("slow statement") && l.contains("FROM flags f"))
        .unwrap_or_else(|| panic!("the slow listing is logged: {log:?}"));
    assert!(
        slow.contains("ListFlags") && slow.contains("call_id"),
        "logged under the call's span: {slow}"
    );
}
