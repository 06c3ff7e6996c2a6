//! The investigation pages: the cases (listed, filtered, suggested, each
//! with its flags, notes and history, and the forms that change it) and a
//! case's signed dossier. Reads are logged in the access log under the
//! names the gRPC calls use (`ListCases`, `SuggestCases`, `GetCase`,
//! `ExportCase`), so an auditor's trail reads the same whichever way they
//! came.

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::SubsecRound;
use serde::Deserialize;

use super::Console;
use super::error::PageError;
use super::pages::{INVESTIGATION_SERVICE, check_csrf, check_role, path_id};
use super::session::Signed;
use super::views::{FlagRow, Nav, when};
use crate::domain::case::{
    CaseChange, MAX_CASE_TEXT_LEN, MAX_FLAGS_PER_CALL, MAX_PARTY_LEN, MAX_TITLE_LEN,
};
use crate::domain::validation::check_note;
use crate::domain::{CaseStatus, Violations};
use crate::dossier;
use crate::store::cases::{CaseCommand, CaseError, CaseView, StoredCaseEvent};
use crate::store::investigate::Read;

/// Cases on one page of the list.
const PAGE_SIZE: i64 = 50;
/// Suggested groups the list shows.
const SUGGESTED_GROUPS: usize = 20;
/// Flags of each suggested group the list shows (and a form opens as a
/// case): the largest groups of a registry hold thousands.
const FLAGS_PER_GROUP: usize = 25;

impl From<CaseError> for PageError {
    fn from(err: CaseError) -> Self {
        match err {
            CaseError::NotFound => PageError::NotFound("case"),
            CaseError::FlagNotFound(_) => PageError::NotFound("flag"),
            CaseError::Store(e) => e.into(),
            refused => PageError::Refused(refused.to_string()),
        }
    }
}

fn render(page: &impl Template) -> Result<Response, PageError> {
    Ok((StatusCode::OK, Html(page.render()?)).into_response())
}

/// A case as a row of the list.
#[derive(Debug, Clone)]
pub struct CaseRow {
    /// Its id.
    pub id: i64,
    /// Its title.
    pub title: String,
    /// Its summary.
    pub summary: String,
    /// Where it stands.
    pub status: &'static str,
    /// Who works on it, or "–".
    pub assignee: String,
    /// Where it was referred, or "".
    pub referred_to: String,
    /// Who opened it.
    pub opened_by: String,
    /// When.
    pub opened_at: String,
    /// When it last changed.
    pub updated_at: String,
    /// Its number of flags.
    pub flags: usize,
    /// Its revision: the etag a status change names.
    pub etag: i64,
}

impl From<&CaseView> for CaseRow {
    fn from(c: &CaseView) -> Self {
        Self {
            id: c.id,
            title: c.title.clone(),
            summary: c.summary.clone(),
            status: c.status.as_str(),
            assignee: c.assignee.clone().unwrap_or_else(|| "–".to_owned()),
            referred_to: c.referred_to.clone().unwrap_or_default(),
            opened_by: c.opened_by.clone(),
            opened_at: when(&c.opened_at),
            updated_at: when(&c.updated_at),
            flags: c.flag_ids.len(),
            etag: c.revision,
        }
    }
}

/// A suggested group of flags.
#[derive(Debug, Clone)]
pub struct GroupRow {
    /// Its flags.
    pub flag_ids: Vec<i64>,
    /// The same, comma-separated, for the form.
    pub flag_list: String,
    /// Its other flags, not shown.
    pub more: usize,
    /// Its clinics.
    pub clinic_ids: String,
    /// How strongly the flags belong together.
    pub score: i64,
    /// Why.
    pub reasons: Vec<String>,
}

/// The list's filters as typed.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CasesQuery {
    /// A status, or empty.
    #[serde(default)]
    pub status: String,
    /// An assignee, or empty.
    #[serde(default)]
    pub assignee: String,
    /// The page: cases with ids below it.
    #[serde(default)]
    pub before: String,
}

