//! The ingest pipeline: pseudonymise → lock keys → load context → rules →
//! persist, a batch of records per transaction.

mod batch;
mod group;
mod lanes;
pub mod stream;

pub use lanes::{LANES, lane_of};

use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::{Instrument, info_span};

use crate::domain::Severity;
use crate::domain::{FederationKey, FingerprintKey, Record, Submission};
use crate::rules::{Engine, RuleId};
use crate::store::batch::StoredForm;
use crate::store::{ExistingRecord, Store, StoreError, StoredAck};
use crate::telemetry::metrics;

/// What became of a record that was not refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored now.
    Accepted,
    /// Already stored with the same content; nothing new was stored.
    Duplicate,
}

/// The acknowledgement of a stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Accepted or duplicate.
    pub outcome: Outcome,
    /// The stored record.
    pub stored: StoredAck,
}

/// Why a record was not stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The idempotency key is taken by a record with other content.
    #[error(
        "record {external_record_id:?} of hospital {hospital_id:?} was already submitted with \
         different content; send a correction with AmendRecord"
    )]
    Conflict {
        /// The hospital.
        hospital_id: String,
        /// Its record id.
        external_record_id: String,
    },
    /// An amendment names a record that was never stored.
    #[error("record {external_record_id:?} of hospital {hospital_id:?} does not exist")]
    NotFound {
        /// The hospital.
        hospital_id: String,
        /// Its record id.
        external_record_id: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Records ready to store: pseudonymised, each with its stored form.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    records: Vec<Record>,
    forms: Vec<StoredForm>,
}

impl Prepared {
    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Attempts at a batch whose idempotency keys concurrent writers keep taking.
const MAX_ATTEMPTS: usize = 5;

/// Runs records through the pipeline.
#[derive(Clone, Debug)]
pub struct Ingestor {
    store: Store,
    engine: Arc<Engine>,
    key: FingerprintKey,
    federation: Option<FederationKey>,
    group: Arc<group::Committer>,
}

impl Ingestor {
    /// A pipeline over `store`, evaluating with `engine`, fingerprinting
    /// with `key`; concurrent single submissions are committed in groups of
    /// at most `max_group` records.
    pub fn new(store: Store, engine: Arc<Engine>, key: FingerprintKey, max_group: usize) -> Self {
        Self {
            store,
            engine,
            key,
            federation: None,
            group: Arc::new(group::Committer::new(max_group)),
        }
    }

    /// The same pipeline, storing every record's federation elements under
    /// `key` beside its fingerprints.
    pub fn with_federation(self, key: FederationKey) -> Self {
        Self {
            federation: Some(key),
            ..self
        }
    }

    /// The record's fingerprints replace its identifiers; its elements, when
    /// this registry federates, are taken from them first.
    fn pseudonymise(&self, submission: Submission) -> (Record, StoredForm) {
        let elements = self.federation.as_ref().map(|k| {
            k.record_elements(
                &submission.donor.person.identifier,
                &submission.recipient.identifier,
            )
        });
        let record = submission.pseudonymise(&self.key);
        let form = StoredForm::of(&record, elements);
        (record, form)
    }

    /// Stores a new record with its flags, or recognises a retry. Concurrent
    /// calls are committed together (see [`group`]); the answer holds once
    /// the record's transaction has committed.
    pub async fn submit(&self, submission: Submission) -> Result<Ack, IngestError> {
        let (record, form) = self.pseudonymise(submission);
        group::submit(self, record, form).await
    }

    /// Stores several records in one transaction, in order: each sees the
    /// ones before it exactly as if they had been sent one by one, and every
    /// acknowledgement holds only once the whole batch has committed. A
    /// database failure fails the batch and stores none of it.
    pub async fn submit_batch(
        &self,
        submissions: Vec<Submission>,
    ) -> Result<Vec<Result<Ack, IngestError>>, StoreError> {
        self.store(&self.prepare_off_runtime(submissions).await)
            .await
    }

    /// Pseudonymises records and computes their stored forms and elements:
    /// the part of a batch's work that needs no database, so it can overlap
    /// another's. Runs on the calling thread and the CPU pool's; async
    /// callers use [`Self::prepare_off_runtime`].
    pub fn prepare(&self, submissions: Vec<Submission>) -> Prepared {
        use rayon::prelude::*;
        let (records, forms) = submissions
            .into_par_iter()
            .map(|s| self.pseudonymise(s))
            .unzip();
        Prepared { records, forms }
    }

