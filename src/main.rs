//! The `transplant-audit` binary: parse configuration, connect, migrate, serve.

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;

use transplant_audit::config::{self, Cli, Command, Settings};
use transplant_audit::localdb::LocalPostgres;
use transplant_audit::rules::{Engine, RulesConfig};
use transplant_audit::server::{self, App, ServeOptions};
use transplant_audit::store::{self, PoolSettings, Store};
use transplant_audit::telemetry;

/// The database the local default keeps its data in.
const LOCAL_DATABASE: &str = "transplant_audit";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_logging(cli.settings.log_format).context("installing the logger")?;
    let result = run(&cli.settings, cli.command.unwrap_or(Command::Serve)).await;
    if let Err(e) = &result {
        tracing::error!("{e:#}");
    }
    result
}

async fn run(settings: &Settings, command: Command) -> anyhow::Result<()> {
    let engine = Engine::new(match &settings.rules_config {
        Some(path) => RulesConfig::load(path)
            .with_context(|| format!("rules configuration {}", path.display()))?,
        None => RulesConfig::default(),
    });
    let (database_url, local) = database(settings).await?;
    let key = match config::configured_key(settings)? {
        Some(key) => key,
        None if local.is_some() => config::local_key(&settings.data_dir)?,
        None => return Err(config::ConfigError::MissingKey.into()),
    };
    let pool = PoolSettings {
        max_connections: settings.db_max_connections,
        ..PoolSettings::default()
    };
    let store = Store::connect(&database_url, &pool).context("database URL")?;
    store.migrate().await.context("applying migrations")?;
    tracing::info!("database migrated");

    let result = match command {
        Command::Migrate => Ok(()),
        Command::Serve => {
            let listener = TcpListener::bind(settings.listen_addr)
                .await
                .with_context(|| format!("binding {}", settings.listen_addr))?;
            tracing::info!(addr = %listener.local_addr()?, "serving gRPC");
            let options = ServeOptions {
                request_timeout: settings.request_timeout(),
                shutdown_grace: settings.shutdown_grace(),
                shutdown_timeout: settings.shutdown_timeout(),
            };
            server::serve(
                listener,
                App::new(store.clone(), engine, key),
                options,
                server::shutdown_signal(),
            )
            .await
            .map_err(anyhow::Error::from)
        }
    };
    store.pool().close().await;
    if let Some(pg) = local.filter(LocalPostgres::started_here) {
        let stopped = tokio::task::spawn_blocking(move || pg.stop()).await?;
        stopped.context("stopping the local Postgres")?;
        tracing::info!("local Postgres stopped");
    }
    result
}

/// The configured database, or the local default's (started if needed).
async fn database(settings: &Settings) -> anyhow::Result<(String, Option<LocalPostgres>)> {
    if let Some(url) = &settings.database_url {
        return Ok((url.clone(), None));
    }
    let dir = settings.data_dir.join("postgres");
    tracing::info!(dir = %dir.display(), "DATABASE_URL unset: using the local Postgres");
    let pg = tokio::task::spawn_blocking(move || LocalPostgres::ensure_running(&dir))
        .await?
        .context("starting the local Postgres")?;
    store::create_database_if_missing(&pg.url("postgres"), LOCAL_DATABASE).await?;
    Ok((pg.url(LOCAL_DATABASE), Some(pg)))
}
