//! API keys and the principals behind them: keys stored as hashes, with a
//! role, an optional expiry, revocable; each belongs to a person or a
//! system, and records which administrator issued it. Every row carries its
//! ledger MAC, and a key whose row does not match its MAC is never trusted.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::Role;
use crate::domain::access::{KeySpec, NewApiKey};
use crate::domain::ledger::LedgerKey;

use super::body::parse;
use super::ledger::{self, content};
use super::{Store, StoreError, chain};

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The public id.
    pub key_id: String,
    /// What it may do.
    pub role: Role,
    /// For HOSPITAL keys, the hospital.
    pub hospital_id: Option<String>,
    /// Who or what it is for.
    pub description: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The person or system it belongs to.
    pub principal: String,
    /// The principal of the administrator who issued it; `None` when made
    /// on the command line.
    pub issued_by: Option<String>,
}

impl ApiKey {
    /// Whether the key may be used at `now`.
    pub fn is_usable_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// A stored key with the hash its secret must match.
#[derive(Debug, Clone)]
pub struct StoredKey {
    /// The key.
    pub key: ApiKey,
    /// SHA-256 of its secret.
    pub secret_hash: Vec<u8>,
}

/// A page of keys.
#[derive(Debug, Clone)]
pub struct KeyPage {
    /// The keys, newest first.
    pub keys: Vec<ApiKey>,
    /// The position to ask for the next page from, when more may follow.
    pub next_before: Option<i64>,
}

/// A key's row with its principals' names and its ledger columns.
struct KeyRow {
    id: i64,
    key_id: String,
    secret_hash: Vec<u8>,
    role: String,
    hospital_id: Option<String>,
    description: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    principal: String,
    issued_by: Option<String>,
    ledger_seq: i64,
    ledger_prev: Option<i64>,
    ledger_mac: Option<Vec<u8>>,
}

impl KeyRow {
    fn state(&self) -> content::KeyState<'_> {
        content::KeyState {
            key_id: &self.key_id,
            secret_hash: &self.secret_hash,
            role: &self.role,
            hospital_id: self.hospital_id.as_deref(),
            description: &self.description,
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            principal: &self.principal,
            created_by: self.issued_by.as_deref(),
            seq: self.ledger_seq,
            prev: self.ledger_prev,
        }
    }

    /// The key, once its row matches its MAC.
    fn into_checked(self, ledger: &LedgerKey) -> Result<StoredKey, StoreError> {
        check_row(ledger, &self)?;
        Ok(StoredKey {
            key: ApiKey {
                key_id: self.key_id,
                role: parse(&self.role)?,
                hospital_id: self.hospital_id,
                description: self.description,
                created_at: self.created_at,
                expires_at: self.expires_at,
                revoked_at: self.revoked_at,
                principal: self.principal,
                issued_by: self.issued_by,
            },
            secret_hash: self.secret_hash,
        })
    }
}

/// The columns every key query reads.
macro_rules! key_query {
    ($where:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            KeyRow,
            "SELECT k.id, k.key_id, k.secret_hash, k.role, k.hospital_id, k.description,
                    k.created_at, k.expires_at, k.revoked_at, p.name AS principal,
                    i.name AS \"issued_by?\", k.ledger_seq, k.ledger_prev, k.ledger_mac
             FROM api_keys k
             JOIN principals p ON p.id = k.principal_id
             LEFT JOIN principals i ON i.id = k.created_by "
                + $where,
            $($arg),*
        )
    };
}

