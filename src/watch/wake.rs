//! Wakes watchers when flags are raised on any replica.
//!
//! One connection per server LISTENs for the database's notifications and
//! wakes every watcher; each watcher then reads the feed from its own cursor
//! (see [`crate::store::feed`]). Notifications only shorten the wait: a
//! watcher also rereads every [`POLL_INTERVAL`], so a notification lost to a
//! dropped connection, or a flag held back behind an older transaction, is
//! delivered late but never lost.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::Store;

/// The longest a watcher goes without rereading the feed.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// How long the listener first waits before reconnecting after a failure;
/// the wait doubles up to [`MAX_RECONNECT_DELAY`] while failures last.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// The longest wait between reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// The server's source of wake-ups for flag watchers.
#[derive(Clone, Debug)]
pub struct FlagFeed {
    raised: watch::Receiver<u64>,
    closing: watch::Receiver<bool>,
}

/// Stops the feed when closed or dropped: the listener ends and every
/// watcher is told to finish.
#[derive(Debug)]
pub struct FeedHandle {
    close: watch::Sender<bool>,
    listener: JoinHandle<()>,
}

impl FeedHandle {
    /// Ends the listener and tells watchers to finish.
    pub fn close(&self) {
        self.listener.abort();
        let _ = self.close.send(true);
    }
}

impl Drop for FeedHandle {
    fn drop(&mut self) {
        self.close();
    }
}

impl FlagFeed {
    /// Starts listening on `store`'s database.
    pub fn start(store: Store) -> (Self, FeedHandle) {
        let (raised_tx, raised) = watch::channel(0u64);
        let (close, closing) = watch::channel(false);
        let listener = tokio::spawn(listen(store, raised_tx));
        (Self { raised, closing }, FeedHandle { close, listener })
    }

    /// A watcher's view of the wake-ups.
    pub fn subscribe(&self) -> Subscription {
        let mut raised = self.raised.clone();
        raised.mark_unchanged();
        Subscription {
            raised,
            closing: self.closing.clone(),
        }
    }
}

/// One watcher's wake-ups.
#[derive(Debug)]
pub struct Subscription {
    raised: watch::Receiver<u64>,
    closing: watch::Receiver<bool>,
}

/// Why a watcher woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Flags may have been raised: read the feed.
    Read,
    /// The server is shutting down.
    Closing,
}

impl Subscription {
    /// Waits for a notification or the poll interval, whichever comes first.
    pub async fn next(&mut self) -> Wake {
        if *self.closing.borrow() {
            return Wake::Closing;
        }
        tokio::select! {
            _ = self.closing.changed() => Wake::Closing,
            changed = self.raised.changed() => match changed {
                Ok(()) => Wake::Read,
                // The listener is gone: only polling is left.
                Err(_) => {
                    tokio::time::sleep(POLL_INTERVAL).await;
                    Wake::Read
                }
            },
            () = tokio::time::sleep(POLL_INTERVAL) => Wake::Read,
        }
    }
}

/// Keeps one LISTEN connection, reconnecting after failures.
async fn listen(store: Store, raised: watch::Sender<u64>) {
    let mut delay = RECONNECT_DELAY;
    loop {
        match store.listen_for_flags().await {
            Ok(mut listener) => {
                tracing::debug!("listening for raised flags");
                delay = RECONNECT_DELAY;
                loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => raised.send_modify(|n| *n = n.wrapping_add(1)),
                        Ok(None) => {
                            // The connection dropped and notifications may
                            // have been missed: wake everyone to reread.
                            raised.send_modify(|n| *n = n.wrapping_add(1));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "flag notifications lost; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for raised flags; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
    }
}
