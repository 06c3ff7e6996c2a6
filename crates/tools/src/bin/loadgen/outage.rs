//! `--mode outage`: what callers see while the server's database is
//! stopped and started again. The server must run on the project-managed
//! local Postgres under `--postgres-dir` (a server started without
//! DATABASE_URL keeps it under `<data dir>/postgres`), which this tool
//! stops and starts itself.
//!
//! One caller submits a record every few milliseconds on a connection of
//! its own, a second polls health on another; after `--outage-after`
//! seconds Postgres is stopped (fast mode), and `--outage-seconds` after it
//! is down it is started again. The report gives how long the service took
//! to know (the calls answered between the stop and health NOT_SERVING),
//! how fast calls were refused while it knew (target: every UNAVAILABLE
//! answer under 100 ms, each with RetryInfo), and how soon after Postgres
//! was back a record was stored again (target: under 1 s).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde::Serialize;
use tokio::sync::Mutex;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;
use transplant_audit_core::wire::pb;
use transplant_audit_tools::localdb::LocalPostgres;

use super::grpc::{Ingest, explain};
use super::report::{Judged, Latency};

/// Target: every call refused while the service knows the database is down answers within this.
pub const REFUSAL_TARGET_MS: f64 = 100.0;
/// Target: a record stored within this of Postgres being back.
pub const RECOVERY_TARGET_MS: f64 = 1000.0;
/// Pause between a caller's calls, and between health checks.
const PACE: Duration = Duration::from_millis(5);
/// Deadline of one call: longer than the pool's timeout, so a call that
/// waits for it is seen waiting.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the run goes on after a record was stored again.
const AFTER_RECOVERY: Duration = Duration::from_millis(500);

/// How the outage runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The local Postgres's folder (`<data dir>/postgres`).
    pub postgres_dir: PathBuf,
    /// Seconds of normal service before Postgres is stopped.
    pub after: Duration,
    /// Seconds Postgres stays down.
    pub down_for: Duration,
}

/// One call of the caller.
#[derive(Debug, Clone, Copy)]
struct Call {
    sent: Instant,
    took: Duration,
    code: Code,
    retry_info: bool,
}

/// When things happened, relative to the stop's start.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The local Postgres's folder.
    pub postgres_dir: String,
    /// Stopping Postgres took this long (pg_ctl stop -m fast), ms.
    pub stop_took_ms: f64,
    /// From the stop's start to health NOT_SERVING, ms.
    pub not_serving_after_ms: Option<f64>,
    /// Calls sent after the stop began and answered before health said
    /// NOT_SERVING: the window the service did not know yet.
    pub window: Option<Latency>,
    /// How many calls that window held.
    pub window_calls: usize,
    /// UNAVAILABLE answers to calls sent while health said NOT_SERVING.
    pub refused: Option<Latency>,
    /// How many such calls.
    pub refused_calls: usize,
    /// Of those, how many carried RetryInfo.
    pub refused_with_retry_info: usize,
    /// Calls answered with something else than OK or UNAVAILABLE.
    pub other_codes: Vec<String>,
    /// From Postgres started again (pg_ctl start returned) to health
    /// SERVING, ms; negative when health turned first.
    pub serving_after_start_ms: Option<f64>,
    /// From Postgres started again to the first record stored after, ms.
    pub stored_after_start_ms: Option<f64>,
}

