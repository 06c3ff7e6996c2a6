//! `AuditService`: auditors list, open and triage flags.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::domain::FlagFilter;
use crate::domain::validation::check_note;
use crate::domain::{FlagStatus, Violations};
use crate::rules::RuleId;
use crate::store::feed::FeedCursor;
use crate::store::{Store, TriageStep};
use crate::watch::{self, FlagFeed};
use crate::wire::listing;

use super::Acting;
use super::page_token::PageTokens;
use super::status::{ApiError, Resource, invalid};
use crate::wire::convert::{event_to_proto, flag_to_proto, instant, record_to_proto, required};
use crate::wire::pb;
use crate::wire::pb::audit_service_server::AuditService;

/// The longest triage note accepted.
const MAX_NOTE_LEN: usize = 4000;

/// The gRPC face of flags and triage.
#[derive(Clone, Debug)]
pub struct AuditApi {
    store: Store,
    feed: FlagFeed,
    tokens: PageTokens,
}

/// The listing name flag page tokens are bound to.
const FLAGS_LISTING: &str = "flags";

impl AuditApi {
    /// Serves the flags kept in `store`, waking watchers from `feed`,
    /// paging with `tokens`.
    pub fn new(store: Store, feed: FlagFeed, tokens: PageTokens) -> Self {
        Self {
            store,
            feed,
            tokens,
        }
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
fn parse_id(v: &mut Violations, field: &str, raw: &str) -> Option<i64> {
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
            None => self.store.feed_start().await?,
        };
        let flags = watch::watch(self.store.clone(), &self.feed, filter, cursor).map(|item| {
            item.map(|(cursor, flag)| pb::WatchFlagsResponse {
                flag: Some(flag_to_proto(&flag)),
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
        let page = self.store.list_flags(&filter, before, limit).await?;
        Ok(Response::new(pb::ListFlagsResponse {
            flags: page.flags.iter().map(flag_to_proto).collect(),
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
            .store
            .flag_case(id)
            .await?
            .ok_or(ApiError::NotFound(Resource::Flag))?;
        // No case leaves the service without a record of who opened it.
        self.store
            .record_access(&acting.actor(), "GetFlag", "flag", &id.to_string())
            .await?;
        tracing::info!(flag_id = id, principal = %acting.caller().principal, "case opened");
        Ok(Response::new(pb::GetFlagResponse {
            flag: Some(flag_to_proto(&case.flag)),
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
        let note_required = to.is_some_and(FlagStatus::needs_note);
        check_note(&mut v, "note", &req.note, MAX_NOTE_LEN, note_required);
        let (Some(id), Some(to), Some(revision), true) = (id, to, revision, v.is_empty()) else {
            return Err(invalid(v));
        };
        let flag = self
            .store
            .triage(TriageStep {
                flag_id: id,
                to,
                note: req.note.trim(),
                expected_revision: revision,
                actor: &acting.actor(),
            })
            .await?;
        tracing::info!(flag_id = id, status = %to, principal = %acting.caller().principal, "flag triaged");
        Ok(Response::new(pb::UpdateFlagStatusResponse {
            flag: Some(flag_to_proto(&flag)),
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
        let triage = self.store.rule_triage(after, before).await?;
        let rules = RuleId::ALL
            .iter()
            .map(|rule| {
                let t = triage.get(rule.as_str()).cloned().unwrap_or_default();
                let closed = t.confirmed + t.dismissed;
                pb::RuleQuality {
                    rule_id: rule.as_str().to_owned(),
                    open: t.open,
                    in_review: t.in_review,
                    confirmed: t.confirmed,
                    dismissed: t.dismissed,
                    precision: (closed > 0).then(|| t.confirmed as f64 / closed as f64),
                }
            })
            .collect();
        Ok(Response::new(pb::GetRuleQualityResponse { rules }))
    }
}
