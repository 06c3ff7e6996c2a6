//! `IngestService`: hospitals submit and amend records.

use std::pin::Pin;
use std::sync::Arc;

use chrono::Utc;
use futures::Stream;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::domain::{Caller, Submission, Violations};
use crate::ingest::{Ack, Ingestor, Outcome};

use super::auth::{caller, check_hospital};
use super::convert::{submission, timestamp};
use super::pb::ingest_service_server::IngestService;
use super::pb::{self, RecordAck};
use super::status::{invalid, to_rpc_status};

/// The most acknowledgements buffered ahead of a slow reader.
const ACK_BUFFER: usize = 64;

/// The longest amendment reason accepted.
const MAX_REASON_LEN: usize = 2000;

/// The gRPC face of the ingest pipeline.
#[derive(Clone, Debug)]
pub struct IngestApi {
    ingestor: Ingestor,
    streams: Arc<Semaphore>,
    max_stream_records: u64,
}

impl IngestApi {
    /// Serves `ingestor`, with at most `max_streams` open `SubmitRecords`
    /// streams of at most `max_stream_records` records each.
    pub fn new(ingestor: Ingestor, max_streams: usize, max_stream_records: u64) -> Self {
        Self {
            ingestor,
            streams: Arc::new(Semaphore::new(max_streams)),
            max_stream_records,
        }
    }

    /// Validates and stores one record.
    async fn submit_one(
        &self,
        caller: &Caller,
        record: Option<&pb::TransplantRecord>,
    ) -> Result<RecordAck, Status> {
        let parsed = submission("record", record, Utc::now());
        authorize(caller, record, &parsed)?;
        let submission = parsed.map_err(invalid)?;
        let external_record_id = submission.external_record_id.clone();
        let ack = self.ingestor.submit(submission).await?;
        Ok(ack_to_proto(external_record_id, &ack))
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
        check_hospital(caller, &r.hospital_id)
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

fn rejected(record: Option<&pb::TransplantRecord>, status: &Status) -> RecordAck {
    RecordAck {
        external_record_id: record
            .map(|r| r.external_record_id.clone())
            .unwrap_or_default(),
        outcome: pb::Outcome::Rejected as i32,
        error: Some(to_rpc_status(status)),
        ..RecordAck::default()
    }
}

/// Whether a failure is about the record (acknowledged as rejected) rather
/// than about the service (which ends the stream so the client retries).
fn is_record_error(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::InvalidArgument | tonic::Code::AlreadyExists | tonic::Code::PermissionDenied
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
            Status::resource_exhausted("too many SubmitRecords streams are open; retry later")
        })?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(ACK_BUFFER);
        let api = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut sequence = 0u64;
            loop {
                if sequence == api.max_stream_records {
                    let limit = api.max_stream_records;
                    let status = Status::resource_exhausted(format!(
                        "a stream carries at most {limit} records; send the rest on a new stream"
                    ));
                    let _ = tx.send(Err(status)).await;
                    break;
                }
                let message = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let record = message.record.as_ref();
                let ack = match api.submit_one(&caller, record).await {
                    Ok(ack) => ack,
                    Err(status) if is_record_error(&status) => rejected(record, &status),
                    Err(status) => {
                        // Nothing after this record was looked at: the client
                        // resends from the first unacknowledged record.
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let response = pb::SubmitRecordsResponse {
                    sequence,
                    ack: Some(ack),
                };
                if tx.send(Ok(response)).await.is_err() {
                    break; // the client went away
                }
                sequence += 1;
            }
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::status::invalid_field;

    #[test]
    fn only_record_errors_are_acknowledged_as_rejected() {
        assert!(is_record_error(&invalid_field(
            "record.organ",
            "is required"
        )));
        assert!(is_record_error(&Status::already_exists("x")));
        assert!(!is_record_error(&Status::unavailable("db down")));
        assert!(!is_record_error(&Status::internal("x")));
    }
}