/// The list of cases.
#[derive(Template)]
#[template(path = "console/cases.html")]
pub struct CasesPage {
    /// The header.
    pub nav: Nav,
    /// The filters.
    pub query: CasesQuery,
    /// The statuses to filter on.
    pub statuses: &'static [CaseStatus],
    /// The cases, newest first.
    pub rows: Vec<CaseRow>,
    /// The next page's query string.
    pub next: Option<String>,
}

/// `/cases/suggested`: groups of open flags in no case, to open as cases.
#[derive(Template)]
#[template(path = "console/suggested.html")]
pub struct SuggestedPage {
    /// The header.
    pub nav: Nav,
    /// When the grouping shown read its flags, and how many open flags
    /// outside cases there were; `None` while the first one runs.
    pub computed: Option<(String, usize)>,
    /// The groups, best first.
    pub groups: Vec<GroupRow>,
}

/// One event of a case's history.
#[derive(Debug, Clone)]
pub struct CaseStep {
    /// Its number.
    pub step: i32,
    /// What happened.
    pub kind: String,
    /// What it changed, in words.
    pub detail: String,
    /// When.
    pub at: String,
    /// Who.
    pub principal: String,
    /// The note.
    pub note: String,
}

impl From<&StoredCaseEvent> for CaseStep {
    fn from(e: &StoredCaseEvent) -> Self {
        let ev = &e.event;
        let detail = match &ev.change {
            CaseChange::Opened { .. } | CaseChange::Noted => String::new(),
            CaseChange::FlagAdded(id) => format!("flag #{id} added"),
            CaseChange::FlagRemoved(id) => format!("flag #{id} removed"),
            CaseChange::Assigned(who) => format!("assigned to {who}"),
            CaseChange::StatusChanged {
                from,
                to,
                referred_to,
            } => match referred_to {
                Some(to_whom) => format!("{from} → {to}, referred to {to_whom}"),
                None => format!("{from} → {to}"),
            },
        };
        Self {
            step: ev.step,
            kind: ev.change.kind().to_string(),
            detail,
            at: when(&ev.at),
            principal: ev.principal.clone(),
            note: ev.note.clone(),
        }
    }
}

/// A case.
#[derive(Template)]
#[template(path = "console/case.html")]
pub struct CasePage {
    /// The header.
    pub nav: Nav,
    /// The case.
    pub case: CaseRow,
    /// Its flags.
    pub flags: Vec<FlagRow>,
    /// Its history, oldest first.
    pub history: Vec<CaseStep>,
    /// The statuses it may move to.
    pub moves: Vec<&'static str>,
}

/// `GET /cases`: the cases by status and assignee.
pub async fn cases(
    State(console): State<Console>,
    signed: Signed,
    Query(query): Query<CasesQuery>,
) -> Result<Response, PageError> {
    let store = &console.inner.store;
    let mut v = Violations::default();
    let status = match query.status.trim() {
        "" => None,
        s => v.check("status", s.parse::<CaseStatus>()),
    };
    let assignee = Some(query.assignee.trim()).filter(|a| !a.is_empty());
    if let Some(a) = assignee {
        check_note(&mut v, "assignee", a, MAX_PARTY_LEN, false);
    }
    let before = match query.before.trim() {
        "" => None,
        b => v.check(
            "before",
            b.parse::<i64>()
                .ok()
                .filter(|b| *b > 0)
                .ok_or("must be a page this list gave"),
        ),
    };
    if !v.is_empty() {
        return Err(PageError::Invalid(v));
    }
    let page = store
        .list_cases(status, assignee, before, PAGE_SIZE)
        .await?;
    let actor = signed.actor();
    let filters = format!("{status:?}/{assignee:?}");
    let mut reads = vec![Read::of("search", &filters)];
    reads.extend(page.cases.iter().map(|c| Read::of("case", c.id)));
    store.record_reads(&actor, "ListCases", &reads).await?;
    let next = page.next_before.map(|b| {
        serde_urlencoded::to_string([
            ("status", query.status.trim()),
            ("assignee", query.assignee.trim()),
            ("before", &b.to_string()),
        ])
        .unwrap_or_default()
    });
    let page = CasesPage {
        nav: Nav::of(&signed),
        query,
        statuses: CaseStatus::ALL,
        rows: page.cases.iter().map(CaseRow::from).collect(),
        next,
    };
    render(&page)
}