impl Judged for Report {
    fn render(&self) -> String {
        let mut out = String::new();
        let ms = |v: Option<f64>| v.map_or_else(|| "never".into(), |v| format!("{v:.0} ms"));
        let lat = |l: &Option<Latency>| {
            l.map_or_else(
                || "-".into(),
                |l| {
                    format!(
                        "p50 {:.1} / p99 {:.1} / max {:.1} ms",
                        l.p50_ms, l.p99_ms, l.max_ms
                    )
                },
            )
        };
        let verdict = |pass: bool| if pass { "PASS" } else { "FAIL" };
        let _ = writeln!(
            out,
            "transplant-audit outage: local Postgres under {}",
            self.postgres_dir
        );
        let _ = writeln!(
            out,
            "stop (pg_ctl -m fast) took {:.0} ms; health NOT_SERVING {} after the stop began",
            self.stop_took_ms,
            ms(self.not_serving_after_ms)
        );
        let _ = writeln!(
            out,
            "before the service knew: {} calls, {}",
            self.window_calls,
            lat(&self.window)
        );
        let refused_pass = self.refused.is_some_and(|l| l.max_ms < REFUSAL_TARGET_MS)
            && self.refused_with_retry_info == self.refused_calls;
        let _ = writeln!(
            out,
            "while it knew: {} calls UNAVAILABLE ({} with RetryInfo), {}   target max < {REFUSAL_TARGET_MS} ms: {}",
            self.refused_calls,
            self.refused_with_retry_info,
            lat(&self.refused),
            verdict(refused_pass)
        );
        let recovered_pass = self
            .stored_after_start_ms
            .is_some_and(|v| v < RECOVERY_TARGET_MS);
        let _ = writeln!(
            out,
            "Postgres back: health SERVING after {}, a record stored after {}   target < {RECOVERY_TARGET_MS} ms: {}",
            ms(self.serving_after_start_ms),
            ms(self.stored_after_start_ms),
            verdict(recovered_pass)
        );
        if !self.other_codes.is_empty() {
            let _ = writeln!(out, "other answers: {}", self.other_codes.join(", "));
        }
        out
    }

    fn errors(&self) -> usize {
        self.other_codes.len()
    }

    fn missed_a_target(&self) -> bool {
        let refused = self.refused.is_some_and(|l| l.max_ms < REFUSAL_TARGET_MS)
            && self.refused_with_retry_info == self.refused_calls;
        let recovered = self
            .stored_after_start_ms
            .is_some_and(|v| v < RECOVERY_TARGET_MS);
        !(refused && recovered)
    }
}

