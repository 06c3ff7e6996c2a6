//! Synthetic transplant records with a realistic mix, every one valid for the server.
//!
//! About 70% of donors are deceased and give 2–4 organs each (kidneys with
//! their side, a liver or two split segments, a heart, lungs, a pancreas) to
//! several recipients at several clinics of one country on one day; 30% are
//! living donors, mostly relatives, giving a kidney or a liver segment. About
//! 5% of records have a foreign donor or recipient, and about 3% carry an
//! anomaly the rules flag: an ABO-incompatible pair, cold ischemia beyond the
//! organ's limit, or an unrelated foreign living donor.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use transplant_audit_core::wire::pb;

use super::rng::Rng;

/// Countries the clinics are in, round-robin.
const CLINIC_COUNTRIES: [&str; 20] = [
    "DE", "FR", "ES", "IT", "NL", "BE", "AT", "PL", "CZ", "SE", "NO", "DK", "FI", "PT", "GR", "HU",
    "RO", "TR", "US", "CA",
];
/// Where foreign living donors come from (source countries in trafficking cases).
const DONOR_ORIGINS: [&str; 10] = ["MD", "UA", "KZ", "PK", "IN", "EG", "PH", "NP", "BR", "KG"];
/// Where foreign recipients come from.
const RECIPIENT_ORIGINS: [&str; 10] = ["IL", "SA", "AE", "KW", "JP", "GB", "OM", "QA", "CN", "US"];

const HLA_A: [&str; 12] = [
    "A1", "A2", "A3", "A11", "A24", "A26", "A29", "A30", "A31", "A32", "A33", "A68",
];
const HLA_B: [&str; 14] = [
    "B7", "B8", "B13", "B18", "B27", "B35", "B37", "B38", "B44", "B51", "B52", "B57", "B60", "B62",
];
const HLA_DR: [&str; 9] = [
    "DR1", "DR3", "DR4", "DR7", "DR8", "DR11", "DR13", "DR15", "DR16",
];

/// Donor events that are deceased donors (the rest are living donors).
const DECEASED_SHARE: f64 = 0.70;
/// Donor events with one anomalous record: about 3% of records, at ~2.4 records per event.
const ANOMALY_SHARE: f64 = 0.07;
/// Deceased-donor records whose recipient is a non-resident.
const FOREIGN_RECIPIENT_SHARE: f64 = 0.04;
/// Deceased donors who were non-residents (a visitor who died).
const FOREIGN_DECEASED_SHARE: f64 = 0.01;
/// Living pairs who come from abroad together (related, so legitimate).
const FOREIGN_PAIR_SHARE: f64 = 0.05;
/// Pairs typed for HLA.
const HLA_TYPED_SHARE: f64 = 0.6;

/// ABO groups with their frequency in Europe, in percent.
const ABO_FREQUENCY: [(pb::AboGroup, u32); 4] = [
    (pb::AboGroup::O, 45),
    (pb::AboGroup::A, 40),
    (pb::AboGroup::B, 11),
    (pb::AboGroup::Ab, 4),
];

/// A clinic the run registers, and the hospitals that submit its transplants.
#[derive(Debug, Clone)]
pub struct ClinicSpec {
    /// The registry id records name.
    pub clinic_id: String,
    /// Where it is (and where its procedures take place).
    pub country: &'static str,
    /// The hospitals that submit for it.
    pub hospitals: Vec<String>,
}

impl ClinicSpec {
    /// Its registry entry: active and licensed for every organ from 2000 on.
    pub fn to_proto(&self) -> pb::Clinic {
        pb::Clinic {
            clinic_id: self.clinic_id.clone(),
            name: format!("Load test transplant centre {}", self.clinic_id),
            country: self.country.to_owned(),
            licensed_organs: (pb::Organ::Kidney as i32..=pb::Organ::Intestine as i32).collect(),
            licence_valid_from: Some(prost_types::Timestamp {
                seconds: -631_152_000, // 1950-01-01: long runs reach back decades
                nanos: 0,
            }),
            licence_valid_until: None,
            status: pb::ClinicStatus::Active as i32,
            ..pb::Clinic::default()
        }
    }
}

/// What a batch of records holds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Mix {
    /// Records in all.
    pub records: usize,
    /// Records from deceased donors.
    pub deceased_records: usize,
    /// Records with a non-resident donor or recipient.
    pub foreign_records: usize,
    /// Records carrying a deliberate anomaly.
    pub anomalous_records: usize,
}

