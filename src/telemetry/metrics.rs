//! Prometheus metrics: names and units after the OpenTelemetry semantic
//! conventions (RPC and database-client metrics) and Prometheus naming
//! (`_seconds`, `_total`), recorded through the `metrics` facade and served
//! on an HTTP endpoint of their own.
//!
//! Until [`install`] runs, recording is a no-op: commands other than `serve`,
//! and servers started in-process by tests, pay nothing.

use std::convert::Infallible;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Server-side RPC latency, labelled by service, method and status code.
pub const RPC_DURATION: &str = "rpc_server_call_duration_seconds";
/// Records submitted, by outcome and hospital.
pub const RECORDS_INGESTED: &str = "transplant_audit_records_ingested_total";
/// Flags raised, by rule and severity.
pub const FLAGS_RAISED: &str = "transplant_audit_flags_raised_total";
/// Time to run the rules over one record.
pub const RULE_EVALUATION: &str = "transplant_audit_rule_evaluation_duration_seconds";
/// Connections in the pool, by state (idle, used).
pub const POOL_CONNECTIONS: &str = "db_client_connection_count";
/// The most connections the pool opens.
pub const POOL_MAX: &str = "db_client_connection_max";
/// Time spent waiting for a pooled connection.
pub const POOL_WAIT: &str = "db_client_connection_wait_time_seconds";
/// 1 while the database answers, else 0.
pub const DATABASE_UP: &str = "transplant_audit_database_up";
/// Open `WatchFlags` streams.
pub const FLAG_WATCHERS: &str = "transplant_audit_flag_watchers";
/// Always 1; the labels say what is running.
pub const BUILD_INFO: &str = "transplant_audit_build_info";
/// Blocks the sealer added to the ledger.
pub const BLOCKS_SEALED: &str = "transplant_audit_ledger_blocks_sealed_total";
/// The last sequence number sealed, and when.
pub const SEALED_THROUGH: &str = "transplant_audit_ledger_sealed_seq";
/// When the last block was sealed (Unix seconds).
pub const LAST_SEAL: &str = "transplant_audit_ledger_last_seal_timestamp_seconds";
/// When the sealer last finished a round, sealing or finding nothing new
/// (Unix seconds): set only by the replica holding the sealer's lock.
pub const LAST_ROUND: &str = "transplant_audit_ledger_last_round_timestamp_seconds";
/// Rounds of sealing that waited in vain for a transaction held open.
pub const SEAL_BLOCKED: &str = "transplant_audit_ledger_seal_blocked_total";
/// Digests a sink failed to take, by sink.
pub const DIGEST_SINK_FAILURES: &str = "transplant_audit_ledger_digest_sink_failures_total";

/// Histogram buckets in seconds: from a cached key check to a slow batch.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Rule evaluation takes microseconds.
const RULE_BUCKETS: &[f64] = &[
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.01,
];

/// How often histograms are drained into the exposition.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Why metrics could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The recorder could not be built or installed.
    #[error("metrics recorder: {0}")]
    Recorder(#[from] metrics_exporter_prometheus::BuildError),
}

/// Installs the global Prometheus recorder and describes every metric.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(RULE_EVALUATION.into()), RULE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .install_recorder()?;
    describe();
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

fn describe() {
    describe_histogram!(
        RPC_DURATION,
        Unit::Seconds,
        "Duration of gRPC calls served, to the end of the response"
    );
    describe_counter!(
        RECORDS_INGESTED,
        "Records submitted, by outcome (accepted, duplicate, rejected) and hospital"
    );
    describe_counter!(
        FLAGS_RAISED,
        "Flags raised on newly stored records, by rule and severity"
    );
    describe_histogram!(
        RULE_EVALUATION,
        Unit::Seconds,
        "Time to run the rules over one record"
    );
    describe_gauge!(POOL_CONNECTIONS, "Database connections, by state");
    describe_gauge!(POOL_MAX, "The most database connections the pool opens");
    describe_histogram!(
        POOL_WAIT,
        Unit::Seconds,
        "Time waiting for a database connection from the pool"
    );
    describe_gauge!(DATABASE_UP, "1 while the database answers, else 0");
    describe_gauge!(FLAG_WATCHERS, "Open WatchFlags streams");
    describe_gauge!(BUILD_INFO, "Always 1; the labels describe the build");
    describe_counter!(BLOCKS_SEALED, "Blocks the sealer added to the ledger");
    describe_gauge!(SEALED_THROUGH, "The last ledger sequence number sealed");
    describe_gauge!(
        LAST_SEAL,
        Unit::Seconds,
        "When the newest ledger block was sealed (Unix time)"
    );
    describe_gauge!(
        LAST_ROUND,
        Unit::Seconds,
        "When the sealer last finished a round, with or without a block (Unix time)"
    );
    describe_counter!(
        SEAL_BLOCKED,
        "Rounds of sealing that waited in vain for a transaction held open"
    );
    describe_counter!(
        DIGEST_SINK_FAILURES,
        "Ledger digests a sink failed to take, by sink (file, http)"
    );
}

