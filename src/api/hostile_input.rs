//! Property tests over what a hostile client controls: the bytes of a
//! request and every field of a record, a registry entry or a flag listing.
//! Decoding and validation never panic, a refusal always names fields under
//! the request's own paths, and what is accepted is fit to store.

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use prost::Message;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::page_token::PageTokens;
use super::status::MAX_REPORTED_VIOLATIONS;
use crate::domain::validation::{FUTURE_TOLERANCE, MAX_ID_LEN, earliest_instant};
use crate::domain::{Clinic, DonorKind, Submission, Violations};
use crate::domain::{FingerprintKey, FlagFilter};
use crate::wire::convert::{ProtoEnum, clinic, submission};
use crate::wire::listing::{flag_filter as filter, page_size};
use crate::wire::ndjson;
use crate::wire::pb;

/// Every violation names a field: `root` itself or one under it; and there
/// are no more than a status reports, however large the input.
fn named_under(v: &Violations, root: &str) -> bool {
    !v.is_empty()
        && v.0.len() <= MAX_REPORTED_VIOLATIONS
        && v.0.iter().all(|f| {
            f.field == root
                || f.field
                    .strip_prefix(root)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
}

/// Every violation names a field under `record`.
fn named_under_record(v: &Violations) -> bool {
    named_under(v, "record")
}

/// An id as stored: present, bounded, printable, no surrounding spaces.
fn storable_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.trim() == id && !id.chars().any(char::is_control)
}

/// The instants a `google.protobuf.Timestamp` (and Postgres) can hold.
fn representable(at: DateTime<Utc>) -> bool {
    (-62_135_596_800..=253_402_300_799).contains(&at.timestamp())
}

/// What a record that converted must be: ids fit to store, instants in
/// order inside 1900..now, ages within 0–120.
fn fit_to_store(s: &Submission, now: DateTime<Utc>) -> Result<(), String> {
    let plausible = |at: DateTime<Utc>| at >= earliest_instant() && at <= now + FUTURE_TOLERANCE;
    let ids = [&s.external_record_id, &s.hospital_id, &s.clinic_id];
    if !ids.iter().all(|id| storable_id(id)) {
        return Err(format!("ids {ids:?}"));
    }
    if !(plausible(s.procured_at) && plausible(s.transplanted_at))
        || s.procured_at > s.transplanted_at
    {
        return Err(format!("times {} {}", s.procured_at, s.transplanted_at));
    }
    if let DonorKind::Deceased { death_at, .. } = s.donor.kind {
        if !plausible(death_at) {
            return Err(format!("death {death_at}"));
        }
    }
    if s.donor.person.age_years > 120 || s.recipient.age_years > 120 {
        return Err("ages".into());
    }
    Ok(())
}

/// What a registry entry that converted must be.
fn clinic_fit_to_store(c: &Clinic) -> bool {
    storable_id(&c.clinic_id)
        && storable_id(&c.name)
        && representable(c.licence_valid_from)
        && c.licence_valid_until
            .is_none_or(|until| representable(until) && until > c.licence_valid_from)
        && c.status_effective_from.is_none_or(representable)
        && c.licensed_organs.windows(2).all(|w| w[0] < w[1])
}

/// A ListFlags request checked as the service checks it: page size,
/// filters, then the page token bound to those filters.
fn list_flags(req: &pb::ListFlagsRequest) -> Result<FlagFilter, Status> {
    page_size(req.page_size).map_err(super::status::invalid)?;
    let filter = filter(req).map_err(super::status::invalid)?;
    let tokens = PageTokens::new(&FingerprintKey::from_bytes(&[7; 32]).expect("a key"));
    tokens.decode("flags", &format!("{filter:?}"), &req.page_token)?;
    Ok(filter)
}

/// The ListFlags fields a refusal may name.
const LIST_FLAGS_FIELDS: [&str; 9] = [
    "status",
    "min_severity",
    "rule_id",
    "clinic_id",
    "hospital_id",
    "raised_after",
    "raised_before",
    "page_size",
    "page_token",
];

/// A refusal of a ListFlags request: INVALID_ARGUMENT naming its fields.
fn list_flags_refusal_is_named(status: &Status) -> bool {
    let named = status
        .get_error_details()
        .bad_request()
        .map(|b| {
            !b.field_violations.is_empty()
                && b.field_violations
                    .iter()
                    .all(|f| LIST_FLAGS_FIELDS.contains(&f.field.as_str()))
        })
        .unwrap_or(false);
    status.code() == Code::InvalidArgument && named
}

/// Whether an accepted listing's instants are ones the database can compare.
fn list_filter_fit(f: &FlagFilter) -> bool {
    f.raised_after.is_none_or(representable) && f.raised_before.is_none_or(representable)
}

/// Converts `record` as every ingest path does and checks the outcome.
fn check_record(record: Option<&pb::TransplantRecord>) -> Result<(), TestCaseError> {
    let now = Utc::now();
    match submission("record", record, now) {
        Ok(s) => {
            let fit = fit_to_store(&s, now);
            prop_assert!(fit.is_ok(), "accepted but {:?}: {:?}", fit, s);
        }
        Err(v) => prop_assert!(named_under_record(&v), "{:?}", v),
    }
    Ok(())
}

/// Converts a registry entry as UpsertClinic does and checks the outcome.
fn check_clinic(raw: Option<&pb::Clinic>) -> Result<(), TestCaseError> {
    match clinic(raw) {
        Ok(c) => prop_assert!(clinic_fit_to_store(&c), "{:?}", c),
        Err(v) => prop_assert!(named_under(&v, "clinic"), "{:?}", v),
    }
    Ok(())
}

/// Checks a listing as ListFlags does and checks the outcome.
fn check_listing(req: &pb::ListFlagsRequest) -> Result<(), TestCaseError> {
    match list_flags(req) {
        Ok(f) => prop_assert!(list_filter_fit(&f), "{:?}", f),
        Err(status) => prop_assert!(list_flags_refusal_is_named(&status), "{:?}", status),
    }
    Ok(())
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[A-Z]{2}",
        "[A-Za-z0-9-]{1,12}",
        any::<String>(),
        ".{0,300}",
        "[\\x00-\\x1f' ;\"\\\\%_]{0,20}",
    ]
}

