//! `WatchFlags` streams: each watcher reads the flag feed from its own cursor
//! and sleeps until the feed says flags may have been raised.

use std::pin::Pin;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::Instrument;

use crate::domain::FlagFilter;
use crate::feed::{FlagFeed, Wake};
use crate::store::Store;
use crate::store::feed::FeedCursor;
use crate::telemetry::metrics;

use super::status::ApiError;

use crate::wire::convert::flag_to_proto;
use crate::wire::pb;

/// Flags read from the database at a time.
const BATCH: i64 = 100;

/// Flags buffered ahead of a slow watcher; past it the reader waits.
const BUFFER: usize = 64;

/// The stream a watcher receives.
pub type FlagStream = Pin<Box<dyn Stream<Item = Result<pb::WatchFlagsResponse, Status>> + Send>>;

/// Streams the flags `filter` lets through from after `cursor`, until the
/// client goes away or the server shuts down.
pub fn watch(store: Store, feed: &FlagFeed, filter: FlagFilter, cursor: FeedCursor) -> FlagStream {
    let (tx, rx) = mpsc::channel(BUFFER);
    let subscription = feed.subscribe();
    tokio::spawn(
        async move {
            let _watching = Watching::start();
            let mut subscription = subscription;
            let mut cursor = cursor;
            loop {
                let flags = match store.flags_after(&filter, cursor, BATCH).await {
                    Ok(flags) => flags,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                let more = flags.len() as i64 == BATCH;
                for (position, flag) in flags {
                    let message = pb::WatchFlagsResponse {
                        flag: Some(flag_to_proto(&flag)),
                        cursor: position.to_string(),
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return; // the watcher went away
                    }
                    cursor = position;
                }
                if more {
                    continue;
                }
                let wake = tokio::select! {
                    () = tx.closed() => return,
                    wake = subscription.next() => wake,
                };
                if wake == Wake::Closing {
                    let _ = tx.send(Err(ApiError::ShuttingDown.into())).await;
                    return;
                }
            }
        }
        .instrument(tracing::Span::current()),
    );
    Box::pin(ReceiverStream::new(rx))
}

/// Counts an open watcher for as long as it lives.
struct Watching;

impl Watching {
    fn start() -> Self {
        metrics::watchers_changed(1.0);
        Watching
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        metrics::watchers_changed(-1.0);
    }
}