impl Mix {
    /// Adds another batch's counts.
    pub fn add(&mut self, other: Mix) {
        self.records += other.records;
        self.deceased_records += other.deceased_records;
        self.foreign_records += other.foreign_records;
        self.anomalous_records += other.anomalous_records;
    }
}

/// What the synthesiser needs to know about the run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Prefix of every external record id; its letters and digits also tag
    /// clinic ids and person identifiers, so runs never share them.
    pub run_id: String,
    /// How many clinics to spread records over.
    pub clinics: usize,
    /// Submit every record for this hospital (a hospital API key's own).
    pub hospital_id: Option<String>,
    /// The latest transplant time: the run's last period ends here.
    pub latest: DateTime<Utc>,
    /// How many records the run synthesises in all, over consecutive periods.
    pub records: usize,
    /// Transplants per clinic per year: with `clinics`, how long a period of
    /// `n` records lasts, so that a clinic's rule windows hold as many records
    /// whatever the size of the run.
    pub clinic_rate: u32,
}

/// An anomaly planted in one record of a donor event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Anomaly {
    AboIncompatible,
    Ischemia,
    UnrelatedForeignDonor,
}

/// A donor or recipient before it becomes a proto message.
struct Person {
    identifier: pb::PersonIdentifier,
    nationality: &'static str,
    age: i64,
    sex: pb::Sex,
    abo: pb::AboGroup,
    rh: pb::RhFactor,
    hla: Option<pb::HlaTyping>,
}

/// A record before it is put in time order and given its id.
struct Draft {
    record: pb::TransplantRecord,
    deceased: bool,
    foreign: bool,
    anomalous: bool,
}

/// One organ's procedure: where, what and when.
struct Procedure {
    clinic: usize,
    organ: pb::Organ,
    laterality: pb::Laterality,
    procured_at: DateTime<Utc>,
    ischemia_minutes: i64,
    perfusion: bool,
}

/// Makes clinics and records from a seed.
#[derive(Debug)]
pub struct Synth {
    rng: Rng,
    run_id: String,
    tag: String,
    clinics: Vec<ClinicSpec>,
    hospital_id: Option<String>,
    records_per_minute: f64,
    /// Where the next period of records begins.
    period_start: DateTime<Utc>,
    /// The current period's length in minutes.
    period_minutes: i64,
    persons: u64,
}

impl Synth {
    /// A synthesiser for one run; the clinics are fixed here.
    pub fn new(settings: Settings, mut rng: Rng) -> Self {
        let tag: String = settings
            .run_id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(24)
            .collect::<String>()
            .to_ascii_uppercase();
        let clinics: Vec<ClinicSpec> = (0..settings.clinics.max(1))
            .map(|i| {
                let country = CLINIC_COUNTRIES[i % CLINIC_COUNTRIES.len()];
                let hospitals = (0..rng.between(1, 3))
                    .map(|h| format!("H-{country}-{i:03}-{}", char::from(b'A' + h as u8)))
                    .collect();
                ClinicSpec {
                    clinic_id: format!("LG-{tag}-{country}-{i:03}"),
                    country,
                    hospitals,
                }
            })
            .collect();
        let records_per_minute =
            (clinics.len() as f64 * f64::from(settings.clinic_rate.max(1))) / (365.0 * 24.0 * 60.0);
        let minutes = |n: usize| (n as f64 / records_per_minute).ceil() as i64;
        Self {
            rng,
            run_id: settings.run_id,
            tag,
            clinics,
            hospital_id: settings.hospital_id,
            records_per_minute,
            period_start: settings.latest - Duration::minutes(minutes(settings.records)),
            period_minutes: 0,
            persons: 0,
        }
    }

    /// The clinics records name; register them before submitting.
    pub fn clinics(&self) -> &[ClinicSpec] {
        &self.clinics
    }

