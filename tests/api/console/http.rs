//! The console over HTTP, as a careless browser, an outsider and an insider
//! would use it.

use transplant_audit::domain::Role;
use transplant_audit::wire::pb;

use super::{Site, csrf_of, key_of, location, revision_of, session_cookie};
use crate::helpers::{abo_incompatible, all_flags, amend, create_key_for, submit};

/// The id of the one flag `rule_id` raised.
async fn flag_of(site: &Site, rule_id: &str) -> String {
    let flags = all_flags(
        &site.app,
        pb::ListFlagsRequest {
            rule_id: rule_id.into(),
            ..Default::default()
        },
    )
    .await;
    flags.first().expect("a flag").flag_id.clone()
}

/// A flag's status and revision as stored, and its steps.
async fn stored_flag(site: &Site, id: &str) -> (String, i64, i64) {
    let id: i64 = id.parse().expect("id");
    let (status, revision): (String, i64) =
        sqlx::query_as("SELECT status, revision FROM flags WHERE id = $1")
            .bind(id)
            .fetch_one(&site.app.pool)
            .await
            .expect("flag");
    let steps: i64 = sqlx::query_scalar("SELECT count(*) FROM flag_events WHERE flag_id = $1")
        .bind(id)
        .fetch_one(&site.app.pool)
        .await
        .expect("steps");
    (status, revision, steps)
}