    /// [`Self::prepare`] on the CPU pool, on all cores, leaving the async
    /// runtime's workers free: a federating registry spends two scalar
    /// multiplications a record here.
    pub async fn prepare_off_runtime(&self, submissions: Vec<Submission>) -> Prepared {
        let (done, prepared) = oneshot::channel();
        let this = self.clone();
        rayon::spawn(move || {
            // The receiver is gone only if the caller was cancelled.
            let _ = done.send(this.prepare(submissions));
        });
        match prepared.await {
            Ok(prepared) => prepared,
            // Only a panic in the pool drops the sender, and no input can
            // cause one: pseudonymising a valid submission cannot fail.
            Err(_) => panic!("the ingest CPU pool dropped a batch"),
        }
    }

    /// Stores prepared records in one transaction (see [`Self::submit_batch`]).
    pub async fn store(
        &self,
        batch: &Prepared,
    ) -> Result<Vec<Result<Ack, IngestError>>, StoreError> {
        self.store_ordered(batch, None).await
    }

    /// [`Self::store`], telling `ordered` once the batch holds its keys'
    /// locks and its record ids: a batch begun after that is stored after
    /// this one and sees its records wherever their keys meet, so the two
    /// may run at once.
    pub async fn store_ordered(
        &self,
        batch: &Prepared,
        mut ordered: Option<oneshot::Sender<()>>,
    ) -> Result<Vec<Result<Ack, IngestError>>, StoreError> {
        let Prepared { records, forms } = batch;
        for _ in 0..MAX_ATTEMPTS {
            let mut tx = self.store.begin_ingest().await?;
            let stored =
                batch::store_in(&mut tx, &self.engine, records, forms, &mut ordered).await?;
            let Some(stored) = stored else {
                // A concurrent writer committed one of these keys first; the
                // next attempt sees it as stored.
                continue;
            };
            tx.commit().instrument(info_span!("persist")).await?;
            count_raised(&stored.raised);
            return Ok(stored.answers);
        }
        Err(StoreError::Contended)
    }

    /// Replaces a stored record's content with a corrected version.
    pub async fn amend(&self, submission: Submission, reason: &str) -> Result<Ack, IngestError> {
        let (record, form) = self.pseudonymise(submission);
        let hash = form.hash.clone();
        let mut tx = self.store.begin_ingest().await?;
        tx.lock_keys([&record])
            .instrument(info_span!("lock"))
            .await?;
        let existing = tx
            .find_existing(&record.hospital_id, &record.external_record_id)
            .await?
            .ok_or_else(|| IngestError::NotFound {
                hospital_id: record.hospital_id.clone(),
                external_record_id: record.external_record_id.clone(),
            })?;
        if existing.content_hash == hash {
            return Ok(duplicate(&existing));
        }
        // The rules read what was stored before the record (its id keeps
        // its place in history), before this transaction writes anything.
        let group = [(existing.id, &record)];
        let context = batch::Context::load(&mut tx, &self.engine, &group)
            .instrument(info_span!("context"))
            .await?
            .with_peer_matches(&mut tx, &[existing.id])
            .await?;
        let findings = info_span!("rules").in_scope(|| context.evaluate(&self.engine, &group));
        let findings = findings.into_iter().next().unwrap_or_default();
        let stored = async {
            let stored = tx.amend(&existing, &record, form.elements, reason).await?;
            let evaluated: Vec<RuleId> = self.engine.config().enabled_rules().collect();
            tx.save_flags(&stored, &record, &findings, &evaluated)
                .await?;
            tx.commit().await?;
            Ok::<_, StoreError>(stored)
        }
        .instrument(info_span!("persist"))
        .await?;
        Ok(Ack {
            outcome: Outcome::Accepted,
            stored,
        })
    }
}

/// Counts the flags of newly stored records, once they are committed.
fn count_raised(raised: &[(RuleId, Severity)]) {
    for (rule, severity) in raised {
        metrics::flag_raised(rule.as_str(), severity.as_str());
    }
}

fn duplicate(existing: &ExistingRecord) -> Ack {
    Ack {
        outcome: Outcome::Duplicate,
        stored: StoredAck {
            id: existing.id,
            version: existing.version,
            received_at: existing.received_at,
        },
    }
}

fn duplicate_or_conflict(
    record: &Record,
    existing: &ExistingRecord,
    hash: &[u8],
) -> Result<Ack, IngestError> {
    if existing.content_hash == hash {
        Ok(duplicate(existing))
    } else {
        Err(IngestError::Conflict {
            hospital_id: record.hospital_id.clone(),
            external_record_id: record.external_record_id.clone(),
        })
    }
}
