//! Small records, clinics and histories for the rules' unit tests.
//!
//! The base records are unremarkable (raise nothing); each test changes the
//! one field it is about.

use chrono::{DateTime, Duration, TimeZone, Utc};

use super::{ClinicWindow, PriorDonation, RuleContext};
use crate::domain::{
    AboException, AboGroup, Clinic, ClinicStatus, CountryCode, DeathKind, Donor, DonorKind,
    DonorRelation, Fingerprint, Laterality, Organ, Person, Record, RecordId, TransplantRecord,
};

/// The donor's fingerprint in the base records.
pub(super) const DONOR: Fingerprint = Fingerprint([0xd0; 32]);
/// The recipient's fingerprint in the base records.
pub(super) const RECIPIENT: Fingerprint = Fingerprint([0xe1; 32]);

/// A country code from test text.
pub fn country(code: &str) -> CountryCode {
    code.parse().unwrap()
}

/// An instant in 2025, UTC.
pub fn at(month: u32, day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, month, day, hour, minute, 0)
        .unwrap()
}

/// When the base records' organ is procured.
pub fn procured() -> DateTime<Utc> {
    at(3, 3, 8, 0)
}

/// A resident of Germany, aged 45, group O, untyped.
pub fn person(identifier: Fingerprint) -> Person<Fingerprint> {
    Person {
        identifier,
        nationality: country("DE"),
        country_of_residence: country("DE"),
        age_years: 45,
        sex: None,
        abo: AboGroup::O,
        rh: None,
        hla: None,
    }
}

/// `p` as a national and resident of `code`.
pub fn foreigner(p: Person<Fingerprint>, code: &str) -> Person<Fingerprint> {
    Person {
        nationality: country(code),
        country_of_residence: country(code),
        ..p
    }
}

/// A left kidney from a living donor to a recipient, both German residents, in Germany.
pub fn living(relation: DonorRelation) -> Record {
    TransplantRecord {
        external_record_id: "H-DE-001-1".into(),
        hospital_id: "H-DE-001".into(),
        clinic_id: "DE-BER-01".into(),
        procedure_country: country("DE"),
        organ: Organ::Kidney,
        laterality: Laterality::Left,
        procured_at: procured(),
        transplanted_at: procured() + Duration::hours(2),
        cold_ischemia_minutes: None,
        machine_perfusion: false,
        donor: Donor {
            person: person(DONOR),
            kind: DonorKind::Living { relation },
        },
        recipient: person(RECIPIENT),
        abo_exception: AboException::None,
    }
}

/// The base deceased donor's death: DBD, seven hours before procurement.
pub fn death() -> DonorKind {
    DonorKind::Deceased {
        death_at: procured() - Duration::hours(7),
        death_kind: DeathKind::Dbd,
    }
}

/// [`living`], but from a deceased (DBD) donor and transplanted 12 h after procurement.
pub fn deceased() -> Record {
    let mut r = living(DonorRelation::Sibling);
    r.donor.kind = death();
    r.transplanted_at = procured() + Duration::hours(12);
    r
}

/// A living donor's kind with the relation the base record uses.
pub fn living_kind() -> DonorKind {
    DonorKind::Living {
        relation: DonorRelation::Sibling,
    }
}

/// An earlier record of the same donor.
pub fn prior(
    id: i64,
    organ: Organ,
    laterality: Laterality,
    kind: DonorKind,
    procured_at: DateTime<Utc>,
) -> PriorDonation {
    PriorDonation {
        record_id: RecordId(id),
        organ,
        laterality,
        kind,
        procured_at,
    }
}

/// A German clinic licensed for every organ from 2015 to 2035.
pub fn clinic_de() -> Clinic {
    Clinic {
        clinic_id: "DE-BER-01".into(),
        name: "Berlin".into(),
        country: country("DE"),
        licensed_organs: Organ::ALL.to_vec(),
        licence_valid_from: Utc.with_ymd_and_hms(2015, 1, 1, 0, 0, 0).unwrap(),
        licence_valid_until: Some(Utc.with_ymd_and_hms(2035, 1, 1, 0, 0, 0).unwrap()),
        status: ClinicStatus::Active,
        status_effective_from: None,
    }
}

/// A rule context from its parts.
pub fn ctx<'a>(
    clinic: Option<&'a Clinic>,
    donor_history: &'a [PriorDonation],
    clinic_window: &'a ClinicWindow,
) -> RuleContext<'a> {
    RuleContext {
        clinic,
        donor_history,
        clinic_window,
        peer_matches: &[],
    }
}

/// Record ids from numbers.
pub fn ids(numbers: &[i64]) -> Vec<RecordId> {
    numbers.iter().copied().map(RecordId).collect()
}

/// Unwraps a hit, checking its explanation is a sentence that shows no identifier.
#[track_caller]
#[cfg(test)]
pub(super) fn fired(hit: Option<super::engine::Hit>) -> super::engine::Hit {
    let hit = hit.expect("the rule should fire");
    let text = &hit.explanation;
    for fp in [DONOR, RECIPIENT] {
        assert!(
            !text.contains(&hex::encode(&fp.0[..4])),
            "identifier in {text:?}"
        );
        assert!(!text.contains(&format!("{fp:?}")), "identifier in {text:?}");
    }
    for id in ["H-DE-001", "DE-BER-01"] {
        assert!(!text.contains(id), "identifier in {text:?}");
    }
    assert!(text.ends_with('.'), "not a sentence: {text:?}");
    hit
}
