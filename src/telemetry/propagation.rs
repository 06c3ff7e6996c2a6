//! W3C trace context across gRPC: read from incoming metadata, and the trace
//! id of a span for logs and the audit trail.

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{TraceContextExt, TraceId};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Reads propagation fields from HTTP/2 headers (gRPC metadata).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Makes `span` continue the caller's trace when `headers` carry a valid
/// `traceparent`; otherwise the span starts a trace of its own.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    if parent.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is installed (tests running
        // the server in-process): there is no trace to continue then.
        let _ = span.set_parent(parent);
    }
}

/// The trace id of `span`, when OpenTelemetry is tracing it.
pub fn trace_id(span: &tracing::Span) -> Option<TraceId> {
    let id = span.context().span().span_context().trace_id();
    (id != TraceId::INVALID).then_some(id)
}
