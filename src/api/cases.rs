//! `InvestigationService`'s cases of flags that belong together, suggested
//! groups, and signed referral dossiers.

use chrono::SubsecRound;
use tonic::{Request, Response, Status};

use crate::domain::case::{
    CaseChange, MAX_CASE_TEXT_LEN, MAX_FLAGS_PER_CALL, MAX_PARTY_LEN, MAX_TITLE_LEN,
};
use crate::domain::validation::check_note;
use crate::domain::{CaseStatus, Violations};
use crate::dossier;
use crate::store::cases::{CaseCommand, CaseDetail, CaseView, StoredCaseEvent};
use crate::store::flags::Actor;
use crate::store::investigate::Read;
use crate::suggest;
use crate::wire::convert::{
    ProtoEnum, event_to_proto, flag_to_proto, optional, record_to_proto, required, timestamp,
};
use crate::wire::listing;
use crate::wire::pb;

use super::Acting;
use super::audit::parse_id;
use super::investigation::InvestigationApi;
use super::status::{ApiError, invalid, invalid_field};

/// The listing name case page tokens are bound to.
const CASES_LISTING: &str = "cases";

/// Suggested groups answered when the request names no number.
const DEFAULT_GROUPS: usize = 50;
/// The most suggested groups one call answers.
const MAX_GROUPS: usize = 500;

/// Applies `changes` to a case and answers with it.
async fn apply_change(
    api: &InvestigationApi,
    acting: &Acting,
    case_id: i64,
    expected_revision: Option<i64>,
    changes: Vec<CaseChange>,
    note: &str,
) -> Result<pb::Case, Status> {
    let actor = acting.actor();
    let case = api
        .store
        .change_case(CaseCommand {
            case_id,
            expected_revision,
            changes,
            note: note.trim(),
            actor: &actor,
        })
        .await
        .map_err(ApiError::from)?;
    tracing::info!(case_id, principal = %acting.caller().principal, "case changed");
    Ok(case_to_proto(&case))
}

/// Records that `actor` read `reads` through `action`: the case, and every
/// flag and record the answer holds.
async fn accessed(
    api: &InvestigationApi,
    actor: &Actor<'_>,
    action: &str,
    reads: Vec<Read>,
) -> Result<(), Status> {
    api.store
        .record_reads(actor, action, &reads)
        .await
        .map_err(|e| ApiError::from(e).into())
}

/// An etag, required or not.
fn parse_etag(v: &mut Violations, raw: &str, required: bool) -> Option<i64> {
    if raw.is_empty() && !required {
        return None;
    }
    parse_id(v, "etag", raw)
}

/// Flag ids: at least one when `required`, at most [`MAX_FLAGS_PER_CALL`],
/// none twice.
fn parse_flag_ids(v: &mut Violations, raw: &[String], required: bool) -> Vec<i64> {
    if raw.is_empty() && required {
        v.missing("flag_ids");
    }
    if raw.len() > MAX_FLAGS_PER_CALL {
        v.add(
            "flag_ids",
            format!("at most {MAX_FLAGS_PER_CALL} flags at once"),
        );
        return Vec::new();
    }
    let mut ids: Vec<i64> = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let field = format!("flag_ids[{i}]");
        if let Some(id) = parse_id(v, &field, r) {
            if ids.contains(&id) {
                v.add(field, "names a flag named before");
            } else {
                ids.push(id);
            }
        }
    }
    ids
}

/// A principal's name: present, printable, at most [`MAX_PARTY_LEN`].
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

fn case_to_proto(c: &CaseView) -> pb::Case {
    pb::Case {
        case_id: c.id.to_string(),
        title: c.title.clone(),
        summary: c.summary.clone(),
        status: c.status.to_proto(),
        assignee: c.assignee.clone().unwrap_or_default(),
        referred_to: c.referred_to.clone().unwrap_or_default(),
        opened_by: c.opened_by.clone(),
        opened_at: Some(timestamp(c.opened_at)),
        updated_at: Some(timestamp(c.updated_at)),
        flag_ids: c.flag_ids.iter().map(i64::to_string).collect(),
        etag: c.revision.to_string(),
    }
}

