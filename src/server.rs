//! The tonic server: the five services, health, reflection, the tower
//! layers in front of them, and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use tonic_reflection::pb::v1::server_reflection_server::{
    ServerReflection, ServerReflectionServer,
};
use tonic_reflection::pb::v1alpha::server_reflection_server as v1alpha;

use crate::api::admin::AdminApi;
use crate::api::audit::AuditApi;
use crate::api::auth::{AuthLayer, Authenticator};
use crate::api::call_cap::ConcurrencyCap;
use crate::api::ingest::IngestApi;
use crate::api::investigation::InvestigationApi;
use crate::api::message_deadline::MessageDeadline;
use crate::api::observe::ObserveLayer;
use crate::api::page_token::PageTokens;
use crate::api::quota::TenantCap;
use crate::api::registry::RegistryApi;
use crate::audit::Auditing;
use crate::config::{self, TlsPem};
use crate::console::{self, Console};
use crate::domain::FingerprintKey;
use crate::domain::ledger::{PublicKey, SigningKey};
use crate::incoming::{ConnectionLimits, TlsSetupError, incoming, tls_config};
use crate::ingest::Ingestor;
use crate::investigation::Investigation;
use crate::kept::KeptViews;
use crate::rules::Engine;
use crate::seal::{self, Sinks};
use crate::store::Store;
use crate::telemetry::metrics;
use crate::watch::FlagFeed;
use crate::wire::pb;
use crate::wire::pb::admin_service_server::AdminServiceServer;
use crate::wire::pb::audit_service_server::AuditServiceServer;
use crate::wire::pb::ingest_service_server::IngestServiceServer;
use crate::wire::pb::investigation_service_server::InvestigationServiceServer;
use crate::wire::pb::registry_service_server::RegistryServiceServer;

/// The largest request message accepted; a record is a few kilobytes.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// HTTP/2 flow-control windows. A `SubmitRecords` client may send this much
/// ahead of what the server has read: HTTP/2's default of 64 KiB holds about
/// a hundred records, which would cap a stream's batches far below
/// INGEST_BATCH_SIZE. The connection window bounds what all of a
/// connection's streams may have buffered at once.
const STREAM_WINDOW_BYTES: u32 = 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 2 * 1024 * 1024;

/// Connections the health-only listener holds at once: probes open one at
/// a time.
const HEALTH_MAX_CONNECTIONS: usize = 64;

/// The least time between two health checks, however often calls ask for one.
const MIN_CHECK_GAP: Duration = Duration::from_millis(50);

/// How often it checks while the database is down, so that calls, refused
/// meanwhile, go through again soon after it is back.
const DOWN_INTERVAL: Duration = Duration::from_millis(200);

/// How long a health check waits for the database's answer.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything the services share.
#[derive(Clone, Debug)]
pub struct App {
    /// The database.
    pub store: Store,
    /// The ingest pipeline.
    pub ingestor: Ingestor,
    /// The rules in force.
    pub engine: Arc<Engine>,
    /// The API keys' check.
    pub auth: Arc<Authenticator>,
    /// The listings' page tokens.
    pub page_tokens: PageTokens,
    /// How the ledger is sealed.
    pub sealing: Sealing,
}

/// How the server seals the ledger.
#[derive(Clone, Debug)]
pub struct Sealing {
    /// The registry's signing key.
    pub signer: SigningKey,
    /// Public keys the registry signed with before `signer`, still trusted
    /// for the blocks they signed.
    pub previous_keys: Vec<PublicKey>,
    /// Where digests go besides the database.
    pub sinks: Sinks,
    /// The time between seals.
    pub interval: Duration,
}