fn enumeration() -> impl Strategy<Value = i32> {
    prop_oneof![0..12i32, any::<i32>()]
}

fn timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    let seconds = prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        -3_000_000_000_000i64..300_000_000_000,
        1_500_000_000i64..1_800_000_000,
    ];
    let nanos = prop_oneof![
        Just(-1),
        Just(1_000_000_000),
        0..1_000_000_000i32,
        any::<i32>()
    ];
    proptest::option::of(
        (seconds, nanos).prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
    )
}

fn identifier() -> impl Strategy<Value = Option<pb::PersonIdentifier>> {
    proptest::option::of((enumeration(), text(), text()).prop_map(
        |(scheme, issuing_country, value)| pb::PersonIdentifier {
            scheme,
            issuing_country,
            value,
        },
    ))
}

fn hla() -> impl Strategy<Value = Option<pb::HlaTyping>> {
    let alleles = || proptest::collection::vec(text(), 0..4);
    proptest::option::of(
        (alleles(), alleles(), alleles()).prop_map(|(a, b, dr)| pb::HlaTyping { a, b, dr }),
    )
}

prop_compose! {
    fn donor()(
        identifier in identifier(), nationality in text(), residence in text(),
        age_years in proptest::option::of(any::<i32>()), sex in enumeration(),
        abo in enumeration(), rh in enumeration(), hla in hla(), donor_type in enumeration(),
        relation in enumeration(), death_at in timestamp(), death_kind in enumeration(),
    ) -> pb::Donor {
        pb::Donor {
            identifier, nationality, country_of_residence: residence, age_years, sex, abo, rh,
            hla, donor_type, relation_to_recipient: relation, death_at, death_kind,
        }
    }
}

