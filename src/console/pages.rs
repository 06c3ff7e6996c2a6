//! The pages: sign-in and sign-out, the inbox, a flag's case with its
//! triage form, a record, the rules. Each handler reads its request, calls
//! the application layer ([`crate::audit`]) and fills a template.

use askama::Template;
use axum::Form;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use futures::TryStreamExt;
use serde::Deserialize;

use super::Console;
use super::error::PageError;
use super::filters::InboxQuery;
use super::highlight;
use super::session::{self, Signed};
use super::views::{
    FlagPage, FlagRow, InboxPage, LoginPage, Nav, RecordPage, RuleRow, RulesPage, Step, Version,
    comparison, path_segment, record_fields, when,
};
use crate::api::auth::{Access, access_for};
use crate::api::status::ApiError;
use crate::audit::{TriageRequest, check_triage_note};
use crate::domain::{FlagStatus, Role, Severity, Violations};
use crate::export;
use crate::rules::RuleId;

/// The gRPC services whose rules the console's forms follow.
pub(super) const AUDIT_SERVICE: &str = crate::wire::pb::audit_service_server::SERVICE_NAME;
pub(super) const INVESTIGATION_SERVICE: &str =
    crate::wire::pb::investigation_service_server::SERVICE_NAME;
/// The `INVESTIGATION_SERVICE` methods behind the console's case forms.
pub(super) const CASE_CHANGES: [&str; 5] = [
    "CreateCase",
    "AddFlagsToCase",
    "AssignCase",
    "UpdateCaseStatus",
    "AddCaseNote",
];

/// Flags on one inbox page.
const PAGE_SIZE: i64 = 50;

/// What a HOSPITAL key is told at the sign-in form.
const HOSPITAL_REFUSED: &str = "A HOSPITAL key cannot sign in to the console: hospitals submit \
     records over gRPC. Sign in with an AUDITOR or ADMIN key.";

/// What a key that is not usable is told.
const KEY_REFUSED: &str = "This API key is unknown, expired or revoked.";

fn render(page: &impl Template, status: StatusCode) -> Result<Response, PageError> {
    Ok((status, Html(page.render()?)).into_response())
}

/// Refuses a form posted from another site: a browser names the site a
/// POST comes from, and it must be this one. (Clients that send neither
/// header are not browsers, and carry no session cookie a page could abuse.)
fn check_origin(headers: &HeaderMap) -> Result<(), PageError> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    // Browsers that send Sec-Fetch-Site say exactly where the request comes from.
    if let Some(site) = text("sec-fetch-site") {
        return match site {
            "same-origin" | "none" => Ok(()),
            _ => Err(PageError::Forgery),
        };
    }
    if let Some(origin) = text("origin") {
        let authority = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        if authority.is_none() || authority != text("host") {
            return Err(PageError::Forgery);
        }
    }
    Ok(())
}

/// `GET /login`.
pub async fn login_form() -> Result<Response, PageError> {
    render(&LoginPage { error: None }, StatusCode::OK)
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    api_key: String,
}

