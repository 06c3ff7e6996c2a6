//! The web console's sessions: only a hash of each session's id is kept.

use std::time::Duration;

use super::{Store, StoreError};

/// SHA-256 of a session id: what the table keeps.
fn id_hash(session_id: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, session_id)
        .as_ref()
        .to_vec()
}

/// `idle` as Postgres seconds (an idle time beyond what f64 holds exactly is no concern).
fn seconds(idle: Duration) -> f64 {
    idle.as_secs_f64()
}

impl Store {
    /// Starts a session `session_id` for key `key_id`, and forgets sessions
    /// idle for longer than `idle`.
    pub async fn create_session(
        &self,
        session_id: &[u8],
        key_id: &str,
        idle: Duration,
    ) -> Result<(), StoreError> {
        let mut conn = self.acquire().await?;
        sqlx::query!(
            "DELETE FROM console_sessions
             WHERE last_seen_at < now() - make_interval(secs => $1)",
            seconds(idle)
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query!(
            "INSERT INTO console_sessions (id_hash, key_id) VALUES ($1, $2)",
            id_hash(session_id),
            key_id
        )
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// The key of session `session_id` if it was used within `idle`; the
    /// use counts as activity.
    pub async fn touch_session(
        &self,
        session_id: &[u8],
        idle: Duration,
    ) -> Result<Option<String>, StoreError> {
        let key_id = sqlx::query_scalar!(
            "UPDATE console_sessions SET last_seen_at = now()
             WHERE id_hash = $1 AND last_seen_at >= now() - make_interval(secs => $2)
             RETURNING key_id",
            id_hash(session_id),
            seconds(idle)
        )
        .fetch_optional(&mut *self.acquire().await?)
        .await?;
        Ok(key_id)
    }

    /// Ends session `session_id`.
    pub async fn end_session(&self, session_id: &[u8]) -> Result<(), StoreError> {
        sqlx::query!(
            "DELETE FROM console_sessions WHERE id_hash = $1",
            id_hash(session_id)
        )
        .execute(&mut *self.acquire().await?)
        .await?;
        Ok(())
    }

    /// Ends every session of key `key_id`; returns how many there were.
    pub async fn end_sessions_of_key(&self, key_id: &str) -> Result<u64, StoreError> {
        let done = sqlx::query!("DELETE FROM console_sessions WHERE key_id = $1", key_id)
            .execute(&mut *self.acquire().await?)
            .await?;
        Ok(done.rows_affected())
    }
}
