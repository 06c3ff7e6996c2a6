//! How a page fails: each way one HTTP status and a page that says what to
//! do. Internal errors are logged and answered with a generic message.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use crate::audit::AuditError;
use crate::domain::{Role, Violations};
use crate::investigation::InvestigationError;
use crate::store::{StoreError, TriageError};

/// Every way a page fails.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// Something the address names does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Fields of the request are invalid; each is named.
    #[error("invalid request")]
    Invalid(Violations),
    /// The form lacked this session's CSRF token, or came from another site.
    #[error("the form is stale or came from another site; reload the page and try again")]
    Forgery,
    /// The session's role may read but not make this change (as over gRPC).
    #[error("a key of role {0} may read here but not change anything: sign in with an AUDITOR key")]
    NotAllowed(Role),
    /// The triage step is refused as the flag stands.
    #[error("{0}")]
    Refused(String),
    /// The database is unreachable.
    #[error("the service is unavailable; try again shortly")]
    Unavailable,
    /// Anything else (logged where it happened).
    #[error("an internal error occurred")]
    Internal,
}

impl From<StoreError> for PageError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Tampered(_) => PageError::Refused(
                "this evidence was changed behind the service's back; an administrator must run verify"
                    .into(),
            ),
            e if e.is_unavailable() || matches!(e, StoreError::Unreachable) => {
                PageError::Unavailable
            }
            e => {
                tracing::error!(error = %e, "console: database error");
                PageError::Internal
            }
        }
    }
}

impl From<AuditError> for PageError {
    fn from(err: AuditError) -> Self {
        match err {
            AuditError::FlagNotFound => PageError::NotFound("flag"),
            AuditError::Store(e) => e.into(),
        }
    }
}

impl From<InvestigationError> for PageError {
    fn from(err: InvestigationError) -> Self {
        match err {
            InvestigationError::RecordNotFound => PageError::NotFound("record"),
            InvestigationError::FlagNotFound => PageError::NotFound("flag"),
            InvestigationError::ClinicNotFound(_) => PageError::NotFound("clinic"),
            InvestigationError::Store(e) => e.into(),
        }
    }
}

impl From<TriageError> for PageError {
    fn from(err: TriageError) -> Self {
        match err {
            TriageError::NotFound => PageError::NotFound("flag"),
            TriageError::NoteRequired(_) => {
                let mut v = Violations::default();
                v.add("note", err.to_string());
                PageError::Invalid(v)
            }
            TriageError::Store(e) => e.into(),
            refused => PageError::Refused(refused.to_string()),
        }
    }
}

impl From<askama::Error> for PageError {
    fn from(err: askama::Error) -> Self {
        tracing::error!(error = %err, "console: template failed");
        PageError::Internal
    }
}

#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage<'a> {
    status: u16,
    title: &'a str,
    message: String,
    fields: Vec<(String, String)>,
}

impl PageError {
    fn status(&self) -> StatusCode {
        match self {
            PageError::NotFound(_) => StatusCode::NOT_FOUND,
            PageError::Invalid(_) => StatusCode::BAD_REQUEST,
            PageError::Forgery | PageError::NotAllowed(_) => StatusCode::FORBIDDEN,
            PageError::Refused(_) => StatusCode::CONFLICT,
            PageError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            PageError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.status();
        let fields = match &self {
            PageError::Invalid(v) => {
                v.0.iter()
                    .map(|v| (v.field.clone(), v.description.clone()))
                    .collect()
            }
            _ => Vec::new(),
        };
        let page = ErrorPage {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error"),
            message: self.to_string(),
            fields,
        };
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => (status, "error").into_response(),
        }
    }
}
