//! Flags as auditors see them: listing, opening a case and triage.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder};

use crate::domain::{FlagEvent, FlagFilter, FlagStatus, FlagView, RecordId, RecordView, Severity};
use crate::rules::RuleId;

use super::body::parse;
use super::chain::{self, EventContent};
use super::ingest::{severity_from_db, severity_to_db};
use super::{Store, StoreError, row};
use crate::domain::chain::GENESIS;

#[derive(sqlx::FromRow)]
pub(super) struct FlagRow {
    id: i64,
    record_id: i64,
    rule_id: String,
    rule_version: i32,
    severity: i16,
    explanation: String,
    evidence_record_ids: Vec<i64>,
    status: String,
    revision: i64,
    raised_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    hospital_id: String,
    clinic_id: String,
    external_record_id: String,
    record_version: i32,
    cleared_in_version: Option<i32>,
    dismissal_proposed_by: Option<String>,
}

impl FlagRow {
    pub(super) fn into_view(self) -> Result<FlagView, StoreError> {
        Ok(FlagView {
            id: self.id,
            record_id: RecordId(self.record_id),
            rule_id: self.rule_id,
            rule_version: self.rule_version,
            severity: severity_from_db(self.severity)?,
            explanation: self.explanation,
            evidence: self.evidence_record_ids.into_iter().map(RecordId).collect(),
            status: parse(&self.status)?,
            revision: self.revision,
            raised_at: self.raised_at,
            updated_at: self.updated_at,
            hospital_id: self.hospital_id,
            clinic_id: self.clinic_id,
            external_record_id: self.external_record_id,
            record_version: self.record_version,
            cleared_in_version: self.cleared_in_version,
            dismissal_proposed_by: self.dismissal_proposed_by,
        })
    }
}

pub(super) const FLAG_COLUMNS: &str = "SELECT f.id, f.record_id, f.rule_id, f.rule_version, f.severity,
    f.explanation, f.evidence_record_ids, f.status, f.revision, f.raised_at, f.updated_at,
    f.hospital_id, f.clinic_id, f.external_record_id, f.record_version, f.cleared_in_version, f.dismissal_proposed_by
    FROM flags f";

/// Adds `WHERE` conditions selecting the flags `filter` lets through.
pub(super) fn push_filter(q: &mut QueryBuilder<'_, Postgres>, filter: &FlagFilter) {
    q.push(" WHERE true");
    if let Some(status) = filter.status {
        q.push(" AND f.status = ").push_bind(status.as_str());
    }
    if let Some(min) = filter.min_severity {
        // A literal (one of four), so that every plan, generic ones included,
        // can use the partial index of CRITICAL flags (flags_critical).
        q.push(format_args!(" AND f.severity >= {}", severity_to_db(min)));
    }
    if let Some(rule) = &filter.rule_id {
        // A catalogue rule id goes in as a literal: rules differ in how many
        // flags they raise (some a hundredth of others), so the plan depends
        // on the rule, and a prepared statement's generic plan (used after
        // five runs) would otherwise be one plan for all of them.
        // A range of one value rather than `=`, so that Postgres keeps
        // `rule_id` in the listing's sort order (see `list_flags`).
        match rule.parse::<RuleId>() {
            Ok(known) => q.push(format_args!(
                " AND f.rule_id BETWEEN '{0}' AND '{0}'",
                known.as_str()
            )),
            Err(_) => q
                .push(" AND f.rule_id BETWEEN ")
                .push_bind(rule.clone())
                .push(" AND ")
                .push_bind(rule.clone()),
        };
    }
    if let Some(clinic) = &filter.clinic_id {
        q.push(" AND f.clinic_id = ").push_bind(clinic.clone());
    }
    if let Some(hospital) = &filter.hospital_id {
        q.push(" AND f.hospital_id = ").push_bind(hospital.clone());
    }
    if let Some(after) = filter.raised_after {
        q.push(" AND f.raised_at >= ").push_bind(after);
    }
    if let Some(until) = filter.raised_before {
        q.push(" AND f.raised_at < ").push_bind(until);
    }
}

