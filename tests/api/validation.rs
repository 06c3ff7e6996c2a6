//! Tests of validation: what cannot be a record is rejected with
//! INVALID_ARGUMENT and a BadRequest naming every bad field, and nothing is
//! stored; what is possible but suspicious is accepted (and left to the rules).

use chrono::{Duration, Utc};
use tonic::Code;
use tonic_types::StatusExt;
use transplant_audit::wire::pb;

use crate::helpers::*;

type Mutation = Box<dyn Fn(&mut pb::TransplantRecord)>;

/// One way to break a valid record, and the field path it must be reported under.
struct Case {
    name: &'static str,
    mutate: Mutation,
    field: &'static str,
}

fn case(
    name: &'static str,
    field: &'static str,
    mutate: impl Fn(&mut pb::TransplantRecord) + 'static,
) -> Case {
    Case {
        name,
        mutate: Box::new(mutate),
        field,
    }
}

fn donor(r: &mut pb::TransplantRecord) -> &mut pb::Donor {
    r.donor.as_mut().expect("kidney() has a donor")
}

fn recipient(r: &mut pb::TransplantRecord) -> &mut pb::Recipient {
    r.recipient.as_mut().expect("kidney() has a recipient")
}

fn donor_identifier(r: &mut pb::TransplantRecord) -> &mut pb::PersonIdentifier {
    donor(r)
        .identifier
        .as_mut()
        .expect("kidney() has a donor identifier")
}

/// Makes the donor of `r` a valid deceased (brain-dead) donor, dead an hour before procurement.
fn make_deceased(r: &mut pb::TransplantRecord) {
    let d = donor(r);
    d.donor_type = pb::DonorType::Deceased as i32;
    d.relation_to_recipient = 0;
    d.death_at = Some(ts("2025-03-03T07:00:00Z"));
    d.death_kind = pb::DeathKind::Dbd as i32;
}

fn timestamp(at: chrono::DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    }
}

fn hla(a: &[&str], b: &[&str], dr: &[&str]) -> Option<pb::HlaTyping> {
    let v = |x: &[&str]| x.iter().map(|s| (*s).to_owned()).collect();
    Some(pb::HlaTyping {
        a: v(a),
        b: v(b),
        dr: v(dr),
    })
}

/// Rows in the tables a stored record would touch: (records, record_versions, flags).
async fn stored(app: &TestApp) -> (i64, i64, i64) {
    (
        app.count("records").await,
        app.count("record_versions").await,
        app.count("flags").await,
    )
}

