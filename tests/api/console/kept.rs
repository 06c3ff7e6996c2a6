//! The views the console keeps in the background (the rules' counts, the
//! suggested cases) follow every change the database notifies, whoever
//! made it, and keep following after their listening connection is cut.

use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use tonic::service::interceptor::InterceptedService;
use transplant_audit::rules::RulesConfig;
use transplant_audit::store::suggest::KEPT_VIEWS_CHANNEL;
use transplant_audit::wire::pb;
use transplant_audit::wire::pb::investigation_service_client::InvestigationServiceClient;

use super::cases::{ring_on, suggested_until};
use super::{Session, Site};
use crate::helpers::{Bearer, TestApp, abo_incompatible, all_flags, spawn_app_on, submit};

/// The ABO_INCOMPATIBLE row of the rules page: open, in review, confirmed,
/// dismissed.
fn abo_row(html: &str) -> String {
    let start = html
        .find(r#"data-rule-id="ABO_INCOMPATIBLE""#)
        .expect("the rule's row");
    let end = start + html[start..].find("</tr>").expect("the row's end");
    html[start..end].to_owned()
}

fn counts(open: u32, in_review: u32) -> String {
    format!("<td>{open}</td><td>{in_review}</td><td>0</td><td>0</td>")
}

/// The rules page once its kept counts show `open` and `in_review` flags
/// of ABO_INCOMPATIBLE; panics after 10 s.
async fn rules_until(site: &Site, session: &Session, open: u32, in_review: u32) {
    let want = counts(open, in_review);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let html = site.page(session, "/rules").await;
        if html.contains(r#"id="counted-at""#) && abo_row(&html).contains(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the kept counts never showed {want}: {html}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The backend listening for the kept views' changes, once there is one
/// other than `not`; panics after 10 s.
async fn listener_pid(app: &TestApp, not: Option<i32>) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN%' AND query LIKE $1",
        )
        .bind(format!("%{KEPT_VIEWS_CHANNEL}%"))
        .fetch_optional(&app.pool)
        .await
        .expect("pg_stat_activity");
        if let Some(pid) = pid.filter(|p| Some(*p) != not) {
            return pid;
        }
        assert!(Instant::now() < deadline, "no listener for the kept views");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Flags raised, triaged and put in a case through another server on the
/// same database, never through this one, show in this console's kept
/// views within seconds.
#[tokio::test]
async fn kept_views_follow_triage_and_cases_made_on_another_replica() {
    let site = Site::start().await;
    let (_, session) = site.auditor().await;
    let replica = spawn_app_on(&site.app.database_url, RulesConfig::default()).await;
    rules_until(&site, &session, 0, 0).await;
    suggested_until(&site, &session, |html| html.contains("over 0 open flags")).await;

    let flags = ring_on(&replica).await;
    let n = flags.len();
    rules_until(&site, &session, 2, 0).await;
    let list: Vec<String> = flags.iter().map(i64::to_string).collect();
    let group = format!(r#"data-flag-ids="{}""#, list.join(","));
    suggested_until(&site, &session, |html| {
        html.contains(&group) && html.contains(&format!("over {n} open flags"))
    })
    .await;
    let abo: Vec<pb::Flag> = all_flags(&replica, pb::ListFlagsRequest::default())
        .await
        .into_iter()
        .filter(|f| f.rule_id == "ABO_INCOMPATIBLE")
        .collect();
    assert_eq!(abo.len(), 2, "one ABO_INCOMPATIBLE flag on each record");

    // A triage step on the replica.
    replica
        .audit
        .clone()
        .update_flag_status(pb::UpdateFlagStatusRequest {
            flag_id: abo[0].flag_id.clone(),
            status: pb::FlagStatus::InReview as i32,
            note: String::new(),
            etag: abo[0].etag.clone(),
        })
        .await
        .expect("in review");
    rules_until(&site, &session, 1, 1).await;

    // A case opened on the replica takes a flag out of the suggestions: the
    // page drops it at once, and the regrouping that the change sets off
    // counts one open flag fewer outside cases.
    InvestigationServiceClient::new(InterceptedService::new(
        replica.channel.clone(),
        Bearer::new(&replica.auditor_token),
    ))
    .create_case(pb::CreateCaseRequest {
        title: "One donor".into(),
        summary: "Opened on another replica".into(),
        flag_ids: vec![abo[1].flag_id.clone()],
        note: String::new(),
    })
    .await
    .expect("case opened");
    let fewer = format!("over {} open flags", n - 1);
    suggested_until(&site, &session, |html| html.contains(&fewer)).await;
}

/// The listening connection killed (as a database restart or a failover
/// would): a change made meanwhile and one made after it listens again both
/// show.
#[tokio::test]
async fn kept_views_recover_when_their_listening_connection_is_cut() {
    let site = Site::start().await;
    let (_, session) = site.auditor().await;
    rules_until(&site, &session, 0, 0).await;
    let first = listener_pid(&site.app, None).await;
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(&site.app.pool)
        .await
        .expect("terminate the listener");
    assert!(killed, "the listener's backend was terminated");
    submit(&site.app, abo_incompatible("CUT-1"))
        .await
        .expect("stored");
    rules_until(&site, &session, 1, 0).await;

    listener_pid(&site.app, Some(first)).await;
    submit(&site.app, abo_incompatible("CUT-2"))
        .await
        .expect("stored");
    rules_until(&site, &session, 2, 0).await;
}

/// Whether a notification for the kept views arrives within `wait`; those
/// that follow it within 200 ms are taken with it.
async fn notified(listener: &mut PgListener, wait: Duration) -> bool {
    let Ok(got) = tokio::time::timeout(wait, listener.recv()).await else {
        return false;
    };
    got.expect("a notification");
    while let Ok(got) = tokio::time::timeout(Duration::from_millis(200), listener.recv()).await {
        got.expect("a notification");
    }
    true
}

/// The database notifies the kept views when what they read changes (a
/// flag, a record's grouped columns, a case's flags), and not for what they
/// do not read: a case's note, a record's other columns, a grouped column set
/// to what it held. Records are changed behind the service's back.
#[tokio::test]
async fn the_database_notifies_the_kept_views_of_what_they_read_and_nothing_else() {
    let site = Site::start().await;
    let app = &site.app;
    let mut listener = PgListener::connect(&app.database_url)
        .await
        .expect("listener");
    listener.listen(KEPT_VIEWS_CHANNEL).await.expect("listen");
    let quiet = Duration::from_millis(500);
    let heard = Duration::from_secs(5);

    let ack = submit(app, abo_incompatible("NOTIFY-1"))
        .await
        .expect("stored");
    assert!(notified(&mut listener, heard).await, "a raised flag");

    let flag = all_flags(app, pb::ListFlagsRequest::default())
        .await
        .into_iter()
        .find(|f| f.record_id == ack.record_id)
        .expect("the flag");
    let record_id: i64 = sqlx::query_scalar("SELECT record_id FROM flags WHERE id = $1")
        .bind(flag.flag_id.parse::<i64>().expect("a flag id"))
        .fetch_one(&app.pool)
        .await
        .expect("the flag's record");
    let mut cases = InvestigationServiceClient::new(InterceptedService::new(
        app.channel.clone(),
        Bearer::new(&app.auditor_token),
    ));
    let case = cases
        .create_case(pb::CreateCaseRequest {
            title: "One flag".into(),
            summary: "s".into(),
            flag_ids: vec![flag.flag_id.clone()],
            note: String::new(),
        })
        .await
        .expect("case opened")
        .into_inner()
        .case
        .expect("a case");
    assert!(notified(&mut listener, heard).await, "a flag put in a case");
    cases
        .add_case_note(pb::AddCaseNoteRequest {
            case_id: case.case_id.clone(),
            note: "called the clinic".into(),
        })
        .await
        .expect("noted");
    assert!(!notified(&mut listener, quiet).await, "a case's note");

    let update = |sql: &'static str| async move {
        sqlx::query(sql)
            .bind(record_id)
            .execute(&app.pool)
            .await
            .expect(sql)
    };
    update("UPDATE records SET organ = organ WHERE id = $1").await;
    assert!(!notified(&mut listener, quiet).await, "an ungrouped column");
    update("UPDATE records SET clinic_id = clinic_id WHERE id = $1").await;
    assert!(
        !notified(&mut listener, quiet).await,
        "a grouped column unchanged"
    );
    update("UPDATE records SET clinic_id = clinic_id || '-MOVED' WHERE id = $1").await;
    assert!(
        notified(&mut listener, heard).await,
        "a grouped column changed"
    );
}
