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
    /// The registry's public key (hex) the digests are signed with; by
    /// default that of the configured signing key.
    #[arg(long, value_name = "HEX")]
    pub public_key: Option<String>,
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
    let trusted = trusted_key(args)?;
    if !digests.is_empty() && trusted.is_none() {
        return Err(CliError::Usage(
            "--digests needs the registry's public key: --public-key, or SIGNING_KEY".into(),
        ));
    }
    let db = Database::open(&args.database, Access::ReadOnly).await?;
    let result = verify(&db, &digests, trusted.as_ref()).await;
    db.close(result).await
}

/// The key digests must be signed with.
fn trusted_key(args: &VerifyArgs) -> Result<Option<PublicKey>, CliError> {
    if let Some(hex) = &args.public_key {
        return hex
            .parse()
            .map(Some)
            .map_err(|e| CliError::Usage(format!("--public-key: {e}")));
    }
    let local = args
        .database
        .database_url
        .is_none()
        .then_some(args.database.data_dir.as_path());
    Ok(args.signing.key(local)?.map(|k| k.public()))
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

async fn verify(
    db: &Database,
    digests: &[Digest],
    trusted: Option<&PublicKey>,
) -> Result<(), CliError> {
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
