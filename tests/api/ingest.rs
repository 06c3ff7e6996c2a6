//! Tests of ingest: acknowledgements, idempotency, the SubmitRecords stream
//! and amendments.

use std::collections::HashSet;

use prost::Message;
use tonic::Code;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use transplant_audit::wire::pb;

use crate::helpers::*;

/// Rows in the tables a stored record touches: (records, record_versions, flags).
async fn stored(app: &TestApp) -> (i64, i64, i64) {
    (
        app.count("records").await,
        app.count("record_versions").await,
        app.count("flags").await,
    )
}

async fn register_clinic(app: &TestApp) {
    app.registry
        .clone()
        .upsert_clinic(pb::UpsertClinicRequest {
            clinic: Some(clinic("DE-BER-01", "DE")),
        })
        .await
        .expect("register the clinic");
}

/// Every flag on the record with this external id (of any hospital).
async fn flags_of(app: &TestApp, external_record_id: &str) -> Vec<pb::Flag> {
    all_flags(app, pb::ListFlagsRequest::default())
        .await
        .into_iter()
        .filter(|f| f.external_record_id == external_record_id)
        .collect()
}

/// Whether the record with this key is visible in the database now.
async fn row_exists(app: &TestApp, hospital_id: &str, external_record_id: &str) -> bool {
    sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM records WHERE hospital_id = $1 AND external_record_id = $2)",
    )
    .bind(hospital_id)
    .bind(external_record_id)
    .fetch_one(&app.pool)
    .await
    .expect("query records")
}

fn outcome(ack: &pb::RecordAck) -> Result<pb::Outcome, prost::UnknownEnumValue> {
    pb::Outcome::try_from(ack.outcome)
}

// ---- acknowledgements never reveal flags -------------------------------------------------

/// A codec that passes message bytes through untouched, to see exactly what
/// the server puts on the wire.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;

struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        use prost::bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// SubmitRecord, answering the encoded SubmitRecordResponse exactly as received.
async fn submit_raw(app: &TestApp, record: pb::TransplantRecord) -> Vec<u8> {
    let mut grpc = tonic::client::Grpc::new(app.authed(&app.hospital_token));
    grpc.ready().await.expect("channel ready");
    let request = pb::SubmitRecordRequest {
        record: Some(record),
    }
    .encode_to_vec();
    grpc.unary(
        tonic::Request::new(request),
        PathAndQuery::from_static("/transplant_audit.v1.IngestService/SubmitRecord"),
        RawCodec,
    )
    .await
    .expect("SubmitRecord")
    .into_inner()
}

/// The acknowledgement in an encoded response, with the parts that differ
/// between any two records (ids, time) blanked.
fn normalised_ack(raw: &[u8]) -> pb::RecordAck {
    let response = pb::SubmitRecordResponse::decode(raw).expect("a SubmitRecordResponse");
    let mut ack = response.ack.expect("an ack");
    assert!(
        !ack.record_id.is_empty(),
        "an accepted record has a record_id: {ack:?}"
    );
    assert!(
        ack.received_at.is_some(),
        "an accepted record has received_at: {ack:?}"
    );
    ack.external_record_id = "X".into();
    ack.record_id = "1".into();
    ack.received_at = Some(prost_types::Timestamp::default());
    ack
}

