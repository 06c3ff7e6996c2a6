//! The live flag feed behind `WatchFlags`: flags in one order that every
//! replica agrees on, readable from any position without gaps.
//!
//! Flag ids are taken when a transaction inserts, not when it commits, so
//! "id greater than the last one seen" would skip a flag whose transaction
//! commits after a younger one. The feed orders by the transaction's id
//! (`feed_tx`, see the migration) and then the flag id, and shows a flag only
//! once every transaction older than its own has ended: nothing can then
//! appear behind a cursor.

use std::fmt;
use std::str::FromStr;

use sqlx::postgres::PgListener;
use sqlx::{Postgres, QueryBuilder};

use super::flags::{FLAG_COLUMNS, FlagRow, push_filter};
use super::{Store, StoreError};
use crate::domain::{FlagFilter, FlagView};

/// The channel the database notifies when a transaction that raised flags commits.
pub const FLAG_RAISED_CHANNEL: &str = "flag_raised";

/// A position in the feed: after flag `id` of transaction `tx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FeedCursor {
    /// The transaction (xid8) that raised the flag.
    pub tx: u64,
    /// The flag id.
    pub id: i64,
}

impl fmt::Display for FeedCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.tx, self.id)
    }
}

/// Text that is not a feed position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a feed cursor")]
pub struct BadCursor;

impl FromStr for FeedCursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tx, id) = s.split_once('.').ok_or(BadCursor)?;
        let cursor = FeedCursor {
            tx: tx.parse().map_err(|_| BadCursor)?,
            id: id.parse().map_err(|_| BadCursor)?,
        };
        if cursor.id < 0 {
            return Err(BadCursor);
        }
        Ok(cursor)
    }
}

#[derive(sqlx::FromRow)]
struct FeedRow {
    #[sqlx(flatten)]
    flag: FlagRow,
    feed_tx: String,
}

impl Store {
    /// Where a watcher starting now begins: at the oldest transaction still
    /// running, since everything it raises is yet to be seen.
    pub async fn feed_start(&self) -> Result<FeedCursor, StoreError> {
        let tx =
            sqlx::query_scalar!(r#"SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS "tx!""#)
                .fetch_one(&mut *self.acquire().await?)
                .await?;
        let tx = tx
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("transaction id {tx:?}")))?;
        Ok(FeedCursor { tx, id: 0 })
    }

    /// Up to `limit` flags after `cursor` that `filter` lets through, in feed
    /// order, each with its own position.
    pub async fn flags_after(
        &self,
        filter: &FlagFilter,
        cursor: FeedCursor,
        limit: i64,
    ) -> Result<Vec<(FeedCursor, FlagView)>, StoreError> {
        let columns = FLAG_COLUMNS.replacen("SELECT ", "SELECT f.feed_tx::text AS feed_tx, ", 1);
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(columns);
        push_filter(&mut q, filter);
        q.push(" AND (f.feed_tx, f.id) > (")
            .push_bind(cursor.tx.to_string())
            .push("::xid8, ")
            .push_bind(cursor.id)
            .push(")")
            .push(" AND f.feed_tx < pg_snapshot_xmin(pg_current_snapshot())")
            .push(" ORDER BY f.feed_tx, f.id LIMIT ")
            .push_bind(limit);
        let rows: Vec<FeedRow> = q
            .build_query_as()
            .fetch_all(&mut *self.acquire().await?)
            .await?;
        rows.into_iter()
            .map(|row| {
                let tx = row.feed_tx.parse().map_err(|_| {
                    StoreError::Corrupt(format!("transaction id {:?}", row.feed_tx))
                })?;
                let flag = row.flag.into_view()?;
                Ok((FeedCursor { tx, id: flag.id }, flag))
            })
            .collect()
    }

    /// A connection listening for raised flags, outside the pool.
    pub async fn listen_for_flags(&self) -> Result<PgListener, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(FLAG_RAISED_CHANNEL).await?;
        Ok(listener)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_order() {
        let c = FeedCursor { tx: 812, id: 40 };
        assert_eq!(c.to_string().parse::<FeedCursor>(), Ok(c));
        assert!(FeedCursor { tx: 811, id: 99 } < c);
        assert!(FeedCursor { tx: 812, id: 41 } > c);
        for bad in ["", "812", "812.", ".40", "a.b", "812.-1", "-1.4", "1.2.3"] {
            assert_eq!(bad.parse::<FeedCursor>(), Err(BadCursor), "{bad}");
        }
    }
}
