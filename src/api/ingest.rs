//! `IngestService`: hospitals submit and amend records.

use std::pin::Pin;
use std::sync::Arc;

use chrono::Utc;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, Stream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::domain::{Caller, Submission, Violations};
use crate::ingest::{Ack, Ingestor, Outcome, Prepared};
use crate::server::ServeOptions;
use crate::telemetry::metrics;

use super::auth::{caller, check_hospital};
use super::status::{ApiError, invalid, to_rpc_status};
use crate::wire::convert::{submission, timestamp};
use crate::wire::pb::ingest_service_server::IngestService;
use crate::wire::pb::{self, RecordAck};

/// The most acknowledgements buffered ahead of a slow reader.
const ACK_BUFFER: usize = 64;

/// Batches of one stream stored at once: one commits while the next
/// evaluates, each in its own transactions (one per lane, see
/// [`Ingestor::store_in_lanes`]).
const STREAM_BATCHES_AT_ONCE: usize = 2;

/// The longest amendment reason accepted.
const MAX_REASON_LEN: usize = 2000;

/// The gRPC face of the ingest pipeline.
#[derive(Clone, Debug)]
pub struct IngestApi {
    ingestor: Ingestor,
    streams: Arc<Semaphore>,
    max_stream_records: u64,
    batch_size: usize,
}

impl IngestApi {
    /// Serves `ingestor` under the stream limits of `limits`.
    pub fn new(ingestor: Ingestor, limits: &ServeOptions) -> Self {
        Self {
            ingestor,
            streams: Arc::new(Semaphore::new(limits.max_concurrent_streams)),
            max_stream_records: limits.max_stream_records,
            batch_size: limits.ingest_batch_size.max(1),
        }
    }

    /// Validates and stores one record.
    async fn submit_one(
        &self,
        caller: &Caller,
        record: Option<&pb::TransplantRecord>,
    ) -> Result<RecordAck, Status> {
        let result: Result<RecordAck, Status> = async {
            let parsed = validate_span().in_scope(|| submission("record", record, Utc::now()));
            authorize(caller, record, &parsed)?;
            let submission = parsed.map_err(invalid)?;
            let external_record_id = submission.external_record_id.clone();
            let ack = self.ingestor.submit(submission).await?;
            Ok(ack_to_proto(external_record_id, &ack))
        }
        .await;
        match &result {
            Ok(ack) => count_outcomes(caller, std::slice::from_ref(ack)),
            Err(status) if is_rejection(status.code()) => {
                metrics::records_ingested("rejected", hospital_label(caller), 1);
            }
            Err(_) => {}
        }
        result
    }
}

impl IngestApi {
    /// Reads a stream in batches of what has arrived (up to the batch size),
    /// stores each batch in a transaction per lane and acknowledges its
    /// records in order once every lane has committed. A batch is read once
    /// the one before it holds its locks and record ids, so two are stored
    /// at once and the records that arrive meanwhile make the next batch. A
    /// database failure ends the stream with its status, and the client
    /// resends from its first unacknowledged record: the failed lane stored
    /// nothing, while the batch's other lanes and the batch after it may
    /// have committed all the same (their records then come back as
    /// duplicates, with their original acknowledgements).
    async fn serve_stream(
        &self,
        caller: &Caller,
        inbound: &mut Streaming<pb::SubmitRecordsRequest>,
        tx: &mpsc::Sender<Result<pb::SubmitRecordsResponse, Status>>,
    ) {
        let mut storing = FuturesOrdered::new();
        self.serve_batches(caller, inbound, tx, &mut storing).await;
        // A stream that ended early (its client gone, a batch failed) may
        // leave batches storing on their tasks; its slot among the open
        // streams is freed once they are done, so the cap on open streams
        // also bounds the batches being stored.
        while storing.next().await.is_some() {}
    }