    /// `n` new records in transplant-time order, with ids `<run>-<phase>-<n>`,
    /// transplanted in the period after the previous call's.
    pub fn records(&mut self, phase: &str, n: usize) -> (Vec<pb::TransplantRecord>, Mix) {
        self.period_start += Duration::minutes(self.period_minutes);
        self.period_minutes = (n as f64 / self.records_per_minute).ceil().max(1.0) as i64;
        let mut drafts = Vec::with_capacity(n + 8);
        while drafts.len() < n {
            self.donor_event(&mut drafts);
        }
        drafts.truncate(n);
        drafts.sort_by_key(|d| d.record.transplanted_at.map(|t| t.seconds));
        let mut mix = Mix::default();
        let records = drafts
            .into_iter()
            .enumerate()
            .map(|(i, mut d)| {
                mix.records += 1;
                mix.deceased_records += usize::from(d.deceased);
                mix.foreign_records += usize::from(d.foreign);
                mix.anomalous_records += usize::from(d.anomalous);
                d.record.external_record_id = format!("{}-{phase}-{i:07}", self.run_id);
                d.record
            })
            .collect();
        (records, mix)
    }

    fn donor_event(&mut self, out: &mut Vec<Draft>) {
        let anomaly = self.rng.chance(ANOMALY_SHARE).then(|| {
            *self.rng.pick(&[
                Anomaly::AboIncompatible,
                Anomaly::Ischemia,
                Anomaly::UnrelatedForeignDonor,
            ])
        });
        let deceased = match anomaly {
            Some(Anomaly::Ischemia) => true,
            Some(Anomaly::UnrelatedForeignDonor) => false,
            _ => self.rng.chance(DECEASED_SHARE),
        };
        if deceased {
            self.deceased_donor(anomaly, out);
        } else {
            self.living_donor(anomaly, out);
        }
    }

    /// One deceased donor's organs, each to its own recipient at a clinic of the donor's country.
    fn deceased_donor(&mut self, anomaly: Option<Anomaly>, out: &mut Vec<Draft>) {
        let home = self.rng.below(self.clinics.len() as u64) as usize;
        let country = self.clinics[home].country;
        let nationality = if self.rng.chance(FOREIGN_DECEASED_SHARE) {
            self.foreign(&RECIPIENT_ORIGINS, country)
        } else {
            country
        };
        let abo = if anomaly == Some(Anomaly::AboIncompatible) {
            pb::AboGroup::A
        } else {
            self.rng.weighted(&ABO_FREQUENCY)
        };
        let typed = self.rng.chance(HLA_TYPED_SHARE);
        let age = self.rng.between(5, 80);
        let identifier = self.identifier(pb::IdentifierScheme::DonorRegistryId, country);
        let hla = typed.then(|| self.hla());
        let donor = self.person(identifier, nationality, age, abo, hla);
        let death_at = self.moment();
        let death_kind = self
            .rng
            .weighted(&[(pb::DeathKind::Dbd, 80), (pb::DeathKind::Dcd, 20)]);
        let procured_at = death_at
            + Duration::minutes(match death_kind {
                pb::DeathKind::Dcd => self.rng.between(30, 120),
                _ => self.rng.between(180, 720),
            });
        let donor = donor_proto(
            &donor,
            pb::DonorType::Deceased,
            pb::DonorRelation::Unspecified,
            Some((death_at, death_kind)),
        );
        let organs = self.deceased_organs();
        let odd_one = self.rng.below(organs.len() as u64) as usize;
        for (i, (organ, laterality)) in organs.into_iter().enumerate() {
            let planted = (i == odd_one).then_some(anomaly).flatten();
            let clinic = self.clinic_in(country);
            let recipient_abo = if planted == Some(Anomaly::AboIncompatible) {
                pb::AboGroup::O
            } else {
                self.recipient_abo(abo)
            };
            let recipient_nationality = if self.rng.chance(FOREIGN_RECIPIENT_SHARE) {
                self.foreign(&RECIPIENT_ORIGINS, country)
            } else {
                country
            };
            let age = self.rng.between(1, 75);
            let id = self.identifier_for(recipient_nationality, country);
            let hla = typed.then(|| self.hla());
            let recipient = self.person(id, recipient_nationality, age, recipient_abo, hla);
            let beyond = planted == Some(Anomaly::Ischemia);
            let procedure = Procedure {
                clinic,
                organ,
                laterality,
                procured_at,
                ischemia_minutes: self.ischemia_minutes(organ, beyond),
                perfusion: !beyond
                    && matches!(organ, pb::Organ::Kidney | pb::Organ::Liver)
                    && self.rng.chance(0.1),
            };
            let record = self.record(&procedure, donor.clone(), &recipient);
            out.push(Draft {
                foreign: nationality != country || recipient_nationality != country,
                record,
                deceased: true,
                anomalous: planted.is_some(),
            });
        }
    }

