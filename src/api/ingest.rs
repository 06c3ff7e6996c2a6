//! `IngestService`: hospitals submit and amend records.

use std::pin::Pin;
use std::sync::Arc;

use chrono::Utc;
use futures::{Stream, StreamExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::domain::validation::check_note;
use crate::domain::{Caller, HospitalId, Submission, Violations};
use crate::ingest::stream::{Check, StreamLimits};
use crate::ingest::{Ack, IngestError, Ingestor, Outcome};
use crate::server::ServeOptions;
use crate::telemetry::metrics;
use crate::throttled_warn;

use super::auth::{caller, check_hospital};
use super::quota::TenantQuota;
use super::status::{ApiError, invalid, to_rpc_status};
use crate::wire::convert::{submission, timestamp};
use crate::wire::pb::ingest_service_server::IngestService;
use crate::wire::pb::{self, RecordAck};

/// The most acknowledgements buffered ahead of a slow reader.
const ACK_BUFFER: usize = 64;

/// The longest amendment reason accepted.
const MAX_REASON_LEN: usize = 2000;

/// The gRPC face of the ingest pipeline.
#[derive(Clone, Debug)]
pub struct IngestApi {
    ingestor: Ingestor,
    streams: Arc<Semaphore>,
    tenant_streams: Arc<TenantQuota>,
    stream_limits: StreamLimits,
}

impl IngestApi {
    /// Serves `ingestor` under the stream limits of `limits`.
    pub fn new(ingestor: Ingestor, limits: &ServeOptions) -> Self {
        Self {
            ingestor,
            streams: Arc::new(Semaphore::new(limits.max_concurrent_streams)),
            tenant_streams: TenantQuota::new(limits.max_streams_per_tenant),
            stream_limits: StreamLimits {
                max_records: limits.max_stream_records,
                batch_size: limits.ingest_batch_size.max(1),
                idle_timeout: limits.stream_idle_timeout,
            },
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
            Ok(ack) => count_outcome(caller, ack),
            Err(status) if is_rejection(status.code()) => {
                metrics::records_ingested("rejected", hospital_label(caller), 1);
            }
            Err(_) => {}
        }
        result
    }
}

/// How a stream's messages become submissions: decoded, validated and
/// checked against the caller's hospital, or refused with an
/// acknowledgement that says why.
#[derive(Clone, Debug)]
struct StreamCheck {
    caller: Caller,
}

impl Check for StreamCheck {
    type Message = pb::SubmitRecordsRequest;
    type Refusal = Box<RecordAck>;

    fn check(
        &self,
        messages: &[pb::SubmitRecordsRequest],
    ) -> Vec<Result<Submission, Box<RecordAck>>> {
        let now = Utc::now();
        messages
            .iter()
            .map(|message| {
                let record = message.record.as_ref();
                let parsed = submission("record", record, now);
                authorize(&self.caller, record, &parsed)
                    .and_then(|()| parsed.map_err(invalid))
                    .map_err(|status| Box::new(rejected(record, &status)))
            })
            .collect()
    }

    fn refuse(&self, external_record_id: String, error: IngestError) -> Box<RecordAck> {
        Box::new(rejected_id(external_record_id, &Status::from(error)))
    }
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
    caller.hospital_id.as_ref().map_or("", HospitalId::as_str)
}

/// Counts an acknowledged record by its outcome.
fn count_outcome(caller: &Caller, ack: &RecordAck) {
    let outcome = match pb::Outcome::try_from(ack.outcome) {
        Ok(pb::Outcome::Accepted) => "accepted",
        Ok(pb::Outcome::Duplicate) => "duplicate",
        _ => "rejected",
    };
    metrics::records_ingested(outcome, hospital_label(caller), 1);
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
        let tenant = caller.tenant();
        let tenant_permit = self.tenant_streams.try_acquire(&tenant).ok_or_else(|| {
            throttled_warn!(%tenant, key_id = %caller.key_id, "stream refused: the tenant's open streams are at their quota");
            Status::from(ApiError::TenantTooManyStreams {
                limit: self.tenant_streams.limit(),
            })
        })?;
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            throttled_warn!(key_id = %caller.key_id, "stream refused: too many open streams");
            Status::from(ApiError::TooManyStreams)
        })?;
        let (tx, rx) = mpsc::channel(ACK_BUFFER);
        let (ingestor, limits) = (self.ingestor.clone(), self.stream_limits);
        let check = StreamCheck {
            caller: caller.clone(),
        };
        let messages = request.into_inner();
        tokio::spawn(
            async move {
                // The stream counts among the open ones until its batches are stored.
                let _permits = (permit, tenant_permit);
                ingestor.submit_stream(messages, check, limits, tx).await;
            }
            .instrument(tracing::Span::current()),
        );
        let responses = ReceiverStream::new(rx)
            .enumerate()
            .map(move |(sequence, answer)| {
                let ack = match answer.map_err(Status::from)? {
                    Ok(stored) => ack_to_proto(stored.external_record_id, &stored.ack),
                    Err(refused) => *refused,
                };
                count_outcome(&caller, &ack);
                Ok(pb::SubmitRecordsResponse {
                    sequence: sequence as u64,
                    ack: Some(ack),
                })
            });
        Ok(Response::new(Box::pin(responses)))
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
        check_note(&mut violations, "reason", reason, MAX_REASON_LEN, true);
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