/// Runs the outage against the server behind `ingest` and `health`
/// (separate connections), submitting `records` one after another.
pub async fn run(
    ingest: Ingest,
    health: Channel,
    records: Vec<pb::TransplantRecord>,
    settings: &Settings,
) -> anyhow::Result<Report> {
    let dir = settings.postgres_dir.clone();
    let pg = tokio::task::spawn_blocking(move || LocalPostgres::ensure_running(&dir))
        .await?
        .context("the local Postgres under --postgres-dir")?;
    let pg = Arc::new(pg);
    let done = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let caller = tokio::spawn(call_repeatedly(
        ingest,
        records,
        calls.clone(),
        done.clone(),
    ));
    let poller = tokio::spawn(poll_health(health, statuses.clone(), done.clone()));

    tokio::time::sleep(settings.after).await;
    eprintln!("stopping Postgres");
    let stop_began = Instant::now();
    let stopping = pg.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await?
        .context("stopping the local Postgres")?;
    let stop_took = stop_began.elapsed();
    tokio::time::sleep(settings.down_for).await;
    eprintln!("starting Postgres");
    let dir = settings.postgres_dir.clone();
    let again = tokio::task::spawn_blocking(move || LocalPostgres::ensure_running(&dir))
        .await?
        .context("starting the local Postgres again")?;
    let started = Instant::now();
    // Until a record is stored again, or the pool's timeout and more passed.
    for _ in 0..200 {
        let stored = calls
            .lock()
            .await
            .iter()
            .any(|c: &Call| c.sent >= started && c.code == Code::Ok);
        if stored {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(AFTER_RECOVERY).await;
    done.store(true, Ordering::Relaxed);
    caller.await??;
    poller.await?;
    drop(again);

    let calls = calls.lock().await.clone();
    let statuses = statuses.lock().await.clone();
    Ok(judge(
        &calls, &statuses, stop_began, stop_took, started, settings,
    ))
}

fn judge(
    calls: &[Call],
    statuses: &[(Instant, ServingStatus)],
    stop_began: Instant,
    stop_took: Duration,
    started: Instant,
    settings: &Settings,
) -> Report {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let not_serving = statuses
        .iter()
        .find(|(at, s)| *at >= stop_began && *s == ServingStatus::NotServing)
        .map(|(at, _)| *at);
    // Health may turn SERVING before the start returns (pg_ctl waits for
    // more than the first accepted connection).
    let serving_again = not_serving.and_then(|n| {
        statuses
            .iter()
            .find(|(at, s)| *at > n && *s == ServingStatus::Serving)
            .map(|(at, _)| *at)
    });
    let mut window: Vec<Duration> = calls
        .iter()
        .filter(|c| c.sent >= stop_began && not_serving.is_none_or(|n| c.sent < n))
        .map(|c| c.took)
        .collect();
    let refused: Vec<&Call> = calls
        .iter()
        .filter(|c| {
            not_serving.is_some_and(|n| c.sent >= n)
                && serving_again.is_none_or(|s| c.sent + c.took < s)
                && c.code == Code::Unavailable
        })
        .collect();
    let mut refused_took: Vec<Duration> = refused.iter().map(|c| c.took).collect();
    let stored = calls
        .iter()
        .find(|c| c.sent >= started && c.code == Code::Ok)
        .map(|c| (c.sent + c.took).duration_since(started));
    let other_codes = calls
        .iter()
        .filter(|c| !matches!(c.code, Code::Ok | Code::Unavailable))
        .map(|c| format!("{:?}", c.code))
        .collect();
    Report {
        postgres_dir: settings.postgres_dir.display().to_string(),
        stop_took_ms: ms(stop_took),
        not_serving_after_ms: not_serving.map(|n| ms(n.duration_since(stop_began))),
        window_calls: window.len(),
        window: Latency::of(&mut window),
        refused_calls: refused.len(),
        refused_with_retry_info: refused.iter().filter(|c| c.retry_info).count(),
        refused: Latency::of(&mut refused_took),
        other_codes,
        serving_after_start_ms: serving_again.map(|s| {
            if s >= started {
                ms(s.duration_since(started))
            } else {
                -ms(started.duration_since(s))
            }
        }),
        stored_after_start_ms: stored.map(ms),
    }
}

/// Submits the records one at a time until told to stop.
async fn call_repeatedly(
    mut ingest: Ingest,
    records: Vec<pb::TransplantRecord>,
    calls: Arc<Mutex<Vec<Call>>>,
    done: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    for record in records {
        if done.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut request = Request::new(pb::SubmitRecordRequest {
            record: Some(record),
        });
        request.set_timeout(CALL_TIMEOUT);
        let sent = Instant::now();
        let result = ingest.submit_record(request).await;
        let took = sent.elapsed();
        let (code, retry_info) = match &result {
            Ok(_) => (Code::Ok, false),
            Err(s) if matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied) => {
                return Err(explain(s, "SubmitRecord"));
            }
            Err(s) => (s.code(), s.get_error_details().retry_info().is_some()),
        };
        calls.lock().await.push(Call {
            sent,
            took,
            code,
            retry_info,
        });
        tokio::time::sleep(PACE).await;
    }
    Err(anyhow!("ran out of records before the outage ended"))
}

/// Checks health until told to stop, keeping each change of status.
async fn poll_health(
    channel: Channel,
    statuses: Arc<Mutex<Vec<(Instant, ServingStatus)>>>,
    done: Arc<AtomicBool>,
) {
    let mut client = HealthClient::new(channel);
    let mut last = None;
    while !done.load(Ordering::Relaxed) {
        let status = client
            .check(HealthCheckRequest::default())
            .await
            .ok()
            .and_then(|r| ServingStatus::try_from(r.into_inner().status).ok())
            .unwrap_or(ServingStatus::Unknown);
        if last != Some(status) {
            statuses.lock().await.push((Instant::now(), status));
            last = Some(status);
        }
        tokio::time::sleep(PACE).await;
    }
}
