//! `GET /flags/events`: the inbox's live feed as server-sent events, fed by
//! the flag feed ([`crate::watch`]). Each event's id is its feed cursor, so
//! a browser that lost the connection resumes after the last flag it got
//! (it sends `Last-Event-ID`); a first connection starts at the cursor the
//! inbox page was rendered with.

use std::convert::Infallible;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};

use super::Console;
use super::error::PageError;
use super::filters::{InboxQuery, admits};
use super::session::Signed;
use super::views::when;
use crate::domain::{FlagFilter, FlagView, Violations};
use crate::store::feed::FeedCursor;
use crate::watch::WatchEnd;

/// A flag as the inbox's script receives it.
fn flag_json(flag: &FlagView) -> String {
    serde_json::json!({
        "id": flag.id,
        "severity": flag.severity.as_str(),
        "rule_id": flag.rule_id,
        "status": flag.status.as_str(),
        "clinic_id": flag.clinic_id,
        "hospital_id": flag.hospital_id,
        "external_record_id": flag.external_record_id,
        "record_id": flag.record_id.0,
        "raised_at": when(&flag.raised_at),
    })
    .to_string()
}

/// Where the feed resumes: after the browser's last event, else after the
/// cursor the page gave.
fn start(headers: &HeaderMap, query: &InboxQuery) -> Result<Option<FeedCursor>, Violations> {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let (field, raw) = match last {
        Some(raw) => ("Last-Event-ID", raw),
        None if query.after.is_empty() => return Ok(None),
        None => ("after", query.after.as_str()),
    };
    let mut v = Violations::default();
    let cursor = v.check(
        field,
        raw.parse::<FeedCursor>()
            .map_err(|_| "is not a feed cursor"),
    );
    v.into_result(|| cursor)
}

/// `GET /flags/events`: new flags that match the inbox's filters.
pub async fn inbox_events(
    State(console): State<Console>,
    _signed: Signed,
    headers: HeaderMap,
    Query(query): Query<InboxQuery>,
) -> Result<Response, PageError> {
    let inbox = query.read().map_err(PageError::Invalid)?;
    let audit = &console.inner.audit;
    let cursor = match start(&headers, &query).map_err(PageError::Invalid)? {
        Some(cursor) => cursor,
        None => audit.feed_start().await?,
    };
    // The feed filters what it can; status and time are checked here.
    let feed_filter = FlagFilter {
        status: None,
        raised_after: None,
        raised_before: None,
        ..inbox.filter.clone()
    };
    let filter = inbox.filter;
    let events = audit
        .watch(feed_filter, cursor)
        .take_while(|item| std::future::ready(item.is_ok()))
        .filter_map(move |item| {
            std::future::ready(match item {
                Ok((cursor, flag)) if admits(&filter, &flag) => Some(
                    Event::default()
                        .event("flag")
                        .id(cursor.to_string())
                        .data(flag_json(&flag)),
                ),
                Ok(_) => None,
                Err(WatchEnd::Closing | WatchEnd::Store(_)) => None,
            })
        })
        .map(Ok::<_, Infallible>);
    Ok(sse(events))
}

fn sse(events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
