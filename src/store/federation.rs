//! Federation's SQL: the peers an administrator configured, the log of
//! every exchange (on both sides), this registry's living donors as
//! elements, and what syncs found (matches), each row covered by the ledger.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::RecordId;
use crate::rules::PeerMatch;

use super::ingest::IngestTx;
use super::ledger::{self, content};
use super::rescan::StoredRecord;
use super::{Store, StoreError, chain, row};

/// A peer registry as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its name here (logs, matches and flags name it so).
    pub name: String,
    /// Where its federation listener is: `https://HOST:PORT`.
    pub address: String,
    /// The PEM certificates of its CA: its server certificate and its
    /// client certificate chain to them.
    pub ca_pem: String,
    /// When it was added.
    pub added_at: DateTime<Utc>,
    /// Who added it.
    pub added_by: String,
}

/// Why a peer could not be added or removed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// A peer of that name is configured already.
    #[error("a peer named {0:?} is configured already")]
    Exists(String),
    /// No peer of that name is configured.
    #[error("no peer named {0:?} is configured")]
    Unknown(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for PeerError {
    fn from(e: sqlx::Error) -> Self {
        PeerError::Store(e.into())
    }
}

/// Which side of an exchange a log entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// This registry answered a peer's call.
    Served,
    /// This registry called a peer (a sync).
    Initiated,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Served => "SERVED",
            Side::Initiated => "INITIATED",
        }
    }
}

/// One exchange to log.
#[derive(Debug, Clone)]
pub struct ExchangeLog<'a> {
    /// The peer; for a client that is no peer, empty (the detail says who).
    pub peer: &'a str,
    /// Which side this registry was.
    pub side: Side,
    /// The call (`RaiseElements`, `ListDonorElements`, `Sync`, `Handshake`).
    pub call: &'a str,
    /// The initiator's id of its sync.
    pub exchange_id: &'a str,
    /// Elements received.
    pub elements_in: u64,
    /// Elements sent.
    pub elements_out: u64,
    /// How it ended: `OK` or the reason of a refusal.
    pub outcome: &'a str,
    /// Anything else worth keeping (a refused client's certificate).
    pub detail: &'a str,
}

/// A logged exchange, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedExchange {
    /// When.
    pub at: DateTime<Utc>,
    /// The peer, or empty.
    pub peer: String,
    /// `SERVED` or `INITIATED`.
    pub side: String,
    /// The call.
    pub call: String,
    /// Elements received.
    pub elements_in: i64,
    /// Elements sent.
    pub elements_out: i64,
    /// `OK` or a refusal.
    pub outcome: String,
    /// The rest.
    pub detail: String,
}

/// Whether a peer's request to raise elements fits its daily ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Logged; raise them.
    Admitted,
    /// Over the ceiling: logged as refused, raise nothing.
    OverCeiling {
        /// Elements raised for the peer since midnight UTC.
        used: u64,
    },
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

