//! `verify`: recomputes the audit trail and names the first broken entry.

use crate::config::DatabaseArgs;

use super::{Access, CliError, Database};

/// Verifies without changing anything; a broken trail is its own exit status.
pub async fn run(args: &DatabaseArgs) -> Result<(), CliError> {
    let db = Database::open(args, Access::ReadOnly).await?;
    let result = verify(&db).await;
    db.close(result).await
}

async fn verify(db: &Database) -> Result<(), CliError> {
    let report = db.store.verify_chains().await?;
    println!(
        "Checked {} record versions and {} triage steps.",
        report.record_versions, report.flag_events
    );
    match report.first_break {
        None => {
            println!("The audit trail is intact.");
            Ok(())
        }
        Some(b) => Err(CliError::TrailBroken(format!(
            "{} entry {} of {} {}: {}",
            b.table,
            b.entry,
            if b.table == "flag_events" {
                "flag"
            } else {
                "record"
            },
            b.entity_id,
            b.reason
        ))),
    }
}
