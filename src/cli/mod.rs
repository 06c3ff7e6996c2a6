//! The command line: one subcommand per task, each with only the flags it
//! reads, and exit codes that tell failures apart.

mod federation;
mod import;
mod keys;
mod ledger;
mod progress;
mod rescan;
mod serve;
mod verify;
mod verify_dossier;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, ConfigError, DatabaseArgs, LogFormat, ServeArgs};
use crate::domain::{FederationKey, FingerprintKey};
use crate::localdb::LocalPostgres;
use crate::rules::{Engine, RulesConfig};
use crate::store::{self, PoolSettings, SchemaState, Store, StoreError};

/// The database the local default keeps its data in.
const LOCAL_DATABASE: &str = "transplant_audit";

/// What the exit status means, as `--help` prints it.
const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  failure not listed below (see the log on stderr)
  2  bad usage or configuration
  3  the database is unreachable
  4  verify: the audit trail is broken; verify-dossier: the dossier was changed
  5  import: some lines were refused (the rest is stored)
  6  a read-only command found migrations missing (run `transplant-audit migrate`)";

/// Catches signs of organ trafficking and transplant fraud in transplant records.
///
/// Without a command, serves gRPC (as `serve` does, with its flags).
#[derive(Debug, Parser)]
#[command(
    name = "transplant-audit",
    version,
    about,
    args_conflicts_with_subcommands = true,
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Log format; the level comes from RUST_LOG (default: info).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// `serve`'s flags, for when no command is given.
    #[command(flatten)]
    pub serve: Box<ServeArgs>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations and serve gRPC until SIGTERM or SIGINT.
    #[command(after_help = EXIT_CODES)]
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations and exit.
    #[command(after_help = EXIT_CODES)]
    Migrate(DatabaseArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Re-run rules over stored records, adding only flags that do not
    /// exist; `rescan runs` lists runs that can be resumed.
    #[command(after_help = EXIT_CODES)]
    Rescan(rescan::RescanArgs),
    /// Check every piece of evidence against the ledger (and against
    /// digests kept outside the database) and name the first row or block
    /// that does not hold. Reads only: never migrates.
    #[command(after_help = EXIT_CODES)]
    Verify(verify::VerifyArgs),
    /// Check a referral dossier offline against the registry's public key
    /// and name what was changed in it. Needs no database and no secret.
    #[command(after_help = EXIT_CODES)]
    VerifyDossier(verify_dossier::VerifyDossierArgs),
    /// The ledger's digests and public key.
    #[command(subcommand)]
    Ledger(ledger::LedgerCommand),
    /// Load an NDJSON back-fill through the ingest pipeline, resuming an
    /// interrupted run of the same file.
    #[command(after_help = EXIT_CODES)]
    Import(import::ImportArgs),
    /// Federation with peer registries: the peers, and syncs.
    #[command(subcommand)]
    Federation(federation::FederationCommand),
}

/// Why a command failed; each kind has its exit status.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The flags or settings cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A flag's value is not usable.
    #[error("{0}")]
    Usage(String),
    /// The database cannot be reached.
    #[error("the database is unreachable: {0}")]
    Unreachable(StoreError),
    /// `verify` found a change.
    #[error("the audit trail is broken: {0}")]
    TrailBroken(String),
    /// `verify-dossier` found the dossier changed or unsigned.
    #[error("the dossier does not hold: {0}")]
    DossierBroken(String),
    /// `import` stored the rest but refused lines.
    #[error("{0} records were refused; correct them and import them again")]
    Refused(u64),
    /// A read-only command met a database its migrations have not all reached.
    #[error(
        "the database lacks migration {version} ({description}){more}: run `transplant-audit migrate` first",
        more = if *.missing > 1 { format!(" and {} more", .missing - 1) } else { String::new() }
    )]
    SchemaBehind {
        /// The first missing migration's version.
        version: i64,
        /// What it does.
        description: String,
        /// How many are missing.
        missing: usize,
    },
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<StoreError> for CliError {
    fn from(err: StoreError) -> Self {
        if err.is_unavailable() {
            CliError::Unreachable(err)
        } else {
            CliError::Other(err.into())
        }
    }
}

impl CliError {
    /// The process's exit status for this failure.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::Other(_) => 1,
            CliError::Config(_) | CliError::Usage(_) => 2,
            CliError::Unreachable(_) => 3,
            CliError::TrailBroken(_) | CliError::DossierBroken(_) => 4,
            CliError::Refused(_) => 5,
            CliError::SchemaBehind { .. } => 6,
        })
    }
}