impl App {
    /// Wires the services over `store`, storing at most `batch_size`
    /// records per ingest transaction and sealing as `sealing` says.
    pub fn new(
        store: Store,
        engine: Engine,
        key: FingerprintKey,
        batch_size: usize,
        sealing: Sealing,
    ) -> Self {
        let engine = Arc::new(engine);
        let page_tokens = PageTokens::new(&key);
        let ingestor = Ingestor::new(store.clone(), engine.clone(), key, batch_size);
        Self {
            auth: Arc::new(Authenticator::new(store.clone())),
            store,
            ingestor,
            engine,
            page_tokens,
            sealing,
        }
    }
}

impl Sealing {
    /// The public keys blocks and digests may be signed with.
    pub fn trusted(&self) -> Arc<[PublicKey]> {
        std::iter::once(self.signer.public())
            .chain(self.previous_keys.iter().copied())
            .collect()
    }
}

/// The server's limits and timing: flags of `serve`, each with its default
/// written once, here.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct ServeOptions {
    /// Seconds a unary call may take before the server cancels it (tonic
    /// reports its own timeouts as CANCELLED).
    #[arg(
        long = "request-timeout-secs",
        env = "REQUEST_TIMEOUT_SECS",
        value_name = "SECS",
        default_value = "30",
        value_parser = config::seconds
    )]
    pub request_timeout: Duration,

    /// Seconds health reports NOT_SERVING before the server stops accepting
    /// calls at shutdown.
    #[arg(
        long = "shutdown-grace-secs",
        env = "SHUTDOWN_GRACE_SECS",
        value_name = "SECS",
        default_value = "1",
        value_parser = config::seconds
    )]
    pub shutdown_grace: Duration,

    /// Seconds in-flight calls get to finish at shutdown.
    #[arg(
        long = "shutdown-timeout-secs",
        env = "SHUTDOWN_TIMEOUT_SECS",
        value_name = "SECS",
        default_value = "30",
        value_parser = config::seconds
    )]
    pub shutdown_timeout: Duration,

    /// Seconds between the checks that the database answers (health and
    /// pool metrics follow them). A call that finds the database gone asks
    /// for a check at once, whatever this says.
    #[arg(
        long = "health-interval-secs",
        env = "HEALTH_INTERVAL_SECS",
        value_name = "SECS",
        default_value = "2",
        value_parser = config::seconds
    )]
    pub health_interval: Duration,

    /// Calls in flight at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "MAX_CONCURRENT_CALLS", default_value_t = 256)]
    pub max_concurrent_calls: usize,

    /// SubmitRecords streams open at once; more are refused with
    /// RESOURCE_EXHAUSTED. A stream counts until its last batch is stored.
    #[arg(long, env = "MAX_CONCURRENT_STREAMS", default_value_t = 32)]
    pub max_concurrent_streams: usize,

    /// SubmitRecords streams one tenant (a hospital's keys together, or
    /// another key) may have open at once; more are refused with
    /// RESOURCE_EXHAUSTED. MAX_CONCURRENT_STREAMS stays the server's cap.
    #[arg(long, env = "MAX_STREAMS_PER_TENANT", default_value_t = 8)]
    pub max_streams_per_tenant: usize,

    /// Calls one tenant may have in flight at once; more are refused with
    /// RESOURCE_EXHAUSTED. MAX_CONCURRENT_CALLS stays the server's cap.
    #[arg(long, env = "MAX_CALLS_PER_TENANT", default_value_t = 64)]
    pub max_calls_per_tenant: usize,

    /// grpc.health.v1.Health/Watch streams open at once (probes use Check).
    #[arg(long, env = "MAX_HEALTH_WATCHES", default_value_t = 8)]
    pub max_health_watches: usize,

    /// Seconds a call's request message may take to arrive (all of it,
    /// from the call's start); then the call is refused DEADLINE_EXCEEDED.
    /// SubmitRecords is bound by STREAM_IDLE_TIMEOUT_SECS instead.
    #[arg(
        long = "request-message-timeout-secs",
        env = "REQUEST_MESSAGE_TIMEOUT_SECS",
        value_name = "SECS",
        default_value = "10",
        value_parser = config::positive_seconds
    )]
    pub request_message_timeout: Duration,

    /// Seconds a SubmitRecords stream may wait for its next record while
    /// none of its records is being stored; then it ends DEADLINE_EXCEEDED.
    #[arg(
        long = "stream-idle-timeout-secs",
        env = "STREAM_IDLE_TIMEOUT_SECS",
        value_name = "SECS",
        default_value = "60",
        value_parser = config::positive_seconds
    )]
    pub stream_idle_timeout: Duration,

    /// Connections open at once; one more is closed as soon as it is
    /// accepted. Keep it below the process's file descriptor limit.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Seconds a new connection has to finish its TLS handshake and send the
    /// HTTP/2 preface; then it is closed.
    #[arg(
        long = "handshake-timeout-secs",
        env = "HANDSHAKE_TIMEOUT_SECS",
        value_name = "SECS",
        default_value = "10",
        value_parser = config::positive_seconds
    )]
    pub handshake_timeout: Duration,

    /// Seconds between HTTP/2 pings on every connection.
    #[arg(
        long = "keepalive-interval-secs",
        env = "KEEPALIVE_INTERVAL_SECS",
        value_name = "SECS",
        default_value = "30",
        value_parser = config::positive_seconds
    )]
    pub keepalive_interval: Duration,

    /// Seconds a ping may go unanswered before its connection is closed.
    #[arg(
        long = "keepalive-timeout-secs",
        env = "KEEPALIVE_TIMEOUT_SECS",
        value_name = "SECS",
        default_value = "10",
        value_parser = config::positive_seconds
    )]
    pub keepalive_timeout: Duration,

    /// Records one SubmitRecords stream may carry.
    #[arg(long, env = "MAX_STREAM_RECORDS", default_value_t = 1_000_000)]
    pub max_stream_records: u64,

    /// Most records per transaction: a SubmitRecords batch (stored in two
    /// transactions at once, split by clinic), an import's batch, or
    /// concurrent SubmitRecord calls committed together.
    #[arg(long, env = "INGEST_BATCH_SIZE", default_value_t = 2048)]
    pub ingest_batch_size: usize,
}

