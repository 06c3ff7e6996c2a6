//! Property tests over what a hostile client controls: the bytes of a
//! request and every field of a record. Decoding and validation never panic,
//! and a refusal always names fields under the request's own paths.

use chrono::Utc;
use proptest::prelude::*;
use prost::Message;

use super::convert::submission;
use super::pb;
use crate::domain::Violations;
use crate::import::ndjson;

/// Every violation names a field under `record`.
fn named_under_record(v: &Violations) -> bool {
    !v.is_empty()
        && v.0
            .iter()
            .all(|f| f.field == "record" || f.field.starts_with("record."))
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_record_is_converted_or_refused_by_field(record in record()) {
        match submission("record", Some(&record), Utc::now()) {
            Ok(s) => prop_assert_eq!(s.external_record_id, record.external_record_id),
            Err(v) => prop_assert!(named_under_record(&v), "{:?}", v),
        }
    }

    #[test]
    fn any_bytes_decode_and_validate_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(request) = pb::SubmitRecordRequest::decode(bytes.as_slice()) {
            if let Err(v) = submission("record", request.record.as_ref(), Utc::now()) {
                prop_assert!(named_under_record(&v), "{:?}", v);
            }
        }
        let _ = pb::SubmitRecordsRequest::decode(bytes.as_slice());
        let _ = pb::AmendRecordRequest::decode(bytes.as_slice());
        let _ = pb::UpsertClinicRequest::decode(bytes.as_slice());
        let _ = pb::ListFlagsRequest::decode(bytes.as_slice());
        let _ = pb::WatchFlagsRequest::decode(bytes.as_slice());
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
            if let Err(v) = submission("record", request.record.as_ref(), Utc::now()) {
                prop_assert!(named_under_record(&v), "{:?}", v);
            }
        }
    }

    #[test]
    fn any_import_line_is_read_or_refused_by_field(line in proptest::collection::vec(any::<u8>(), 0..256)) {
        let (record, v) = ndjson::parse_line(&line);
        if v.is_empty() {
            // What JSON gave goes on to validation like any request.
            let _ = submission("record", Some(&record), Utc::now());
        } else {
            prop_assert!(named_under_record(&v), "{:?}", v);
        }
    }
}