/// Runs the command the line names.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Serve(args) => serve::serve(*args).await,
        Command::Migrate(database) => {
            let db = Database::open(&database, Access::Migrate).await?;
            db.close(Ok(())).await
        }
        Command::Keys(command) => keys::run(command).await,
        Command::Rescan(args) => rescan::run(args).await,
        Command::Verify(args) => verify::run(&args).await,
        Command::VerifyDossier(args) => verify_dossier::run(&args),
        Command::Ledger(command) => ledger::run(command).await,
        Command::Import(args) => import::run(args).await,
        Command::Federation(command) => federation::run(command).await,
    }
}

/// What a command may do to the database's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Apply pending migrations first (commands that write).
    Migrate,
    /// Only read: refuse a database that lacks a migration, change nothing.
    ReadOnly,
}

/// An open database, and the local Postgres behind it when it is the
/// local default's.
struct Database {
    store: Store,
    key: FingerprintKey,
    /// The federation key, when this registry federates.
    federation: Option<FederationKey>,
    local: Option<LocalPostgres>,
}

impl Database {
    /// Opens the configured database (or the local default's, started if
    /// needed) and migrates it or checks its schema, as `access` says.
    async fn open(args: &DatabaseArgs, access: Access) -> Result<Self, CliError> {
        let (url, local) = database_url(args, access).await?;
        let local_dir = local.is_some().then_some(args.data_dir.as_path());
        let federation = match args.federation_key(local_dir) {
            Ok(federation) => federation,
            Err(e) => {
                release(local).await;
                return Err(e.into());
            }
        };
        match Self::connect(args, &url, local.is_some(), access).await {
            Ok((store, key)) => Ok(Self {
                store,
                key,
                federation,
                local,
            }),
            Err(e) => {
                release(local).await;
                Err(e)
            }
        }
    }

    async fn connect(
        args: &DatabaseArgs,
        url: &str,
        local: bool,
        access: Access,
    ) -> Result<(Store, FingerprintKey), CliError> {
        let key = match args.configured_key()? {
            Some(key) => key,
            None if local => config::local_key(&args.data_dir)?,
            None => return Err(ConfigError::MissingKey.into()),
        };
        let pool = PoolSettings {
            max_connections: args.db_max_connections,
            ..PoolSettings::default()
        };
        let store = Store::connect(url, &pool, &key)
            .map_err(|e| CliError::Usage(format!("DATABASE_URL: {e}")))?;
        if let Err(e) = prepare_schema(&store, access).await {
            store.pool().close().await;
            return Err(e);
        }
        Ok((store, key))
    }

    /// Closes the pool and lets the local Postgres go (stopped when no
    /// other process uses it), then answers `result`.
    async fn close<T>(self, result: Result<T, CliError>) -> Result<T, CliError> {
        self.store.pool().close().await;
        release(self.local).await;
        result
    }
}

/// Migrates, or checks that nothing is missing, as `access` says.
async fn prepare_schema(store: &Store, access: Access) -> Result<(), CliError> {
    match access {
        Access::Migrate => {
            store.migrate().await?;
            tracing::info!("database migrated");
            store.adopt().await?;
        }
        Access::ReadOnly => {
            if let SchemaState::Behind { missing } = store.schema_state().await? {
                let (version, description) = missing[0].clone();
                return Err(CliError::SchemaBehind {
                    version,
                    description,
                    missing: missing.len(),
                });
            }
        }
    }
    Ok(())
}

/// Stops the local Postgres when this was the last process using it.
async fn release(local: Option<LocalPostgres>) {
    let Some(pg) = local else { return };
    match tokio::task::spawn_blocking(move || pg.release()).await {
        Ok(Ok(true)) => tracing::info!("local Postgres stopped"),
        Ok(Ok(false)) => tracing::info!("local Postgres left running: another process uses it"),
        Ok(Err(e)) => tracing::warn!(error = %e, "stopping the local Postgres"),
        Err(e) => tracing::warn!(error = %e, "stopping the local Postgres"),
    }
}