/// Submits every case's record to one fresh server; each must be rejected with
/// INVALID_ARGUMENT naming its field, and nothing may be stored. Reports every
/// failing case at once.
async fn assert_all_rejected(cases: Vec<Case>) {
    let app = spawn_app().await;
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let mut record = kidney(&format!("VAL-{i}"));
        (c.mutate)(&mut record);
        match submit(&app, record).await {
            Ok(ack) => failures.push(format!(
                "{}: expected INVALID_ARGUMENT on {}, got an ack with outcome {:?}",
                c.name,
                c.field,
                pb::Outcome::try_from(ack.outcome)
            )),
            Err(status) => {
                let fields = violated_fields(&status);
                if status.code() != Code::InvalidArgument {
                    failures.push(format!(
                        "{}: expected INVALID_ARGUMENT, got {:?}: {}",
                        c.name,
                        status.code(),
                        status.message()
                    ));
                } else if !fields.iter().any(|f| f == c.field) {
                    failures.push(format!(
                        "{}: expected field {} among the violations, got {fields:?} ({})",
                        c.name,
                        c.field,
                        status.message()
                    ));
                }
                let details = status.get_error_details();
                if let Some(bad) = details.bad_request() {
                    if let Some(v) = bad
                        .field_violations
                        .iter()
                        .find(|v| v.description.trim().is_empty())
                    {
                        failures.push(format!(
                            "{}: violation of {} has no description",
                            c.name, v.field
                        ));
                    }
                }
            }
        }
        let after = stored(&app).await;
        if after != (0, 0, 0) {
            failures.push(format!(
                "{}: a rejected record left rows behind (records, record_versions, flags) = {after:?}",
                c.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
}

#[tokio::test]
async fn the_valid_base_record_is_accepted() {
    // Every rejection case below starts from kidney(); it must itself be valid,
    // or the rejections would prove nothing.
    let app = spawn_app().await;
    let ack = submit(&app, kidney("VAL-BASE"))
        .await
        .expect("kidney() must be accepted");
    assert_eq!(ack.outcome, pb::Outcome::Accepted as i32, "ack: {ack:?}");
    assert_eq!(app.count("records").await, 1);
}

#[tokio::test]
async fn impossible_times_are_rejected() {
    let now = Utc::now();
    let tomorrow = timestamp(now + Duration::days(1));
    let in_an_hour = timestamp(now + Duration::hours(1));
    assert_all_rejected(vec![
        case(
            "procurement after transplantation",
            "record.procured_at",
            |r| {
                r.procured_at = Some(ts("2025-03-03T12:00:00Z"));
            },
        ),
        case(
            "procurement one second after transplantation",
            "record.procured_at",
            |r| {
                r.procured_at = Some(ts("2025-03-03T10:00:01Z"));
            },
        ),
        case("transplant tomorrow", "record.transplanted_at", move |r| {
            r.transplanted_at = Some(tomorrow);
        }),
        case(
            "procurement and transplant in an hour",
            "record.transplanted_at",
            move |r| {
                r.procured_at = Some(in_an_hour);
                r.transplanted_at = Some(in_an_hour);
            },
        ),
        case(
            "procurement in the future",
            "record.procured_at",
            move |r| {
                r.procured_at = Some(in_an_hour);
                r.transplanted_at = Some(in_an_hour);
            },
        ),
        case("transplant before 1900", "record.transplanted_at", |r| {
            r.procured_at = Some(ts("1899-12-31T08:00:00Z"));
            r.transplanted_at = Some(ts("1899-12-31T10:00:00Z"));
        }),
        case("missing procured_at", "record.procured_at", |r| {
            r.procured_at = None
        }),
        case("missing transplanted_at", "record.transplanted_at", |r| {
            r.transplanted_at = None
        }),
        case("timestamp with negative nanos", "record.procured_at", |r| {
            r.procured_at = Some(prost_types::Timestamp {
                nanos: -1,
                ..ts("2025-03-03T08:00:00Z")
            });
        }),
        case(
            "timestamp with a second's worth of nanos",
            "record.transplanted_at",
            |r| {
                r.transplanted_at = Some(prost_types::Timestamp {
                    nanos: 1_000_000_000,
                    ..ts("2025-03-03T10:00:00Z")
                });
            },
        ),
        case(
            "deceased donor without a death time",
            "record.donor.death_at",
            |r| {
                make_deceased(r);
                donor(r).death_at = None;
            },
        ),
        case(
            "deceased donor dead in the future",
            "record.donor.death_at",
            move |r| {
                make_deceased(r);
                donor(r).death_at = Some(tomorrow);
            },
        ),
        case(
            "living donor with a death time",
            "record.donor.death_at",
            |r| {
                donor(r).death_at = Some(ts("2025-03-03T07:00:00Z"));
            },
        ),
        case(
            "negative cold ischemia",
            "record.cold_ischemia_minutes",
            |r| {
                r.cold_ischemia_minutes = Some(-1);
            },
        ),
        case(
            "cold ischemia beyond 30 days",
            "record.cold_ischemia_minutes",
            |r| {
                r.cold_ischemia_minutes = Some(60 * 24 * 30 + 1);
            },
        ),
    ])
    .await;
}

#[tokio::test]
async fn ages_outside_0_to_120_are_rejected() {
    assert_all_rejected(vec![
        case("donor aged 121", "record.donor.age_years", |r| {
            donor(r).age_years = Some(121)
        }),
        case("donor aged -1", "record.donor.age_years", |r| {
            donor(r).age_years = Some(-1)
        }),
        case("donor aged i32::MAX", "record.donor.age_years", |r| {
            donor(r).age_years = Some(i32::MAX)
        }),
        case("recipient aged 121", "record.recipient.age_years", |r| {
            recipient(r).age_years = Some(121)
        }),
        case("recipient aged -1", "record.recipient.age_years", |r| {
            recipient(r).age_years = Some(-1)
        }),
        case("donor age missing", "record.donor.age_years", |r| {
            donor(r).age_years = None
        }),
        case("recipient age missing", "record.recipient.age_years", |r| {
            recipient(r).age_years = None
        }),
    ])
    .await;
}

#[tokio::test]
async fn paired_organs_without_a_side_are_rejected() {
    assert_all_rejected(vec![
        case("kidney, laterality unspecified", "record.laterality", |r| {
            r.laterality = 0
        }),
        case(
            "kidney, laterality NOT_APPLICABLE",
            "record.laterality",
            |r| {
                r.laterality = pb::Laterality::NotApplicable as i32;
            },
        ),
        case("lung, laterality unspecified", "record.laterality", |r| {
            r.organ = pb::Organ::Lung as i32;
            r.laterality = 0;
        }),
        case(
            "lung, laterality NOT_APPLICABLE",
            "record.laterality",
            |r| {
                r.organ = pb::Organ::Lung as i32;
                r.laterality = pb::Laterality::NotApplicable as i32;
            },
        ),
        case("heart, laterality BOTH", "record.laterality", |r| {
            r.organ = pb::Organ::Heart as i32;
            r.laterality = pb::Laterality::Both as i32;
        }),
    ])
    .await;
}

#[tokio::test]
async fn unknown_enum_values_are_rejected() {
    assert_all_rejected(vec![
        case("organ 99", "record.organ", |r| r.organ = 99),
        case("organ -1", "record.organ", |r| r.organ = -1),
        case("laterality 99", "record.laterality", |r| r.laterality = 99),
        case("abo_exception 99", "record.abo_exception", |r| {
            r.abo_exception = 99
        }),
        case("donor abo 99", "record.donor.abo", |r| donor(r).abo = 99),
        case("recipient abo 99", "record.recipient.abo", |r| {
            recipient(r).abo = 99
        }),
        case("donor rh 99", "record.donor.rh", |r| donor(r).rh = 99),
        case("recipient sex 99", "record.recipient.sex", |r| {
            recipient(r).sex = 99
        }),
        case("donor_type 99", "record.donor.donor_type", |r| {
            donor(r).donor_type = 99
        }),
        case("relation 99", "record.donor.relation_to_recipient", |r| {
            donor(r).relation_to_recipient = 99;
        }),
        case("death_kind 99", "record.donor.death_kind", |r| {
            make_deceased(r);
            donor(r).death_kind = 99;
        }),
        case(
            "identifier scheme 99",
            "record.donor.identifier.scheme",
            |r| {
                donor_identifier(r).scheme = 99;
            },
        ),
    ])
    .await;
}

#[tokio::test]
async fn malformed_countries_are_rejected() {
    assert_all_rejected(vec![
        case("procedure country XX", "record.procedure_country", |r| {
            r.procedure_country = "XX".into()
        }),
        case("procedure country DEU", "record.procedure_country", |r| {
            r.procedure_country = "DEU".into()
        }),
        case("procedure country empty", "record.procedure_country", |r| {
            r.procedure_country = String::new()
        }),
        case("procedure country D", "record.procedure_country", |r| {
            r.procedure_country = "D".into()
        }),
        case("procedure country D1", "record.procedure_country", |r| {
            r.procedure_country = "D1".into()
        }),
        case(
            "procedure country non-ASCII",
            "record.procedure_country",
            |r| {
                r.procedure_country = "ÄÖ".into();
            },
        ),
        case("donor nationality XX", "record.donor.nationality", |r| {
            donor(r).nationality = "XX".into()
        }),
        case(
            "donor residence DEU",
            "record.donor.country_of_residence",
            |r| {
                donor(r).country_of_residence = "DEU".into();
            },
        ),
        case(
            "recipient nationality empty",
            "record.recipient.nationality",
            |r| {
                recipient(r).nationality = String::new();
            },
        ),
        case(
            "recipient residence XX",
            "record.recipient.country_of_residence",
            |r| {
                recipient(r).country_of_residence = "XX".into();
            },
        ),
        case(
            "identifier issuing country ZZ",
            "record.donor.identifier.issuing_country",
            |r| {
                donor_identifier(r).issuing_country = "ZZ".into();
            },
        ),
        case(
            "identifier issuing country empty",
            "record.donor.identifier.issuing_country",
            |r| {
                donor_identifier(r).issuing_country = String::new();
            },
        ),
    ])
    .await;
}

#[tokio::test]
async fn missing_required_fields_are_rejected() {
    assert_all_rejected(vec![
        case("no external_record_id", "record.external_record_id", |r| {
            r.external_record_id = String::new()
        }),
        case("no hospital_id", "record.hospital_id", |r| {
            r.hospital_id = String::new()
        }),
        case("no clinic_id", "record.clinic_id", |r| {
            r.clinic_id = String::new()
        }),
        case("no organ", "record.organ", |r| r.organ = 0),
        case("no donor", "record.donor", |r| r.donor = None),
        case("no recipient", "record.recipient", |r| r.recipient = None),
        case("no donor identifier", "record.donor.identifier", |r| {
            donor(r).identifier = None
        }),
        case(
            "no recipient identifier",
            "record.recipient.identifier",
            |r| recipient(r).identifier = None,
        ),
        case(
            "no identifier scheme",
            "record.donor.identifier.scheme",
            |r| donor_identifier(r).scheme = 0,
        ),
        case(
            "no identifier value",
            "record.donor.identifier.value",
            |r| {
                donor_identifier(r).value = String::new();
            },
        ),
        case("no donor abo", "record.donor.abo", |r| donor(r).abo = 0),
        case("no recipient abo", "record.recipient.abo", |r| {
            recipient(r).abo = 0
        }),
        case("no donor_type", "record.donor.donor_type", |r| {
            donor(r).donor_type = 0
        }),
        case(
            "living donor without a relation",
            "record.donor.relation_to_recipient",
            |r| {
                donor(r).relation_to_recipient = 0;
            },
        ),
        case(
            "deceased donor without death_kind",
            "record.donor.death_kind",
            |r| {
                make_deceased(r);
                donor(r).death_kind = 0;
            },
        ),
        case(
            "deceased donor with a relation",
            "record.donor.relation_to_recipient",
            |r| {
                make_deceased(r);
                donor(r).relation_to_recipient = pb::DonorRelation::Sibling as i32;
            },
        ),
    ])
    .await;
}

#[tokio::test]
async fn a_request_without_a_record_is_rejected() {
    let app = spawn_app().await;
    let status = app
        .ingest
        .clone()
        .submit_record(pb::SubmitRecordRequest { record: None })
        .await
        .expect_err("a request without a record must be rejected");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), ["record"], "{status:?}");
    assert_eq!(stored(&app).await, (0, 0, 0));
}

#[tokio::test]
async fn bad_identifiers_and_hla_are_rejected() {
    assert_all_rejected(vec![
        case(
            "identifier with a quote",
            "record.donor.identifier.value",
            |r| {
                donor_identifier(r).value = "AB'; DROP TABLE records; --".into();
            },
        ),
        case(
            "identifier with a slash",
            "record.recipient.identifier.value",
            |r| {
                recipient(r).identifier.as_mut().expect("identifier").value = "12/34".into();
            },
        ),
        case(
            "identifier of spaces and dashes only",
            "record.donor.identifier.value",
            |r| {
                donor_identifier(r).value = " - - ".into();
            },
        ),
        case(
            "identifier with a non-ASCII letter",
            "record.donor.identifier.value",
            |r| {
                donor_identifier(r).value = "MÜLLER1".into();
            },
        ),
        case(
            "identifier of 65 characters",
            "record.donor.identifier.value",
            |r| {
                donor_identifier(r).value = "A".repeat(65);
            },
        ),
        case("HLA-A antigen of locus B", "record.donor.hla.a", |r| {
            donor(r).hla = hla(&["B7"], &[], &[])
        }),
        case(
            "HLA-B antigen without digits",
            "record.recipient.hla.b",
            |r| {
                recipient(r).hla = hla(&[], &["B"], &[]);
            },
        ),
        case("HLA-DR antigen with a quote", "record.donor.hla.dr", |r| {
            donor(r).hla = hla(&[], &[], &["DR4'"])
        }),
        case(
            "HLA-DR antigen of five digits",
            "record.recipient.hla.dr",
            |r| {
                recipient(r).hla = hla(&[], &[], &["DR12345"]);
            },
        ),
        case("three HLA-B antigens", "record.donor.hla.b", |r| {
            donor(r).hla = hla(&["A2"], &["B7", "B8", "B44"], &["DR4"]);
        }),
    ])
    .await;
}

#[tokio::test]
async fn bad_ids_are_rejected() {
    // 65 two-byte characters: 65 characters but 130 bytes.
    let wide = "é".repeat(65);
    assert_all_rejected(vec![
        case(
            "external_record_id of 129 bytes",
            "record.external_record_id",
            |r| {
                r.external_record_id = "x".repeat(129);
            },
        ),
        case("hospital_id of 129 bytes", "record.hospital_id", |r| {
            r.hospital_id = "h".repeat(129)
        }),
        case("clinic_id of 129 bytes", "record.clinic_id", |r| {
            r.clinic_id = "c".repeat(129)
        }),
        case(
            "clinic_id of 65 characters, 130 bytes",
            "record.clinic_id",
            move |r| r.clinic_id = wide.clone(),
        ),
        case(
            "external_record_id with a leading space",
            "record.external_record_id",
            |r| {
                r.external_record_id = " R-1".into();
            },
        ),
        case(
            "hospital_id with a control character",
            "record.hospital_id",
            |r| {
                r.hospital_id = "H-DE\u{0}-001".into();
            },
        ),
    ])
    .await;
}

#[tokio::test]
async fn every_bad_field_is_reported_in_one_status() {
    let app = spawn_app().await;
    let mut r = kidney("VAL-MANY");
    r.hospital_id = "h".repeat(129);
    r.procedure_country = "XX".into();
    r.organ = 99;
    r.procured_at = Some(ts("2025-03-03T12:00:00Z"));
    r.cold_ischemia_minutes = Some(-5);
    {
        let d = donor(&mut r);
        d.age_years = Some(121);
        d.nationality = "DEU".into();
        d.relation_to_recipient = 0;
        d.hla = hla(&["X1"], &[], &[]);
        d.identifier.as_mut().expect("identifier").value = "AB'1".into();
    }
    {
        let p = recipient(&mut r);
        p.abo = 0;
        p.age_years = Some(-1);
        p.country_of_residence = String::new();
        p.identifier = None;
    }
    let expected = [
        "record.hospital_id",
        "record.procedure_country",
        "record.organ",
        "record.procured_at",
        "record.cold_ischemia_minutes",
        "record.donor.age_years",
        "record.donor.nationality",
        "record.donor.relation_to_recipient",
        "record.donor.hla.a",
        "record.donor.identifier.value",
        "record.recipient.abo",
        "record.recipient.age_years",
        "record.recipient.country_of_residence",
        "record.recipient.identifier",
    ];

    let status = submit(&app, r)
        .await
        .expect_err("a record with 14 bad fields must be rejected");

    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields = violated_fields(&status);
    let missing: Vec<_> = expected
        .iter()
        .filter(|e| !fields.iter().any(|f| f == *e))
        .collect();
    assert!(
        missing.is_empty(),
        "fields not reported: {missing:?}; reported: {fields:?}"
    );
    let details = status.get_error_details();
    let bad = details.bad_request().expect("a BadRequest detail");
    assert!(
        bad.field_violations
            .iter()
            .all(|v| !v.description.trim().is_empty()),
        "every violation says what is wrong: {bad:?}"
    );
    assert_eq!(
        stored(&app).await,
        (0, 0, 0),
        "nothing is stored for a rejected record"
    );
}

/// Every flag raised on the record with this external id.
async fn rules_raised(app: &TestApp, external_record_id: &str) -> Vec<String> {
    all_flags(app, pb::ListFlagsRequest::default())
        .await
        .into_iter()
        .filter(|f| f.external_record_id == external_record_id)
        .map(|f| f.rule_id)
        .collect()
}

#[tokio::test]
async fn possible_but_suspicious_records_are_accepted() {
    let app = spawn_app().await;
    app.registry
        .clone()
        .upsert_clinic(pb::UpsertClinicRequest {
            clinic: Some(clinic("DE-BER-01", "DE")),
        })
        .await
        .expect("register the clinic");
    let now = Utc::now();
    let id128 = "r".repeat(128);
    let mut cases: Vec<(&str, pb::TransplantRecord, Option<&str>)> = Vec::new();

    cases.push((
        "ABO-incompatible pair",
        abo_incompatible("ACC-ABO"),
        Some("ABO_INCOMPATIBLE"),
    ));

    let mut r = kidney("ACC-ISCH-2D");
    r.procured_at = Some(ts("2025-03-01T10:00:00Z"));
    r.cold_ischemia_minutes = Some(2 * 24 * 60);
    cases.push(("kidney after 2 days of cold ischemia", r, None));

    let mut r = kidney("ACC-ISCH-5D");
    r.procured_at = Some(ts("2025-02-26T10:00:00Z"));
    cases.push((
        "kidney after 5 days of cold ischemia",
        r,
        Some("ISCHEMIA_IMPLAUSIBLE"),
    ));

    let mut r = kidney("ACC-AGE-0");
    donor(&mut r).age_years = Some(0);
    recipient(&mut r).age_years = Some(120);
    cases.push((
        "living donor aged 0, recipient aged 120",
        r,
        Some("MINOR_LIVING_DONOR"),
    ));

    let mut r = kidney("ACC-AGE-120");
    donor(&mut r).age_years = Some(120);
    recipient(&mut r).age_years = Some(0);
    cases.push(("donor aged 120, recipient aged 0", r, None));

    let mut r = kidney("ACC-DEATH");
    make_deceased(&mut r);
    donor(&mut r).death_at = Some(ts("2025-03-03T09:00:00Z"));
    cases.push((
        "deceased donor dead after procurement",
        r,
        Some("DEATH_AFTER_PROCUREMENT"),
    ));

    let mut r = kidney("ACC-BOTH");
    r.laterality = pb::Laterality::Both as i32;
    cases.push((
        "living donor of both kidneys",
        r,
        Some("LIVING_DONOR_ORGAN"),
    ));

    let mut r = kidney("ACC-NOW");
    r.procured_at = Some(timestamp(now - Duration::hours(1)));
    r.transplanted_at = Some(timestamp(now));
    cases.push(("transplanted just now", r, None));

    let mut r = kidney("ACC-ZERO");
    r.procured_at = r.transplanted_at;
    r.cold_ischemia_minutes = Some(0);
    cases.push(("procured and transplanted at the same instant", r, None));

    let mut r = kidney(&id128);
    r.hospital_id = "h".repeat(128);
    donor_identifier(&mut r).value = "DONOR128".into();
    recipient(&mut r)
        .identifier
        .as_mut()
        .expect("identifier")
        .value = "RECIPIENT128".into();
    cases.push(("ids of exactly 128 bytes", r, None));

    let mut r = kidney("ACC-HLA");
    donor(&mut r).hla = hla(&["a2", "A24"], &["B44"], &["dr4"]);
    donor_identifier(&mut r).value = "ab 12-34".into();
    cases.push((
        "lower-case HLA and an identifier with spaces and dashes",
        r,
        None,
    ));

    let mut failures = Vec::new();
    for (name, record, rule) in &cases {
        let external_record_id = record.external_record_id.clone();
        match submit(&app, record.clone()).await {
            Ok(ack) if ack.outcome == pb::Outcome::Accepted as i32 => {
                if let Some(rule) = rule {
                    let raised = rules_raised(&app, &external_record_id).await;
                    if !raised.iter().any(|r| r == rule) {
                        failures.push(format!(
                            "{name}: accepted, but {rule} not raised (raised: {raised:?})"
                        ));
                    }
                }
            }
            Ok(ack) => failures.push(format!("{name}: expected ACCEPTED, got {ack:?}")),
            Err(status) => failures.push(format!(
                "{name}: expected ACCEPTED, got {:?}: {} {:?}",
                status.code(),
                status.message(),
                violated_fields(&status)
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
    assert_eq!(
        app.count("records").await,
        cases.len() as i64,
        "one row per accepted record"
    );
}