#[tokio::test]
async fn acknowledgements_never_reveal_which_rules_fired() {
    let app = spawn_app().await;
    register_clinic(&app).await;

    let clean_raw = submit_raw(&app, kidney("ACK-1")).await;
    let flagged_raw = submit_raw(&app, abo_incompatible("ACK-2")).await;

    // The flag exists: the acknowledgement below is silent about a real finding.
    let flags = flags_of(&app, "ACK-2").await;
    assert!(
        flags.iter().any(|f| f.rule_id == "ABO_INCOMPATIBLE"),
        "an ABO-incompatible record raises ABO_INCOMPATIBLE: {flags:?}"
    );
    assert!(
        flags_of(&app, "ACK-1").await.is_empty(),
        "the clean record raises no flag"
    );

    for (name, raw) in [("clean", &clean_raw), ("flagged", &flagged_raw)] {
        // Every byte of the response belongs to a field the proto declares:
        // decoding drops unknown fields, so re-encoding would differ.
        let decoded = pb::SubmitRecordResponse::decode(raw.as_slice()).expect("decode");
        assert_eq!(
            &decoded.encode_to_vec(),
            raw,
            "the {name} response carries undeclared fields"
        );
        let ack = decoded.ack.expect("an ack");
        assert_eq!(outcome(&ack), Ok(pb::Outcome::Accepted), "{name}: {ack:?}");
        assert_eq!(ack.version, 1, "{name}: {ack:?}");
        assert!(
            ack.error.is_none(),
            "{name}: an accepted ack carries no error: {ack:?}"
        );
        let text = String::from_utf8_lossy(raw).to_ascii_uppercase();
        for word in ["ABO", "INCOMPATIBLE", "FLAG", "RULE"] {
            assert!(
                !text.contains(word),
                "the {name} response mentions {word}: {raw:?}"
            );
        }
    }
    let (clean, flagged) = (normalised_ack(&clean_raw), normalised_ack(&flagged_raw));
    assert_eq!(
        clean, flagged,
        "the two acknowledgements differ beyond ids and time"
    );
    assert_eq!(
        clean.encode_to_vec(),
        flagged.encode_to_vec(),
        "the two acknowledgements are encoded differently beyond ids and time"
    );
}

// ---- idempotency -------------------------------------------------------------------------

#[tokio::test]
async fn the_same_record_again_is_a_duplicate_with_the_original_ack() {
    let app = spawn_app().await;
    let first = submit(&app, abo_incompatible("IDEM-1"))
        .await
        .expect("first submission");
    assert_eq!(outcome(&first), Ok(pb::Outcome::Accepted), "{first:?}");
    let before = stored(&app).await;
    assert_eq!(before.0, 1, "one record stored");

    for attempt in 1..=3 {
        let again = submit(&app, abo_incompatible("IDEM-1"))
            .await
            .expect("resubmission");
        assert_eq!(
            outcome(&again),
            Ok(pb::Outcome::Duplicate),
            "attempt {attempt}: {again:?}"
        );
        assert_eq!(
            again.record_id, first.record_id,
            "attempt {attempt}: the original record_id"
        );
        assert_eq!(
            again.received_at, first.received_at,
            "attempt {attempt}: the original received_at"
        );
        assert_eq!(again.version, first.version, "attempt {attempt}");
        assert_eq!(again.external_record_id, "IDEM-1", "attempt {attempt}");
        assert!(again.error.is_none(), "attempt {attempt}: {again:?}");
    }
    assert_eq!(
        stored(&app).await,
        before,
        "a duplicate stores nothing (records, versions, flags)"
    );
}

#[tokio::test]
async fn an_identifier_spelled_differently_is_the_same_content() {
    // Identifiers are normalised (case, spaces, dashes) before anything is compared.
    let app = spawn_app().await;
    let mut record = kidney("IDEM-NORM");
    record
        .donor
        .as_mut()
        .and_then(|d| d.identifier.as_mut())
        .expect("identifier")
        .value = "donor-idem-norm".into();
    let first = submit(&app, kidney("IDEM-NORM"))
        .await
        .expect("first submission");
    let again = submit(&app, record).await.expect("resubmission");
    assert_eq!(outcome(&again), Ok(pb::Outcome::Duplicate), "{again:?}");
    assert_eq!(again.record_id, first.record_id);
    assert_eq!(app.count("records").await, 1);
}