/// The configured database's URL, or the local default's (its cluster
/// started if needed; its database created unless the command only reads).
async fn database_url(
    args: &DatabaseArgs,
    access: Access,
) -> Result<(String, Option<LocalPostgres>), CliError> {
    if let Some(url) = &args.database_url {
        return Ok((url.clone(), None));
    }
    let dir = args.data_dir.join("postgres");
    tracing::info!(dir = %dir.display(), "DATABASE_URL unset: using the local Postgres");
    let pg = tokio::task::spawn_blocking(move || LocalPostgres::ensure_running(&dir))
        .await
        .map_err(anyhow::Error::from)?
        .map_err(|e| anyhow::anyhow!(e).context("starting the local Postgres"))?;
    if access == Access::Migrate {
        if let Err(e) = store::create_database_if_missing(&pg.url("postgres"), LOCAL_DATABASE).await
        {
            release(Some(pg)).await;
            return Err(e.into());
        }
    }
    Ok((pg.url(LOCAL_DATABASE), Some(pg)))
}

/// The rules in force: the configured file's, or the defaults.
fn engine(rules: &config::RulesArgs) -> Result<Engine, CliError> {
    Ok(Engine::new(match &rules.rules_config {
        Some(path) => RulesConfig::load(path)
            .map_err(|e| CliError::Usage(format!("rules configuration {}: {e}", path.display())))?,
        None => RulesConfig::default(),
    }))
}

/// An optional RFC 3339 instant from a flag.
fn parse_instant(
    flag: &str,
    value: &Option<String>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, CliError> {
    value
        .as_deref()
        .map(|t| chrono::DateTime::parse_from_rfc3339(t).map(|d| d.to_utc()))
        .transpose()
        .map_err(|_| CliError::Usage(format!("--{flag} must be an RFC 3339 instant")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The long flags a subcommand's `--help` lists.
    fn flags_of(path: &[&str]) -> Vec<String> {
        let mut command = Cli::command();
        command.build();
        let mut at = &command;
        for name in path {
            at = at.find_subcommand(name).expect("a subcommand");
        }
        at.get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long().map(str::to_owned))
            .collect()
    }

    #[test]
    fn each_command_lists_only_its_own_flags() {
        let keys_list = flags_of(&["keys", "list"]);
        assert!(
            keys_list.contains(&"database-url".to_owned()),
            "{keys_list:?}"
        );
        for server_flag in [
            "listen-addr",
            "tls-cert-file",
            "max-concurrent-calls",
            "rules-config",
        ] {
            assert!(
                !keys_list.contains(&server_flag.to_owned()),
                "{keys_list:?}"
            );
            assert!(!flags_of(&["verify"]).contains(&server_flag.to_owned()));
        }
        assert!(flags_of(&["serve"]).contains(&"listen-addr".to_owned()));
        assert!(flags_of(&["rescan"]).contains(&"rules-config".to_owned()));
        assert!(!flags_of(&["rescan"]).contains(&"listen-addr".to_owned()));
    }

    #[test]
    fn serve_is_the_default_and_takes_its_flags_at_the_top() {
        let cli =
            Cli::try_parse_from(["transplant-audit", "--listen-addr", "127.0.0.1:1"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.listen_addr.to_string(), "127.0.0.1:1");
        let cli = Cli::try_parse_from([
            "transplant-audit",
            "verify",
            "--database-url",
            "postgres://x",
        ])
        .unwrap();
        let Some(Command::Verify(args)) = cli.command else {
            panic!("verify")
        };
        assert_eq!(args.database.database_url.as_deref(), Some("postgres://x"));
        assert!(
            Cli::try_parse_from([
                "transplant-audit",
                "keys",
                "list",
                "--listen-addr",
                "1.2.3.4:5"
            ])
            .is_err(),
            "server flags belong to serve"
        );
    }

    #[test]
    fn failures_have_distinct_exit_codes() {
        let codes: Vec<String> = [
            CliError::Other(anyhow::anyhow!("x")),
            CliError::Usage("x".into()),
            CliError::Unreachable(StoreError::Contended),
            CliError::TrailBroken("x".into()),
            CliError::Refused(1),
            CliError::SchemaBehind {
                version: 1,
                description: "x".into(),
                missing: 2,
            },
        ]
        .iter()
        .map(|e| format!("{:?}", e.exit_code()))
        .collect();
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), codes.len(), "{codes:?}");
        for code in 1..=6 {
            assert!(
                EXIT_CODES.contains(&format!("  {code}  ")),
                "{code} is documented"
            );
        }
    }
}