impl Default for ServeOptions {
    /// The flags' defaults, whatever the environment says.
    fn default() -> Self {
        use clap::{Args, FromArgMatches};
        let command = Self::augment_args(clap::Command::new("defaults"))
            .mut_args(|arg| arg.env(None::<&str>));
        let matches = command
            .try_get_matches_from(["defaults"])
            .expect("every flag has a default");
        Self::from_arg_matches(&matches).expect("the defaults parse")
    }
}

/// The sockets the server answers on.
#[derive(Debug)]
pub struct Listeners {
    /// Every service.
    pub grpc: TcpListener,
    /// TLS on `grpc` (mutual when it names a client CA); plaintext when `None`.
    pub tls: Option<TlsPem>,
    /// Only `grpc.health.v1`, in plaintext, for orchestrators' probes
    /// (Kubernetes' gRPC probes cannot speak TLS).
    pub health: Option<TcpListener>,
    /// The auditors' web console.
    pub console: Option<ConsoleListener>,
}

/// The web console's socket and how it serves.
#[derive(Debug)]
pub struct ConsoleListener {
    /// The socket.
    pub listener: TcpListener,
    /// TLS (the gRPC listener's material); plain HTTP when `None`, which
    /// the configuration allows on loopback only.
    pub tls: Option<TlsPem>,
    /// How long a session may go unused.
    pub session_idle: Duration,
}

impl Listeners {
    /// Every service on `grpc` in plaintext, and no separate health listener.
    pub fn grpc(grpc: TcpListener) -> Self {
        Self {
            grpc,
            tls: None,
            health: None,
            console: None,
        }
    }
}

