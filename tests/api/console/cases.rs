//! The investigation pages over HTTP: the cases listed, suggested, opened
//! and worked; a case's dossier downloaded; each read logged, each form
//! guarded by the CSRF token, everything typed escaped.

use transplant_audit::wire::pb;

use super::{Session, Site, location};
use crate::helpers::{TestApp, abo_incompatible, all_flags, identifier, submit, ts};

/// Payloads that would run or inject markup if a page did not escape them.
const HOSTILE: &str =
    "<script>alert('xss')</script>\"onmouseover=\"alert(1)<img src=x onerror=alert(2)>";

fn assert_inert(path: &str, html: &str) {
    for raw in ["<script>alert", "\"onmouseover=", "<img src=x"] {
        assert!(!html.contains(raw), "{path} holds {raw:?} unescaped");
    }
}

/// Two records sharing one donor months apart: their flags are suggested
/// as one group. Answers the flags' ids.
pub(super) async fn ring(site: &Site) -> Vec<i64> {
    ring_on(&site.app).await
}

/// [`ring`], submitted to `app`.
pub(super) async fn ring_on(app: &TestApp) -> Vec<i64> {
    for (i, day) in [0i64, 90].into_iter().enumerate() {
        let mut r = abo_incompatible(&format!("RING-{i}"));
        let mut at = ts("2025-01-01T10:00:00Z");
        at.seconds += day * 86_400;
        r.transplanted_at = Some(at);
        at.seconds -= 3600;
        r.procured_at = Some(at);
        if let Some(d) = r.donor.as_mut() {
            d.identifier = identifier("SOLD-KIDNEY-1");
        }
        submit(app, r).await.expect("stored");
    }
    let mut ids: Vec<i64> = all_flags(app, pb::ListFlagsRequest::default())
        .await
        .iter()
        .map(|f| f.flag_id.parse().expect("id"))
        .collect();
    ids.sort_unstable();
    ids
}

