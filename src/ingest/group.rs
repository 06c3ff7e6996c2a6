//! Group commit for single submissions. Concurrent callers' records queue
//! up; whichever caller gets a commit slot takes the queue and stores it as
//! one batch, so each record pays a share of one transaction's round trips
//! and its commit instead of a whole one. Every caller is answered only once
//! its record's transaction has committed, as if it had been sent alone.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Semaphore, oneshot};
use tracing::Instrument;

use crate::domain::Record;
use crate::store::StoreError;
use crate::store::batch::StoredForm;

use super::{Ack, IngestError, Ingestor, Prepared};

/// Groups committed at once. Two keep the database busy while the next
/// group gathers (one commits while the other evaluates); more would only
/// split callers into smaller groups.
const CONCURRENT_GROUPS: usize = 2;

/// The queue of records waiting for a commit slot.
#[derive(Debug)]
pub(super) struct Committer {
    queue: Mutex<VecDeque<Pending>>,
    slots: std::sync::Arc<Semaphore>,
    max_group: usize,
    tickets: AtomicU64,
}

/// A queued record and where its answer goes.
#[derive(Debug)]
struct Pending {
    ticket: u64,
    record: Record,
    form: StoredForm,
    reply: oneshot::Sender<Result<Ack, IngestError>>,
    span: tracing::Span,
}

impl Committer {
    /// A committer storing groups of at most `max_group` records.
    pub(super) fn new(max_group: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            slots: std::sync::Arc::new(Semaphore::new(CONCURRENT_GROUPS)),
            max_group: max_group.max(1),
            tickets: AtomicU64::new(0),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        // The queue is only pushed to and drained, so a panic elsewhere
        // cannot leave it inconsistent.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the oldest queued records, up to a group's size.
    fn take(&self) -> Vec<Pending> {
        let mut queue = self.queue();
        let n = queue.len().min(self.max_group);
        queue.drain(..n).collect()
    }
}

/// Withdraws a caller's record if the caller goes away before any group took it.
struct Withdraw<'a> {
    committer: &'a Committer,
    ticket: u64,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        self.committer.queue().retain(|p| p.ticket != self.ticket);
    }
}

/// Stores `record` in the next group and answers once that group committed.
pub(super) async fn submit(
    ingestor: &Ingestor,
    record: Record,
    form: StoredForm,
) -> Result<Ack, IngestError> {
    let committer = &*ingestor.group;
    let ticket = committer.tickets.fetch_add(1, Ordering::Relaxed);
    let (reply, mut answer) = oneshot::channel();
    committer.queue().push_back(Pending {
        ticket,
        record,
        form,
        reply,
        span: tracing::Span::current(),
    });
    let _withdraw = Withdraw { committer, ticket };
    tokio::select! {
        biased;
        answered = &mut answer => return answered.unwrap_or_else(|_| Err(lost())),
        slot = committer.slots.clone().acquire_owned() => {
            let group = committer.take();
            if let (Ok(slot), false) = (slot, group.is_empty()) {
                // Spawned, so that this caller going away cannot abandon the
                // others' records half way.
                let ingestor = ingestor.clone();
                tokio::spawn(
                    async move {
                        commit(&ingestor, group).await;
                        drop(slot);
                    }
                    .instrument(tracing::Span::current()),
                );
            }
        }
    }
    answer.await.unwrap_or_else(|_| Err(lost()))
}

/// Stores a group and answers each caller. A group the database refuses is
/// retried record by record, so that each caller gets its own answer and no
/// record can fail another's.
async fn commit(ingestor: &Ingestor, group: Vec<Pending>) {
    let here = tracing::Span::current();
    let mut batch = Prepared::default();
    let mut replies = Vec::with_capacity(group.len());
    for p in group {
        // A span following itself would deadlock the OpenTelemetry layer.
        if p.span.id() != here.id() {
            here.follows_from(&p.span);
        }
        batch.records.push(p.record);
        batch.forms.push(p.form);
        replies.push(p.reply);
    }
    // A caller that went away needs no answer, so failed sends are ignored.
    match ingestor.store(&batch).await {
        Ok(answers) => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        }
        Err(e) if replies.len() == 1 => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(IngestError::Store(e)));
            }
        }
        Err(_) => {
            let one_by_one = batch.records.into_iter().zip(batch.forms);
            for ((record, form), reply) in one_by_one.zip(replies) {
                let alone = Prepared {
                    records: vec![record],
                    forms: vec![form],
                };
                let answer = ingestor
                    .store(&alone)
                    .await
                    .map_err(IngestError::Store)
                    .and_then(|mut answers| answers.pop().unwrap_or_else(|| Err(lost())));
                let _ = reply.send(answer);
            }
        }
    }
}

/// The answer to a caller whose group ended without one (a panic).
fn lost() -> IngestError {
    IngestError::Store(StoreError::Corrupt(
        "the record's group ended without an answer".into(),
    ))
}
