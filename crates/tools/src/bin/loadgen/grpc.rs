//! The gRPC side: clients that carry the bearer key, clinic registration,
//! and the two measured phases (unary calls at a concurrency, one stream).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use transplant_audit_core::wire::pb;
use transplant_audit_core::wire::pb::ingest_service_client::IngestServiceClient;
use transplant_audit_core::wire::pb::registry_service_client::RegistryServiceClient;

use super::report::Outcome;
use super::synth::ClinicSpec;

/// Deadline of one unary call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Records queued ahead of the stream's transport.
const STREAM_BUFFER: usize = 256;

/// Adds `authorization: Bearer <key>` to every call when a key is configured.
#[derive(Clone, Debug)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// The interceptor for `key`; without one, calls carry no credentials.
    pub fn new(key: Option<&str>) -> anyhow::Result<Self> {
        let value = key
            .map(|k| format!("Bearer {}", k.trim()).parse::<MetadataValue<Ascii>>())
            .transpose()
            .map_err(|_| anyhow!("the API key cannot be sent as gRPC metadata"))?;
        Ok(Self(value.map(|mut v| {
            v.set_sensitive(true);
            v
        })))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The ingest client the measured phases use.
pub type Ingest = IngestServiceClient<InterceptedService<Channel, Bearer>>;
/// The registry client clinics are registered with.
pub type Registry = RegistryServiceClient<InterceptedService<Channel, Bearer>>;

/// Opens one HTTP/2 connection, which every client and call shares.
pub async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(endpoint.to_owned())
        .with_context(|| format!("endpoint {endpoint:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {endpoint}"))
}

/// Registers (or re-confirms) every clinic the records name.
pub async fn register_clinics(
    registry: &mut Registry,
    clinics: &[ClinicSpec],
) -> anyhow::Result<()> {
    for clinic in clinics {
        let request = pb::UpsertClinicRequest {
            clinic: Some(clinic.to_proto()),
        };
        registry
            .upsert_clinic(request)
            .await
            .map_err(|s| explain(&s, &format!("registering clinic {}", clinic.clinic_id)))?;
    }
    Ok(())
}

/// Counts an acknowledgement: only ACCEPTED for the expected record is a success.
fn check(out: &mut Outcome, expected_id: &str, ack: Option<&pb::RecordAck>) {
    check_for(out, expected_id, ack, pb::Outcome::Accepted);
}

/// Counts an acknowledgement: only `expected` for the expected record is a success.
fn check_for(
    out: &mut Outcome,
    expected_id: &str,
    ack: Option<&pb::RecordAck>,
    expected: pb::Outcome,
) {
    let Some(ack) = ack else {
        out.failures
            .add(format!("{expected_id}: no acknowledgement"));
        return;
    };
    let outcome = pb::Outcome::try_from(ack.outcome).unwrap_or(pb::Outcome::Unspecified);
    if outcome == expected && ack.external_record_id == expected_id {
        out.accepted += 1;
        return;
    }
    let error = ack.error.as_ref().map_or("", |e| e.message.as_str());
    out.failures.add(format!(
        "{expected_id}: {} for {:?} {error}",
        outcome.as_str_name(),
        ack.external_record_id
    ));
}

/// Submits every record with SubmitRecord from `concurrency` callers pulling from one queue.
pub async fn unary(
    client: &Ingest,
    records: Arc<Vec<pb::TransplantRecord>>,
    concurrency: usize,
) -> anyhow::Result<Outcome> {
    from_one_queue(concurrency, "unary", |next| {
        caller(client.clone(), records.clone(), next)
    })
    .await
}

/// Runs `concurrency` callers that `spawn` makes, all taking records from
/// one queue (the index they share), and merges what they report.
async fn from_one_queue<F, C>(
    concurrency: usize,
    kind: &'static str,
    spawn: F,
) -> anyhow::Result<Outcome>
where
    F: Fn(Arc<AtomicUsize>) -> C,
    C: Future<Output = anyhow::Result<Outcome>> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let callers: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(spawn(next.clone())))
        .collect();
    let mut outcome = Outcome::default();
    for caller in callers {
        outcome.merge(
            caller
                .await
                .with_context(|| format!("a {kind} caller panicked"))??,
        );
    }
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

/// One unary caller: takes the next record until none is left.
async fn caller(
    mut client: Ingest,
    records: Arc<Vec<pb::TransplantRecord>>,
    next: Arc<AtomicUsize>,
) -> anyhow::Result<Outcome> {
    let mut out = Outcome::default();
    while let Some(record) = records.get(next.fetch_add(1, Ordering::Relaxed)) {
        let mut request = Request::new(pb::SubmitRecordRequest {
            record: Some(record.clone()),
        });
        request.set_timeout(CALL_TIMEOUT);
        let sent = Instant::now();
        let result = client.submit_record(request).await;
        out.latencies.push(sent.elapsed());
        match result {
            Ok(response) => check(
                &mut out,
                &record.external_record_id,
                response.get_ref().ack.as_ref(),
            ),
            Err(status) if is_auth(&status) => {
                next.store(records.len(), Ordering::Relaxed); // stops the other callers
                return Err(explain(&status, "SubmitRecord"));
            }
            Err(status) => out.failures.add(format!(
                "{}: {:?} {}",
                record.external_record_id,
                status.code(),
                status.message()
            )),
        }
    }
    Ok(out)
}

/// How records already stored go again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Unchanged, through SubmitRecord: each must be a DUPLICATE.
    Resubmit,
    /// Corrected (its cold ischemia a minute longer), through AmendRecord:
    /// each must be ACCEPTED.
    Amend,
}

