//! The console's static files, compiled into the binary: no CDN, so it
//! works in a registry's closed network.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The style sheet.
const CSS: &str = include_str!("../../assets/console/console.css");

/// The inbox's live updates.
const INBOX_JS: &str = include_str!("../../assets/console/inbox.js");

/// `GET /assets/{name}`.
pub async fn asset(Path(name): Path<String>) -> Response {
    let (body, content_type) = match name.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "inbox.js" => (INBOX_JS, "text/javascript; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