prop_compose! {
    fn recipient()(
        identifier in identifier(), nationality in text(), residence in text(),
        age_years in proptest::option::of(any::<i32>()), sex in enumeration(),
        abo in enumeration(), rh in enumeration(), hla in hla(),
    ) -> pb::Recipient {
        pb::Recipient {
            identifier, nationality, country_of_residence: residence, age_years, sex, abo, rh, hla,
        }
    }
}

prop_compose! {
    fn record()(
        ids in (text(), text(), text(), text()),
        organ in enumeration(), laterality in enumeration(),
        procured_at in timestamp(), transplanted_at in timestamp(),
        cold in proptest::option::of(any::<i32>()), perfusion in any::<bool>(),
        donor in proptest::option::of(donor().boxed()),
        recipient in proptest::option::of(recipient().boxed()),
        abo_exception in enumeration(),
    ) -> pb::TransplantRecord {
        let (external_record_id, hospital_id, clinic_id, procedure_country) = ids;
        pb::TransplantRecord {
            external_record_id, hospital_id, clinic_id, procedure_country, organ, laterality,
            procured_at, transplanted_at, cold_ischemia_minutes: cold,
            machine_perfusion: perfusion, donor, recipient, abo_exception,
        }
    }
}

/// Seconds from 1900-01-01 to about a week ago: instants a record may hold.
fn plausible_seconds() -> impl Strategy<Value = i64> {
    let week_ago = Utc::now().timestamp() - 7 * 86_400;
    -2_208_988_800i64 + 3 * 86_400..week_ago
}

fn valid_country() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "DE", "fr", "TR", "in", "PK", "US", "EG", "MD", "Ng", "BR",
    ])
    .prop_map(str::to_owned)
}

fn valid_id() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9]",
        "[A-Za-z0-9][A-Za-z0-9 ._/#é中';\\\\-]{0,40}[A-Za-z0-9]"
    ]
}

fn valid_identifier() -> impl Strategy<Value = Option<pb::PersonIdentifier>> {
    (1..=3i32, valid_country(), "[A-Za-z0-9][A-Za-z0-9 -]{0,40}").prop_map(
        |(scheme, issuing_country, value)| {
            Some(pb::PersonIdentifier {
                scheme,
                issuing_country,
                value,
            })
        },
    )
}

fn valid_hla() -> impl Strategy<Value = Option<pb::HlaTyping>> {
    let locus = |name: &'static str| {
        proptest::collection::vec(
            "[0-9]{1,4}".prop_map(move |digits| format!("{name}{digits}")),
            0..=2,
        )
    };
    proptest::option::of(
        (locus("A"), locus("b"), locus("DR")).prop_map(|(a, b, dr)| pb::HlaTyping { a, b, dr }),
    )
}

prop_compose! {
    fn valid_person()(
        identifier in valid_identifier(), nationality in valid_country(),
        residence in valid_country(), age in 0..=120i32, sex in 0..=3i32,
        abo in 1..=4i32, rh in 0..=2i32, hla in valid_hla(),
    ) -> pb::Recipient {
        pb::Recipient {
            identifier, nationality, country_of_residence: residence, age_years: Some(age),
            sex, abo, rh, hla,
        }
    }
}

