//! The ledger's SQL: numbers in the database-wide sequence, the rows a block
//! seals, the blocks themselves, and adopting rows written before the
//! ledger existed. What each row's MAC covers is in [`content`]; checking
//! everything against blocks and digests is in [`verify`].

pub(crate) mod content;
pub mod verify;
pub mod view;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::ledger::{
    BlockHash, Digest, Entry, GENESIS_BLOCK, LedgerTable, SigningKey, block_hash, pack,
};

use super::{Store, StoreError};

/// A sealed block, as stored.
#[derive(Debug, Clone)]
pub struct Block {
    /// Its number, from 1.
    pub block: i64,
    /// The first sequence number it covers.
    pub first_seq: i64,
    /// The last sequence number it covers.
    pub last_seq: i64,
    /// Its packed entries.
    pub entries: Vec<u8>,
    /// The hash of the block before it.
    pub prev_hash: Vec<u8>,
    /// Its hash.
    pub hash: Vec<u8>,
    /// When it was sealed.
    pub sealed_at: DateTime<Utc>,
    /// The key that signed its digest.
    pub public_key: Vec<u8>,
    /// The digest's signature.
    pub signature: Vec<u8>,
}

/// What the sealer chains a new block to, and what a digest of the block
/// says: a block without its entries.
#[derive(Debug, Clone)]
pub struct BlockHead {
    /// Its number, from 1.
    pub block: i64,
    /// The last sequence number it covers.
    pub last_seq: i64,
    /// Its hash.
    pub hash: Vec<u8>,
    /// When it was sealed.
    pub sealed_at: DateTime<Utc>,
    /// The key that signed its digest.
    pub public_key: Vec<u8>,
    /// The digest's signature.
    pub signature: Vec<u8>,
}

/// A block just sealed.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// Its digest.
    pub digest: Digest,
    /// Whether it stopped at [`MAX_BLOCK_SEQS`] with newer rows left.
    pub full: bool,
}

/// The most sequence numbers one block covers. Ingest fills a few tens of
/// thousands between two rounds; an adopted or imported history of millions
/// of rows is sealed in blocks of this many, each a few megabytes, where one
/// block would hold tens of bytes per row (and a bytea at most 1 GB).
pub const MAX_BLOCK_SEQS: i64 = 100_000;

/// How long the sealer waits for older transactions before it gives up on
/// this round (a transaction held open blocks sealing, so it is reported).
const WAIT_FOR_WRITERS: Duration = Duration::from_secs(10);