/// The id of the principal `name`, made (with its MAC) if it does not exist.
async fn principal_id(
    conn: &mut PgConnection,
    ledger_key: &LedgerKey,
    name: &str,
    kind: &str,
    created_by: Option<(i64, &str)>,
) -> Result<i64, StoreError> {
    if let Some(id) = sqlx::query_scalar!("SELECT id FROM principals WHERE name = $1", name)
        .fetch_optional(&mut *conn)
        .await?
    {
        return Ok(id);
    }
    let created_at = chain::now();
    let mac = ledger_key.mac(&content::principal(
        name,
        kind,
        created_by.map(|(_, n)| n),
        created_at,
    ));
    let id = sqlx::query_scalar!(
        "INSERT INTO principals (name, kind, created_by, created_at, ledger_mac)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
         RETURNING id",
        name,
        kind,
        created_by.map(|(id, _)| id),
        created_at,
        &mac[..],
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(id)
}

impl Store {
    /// Stores a new key's hash under its principal (made if new), issued by
    /// the administrator principal `issued_by` (`None`: the command line);
    /// returns the key as stored.
    pub async fn create_key(
        &self,
        new: &NewApiKey,
        spec: &KeySpec,
        issued_by: Option<&str>,
    ) -> Result<ApiKey, StoreError> {
        let mut tx = self.begin().await?;
        let issuer = match issued_by {
            Some(name) => {
                let id = sqlx::query_scalar!("SELECT id FROM principals WHERE name = $1", name)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt(format!("no principal {name:?}")))?;
                Some((id, name))
            }
            None => None,
        };
        let principal = principal_id(
            &mut tx,
            &self.ledger,
            &spec.principal,
            spec.principal_kind.as_str(),
            issuer,
        )
        .await?;
        let seq = ledger::allocate(&mut tx, 1)
            .await?
            .pop()
            .ok_or_else(|| StoreError::Corrupt("no sequence number drawn".into()))?;
        let created_at = chain::now();
        let mut row = KeyRow {
            id: 0,
            key_id: new.key_id.clone(),
            secret_hash: new.secret_hash.to_vec(),
            role: spec.role.as_str().to_owned(),
            hospital_id: spec.hospital_id.clone(),
            description: spec.description.clone(),
            created_at,
            expires_at: spec.expires_at,
            revoked_at: None,
            principal: spec.principal.clone(),
            issued_by: issued_by.map(str::to_owned),
            ledger_seq: seq,
            ledger_prev: None,
            ledger_mac: None,
        };
        let mac = self.ledger.mac(&row.state().input());
        row.ledger_mac = Some(mac.to_vec());
        sqlx::query!(
            "INSERT INTO api_keys (key_id, secret_hash, role, hospital_id, description,
                                   created_at, expires_at, principal_id, created_by,
                                   ledger_seq, ledger_mac)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            row.key_id,
            row.secret_hash,
            row.role,
            row.hospital_id,
            row.description,
            row.created_at,
            row.expires_at,
            principal,
            issuer.map(|(id, _)| id),
            row.ledger_seq,
            &mac[..],
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row.into_checked(&self.ledger)?.key)
    }

    /// A key by its public id; an error when its row does not match its MAC.
    /// A key whose row was put back to a state the ledger sealed a
    /// successor of (a revocation undone) is an error too.
    pub async fn key(&self, key_id: &str) -> Result<Option<StoredKey>, StoreError> {
        let mut conn = self.acquire().await?;
        let Some(row) = key_query!("WHERE k.key_id = $1", key_id)
            .fetch_optional(&mut *conn)
            .await?
        else {
            return Ok(None);
        };
        self.view
            .check_current(&mut conn, row.ledger_seq, || format!("API key {key_id}"))
            .await?;
        row.into_checked(&self.ledger).map(Some)
    }

    /// A page of keys, newest first: at most `limit` created before the key
    /// whose position is `before` (from the start when `None`).
    pub async fn keys(&self, before: Option<i64>, limit: i64) -> Result<KeyPage, StoreError> {
        let mut conn = self.acquire().await?;
        let rows = key_query!(
            "WHERE k.id < coalesce($1, 9223372036854775807) ORDER BY k.id DESC LIMIT $2",
            before,
            limit + 1,
        )
        .fetch_all(&mut *conn)
        .await?;
        let more = rows.len() as i64 > limit;
        let seqs: Vec<i64> = rows.iter().map(|r| r.ledger_seq).collect();
        let rewound = self.view.followed(&mut conn, &seqs).await?;
        let mut keys = Vec::with_capacity(rows.len());
        let mut last = None;
        for row in rows.into_iter().take(usize::try_from(limit).unwrap_or(0)) {
            last = Some(row.id);
            // A forged or rewound row is logged and left out, never listed
            // as a key.
            if rewound.contains(&row.ledger_seq) {
                tracing::error!(key_id = %row.key_id, "an API key's row was rewound to a state the ledger sealed a successor of");
                continue;
            }
            if let Ok(key) = row.into_checked(&self.ledger) {
                keys.push(key.key);
            }
        }
        Ok(KeyPage {
            keys,
            next_before: last.filter(|_| more),
        })
    }

    /// Revokes a key; `None` when there is no such key. Revoking twice keeps the first time.
    pub async fn revoke_key(&self, key_id: &str) -> Result<Option<ApiKey>, StoreError> {
        let mut tx = self.begin().await?;
        let Some(mut row) = key_query!("WHERE k.key_id = $1 FOR UPDATE OF k", key_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        check_row(&self.ledger, &row)?;
        self.view
            .check_current(&mut tx, row.ledger_seq, || format!("API key {key_id}"))
            .await?;
        if row.revoked_at.is_some() {
            return Ok(Some(row.into_checked(&self.ledger)?.key));
        }
        let seq = ledger::allocate(&mut tx, 1)
            .await?
            .pop()
            .ok_or_else(|| StoreError::Corrupt("no sequence number drawn".into()))?;
        row.revoked_at = Some(chain::now());
        row.ledger_prev = Some(row.ledger_seq);
        row.ledger_seq = seq;
        let mac = self.ledger.mac(&row.state().input());
        row.ledger_mac = Some(mac.to_vec());
        sqlx::query!(
            "UPDATE api_keys SET revoked_at = $2, ledger_prev = ledger_seq, ledger_seq = $3,
                                 ledger_mac = $4
             WHERE key_id = $1",
            key_id,
            row.revoked_at,
            seq,
            &mac[..],
        )
        .execute(&mut *tx)
        .await?;
        // The key's console sessions end with it, on every replica at once.
        sqlx::query!("DELETE FROM console_sessions WHERE key_id = $1", key_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(row.into_checked(&self.ledger)?.key))
    }

    /// The principal behind a key and the principal that issued it, for the
    /// two-person rule; `None` when there is no such key.
    pub async fn key_principals(
        &self,
        key_id: &str,
    ) -> Result<Option<(String, Option<String>)>, StoreError> {
        Ok(self
            .key(key_id)
            .await?
            .map(|k| (k.key.principal, k.key.issued_by)))
    }
}

/// An error (logged) when a key's row does not match its MAC.
fn check_row(ledger: &LedgerKey, row: &KeyRow) -> Result<(), StoreError> {
    let genuine = row
        .ledger_mac
        .as_deref()
        .is_some_and(|mac| ledger.verify(&row.state().input(), mac));
    if genuine {
        Ok(())
    } else {
        tracing::error!(key_id = %row.key_id, "an API key's row does not match its MAC");
        Err(StoreError::Tampered(format!(
            "API key {} does not match its MAC",
            row.key_id
        )))
    }
}