prop_compose! {
    /// A record the service must accept: every field within its rules.
    fn valid_record()(
        ids in (valid_id(), valid_id(), valid_id()), country in valid_country(),
        organ in 1..=8i32, side in 0..4usize,
        procured in plausible_seconds(), took in 0..3 * 86_400i64,
        nanos in (0..1_000_000_000i32, 0..1_000_000_000i32),
        cold in proptest::option::of(0..=43_200i32), perfusion in any::<bool>(),
        donor in valid_person(), recipient in valid_person(),
        living in any::<bool>(), relation in 1..=9i32,
        died_before in 0..2 * 86_400i64, death_kind in 1..=2i32,
        abo_exception in 0..=4i32,
    ) -> pb::TransplantRecord {
        let paired = organ == pb::Organ::Kidney as i32 || organ == pb::Organ::Lung as i32;
        let laterality = if paired {
            [1, 2, 3, 1][side]
        } else {
            [0, 1, 2, 4][side]
        };
        let at = |seconds: i64, nanos: i32| Some(prost_types::Timestamp { seconds, nanos });
        let (external_record_id, hospital_id, clinic_id) = ids;
        let donor = pb::Donor {
            identifier: donor.identifier, nationality: donor.nationality,
            country_of_residence: donor.country_of_residence, age_years: donor.age_years,
            sex: donor.sex, abo: donor.abo, rh: donor.rh, hla: donor.hla,
            donor_type: if living { 1 } else { 2 },
            relation_to_recipient: if living { relation } else { 0 },
            death_at: if living { None } else { at(procured - died_before, 0) },
            death_kind: if living { 0 } else { death_kind },
        };
        pb::TransplantRecord {
            external_record_id, hospital_id, clinic_id, procedure_country: country, organ,
            laterality, procured_at: at(procured, nanos.0.min(nanos.1)),
            transplanted_at: at(procured + took, nanos.0.max(nanos.1)),
            cold_ischemia_minutes: cold, machine_perfusion: perfusion, donor: Some(donor),
            recipient: Some(recipient), abo_exception,
        }
    }
}

/// Mostly a well-formed value, sometimes anything: so that one bad field is
/// often the only one, and what decides the outcome.
fn mostly<T: std::fmt::Debug>(
    good: impl Strategy<Value = T> + 'static,
    any: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    prop_oneof![3 => good, 1 => any].boxed()
}

/// A timestamp that is set, from the whole range [`timestamp`] draws from.
fn set_timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    timestamp().prop_filter("set", Option::is_some)
}

prop_compose! {
    fn any_clinic()(
        clinic_id in mostly(valid_id(), text()), name in mostly(valid_id(), text()),
        country in mostly(valid_country(), text()),
        organs in prop_oneof![
            proptest::collection::vec(1..=8i32, 0..12),
            proptest::collection::vec(enumeration(), 0..80),
        ],
        from in mostly(set_timestamp(), timestamp()), until in timestamp(),
        status in mostly(1..=3i32, enumeration()), effective in timestamp(),
    ) -> pb::Clinic {
        pb::Clinic {
            clinic_id, name, country, licensed_organs: organs, licence_valid_from: from,
            licence_valid_until: until, status, status_effective_from: effective,
            ..pb::Clinic::default()
        }
    }
}

prop_compose! {
    fn any_listing()(
        status in mostly(0..=4i32, enumeration()), min_severity in mostly(0..=4i32, enumeration()),
        rule_id in mostly(prop::sample::select(vec!["", "ABO_INCOMPATIBLE"]).prop_map(str::to_owned), text()),
        clinic_id in text(), hospital_id in text(),
        after in timestamp(), before in timestamp(),
        page_size in mostly(0..600i32, any::<i32>()),
        page_token in mostly(Just(String::new()), prop_oneof![text(), "[A-Za-z0-9_-]{0,60}"]),
    ) -> pb::ListFlagsRequest {
        pb::ListFlagsRequest {
            status, min_severity, rule_id, clinic_id, hospital_id, raised_after: after,
            raised_before: before, page_size, page_token,
        }
    }
}