    /// [`Self::serve_stream`] until the stream ends, leaving in `storing`
    /// the batches still being stored, oldest first.
    async fn serve_batches(
        &self,
        caller: &Caller,
        inbound: &mut Streaming<pb::SubmitRecordsRequest>,
        tx: &mpsc::Sender<Result<pb::SubmitRecordsResponse, Status>>,
        storing: &mut FuturesOrdered<JoinHandle<Result<Vec<RecordAck>, Status>>>,
    ) {
        let mut read = 0u64;
        let mut sequence = 0u64;
        // The newest batch's signal that it holds its locks and record ids.
        let mut ordering: Option<oneshot::Receiver<()>> = None;
        // Set once the client is done: how the call then ends.
        let mut ended: Option<Option<Status>> = None;
        loop {
            if let (Some(end), true) = (&mut ended, storing.is_empty()) {
                if let Some(status) = end.take() {
                    let _ = tx.send(Err(status)).await;
                }
                return;
            }
            let may_read =
                ended.is_none() && ordering.is_none() && storing.len() < STREAM_BATCHES_AT_ONCE;
            tokio::select! {
                // Cancel-safe: `next_batch` finishes in the poll that gets its first message.
                (mut batch, end) = next_batch(inbound, self.batch_size), if may_read => {
                    let room = usize::try_from(self.max_stream_records - read).unwrap_or(usize::MAX);
                    let over_cap = batch.len() > room;
                    batch.truncate(room);
                    read += batch.len() as u64;
                    tracing::debug!(records = batch.len(), "stream batch read");
                    if !batch.is_empty() {
                        let (ordered, order) = oneshot::channel();
                        ordering = Some(order);
                        storing.push_back(self.spawn_batch(caller, batch, ordered));
                    }
                    if over_cap {
                        let limit = self.max_stream_records;
                        ended = Some(Some(ApiError::StreamTooLong { limit }.into()));
                    } else {
                        match end {
                            StreamEnd::More => {}
                            StreamEnd::Closed => ended = Some(None),
                            StreamEnd::Failed(status) => ended = Some(Some(status)),
                        }
                    }
                }
                () = async {
                    match ordering.as_mut() {
                        // Sent, or dropped by a batch that failed first.
                        Some(order) => drop(order.await),
                        None => std::future::pending().await,
                    }
                } => ordering = None,
                Some(joined) = storing.next() => {
                    let stored = joined.unwrap_or_else(|e| {
                        tracing::error!(error = %e, "a stream batch's task failed");
                        Err(ApiError::Internal.into())
                    });
                    let acks = match stored {
                        Ok(acks) => acks,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    };
                    count_outcomes(caller, &acks);
                    for ack in acks {
                        let response = pb::SubmitRecordsResponse {
                            sequence,
                            ack: Some(ack),
                        };
                        if tx.send(Ok(response)).await.is_err() {
                            return; // the client went away
                        }
                        sequence += 1;
                    }
                }
            }
        }
    }

    /// Checks and stores a batch on a task of its own. On the stream's task
    /// the next batch's checking (pseudonymising, hashing: CPU work) would
    /// hold up this batch's database round trips while it holds its locks,
    /// and with them every batch after it. The task finishes its
    /// transaction even if the stream's client goes away meanwhile.
    fn spawn_batch(
        &self,
        caller: &Caller,
        batch: Vec<pb::SubmitRecordsRequest>,
        ordered: oneshot::Sender<()>,
    ) -> JoinHandle<Result<Vec<RecordAck>, Status>> {
        let api = self.clone();
        let caller = caller.clone();
        tokio::spawn(
            async move {
                let checked = api.check(&caller, &batch);
                api.store_checked(checked, ordered).await
            }
            .in_current_span(),
        )
    }

