//! The live flag feed behind `WatchFlags`: flags in one order that every
//! replica agrees on, readable from any position without gaps.
//!
//! Flag ids are taken when a transaction inserts, not when it commits, so
//! "id greater than the last one seen" would skip a flag whose transaction
//! commits after a younger one. Each flag instead takes a feed position as
//! its transaction commits (`flag_feed`, see the migration), under a lock
//! held to the end of the commit: positions become visible in order, so
//! nothing can appear behind a cursor, and no transaction that raises no
//! flag (however long it runs, in whichever database of the cluster) holds
//! a watcher back.

use std::fmt;
use std::str::FromStr;

use sqlx::postgres::PgListener;
use sqlx::{Postgres, QueryBuilder};

use super::flags::{FLAG_COLUMNS, FlagRow, push_filter};
use super::{Store, StoreError};
use crate::domain::{FlagFilter, FlagView};

/// The channel the database notifies when a transaction that raised flags commits.
pub const FLAG_RAISED_CHANNEL: &str = "flag_raised";

/// A position in the feed: after the flag at `position`, whose id is `id`
/// (carried for the reader's information; the position alone orders).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FeedCursor {
    /// The flag's feed position (0: before every flag).
    pub position: u64,
    /// The flag id.
    pub id: i64,
}

impl fmt::Display for FeedCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.position, self.id)
    }
}

/// Text that is not a feed position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a feed cursor")]
pub struct BadCursor;

impl FromStr for FeedCursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (position, id) = s.split_once('.').ok_or(BadCursor)?;
        let cursor = FeedCursor {
            position: position.parse().map_err(|_| BadCursor)?,
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
    feed_position: i64,
}

impl Store {
    /// Where a watcher starting now begins: after the last position
    /// committed, since every later one is yet to be seen.
    pub async fn feed_start(&self) -> Result<FeedCursor, StoreError> {
        let last = sqlx::query!(
            r#"SELECT position AS "position!", flag_id AS "flag_id!"
               FROM flag_feed ORDER BY position DESC LIMIT 1"#
        )
        .fetch_optional(&mut *self.acquire().await?)
        .await?;
        let (position, id) = last.map(|r| (r.position, r.flag_id)).unwrap_or((0, 0));
        Ok(FeedCursor {
            position: u64::try_from(position)
                .map_err(|_| StoreError::Corrupt(format!("feed position {position}")))?,
            id,
        })
    }

    /// Up to `limit` flags after `cursor` that `filter` lets through, in feed
    /// order, each with its own position.
    pub async fn flags_after(
        &self,
        filter: &FlagFilter,
        cursor: FeedCursor,
        limit: i64,
    ) -> Result<Vec<(FeedCursor, FlagView)>, StoreError> {
        // The position after the flag's columns, which `FlagRow` reads by position.
        let columns = FLAG_COLUMNS.replacen(
            " FROM flags f",
            ", q.position AS feed_position FROM flags f JOIN flag_feed q ON q.flag_id = f.id",
            1,
        );
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(columns);
        push_filter(&mut q, filter);
        let after = i64::try_from(cursor.position).unwrap_or(i64::MAX);
        q.push(" AND q.position > ")
            .push_bind(after)
            .push(" ORDER BY q.position LIMIT ")
            .push_bind(limit);
        let rows: Vec<FeedRow> = q
            .build_query_as()
            .fetch_all(&mut *self.acquire().await?)
            .await?;
        rows.into_iter()
            .map(|row| {
                let position = u64::try_from(row.feed_position).map_err(|_| {
                    StoreError::Corrupt(format!("feed position {}", row.feed_position))
                })?;
                let flag = row.flag.into_view()?;
                Ok((
                    FeedCursor {
                        position,
                        id: flag.id,
                    },
                    flag,
                ))
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
        let c = FeedCursor {
            position: 812,
            id: 40,
        };
        assert_eq!(c.to_string().parse::<FeedCursor>(), Ok(c));
        assert!(
            FeedCursor {
                position: 811,
                id: 99
            } < c
        );
        for bad in ["", "812", "812.", ".40", "a.b", "812.-1", "-1.4", "1.2.3"] {
            assert_eq!(bad.parse::<FeedCursor>(), Err(BadCursor), "{bad}");
        }
    }
}
