//! `AuditService`: auditors list, open and triage flags.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::audit::{Auditing, TriageRequest, check_triage_note};
use crate::domain::FlagFilter;
use crate::domain::{FlagStatus, Violations};
use crate::store::feed::FeedCursor;
use crate::wire::listing;

use super::Acting;
use super::page_token::PageTokens;
use super::status::{ApiError, invalid};
use crate::wire::convert::{event_to_proto, flag_to_proto, instant, record_to_proto, required};
use crate::wire::pb;
use crate::wire::pb::audit_service_server::AuditService;

/// The gRPC face of flags and triage.
#[derive(Clone, Debug)]
pub struct AuditApi {
    audit: Auditing,
    tokens: PageTokens,
}

/// The listing name flag page tokens are bound to.
const FLAGS_LISTING: &str = "flags";

impl AuditApi {
    /// Serves `audit`'s flags, paging with `tokens`.
    pub fn new(audit: Auditing, tokens: PageTokens) -> Self {
        Self { audit, tokens }
    }
}

fn watch_request(
    req: &pb::WatchFlagsRequest,
) -> Result<(FlagFilter, Option<FeedCursor>), Violations> {
    let mut v = Violations::default();
    let filter = listing::watch_filter(&mut v, req);
    let after = match listing::text(&mut v, "after", &req.after) {
        Some(raw) => v.check(
            "after",
            raw.parse::<FeedCursor>()
                .map_err(|_| "is not a cursor WatchFlags returned"),
        ),
        None => None,
    };
    v.into_result(|| (filter, after))
}

/// Parses a decimal id of ours (`flag_id`), or names the field that is not one.
pub(super) fn parse_id(v: &mut Violations, field: &str, raw: &str) -> Option<i64> {
    if raw.is_empty() {
        v.missing(field);
        return None;
    }
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Some(id),
        _ => {
            v.add(field, "must be an id this service returned");
            None
        }
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    type WatchFlagsStream =
        Pin<Box<dyn Stream<Item = Result<pb::WatchFlagsResponse, Status>> + Send>>;

    async fn watch_flags(
        &self,
        request: Request<pb::WatchFlagsRequest>,
    ) -> Result<Response<Self::WatchFlagsStream>, Status> {
        let (filter, after) = watch_request(request.get_ref()).map_err(invalid)?;
        let cursor = match after {
            Some(cursor) => cursor,
            None => self.audit.feed_start().await?,
        };
        let flags = self.audit.watch(filter, cursor).map(|item| {
            item.map(|(cursor, flag)| pb::WatchFlagsResponse {
                flag: Some(flag_to_proto(flag)),
                cursor: cursor.to_string(),
            })
            .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(flags)))
    }

    async fn list_flags(
        &self,
        request: Request<pb::ListFlagsRequest>,
    ) -> Result<Response<pb::ListFlagsResponse>, Status> {
        let req = request.get_ref();
        let limit = listing::page_size(req.page_size).map_err(invalid)?;
        let filter = listing::flag_filter(req).map_err(invalid)?;
        let filters = format!("{filter:?}");
        let before = match self
            .tokens
            .decode(FLAGS_LISTING, &filters, &req.page_token)?
        {
            Some(cursor) => Some(cursor.parse::<i64>().map_err(|_| {
                super::status::invalid_field("page_token", "is not a token this listing issued")
            })?),
            None => None,
        };
        let page = self.audit.list_flags(&filter, before, limit).await?;
        Ok(Response::new(pb::ListFlagsResponse {
            flags: page.flags.into_iter().map(flag_to_proto).collect(),
            next_page_token: page
                .next_before
                .map(|b| self.tokens.encode(FLAGS_LISTING, &filters, &b.to_string()))
                .unwrap_or_default(),
        }))
    }

    async fn get_flag(
        &self,
        request: Request<pb::GetFlagRequest>,
    ) -> Result<Response<pb::GetFlagResponse>, Status> {
        let acting = Acting::of(&request)?;
        let mut v = Violations::default();
        let id = parse_id(&mut v, "flag_id", &request.get_ref().flag_id);
        let id = id.ok_or_else(|| invalid(v))?;
        let case = self
            .audit
            .open_flag(&acting.actor(), id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetFlagResponse {
            flag: Some(flag_to_proto(case.flag)),
            record: Some(record_to_proto(&case.record)),
            evidence: case.evidence.iter().map(record_to_proto).collect(),
            history: case.history.iter().map(event_to_proto).collect(),
        }))
    }

    async fn update_flag_status(
        &self,
        request: Request<pb::UpdateFlagStatusRequest>,
    ) -> Result<Response<pb::UpdateFlagStatusResponse>, Status> {
        let acting = Acting::of(&request)?;
        let req = request.get_ref();
        let mut v = Violations::default();
        let id = parse_id(&mut v, "flag_id", &req.flag_id);
        let to: Option<FlagStatus> = required(&mut v, "status", req.status);
        let revision = parse_id(&mut v, "etag", &req.etag);
        check_triage_note(&mut v, "note", &req.note, to);
        let (Some(id), Some(to), Some(revision), true) = (id, to, revision, v.is_empty()) else {
            return Err(invalid(v));
        };
        let request = TriageRequest {
            flag_id: id,
            to,
            note: &req.note,
            revision,
        };
        let flag = self.audit.triage(&acting.actor(), request).await?;
        Ok(Response::new(pb::UpdateFlagStatusResponse {
            flag: Some(flag_to_proto(flag)),
        }))
    }

    async fn get_rule_quality(
        &self,
        request: Request<pb::GetRuleQualityRequest>,
    ) -> Result<Response<pb::GetRuleQualityResponse>, Status> {
        let req = request.get_ref();
        let mut v = Violations::default();
        let after = instant(&mut v, "raised_after", req.raised_after.as_ref());
        let before = instant(&mut v, "raised_before", req.raised_before.as_ref());
        if !v.is_empty() {
            return Err(invalid(v));
        }
        let rules = self
            .audit
            .rule_quality(after, before)
            .await?
            .into_iter()
            .map(|q| pb::RuleQuality {
                rule_id: q.rule_id.as_str().to_owned(),
                open: q.open,
                in_review: q.in_review,
                confirmed: q.confirmed,
                dismissed: q.dismissed,
                precision: q.precision,
            })
            .collect();
        Ok(Response::new(pb::GetRuleQualityResponse { rules }))
    }
}
