//! The open flags that suggested cases are made of.

use crate::suggest::OpenFlag;

use super::body::parse;
use super::ingest::severity_from_db;
use super::{Store, StoreError};

impl Store {
    /// Every flag still in triage (OPEN or IN_REVIEW) that no case holds,
    /// with what its record says, in flag order.
    pub async fn open_flags_outside_cases(&self) -> Result<Vec<OpenFlag>, StoreError> {
        let mut tx = self.begin().await?;
        // Compiling this one long read costs a second and saves nothing.
        sqlx::query!("SET LOCAL jit = off")
            .execute(&mut *tx)
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
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
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
}
