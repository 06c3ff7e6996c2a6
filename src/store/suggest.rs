//! The open flags that suggested cases are made of, and what tells that
//! they changed.

use std::collections::HashSet;

use sqlx::postgres::PgListener;
use sqlx::{Postgres, Transaction};

use crate::suggest::OpenFlag;

use super::body::parse;
use super::ingest::severity_from_db;
use super::{Store, StoreError};

/// The channel the database notifies when a transaction that changed what
/// the kept views read commits: flags, case membership, the grouped
/// columns of flagged records (see the migration `kept_views_notify`).
pub const KEPT_VIEWS_CHANNEL: &str = "kept_views";

/// A connection of the pool listening on [`KEPT_VIEWS_CHANNEL`].
#[derive(Debug)]
pub struct ViewChanges {
    listener: PgListener,
}

/// What a [`ViewChanges`] heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewChange {
    /// Transactions that changed what the views read have committed.
    Changed,
    /// The connection was lost and is listening again: whatever committed
    /// in between went unheard.
    Reconnected,
}

impl ViewChanges {
    /// Waits for the next change, and takes the ones already queued behind
    /// it with it: one answer for a burst. After an error, changes may go
    /// unheard until it is dropped and another listens.
    pub async fn next(&mut self) -> Result<ViewChange, StoreError> {
        match self.listener.try_recv().await? {
            Some(_) => {
                while self.listener.next_buffered().is_some() {}
                Ok(ViewChange::Changed)
            }
            // PgListener connects and listens again before it says so.
            None => Ok(ViewChange::Reconnected),
        }
    }
}

impl Store {
    /// Every flag still in triage (OPEN or IN_REVIEW) that no case holds,
    /// with what its record says, in flag order.
    pub async fn open_flags_outside_cases(&self) -> Result<Vec<OpenFlag>, StoreError> {
        let mut tx = self.begin().await?;
        let flags = open_flags(&mut tx).await?;
        tx.commit().await?;
        Ok(flags)
    }

    /// Starts listening for changes to what the kept views read. It holds
    /// one of the pool's connections while it lives.
    pub async fn listen_for_view_changes(&self) -> Result<ViewChanges, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(KEPT_VIEWS_CHANNEL).await?;
        Ok(ViewChanges { listener })
    }

    /// Those of `ids` that are flags still in triage (OPEN or IN_REVIEW)
    /// in no case.
    pub async fn flags_still_outside_cases(&self, ids: &[i64]) -> Result<HashSet<i64>, StoreError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let rows = sqlx::query_scalar!(
            "SELECT f.id FROM flags f
             WHERE f.id = ANY($1)
               AND f.status IN ('OPEN', 'IN_REVIEW')
               AND NOT EXISTS (SELECT 1 FROM case_flags c WHERE c.flag_id = f.id)",
            ids
        )
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        Ok(rows.into_iter().collect())
    }
}

/// The open flags outside cases, read in `tx`.
async fn open_flags(tx: &mut Transaction<'static, Postgres>) -> Result<Vec<OpenFlag>, StoreError> {
    // Compiling this one long read costs a second and saves nothing.
    sqlx::query!("SET LOCAL jit = off")
        .execute(&mut **tx)
        .await?;
    // Each flag's record is looked up by id (OFFSET 0 keeps the planner
    // from turning the lookups into a hash join, which reads the whole
    // records table: 6.7 s against 3.0 s for 482,000 flags at 10^7
    // records).
    let rows = sqlx::query!(
        r#"SELECT f.id, f.rule_id, f.severity, f.record_id, r.donor_fp, r.recipient_fp,
                      r.clinic_id, r.procedure_country, r.transplanted_at,
                      r.foreign_living AS "foreign_living!", r.donor_nationality
               FROM flags f
               CROSS JOIN LATERAL (
                   SELECT donor_fp, recipient_fp, clinic_id, procedure_country, transplanted_at,
                          (donor_type = 'LIVING' AND donor_non_resident) AS foreign_living,
                          donor_nationality
                   FROM records WHERE id = f.record_id OFFSET 0
               ) r
               WHERE f.status IN ('OPEN', 'IN_REVIEW')
                 AND NOT EXISTS (SELECT 1 FROM case_flags c WHERE c.flag_id = f.id)
               ORDER BY f.id"#
    )
    .fetch_all(&mut **tx)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(OpenFlag {
                flag_id: r.id,
                rule_id: r.rule_id,
                severity: severity_from_db(r.severity)?,
                record_id: r.record_id,
                donor: r.donor_fp,
                recipient: r.recipient_fp,
                clinic_id: r.clinic_id,
                procedure_country: parse(&r.procedure_country)?,
                transplanted_at: r.transplanted_at,
                foreign_living_donor: if r.foreign_living {
                    Some(parse(&r.donor_nationality)?)
                } else {
                    None
                },
            })
        })
        .collect()
}