/// Why serving stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The TLS files do not make a TLS configuration.
    #[error("{0}")]
    Tls(#[from] TlsSetupError),
    /// Reflection could not read the descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// In-flight calls did not finish within the shutdown timeout.
    #[error("calls still running after the shutdown timeout")]
    DrainTimeout,
    /// The server task panicked.
    #[error("server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The health entry for liveness probes: SERVING while the process runs,
/// whatever the database does (restarting replicas would not bring it back).
pub const LIVENESS: &str = "liveness";

/// The service names health reports on, besides the overall "" entry.
const SERVICES: &[&str] = &[
    pb::ingest_service_server::SERVICE_NAME,
    pb::registry_service_server::SERVICE_NAME,
    pb::audit_service_server::SERVICE_NAME,
    pb::investigation_service_server::SERVICE_NAME,
    pb::admin_service_server::SERVICE_NAME,
];

/// Serves on `listeners` until `shutdown` resolves, then drains: health goes
/// NOT_SERVING, the listeners close after the grace period, and in-flight
/// calls get `shutdown_timeout` to finish.
pub async fn serve(
    listeners: Listeners,
    app: App,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(LIVENESS, ServingStatus::Serving)
        .await;
    let watcher = tokio::spawn(watch_database(
        app.store.clone(),
        health.clone(),
        options.health_interval,
    ));
    let (stop_sealing, sealing_stopped) = tokio::sync::watch::channel(false);
    let sealer = tokio::spawn(seal::run(
        app.store.clone(),
        app.sealing.signer.clone(),
        app.sealing.sinks.clone(),
        app.sealing.interval,
        sealing_stopped,
    ));
    if let Err(e) = app.auth.refresh().await {
        tracing::warn!(error = %e, "cannot read the API keys yet; calls are refused until they are");
    }
    let keys = tokio::spawn(app.auth.clone().keep_fresh());
    let (reflection_v1, reflection_v1alpha) = reflection()?;
    let (feed, feed_handle) = FlagFeed::start(app.store.clone());
    let services = Services::new(&app, &options, feed.clone());
    let mutual_tls = listeners
        .tls
        .as_ref()
        .is_some_and(|t| t.client_ca.is_some());
    let tls = listeners.tls.as_ref().map(tls_config).transpose()?;
    let limits = ConnectionLimits {
        max_connections: options.max_connections,
        handshake_timeout: options.handshake_timeout,
    };
    // Pings find peers that went away without closing (a cable pulled, a
    // NAT entry dropped), whose calls would otherwise hold their slots.
    let builder = || {
        Server::builder()
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .http2_keepalive_interval(Some(options.keepalive_interval))
            .http2_keepalive_timeout(Some(options.keepalive_timeout))
    };

    let tenant_cap = TenantCap::new(options.max_calls_per_tenant, options.max_health_watches);
    let (stop_accepting, accepting_stopped) = tokio::sync::watch::channel(false);
    let health_only = listeners.health.map(|listener| {
        // Check needs no key there either; a Watch does, and takes a slot.
        let router = builder()
            .layer(AuthLayer::new(services.auth.clone(), false))
            .layer(tenant_cap.clone())
            .layer(MessageDeadline::new(options.request_message_timeout))
            .add_service(health_service.clone());
        let limits = ConnectionLimits {
            max_connections: HEALTH_MAX_CONNECTIONS,
            ..limits
        };
        let incoming = incoming(listener, None, limits, accepting_stopped.clone());
        tokio::spawn(
            router.serve_with_incoming_shutdown(incoming, stopped(accepting_stopped.clone())),
        )
    });
    let router = builder()
        .timeout(options.request_timeout)
        .layer(ObserveLayer)
        .layer(ConcurrencyCap::new(options.max_concurrent_calls))
        .layer(AuthLayer::new(services.auth, mutual_tls))
        .layer(tenant_cap)
        .layer(MessageDeadline::new(options.request_message_timeout))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(services.ingest)
        .add_service(services.registry)
        .add_service(services.audit)
        .add_service(services.investigation)
        .add_service(services.admin);
    let console = listeners.console.map(|console| {
        let auditing = Auditing::new(app.store.clone(), feed.clone());
        let kept = KeptViews::new(app.store.clone(), auditing.clone());
        let grouping = tokio::spawn(kept.clone().keep_fresh());
        let site = Console::new(
            auditing,
            Investigation::new(app.store.clone(), app.engine.config().non_resident_share),
            kept,
            app.auth.clone(),
            app.store.clone(),
            app.sealing.signer.clone(),
            console.tls.is_some(),
            console.session_idle,
        );
        let served = tokio::spawn(console::serve(
            console.listener,
            console.tls,
            site,
            stopped(accepting_stopped.clone()),
        ));
        (served, grouping)
    });
    let incoming = incoming(listeners.grpc, tls, limits, accepting_stopped.clone());
    let mut server =
        tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped(accepting_stopped)));

    let result = tokio::select! {
        result = &mut server => result.map_err(ServeError::from).and_then(|r| Ok(r?)),
        () = shutdown => {
            let stop = || {
                let _ = stop_accepting.send(true);
                // Watch streams never end by themselves.
                feed_handle.close();
            };
            drain(&health, &options, stop, server).await
        }
    };
    watcher.abort();
    keys.abort();
    if let Some(health_only) = health_only {
        health_only.abort();
    }
    if let Some((console, grouping)) = console {
        // Its event streams ended with the feed; pages in flight had the grace.
        console.abort();
        grouping.abort();
    }
    // What the last calls wrote is sealed before the server goes.
    let _ = stop_sealing.send(true);
    if tokio::time::timeout(options.shutdown_timeout, sealer)
        .await
        .is_err()
    {
        tracing::warn!("the last seal did not finish in time; the next start seals it");
    }
    result
}