/// `GET /cases/suggested`: the latest grouping of the open flags in no
/// case, less the flags that left triage or joined a case since; logged as
/// `SuggestCases`, each flag the page carries.
pub async fn suggested(
    State(console): State<Console>,
    signed: Signed,
) -> Result<Response, PageError> {
    let shown = console
        .inner
        .kept
        .shown(SUGGESTED_GROUPS, FLAGS_PER_GROUP)
        .await?;
    let mut page = SuggestedPage {
        nav: Nav::of(&signed),
        computed: None,
        groups: Vec::new(),
    };
    let Some(shown) = shown else {
        return render(&page);
    };
    let mut reads = vec![Read::of("search", format!("max_groups {SUGGESTED_GROUPS}"))];
    reads.extend(
        shown
            .groups
            .iter()
            .flat_map(|g| g.flag_ids.iter().map(|f| Read::of("flag", f))),
    );
    console
        .inner
        .store
        .record_reads(&signed.actor(), "SuggestCases", &reads)
        .await?;
    let at = shown
        .computed_at
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string();
    page.computed = Some((at, shown.open_flags));
    page.groups = shown
        .groups
        .iter()
        .map(|g| GroupRow {
            flag_ids: g.flag_ids.clone(),
            flag_list: g
                .flag_ids
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(","),
            more: g.more,
            clinic_ids: g.clinic_ids.join(", "),
            score: g.score,
            reasons: g.reasons.clone(),
        })
        .collect();
    render(&page)
}

/// The form that opens a case.
#[derive(Debug, Deserialize)]
pub struct OpenCaseForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    summary: String,
    /// Flag ids, comma-separated.
    #[serde(default)]
    flag_ids: String,
}

/// Flag ids typed comma-separated: each an id, none twice, not too many.
fn parse_flag_ids(v: &mut Violations, field: &str, raw: &str) -> Vec<i64> {
    let mut ids = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<i64>() {
            Ok(id) if id > 0 && !ids.contains(&id) => ids.push(id),
            Ok(id) if id > 0 => v.add(field, "names a flag twice"),
            _ => v.add(field, "must be flag ids separated by commas"),
        }
    }
    if ids.len() > MAX_FLAGS_PER_CALL {
        v.add(field, format!("at most {MAX_FLAGS_PER_CALL} flags at once"));
    }
    ids
}

/// `POST /cases`: opens a case, with the flags named.
pub async fn open_case(
    State(console): State<Console>,
    signed: Signed,
    headers: HeaderMap,
    Form(form): Form<OpenCaseForm>,
) -> Result<Response, PageError> {
    check_csrf(&signed, &headers, &form.csrf)?;
    check_role(&signed, INVESTIGATION_SERVICE, "CreateCase")?;
    let mut v = Violations::default();
    let title = form.title.trim();
    check_note(&mut v, "title", title, MAX_TITLE_LEN, true);
    if title.contains('\n') {
        v.add("title", "must be one line");
    }
    check_note(
        &mut v,
        "summary",
        form.summary.trim(),
        MAX_CASE_TEXT_LEN,
        false,
    );
    let flag_ids = parse_flag_ids(&mut v, "flag_ids", &form.flag_ids);
    if !v.is_empty() {
        return Err(PageError::Invalid(v));
    }
    let actor = signed.actor();
    let case = console
        .inner
        .store
        .open_case(title, form.summary.trim(), &flag_ids, "", &actor)
        .await?;
    tracing::info!(case_id = case.id, principal = %signed.caller.principal, "case opened (console)");
    Ok(Redirect::to(&format!("/cases/{}", case.id)).into_response())
}

