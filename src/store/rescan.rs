//! What a rescan reads and writes: stored records in id order, their donors'
//! histories in bulk, existing flags, and the run's cursor.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::domain::activity::ActivityDelta;
use crate::domain::{Clinic, Fingerprint, Record, RecordId};
use crate::rules::{ClinicWindow, Finding, PriorDonation, WindowSpec};

use super::context::{self, WindowRequest};
use super::row::RecordRow;
use super::steps::{self, Raise};
use super::{Store, StoreError};

/// A rescan's parameters and how far it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RescanRun {
    /// The run's id, to resume it.
    pub id: i64,
    /// The rule ids it evaluates.
    pub rules: Vec<String>,
    /// Only records transplanted at or after this instant.
    pub transplanted_from: Option<DateTime<Utc>>,
    /// Only records transplanted before this instant.
    pub transplanted_until: Option<DateTime<Utc>>,
    /// Every record up to this id has been evaluated.
    pub cursor: RecordId,
    /// Records evaluated so far.
    pub processed: i64,
    /// Flags added so far.
    pub flags_added: i64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it last moved.
    pub updated_at: DateTime<Utc>,
    /// When it completed, if it did.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A stored record with its id and current version.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    /// Its id.
    pub id: RecordId,
    /// Its current version.
    pub version: i32,
    /// Its current content.
    pub record: Record,
}

/// A flag that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExistingFlag {
    /// The flag.
    pub flag_id: i64,
    /// Its record.
    pub record_id: RecordId,
}

/// A finding to store as a flag on a record version.
#[derive(Debug, Clone)]
pub struct NewFlag<'a> {
    /// The record.
    pub record: &'a StoredRecord,
    /// What the rule found.
    pub finding: &'a Finding,
}

/// The range a rescan covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransplantRange {
    /// Inclusive start.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive end.
    pub until: Option<DateTime<Utc>>,
}

/// One record's clinic window to load: the clinic's records transplanted in
/// `[since, at]` and stored before `before`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowProbe {
    /// The clinic.
    pub clinic_id: String,
    /// The window's first instant.
    pub since: DateTime<Utc>,
    /// The window's last instant (included): the record's transplant.
    pub at: DateTime<Utc>,
    /// Only records with a lower id count.
    pub before: RecordId,
}

/// A clinic's deceased-donor transplant, as the non-resident share counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeceasedTransplant {
    /// When it was transplanted.
    pub transplanted_at: DateTime<Utc>,
    /// The record.
    pub id: RecordId,
    /// Whether the recipient is a non-resident.
    pub to_non_resident: bool,
}

/// A clinic and a half-open span of transplant instants, `[from, until)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClinicSpan {
    /// The clinic.
    pub clinic_id: String,
    /// First instant included.
    pub from: DateTime<Utc>,
    /// First instant excluded.
    pub until: DateTime<Utc>,
}

struct RunRow {
    id: i64,
    rules: Vec<String>,
    transplanted_from: Option<DateTime<Utc>>,
    transplanted_until: Option<DateTime<Utc>>,
    cursor_record_id: i64,
    processed: i64,
    flags_added: i64,
    started_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl From<RunRow> for RescanRun {
    fn from(r: RunRow) -> Self {
        RescanRun {
            id: r.id,
            rules: r.rules,
            transplanted_from: r.transplanted_from,
            transplanted_until: r.transplanted_until,
            cursor: RecordId(r.cursor_record_id),
            processed: r.processed,
            flags_added: r.flags_added,
            started_at: r.started_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        }
    }
}

impl Store {
    /// Records a new rescan run.
    pub async fn start_rescan(
        &self,
        rules: &[String],
        range: TransplantRange,
    ) -> Result<RescanRun, StoreError> {
        let row = sqlx::query_as!(
            RunRow,
            "INSERT INTO rescans (rules, transplanted_from, transplanted_until) VALUES ($1, $2, $3)
             RETURNING id, rules, transplanted_from, transplanted_until, cursor_record_id,
                       processed, flags_added, started_at, updated_at, finished_at",
            rules,
            range.from,
            range.until,
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.into())
    }

    /// A rescan run by id.
    pub async fn rescan_run(&self, id: i64) -> Result<Option<RescanRun>, StoreError> {
        let row = sqlx::query_as!(
            RunRow,
            "SELECT id, rules, transplanted_from, transplanted_until, cursor_record_id,
                    processed, flags_added, started_at, updated_at, finished_at
             FROM rescans WHERE id = $1",
            id,
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Into::into))
    }

