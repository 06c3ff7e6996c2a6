//! Checkpoints of NDJSON imports, so an interrupted back-fill resumes.

use super::{Store, StoreError};

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

    /// Records how far the import has come.
    pub async fn save_import_checkpoint(&self, c: &ImportCheckpoint) -> Result<(), StoreError> {
        sqlx::query!(
            r#"INSERT INTO imports
                 (file_sha256, file_name, lines_done, accepted, duplicates, rejected, finished_at)
               VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $7 THEN now() END)
               ON CONFLICT (file_sha256) DO UPDATE SET
                 file_name = EXCLUDED.file_name, lines_done = EXCLUDED.lines_done,
                 accepted = EXCLUDED.accepted, duplicates = EXCLUDED.duplicates,
                 rejected = EXCLUDED.rejected, finished_at = EXCLUDED.finished_at,
                 updated_at = now()"#,
            c.file_sha256,
            c.file_name,
            c.lines_done,
            c.accepted,
            c.duplicates,
            c.rejected,
            c.finished,
        )
        .execute(&mut *self.acquire().await?)
        .await?;
        Ok(())
    }
}