#[tokio::test]
async fn the_same_key_with_other_content_is_already_exists_pointing_to_amend() {
    let app = spawn_app().await;
    let first = submit(&app, kidney("IDEM-2"))
        .await
        .expect("first submission");
    assert_eq!(outcome(&first), Ok(pb::Outcome::Accepted), "{first:?}");
    let before = stored(&app).await;

    let mut changes: Vec<(&str, pb::TransplantRecord)> =
        vec![("blood groups", abo_incompatible("IDEM-2"))];
    let mut r = kidney("IDEM-2");
    r.laterality = pb::Laterality::Right as i32;
    changes.push(("laterality", r));
    let mut r = kidney("IDEM-2");
    r.cold_ischemia_minutes = Some(120);
    changes.push(("reported ischemia", r));
    let mut r = kidney("IDEM-2");
    r.donor
        .as_mut()
        .and_then(|d| d.identifier.as_mut())
        .expect("identifier")
        .value = "SOMEONEELSE".into();
    changes.push(("donor identifier", r));

    for (what, record) in changes {
        let status = submit(&app, record)
            .await
            .expect_err("other content under a taken key");
        assert_eq!(status.code(), Code::AlreadyExists, "{what}: {status:?}");
        assert!(
            status.message().contains("AmendRecord"),
            "{what}: the message points to AmendRecord: {:?}",
            status.message()
        );
    }
    assert_eq!(stored(&app).await, before, "a conflict stores nothing");
}

#[tokio::test]
async fn the_same_external_id_at_another_hospital_is_another_record() {
    let app = spawn_app().await;
    let first = submit(&app, kidney("SHARED-ID")).await.expect("hospital 1");
    let mut other = kidney("SHARED-ID");
    other.hospital_id = "H-DE-002".into();
    let second = submit(&app, other.clone()).await.expect("hospital 2");
    assert_eq!(outcome(&second), Ok(pb::Outcome::Accepted), "{second:?}");
    assert_ne!(second.record_id, first.record_id, "a record of its own");
    assert_eq!(app.count("records").await, 2);

    // And each is idempotent on its own key.
    let again = submit(&app, other).await.expect("hospital 2 again");
    assert_eq!(outcome(&again), Ok(pb::Outcome::Duplicate), "{again:?}");
    assert_eq!(again.record_id, second.record_id);
    assert_eq!(app.count("records").await, 2);
}

#[tokio::test]
async fn concurrent_identical_submissions_store_one_record() {
    let app = spawn_app().await;
    const ROUNDS: usize = 10;
    const CONCURRENCY: usize = 8;
    for round in 0..ROUNDS {
        let external_record_id = format!("RACE-{round}");
        // Half the rounds raise a flag, so the loser's flags would show too.
        let record = if round % 2 == 0 {
            kidney(&external_record_id)
        } else {
            abo_incompatible(&external_record_id)
        };
        let mut tasks = Vec::new();
        for _ in 0..CONCURRENCY {
            let mut client = app.ingest.clone();
            let request = pb::SubmitRecordRequest {
                record: Some(record.clone()),
            };
            tasks.push(tokio::spawn(
                async move { client.submit_record(request).await },
            ));
        }
        let mut acks = Vec::new();
        for task in futures::future::join_all(tasks).await {
            let response = task
                .expect("task")
                .unwrap_or_else(|s| panic!("round {round}: {s:?}"));
            acks.push(response.into_inner().ack.expect("an ack"));
        }
        let accepted = acks
            .iter()
            .filter(|a| outcome(a) == Ok(pb::Outcome::Accepted))
            .count();
        let duplicates = acks
            .iter()
            .filter(|a| outcome(a) == Ok(pb::Outcome::Duplicate))
            .count();
        assert_eq!(
            (accepted, duplicates),
            (1, CONCURRENCY - 1),
            "round {round}: {acks:?}"
        );
        let ids: HashSet<_> = acks.iter().map(|a| a.record_id.as_str()).collect();
        assert_eq!(
            ids.len(),
            1,
            "round {round}: every ack names the one record: {acks:?}"
        );
        let received: HashSet<_> = acks
            .iter()
            .map(|a| format!("{:?}", a.received_at))
            .collect();
        assert_eq!(
            received.len(),
            1,
            "round {round}: every ack has the same received_at: {acks:?}"
        );
    }
    assert_eq!(
        app.count("records").await,
        ROUNDS as i64,
        "exactly one row per record"
    );
    assert_eq!(
        app.count("record_versions").await,
        0,
        "a record's one version is its row"
    );
}

