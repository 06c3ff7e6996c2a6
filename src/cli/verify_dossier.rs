//! `verify-dossier`: checks a referral dossier offline, with nothing but the
//! file and the registry's public key: no database, no secret.

use std::path::PathBuf;

use clap::Args;

use crate::domain::ledger::PublicKey;
use crate::dossier;

use super::CliError;

/// Checks a referral dossier (from ExportCase) against the registry's
/// public key and names what was changed in a tampered one. Needs no
/// database and no secret.
#[derive(Debug, Args)]
pub struct VerifyDossierArgs {
    /// The dossier file (JSON).
    pub file: PathBuf,

    /// The registry's Ed25519 public key, hex (`transplant-audit ledger
    /// public-key`, or GetPublicKey); repeat it to accept any of several
    /// (a key rotated since the export).
    #[arg(long = "public-key", value_name = "HEX", required = true)]
    pub public_keys: Vec<String>,
}

/// Runs `verify-dossier`.
pub fn run(args: &VerifyDossierArgs) -> Result<(), CliError> {
    let keys = args
        .public_keys
        .iter()
        .map(|hex| {
            hex.parse::<PublicKey>()
                .map_err(|e| CliError::Usage(format!("--public-key {hex}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let text = std::fs::read(&args.file)
        .map_err(|e| CliError::Usage(format!("{}: {e}", args.file.display())))?;
    let doc: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
        CliError::DossierBroken(format!("{} is not JSON: {e}", args.file.display()))
    })?;
    let mut first = None;
    for key in &keys {
        match dossier::check(&doc, key) {
            Ok(()) => {
                let case = &doc["case"];
                println!(
                    "intact: case {} ({} flags), signed by {key}",
                    case["case_id"],
                    case["flag_ids"].as_array().map_or(0, Vec::len),
                );
                return Ok(());
            }
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    let reason = first.map_or_else(|| "no public key given".to_owned(), |e| e.to_string());
    Err(CliError::DossierBroken(reason))
}