/// The services of ours this listener serves, as reflection lists them;
/// `FederationService` is served on the federation listener alone.
const SERVED: [&str; 5] = [
    pb::ingest_service_server::SERVICE_NAME,
    pb::registry_service_server::SERVICE_NAME,
    pb::audit_service_server::SERVICE_NAME,
    pb::investigation_service_server::SERVICE_NAME,
    pb::admin_service_server::SERVICE_NAME,
];

/// Our compiled descriptors without the services this listener does not
/// serve (their messages stay: a served file may import them).
fn served_descriptors() -> Result<prost_types::FileDescriptorSet, ServeError> {
    let mut set =
        <prost_types::FileDescriptorSet as prost::Message>::decode(pb::FILE_DESCRIPTOR_SET)
            .map_err(tonic_reflection::server::Error::from)?;
    for file in &mut set.file {
        let package = file.package().to_owned();
        file.service
            .retain(|s| SERVED.contains(&format!("{package}.{}", s.name()).as_str()));
    }
    Ok(set)
}

/// Server reflection, v1 and v1alpha, over the services this listener
/// serves and health's.
fn reflection() -> Result<
    (
        ServerReflectionServer<impl ServerReflection>,
        v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
    ),
    ServeError,
> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_file_descriptor_set(served_descriptors()?)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_file_descriptor_set(served_descriptors()?)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok((v1, v1alpha))
}

/// The five services, each refusing messages over [`MAX_MESSAGE_BYTES`],
/// and the authenticator in front of them.
struct Services {
    ingest: IngestServiceServer<IngestApi>,
    registry: RegistryServiceServer<RegistryApi>,
    audit: AuditServiceServer<AuditApi>,
    investigation: InvestigationServiceServer<InvestigationApi>,
    admin: AdminServiceServer<AdminApi>,
    auth: Arc<Authenticator>,
}

