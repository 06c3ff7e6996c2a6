//! The gRPC adapters: one per service (ingest, registry, audit,
//! investigation, admin), each
//! converting between the wire and the domain and calling the layer below;
//! the one error map ([`status`]); and the tower layers every call passes
//! (authentication, the caps on calls in flight, the tenants' quotas,
//! tracing and metrics).

pub mod activity;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod call_cap;
mod cases;
pub mod client_cert;
pub mod federation;
#[cfg(test)]
mod hostile_input;
pub mod ingest;
pub mod investigation;
pub mod message_deadline;
pub mod methods;
pub mod observe;
pub mod page_token;
pub mod quota;
pub mod registry;
pub mod status;

/// Who acts in a call, as the trails record it: the caller's principal and
/// key, the trace id the caller sent, and the service's own id of the call.
#[derive(Debug, Clone)]
pub(crate) struct Acting {
    caller: crate::domain::Caller,
    trace_id: Option<String>,
    own_id: Option<String>,
}

impl Acting {
    /// The actor of `request`, or UNAUTHENTICATED when no layer admitted it.
    pub(crate) fn of<T>(request: &tonic::Request<T>) -> Result<Self, status::ApiError> {
        Ok(Self {
            caller: auth::caller(request)?.clone(),
            trace_id: callers_trace_id(request),
            own_id: request
                .extensions()
                .get::<observe::CallId>()
                .map(|c| c.0.clone()),
        })
    }

    /// The caller.
    #[allow(
        dead_code,
        reason = "the adapters log through the application layer now"
    )]
    pub(crate) fn caller(&self) -> &crate::domain::Caller {
        &self.caller
    }

    /// Who reads, owned, for a stream that outlives the request.
    pub(crate) fn reader(&self) -> crate::export::Reader {
        crate::export::Reader {
            key_id: self.caller.key_id.clone(),
            principal: self.caller.principal.clone(),
            trace_id: self.trace_id.clone(),
            own_trace_id: self.own_id.clone(),
        }
    }

    /// As the store takes it.
    pub(crate) fn actor(&self) -> crate::store::flags::Actor<'_> {
        crate::store::flags::Actor {
            key_id: &self.caller.key_id,
            principal: &self.caller.principal,
            issued_by: self.caller.issued_by.as_deref(),
            trace_id: self.trace_id.as_deref(),
            own_trace_id: self.own_id.as_deref(),
        }
    }
}

/// The trace id of the caller's valid `traceparent`, if it sent one.
fn callers_trace_id<T>(req: &tonic::Request<T>) -> Option<String> {
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
