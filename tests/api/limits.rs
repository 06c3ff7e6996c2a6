//! Limits: calls in flight, open streams, records per stream, message size.
//! Overload is refused with RESOURCE_EXHAUSTED, never a crash, and changes nothing.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use transplant_audit::rules::RulesConfig;
use transplant_audit::server::ServeOptions;
use transplant_audit::wire::pb;

use crate::helpers::*;

async fn app_with(options: ServeOptions) -> TestApp {
    spawn_app_configured(&fresh_database().await, RulesConfig::default(), options).await
}

type Acks = tonic::Streaming<pb::SubmitRecordsResponse>;

/// Opens a stream and has one record acknowledged on it, so it is surely open.
async fn open_acknowledged_stream(
    app: &TestApp,
    id: &str,
) -> (mpsc::Sender<pb::SubmitRecordsRequest>, Acks) {
    let (tx, mut acks) = open_stream(app).await;
    tx.send(pb::SubmitRecordsRequest {
        record: Some(kidney(id)),
    })
    .await
    .expect("send");
    acks.message().await.expect("ack").expect("an ack");
    (tx, acks)
}

/// A server that keeps one `SubmitRecords` stream open at most.
async fn one_stream_app() -> TestApp {
    app_with(ServeOptions {
        max_concurrent_streams: 1,
        ..ServeOptions::default()
    })
    .await
}

/// Opens a stream once the server has a slot for it again (refused with
/// RESOURCE_EXHAUSTED until then, for at most two seconds).
async fn reopen(app: &TestApp) -> (mpsc::Sender<pb::SubmitRecordsRequest>, Acks) {
    for _ in 0..100 {
        let (tx, rx) = mpsc::channel(1);
        match app
            .ingest
            .clone()
            .submit_records(ReceiverStream::new(rx))
            .await
        {
            Ok(response) => return (tx, response.into_inner()),
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("a stream opens again once the slot is free");
}

async fn close(tx: mpsc::Sender<pb::SubmitRecordsRequest>, mut acks: Acks) {
    drop(tx);
    while acks.message().await.expect("clean end").is_some() {}
}

#[tokio::test]
async fn open_streams_are_capped_and_freed_when_they_end() {
    let app = one_stream_app().await;
    let (tx, acks) = open_acknowledged_stream(&app, "ST-1").await;
    let second = app
        .ingest
        .clone()
        .submit_records(tokio_stream::iter([pb::SubmitRecordsRequest {
            record: Some(kidney("ST-2")),
        }]))
        .await;
    let status = match second {
        Err(status) => status,
        Ok(response) => response.into_inner().message().await.expect_err("refused"),
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), ("TOO_MANY_STREAMS".to_owned(), true));
    close(tx, acks).await;
    // The permit goes back when the first stream's task ends, just after its last ack.
    let (tx, acks) = reopen(&app).await;
    close(tx, acks).await;
    assert_eq!(
        app.count("records").await,
        1,
        "the refused stream stored nothing"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_stream_ends_with_resource_exhausted_past_its_record_cap() {
    let app = app_with(ServeOptions {
        max_stream_records: 3,
        ..ServeOptions::default()
    })
    .await;
    let records = (0..5).map(|i| Some(kidney(&format!("CAP-{i}"))));
    let mut acks = send_all(&app, records.collect()).await;
    for i in 0..3 {
        let ack = acks.message().await.expect("ack").expect("an ack");
        assert_eq!(ack.sequence, i);
    }
    let status = acks.message().await.expect_err("the cap");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        reason(&status),
        ("STREAM_TOO_LONG".to_owned(), false),
        "a new stream helps, not waiting"
    );
    assert_eq!(
        app.count("records").await,
        3,
        "exactly the acknowledged records are stored"
    );
    app.stop().await;
}

#[tokio::test]
async fn calls_past_the_concurrency_cap_are_refused_and_health_still_answers() {
    let app = app_with(ServeOptions {
        max_concurrent_calls: 2,
        ..ServeOptions::default()
    })
    .await;
    let first = open_acknowledged_stream(&app, "CC-1").await;
    let second = open_acknowledged_stream(&app, "CC-2").await;
    let status = submit(&app, kidney("CC-3"))
        .await
        .expect_err("over the cap");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), ("TOO_MANY_CALLS".to_owned(), true));
    let health = tonic_health::pb::health_client::HealthClient::new(app.channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await;
    assert!(health.is_ok(), "health is exempt: {health:?}");
    close(first.0, first.1).await;
    close(second.0, second.1).await;
    assert_eq!(app.count("records").await, 2);
    submit(&app, kidney("CC-4"))
        .await
        .expect("room again once the streams ended");
    app.stop().await;
}

#[tokio::test]
async fn an_oversized_message_is_refused_and_the_server_stays_up() {
    let app = spawn_app().await;
    let mut huge = kidney("HUGE");
    huge.clinic_id = "X".repeat(2 * 1024 * 1024);
    let status = submit(&app, huge).await.expect_err("too large");
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{status:?}"
    );
    submit(&app, kidney("AFTER")).await.expect("still serving");
    assert_eq!(app.count("records").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_stream_whose_client_left_keeps_its_slot_until_its_batches_are_stored() {
    let app = one_stream_app().await;
    submit(&app, kidney("LEFT-0")).await.expect("stored");
    // Two batches of one stream, each waiting on a key another transaction holds.
    let first = hold_key(&app.pool, "LEFT-0", "LEFT-1").await;
    let second = hold_key(&app.pool, "LEFT-0", "LEFT-2").await;
    let (tx, acks) = open_stream(&app).await;
    for (id, waiters) in [("LEFT-1", 1), ("LEFT-2", 2)] {
        tx.send(pb::SubmitRecordsRequest {
            record: Some(kidney(id)),
        })
        .await
        .expect("send");
        until_waiting(&app.pool, waiters).await;
    }
    // The client leaves; the first batch then ends (its key turns out
    // taken), and its acknowledgements find no one to read them.
    drop((tx, acks));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    first.commit().await.expect("commit");
    until_waiting(&app.pool, 1).await;

    // The second batch is still being stored: the stream's slot stays taken.
    for _ in 0..20 {
        let (_tx, rx) = mpsc::channel::<pb::SubmitRecordsRequest>(1);
        let refused = app
            .ingest
            .clone()
            .submit_records(ReceiverStream::new(rx))
            .await
            .expect_err("the slot is still taken");
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }

    second.rollback().await.expect("rollback");
    let (tx, acks) = reopen(&app).await;
    close(tx, acks).await;
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT external_record_id FROM records ORDER BY external_record_id")
            .fetch_all(&app.pool)
            .await
            .expect("records");
    assert_eq!(stored, ["LEFT-0", "LEFT-1", "LEFT-2"]);
    app.stop().await;
}
