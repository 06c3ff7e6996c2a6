//! Hostile input through the real server: bytes that are not the message
//! they claim to be, extreme values, huge fields, streams mixing good and
//! broken messages, and a flood of all of them. Each answers a clear error,
//! nothing is half stored, and the server stays up with bounded memory.

use std::marker::PhantomData;
use std::time::Duration;

use transplant_audit::rules::RulesConfig;
use transplant_audit::server::ServeOptions;

use bytes::BufMut;
use prost::Message;
use tonic::Code;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use transplant_audit::wire::pb;

use crate::helpers::*;

/// Sends whatever bytes it is given as the request message.
#[derive(Debug, Clone)]
struct RawCodec<U>(PhantomData<U>);

impl<U> Default for RawCodec<U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

struct ProtoDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, tonic::Status> {
        U::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

impl<U: Message + Default + Send + 'static> Codec for RawCodec<U> {
    type Encode = Vec<u8>;
    type Decode = U;
    type Encoder = RawEncoder;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ProtoDecoder<U> {
        ProtoDecoder(PhantomData)
    }
}

const SUBMIT_RECORD: &str = "/transplant_audit.v1.IngestService/SubmitRecord";
const SUBMIT_RECORDS: &str = "/transplant_audit.v1.IngestService/SubmitRecords";
const AMEND_RECORD: &str = "/transplant_audit.v1.IngestService/AmendRecord";
const UPSERT_CLINIC: &str = "/transplant_audit.v1.RegistryService/UpsertClinic";
const LIST_FLAGS: &str = "/transplant_audit.v1.AuditService/ListFlags";
const GET_FLAG: &str = "/transplant_audit.v1.AuditService/GetFlag";
const WATCH_FLAGS: &str = "/transplant_audit.v1.AuditService/WatchFlags";
const CREATE_API_KEY: &str = "/transplant_audit.v1.AdminService/CreateApiKey";

/// A client sending raw bytes with `token`.
fn raw_client(channel: Channel, token: &str) -> tonic::client::Grpc<Authed> {
    tonic::client::Grpc::new(InterceptedService::new(channel, Bearer::new(token)))
}

/// Sends `bytes` as one SubmitRecord request.
async fn send_raw(channel: Channel, token: &str, bytes: Vec<u8>) -> Result<(), tonic::Status> {
    let mut client = raw_client(channel, token);
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    client
        .unary::<_, pb::SubmitRecordResponse, _>(
            tonic::Request::new(bytes),
            http::uri::PathAndQuery::from_static(SUBMIT_RECORD),
            RawCodec::default(),
        )
        .await
        .map(drop)
}

/// Sends `bytes` as one request of the unary method at `path`, answered by a `U`.
async fn send_raw_to<U: Message + Default + Send + 'static>(
    channel: Channel,
    token: &str,
    path: &'static str,
    bytes: Vec<u8>,
) -> Result<U, tonic::Status> {
    let mut client = raw_client(channel, token);
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    client
        .unary::<_, U, _>(
            tonic::Request::new(bytes),
            http::uri::PathAndQuery::from_static(path),
            RawCodec::default(),
        )
        .await
        .map(tonic::Response::into_inner)
}

/// Every table a request could write to, counted.
async fn snapshot(app: &TestApp) -> Vec<(&'static str, i64)> {
    let mut counts = Vec::new();
    for table in [
        "records",
        "record_versions",
        "flags",
        "flag_events",
        "clinics",
        "clinic_versions",
        "api_keys",
        "access_log",
        "rescans",
    ] {
        counts.push((table, app.count(table).await));
    }
    counts
}

/// A server holding one accepted, flagged record and one clinic, so that
/// "unchanged" is about something.
async fn seeded_app(options: ServeOptions) -> TestApp {
    let app = spawn_app_configured(&fresh_database().await, RulesConfig::default(), options).await;
    app.registry
        .clone()
        .upsert_clinic(pb::UpsertClinicRequest {
            clinic: Some(clinic("DE-BER-02", "DE")),
        })
        .await
        .expect("a clinic");
    submit(&app, abo_incompatible("SEED-1"))
        .await
        .expect("a flagged record");
    assert!(app.count("flags").await > 0, "the seed raised a flag");
    app
}

