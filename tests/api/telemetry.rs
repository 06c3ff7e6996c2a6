//! Traces through a real OTLP receiver, the Prometheus endpoint after real
//! traffic, trace ids in the logs, and the health-only listener — all against
//! the real binary.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Identity, Server, ServerTlsConfig};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use transplant_audit::domain::Role;
use transplant_audit::wire::pb;
use transplant_audit::wire::pb::ingest_service_client::IngestServiceClient;

use crate::helpers::*;

/// The caller's trace, as a W3C `traceparent` would carry it.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Exported {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

/// An OTLP/gRPC trace receiver: what a collector is, in-process.
struct Receiver(mpsc::UnboundedSender<Exported>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let attributes = span
                        .attributes
                        .iter()
                        .map(|kv| {
                            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                Some(Value::StringValue(s)) => s.clone(),
                                Some(Value::IntValue(i)) => i.to_string(),
                                Some(Value::BoolValue(b)) => b.to_string(),
                                Some(Value::DoubleValue(d)) => d.to_string(),
                                other => format!("{other:?}"),
                            };
                            (kv.key.clone(), value)
                        })
                        .collect();
                    let _ = self.0.send(Exported {
                        name: span.name,
                        trace_id: hex::encode(span.trace_id),
                        span_id: hex::encode(span.span_id),
                        parent_span_id: hex::encode(span.parent_span_id),
                        attributes,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Starts a receiver; returns its endpoint URL and the spans it gets.
async fn otlp_receiver() -> (String, mpsc::UnboundedReceiver<Exported>) {
    otlp_receiver_with(None).await
}

/// Starts a receiver, speaking TLS with `tls` when given.
async fn otlp_receiver_with(
    tls: Option<ServerTlsConfig>,
) -> (String, mpsc::UnboundedReceiver<Exported>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).expect("TLS");
    }
    tokio::spawn(
        builder
            .add_service(TraceServiceServer::new(Receiver(tx)))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (format!("{scheme}://localhost:{}", addr.port()), rx)
}

/// A migrated database with a hospital key for the default hospital.
async fn database_with_hospital_key() -> (String, String) {
    let database_url = fresh_database().await;
    let app = spawn_app_on(&database_url, Default::default()).await;
    let hospital = create_key(&app.store, Role::Hospital, Some(DEFAULT_HOSPITAL)).await;
    app.stop().await;
    (database_url, hospital)
}

/// A server process exporting its spans to a receiver of the test's own.
async fn traced_server() -> (ServerProcess, String, mpsc::UnboundedReceiver<Exported>) {
    let (database_url, hospital) = database_with_hospital_key().await;
    let (endpoint, spans) = otlp_receiver().await;
    let server = ServerProcess::start_with(
        &database_url,
        "info",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    (server, hospital, spans)
}

fn with_traceparent<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
            .parse()
            .expect("ascii"),
    );
    request
}

/// The spans of the pipeline every accepted record goes through.
const PIPELINE: &[&str] = &[
    "validate",
    "lock",
    "context",
    "rules",
    "persist",
    "rules.pairing",
    "rules.repeat_donor",
    "rules.clinic",
    "rules.tourism",
];

#[tokio::test]
async fn a_submitted_record_is_traced_under_the_callers_trace() {
    let (server, hospital, mut spans) = traced_server().await;
    let record = kidney("TRACE-1");
    let identifier = donor_identifier(&record);
    let mut ingest = IngestServiceClient::new(server.connect(&hospital).await);
    ingest
        .submit_record(with_traceparent(pb::SubmitRecordRequest {
            record: Some(record),
        }))
        .await
        .expect("accepted");

    let seen = pipeline_spans(&mut spans, "SubmitRecord").await;
    assert_pipeline_under_callers_trace(&seen, "SubmitRecord", &identifier);
    stop_cleanly(server).await;
}

