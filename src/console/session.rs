//! Console sessions and their CSRF tokens.
//!
//! A session id is 32 random bytes, sent as the `ta_session` cookie
//! (`HttpOnly`, `SameSite=Strict`, `Secure` under TLS); the database keeps
//! only its SHA-256 ([`crate::store::sessions`]). Every request re-checks
//! the session's idle time and its API key, so a revoked key's sessions
//! end at once. A session's CSRF token is HMAC-SHA-256 keyed by its id:
//! only the holder of the cookie and the server can compute it, on any
//! replica, with nothing more stored.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::Console;
use super::error::PageError;
use crate::api::status::ApiError;
use crate::domain::Caller;
use crate::store::flags::Actor;

/// The session cookie's name.
pub const COOKIE: &str = "ta_session";

/// Bytes of randomness in a session id.
const SESSION_ID_BYTES: usize = 32;

/// What the CSRF token's HMAC covers besides the session.
const CSRF_PURPOSE: &[u8] = b"transplant-audit console csrf v1";

/// A signed-in auditor: the caller their key stands for, and their session.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The key's caller, as a gRPC call would see it.
    pub caller: Caller,
    session_id: Vec<u8>,
    /// The service's own id of this request, recorded in the trails.
    pub call_id: String,
}

impl Signed {
    /// The CSRF token forms of this session carry.
    pub fn csrf(&self) -> String {
        csrf_token(&self.session_id)
    }

    /// Whether `token` is this session's CSRF token.
    pub fn csrf_matches(&self, token: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(token.trim()) else {
            return false;
        };
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.session_id);
        ring::hmac::verify(&key, CSRF_PURPOSE, &tag).is_ok()
    }

    /// The actor the trails record.
    pub fn actor(&self) -> Actor<'_> {
        Actor {
            key_id: &self.caller.key_id,
            principal: &self.caller.principal,
            issued_by: self.caller.issued_by.as_deref(),
            trace_id: None,
            own_trace_id: Some(&self.call_id),
        }
    }

    /// The session id, to end it.
    pub(super) fn session_id(&self) -> &[u8] {
        &self.session_id
    }
}

/// The CSRF token of session `session_id`.
fn csrf_token(session_id: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, session_id);
    URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, CSRF_PURPOSE).as_ref())
}

/// Fresh random bytes: a session id or a call id.
pub(super) fn random<const N: usize>() -> Result<[u8; N], PageError> {
    let mut bytes = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| PageError::Internal)?;
    Ok(bytes)
}

/// A new session id and its cookie value.
pub(super) fn new_session_id() -> Result<(Vec<u8>, String), PageError> {
    let id = random::<SESSION_ID_BYTES>()?;
    Ok((id.to_vec(), URL_SAFE_NO_PAD.encode(id)))
}

/// The `Set-Cookie` value that hands out session `value`.
pub(super) fn set_cookie(value: &str, tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{secure}")
}

/// The `Set-Cookie` value that removes the session cookie.
pub(super) fn clear_cookie(tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

/// The session id a request's cookie carries, if it carries a well-formed one.
pub(super) fn presented_session(headers: &HeaderMap) -> Option<Vec<u8>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .and_then(|(_, value)| URL_SAFE_NO_PAD.decode(value).ok())
        .filter(|id| id.len() == SESSION_ID_BYTES)
}

/// Why a request has no usable session.
#[derive(Debug)]
pub enum NoSession {
    /// No cookie, an unknown or idle session, or a revoked key: sign in again.
    SignIn,
    /// The database or the key check failed.
    Failed(PageError),
}

impl IntoResponse for NoSession {
    fn into_response(self) -> Response {
        match self {
            NoSession::SignIn => Redirect::to("/login").into_response(),
            NoSession::Failed(e) => e.into_response(),
        }
    }
}

impl FromRequestParts<Console> for Signed {
    type Rejection = NoSession;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Console,
    ) -> Result<Self, Self::Rejection> {
        let session_id = presented_session(&parts.headers).ok_or(NoSession::SignIn)?;
        let inner = &console.inner;
        let key_id = inner
            .store
            .touch_session(&session_id, inner.idle)
            .await
            .map_err(|e| NoSession::Failed(e.into()))?
            .ok_or(NoSession::SignIn)?;
        let caller = match inner.auth.still_usable(&key_id).await {
            Ok(caller) => caller,
            Err(ApiError::KeyRefused) => {
                // Revoked or expired since sign-in: the session ends with it.
                tracing::info!(key_id, "console session ended: its key is no longer usable");
                let _ = inner.store.end_session(&session_id).await;
                return Err(NoSession::SignIn);
            }
            Err(_) => return Err(NoSession::Failed(PageError::Unavailable)),
        };
        Ok(Signed {
            caller,
            session_id,
            call_id: hex::encode(random::<16>().map_err(NoSession::Failed)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(session_id: &[u8]) -> Signed {
        Signed {
            caller: Caller {
                key_id: "k".into(),
                role: crate::domain::Role::Auditor,
                hospital_id: None,
                principal: "p".into(),
                issued_by: None,
            },
            session_id: session_id.to_vec(),
            call_id: String::new(),
        }
    }

    #[test]
    fn a_csrf_token_is_bound_to_its_session() {
        let a = signed(&[1; 32]);
        let b = signed(&[2; 32]);
        assert!(a.csrf_matches(&a.csrf()));
        assert!(!a.csrf_matches(&b.csrf()));
        assert!(!a.csrf_matches(""));
        assert!(!a.csrf_matches("not base64 !"));
    }

    #[test]
    fn the_session_cookie_is_read_among_others() {
        let mut headers = HeaderMap::new();
        let id = URL_SAFE_NO_PAD.encode([7u8; 32]);
        headers.insert(
            header::COOKIE,
            format!("other=1; {COOKIE}={id}").parse().unwrap(),
        );
        assert_eq!(presented_session(&headers), Some(vec![7u8; 32]));
        headers.insert(header::COOKIE, format!("{COOKIE}=short").parse().unwrap());
        assert_eq!(presented_session(&headers), None);
    }

    #[test]
    fn cookies_are_http_only_and_strict() {
        assert_eq!(
            set_cookie("v", false),
            "ta_session=v; Path=/; HttpOnly; SameSite=Strict"
        );
        assert!(set_cookie("v", true).ends_with("; Secure"));
    }
}
