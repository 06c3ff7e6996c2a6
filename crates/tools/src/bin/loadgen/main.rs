//! `loadgen`: drives a running transplant-audit server over gRPC with
//! synthetic records, and measures it against raw Postgres inserts of the same rows.
//!
//! ```text
//! cargo build --release --bin transplant-audit --bin loadgen
//! target/release/loadgen --records 20000 --concurrency 64 --mode both \
//!     --server-pid <pid of transplant-audit> --database-url postgres://…/<the server's database>
//! ```
//!
//! Phases, in order: register the run's clinics; then `--repeats` times,
//! interleaved: unary SubmitRecord from `--concurrency` callers and, with
//! `--database-url`, its baseline (the same rows one per transaction after a
//! key lookup, from as many callers, in a scratch table dropped at the end);
//! one SubmitRecords stream of `--stream-records` and its baseline (the same
//! rows in batched `INSERT … SELECT FROM UNNEST`). Each ratio is taken
//! within a repeat; the report gives its median and range. Prints a table
//! (or, with `--json`, one JSON line) with records/s, p50/p99 latency, CPU
//! per process, WAL per record, the server's peak RSS and the target ratios.
//! Exits 1 when any record was not accepted (or, with `--strict`, a target was missed).
//! With `--replays N`, the first N records of each phase then go again,
//! unchanged through SubmitRecord (DUPLICATE expected) and corrected through
//! AmendRecord (ACCEPTED expected), as two more phases without baselines.
//!
//! `--mode list-flags` measures the auditors' side instead, with an AUDITOR
//! key: ListFlags first and next pages for a few common filters, `--rounds`
//! times each, p50/p99 per filter and page against a p99 target of 5 ms
//! (see `listing.rs`); nothing is written.
//!
//! `--mode investigate` measures InvestigationService with an AUDITOR key:
//! SearchRecords by donor and by clinic and month, GetNetwork at depth 2
//! from a flag, `--rounds` times each, p50/p99 against each call's target
//! (see `investigate.rs`); only the access log is written.
//!
//! `--mode suggest-cases` times SuggestCases over every open flag outside a
//! case, `--rounds` calls, against its 5 s target (see `suggest.rs`); only
//! the access log is written.
//!
//! `--mode paint` starts chromedriver and headless Chromium, signs in at the
//! console's `/login` with an AUDITOR key and loads the inbox `--rounds`
//! times per URL, with p50/p99 of the browser's first-contentful-paint
//! against a 300 ms target (see `paint.rs`); only the access log is written.

mod baseline;
mod console;
mod grpc;
mod investigate;
mod listing;
mod outage;
mod paint;
mod probe;
mod report;
mod rng;
mod suggest;
mod synth;

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Duration, NaiveTime, Utc};
use clap::Parser;
use transplant_audit_core::wire::pb;
use transplant_audit_core::wire::pb::ingest_service_client::IngestServiceClient;
use transplant_audit_core::wire::pb::registry_service_client::RegistryServiceClient;

use baseline::{BATCH_ROWS, Baseline, Row};
use grpc::{Bearer, Replay};
use probe::{CpuSnapshot, RssSampler, Watch};
use report::{Judged, Outcome, Phase, PhaseKind, Report};
use rng::Rng;
use sqlx::postgres::PgPoolOptions;
use synth::{Mix, Settings, Synth};

/// Which gRPC phases to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// SubmitRecord from concurrent callers.
    Unary,
    /// One SubmitRecords stream.
    Stream,
    /// Unary, then stream.
    Both,
    /// ListFlags first and next pages for common filters (an AUDITOR key); no ingest.
    ListFlags,
    /// SearchRecords and GetNetwork latencies (an AUDITOR key); no ingest.
    Investigate,
    /// SuggestCases over every open flag outside a case (an AUDITOR key); no ingest.
    SuggestCases,
    /// SubmitRecord and health while the local Postgres under
    /// --postgres-dir is stopped and started again.
    Outage,
    /// The web console's pages, signed in with an AUDITOR key (see console.rs); no ingest.
    Console,
    /// The inbox painted in headless Chromium, signed in with an AUDITOR key
    /// (see paint.rs); no ingest.
    Paint,
}

