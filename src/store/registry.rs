//! The clinic registry: versions are appended, never overwritten.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::{Clinic, ClinicStatus, ClinicVersion, Organ};

use super::body::parse;
use super::ledger::content;
use super::{Store, StoreError, chain};

/// A page of clinics.
#[derive(Debug, Clone)]
pub struct ClinicPage {
    /// Current entries, by clinic id.
    pub clinics: Vec<ClinicVersion>,
    /// The last clinic id of the page when more may follow.
    pub next_after: Option<String>,
}

struct Row {
    clinic_id: String,
    version: i32,
    name: String,
    country: String,
    licensed_organs: Vec<String>,
    licence_valid_from: DateTime<Utc>,
    licence_valid_until: Option<DateTime<Utc>>,
    status: String,
    status_effective_from: Option<DateTime<Utc>>,
    recorded_at: DateTime<Utc>,
}

impl Row {
    fn into_version(self) -> Result<ClinicVersion, StoreError> {
        let licensed_organs = self
            .licensed_organs
            .iter()
            .map(|o| parse::<Organ>(o))
            .collect::<Result<_, _>>()?;
        Ok(ClinicVersion {
            clinic: Clinic {
                clinic_id: self.clinic_id,
                name: self.name,
                country: parse(&self.country)?,
                licensed_organs,
                licence_valid_from: self.licence_valid_from,
                licence_valid_until: self.licence_valid_until,
                status: parse::<ClinicStatus>(&self.status)?,
                status_effective_from: self.status_effective_from,
            },
            version: self.version,
            recorded_at: self.recorded_at,
        })
    }
}

/// The current entries of these clinics, read on `conn`; unregistered ones are absent.
pub(super) async fn current_clinics(
    conn: &mut PgConnection,
    clinic_ids: &[&str],
) -> Result<HashMap<String, Clinic>, StoreError> {
    Ok(current_versions(conn, clinic_ids)
        .await?
        .into_iter()
        .map(|v| (v.clinic.clinic_id.clone(), v.clinic))
        .collect())
}

async fn current_version(
    conn: &mut PgConnection,
    clinic_id: &str,
) -> Result<Option<ClinicVersion>, StoreError> {
    Ok(current_versions(conn, &[clinic_id]).await?.pop())
}

async fn current_versions(
    conn: &mut PgConnection,
    clinic_ids: &[&str],
) -> Result<Vec<ClinicVersion>, StoreError> {
    let ids: Vec<String> = clinic_ids.iter().map(|&id| id.to_owned()).collect();
    sqlx::query_as!(
        Row,
        "SELECT v.clinic_id, v.version, v.name, v.country, v.licensed_organs,
                v.licence_valid_from, v.licence_valid_until, v.status,
                v.status_effective_from, v.recorded_at
         FROM clinics c
         JOIN clinic_versions v ON v.clinic_id = c.clinic_id AND v.version = c.current_version
         WHERE c.clinic_id = ANY($1)",
        &ids,
    )
    .fetch_all(conn)
    .await?
    .into_iter()
    .map(Row::into_version)
    .collect()
}

impl Store {
    /// Records `clinic` as its newest version, unless it equals the current
    /// one. Returns the current version and whether it changed.
    pub async fn upsert_clinic(
        &self,
        clinic: &Clinic,
    ) -> Result<(ClinicVersion, bool), StoreError> {
        let mut tx = self.begin().await?;
        // Serialises writers of one clinic so version numbers never collide.
        sqlx::query!(
            r#"SELECT 1 AS "locked!" FROM pg_advisory_xact_lock(hashtext('clinic-registry:' || $1)::bigint)"#,
            clinic.clinic_id,
        )
        .fetch_one(&mut *tx)
        .await?;
        let current = current_version(&mut tx, &clinic.clinic_id).await?;
        if let Some(current) = current.as_ref().filter(|c| c.clinic == *clinic) {
            tx.commit().await?;
            return Ok((current.clone(), false));
        }
        let organs: Vec<String> = clinic
            .licensed_organs
            .iter()
            .map(|o| o.to_string())
            .collect();
        let version = current.map_or(0, |c| c.version) + 1;
        let recorded_at = chain::now();
        let mac = self
            .ledger
            .mac(&content::clinic_version(clinic, version, recorded_at));
        sqlx::query!(
            "INSERT INTO clinic_versions (clinic_id, version, name, country, licensed_organs,
                 licence_valid_from, licence_valid_until, status, status_effective_from,
                 recorded_at, ledger_mac)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            clinic.clinic_id,
            version,
            clinic.name,
            clinic.country.as_str(),
            &organs,
            clinic.licence_valid_from,
            clinic.licence_valid_until,
            clinic.status.as_str(),
            clinic.status_effective_from,
            recorded_at,
            &mac[..],
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "INSERT INTO clinics (clinic_id, current_version, country) VALUES ($1, $2, $3)
             ON CONFLICT (clinic_id) DO UPDATE
             SET current_version = EXCLUDED.current_version, country = EXCLUDED.country",
            clinic.clinic_id,
            version,
            clinic.country.as_str(),
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((
            ClinicVersion {
                clinic: clinic.clone(),
                version,
                recorded_at,
            },
            true,
        ))
    }

    /// The current entry of a clinic.
    pub async fn clinic(&self, clinic_id: &str) -> Result<Option<ClinicVersion>, StoreError> {
        let mut conn = self.acquire().await?;
        current_version(&mut conn, clinic_id).await
    }

    /// Every version of a clinic, newest first.
    pub async fn clinic_history(&self, clinic_id: &str) -> Result<Vec<ClinicVersion>, StoreError> {
        sqlx::query_as!(
            Row,
            "SELECT clinic_id, version, name, country, licensed_organs, licence_valid_from,
                    licence_valid_until, status, status_effective_from, recorded_at
             FROM clinic_versions WHERE clinic_id = $1 ORDER BY version DESC",
            clinic_id,
        )
        .fetch_all(&mut *self.acquire().await?)
        .await?
        .into_iter()
        .map(Row::into_version)
        .collect()
    }

    /// Current entries by clinic id after `after`, optionally of one country.
    pub async fn list_clinics(
        &self,
        country: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<ClinicPage, StoreError> {
        let rows = sqlx::query_as!(
            Row,
            "SELECT v.clinic_id, v.version, v.name, v.country, v.licensed_organs,
                    v.licence_valid_from, v.licence_valid_until, v.status,
                    v.status_effective_from, v.recorded_at
             FROM clinics c
             JOIN clinic_versions v ON v.clinic_id = c.clinic_id AND v.version = c.current_version
             WHERE ($1::text IS NULL OR c.country = $1) AND ($2::text IS NULL OR c.clinic_id > $2)
             ORDER BY c.clinic_id
             LIMIT $3",
            country,
            after,
            limit + 1,
        )
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        let mut clinics: Vec<ClinicVersion> = rows
            .into_iter()
            .map(Row::into_version)
            .collect::<Result<_, _>>()?;
        let next_after = if clinics.len() as i64 > limit {
            clinics.truncate(limit as usize);
            clinics.last().map(|c| c.clinic.clinic_id.clone())
        } else {
            None
        };
        Ok(ClinicPage {
            clinics,
            next_after,
        })
    }
}