    /// Runs that were interrupted before they completed, newest first.
    pub async fn resumable_rescans(&self) -> Result<Vec<RescanRun>, StoreError> {
        let rows = sqlx::query_as!(
            RunRow,
            "SELECT id, rules, transplanted_from, transplanted_until, cursor_record_id,
                    processed, flags_added, started_at, updated_at, finished_at
             FROM rescans WHERE finished_at IS NULL ORDER BY id DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Marks a rescan run complete.
    pub async fn finish_rescan(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE rescans SET finished_at = now(), updated_at = now() WHERE id = $1",
            id
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How many records in `range` have ids above `after`.
    pub async fn count_records(
        &self,
        range: TransplantRange,
        after: RecordId,
    ) -> Result<i64, StoreError> {
        let n = sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM records
               WHERE id > $1 AND ($2::timestamptz IS NULL OR transplanted_at >= $2)
                 AND ($3::timestamptz IS NULL OR transplanted_at < $3)"#,
            after.0,
            range.from,
            range.until,
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    /// The ids of up to `limit` records in `range` above `after`, in order.
    pub async fn record_ids_after(
        &self,
        after: RecordId,
        limit: i64,
        range: TransplantRange,
    ) -> Result<Vec<RecordId>, StoreError> {
        let ids = sqlx::query_scalar!(
            "SELECT id FROM records
             WHERE id > $1 AND ($2::timestamptz IS NULL OR transplanted_at >= $2)
               AND ($3::timestamptz IS NULL OR transplanted_at < $3)
             ORDER BY id LIMIT $4",
            after.0,
            range.from,
            range.until,
            limit,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(RecordId).collect())
    }

    /// The records in `range` with ids from `first` to `last` (both
    /// included), in id order.
    pub async fn records_between(
        &self,
        first: RecordId,
        last: RecordId,
        range: TransplantRange,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        sqlx::query_as!(
            RecordRow,
            "SELECT id, version, content_hash, chain_head, version_reason, version_recorded_at,
                    received_at, amended_at, ledger_seq, ledger_prev, ledger_mac, hospital_id,
                    external_record_id, clinic_id, procedure_country,
                    organ, laterality, procured_at, transplanted_at, cold_ischemia_minutes,
                    machine_perfusion, abo_exception, donor_fp, donor_type, donor_relation,
                    donor_death_at, donor_death_kind, donor_nationality, donor_residence,
                    donor_age, donor_sex, donor_abo, donor_rh, donor_hla, donor_non_resident,
                    recipient_fp, recipient_nationality, recipient_residence, recipient_age,
                    recipient_sex, recipient_abo, recipient_rh, recipient_hla,
                    recipient_non_resident, donor_element, recipient_element
             FROM records
             WHERE id >= $1 AND id <= $2 AND ($3::timestamptz IS NULL OR transplanted_at >= $3)
               AND ($4::timestamptz IS NULL OR transplanted_at < $4)
             ORDER BY id",
            first.0,
            last.0,
            range.from,
            range.until,
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|row| {
            let current = row.into_current()?;
            Ok(StoredRecord {
                id: current.id,
                version: current.version,
                record: current.record,
            })
        })
        .collect()
    }

    /// Every record of these donors with an id below `before`, by donor, oldest first.
    pub async fn donor_histories(
        &self,
        donors: &[Fingerprint],
        before: RecordId,
    ) -> Result<HashMap<Fingerprint, Vec<PriorDonation>>, StoreError> {
        let mut conn = self.acquire().await?;
        context::donor_histories(&mut conn, donors, before).await
    }

    /// A clinic's window context as it stood before record `before`.
    pub async fn clinic_window(
        &self,
        clinic_id: &str,
        at: DateTime<Utc>,
        spec: WindowSpec,
        before: RecordId,
    ) -> Result<ClinicWindow, StoreError> {
        if !spec.reads_any() {
            return Ok(ClinicWindow::default());
        }
        let mut conn = self.acquire().await?;
        context::clinic_window(&mut conn, clinic_id, at, spec, before).await
    }

    /// The clinic windows of several records, in the order asked (the
    /// statements ingest runs for a batch, on a connection of the pool).
    pub async fn clinic_windows(
        &self,
        requests: &[WindowRequest<'_>],
    ) -> Result<Vec<ClinicWindow>, StoreError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.acquire().await?;
        context::clinic_windows(&mut conn, requests).await
    }

    /// The current entry of every registered clinic.
    pub async fn all_clinics(&self) -> Result<HashMap<String, Clinic>, StoreError> {
        let mut clinics = HashMap::new();
        let mut after = None;
        loop {
            let page = self.list_clinics(None, after.as_deref(), 500).await?;
            for v in page.clinics {
                clinics.insert(v.clinic.clinic_id.clone(), v.clinic);
            }
            match page.next_after {
                Some(next) => after = Some(next),
                None => return Ok(clinics),
            }
        }
    }

    /// The flags of these rules on these records, keyed by (record, rule id).
    pub async fn existing_flags(
        &self,
        records: &[RecordId],
        rules: &[String],
    ) -> Result<HashMap<(RecordId, String), ExistingFlag>, StoreError> {
        let ids: Vec<i64> = records.iter().map(|r| r.0).collect();
        let rows = sqlx::query!(
            "SELECT id, record_id, rule_id FROM flags WHERE record_id = ANY($1) AND rule_id = ANY($2)",
            &ids,
            rules,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let record_id = RecordId(r.record_id);
                (
                    (record_id, r.rule_id),
                    ExistingFlag {
                        flag_id: r.id,
                        record_id,
                    },
                )
            })
            .collect())
    }

    /// Stores new flags (never duplicating one) and, for a recorded run, moves
    /// its cursor, in one transaction; returns how many flags were added.
    pub async fn commit_rescan_chunk(
        &self,
        run: Option<i64>,
        cursor: RecordId,
        processed: i64,
        flags: &[NewFlag<'_>],
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let raises: Vec<Raise<'_>> = flags
            .iter()
            .map(|f| Raise {
                record_id: f.record.id,
                record_version: f.record.version,
                record: &f.record.record,
                finding: f.finding,
            })
            .collect();
        let note = match run {
            Some(run) => format!("raised by rescan run {run}"),
            None => "raised by a rescan".to_owned(),
        };
        let mut activity = ActivityDelta::new();
        let added = steps::raise(&mut tx, &self.ledger, &raises, &note, &mut activity).await?;
        if let Some(run) = run {
            sqlx::query!(
                "UPDATE rescans SET cursor_record_id = $2, processed = processed + $3,
                        flags_added = flags_added + $4, updated_at = now()
                 WHERE id = $1",
                run,
                cursor.0,
                processed,
                i64::try_from(added).unwrap_or(i64::MAX),
            )
            .execute(&mut *tx)
            .await?;
        }
        super::activity::apply(&mut tx, &activity).await?;
        tx.commit().await?;
        Ok(added)
    }

    /// Every deceased-donor transplant (whatever its id) at each span's
    /// clinic inside the span, by span, in one query for all.
    pub async fn deceased_transplants(
        &self,
        spans: &[ClinicSpan],
    ) -> Result<Vec<Vec<DeceasedTransplant>>, StoreError> {
        let mut by_span = vec![Vec::new(); spans.len()];
        if spans.is_empty() {
            return Ok(by_span);
        }
        let clinics: Vec<&str> = spans.iter().map(|s| s.clinic_id.as_str()).collect();
        let from: Vec<DateTime<Utc>> = spans.iter().map(|s| s.from).collect();
        let until: Vec<DateTime<Utc>> = spans.iter().map(|s| s.until).collect();
        let rows = sqlx::query!(
            r#"SELECT w.ord AS "ord!", r.id AS "id!", r.transplanted_at AS "transplanted_at!",
                      r.recipient_non_resident AS "recipient_non_resident!"
               FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[])
                    WITH ORDINALITY AS w(clinic, since, until, ord)
               CROSS JOIN LATERAL (
                   SELECT id, transplanted_at, recipient_non_resident FROM records
                   WHERE clinic_id = w.clinic AND donor_type = 'DECEASED'
                     AND transplanted_at >= w.since AND transplanted_at < w.until
               ) r"#,
            &clinics as &[&str],
            &from,
            &until,
        )
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            let slot = usize::try_from(r.ord - 1)
                .ok()
                .and_then(|i| by_span.get_mut(i))
                .ok_or_else(|| StoreError::Corrupt(format!("span ordinal {}", r.ord)))?;
            slot.push(DeceasedTransplant {
                transplanted_at: r.transplanted_at,
                id: RecordId(r.id),
                to_non_resident: r.recipient_non_resident,
            });
        }
        Ok(by_span)
    }
}
