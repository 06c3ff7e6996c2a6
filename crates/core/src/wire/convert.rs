//! Proto messages to domain values and back. Decoding collects every bad
//! field into [`Violations`] instead of stopping at the first.

use std::fmt;

use chrono::{DateTime, Utc};

use crate::domain::validation::{self, Field, Violations, check_age, check_hospital_id, check_id};
use crate::domain::{
    AboException, AboGroup, CaseEventKind, CaseStatus, Clinic, ClinicStatus, CountryCode,
    DeathKind, Donor, DonorKind, DonorRelation, DonorType, FlagStatus, HlaTyping, IdentifierScheme,
    Laterality, Organ, Person, PersonIdentifier, Record, RhFactor, Role, Severity, Sex, StepKind,
    Submission, TransplantRecord,
};
use crate::domain::{ClinicVersion, FlagEvent, FlagView, RecordView};

use crate::wire::pb;

/// A proto enum value read as a domain value.
pub enum Parsed<T> {
    /// A known, specified value.
    Value(T),
    /// The `_UNSPECIFIED` (zero) value.
    Unspecified,
    /// A number the proto does not define.
    Unknown,
}

/// A domain enum with a proto twin that differs only by its type prefix.
pub trait ProtoEnum: Sized + Copy {
    /// Reads the wire number.
    fn from_proto(v: i32) -> Parsed<Self>;
    /// The wire number.
    fn to_proto(self) -> i32;
}

macro_rules! proto_enum {
    ($domain:ident, $pb:ident, [$($variant:ident),+ $(,)?]) => {
        impl ProtoEnum for $domain {
            fn from_proto(v: i32) -> Parsed<Self> {
                match pb::$pb::try_from(v) {
                    $(Ok(pb::$pb::$variant) => Parsed::Value($domain::$variant),)+
                    Ok(pb::$pb::Unspecified) => Parsed::Unspecified,
                    Err(_) => Parsed::Unknown,
                }
            }

            fn to_proto(self) -> i32 {
                match self {
                    $($domain::$variant => pb::$pb::$variant as i32,)+
                }
            }
        }
    };
}

proto_enum!(
    Organ,
    Organ,
    [
        Kidney,
        Liver,
        LiverSegment,
        Heart,
        Lung,
        LungLobe,
        Pancreas,
        Intestine
    ]
);
proto_enum!(Laterality, Laterality, [Left, Right, Both, NotApplicable]);
proto_enum!(
    IdentifierScheme,
    IdentifierScheme,
    [NationalId, Passport, DonorRegistryId]
);
proto_enum!(Sex, Sex, [Female, Male, Other]);
proto_enum!(AboGroup, AboGroup, [O, A, B, Ab]);
proto_enum!(RhFactor, RhFactor, [Positive, Negative]);
proto_enum!(DonorType, DonorType, [Living, Deceased]);
proto_enum!(
    DonorRelation,
    DonorRelation,
    [
        Spouse,
        Parent,
        Child,
        Sibling,
        OtherRelative,
        EmotionallyRelated,
        UnrelatedDirected,
        AltruisticNonDirected,
        PairedExchange
    ]
);
proto_enum!(DeathKind, DeathKind, [Dbd, Dcd]);
proto_enum!(
    AboException,
    AboException,
    [None, DesensitisationProtocol, A2SubtypeDonor, InfantHeart]
);
proto_enum!(Severity, Severity, [Low, Medium, High, Critical]);
proto_enum!(
    FlagStatus,
    FlagStatus,
    [Open, InReview, Confirmed, Dismissed]
);
proto_enum!(ClinicStatus, ClinicStatus, [Active, Suspended, Revoked]);
proto_enum!(Role, Role, [Hospital, Auditor, Admin]);
proto_enum!(
    CaseStatus,
    CaseStatus,
    [Open, Investigating, Referred, Closed]
);
proto_enum!(
    CaseEventKind,
    CaseEventKind,
    [
        Opened,
        FlagAdded,
        FlagRemoved,
        Assigned,
        StatusChanged,
        Noted
    ]
);

/// A required enum field: unspecified is "missing", an undefined number is "unknown".
pub fn required<T: ProtoEnum>(v: &mut Violations, field: impl fmt::Display, raw: i32) -> Option<T> {
    match T::from_proto(raw) {
        Parsed::Value(x) => Some(x),
        Parsed::Unspecified => {
            v.missing(field);
            None
        }
        Parsed::Unknown => {
            v.add(field, format!("unknown enum value {raw}"));
            None
        }
    }
}