/// Load generator for transplant-audit: synthetic records over gRPC, measured
/// against raw Postgres inserts of the same rows.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
struct Args {
    /// The server's gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    endpoint: String,
    /// API key sent as `authorization: Bearer <key>` on every call (a HOSPITAL key for
    /// ingest, an AUDITOR key for list-flags and investigate).
    #[arg(long, env = "TRANSPLANT_AUDIT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// API key for registering the clinics (an ADMIN key); --api-key when unset.
    #[arg(long, env = "TRANSPLANT_AUDIT_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Submit every record for this hospital (the one a HOSPITAL key is bound to);
    /// unset, records are spread over a few hundred hospitals.
    #[arg(long)]
    hospital_id: Option<String>,
    /// Records per unary phase (and per stream phase, unless --stream-records is given).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=5_000_000))]
    records: u32,
    /// Records per stream phase [default: --records].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=5_000_000))]
    stream_records: Option<u32>,
    /// How many times the service phases and their baselines run, interleaved
    /// (unary, its baseline, stream, its baseline, then again); ratios are
    /// taken within a repeat and judged on their median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeats: u32,
    /// A phase shorter than this many seconds gets a note in the report.
    #[arg(long, default_value_t = 5)]
    min_seconds: u32,
    /// Concurrent callers of the unary phase (and of the one-row-per-transaction baseline).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
    /// Ingest modes: after the phases, the first this many records of each
    /// phase go again from --concurrency callers, unchanged through
    /// SubmitRecord (each must come back DUPLICATE), then corrected through
    /// AmendRecord (each must be ACCEPTED): the idempotency and amendment
    /// paths, which the phases never take. No baseline is measured for them.
    #[arg(long, default_value_t = 0)]
    replays: u32,
    /// Which gRPC phases to run.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// list-flags: first-and-next-page pairs measured per filter; investigate: calls per kind;
    /// console: requests per page; paint: loads per inbox URL.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rounds: u32,
    /// list-flags: flags per page; investigate: records per search page.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i32).range(1..=500))]
    page_size: i32,
    /// The server's database, for the raw-insert baselines (a scratch table is created and dropped).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The server's process id, to sample its resident memory (Linux /proc) and CPU time.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seed of the record synthesiser: the same seed gives the same records.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Prefix of the run's record ids, clinic ids and identifiers [default: the Unix time].
    #[arg(long, value_parser = parse_run_id)]
    run_id: Option<String>,
    /// How many clinics to register and spread records over.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    clinics: u32,
    /// Transplants per clinic per year. The run's records are a registry's
    /// history at this rate, each phase the period after the one before, so
    /// a clinic's rule windows hold as many records in a long run as in a
    /// short one (a busy centre does 200 a year; Germany's average 100).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    clinic_rate: u32,
    /// outage: the project-managed local Postgres the server runs on
    /// (`<data dir>/postgres` of a server started without DATABASE_URL).
    #[arg(long)]
    postgres_dir: Option<std::path::PathBuf>,
    /// outage: seconds of normal service before Postgres is stopped.
    #[arg(long, default_value_t = 2)]
    outage_after: u64,
    /// outage: seconds Postgres stays stopped.
    #[arg(long, default_value_t = 3)]
    outage_seconds: u64,
    /// console, paint: the web console's address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    console_url: String,
    /// paint: the chromedriver to start (Debian's chromium-driver).
    #[arg(long, default_value = "/usr/bin/chromedriver")]
    chromedriver: std::path::PathBuf,
    /// paint: the Chromium that chromedriver runs headless (Debian's chromium).
    #[arg(long, default_value = "/usr/bin/chromium")]
    chromium: std::path::PathBuf,
    /// Print one JSON line on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// Exit 1 when a measured target is missed, too.
    #[arg(long)]
    strict: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.mode == Mode::ListFlags {
        return list_flags(&args).await;
    }
    if args.mode == Mode::Investigate {
        return investigation(&args).await;
    }
    if args.mode == Mode::Console {
        let settings = console::Settings {
            console: args.console_url.clone(),
            rounds: args.rounds as usize,
        };
        let channel = grpc::connect(&args.endpoint).await?;
        let report = console::run(channel, args.api_key.as_deref(), &settings).await?;
        return finish(&report, &args);
    }
    if args.mode == Mode::Paint {
        let settings = paint::Settings {
            console: args.console_url.clone(),
            rounds: args.rounds as usize,
            chromedriver: args.chromedriver.clone(),
            chromium: args.chromium.clone(),
        };
        let report = paint::run(args.api_key.as_deref(), &settings).await?;
        return finish(&report, &args);
    }
    if args.mode == Mode::SuggestCases {
        let channel = grpc::connect(&args.endpoint).await?;
        let rounds = args.rounds as usize;
        let report = suggest::run(channel, args.api_key.as_deref(), &args.endpoint, rounds).await?;
        return finish(&report, &args);
    }
    if args.mode == Mode::Outage {
        return outage(&args).await;
    }
    ingest(&args).await
}