    /// Validates a batch and prepares what is valid for storing.
    fn check(&self, caller: &Caller, batch: &[pb::SubmitRecordsRequest]) -> Checked {
        let now = Utc::now();
        let mut valid = Vec::new();
        let mut slots = Vec::with_capacity(batch.len());
        validate_span().in_scope(|| {
            for message in batch {
                let record = message.record.as_ref();
                let parsed = submission("record", record, now);
                let checked =
                    authorize(caller, record, &parsed).and_then(|()| parsed.map_err(invalid));
                match checked {
                    Ok(s) => {
                        slots.push(Err(valid.len()));
                        valid.push(s);
                    }
                    Err(status) => slots.push(Ok(rejected(record, &status))),
                }
            }
        });
        let ids = valid.iter().map(|s| s.external_record_id.clone()).collect();
        Checked {
            slots,
            ids,
            prepared: self.ingestor.prepare(valid),
        }
    }

    /// Stores a checked batch in its lanes (telling `ordered` once they hold
    /// their locks and record ids) and returns one acknowledgement per
    /// message, in order.
    async fn store_checked(
        &self,
        checked: Checked,
        ordered: oneshot::Sender<()>,
    ) -> Result<Vec<RecordAck>, Status> {
        let Checked {
            slots,
            ids,
            prepared,
        } = checked;
        let mut results = if prepared.is_empty() {
            Vec::new()
        } else {
            self.ingestor.store_in_lanes(prepared, ordered).await?
        }
        .into_iter()
        .zip(ids)
        .map(|(result, id)| match result {
            Ok(ack) => ack_to_proto(id, &ack),
            Err(e) => rejected_id(id, &Status::from(e)),
        })
        .map(Some)
        .collect::<Vec<_>>();
        Ok(slots
            .into_iter()
            .map(|slot| match slot {
                Ok(ack) => ack,
                Err(i) => results[i].take().unwrap_or_default(),
            })
            .collect())
    }
}

/// A batch of a stream, checked: each message's refusal or its place among
/// the valid records, which are ready to store.
struct Checked {
    slots: Vec<Result<RecordAck, usize>>,
    ids: Vec<String>,
    prepared: Prepared,
}

/// How reading a batch ended.
enum StreamEnd {
    /// The client may send more.
    More,
    /// The client closed its side.
    Closed,
    /// The stream broke (for example a message too large to decode).
    Failed(Status),
}

/// Waits for one message, then takes whatever else has already arrived, up to `max`.
async fn next_batch(
    inbound: &mut Streaming<pb::SubmitRecordsRequest>,
    max: usize,
) -> (Vec<pb::SubmitRecordsRequest>, StreamEnd) {
    let mut batch = Vec::new();
    match inbound.message().await {
        Ok(Some(m)) => batch.push(m),
        Ok(None) => return (batch, StreamEnd::Closed),
        Err(status) => return (batch, StreamEnd::Failed(status)),
    }
    while batch.len() < max {
        // Polled once: `Streaming::message` keeps its state, so dropping a
        // pending poll loses nothing. Unconstrained by Tokio's cooperative
        // budget, which would otherwise report data already received as
        // pending after about a hundred messages and cut every batch there.
        match tokio::task::unconstrained(inbound.message()).now_or_never() {
            Some(Ok(Some(m))) => batch.push(m),
            Some(Ok(None)) => return (batch, StreamEnd::Closed),
            Some(Err(status)) => return (batch, StreamEnd::Failed(status)),
            None => break,
        }
    }
    (batch, StreamEnd::More)
}

/// The span of checking submitted records, the pipeline's first step.
fn validate_span() -> tracing::Span {
    tracing::info_span!("validate")
}

/// Whether a call failed because of the record rather than the service.
fn is_rejection(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::InvalidArgument | tonic::Code::AlreadyExists | tonic::Code::PermissionDenied
    )
}

/// The hospital label of the caller's records (keys other than HOSPITAL keys have none).
fn hospital_label(caller: &Caller) -> &str {
    caller.hospital_id.as_deref().unwrap_or("")
}

/// Counts acknowledged records by outcome.
fn count_outcomes(caller: &Caller, acks: &[RecordAck]) {
    for (outcome, label) in [
        (pb::Outcome::Accepted, "accepted"),
        (pb::Outcome::Duplicate, "duplicate"),
        (pb::Outcome::Rejected, "rejected"),
    ] {
        let count = acks.iter().filter(|a| a.outcome == outcome as i32).count();
        metrics::records_ingested(label, hospital_label(caller), count as u64);
    }
}

