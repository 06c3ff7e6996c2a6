//! The `transplant-audit` binary: parse configuration, connect, migrate, serve.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;

use transplant_audit::config::{
    self, Cli, Command, ImportArgs, KeysCommand, RescanArgs, Settings, Transport,
};
use transplant_audit::domain::access::{KeySpec, NewApiKey};
use transplant_audit::domain::{ChainKey, Role};
use transplant_audit::import::{self, ImportOptions};
use transplant_audit::ingest::Ingestor;
use transplant_audit::localdb::LocalPostgres;
use transplant_audit::rescan::{self, RescanRequest};
use transplant_audit::rules::{Engine, RuleId, RulesConfig};
use transplant_audit::server::{self, App, Listeners, ServeOptions};
use transplant_audit::store::rescan::TransplantRange;
use transplant_audit::store::{self, PoolSettings, Store};
use transplant_audit::telemetry::{self, Telemetry};

/// The database the local default keeps its data in.
const LOCAL_DATABASE: &str = "transplant_audit";

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match Telemetry::init(cli.settings.log_format) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match run(&cli.settings, cli.command.clone().unwrap_or(Command::Serve)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
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
    let store =
        Store::connect(&database_url, &pool, ChainKey::derive(&key)).context("database URL")?;
    store.migrate().await.context("applying migrations")?;
    tracing::info!("database migrated");

    let result = match command {
        Command::Migrate => Ok(()),
        Command::Rescan(args) => rescan_command(&store, &engine, &args).await,
        Command::Keys(keys) => keys_command(&store, &keys).await,
        Command::Verify => verify_command(&store).await,
        Command::Import(args) => {
            let batch = settings.ingest_batch_size;
            let ingestor = Ingestor::new(store.clone(), Arc::new(engine), key, batch);
            import_command(&store, &ingestor, &args, settings.ingest_batch_size).await
        }
        Command::Serve => {
            let app = App::new(store.clone(), engine, key, settings.ingest_batch_size);
            serve_command(settings, app).await
        }
    };
    store.pool().close().await;
    if let Some(pg) = local {
        let released = tokio::task::spawn_blocking(move || pg.release()).await?;
        if released.context("stopping the local Postgres")? {
            tracing::info!("local Postgres stopped");
        } else {
            tracing::info!("local Postgres left running: another process uses it");
        }
    }
    result
}

/// Binds `addr`, naming it in the error.
async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

