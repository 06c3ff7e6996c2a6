//! The stored form of a record version: pseudonymised JSON.
//!
//! Its bytes are also the content hash's input, so a field's order or name
//! here must never change for stored versions (add fields only with defaults).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{
    AboGroup, Donor, DonorKind, Fingerprint, HlaTyping, Person, Record, TransplantRecord,
};

use super::StoreError;

#[derive(Serialize, Deserialize)]
pub(super) struct RecordBody {
    external_record_id: String,
    hospital_id: String,
    clinic_id: String,
    procedure_country: String,
    organ: String,
    laterality: String,
    procured_at: DateTime<Utc>,
    transplanted_at: DateTime<Utc>,
    cold_ischemia_minutes: Option<u32>,
    machine_perfusion: bool,
    abo_exception: String,
    donor: PersonBody,
    donor_type: String,
    relation_to_recipient: Option<String>,
    death_at: Option<DateTime<Utc>>,
    death_kind: Option<String>,
    recipient: PersonBody,
}

#[derive(Serialize, Deserialize)]
pub(super) struct PersonBody {
    fingerprint: String,
    nationality: String,
    country_of_residence: String,
    age_years: u8,
    sex: Option<String>,
    abo: String,
    rh: Option<String>,
    hla: Option<HlaBody>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct HlaBody {
    a: Vec<String>,
    b: Vec<String>,
    dr: Vec<String>,
}

impl RecordBody {
    pub(super) fn from_record(r: &Record) -> Self {
        let (relation, death_at, death_kind) = match r.donor.kind {
            DonorKind::Living { relation } => (Some(relation.to_string()), None, None),
            DonorKind::Deceased {
                death_at,
                death_kind,
            } => (None, Some(death_at), Some(death_kind.to_string())),
        };
        Self {
            external_record_id: r.external_record_id.clone(),
            hospital_id: r.hospital_id.clone(),
            clinic_id: r.clinic_id.clone(),
            procedure_country: r.procedure_country.to_string(),
            organ: r.organ.to_string(),
            laterality: r.laterality.to_string(),
            procured_at: r.procured_at,
            transplanted_at: r.transplanted_at,
            cold_ischemia_minutes: r.cold_ischemia_minutes,
            machine_perfusion: r.machine_perfusion,
            abo_exception: r.abo_exception.to_string(),
            donor: PersonBody::from_person(&r.donor.person),
            donor_type: r.donor.kind.donor_type().to_string(),
            relation_to_recipient: relation,
            death_at,
            death_kind,
            recipient: PersonBody::from_person(&r.recipient),
        }
    }

    pub(super) fn into_record(self) -> Result<Record, StoreError> {
        let kind = match (self.relation_to_recipient, self.death_at, self.death_kind) {
            (Some(relation), None, None) => DonorKind::Living {
                relation: parse(&relation)?,
            },
            (None, Some(death_at), Some(kind)) => DonorKind::Deceased {
                death_at,
                death_kind: parse(&kind)?,
            },
            _ => {
                return Err(StoreError::Corrupt(
                    "record body with an inconsistent donor kind".into(),
                ));
            }
        };
        Ok(TransplantRecord {
            external_record_id: self.external_record_id,
            hospital_id: self.hospital_id,
            clinic_id: self.clinic_id,
            procedure_country: parse(&self.procedure_country)?,
            organ: parse(&self.organ)?,
            laterality: parse(&self.laterality)?,
            procured_at: self.procured_at,
            transplanted_at: self.transplanted_at,
            cold_ischemia_minutes: self.cold_ischemia_minutes,
            machine_perfusion: self.machine_perfusion,
            donor: Donor {
                person: self.donor.into_person()?,
                kind,
            },
            recipient: self.recipient.into_person()?,
            abo_exception: parse(&self.abo_exception)?,
        })
    }
}

impl PersonBody {
    fn from_person(p: &Person<Fingerprint>) -> Self {
        Self {
            fingerprint: hex::encode(p.identifier.as_bytes()),
            nationality: p.nationality.to_string(),
            country_of_residence: p.country_of_residence.to_string(),
            age_years: p.age_years,
            sex: p.sex.map(|s| s.to_string()),
            abo: p.abo.to_string(),
            rh: p.rh.map(|r| r.to_string()),
            hla: p.hla.as_ref().map(|h| HlaBody {
                a: h.a.clone(),
                b: h.b.clone(),
                dr: h.dr.clone(),
            }),
        }
    }

    fn into_person(self) -> Result<Person<Fingerprint>, StoreError> {
        let fp = hex::decode(&self.fingerprint)
            .ok()
            .and_then(|b| Fingerprint::from_slice(&b))
            .ok_or_else(|| StoreError::Corrupt("malformed fingerprint in a record body".into()))?;
        Ok(Person {
            identifier: fp,
            nationality: parse(&self.nationality)?,
            country_of_residence: parse(&self.country_of_residence)?,
            age_years: self.age_years,
            sex: self.sex.as_deref().map(parse).transpose()?,
            abo: parse::<AboGroup>(&self.abo)?,
            rh: self.rh.as_deref().map(parse).transpose()?,
            hla: self.hla.map(|h| HlaTyping {
                a: h.a,
                b: h.b,
                dr: h.dr,
            }),
        })
    }
}

/// Parses a stored enum or country text; a failure means the row was corrupted.
pub(super) fn parse<T: std::str::FromStr>(text: &str) -> Result<T, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("unexpected stored value {text:?}")))
}