/// Sends every record again as `how` says, from `concurrency` callers
/// pulling from one queue; a success is the acknowledgement `how` expects.
pub async fn replay(
    client: &Ingest,
    records: Arc<Vec<pb::TransplantRecord>>,
    how: Replay,
    concurrency: usize,
) -> anyhow::Result<Outcome> {
    from_one_queue(concurrency, "replaying", |next| {
        replayer(client.clone(), records.clone(), how, next)
    })
    .await
}

/// One replaying caller: takes the next record until none is left.
async fn replayer(
    mut client: Ingest,
    records: Arc<Vec<pb::TransplantRecord>>,
    how: Replay,
    next: Arc<AtomicUsize>,
) -> anyhow::Result<Outcome> {
    let mut out = Outcome::default();
    while let Some(record) = records.get(next.fetch_add(1, Ordering::Relaxed)) {
        let sent = Instant::now();
        let (result, call, expected) = match how {
            Replay::Resubmit => {
                let mut request = Request::new(pb::SubmitRecordRequest {
                    record: Some(record.clone()),
                });
                request.set_timeout(CALL_TIMEOUT);
                let result = client
                    .submit_record(request)
                    .await
                    .map(|r| r.into_inner().ack);
                (result, "SubmitRecord", pb::Outcome::Duplicate)
            }
            Replay::Amend => {
                let mut corrected = record.clone();
                corrected.cold_ischemia_minutes =
                    Some(corrected.cold_ischemia_minutes.unwrap_or(60) + 1);
                let mut request = Request::new(pb::AmendRecordRequest {
                    record: Some(corrected),
                    reason: "loadgen: cold ischemia corrected".to_owned(),
                });
                request.set_timeout(CALL_TIMEOUT);
                let result = client
                    .amend_record(request)
                    .await
                    .map(|r| r.into_inner().ack);
                (result, "AmendRecord", pb::Outcome::Accepted)
            }
        };
        out.latencies.push(sent.elapsed());
        match result {
            Ok(ack) => check_for(&mut out, &record.external_record_id, ack.as_ref(), expected),
            Err(status) if is_auth(&status) => {
                next.store(records.len(), Ordering::Relaxed); // stops the other callers
                return Err(explain(&status, call));
            }
            Err(status) => out.failures.add(format!(
                "{}: {call}: {:?} {}",
                record.external_record_id,
                status.code(),
                status.message()
            )),
        }
    }
    Ok(out)
}

/// Sends every record down one SubmitRecords stream while reading the
/// acknowledgements, checking each is ACCEPTED, for the right record, in order.
/// Latencies run from handing a record to the transport to its acknowledgement.
pub async fn stream(
    client: &Ingest,
    records: Arc<Vec<pb::TransplantRecord>>,
) -> anyhow::Result<Outcome> {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let started = Instant::now();
    let feed = records.clone();
    let sender = tokio::spawn(async move {
        let mut sent_at = Vec::with_capacity(feed.len());
        for record in feed.iter() {
            let message = pb::SubmitRecordsRequest {
                record: Some(record.clone()),
            };
            if tx.send(message).await.is_err() {
                break; // the call ended
            }
            sent_at.push(Instant::now());
        }
        sent_at
    });
    let response = client
        .clone()
        .submit_records(ReceiverStream::new(rx))
        .await
        .map_err(|s| explain(&s, "SubmitRecords"))?;
    let mut acks = response.into_inner();
    let mut acked_at = Vec::with_capacity(records.len());
    let mut out = Outcome::default();
    loop {
        match acks.message().await {
            Ok(Some(message)) => {
                let position = acked_at.len();
                acked_at.push(Instant::now());
                if message.sequence != position as u64 {
                    out.failures.add(format!(
                        "ack {position} carries sequence {}",
                        message.sequence
                    ));
                }
                let expected = records
                    .get(position)
                    .map_or("", |r| r.external_record_id.as_str());
                check(&mut out, expected, message.ack.as_ref());
            }
            Ok(None) => break,
            Err(status) if is_auth(&status) => return Err(explain(&status, "SubmitRecords")),
            Err(status) => {
                out.failures.add(format!(
                    "stream ended after {} acknowledgements: {:?} {}",
                    acked_at.len(),
                    status.code(),
                    status.message()
                ));
                break;
            }
        }
    }
    out.elapsed = started.elapsed();
    drop(acks); // ends the call, so a blocked sender returns
    let missing = records.len().saturating_sub(acked_at.len());
    if missing > 0 {
        out.failures
            .add_many(missing, format!("{missing} records never acknowledged"));
    }
    let sent_at = sender.await.context("the stream's sender panicked")?;
    out.latencies = acked_at
        .iter()
        .zip(&sent_at)
        .map(|(acked, sent)| acked.saturating_duration_since(*sent))
        .collect();
    Ok(out)
}

fn is_auth(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unauthenticated | Code::PermissionDenied
    )
}

/// A failed call as an error, with a hint when credentials are the problem.
pub fn explain(status: &Status, what: &str) -> anyhow::Error {
    let hint = match status.code() {
        Code::Unauthenticated => {
            "; pass a key with --api-key (or TRANSPLANT_AUDIT_API_KEY), see README.md for creating one"
        }
        Code::PermissionDenied => {
            "; registering clinics needs an ADMIN key (--admin-key), submitting a HOSPITAL key \
             whose hospital is given with --hospital-id"
        }
        _ => "",
    };
    anyhow!("{what}: {:?}: {}{hint}", status.code(), status.message())
}
