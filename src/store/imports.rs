//! Checkpoints of NDJSON imports, so an interrupted back-fill resumes.

use super::ledger::{self, content};
use super::{Store, StoreError, chain};

/// How far an import of one file has come.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportCheckpoint {
    /// SHA-256 of the file's content: its identity.
    pub file_sha256: Vec<u8>,
    /// The file's name when the import ran (for operators).
    pub file_name: String,
    /// Lines of the file whose records are committed (or were rejected).
    pub lines_done: i64,
    /// Records stored.
    pub accepted: i64,
    /// Records that were already stored.
    pub duplicates: i64,
    /// Records refused.
    pub rejected: i64,
    /// Whether the whole file is done.
    pub finished: bool,
}

impl Store {
    /// The checkpoint of the file with this content, if it was imported before.
    pub async fn import_checkpoint(
        &self,
        file_sha256: &[u8],
    ) -> Result<Option<ImportCheckpoint>, StoreError> {
        let row = sqlx::query!(
            r#"SELECT file_name, lines_done, accepted, duplicates, rejected,
                      finished_at IS NOT NULL AS "finished!"
               FROM imports WHERE file_sha256 = $1"#,
            file_sha256
        )
        .fetch_optional(&mut *self.acquire().await?)
        .await?;
        Ok(row.map(|r| ImportCheckpoint {
            file_sha256: file_sha256.to_vec(),
            file_name: r.file_name,
            lines_done: r.lines_done,
            accepted: r.accepted,
            duplicates: r.duplicates,
            rejected: r.rejected,
            finished: r.finished,
        }))
    }

    /// Records how far the import has come: a new state of its row, MACed.
    pub async fn save_import_checkpoint(&self, c: &ImportCheckpoint) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let earlier = sqlx::query!(
            "SELECT started_at, ledger_seq FROM imports WHERE file_sha256 = $1 FOR UPDATE",
            c.file_sha256
        )
        .fetch_optional(&mut *tx)
        .await?;
        let seq = ledger::allocate(&mut tx, 1)
            .await?
            .pop()
            .ok_or_else(|| StoreError::Corrupt("no sequence number drawn".into()))?;
        let now = chain::now();
        let state = content::ImportState {
            file_sha256: &c.file_sha256,
            file_name: &c.file_name,
            lines_done: c.lines_done,
            accepted: c.accepted,
            duplicates: c.duplicates,
            rejected: c.rejected,
            started_at: earlier.as_ref().map_or(now, |e| e.started_at),
            updated_at: now,
            finished_at: c.finished.then_some(now),
            seq,
            prev: earlier.as_ref().map(|e| e.ledger_seq),
        };
        let mac = self.ledger.mac(&state.input());
        sqlx::query!(
            "INSERT INTO imports (file_sha256, file_name, lines_done, accepted, duplicates,
                                  rejected, started_at, updated_at, finished_at, ledger_seq,
                                  ledger_prev, ledger_mac)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (file_sha256) DO UPDATE SET
               file_name = EXCLUDED.file_name, lines_done = EXCLUDED.lines_done,
               accepted = EXCLUDED.accepted, duplicates = EXCLUDED.duplicates,
               rejected = EXCLUDED.rejected, updated_at = EXCLUDED.updated_at,
               finished_at = EXCLUDED.finished_at, ledger_seq = EXCLUDED.ledger_seq,
               ledger_prev = EXCLUDED.ledger_prev, ledger_mac = EXCLUDED.ledger_mac",
            state.file_sha256,
            state.file_name,
            state.lines_done,
            state.accepted,
            state.duplicates,
            state.rejected,
            state.started_at,
            state.updated_at,
            state.finished_at,
            state.seq,
            state.prev,
            &mac[..],
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