/// Why a round of sealing sealed nothing.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// A transaction that may hold sequence numbers stayed open too long.
    #[error("backend {pid} has kept a transaction open since {since}; sealing waits for it")]
    Blocked {
        /// The backend's process id.
        pid: i32,
        /// When its transaction started.
        since: DateTime<Utc>,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for SealError {
    fn from(e: sqlx::Error) -> Self {
        SealError::Store(e.into())
    }
}

/// Takes `n` numbers of the ledger's sequence, ascending.
pub(crate) async fn allocate(conn: &mut PgConnection, n: usize) -> Result<Vec<i64>, StoreError> {
    let n = i32::try_from(n).map_err(|_| StoreError::Corrupt("too many rows at once".into()))?;
    let mut seqs: Vec<i64> = sqlx::query_scalar!(
        r#"SELECT nextval('ledger_seq') AS "seq!" FROM generate_series(1, $1)"#,
        n
    )
    .fetch_all(&mut *conn)
    .await?;
    seqs.sort_unstable();
    Ok(seqs)
}

impl Store {
    /// The newest block, if any.
    pub async fn last_block(&self) -> Result<Option<BlockHead>, StoreError> {
        // Without its entries: the sealer asks every interval, and the block
        // sealing a registry's adopted history holds tens of bytes per row.
        let block = sqlx::query_as!(
            BlockHead,
            "SELECT block, last_seq, hash, sealed_at, public_key, signature
             FROM ledger_blocks ORDER BY block DESC LIMIT 1"
        )
        .fetch_optional(&mut *self.acquire().await?)
        .await?;
        Ok(block)
    }

    /// Up to `limit` blocks after block `after`, in order.
    pub async fn blocks_after(&self, after: i64, limit: i64) -> Result<Vec<Block>, StoreError> {
        blocks_after(&mut *self.acquire().await?, after, limit).await
    }

    /// Seals the row states written up to now that no block covers yet,
    /// at most [`MAX_BLOCK_SEQS`] of them, into one block, signs its digest
    /// with `signer` and returns it; `None` when there was nothing new. Only
    /// one sealer may run at a time: callers hold [`Store::sealer_lock`].
    pub async fn seal(&self, signer: &SigningKey) -> Result<Option<Sealed>, SealError> {
        let last = self.last_block().await?;
        let (number, after, previous) = match &last {
            Some(b) => (
                b.block + 1,
                b.last_seq,
                b.hash.as_slice().try_into().unwrap_or(GENESIS_BLOCK),
            ),
            None => (1, 0, GENESIS_BLOCK),
        };
        let mut conn = self.acquire().await?;
        let (frontier, now) = sqlx::query!(
            r#"SELECT pg_sequence_last_value('ledger_seq') AS "frontier", clock_timestamp() AS "now!""#
        )
        .fetch_one(&mut *conn)
        .await
        .map(|r| (r.frontier.unwrap_or(0), r.now))?;
        if frontier <= after {
            return Ok(None);
        }
        wait_for_writers(&mut conn, now).await?;
        let full = frontier - after > MAX_BLOCK_SEQS;
        let frontier = frontier.min(after + MAX_BLOCK_SEQS);
        let entries = entries_between(&mut conn, after, frontier).await?;
        let packed = pack(&entries);
        let hash: BlockHash = block_hash(&previous, number, after + 1, frontier, &packed);
        let sealed_at = super::chain::now();
        let digest = Digest::sign(signer, number, frontier, &hash, sealed_at);
        let signature = hex::decode(&digest.signature).unwrap_or_default();
        let public = signer.public();
        sqlx::query!(
            "INSERT INTO ledger_blocks
                 (block, first_seq, last_seq, entries, prev_hash, hash, sealed_at, public_key, signature)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            number,
            after + 1,
            frontier,
            packed,
            &previous[..],
            &hash[..],
            sealed_at,
            public.as_bytes(),
            signature,
        )
        .execute(&mut *conn)
        .await?;
        Ok(Some(Sealed { digest, full }))
    }

    /// The right to seal, or `None` when another sealer holds it.
    pub async fn sealer_lock(&self) -> Result<Option<SealerLock>, StoreError> {
        let mut conn = self.acquire().await?;
        let held = sqlx::query_scalar!(
            r#"SELECT pg_try_advisory_lock(hashtext('transplant-audit/ledger/sealer')) AS "held!""#
        )
        .fetch_one(&mut *conn)
        .await?;
        // Out of the pool: a connection returned to it would hold the lock
        // for whoever borrows it next, and for as long as the pool lives.
        Ok(held.then(|| SealerLock(conn.detach())))
    }
}

/// The right to seal: a session advisory lock, held while its connection
/// lives and let go when it is dropped. When the connection dies the
/// database lets the lock go and another replica may take it, so the
/// holder asks before every round.
#[derive(Debug)]
pub struct SealerLock(sqlx::PgConnection);

impl SealerLock {
    /// Whether the lock is still held on a live connection.
    pub async fn held(&mut self) -> bool {
        sqlx::query_scalar!(
            r#"SELECT EXISTS (
                   SELECT 1 FROM pg_locks
                   WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
                     AND objid = hashtext('transplant-audit/ledger/sealer')::oid
               ) AS "held!""#
        )
        .fetch_one(&mut self.0)
        .await
        .unwrap_or(false)
    }

    /// Lets the lock go at once, for a standby to take.
    pub async fn release(self) {
        if let Err(e) = sqlx::Connection::close(self.0).await {
            tracing::debug!(error = %e, "the sealer's lock connection closed uncleanly");
        }
    }
}

/// The `application_name` of verify's read-only snapshot, which writes
/// nothing and so is not waited for by the sealer.
const VERIFY_APPLICATION: &str = "transplant-audit verify";