#[tokio::test]
async fn a_record_the_database_refuses_fails_alone_not_the_others_committed_with_it() {
    let app = spawn_app().await;
    // Something only the database refuses (validation lets it through), so
    // that concurrent submissions grouped with it would fail with it.
    sqlx::query(
        "ALTER TABLE records ADD CONSTRAINT test_refuses_poison \
         CHECK (external_record_id NOT LIKE 'POISON%')",
    )
    .execute(&app.pool)
    .await
    .expect("add the constraint");
    const ROUNDS: usize = 5;
    const CONCURRENCY: usize = 16;
    for round in 0..ROUNDS {
        let calls = (0..CONCURRENCY).map(|i| {
            let id = if i == CONCURRENCY / 2 {
                format!("POISON-{round}")
            } else {
                format!("GOOD-{round}-{i}")
            };
            let mut client = app.ingest.clone();
            tokio::spawn(async move {
                let request = pb::SubmitRecordRequest {
                    record: Some(kidney(&id)),
                };
                (id, client.submit_record(request).await)
            })
        });
        for call in futures::future::join_all(calls).await {
            let (id, answer) = call.expect("task");
            if id.starts_with("POISON") {
                let status = answer.expect_err("the database refuses it");
                assert_eq!(status.code(), Code::Internal, "{id}: {status:?}");
            } else {
                let ack = answer
                    .unwrap_or_else(|s| panic!("{id}: {s:?}"))
                    .into_inner();
                let ack = ack.ack.expect("an ack");
                assert_eq!(outcome(&ack), Ok(pb::Outcome::Accepted), "{id}");
            }
        }
    }
    let good = (ROUNDS * (CONCURRENCY - 1)) as i64;
    assert_eq!(app.count("records").await, good);
    assert_eq!(app.count("record_versions").await, 0, "no version replaced");
}

// ---- the SubmitRecords stream ------------------------------------------------------------

fn bad_request_of(error: &tonic_types::pb::Status) -> Option<tonic_types::pb::BadRequest> {
    error
        .details
        .iter()
        .find(|any| any.type_url == "type.googleapis.com/google.rpc.BadRequest")
        .map(|any| tonic_types::pb::BadRequest::decode(any.value.as_slice()).expect("a BadRequest"))
}