/// The ingest modes: each repeat runs the unary phase and its baseline, then
/// the stream phase and its baseline, so whatever else the machine does
/// falls on a service phase and its baseline alike.
async fn ingest(args: &Args) -> anyhow::Result<ExitCode> {
    let run_id = args.run_id.clone().unwrap_or_else(unix_time);
    let n = args.records as usize;
    let stream_n = args.stream_records.map_or(n, |s| s as usize);
    let concurrency = args.concurrency as usize;
    let settings = Settings {
        run_id: run_id.clone(),
        clinics: args.clinics as usize,
        hospital_id: args.hospital_id.clone(),
        latest: latest_transplant(),
        records: args.repeats as usize
            * (if args.mode == Mode::Stream { 0 } else { n }
                + if args.mode == Mode::Unary {
                    0
                } else {
                    stream_n
                }),
        clinic_rate: args.clinic_rate,
    };
    let mut synth = Synth::new(settings, Rng::new(args.seed));
    let mut mix = Mix::default();

    let mut notes = match &args.database_url {
        Some(url) => baseline::database_notes(url).await?,
        None => Vec::new(),
    };
    for note in &notes {
        eprintln!("note: {note}");
    }
    let channel = grpc::connect(&args.endpoint).await?;
    let admin_key = args.admin_key.as_deref().or(args.api_key.as_deref());
    let mut registry =
        RegistryServiceClient::with_interceptor(channel.clone(), Bearer::new(admin_key)?);
    let ingest =
        IngestServiceClient::with_interceptor(channel, Bearer::new(args.api_key.as_deref())?);
    eprintln!("registering {} clinics", synth.clinics().len());
    grpc::register_clinics(&mut registry, synth.clinics()).await?;

    let wal = match &args.database_url {
        Some(url) => Some(
            PgPoolOptions::new()
                .max_connections(1)
                .connect(url)
                .await
                .context("connecting to --database-url")?,
        ),
        None => None,
    };
    let watch = Watch {
        wal,
        server: args.server_pid,
        database: args.database_url.as_deref().and_then(database_name),
    };
    let baseline_watch = Watch {
        server: None,
        ..watch.clone()
    };
    let baseline = match &args.database_url {
        Some(url) => {
            let connections = if args.mode == Mode::Stream {
                1
            } else {
                concurrency
            };
            Some(Baseline::open(url, &run_id, connections as u32).await?)
        }
        None => None,
    };
    let sampler = args.server_pid.map(RssSampler::start).transpose()?;
    let mut phases = Vec::new();
    let replays = args.replays as usize;
    let mut replayed = Vec::new();
    let measuring = async {
        for repeat in 1..=args.repeats as usize {
            if args.mode != Mode::Stream {
                let (records, m) = synth.records(&format!("u{repeat}"), n);
                mix.add(m);
                replayed.extend(records.iter().take(replays).cloned());
                let records = Arc::new(records);
                let work = grpc::unary(&ingest, records.clone(), concurrency);
                let label = format!("unary SubmitRecord x{concurrency}");
                let kind = (PhaseKind::Unary, repeat);
                phases.push(measured(kind, label, n, &watch, work).await?);
                if let Some(baseline) = &baseline {
                    let rows = rows(&records)?;
                    drop(records);
                    let work = baseline.one_per_transaction(Arc::new(rows), concurrency);
                    let label = format!("raw 1 row/tx x{concurrency}");
                    let kind = (PhaseKind::RawOnePerTransaction, repeat);
                    phases.push(measured(kind, label, n, &baseline_watch, work).await?);
                }
            }
            if args.mode != Mode::Unary {
                let (records, m) = synth.records(&format!("s{repeat}"), stream_n);
                mix.add(m);
                replayed.extend(records.iter().take(replays).cloned());
                let records = Arc::new(records);
                let work = grpc::stream(&ingest, records.clone());
                let label = "stream SubmitRecords x1".to_owned();
                let kind = (PhaseKind::Stream, repeat);
                phases.push(measured(kind, label, stream_n, &watch, work).await?);
                if let Some(baseline) = &baseline {
                    let rows = rows(&records)?;
                    drop(records);
                    let work = baseline.batched(&rows);
                    let label = format!("raw batched {BATCH_ROWS}/stmt x1");
                    let kind = (PhaseKind::RawBatched, repeat);
                    phases.push(measured(kind, label, stream_n, &baseline_watch, work).await?);
                }
            }
        }
        if !replayed.is_empty() {
            let records = Arc::new(std::mem::take(&mut replayed));
            let repeat = args.repeats as usize;
            for (how, kind, label) in [
                (Replay::Resubmit, PhaseKind::Resubmit, "again SubmitRecord"),
                (Replay::Amend, PhaseKind::Amend, "amend AmendRecord"),
            ] {
                let work = grpc::replay(&ingest, records.clone(), how, concurrency);
                let label = format!("{label} x{concurrency}");
                phases.push(measured((kind, repeat), label, records.len(), &watch, work).await?);
            }
        }
        anyhow::Ok(())
    }
    .await;
    let server_rss = sampler.map(RssSampler::finish);
    if let Some(baseline) = baseline {
        let closed = baseline.close().await;
        measuring?;
        closed?;
    } else {
        measuring?;
    }
    let min_seconds = f64::from(args.min_seconds);
    for p in phases.iter().filter(|p| p.seconds < min_seconds) {
        notes.push(format!(
            "{} (repeat {}) lasted {:.1} s, under {min_seconds} s: raise --records or \
             --stream-records for steadier figures",
            p.label, p.repeat, p.seconds
        ));
    }

    let mut report = Report {
        run_id,
        endpoint: args.endpoint.clone(),
        seed: args.seed,
        records_per_phase: n,
        stream_records: stream_n,
        repeats: args.repeats as usize,
        concurrency,
        mix,
        phases,
        server_rss,
        checks: Vec::new(),
        notes,
    };
    report.judge();
    finish(&report, args)
}