/// The status moves a case may make from `status`.
fn moves(status: CaseStatus) -> Vec<&'static str> {
    CaseStatus::ALL
        .iter()
        .filter(|to| status.can_move_to(**to))
        .map(|to| to.as_str())
        .collect()
}

/// `GET /cases/{id}`: a case, logged as `GetCase`.
pub async fn case(
    State(console): State<Console>,
    signed: Signed,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let id = path_id(&id, "case")?;
    let store = &console.inner.store;
    let detail = store
        .case_detail(id)
        .await?
        .ok_or(PageError::NotFound("case"))?;
    let reads = detail.reads();
    store
        .record_reads(&signed.actor(), "GetCase", &reads)
        .await?;
    let page = CasePage {
        nav: Nav::of(&signed),
        case: CaseRow::from(&detail.case),
        flags: detail
            .flags
            .iter()
            .map(|f| FlagRow::from(&f.flag))
            .collect(),
        history: detail.events.iter().map(CaseStep::from).collect(),
        moves: moves(detail.case.status),
    };
    render(&page)
}

/// The forms that change a case: a note, an assignment, a status move, a
/// flag added.
#[derive(Debug, Deserialize)]
pub struct CaseForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    assignee: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    referred_to: String,
    #[serde(default)]
    etag: String,
}

/// A principal's name: present, printable, one line.
fn party(v: &mut Violations, field: &str, raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        v.missing(field);
        return None;
    }
    check_note(v, field, trimmed, MAX_PARTY_LEN, true);
    if trimmed.contains('\n') || trimmed.contains('\t') {
        v.add(field, "must be one line");
    }
    Some(trimmed.to_owned())
}

/// Applies `changes` to case `id` as the session's principal, then shows it.
async fn change(
    console: &Console,
    signed: &Signed,
    id: i64,
    expected_revision: Option<i64>,
    changes: Vec<CaseChange>,
    note: &str,
) -> Result<Response, PageError> {
    let actor = signed.actor();
    console
        .inner
        .store
        .change_case(CaseCommand {
            case_id: id,
            expected_revision,
            changes,
            note: note.trim(),
            actor: &actor,
        })
        .await?;
    tracing::info!(case_id = id, principal = %signed.caller.principal, "case changed (console)");
    Ok(Redirect::to(&format!("/cases/{id}")).into_response())
}

/// `POST /cases/{id}/note`.
pub async fn add_note(
    State(console): State<Console>,
    signed: Signed,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CaseForm>,
) -> Result<Response, PageError> {
    check_csrf(&signed, &headers, &form.csrf)?;
    check_role(&signed, INVESTIGATION_SERVICE, "AddCaseNote")?;
    let id = path_id(&id, "case")?;
    let mut v = Violations::default();
    check_note(&mut v, "note", form.note.trim(), MAX_CASE_TEXT_LEN, true);
    if !v.is_empty() {
        return Err(PageError::Invalid(v));
    }
    change(
        &console,
        &signed,
        id,
        None,
        vec![CaseChange::Noted],
        &form.note,
    )
    .await
}

/// `POST /cases/{id}/assign`.
pub async fn assign(
    State(console): State<Console>,
    signed: Signed,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CaseForm>,
) -> Result<Response, PageError> {
    check_csrf(&signed, &headers, &form.csrf)?;
    check_role(&signed, INVESTIGATION_SERVICE, "AssignCase")?;
    let id = path_id(&id, "case")?;
    let mut v = Violations::default();
    let assignee = party(&mut v, "assignee", &form.assignee);
    check_note(&mut v, "note", form.note.trim(), MAX_CASE_TEXT_LEN, false);
    let (Some(assignee), true) = (assignee, v.is_empty()) else {
        return Err(PageError::Invalid(v));
    };
    let changes = vec![CaseChange::Assigned(assignee)];
    change(&console, &signed, id, None, changes, &form.note).await
}