/// A refusal's BadRequest field paths, for an INVALID_ARGUMENT; panics otherwise.
fn refused_fields(what: &str, result: Result<impl std::fmt::Debug, tonic::Status>) -> Vec<String> {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    assert!(
        status.message().len() < 4096,
        "{what}: the answer does not echo the input"
    );
    violated_fields(&status)
}

/// Seconds of 0001-01-01T00:00:00Z, the first instant a Timestamp holds.
const YEAR_1: i64 = -62_135_596_800;
/// Seconds of 10000-01-01T00:00:00Z, the first a Timestamp cannot hold.
const YEAR_10000: i64 = 253_402_300_800;
/// About 93,000 BC: chrono holds it, Postgres does not.
const ANCIENT: i64 = -3_000_000_000_000;

fn at(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

/// A valid request's bytes with the default hospital id's bytes replaced.
fn with_hospital_bytes(replacement: &[u8]) -> Vec<u8> {
    let mut bytes = pb::SubmitRecordRequest {
        record: Some(kidney("RAW-1")),
    }
    .encode_to_vec();
    let at = bytes
        .windows(DEFAULT_HOSPITAL.len())
        .position(|w| w == DEFAULT_HOSPITAL.as_bytes())
        .expect("hospital id in the encoding");
    bytes.splice(at..at + DEFAULT_HOSPITAL.len(), replacement.iter().copied());
    bytes
}

async fn stored(app: &TestApp) -> (i64, i64) {
    let count = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&app.pool)
            .await
            .expect("count")
    };
    (
        count("SELECT count(*) FROM records").await,
        count("SELECT count(*) FROM flags").await,
    )
}

#[tokio::test]
async fn bytes_that_are_not_the_message_are_invalid_argument_and_store_nothing() {
    let app = spawn_app().await;
    // Same length as the real id, so only the content is wrong.
    let invalid_utf8 = with_hospital_bytes(&[0xff, 0xfe, 0xfd, 0xfc, 0xc3, 0x28, 0xa0, 0xa1]);
    let mut truncated = pb::SubmitRecordRequest {
        record: Some(kidney("RAW-2")),
    }
    .encode_to_vec();
    truncated.truncate(truncated.len() / 2);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("invalid UTF-8 in a string field", invalid_utf8),
        ("a truncated message", truncated),
        (
            "garbage",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
        ),
        (
            "a length past the end",
            vec![0x0a, 0xff, 0xff, 0xff, 0x0f, 0x01],
        ),
        ("nested groups past the recursion limit", vec![0x7b; 500]),
    ];
    for (what, bytes) in cases {
        let status = send_raw(app.channel.clone(), &app.hospital_token, bytes)
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            status.message().contains("not a valid SubmitRecordRequest"),
            "{what}: {status:?}"
        );
    }
    // A well-formed request through the same raw path is accepted: the
    // refusals above are about the bytes, not the path.
    let good = pb::SubmitRecordRequest {
        record: Some(kidney("RAW-OK")),
    }
    .encode_to_vec();
    send_raw(app.channel.clone(), &app.hospital_token, good)
        .await
        .expect("accepted");
    assert_eq!(stored(&app).await.0, 1, "only the good one");
    app.stop().await;
}

#[tokio::test]
async fn extreme_timestamps_and_enum_numbers_are_named() {
    let app = spawn_app().await;
    let extremes = [
        (i64::MAX, 0),
        (i64::MIN, 0),
        (253_402_300_800, 0), // year 10000
        (-62_167_219_200, 0), // year 0
        (1_741_000_000, -1),
        (1_741_000_000, 1_000_000_000),
        (1_741_000_000, i32::MIN),
    ];
    for (seconds, nanos) in extremes {
        let mut record = kidney("EXT-1");
        record.transplanted_at = Some(prost_types::Timestamp { seconds, nanos });
        let status = submit(&app, record)
            .await
            .expect_err("an impossible instant");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            violated_fields(&status),
            ["record.transplanted_at"],
            "{seconds}.{nanos}"
        );
    }
    for number in [i32::MIN, -1, 9, 1000, i32::MAX] {
        let mut record = kidney("EXT-2");
        record.organ = number;
        if let Some(d) = record.donor.as_mut() {
            d.sex = number;
        }
        let status = submit(&app, record).await.expect_err("unknown enum");
        let mut fields = violated_fields(&status);
        fields.sort();
        assert_eq!(
            fields,
            ["record.donor.sex", "record.organ"],
            "enum number {number}"
        );
    }
    assert_eq!(stored(&app).await, (0, 0));
    app.stop().await;
}