fn case_event_to_proto(e: &StoredCaseEvent) -> pb::CaseEvent {
    let ev = &e.event;
    let mut out = pb::CaseEvent {
        step: ev.step,
        kind: ev.change.kind().to_proto(),
        at: Some(timestamp(ev.at)),
        principal: ev.principal.clone(),
        key_id: ev.key_id.clone(),
        note: ev.note.clone(),
        trace_id: ev.trace_id.clone().unwrap_or_default(),
        ..pb::CaseEvent::default()
    };
    match &ev.change {
        CaseChange::Opened { .. } | CaseChange::Noted => {}
        CaseChange::FlagAdded(id) | CaseChange::FlagRemoved(id) => out.flag_id = id.to_string(),
        CaseChange::Assigned(who) => out.assignee = who.clone(),
        CaseChange::StatusChanged {
            from,
            to,
            referred_to,
        } => {
            out.from_status = from.to_proto();
            out.to_status = to.to_proto();
            out.referred_to = referred_to.clone().unwrap_or_default();
        }
    }
    out
}

fn detail_to_proto(d: &CaseDetail) -> pb::GetCaseResponse {
    pb::GetCaseResponse {
        case: Some(case_to_proto(&d.case)),
        flags: d
            .flags
            .iter()
            .map(|f| pb::CaseFlag {
                flag: Some(flag_to_proto(f.flag.clone())),
                record: Some(record_to_proto(&f.record)),
                evidence: f.evidence.iter().map(record_to_proto).collect(),
                history: f.history.iter().map(event_to_proto).collect(),
            })
            .collect(),
        history: d.events.iter().map(case_event_to_proto).collect(),
    }
}

/// `create_case`.
pub(super) async fn create_case(
    api: &InvestigationApi,
    request: Request<pb::CreateCaseRequest>,
) -> Result<Response<pb::CreateCaseResponse>, Status> {
    let acting = Acting::of(&request)?;
    let req = request.get_ref();
    let mut v = Violations::default();
    let title = req.title.trim();
    check_note(&mut v, "title", title, MAX_TITLE_LEN, true);
    if title.contains('\n') {
        v.add("title", "must be one line");
    }
    check_note(
        &mut v,
        "summary",
        req.summary.trim(),
        MAX_CASE_TEXT_LEN,
        false,
    );
    check_note(&mut v, "note", req.note.trim(), MAX_CASE_TEXT_LEN, false);
    let flag_ids = parse_flag_ids(&mut v, &req.flag_ids, false);
    if !v.is_empty() {
        return Err(invalid(v));
    }
    let actor = acting.actor();
    let case = api
        .store
        .open_case(
            title,
            req.summary.trim(),
            &flag_ids,
            req.note.trim(),
            &actor,
        )
        .await
        .map_err(ApiError::from)?;
    tracing::info!(case_id = case.id, principal = %acting.caller().principal, "case opened");
    Ok(Response::new(pb::CreateCaseResponse {
        case: Some(case_to_proto(&case)),
    }))
}

/// `get_case`.
pub(super) async fn get_case(
    api: &InvestigationApi,
    request: Request<pb::GetCaseRequest>,
) -> Result<Response<pb::GetCaseResponse>, Status> {
    let acting = Acting::of(&request)?;
    let mut v = Violations::default();
    let id = parse_id(&mut v, "case_id", &request.get_ref().case_id).ok_or_else(|| invalid(v))?;
    let detail = api
        .store
        .case_detail(id)
        .await
        .map_err(ApiError::from)?
        .ok_or(ApiError::NotFound(super::status::Resource::Case))?;
    let reads = detail.reads();
    accessed(api, &acting.actor(), "GetCase", reads).await?;
    Ok(Response::new(detail_to_proto(&detail)))
}

/// `list_cases`.
pub(super) async fn list_cases(
    api: &InvestigationApi,
    request: Request<pb::ListCasesRequest>,
) -> Result<Response<pb::ListCasesResponse>, Status> {
    let acting = Acting::of(&request)?;
    let req = request.get_ref();
    let limit = listing::page_size(req.page_size).map_err(invalid)?;
    let mut v = Violations::default();
    let status: Option<CaseStatus> = optional(&mut v, "status", req.status);
    let assignee = listing::text(&mut v, "assignee", req.assignee.trim());
    if !v.is_empty() {
        return Err(invalid(v));
    }
    let filters = format!("{status:?}/{assignee:?}");
    let before = match api
        .tokens
        .decode(CASES_LISTING, &filters, &req.page_token)?
    {
        Some(cursor) => Some(
            cursor
                .parse::<i64>()
                .map_err(|_| invalid_field("page_token", "is not a token this listing issued"))?,
        ),
        None => None,
    };
    let page = api
        .store
        .list_cases(status, assignee.as_deref(), before, limit)
        .await
        .map_err(ApiError::from)?;
    let mut reads = vec![Read::of("search", &filters)];
    reads.extend(page.cases.iter().map(|c| Read::of("case", c.id)));
    accessed(api, &acting.actor(), "ListCases", reads).await?;
    Ok(Response::new(pb::ListCasesResponse {
        cases: page.cases.iter().map(case_to_proto).collect(),
        next_page_token: page
            .next_before
            .map(|b| api.tokens.encode(CASES_LISTING, &filters, &b.to_string()))
            .unwrap_or_default(),
    }))
}

