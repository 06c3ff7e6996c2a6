//! A request message that does not come. A call whose client sends one
//! message (every method but `SubmitRecords` and reflection) must have sent
//! all of it within the deadline, or it is refused DEADLINE_EXCEEDED
//! (`REQUEST_MESSAGE_TIMEOUT`) and its permits go back at once, rather than
//! at the end of the call's deadline. `SubmitRecords` has its own idle
//! timeout between messages, in the ingest pipeline.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Sleep;
use tonic::Status;
use tonic::body::Body;

use super::methods;
use super::status::ApiError;

/// The layer putting a deadline on request messages.
#[derive(Clone, Copy, Debug)]
pub struct MessageDeadline {
    timeout: Duration,
}

impl MessageDeadline {
    /// Request messages must arrive within `timeout` of the call.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> tower::Layer<S> for MessageDeadline {
    type Service = MessageDeadlined<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageDeadlined {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service [`MessageDeadline`] wraps.
#[derive(Clone, Debug)]
pub struct MessageDeadlined<S> {
    inner: S,
    timeout: Duration,
}

impl<S> tower::Service<http::Request<Body>> for MessageDeadlined<S>
where
    S: tower::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let streams = methods::method(request.uri().path()).is_some_and(|m| m.client_streaming);
        if streams {
            return self.inner.call(request);
        }
        let timeout = self.timeout;
        self.inner
            .call(request.map(|body| Body::new(Deadlined::new(body, timeout))))
    }
}

/// A request body that fails once its deadline passes before its end.
struct Deadlined {
    body: Body,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    ended: bool,
}

impl Deadlined {
    fn new(body: Body, timeout: Duration) -> Self {
        Self {
            body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            ended: false,
        }
    }
}

impl http_body::Body for Deadlined {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if this.ended {
            return polled;
        }
        match polled {
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.ended = true;
                    Poll::Ready(Some(Err(ApiError::RequestMessageTimeout {
                        timeout: this.timeout,
                    }
                    .into())))
                }
                Poll::Pending => Poll::Pending,
            },
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            ready => {
                if this.body.is_end_stream() {
                    this.ended = true;
                }
                ready
            }
        }
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
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_message_that_does_not_come_fails_at_the_deadline() {
        let never = futures::stream::pending::<Result<http_body::Frame<Bytes>, Status>>();
        let body = Body::new(http_body_util::StreamBody::new(never));
        let mut body = Deadlined::new(body, Duration::from_millis(20));
        let status = body
            .frame()
            .await
            .expect("a frame")
            .expect_err("the deadline");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    }

    #[tokio::test]
    async fn a_message_that_came_in_time_is_read_whole() {
        let body = Body::new(http_body_util::Full::new(Bytes::from_static(b"message")));
        let mut body = Deadlined::new(body, Duration::from_millis(20));
        let data = body.frame().await.expect("a frame").expect("data");
        assert_eq!(data.into_data().ok(), Some(Bytes::from_static(b"message")));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            body.frame().await.is_none(),
            "ended, whatever the clock says"
        );
    }
}
