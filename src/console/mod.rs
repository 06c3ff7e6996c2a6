//! The auditors' web console: server-rendered pages (askama templates
//! compiled into the binary, every asset embedded) over the same
//! application layer as the gRPC `AuditService` ([`crate::audit`]), so the
//! access log and the triage history record a console user exactly as a
//! gRPC caller.
//!
//! Sign-in takes an AUDITOR or ADMIN API key and opens a server-side
//! session ([`session`]); every state-changing request is a POST carrying a
//! CSRF token bound to the session. Every response carries a strict
//! Content-Security-Policy (no inline script) and the usual security headers.

mod assets;
mod cases;
mod charts;
mod clinics;
mod error;
mod events;
mod filters;
mod highlight;
mod listen;
mod network;
mod pages;
mod persons;
pub mod session;
mod views;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{Redirect, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::api::auth::Authenticator;
use crate::audit::Auditing;
use crate::config::TlsPem;
use crate::domain::ledger::SigningKey;
use crate::incoming::TlsSetupError;
use crate::investigation::Investigation;
use crate::kept::KeptViews;
use crate::store::Store;

/// What every page allows itself: its own scripts, styles and images, and
/// nothing inline, framed or posted elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// Everything the console's pages share.
#[derive(Clone, Debug)]
pub struct Console {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    audit: Auditing,
    investigation: Investigation,
    /// The latest suggested cases and rule counts, kept fresh in the background.
    kept: KeptViews,
    auth: Arc<Authenticator>,
    store: Store,
    /// Signs the dossiers it exports.
    signer: SigningKey,
    /// Served over TLS: cookies are `Secure`, HSTS is sent.
    tls: bool,
    /// How long a session may go unused.
    idle: Duration,
}

impl Console {
    /// The console over `audit`, `investigation` and the `kept` views,
    /// checking keys with `auth` and keeping sessions in `store`, signing
    /// dossiers with `signer`; `tls` when it is served over TLS.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        audit: Auditing,
        investigation: Investigation,
        kept: KeptViews,
        auth: Arc<Authenticator>,
        store: Store,
        signer: SigningKey,
        tls: bool,
        idle: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                audit,
                investigation,
                kept,
                auth,
                store,
                signer,
                tls,
                idle,
            }),
        }
    }

    /// The console's routes.
    pub fn router(self) -> Router {
        let tls = self.inner.tls;
        Router::new()
            .route("/", get(|| async { Redirect::to("/flags") }))
            .route("/login", get(pages::login_form).post(pages::login))
            .route("/logout", post(pages::logout))
            .route("/flags", get(pages::inbox))
            .route("/flags.csv", get(pages::flags_csv))
            .route("/flags/events", get(events::inbox_events))
            .route("/flags/{id}", get(pages::flag))
            .route("/flags/{id}/triage", post(pages::triage))
            .route("/flags/{id}/case", post(cases::add_flag))
            .route("/cases", get(cases::cases).post(cases::open_case))
            .route("/cases/suggested", get(cases::suggested))
            .route("/cases/{id}", get(cases::case))
            .route("/cases/{id}/note", post(cases::add_note))
            .route("/cases/{id}/assign", post(cases::assign))
            .route("/cases/{id}/status", post(cases::set_status))
            .route("/cases/{id}/dossier.json", get(cases::dossier))
            .route("/records/{id}", get(pages::record))
            .route("/clinics/{id}", get(clinics::clinic))
            .route("/donors/{fingerprint}", get(persons::donor))
            .route("/recipients/{fingerprint}", get(persons::recipient))
            .route("/network", get(network::network))
            .route("/rules", get(pages::rules))
            .route("/assets/{name}", get(assets::asset))
            .fallback(pages::not_found)
            .layer(middleware::from_fn_with_state(tls, security_headers))
            .with_state(self)
    }
}

/// The security headers of every response.
async fn security_headers(State(tls): State<bool>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = |headers: &mut axum::http::HeaderMap, name, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    // Same-origin, not no-referrer: with no-referrer a browser sends
    // `Origin: null` on form posts, and the origin check needs the origin.
    set(headers, header::REFERRER_POLICY, "same-origin");
    set(
        headers,
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        headers,
        header::HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    set(
        headers,
        header::HeaderName::from_static("permissions-policy"),
        "camera=(), microphone=(), geolocation=()",
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        // Pages hold evidence: no copy is kept by the browser or a proxy.
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    if tls {
        set(
            headers,
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=31536000",
        );
    }
    response
}

/// Why the console could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The TLS files do not make a TLS configuration.
    #[error("{0}")]
    Tls(#[from] TlsSetupError),
    /// The listener failed.
    #[error("console listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves `console` on `listener` (over TLS with `tls`) until `shutdown`
/// resolves; open event streams end when the flag feed closes.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsPem>,
    console: Console,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ConsoleError> {
    let router = console.router();
    match tls {
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await?
        }
        Some(pem) => {
            let listener = listen::TlsListener::start(listener, &pem)?;
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await?
        }
    }
    Ok(())
}