async fn log_on(
    conn: &mut PgConnection,
    store_ledger: &crate::domain::ledger::LedgerKey,
    e: &ExchangeLog<'_>,
) -> Result<(), StoreError> {
    let at = chain::now();
    let entry = content::Exchange {
        at,
        peer: e.peer,
        side: e.side.as_str(),
        call: e.call,
        exchange_id: e.exchange_id,
        elements_in: to_i64(e.elements_in),
        elements_out: to_i64(e.elements_out),
        outcome: e.outcome,
        detail: e.detail,
    };
    let mac = store_ledger.mac(&entry.input());
    sqlx::query!(
        "INSERT INTO federation_exchanges
             (at, peer, side, call, exchange_id, elements_in, elements_out, outcome, detail,
              ledger_mac)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        at,
        entry.peer,
        entry.side,
        entry.call,
        entry.exchange_id,
        entry.elements_in,
        entry.elements_out,
        entry.outcome,
        entry.detail,
        &mac[..],
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The stored matches of these records, by record.
pub(super) async fn peer_matches_on(
    conn: &mut PgConnection,
    ids: &[RecordId],
) -> Result<HashMap<RecordId, Vec<PeerMatch>>, StoreError> {
    let ids: Vec<i64> = ids.iter().map(|r| r.0).collect();
    let rows = sqlx::query!(
        "SELECT record_id, peer, peer_donations FROM federation_matches
         WHERE record_id = ANY($1) ORDER BY record_id, peer, peer_donations",
        &ids
    )
    .fetch_all(conn)
    .await?;
    let mut out: HashMap<RecordId, Vec<PeerMatch>> = HashMap::new();
    for r in rows {
        out.entry(RecordId(r.record_id))
            .or_default()
            .push(PeerMatch {
                peer: r.peer,
                donations: u32::try_from(r.peer_donations).unwrap_or(0),
            });
    }
    Ok(out)
}

impl IngestTx {
    /// The stored federation matches of these records, by record.
    pub async fn peer_matches(
        &mut self,
        ids: &[RecordId],
    ) -> Result<HashMap<RecordId, Vec<PeerMatch>>, StoreError> {
        peer_matches_on(&mut self.tx, ids).await
    }
}

impl Store {
    /// The stored federation matches of these records, by record.
    pub async fn peer_matches(
        &self,
        ids: &[RecordId],
    ) -> Result<HashMap<RecordId, Vec<PeerMatch>>, StoreError> {
        peer_matches_on(&mut *self.acquire().await?, ids).await
    }

    /// Adds a peer; refused when one of that name is configured.
    pub async fn add_peer(
        &self,
        name: &str,
        address: &str,
        ca_pem: &str,
        added_by: &str,
    ) -> Result<Peer, PeerError> {
        let mut tx = self.begin().await?;
        let seq = ledger::allocate(&mut tx, 1)
            .await?
            .pop()
            .ok_or_else(|| StoreError::Corrupt("no sequence number drawn".into()))?;
        let added_at = chain::now();
        let state = content::PeerState {
            name,
            address,
            ca_pem,
            added_at,
            added_by,
            removed_at: None,
            seq,
            prev: None,
        };
        let mac = self.ledger.mac(&state.input());
        let inserted = sqlx::query!(
            "INSERT INTO federation_peers
                 (name, address, ca_pem, added_at, added_by, ledger_seq, ledger_mac)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (name) WHERE removed_at IS NULL DO NOTHING",
            name,
            address,
            ca_pem,
            added_at,
            added_by,
            seq,
            &mac[..],
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(PeerError::Exists(name.to_owned()));
        }
        tx.commit().await?;
        Ok(Peer {
            name: name.to_owned(),
            address: address.to_owned(),
            ca_pem: ca_pem.to_owned(),
            added_at,
            added_by: added_by.to_owned(),
        })
    }

    /// The peers configured now, by name.
    pub async fn peers(&self) -> Result<Vec<Peer>, StoreError> {
        Ok(sqlx::query_as!(
            Peer,
            "SELECT name, address, ca_pem, added_at, added_by FROM federation_peers
             WHERE removed_at IS NULL ORDER BY name"
        )
        .fetch_all(&mut *self.acquire().await?)
        .await?)
    }

    /// The peer of that name, if configured.
    pub async fn peer(&self, name: &str) -> Result<Option<Peer>, StoreError> {
        Ok(self.peers().await?.into_iter().find(|p| p.name == name))
    }

    /// Removes a peer: it is answered no more and synced no more. Its row
    /// stays, marked removed, for the trail.
    pub async fn remove_peer(&self, name: &str) -> Result<(), PeerError> {
        let mut tx = self.begin().await?;
        let Some(row) = sqlx::query!(
            "SELECT id, address, ca_pem, added_at, added_by, ledger_seq FROM federation_peers
             WHERE name = $1 AND removed_at IS NULL FOR UPDATE",
            name
        )
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Err(PeerError::Unknown(name.to_owned()));
        };
        let seq = ledger::allocate(&mut tx, 1)
            .await?
            .pop()
            .ok_or_else(|| StoreError::Corrupt("no sequence number drawn".into()))?;
        let removed_at = chain::now();
        let state = content::PeerState {
            name,
            address: &row.address,
            ca_pem: &row.ca_pem,
            added_at: row.added_at,
            added_by: &row.added_by,
            removed_at: Some(removed_at),
            seq,
            prev: Some(row.ledger_seq),
        };
        let mac = self.ledger.mac(&state.input());
        sqlx::query!(
            "UPDATE federation_peers SET removed_at = $2, ledger_prev = ledger_seq,
                    ledger_seq = $3, ledger_mac = $4
             WHERE id = $1",
            row.id,
            removed_at,
            seq,
            &mac[..],
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Logs one exchange.
    pub async fn log_exchange(&self, e: &ExchangeLog<'_>) -> Result<(), StoreError> {
        log_on(&mut *self.acquire().await?, &self.ledger, e).await
    }

    /// Admits `n` elements of `peer` to be raised when its elements raised
    /// since midnight UTC and these stay within `ceiling`, and logs the
    /// call either way. A peer's calls are admitted one at a time, so two
    /// at once cannot both slip under the ceiling.
    pub async fn admit_raise(
        &self,
        peer: &str,
        exchange_id: &str,
        n: u64,
        ceiling: u64,
    ) -> Result<Admission, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query!(
            "SELECT pg_advisory_xact_lock(hashtextextended('federation-ceiling/' || $1, 0))",
            peer
        )
        .fetch_one(&mut *tx)
        .await?;
        let used = sqlx::query_scalar!(
            r#"SELECT coalesce(sum(elements_in), 0)::bigint AS "used!" FROM federation_exchanges
               WHERE peer = $1 AND side = 'SERVED' AND outcome = 'OK'
                 AND call = 'RaiseElements' AND at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"#,
            peer
        )
        .fetch_one(&mut *tx)
        .await?;
        let used = u64::try_from(used).unwrap_or(0);
        let admitted = used.saturating_add(n) <= ceiling;
        let detail = if admitted {
            String::new()
        } else {
            format!("{used} elements raised today; the ceiling is {ceiling}")
        };
        log_on(
            &mut tx,
            &self.ledger,
            &ExchangeLog {
                peer,
                side: Side::Served,
                call: "RaiseElements",
                exchange_id,
                elements_in: n,
                elements_out: if admitted { n } else { 0 },
                outcome: if admitted { "OK" } else { "REFUSED_CEILING" },
                detail: &detail,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(if admitted {
            Admission::Admitted
        } else {
            Admission::OverCeiling { used }
        })
    }

    /// The logged exchanges, oldest first.
    pub async fn exchanges(&self) -> Result<Vec<LoggedExchange>, StoreError> {
        Ok(sqlx::query_as!(
            LoggedExchange,
            "SELECT at, peer, side, call, elements_in, elements_out, outcome, detail
             FROM federation_exchanges ORDER BY id"
        )
        .fetch_all(&mut *self.acquire().await?)
        .await?)
    }

    /// Up to `limit` distinct living donors' elements after `after` (in
    /// element order), each with its living donations here.
    pub async fn living_donor_elements(
        &self,
        after: Option<&[u8]>,
        limit: i64,
    ) -> Result<Vec<(Vec<u8>, i64)>, StoreError> {
        // The empty string sorts before every element, so the first page needs
        // no `IS NULL OR` branch: that branch kept the generic plan from
        // walking records_living_donor_by_element from the key on, and each
        // page sorted every living donor.
        let rows = sqlx::query!(
            r#"SELECT donor_element AS "element!", count(*) AS "donations!"
               FROM records
               WHERE donor_type = 'LIVING' AND donor_element IS NOT NULL
                 AND donor_element > $1
               GROUP BY donor_element ORDER BY donor_element LIMIT $2"#,
            after.unwrap_or_default(),
            limit
        )
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        Ok(rows.into_iter().map(|r| (r.element, r.donations)).collect())
    }

    /// How many distinct living donors have elements here.
    pub async fn living_donor_count(&self) -> Result<u64, StoreError> {
        let n = sqlx::query_scalar!(
            r#"SELECT count(DISTINCT donor_element) AS "n!" FROM records
               WHERE donor_type = 'LIVING' AND donor_element IS NOT NULL"#
        )
        .fetch_one(&mut *self.acquire().await?)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The distinct elements of living donors transplanted from `since` on.
    pub async fn living_donor_elements_since(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(sqlx::query_scalar!(
            r#"SELECT DISTINCT donor_element AS "element!" FROM records
               WHERE donor_type = 'LIVING' AND donor_element IS NOT NULL
                 AND ($1::timestamptz IS NULL OR transplanted_at >= $1)"#,
            since
        )
        .fetch_all(&mut *self.acquire().await?)
        .await?)
    }

    /// Stores what a sync with `peer` found: every living-donor record
    /// (transplanted from `since` on) whose donor element is among
    /// `matched` gets a match with that element's count at the peer. A
    /// match stored before is not stored twice. Returns the records matched.
    pub async fn store_matches(
        &self,
        peer: &str,
        since: Option<DateTime<Utc>>,
        matched: &[(Vec<u8>, u32)],
    ) -> Result<Vec<RecordId>, StoreError> {
        let (elements, counts): (Vec<Vec<u8>>, Vec<i32>) = matched
            .iter()
            .map(|(e, n)| (e.clone(), i32::try_from(*n).unwrap_or(i32::MAX)))
            .unzip();
        let mut tx = self.begin().await?;
        let rows = sqlx::query!(
            r#"SELECT r.id AS "id!", m.n AS "n!" FROM unnest($1::bytea[], $2::int[]) AS m(element, n)
               JOIN records r ON r.donor_element = m.element
               WHERE r.donor_type = 'LIVING'
                 AND ($3::timestamptz IS NULL OR r.transplanted_at >= $3)
               ORDER BY r.id"#,
            &elements,
            &counts,
            since
        )
        .fetch_all(&mut *tx)
        .await?;
        let found_at = chain::now();
        let (mut ids, mut ns, mut macs) = (Vec::new(), Vec::new(), Vec::new());
        for r in &rows {
            ids.push(r.id);
            ns.push(r.n);
            macs.push(
                self.ledger
                    .mac(&content::federation_match(r.id, peer, r.n, found_at))
                    .to_vec(),
            );
        }
        sqlx::query!(
            "INSERT INTO federation_matches (record_id, peer, peer_donations, found_at, ledger_mac)
             SELECT m.id, $4, m.n, $5, m.mac FROM unnest($1::bigint[], $2::int[], $3::bytea[])
                 AS m(id, n, mac)
             ON CONFLICT (record_id, peer, peer_donations) DO NOTHING",
            &ids,
            &ns,
            &macs,
            peer,
            found_at,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ids.into_iter().map(RecordId).collect())
    }

    /// The current versions of these records, in the order of `ids`.
    pub async fn stored_records(&self, ids: &[RecordId]) -> Result<Vec<StoredRecord>, StoreError> {
        let ids: Vec<i64> = ids.iter().map(|r| r.0).collect();
        let current = row::current_versions(&mut *self.acquire().await?, &ids).await?;
        Ok(current
            .into_iter()
            .map(|c| StoredRecord {
                id: c.id,
                version: c.version,
                record: c.record,
            })
            .collect())
    }
}

impl Store {
    /// Raises new flags found by a federation sync (never duplicating one).
    pub async fn raise_federation_flags(
        &self,
        flags: &[super::rescan::NewFlag<'_>],
        note: &str,
    ) -> Result<u64, StoreError> {
        let raises: Vec<super::steps::Raise<'_>> = flags
            .iter()
            .map(|f| super::steps::Raise {
                record_id: f.record.id,
                record_version: f.record.version,
                record: &f.record.record,
                finding: f.finding,
            })
            .collect();
        let mut tx = self.begin().await?;
        let mut activity = crate::domain::activity::ActivityDelta::new();
        let added =
            super::steps::raise(&mut tx, &self.ledger, &raises, note, &mut activity).await?;
        super::activity::apply(&mut tx, &activity).await?;
        tx.commit().await?;
        Ok(added)
    }
}
