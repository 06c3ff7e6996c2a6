//! The gRPC adapters: one per service (ingest, registry, audit, admin), each
//! converting between the wire and the domain and calling the layer below;
//! the one error map ([`status`]); and the tower layers every call passes
//! (authentication, the caps on calls in flight, the tenants' quotas,
//! tracing and metrics).

pub mod admin;
pub mod audit;
pub mod auth;
pub mod call_cap;
pub mod client_cert;
#[cfg(test)]
mod hostile_input;
pub mod ingest;
pub mod message_deadline;
pub mod methods;
pub mod observe;
pub mod page_token;
pub mod quota;
pub mod registry;
pub mod status;

/// The trace id of a call: its span's, or, when nothing traces the server
/// (tests running it in-process), the caller's valid `traceparent`.
pub(crate) fn trace_id<T>(req: &tonic::Request<T>) -> Option<String> {
    if let Some(id) = crate::telemetry::propagation::trace_id(&tracing::Span::current()) {
        return Some(id.to_string());
    }
    let value = req.metadata().get("traceparent")?.to_str().ok()?;
    let mut parts = value.split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    let valid = trace.len() == 32
        && trace
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && trace.bytes().any(|b| b != b'0');
    valid.then(|| trace.to_owned())
}