    /// What one deceased donor gives: both kidneys and up to two more organs.
    fn deceased_organs(&mut self) -> Vec<(pb::Organ, pb::Laterality)> {
        use pb::{Laterality as L, Organ as O};
        let mut organs = vec![(O::Kidney, L::Left), (O::Kidney, L::Right)];
        let mut extra = [O::Liver, O::Heart, O::Lung, O::Pancreas];
        self.rng.shuffle(&mut extra);
        let more = self.rng.between(0, 2) as usize;
        for organ in extra.into_iter().take(more) {
            match organ {
                O::Liver if self.rng.chance(0.1) => {
                    organs.push((O::LiverSegment, L::NotApplicable));
                    organs.push((O::LiverSegment, L::NotApplicable));
                }
                O::Lung if self.rng.chance(0.3) => {
                    organs.push((O::Lung, L::Left));
                    organs.push((O::Lung, L::Right));
                }
                O::Lung => organs.push((O::Lung, L::Both)),
                other => organs.push((other, L::NotApplicable)),
            }
        }
        if self.rng.chance(0.15) {
            organs.remove(0); // one kidney was not usable
        }
        organs
    }

    /// One living donation: a kidney or a liver segment, mostly between relatives.
    fn living_donor(&mut self, anomaly: Option<Anomaly>, out: &mut Vec<Draft>) {
        use pb::DonorRelation as R;
        let clinic = self.rng.below(self.clinics.len() as u64) as usize;
        let country = self.clinics[clinic].country;
        let paid = anomaly == Some(Anomaly::UnrelatedForeignDonor);
        let from_abroad = !paid && self.rng.chance(FOREIGN_PAIR_SHARE);
        let relation = if paid {
            R::UnrelatedDirected
        } else if from_abroad {
            self.rng.weighted(&[
                (R::Sibling, 4),
                (R::Parent, 3),
                (R::Child, 2),
                (R::Spouse, 2),
            ])
        } else {
            self.rng.weighted(&[
                (R::Sibling, 28),
                (R::Parent, 18),
                (R::Child, 14),
                (R::Spouse, 20),
                (R::OtherRelative, 6),
                (R::EmotionallyRelated, 8),
                (R::PairedExchange, 4),
                (R::AltruisticNonDirected, 2),
            ])
        };
        let recipient_nationality = if from_abroad || (paid && self.rng.chance(0.5)) {
            self.foreign(&RECIPIENT_ORIGINS, country)
        } else {
            country
        };
        let donor_nationality = if paid {
            self.foreign(&DONOR_ORIGINS, country)
        } else {
            recipient_nationality
        };
        let (donor_age, recipient_age) = self.ages(relation);
        let genetic = matches!(relation, R::Parent | R::Child);
        let recipient_abo = self.rng.weighted(&ABO_FREQUENCY);
        let (donor_abo, recipient_abo) = if anomaly == Some(Anomaly::AboIncompatible) {
            (pb::AboGroup::A, pb::AboGroup::O)
        } else {
            (self.donor_abo(recipient_abo, genetic), recipient_abo)
        };
        let (donor_hla, recipient_hla) = if self.rng.chance(HLA_TYPED_SHARE) {
            let donor = self.hla();
            let recipient = if genetic {
                self.inherited_hla(&donor)
            } else {
                self.hla()
            };
            (Some(donor), Some(recipient))
        } else {
            (None, None)
        };
        let id = self.identifier_for(donor_nationality, country);
        let donor = self.person(id, donor_nationality, donor_age, donor_abo, donor_hla);
        let donor = donor_proto(&donor, pb::DonorType::Living, relation, None);
        let id = self.identifier_for(recipient_nationality, country);
        let recipient = self.person(
            id,
            recipient_nationality,
            recipient_age,
            recipient_abo,
            recipient_hla,
        );
        let (organ, laterality) = if self.rng.chance(0.85) {
            let side = if self.rng.chance(0.75) {
                pb::Laterality::Left
            } else {
                pb::Laterality::Right
            };
            (pb::Organ::Kidney, side)
        } else {
            (pb::Organ::LiverSegment, pb::Laterality::NotApplicable)
        };
        let procedure = Procedure {
            clinic,
            organ,
            laterality,
            procured_at: self.moment(),
            ischemia_minutes: self.rng.between(30, 180),
            perfusion: false,
        };
        let record = self.record(&procedure, donor, &recipient);
        out.push(Draft {
            record,
            deceased: false,
            foreign: donor_nationality != country || recipient_nationality != country,
            anomalous: anomaly.is_some(),
        });
    }

