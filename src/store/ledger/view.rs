//! What the sealed blocks say, as the running service needs it: which row
//! states a later sealed state followed. A row can be put back exactly as
//! it was (a revocation undone, an amendment rolled back, a flag's newest
//! step deleted and its row rewound); its MAC is genuine then, and only the
//! blocks remember that something came after it. Before the service builds
//! on a row state (authenticates a key, amends a record, adds a flag step)
//! it asks this view, so it never builds on a state the ledger says was
//! replaced.
//!
//! The view follows the blocks in order and checks that each chains to the
//! one before; while one does not, the service builds on nothing the view
//! guards and reports it (signatures are `verify`'s to check, against the
//! keys kept outside the database).

use roaring::RoaringTreemap;
use sqlx::PgConnection;
use tokio::sync::Mutex;

use crate::domain::ledger::{BlockHash, GENESIS_BLOCK, block_hash, unpack};

use super::super::StoreError;

/// Blocks read per query while catching up.
const BLOCKS_PER_READ: i64 = 8;

/// The successors the sealed blocks record, kept up to date on demand.
/// New blocks are read on the caller's connection: a caller in a
/// transaction holds locks that other callers wait for, each on a pooled
/// connection, and asking the pool for another one could wait for them.
#[derive(Debug, Default)]
pub struct LedgerView {
    state: Mutex<Followed>,
}

#[derive(Debug)]
struct Followed {
    /// The last block read.
    block: i64,
    /// Its hash, which the next block must chain to.
    hash: BlockHash,
    /// Sequence numbers of row states that a sealed state followed.
    seqs: RoaringTreemap,
}

impl Default for Followed {
    fn default() -> Self {
        Self {
            block: 0,
            hash: GENESIS_BLOCK,
            seqs: RoaringTreemap::new(),
        }
    }
}

impl LedgerView {
    /// Those of `seqs` that a sealed row state followed, after reading the
    /// blocks sealed since the last call.
    pub async fn followed(
        &self,
        conn: &mut PgConnection,
        seqs: &[i64],
    ) -> Result<Vec<i64>, StoreError> {
        let mut state = self.state.lock().await;
        state.catch_up(conn).await?;
        Ok(seqs
            .iter()
            .copied()
            .filter(|s| u64::try_from(*s).is_ok_and(|s| state.seqs.contains(s)))
            .collect())
    }

    /// Refuses to build on `seq` when a sealed row state followed it:
    /// `what` names the row in the error and the log.
    pub async fn check_current(
        &self,
        conn: &mut PgConnection,
        seq: i64,
        what: impl FnOnce() -> String,
    ) -> Result<(), StoreError> {
        if self.followed(conn, &[seq]).await?.is_empty() {
            Ok(())
        } else {
            {
                let what = what();
                tracing::error!(row = %what, seq, "a row was rewound to a state the ledger sealed a successor of");
                Err(StoreError::Tampered(format!(
                    "{what} was rewound: a sealed block holds a later state"
                )))
            }
        }
    }

    /// Reads every block sealed since the last call.
    pub async fn catch_up(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        self.state.lock().await.catch_up(conn).await
    }
}

impl Followed {
    async fn catch_up(&mut self, conn: &mut PgConnection) -> Result<(), StoreError> {
        loop {
            let blocks = sqlx::query!(
                "SELECT block, first_seq, last_seq, entries, prev_hash, hash
                 FROM ledger_blocks WHERE block > $1 ORDER BY block LIMIT $2",
                self.block,
                BLOCKS_PER_READ,
            )
            .fetch_all(&mut *conn)
            .await?;
            let read = blocks.len();
            for b in blocks {
                let hash = block_hash(&self.hash, b.block, b.first_seq, b.last_seq, &b.entries);
                let chained =
                    b.block == self.block + 1 && b.prev_hash == self.hash && b.hash == hash;
                let entries = match unpack(&b.entries) {
                    Ok(entries) if chained => entries,
                    _ => {
                        tracing::error!(
                            block = b.block,
                            "a ledger block does not chain to the one before; run verify"
                        );
                        return Err(StoreError::Tampered(format!(
                            "ledger block {} does not chain to the block before",
                            b.block
                        )));
                    }
                };
                self.seqs.extend(
                    entries
                        .iter()
                        .filter_map(|e| u64::try_from(e.prev).ok().filter(|p| *p > 0)),
                );
                self.block = b.block;
                self.hash = hash;
            }
            if read < BLOCKS_PER_READ as usize {
                return Ok(());
            }
        }
    }
}