#[tokio::test]
async fn a_stream_acknowledges_each_record_in_order() {
    let app = spawn_app().await;
    let mut invalid = kidney("S-BAD");
    invalid.organ = 99;
    invalid.donor.as_mut().expect("donor").age_years = Some(130);
    let mut conflicting = kidney("S-1");
    conflicting.laterality = pb::Laterality::Right as i32;
    let mut other_hospital = kidney("S-1");
    other_hospital.hospital_id = "H-DE-002".into();
    let records = vec![
        Some(kidney("S-1")),           // 0 accepted
        Some(invalid),                 // 1 rejected: invalid
        Some(kidney("S-1")),           // 2 duplicate of 0
        Some(conflicting),             // 3 rejected: conflict with 0
        Some(abo_incompatible("S-2")), // 4 accepted (and flagged)
        None,                          // 5 rejected: no record
        Some(other_hospital),          // 6 rejected: this key's hospital is H-DE-001
        Some(abo_incompatible("S-2")), // 7 duplicate of 4
        Some(kidney("S-3")),           // 8 accepted
    ];
    let expected_ids = ["S-1", "S-BAD", "S-1", "S-1", "S-2", "", "S-1", "S-2", "S-3"];
    use pb::Outcome::{Accepted, Duplicate, Rejected};
    let expected = [
        Accepted, Rejected, Duplicate, Rejected, Accepted, Rejected, Rejected, Duplicate, Accepted,
    ];

    let responses = stream_all(&app, records).await;

    assert_eq!(
        responses.len(),
        expected.len(),
        "one ack per record: {responses:#?}"
    );
    let acks: Vec<pb::RecordAck> = responses
        .iter()
        .map(|r| r.ack.clone().expect("an ack"))
        .collect();
    for (i, (response, ack)) in responses.iter().zip(&acks).enumerate() {
        assert_eq!(
            response.sequence, i as u64,
            "ack {i} out of order: {responses:#?}"
        );
        assert_eq!(ack.external_record_id, expected_ids[i], "ack {i}: {ack:?}");
        assert_eq!(outcome(ack), Ok(expected[i]), "ack {i}: {ack:?}");
        if expected[i] == Rejected {
            assert!(
                ack.record_id.is_empty(),
                "ack {i}: a rejected record has no record_id: {ack:?}"
            );
        } else {
            assert!(ack.error.is_none(), "ack {i}: {ack:?}");
            assert!(!ack.record_id.is_empty(), "ack {i}: {ack:?}");
        }
    }

    let error = acks[1].error.as_ref().expect("ack 1 carries its error");
    assert_eq!(error.code, Code::InvalidArgument as i32, "{error:?}");
    let bad = bad_request_of(error).expect("ack 1's error has a BadRequest detail");
    let fields: Vec<_> = bad
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    for field in ["record.organ", "record.donor.age_years"] {
        assert!(fields.contains(&field), "ack 1 reports {field}: {fields:?}");
    }

    let error = acks[3].error.as_ref().expect("ack 3 carries its error");
    assert_eq!(error.code, Code::AlreadyExists as i32, "{error:?}");
    assert!(error.message.contains("AmendRecord"), "{error:?}");

    let error = acks[5].error.as_ref().expect("ack 5 carries its error");
    assert_eq!(error.code, Code::InvalidArgument as i32, "{error:?}");
    let bad = bad_request_of(error).expect("ack 5's error has a BadRequest detail");
    assert!(
        bad.field_violations.iter().any(|v| v.field == "record"),
        "{bad:?}"
    );

    assert_eq!(
        acks[2].record_id, acks[0].record_id,
        "the duplicate names the original"
    );
    assert_eq!(
        acks[2].received_at, acks[0].received_at,
        "the duplicate has the original received_at"
    );
    assert_eq!(
        acks[7].record_id, acks[4].record_id,
        "the duplicate names the original"
    );
    let error = acks[6].error.as_ref().expect("ack 6 carries its error");
    assert_eq!(
        error.code,
        Code::PermissionDenied as i32,
        "another hospital's record: {error:?}"
    );
    let ids: HashSet<_> = [0, 4, 8]
        .iter()
        .map(|&i| acks[i].record_id.as_str())
        .collect();
    assert_eq!(ids.len(), 3, "accepted records have distinct ids: {acks:?}");
    assert_eq!(
        app.count("records").await,
        3,
        "only the three accepted records are stored"
    );
    assert_eq!(app.count("record_versions").await, 0, "no version replaced");
    assert_eq!(
        flags_of(&app, "S-2")
            .await
            .iter()
            .filter(|f| f.rule_id == "ABO_INCOMPATIBLE")
            .count(),
        1,
        "the flagged record's flag is stored once"
    );
}

