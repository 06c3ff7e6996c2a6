//! The auditors' work on flags, whichever face it comes through (the gRPC
//! `AuditService` or the web console): listing, opening a case or a record
//! (each opening written to the access log), triage, the rules' precision
//! and the live feed. The faces convert their requests and answers; who
//! acted is recorded here, the same way for both.

use chrono::{DateTime, Utc};

use crate::domain::validation::check_note;
use crate::domain::{FlagFilter, FlagStatus, FlagView, RecordId, RecordView, Violations};
use crate::rules::RuleId;
use crate::store::feed::FeedCursor;
use crate::store::flags::Actor;
use crate::store::records::RecordVersionEntry;
use crate::store::{FlagCase, FlagPage, Store, StoreError, TriageError, TriageStep};
use crate::watch::{self, FlagFeed, Watched};

/// The longest triage note accepted, in bytes.
pub const MAX_NOTE_LEN: usize = 4000;

/// Why an auditor's request found nothing or failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// No flag with that id.
    #[error("flag not found")]
    FlagNotFound,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A record as an auditor opens it: its current version, the versions an
/// amendment replaced, and the flags raised on it.
#[derive(Debug, Clone)]
pub struct RecordCase {
    /// The current version.
    pub record: RecordView,
    /// Every version, oldest first, the current one last.
    pub versions: Vec<RecordVersionEntry>,
    /// The flags raised on the record, newest first.
    pub flags: Vec<FlagView>,
}

/// How one rule's flags stand in triage, and its precision: confirmed among
/// those closed.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleQuality {
    /// The rule.
    pub rule_id: RuleId,
    /// Still open.
    pub open: u64,
    /// In review.
    pub in_review: u64,
    /// Confirmed.
    pub confirmed: u64,
    /// Dismissed.
    pub dismissed: u64,
    /// Confirmed / (confirmed + dismissed); none before any is closed.
    pub precision: Option<f64>,
}

/// A triage step as an auditor asks for it, before it is checked.
#[derive(Debug, Clone, Copy)]
pub struct TriageRequest<'a> {
    /// The flag.
    pub flag_id: i64,
    /// The status to move to.
    pub to: FlagStatus,
    /// The auditor's note (closing a case needs one).
    pub note: &'a str,
    /// The revision (etag) the auditor read.
    pub revision: i64,
}

/// Checks a triage note: bounded, printable, and present when `to` closes the case.
pub fn check_triage_note(v: &mut Violations, field: &str, note: &str, to: Option<FlagStatus>) {
    let required = to.is_some_and(FlagStatus::needs_note);
    check_note(v, field, note, MAX_NOTE_LEN, required);
}

/// The auditors' side of the service.
#[derive(Clone, Debug)]
pub struct Auditing {
    store: Store,
    feed: FlagFeed,
}

impl Auditing {
    /// Works on the flags in `store`, waking watchers from `feed`.
    pub fn new(store: Store, feed: FlagFeed) -> Self {
        Self { store, feed }
    }

    /// Up to `limit` flags matching `filter` with ids below `before`, newest first.
    pub async fn list_flags(
        &self,
        filter: &FlagFilter,
        before: Option<i64>,
        limit: i64,
    ) -> Result<FlagPage, StoreError> {
        self.store.list_flags(filter, before, limit).await
    }

    /// Opens a flag's case for `actor`; the opening is logged first, so no
    /// case leaves the service without a record of who opened it.
    pub async fn open_flag(&self, actor: &Actor<'_>, flag_id: i64) -> Result<FlagCase, AuditError> {
        let case = self
            .store
            .flag_case(flag_id)
            .await?
            .ok_or(AuditError::FlagNotFound)?;
        self.store
            .record_access(actor, "GetFlag", "flag", &flag_id.to_string())
            .await?;
        tracing::info!(flag_id, principal = %actor.principal, "case opened");
        Ok(case)
    }

    /// Opens a record for `actor`, logged as [`Auditing::open_flag`] is;
    /// `None` when there is no such record.
    pub async fn open_record(
        &self,
        actor: &Actor<'_>,
        record_id: i64,
    ) -> Result<Option<RecordCase>, StoreError> {
        let Some(record) = self.store.records(&[record_id]).await?.pop() else {
            return Ok(None);
        };
        let versions = self.store.record_versions(RecordId(record_id)).await?;
        let flags = self.store.flags_of_record(RecordId(record_id)).await?;
        self.store
            .record_access(actor, "GetRecord", "record", &record_id.to_string())
            .await?;
        tracing::info!(record_id, principal = %actor.principal, "record opened");
        Ok(Some(RecordCase {
            record,
            versions,
            flags,
        }))
    }

    /// Moves a flag through triage as `actor`.
    pub async fn triage(
        &self,
        actor: &Actor<'_>,
        request: TriageRequest<'_>,
    ) -> Result<FlagView, TriageError> {
        let flag = self
            .store
            .triage(TriageStep {
                flag_id: request.flag_id,
                to: request.to,
                note: request.note.trim(),
                expected_revision: request.revision,
                actor,
            })
            .await?;
        tracing::info!(flag_id = request.flag_id, status = %request.to, principal = %actor.principal, "flag triaged");
        Ok(flag)
    }

    /// Every rule's flags by triage status, raised inside the range, with its precision.
    pub async fn rule_quality(
        &self,
        raised_after: Option<DateTime<Utc>>,
        raised_before: Option<DateTime<Utc>>,
    ) -> Result<Vec<RuleQuality>, StoreError> {
        let triage = self.store.rule_triage(raised_after, raised_before).await?;
        Ok(RuleId::ALL
            .iter()
            .map(|rule| {
                let t = triage.get(rule.as_str()).cloned().unwrap_or_default();
                let closed = t.confirmed + t.dismissed;
                RuleQuality {
                    rule_id: *rule,
                    open: t.open,
                    in_review: t.in_review,
                    confirmed: t.confirmed,
                    dismissed: t.dismissed,
                    precision: (closed > 0).then(|| t.confirmed as f64 / closed as f64),
                }
            })
            .collect())
    }

    /// Where a watcher starting now begins.
    pub async fn feed_start(&self) -> Result<FeedCursor, StoreError> {
        self.store.feed_start().await
    }

    /// The flags `filter` lets through, raised after `cursor`, as they come.
    pub fn watch(&self, filter: FlagFilter, cursor: FeedCursor) -> Watched {
        watch::watch(self.store.clone(), &self.feed, filter, cursor)
    }
}
