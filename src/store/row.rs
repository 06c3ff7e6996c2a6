//! A record's current version as its `records` row holds it: the row's
//! columns give the pseudonymised record back exactly, so its stored body
//! (and content hash) is computed from them rather than stored twice.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::{Donor, Fingerprint, HlaTyping, Person, Record, RecordId, TransplantRecord};

use super::StoreError;
use super::body::parse;
use super::ingest::donor_kind;

/// The columns of a `records` row that make up its current version.
pub(super) struct RecordRow {
    pub(super) id: i64,
    pub(super) version: i32,
    pub(super) content_hash: Vec<u8>,
    pub(super) chain_head: Option<Vec<u8>>,
    pub(super) version_reason: Option<String>,
    pub(super) version_recorded_at: DateTime<Utc>,
    pub(super) received_at: DateTime<Utc>,
    pub(super) amended_at: Option<DateTime<Utc>>,
    pub(super) ledger_seq: i64,
    pub(super) ledger_prev: Option<i64>,
    pub(super) ledger_mac: Option<Vec<u8>>,
    pub(super) hospital_id: String,
    pub(super) external_record_id: String,
    pub(super) clinic_id: String,
    pub(super) procedure_country: String,
    pub(super) organ: String,
    pub(super) laterality: String,
    pub(super) procured_at: DateTime<Utc>,
    pub(super) transplanted_at: DateTime<Utc>,
    pub(super) cold_ischemia_minutes: Option<i32>,
    pub(super) machine_perfusion: bool,
    pub(super) abo_exception: String,
    pub(super) donor_fp: Vec<u8>,
    pub(super) donor_type: String,
    pub(super) donor_relation: Option<String>,
    pub(super) donor_death_at: Option<DateTime<Utc>>,
    pub(super) donor_death_kind: Option<String>,
    pub(super) donor_nationality: String,
    pub(super) donor_residence: String,
    pub(super) donor_age: i16,
    pub(super) donor_sex: Option<String>,
    pub(super) donor_abo: String,
    pub(super) donor_rh: Option<String>,
    pub(super) donor_hla: Option<serde_json::Value>,
    pub(super) donor_non_resident: bool,
    pub(super) recipient_fp: Vec<u8>,
    pub(super) recipient_nationality: String,
    pub(super) recipient_residence: String,
    pub(super) recipient_age: i16,
    pub(super) recipient_sex: Option<String>,
    pub(super) recipient_abo: String,
    pub(super) recipient_rh: Option<String>,
    pub(super) recipient_hla: Option<serde_json::Value>,
    pub(super) recipient_non_resident: bool,
    pub(super) donor_element: Option<Vec<u8>>,
    pub(super) recipient_element: Option<Vec<u8>>,
}

/// A record's current version: its content and its chain entry.
#[derive(Debug, Clone)]
pub(super) struct CurrentVersion {
    pub(super) id: RecordId,
    pub(super) version: i32,
    /// The content hash stored for it, to check against `record`'s.
    pub(super) content_hash: Vec<u8>,
    /// The record's chain head: this version's chain hash.
    pub(super) chain_head: Option<Vec<u8>>,
    pub(super) reason: Option<String>,
    pub(super) recorded_at: DateTime<Utc>,
    pub(super) received_at: DateTime<Utc>,
    /// When the current version replaced the one before, if it did.
    pub(super) amended_at: Option<DateTime<Utc>>,
    /// The row's place in the ledger's sequence, the place of the state it
    /// replaced, and its MAC.
    pub(super) ledger: (i64, Option<i64>, Option<Vec<u8>>),
    pub(super) record: Record,
    /// The stored (donor, recipient) non-resident columns, which the rules'
    /// window queries read and `record` derives.
    pub(super) non_resident: (bool, bool),
    /// The stored (donor, recipient) federation elements, which the row's
    /// MAC covers.
    pub(super) elements: (Option<Vec<u8>>, Option<Vec<u8>>),
}