/// One page of a flag listing, newest first.
#[derive(Debug, Clone)]
pub struct FlagPage {
    /// The flags.
    pub flags: Vec<FlagView>,
    /// The last id of the page when more may follow.
    pub next_before: Option<i64>,
}

/// A case: the flag, its record, the evidence and the triage history.
#[derive(Debug, Clone)]
pub struct FlagCase {
    /// The flag.
    pub flag: FlagView,
    /// The flagged record.
    pub record: RecordView,
    /// Evidence records that still exist.
    pub evidence: Vec<RecordView>,
    /// Triage steps, oldest first.
    pub history: Vec<FlagEvent>,
}

/// Why a triage step was refused.
#[derive(Debug, thiserror::Error)]
pub enum TriageError {
    /// No such flag.
    #[error("flag not found")]
    NotFound,
    /// Somebody changed the flag since the caller read it.
    #[error("the flag changed since it was read (now at revision {current}); read it again")]
    Stale {
        /// The current revision.
        current: i64,
    },
    /// The transition is not allowed from the current status.
    #[error("cannot move a flag from {from} to {to}")]
    IllegalTransition {
        /// Current status.
        from: FlagStatus,
        /// Requested status.
        to: FlagStatus,
    },
    /// The auditor who proposed dismissing a CRITICAL flag cannot also approve it.
    #[error("dismissing a CRITICAL flag needs a second auditor to approve the proposal")]
    SecondAuditorRequired,
    /// Closing a case needs a note.
    #[error("a note is required to move a flag to {0}")]
    NoteRequired(FlagStatus),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for TriageError {
    fn from(e: sqlx::Error) -> Self {
        TriageError::Store(e.into())
    }
}

/// A triage step as asked for.
#[derive(Debug, Clone)]
pub struct TriageStep<'a> {
    /// The flag.
    pub flag_id: i64,
    /// The status to move to.
    pub to: FlagStatus,
    /// The auditor's note.
    pub note: &'a str,
    /// The revision the caller read.
    pub expected_revision: i64,
    /// Who asks.
    pub actor: &'a str,
    /// Trace id of the call, if traced.
    pub trace_id: Option<&'a str>,
}

impl Store {
    /// Flags matching `filter` with ids below `before`, newest first.
    pub async fn list_flags(
        &self,
        filter: &FlagFilter,
        before: Option<i64>,
        limit: i64,
    ) -> Result<FlagPage, StoreError> {
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(FLAG_COLUMNS);
        push_filter(&mut q, filter);
        if let Some(before) = before {
            q.push(" AND f.id < ").push_bind(before);
        }
        // A rule raises 1-15% of all flags, so Postgres may read the primary
        // key backwards and filter, expecting a page among the newest few
        // hundred flags; when the rule raised none lately that reads every
        // newer flag (4.5 ms a page at 10^6 flags). Ordered by the rule
        // index's own key, the page is read from that index: `rule_id` is
        // one value, so the order is the same. A clinic or hospital filter
        // is more selective and keeps the choice of index.
        let by_rule =
            filter.rule_id.is_some() && filter.clinic_id.is_none() && filter.hospital_id.is_none();
        let order = if by_rule {
            "f.rule_id, f.id DESC"
        } else {
            "f.id DESC"
        };
        // The page size as a literal too: a generic plan with `LIMIT $n`
        // assumes a tenth of the table is wanted, and scans it in parallel.
        q.push(format_args!(" ORDER BY {order} LIMIT {}", limit + 1));
        let rows: Vec<FlagRow> = q
            .build_query_as()
            .fetch_all(&mut *self.acquire().await?)
            .await?;
        let mut flags: Vec<FlagView> = rows
            .into_iter()
            .map(FlagRow::into_view)
            .collect::<Result<_, _>>()?;
        let next_before = if flags.len() as i64 > limit {
            flags.truncate(limit as usize);
            flags.last().map(|f| f.id)
        } else {
            None
        };
        Ok(FlagPage { flags, next_before })
    }