/// An optional enum field: unspecified is `None`, an undefined number is a violation.
pub fn optional<T: ProtoEnum>(v: &mut Violations, field: impl fmt::Display, raw: i32) -> Option<T> {
    match T::from_proto(raw) {
        Parsed::Value(x) => Some(x),
        Parsed::Unspecified => None,
        Parsed::Unknown => {
            v.add(field, format!("unknown enum value {raw}"));
            None
        }
    }
}

/// The seconds a `google.protobuf.Timestamp` may hold: 0001-01-01T00:00:00Z
/// to 9999-12-31T23:59:59Z. Outside it the message is malformed (and
/// Postgres cannot store years before 4713 BC).
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// A timestamp as an instant, if it is one.
pub fn instant(
    v: &mut Violations,
    field: impl fmt::Display,
    ts: Option<&prost_types::Timestamp>,
) -> Option<DateTime<Utc>> {
    let ts = ts?;
    // Postgres keeps microseconds: truncating here makes what is stored equal
    // to what was sent, so a resent entry compares equal to the stored one.
    let micros = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .map(|n| n / 1_000 * 1_000);
    let seconds = Some(ts.seconds).filter(|s| TIMESTAMP_SECONDS.contains(s));
    match seconds
        .zip(micros)
        .and_then(|(s, n)| DateTime::from_timestamp(s, n))
    {
        Some(at) => Some(at),
        None => {
            v.add(
                field,
                "is not a valid timestamp (from 0001-01-01 to 9999-12-31, nanos 0 to 999999999)",
            );
            None
        }
    }
}

/// A required timestamp, checked against the plausible range.
fn required_instant(
    v: &mut Violations,
    field: impl fmt::Display + Copy,
    ts: Option<&prost_types::Timestamp>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if ts.is_none() {
        v.missing(field);
        return None;
    }
    let at = instant(v, field, ts)?;
    let before = v.0.len();
    validation::check_instant(v, field, at, now);
    (v.0.len() == before).then_some(at)
}

/// A required ISO 3166-1 alpha-2 country.
pub fn country(v: &mut Violations, field: impl fmt::Display, raw: &str) -> Option<CountryCode> {
    if raw.is_empty() {
        v.missing(field);
        return None;
    }
    v.check(field, raw.parse::<CountryCode>())
}

/// Proto to domain: a submitted record, or every reason it is not one.
/// `prefix` is the path of the record in the request (`record`).
pub fn submission(
    prefix: &str,
    raw: Option<&pb::TransplantRecord>,
    now: DateTime<Utc>,
) -> Result<Submission, Violations> {
    let mut v = Violations::default();
    let Some(r) = raw else {
        v.missing(prefix);
        return Err(v);
    };
    let prefix = Field::root(prefix);
    let f = |name| prefix.child(name);
    let external_record_id = check_id(&mut v, f("external_record_id"), &r.external_record_id);
    let hospital_id = check_hospital_id(&mut v, f("hospital_id"), &r.hospital_id);
    let clinic_id = check_id(&mut v, f("clinic_id"), &r.clinic_id);
    let procedure_country = country(&mut v, f("procedure_country"), &r.procedure_country);
    let organ: Option<Organ> = required(&mut v, f("organ"), r.organ);
    let laterality: Option<Laterality> = optional(&mut v, f("laterality"), r.laterality);
    if let Some(organ) = organ {
        validation::check_laterality(&mut v, f("laterality"), organ, laterality);
    }
    let procured_at = required_instant(&mut v, f("procured_at"), r.procured_at.as_ref(), now);
    let transplanted_at = required_instant(
        &mut v,
        f("transplanted_at"),
        r.transplanted_at.as_ref(),
        now,
    );
    if let (Some(p), Some(t)) = (procured_at, transplanted_at) {
        validation::check_order(&mut v, f("procured_at"), p, t);
    }
    let cold_ischemia_minutes = match r.cold_ischemia_minutes {
        None => None,
        Some(m) if (0..=60 * 24 * 30).contains(&m) => u32::try_from(m).ok(),
        Some(_) => {
            v.add(
                f("cold_ischemia_minutes"),
                "must be between 0 and 43200 (30 days)",
            );
            None
        }
    };
    let abo_exception =
        optional(&mut v, f("abo_exception"), r.abo_exception).unwrap_or(AboException::None);
    let donor = donor(&mut v, f("donor"), r.donor.as_ref(), now);
    let recipient = recipient(&mut v, f("recipient"), r.recipient.as_ref());
    let build = || -> Option<Submission> {
        Some(TransplantRecord {
            external_record_id: external_record_id?,
            hospital_id: hospital_id?.into_string(),
            clinic_id: clinic_id?,
            procedure_country: procedure_country?,
            organ: organ?,
            laterality: laterality.unwrap_or(Laterality::NotApplicable),
            procured_at: procured_at?,
            transplanted_at: transplanted_at?,
            cold_ischemia_minutes,
            machine_perfusion: r.machine_perfusion,
            donor: donor?,
            recipient: recipient?,
            abo_exception,
        })
    };
    match (v.is_empty(), build()) {
        (true, Some(s)) => Ok(s),
        (true, None) => {
            // Every field that fails to parse adds a violation, so this is unreachable
            // unless a check above forgot to; say so rather than store half a record.
            v.add(prefix, "is incomplete");
            Err(v)
        }
        (false, _) => Err(v),
    }
}

