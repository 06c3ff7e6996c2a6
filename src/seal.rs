//! The sealer: every interval, the rows written since the last block are
//! sealed into a new block, its digest is signed with the registry's key
//! and written to the sinks outside the database (an append-only file for a
//! write-once volume, standard output for a log collector, an HTTP
//! endpoint). One replica seals at a time; the others stand by.
//!
//! Sealing takes no lock that ingest waits on: rows take their place in the
//! ledger's sequence as they are written, and a block closes a range of it
//! once every transaction that may still write into the range has ended.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::domain::ledger::{Digest, SigningKey};
use crate::store::Store;
use crate::store::ledger::{SealError, SealerLock};
use crate::telemetry::metrics;

/// Where digests go besides the database.
#[derive(Debug, Clone, Default)]
pub struct Sinks {
    /// A file digests are appended to, a JSON object per line.
    pub file: Option<PathBuf>,
    /// Standard output, a JSON object per line.
    pub stdout: bool,
    /// An endpoint each digest is POSTed to as JSON.
    pub url: Option<String>,
}

impl Sinks {
    /// Whether any sink is configured.
    pub fn any(&self) -> bool {
        self.file.is_some() || self.stdout || self.url.is_some()
    }

    /// Writes `digest` to every sink; a sink that fails is logged and the
    /// others still get it (the block is in the database either way, and
    /// the next digest covers it).
    pub async fn write(&self, digest: &Digest, client: &reqwest::Client) {
        let line = match serde_json::to_string(digest) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "a digest could not be written as JSON");
                return;
            }
        };
        if let Some(path) = &self.file {
            if let Err(e) = append(path, &line).await {
                tracing::error!(path = %path.display(), error = %e, "digest not written to its file");
                metrics::digest_sink_failed("file");
            }
        }
        if self.stdout {
            println!("{line}");
        }
        if let Some(url) = &self.url {
            let sent = client
                .post(url)
                .header("content-type", "application/json")
                .body(line.clone())
                .send()
                .await
                .and_then(reqwest::Response::error_for_status);
            if let Err(e) = sent {
                tracing::error!(%url, error = %e, "digest not delivered to its endpoint");
                metrics::digest_sink_failed("http");
            }
        }
    }
}

/// Appends a line and makes it durable before the next digest.
async fn append(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    file.write_all(format!("{line}\n").as_bytes()).await?;
    file.sync_data().await
}

/// Seals every `interval` until `stop` says so, then once more.
pub async fn run(
    store: Store,
    signer: SigningKey,
    sinks: Sinks,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let mut lock: Option<SealerLock> = None;
    loop {
        if let Some(held) = &mut lock {
            if !held.held().await {
                tracing::warn!("the sealer's lock was lost with its connection; taking it again");
                lock = None;
            }
        }
        if lock.is_none() {
            lock = match store.sealer_lock().await {
                Ok(held) => held,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take the sealer's lock; retrying");
                    None
                }
            };
        }
        if lock.is_some() {
            seal_once(&store, &signer, &sinks, &client).await;
        }
        let stopping = tokio::select! {
            () = tokio::time::sleep(interval) => false,
            stopped = stop.wait_for(|stop| *stop) => {
                drop(stopped);
                true
            }
        };
        if stopping {
            if let Some(lock) = lock {
                seal_once(&store, &signer, &sinks, &client).await;
                lock.release().await;
            }
            return;
        }
    }
}

/// One round: blocks while a full one was sealed (a history written at
/// once takes several), each digest to the sinks.
pub async fn seal_once(
    store: &Store,
    signer: &SigningKey,
    sinks: &Sinks,
    client: &reqwest::Client,
) {
    loop {
        if !seal_block(store, signer, sinks, client).await {
            return;
        }
    }
}

/// A block if anything is new; whether it was full, so more may wait.
async fn seal_block(
    store: &Store,
    signer: &SigningKey,
    sinks: &Sinks,
    client: &reqwest::Client,
) -> bool {
    match store.seal(signer).await {
        Ok(Some(sealed)) => {
            let digest = &sealed.digest;
            tracing::debug!(
                block = digest.block,
                last_seq = digest.last_seq,
                "block sealed"
            );
            metrics::block_sealed(digest.last_seq);
            metrics::seal_round();
            sinks.write(digest, client).await;
            return sealed.full;
        }
        Ok(None) => metrics::seal_round(),
        Err(SealError::Blocked { pid, since }) => {
            tracing::warn!(pid, %since, "sealing waits for a transaction held open");
            metrics::seal_blocked();
        }
        Err(SealError::Store(e)) => tracing::warn!(error = %e, "sealing failed; retrying"),
    }
    false
}
