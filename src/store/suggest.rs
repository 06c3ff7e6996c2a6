//! The open flags that suggested cases are made of, and what tells that
//! they changed.

use std::collections::HashSet;

use sqlx::{PgConnection, Postgres, Transaction};

use crate::suggest::OpenFlag;

use super::body::parse;
use super::ingest::severity_from_db;
use super::{Store, StoreError};

/// What the open flags outside cases follow from: the number of flag steps
/// (a flag raised, triaged, re-evaluated or cleared) and of case events (a
/// case opened, a flag added or removed). Both tables are append-only, so
/// the counts change exactly when a step or an event commits, in whatever
/// order their transactions took their ids; counting walks their primary
/// keys alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuggestionSignature {
    flag_steps: i64,
    case_events: i64,
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

    /// The signature of the open flags outside cases as they stand.
    pub async fn suggestion_signature(&self) -> Result<SuggestionSignature, StoreError> {
        let mut conn = self.acquire().await?;
        signature(&mut conn).await
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

async fn signature(conn: &mut PgConnection) -> Result<SuggestionSignature, StoreError> {
    let row = sqlx::query!(
        r#"SELECT (SELECT count(*) FROM flag_events) AS "flag_steps!",
                  (SELECT count(*) FROM case_events) AS "case_events!""#
    )
    .fetch_one(conn)
    .await?;
    Ok(SuggestionSignature {
        flag_steps: row.flag_steps,
        case_events: row.case_events,
    })
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