/// The common part of donor and recipient.
struct PersonFields<'a> {
    identifier: Option<&'a pb::PersonIdentifier>,
    nationality: &'a str,
    country_of_residence: &'a str,
    age_years: Option<i32>,
    sex: i32,
    abo: i32,
    rh: i32,
    hla: Option<&'a pb::HlaTyping>,
}

fn person(
    v: &mut Violations,
    prefix: Field<'_>,
    p: PersonFields<'_>,
) -> Option<Person<PersonIdentifier>> {
    let f = |name| prefix.child(name);
    let identifier = identifier(v, f("identifier"), p.identifier);
    let nationality = country(v, f("nationality"), p.nationality);
    let residence = country(v, f("country_of_residence"), p.country_of_residence);
    let age = check_age(v, f("age_years"), p.age_years);
    let sex = optional(v, f("sex"), p.sex);
    let abo = required(v, f("abo"), p.abo);
    let rh = optional(v, f("rh"), p.rh);
    let hla = hla(v, f("hla"), p.hla);
    Some(Person {
        identifier: identifier?,
        nationality: nationality?,
        country_of_residence: residence?,
        age_years: age?,
        sex,
        abo: abo?,
        rh,
        hla,
    })
}

fn identifier(
    v: &mut Violations,
    prefix: Field<'_>,
    raw: Option<&pb::PersonIdentifier>,
) -> Option<PersonIdentifier> {
    let Some(raw) = raw else {
        v.missing(prefix);
        return None;
    };
    let scheme = required(v, prefix.child("scheme"), raw.scheme);
    let issuing = country(v, prefix.child("issuing_country"), &raw.issuing_country);
    let field = prefix.child("value");
    if raw.value.is_empty() {
        v.missing(field);
        return None;
    }
    let (scheme, issuing) = (scheme?, issuing?);
    v.check(field, PersonIdentifier::new(scheme, issuing, &raw.value))
}

fn hla(v: &mut Violations, prefix: Field<'_>, raw: Option<&pb::HlaTyping>) -> Option<HlaTyping> {
    let raw = raw?;
    let a = v.check(prefix.child("a"), HlaTyping::parse_locus("A", &raw.a));
    let b = v.check(prefix.child("b"), HlaTyping::parse_locus("B", &raw.b));
    let dr = v.check(prefix.child("dr"), HlaTyping::parse_locus("DR", &raw.dr));
    let typing = HlaTyping {
        a: a?,
        b: b?,
        dr: dr?,
    };
    (!typing.is_empty()).then_some(typing)
}

fn donor(
    v: &mut Violations,
    prefix: Field<'_>,
    raw: Option<&pb::Donor>,
    now: DateTime<Utc>,
) -> Option<Donor<PersonIdentifier>> {
    let Some(d) = raw else {
        v.missing(prefix);
        return None;
    };
    let f = |name| prefix.child(name);
    let person = person(
        v,
        prefix,
        PersonFields {
            identifier: d.identifier.as_ref(),
            nationality: &d.nationality,
            country_of_residence: &d.country_of_residence,
            age_years: d.age_years,
            sex: d.sex,
            abo: d.abo,
            rh: d.rh,
            hla: d.hla.as_ref(),
        },
    );
    let kind = match required::<DonorType>(v, f("donor_type"), d.donor_type)? {
        DonorType::Living => {
            if d.death_at.is_some() || d.death_kind != 0 {
                v.add(f("death_at"), "must not be set for a living donor");
            }
            required(v, f("relation_to_recipient"), d.relation_to_recipient)
                .map(|relation| DonorKind::Living { relation })
        }
        DonorType::Deceased => {
            if d.relation_to_recipient != 0 {
                v.add(f("relation_to_recipient"), "applies only to living donors");
            }
            let death_at = required_instant(v, f("death_at"), d.death_at.as_ref(), now);
            let death_kind = required(v, f("death_kind"), d.death_kind);
            Some(DonorKind::Deceased {
                death_at: death_at?,
                death_kind: death_kind?,
            })
        }
    };
    Some(Donor {
        person: person?,
        kind: kind?,
    })
}