/// Waits until every other transaction of this database and role that
/// began before `since` has ended: those are the only ones that may still
/// write a row with a sequence number taken before `since`. (A transaction
/// that drew a number holds no xid until it writes, so read-only ones cannot
/// be told apart by theirs.)
async fn wait_for_writers(conn: &mut PgConnection, since: DateTime<Utc>) -> Result<(), SealError> {
    let started = Instant::now();
    loop {
        let oldest = sqlx::query!(
            r#"SELECT pid AS "pid!", xact_start AS "since!" FROM pg_stat_activity
               WHERE datname = current_database() AND usename = current_user
                 AND pid <> pg_backend_pid() AND xact_start < $1
                 AND application_name IS DISTINCT FROM $2
               ORDER BY xact_start LIMIT 1"#,
            since,
            VERIFY_APPLICATION,
        )
        .fetch_optional(&mut *conn)
        .await?;
        let Some(oldest) = oldest else {
            return Ok(());
        };
        if started.elapsed() > WAIT_FOR_WRITERS {
            return Err(SealError::Blocked {
                pid: oldest.pid,
                since: oldest.since,
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every row state with a sequence number in `(after, upto]`, in order.
async fn entries_between(
    conn: &mut PgConnection,
    after: i64,
    upto: i64,
) -> Result<Vec<Entry>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT t AS "t!", seq AS "seq!", prev, mac FROM (
               SELECT 1::smallint AS t, ledger_seq AS seq, ledger_prev AS prev, ledger_mac AS mac
               FROM records WHERE ledger_seq > $1 AND ledger_seq <= $2
               UNION ALL
               SELECT 2::smallint, ledger_seq, NULL, ledger_mac
               FROM record_versions WHERE ledger_seq > $1 AND ledger_seq <= $2
               UNION ALL
               SELECT 3::smallint, ledger_seq, ledger_prev, ledger_mac
               FROM flag_events WHERE ledger_seq > $1 AND ledger_seq <= $2
               UNION ALL
               SELECT 4::smallint, ledger_seq, NULL, ledger_mac
               FROM clinic_versions WHERE ledger_seq > $1 AND ledger_seq <= $2
               UNION ALL
               SELECT 5::smallint, ledger_seq, NULL, ledger_mac
               FROM principals WHERE ledger_seq > $1 AND ledger_seq <= $2
               UNION ALL
               SELECT 6::smallint, ledger_seq, ledger_prev, ledger_mac
               FROM api_keys WHERE ledger_seq > $1 AND ledger_seq <= $2
               UNION ALL
               SELECT 7::smallint, ledger_seq, ledger_prev, ledger_mac
               FROM imports WHERE ledger_seq > $1 AND ledger_seq <= $2
               UNION ALL
               SELECT 8::smallint, ledger_seq, NULL, ledger_mac
               FROM access_log WHERE ledger_seq > $1 AND ledger_seq <= $2
               UNION ALL
               SELECT 9::smallint, ledger_seq, ledger_prev, ledger_mac
               FROM federation_peers WHERE ledger_seq > $1 AND ledger_seq <= $2
               UNION ALL
               SELECT 10::smallint, ledger_seq, NULL, ledger_mac
               FROM federation_exchanges WHERE ledger_seq > $1 AND ledger_seq <= $2
               UNION ALL
               SELECT 11::smallint, ledger_seq, NULL, ledger_mac
               FROM federation_matches WHERE ledger_seq > $1 AND ledger_seq <= $2
               UNION ALL
               SELECT 20::smallint, ledger_seq, ledger_prev, ledger_mac
               FROM case_events WHERE ledger_seq > $1 AND ledger_seq <= $2
           ) e ORDER BY seq"#,
        after,
        upto,
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let table = u8::try_from(r.t)
                .ok()
                .and_then(LedgerTable::from_tag)
                .ok_or_else(|| StoreError::Corrupt(format!("ledger table tag {}", r.t)))?;
            Ok(Entry::new(
                r.seq,
                table,
                r.prev,
                r.mac.as_deref().unwrap_or_default(),
            ))
        })
        .collect()
}

impl Store {
    /// Gives the rows written before the ledger existed their MACs, and
    /// brings each flag's row to the fold of its steps, once: only while no
    /// block exists (after that, a row without a MAC is a break). Returns
    /// how many rows it adopted. Whatever the database holds at this moment
    /// is taken as it stands: run the previous release's `verify` first.
    pub async fn adopt(&self) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query!("SELECT pg_advisory_xact_lock(hashtext('transplant-audit/ledger/adopt'))")
            .execute(&mut *tx)
            .await?;
        let sealed = sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM ledger_blocks) AS "x!""#)
            .fetch_one(&mut *tx)
            .await?;
        if sealed {
            return Ok(0);
        }
        let mut adopted = adopt::records(&mut tx, &self.ledger).await?;
        adopted += adopt::record_versions(&mut tx, &self.ledger).await?;
        adopted += adopt::flag_steps(&mut tx, &self.ledger).await?;
        adopted += adopt::clinic_versions(&mut tx, &self.ledger).await?;
        adopted += adopt::principals(&mut tx, &self.ledger).await?;
        adopted += adopt::api_keys(&mut tx, &self.ledger).await?;
        adopted += adopt::imports(&mut tx, &self.ledger).await?;
        adopted += adopt::access_log(&mut tx, &self.ledger).await?;
        tx.commit().await?;
        if adopted > 0 {
            tracing::info!(rows = adopted, "rows written before the ledger adopted");
        }
        Ok(adopted)
    }
}

mod adopt;

/// Up to `limit` blocks after block `after`, in order, read on `conn`.
async fn blocks_after(
    conn: &mut PgConnection,
    after: i64,
    limit: i64,
) -> Result<Vec<Block>, StoreError> {
    Ok(sqlx::query_as!(
        Block,
        "SELECT block, first_seq, last_seq, entries, prev_hash, hash, sealed_at, public_key,
                signature
         FROM ledger_blocks WHERE block > $1 ORDER BY block LIMIT $2",
        after,
        limit,
    )
    .fetch_all(conn)
    .await?)
}
