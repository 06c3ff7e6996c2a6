//! The rules' context queries, shared by ingest and rescan. Each one probes
//! an index (records_donor, a hash index on the donor's fingerprint) or
//! scans a range of one (records_clinic_foreign_living,
//! records_clinic_deceased), so its cost does not grow with the table.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::{Fingerprint, RecordId};
use crate::rules::{ClinicWindow, ForeignLivingTransplant, PriorDonation, WindowSpec};

use super::StoreError;
use super::body::parse;
use super::ingest::donor_kind;

/// The clinic's records stored before `before` inside the windows ending at `at`.
pub(super) async fn clinic_window(
    conn: &mut PgConnection,
    clinic_id: &str,
    at: DateTime<Utc>,
    spec: WindowSpec,
    before: RecordId,
) -> Result<ClinicWindow, StoreError> {
    let request = WindowRequest {
        clinic_id,
        until: at,
        spec,
        before,
    };
    let mut windows = clinic_windows(conn, std::slice::from_ref(&request)).await?;
    Ok(windows.pop().unwrap_or_default())
}

/// The clinic windows one record's rules read: its clinic's records stored
/// before `before`, in the windows ending at `until`.
#[derive(Debug, Clone, Copy)]
pub struct WindowRequest<'a> {
    /// The clinic.
    pub clinic_id: &'a str,
    /// The end of every window (the record's transplant time).
    pub until: DateTime<Utc>,
    /// Which windows, and how long.
    pub spec: WindowSpec,
    /// Only records with a lower id count.
    pub before: RecordId,
}

/// The windows of several records, in the order asked, with two statements
/// at most (one per kind of window), each probing its partial index once
/// per request. Records in a window come in id order.
pub(super) async fn clinic_windows(
    conn: &mut PgConnection,
    requests: &[WindowRequest<'_>],
) -> Result<Vec<ClinicWindow>, StoreError> {
    let mut windows = vec![ClinicWindow::default(); requests.len()];
    let living = Probes::of(requests, |spec| {
        spec.foreign_living.then_some(spec.surge.max(spec.cluster))
    });
    if !living.is_empty() {
        let rows = sqlx::query!(
            r#"SELECT q.n AS "n!", r.id AS "id!", r.transplanted_at AS "transplanted_at!",
                      r.donor_relation, r.donor_nationality AS "donor_nationality!"
               FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::bigint[],
                           $5::bigint[]) AS q(clinic_id, since, until, before, n)
               CROSS JOIN LATERAL (
                   SELECT id, transplanted_at, donor_relation, donor_nationality FROM records
                   WHERE clinic_id = q.clinic_id AND donor_type = 'LIVING' AND donor_non_resident
                     AND transplanted_at >= q.since AND transplanted_at <= q.until
                     AND id < q.before) r
               ORDER BY q.n, r.id"#,
            &living.clinic_ids as &[&str],
            &living.since,
            &living.until,
            &living.before,
            &living.index,
        )
        .fetch_all(&mut *conn)
        .await?;
        for r in rows {
            let request = answered(requests, r.n)?;
            windows[request].add_foreign_living(
                &requests[request].spec,
                requests[request].until,
                ForeignLivingTransplant {
                    record_id: RecordId(r.id),
                    transplanted_at: r.transplanted_at,
                    donor_nationality: parse(&r.donor_nationality)?,
                    unrelated_directed: r.donor_relation.as_deref() == Some("UNRELATED_DIRECTED"),
                },
            );
        }
    }
    let deceased = Probes::of(requests, |spec| spec.deceased.then_some(spec.share));
    if !deceased.is_empty() {
        let rows = sqlx::query!(
            r#"SELECT q.n AS "n!", c.total AS "total!", c.non_resident AS "non_resident!"
               FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::bigint[],
                           $5::bigint[]) AS q(clinic_id, since, until, before, n)
               CROSS JOIN LATERAL (
                   SELECT count(*) AS total,
                          count(*) FILTER (WHERE recipient_non_resident) AS non_resident
                   FROM records
                   WHERE clinic_id = q.clinic_id AND donor_type = 'DECEASED'
                     AND transplanted_at >= q.since AND transplanted_at <= q.until
                     AND id < q.before) c"#,
            &deceased.clinic_ids as &[&str],
            &deceased.since,
            &deceased.until,
            &deceased.before,
            &deceased.index,
        )
        .fetch_all(&mut *conn)
        .await?;
        for r in rows {
            let window = &mut windows[answered(requests, r.n)?];
            window.deceased_transplants = u64::try_from(r.total).unwrap_or(0);
            window.deceased_to_non_residents = u64::try_from(r.non_resident).unwrap_or(0);
        }
    }
    Ok(windows)
}

/// One window query's parameters, column-wise: the requests that read the
/// window, each with its window's start.
struct Probes<'a> {
    clinic_ids: Vec<&'a str>,
    since: Vec<DateTime<Utc>>,
    until: Vec<DateTime<Utc>>,
    before: Vec<i64>,
    index: Vec<i64>,
}

impl<'a> Probes<'a> {
    /// The requests for which `length` gives a window length.
    fn of(
        requests: &[WindowRequest<'a>],
        length: impl Fn(&WindowSpec) -> Option<chrono::Duration>,
    ) -> Self {
        let mut probes = Probes {
            clinic_ids: Vec::new(),
            since: Vec::new(),
            until: Vec::new(),
            before: Vec::new(),
            index: Vec::new(),
        };
        for (i, r) in requests.iter().enumerate() {
            if let Some(length) = length(&r.spec) {
                probes.clinic_ids.push(r.clinic_id);
                probes.since.push(r.until - length);
                probes.until.push(r.until);
                probes.before.push(r.before.0);
                probes.index.push(i as i64);
            }
        }
        probes
    }

    fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// The request a returned window row answers, checked against the requests asked.
fn answered(requests: &[WindowRequest<'_>], n: i64) -> Result<usize, StoreError> {
    usize::try_from(n)
        .ok()
        .filter(|&i| i < requests.len())
        .ok_or_else(|| StoreError::Corrupt(format!("window row for request {n}")))
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
