//! The console's network page and its role rule: what it draws and links,
//! what it refuses, and that an ADMIN session reads but changes nothing.

use transplant_audit::domain::Role;
use transplant_audit::wire::pb;

use super::{Site, csrf_of, revision_of};
use crate::helpers::{abo_incompatible, all_flags, identifier, submit, ts};

/// Two records sharing one donor, each with a flag; answers the record
/// ids (oldest first) and the flags (as the gRPC listing gives them).
async fn shared_donor(site: &Site) -> (Vec<i64>, Vec<pb::Flag>) {
    let mut records = Vec::new();
    for (i, day) in [0i64, 90].into_iter().enumerate() {
        let mut r = abo_incompatible(&format!("NET-{i}"));
        let mut at = ts("2025-01-01T10:00:00Z");
        at.seconds += day * 86_400;
        r.transplanted_at = Some(at);
        at.seconds -= 3600;
        r.procured_at = Some(at);
        r.recipient.as_mut().unwrap().identifier = identifier(&format!("NET-RECIPIENT-{i}"));
        r.donor.as_mut().unwrap().identifier = identifier("NET-DONOR");
        let ack = submit(&site.app, r).await.expect("stored");
        records.push(ack.record_id.parse::<i64>().expect("id"));
    }
    let flags = all_flags(&site.app, pb::ListFlagsRequest::default()).await;
    (records, flags)
}

async fn logged(site: &Site, action: &str, resource: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM access_log WHERE action = $1 AND resource = $2")
        .bind(action)
        .bind(resource)
        .fetch_one(&site.app.pool)
        .await
        .expect("access log")
}

