//! The live inbox: server-sent events fed by the flag feed, resumed after
//! a dropped connection, and not held back by a long transaction elsewhere.

use std::time::Duration;

use sqlx::Connection;
use transplant_audit::wire::pb;

use super::{Session, Site};
use crate::helpers::{abo_incompatible, submit};

/// One server-sent event: its id and data.
#[derive(Debug, Clone)]
struct SseEvent {
    id: String,
    data: String,
}

/// An open event stream.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(site: &Site, session: &Session, last_event_id: Option<&str>) -> Self {
        let mut request = site
            .http
            .get(site.url("/flags/events?rule_id=ABO_INCOMPATIBLE"))
            .header("cookie", &session.cookie);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("GET /flags/events");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next `flag` event; fails after a generous wait.
    async fn next_flag(&mut self) -> SseEvent {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: String::new(),
                    data: String::new(),
                };
                let mut kind = "";
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        kind = if v == "flag" { "flag" } else { "other" };
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        event.id = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        event.data.push_str(v);
                    }
                }
                if kind == "flag" {
                    return event;
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(60), self.response.chunk())
                .await
                .expect("a flag event in time")
                .expect("stream healthy")
                .expect("stream open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

fn external_id(event: &SseEvent) -> String {
    let flag: serde_json::Value = serde_json::from_str(&event.data).expect("json");
    flag["external_record_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn new_flags_stream_to_the_inbox_and_resume_after_the_last_event() {
    let site = Site::start().await;
    let (_, session) = site.auditor().await;
    let mut events = Events::open(&site, &session, None).await;
    submit(&site.app, abo_incompatible("LIVE-1"))
        .await
        .expect("stored");
    let first = events.next_flag().await;
    assert_eq!(external_id(&first), "LIVE-1");
    drop(events);
    // Raised while the browser was away.
    submit(&site.app, abo_incompatible("LIVE-2"))
        .await
        .expect("stored");
    let mut resumed = Events::open(&site, &session, Some(&first.id)).await;
    let second = resumed.next_flag().await;
    assert_eq!(
        external_id(&second),
        "LIVE-2",
        "resumed after the last event, none repeated"
    );
    // A bad Last-Event-ID is refused, not read from the start.
    let bad = site
        .http
        .get(site.url("/flags/events"))
        .header("cookie", &session.cookie)
        .header("last-event-id", "<script>")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn a_long_transaction_elsewhere_in_the_cluster_does_not_hold_the_feed_back() {
    let site = Site::start().await;
    let (_, session) = site.auditor().await;
    // A write transaction left open in another database of the cluster,
    // and one in this database on a table the feed never reads.
    let other_db = site
        .app
        .database_url
        .rsplit_once('/')
        .map(|(server, _)| format!("{server}/postgres"))
        .expect("a database url");
    let mut elsewhere = sqlx::PgConnection::connect(&other_db)
        .await
        .expect("connect");
    sqlx::query("BEGIN").execute(&mut elsewhere).await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut elsewhere)
        .await
        .unwrap();
    let mut here = sqlx::PgConnection::connect(&site.app.database_url)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut here).await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut here)
        .await
        .unwrap();

    let mut events = Events::open(&site, &session, None).await;
    let mut watch = site
        .app
        .audit
        .clone()
        .watch_flags(pb::WatchFlagsRequest {
            rule_id: "ABO_INCOMPATIBLE".into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    submit(&site.app, abo_incompatible("HELD-1"))
        .await
        .expect("stored");
    assert_eq!(external_id(&events.next_flag().await), "HELD-1");
    let message = tokio::time::timeout(Duration::from_secs(60), watch.message())
        .await
        .expect("WatchFlags delivers while the transactions stay open")
        .expect("healthy")
        .expect("open");
    assert_eq!(message.flag.expect("flag").external_record_id, "HELD-1");
    // Both transactions were open the whole time.
    for conn in [&mut elsewhere, &mut here] {
        let open: bool = sqlx::query_scalar("SELECT pg_current_xact_id_if_assigned() IS NOT NULL")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert!(open);
        sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
    }
}