#[tokio::test]
async fn huge_fields_under_the_message_cap_are_refused_by_field() {
    let app = spawn_app().await;
    let big = "x".repeat(900 * 1024);
    let mut cases: Vec<(&str, pb::TransplantRecord)> = Vec::new();
    let mut r = kidney("BIG-1");
    if let Some(id) = r.donor.as_mut().and_then(|d| d.identifier.as_mut()) {
        id.value = big.clone();
    }
    cases.push(("record.donor.identifier.value", r));
    let mut r = kidney("BIG-2");
    r.procedure_country = big.clone();
    cases.push(("record.procedure_country", r));
    let mut r = kidney("BIG-3");
    if let Some(d) = r.donor.as_mut() {
        d.hla = Some(pb::HlaTyping {
            a: vec!["A2".into(); 100_000],
            b: Vec::new(),
            dr: Vec::new(),
        });
    }
    cases.push(("record.donor.hla.a", r));
    for (field, record) in cases {
        let status = submit(&app, record).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert_eq!(violated_fields(&status), [field]);
        assert!(
            status.message().len() < 4096,
            "the answer does not echo the input"
        );
    }
    assert_eq!(stored(&app).await, (0, 0));
    app.stop().await;
}

#[tokio::test]
async fn a_stream_broken_by_undecodable_bytes_keeps_what_was_acknowledged() {
    let app = spawn_app().await;
    let encode = |id: &str| {
        pb::SubmitRecordsRequest {
            record: Some(kidney(id)),
        }
        .encode_to_vec()
    };
    let mut invalid = encode("STR-X");
    let at = invalid
        .windows(DEFAULT_HOSPITAL.len())
        .position(|w| w == DEFAULT_HOSPITAL.as_bytes())
        .expect("hospital id");
    invalid[at] = 0xff;
    let messages = vec![encode("STR-1"), encode("STR-2"), invalid, encode("STR-3")];
    let mut client = raw_client(app.channel.clone(), &app.hospital_token);
    client.ready().await.expect("ready");
    let mut responses = client
        .streaming::<_, _, pb::SubmitRecordsResponse, _>(
            tonic::Request::new(tokio_stream::iter(messages)),
            http::uri::PathAndQuery::from_static(SUBMIT_RECORDS),
            RawCodec::default(),
        )
        .await
        .expect("stream opens")
        .into_inner();
    let mut acked = Vec::new();
    let ended = loop {
        match responses.message().await {
            Ok(Some(m)) => acked.push(m.ack.expect("ack").external_record_id),
            Ok(None) => panic!("the stream should end with an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::InvalidArgument, "{ended:?}");
    let committed: Vec<String> =
        sqlx::query_scalar("SELECT external_record_id FROM records ORDER BY 1")
            .fetch_all(&app.pool)
            .await
            .expect("ids");
    assert_eq!(
        committed, acked,
        "exactly the acknowledged records are stored"
    );
    assert!(
        !committed.contains(&"STR-3".to_owned()),
        "nothing after the break"
    );
    app.stop().await;
}

#[tokio::test]
async fn every_service_refuses_undecodable_bytes_as_invalid_argument() {
    let app = seeded_app(ServeOptions::default()).await;
    let before = snapshot(&app).await;
    // Each a string field holding 0xff 0xfe, which is not UTF-8.
    let bad = |tag: u8| vec![tag, 0x02, 0xff, 0xfe];
    let hospital = app.hospital_token.clone();
    let auditor = app.auditor_token.clone();
    let admin = app.admin_token.clone();
    let ch = || app.channel.clone();
    let cases: Vec<(&str, Result<(), tonic::Status>)> = vec![
        (
            "AmendRecordRequest", // reason = 2
            send_raw_to::<pb::AmendRecordResponse>(ch(), &hospital, AMEND_RECORD, bad(0x12))
                .await
                .map(drop),
        ),
        (
            "UpsertClinicRequest", // clinic = 1 { clinic_id = 1 }
            send_raw_to::<pb::UpsertClinicResponse>(
                ch(),
                &admin,
                UPSERT_CLINIC,
                [vec![0x0a, 0x04], bad(0x0a)].concat(),
            )
            .await
            .map(drop),
        ),
        (
            "ListFlagsRequest", // clinic_id = 4
            send_raw_to::<pb::ListFlagsResponse>(ch(), &auditor, LIST_FLAGS, bad(0x22))
                .await
                .map(drop),
        ),
        (
            "GetFlagRequest", // flag_id = 1
            send_raw_to::<pb::GetFlagResponse>(ch(), &auditor, GET_FLAG, bad(0x0a))
                .await
                .map(drop),
        ),
        (
            "CreateApiKeyRequest", // description = 3
            send_raw_to::<pb::CreateApiKeyResponse>(ch(), &admin, CREATE_API_KEY, bad(0x1a))
                .await
                .map(drop),
        ),
    ];
    for (message, result) in cases {
        let status = result.expect_err(message);
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{message}: {status:?}"
        );
        assert!(
            status.message().contains(&format!("not a valid {message}")),
            "{message}: {status:?}"
        );
    }
    // A server stream: the refusal comes as the call's answer.
    let mut client = raw_client(ch(), &auditor);
    client.ready().await.expect("ready");
    let watch = client
        .server_streaming::<_, pb::WatchFlagsResponse, _>(
            tonic::Request::new(bad(0x1a)), // clinic_id = 3
            http::uri::PathAndQuery::from_static(WATCH_FLAGS),
            RawCodec::default(),
        )
        .await;
    let status = match watch {
        Err(status) => status,
        Ok(stream) => stream
            .into_inner()
            .message()
            .await
            .expect_err("refused on the stream"),
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(snapshot(&app).await, before, "nothing written");
    app.stop().await;
}

#[tokio::test]
async fn instants_a_timestamp_cannot_hold_are_refused_by_field_everywhere() {
    let app = seeded_app(ServeOptions::default()).await;
    let before = snapshot(&app).await;
    let audit = || app.audit.clone();
    for (after, field) in [
        (at(ANCIENT, 0), "raised_after"),
        (at(YEAR_1 - 1, 0), "raised_after"),
        (at(YEAR_10000, 0), "raised_after"),
        (at(0, -1), "raised_after"),
    ] {
        let listing = audit()
            .list_flags(pb::ListFlagsRequest {
                raised_after: after,
                ..Default::default()
            })
            .await;
        assert_eq!(refused_fields("ListFlags", listing), [field], "{after:?}");
        let quality = audit()
            .get_rule_quality(pb::GetRuleQualityRequest {
                raised_after: after,
                ..Default::default()
            })
            .await;
        assert_eq!(
            refused_fields("GetRuleQuality", quality),
            [field],
            "{after:?}"
        );
    }
    // The edges themselves are instants: year 1 and the last second of 9999.
    let edges = audit()
        .list_flags(pb::ListFlagsRequest {
            raised_after: at(YEAR_1, 0),
            raised_before: at(YEAR_10000 - 1, 999_999_999),
            ..Default::default()
        })
        .await
        .expect("the range's edges are instants");
    assert!(!edges.into_inner().flags.is_empty(), "the seed's flags");

    let mut ancient_licence = clinic("DE-BER-03", "DE");
    ancient_licence.licence_valid_from = at(ANCIENT, 0);
    let mut endless_licence = clinic("DE-BER-04", "DE");
    endless_licence.licence_valid_until = at(3_000_000_000_000, 0); // year 95,000
    let mut odd_suspension = clinic("DE-BER-02", "DE");
    odd_suspension.status = pb::ClinicStatus::Suspended as i32;
    odd_suspension.status_effective_from = at(i64::MIN, 0);
    for (entry, field) in [
        (ancient_licence, "clinic.licence_valid_from"),
        (endless_licence, "clinic.licence_valid_until"),
        (odd_suspension, "clinic.status_effective_from"),
    ] {
        let upsert = app
            .registry
            .clone()
            .upsert_clinic(pb::UpsertClinicRequest {
                clinic: Some(entry),
            })
            .await;
        assert!(
            refused_fields("UpsertClinic", upsert).contains(&field.to_owned()),
            "{field}"
        );
    }
    let mut amended = abo_incompatible("SEED-1");
    amended.procured_at = at(i64::MIN, 0);
    let amend = app
        .ingest
        .clone()
        .amend_record(pb::AmendRecordRequest {
            record: Some(amended),
            reason: "typo".into(),
        })
        .await;
    assert_eq!(refused_fields("AmendRecord", amend), ["record.procured_at"]);
    assert_eq!(snapshot(&app).await, before, "nothing written");
    app.stop().await;
}

#[tokio::test]
async fn refusals_of_huge_inputs_fit_in_the_answer() {
    // Each of these once made a status too large for HTTP/2 trailers: the
    // client saw INTERNAL or RESOURCE_EXHAUSTED "h2 protocol error".
    let app = seeded_app(ServeOptions::default()).await;
    let before = snapshot(&app).await;
    let mut many_organs = clinic("DE-BER-05", "DE");
    many_organs.licensed_organs = vec![99; 200_000];
    let upsert = app
        .registry
        .clone()
        .upsert_clinic(pb::UpsertClinicRequest {
            clinic: Some(many_organs),
        })
        .await;
    assert_eq!(
        refused_fields("200,000 unknown organs", upsert),
        ["clinic.licensed_organs"]
    );
    let mut few_unknown = clinic("DE-BER-05", "DE");
    few_unknown.licensed_organs = vec![1, 99, 2, 0];
    let upsert = app
        .registry
        .clone()
        .upsert_clinic(pb::UpsertClinicRequest {
            clinic: Some(few_unknown),
        })
        .await;
    assert_eq!(
        refused_fields("two bad organs", upsert),
        ["clinic.licensed_organs[1]", "clinic.licensed_organs[3]"]
    );
    let listing = app
        .audit
        .clone()
        .list_flags(pb::ListFlagsRequest {
            rule_id: "R".repeat(900 * 1024),
            ..Default::default()
        })
        .await;
    assert_eq!(refused_fields("a 900 KiB rule id", listing), ["rule_id"]);
    let watch = app
        .audit
        .clone()
        .watch_flags(pb::WatchFlagsRequest {
            rule_id: "R".repeat(900 * 1024),
            ..Default::default()
        })
        .await;
    assert_eq!(
        refused_fields("a 900 KiB rule id", watch.map(drop)),
        ["rule_id"]
    );
    let rescan = app
        .admin
        .clone()
        .rescan(pb::RescanRequest {
            rule_ids: vec!["NOT_A_RULE".into(); 10_000],
            dry_run: true,
            ..Default::default()
        })
        .await;
    let fields = refused_fields("10,000 unknown rule ids", rescan.map(drop));
    assert_eq!(fields.len(), 48, "the first 48 are named");
    assert_eq!(fields[0], "rule_ids[0]");
    assert_eq!(snapshot(&app).await, before, "nothing written");
    app.stop().await;
}

/// The field paths of a stream acknowledgement's error.
fn ack_fields(ack: &pb::RecordAck) -> Vec<String> {
    let error = ack
        .error
        .as_ref()
        .expect("a rejected ack carries its error");
    assert_eq!(error.code, Code::InvalidArgument as i32, "{error:?}");
    error
        .details
        .iter()
        .filter(|any| any.type_url == "type.googleapis.com/google.rpc.BadRequest")
        .flat_map(|any| {
            tonic_types::pb::BadRequest::decode(any.value.as_slice())
                .expect("a BadRequest")
                .field_violations
        })
        .map(|v| v.field)
        .collect()
}

/// The i-th kind of broken record in a stream, and the field it breaks.
fn broken(i: usize) -> (Option<pb::TransplantRecord>, &'static str) {
    let id = format!("MIX-BAD-{i}");
    let mut r = kidney(&id);
    let donor = |r: &mut pb::TransplantRecord| r.donor.as_mut().expect("donor").clone();
    let field = match i % 10 {
        0 => return (None, "record"),
        1 => {
            r.clinic_id = "c".repeat(200 * 1024);
            "record.clinic_id"
        }
        2 => {
            r.transplanted_at = at(i64::MAX, 0);
            "record.transplanted_at"
        }
        3 => {
            r.organ = 1000 + i as i32;
            "record.organ"
        }
        4 => {
            r.external_record_id = format!("{id}\0");
            "record.external_record_id"
        }
        5 => {
            let mut d = donor(&mut r);
            d.identifier.as_mut().expect("identifier").value = "'; DROP TABLE records; --".into();
            r.donor = Some(d);
            "record.donor.identifier.value"
        }
        6 => {
            let mut d = donor(&mut r);
            d.age_years = Some(i32::MIN);
            r.donor = Some(d);
            "record.donor.age_years"
        }
        7 => {
            r.procured_at = at(1_741_000_000, 1_000_000_000);
            "record.procured_at"
        }
        8 => {
            let mut d = donor(&mut r);
            d.hla = Some(pb::HlaTyping {
                a: vec!["A2".into(), "A3".into(), "A9999".into()],
                b: Vec::new(),
                dr: Vec::new(),
            });
            r.donor = Some(d);
            "record.donor.hla.a"
        }
        _ => {
            r.donor = None;
            "record.donor"
        }
    };
    (Some(r), field)
}

#[tokio::test]
async fn a_stream_of_broken_records_among_good_ones_rejects_each_alone() {
    let app = seeded_app(ServeOptions {
        ingest_batch_size: 16,
        ..ServeOptions::default()
    })
    .await;
    let flags_before = app.count("flags").await;
    let mut records = Vec::new();
    let mut expected = Vec::new(); // None: accepted; Some(field): rejected naming it
    for i in 0..300 {
        if i % 3 == 0 {
            records.push(Some(kidney(&format!("MIX-GOOD-{i}"))));
            expected.push(None);
        } else {
            let (record, field) = broken(i);
            records.push(record);
            expected.push(Some(field));
        }
    }
    let responses = stream_all(&app, records).await;
    assert_eq!(responses.len(), expected.len(), "one ack per message");
    let mut good = Vec::new();
    for (i, (response, field)) in responses.iter().zip(&expected).enumerate() {
        assert_eq!(response.sequence, i as u64, "in order");
        let ack = response.ack.as_ref().expect("an ack");
        match field {
            None => {
                assert_eq!(ack.outcome, pb::Outcome::Accepted as i32, "{i}: {ack:?}");
                good.push(ack.external_record_id.clone());
            }
            Some(field) => {
                assert_eq!(ack.outcome, pb::Outcome::Rejected as i32, "{i}: {ack:?}");
                assert!(ack.record_id.is_empty(), "{i}: {ack:?}");
                assert_eq!(ack_fields(ack), [*field], "message {i}");
            }
        }
    }
    assert_eq!(good.len(), 100);
    let mut stored: Vec<String> =
        sqlx::query_scalar("SELECT external_record_id FROM records ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .expect("ids");
    assert_eq!(stored.remove(0), "SEED-1");
    assert_eq!(stored, good, "exactly the good ones are stored");
    let other_flags: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM flags f JOIN records r ON r.id = f.record_id \
         WHERE r.external_record_id NOT LIKE 'MIX-GOOD-%'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(
        other_flags, flags_before,
        "no flag but the good records' new ones"
    );
    app.stop().await;
}

#[tokio::test]
async fn rejected_records_count_towards_a_streams_cap() {
    let app = seeded_app(ServeOptions {
        max_stream_records: 4,
        ..ServeOptions::default()
    })
    .await;
    let before = snapshot(&app).await;
    let mut acks = send_all(&app, (1..=7).map(|i| broken(i).0).collect()).await;
    for i in 0..4 {
        let response = acks.message().await.expect("an ack").expect("an ack");
        assert_eq!(response.sequence, i);
        let ack = response.ack.expect("an ack");
        assert_eq!(ack.outcome, pb::Outcome::Rejected as i32, "{ack:?}");
    }
    let status = acks
        .message()
        .await
        .expect_err("garbage does not buy an endless stream");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(snapshot(&app).await, before, "nothing written");
    app.stop().await;
}

#[tokio::test]
async fn a_message_over_the_cap_ends_a_stream_keeping_what_was_acknowledged() {
    let app = seeded_app(ServeOptions::default()).await;
    let encode = |record: pb::TransplantRecord| {
        pb::SubmitRecordsRequest {
            record: Some(record),
        }
        .encode_to_vec()
    };
    let mut huge = kidney("CAP-HUGE");
    huge.clinic_id = "X".repeat(1024 * 1024 + 1);
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let mut client = raw_client(app.channel.clone(), &app.hospital_token);
    client.ready().await.expect("ready");
    let mut responses = client
        .streaming::<_, _, pb::SubmitRecordsResponse, _>(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            http::uri::PathAndQuery::from_static(SUBMIT_RECORDS),
            RawCodec::default(),
        )
        .await
        .expect("stream opens")
        .into_inner();
    // Both acknowledged before the oversized message is sent.
    for id in ["CAP-1", "CAP-2"] {
        tx.send(encode(kidney(id))).await.expect("send");
        let ack = responses.message().await.expect("ack").expect("ack");
        assert_eq!(ack.ack.expect("ack").external_record_id, id);
    }
    tx.send(encode(huge)).await.expect("send");
    let _ = tx.send(encode(kidney("CAP-3"))).await;
    let status = responses.message().await.expect_err("the stream ends");
    // tonic answers its message cap OUT_OF_RANGE, before any codec runs.
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    let ids: Vec<String> = sqlx::query_scalar("SELECT external_record_id FROM records ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .expect("ids");
    assert_eq!(ids, ["SEED-1", "CAP-1", "CAP-2"]);
    submit(&app, kidney("CAP-AFTER"))
        .await
        .expect("the server still serves");
    app.stop().await;
}

#[tokio::test]
async fn text_postgres_cannot_hold_is_refused_by_field() {
    let app = seeded_app(ServeOptions::default()).await;
    let before = snapshot(&app).await;
    let mut amended = abo_incompatible("SEED-1");
    amended.donor.as_mut().expect("donor").age_years = Some(46);
    let amend = app
        .ingest
        .clone()
        .amend_record(pb::AmendRecordRequest {
            record: Some(amended),
            reason: "typo\0".into(),
        })
        .await;
    assert_eq!(refused_fields("a NUL in reason", amend), ["reason"]);
    let listing = app
        .audit
        .clone()
        .list_flags(pb::ListFlagsRequest {
            clinic_id: "DE\0".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(refused_fields("a NUL in clinic_id", listing), ["clinic_id"]);
    let key = app
        .admin
        .clone()
        .create_api_key(pb::CreateApiKeyRequest {
            role: pb::Role::Auditor as i32,
            description: "a\0b".into(),
            principal: "a.rossi@registry.test".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(refused_fields("a NUL in description", key), ["description"]);
    let clinic = app
        .registry
        .clone()
        .get_clinic(pb::GetClinicRequest {
            clinic_id: "DE\0".into(),
            include_history: false,
        })
        .await;
    assert_eq!(refused_fields("a NUL in clinic_id", clinic), ["clinic_id"]);
    assert_eq!(snapshot(&app).await, before, "nothing written");
    app.stop().await;
}

/// What a flood's attackers saw.
#[derive(Debug, Default)]
struct Flood {
    /// How many calls or streams ended with each code.
    codes: std::collections::BTreeMap<i32, usize>,
    /// Records acknowledged REJECTED on streams.
    rejected_acks: usize,
    /// Records acknowledged otherwise (none should be).
    other_acks: usize,
}

/// Sends `n` broken records on one SubmitRecords stream, then bytes that do
/// not decode: returns the acknowledgements REJECTED and others, and the end.
async fn broken_stream(channel: Channel, token: &str, n: usize) -> (usize, usize, Code) {
    let mut messages: Vec<Vec<u8>> = (0..n)
        .map(|k| {
            pb::SubmitRecordsRequest {
                record: broken(k).0,
            }
            .encode_to_vec()
        })
        .collect();
    messages.push(vec![0xff; 64]);
    let mut client = raw_client(channel, token);
    if client.ready().await.is_err() {
        return (0, 0, Code::Unavailable);
    }
    let opened = client
        .streaming::<_, _, pb::SubmitRecordsResponse, _>(
            tonic::Request::new(tokio_stream::iter(messages)),
            http::uri::PathAndQuery::from_static(SUBMIT_RECORDS),
            RawCodec::default(),
        )
        .await;
    let mut responses = match opened {
        Ok(r) => r.into_inner(),
        Err(status) => return (0, 0, status.code()),
    };
    let (mut rejected, mut other) = (0, 0);
    loop {
        match responses.message().await {
            Ok(Some(m))
                if m.ack
                    .as_ref()
                    .is_some_and(|a| a.outcome == pb::Outcome::Rejected as i32) =>
            {
                rejected += 1
            }
            Ok(Some(_)) => other += 1,
            Ok(None) => return (rejected, other, Code::Ok),
            Err(status) => return (rejected, other, status.code()),
        }
    }
}

#[tokio::test]
async fn a_flood_of_malformed_and_oversized_messages_leaves_the_server_up_and_bounded() {
    let database_url = fresh_database().await;
    let app = spawn_app_on(&database_url, Default::default()).await;
    let hospital = app.hospital_token.clone();
    app.stop().await;
    let server = ServerProcess::start(&database_url, "info").await;
    let pid = server.pid();
    let channel = || async {
        Channel::from_shared(format!("http://{}", server.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    };
    let mut ingest = pb::ingest_service_client::IngestServiceClient::new(InterceptedService::new(
        channel().await,
        Bearer::new(&hospital),
    ));
    for i in 0..5 {
        ingest
            .submit_record(pb::SubmitRecordRequest {
                record: Some(kidney(&format!("BEFORE-{i}"))),
            })
            .await
            .expect("accepted before the flood");
    }
    let baseline = rss_kib(pid);

    let flood_for = Duration::from_secs(4);
    let mut attackers = Vec::new();
    for a in 0..12u64 {
        let channel = channel().await;
        let token = hospital.clone();
        attackers.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + flood_for;
            let mut seen = Flood::default();
            let mut i = 0u64;
            while tokio::time::Instant::now() < deadline {
                if a % 4 == 3 {
                    // A stream of broken records, then bytes that do not decode.
                    let (rejected, other, end) = broken_stream(channel.clone(), &token, 20).await;
                    seen.rejected_acks += rejected;
                    seen.other_acks += other;
                    *seen.codes.entry(end as i32).or_default() += 1;
                    i += 1;
                    continue;
                }
                let bytes = match (a + i) % 3 {
                    0 => vec![0xab; 2 * 1024 * 1024], // over the message cap
                    1 => vec![0x7b; 64 * 1024],       // nested groups
                    _ => {
                        let mut r = kidney(&format!("FLOOD-{a}-{i}"));
                        r.clinic_id = "c".repeat(512 * 1024); // huge field
                        pb::SubmitRecordRequest { record: Some(r) }.encode_to_vec()
                    }
                };
                let code = send_raw(channel.clone(), &token, bytes)
                    .await
                    .err()
                    .map_or(Code::Ok, |s| s.code());
                *seen.codes.entry(code as i32).or_default() += 1;
                i += 1;
            }
            seen
        }));
    }
    let mut peak = baseline;
    let sampling = tokio::time::Instant::now();
    while sampling.elapsed() < flood_for {
        peak = peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut flood = Flood::default();
    for attacker in attackers {
        let seen = attacker.await.expect("attacker");
        flood.rejected_acks += seen.rejected_acks;
        flood.other_acks += seen.other_acks;
        for (code, n) in seen.codes {
            *flood.codes.entry(code).or_default() += n;
        }
    }
    peak = peak.max(rss_kib(pid));
    eprintln!("flood: {flood:?}; RSS {baseline} KiB before, {peak} KiB at peak");
    let answered: usize = flood.codes.values().sum();
    assert!(answered >= 100, "a flood, not a trickle: {flood:?}");
    assert!(flood.rejected_acks >= 20, "streams were served: {flood:?}");
    assert_eq!(
        flood.other_acks, 0,
        "every broken record rejected: {flood:?}"
    );
    for code in flood.codes.keys() {
        assert!(
            [
                Code::InvalidArgument,
                Code::ResourceExhausted,
                Code::OutOfRange
            ]
            .iter()
            .any(|c| *c as i32 == *code),
            "every flood message is refused clearly: {flood:?}"
        );
    }
    assert!(
        peak < baseline + 200 * 1024,
        "memory stays bounded: {baseline} KiB before, {peak} KiB at peak"
    );
    ingest
        .submit_record(pb::SubmitRecordRequest {
            record: Some(kidney("AFTER-FLOOD")),
        })
        .await
        .expect("accepted after the flood");

    // Still serving, and everything acknowledged before is there.
    let health = tonic_health::pb::health_client::HealthClient::new(channel().await)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health answers")
        .into_inner()
        .status;
    assert_eq!(health, 1, "SERVING");
    let pool = sqlx::PgPool::connect(&database_url).await.expect("connect");
    let ids: Vec<String> = sqlx::query_scalar("SELECT external_record_id FROM records ORDER BY 1")
        .fetch_all(&pool)
        .await
        .expect("ids");
    let mut expected: Vec<String> = (0..5).map(|i| format!("BEFORE-{i}")).collect();
    expected.insert(0, "AFTER-FLOOD".into());
    assert_eq!(ids, expected, "everything acknowledged, nothing else");
    server.signal(libc::SIGTERM);
    let (status, _) = server.drain().await;
    assert!(status.success(), "a clean exit after the flood");
}
