//! Flags as auditors see them: listing, opening a case and triage.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row as _};

use crate::domain::activity::ActivityDelta;
use crate::domain::flag_history::FlagStep;
use crate::domain::{
    FlagEvent, FlagFilter, FlagStatus, FlagView, RecordId, RecordView, Severity, StepKind,
};
use crate::rules::RuleId;

use super::body::parse;
use super::chain;
use super::ingest::{severity_from_db, severity_to_db};
use super::{Store, StoreError, row, steps};

/// A row of [`FLAG_COLUMNS`].
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

impl<'r> sqlx::FromRow<'r, PgRow> for FlagRow {
    /// By position, in [`FLAG_COLUMNS`]' order, and in release builds
    /// without comparing each column's type with the field's: sqlx finds a
    /// column by name through a hash map, and compares types by name, for
    /// every column of every row, which cost a sixth of the server's CPU in
    /// a listing. The columns and their types are this module's and the
    /// migrations'; debug builds, which the tests run, check both.
    fn from_row(row: &'r PgRow) -> sqlx::Result<Self> {
        Ok(Self {
            id: column(row, 0, "id")?,
            record_id: column(row, 1, "record_id")?,
            rule_id: column(row, 2, "rule_id")?,
            rule_version: column(row, 3, "rule_version")?,
            severity: column(row, 4, "severity")?,
            explanation: column(row, 5, "explanation")?,
            evidence_record_ids: column(row, 6, "evidence_record_ids")?,
            status: column(row, 7, "status")?,
            revision: column(row, 8, "revision")?,
            raised_at: column(row, 9, "raised_at")?,
            updated_at: column(row, 10, "updated_at")?,
            hospital_id: column(row, 11, "hospital_id")?,
            clinic_id: column(row, 12, "clinic_id")?,
            external_record_id: column(row, 13, "external_record_id")?,
            record_version: column(row, 14, "record_version")?,
            cleared_in_version: column(row, 15, "cleared_in_version")?,
            dismissal_proposed_by: column(row, 16, "dismissal_proposed_by")?,
        })
    }
}

/// The value at `index`, which must be the column `name`. Decoding still
/// refuses a value of the wrong width, text that is not UTF-8 and arrays of
/// another element type.
fn column<'r, T>(row: &'r PgRow, index: usize, name: &str) -> sqlx::Result<T>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    if cfg!(debug_assertions) {
        assert_eq!(
            row.columns().get(index).map(sqlx::Column::name),
            Some(name),
            "FLAG_COLUMNS and FlagRow disagree"
        );
        return row.try_get(index);
    }
    row.try_get_unchecked(index)
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
    /// The proposer's and the approver's keys come from one administrator,
    /// or one of them issued the other's.
    #[error(
        "dismissing a CRITICAL flag needs two principals whose keys were not issued by one \
         administrator, nor by each other"
    )]
    OneIssuer,
    /// The flag's row or steps were changed behind the service's back.
    #[error("the flag's history does not match its row; an administrator must run verify")]
    Tampered,
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
    pub actor: &'a Actor<'a>,
}

/// Who acts on evidence, as the trails record it.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    /// The API key used.
    pub key_id: &'a str,
    /// The person or system behind it.
    pub principal: &'a str,
    /// The administrator principal who issued the key, if one did.
    pub issued_by: Option<&'a str>,
    /// The caller's W3C trace id, if it sent one.
    pub trace_id: Option<&'a str>,
    /// The trace id the service gave the call.
    pub own_trace_id: Option<&'a str>,
}