/// `POST /login`: an AUDITOR or ADMIN key opens a session.
pub async fn login(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, PageError> {
    check_origin(&headers)?;
    let inner = &console.inner;
    let refused = |message: &str, status| {
        render(
            &LoginPage {
                error: Some(message.to_owned()),
            },
            status,
        )
    };
    let bearer = format!("Bearer {}", form.api_key.trim());
    let caller = match inner.auth.authenticate(Some(&bearer)).await {
        Ok(caller) => caller,
        Err(ApiError::KeyMissing | ApiError::KeyRefused) => {
            return refused(KEY_REFUSED, StatusCode::UNAUTHORIZED);
        }
        Err(_) => return Err(PageError::Unavailable),
    };
    if !matches!(caller.role, Role::Auditor | Role::Admin) {
        tracing::warn!(key_id = %caller.key_id, role = %caller.role, "console sign-in refused");
        return refused(HOSPITAL_REFUSED, StatusCode::FORBIDDEN);
    }
    let (session_id, cookie) = session::new_session_id()?;
    inner
        .store
        .create_session(&session_id, &caller.key_id, inner.idle)
        .await?;
    tracing::info!(key_id = %caller.key_id, principal = %caller.principal, "console sign-in");
    Ok((
        [(header::SET_COOKIE, session::set_cookie(&cookie, inner.tls))],
        Redirect::to("/flags"),
    )
        .into_response())
}

/// A form that carries only the CSRF token.
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// Refuses a state-changing request without this session's token.
pub(super) fn check_csrf(
    signed: &Signed,
    headers: &HeaderMap,
    token: &str,
) -> Result<(), PageError> {
    check_origin(headers)?;
    if !signed.csrf_matches(token) {
        tracing::warn!(key_id = %signed.caller.key_id, "console form refused: CSRF token missing or wrong");
        return Err(PageError::Forgery);
    }
    Ok(())
}

/// Refuses a change the session's role could not make over gRPC: the
/// console follows the same authorisation matrix as the gRPC methods it
/// stands for ([`access_for`]), so an ADMIN key reads but only an AUDITOR
/// triages or works on cases.
pub(super) fn check_role(signed: &Signed, service: &str, method: &str) -> Result<(), PageError> {
    if may(signed.caller.role, service, method) {
        return Ok(());
    }
    tracing::warn!(key_id = %signed.caller.key_id, role = %signed.caller.role, method, "console change refused: role not allowed");
    Err(PageError::NotAllowed(signed.caller.role))
}

/// Whether `role` may call `method` of `service` over gRPC: the rule both
/// the console's changes and the forms its pages show follow.
pub(super) fn may(role: Role, service: &str, method: &str) -> bool {
    match access_for(&format!("/{service}/{method}")) {
        Access::Roles(roles) => roles.contains(&role),
        Access::Open | Access::AnyRole => true,
    }
}

/// `POST /logout`.
pub async fn logout(
    State(console): State<Console>,
    signed: Signed,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    check_csrf(&signed, &headers, &form.csrf)?;
    console.inner.store.end_session(signed.session_id()).await?;
    Ok((
        [(header::SET_COOKIE, session::clear_cookie(console.inner.tls))],
        Redirect::to("/login"),
    )
        .into_response())
}

/// `GET /flags`: the inbox, filtered by the query parameters.
pub async fn inbox(
    State(console): State<Console>,
    signed: Signed,
    Query(query): Query<InboxQuery>,
) -> Result<Response, PageError> {
    let audit = &console.inner.audit;
    let mut page = InboxPage {
        nav: Nav::of(&signed),
        query: query.clone(),
        rows: Vec::new(),
        next: None,
        csv: format!("/flags.csv?{}", query.with_page(None, None)),
        events: String::new(),
        errors: Vec::new(),
        statuses: FlagStatus::ALL,
        severities: Severity::ALL,
        rules: RuleId::ALL.iter().map(|r| r.as_str()).collect(),
    };
    let inbox = match query.read() {
        Ok(inbox) => inbox,
        Err(v) => {
            page.errors = v.0.into_iter().map(|v| (v.field, v.description)).collect();
            return render(&page, StatusCode::BAD_REQUEST);
        }
    };
    // The feed's start is read before the page, so a flag raised between
    // the two is on the page or in the feed, never in neither.
    let cursor = audit.feed_start().await?;
    let flags = audit
        .list_flags(&inbox.filter, inbox.before, PAGE_SIZE)
        .await?;
    page.rows = flags.flags.iter().map(FlagRow::from).collect();
    page.next = flags.next_before.map(|b| query.with_page(Some(b), None));
    page.events = format!(
        "/flags/events?{}",
        query.with_page(None, Some(cursor.to_string()))
    );
    render(&page, StatusCode::OK)
}

/// `GET /flags.csv`: the flags the inbox's filters let through, every
/// page of them, as the CSV `ExportFlags` streams, logged as it is.
pub async fn flags_csv(
    State(console): State<Console>,
    signed: Signed,
    Query(query): Query<InboxQuery>,
) -> Result<Response, PageError> {
    let inbox = query.read().map_err(PageError::Invalid)?;
    let reader = export::Reader {
        key_id: signed.caller.key_id.clone(),
        principal: signed.caller.principal.clone(),
        trace_id: None,
        own_trace_id: Some(signed.call_id.clone()),
    };
    let chunks = export::flags_csv(
        console.inner.store.clone(),
        inbox.filter,
        reader,
        export::ACTION,
    )
    .inspect_err(|e| tracing::error!(error = %e, "console: CSV export failed"));
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"flags.csv\"",
            ),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}

/// Reads a positive id from a path, or answers not found.
pub(super) fn path_id(raw: &str, what: &'static str) -> Result<i64, PageError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or(PageError::NotFound(what))
}

/// The triage moves from `status`, with their button labels.
fn moves(status: FlagStatus, critical: bool, proposed: bool) -> Vec<(&'static str, &'static str)> {
    let dismiss = match (critical, proposed) {
        (false, _) => "Dismiss",
        (true, false) => "Propose dismissal (a second principal approves)",
        (true, true) => "Approve the proposed dismissal",
    };
    match status {
        FlagStatus::Open => vec![("IN_REVIEW", "Start review")],
        FlagStatus::InReview => vec![
            ("CONFIRMED", "Confirm"),
            ("DISMISSED", dismiss),
            ("OPEN", "Reopen"),
        ],
        FlagStatus::Confirmed | FlagStatus::Dismissed => vec![("OPEN", "Reopen")],
    }
}

