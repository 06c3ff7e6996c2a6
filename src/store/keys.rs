//! API keys: stored as hashes, with a role, an optional expiry, revocable.

use chrono::{DateTime, Utc};

use crate::domain::Role;
use crate::domain::access::{KeySpec, NewApiKey};

use super::body::parse;
use super::{Store, StoreError};

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
}

impl ApiKey {
    /// Whether the key may be used at `now`.
    pub fn is_usable_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// A page of keys.
#[derive(Debug, Clone)]
pub struct KeyPage {
    /// The keys, newest first.
    pub keys: Vec<ApiKey>,
    /// The position to ask for the next page from, when more may follow.
    pub next_before: Option<i64>,
}

/// A stored key with the hash its secret must match.
#[derive(Debug, Clone)]
pub struct StoredKey {
    /// The key.
    pub key: ApiKey,
    /// SHA-256 of its secret.
    pub secret_hash: Vec<u8>,
}

struct KeyRow {
    key_id: String,
    secret_hash: Vec<u8>,
    role: String,
    hospital_id: Option<String>,
    description: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl KeyRow {
    fn into_stored(self) -> Result<StoredKey, StoreError> {
        Ok(StoredKey {
            key: ApiKey {
                key_id: self.key_id,
                role: parse(&self.role)?,
                hospital_id: self.hospital_id,
                description: self.description,
                created_at: self.created_at,
                expires_at: self.expires_at,
                revoked_at: self.revoked_at,
            },
            secret_hash: self.secret_hash,
        })
    }
}

impl Store {
    /// Stores a new key's hash; returns the key as stored.
    pub async fn create_key(&self, new: &NewApiKey, spec: &KeySpec) -> Result<ApiKey, StoreError> {
        let row = sqlx::query_as!(
            KeyRow,
            "INSERT INTO api_keys (key_id, secret_hash, role, hospital_id, description, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             RETURNING key_id, secret_hash, role, hospital_id, description, created_at,
                       expires_at, revoked_at",
            new.key_id,
            &new.secret_hash[..],
            spec.role.as_str(),
            spec.hospital_id,
            spec.description,
            spec.expires_at,
        )
        .fetch_one(&mut *self.acquire().await?)
        .await?;
        Ok(row.into_stored()?.key)
    }

    /// A key by its public id.
    pub async fn key(&self, key_id: &str) -> Result<Option<StoredKey>, StoreError> {
        sqlx::query_as!(
            KeyRow,
            "SELECT key_id, secret_hash, role, hospital_id, description, created_at, expires_at,
                    revoked_at
             FROM api_keys WHERE key_id = $1",
            key_id,
        )
        .fetch_optional(&mut *self.acquire().await?)
        .await?
        .map(KeyRow::into_stored)
        .transpose()
    }

    /// A page of keys, newest first: at most `limit` created before the key
    /// whose position is `before` (from the start when `None`).
    pub async fn keys(&self, before: Option<i64>, limit: i64) -> Result<KeyPage, StoreError> {
        let rows = sqlx::query!(
            "SELECT id, key_id, secret_hash, role, hospital_id, description, created_at,
                    expires_at, revoked_at
             FROM api_keys WHERE id < coalesce($1, 9223372036854775807)
             ORDER BY id DESC LIMIT $2",
            before,
            limit + 1,
        )
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        let more = rows.len() as i64 > limit;
        let mut keys = Vec::with_capacity(rows.len());
        let mut last = None;
        for r in rows.into_iter().take(limit as usize) {
            last = Some(r.id);
            let row = KeyRow {
                key_id: r.key_id,
                secret_hash: r.secret_hash,
                role: r.role,
                hospital_id: r.hospital_id,
                description: r.description,
                created_at: r.created_at,
                expires_at: r.expires_at,
                revoked_at: r.revoked_at,
            };
            keys.push(row.into_stored()?.key);
        }
        Ok(KeyPage {
            keys,
            next_before: last.filter(|_| more),
        })
    }

    /// Revokes a key; `None` when there is no such key. Revoking twice keeps the first time.
    pub async fn revoke_key(&self, key_id: &str) -> Result<Option<ApiKey>, StoreError> {
        sqlx::query_as!(
            KeyRow,
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1
             RETURNING key_id, secret_hash, role, hospital_id, description, created_at,
                       expires_at, revoked_at",
            key_id,
        )
        .fetch_optional(&mut *self.acquire().await?)
        .await?
        .map(|r| r.into_stored().map(|s| s.key))
        .transpose()
    }
}
