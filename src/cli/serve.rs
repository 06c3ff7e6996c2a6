//! `serve` (the default command): metrics, health and gRPC until SIGTERM or SIGINT.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::api::federation::FederationApi;
use crate::config::{ConfigError, ServeArgs, Transport};
use crate::domain::FederationKey;
use crate::federation::peers::PeerCas;
use crate::federation::sync::Syncer;
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
    let result = run(&args, transport, console, app, db.federation.clone()).await;
    db.close(result).await
}

async fn run(
    args: &ServeArgs,
    transport: Transport,
    console: Option<(SocketAddr, Transport)>,
    app: App,
    federation_key: Option<FederationKey>,
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
    let federation = federation(args, &app, federation_key).await?;
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
    federation.stop().await;
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

/// The federation listener and the periodic sync, while they run.
struct Federation {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Federation {
    /// Stops the listener (letting its calls finish) and the sync.
    async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(stop) = self.stop {
            let _ = stop.send(());
        }
        if let Some(server) = self.server {
            let _ = server.await;
        }
    }
}

/// Starts the federation listener when FEDERATION_ADDR is set, and the
/// periodic sync when FEDERATION_SYNC_INTERVAL_SECS is.
async fn federation(
    args: &ServeArgs,
    app: &App,
    key: Option<FederationKey>,
) -> Result<Federation, CliError> {
    let mut running = Federation {
        tasks: Vec::new(),
        stop: None,
        server: None,
    };
    let settings = &args.federation;
    if settings.federation_addr.is_none() && settings.federation_sync_interval.is_none() {
        return Ok(running);
    }
    let key = key.ok_or_else(|| {
        CliError::Usage("federation needs a federation key: set FEDERATION_KEY".into())
    })?;
    let identity = settings.tls.pem()?.ok_or_else(|| {
        CliError::Usage("federation needs FEDERATION_CERT_FILE and FEDERATION_KEY_FILE".into())
    })?;
    if let Some(addr) = settings.federation_addr {
        let (peers, reload) = PeerCas::load(app.store.clone()).await?;
        running.tasks.push(reload);
        let tls = crate::federation::serve::tls_config(&identity.0, &identity.1, peers.clone())
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let listener = bind(addr).await?;
        tracing::info!(
            addr = %listener.local_addr().map_err(anyhow::Error::from)?,
            daily_ceiling = settings.federation_daily_ceiling,
            "serving federation"
        );
        let api = FederationApi::new(
            app.store.clone(),
            key.clone(),
            peers,
            settings.federation_daily_ceiling,
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handshake = args.options.handshake_timeout;
        running.stop = Some(stop);
        running.server = Some(tokio::spawn(async move {
            let served = crate::federation::serve::serve(listener, tls, api, handshake, async {
                let _ = stopped.await;
            })
            .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the federation listener failed");
            }
        }));
    }
    if let Some(interval) = settings.federation_sync_interval {
        let syncer = Syncer {
            store: app.store.clone(),
            engine: app.engine.clone(),
            key,
            identity,
        };
        running
            .tasks
            .push(tokio::spawn(sync_every(syncer, interval)));
    }
    Ok(running)
}

/// Syncs with every configured peer, then again every `interval`.
async fn sync_every(syncer: Syncer, interval: std::time::Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let peers = match syncer.store.peers().await {
            Ok(peers) => peers,
            Err(e) => {
                tracing::warn!(error = %e, "periodic federation sync: reading the peers failed");
                continue;
            }
        };
        for peer in peers {
            match syncer.sync(&peer.name, None, |_| {}).await {
                Ok(r) => tracing::info!(
                    peer = %r.peer,
                    sent = r.sent,
                    peer_set = r.peer_set,
                    matched_donors = r.matched_donors,
                    matched_records = r.matched_records,
                    flags_raised = r.flags_raised,
                    "federation sync done"
                ),
                Err(e) => tracing::warn!(peer = %peer.name, error = %e, "federation sync failed"),
            }
        }
    }
}

/// Binds `addr`, naming it in the error.
async fn bind(addr: SocketAddr) -> Result<TcpListener, CliError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::Other(anyhow::Error::new(e).context(format!("binding {addr}"))))
}
