//! `ledger digest` and `ledger public-key`: what an auditor keeps outside
//! the database, and the key that checks it.

use clap::{Args, Subcommand};

use crate::config::{DatabaseArgs, SigningArgs};
use crate::domain::ledger::{Digest, PublicKey};

use super::{Access, CliError, Database};

/// `ledger` subcommands.
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Print the newest block's signed digest (one JSON line), to keep
    /// outside the database for `verify --digests`. Reads only: never migrates.
    #[command(after_help = super::EXIT_CODES)]
    Digest(DatabaseArgs),
    /// Print the registry's public key (hex): it checks digests and
    /// referral dossiers.
    #[command(after_help = super::EXIT_CODES)]
    PublicKey(PublicKeyArgs),
}

/// Where the signing key is.
#[derive(Debug, Args)]
pub struct PublicKeyArgs {
    /// The signing key.
    #[command(flatten)]
    pub signing: SigningArgs,
    /// Folder of the local default, whose key is used when none is configured.
    #[arg(long, env = "DATA_DIR", default_value = ".transplant-audit")]
    pub data_dir: std::path::PathBuf,
}

/// Runs a `ledger` subcommand.
pub async fn run(command: LedgerCommand) -> Result<(), CliError> {
    match command {
        LedgerCommand::Digest(database) => {
            let db = Database::open(&database, Access::ReadOnly).await?;
            let result = print_digest(&db).await;
            db.close(result).await
        }
        LedgerCommand::PublicKey(args) => {
            let key = args
                .signing
                .existing_key(Some(&args.data_dir))?
                .ok_or(crate::config::ConfigError::MissingSigningKey)?;
            println!("{}", key.public());
            Ok(())
        }
    }
}

async fn print_digest(db: &Database) -> Result<(), CliError> {
    let Some(block) = db.store.last_block().await? else {
        return Err(CliError::Usage(
            "nothing is sealed yet: the server seals within seconds of a write".into(),
        ));
    };
    let public = <[u8; 32]>::try_from(block.public_key.as_slice())
        .ok()
        .map(hex::encode)
        .and_then(|h| h.parse::<PublicKey>().ok())
        .ok_or_else(|| anyhow::anyhow!("block {} holds no public key", block.block))?;
    let digest = Digest {
        block: block.block,
        last_seq: block.last_seq,
        hash: hex::encode(&block.hash),
        sealed_at: block.sealed_at,
        public_key: public.to_string(),
        signature: hex::encode(&block.signature),
    };
    println!(
        "{}",
        serde_json::to_string(&digest).map_err(anyhow::Error::from)?
    );
    Ok(())
}