#[tokio::test]
async fn a_stream_ack_means_the_record_is_committed() {
    let app = spawn_app().await;

    // One record at a time: each ack is awaited before the next record is sent.
    let (tx, mut acks) = open_stream(&app).await;
    for i in 0..20u64 {
        let id = format!("COMMIT-{i}");
        let record = if i % 3 == 0 {
            abo_incompatible(&id)
        } else {
            kidney(&id)
        };
        tx.send(pb::SubmitRecordsRequest {
            record: Some(record),
        })
        .await
        .expect("send");
        let response = acks
            .message()
            .await
            .expect("stream")
            .expect("an ack before the end");
        let ack = response.ack.expect("an ack");
        assert_eq!(response.sequence, i);
        assert_eq!(outcome(&ack), Ok(pb::Outcome::Accepted), "{ack:?}");
        assert!(
            row_exists(&app, "H-DE-001", &id).await,
            "record {id} not visible once acknowledged"
        );
        if i % 3 == 0 {
            // The record and its flags commit together.
            let flags = flags_of(&app, &id).await;
            assert!(
                flags.iter().any(|f| f.rule_id == "ABO_INCOMPATIBLE"),
                "the flag of {id} not visible once acknowledged: {flags:?}"
            );
        }
    }
    drop(tx);
    assert!(
        acks.message().await.expect("stream").is_none(),
        "no ack beyond the records sent"
    );

    // Pipelined: everything sent up front; each ack is checked as it arrives.
    let n = 200u64;
    let (tx, mut acks) = open_stream(&app).await;
    let sender = tokio::spawn(async move {
        for i in 0..n {
            let record = kidney(&format!("PIPE-{i}"));
            if tx
                .send(pb::SubmitRecordsRequest {
                    record: Some(record),
                })
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut seen = 0u64;
    while let Some(response) = acks.message().await.expect("stream") {
        assert_eq!(response.sequence, seen);
        let id = format!("PIPE-{seen}");
        assert!(
            row_exists(&app, "H-DE-001", &id).await,
            "record {id} not visible once acknowledged"
        );
        seen += 1;
    }
    sender.await.expect("sender");
    assert_eq!(seen, n, "one ack per record");
}

#[tokio::test]
async fn a_stream_of_ten_thousand_records_is_acknowledged_in_order() {
    const N: usize = 10_000;
    const AGAIN: usize = 500;
    let app = spawn_app().await;
    register_clinic(&app).await;
    let records: Vec<Option<pb::TransplantRecord>> = (0..N)
        .map(|i| Some(kidney(&format!("BULK-{i:05}"))))
        .collect();

    let responses = stream_all(&app, records.clone()).await;

    assert_eq!(responses.len(), N, "one ack per record");
    let mut record_ids = Vec::with_capacity(N);
    for (i, response) in responses.iter().enumerate() {
        let ack = response.ack.as_ref().expect("an ack");
        assert_eq!(response.sequence, i as u64, "ack {i} out of order");
        assert_eq!(ack.external_record_id, format!("BULK-{i:05}"), "ack {i}");
        assert_eq!(outcome(ack), Ok(pb::Outcome::Accepted), "ack {i}: {ack:?}");
        record_ids.push(ack.record_id.clone());
    }
    assert_eq!(
        record_ids.iter().collect::<HashSet<_>>().len(),
        N,
        "distinct record ids"
    );
    assert_eq!(app.count("records").await, N as i64);
    assert_eq!(app.count("record_versions").await, 0, "no version replaced");

    // The same records again (a client retrying a back-fill): duplicates only.
    let responses = stream_all(&app, records[..AGAIN].to_vec()).await;
    assert_eq!(responses.len(), AGAIN, "one ack per record");
    for (i, response) in responses.iter().enumerate() {
        let ack = response.ack.as_ref().expect("an ack");
        assert_eq!(response.sequence, i as u64, "ack {i} out of order");
        assert_eq!(outcome(ack), Ok(pb::Outcome::Duplicate), "ack {i}: {ack:?}");
        assert_eq!(
            ack.record_id, record_ids[i],
            "ack {i} names the original record"
        );
    }
    assert_eq!(app.count("records").await, N as i64, "no new rows");
    assert_eq!(app.count("record_versions").await, 0, "no version replaced");
}

// ---- AmendRecord -------------------------------------------------------------------------

/// Versions stored for the record with this id.
/// The versions kept of a record: those amendments replaced, then its current one.
async fn versions_of(app: &TestApp, record_id: &str) -> Vec<i32> {
    let id: i64 = record_id.parse().expect("a numeric record id");
    sqlx::query_scalar(
        "SELECT version FROM record_versions WHERE record_id = $1
         UNION ALL SELECT version FROM records WHERE id = $1 ORDER BY version",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .expect("query record_versions")
}

#[tokio::test]
async fn an_amendment_requires_a_reason() {
    let app = spawn_app().await;
    submit(&app, kidney("AMEND-R")).await.expect("submit");
    let before = stored(&app).await;

    // Missing, blank, and absurdly long (over 2000 bytes) reasons.
    let long = "x".repeat(2001);
    for reason in ["", "   ", long.as_str()] {
        let status = amend(&app, abo_incompatible("AMEND-R"), reason)
            .await
            .expect_err("no usable reason");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "reason {reason:?}: {status:?}"
        );
        assert_eq!(
            violated_fields(&status),
            ["reason"],
            "reason {reason:?}: {status:?}"
        );
    }

    // A bad record and no reason: both reported at once.
    let mut bad = abo_incompatible("AMEND-R");
    bad.procedure_country = "XX".into();
    let status = amend(&app, bad, "")
        .await
        .expect_err("bad record, no reason");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields = violated_fields(&status);
    for field in ["record.procedure_country", "reason"] {
        assert!(
            fields.iter().any(|f| f == field),
            "{field} reported: {fields:?}"
        );
    }
    assert_eq!(
        stored(&app).await,
        before,
        "a rejected amendment stores nothing"
    );
}

#[tokio::test]
async fn amending_an_unknown_record_is_not_found() {
    let app = spawn_app().await;
    let status = amend(&app, kidney("NEVER-SUBMITTED"), "typo in the laterality")
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // A record of another hospital is not this hospital's to amend.
    submit(&app, kidney("THEIRS")).await.expect("submit");
    let before = stored(&app).await;
    let mut mine = kidney("THEIRS");
    mine.hospital_id = "H-DE-002".into();
    let status = amend(&app, mine, "correction")
        .await
        .expect_err("another hospital's record");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(
        stored(&app).await,
        before,
        "nothing stored by a failed amendment"
    );
}

#[tokio::test]
async fn amendments_keep_versions_and_clear_flags_without_deleting_them() {
    let app = spawn_app().await;
    register_clinic(&app).await;
    let original = submit(&app, kidney("AMEND-1")).await.expect("submit");
    assert_eq!(outcome(&original), Ok(pb::Outcome::Accepted));
    assert!(
        flags_of(&app, "AMEND-1").await.is_empty(),
        "the clean record raises no flag"
    );
    let hash_of = |sql: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, Vec<u8>>(sql)
                .fetch_one(&pool)
                .await
                .expect("a content hash")
        }
    };
    let first_hash = hash_of("SELECT content_hash FROM records").await;

    // Clean → ABO-incompatible: version 2, rules run again, a flag on version 2.
    let v2 = amend(
        &app,
        abo_incompatible("AMEND-1"),
        "donor blood group was mistyped",
    )
    .await
    .expect("amend to v2");
    assert_eq!(outcome(&v2), Ok(pb::Outcome::Accepted), "{v2:?}");
    assert_eq!(v2.version, 2, "{v2:?}");
    assert_eq!(
        v2.record_id, original.record_id,
        "an amendment keeps the record id"
    );
    assert_eq!(
        v2.received_at, original.received_at,
        "an amendment keeps received_at"
    );
    assert_eq!(versions_of(&app, &original.record_id).await, [1, 2]);
    assert_eq!(
        hash_of("SELECT content_hash FROM record_versions WHERE version = 1").await,
        first_hash,
        "version 1 kept as it was"
    );
    assert_eq!(app.count("records").await, 1, "still one record");
    let flags = flags_of(&app, "AMEND-1").await;
    let abo: Vec<_> = flags
        .iter()
        .filter(|f| f.rule_id == "ABO_INCOMPATIBLE")
        .collect();
    assert_eq!(abo.len(), 1, "one ABO_INCOMPATIBLE flag: {flags:?}");
    assert_eq!(abo[0].record_id, original.record_id, "{flags:?}");
    assert_eq!(abo[0].record_version, 2, "raised on version 2: {flags:?}");
    assert_eq!(abo[0].cleared_in_record_version, None, "{flags:?}");
    let flag_id = abo[0].flag_id.clone();

    // Back to the clean content: version 3; the flag stays, marked cleared.
    let v3 = amend(
        &app,
        kidney("AMEND-1"),
        "the first typing was right after all",
    )
    .await
    .expect("amend to v3");
    assert_eq!(outcome(&v3), Ok(pb::Outcome::Accepted), "{v3:?}");
    assert_eq!(v3.version, 3, "{v3:?}");
    assert_eq!(v3.record_id, original.record_id);
    assert_eq!(versions_of(&app, &original.record_id).await, [1, 2, 3]);
    let flags = flags_of(&app, "AMEND-1").await;
    let abo: Vec<_> = flags
        .iter()
        .filter(|f| f.rule_id == "ABO_INCOMPATIBLE")
        .collect();
    assert_eq!(abo.len(), 1, "the flag is not deleted: {flags:?}");
    assert_eq!(abo[0].flag_id, flag_id, "the same flag: {flags:?}");
    assert_eq!(abo[0].record_version, 2, "raised on version 2: {flags:?}");
    assert_eq!(
        abo[0].cleared_in_record_version,
        Some(3),
        "cleared in version 3: {flags:?}"
    );

    // The current content again: a duplicate, no version 4.
    let again = amend(&app, kidney("AMEND-1"), "resent")
        .await
        .expect("amend with the current content");
    assert_eq!(outcome(&again), Ok(pb::Outcome::Duplicate), "{again:?}");
    assert_eq!(again.version, 3, "{again:?}");
    assert_eq!(again.record_id, original.record_id);
    assert_eq!(
        versions_of(&app, &original.record_id).await,
        [1, 2, 3],
        "no new version"
    );
    let after = flags_of(&app, "AMEND-1").await;
    assert_eq!(after.len(), flags.len(), "no new flag: {after:?}");
    let abo = after
        .iter()
        .find(|f| f.flag_id == flag_id)
        .expect("the flag is still there");
    assert_eq!(abo.cleared_in_record_version, Some(3), "{after:?}");

    // Incompatible again: the same flag holds again (one flag per record and rule).
    let v4 = amend(
        &app,
        abo_incompatible("AMEND-1"),
        "the second typing was right",
    )
    .await
    .expect("amend to v4");
    assert_eq!(outcome(&v4), Ok(pb::Outcome::Accepted), "{v4:?}");
    assert_eq!(v4.version, 4, "{v4:?}");
    assert_eq!(versions_of(&app, &original.record_id).await, [1, 2, 3, 4]);
    let flags = flags_of(&app, "AMEND-1").await;
    let abo: Vec<_> = flags
        .iter()
        .filter(|f| f.rule_id == "ABO_INCOMPATIBLE")
        .collect();
    assert_eq!(abo.len(), 1, "still one ABO_INCOMPATIBLE flag: {flags:?}");
    assert_eq!(abo[0].flag_id, flag_id, "the same flag: {flags:?}");
    assert_eq!(
        abo[0].cleared_in_record_version, None,
        "no longer cleared: {flags:?}"
    );
}

#[tokio::test]
async fn amending_to_the_current_content_is_a_duplicate() {
    let app = spawn_app().await;
    let original = submit(&app, abo_incompatible("AMEND-DUP"))
        .await
        .expect("submit");
    let before = stored(&app).await;

    let ack = amend(&app, abo_incompatible("AMEND-DUP"), "no change")
        .await
        .expect("amend");

    assert_eq!(outcome(&ack), Ok(pb::Outcome::Duplicate), "{ack:?}");
    assert_eq!(ack.version, 1, "{ack:?}");
    assert_eq!(ack.record_id, original.record_id);
    assert_eq!(ack.received_at, original.received_at);
    assert_eq!(stored(&app).await, before, "nothing new stored");
    assert_eq!(versions_of(&app, &original.record_id).await, [1]);
}