#[test]
fn the_timestamp_range_ends_where_the_proto_says() {
    let at = |seconds: i64, nanos: i32| prost_types::Timestamp { seconds, nanos };
    for (ts, ok) in [
        (at(-62_135_596_800, 0), true), // 0001-01-01T00:00:00Z
        (at(-62_135_596_801, 999_999_999), false),
        (at(253_402_300_799, 999_999_999), true), // 9999-12-31T23:59:59.999999999Z
        (at(253_402_300_800, 0), false),
        (at(-3_000_000_000_000, 0), false), // chrono can, Postgres cannot
        (at(0, 1_000_000_000), false),
        (at(0, -1), false),
    ] {
        let mut v = Violations::default();
        let parsed = crate::wire::convert::instant(&mut v, "at", Some(&ts));
        assert_eq!(parsed.is_some(), ok, "{ts:?}");
        assert_eq!(v.is_empty(), ok, "{ts:?}: {v:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_record_is_converted_or_refused_by_field(record in record()) {
        check_record(Some(&record))?;
    }

    #[test]
    fn valid_records_survive_the_wire_and_convert(record in valid_record()) {
        let bytes = pb::SubmitRecordRequest { record: Some(record.clone()) }.encode_to_vec();
        let decoded = pb::SubmitRecordRequest::decode(bytes.as_slice());
        prop_assert!(decoded.is_ok(), "{:?}", decoded);
        let now = Utc::now();
        let decoded = decoded.ok().and_then(|r| r.record);
        match submission("record", decoded.as_ref(), now) {
            Ok(s) => {
                prop_assert_eq!(&s.external_record_id, &record.external_record_id);
                prop_assert_eq!(s.organ.to_proto(), record.organ);
                prop_assert_eq!(s.procured_at.timestamp(), record.procured_at.map(|t| t.seconds).unwrap_or_default());
                prop_assert_eq!(
                    matches!(s.donor.kind, DonorKind::Living { .. }),
                    record.donor.as_ref().is_some_and(|d| d.donor_type == 1)
                );
                prop_assert_eq!(fit_to_store(&s, now), Ok(()));
            }
            Err(v) => prop_assert!(false, "a valid record was refused: {:?}\n{:?}", v, record),
        }
    }

    #[test]
    fn any_clinic_is_converted_or_refused_by_field(raw in proptest::option::of(any_clinic())) {
        check_clinic(raw.as_ref())?;
    }

    #[test]
    fn any_flag_listing_is_read_or_refused_by_field(req in any_listing()) {
        check_listing(&req)?;
    }

    #[test]
    fn any_bytes_decode_and_validate_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(request) = pb::SubmitRecordRequest::decode(bytes.as_slice()) {
            check_record(request.record.as_ref())?;
        }
        if let Ok(request) = pb::SubmitRecordsRequest::decode(bytes.as_slice()) {
            check_record(request.record.as_ref())?;
        }
        if let Ok(request) = pb::AmendRecordRequest::decode(bytes.as_slice()) {
            check_record(request.record.as_ref())?;
        }
        if let Ok(request) = pb::UpsertClinicRequest::decode(bytes.as_slice()) {
            check_clinic(request.clinic.as_ref())?;
        }
        if let Ok(request) = pb::ListFlagsRequest::decode(bytes.as_slice()) {
            check_listing(&request)?;
        }
        let _ = pb::WatchFlagsRequest::decode(bytes.as_slice());
        if let Ok(request) = pb::SearchRecordsRequest::decode(bytes.as_slice()) {
            if let Err(v) = crate::wire::investigation::record_filter(&request) {
                prop_assert!(!v.is_empty());
            }
        }
        if let Ok(request) = pb::GetNetworkRequest::decode(bytes.as_slice()) {
            if let Err(v) = crate::wire::investigation::network_request(&request) {
                prop_assert!(!v.is_empty());
            }
        }
        if let Ok(request) = pb::ListAccessLogRequest::decode(bytes.as_slice()) {
            if let Err(v) = crate::wire::investigation::access_filter(&request) {
                prop_assert!(!v.is_empty());
            }
        }
    }

    #[test]
    fn mutated_valid_requests_decode_and_validate_without_panic(
        record in record().boxed(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = pb::SubmitRecordRequest { record: Some(record) }.encode_to_vec();
        for (at, byte) in flips {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
        }
        if let Ok(request) = pb::SubmitRecordRequest::decode(bytes.as_slice()) {
            check_record(request.record.as_ref())?;
        }
    }

    #[test]
    fn any_import_line_is_read_or_refused_by_field(line in proptest::collection::vec(any::<u8>(), 0..256)) {
        let (record, v) = ndjson::parse_line(&line);
        if v.is_empty() {
            // What JSON gave goes on to validation like any request.
            check_record(Some(&record))?;
        } else {
            prop_assert!(named_under_record(&v), "{:?}", v);
        }
    }
}