impl RecordRow {
    /// The version the row holds; an error names a value no write could have stored.
    pub(super) fn into_current(self) -> Result<CurrentVersion, StoreError> {
        let kind = donor_kind(
            &self.donor_type,
            self.donor_relation,
            self.donor_death_at,
            self.donor_death_kind,
        )?;
        let record = TransplantRecord {
            external_record_id: self.external_record_id,
            hospital_id: self.hospital_id,
            clinic_id: self.clinic_id,
            procedure_country: parse(&self.procedure_country)?,
            organ: parse(&self.organ)?,
            laterality: parse(&self.laterality)?,
            procured_at: self.procured_at,
            transplanted_at: self.transplanted_at,
            cold_ischemia_minutes: self
                .cold_ischemia_minutes
                .map(|m| {
                    u32::try_from(m)
                        .map_err(|_| StoreError::Corrupt(format!("cold ischemia {m} minutes")))
                })
                .transpose()?,
            machine_perfusion: self.machine_perfusion,
            donor: Donor {
                person: Person {
                    identifier: fingerprint(&self.donor_fp)?,
                    nationality: parse(&self.donor_nationality)?,
                    country_of_residence: parse(&self.donor_residence)?,
                    age_years: age(self.donor_age)?,
                    sex: self.donor_sex.as_deref().map(parse).transpose()?,
                    abo: parse(&self.donor_abo)?,
                    rh: self.donor_rh.as_deref().map(parse).transpose()?,
                    hla: hla(self.donor_hla)?,
                },
                kind,
            },
            recipient: Person {
                identifier: fingerprint(&self.recipient_fp)?,
                nationality: parse(&self.recipient_nationality)?,
                country_of_residence: parse(&self.recipient_residence)?,
                age_years: age(self.recipient_age)?,
                sex: self.recipient_sex.as_deref().map(parse).transpose()?,
                abo: parse(&self.recipient_abo)?,
                rh: self.recipient_rh.as_deref().map(parse).transpose()?,
                hla: hla(self.recipient_hla)?,
            },
            abo_exception: parse(&self.abo_exception)?,
        };
        Ok(CurrentVersion {
            non_resident: (self.donor_non_resident, self.recipient_non_resident),
            id: RecordId(self.id),
            version: self.version,
            content_hash: self.content_hash,
            chain_head: self.chain_head,
            reason: self.version_reason,
            recorded_at: self.version_recorded_at,
            received_at: self.received_at,
            amended_at: self.amended_at,
            ledger: (self.ledger_seq, self.ledger_prev, self.ledger_mac),
            elements: (self.donor_element, self.recipient_element),
            record,
        })
    }
}

/// The current versions of the records `ids` names, in the order of `ids`
/// (ids of no record are left out).
pub(super) async fn current_versions(
    conn: &mut PgConnection,
    ids: &[i64],
) -> Result<Vec<CurrentVersion>, StoreError> {
    record_rows(conn, ids)
        .await?
        .into_iter()
        .map(RecordRow::into_current)
        .collect()
}

/// The rows of the records `ids` names, in the order of `ids`, unread:
/// verification reports a row that is no record as a break, not an error.
pub(super) async fn record_rows(
    conn: &mut PgConnection,
    ids: &[i64],
) -> Result<Vec<RecordRow>, StoreError> {
    Ok(sqlx::query_as!(
        RecordRow,
        "SELECT r.id, r.version, r.content_hash, r.chain_head, r.version_reason,
                r.version_recorded_at, r.received_at, r.amended_at, r.ledger_seq, r.ledger_prev,
                r.ledger_mac, r.hospital_id, r.external_record_id,
                r.clinic_id, r.procedure_country, r.organ, r.laterality, r.procured_at,
                r.transplanted_at, r.cold_ischemia_minutes, r.machine_perfusion, r.abo_exception,
                r.donor_fp, r.donor_type, r.donor_relation, r.donor_death_at, r.donor_death_kind,
                r.donor_nationality, r.donor_residence, r.donor_age, r.donor_sex, r.donor_abo,
                r.donor_rh, r.donor_hla, r.donor_non_resident, r.recipient_fp,
                r.recipient_nationality, r.recipient_residence, r.recipient_age, r.recipient_sex,
                r.recipient_abo, r.recipient_rh, r.recipient_hla, r.recipient_non_resident,
                r.donor_element, r.recipient_element
         FROM unnest($1::bigint[]) WITH ORDINALITY AS want(id, n)
         JOIN records r ON r.id = want.id
         ORDER BY want.n",
        ids,
    )
    .fetch_all(conn)
    .await?)
}

fn fingerprint(bytes: &[u8]) -> Result<Fingerprint, StoreError> {
    Fingerprint::from_slice(bytes).ok_or_else(|| StoreError::Corrupt("fingerprint length".into()))
}

fn hla(value: Option<serde_json::Value>) -> Result<Option<HlaTyping>, StoreError> {
    let Some(value) = value else { return Ok(None) };
    let locus = |k: &str| -> Result<Vec<String>, StoreError> {
        value[k]
            .as_array()
            .ok_or_else(|| StoreError::Corrupt(format!("HLA typing without locus {k}")))?
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| StoreError::Corrupt(format!("HLA allele {x}")))
            })
            .collect()
    };
    Ok(Some(HlaTyping {
        a: locus("a")?,
        b: locus("b")?,
        dr: locus("dr")?,
    }))
}

fn age(years: i16) -> Result<u8, StoreError> {
    u8::try_from(years).map_err(|_| StoreError::Corrupt(format!("age {years}")))
}
