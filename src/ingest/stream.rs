//! A stream of submissions through the pipeline: read in batches of what
//! has arrived, two batches stored at once, every record answered in order.
//!
//! The pipeline knows neither the wire nor its errors: a [`Check`] turns the
//! stream's messages into submissions or refusals worded for the caller, and
//! the answers go back through a channel, each once its record's
//! transaction has committed.

use std::time::Duration;

use futures::stream::FuturesOrdered;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::domain::Submission;
use crate::store::StoreError;

use super::{Ack, IngestError, Ingestor};

/// Batches of one stream stored at once: one commits while the next
/// evaluates, each in its own transactions (one per lane, see
/// [`Ingestor::store_in_lanes`]).
const BATCHES_AT_ONCE: usize = 2;

/// How a stream's messages become submissions.
pub trait Check: Clone + Send + Sync + 'static {
    /// What the stream carries.
    type Message: Send + 'static;
    /// A record's refusal, as its caller is told.
    type Refusal: Send + 'static;

    /// Each message's submission, or why it is refused.
    fn check(&self, messages: &[Self::Message]) -> Vec<Result<Submission, Self::Refusal>>;

    /// The refusal of a valid record the pipeline could not store (a
    /// resubmission with other content).
    fn refuse(&self, external_record_id: String, error: IngestError) -> Self::Refusal;
}

/// The answer for one message: its record stored (or recognised as stored
/// before), or refused.
pub type Answer<R> = Result<Stored, R>;

/// A stored record's acknowledgement with the hospital's id of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The hospital's record id.
    pub external_record_id: String,
    /// What was stored.
    pub ack: Ack,
}

/// How a stream ended other than by its client closing it.
#[derive(Debug, thiserror::Error)]
pub enum StreamError<E> {
    /// The stream carried more records than one stream may; the ones past
    /// the limit were not read.
    #[error("a stream carries at most {limit} records")]
    TooLong {
        /// Records one stream may carry.
        limit: u64,
    },
    /// Nothing arrived for this long while the stream owed the client
    /// nothing: its client holds it open without using it.
    #[error("nothing arrived on the stream for {timeout:?}")]
    Idle {
        /// How long a stream may wait for its next message.
        timeout: Duration,
    },
    /// The client's side broke (for example a message too large to decode).
    #[error("the stream broke")]
    Broken(E),
    /// A batch could not be stored; the client resends from its first
    /// unanswered record.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A batch's task ended without an answer.
    #[error("storing a batch failed unexpectedly")]
    Lost,
}

/// Limits of one stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Records one stream may carry.
    pub max_records: u64,
    /// Most records read into one batch.
    pub batch_size: usize,
    /// How long the stream waits for a message while none of its records
    /// is being stored (its client has every answer it is owed).
    pub idle_timeout: Duration,
}

/// What is sent back: an answer per message, in order, then at most one error.
pub type Answers<R, E> = mpsc::Sender<Result<Answer<R>, StreamError<E>>>;

/// A batch on its task: its answers, once every lane has committed.
type Storing<R> = JoinHandle<Result<Vec<Answer<R>>, StoreError>>;

impl Ingestor {
    /// Stores what `messages` carries, in batches of what has arrived (up to
    /// the batch size), each in a transaction per lane, and answers its
    /// records in order once every lane has committed. A batch is read once
    /// the one before it holds its locks and record ids, so two are stored
    /// at once and the records that arrive meanwhile make the next batch.
    ///
    /// A database failure ends the stream with its error, and the client
    /// resends from its first unanswered record: the failed lane stored
    /// nothing, while the batch's other lanes and the batch after it may
    /// have committed all the same (their records then come back as
    /// duplicates, with their original acknowledgements). Returns once
    /// every batch read is stored, even if the client went away meanwhile.
    pub async fn submit_stream<C, S, E>(
        &self,
        messages: S,
        check: C,
        limits: StreamLimits,
        answers: Answers<C::Refusal, E>,
    ) where
        C: Check,
        S: Stream<Item = Result<C::Message, E>> + Unpin,
        E: Send + 'static,
    {
        let mut run = StreamRun {
            ingestor: self,
            check,
            limits,
            answers,
            storing: FuturesOrdered::new(),
        };
        run.serve(messages).await;
        // Batches left storing on their tasks (the client gone, a batch
        // failed) finish before the stream counts as closed.
        while run.storing.next().await.is_some() {}
    }
}

/// One stream being served.
struct StreamRun<'a, C: Check, E> {
    ingestor: &'a Ingestor,
    check: C,
    limits: StreamLimits,
    answers: Answers<C::Refusal, E>,
    /// Batches being stored, oldest first.
    storing: FuturesOrdered<Storing<C::Refusal>>,
}

/// What the client's side of a stream has come to.
enum Ending<E> {
    /// It may send more.
    Open,
    /// It closed its side: end once every batch is answered.
    Closed,
    /// It is over for this reason: say so once every batch is answered.
    Failed(StreamError<E>),
}