/// The suggestions page once `shows` holds of it, read again every 100 ms
/// while the grouping runs in the background; panics after 30 s.
pub(super) async fn suggested_until(
    site: &Site,
    session: &Session,
    shows: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let html = site.page(session, "/cases/suggested").await;
        if shows(&html) {
            return html;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the suggestions never showed it: {html}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Opens a case of `flags` through the console's form; answers its id.
pub(super) async fn open_case(site: &Site, session: &Session, title: &str, flags: &[i64]) -> i64 {
    let list: Vec<String> = flags.iter().map(i64::to_string).collect();
    let response = site
        .post(
            &session.cookie,
            "/cases",
            &[
                ("csrf", &session.csrf),
                ("title", title),
                ("summary", title),
                ("flag_ids", &list.join(",")),
            ],
        )
        .await;
    assert_eq!(response.status(), 303, "case opened");
    let to = location(response.headers());
    to.trim_start_matches("/cases/").parse().expect("a case id")
}

/// The case's row as stored: status, assignee, referred_to, revision.
async fn stored_case(site: &Site, id: i64) -> (String, Option<String>, Option<String>, i64) {
    sqlx::query_as("SELECT status, assignee, referred_to, revision FROM cases WHERE id = $1")
        .bind(id)
        .fetch_one(&site.app.pool)
        .await
        .expect("case")
}

async fn logged(site: &Site, action: &str, resource: &str, id: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM access_log WHERE action = $1 AND resource = $2 AND resource_id = $3",
    )
    .bind(action)
    .bind(resource)
    .bind(id)
    .fetch_one(&site.app.pool)
    .await
    .expect("access log")
}

/// The etag the case page's status form names.
fn etag_of(html: &str) -> String {
    let marker = r#"name="etag" value=""#;
    let start = html.find(marker).expect("an etag field") + marker.len();
    let end = html[start..].find('"').expect("its end") + start;
    html[start..end].to_owned()
}

#[tokio::test]
async fn console_case_pages_need_a_session() {
    let site = Site::start().await;
    for path in [
        "/cases",
        "/cases/suggested",
        "/cases/1",
        "/cases/1/dossier.json",
    ] {
        let response = site.get("", path).await;
        assert_eq!(location(response.headers()), "/login", "{path}");
    }
    for path in [
        "/cases",
        "/cases/1/note",
        "/cases/1/status",
        "/flags/1/case",
    ] {
        let response = site.post("", path, &[("csrf", "x")]).await;
        assert_eq!(location(response.headers()), "/login", "{path}");
    }
}

#[tokio::test]
async fn console_cases_are_suggested_opened_worked_and_exported() {
    let site = Site::start().await;
    let flags = ring(&site).await;
    assert!(flags.len() >= 2, "{flags:?}");
    let (_, session) = site.auditor().await;

    // The suggestions hold the ring, and its form opens it as a case.
    let list: Vec<String> = flags.iter().map(i64::to_string).collect();
    let form = format!(r#"name="flag_ids" value="{}""#, list.join(","));
    let html = suggested_until(&site, &session, |html| html.contains(&form)).await;
    assert!(html.contains(&form), "{html}");
    for f in &flags {
        assert_eq!(
            logged(&site, "SuggestCases", "flag", &f.to_string()).await,
            1
        );
    }
    let id = open_case(&site, &session, HOSTILE, &flags).await;

    // The case page lists its flags, logs each read, and escapes the title.
    let path = format!("/cases/{id}");
    let html = site.page(&session, &path).await;
    assert_inert(&path, &html);
    for f in &flags {
        assert!(html.contains(&format!(r#"href="/flags/{f}""#)));
        assert_eq!(logged(&site, "GetCase", "flag", &f.to_string()).await, 1);
    }
    assert_eq!(logged(&site, "GetCase", "case", &id.to_string()).await, 1);
    // The flag page links to its case.
    let flag_page = site.page(&session, &format!("/flags/{}", flags[0])).await;
    assert!(flag_page.contains(&format!(r#"href="/cases/{id}""#)));

    // A note, an assignment, a referral: each escaped on the page.
    let post = |path: String, form: Vec<(&'static str, String)>| {
        let site = &site;
        let session = &session;
        async move {
            let mut form = form;
            form.push(("csrf", session.csrf.clone()));
            let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            site.post(&session.cookie, &path, &pairs).await
        }
    };
    let r = post(format!("{path}/note"), vec![("note", HOSTILE.into())]).await;
    assert_eq!(r.status(), 303);
    let r = post(format!("{path}/assign"), vec![("assignee", HOSTILE.into())]).await;
    assert_eq!(r.status(), 303);
    let etag = etag_of(&site.page(&session, &path).await);
    let r = post(
        format!("{path}/status"),
        vec![("status", "INVESTIGATING".into()), ("etag", etag.clone())],
    )
    .await;
    assert_eq!(r.status(), 303);
    // The etag the page showed before is stale now.
    let r = post(
        format!("{path}/status"),
        vec![("status", "CLOSED".into()), ("etag", etag)],
    )
    .await;
    assert_eq!(r.status(), 409);
    let etag = etag_of(&site.page(&session, &path).await);
    // A referral without where to or why is refused.
    let r = post(
        format!("{path}/status"),
        vec![("status", "REFERRED".into()), ("etag", etag.clone())],
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = post(
        format!("{path}/status"),
        vec![
            ("status", "REFERRED".into()),
            ("etag", etag),
            ("referred_to", HOSTILE.into()),
            ("note", "sent to the prosecutor".into()),
        ],
    )
    .await;
    assert_eq!(r.status(), 303);
    let (status, assignee, referred_to, _) = stored_case(&site, id).await;
    assert_eq!(status, "REFERRED");
    assert_eq!(assignee.as_deref(), Some(HOSTILE));
    assert_eq!(referred_to.as_deref(), Some(HOSTILE));
    let html = site.page(&session, &path).await;
    assert_inert(&path, &html);
    assert!(html.contains("REFERRED") && html.contains("sent to the prosecutor"));
    let list = site.page(&session, "/cases?status=REFERRED").await;
    assert_inert("/cases", &list);
    assert!(list.contains(&format!(r#"href="/cases/{id}""#)));
    let none = site.page(&session, "/cases?status=OPEN").await;
    assert!(!none.contains(&format!(r#"href="/cases/{id}""#)));

    // The dossier downloads as a file, signed, and the export is logged.
    let response = site
        .get(&session.cookie, &format!("{path}/dossier.json"))
        .await;
    assert_eq!(response.status(), 200);
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(disposition.starts_with("attachment"), "{disposition}");
    let body = response.text().await.expect("body");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert!(doc.to_string().contains("signature"), "{body}");
    assert_eq!(
        logged(&site, "ExportCase", "case", &id.to_string()).await,
        1
    );
}

#[tokio::test]
async fn console_suggestions_follow_new_flags_and_drop_flags_put_in_cases() {
    let site = Site::start().await;
    let (_, session) = site.auditor().await;
    // Before any flag: the first grouping runs or has found nothing.
    let html = site.page(&session, "/cases/suggested").await;
    assert!(
        html.contains(r#"id="computing""#) || html.contains("No suggestion."),
        "{html}"
    );
    let html = suggested_until(&site, &session, |html| html.contains(r#"id="computed""#)).await;
    assert!(html.contains("over 0 open flags"), "{html}");

    // Flags raised later are grouped by the background task.
    let flags = ring(&site).await;
    let list: Vec<String> = flags.iter().map(i64::to_string).collect();
    let group = format!(r#"data-flag-ids="{}""#, list.join(","));
    let html = suggested_until(&site, &session, |html| html.contains(&group)).await;
    assert!(
        html.contains(&format!("over {} open flags", flags.len())),
        "{html}"
    );
    for f in &flags {
        assert!(html.contains(&format!(r#"href="/flags/{f}""#)));
        assert_eq!(
            logged(&site, "SuggestCases", "flag", &f.to_string()).await,
            1
        );
    }

    // A flag put in a case leaves the page at once, before any regrouping,
    // and is no longer logged as shown.
    let gone = flags[0];
    open_case(&site, &session, "one flag", &[gone]).await;
    let html = site.page(&session, "/cases/suggested").await;
    assert!(
        !html.contains(&format!(r#"href="/flags/{gone}""#)),
        "{html}"
    );
    assert_eq!(
        logged(&site, "SuggestCases", "flag", &gone.to_string()).await,
        1
    );
    // The regrouping that follows agrees.
    let html = suggested_until(&site, &session, |html| {
        html.contains(&format!("over {} open flags", flags.len() - 1))
    })
    .await;
    assert!(
        !html.contains(&format!(r#"href="/flags/{gone}""#)),
        "{html}"
    );
}

#[tokio::test]
async fn console_case_forms_without_the_token_change_nothing() {
    let site = Site::start().await;
    let flags = ring(&site).await;
    let (_, session) = site.auditor().await;
    let (_, other) = site.auditor().await;
    let cases = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM cases")
            .fetch_one(&site.app.pool)
            .await
            .unwrap()
    };
    for csrf in ["", "AAAA", other.csrf.as_str()] {
        let r = site
            .post(
                &session.cookie,
                "/cases",
                &[("csrf", csrf), ("title", "t"), ("flag_ids", "")],
            )
            .await;
        assert_eq!(r.status(), 403);
    }
    assert_eq!(cases().await, 0);
    let id = open_case(&site, &session, "one donor", &flags[..1]).await;
    let before = stored_case(&site, id).await;
    let path = format!("/cases/{id}");
    for (action, form) in [
        ("note", vec![("note", "n")]),
        ("assign", vec![("assignee", "someone")]),
        ("status", vec![("status", "INVESTIGATING"), ("etag", "1")]),
    ] {
        let mut form = form;
        form.push(("csrf", "AAAA"));
        let r = site
            .post(&session.cookie, &format!("{path}/{action}"), &form)
            .await;
        assert_eq!(r.status(), 403, "{action}");
    }
    let r = site
        .post(
            &session.cookie,
            &format!("/flags/{}/case", flags[1]),
            &[("case_id", &id.to_string()), ("csrf", "")],
        )
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(stored_case(&site, id).await, before, "nothing changed");
    // With the token the flag is added.
    let r = site
        .post(
            &session.cookie,
            &format!("/flags/{}/case", flags[1]),
            &[("case_id", &id.to_string()), ("csrf", &session.csrf)],
        )
        .await;
    assert_eq!(r.status(), 303);
    assert_ne!(stored_case(&site, id).await.3, before.3);
}

#[tokio::test]
async fn console_bad_case_ids_are_clear_4xx() {
    let site = Site::start().await;
    let (_, session) = site.auditor().await;
    for path in [
        "/cases/0",
        "/cases/x",
        "/cases/999999",
        "/cases/999999/dossier.json",
    ] {
        let r = site.get(&session.cookie, path).await;
        assert_eq!(r.status(), 404, "{path}");
    }
    let r = site
        .post(
            &session.cookie,
            "/cases/999999/note",
            &[("note", "n"), ("csrf", &session.csrf)],
        )
        .await;
    assert_eq!(r.status(), 404);
    for bad in ["/cases?status=SIDEWAYS", "/cases?before=x"] {
        assert_eq!(site.get(&session.cookie, bad).await.status(), 400, "{bad}");
    }
}

/// The target of the link with `id` on a page.
fn href_of(html: &str, id: &str) -> String {
    let marker = format!(r#"id="{id}" href=""#);
    let start = html.find(&marker).expect("the link") + marker.len();
    let end = html[start..].find('"').expect("its end") + start;
    html[start..end].to_owned()
}

#[tokio::test]
async fn console_flags_download_as_csv_and_the_export_is_logged() {
    let site = Site::start().await;
    let flags = ring(&site).await;
    let (_, session) = site.auditor().await;
    for path in ["/flags.csv", "/donors/00", "/recipients/00", "/clinics/X"] {
        assert_eq!(
            location(site.get("", path).await.headers()),
            "/login",
            "{path}"
        );
    }
    let inbox = site.page(&session, "/flags?status=OPEN").await;
    assert!(
        inbox.contains(r#"href="/flags.csv?status=OPEN""#),
        "{inbox}"
    );
    let response = site.get(&session.cookie, "/flags.csv?status=OPEN").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    let body = response.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(body.as_bytes());
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("a row")).collect();
    assert_eq!(rows.len(), flags.len(), "{body}");
    for f in &flags {
        assert_eq!(
            logged(&site, "ExportFlags", "flag", &f.to_string()).await,
            1
        );
    }
    let none = site
        .get(&session.cookie, "/flags.csv?status=DISMISSED")
        .await;
    let body = none.text().await.unwrap();
    assert_eq!(
        csv::Reader::from_reader(body.as_bytes()).records().count(),
        0
    );
    assert_eq!(
        site.get(&session.cookie, "/flags.csv?status=SIDEWAYS")
            .await
            .status(),
        400
    );
}

#[tokio::test]
async fn console_a_donor_timeline_lists_their_records_in_order() {
    let site = Site::start().await;
    ring(&site).await;
    let (_, session) = site.auditor().await;
    let records: Vec<i64> = sqlx::query_scalar("SELECT id FROM records ORDER BY transplanted_at")
        .fetch_all(&site.app.pool)
        .await
        .unwrap();
    assert_eq!(records.len(), 2);
    let html = site
        .page(&session, &format!("/records/{}", records[0]))
        .await;
    let donor = href_of(&html, "donor-link");
    let recipient = href_of(&html, "recipient-link");
    let timeline = site.page(&session, &donor).await;
    let first = timeline
        .find(&format!(r#"href="/records/{}""#, records[0]))
        .expect("the first record");
    let second = timeline
        .find(&format!(r#"href="/records/{}""#, records[1]))
        .expect("the second record");
    assert!(first < second, "oldest first");
    for r in &records {
        assert!(logged(&site, "SearchRecords", "record", &r.to_string()).await >= 1);
    }
    let theirs = site.page(&session, &recipient).await;
    assert!(theirs.contains(&format!(r#"href="/records/{}""#, records[0])));
    for bad in ["/donors/zz", "/donors/00ff", "/recipients/not-hex"] {
        assert_eq!(site.get(&session.cookie, bad).await.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn console_a_clinic_shows_its_licences_flags_and_months() {
    let site = Site::start().await;
    site.app
        .registry
        .clone()
        .upsert_clinic(pb::UpsertClinicRequest {
            clinic: Some(crate::helpers::clinic("DE-BER-01", "DE")),
        })
        .await
        .expect("clinic");
    let mut r = abo_incompatible("C-1");
    r.clinic_id = "DE-BER-01".into();
    submit(&site.app, r).await.expect("stored");
    let mut hostile = abo_incompatible("C-2");
    hostile.clinic_id = format!("X{HOSTILE}");
    let ack = submit(&site.app, hostile).await.expect("stored");
    let (_, session) = site.auditor().await;
    let html = site.page(&session, "/clinics/DE-BER-01").await;
    assert!(html.contains("DE-BER-01 transplant centre"), "{html}");
    assert!(html.contains(r#"href="/flags/"#), "a recent flag");
    assert!(html.contains(r#"<table id="activity">"#));
    assert!(html.contains("<svg"));
    // A hostile clinic id is linked from its record, encoded, and escaped.
    let record = site
        .page(&session, &format!("/records/{}", ack.record_id))
        .await;
    assert_inert("/records", &record);
    let link = record
        .split(r#"href="/clinics/"#)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a clinic link")
        .to_owned();
    let page = site.page(&session, &format!("/clinics/{link}")).await;
    assert_inert("/clinics", &page);
    assert_eq!(
        site.get(&session.cookie, "/clinics/NO-SUCH").await.status(),
        404
    );
}
