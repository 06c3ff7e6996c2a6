//! `import`: an NDJSON back-fill through the ingest pipeline.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::config::{DatabaseArgs, RulesArgs};
use crate::import::{self, ImportError, ImportOptions};
use crate::ingest::Ingestor;
use crate::server::ServeOptions;

use super::{Access, CliError, Database, engine, progress};

/// What `import` loads, and how.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The file: one record per line, in the field names of the proto, enum
    /// values without their prefix (KIDNEY), instants in RFC 3339.
    pub file: PathBuf,
    /// Start from the first line even if an earlier run of this file got further.
    #[arg(long)]
    pub restart: bool,
    /// Records per transaction.
    #[arg(long, env = "INGEST_BATCH_SIZE", default_value_t = ServeOptions::default().ingest_batch_size)]
    pub ingest_batch_size: usize,
    /// The rules.
    #[command(flatten)]
    pub rules: RulesArgs,
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Imports the file; refused lines go to stderr and make their own exit status.
pub async fn run(args: ImportArgs) -> Result<(), CliError> {
    let engine = Arc::new(engine(&args.rules)?);
    let db = Database::open(&args.database, Access::Migrate).await?;
    let batch = args.ingest_batch_size.max(1);
    let mut ingestor = Ingestor::new(db.store.clone(), engine, db.key.clone(), batch);
    if let Some(key) = &db.federation {
        ingestor = ingestor.with_federation(key.clone());
    }
    let result = load(&db, &ingestor, &args).await;
    db.close(result).await
}

async fn load(db: &Database, ingestor: &Ingestor, args: &ImportArgs) -> Result<(), CliError> {
    let options = ImportOptions {
        batch_size: args.ingest_batch_size.max(1),
        restart: args.restart,
    };
    let started = std::time::Instant::now();
    let mut bar = None;
    let report = import::import(
        &db.store,
        ingestor,
        &args.file,
        options,
        |r| {
            let bar = bar.get_or_insert_with(|| progress::bar(r.lines_total, "lines"));
            bar.set_position(r.lines_done);
            bar.set_message(format!(
                "{} accepted, {} duplicates, {} refused",
                r.accepted, r.duplicates, r.rejected
            ));
        },
        |refused| {
            eprintln!(
                "line {} ({:?}) refused: {}",
                refused.line, refused.external_record_id, refused.reason
            );
        },
    )
    .await
    .map_err(|e| match e {
        ImportError::Store(e) => CliError::from(e),
        other => CliError::Other(other.into()),
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if report.already_done {
        println!(
            "{} was imported before; nothing to do.",
            args.file.display()
        );
    } else if let Some(line) = report.resumed_after {
        println!("Resumed after line {line}.");
    }
    println!(
        "{} lines: {} records accepted, {} duplicates, {} refused ({:.1} s).",
        report.lines_total,
        report.accepted,
        report.duplicates,
        report.rejected,
        started.elapsed().as_secs_f64()
    );
    if report.rejected > 0 {
        return Err(CliError::Refused(report.rejected));
    }
    Ok(())
}
