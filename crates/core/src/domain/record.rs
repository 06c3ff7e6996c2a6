//! The transplant record: one organ (or a declared part of one) from one donor
//! into one recipient.

use chrono::{DateTime, Utc};

use super::{
    AboException, AboGroup, CountryCode, DeathKind, DonorRelation, DonorType, Fingerprint,
    FingerprintKey, HlaTyping, Laterality, Organ, PersonIdentifier, RhFactor, Sex,
};

/// The service's id of a stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId(pub i64);

/// A donor or recipient; `I` is a clear identifier on arrival and a
/// fingerprint from then on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person<I> {
    /// Who the person is: [`PersonIdentifier`] or [`Fingerprint`].
    pub identifier: I,
    /// Country of citizenship.
    pub nationality: CountryCode,
    /// Country the person lives in.
    pub country_of_residence: CountryCode,
    /// Age in whole years, 0–120.
    pub age_years: u8,
    /// Recorded sex, when given.
    pub sex: Option<Sex>,
    /// ABO blood group.
    pub abo: AboGroup,
    /// Rhesus D factor, when given.
    pub rh: Option<RhFactor>,
    /// HLA typing, when given.
    pub hla: Option<HlaTyping>,
}

impl<I> Person<I> {
    /// Eurotransplant's definition: neither nationality nor residence is `country`.
    pub fn is_non_resident_of(&self, country: CountryCode) -> bool {
        self.nationality != country && self.country_of_residence != country
    }
}

/// What kind of donor, with the facts only that kind has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DonorKind {
    /// Alive at procurement, with a declared relation to the recipient.
    Living {
        /// The declared relation.
        relation: DonorRelation,
    },
    /// Dead at procurement.
    Deceased {
        /// Time of death.
        death_at: DateTime<Utc>,
        /// Brain death (DBD) or circulatory death (DCD).
        death_kind: DeathKind,
    },
}

impl DonorKind {
    /// LIVING or DECEASED.
    pub const fn donor_type(&self) -> DonorType {
        match self {
            DonorKind::Living { .. } => DonorType::Living,
            DonorKind::Deceased { .. } => DonorType::Deceased,
        }
    }
}

/// The donor: a person plus how they donated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Donor<I> {
    /// The person's facts.
    pub person: Person<I>,
    /// Living or deceased, with its details.
    pub kind: DonorKind,
}

/// One transplant as a hospital reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransplantRecord<I> {
    /// The hospital's own id; unique per hospital, the idempotency key.
    pub external_record_id: String,
    /// The submitting hospital.
    pub hospital_id: String,
    /// The transplant centre where the procedure took place.
    pub clinic_id: String,
    /// Where the procedure took place.
    pub procedure_country: CountryCode,
    /// The organ or part.
    pub organ: Organ,
    /// The side, for paired organs.
    pub laterality: Laterality,
    /// When the organ was procured.
    pub procured_at: DateTime<Utc>,
    /// When it was transplanted; never before `procured_at`.
    pub transplanted_at: DateTime<Utc>,
    /// Cold ischemia as the hospital reports it, if it does.
    pub cold_ischemia_minutes: Option<u32>,
    /// Whether the organ was kept on a perfusion device.
    pub machine_perfusion: bool,
    /// The donor.
    pub donor: Donor<I>,
    /// The recipient.
    pub recipient: Person<I>,
    /// The declared reason for an ABO-incompatible transplant.
    pub abo_exception: AboException,
}

/// A record as submitted, with clear identifiers.
pub type Submission = TransplantRecord<PersonIdentifier>;

/// A record as the service keeps it, with fingerprints only.
pub type Record = TransplantRecord<Fingerprint>;

impl<I> TransplantRecord<I> {
    /// Cold ischemia in minutes from the timestamps.
    pub fn ischemia_minutes_from_timestamps(&self) -> i64 {
        (self.transplanted_at - self.procured_at).num_minutes()
    }

    /// Whether the donor is a non-resident of the procedure country.
    pub fn donor_is_foreign(&self) -> bool {
        self.donor.person.is_non_resident_of(self.procedure_country)
    }

    /// Whether the recipient is a non-resident of the procedure country.
    pub fn recipient_is_foreign(&self) -> bool {
        self.recipient.is_non_resident_of(self.procedure_country)
    }

    /// Whether the donor is a living unrelated donor: declared
    /// `UNRELATED_DIRECTED` (not family, not emotionally related, not a
    /// paired exchange, not altruistic).
    pub fn donor_is_unrelated_living(&self) -> bool {
        matches!(
            self.donor.kind,
            DonorKind::Living {
                relation: DonorRelation::UnrelatedDirected
            }
        )
    }
}

impl<I> Person<I> {
    fn map_identifier<J>(self, f: impl FnOnce(I) -> J) -> Person<J> {
        Person {
            identifier: f(self.identifier),
            nationality: self.nationality,
            country_of_residence: self.country_of_residence,
            age_years: self.age_years,
            sex: self.sex,
            abo: self.abo,
            rh: self.rh,
            hla: self.hla,
        }
    }
}

impl Submission {
    /// Replaces both clear identifiers by their fingerprints under `key`.
    pub fn pseudonymise(self, key: &FingerprintKey) -> Record {
        TransplantRecord {
            external_record_id: self.external_record_id,
            hospital_id: self.hospital_id,
            clinic_id: self.clinic_id,
            procedure_country: self.procedure_country,
            organ: self.organ,
            laterality: self.laterality,
            procured_at: self.procured_at,
            transplanted_at: self.transplanted_at,
            cold_ischemia_minutes: self.cold_ischemia_minutes,
            machine_perfusion: self.machine_perfusion,
            donor: Donor {
                person: self.donor.person.map_identifier(|id| key.fingerprint(&id)),
                kind: self.donor.kind,
            },
            recipient: self.recipient.map_identifier(|id| key.fingerprint(&id)),
            abo_exception: self.abo_exception,
        }
    }
}
