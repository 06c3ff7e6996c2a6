//! The rules' context queries, shared by ingest and rescan. Each one is an
//! index range scan (records_donor, records_clinic_foreign_living,
//! records_clinic_deceased), so its cost does not grow with the table.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::{Fingerprint, RecordId};
use crate::rules::{ClinicWindow, PriorDonation, WindowSpec};

use super::StoreError;
use super::body::parse;
use super::ingest::donor_kind;

/// Every record of this donor stored before `before` (all hospitals), oldest first.
pub(super) async fn donor_history(
    conn: &mut PgConnection,
    donor: &Fingerprint,
    before: RecordId,
) -> Result<Vec<PriorDonation>, StoreError> {
    let mut by_donor = donor_histories(conn, std::slice::from_ref(donor), before).await?;
    Ok(by_donor.remove(donor).unwrap_or_default())
}

/// The clinic's records stored before `before` inside the windows ending at `at`.
pub(super) async fn clinic_window(
    conn: &mut PgConnection,
    clinic_id: &str,
    at: DateTime<Utc>,
    spec: WindowSpec,
    before: RecordId,
) -> Result<ClinicWindow, StoreError> {
    let mut window = ClinicWindow::default();
    if spec.foreign_living {
        let since = at - spec.surge.max(spec.cluster);
        let rows = sqlx::query!(
            "SELECT id, transplanted_at, donor_relation, donor_nationality FROM records
             WHERE clinic_id = $1 AND donor_type = 'LIVING' AND donor_non_resident
               AND transplanted_at >= $2 AND transplanted_at <= $3 AND id < $4",
            clinic_id,
            since,
            at,
            before.0,
        )
        .fetch_all(&mut *conn)
        .await?;
        for r in rows {
            let id = RecordId(r.id);
            if r.transplanted_at >= at - spec.cluster {
                window
                    .foreign_living_donors
                    .push((id, parse(&r.donor_nationality)?));
            }
            if r.transplanted_at >= at - spec.surge
                && r.donor_relation.as_deref() == Some("UNRELATED_DIRECTED")
            {
                window.foreign_unrelated_living.push(id);
            }
        }
    }
    if spec.deceased {
        let counts = sqlx::query!(
            r#"SELECT count(*) AS "total!", count(*) FILTER (WHERE recipient_non_resident) AS "non_resident!"
               FROM records
               WHERE clinic_id = $1 AND donor_type = 'DECEASED'
                 AND transplanted_at >= $2 AND transplanted_at <= $3 AND id < $4"#,
            clinic_id,
            at - spec.share,
            at,
            before.0,
        )
        .fetch_one(&mut *conn)
        .await?;
        window.deceased_transplants = u64::try_from(counts.total).unwrap_or(0);
        window.deceased_to_non_residents = u64::try_from(counts.non_resident).unwrap_or(0);
    }
    Ok(window)
}

/// Every record of these donors with an id below `before`, by donor, oldest first.
pub(super) async fn donor_histories(
    conn: &mut PgConnection,
    donors: &[Fingerprint],
    before: RecordId,
) -> Result<HashMap<Fingerprint, Vec<PriorDonation>>, StoreError> {
    let fps: Vec<Vec<u8>> = donors.iter().map(|f| f.as_bytes().to_vec()).collect();
    let rows = sqlx::query!(
        "SELECT donor_fp, id, organ, laterality, donor_type, donor_relation, donor_death_at,
                donor_death_kind, procured_at
         FROM records WHERE donor_fp = ANY($1) AND id < $2 ORDER BY id",
        &fps,
        before.0,
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut by_donor: HashMap<Fingerprint, Vec<PriorDonation>> = HashMap::new();
    for r in rows {
        let fp = Fingerprint::from_slice(&r.donor_fp)
            .ok_or_else(|| StoreError::Corrupt("fingerprint length".into()))?;
        let kind = donor_kind(
            &r.donor_type,
            r.donor_relation,
            r.donor_death_at,
            r.donor_death_kind,
        )?;
        by_donor.entry(fp).or_default().push(PriorDonation {
            record_id: RecordId(r.id),
            organ: parse(&r.organ)?,
            laterality: parse(&r.laterality)?,
            kind,
            procured_at: r.procured_at,
        });
    }
    Ok(by_donor)
}