    /// One flag.
    pub async fn flag(&self, flag_id: i64) -> Result<Option<FlagView>, StoreError> {
        let sql = format!("{FLAG_COLUMNS} WHERE f.id = $1");
        let row: Option<FlagRow> = sqlx::query_as(&sql)
            .bind(flag_id)
            .fetch_optional(&mut *self.acquire().await?)
            .await?;
        row.map(FlagRow::into_view).transpose()
    }

    /// The whole case of a flag.
    pub async fn flag_case(&self, flag_id: i64) -> Result<Option<FlagCase>, StoreError> {
        let Some(flag) = self.flag(flag_id).await? else {
            return Ok(None);
        };
        let mut ids = vec![flag.record_id.0];
        ids.extend(flag.evidence.iter().map(|r| r.0));
        let mut records = self.records(&ids).await?;
        let Some(pos) = records.iter().position(|r| r.id == flag.record_id) else {
            return Err(StoreError::Corrupt(format!(
                "flag {flag_id} without its record"
            )));
        };
        let record = records.remove(pos);
        let history = sqlx::query!(
            "SELECT at, actor, from_status, to_status, note, trace_id, kind
             FROM flag_events WHERE flag_id = $1 ORDER BY id",
            flag_id,
        )
        .fetch_all(&mut *self.acquire().await?)
        .await?
        .into_iter()
        .map(|e| {
            Ok(FlagEvent {
                at: e.at,
                actor: e.actor,
                from: parse(&e.from_status)?,
                to: parse(&e.to_status)?,
                note: e.note,
                trace_id: e.trace_id,
                dismissal_proposal: e.kind == "DISMISSAL_PROPOSED",
            })
        })
        .collect::<Result<_, StoreError>>()?;
        Ok(Some(FlagCase {
            flag,
            record,
            evidence: records,
            history,
        }))
    }

    /// The current versions of these records, in the order of `ids`.
    pub async fn records(&self, ids: &[i64]) -> Result<Vec<RecordView>, StoreError> {
        let current = row::current_versions(&mut *self.acquire().await?, ids).await?;
        Ok(current
            .into_iter()
            .map(|c| RecordView {
                id: c.id,
                version: c.version,
                received_at: c.received_at,
                record: c.record,
            })
            .collect())
    }

    /// Applies one triage step, refusing stale revisions and illegal moves.
    /// Dismissing a CRITICAL flag takes two auditors: the first call records
    /// a proposal, a call by another auditor carries it out.
    pub async fn triage(&self, step: TriageStep<'_>) -> Result<FlagView, TriageError> {
        if step.to.needs_note() && step.note.trim().is_empty() {
            return Err(TriageError::NoteRequired(step.to));
        }
        let mut tx = self.begin().await?;
        let current = sqlx::query!(
            "SELECT status, revision, severity, dismissal_proposed_by, chain_head
             FROM flags WHERE id = $1 FOR UPDATE",
            step.flag_id,
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(TriageError::NotFound)?;
        let from: FlagStatus = parse(&current.status)?;
        if current.revision != step.expected_revision {
            return Err(TriageError::Stale {
                current: current.revision,
            });
        }
        if !from.can_move_to(step.to) {
            return Err(TriageError::IllegalTransition { from, to: step.to });
        }
        let two_person = step.to == FlagStatus::Dismissed
            && severity_from_db(current.severity)? == Severity::Critical;
        let (kind, to, proposed_by) = match current.dismissal_proposed_by.as_deref() {
            _ if !two_person => ("TRANSITION", step.to, None),
            None => ("DISMISSAL_PROPOSED", from, Some(step.actor)),
            Some(proposer) if proposer == step.actor => {
                return Err(TriageError::SecondAuditorRequired);
            }
            Some(_) => ("TRANSITION", step.to, None),
        };
        let at = chain::now();
        let content = EventContent {
            flag_id: step.flag_id,
            at,
            actor: step.actor,
            from: from.as_str(),
            to: to.as_str(),
            note: step.note,
            trace_id: step.trace_id,
            kind,
        };
        let previous = current.chain_head.unwrap_or_else(|| GENESIS.to_vec());
        let link = self.chain.link(&previous, &content.bytes());
        sqlx::query!(
            "WITH event AS (
                INSERT INTO flag_events
                    (flag_id, at, actor, from_status, to_status, note, trace_id, kind, chain_hash)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9))
             UPDATE flags SET status = $5, revision = revision + 1, updated_at = $2,
                              dismissal_proposed_by = $10, chain_head = $9
             WHERE id = $1",
            step.flag_id,
            at,
            step.actor,
            from.as_str(),
            to.as_str(),
            step.note,
            step.trace_id,
            kind,
            &link[..],
            proposed_by,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.flag(step.flag_id).await?.ok_or(TriageError::NotFound)
    }

