//! `loadgen`: drives a running transplant-audit server over gRPC with
//! synthetic records, and measures it against raw Postgres inserts of the same rows.
//!
//! ```text
//! cargo build --release --bin transplant-audit --bin loadgen
//! target/release/loadgen --records 20000 --concurrency 64 --mode both \
//!     --server-pid <pid of transplant-audit> --database-url postgres://…/<the server's database>
//! ```
//!
//! Phases, in order: register the run's clinics; unary SubmitRecord from
//! `--concurrency` callers; one SubmitRecords stream; then, with
//! `--database-url`, the baselines in a scratch table (dropped at the end):
//! the unary phase's rows one per transaction after a key lookup from as many
//! callers, and the stream phase's rows in batched `INSERT … SELECT FROM UNNEST`.
//! Prints a table (or, with `--json`, one JSON line) with records/s, p50/p99
//! latency, CPU per process, the server's peak RSS and the target ratios.
//! Exits 1 when any record was not accepted (or, with `--strict`, a target was missed).
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

mod baseline;
mod console;
mod grpc;
mod investigate;
mod listing;
mod probe;
mod report;
mod rng;
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
use grpc::Bearer;
use probe::{CpuSnapshot, RssSampler, Watch};
use report::{Judged, Outcome, Phase, PhaseKind, Report};
use rng::Rng;
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
    /// The web console's pages, signed in with an AUDITOR key (see console.rs); no ingest.
    Console,
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
    /// Records per gRPC phase.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=5_000_000))]
    records: u32,
    /// Concurrent callers of the unary phase (and of the one-row-per-transaction baseline).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
    /// Which gRPC phases to run.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// list-flags: first-and-next-page pairs measured per filter; investigate: calls per kind.
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
    /// console: the web console's address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    console_url: String,
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
    let run_id = args.run_id.clone().unwrap_or_else(unix_time);
    let n = args.records as usize;
    let concurrency = args.concurrency as usize;
    let settings = Settings {
        run_id: run_id.clone(),
        clinics: args.clinics as usize,
        hospital_id: args.hospital_id.clone(),
        latest: latest_transplant(),
    };
    let mut synth = Synth::new(settings, Rng::new(args.seed));
    let mut mix = Mix::default();
    let mut batch = |phase: &str, wanted: bool| {
        wanted.then(|| {
            let (records, m) = synth.records(phase, n);
            mix.add(m);
            Arc::new(records)
        })
    };
    let unary_records = batch("u", args.mode != Mode::Stream);
    let stream_records = batch("s", args.mode != Mode::Unary);

    let notes = match &args.database_url {
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

    let watch = Watch {
        server: args.server_pid,
        database: args.database_url.as_deref().and_then(database_name),
    };
    let sampler = args.server_pid.map(RssSampler::start).transpose()?;
    let mut phases = Vec::new();
    if let Some(records) = &unary_records {
        let work = grpc::unary(&ingest, records.clone(), concurrency);
        let label = format!("unary SubmitRecord x{concurrency}");
        phases.push(measured(PhaseKind::Unary, label, n, &watch, work).await?);
    }
    if let Some(records) = &stream_records {
        let work = grpc::stream(&ingest, records.clone());
        let label = "stream SubmitRecords x1".to_owned();
        phases.push(measured(PhaseKind::Stream, label, n, &watch, work).await?);
    }
    let server_rss = sampler.map(RssSampler::finish);
    if let Some(url) = &args.database_url {
        let (unary_rows, stream_rows) = (
            rows(unary_records.as_deref())?,
            rows(stream_records.as_deref())?,
        );
        let watch = Watch {
            server: None,
            ..watch
        };
        let rows = (unary_rows, stream_rows);
        phases.extend(baselines(url, &run_id, concurrency, rows, &watch).await?);
    }

    let mut report = Report {
        run_id,
        endpoint: args.endpoint.clone(),
        seed: args.seed,
        records_per_phase: n,
        concurrency,
        mix,
        phases,
        server_rss,
        checks: Vec::new(),
        notes,
    };
    report.judge();
    finish(&report, &args)
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
    };
    let report = investigate::run(channel, args.api_key.as_deref(), &settings).await?;
    finish(&report, args)
}

/// Runs one phase, with the CPU each party used meanwhile.
async fn measured(
    kind: PhaseKind,
    label: String,
    records: usize,
    watch: &Watch,
    work: impl Future<Output = anyhow::Result<Outcome>>,
) -> anyhow::Result<Phase> {
    eprintln!("{label}: {records} records");
    let before = CpuSnapshot::take(watch);
    let outcome = work.await.with_context(|| label.clone())?;
    let cpu = before.until(&CpuSnapshot::take(watch));
    let phase = Phase::new(kind, label, records, outcome, Some(cpu));
    eprintln!(
        "  {:.0} records/s over {:.1} s, {} errors",
        phase.records_per_second, phase.seconds, phase.errors
    );
    Ok(phase)
}

/// Both baselines in this run's scratch table, which is dropped even when one fails.
async fn baselines(
    database_url: &str,
    run_id: &str,
    concurrency: usize,
    (unary_rows, stream_rows): (Option<Vec<Row>>, Option<Vec<Row>>),
    watch: &Watch,
) -> anyhow::Result<Vec<Phase>> {
    let connections = if unary_rows.is_some() { concurrency } else { 1 };
    let baseline = Baseline::open(database_url, run_id, connections as u32).await?;
    let result = async {
        let mut phases = Vec::new();
        if let Some(rows) = unary_rows {
            let n = rows.len();
            let work = baseline.one_per_transaction(Arc::new(rows), concurrency);
            let label = format!("raw 1 row/tx x{concurrency}");
            phases.push(measured(PhaseKind::RawOnePerTransaction, label, n, watch, work).await?);
        }
        if let Some(rows) = stream_rows {
            let work = baseline.batched(&rows);
            let label = format!("raw batched {BATCH_ROWS}/stmt x1");
            phases.push(measured(PhaseKind::RawBatched, label, rows.len(), watch, work).await?);
        }
        anyhow::Ok(phases)
    }
    .await;
    let closed = baseline.close().await;
    let phases = result?;
    closed?;
    Ok(phases)
}

/// The rows of the records, for the baselines.
fn rows(records: Option<&Vec<pb::TransplantRecord>>) -> anyhow::Result<Option<Vec<Row>>> {
    records
        .map(|records| {
            records
                .iter()
                .map(|r| {
                    Row::from_proto(r)
                        .with_context(|| format!("record {} is incomplete", r.external_record_id))
                })
                .collect()
        })
        .transpose()
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
            (args.records, args.concurrency, args.mode),
            (10, 64, Mode::Stream)
        );
        assert_eq!(args.endpoint, "http://127.0.0.1:50051");
        let args = Args::try_parse_from(["loadgen", "--mode", "list-flags", "--rounds", "5"])
            .expect("valid");
        assert_eq!(
            (args.mode, args.rounds, args.page_size),
            (Mode::ListFlags, 5, 50)
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