impl Services {
    fn new(app: &App, options: &ServeOptions, feed: FlagFeed) -> Self {
        let auth = app.auth.clone();
        Self {
            ingest: IngestServiceServer::new(IngestApi::new(app.ingestor.clone(), options))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            registry: RegistryServiceServer::new(RegistryApi::new(
                app.store.clone(),
                app.page_tokens.clone(),
            ))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
            audit: AuditServiceServer::new(AuditApi::new(
                Auditing::new(app.store.clone(), feed),
                app.page_tokens.clone(),
            ))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
            investigation: InvestigationServiceServer::new(
                InvestigationApi::new(
                    app.store.clone(),
                    app.page_tokens.clone(),
                    app.sealing.signer.clone(),
                )
                .with_share_rule(app.engine.config().non_resident_share),
            )
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
            admin: AdminServiceServer::new(AdminApi::new(
                app.store.clone(),
                app.engine.clone(),
                auth.clone(),
                app.sealing.trusted(),
                app.page_tokens.clone(),
            ))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
            auth,
        }
    }
}

/// Resolves once `stop` says so.
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Shuts down: health NOT_SERVING for the grace period, then `stop` (the
/// listeners close, watchers are told to end), then in-flight calls get
/// the shutdown timeout to finish.
async fn drain(
    health: &HealthReporter,
    options: &ServeOptions,
    stop: impl FnOnce(),
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) -> Result<(), ServeError> {
    tracing::info!("shutting down: health NOT_SERVING, draining calls");
    set_all(health, ServingStatus::NotServing).await;
    tokio::time::sleep(options.shutdown_grace).await;
    stop();
    match tokio::time::timeout(options.shutdown_timeout, server).await {
        Ok(result) => result.map_err(ServeError::from).and_then(|r| Ok(r?)),
        Err(_) => Err(ServeError::DrainTimeout),
    }
}

async fn set_all(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for service in SERVICES {
        health.set_service_status(*service, status).await;
    }
}

/// Keeps health SERVING exactly while the database answers: checks every
/// `interval`, and at once when a call suspects the database is gone.
async fn watch_database(store: Store, health: HealthReporter, interval: Duration) {
    let mut last = None;
    let mut probe = None;
    loop {
        if probe.is_none() {
            probe = tokio::time::timeout(PING_TIMEOUT, store.probe())
                .await
                .ok()
                .and_then(Result::ok);
        }
        let up = match probe.as_mut() {
            Some(p) => p.ping(PING_TIMEOUT).await,
            None => false,
        };
        if !up {
            probe = None;
        }
        store.set_reachable(up);
        metrics::database_up(up);
        let (open, idle, max) = store.pool_shape();
        metrics::pool_state(open, idle, max);
        let status = if up {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            match status {
                ServingStatus::Serving => tracing::info!("database reachable: health SERVING"),
                _ => tracing::warn!("database unreachable: health NOT_SERVING"),
            }
            set_all(&health, status).await;
            last = Some(status);
        }
        // While it is down, look often: calls are refused until it is back.
        let next = if up { interval } else { DOWN_INTERVAL };
        tokio::time::sleep(MIN_CHECK_GAP).await;
        tokio::select! {
            () = tokio::time::sleep(next.saturating_sub(MIN_CHECK_GAP)) => {}
            () = store.suspected() => {}
        }
    }
}

/// Resolves at the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; SIGINT only");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_of_ours_but_federation_is_served_here() {
        let set =
            <prost_types::FileDescriptorSet as prost::Message>::decode(pb::FILE_DESCRIPTOR_SET)
                .expect("compiled in");
        let all: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| {
                f.service
                    .iter()
                    .map(move |s| format!("{}.{}", f.package(), s.name()))
            })
            .collect();
        let mut expected: Vec<&str> = all
            .iter()
            .map(String::as_str)
            .filter(|s| *s != pb::federation_service_server::SERVICE_NAME)
            .collect();
        expected.sort_unstable();
        let mut served = SERVED.to_vec();
        served.sort_unstable();
        // A service added to the protos is either served here or named
        // here as not served; reflection must not guess.
        assert_eq!(served, expected);
    }
}