#[tokio::test]
async fn console_the_network_around_a_flag_is_drawn_linked_and_logged() {
    let site = Site::start().await;
    let (records, flags) = shared_donor(&site).await;
    let flag = flags
        .iter()
        .find(|f| f.record_id == records[0].to_string())
        .expect("a flag on the first record");
    let severity = pb::Severity::try_from(flag.severity)
        .expect("severity")
        .as_str_name()
        .trim_start_matches("SEVERITY_")
        .to_owned();
    let (_, session) = site.auditor().await;

    // Every page that can start a walk links to it.
    let flag_page = site
        .page(&session, &format!("/flags/{}", flag.flag_id))
        .await;
    assert!(flag_page.contains(&format!(r#"href="/network?flag_id={}""#, flag.flag_id)));
    let record_page = site
        .page(&session, &format!("/records/{}", records[0]))
        .await;
    assert!(record_page.contains(&format!(r#"href="/network?record_id={}""#, records[0])));

    let html = site
        .page(&session, &format!("/network?flag_id={}", flag.flag_id))
        .await;
    assert!(html.contains(r#"<svg class="network""#), "{html}");
    // Two hops from the flag's record reach the other record through the donor.
    for r in &records {
        let node = format!(r#"data-node="record:{r}""#);
        assert!(html.contains(&node), "{node}");
        assert!(html.contains(&format!(r#"href="/records/{r}""#)));
    }
    // Coloured by the worst open flag; the origin marked.
    assert!(
        html.contains(&format!(
            r#"<a href="/records/{}" class="node node-{severity} origin""#,
            records[0]
        )),
        "{html}"
    );
    assert!(html.contains(r#"href="/clinics/DE-BER-01""#));
    assert!(html.contains(r#"href="/flags?hospital_id=H-DE-001""#));
    let donor = html
        .split(r#"href="/donors/"#)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a donor link")
        .to_owned();
    // The text alternative lists nodes and edges.
    assert!(html.contains(r#"<table id="nodes">"#) && html.contains(r#"<table id="edges">"#));
    assert!(html.contains("<td>donor of</td>"));
    assert!(!html.contains(r#"id="truncated""#));
    assert!(logged(&site, "GetNetwork", "network").await >= 1);
    assert!(logged(&site, "GetNetwork", "record").await >= 2);

    // From a person, and the donor's page links there.
    let donor_page = site.page(&session, &format!("/donors/{donor}")).await;
    let from_donor = format!("/network?donor_fingerprint={donor}");
    assert!(donor_page.contains(&format!(r#"href="{from_donor}""#)));
    let html = site.page(&session, &from_donor).await;
    assert!(html.contains(&format!(r#"data-node="donor:{donor}""#)));
    // A bound below the graph's size says the drawing was cut.
    let html = site
        .page(
            &session,
            &format!("/network?record_id={}&max_nodes=3", records[0]),
        )
        .await;
    assert!(html.contains(r#"id="truncated""#), "{html}");

    for (path, status) in [
        ("/network".to_owned(), 400),
        ("/network?flag_id=x".to_owned(), 400),
        ("/network?flag_id=1&record_id=1".to_owned(), 400),
        (format!("/network?record_id={}&depth=9", records[0]), 400),
        (format!("/network?record_id={}&depth=two", records[0]), 400),
        (
            format!("/network?record_id={}&max_nodes=0", records[0]),
            400,
        ),
        ("/network?donor_fingerprint=zz".to_owned(), 400),
        ("/network?flag_id=999999".to_owned(), 404),
        ("/network?record_id=999999".to_owned(), 404),
    ] {
        assert_eq!(
            site.get(&session.cookie, &path).await.status(),
            status,
            "{path}"
        );
    }
}

#[tokio::test]
async fn console_an_admin_reads_but_cannot_triage_or_work_on_cases() {
    let site = Site::start().await;
    let (_, flags) = shared_donor(&site).await;
    let flag = &flags[0].flag_id;
    let admin = site.app.key(Role::Admin, None).await;
    let session = site.sign_in(&admin).await;
    let page = site.page(&session, &format!("/flags/{flag}")).await;
    let state = || async {
        let status: String = sqlx::query_scalar("SELECT status FROM flags WHERE id = $1")
            .bind(flag.parse::<i64>().unwrap())
            .fetch_one(&site.app.pool)
            .await
            .unwrap();
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM flag_events")
            .fetch_one(&site.app.pool)
            .await
            .unwrap();
        let cases: i64 = sqlx::query_scalar("SELECT count(*) FROM cases")
            .fetch_one(&site.app.pool)
            .await
            .unwrap();
        (status, events, cases)
    };
    let before = state().await;
    let csrf = csrf_of(&page);
    // The page shows no triage form: the revision is the stored one.
    let revision: i64 = sqlx::query_scalar("SELECT revision FROM flags WHERE id = $1")
        .bind(flag.parse::<i64>().unwrap())
        .fetch_one(&site.app.pool)
        .await
        .unwrap();
    let triage = site
        .post(
            &session.cookie,
            &format!("/flags/{flag}/triage"),
            &[
                ("to", "IN_REVIEW"),
                ("revision", &revision.to_string()),
                ("csrf", &csrf),
                ("note", ""),
            ],
        )
        .await;
    assert_eq!(triage.status(), 403);
    assert!(triage.text().await.unwrap().contains("AUDITOR"));
    let open = site
        .post(
            &session.cookie,
            "/cases",
            &[
                ("csrf", &csrf),
                ("title", "Admin's case"),
                ("flag_ids", flag),
            ],
        )
        .await;
    assert_eq!(open.status(), 403);
    assert_eq!(state().await, before, "nothing changed");
    // An auditor's same form works, so the refusal above was the role's.
    let (_, auditor) = site.auditor().await;
    let page = site.page(&auditor, &format!("/flags/{flag}")).await;
    let response = site
        .post(
            &auditor.cookie,
            &format!("/flags/{flag}/triage"),
            &[
                ("to", "IN_REVIEW"),
                ("revision", &revision_of(&page)),
                ("csrf", &csrf_of(&page)),
                ("note", ""),
            ],
        )
        .await;
    assert_eq!(response.status(), 303);
}

/// The actions of a page's POST forms, but the sign-out every page has.
fn post_actions(html: &str) -> Vec<String> {
    html.split("<form")
        .skip(1)
        .filter(|form| {
            form.split('>')
                .next()
                .unwrap_or("")
                .contains(r#"method="post""#)
        })
        .filter_map(|form| form.split(r#"action=""#).nth(1))
        .filter_map(|rest| rest.split('"').next())
        .filter(|action| *action != "/logout")
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn console_an_admin_is_shown_no_form_it_cannot_submit() {
    let site = Site::start().await;
    let (_, flags) = shared_donor(&site).await;
    let (_, auditor) = site.auditor().await;
    let admin = site.app.key(Role::Admin, None).await;
    let admin = site.sign_in(&admin).await;
    let in_case = flags[0].flag_id.parse::<i64>().unwrap();
    let alone = &flags[1].flag_id;
    let list = in_case.to_string();
    let opened = site
        .post(
            &auditor.cookie,
            "/cases",
            &[
                ("csrf", &auditor.csrf),
                ("title", "A ring"),
                ("flag_ids", &list),
            ],
        )
        .await;
    assert_eq!(opened.status(), 303);
    let case = super::location(opened.headers());
    let pages = [format!("/flags/{alone}"), case.clone(), "/cases".to_owned()];

    // An auditor is given every form the pages carry.
    let forms = |path: &str| match path {
        p if p == case => vec![
            format!("{case}/note"),
            format!("{case}/assign"),
            format!("{case}/status"),
        ],
        "/cases" => vec!["/cases".to_owned()],
        _ => vec![
            format!("/flags/{alone}/triage"),
            format!("/flags/{alone}/case"),
        ],
    };
    for path in &pages {
        let html = site.page(&auditor, path).await;
        assert_eq!(post_actions(&html), forms(path), "{path}");
        assert!(!html.contains(r#"id="read-only""#), "{path}");
    }
    // An admin reads the same pages, is told why it is given no form, and
    // is given none.
    for path in &pages {
        let html = site.page(&admin, path).await;
        assert_eq!(post_actions(&html), Vec::<String>::new(), "{path}");
        assert!(html.contains(r#"id="read-only""#), "{path}: {html}");
        assert!(html.contains("reads only"), "{path}");
    }
    let html =
        super::cases::suggested_until(&site, &admin, |html| html.contains(r#"id="computed""#))
            .await;
    assert_eq!(post_actions(&html), Vec::<String>::new());
    assert!(html.contains(r#"id="read-only""#), "{html}");
}
