//! The stored form of a record version: pseudonymised JSON.
//!
//! Its bytes are also the content hash's input, so a field's name here must
//! never change for stored versions (add fields only with defaults), and
//! fields stay in byte order of their names: the text is that of a JSON
//! object with sorted keys.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::{DonorKind, Fingerprint, HlaTyping, Person, Record};

use super::StoreError;

// Fields in byte order of their names: serialised directly, the text is
// the same as a sorted JSON object's, which content hashes were taken over.
// Every field borrows from the record: a body is built for each record
// ingested, only to be hashed.
#[derive(Serialize)]
pub(super) struct RecordBody<'a> {
    abo_exception: &'static str,
    clinic_id: &'a str,
    cold_ischemia_minutes: Option<u32>,
    death_at: Option<DateTime<Utc>>,
    death_kind: Option<&'static str>,
    donor: PersonBody<'a>,
    donor_type: &'static str,
    external_record_id: &'a str,
    hospital_id: &'a str,
    laterality: &'static str,
    machine_perfusion: bool,
    organ: &'static str,
    procedure_country: &'a str,
    procured_at: DateTime<Utc>,
    recipient: PersonBody<'a>,
    relation_to_recipient: Option<&'static str>,
    transplanted_at: DateTime<Utc>,
}

// Fields in byte order of their names, as in `RecordBody`.
#[derive(Serialize)]
struct PersonBody<'a> {
    abo: &'static str,
    age_years: u8,
    country_of_residence: &'a str,
    fingerprint: Hex<'a>,
    hla: Option<HlaBody<'a>>,
    nationality: &'a str,
    rh: Option<&'static str>,
    sex: Option<&'static str>,
}

/// An HLA typing as JSON, in bodies and in the `*_hla` columns.
#[derive(Serialize)]
pub(super) struct HlaBody<'a> {
    a: &'a [String],
    b: &'a [String],
    dr: &'a [String],
}

impl<'a> HlaBody<'a> {
    /// The JSON form of a typing.
    pub(super) fn of(h: &'a HlaTyping) -> Self {
        Self {
            a: &h.a,
            b: &h.b,
            dr: &h.dr,
        }
    }
}

/// Bytes serialised as a lowercase hex string, without an allocation.
struct Hex<'a>(&'a [u8; 32]);

impl Serialize for Hex<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut text = [0u8; 64];
        // 64 bytes hold the hex of 32, and hex digits are ASCII.
        let _ = hex::encode_to_slice(self.0, &mut text);
        serializer.serialize_str(std::str::from_utf8(&text).unwrap_or_default())
    }
}

impl<'a> RecordBody<'a> {
    /// The stored text of a pseudonymised record.
    pub(super) fn text(r: &Record) -> String {
        // Strings, numbers and timestamps always serialise.
        serde_json::to_string(&RecordBody::from_record(r)).unwrap_or_default()
    }

    /// SHA-256 of [`RecordBody::text`]: the record's content hash.
    pub(super) fn hash(r: &Record) -> Vec<u8> {
        let mut text = Vec::with_capacity(1536);
        // Strings, numbers and timestamps always serialise.
        let _ = serde_json::to_writer(&mut text, &RecordBody::from_record(r));
        ring::digest::digest(&ring::digest::SHA256, &text)
            .as_ref()
            .to_vec()
    }

    fn from_record(r: &'a Record) -> Self {
        let (relation, death_at, death_kind) = match r.donor.kind {
            DonorKind::Living { relation } => (Some(relation.as_str()), None, None),
            DonorKind::Deceased {
                death_at,
                death_kind,
            } => (None, Some(death_at), Some(death_kind.as_str())),
        };
        Self {
            external_record_id: &r.external_record_id,
            hospital_id: &r.hospital_id,
            clinic_id: &r.clinic_id,
            procedure_country: r.procedure_country.as_str(),
            organ: r.organ.as_str(),
            laterality: r.laterality.as_str(),
            procured_at: r.procured_at,
            transplanted_at: r.transplanted_at,
            cold_ischemia_minutes: r.cold_ischemia_minutes,
            machine_perfusion: r.machine_perfusion,
            abo_exception: r.abo_exception.as_str(),
            donor: PersonBody::from_person(&r.donor.person),
            donor_type: r.donor.kind.donor_type().as_str(),
            relation_to_recipient: relation,
            death_at,
            death_kind,
            recipient: PersonBody::from_person(&r.recipient),
        }
    }
}

impl<'a> PersonBody<'a> {
    fn from_person(p: &'a Person<Fingerprint>) -> Self {
        Self {
            fingerprint: Hex(p.identifier.as_bytes()),
            nationality: p.nationality.as_str(),
            country_of_residence: p.country_of_residence.as_str(),
            age_years: p.age_years,
            sex: p.sex.map(|s| s.as_str()),
            abo: p.abo.as_str(),
            rh: p.rh.map(|r| r.as_str()),
            hla: p.hla.as_ref().map(HlaBody::of),
        }
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