    /// Donor and recipient ages that fit the declared relation.
    fn ages(&mut self, relation: pb::DonorRelation) -> (i64, i64) {
        use pb::DonorRelation as R;
        let gap = self.rng.between(20, 36);
        match relation {
            R::Parent => {
                let donor = self.rng.between(40, 70);
                (donor, (donor - gap).max(1))
            }
            R::Child => {
                let donor = self.rng.between(18, 55);
                (donor, (donor + gap).min(90))
            }
            R::Sibling | R::OtherRelative => {
                let donor = self.rng.between(18, 70);
                (donor, (donor + self.rng.between(-12, 12)).clamp(2, 85))
            }
            _ => {
                let donor = self.rng.between(22, 70);
                (donor, (donor + self.rng.between(-8, 8)).clamp(18, 85))
            }
        }
    }

    /// A recipient group the donor's `abo` can give to, by population frequency.
    fn recipient_abo(&mut self, donor: pb::AboGroup) -> pb::AboGroup {
        let fits: Vec<_> = ABO_FREQUENCY
            .iter()
            .copied()
            .filter(|(recipient, _)| compatible(donor, *recipient))
            .collect();
        self.rng.weighted(&fits)
    }

    /// A donor group that can give to `recipient`; a parent or child is never
    /// O to an AB recipient, which inheritance rules out.
    fn donor_abo(&mut self, recipient: pb::AboGroup, genetic: bool) -> pb::AboGroup {
        let fits: Vec<_> = ABO_FREQUENCY
            .iter()
            .copied()
            .filter(|(donor, _)| compatible(*donor, recipient))
            .filter(|(donor, _)| {
                !(genetic && *donor == pb::AboGroup::O && recipient == pb::AboGroup::Ab)
            })
            .collect();
        self.rng.weighted(&fits)
    }

    /// Cold ischemia in minutes: within guideline values, or past the rule's hard limit.
    fn ischemia_minutes(&mut self, organ: pb::Organ, beyond_limit: bool) -> i64 {
        use pb::Organ as O;
        let (normal, beyond) = match organ {
            O::Kidney => ((360, 1440), (4400, 4800)),
            O::Liver | O::LiverSegment => ((240, 600), (1500, 1700)),
            O::Heart => ((120, 240), (540, 720)),
            O::Lung | O::LungLobe => ((180, 360), (780, 900)),
            O::Pancreas => ((360, 720), (1850, 2000)),
            O::Intestine | O::Unspecified => ((240, 480), (1000, 1100)),
        };
        let (lo, hi) = if beyond_limit { beyond } else { normal };
        self.rng.between(lo, hi)
    }

    fn record(
        &mut self,
        p: &Procedure,
        donor: pb::Donor,
        recipient: &Person,
    ) -> pb::TransplantRecord {
        let clinic = &self.clinics[p.clinic];
        let hospital_id = match &self.hospital_id {
            Some(h) => h.clone(),
            None => self.rng.pick(&clinic.hospitals).clone(),
        };
        let transplanted_at = p.procured_at + Duration::minutes(p.ischemia_minutes);
        let reported = self
            .rng
            .chance(0.5)
            .then(|| (p.ischemia_minutes + self.rng.between(-10, 10)).max(0) as i32);
        pb::TransplantRecord {
            external_record_id: String::new(),
            hospital_id,
            clinic_id: clinic.clinic_id.clone(),
            procedure_country: clinic.country.to_owned(),
            organ: p.organ as i32,
            laterality: p.laterality as i32,
            procured_at: Some(timestamp(p.procured_at)),
            transplanted_at: Some(timestamp(transplanted_at)),
            cold_ischemia_minutes: reported,
            machine_perfusion: p.perfusion,
            donor: Some(donor),
            recipient: Some(recipient_proto(recipient)),
            abo_exception: pb::AboException::None as i32,
        }
    }

    fn person(
        &mut self,
        identifier: pb::PersonIdentifier,
        nationality: &'static str,
        age: i64,
        abo: pb::AboGroup,
        hla: Option<pb::HlaTyping>,
    ) -> Person {
        Person {
            identifier,
            nationality,
            age,
            sex: *self.rng.pick(&[pb::Sex::Female, pb::Sex::Male]),
            abo,
            rh: self
                .rng
                .weighted(&[(pb::RhFactor::Positive, 85), (pb::RhFactor::Negative, 15)]),
            hla,
        }
    }