/// `POST /cases/{id}/status`: a move, with the etag the page showed; a
/// referral names where to and why.
pub async fn set_status(
    State(console): State<Console>,
    signed: Signed,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CaseForm>,
) -> Result<Response, PageError> {
    check_csrf(&signed, &headers, &form.csrf)?;
    check_role(&signed, INVESTIGATION_SERVICE, "UpdateCaseStatus")?;
    let id = path_id(&id, "case")?;
    let mut v = Violations::default();
    let to = v.check("status", form.status.parse::<CaseStatus>());
    let etag = v.check(
        "etag",
        form.etag
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|e| *e > 0)
            .ok_or("must be the etag the page showed"),
    );
    let referral = to == Some(CaseStatus::Referred);
    check_note(
        &mut v,
        "note",
        form.note.trim(),
        MAX_CASE_TEXT_LEN,
        referral,
    );
    let referred_to = if referral {
        party(&mut v, "referred_to", &form.referred_to)
    } else {
        if !form.referred_to.trim().is_empty() {
            v.add("referred_to", "is only for a move to REFERRED");
        }
        None
    };
    let (Some(to), Some(etag), true) = (to, etag, v.is_empty()) else {
        return Err(PageError::Invalid(v));
    };
    let current = console
        .inner
        .store
        .case(id)
        .await?
        .ok_or(PageError::NotFound("case"))?;
    // The status as read names the move; the store checks it again under
    // the case's lock, with the etag.
    let changes = vec![CaseChange::StatusChanged {
        from: current.status,
        to,
        referred_to,
    }];
    change(&console, &signed, id, Some(etag), changes, &form.note).await
}

/// The form that puts a flag in a case.
#[derive(Debug, Deserialize)]
pub struct AddFlagForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    case_id: String,
}

/// `POST /flags/{id}/case`: puts the flag in the case named.
pub async fn add_flag(
    State(console): State<Console>,
    signed: Signed,
    Path(flag_id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<AddFlagForm>,
) -> Result<Response, PageError> {
    check_csrf(&signed, &headers, &form.csrf)?;
    check_role(&signed, INVESTIGATION_SERVICE, "AddFlagsToCase")?;
    let flag_id = path_id(&flag_id, "flag")?;
    let mut v = Violations::default();
    let case_id = v.check(
        "case_id",
        form.case_id
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or("must be a case id"),
    );
    let (Some(case_id), true) = (case_id, v.is_empty()) else {
        return Err(PageError::Invalid(v));
    };
    let changes = vec![CaseChange::FlagAdded(flag_id)];
    change(&console, &signed, case_id, None, changes, "").await
}

/// `GET /cases/{id}/dossier.json`: the case's signed dossier, as a file,
/// logged as `ExportCase`.
pub async fn dossier(
    State(console): State<Console>,
    signed: Signed,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let id = path_id(&id, "case")?;
    let store = &console.inner.store;
    let evidence = store
        .case_evidence(id)
        .await?
        .ok_or(PageError::NotFound("case"))?;
    let actor = signed.actor();
    let at = chrono::Utc::now().trunc_subsecs(6);
    let document = dossier::build(&evidence, &actor, at, &console.inner.signer);
    let bytes = serde_json::to_vec_pretty(&document).map_err(|_| PageError::Internal)?;
    let reads = evidence.reads();
    store.record_reads(&actor, "ExportCase", &reads).await?;
    tracing::info!(case_id = id, principal = %signed.caller.principal, "dossier exported (console)");
    // The file name is ours (a case id and an instant): safe in the header.
    let disposition = format!("attachment; filename=\"{}\"", dossier::file_name(id, at));
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_ids_are_read_from_a_list() {
        let mut v = Violations::default();
        assert_eq!(parse_flag_ids(&mut v, "f", " 3, 5 ,"), vec![3, 5]);
        assert!(v.is_empty());
        parse_flag_ids(&mut v, "f", "3,x");
        parse_flag_ids(&mut v, "f", "3,3");
        assert_eq!(v.0.len(), 2);
    }
}
