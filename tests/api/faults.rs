//! Faults that really happen: a server killed mid-stream, and Postgres
//! stopped under load and started again.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use transplant_audit::domain::Role;
use transplant_audit::localdb::LocalPostgres;
use transplant_audit::rules::RulesConfig;
use transplant_audit::server::ServeOptions;
use transplant_audit::store;
use transplant_audit::wire::pb;
use transplant_audit::wire::pb::ingest_service_client::IngestServiceClient;

use crate::helpers::*;

const RECORDS: usize = 1_500;

fn requests() -> Vec<pb::SubmitRecordsRequest> {
    (0..RECORDS)
        .map(|i| pb::SubmitRecordsRequest {
            record: Some(kidney(&format!("KILL-{i}"))),
        })
        .collect()
}

#[tokio::test]
async fn a_server_killed_mid_stream_loses_no_acknowledged_record_and_a_retry_duplicates_nothing() {
    let database_url = fresh_database().await;
    let app = spawn_app_on(&database_url, RulesConfig::default()).await;
    let hospital = create_key(&app.store, Role::Hospital, Some(DEFAULT_HOSPITAL)).await;
    let pool = app.pool.clone();
    app.stop().await;

    let server = ServerProcess::start(&database_url, "info").await;
    let (tx, rx) = mpsc::channel(RECORDS);
    for request in requests() {
        tx.send(request).await.expect("queue");
    }
    let mut acks = IngestServiceClient::new(server.connect(&hospital).await)
        .submit_records(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let mut acknowledged = HashSet::new();
    while acknowledged.len() < RECORDS / 3 {
        let ack = acks
            .message()
            .await
            .expect("ack")
            .expect("an ack")
            .ack
            .expect("ack");
        assert_eq!(ack.outcome, pb::Outcome::Accepted as i32);
        acknowledged.insert(ack.external_record_id);
    }
    server.signal(libc::SIGKILL);
    // Whatever was already on the wire still counts as acknowledged.
    while let Ok(Some(message)) = acks.message().await {
        acknowledged.insert(message.ack.expect("ack").external_record_id);
    }
    let (status, _) = server.drain().await;
    assert!(!status.success(), "killed, not exited");
    drop(tx);

    let stored: HashSet<String> = sqlx::query_scalar("SELECT external_record_id FROM records")
        .fetch_all(&pool)
        .await
        .expect("stored")
        .into_iter()
        .collect();
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");

    // The client's retry: everything again on a restarted server.
    let server = ServerProcess::start(&database_url, "info").await;
    let mut acks = IngestServiceClient::new(server.connect(&hospital).await)
        .submit_records(tokio_stream::iter(requests()))
        .await
        .expect("stream")
        .into_inner();
    let mut count = 0;
    while let Some(message) = acks.message().await.expect("ack") {
        let ack = message.ack.expect("ack");
        let expected = if stored.contains(&ack.external_record_id) {
            pb::Outcome::Duplicate
        } else {
            pb::Outcome::Accepted
        };
        assert_eq!(ack.outcome, expected as i32, "{ack:?}");
        count += 1;
    }
    assert_eq!(count, RECORDS);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM records")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, RECORDS as i64, "every record exactly once");
    server.signal(libc::SIGTERM);
    assert!(server.drain().await.0.success());
}

async fn health(app: &TestApp) -> Option<i32> {
    tonic_health::pb::health_client::HealthClient::new(app.channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .ok()
        .map(|r| r.into_inner().status)
}

async fn wait_for_health(
    app: &TestApp,
    want: tonic_health::pb::health_check_response::ServingStatus,
) {
    for _ in 0..100 {
        if health(app).await == Some(want as i32) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("health never became {want:?}");
}

/// Postgres stopped under load: the first call that meets it gone tells the
/// service, whose periodic check is an hour away here, so that health turns
/// NOT_SERVING and later calls are refused at once; started again, the
/// service recovers by itself.
#[tokio::test]
async fn postgres_stopped_under_load_turns_health_and_calls_unavailable_and_recovers() {
    use tonic_health::pb::health_check_response::ServingStatus;
    // A Postgres of this test's own, to stop and start.
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().to_owned();
    let pg = tokio::task::spawn_blocking(move || LocalPostgres::ensure_running(&data))
        .await
        .unwrap()
        .expect("postgres");
    store::create_database_if_missing(&pg.url("postgres"), "faults")
        .await
        .expect("database");
    let options = ServeOptions {
        health_interval: Duration::from_secs(3600),
        ..ServeOptions::default()
    };
    let app = spawn_app_configured(&pg.url("faults"), RulesConfig::default(), options).await;
    wait_for_health(&app, ServingStatus::Serving).await;
    submit(&app, kidney("BEFORE")).await.expect("accepted");

    let stopped = {
        let data = dir.path().to_owned();
        tokio::task::spawn_blocking(move || {
            LocalPostgres::ensure_running(&data).and_then(|pg| pg.stop())
        })
    };
    // Load while it goes down: every call answers, none hangs past its deadline.
    let load = tokio::spawn({
        let mut ingest = app.ingest.clone();
        async move {
            let mut codes = Vec::new();
            for i in 0..20 {
                let started = Instant::now();
                let result = ingest
                    .submit_record(pb::SubmitRecordRequest {
                        record: Some(kidney(&format!("LOAD-{i}"))),
                    })
                    .await;
                assert!(started.elapsed() < Duration::from_secs(20), "a call hung");
                let code = result.err().map_or(Code::Ok, |s| s.code());
                codes.push(code);
                if code != Code::Ok {
                    break; // the outage is seen; the rest is checked below
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            codes
        }
    });
    stopped.await.unwrap().expect("stop postgres");
    // A call meets the stopped database; only it can tell the service.
    let status = submit(&app, kidney("MEETS-IT"))
        .await
        .expect_err("no database");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    wait_for_health(&app, ServingStatus::NotServing).await;
    let alive = tonic_health::pb::health_client::HealthClient::new(app.channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "liveness".into(),
        })
        .await
        .expect("liveness answers")
        .into_inner()
        .status;
    assert_eq!(
        alive,
        ServingStatus::Serving as i32,
        "liveness stays SERVING: restarting would not bring the database back"
    );
    let status = submit(&app, kidney("DURING"))
        .await
        .expect_err("no database");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), ("DATABASE_UNAVAILABLE".to_owned(), true));
    let codes = load.await.expect("load");
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, Code::Ok | Code::Unavailable)),
        "under the outage calls succeed or are UNAVAILABLE: {codes:?}"
    );

    let data = dir.path().to_owned();
    let pg = tokio::task::spawn_blocking(move || LocalPostgres::ensure_running(&data))
        .await
        .unwrap()
        .expect("restart");
    wait_for_health(&app, ServingStatus::Serving).await;
    let mut recovered = None;
    for _ in 0..50 {
        match submit(&app, kidney("AFTER")).await {
            Ok(ack) => {
                recovered = Some(ack);
                break;
            }
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered.is_some(), "the service recovers by itself");
    let ids: Vec<String> = sqlx::query_scalar("SELECT external_record_id FROM records ORDER BY id")
        .fetch_all(&app.store.pool().clone())
        .await
        .expect("records");
    assert!(
        ids.contains(&"BEFORE".to_owned()) && ids.contains(&"AFTER".to_owned()),
        "{ids:?}"
    );
    app.stop().await;
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap()
        .expect("stop");
}
