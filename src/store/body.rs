//! The stored form of a record version: pseudonymised JSON.
//!
//! Its bytes are also the content hash's input, so a field's name here must
//! never change for stored versions (add fields only with defaults), and
//! fields stay in byte order of their names: the text is that of a JSON
//! object with sorted keys.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{
    AboGroup, Donor, DonorKind, Fingerprint, HlaTyping, Person, Record, TransplantRecord,
};

use super::StoreError;

// Fields in byte order of their names: serialised directly, the text is
// the same as a sorted JSON object's, which content hashes were taken over.
#[derive(Serialize, Deserialize)]
pub(super) struct RecordBody {
    abo_exception: String,
    clinic_id: String,
    cold_ischemia_minutes: Option<u32>,
    death_at: Option<DateTime<Utc>>,
    death_kind: Option<String>,
    donor: PersonBody,
    donor_type: String,
    external_record_id: String,
    hospital_id: String,
    laterality: String,
    machine_perfusion: bool,
    organ: String,
    procedure_country: String,
    procured_at: DateTime<Utc>,
    recipient: PersonBody,
    relation_to_recipient: Option<String>,
    transplanted_at: DateTime<Utc>,
}

// Fields in byte order of their names, as in `RecordBody`.
#[derive(Serialize, Deserialize)]
pub(super) struct PersonBody {
    abo: String,
    age_years: u8,
    country_of_residence: String,
    fingerprint: String,
    hla: Option<HlaBody>,
    nationality: String,
    rh: Option<String>,
    sex: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct HlaBody {
    a: Vec<String>,
    b: Vec<String>,
    dr: Vec<String>,
}

impl RecordBody {
    /// The stored text of a pseudonymised record.
    pub(super) fn text(r: &Record) -> String {
        // Strings, numbers and timestamps always serialise.
        serde_json::to_string(&Self::from_record(r)).unwrap_or_default()
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DonorRelation, Sex};
    use crate::rules::fixtures::{deceased, living};

    #[test]
    fn the_stored_text_is_the_sorted_json_object_hashes_were_taken_over() {
        let mut typed = living(DonorRelation::UnrelatedDirected);
        typed.cold_ischemia_minutes = Some(45);
        typed.recipient.sex = Some(Sex::Female);
        typed.donor.person.hla = Some(HlaTyping {
            a: vec!["A*02".into()],
            b: vec![],
            dr: vec!["DR4".into(), "DR7".into()],
        });
        for record in [living(DonorRelation::Sibling), deceased(), typed] {
            let sorted = serde_json::to_value(RecordBody::from_record(&record))
                .expect("serialises")
                .to_string();
            assert_eq!(RecordBody::text(&record), sorted);
        }
    }
}
