//! Back-fills: an NDJSON file of records (one per line, see [`ndjson`](crate::wire::ndjson))
//! through the same pipeline as `SubmitRecords`, in batches of one
//! transaction each. Every committed batch moves a checkpoint kept in the
//! database, so an interrupted import resumes after it; a batch that was
//! committed but not checkpointed is resent and acknowledged as duplicates.

use std::collections::HashSet;
use std::path::Path;

use chrono::Utc;
use ring::digest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::domain::{Submission, Violations};
use crate::ingest::{Ingestor, Outcome};
use crate::store::imports::ImportCheckpoint;
use crate::store::{Store, StoreError};
use crate::wire::convert::submission;
use crate::wire::ndjson;

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The database failed; what was committed stays, and a rerun resumes.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How to import.
#[derive(Debug, Clone, Copy)]
pub struct ImportOptions {
    /// Records per transaction.
    pub batch_size: usize,
    /// Start from the first line even if an earlier run got further.
    pub restart: bool,
}

/// A record the import refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Its line in the file, from 1.
    pub line: u64,
    /// The hospital's record id, when the line had one.
    pub external_record_id: String,
    /// What was wrong.
    pub reason: String,
}

/// Where an import stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Lines in the file.
    pub lines_total: u64,
    /// Lines done so far (all of them once finished).
    pub lines_done: u64,
    /// The line an earlier run had reached, when this one resumed it.
    pub resumed_after: Option<u64>,
    /// Records stored, over every run of this file.
    pub accepted: u64,
    /// Records that were already stored.
    pub duplicates: u64,
    /// Records refused.
    pub rejected: u64,
    /// Whether an earlier run had already imported the whole file.
    pub already_done: bool,
}

/// The SHA-256 and the line count of a file, read once.
async fn survey(path: &Path) -> std::io::Result<(Vec<u8>, u64)> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut context = digest::Context::new(&digest::SHA256);
    let mut buffer = vec![0u8; 1 << 16];
    let (mut lines, mut last) = (0u64, b'\n');
    loop {
        let n = file.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        context.update(&buffer[..n]);
        lines += buffer[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buffer[n - 1];
    }
    if last != b'\n' {
        lines += 1; // a last line without its newline
    }
    Ok((context.finish().as_ref().to_vec(), lines))
}

/// Imports the records of `path`, resuming an interrupted earlier run of the
/// same content unless told to restart. `progress` is called after every
/// batch, `rejected` for every refused record.
pub async fn import(
    store: &Store,
    ingestor: &Ingestor,
    path: &Path,
    options: ImportOptions,
    mut progress: impl FnMut(&ImportReport),
    mut rejected: impl FnMut(&Rejection),
) -> Result<ImportReport, ImportError> {
    let io = |source| ImportError::Io {
        path: path.display().to_string(),
        source,
    };
    let (sha256, lines_total) = survey(path).await.map_err(io)?;
    let earlier = store.import_checkpoint(&sha256).await?;
    let mut checkpoint = match earlier {
        Some(c) if !options.restart => c,
        _ => ImportCheckpoint {
            file_sha256: sha256,
            ..ImportCheckpoint::default()
        },
    };
    checkpoint.file_name = path.display().to_string();
    let mut report = ImportReport {
        lines_total,
        resumed_after: (checkpoint.lines_done > 0).then_some(checkpoint.lines_done as u64),
        already_done: checkpoint.finished,
        ..ImportReport::default()
    };
    if !checkpoint.finished {
        let mut reader = BufReader::new(tokio::fs::File::open(path).await.map_err(io)?);
        let mut batch = Batch::default();
        let mut line = Vec::new();
        let mut number = 0u64;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).await.map_err(io)? == 0 {
                break;
            }
            number += 1;
            if number <= checkpoint.lines_done as u64 || line.trim_ascii().is_empty() {
                continue;
            }
            batch.add(number, line.trim_ascii());
            if batch.len() >= options.batch_size.max(1) {
                batch
                    .commit(ingestor, &mut checkpoint, number, &mut rejected)
                    .await?;
                store.save_import_checkpoint(&checkpoint).await?;
                progress(report.update(&checkpoint));
            }
        }
        batch
            .commit(ingestor, &mut checkpoint, number, &mut rejected)
            .await?;
        checkpoint.finished = true;
        store.save_import_checkpoint(&checkpoint).await?;
    }
    report.update(&checkpoint);
    Ok(report)
}

impl ImportReport {
    fn update(&mut self, c: &ImportCheckpoint) -> &Self {
        self.lines_done = if c.finished {
            self.lines_total
        } else {
            c.lines_done as u64
        };
        self.accepted = c.accepted as u64;
        self.duplicates = c.duplicates as u64;
        self.rejected = c.rejected as u64;
        self
    }
}

/// The lines of one transaction, checked.
#[derive(Default)]
struct Batch {
    valid: Vec<(u64, Submission)>,
    refused: Vec<Rejection>,
}

impl Batch {
    fn len(&self) -> usize {
        self.valid.len() + self.refused.len()
    }

    /// Reads and validates one line exactly as `SubmitRecord` would.
    fn add(&mut self, number: u64, line: &[u8]) {
        let (record, read) = ndjson::parse_line(line);
        match submission(ndjson::PREFIX, Some(&record), Utc::now()) {
            Ok(s) if read.is_empty() => self.valid.push((number, s)),
            parsed => {
                // A field JSON could not give is already named; validation's
                // "is required" for it would only repeat that.
                let named: HashSet<String> = read.0.iter().map(|f| f.field.clone()).collect();
                let mut violations = read.clone();
                if let Err(more) = parsed {
                    violations
                        .0
                        .extend(more.0.into_iter().filter(|f| !named.contains(&f.field)));
                }
                self.refused.push(Rejection {
                    line: number,
                    external_record_id: record.external_record_id,
                    reason: describe(&violations),
                });
            }
        }
    }

    /// Stores the valid records in one transaction and moves the checkpoint
    /// to `through` (the batch's last line).
    async fn commit(
        &mut self,
        ingestor: &Ingestor,
        checkpoint: &mut ImportCheckpoint,
        through: u64,
        rejected: &mut impl FnMut(&Rejection),
    ) -> Result<(), StoreError> {
        let valid = std::mem::take(&mut self.valid);
        let (lines, submissions): (Vec<u64>, Vec<Submission>) = valid.into_iter().unzip();
        let ids: Vec<String> = submissions
            .iter()
            .map(|s| s.external_record_id.clone())
            .collect();
        let acks = if submissions.is_empty() {
            Vec::new()
        } else {
            ingestor.submit_batch(submissions).await?
        };
        for ((ack, line), id) in acks.into_iter().zip(lines).zip(ids) {
            match ack {
                Ok(ack) if ack.outcome == Outcome::Accepted => checkpoint.accepted += 1,
                Ok(_) => checkpoint.duplicates += 1,
                Err(e) => self.refused.push(Rejection {
                    line,
                    external_record_id: id,
                    reason: e.to_string(),
                }),
            }
        }
        self.refused.sort_by_key(|r| r.line);
        for refusal in self.refused.drain(..) {
            checkpoint.rejected += 1;
            rejected(&refusal);
        }
        checkpoint.lines_done = i64::try_from(through).unwrap_or(i64::MAX);
        Ok(())
    }
}

/// Violations as one line: `field: what; field: what`.
fn describe(v: &Violations) -> String {
    v.0.iter()
        .map(|f| format!("{}: {}", f.field, f.description))
        .collect::<Vec<_>>()
        .join("; ")
}