    /// Records that `key_id` opened the case of a flag.
    pub async fn record_case_access(
        &self,
        flag_id: i64,
        key_id: &str,
        trace_id: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            "INSERT INTO case_access (flag_id, key_id, trace_id)
             SELECT id, $2, $3 FROM flags WHERE id = $1",
            flag_id,
            key_id,
            trace_id,
        )
        .execute(&mut *self.acquire().await?)
        .await?;
        Ok(())
    }
}

/// How one rule's flags stand in triage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleTriage {
    /// Still open.
    pub open: u64,
    /// In review.
    pub in_review: u64,
    /// Confirmed.
    pub confirmed: u64,
    /// Dismissed.
    pub dismissed: u64,
}

impl Store {
    /// Flags per rule id and triage status, raised inside the range.
    pub async fn rule_triage(
        &self,
        raised_after: Option<DateTime<Utc>>,
        raised_before: Option<DateTime<Utc>>,
    ) -> Result<std::collections::BTreeMap<String, RuleTriage>, StoreError> {
        let rows = sqlx::query!(
            r#"SELECT rule_id, status, count(*) AS "n!" FROM flags
               WHERE ($1::timestamptz IS NULL OR raised_at >= $1)
                 AND ($2::timestamptz IS NULL OR raised_at < $2)
               GROUP BY rule_id, status"#,
            raised_after,
            raised_before,
        )
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        let mut by_rule = std::collections::BTreeMap::<String, RuleTriage>::new();
        for r in rows {
            let entry = by_rule.entry(r.rule_id).or_default();
            let n = u64::try_from(r.n).unwrap_or(0);
            match parse::<FlagStatus>(&r.status)? {
                FlagStatus::Open => entry.open += n,
                FlagStatus::InReview => entry.in_review += n,
                FlagStatus::Confirmed => entry.confirmed += n,
                FlagStatus::Dismissed => entry.dismissed += n,
            }
        }
        Ok(by_rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_set_filters_are_literals_and_text_is_bound() {
        let filter = FlagFilter {
            status: Some(FlagStatus::Open),
            min_severity: Some(Severity::Critical),
            rule_id: Some("SAME_PERSON".into()),
            clinic_id: Some("C'1".into()),
            ..FlagFilter::default()
        };
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new("SELECT 1 FROM flags f");
        push_filter(&mut q, &filter);
        assert_eq!(
            q.sql(),
            "SELECT 1 FROM flags f WHERE true AND f.status = $1 AND f.severity >= 4 \
             AND f.rule_id BETWEEN 'SAME_PERSON' AND 'SAME_PERSON' AND f.clinic_id = $2"
        );
        let unknown = FlagFilter {
            rule_id: Some("x' OR true --".into()),
            ..FlagFilter::default()
        };
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new("SELECT 1 FROM flags f");
        push_filter(&mut q, &unknown);
        assert_eq!(
            q.sql(),
            "SELECT 1 FROM flags f WHERE true AND f.rule_id BETWEEN $1 AND $2"
        );
    }
}