/// `add_flags_to_case`.
pub(super) async fn add_flags_to_case(
    api: &InvestigationApi,
    request: Request<pb::AddFlagsToCaseRequest>,
) -> Result<Response<pb::AddFlagsToCaseResponse>, Status> {
    let acting = Acting::of(&request)?;
    let req = request.get_ref();
    let mut v = Violations::default();
    let id = parse_id(&mut v, "case_id", &req.case_id);
    let flag_ids = parse_flag_ids(&mut v, &req.flag_ids, true);
    let etag = parse_etag(&mut v, &req.etag, false);
    check_note(&mut v, "note", req.note.trim(), MAX_CASE_TEXT_LEN, false);
    let (Some(id), true) = (id, v.is_empty()) else {
        return Err(invalid(v));
    };
    let changes = flag_ids.into_iter().map(CaseChange::FlagAdded).collect();
    let case = apply_change(api, &acting, id, etag, changes, &req.note).await?;
    Ok(Response::new(pb::AddFlagsToCaseResponse {
        case: Some(case),
    }))
}

/// `remove_flag_from_case`.
pub(super) async fn remove_flag_from_case(
    api: &InvestigationApi,
    request: Request<pb::RemoveFlagFromCaseRequest>,
) -> Result<Response<pb::RemoveFlagFromCaseResponse>, Status> {
    let acting = Acting::of(&request)?;
    let req = request.get_ref();
    let mut v = Violations::default();
    let id = parse_id(&mut v, "case_id", &req.case_id);
    let flag_id = parse_id(&mut v, "flag_id", &req.flag_id);
    let etag = parse_etag(&mut v, &req.etag, false);
    check_note(&mut v, "note", req.note.trim(), MAX_CASE_TEXT_LEN, false);
    let (Some(id), Some(flag_id), true) = (id, flag_id, v.is_empty()) else {
        return Err(invalid(v));
    };
    let change = CaseChange::FlagRemoved(flag_id);
    let case = apply_change(api, &acting, id, etag, vec![change], &req.note).await?;
    Ok(Response::new(pb::RemoveFlagFromCaseResponse {
        case: Some(case),
    }))
}

/// `assign_case`.
pub(super) async fn assign_case(
    api: &InvestigationApi,
    request: Request<pb::AssignCaseRequest>,
) -> Result<Response<pb::AssignCaseResponse>, Status> {
    let acting = Acting::of(&request)?;
    let req = request.get_ref();
    let mut v = Violations::default();
    let id = parse_id(&mut v, "case_id", &req.case_id);
    let assignee = party(&mut v, "assignee", &req.assignee);
    let etag = parse_etag(&mut v, &req.etag, false);
    check_note(&mut v, "note", req.note.trim(), MAX_CASE_TEXT_LEN, false);
    let (Some(id), Some(assignee), true) = (id, assignee, v.is_empty()) else {
        return Err(invalid(v));
    };
    let change = CaseChange::Assigned(assignee);
    let case = apply_change(api, &acting, id, etag, vec![change], &req.note).await?;
    Ok(Response::new(pb::AssignCaseResponse { case: Some(case) }))
}

/// `update_case_status`.
pub(super) async fn update_case_status(
    api: &InvestigationApi,
    request: Request<pb::UpdateCaseStatusRequest>,
) -> Result<Response<pb::UpdateCaseStatusResponse>, Status> {
    let acting = Acting::of(&request)?;
    let req = request.get_ref();
    let mut v = Violations::default();
    let id = parse_id(&mut v, "case_id", &req.case_id);
    let to: Option<CaseStatus> = required(&mut v, "status", req.status);
    let etag = parse_etag(&mut v, &req.etag, true);
    let referral = to == Some(CaseStatus::Referred);
    check_note(&mut v, "note", req.note.trim(), MAX_CASE_TEXT_LEN, referral);
    let referred_to = if referral {
        party(&mut v, "referred_to", &req.referred_to)
    } else {
        if !req.referred_to.is_empty() {
            v.add("referred_to", "is only for a move to REFERRED");
        }
        None
    };
    let (Some(id), Some(to), Some(etag), true) = (id, to, etag, v.is_empty()) else {
        return Err(invalid(v));
    };
    let current = api
        .store
        .case(id)
        .await
        .map_err(ApiError::from)?
        .ok_or(ApiError::NotFound(super::status::Resource::Case))?;
    // The case's status as read names the move; the store checks it
    // again under the case's lock, with the etag.
    let change = CaseChange::StatusChanged {
        from: current.status,
        to,
        referred_to,
    };
    let case = apply_change(api, &acting, id, Some(etag), vec![change], &req.note).await?;
    Ok(Response::new(pb::UpdateCaseStatusResponse {
        case: Some(case),
    }))
}