fn recipient(
    v: &mut Violations,
    prefix: Field<'_>,
    raw: Option<&pb::Recipient>,
) -> Option<Person<PersonIdentifier>> {
    let Some(r) = raw else {
        v.missing(prefix);
        return None;
    };
    person(
        v,
        prefix,
        PersonFields {
            identifier: r.identifier.as_ref(),
            nationality: &r.nationality,
            country_of_residence: &r.country_of_residence,
            age_years: r.age_years,
            sex: r.sex,
            abo: r.abo,
            rh: r.rh,
            hla: r.hla.as_ref(),
        },
    )
}

/// The longest licence list read: every organ twice over. A longer one is
/// refused as a whole rather than with one violation per entry.
const MAX_LICENSED_ORGANS: usize = 16;

/// Proto to domain: a registry entry, or every reason it is not one.
pub fn clinic(raw: Option<&pb::Clinic>) -> Result<Clinic, Violations> {
    let mut v = Violations::default();
    let Some(c) = raw else {
        v.missing("clinic");
        return Err(v);
    };
    let clinic_id = check_id(&mut v, "clinic.clinic_id", &c.clinic_id);
    let name = check_id(&mut v, "clinic.name", &c.name);
    let country = country(&mut v, "clinic.country", &c.country);
    let mut organs = Vec::new();
    let listed = if c.licensed_organs.len() > MAX_LICENSED_ORGANS {
        v.add(
            "clinic.licensed_organs",
            format!("must list at most {MAX_LICENSED_ORGANS} organs"),
        );
        &[][..]
    } else {
        &c.licensed_organs[..]
    };
    for (i, raw) in listed.iter().enumerate() {
        if let Some(o) = required::<Organ>(&mut v, &format!("clinic.licensed_organs[{i}]"), *raw) {
            organs.push(o);
        }
    }
    // A licence is a set of organs: one order, no repeats.
    organs.sort_unstable();
    organs.dedup();
    let from = instant(
        &mut v,
        "clinic.licence_valid_from",
        c.licence_valid_from.as_ref(),
    );
    if c.licence_valid_from.is_none() {
        v.missing("clinic.licence_valid_from");
    }
    let until = instant(
        &mut v,
        "clinic.licence_valid_until",
        c.licence_valid_until.as_ref(),
    );
    if let (Some(from), Some(until)) = (from, until) {
        if until <= from {
            v.add(
                "clinic.licence_valid_until",
                "must be after licence_valid_from",
            );
        }
    }
    let status = required::<ClinicStatus>(&mut v, "clinic.status", c.status);
    let effective = instant(
        &mut v,
        "clinic.status_effective_from",
        c.status_effective_from.as_ref(),
    );
    if matches!(
        status,
        Some(ClinicStatus::Suspended | ClinicStatus::Revoked)
    ) && effective.is_none()
    {
        v.add(
            "clinic.status_effective_from",
            "is required for SUSPENDED and REVOKED",
        );
    }
    let build = || -> Option<Clinic> {
        Some(Clinic {
            clinic_id: clinic_id?,
            name: name?,
            country: country?,
            licensed_organs: organs,
            licence_valid_from: from?,
            licence_valid_until: until,
            status: status?,
            status_effective_from: if status == Some(ClinicStatus::Active) {
                None
            } else {
                effective
            },
        })
    };
    match build() {
        Some(c) if v.is_empty() => Ok(c),
        _ => Err(v),
    }
}

/// Domain to proto: a timestamp.
pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// Domain to proto: a registry entry version.
pub fn clinic_to_proto(c: &ClinicVersion) -> pb::Clinic {
    pb::Clinic {
        clinic_id: c.clinic.clinic_id.clone(),
        name: c.clinic.name.clone(),
        country: c.clinic.country.to_string(),
        licensed_organs: c
            .clinic
            .licensed_organs
            .iter()
            .map(|o| o.to_proto())
            .collect(),
        licence_valid_from: Some(timestamp(c.clinic.licence_valid_from)),
        licence_valid_until: c.clinic.licence_valid_until.map(timestamp),
        status: c.clinic.status.to_proto(),
        status_effective_from: c.clinic.status_effective_from.map(timestamp),
        version: c.version,
        recorded_at: Some(timestamp(c.recorded_at)),
    }
}