#[tokio::test]
async fn without_a_session_every_page_redirects_to_login() {
    let site = Site::start().await;
    submit(&site.app, abo_incompatible("R-1"))
        .await
        .expect("stored");
    let flag = flag_of(&site, "ABO_INCOMPATIBLE").await;
    for path in [
        "/".to_owned(),
        "/flags".to_owned(),
        "/flags?status=OPEN".to_owned(),
        format!("/flags/{flag}"),
        "/flags/events".to_owned(),
        "/records/1".to_owned(),
        "/rules".to_owned(),
        format!("/network?flag_id={flag}"),
        "/clinics/DE-BER-01".to_owned(),
        "/no-such-page".to_owned(),
    ] {
        let response = site.get("", &path).await;
        assert!(
            response.status().is_redirection(),
            "{path}: {}",
            response.status()
        );
        let to = location(response.headers());
        assert!(
            to == "/login" || (path == "/" && to == "/flags"),
            "{path} → {to}"
        );
    }
    // A forged or stale cookie is no session either.
    let response = site
        .get(
            "ta_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "/flags",
        )
        .await;
    assert_eq!(location(response.headers()), "/login");
    // Nor can a POST act without one.
    let before = stored_flag(&site, &flag).await;
    let response = site
        .post(
            "",
            &format!("/flags/{flag}/triage"),
            &[("to", "IN_REVIEW"), ("revision", "1"), ("csrf", "x")],
        )
        .await;
    assert_eq!(location(response.headers()), "/login");
    assert_eq!(stored_flag(&site, &flag).await, before, "nothing changed");
    let login = site.get("", "/login").await;
    assert_eq!(login.status(), 200);
    let html = login.text().await.unwrap();
    assert!(html.contains(r#"name="api_key""#), "{html}");
    assert!(html.contains(r#"<label for="api_key">"#));
}

#[tokio::test]
async fn auditors_and_admins_sign_in_hospitals_and_unknown_keys_do_not() {
    let site = Site::start().await;
    let response = site.sign_in_raw(&site.app.auditor_token).await;
    assert_eq!(response.status(), 303);
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap()
        .to_owned();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    assert!(!set_cookie.contains("Secure"), "plain HTTP on loopback");
    site.sign_in(&site.app.admin_token).await;

    let sessions = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM console_sessions")
            .fetch_one(&site.app.pool)
            .await
            .unwrap()
    };
    let before = sessions().await;
    let hospital = site.sign_in_raw(&site.app.hospital_token).await;
    assert_eq!(hospital.status(), 403);
    assert!(session_cookie(hospital.headers()).is_none());
    let html = hospital.text().await.unwrap();
    assert!(html.contains("A HOSPITAL key cannot sign in"), "{html}");
    for bad in ["", "nonsense", "ta_nokey_nosecret"] {
        let response = site.sign_in_raw(bad).await;
        assert_eq!(response.status(), 401, "{bad:?}");
        assert!(session_cookie(response.headers()).is_none());
    }
    let tampered = format!("{}x", site.app.auditor_token);
    assert_eq!(site.sign_in_raw(&tampered).await.status(), 401);
    assert_eq!(sessions().await, before, "no session for a refused key");
    // The database keeps a hash of the session id, never the id itself.
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT id_hash FROM console_sessions")
        .fetch_all(&site.app.pool)
        .await
        .unwrap();
    let (_, session) = site.auditor().await;
    let id = session.cookie.trim_start_matches("ta_session=");
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(id)
        .unwrap();
    assert!(!stored.contains(&raw));
}

#[tokio::test]
async fn every_page_carries_a_strict_content_security_policy() {
    let site = Site::start().await;
    let (_, session) = site.auditor().await;
    for path in [
        "/flags",
        "/rules",
        "/login",
        "/assets/console.css",
        "/assets/inbox.js",
    ] {
        let response = site.get(&session.cookie, path).await;
        assert_eq!(response.status(), 200, "{path}");
        let h = response.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "same-origin");
    }
    let html = site.page(&session, "/flags").await;
    assert!(!html.contains("<script>"), "no inline script");
    assert!(!html.contains(" on"), "no inline handlers: {html}");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN"
    );
}

#[tokio::test]
async fn a_post_without_the_right_csrf_token_changes_nothing() {
    let site = Site::start().await;
    submit(&site.app, abo_incompatible("R-1"))
        .await
        .expect("stored");
    let flag = flag_of(&site, "ABO_INCOMPATIBLE").await;
    let (_, session) = site.auditor().await;
    let (_, other) = site.auditor().await;
    let page = site.page(&session, &format!("/flags/{flag}")).await;
    let revision = revision_of(&page);
    let before = stored_flag(&site, &flag).await;
    let path = format!("/flags/{flag}/triage");
    for csrf in ["", "AAAA", other.csrf.as_str(), "not base64!"] {
        let response = site
            .post(
                &session.cookie,
                &path,
                &[("to", "IN_REVIEW"), ("revision", &revision), ("csrf", csrf)],
            )
            .await;
        assert_eq!(response.status(), 403, "csrf {csrf:?}");
        assert_eq!(stored_flag(&site, &flag).await, before, "nothing changed");
    }
    let missing = site
        .post(
            &session.cookie,
            &path,
            &[("to", "IN_REVIEW"), ("revision", &revision)],
        )
        .await;
    assert_eq!(missing.status(), 403);
    // A form posted from another site, even with the token, is refused.
    let cross = site
        .http
        .post(site.url(&path))
        .header("cookie", &session.cookie)
        .header("origin", "http://evil.example")
        .form(&[
            ("to", "IN_REVIEW"),
            ("revision", &revision),
            ("csrf", &session.csrf),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    // Sign-out without the token does not sign out.
    let out = site.post(&session.cookie, "/logout", &[("csrf", "")]).await;
    assert_eq!(out.status(), 403);
    assert_eq!(stored_flag(&site, &flag).await, before, "nothing changed");

    // With it, the step is taken, and bad fields are named without change.
    let bad = site
        .post(
            &session.cookie,
            &path,
            &[
                ("to", "SIDEWAYS"),
                ("revision", &revision),
                ("csrf", &session.csrf),
            ],
        )
        .await;
    assert_eq!(bad.status(), 400);
    assert_eq!(stored_flag(&site, &flag).await, before);
    let ok = site
        .post(
            &session.cookie,
            &path,
            &[
                ("to", "IN_REVIEW"),
                ("revision", &revision),
                ("csrf", &session.csrf),
            ],
        )
        .await;
    assert_eq!(ok.status(), 303);
    assert_eq!(location(ok.headers()), format!("/flags/{flag}"));
    assert_eq!(stored_flag(&site, &flag).await.0, "IN_REVIEW");
    // A stale revision is refused: somebody else moved it.
    let stale = site
        .post(
            &session.cookie,
            &path,
            &[
                ("to", "OPEN"),
                ("revision", &revision),
                ("csrf", &session.csrf),
            ],
        )
        .await;
    assert_eq!(stale.status(), 409);
    // Closing needs a note.
    let page = site.page(&session, &format!("/flags/{flag}")).await;
    let revision = revision_of(&page);
    let no_note = site
        .post(
            &session.cookie,
            &path,
            &[
                ("to", "CONFIRMED"),
                ("revision", &revision),
                ("csrf", &session.csrf),
            ],
        )
        .await;
    assert_eq!(no_note.status(), 400);
    assert_eq!(stored_flag(&site, &flag).await.0, "IN_REVIEW");
}

#[tokio::test]
async fn the_trails_record_the_console_user_as_a_grpc_caller() {
    let site = Site::start().await;
    submit(&site.app, abo_incompatible("R-1"))
        .await
        .expect("stored");
    let flag = flag_of(&site, "ABO_INCOMPATIBLE").await;
    let (token, session) = site.auditor().await;
    let page = site.page(&session, &format!("/flags/{flag}")).await;
    let (principal, key): (String, String) = sqlx::query_as(
        "SELECT principal, key_id FROM access_log WHERE action = 'GetFlag' AND resource_id = $1",
    )
    .bind(&flag)
    .fetch_one(&site.app.pool)
    .await
    .expect("the opening is logged");
    assert_eq!(key, key_of(&token));
    assert!(principal.starts_with("tester-"), "{principal}");
    let response = site
        .post(
            &session.cookie,
            &format!("/flags/{flag}/triage"),
            &[
                ("to", "IN_REVIEW"),
                ("revision", &revision_of(&page)),
                ("csrf", &session.csrf),
                ("note", "looking"),
            ],
        )
        .await;
    assert_eq!(response.status(), 303);
    let (step_principal, step_key, note): (String, String, String) = sqlx::query_as(
        "SELECT principal, key_id, note FROM flag_events WHERE flag_id = $1 ORDER BY step DESC LIMIT 1",
    )
    .bind(flag.parse::<i64>().unwrap())
    .fetch_one(&site.app.pool)
    .await
    .expect("a step");
    assert_eq!(
        (step_principal.as_str(), step_key.as_str(), note.as_str()),
        (principal.as_str(), key.as_str(), "looking")
    );
    let html = site.page(&session, &format!("/flags/{flag}")).await;
    assert!(
        html.contains(&principal) && html.contains(&key),
        "history names who and which key"
    );
    // The record page is logged too.
    let record: i64 = sqlx::query_scalar("SELECT record_id FROM flags WHERE id = $1")
        .bind(flag.parse::<i64>().unwrap())
        .fetch_one(&site.app.pool)
        .await
        .unwrap();
    site.page(&session, &format!("/records/{record}")).await;
    let logged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM access_log WHERE action = 'GetRecord' AND resource_id = $1 AND key_id = $2",
    )
    .bind(record.to_string())
    .bind(&key)
    .fetch_one(&site.app.pool)
    .await
    .unwrap();
    assert_eq!(logged, 1);
}

#[tokio::test]
async fn sign_out_idle_time_and_revocation_end_a_session() {
    let site = Site::start().await;
    // Sign-out.
    let (_, session) = site.auditor().await;
    let out = site
        .post(&session.cookie, "/logout", &[("csrf", &session.csrf)])
        .await;
    assert_eq!(out.status(), 303);
    assert_eq!(location(out.headers()), "/login");
    assert_eq!(
        location(site.get(&session.cookie, "/flags").await.headers()),
        "/login"
    );

    // Idle: the session's last use moved back past the idle time.
    let (_, idle) = site.auditor().await;
    sqlx::query("UPDATE console_sessions SET last_seen_at = now() - interval '2 hours'")
        .execute(&site.app.pool)
        .await
        .unwrap();
    assert_eq!(
        location(site.get(&idle.cookie, "/flags").await.headers()),
        "/login"
    );

    // Revocation through the admin API ends the key's sessions at once.
    let (token, session) = site.auditor().await;
    site.page(&session, "/flags").await;
    site.app
        .admin
        .clone()
        .revoke_api_key(pb::RevokeApiKeyRequest {
            key_id: key_of(&token),
        })
        .await
        .expect("revoked");
    assert_eq!(
        location(site.get(&session.cookie, "/flags").await.headers()),
        "/login"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM console_sessions WHERE key_id = $1")
        .bind(key_of(&token))
        .fetch_one(&site.app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(site.sign_in_raw(&token).await.status(), 401);
}

/// Payloads that would run or inject markup if a page did not escape them.
const PAYLOADS: [&str; 3] = [
    "<script>alert('xss')</script>",
    "\"onmouseover=\"alert(1)",
    "<img src=x onerror=alert(2)>",
];

/// Fails if any payload appears unescaped in `html`.
fn assert_inert(path: &str, html: &str) {
    for raw in [
        "<script>alert",
        "\"onmouseover=",
        "<img src=x",
        "onerror=alert(2)>",
    ] {
        assert!(!html.contains(raw), "{path} holds {raw:?} unescaped");
    }
}

#[tokio::test]
async fn what_hospitals_and_auditors_typed_is_escaped_on_every_page() {
    let site = Site::start().await;
    let [script, attribute, image] = PAYLOADS;
    let mut record = abo_incompatible("R-xss");
    record.external_record_id = format!("R{attribute}");
    record.clinic_id = format!("C{script}");
    let ack = submit(&site.app, record.clone()).await.expect("stored");
    let mut amended = record.clone();
    let age = &mut amended.donor.as_mut().unwrap().age_years;
    *age = age.map(|a| a + 1);
    amend(&site.app, amended, &format!("fix {image} {script}"))
        .await
        .expect("amended");
    // A registered clinic whose name is hostile, where the charts draw it.
    let mut clinic = crate::helpers::clinic("DE-XSS-01", "DE");
    clinic.name = format!("N{script}{attribute}{image}");
    site.app
        .registry
        .clone()
        .upsert_clinic(pb::UpsertClinicRequest {
            clinic: Some(clinic),
        })
        .await
        .expect("clinic");
    let mut at_clinic = abo_incompatible("R-xss-2");
    at_clinic.clinic_id = "DE-XSS-01".into();
    submit(&site.app, at_clinic).await.expect("stored");
    let principal = format!("auditor {script} {attribute}");
    let token = create_key_for(&site.app.store, Role::Auditor, None, Some(&principal)).await;
    site.app.auth.learn(&key_of(&token));
    let session = site.sign_in(&token).await;
    let flag = flag_of(&site, "ABO_INCOMPATIBLE").await;
    let page = site.page(&session, &format!("/flags/{flag}")).await;
    let response = site
        .post(
            &session.cookie,
            &format!("/flags/{flag}/triage"),
            &[
                ("to", "IN_REVIEW"),
                ("revision", &revision_of(&page)),
                ("csrf", &csrf_of(&page)),
                ("note", &format!("{script}{attribute}{image}")),
            ],
        )
        .await;
    assert_eq!(response.status(), 303);
    let filtered = format!(
        "/flags?clinic_id={}&hospital_id={}",
        urlencode(&record.clinic_id),
        urlencode(attribute)
    );
    for path in [
        "/flags".to_owned(),
        filtered,
        format!("/flags?rule_id={}", urlencode(script)),
        format!("/flags/{flag}"),
        format!("/records/{}", ack.record_id),
        "/rules".to_owned(),
        format!("/network?flag_id={flag}"),
        format!("/network?record_id={}", ack.record_id),
        format!("/clinics/{}", urlencode(&record.clinic_id)),
        "/clinics/DE-XSS-01".to_owned(),
    ] {
        let response = site.get(&session.cookie, &path).await;
        if !path.contains("rule_id=") {
            assert_eq!(response.status(), 200, "{path}");
        }
        let html = response.text().await.unwrap();
        assert_inert(&path, &html);
    }
    // The charts' captions (SVG text written by the chart library) and the
    // network's node labels hold the typed values as text.
    let clinic_page = site.page(&session, "/clinics/DE-XSS-01").await;
    assert!(
        clinic_page.contains("N&lt;script&gt;alert("),
        "the chart caption, escaped by the chart library"
    );
    let network = site
        .page(&session, &format!("/network?record_id={}", ack.record_id))
        .await;
    assert!(network.contains("Clinic C&#60;script&#62;"), "{network}");
    let html = site.page(&session, &format!("/flags/{flag}")).await;
    // Shown, as text (askama writes numeric character references).
    assert!(html.contains("&#60;script&#62;alert("));
    assert!(html.contains("&#34;onmouseover="));
    let record_page = site
        .page(&session, &format!("/records/{}", ack.record_id))
        .await;
    assert!(
        record_page.contains("fix &#60;img"),
        "the amendment's reason, as text"
    );
}

fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("v", text)]).unwrap()[2..].to_owned()
}

#[tokio::test]
async fn the_inbox_filters_and_pages() {
    let site = Site::start().await;
    submit(&site.app, abo_incompatible("R-1"))
        .await
        .expect("stored");
    let (_, session) = site.auditor().await;
    let flag = flag_of(&site, "ABO_INCOMPATIBLE").await;
    let row = format!(r#"data-flag-id="{flag}""#);
    let html = site
        .page(&session, "/flags?rule_id=ABO_INCOMPATIBLE&status=OPEN")
        .await;
    assert!(html.contains(&row));
    let html = site.page(&session, "/flags?rule_id=SAME_PERSON").await;
    assert!(!html.contains(&row));
    let html = site.page(&session, "/flags?status=CONFIRMED").await;
    assert!(!html.contains(&row));
    let html = site
        .page(
            &session,
            "/flags?raised_after=2000-01-01&raised_before=2999-01-01",
        )
        .await;
    assert!(html.contains(&row));
    let bad = site
        .get(&session.cookie, "/flags?status=NOPE&raised_after=soon")
        .await;
    assert_eq!(bad.status(), 400);
    let html = bad.text().await.unwrap();
    assert!(
        html.contains("raised_after") && html.contains("status"),
        "{html}"
    );
    let missing = site.get(&session.cookie, "/flags/999999").await;
    assert_eq!(missing.status(), 404);
    let junk = site.get(&session.cookie, "/flags/abc").await;
    assert_eq!(junk.status(), 404);
    for path in ["/records/999999", "/records/-1", "/records/x"] {
        assert_eq!(
            site.get(&session.cookie, path).await.status(),
            404,
            "{path}"
        );
    }
    let rules = site.page(&session, "/rules").await;
    assert!(rules.contains(r#"data-rule-id="ABO_INCOMPATIBLE""#));
}

/// The rules page shows counts kept in the background, said to be so, and
/// they follow a flag raised after the page was first read.
#[tokio::test]
async fn the_rules_page_shows_counts_kept_fresh_in_the_background() {
    let site = Site::start().await;
    let (_, session) = site.auditor().await;
    let row = |html: &str| {
        let start = html
            .find(r#"data-rule-id="ABO_INCOMPATIBLE""#)
            .expect("the rule's row");
        let end = start + html[start..].find("</tr>").expect("the row's end");
        html[start..end].to_owned()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut raised = false;
    loop {
        let html = site.page(&session, "/rules").await;
        if html.contains(r#"id="counted-at""#) {
            if !raised {
                assert!(
                    row(&html).contains("<td>0</td><td>0</td><td>0</td><td>0</td>"),
                    "{html}"
                );
                submit(&site.app, abo_incompatible("RULES-1"))
                    .await
                    .expect("stored");
                raised = true;
            } else if row(&html).contains("<td>1</td><td>0</td><td>0</td><td>0</td>") {
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the kept counts never showed the new flag: {html}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
