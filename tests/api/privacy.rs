//! Tests of privacy: person identifiers are never stored, only keyed
//! fingerprints, and the same person gets the same fingerprint everywhere.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tonic::Code;

use transplant_audit::domain::{FingerprintKey, IdentifierScheme, PersonIdentifier};
use transplant_audit::wire::pb;

use crate::helpers::*;

const CLINIC: &str = "DE-BER-01";

async fn app_with_clinic() -> TestApp {
    let app = spawn_app().await;
    app.registry
        .clone()
        .upsert_clinic(pb::UpsertClinicRequest {
            clinic: Some(clinic(CLINIC, "DE")),
        })
        .await
        .expect("upsert clinic");
    app
}

fn with_ids(
    mut record: pb::TransplantRecord,
    donor: &str,
    recipient: &str,
) -> pb::TransplantRecord {
    let d = record
        .donor
        .as_mut()
        .and_then(|d| d.identifier.as_mut())
        .expect("donor identifier");
    d.value = donor.into();
    let r = record
        .recipient
        .as_mut()
        .and_then(|r| r.identifier.as_mut())
        .expect("recipient identifier");
    r.value = recipient.into();
    record
}

async fn accepted(app: &TestApp, record: pb::TransplantRecord) -> String {
    let ext = record.external_record_id.clone();
    let ack = submit(app, record)
        .await
        .unwrap_or_else(|s| panic!("submitting {ext}: {s:?}"));
    assert_eq!(ack.outcome, pb::Outcome::Accepted as i32, "{ext}: {ack:?}");
    ack.record_id
}

/// Upper case, without spaces or dashes: the service's normal form.
fn normalised(value: &str) -> String {
    value
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '\t'))
        .collect::<String>()
        .to_ascii_uppercase()
}

/// Every way a value could sit in a dump: as sent, normalised, in any case, hex
/// (how bytea prints) and base64. All but base64 are searched case-insensitively.
fn needles(value: &str) -> (Vec<String>, Vec<String>) {
    let n = normalised(value);
    let folded = vec![
        value.to_lowercase(),
        n.to_lowercase(),
        value.replace('-', "").to_lowercase(),
        value.replace(' ', "").to_lowercase(),
        hex::encode(value.as_bytes()),
        hex::encode(n.as_bytes()),
        hex::encode(n.to_lowercase().as_bytes()),
    ];
    let exact = vec![
        STANDARD.encode(value.as_bytes()),
        STANDARD.encode(n.as_bytes()),
    ];
    (folded, exact)
}

/// Every row of every table of the public schema, as JSON text.
async fn dump(app: &TestApp) -> (String, Vec<String>) {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT table_name::text FROM information_schema.columns
         WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .expect("tables");
    let mut text = String::new();
    for table in &tables {
        let sql = format!(
            "SELECT coalesce(string_agg(row_to_json(t)::text, E'\\n'), '') FROM public.\"{table}\" t"
        );
        let rows: String = sqlx::query_scalar(&sql)
            .fetch_one(&app.pool)
            .await
            .expect("dump table");
        text.push_str(&format!("== {table}\n{rows}\n"));
    }
    (text, tables)
}

fn assert_absent(haystack: &str, values: &[&str], what: &str) {
    let lower = haystack.to_lowercase();
    for value in values {
        let (folded, exact) = needles(value);
        for needle in folded {
            assert!(
                !lower.contains(&needle),
                "{what} contains identifier {value:?} as {needle:?}"
            );
        }
        for needle in exact {
            assert!(
                !haystack.contains(&needle),
                "{what} contains identifier {value:?} as {needle:?}"
            );
        }
    }
}

