//! Hostile input through the real server: bytes that are not the message
//! they claim to be, extreme values, huge fields, streams mixing good and
//! broken messages, and a flood of all of them. Each answers a clear error,
//! nothing is half stored, and the server stays up with bounded memory.

use std::marker::PhantomData;
use std::time::Duration;

use bytes::BufMut;
use prost::Message;
use tonic::Code;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use transplant_audit::api::pb;

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

/// The resident set size of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_flood_of_malformed_and_oversized_messages_leaves_the_server_up_and_bounded() {
    let database_url = fresh_database().await;
    let app = spawn_app_on(&database_url, Default::default()).await;
    let hospital = app.hospital_token.clone();
    app.stop().await;
    let server = ServerProcess::start(&database_url, "info").await;
    let pid = server.child.id();
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
    for a in 0..12 {
        let channel = channel().await;
        let token = hospital.clone();
        attackers.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + flood_for;
            let mut codes = std::collections::BTreeSet::new();
            let mut i = 0u64;
            while tokio::time::Instant::now() < deadline {
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
                codes.insert(code as i32);
                i += 1;
            }
            codes
        }));
    }
    let mut peak = baseline;
    let sampling = tokio::time::Instant::now();
    while sampling.elapsed() < flood_for {
        peak = peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut codes = std::collections::BTreeSet::new();
    for attacker in attackers {
        codes.extend(attacker.await.expect("attacker"));
    }
    for code in &codes {
        assert!(
            [
                Code::InvalidArgument,
                Code::ResourceExhausted,
                Code::OutOfRange
            ]
            .iter()
            .any(|c| *c as i32 == *code),
            "every flood message is refused clearly: {codes:?}"
        );
    }
    assert!(
        peak < baseline + 200 * 1024,
        "memory stays bounded: {baseline} KiB before, {peak} KiB at peak"
    );

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
    assert_eq!(
        ids,
        (0..5).map(|i| format!("BEFORE-{i}")).collect::<Vec<_>>()
    );
    server.signal(libc::SIGTERM);
    let (status, _) = server.drain().await;
    assert!(status.success(), "a clean exit after the flood");
}
