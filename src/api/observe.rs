//! The outermost layer: one span per call (continuing the caller's W3C trace)
//! and the call's latency by service, method and status code. A call ends
//! when its response body does, so a stream is measured to its last message,
//! and a call the client abandons counts as CANCELLED.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tonic::{Code, Status};
use tracing::Instrument;

use super::methods;
use crate::telemetry::{metrics, propagation};

/// The label for a path that names no method this server has.
const OTHER: &str = "_OTHER";

/// The layer that traces and measures every call.
#[derive(Clone, Copy, Debug, Default)]
pub struct ObserveLayer;

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner }
    }
}

/// The service [`ObserveLayer`] wraps.
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (service, method) =
            methods::method(request.uri().path()).map_or((OTHER, OTHER), |m| (m.service, m.name));
        let call_id = CallId::new();
        let span = call_span(service, method, request.headers(), &call_id);
        request.extensions_mut().insert(call_id);
        let mut call = Call {
            service,
            method,
            started: Instant::now(),
            span: span.clone(),
            finished: false,
        };
        Box::pin(
            async move {
                match inner.call(request).await {
                    Ok(response) => {
                        // A trailers-only answer (most errors) carries its status here.
                        let code = response
                            .headers()
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<i32>().ok());
                        if let Some(code) = code.filter(|&c| c != Code::Ok as i32) {
                            call.finish(code);
                        }
                        Ok(response.map(|body| tonic::body::Body::new(Observed { body, call })))
                    }
                    Err(e) => {
                        call.finish(Code::Unknown as i32);
                        Err(e)
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// The span of one call; health checks, polled every few seconds by
/// orchestrators, are measured but not traced.
fn call_span(
    service: &str,
    method: &str,
    headers: &http::HeaderMap,
    call_id: &CallId,
) -> tracing::Span {
    if service == tonic_health::pb::health_server::SERVICE_NAME {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "rpc",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        call_id = %call_id.0,
    );
    propagation::continue_trace(&span, headers);
    if let Some(trace_id) = propagation::trace_id(&span) {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}

/// The service's own id of a call: random, so unlike the caller's trace id
/// nobody outside can choose it. Logs carry it, and so do the trails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallId(pub String);

impl CallId {
    fn new() -> Self {
        let mut bytes = [0u8; 16];
        // Without randomness the id is all zeros: still recorded, never guessed wrong.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
        Self(hex::encode(bytes))
    }
}

/// One call in flight, recorded once when it ends.
struct Call {
    service: &'static str,
    method: &'static str,
    started: Instant,
    span: tracing::Span,
    finished: bool,
}

impl Call {
    fn finish(&mut self, code: i32) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let elapsed: Duration = self.started.elapsed();
        metrics::rpc_finished(self.service, self.method, code, elapsed);
        self.span.record("rpc.grpc.status_code", code);
        if is_server_error(code) {
            self.span.record("otel.status_code", "ERROR");
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // The body went away before its end: the client cancelled.
        self.finish(Code::Cancelled as i32);
    }
}

/// The codes OpenTelemetry marks as a server span's error.
fn is_server_error(code: i32) -> bool {
    matches!(
        Code::from_i32(code),
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// A response body that ends its call when it ends.
struct Observed {
    body: tonic::body::Body,
    call: Call,
}

impl http_body::Body for Observed {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        // A streaming handler runs while its body is polled: inside the call's span.
        let span = this.call.span.clone();
        let _entered = span.enter();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame
                    .trailers_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                {
                    this.call.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => this.call.finish(status.code() as i32),
            Poll::Ready(None) => this.call.finish(Code::Ok as i32),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
