//! `verify`: checks every piece of evidence against the ledger and against
//! digests kept outside the database, and names the first that does not hold.

use std::path::PathBuf;

use clap::Args;

use crate::config::{DatabaseArgs, SigningArgs};
use crate::domain::ledger::{Digest, PublicKey};

use super::{Access, CliError, Database};

/// What `verify` checks against.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Digests kept outside the database: the JSON lines the digest sinks
    /// wrote, or that `transplant-audit ledger digest` printed. Every block
    /// they name must still be there, unchanged.
    #[arg(long, value_name = "FILE")]
    pub digests: Option<PathBuf>,
    /// A public key (hex) the registry signs with; give each key it has
    /// used since the oldest block. By default, that of the configured
    /// signing key.
    #[arg(long = "public-key", value_name = "HEX")]
    pub public_keys: Vec<String>,
    /// The signing key, whose public half checks the digests.
    #[command(flatten)]
    pub signing: SigningArgs,
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Verifies without changing anything; a broken trail is its own exit status.
pub async fn run(args: &VerifyArgs) -> Result<(), CliError> {
    let digests = match &args.digests {
        Some(path) => read_digests(path)?,
        None => Vec::new(),
    };
    let trusted = trusted_keys(args)?;
    if trusted.is_empty() {
        if !digests.is_empty() {
            return Err(CliError::Usage(
                "--digests needs the registry's public key: --public-key, or SIGNING_KEY".into(),
            ));
        }
        tracing::warn!(
            "no public key given: blocks are checked against the keys they name, which \
             shows the ledger consistent but not that the registry sealed it"
        );
    }
    let db = Database::open(&args.database, Access::ReadOnly).await?;
    let result = verify(&db, &digests, &trusted).await;
    db.close(result).await
}

/// The keys blocks and digests must be signed with.
fn trusted_keys(args: &VerifyArgs) -> Result<Vec<PublicKey>, CliError> {
    if !args.public_keys.is_empty() {
        return args
            .public_keys
            .iter()
            .map(|hex| {
                hex.parse()
                    .map_err(|e| CliError::Usage(format!("--public-key {hex}: {e}")))
            })
            .collect();
    }
    let local = args
        .database
        .database_url
        .is_none()
        .then_some(args.database.data_dir.as_path());
    Ok(args
        .signing
        .existing_key(local)?
        .map(|k| k.public())
        .into_iter()
        .collect())
}

/// The digests of a file, one JSON object per line.
fn read_digests(path: &std::path::Path) -> Result<Vec<Digest>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("--digests {}: {e}", path.display())))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| {
                CliError::Usage(format!(
                    "--digests {} line {}: not a digest: {e}",
                    path.display(),
                    i + 1
                ))
            })
        })
        .collect()
}

async fn verify(db: &Database, digests: &[Digest], trusted: &[PublicKey]) -> Result<(), CliError> {
    let report = db.store.verify(digests, trusted).await?;
    println!(
        "Checked {} blocks ({} against digests kept outside the database), {} sealed row \
         states, {} rows written since the last block, {} record versions and {} flags.",
        report.blocks,
        report.digests,
        report.sealed_rows,
        report.unsealed_rows,
        report.record_versions,
        report.flags
    );
    match report.first_break {
        None => {
            println!("The audit trail is intact.");
            Ok(())
        }
        Some(b) => Err(CliError::TrailBroken(b.to_string())),
    }
}