/// `GET /flags/{id}`: the case, logged in the access log as `GetFlag`.
pub async fn flag(
    State(console): State<Console>,
    signed: Signed,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let id = path_id(&id, "flag")?;
    let case = console.inner.audit.open_flag(&signed.actor(), id).await?;
    let (columns, fields) = comparison(
        &case.record,
        &case.evidence,
        highlight::fields_of(&case.flag.rule_id),
    );
    let critical = case.flag.severity == Severity::Critical;
    let case_id = console.inner.store.case_of_flag(id).await?;
    let page = FlagPage {
        case_id,
        nav: Nav::of(&signed),
        flag: FlagRow::from(&case.flag),
        revision: case.flag.revision,
        dismissal_proposed_by: case.flag.dismissal_proposed_by.clone(),
        columns,
        fields,
        history: case.history.iter().map(Step::from).collect(),
        moves: moves(
            case.flag.status,
            critical,
            case.flag.dismissal_proposed_by.is_some(),
        ),
        critical,
    };
    render(&page, StatusCode::OK)
}

/// The triage form.
#[derive(Debug, Deserialize)]
pub struct TriageForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    revision: String,
}

/// `POST /flags/{id}/triage`: one triage step, recorded with the session's
/// principal and key.
pub async fn triage(
    State(console): State<Console>,
    signed: Signed,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<TriageForm>,
) -> Result<Response, PageError> {
    check_csrf(&signed, &headers, &form.csrf)?;
    check_role(&signed, AUDIT_SERVICE, "UpdateFlagStatus")?;
    let id = path_id(&id, "flag")?;
    let mut v = Violations::default();
    let to = v.check("to", form.to.parse::<FlagStatus>());
    let revision = v.check(
        "revision",
        form.revision
            .parse::<i64>()
            .ok()
            .filter(|r| *r > 0)
            .ok_or("must be the revision the page showed"),
    );
    check_triage_note(&mut v, "note", &form.note, to);
    let (Some(to), Some(revision), true) = (to, revision, v.is_empty()) else {
        return Err(PageError::Invalid(v));
    };
    let request = TriageRequest {
        flag_id: id,
        to,
        note: &form.note,
        revision,
    };
    console.inner.audit.triage(&signed.actor(), request).await?;
    Ok(Redirect::to(&format!("/flags/{id}")).into_response())
}

/// `GET /records/{id}`: a record, logged in the access log as `GetRecord`.
pub async fn record(
    State(console): State<Console>,
    signed: Signed,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let id = path_id(&id, "record")?;
    let case = console
        .inner
        .audit
        .open_record(&signed.actor(), id)
        .await?
        .ok_or(PageError::NotFound("record"))?;
    let page = RecordPage {
        nav: Nav::of(&signed),
        record_id: case.record.id.0,
        version: case.record.version,
        received_at: when(&case.record.received_at),
        donor_fp: hex::encode(case.record.record.donor.person.identifier.as_bytes()),
        recipient_fp: hex::encode(case.record.record.recipient.identifier.as_bytes()),
        clinic_path: path_segment(&case.record.record.clinic_id),
        fields: record_fields(&case.record.record)
            .into_iter()
            .map(|(_, label, value)| (label, value))
            .collect(),
        versions: case.versions.iter().map(Version::from).collect(),
        flags: case.flags.iter().map(FlagRow::from).collect(),
    };
    render(&page, StatusCode::OK)
}

/// `GET /rules`: each rule's flags by status, and its precision.
pub async fn rules(State(console): State<Console>, signed: Signed) -> Result<Response, PageError> {
    // Counting every flag takes 75 ms at 10^6 flags: the counts kept in
    // the background, once there are any.
    let (rules, counted_at) = match console.inner.kept.rule_counts() {
        Some(kept) => (kept.rules.clone(), Some(kept.counted_at)),
        None => (console.inner.audit.rule_quality(None, None).await?, None),
    };
    let page = RulesPage {
        nav: Nav::of(&signed),
        rules: rules.iter().map(RuleRow::from).collect(),
        counted_at: counted_at.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
    };
    render(&page, StatusCode::OK)
}

/// Any other address: signed in, not found; otherwise to the sign-in page.
pub async fn not_found(_signed: Signed) -> PageError {
    PageError::NotFound("page")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts_from_another_site_are_refused() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            h
        };
        assert!(check_origin(&headers(&[])).is_ok());
        assert!(check_origin(&headers(&[("host", "a:8080"), ("origin", "http://a:8080")])).is_ok());
        assert!(check_origin(&headers(&[("host", "a:8080"), ("origin", "http://evil")])).is_err());
        assert!(check_origin(&headers(&[("sec-fetch-site", "cross-site")])).is_err());
        assert!(check_origin(&headers(&[("origin", "null")])).is_err());
        assert!(
            check_origin(&headers(&[
                ("sec-fetch-site", "same-origin"),
                ("origin", "null")
            ]))
            .is_ok()
        );
    }

    #[test]
    fn dismissing_a_critical_flag_is_proposed_then_approved() {
        let labels = |critical, proposed| {
            moves(FlagStatus::InReview, critical, proposed)
                .into_iter()
                .find(|(to, _)| *to == "DISMISSED")
                .map(|(_, label)| label)
        };
        assert_eq!(labels(false, false), Some("Dismiss"));
        assert!(labels(true, false).unwrap().starts_with("Propose"));
        assert!(labels(true, true).unwrap().starts_with("Approve"));
    }
}