/// Prints a report (as text, or as JSON with the text on stderr) and turns
/// it into the exit code: failure on errors, or on a missed target with
/// `--strict`.
fn finish(report: &impl Judged, args: &Args) -> anyhow::Result<ExitCode> {
    if args.json {
        eprint!("{}", report.render());
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{}", report.render());
    }
    let failed = report.errors() > 0 || (args.strict && report.missed_a_target());
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The list-flags mode: ListFlags latencies, judged on the p99 target.
async fn list_flags(args: &Args) -> anyhow::Result<ExitCode> {
    let channel = grpc::connect(&args.endpoint).await?;
    let settings = listing::Settings {
        endpoint: args.endpoint.clone(),
        rounds: args.rounds as usize,
        page_size: args.page_size,
        database_url: args.database_url.clone(),
    };
    let report = listing::run(channel, args.api_key.as_deref(), &settings).await?;
    finish(&report, args)
}

/// The investigate mode: SearchRecords and GetNetwork latencies, judged on their targets.
async fn investigation(args: &Args) -> anyhow::Result<ExitCode> {
    let channel = grpc::connect(&args.endpoint).await?;
    let settings = investigate::Settings {
        endpoint: args.endpoint.clone(),
        rounds: args.rounds as usize,
        page_size: args.page_size,
        database_url: args.database_url.clone(),
    };
    let report = investigate::run(channel, args.api_key.as_deref(), &settings).await?;
    finish(&report, args)
}

/// The outage mode: calls and health while Postgres is stopped and started.
async fn outage(args: &Args) -> anyhow::Result<ExitCode> {
    let postgres_dir = args
        .postgres_dir
        .clone()
        .context("--mode outage needs --postgres-dir")?;
    let run_id = args.run_id.clone().unwrap_or_else(unix_time);
    let settings = Settings {
        run_id,
        clinics: args.clinics as usize,
        hospital_id: args.hospital_id.clone(),
        latest: latest_transplant(),
        records: args.records as usize,
        clinic_rate: args.clinic_rate,
    };
    let mut synth = Synth::new(settings, Rng::new(args.seed));
    let (records, _) = synth.records("o", args.records as usize);
    // The caller and the health checks each on a connection of their own.
    let calls = grpc::connect(&args.endpoint).await?;
    let health = grpc::connect(&args.endpoint).await?;
    let admin_key = args.admin_key.as_deref().or(args.api_key.as_deref());
    let mut registry =
        RegistryServiceClient::with_interceptor(calls.clone(), Bearer::new(admin_key)?);
    grpc::register_clinics(&mut registry, synth.clinics()).await?;
    let ingest =
        IngestServiceClient::with_interceptor(calls, Bearer::new(args.api_key.as_deref())?);
    let settings = outage::Settings {
        postgres_dir,
        after: std::time::Duration::from_secs(args.outage_after),
        down_for: std::time::Duration::from_secs(args.outage_seconds),
    };
    let report = outage::run(ingest, health, records, &settings).await?;
    finish(&report, args)
}

/// Runs one phase, with the CPU each party used and the WAL written meanwhile.
async fn measured(
    kind: (PhaseKind, usize),
    label: String,
    records: usize,
    watch: &Watch,
    work: impl Future<Output = anyhow::Result<Outcome>>,
) -> anyhow::Result<Phase> {
    eprintln!("{label} (repeat {}): {records} records", kind.1);
    let wal_before = probe::wal_position(watch).await;
    let before = CpuSnapshot::take(watch);
    let outcome = work.await.with_context(|| label.clone())?;
    let cpu = before.until(&CpuSnapshot::take(watch));
    let wal_after = probe::wal_position(watch).await;
    let mut phase = Phase::new(kind, label, records, outcome, Some(cpu));
    phase.wal_bytes_per_record = match (wal_before, wal_after) {
        (Some(a), Some(b)) if phase.accepted > 0 => {
            Some(b.saturating_sub(a) as f64 / phase.accepted as f64)
        }
        _ => None,
    };
    eprintln!(
        "  {:.0} records/s over {:.1} s, {} errors",
        phase.records_per_second, phase.seconds, phase.errors
    );
    Ok(phase)
}

/// The rows of the records, for the baselines.
fn rows(records: &[pb::TransplantRecord]) -> anyhow::Result<Vec<Row>> {
    records
        .iter()
        .map(|r| {
            Row::from_proto(r)
                .with_context(|| format!("record {} is incomplete", r.external_record_id))
        })
        .collect()
}

/// The latest transplant synthesised: a week before today, at midnight UTC,
/// so runs on one day get the same dates.
fn latest_transplant() -> DateTime<Utc> {
    Utc::now().date_naive().and_time(NaiveTime::MIN).and_utc() - Duration::days(7)
}

/// The database a Postgres URL names, for telling its backends from others.
fn database_name(url: &str) -> Option<String> {
    let options: sqlx::postgres::PgConnectOptions = url.parse().ok()?;
    options.get_database().map(str::to_owned)
}

fn unix_time() -> String {
    Utc::now().timestamp().to_string()
}

/// A run id: 1–40 letters, digits, `-`, `_` or `.`, starting with a letter or digit.
fn parse_run_id(s: &str) -> Result<String, String> {
    let valid = (1..=40).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if valid {
        Ok(s.to_owned())
    } else {
        Err(
            "must be 1 to 40 letters, digits, '-', '_' or '.', starting with a letter or digit"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_parses_and_checks_its_options() {
        let args = Args::try_parse_from([
            "loadgen",
            "--records",
            "10",
            "--mode",
            "stream",
            "--run-id",
            "r-1",
        ])
        .expect("valid");
        assert_eq!(
            (args.records, args.concurrency, args.mode, args.replays),
            (10, 64, Mode::Stream, 0)
        );
        let args = Args::try_parse_from(["loadgen", "--replays", "200"]).expect("valid");
        assert_eq!(args.replays, 200);
        assert_eq!(args.endpoint, "http://127.0.0.1:50051");
        let args = Args::try_parse_from(["loadgen", "--mode", "list-flags", "--rounds", "5"])
            .expect("valid");
        assert_eq!(
            (args.mode, args.rounds, args.page_size),
            (Mode::ListFlags, 5, 50)
        );
        let args =
            Args::try_parse_from(["loadgen", "--mode", "paint", "--rounds", "50"]).expect("valid");
        assert_eq!((args.mode, args.rounds), (Mode::Paint, 50));
        assert_eq!(
            (args.chromedriver.to_str(), args.chromium.to_str()),
            (Some("/usr/bin/chromedriver"), Some("/usr/bin/chromium"))
        );
        for bad in [
            vec!["loadgen", "--records", "0"],
            vec!["loadgen", "--concurrency", "0"],
            vec!["loadgen", "--run-id", "-x"],
            vec!["loadgen", "--run-id", "a b"],
            vec!["loadgen", "--rounds", "0"],
            vec!["loadgen", "--page-size", "501"],
        ] {
            assert!(Args::try_parse_from(&bad).is_err(), "{bad:?}");
        }
    }
}
