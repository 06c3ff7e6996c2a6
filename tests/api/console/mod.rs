//! The auditors' web console over HTTP: sign-in, sessions, CSRF, escaping,
//! the live inbox; `browser` drives it in headless Chromium.

mod browser;
mod cases;
mod http;
mod kept;
mod live;
mod network;
mod tls;

use std::time::Duration;

use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;
use transplant_audit::domain::Role;

use crate::helpers::{TestApp, key_id, spawn_app_with_console};

/// Sessions in the tests never go idle by the clock: the idle test moves
/// the session's last use back in the database instead.
pub const IDLE: Duration = Duration::from_secs(3600);

/// A console under test: the app and a client that follows no redirects.
pub struct Site {
    pub app: TestApp,
    pub base: String,
    pub http: reqwest::Client,
}

/// A signed-in browser's state: its cookie and a page's CSRF token.
#[derive(Clone, Debug)]
pub struct Session {
    pub cookie: String,
    pub csrf: String,
}

impl Site {
    pub async fn start() -> Self {
        let app = spawn_app_with_console(IDLE).await;
        let base = format!("http://{}", app.console_addr.expect("a console"));
        let http = reqwest::Client::builder()
            .redirect(Policy::none())
            .build()
            .expect("client");
        Self { app, base, http }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Posts the sign-in form with `api_key`.
    pub async fn sign_in_raw(&self, api_key: &str) -> reqwest::Response {
        self.http
            .post(self.url("/login"))
            .form(&[("api_key", api_key)])
            .send()
            .await
            .expect("POST /login")
    }

    /// Signs in with `api_key`; panics unless it works.
    pub async fn sign_in(&self, api_key: &str) -> Session {
        let response = self.sign_in_raw(api_key).await;
        assert_eq!(response.status(), 303, "sign-in redirects");
        assert_eq!(location(response.headers()), "/flags");
        let cookie = session_cookie(response.headers()).expect("a session cookie");
        let page = self.get(&cookie, "/flags").await;
        assert_eq!(page.status(), 200);
        let csrf = csrf_of(&page.text().await.expect("body"));
        Session { cookie, csrf }
    }

    /// A fresh auditor key's session.
    pub async fn auditor(&self) -> (String, Session) {
        let token = self.app.key(Role::Auditor, None).await;
        let session = self.sign_in(&token).await;
        (token, session)
    }

    pub async fn get(&self, cookie: &str, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .header("cookie", cookie)
            .send()
            .await
            .expect("GET")
    }

    /// The page's HTML; panics unless it answers 200.
    pub async fn page(&self, session: &Session, path: &str) -> String {
        let response = self.get(&session.cookie, path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.text().await.expect("body")
    }

    pub async fn post(&self, cookie: &str, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("cookie", cookie)
            .form(form)
            .send()
            .await
            .expect("POST")
    }
}

pub fn location(headers: &HeaderMap) -> String {
    headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// `ta_session=<value>` from a `Set-Cookie`, to send back.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("ta_session="))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
}

/// The CSRF token a page's forms carry.
pub fn csrf_of(html: &str) -> String {
    let marker = r#"name="csrf" value=""#;
    let start = html.find(marker).expect("a CSRF field") + marker.len();
    let end = html[start..].find('"').expect("its end") + start;
    html[start..end].to_owned()
}

/// The revision a flag page's triage form names.
pub fn revision_of(html: &str) -> String {
    let marker = r#"name="revision" value=""#;
    let start = html.find(marker).expect("a revision field") + marker.len();
    let end = html[start..].find('"').expect("its end") + start;
    html[start..end].to_owned()
}

/// The key id behind a token, as trails record it.
pub fn key_of(token: &str) -> String {
    key_id(token)
}