#[tokio::test]
async fn a_streamed_batch_is_traced_under_the_callers_trace() {
    let (server, hospital, mut spans) = traced_server().await;
    let record = kidney("TRACE-STREAM-1");
    let identifier = donor_identifier(&record);
    let mut ingest = IngestServiceClient::new(server.connect(&hospital).await);
    let requests = tokio_stream::iter([pb::SubmitRecordsRequest {
        record: Some(record),
    }]);
    let mut acks = ingest
        .submit_records(with_traceparent(requests))
        .await
        .expect("stream")
        .into_inner();
    while let Some(ack) = acks.message().await.expect("ack") {
        assert_eq!(ack.ack.expect("ack").outcome, pb::Outcome::Accepted as i32);
    }

    // A stream's batches are stored on tasks of their own; their spans
    // must still hang under the call's.
    let seen = pipeline_spans(&mut spans, "SubmitRecords").await;
    assert_pipeline_under_callers_trace(&seen, "SubmitRecords", &identifier);
    stop_cleanly(server).await;
}

#[tokio::test]
async fn spans_reach_a_collector_over_https() {
    let (database_url, hospital) = database_with_hospital_key().await;
    let ca = Ca::new("collector CA");
    let (cert, key) = ca.issue(&["localhost"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    let (endpoint, mut spans) = otlp_receiver_with(Some(tls)).await;
    assert!(endpoint.starts_with("https://"));
    let server = ServerProcess::start_with(
        &database_url,
        "info",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            (
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                ca_file.to_str().expect("utf-8"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let record = kidney("TRACE-TLS");
    let identifier = donor_identifier(&record);
    let mut ingest = IngestServiceClient::new(server.connect(&hospital).await);
    ingest
        .submit_record(with_traceparent(pb::SubmitRecordRequest {
            record: Some(record),
        }))
        .await
        .expect("accepted");
    let seen = pipeline_spans(&mut spans, "SubmitRecord").await;
    assert_pipeline_under_callers_trace(&seen, "SubmitRecord", &identifier);
    stop_cleanly(server).await;
}

#[tokio::test]
async fn an_unreadable_collector_ca_stops_start_up_with_a_clear_error() {
    let (database_url, _) = database_with_hospital_key().await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_transplant-audit"))
        .env("DATABASE_URL", &database_url)
        .env("FINGERPRINT_KEY", test_key_hex())
        .env("SIGNING_KEY", test_signing_key_hex())
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://localhost:4317")
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/ca.pem"), "{stderr}");
}

#[tokio::test]
async fn a_call_without_traceparent_starts_its_own_trace() {
    let (server, hospital, mut spans) = traced_server().await;
    let mut ingest = IngestServiceClient::new(server.connect(&hospital).await);
    ingest
        .submit_record(pb::SubmitRecordRequest {
            record: Some(kidney("TRACE-2")),
        })
        .await
        .expect("accepted");
    let rpc = loop {
        let span = tokio::time::timeout(Duration::from_secs(20), spans.recv())
            .await
            .expect("exported in time")
            .expect("receiver open");
        if span.name.ends_with("/SubmitRecord") {
            break span;
        }
    };
    assert_eq!(rpc.parent_span_id, "", "a root span");
    assert_ne!(rpc.trace_id, TRACE_ID);
    assert_eq!(rpc.trace_id.len(), 32);
    server.signal(libc::SIGTERM);
    let _ = server.drain().await;
}

#[tokio::test]
async fn json_logs_inside_a_call_carry_its_trace_id() {
    let (database_url, _hospital) = database_with_hospital_key().await;
    let server = ServerProcess::start(&database_url, "info").await;
    // A forged key is refused and the refusal logged inside the call's span.
    let mut intruder = IngestServiceClient::new(server.connect("ta_000000000000_forged").await);
    let refused = intruder
        .submit_record(with_traceparent(pb::SubmitRecordRequest {
            record: Some(kidney("TRACE-3")),
        }))
        .await
        .expect_err("forged key");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    server.signal(libc::SIGTERM);
    let (_, log) = server.drain().await;
    let inside: Vec<serde_json::Value> = log
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| entry.get("spans").is_some())
        .collect();
    assert!(!inside.is_empty(), "some line was logged inside the call");
    for entry in inside {
        let trace_ids: Vec<&str> = entry["spans"]
            .as_array()
            .expect("span list")
            .iter()
            .filter_map(|span| span["trace_id"].as_str())
            .collect();
        assert_eq!(trace_ids, [TRACE_ID], "{entry}");
    }
}

/// The value of the sample of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|(_, value)| value.parse().ok())
}

#[tokio::test]
async fn the_metrics_endpoint_counts_what_was_sent() {
    let (database_url, hospital) = database_with_hospital_key().await;
    let server = ServerProcess::start(&database_url, "info").await;
    let mut ingest = IngestServiceClient::new(server.connect(&hospital).await);
    let submit = |record| pb::SubmitRecordRequest {
        record: Some(record),
    };
    for id in ["M-1", "M-2", "M-3"] {
        ingest
            .submit_record(submit(kidney(id)))
            .await
            .expect("accepted");
    }
    ingest
        .submit_record(submit(kidney("M-1")))
        .await
        .expect("duplicate");
    let mut bad = kidney("M-4");
    bad.clinic_id.clear();
    let rejected = ingest
        .submit_record(submit(bad))
        .await
        .expect_err("invalid");
    assert_eq!(rejected.code(), tonic::Code::InvalidArgument);
    let stream = futures::stream::iter(["M-5", "M-6", "M-2"].map(|id| pb::SubmitRecordsRequest {
        record: Some(kidney(id)),
    }));
    let mut acks = ingest
        .submit_records(stream)
        .await
        .expect("stream")
        .into_inner();
    while acks.message().await.expect("ack").is_some() {}

    let text = scrape(&server.metrics_addr).await;
    let records = |outcome| {
        sample(
            &text,
            "transplant_audit_records_ingested_total",
            &[("outcome", outcome), ("hospital", DEFAULT_HOSPITAL)],
        )
    };
    assert_eq!(records("accepted"), Some(5.0), "{text}");
    assert_eq!(records("duplicate"), Some(2.0), "{text}");
    assert_eq!(records("rejected"), Some(1.0), "{text}");
    let calls = |method, code| {
        sample(
            &text,
            "rpc_server_call_duration_seconds_count",
            &[
                ("rpc_service", "transplant_audit.v1.IngestService"),
                ("rpc_method", method),
                ("rpc_grpc_status_code", code),
            ],
        )
    };
    assert_eq!(calls("SubmitRecord", "0"), Some(4.0), "{text}");
    assert_eq!(calls("SubmitRecord", "3"), Some(1.0), "{text}");
    assert_eq!(calls("SubmitRecords", "0"), Some(1.0), "{text}");
    assert!(
        text.contains("rpc_server_call_duration_seconds_bucket{"),
        "latency is a histogram"
    );
    // The default clinic is not in the registry: each stored record raised one flag.
    assert_eq!(
        sample(
            &text,
            "transplant_audit_flags_raised_total",
            &[("rule", "CLINIC_UNREGISTERED"), ("severity", "HIGH")]
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "transplant_audit_rule_evaluation_duration_seconds_count",
            &[]
        ),
        Some(5.0),
        "the rules ran once per stored record"
    );
    assert_eq!(sample(&text, "db_client_connection_max", &[]), Some(16.0));
    assert_eq!(
        sample(&text, "transplant_audit_database_up", &[]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "transplant_audit_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    server.signal(libc::SIGTERM);
    let _ = server.drain().await;
}

#[tokio::test]
async fn the_metrics_endpoint_answers_only_get_metrics() {
    let (database_url, _) = database_with_hospital_key().await;
    let server = ServerProcess::start(&database_url, "info").await;
    let mut stream = tokio::net::TcpStream::connect(&server.metrics_addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /admin HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    server.signal(libc::SIGTERM);
    let _ = server.drain().await;
}

#[tokio::test]
async fn the_health_listener_serves_health_and_nothing_else() {
    let (database_url, hospital) = database_with_hospital_key().await;
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let health_addr = probe.local_addr().expect("addr").to_string();
    drop(probe);
    let server =
        ServerProcess::start_with(&database_url, "info", &[("HEALTH_ADDR", &health_addr)]).await;
    let channel = Channel::from_shared(format!("http://{health_addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING");
    let alive = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "liveness".into(),
        })
        .await
        .expect("liveness answers")
        .into_inner()
        .status;
    assert_eq!(alive, 1, "alive");
    let other = IngestServiceClient::new(tonic::service::interceptor::InterceptedService::new(
        channel,
        Bearer::new(&hospital),
    ))
    .submit_record(pb::SubmitRecordRequest {
        record: Some(kidney("HEALTH-1")),
    })
    .await
    .expect_err("only health here");
    assert_eq!(other.code(), tonic::Code::Unimplemented);
    server.signal(libc::SIGTERM);
    let _ = server.drain().await;
}

/// Receives exported spans until the pipeline and the RPC span of `method` are all in.
async fn pipeline_spans(
    spans: &mut mpsc::UnboundedReceiver<Exported>,
    method: &str,
) -> Vec<Exported> {
    let rpc_name = format!("transplant_audit.v1.IngestService/{method}");
    let mut seen: Vec<Exported> = Vec::new();
    let complete = |seen: &[Exported]| {
        PIPELINE
            .iter()
            .copied()
            .chain([rpc_name.as_str()])
            .all(|name| seen.iter().any(|s| s.name == name))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !complete(&seen) {
        let span = tokio::time::timeout_at(deadline, spans.recv())
            .await
            .unwrap_or_else(|_| panic!("spans exported in time; got {seen:#?}"))
            .expect("receiver open");
        seen.push(span);
    }
    seen
}

/// The RPC span of `method` continues the caller's trace, every pipeline
/// step descends from it, and no attribute carries `identifier`.
fn assert_pipeline_under_callers_trace(seen: &[Exported], method: &str, identifier: &str) {
    let rpc_name = format!("transplant_audit.v1.IngestService/{method}");
    let rpc = seen.iter().find(|s| s.name == rpc_name).expect("rpc span");
    assert_eq!(rpc.trace_id, TRACE_ID, "the caller's trace continues");
    assert_eq!(
        rpc.parent_span_id, PARENT_SPAN_ID,
        "under the caller's span"
    );
    assert_eq!(rpc.attributes["rpc.system"], "grpc");
    assert_eq!(
        rpc.attributes["rpc.service"],
        "transplant_audit.v1.IngestService"
    );
    assert_eq!(rpc.attributes["rpc.method"], method);
    assert_eq!(rpc.attributes["rpc.grpc.status_code"], "0");

    let by_id: HashMap<&str, &Exported> = seen.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for name in PIPELINE {
        let step = seen.iter().find(|s| s.name == *name).expect("step");
        assert_eq!(step.trace_id, TRACE_ID, "{name} in the caller's trace");
        // Walk up: every step descends from the RPC span.
        let mut parent = step.parent_span_id.as_str();
        while parent != rpc.span_id {
            parent = by_id
                .get(parent)
                .unwrap_or_else(|| panic!("{name}: parent {parent} not exported"))
                .parent_span_id
                .as_str();
        }
    }
    for span in seen {
        for (key, value) in &span.attributes {
            assert!(
                !value.contains(identifier),
                "{}: attribute {key} carries an identifier",
                span.name
            );
        }
    }
}

/// The value of the record's donor identifier, which no span may carry.
fn donor_identifier(record: &pb::TransplantRecord) -> String {
    record
        .donor
        .as_ref()
        .and_then(|d| d.identifier.as_ref())
        .map(|i| i.value.clone())
        .expect("donor identifier")
}

/// Stops the server with SIGTERM and checks that it drained and exited cleanly.
async fn stop_cleanly(server: ServerProcess) {
    server.signal(libc::SIGTERM);
    let (status, _) = server.drain().await;
    assert!(status.success());
}