/// These flags, in id order, read on `conn`.
pub(super) async fn flags_by_id(
    conn: &mut PgConnection,
    ids: &[i64],
) -> Result<Vec<FlagView>, StoreError> {
    let sql = format!("{FLAG_COLUMNS} WHERE f.id = ANY($1) ORDER BY f.id");
    let rows: Vec<FlagRow> = sqlx::query_as(&sql).bind(ids).fetch_all(&mut *conn).await?;
    rows.into_iter().map(FlagRow::into_view).collect()
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
        let mut conn = self.acquire().await?;
        let (query, conn) = (q.build_query_as::<FlagRow>(), &mut *conn);
        let rows = super::unspanned(move || query.fetch_all(conn)).await?;
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
        let history = steps::steps_of(&mut *self.acquire().await?, &[flag_id])
            .await?
            .remove(&flag_id)
            .unwrap_or_default()
            .into_iter()
            .map(|s| FlagEvent {
                step: s.step.step,
                kind: s.step.kind,
                at: s.step.at,
                key_id: s.step.key_id,
                principal: s.step.principal,
                from: s.step.from,
                to: s.step.to,
                note: s.step.note,
                trace_id: s.step.trace_id,
                own_trace_id: s.step.own_trace_id,
                severity: s.step.finding.map(|f| f.severity),
                cleared_in_version: s.step.cleared_in_version,
            })
            .collect();
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
    /// The flag's row and steps are checked first: the service never signs
    /// a step on top of a flag changed behind its back. Dismissing a
    /// CRITICAL flag takes two principals: the first call records a
    /// proposal, a call by another principal carries it out, and the two
    /// keys may not both come from one administrator.
    pub async fn triage(&self, step: TriageStep<'_>) -> Result<FlagView, TriageError> {
        if step.to.needs_note() && step.note.trim().is_empty() {
            return Err(TriageError::NoteRequired(step.to));
        }
        let mut tx = self.begin().await?;
        let row = steps::flag_rows(&mut tx, &[step.flag_id])
            .await?
            .pop()
            .ok_or(TriageError::NotFound)?;
        let mut history = steps::steps_of(&mut tx, &[step.flag_id]).await?;
        let history = history.remove(&step.flag_id).unwrap_or_default();
        let checked = steps::check(&self.ledger, &row, &history).map_err(|reason| {
            tracing::error!(flag_id = step.flag_id, %reason, "a flag was changed behind the service's back");
            TriageError::Tampered
        })?;
        self.view
            .check_current(&mut tx, checked.head, || {
                format!("flag {}'s newest step", step.flag_id)
            })
            .await
            .map_err(|e| match e {
                StoreError::Tampered(_) => TriageError::Tampered,
                e => e.into(),
            })?;
        let folded = &checked.folded;
        if folded.revision != step.expected_revision {
            return Err(TriageError::Stale {
                current: folded.revision,
            });
        }
        let from = folded.status;
        if !from.can_move_to(step.to) {
            return Err(TriageError::IllegalTransition { from, to: step.to });
        }
        let actor = step.actor;
        let two_person =
            step.to == FlagStatus::Dismissed && folded.finding.severity == Severity::Critical;
        let (kind, to) = match &folded.dismissal_proposed_by {
            _ if !two_person => (StepKind::Transition, step.to),
            None => (StepKind::DismissalProposed, from),
            Some(proposer) => {
                self.check_second_principal(&history, proposer, actor)
                    .await?;
                (StepKind::Transition, step.to)
            }
        };
        let new = FlagStep {
            step: i32::try_from(folded.revision + 1).unwrap_or(i32::MAX),
            kind,
            at: chain::now(),
            key_id: actor.key_id.to_owned(),
            principal: actor.principal.to_owned(),
            from: Some(from),
            to,
            note: step.note.to_owned(),
            trace_id: actor.trace_id.map(str::to_owned),
            own_trace_id: actor.own_trace_id.map(str::to_owned),
            finding: None,
            cleared_in_version: None,
        };
        let next = steps::append(&mut tx, &self.ledger, &row, &checked, new, None).await?;
        let (before, after) = (row.activity_state(), row.activity_state_after(&next));
        if before != after {
            // A proposal to dismiss leaves the status where it was.
            let bucket = super::activity::bucket_of_record(&mut tx, row.record_id.0).await?;
            let mut activity = ActivityDelta::new();
            activity.flag_changed((&bucket, before), (&bucket, after));
            super::activity::apply(&mut tx, &activity).await?;
        }
        tx.commit().await?;
        self.flag(step.flag_id).await?.ok_or(TriageError::NotFound)
    }

    /// Refuses the approval of a dismissal proposed by `proposer` when the
    /// approver is the same principal, issued the proposer's key, or holds
    /// a key issued by the administrator who issued the proposer's: one
    /// administrator can mint any number of keys, so two of them are one
    /// person for this rule.
    async fn check_second_principal(
        &self,
        history: &[steps::StoredStep],
        proposer: &str,
        approver: &Actor<'_>,
    ) -> Result<(), TriageError> {
        if proposer == approver.principal {
            return Err(TriageError::SecondAuditorRequired);
        }
        let proposal_key = history
            .iter()
            .rev()
            .find(|s| s.step.kind == StepKind::DismissalProposed)
            .map(|s| s.step.key_id.clone())
            .unwrap_or_default();
        let proposer_issuer = match self.key_principals(&proposal_key).await {
            Ok(found) => found.and_then(|(_, issuer)| issuer),
            Err(StoreError::Tampered(_)) => return Err(TriageError::Tampered),
            Err(e) => return Err(e.into()),
        };
        let one_issuer =
            proposer_issuer.is_some() && proposer_issuer.as_deref() == approver.issued_by;
        let issued_the_other = proposer_issuer.as_deref() == Some(approver.principal)
            || approver.issued_by == Some(proposer);
        if one_issuer || issued_the_other {
            return Err(TriageError::OneIssuer);
        }
        Ok(())
    }

    /// Records that `actor` read `resource` `resource_id` through `action`.
    pub async fn record_access(
        &self,
        actor: &Actor<'_>,
        action: &str,
        resource: &'static str,
        resource_id: &str,
    ) -> Result<(), StoreError> {
        let read = super::investigate::Read {
            resource,
            resource_id: resource_id.to_owned(),
        };
        self.record_reads(actor, action, &[read]).await
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
