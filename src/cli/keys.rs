//! `keys create | list | revoke`: API keys from the command line.

use clap::{Args, Subcommand};

use crate::config::DatabaseArgs;
use crate::domain::Role;
use crate::domain::access::{KeySpec, NewApiKey};

use super::{Access, CliError, Database, parse_instant};

/// Keys read from the database at a time.
const PAGE: i64 = 500;

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it; it is shown only this once.
    #[command(after_help = super::EXIT_CODES)]
    Create(CreateKeyArgs),
    /// List every key (never the secrets). Reads only: never migrates.
    #[command(after_help = super::EXIT_CODES)]
    List(DatabaseArgs),
    /// Revoke a key by its id.
    #[command(after_help = super::EXIT_CODES)]
    Revoke {
        /// The key id (the part after `ta_`, before the second `_`).
        key_id: String,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// What `keys create` makes.
#[derive(Debug, Args)]
pub struct CreateKeyArgs {
    /// hospital, auditor or admin.
    #[arg(long, value_parser = ["hospital", "auditor", "admin"])]
    pub role: String,
    /// The hospital a hospital key submits for.
    #[arg(long)]
    pub hospital_id: Option<String>,
    /// Who or what the key is for.
    #[arg(long, default_value = "")]
    pub description: String,
    /// When the key stops working (RFC 3339); never when omitted.
    #[arg(long, value_name = "RFC3339")]
    pub expires_at: Option<String>,
    /// The person or system the key belongs to (for example an e-mail
    /// address); required for auditor and admin keys. A hospital key
    /// without one belongs to "hospital <hospital id>".
    #[arg(long, value_name = "NAME")]
    pub principal: Option<String>,
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Runs a `keys` subcommand.
pub async fn run(command: KeysCommand) -> Result<(), CliError> {
    match command {
        KeysCommand::Create(args) => {
            let spec = spec(&args)?;
            let db = Database::open(&args.database, Access::Migrate).await?;
            let result = create(&db, &spec).await;
            db.close(result).await
        }
        KeysCommand::List(database) => {
            let db = Database::open(&database, Access::ReadOnly).await?;
            let result = list(&db).await;
            db.close(result).await
        }
        KeysCommand::Revoke { key_id, database } => {
            let db = Database::open(&database, Access::Migrate).await?;
            let result = revoke(&db, &key_id).await;
            db.close(result).await
        }
    }
}

/// The key `keys create` describes, or what is wrong with the flags.
fn spec(args: &CreateKeyArgs) -> Result<KeySpec, CliError> {
    let role: Role = args
        .role
        .to_ascii_uppercase()
        .parse()
        .map_err(|e| CliError::Usage(format!("--role: {e}")))?;
    let expires_at = parse_instant("expires-at", &args.expires_at)?;
    KeySpec::new(
        role,
        args.hospital_id.as_deref(),
        &args.description,
        expires_at,
        args.principal.as_deref(),
        chrono::Utc::now(),
    )
    .map_err(|v| {
        let problems: Vec<String> =
            v.0.iter()
                .map(|f| format!("--{} {}", f.field.replace('_', "-"), f.description))
                .collect();
        CliError::Usage(problems.join("; "))
    })
}

async fn create(db: &Database, spec: &KeySpec) -> Result<(), CliError> {
    let new = NewApiKey::generate().map_err(anyhow::Error::from)?;
    // Made on the command line: whoever runs it holds the service's secrets.
    let key = db.store.create_key(&new, spec, None).await?;
    eprintln!(
        "Created {} key {} of {}; it is shown only this once:",
        key.role, key.key_id, key.principal
    );
    println!("{}", new.token);
    Ok(())
}

async fn list(db: &Database) -> Result<(), CliError> {
    println!(
        "{:<14} {:<9} {:<24} {:<16} {:<25} {:<25} description",
        "key id", "role", "principal", "hospital", "expires", "revoked"
    );
    let at = |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or("-".into(), |t| t.to_rfc3339());
    let mut before = None;
    loop {
        let page = db.store.keys(before, PAGE).await?;
        for key in &page.keys {
            println!(
                "{:<14} {:<9} {:<24} {:<16} {:<25} {:<25} {}",
                key.key_id,
                key.role,
                key.principal,
                key.hospital_id.as_deref().unwrap_or("-"),
                at(key.expires_at),
                at(key.revoked_at),
                key.description
            );
        }
        match page.next_before {
            Some(next) => before = Some(next),
            None => return Ok(()),
        }
    }
}

async fn revoke(db: &Database, key_id: &str) -> Result<(), CliError> {
    let key = db
        .store
        .revoke_key(key_id)
        .await?
        .ok_or_else(|| CliError::Usage(format!("no key {key_id}")))?;
    println!("Revoked {} key {}.", key.role, key.key_id);
    Ok(())
}