/// `serve`: metrics, then gRPC until SIGTERM or SIGINT.
async fn serve_command(settings: &Settings, app: App) -> anyhow::Result<()> {
    let tls = match settings.transport()? {
        Transport::Tls(pem) => Some(pem),
        Transport::PlaintextLoopback => {
            tracing::warn!("gRPC in plaintext on loopback: for use on this machine only");
            None
        }
        Transport::PlaintextInsecure => {
            tracing::warn!(
                addr = %settings.listen_addr,
                "gRPC in plaintext (INSECURE_PLAINTEXT): keys and records cross the network unencrypted"
            );
            None
        }
    };
    let metrics = telemetry::metrics::install()?;
    let metrics_listener = bind(settings.metrics_addr).await?;
    tracing::info!(addr = %metrics_listener.local_addr()?, "serving metrics");
    let metrics = tokio::spawn(telemetry::metrics::serve(metrics_listener, metrics));
    let health = match settings.health_addr {
        Some(addr) => {
            let listener = bind(addr).await?;
            tracing::info!(addr = %listener.local_addr()?, "serving gRPC health");
            Some(listener)
        }
        None => None,
    };
    let grpc = bind(settings.listen_addr).await?;
    tracing::info!(
        addr = %grpc.local_addr()?,
        tls = tls.is_some(),
        mutual_tls = tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        "serving gRPC"
    );
    let options = ServeOptions {
        request_timeout: settings.request_timeout(),
        shutdown_grace: settings.shutdown_grace(),
        shutdown_timeout: settings.shutdown_timeout(),
        max_concurrent_calls: settings.max_concurrent_calls,
        max_concurrent_streams: settings.max_concurrent_streams,
        max_stream_records: settings.max_stream_records,
        ingest_batch_size: settings.ingest_batch_size,
    };
    let served = server::serve(
        Listeners { grpc, tls, health },
        app,
        options,
        server::shutdown_signal(),
    )
    .await;
    metrics.abort();
    Ok(served?)
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

/// `rescan`: re-runs rules, with a progress bar on a terminal, and prints the report.
async fn rescan_command(store: &Store, engine: &Engine, args: &RescanArgs) -> anyhow::Result<()> {
    let rules = args
        .rules
        .iter()
        .map(|r| {
            r.parse::<RuleId>()
                .map_err(|e| anyhow::anyhow!("--rule: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let request = RescanRequest {
        rules,
        range: TransplantRange {
            from: parse_instant("from", &args.from)?,
            until: parse_instant("until", &args.until)?,
        },
        dry_run: args.dry_run,
        resume: args.resume,
        chunk_size: 0,
    };
    let started = std::time::Instant::now();
    let report = rescan::rescan(store, engine, request, |p| {
        show_progress(
            p.processed,
            p.total,
            &format!("records, {} flags added", p.flags_added),
            started,
        );
        std::ops::ControlFlow::Continue(())
    })
    .await?;
    eprintln!();
    let seconds = started.elapsed().as_secs_f64();
    print!("{}", report.render());
    println!(
        "{:.0} records/s over {seconds:.1} s.",
        report.processed as f64 / seconds.max(1e-9)
    );
    Ok(())
}

/// `import`: a back-fill with a progress bar; refused records on stderr.
async fn import_command(
    store: &Store,
    ingestor: &Ingestor,
    args: &ImportArgs,
    batch_size: usize,
) -> anyhow::Result<()> {
    let options = ImportOptions {
        batch_size,
        restart: args.restart,
    };
    let started = std::time::Instant::now();
    let report = import::import(
        store,
        ingestor,
        &args.file,
        options,
        |r| {
            let detail = format!(
                "lines: {} accepted, {} duplicates, {} refused",
                r.accepted, r.duplicates, r.rejected
            );
            show_progress(r.lines_done, r.lines_total, &detail, started);
        },
        |refused| {
            eprintln!(
                "\nline {} ({:?}) refused: {}",
                refused.line, refused.external_record_id, refused.reason
            );
        },
    )
    .await?;
    eprintln!();
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
        anyhow::bail!(
            "{} records were refused; correct them and import them again",
            report.rejected
        );
    }
    Ok(())
}

/// A progress bar on a terminal; a line per step otherwise.
fn show_progress(done: u64, total: u64, detail: &str, started: std::time::Instant) {
    use std::io::IsTerminal;
    let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let share = if total == 0 {
        1.0
    } else {
        done as f64 / total as f64
    };
    let line = format!("{done}/{total} {detail}, {rate:.0}/s");
    if std::io::stderr().is_terminal() {
        let filled = (share * 30.0).round() as usize;
        eprint!(
            "\r[{}{}] {:>3.0}% {line}",
            "#".repeat(filled),
            ".".repeat(30 - filled.min(30)),
            share * 100.0
        );
    } else {
        eprintln!("{line}");
    }
}

/// `keys create | list | revoke`.
async fn keys_command(store: &Store, command: &KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create(args) => {
            let role: Role = args.role.to_ascii_uppercase().parse()?;
            let expires_at = parse_instant("expires-at", &args.expires_at)?;
            let spec = KeySpec::new(
                role,
                args.hospital_id.as_deref(),
                &args.description,
                expires_at,
                chrono::Utc::now(),
            )
            .map_err(|v| {
                let problems: Vec<String> =
                    v.0.iter()
                        .map(|f| format!("--{} {}", f.field.replace('_', "-"), f.description))
                        .collect();
                anyhow::anyhow!(problems.join("; "))
            })?;
            let new = NewApiKey::generate()?;
            let key = store.create_key(&new, &spec).await?;
            eprintln!(
                "Created {} key {}; it is shown only this once:",
                key.role, key.key_id
            );
            println!("{}", new.token);
        }
        KeysCommand::List => {
            println!(
                "{:<14} {:<9} {:<16} {:<25} {:<25} description",
                "key id", "role", "hospital", "expires", "revoked"
            );
            for key in store.keys().await? {
                let at = |t: Option<chrono::DateTime<chrono::Utc>>| {
                    t.map_or("-".into(), |t| t.to_rfc3339())
                };
                println!(
                    "{:<14} {:<9} {:<16} {:<25} {:<25} {}",
                    key.key_id,
                    key.role,
                    key.hospital_id.as_deref().unwrap_or("-"),
                    at(key.expires_at),
                    at(key.revoked_at),
                    key.description
                );
            }
        }
        KeysCommand::Revoke { key_id } => {
            let key = store
                .revoke_key(key_id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no key {key_id}"))?;
            println!("Revoked {} key {}.", key.role, key.key_id);
        }
    }
    Ok(())
}

/// `verify`: exits non-zero when a chain is broken.
async fn verify_command(store: &Store) -> anyhow::Result<()> {
    let report = store.verify_chains().await?;
    println!(
        "Checked {} record versions and {} triage steps.",
        report.record_versions, report.flag_events
    );
    match report.first_break {
        None => {
            println!("The audit trail is intact.");
            Ok(())
        }
        Some(b) => anyhow::bail!(
            "the audit trail is broken: {} entry {} of {} {}: {}",
            b.table,
            b.entry,
            if b.table == "flag_events" {
                "flag"
            } else {
                "record"
            },
            b.entity_id,
            b.reason
        ),
    }
}

/// An optional RFC 3339 instant from a flag.
fn parse_instant(
    flag: &str,
    value: &Option<String>,
) -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
    value
        .as_deref()
        .map(|t| chrono::DateTime::parse_from_rfc3339(t).map(|d| d.to_utc()))
        .transpose()
        .with_context(|| format!("--{flag} must be an RFC 3339 instant"))
}
