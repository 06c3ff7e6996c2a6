//! `WatchFlags`: flags raised through one server process reach a watcher on
//! another, in order, with no gap and no repeat, across the watcher's own
//! reconnect and under concurrent ingest.

use std::time::Duration;

use tonic::Code;
use tonic::Streaming;
use transplant_audit::wire::pb;
use transplant_audit::wire::pb::audit_service_client::AuditServiceClient;
use transplant_audit::wire::pb::ingest_service_client::IngestServiceClient;

use crate::helpers::*;

/// Two server processes on one database, with the tokens of a fresh app.
async fn two_servers() -> (ServerProcess, ServerProcess, String, String) {
    let database_url = fresh_database().await;
    let app = spawn_app_on(&database_url, Default::default()).await;
    let (auditor, hospital) = (app.auditor_token.clone(), app.hospital_token.clone());
    app.stop().await;
    let a = ServerProcess::start(&database_url, "info").await;
    let b = ServerProcess::start(&database_url, "info").await;
    (a, b, auditor, hospital)
}

fn abo_flags(after: &str) -> pb::WatchFlagsRequest {
    pb::WatchFlagsRequest {
        rule_id: "ABO_INCOMPATIBLE".into(),
        after: after.into(),
        ..Default::default()
    }
}

/// The next `n` messages of a watch, failing if they are slow to come.
async fn take(stream: &mut Streaming<pb::WatchFlagsResponse>, n: usize) -> Vec<(String, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        // Generous: a flag waits for every older write transaction of the cluster.
        let message = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .unwrap_or_else(|_| panic!("flag {} of {n} in time; got {got:?}", got.len() + 1))
            .expect("stream healthy")
            .expect("stream open");
        let flag = message.flag.expect("flag");
        got.push((flag.external_record_id, message.cursor));
    }
    got
}

/// Cursors compare as the feed orders: (transaction, flag id).
fn position(cursor: &str) -> (u64, i64) {
    let (tx, id) = cursor.split_once('.').expect("cursor shape");
    (tx.parse().expect("tx"), id.parse().expect("id"))
}

#[tokio::test]
async fn a_watcher_on_one_server_sees_flags_raised_through_another_across_reconnects() {
    let (a, b, auditor, hospital) = two_servers().await;
    let mut watcher = AuditServiceClient::new(a.connect(&auditor).await);
    let mut stream = watcher
        .watch_flags(abo_flags(""))
        .await
        .expect("watch")
        .into_inner();
    let mut ingest = IngestServiceClient::new(b.connect(&hospital).await);
    let submit = |id: String| pb::SubmitRecordRequest {
        record: Some(abo_incompatible(&id)),
    };
    // A record at a clinic missing from the registry raises another rule only.
    ingest
        .submit_record(pb::SubmitRecordRequest {
            record: Some(kidney("W-OTHER")),
        })
        .await
        .expect("accepted");
    for i in 1..=3 {
        ingest
            .submit_record(submit(format!("W-{i}")))
            .await
            .expect("accepted");
    }
    let first = take(&mut stream, 3).await;
    assert_eq!(
        first.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        ["W-1", "W-2", "W-3"],
        "in order, only the rule asked for"
    );

    // The watcher goes away; flags keep coming through B.
    let last = first.last().expect("some").1.clone();
    drop(stream);
    for i in 4..=6 {
        ingest
            .submit_record(submit(format!("W-{i}")))
            .await
            .expect("accepted");
    }
    let mut resumed = watcher
        .watch_flags(abo_flags(&last))
        .await
        .expect("resume")
        .into_inner();
    let second = take(&mut resumed, 3).await;
    assert_eq!(
        second.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        ["W-4", "W-5", "W-6"],
        "no gap and no repeat across the reconnect"
    );

    // Many concurrent writers through both servers: every flag exactly once.
    let mut writers = Vec::new();
    for (w, server) in [&a, &b, &a, &b].into_iter().enumerate() {
        let mut client = IngestServiceClient::new(server.connect(&hospital).await);
        writers.push(tokio::spawn(async move {
            for i in 0..10 {
                client
                    .submit_record(pb::SubmitRecordRequest {
                        record: Some(abo_incompatible(&format!("C-{w}-{i}"))),
                    })
                    .await
                    .expect("accepted");
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let burst = take(&mut resumed, 40).await;
    let mut ids: Vec<&str> = burst.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 40, "each of the 40 flags once");
    let positions: Vec<(u64, i64)> = second
        .iter()
        .chain(&burst)
        .map(|(_, cursor)| position(cursor))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "cursors strictly increase: {positions:?}"
    );
    let nothing_more = tokio::time::timeout(Duration::from_secs(3), resumed.message()).await;
    assert!(nothing_more.is_err(), "no repeats: {nothing_more:?}");

    // A's metrics count the open watcher.
    let metrics = scrape(&a.metrics_addr).await;
    assert!(
        metrics.contains("transplant_audit_flag_watchers 1"),
        "{metrics}"
    );
    for server in [a, b] {
        server.signal(libc::SIGTERM);
        let (status, _) = server.drain().await;
        assert!(status.success());
    }
}

#[tokio::test]
async fn shutdown_ends_a_watch_with_unavailable_promptly() {
    let (a, b, auditor, _) = two_servers().await;
    let mut stream = AuditServiceClient::new(a.connect(&auditor).await)
        .watch_flags(abo_flags(""))
        .await
        .expect("watch")
        .into_inner();
    let started = std::time::Instant::now();
    a.signal(libc::SIGTERM);
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream ends before the drain timeout")
        .expect_err("ended with a status");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    let (status, _) = a.drain().await;
    assert!(status.success(), "a clean shutdown, not a drain timeout");
    assert!(started.elapsed() < Duration::from_secs(10));
    b.signal(libc::SIGTERM);
    let _ = b.drain().await;
}

#[tokio::test]
async fn a_bad_watch_request_names_its_fields() {
    let app = spawn_app().await;
    let mut audit = app.audit.clone();
    let bad = audit
        .watch_flags(pb::WatchFlagsRequest {
            rule_id: "NOT_A_RULE".into(),
            after: "yesterday".into(),
            min_severity: 99,
            ..Default::default()
        })
        .await
        .expect_err("invalid");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let mut fields = violated_fields(&bad);
    fields.sort();
    assert_eq!(fields, ["after", "min_severity", "rule_id"]);
    app.stop().await;
}