async fn case_of(app: &TestApp, record_id: &str) -> pb::GetFlagResponse {
    let flag = all_flags(app, pb::ListFlagsRequest::default())
        .await
        .into_iter()
        .find(|f| f.record_id == record_id)
        .unwrap_or_else(|| panic!("record {record_id} has no flag"));
    app.audit
        .clone()
        .get_flag(pb::GetFlagRequest {
            flag_id: flag.flag_id,
        })
        .await
        .expect("get flag")
        .into_inner()
}

#[tokio::test]
async fn identifiers_are_stored_nowhere() {
    let app = app_with_clinic().await;
    const SUBMITTED_DONOR: &str = "zqxj-4471-priv";
    const SUBMITTED_RECIPIENT: &str = "Mkvt 9035-Hidn";
    const AMENDED_DONOR: &str = "Plok-2210-AMND";
    const AMENDED_RECIPIENT: &str = "qazw 3377 amnd";
    const STREAM_DONORS: [&str; 2] = ["wxyz-6633-STRM", "yupq 7741 strm"];
    const STREAM_RECIPIENTS: [&str; 2] = ["RTGH-5150-strm", "Lkjh-8264-Strm"];
    const REJECTED: &str = "bnmv-0042-rjct";
    const CONFLICT: &str = "Cvbn-5519-Cnfl";
    const BAD_CHARACTER: &str = "Hjkl-4410-B@d";

    // SubmitRecord, flagged so that flags and explanations exist too.
    let first = accepted(
        &app,
        with_ids(
            abo_incompatible("PRIV-1"),
            SUBMITTED_DONOR,
            SUBMITTED_RECIPIENT,
        ),
    )
    .await;

    // AmendRecord with new identifiers.
    let amended = with_ids(abo_incompatible("PRIV-1"), AMENDED_DONOR, AMENDED_RECIPIENT);
    let ack = app
        .ingest
        .clone()
        .amend_record(pb::AmendRecordRequest {
            record: Some(amended),
            reason: "identifier typo".into(),
        })
        .await
        .expect("amend")
        .into_inner()
        .ack
        .expect("ack");
    assert_eq!(
        (ack.record_id.as_str(), ack.version),
        (first.as_str(), 2),
        "amended in place: {ack:?}"
    );

    // SubmitRecords: two good records and one rejected one.
    let mut rejected = with_ids(kidney("PRIV-REJECTED"), REJECTED, REJECTED);
    rejected.recipient.as_mut().expect("recipient").age_years = Some(150);
    let stream = vec![
        with_ids(
            abo_incompatible("PRIV-S1"),
            STREAM_DONORS[0],
            STREAM_RECIPIENTS[0],
        ),
        rejected,
        with_ids(kidney("PRIV-S2"), STREAM_DONORS[1], STREAM_RECIPIENTS[1]),
    ];
    let requests: Vec<pb::SubmitRecordsRequest> = stream
        .into_iter()
        .map(|r| pb::SubmitRecordsRequest { record: Some(r) })
        .collect();
    let mut acks = app
        .ingest
        .clone()
        .submit_records(futures::stream::iter(requests))
        .await
        .expect("submit records")
        .into_inner();
    let mut outcomes = Vec::new();
    while let Some(response) = acks.message().await.expect("ack stream") {
        let ack = response.ack.expect("ack");
        assert_absent(&format!("{ack:?}"), &[REJECTED], "a stream acknowledgement");
        outcomes.push(ack.outcome);
    }
    let want = [
        pb::Outcome::Accepted,
        pb::Outcome::Rejected,
        pb::Outcome::Accepted,
    ]
    .map(|o| o as i32);
    assert_eq!(outcomes, want, "stream outcomes");

    // A conflicting resubmission is refused without echoing the identifier.
    let conflict = with_ids(abo_incompatible("PRIV-S1"), CONFLICT, CONFLICT);
    let status = submit(&app, conflict)
        .await
        .expect_err("conflicting resubmission");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_absent(&format!("{status:?}"), &[CONFLICT], "the conflict error");

    // An identifier refused for a bad character is named by field, not echoed.
    let bad = with_ids(kidney("PRIV-BAD-ID"), BAD_CHARACTER, "Tyui-6502-Good");
    let status = submit(&app, bad)
        .await
        .expect_err("bad identifier character");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), ["record.donor.identifier.value"]);
    assert_absent(
        &format!("{status:?}"),
        &[BAD_CHARACTER, "Tyui-6502-Good"],
        "the validation error",
    );

    let all = [
        SUBMITTED_DONOR,
        SUBMITTED_RECIPIENT,
        AMENDED_DONOR,
        AMENDED_RECIPIENT,
        STREAM_DONORS[0],
        STREAM_DONORS[1],
        STREAM_RECIPIENTS[0],
        STREAM_RECIPIENTS[1],
        REJECTED,
        CONFLICT,
        BAD_CHARACTER,
        "Tyui-6502-Good",
    ];
    let (text, tables) = dump(&app).await;
    // The dump must really hold the data, or finding nothing in it proves nothing.
    for table in ["records", "record_versions", "flags", "clinic_versions"] {
        assert!(
            tables.iter().any(|t| t == table),
            "table {table} was not dumped: {tables:?}"
        );
    }
    for present in [
        "PRIV-1",
        "PRIV-S1",
        "PRIV-S2",
        "identifier typo",
        "ABO_INCOMPATIBLE",
    ] {
        assert!(
            text.contains(present),
            "the dump lacks {present:?}, so it does not read the data"
        );
    }
    let case = case_of(&app, &first).await;
    let record = case.record.as_ref().expect("record");
    assert_eq!(record.version, 2);
    assert!(
        text.contains(&record.donor_fingerprint),
        "the dump holds the donor fingerprint {} (as body JSON)",
        record.donor_fingerprint
    );
    assert_absent(&text, &all, "the database");

    // Nor does an auditor ever see them.
    assert_absent(&format!("{case:?}"), &all, "GetFlag");
    let stream_case = case_of(&app, &record_id_of(&app, "PRIV-S1").await).await;
    assert_absent(
        &format!("{stream_case:?}"),
        &all,
        "GetFlag of a streamed record",
    );
}