/// A record for another hospital is PERMISSION_DENIED whatever else is wrong
/// with it; a malformed or missing hospital_id is left to validation.
fn authorize(
    caller: &Caller,
    record: Option<&pb::TransplantRecord>,
    parsed: &Result<Submission, Violations>,
) -> Result<(), Status> {
    let Some(r) = record else { return Ok(()) };
    let malformed = matches!(parsed, Err(v) if v.0.iter().any(|f| f.field == "record.hospital_id"));
    if malformed {
        Ok(())
    } else {
        check_hospital(caller, &r.hospital_id).map_err(Status::from)
    }
}

fn ack_to_proto(external_record_id: String, ack: &Ack) -> RecordAck {
    let outcome = match ack.outcome {
        Outcome::Accepted => pb::Outcome::Accepted,
        Outcome::Duplicate => pb::Outcome::Duplicate,
    };
    RecordAck {
        external_record_id,
        outcome: outcome as i32,
        record_id: ack.stored.id.0.to_string(),
        version: ack.stored.version,
        received_at: Some(timestamp(ack.stored.received_at)),
        error: None,
    }
}

fn rejected_id(external_record_id: String, status: &Status) -> RecordAck {
    RecordAck {
        external_record_id,
        outcome: pb::Outcome::Rejected as i32,
        error: Some(to_rpc_status(status)),
        ..RecordAck::default()
    }
}

fn rejected(record: Option<&pb::TransplantRecord>, status: &Status) -> RecordAck {
    rejected_id(
        record
            .map(|r| r.external_record_id.clone())
            .unwrap_or_default(),
        status,
    )
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::SubmitRecordsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl IngestService for IngestApi {
    async fn submit_record(
        &self,
        request: Request<pb::SubmitRecordRequest>,
    ) -> Result<Response<pb::SubmitRecordResponse>, Status> {
        let ack = self
            .submit_one(caller(&request)?, request.get_ref().record.as_ref())
            .await?;
        Ok(Response::new(pb::SubmitRecordResponse { ack: Some(ack) }))
    }

    type SubmitRecordsStream = AckStream;

    async fn submit_records(
        &self,
        request: Request<Streaming<pb::SubmitRecordsRequest>>,
    ) -> Result<Response<Self::SubmitRecordsStream>, Status> {
        let caller = caller(&request)?.clone();
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            tracing::warn!(key_id = %caller.key_id, "stream refused: too many open streams");
            Status::from(ApiError::TooManyStreams)
        })?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(ACK_BUFFER);
        let api = self.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                api.serve_stream(&caller, &mut inbound, &tx).await;
            }
            .instrument(tracing::Span::current()),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn amend_record(
        &self,
        request: Request<pb::AmendRecordRequest>,
    ) -> Result<Response<pb::AmendRecordResponse>, Status> {
        let req = request.get_ref();
        let parsed = submission("record", req.record.as_ref(), Utc::now());
        authorize(caller(&request)?, req.record.as_ref(), &parsed)?;
        let reason = req.reason.trim();
        let mut violations = parsed.as_ref().err().cloned().unwrap_or_default();
        if reason.is_empty() {
            violations.missing("reason");
        } else if reason.len() > MAX_REASON_LEN {
            violations.add("reason", format!("must be at most {MAX_REASON_LEN} bytes"));
        }
        violations.check_storable("reason", reason);
        let submission = match parsed {
            Ok(s) if violations.is_empty() => s,
            _ => return Err(invalid(violations)),
        };
        let external_record_id = submission.external_record_id.clone();
        let ack = self.ingestor.amend(submission, reason).await?;
        Ok(Response::new(pb::AmendRecordResponse {
            ack: Some(ack_to_proto(external_record_id, &ack)),
        }))
    }
}
