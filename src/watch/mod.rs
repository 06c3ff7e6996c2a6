//! `WatchFlags`: the live feed of raised flags, as any replica's watchers
//! see it. The order of the feed and reading it from a cursor are SQL
//! ([`crate::store::feed`]); here are the wake-ups that tell watchers to
//! read ([`wake`]) and the watcher itself ([`watch`]), which yields domain
//! flags for an adapter (gRPC, the console) to send on.

pub mod wake;

use std::pin::Pin;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use crate::domain::{FlagFilter, FlagView};
use crate::store::feed::FeedCursor;
use crate::store::{Store, StoreError};
use crate::telemetry::metrics;

use wake::Wake;
pub use wake::{FeedHandle, FlagFeed};

/// Flags read from the database at a time.
const BATCH: i64 = 100;

/// Flags buffered ahead of a slow watcher; past it the reader waits.
const BUFFER: usize = 64;

/// Why a watch ended before its watcher left.
#[derive(Debug, thiserror::Error)]
pub enum WatchEnd {
    /// The server is shutting down; the watcher resumes from its last cursor elsewhere.
    #[error("the server is shutting down")]
    Closing,
    /// Reading the feed failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a watcher receives: each flag with the cursor to resume after it.
pub type Watched = Pin<Box<dyn Stream<Item = Result<(FeedCursor, FlagView), WatchEnd>> + Send>>;

/// Streams the flags `filter` lets through from after `cursor`, until the
/// watcher goes away or the server shuts down.
pub fn watch(store: Store, feed: &FlagFeed, filter: FlagFilter, cursor: FeedCursor) -> Watched {
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
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let more = flags.len() as i64 == BATCH;
                for (position, flag) in flags {
                    if tx.send(Ok((position, flag))).await.is_err() {
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
                    let _ = tx.send(Err(WatchEnd::Closing)).await;
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
