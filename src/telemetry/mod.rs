//! Logs, traces and metrics.
//!
//! Logs go to stderr, human-readable or JSON, level from `RUST_LOG`. Every
//! span is also an OpenTelemetry span, so a call has a trace id even when
//! nothing exports it (logs and the audit trail carry it); spans are exported
//! over OTLP/gRPC when the standard `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` is
//! set, over TLS for an `https://` endpoint. Metrics are in [`metrics`].

pub mod metrics;
pub mod propagation;
pub mod throttle;

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithTonicConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// The service name traces carry unless `OTEL_SERVICE_NAME` says otherwise.
const SERVICE_NAME: &str = "transplant-audit";

/// How long shutdown waits for the last spans to reach the collector.
const EXPORT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A global subscriber was already installed.
    #[error("installing the logger: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
    /// The OTLP exporter could not be built from the `OTEL_*` settings.
    #[error("building the OTLP trace exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// A certificate or key file for the OTLP connection could not be read.
    #[error("OTLP TLS file {path}: {source}")]
    TlsFile {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
}

/// The installed telemetry; [`Telemetry::shutdown`] flushes the last spans.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Installs the global subscriber and the W3C trace-context propagator.
    /// Call once, inside the Tokio runtime (the OTLP exporter needs it).
    pub fn init(format: LogFormat) -> Result<Self, TelemetryError> {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = tracer_provider()?;
        let tracer = provider.tracer(SERVICE_NAME);
        // Spans are traced whatever RUST_LOG says: the log level must not
        // decide what operators see in traces.
        // Spans are entered on every poll of a call's future. Activating the
        // OpenTelemetry context and timing busy and idle time at each entry
        // cost about a twentieth of a listing's CPU, and nothing reads them:
        // trace ids come from the span itself (`propagation`), and threads
        // say nothing of an async call.
        let traces = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_context_activation(false)
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(Targets::new().with_target(env!("CARGO_CRATE_NAME"), LevelFilter::INFO));
        let registry = tracing_subscriber::registry().with(traces);
        // sqlx reports Postgres notices ("already exists, skipping") at INFO.
        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn"));
        // Logs go to stderr, so that a command's report on stdout stays clean.
        let logs: Box<dyn Layer<_> + Send + Sync> = match format {
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour codes only where a person reads them, not in files or collectors.
                .with_ansi(std::io::stderr().is_terminal())
                .with_filter(filter)
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .with_filter(filter)
                .boxed(),
        };
        registry.with(logs).try_init()?;
        Ok(Self { provider })
    }

    /// Exports the spans still buffered; call after the server has stopped.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(EXPORT_SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "the last spans may not have been exported");
        }
    }
}

/// A provider that samples as `OTEL_TRACES_SAMPLER` says and exports over
/// OTLP/gRPC only when an endpoint is configured.
fn tracer_provider() -> Result<SdkTracerProvider, TelemetryError> {
    let resource = Resource::builder()
        .with_service_name(
            std::env::var("OTEL_SERVICE_NAME")
                .ok()
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| SERVICE_NAME.to_owned()),
        )
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if export_configured() {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if let Some(tls) = export_tls()? {
            exporter = exporter.with_tls_config(tls);
        }
        builder = builder.with_batch_exporter(exporter.build()?);
    }
    Ok(builder.build())
}

/// The first of the standard variables that is set: the traces-specific
/// one, then the general one.
fn otlp_setting(name: &str) -> Option<String> {
    [
        format!("OTEL_EXPORTER_OTLP_TRACES_{name}"),
        format!("OTEL_EXPORTER_OTLP_{name}"),
    ]
    .iter()
    .find_map(|var| std::env::var(var).ok().filter(|v| !v.trim().is_empty()))
}

/// TLS towards an `https://` collector: the CA of `OTEL_EXPORTER_OTLP_CERTIFICATE`
/// when set, the system's roots otherwise, and the client certificate of
/// `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and `_CLIENT_KEY` for mutual TLS.
fn export_tls() -> Result<Option<ClientTlsConfig>, TelemetryError> {
    let https = otlp_setting("ENDPOINT").is_some_and(|e| e.trim().starts_with("https://"));
    if !https {
        return Ok(None);
    }
    let read = |path: String| {
        std::fs::read(&path).map_err(|source| TelemetryError::TlsFile { path, source })
    };
    let mut tls = ClientTlsConfig::new();
    tls = match otlp_setting("CERTIFICATE") {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (
        otlp_setting("CLIENT_CERTIFICATE"),
        otlp_setting("CLIENT_KEY"),
    ) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

/// Whether the standard variables ask for span export.
fn export_configured() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}