/// `add_case_note`.
pub(super) async fn add_case_note(
    api: &InvestigationApi,
    request: Request<pb::AddCaseNoteRequest>,
) -> Result<Response<pb::AddCaseNoteResponse>, Status> {
    let acting = Acting::of(&request)?;
    let req = request.get_ref();
    let mut v = Violations::default();
    let id = parse_id(&mut v, "case_id", &req.case_id);
    check_note(&mut v, "note", req.note.trim(), MAX_CASE_TEXT_LEN, true);
    let (Some(id), true) = (id, v.is_empty()) else {
        return Err(invalid(v));
    };
    let case = apply_change(api, &acting, id, None, vec![CaseChange::Noted], &req.note).await?;
    Ok(Response::new(pb::AddCaseNoteResponse { case: Some(case) }))
}

/// `suggest_cases`.
pub(super) async fn suggest_cases(
    api: &InvestigationApi,
    request: Request<pb::SuggestCasesRequest>,
) -> Result<Response<pb::SuggestCasesResponse>, Status> {
    let acting = Acting::of(&request)?;
    let max = match request.get_ref().max_groups {
        0 => DEFAULT_GROUPS,
        n if n < 0 => return Err(invalid_field("max_groups", "must not be negative")),
        n => usize::try_from(n).unwrap_or(MAX_GROUPS).min(MAX_GROUPS),
    };
    let flags = api
        .store
        .open_flags_outside_cases()
        .await
        .map_err(ApiError::from)?;
    let open_flags = i64::try_from(flags.len()).unwrap_or(i64::MAX);
    // Grouping 10^5 flags takes a core for a while: off the runtime.
    let groups = tokio::task::spawn_blocking(move || suggest::suggest(&flags, max))
        .await
        .map_err(|_| ApiError::Internal)?;
    let mut reads = vec![Read::of("search", format!("max_groups {max}"))];
    reads.extend(
        groups
            .iter()
            .flat_map(|g| g.flag_ids.iter().map(|f| Read::of("flag", f))),
    );
    accessed(api, &acting.actor(), "SuggestCases", reads).await?;
    let ids = |ids: &[i64]| ids.iter().map(i64::to_string).collect();
    Ok(Response::new(pb::SuggestCasesResponse {
        groups: groups
            .iter()
            .map(|g| pb::SuggestedCase {
                flag_ids: ids(&g.flag_ids),
                record_ids: ids(&g.record_ids),
                clinic_ids: g.clinic_ids.clone(),
                score: g.score,
                reasons: g.reasons.clone(),
            })
            .collect(),
        open_flags,
    }))
}

/// `export_case`.
pub(super) async fn export_case(
    api: &InvestigationApi,
    request: Request<pb::ExportCaseRequest>,
) -> Result<Response<pb::ExportCaseResponse>, Status> {
    let acting = Acting::of(&request)?;
    let mut v = Violations::default();
    let id = parse_id(&mut v, "case_id", &request.get_ref().case_id).ok_or_else(|| invalid(v))?;
    let evidence = api
        .store
        .case_evidence(id)
        .await
        .map_err(ApiError::from)?
        .ok_or(ApiError::NotFound(super::status::Resource::Case))?;
    let actor = acting.actor();
    let at = chrono::Utc::now().trunc_subsecs(6);
    let document = dossier::build(&evidence, &actor, at, &api.signer);
    let bytes = serde_json::to_vec_pretty(&document).map_err(|_| ApiError::Internal)?;
    let reads = evidence.reads();
    accessed(api, &actor, "ExportCase", reads).await?;
    tracing::info!(case_id = id, principal = %acting.caller().principal, "dossier exported");
    Ok(Response::new(pb::ExportCaseResponse {
        dossier: bytes,
        file_name: dossier::file_name(id, at),
    }))
}

/// `get_public_key`.
pub(super) async fn get_public_key(
    api: &InvestigationApi,
    _request: Request<pb::GetPublicKeyRequest>,
) -> Result<Response<pb::GetPublicKeyResponse>, Status> {
    Ok(Response::new(pb::GetPublicKeyResponse {
        public_key: api.signer.public().to_string(),
    }))
}
