//! `serve` (the default command): metrics, health and gRPC until SIGTERM or SIGINT.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::config::{ConfigError, ServeArgs, Transport};
use crate::seal::Sinks;
use crate::server::{self, App, ConsoleListener, Listeners, Sealing};
use crate::telemetry;

use super::{Access, CliError, Database, engine};

/// Migrates, then serves until a signal; drains in-flight calls before returning.
pub async fn serve(args: ServeArgs) -> Result<(), CliError> {
    let engine = engine(&args.rules)?;
    let transport = args.tls.transport(args.listen_addr)?;
    let console = match args.console.addr(args.database.database_url.is_none()) {
        Some(addr) => Some((addr, args.console.transport(&args.tls, addr)?)),
        None => None,
    };
    let sealing = sealing(&args)?;
    let db = Database::open(&args.database, Access::Migrate).await?;
    let mut app = App::new(
        db.store.clone(),
        engine,
        db.key.clone(),
        args.options.ingest_batch_size,
        sealing,
    );
    match &db.federation {
        Some(key) => app.ingestor = app.ingestor.with_federation(key.clone()),
        None => tracing::warn!(
            "no FEDERATION_KEY: records are stored without federation elements, and this \
             registry cannot federate"
        ),
    }
    let result = run(&args, transport, console, app).await;
    db.close(result).await
}

async fn run(
    args: &ServeArgs,
    transport: Transport,
    console: Option<(SocketAddr, Transport)>,
    app: App,
) -> Result<(), CliError> {
    let tls = match transport {
        Transport::Tls(pem) => Some(pem),
        Transport::PlaintextLoopback => {
            tracing::warn!("gRPC in plaintext on loopback: for use on this machine only");
            None
        }
        Transport::PlaintextInsecure => {
            tracing::warn!(
                addr = %args.listen_addr,
                "gRPC in plaintext (INSECURE_PLAINTEXT): keys and records cross the network unencrypted"
            );
            None
        }
    };
    let metrics = telemetry::metrics::install().map_err(anyhow::Error::from)?;
    let metrics_listener = bind(args.metrics_addr).await?;
    tracing::info!(addr = %metrics_listener.local_addr().map_err(anyhow::Error::from)?, "serving metrics");
    let metrics = tokio::spawn(telemetry::metrics::serve(metrics_listener, metrics));
    let health = match args.health_addr {
        Some(addr) => {
            let listener = bind(addr).await?;
            tracing::info!(addr = %listener.local_addr().map_err(anyhow::Error::from)?, "serving gRPC health");
            Some(listener)
        }
        None => None,
    };
    let console = match console {
        Some((addr, transport)) => {
            let listener = bind(addr).await?;
            let local = listener.local_addr().map_err(anyhow::Error::from)?;
            let tls = match transport {
                Transport::Tls(pem) => Some(pem),
                _ => None,
            };
            let scheme = if tls.is_some() { "https" } else { "http" };
            tracing::info!(addr = %local, url = %format_args!("{scheme}://{local}/login"), "serving the console");
            Some(ConsoleListener {
                listener,
                tls,
                session_idle: args.console.session_idle,
            })
        }
        None => None,
    };
    let grpc = bind(args.listen_addr).await?;
    tracing::info!(
        addr = %grpc.local_addr().map_err(anyhow::Error::from)?,
        tls = tls.is_some(),
        mutual_tls = tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        "serving gRPC"
    );
    let served = server::serve(
        Listeners {
            grpc,
            tls,
            health,
            console,
        },
        app,
        args.options,
        server::shutdown_signal(),
    )
    .await;
    metrics.abort();
    served.map_err(|e| CliError::Other(e.into()))
}

/// The signing key and digest sinks: configured, or the local default's
/// (a generated key, digests appended to a file under the data folder).
/// Without a sink configured elsewhere, digests go to standard output.
fn sealing(args: &ServeArgs) -> Result<Sealing, CliError> {
    let local = args
        .database
        .database_url
        .is_none()
        .then_some(args.database.data_dir.as_path());
    let signer = args
        .ledger
        .signing
        .key(local)?
        .ok_or(ConfigError::MissingSigningKey)?;
    let mut sinks = Sinks {
        file: args.ledger.ledger_digest_file.clone(),
        stdout: args.ledger.ledger_digest_stdout,
        url: args.ledger.ledger_digest_url.clone(),
    };
    if !sinks.any() {
        match local {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(anyhow::Error::from)?;
                sinks.file = Some(dir.join("digests.jsonl"));
            }
            None => sinks.stdout = true,
        }
    }
    tracing::info!(
        public_key = %signer.public(),
        file = ?sinks.file,
        stdout = sinks.stdout,
        url = ?sinks.url,
        "ledger digests signed and written outside the database"
    );
    Ok(Sealing {
        signer,
        previous_keys: args.ledger.ledger_previous_public_keys.clone(),
        sinks,
        interval: args.ledger.seal_interval(),
    })
}

/// Binds `addr`, naming it in the error.
async fn bind(addr: SocketAddr) -> Result<TcpListener, CliError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::Other(anyhow::Error::new(e).context(format!("binding {addr}"))))
}
