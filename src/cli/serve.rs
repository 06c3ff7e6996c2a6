//! `serve` (the default command): metrics, health and gRPC until SIGTERM or SIGINT.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::config::{ServeArgs, Transport};
use crate::server::{self, App, Listeners};
use crate::telemetry;

use super::{Access, CliError, Database, engine};

/// Migrates, then serves until a signal; drains in-flight calls before returning.
pub async fn serve(args: ServeArgs) -> Result<(), CliError> {
    let engine = engine(&args.rules)?;
    let transport = args.tls.transport(args.listen_addr)?;
    let db = Database::open(&args.database, Access::Migrate).await?;
    let app = App::new(
        db.store.clone(),
        engine,
        db.key.clone(),
        args.options.ingest_batch_size,
    );
    let result = run(&args, transport, app).await;
    db.close(result).await
}

async fn run(args: &ServeArgs, transport: Transport, app: App) -> Result<(), CliError> {
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
    let grpc = bind(args.listen_addr).await?;
    tracing::info!(
        addr = %grpc.local_addr().map_err(anyhow::Error::from)?,
        tls = tls.is_some(),
        mutual_tls = tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        "serving gRPC"
    );
    let served = server::serve(
        Listeners { grpc, tls, health },
        app,
        args.options,
        server::shutdown_signal(),
    )
    .await;
    metrics.abort();
    served.map_err(|e| CliError::Other(e.into()))
}

/// Binds `addr`, naming it in the error.
async fn bind(addr: SocketAddr) -> Result<TcpListener, CliError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::Other(anyhow::Error::new(e).context(format!("binding {addr}"))))
}
