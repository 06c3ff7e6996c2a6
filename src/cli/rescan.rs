//! `rescan`: re-runs rules over stored records; `rescan runs` lists the
//! runs that can be resumed.

use std::ops::ControlFlow;

use clap::{Args, Subcommand};

use crate::config::{DatabaseArgs, RulesArgs};
use crate::rescan::{self, RescanRequest};
use crate::rules::RuleId;
use crate::store::rescan::TransplantRange;

use super::{Access, CliError, Database, engine, parse_instant, progress};

/// `rescan`'s flags, or `rescan runs`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RescanArgs {
    /// `runs`, or nothing to rescan.
    #[command(subcommand)]
    pub action: Option<RescanAction>,
    /// What to rescan.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands of `rescan`.
#[derive(Debug, Subcommand)]
pub enum RescanAction {
    /// List runs that were interrupted and can be resumed. Reads only:
    /// never migrates.
    #[command(after_help = super::EXIT_CODES)]
    Runs(DatabaseArgs),
}

/// What one rescan evaluates.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A rule id to evaluate (repeat for several); every enabled rule when omitted.
    #[arg(long = "rule", value_name = "RULE_ID")]
    pub rules: Vec<String>,
    /// Only records transplanted at or after this instant (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub from: Option<String>,
    /// Only records transplanted before this instant (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub until: Option<String>,
    /// Write nothing; report what would be added and which flags would no
    /// longer be raised. Reads only: never migrates.
    #[arg(long)]
    pub dry_run: bool,
    /// Continue an interrupted run by its id (its rules and range apply;
    /// `rescan runs` lists them).
    #[arg(long, value_name = "RUN_ID", conflicts_with_all = ["rules", "from", "until", "dry_run"])]
    pub resume: Option<i64>,
    /// The rules.
    #[command(flatten)]
    pub rules_config: RulesArgs,
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Runs `rescan` or `rescan runs`.
pub async fn run(args: RescanArgs) -> Result<(), CliError> {
    match args.action {
        Some(RescanAction::Runs(database)) => {
            let db = Database::open(&database, Access::ReadOnly).await?;
            let result = list_runs(&db).await;
            db.close(result).await
        }
        None => {
            let run = args.run;
            let request = request(&run)?;
            let engine = engine(&run.rules_config)?;
            let access = if run.dry_run {
                Access::ReadOnly
            } else {
                Access::Migrate
            };
            let db = Database::open(&run.database, access).await?;
            let result = rescan(&db, &engine, request).await;
            db.close(result).await
        }
    }
}

/// The rescan the flags ask for.
fn request(args: &RunArgs) -> Result<RescanRequest, CliError> {
    let rules = args
        .rules
        .iter()
        .map(|r| {
            r.parse::<RuleId>()
                .map_err(|e| CliError::Usage(format!("--rule: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RescanRequest {
        rules,
        range: TransplantRange {
            from: parse_instant("from", &args.from)?,
            until: parse_instant("until", &args.until)?,
        },
        dry_run: args.dry_run,
        resume: args.resume,
        chunk_size: 0,
    })
}

async fn rescan(
    db: &Database,
    engine: &crate::rules::Engine,
    request: RescanRequest,
) -> Result<(), CliError> {
    let started = std::time::Instant::now();
    let mut bar = None;
    let report = rescan::rescan(&db.store, engine, request, |p| {
        let bar = bar.get_or_insert_with(|| {
            if let Some(run) = p.run_id {
                eprintln!(
                    "Rescan run {run} started; if it is interrupted, resume it with \
                     `transplant-audit rescan --resume {run}`."
                );
            }
            progress::bar(p.total, "records")
        });
        bar.set_position(p.processed);
        bar.set_message(format!("{} flags added", p.flags_added));
        ControlFlow::Continue(())
    })
    .await
    .map_err(|e| match e {
        rescan::RescanError::Store(e) => CliError::from(e),
        other => CliError::Usage(other.to_string()),
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let seconds = started.elapsed().as_secs_f64();
    print!("{}", report.render());
    println!(
        "{:.0} records/s over {seconds:.1} s.",
        report.processed as f64 / seconds.max(1e-9)
    );
    Ok(())
}

async fn list_runs(db: &Database) -> Result<(), CliError> {
    let runs = db.store.resumable_rescans().await?;
    if runs.is_empty() {
        println!("No interrupted rescan runs.");
        return Ok(());
    }
    println!(
        "{:>6} {:<25} {:<25} {:>10} {:>11} rules (range)",
        "run", "started", "last progress", "processed", "flags added"
    );
    for run in runs {
        let range = match (run.transplanted_from, run.transplanted_until) {
            (None, None) => String::new(),
            (from, until) => format!(
                " ({} to {})",
                from.map_or("the first".into(), |t| t.to_rfc3339()),
                until.map_or("the last".into(), |t| t.to_rfc3339())
            ),
        };
        println!(
            "{:>6} {:<25} {:<25} {:>10} {:>11} {}{range}",
            run.id,
            run.started_at.to_rfc3339(),
            run.updated_at.to_rfc3339(),
            run.processed,
            run.flags_added,
            run.rules.join(","),
        );
    }
    println!("Resume one with `transplant-audit rescan --resume <run>`.");
    Ok(())
}