async fn record_id_of(app: &TestApp, ext: &str) -> String {
    let id: i64 = sqlx::query_scalar("SELECT id FROM records WHERE external_record_id = $1")
        .bind(ext)
        .fetch_one(&app.pool)
        .await
        .expect("record id");
    id.to_string()
}

async fn stored_donor_fp(app: &TestApp, hospital: &str, ext: &str) -> String {
    sqlx::query_scalar("SELECT encode(donor_fp, 'hex') FROM records WHERE hospital_id = $1 AND external_record_id = $2")
        .bind(hospital)
        .bind(ext)
        .fetch_one(&app.pool)
        .await
        .expect("donor fingerprint")
}

fn expected_fp(scheme: IdentifierScheme, country: &str, value: &str) -> String {
    let key = FingerprintKey::from_bytes(&TEST_KEY).expect("key");
    let id = PersonIdentifier::new(scheme, country.parse().expect("country"), value)
        .expect("identifier");
    hex::encode(key.fingerprint(&id).as_bytes())
}

#[tokio::test]
async fn the_same_person_gets_the_same_fingerprint_across_hospitals_and_spellings() {
    let app = app_with_clinic().await;
    // One donor, spelt two ways, at two hospitals.
    let a = accepted(
        &app,
        with_ids(abo_incompatible("FP-A"), "ab-12 34", "RECIPA1"),
    )
    .await;
    let mut at_b = with_ids(abo_incompatible("FP-B"), "AB1234", "RECIPB1");
    at_b.hospital_id = "H-DE-002".into();
    let b = accepted(&app, at_b).await;
    // Another person, and the same value under another scheme.
    let c = accepted(
        &app,
        with_ids(abo_incompatible("FP-C"), "AB1235", "RECIPC1"),
    )
    .await;
    let mut passport = with_ids(abo_incompatible("FP-D"), "AB1234", "RECIPD1");
    passport
        .donor
        .as_mut()
        .and_then(|d| d.identifier.as_mut())
        .expect("id")
        .scheme = pb::IdentifierScheme::Passport as i32;
    let d = accepted(&app, passport).await;

    let fp = |case: &pb::GetFlagResponse| {
        case.record
            .as_ref()
            .expect("record")
            .donor_fingerprint
            .clone()
    };
    let (fa, fb) = (fp(&case_of(&app, &a).await), fp(&case_of(&app, &b).await));
    let (fc, fd) = (fp(&case_of(&app, &c).await), fp(&case_of(&app, &d).await));
    assert_eq!(
        fa, fb,
        "\"ab-12 34\" at H-DE-001 and \"AB1234\" at H-DE-002 are one donor"
    );
    assert_ne!(fa, fc, "another value, another person");
    assert_ne!(fa, fd, "the scheme is part of the identity");
    assert_eq!(fa.len(), 64);

    // What GetFlag shows is what is stored: the keyed HMAC of the normal form.
    assert_eq!(stored_donor_fp(&app, "H-DE-001", "FP-A").await, fa);
    assert_eq!(stored_donor_fp(&app, "H-DE-002", "FP-B").await, fb);
    assert_eq!(
        fa,
        expected_fp(IdentifierScheme::NationalId, "DE", "AB1234"),
        "HMAC under the configured key"
    );
    let unkeyed = hex::encode(ring::digest::digest(&ring::digest::SHA256, b"AB1234").as_ref());
    assert_ne!(fa, unkeyed, "the fingerprint is keyed, not a plain hash");

    // The link works across hospitals: the second kidney from one living donor.
    let flags = all_flags(
        &app,
        pb::ListFlagsRequest {
            rule_id: "ANATOMICAL_MAXIMUM".into(),
            ..Default::default()
        },
    )
    .await;
    let on_b: Vec<&pb::Flag> = flags.iter().filter(|f| f.record_id == b).collect();
    assert_eq!(
        on_b.len(),
        1,
        "H-DE-002's record is linked to H-DE-001's: {flags:?}"
    );
    assert_eq!(
        on_b[0].evidence_record_ids,
        std::slice::from_ref(&a),
        "evidence is the other hospital's record"
    );
}