impl<C: Check, E: Send + 'static> StreamRun<'_, C, E> {
    async fn serve<S>(&mut self, mut messages: S)
    where
        S: Stream<Item = Result<C::Message, E>> + Unpin,
    {
        let mut read = 0u64;
        // The newest batch's signal that it holds its locks and record ids.
        let mut ordering: Option<oneshot::Receiver<()>> = None;
        let mut ending = Ending::Open;
        loop {
            if !matches!(ending, Ending::Open) && self.storing.is_empty() {
                if let Ending::Failed(error) = ending {
                    let _ = self.answers.send(Err(error)).await;
                }
                return;
            }
            let may_read = matches!(ending, Ending::Open)
                && ordering.is_none()
                && self.storing.len() < BATCHES_AT_ONCE;
            tokio::select! {
                // Cancel-safe: `next_batch` finishes in the poll that gets its first message.
                (mut batch, end) = next_batch(&mut messages, self.limits.batch_size), if may_read => {
                    let room = usize::try_from(self.limits.max_records - read).unwrap_or(usize::MAX);
                    let over_limit = batch.len() > room;
                    batch.truncate(room);
                    read += batch.len() as u64;
                    tracing::debug!(records = batch.len(), "stream batch read");
                    if !batch.is_empty() {
                        let (ordered, order) = oneshot::channel();
                        ordering = Some(order);
                        self.storing.push_back(self.spawn_batch(batch, ordered));
                    }
                    ending = if over_limit {
                        Ending::Failed(StreamError::TooLong { limit: self.limits.max_records })
                    } else {
                        end
                    };
                }
                // Re-armed at every turn of the loop: only time spent waiting
                // on the client alone counts, not time spent storing.
                () = tokio::time::sleep(self.limits.idle_timeout), if may_read && self.storing.is_empty() => {
                    ending = Ending::Failed(StreamError::Idle { timeout: self.limits.idle_timeout });
                }
                () = async {
                    match ordering.as_mut() {
                        // Sent, or dropped by a batch that failed first.
                        Some(order) => drop(order.await),
                        None => std::future::pending().await,
                    }
                } => ordering = None,
                Some(joined) = self.storing.next() => {
                    let batch = match joined {
                        Ok(Ok(answers)) => answers,
                        Ok(Err(e)) => {
                            let _ = self.answers.send(Err(e.into())).await;
                            return;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "a stream batch's task failed");
                            let _ = self.answers.send(Err(StreamError::Lost)).await;
                            return;
                        }
                    };
                    for answer in batch {
                        if self.answers.send(Ok(answer)).await.is_err() {
                            return; // the client went away
                        }
                    }
                }
            }
        }
    }

    /// Checks and stores a batch on a task of its own. On the stream's task
    /// the next batch's checking (pseudonymising, hashing: CPU work) would
    /// hold up this batch's database round trips while it holds its locks,
    /// and with them every batch after it. The task finishes its
    /// transactions even if the stream's client goes away meanwhile.
    fn spawn_batch(
        &self,
        batch: Vec<C::Message>,
        ordered: oneshot::Sender<()>,
    ) -> Storing<C::Refusal> {
        let ingestor = self.ingestor.clone();
        let check = self.check.clone();
        tokio::spawn(
            async move {
                let checked = tracing::info_span!("validate").in_scope(|| check.check(&batch));
                store_checked(&ingestor, &check, checked, ordered).await
            }
            .in_current_span(),
        )
    }
}

/// Stores the valid records of a checked batch in its lanes (telling
/// `ordered` once they hold their locks and record ids) and answers every
/// message, in order.
async fn store_checked<C: Check>(
    ingestor: &Ingestor,
    check: &C,
    checked: Vec<Result<Submission, C::Refusal>>,
    ordered: oneshot::Sender<()>,
) -> Result<Vec<Answer<C::Refusal>>, StoreError> {
    let mut valid = Vec::new();
    let mut answers: Vec<Option<Answer<C::Refusal>>> = Vec::with_capacity(checked.len());
    let mut positions = Vec::new();
    for (position, result) in checked.into_iter().enumerate() {
        match result {
            Ok(submission) => {
                positions.push(position);
                valid.push(submission);
                answers.push(None);
            }
            Err(refusal) => answers.push(Some(Err(refusal))),
        }
    }
    if valid.is_empty() {
        drop(ordered);
    } else {
        let ids: Vec<String> = valid.iter().map(|s| s.external_record_id.clone()).collect();
        let stored = ingestor
            .store_in_lanes(ingestor.prepare_off_runtime(valid).await, ordered)
            .await?;
        for ((position, external_record_id), result) in positions.into_iter().zip(ids).zip(stored) {
            answers[position] = Some(match result {
                Ok(ack) => Ok(Stored {
                    external_record_id,
                    ack,
                }),
                Err(e) => Err(check.refuse(external_record_id, e)),
            });
        }
    }
    Ok(answers.into_iter().flatten().collect())
}

/// Waits for one message, then takes whatever else has already arrived, up
/// to `max`; says whether the client may send more.
async fn next_batch<M, E, S>(messages: &mut S, max: usize) -> (Vec<M>, Ending<E>)
where
    S: Stream<Item = Result<M, E>> + Unpin,
{
    let mut batch = Vec::new();
    match messages.next().await {
        Some(Ok(m)) => batch.push(m),
        None => return (batch, Ending::Closed),
        Some(Err(e)) => return (batch, Ending::Failed(StreamError::Broken(e))),
    }
    while batch.len() < max {
        // Polled once: a stream keeps its state, so dropping a pending poll
        // loses nothing. Unconstrained by Tokio's cooperative budget, which
        // would otherwise report data already received as pending after
        // about a hundred messages and cut every batch there.
        match tokio::task::unconstrained(messages.next()).now_or_never() {
            Some(Some(Ok(m))) => batch.push(m),
            Some(None) => return (batch, Ending::Closed),
            Some(Some(Err(e))) => return (batch, Ending::Failed(StreamError::Broken(e))),
            None => break,
        }
    }
    (batch, Ending::Open)
}
