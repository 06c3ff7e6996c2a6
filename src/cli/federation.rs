//! `federation peers add | list | remove` and `federation sync`.

use std::sync::Arc;

use clap::{Args, Subcommand};

use crate::config::{DatabaseArgs, FederationTlsArgs, RulesArgs};
use crate::federation::peers::check_peer;
use crate::federation::sync::{Progress, SyncError, Syncer};
use crate::store::federation::PeerError;

use super::{Access, CliError, Database, engine};

/// `federation` subcommands.
#[derive(Debug, Subcommand)]
pub enum FederationCommand {
    /// The peer registries this registry federates with.
    #[command(subcommand)]
    Peers(PeersCommand),
    /// Sync with one peer now: find the living donors both registries
    /// hold, and flag them here.
    #[command(after_help = super::EXIT_CODES)]
    Sync(SyncArgs),
}

/// `federation peers` subcommands.
#[derive(Debug, Subcommand)]
pub enum PeersCommand {
    /// Add a peer: its name, where its federation listener is, and its CA.
    #[command(after_help = super::EXIT_CODES)]
    Add(AddPeerArgs),
    /// List the peers. Reads only: never migrates.
    #[command(after_help = super::EXIT_CODES)]
    List(DatabaseArgs),
    /// Remove a peer: it is answered and synced no more.
    #[command(after_help = super::EXIT_CODES)]
    Remove {
        /// The peer's name.
        name: String,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// What `federation peers add` adds.
#[derive(Debug, Args)]
pub struct AddPeerArgs {
    /// The peer's name here: letters, digits, `.`, `_` and `-`, at most 63.
    pub name: String,
    /// Its federation listener: `https://HOST:PORT`.
    #[arg(long)]
    pub address: String,
    /// PEM file of the CA that signs its certificates (server and client).
    #[arg(long, value_name = "PEM")]
    pub ca_file: std::path::PathBuf,
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// What `federation sync` syncs.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The peer's name.
    #[arg(long)]
    pub peer: String,
    /// Only living donors transplanted from this day (YYYY-MM-DD) or
    /// instant (RFC 3339) on; all when omitted.
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    /// This registry's certificate.
    #[command(flatten)]
    pub tls: FederationTlsArgs,
    /// The rules.
    #[command(flatten)]
    pub rules: RulesArgs,
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// A day or an instant, as `--since` takes them.
fn parse_since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, CliError> {
    if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|d| d.to_utc())
        .map_err(|_| {
            CliError::Usage("--since must be a day (YYYY-MM-DD) or an RFC 3339 instant".into())
        })
}

fn peer_error(e: PeerError) -> CliError {
    match e {
        PeerError::Store(e) => e.into(),
        other => CliError::Usage(other.to_string()),
    }
}

/// Runs a `federation` subcommand.
pub async fn run(command: FederationCommand) -> Result<(), CliError> {
    match command {
        FederationCommand::Peers(PeersCommand::Add(args)) => {
            let ca = std::fs::read_to_string(&args.ca_file).map_err(|e| {
                CliError::Usage(format!("--ca-file {}: {e}", args.ca_file.display()))
            })?;
            let v = check_peer("", &args.name, &args.address, &ca);
            if !v.0.is_empty() {
                let said: Vec<String> =
                    v.0.iter()
                        .map(|f| match f.field.as_str() {
                            "ca_pem" => {
                                format!("--ca-file {}: {}", args.ca_file.display(), f.description)
                            }
                            "address" => format!("--address {}", f.description),
                            _ => format!("the peer's name {}", f.description),
                        })
                        .collect();
                return Err(CliError::Usage(said.join("; ")));
            }
            let db = Database::open(&args.database, Access::Migrate).await?;
            let added = db
                .store
                .add_peer(&args.name, &args.address, &ca, "command line")
                .await
                .map_err(peer_error);
            if added.is_ok() {
                println!("peer {} added at {}", args.name, args.address);
            }
            db.close(added.map(drop)).await
        }
        FederationCommand::Peers(PeersCommand::List(database)) => {
            let db = Database::open(&database, Access::ReadOnly).await?;
            let listed = db.store.peers().await.map_err(CliError::from);
            if let Ok(peers) = &listed {
                for p in peers {
                    println!(
                        "{}\t{}\tadded {} by {}",
                        p.name,
                        p.address,
                        p.added_at.to_rfc3339(),
                        p.added_by
                    );
                }
            }
            db.close(listed.map(drop)).await
        }
        FederationCommand::Peers(PeersCommand::Remove { name, database }) => {
            let db = Database::open(&database, Access::Migrate).await?;
            let removed = db.store.remove_peer(&name).await.map_err(peer_error);
            if removed.is_ok() {
                println!("peer {name} removed");
            }
            db.close(removed).await
        }
        FederationCommand::Sync(args) => sync(args).await,
    }
}

async fn sync(args: SyncArgs) -> Result<(), CliError> {
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let identity = args.tls.pem()?.ok_or_else(|| {
        CliError::Usage("a sync needs FEDERATION_CERT_FILE and FEDERATION_KEY_FILE".into())
    })?;
    let engine = Arc::new(engine(&args.rules)?);
    let db = Database::open(&args.database, Access::Migrate).await?;
    let Some(key) = db.federation.clone() else {
        return db
            .close(Err(CliError::Usage(
                "this registry has no federation key (FEDERATION_KEY)".into(),
            )))
            .await;
    };
    let syncer = Syncer {
        store: db.store.clone(),
        engine,
        key,
        identity,
    };
    let result = syncer
        .sync(&args.peer, since, |p| match p {
            Progress::Sent(done, total) => eprintln!("sent {done} of {total} elements"),
            Progress::Received(n) => eprintln!("received {n} of the peer's elements"),
        })
        .await;
    let result = match result {
        Ok(r) => {
            println!(
                "synced with {}: {} donors sent, {} in the peer's set, {} shared, {} records matched, {} flags raised",
                r.peer, r.sent, r.peer_set, r.matched_donors, r.matched_records, r.flags_raised
            );
            Ok(())
        }
        Err(SyncError::UnknownPeer(name)) => Err(CliError::Usage(format!(
            "no peer named {name:?} is configured"
        ))),
        Err(SyncError::Store(e)) => Err(e.into()),
        Err(e) => Err(CliError::Other(anyhow::Error::new(e))),
    };
    db.close(result).await
}