#[tokio::test]
async fn spellings_of_one_identifier_share_a_fingerprint() {
    let app = app_with_clinic().await;
    let spellings = ["ab-12 34", "AB1234", "ab1234", "A-B-1-2-3-4", " ab 12-34 "];
    let mut fps = Vec::new();
    for (i, spelling) in spellings.iter().enumerate() {
        let mut record = with_ids(kidney(&format!("SPELL-{i}")), "DONORX1", spelling);
        // Vary the hospital too: the fingerprint does not depend on who submits.
        record.hospital_id = format!("H-DE-00{}", i % 2 + 1);
        accepted(&app, record).await;
        let fp: String = sqlx::query_scalar(
            "SELECT encode(recipient_fp, 'hex') FROM records WHERE external_record_id = $1",
        )
        .bind(format!("SPELL-{i}"))
        .fetch_one(&app.pool)
        .await
        .expect("recipient fingerprint");
        fps.push(fp);
    }
    for (spelling, fp) in spellings.iter().zip(&fps) {
        assert_eq!(fp, &fps[0], "{spelling:?} and {:?} differ", spellings[0]);
    }
    let other = with_ids(kidney("SPELL-OTHER"), "DONORX2", "AB12345");
    accepted(&app, other).await;
    let other_fp: String = sqlx::query_scalar(
        "SELECT encode(recipient_fp, 'hex') FROM records WHERE external_record_id = 'SPELL-OTHER'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("fingerprint");
    assert_ne!(other_fp, fps[0], "a different value is a different person");
}