    /// A national id for a resident, a passport for a foreigner.
    fn identifier_for(&mut self, nationality: &'static str, country: &str) -> pb::PersonIdentifier {
        let scheme = if nationality == country {
            pb::IdentifierScheme::NationalId
        } else {
            pb::IdentifierScheme::Passport
        };
        self.identifier(scheme, nationality)
    }

    /// A new person's identifier, unique to this run.
    fn identifier(&mut self, scheme: pb::IdentifierScheme, issuer: &str) -> pb::PersonIdentifier {
        self.persons += 1;
        pb::PersonIdentifier {
            scheme: scheme as i32,
            issuing_country: issuer.to_owned(),
            value: format!("{}P{:09}", self.tag, self.persons),
        }
    }

    /// A country from `origins` other than `home`.
    fn foreign(&mut self, origins: &[&'static str], home: &str) -> &'static str {
        loop {
            let country = *self.rng.pick(origins);
            if country != home {
                return country;
            }
        }
    }

    /// A clinic in `country` (a deceased donor's organs stay in the country).
    fn clinic_in(&mut self, country: &str) -> usize {
        let local: Vec<usize> = (0..self.clinics.len())
            .filter(|i| self.clinics[*i].country == country)
            .collect();
        *self.rng.pick(&local)
    }

    /// A random minute of the current period.
    fn moment(&mut self) -> DateTime<Utc> {
        self.period_start + Duration::minutes(self.rng.between(0, self.period_minutes - 1))
    }

    fn hla(&mut self) -> pb::HlaTyping {
        pb::HlaTyping {
            a: self.antigens(&HLA_A, None),
            b: self.antigens(&HLA_B, None),
            dr: self.antigens(&HLA_DR, None),
        }
    }

    /// A child's typing: one haplotype (the first antigen at each locus) from the parent.
    fn inherited_hla(&mut self, parent: &pb::HlaTyping) -> pb::HlaTyping {
        pb::HlaTyping {
            a: self.antigens(&HLA_A, parent.a.first()),
            b: self.antigens(&HLA_B, parent.b.first()),
            dr: self.antigens(&HLA_DR, parent.dr.first()),
        }
    }

    /// One or two antigens of a locus (one when homozygous), starting with `inherited`.
    fn antigens(&mut self, pool: &[&str], inherited: Option<&String>) -> Vec<String> {
        let first = inherited
            .cloned()
            .unwrap_or_else(|| (*self.rng.pick(pool)).to_owned());
        let second = (*self.rng.pick(pool)).to_owned();
        if first == second {
            vec![first]
        } else {
            vec![first, second]
        }
    }
}

/// Red-cell compatibility: O to all, A to A and AB, B to B and AB, AB to AB.
fn compatible(donor: pb::AboGroup, recipient: pb::AboGroup) -> bool {
    use pb::AboGroup as G;
    matches!(
        (donor, recipient),
        (G::O, _) | (G::A, G::A | G::Ab) | (G::B, G::B | G::Ab) | (G::Ab, G::Ab)
    )
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    }
}

fn donor_proto(
    p: &Person,
    donor_type: pb::DonorType,
    relation: pb::DonorRelation,
    death: Option<(DateTime<Utc>, pb::DeathKind)>,
) -> pb::Donor {
    pb::Donor {
        identifier: Some(p.identifier.clone()),
        nationality: p.nationality.to_owned(),
        country_of_residence: p.nationality.to_owned(),
        age_years: Some(p.age as i32),
        sex: p.sex as i32,
        abo: p.abo as i32,
        rh: p.rh as i32,
        hla: p.hla.clone(),
        donor_type: donor_type as i32,
        relation_to_recipient: relation as i32,
        death_at: death.map(|(at, _)| timestamp(at)),
        death_kind: death.map_or(0, |(_, kind)| kind as i32),
    }
}

fn recipient_proto(p: &Person) -> pb::Recipient {
    pb::Recipient {
        identifier: Some(p.identifier.clone()),
        nationality: p.nationality.to_owned(),
        country_of_residence: p.nationality.to_owned(),
        age_years: Some(p.age as i32),
        sex: p.sex as i32,
        abo: p.abo as i32,
        rh: p.rh as i32,
        hla: p.hla.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use transplant_audit_core::domain::{DonorKind, FingerprintKey};
    use transplant_audit_core::rules::{ClinicWindow, Engine, RuleContext, RuleId};
    use transplant_audit_core::wire::convert::submission;

    fn synth(hospital_id: Option<&str>) -> Synth {
        let settings = Settings {
            run_id: "t-1".into(),
            clinics: 100,
            hospital_id: hospital_id.map(str::to_owned),
            latest: DateTime::from_timestamp(1_750_000_000, 0).unwrap(), // June 2025
            records: 10_000,
            clinic_rate: 200,
        };
        Synth::new(settings, Rng::new(42))
    }

    #[test]
    fn periods_follow_each_other_at_the_clinics_rate_up_to_the_latest() {
        // 100 clinics at 200 a year: 10,000 records are half a year.
        let mut s = synth(None);
        let seconds = |r: &pb::TransplantRecord| r.transplanted_at.as_ref().unwrap().seconds;
        let (first, _) = s.records("a", 5000);
        let (second, _) = s.records("b", 5000);
        // A transplant follows its moment by hours, or days when its ischemia is planted.
        let day = 86_400;
        let week = 7 * day;
        let latest = 1_750_000_000;
        let quarter = 365 * day / 4;
        let span = |rs: &[pb::TransplantRecord]| seconds(&rs[rs.len() - 1]) - seconds(&rs[0]);
        for period in [&first, &second] {
            assert!((quarter - week..=quarter + week).contains(&span(period)));
        }
        assert!(seconds(&first[4999]) <= seconds(&second[0]) + week);
        assert!((latest - day..=latest + week).contains(&seconds(&second[4999])));
        assert!((latest - 2 * quarter - day..).contains(&seconds(&first[0])));
    }

    #[test]
    fn every_record_is_valid_and_the_mix_is_as_documented() {
        let mut s = synth(None);
        let (records, mix) = s.records("x", 5000);
        assert_eq!(records.len(), 5000);
        let share = |n: usize| n as f64 / 5000.0;
        assert!(
            (0.80..0.93).contains(&share(mix.deceased_records)),
            "{mix:?}"
        );
        assert!(
            (0.03..0.08).contains(&share(mix.foreign_records)),
            "{mix:?}"
        );
        assert!(
            (0.015..0.05).contains(&share(mix.anomalous_records)),
            "{mix:?}"
        );
        let key = FingerprintKey::from_bytes(&[9; 32]).unwrap();
        let clinics: std::collections::HashSet<_> =
            s.clinics().iter().map(|c| c.clinic_id.clone()).collect();
        assert_eq!(clinics.len(), 100);
        let mut ids = std::collections::HashSet::new();
        for r in &records {
            assert!(clinics.contains(&r.clinic_id));
            assert!(ids.insert(r.external_record_id.clone()), "repeated id");
            let parsed = submission("record", Some(r), Utc::now())
                .unwrap_or_else(|v| panic!("{v:?} in {r:?}"));
            let record = parsed.pseudonymise(&key);
            if matches!(record.donor.kind, DonorKind::Living { .. }) {
                assert!(record.donor.person.age_years >= 18);
            }
        }
    }

    #[test]
    fn anomalies_are_what_the_record_only_rules_flag() {
        let mut s = synth(None);
        let (records, mix) = s.records("x", 4000);
        let key = FingerprintKey::from_bytes(&[9; 32]).unwrap();
        let window = ClinicWindow::default();
        let flagged = records
            .iter()
            .filter(|r| {
                let record = submission("record", Some(r), Utc::now())
                    .unwrap()
                    .pseudonymise(&key);
                let ctx = RuleContext {
                    clinic: None,
                    donor_history: &[],
                    clinic_window: &window,
                    peer_matches: &[],
                };
                Engine::default()
                    .evaluate(&record, &ctx)
                    .iter()
                    .any(|f| f.rule != RuleId::ClinicUnregistered)
            })
            .count();
        assert_eq!(flagged, mix.anomalous_records, "{mix:?}");
    }

    #[test]
    fn a_hospital_key_puts_every_record_under_its_hospital() {
        let (records, _) = synth(Some("H-MINE")).records("x", 200);
        assert!(records.iter().all(|r| r.hospital_id == "H-MINE"));
    }

    #[test]
    fn the_same_seed_gives_the_same_records() {
        let (a, _) = synth(None).records("x", 300);
        let (b, _) = synth(None).records("x", 300);
        assert_eq!(a, b);
    }
}