/// Serves `GET /metrics` on `listener`, keeping histograms drained; runs
/// until its task is aborted. Warns at once, before the future is first
/// polled, when the endpoint listens beyond loopback: it is unauthenticated
/// and labels records by hospital and flags by rule.
pub fn serve(listener: TcpListener, handle: PrometheusHandle) -> impl Future<Output = ()> {
    if let Ok(addr) = listener.local_addr() {
        if !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "metrics on a non-loopback address: GET /metrics is unauthenticated and names \
                 hospitals and the rules raising flags; keep it reachable by the scraper only"
            );
        }
    }
    exposition_loop(listener, handle)
}

async fn exposition_loop(listener: TcpListener, handle: PrometheusHandle) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        let stream = tokio::select! {
            _ = upkeep.tick() => {
                handle.run_upkeep();
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    continue;
                }
            },
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = exposition(&handle, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "metrics endpoint: connection ended");
            }
        });
    }
}

/// The answer to one scrape.
fn exposition<B>(
    handle: &PrometheusHandle,
    request: &http::Request<B>,
) -> http::Response<Full<Bytes>> {
    let (status, content_type, body) =
        if request.method() == http::Method::GET && request.uri().path() == "/metrics" {
            (
                http::StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                handle.render(),
            )
        } else {
            (
                http::StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "metrics are at GET /metrics\n".to_owned(),
            )
        };
    let mut response = http::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

/// Counts one finished RPC; `code` is the numeric gRPC status.
pub fn rpc_finished(service: &'static str, method: &'static str, code: i32, elapsed: Duration) {
    histogram!(
        RPC_DURATION,
        "rpc_system" => "grpc",
        "rpc_service" => service,
        "rpc_method" => method,
        "rpc_grpc_status_code" => code.to_string(),
    )
    .record(elapsed.as_secs_f64());
}

/// Counts submitted records with one outcome for `hospital`.
pub fn records_ingested(outcome: &'static str, hospital: &str, count: u64) {
    if count > 0 {
        counter!(RECORDS_INGESTED, "outcome" => outcome, "hospital" => hospital.to_owned())
            .increment(count);
    }
}

/// Counts one raised flag.
pub fn flag_raised(rule: &'static str, severity: &'static str) {
    counter!(FLAGS_RAISED, "rule" => rule, "severity" => severity).increment(1);
}

/// Records how long the rules took over one record.
pub fn rule_evaluation(elapsed: Duration) {
    histogram!(RULE_EVALUATION).record(elapsed.as_secs_f64());
}

/// Records the pool's current shape.
pub fn pool_state(open: u32, idle: usize, max: u32) {
    let idle = u32::try_from(idle).unwrap_or(u32::MAX);
    gauge!(POOL_CONNECTIONS, "db_client_connection_state" => "idle").set(f64::from(idle));
    gauge!(POOL_CONNECTIONS, "db_client_connection_state" => "used")
        .set(f64::from(open.saturating_sub(idle)));
    gauge!(POOL_MAX).set(f64::from(max));
}

/// Records one wait for a pooled connection.
pub fn pool_wait(elapsed: Duration) {
    histogram!(POOL_WAIT).record(elapsed.as_secs_f64());
}

/// Records whether the database answers.
pub fn database_up(up: bool) {
    gauge!(DATABASE_UP).set(if up { 1.0 } else { 0.0 });
}

/// Records a block sealed through sequence number `last_seq`.
pub fn block_sealed(last_seq: i64) {
    counter!(BLOCKS_SEALED).increment(1);
    gauge!(SEALED_THROUGH).set(last_seq as f64);
    gauge!(LAST_SEAL).set(unix_now());
}

/// Records a round of sealing finished, with a block or with nothing new.
pub fn seal_round() {
    gauge!(LAST_ROUND).set(unix_now());
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Counts a round of sealing that waited in vain.
pub fn seal_blocked() {
    counter!(SEAL_BLOCKED).increment(1);
}

/// Counts a digest a sink failed to take.
pub fn digest_sink_failed(sink: &'static str) {
    counter!(DIGEST_SINK_FAILURES, "sink" => sink).increment(1);
}

/// Counts a `WatchFlags` stream opening (+1) or closing (-1).
pub fn watchers_changed(delta: f64) {
    gauge!(FLAG_WATCHERS).increment(delta);
}