/// Domain to proto: a flag.
pub fn flag_to_proto(f: FlagView) -> pb::Flag {
    pb::Flag {
        flag_id: f.id.to_string(),
        record_id: f.record_id.0.to_string(),
        rule_id: f.rule_id,
        rule_version: f.rule_version,
        severity: f.severity.to_proto(),
        explanation: f.explanation,
        evidence_record_ids: f.evidence.iter().map(|r| r.0.to_string()).collect(),
        status: f.status.to_proto(),
        etag: f.revision.to_string(),
        raised_at: Some(timestamp(f.raised_at)),
        updated_at: Some(timestamp(f.updated_at)),
        hospital_id: f.hospital_id,
        clinic_id: f.clinic_id,
        external_record_id: f.external_record_id,
        record_version: f.record_version,
        cleared_in_record_version: f.cleared_in_version,
        dismissal_proposed_by: f.dismissal_proposed_by.unwrap_or_default(),
    }
}

/// Domain to proto: a triage step.
pub fn event_to_proto(e: &FlagEvent) -> pb::FlagEvent {
    pb::FlagEvent {
        at: Some(timestamp(e.at)),
        actor: e.key_id.clone(),
        from_status: e
            .from
            .map_or(pb::FlagStatus::Unspecified as i32, |f| f.to_proto()),
        to_status: e.to.to_proto(),
        note: e.note.clone(),
        trace_id: e.trace_id.clone().unwrap_or_default(),
        dismissal_proposal: e.kind == StepKind::DismissalProposed,
        step: e.step,
        kind: e.kind.as_str().to_owned(),
        principal: e.principal.clone(),
        own_trace_id: e.own_trace_id.clone().unwrap_or_default(),
        severity: e
            .severity
            .map_or(pb::Severity::Unspecified as i32, |s| s.to_proto()),
        cleared_in_version: e.cleared_in_version.unwrap_or_default(),
    }
}

/// Domain to proto: a stored record, identifiers replaced by fingerprints.
pub fn record_to_proto(view: &RecordView) -> pb::StoredRecord {
    let r: &Record = &view.record;
    let (relation, death_at, death_kind) = match r.donor.kind {
        DonorKind::Living { relation } => (relation.to_proto(), None, 0),
        DonorKind::Deceased {
            death_at,
            death_kind,
        } => (0, Some(timestamp(death_at)), death_kind.to_proto()),
    };
    let d = &r.donor.person;
    pb::StoredRecord {
        record_id: view.id.0.to_string(),
        version: view.version,
        received_at: Some(timestamp(view.received_at)),
        donor_fingerprint: hex::encode(d.identifier.as_bytes()),
        recipient_fingerprint: hex::encode(r.recipient.identifier.as_bytes()),
        record: Some(pb::TransplantRecord {
            external_record_id: r.external_record_id.clone(),
            hospital_id: r.hospital_id.clone(),
            clinic_id: r.clinic_id.clone(),
            procedure_country: r.procedure_country.to_string(),
            organ: r.organ.to_proto(),
            laterality: r.laterality.to_proto(),
            procured_at: Some(timestamp(r.procured_at)),
            transplanted_at: Some(timestamp(r.transplanted_at)),
            cold_ischemia_minutes: r.cold_ischemia_minutes.and_then(|m| i32::try_from(m).ok()),
            machine_perfusion: r.machine_perfusion,
            abo_exception: r.abo_exception.to_proto(),
            donor: Some(pb::Donor {
                identifier: None,
                nationality: d.nationality.to_string(),
                country_of_residence: d.country_of_residence.to_string(),
                age_years: Some(i32::from(d.age_years)),
                sex: d.sex.map_or(0, ProtoEnum::to_proto),
                abo: d.abo.to_proto(),
                rh: d.rh.map_or(0, ProtoEnum::to_proto),
                hla: d.hla.as_ref().map(hla_to_proto),
                donor_type: r.donor.kind.donor_type().to_proto(),
                relation_to_recipient: relation,
                death_at,
                death_kind,
            }),
            recipient: Some(pb::Recipient {
                identifier: None,
                nationality: r.recipient.nationality.to_string(),
                country_of_residence: r.recipient.country_of_residence.to_string(),
                age_years: Some(i32::from(r.recipient.age_years)),
                sex: r.recipient.sex.map_or(0, ProtoEnum::to_proto),
                abo: r.recipient.abo.to_proto(),
                rh: r.recipient.rh.map_or(0, ProtoEnum::to_proto),
                hla: r.recipient.hla.as_ref().map(hla_to_proto),
            }),
        }),
    }
}

fn hla_to_proto(h: &HlaTyping) -> pb::HlaTyping {
    pb::HlaTyping {
        a: h.a.clone(),
        b: h.b.clone(),
        dr: h.dr.clone(),
    }
}
