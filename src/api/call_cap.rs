//! Overload protection: a cap on calls in flight across the server. A call
//! over the cap is refused at once with RESOURCE_EXHAUSTED rather than queued,
//! so a flood cannot grow memory or latency without bound. The health check
//! is exempt, so probes still see the truth under load.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tonic::Status;

use super::auth::{Access, access_for};
use super::status::ApiError;
use crate::throttled_warn;

/// The layer capping calls in flight.
#[derive(Clone, Debug)]
pub struct ConcurrencyCap {
    permits: Arc<Semaphore>,
}

impl ConcurrencyCap {
    /// At most `max` calls in flight; a streaming call counts until its response ends.
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
        }
    }
}

impl<S> tower::Layer<S> for ConcurrencyCap {
    type Service = Capped<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Capped {
            inner,
            permits: self.permits.clone(),
        }
    }
}

/// The service [`ConcurrencyCap`] wraps.
#[derive(Clone, Debug)]
pub struct Capped<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S, B> tower::Service<http::Request<B>> for Capped<S>
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

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let permit = if access_for(request.uri().path()) == Access::Open {
            None
        } else {
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    throttled_warn!(method = request.uri().path(), "overloaded: call refused");
                    let refused = Status::from(ApiError::TooManyCalls);
                    return Box::pin(async move { Ok(refused.into_http()) });
                }
            }
        };
        Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(match permit {
                Some(permit) => holding(response, permit),
                None => response,
            })
        })
    }
}

/// `response` with `permit` held until its body is done, so a stream
/// counts until it ends.
pub(crate) fn holding<P: Send + Unpin + 'static>(
    response: http::Response<tonic::body::Body>,
    permit: P,
) -> http::Response<tonic::body::Body> {
    response.map(|body| {
        tonic::body::Body::new(Holding {
            body,
            permit: Some(permit),
        })
    })
}

/// A response body that keeps its call's permits until it is done.
struct Holding<P> {
    body: tonic::body::Body,
    /// Released as the last frame is handed over, before it reaches the
    /// client: released only when the transport dropped the body, it could
    /// still be held when the client, told the call had ended, sent its next
    /// one, which a caller keeping to its quota would then see refused.
    permit: Option<P>,
}

impl<P: Send + Unpin + 'static> http_body::Body for Holding<P> {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        let ended = match &frame {
            Poll::Ready(None | Some(Err(_))) => true,
            Poll::Ready(Some(Ok(frame))) => frame.is_trailers() || self.body.is_end_stream(),
            Poll::Pending => false,
        };
        if ended {
            self.permit = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};

    /// A unary response's body: its message, then the trailers with the status.
    fn unary_body() -> tonic::body::Body {
        let frames: Vec<Result<Frame<Bytes>, Status>> = vec![
            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x01x"))),
            Ok(Frame::trailers(http::HeaderMap::from_iter([(
                http::header::HeaderName::from_static("grpc-status"),
                http::HeaderValue::from_static("0"),
            )]))),
        ];
        tonic::body::Body::new(StreamBody::new(futures::stream::iter(frames)))
    }

    #[tokio::test]
    async fn the_permit_is_back_once_the_last_frame_is_handed_over_not_when_the_body_is_dropped() {
        let slots = Arc::new(Semaphore::new(1));
        let permit = slots.clone().try_acquire_owned().unwrap();
        let response = holding(http::Response::new(unary_body()), permit);
        let mut body = response.into_body();
        assert!(body.frame().await.unwrap().unwrap().is_data());
        assert_eq!(
            slots.available_permits(),
            0,
            "held while the message is sent"
        );
        assert!(body.frame().await.unwrap().unwrap().is_trailers());
        // The transport still holds the body while it writes the trailers;
        // the client may have them, and call again, before it drops it.
        assert_eq!(slots.available_permits(), 1);
        drop(body);
        assert_eq!(slots.available_permits(), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_gives_the_permit_back() {
        let slots = Arc::new(Semaphore::new(1));
        let permit = slots.clone().try_acquire_owned().unwrap();
        let mut body = holding(http::Response::new(unary_body()), permit).into_body();
        assert!(body.frame().await.unwrap().unwrap().is_data());
        drop(body);
        assert_eq!(slots.available_permits(), 1);
    }
}
