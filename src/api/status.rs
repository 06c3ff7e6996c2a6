//! The one place where errors become gRPC statuses.
//!
//! Every way a call can fail is an [`ApiError`]; each maps to one code, one
//! `google.rpc.ErrorInfo` reason (so clients branch on the reason, never on
//! the message) and, where waiting helps, a `google.rpc.RetryInfo` delay.
//! Internal errors are logged here and answered with a generic message: a
//! database error's text never reaches a caller.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use prost::Message;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::audit::AuditError;
use crate::domain::case::CaseRefusal;
use crate::domain::{FlagStatus, Role, Violations};
use crate::export::ExportError;
use crate::ingest::IngestError;
use crate::ingest::stream::StreamError;
use crate::investigation::InvestigationError;
use crate::rescan::RescanError;
use crate::store::cases::CaseError;
use crate::store::federation::PeerError;
use crate::store::{StoreError, TriageError};
use crate::watch::WatchEnd;

/// The `domain` of every `google.rpc.ErrorInfo` this service sends.
pub const ERROR_DOMAIN: &str = "transplant-audit";

/// The most field violations one status carries. A record has fewer fields;
/// the bound keeps a hostile request's answer inside HTTP/2 trailer limits
/// (16 KiB by default), past which the client sees a protocol error instead.
pub(crate) const MAX_REPORTED_VIOLATIONS: usize = 48;

/// The most field names the summary message lists.
const MAX_SUMMARY_FIELDS: usize = 10;

/// The longest description carried, in bytes (some echo the input).
const MAX_DESCRIPTION_BYTES: usize = 120;

/// How long a client should wait before retrying when the database is down
/// or a limit is reached: about one health-check interval.
const RETRY_DELAY: Duration = Duration::from_secs(2);

/// What a `NOT_FOUND` did not find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// A flag, by id.
    Flag,
    /// A flag a case change names.
    FlagId(i64),
    /// An investigation case.
    Case,
    /// A registry entry, by clinic id.
    Clinic(String),
    /// An API key, by key id.
    ApiKey,
    /// A rescan run, by id.
    RescanRun(i64),
    /// A federation peer, by name.
    FederationPeer(String),
    /// A stored record, by the service's id.
    StoredRecord,
    /// A hospital's record, by its own id.
    Record {
        /// The hospital.
        hospital_id: String,
        /// The hospital's record id.
        external_record_id: String,
    },
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Flag => f.write_str("flag not found"),
            Resource::FlagId(id) => write!(f, "flag {id} not found"),
            Resource::Case => f.write_str("case not found"),
            Resource::Clinic(id) => write!(f, "clinic {id:?} is not registered"),
            Resource::ApiKey => f.write_str("no such API key"),
            Resource::RescanRun(run) => write!(f, "no rescan run {run}"),
            Resource::FederationPeer(name) => write!(f, "no peer named {name:?} is configured"),
            Resource::StoredRecord => f.write_str("record not found"),
            Resource::Record {
                hospital_id,
                external_record_id,
            } => write!(
                f,
                "record {external_record_id:?} of hospital {hospital_id:?} does not exist"
            ),
        }
    }
}

/// Every way a call fails, as its caller is told.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Fields of the request are invalid; each is named.
    #[error("{}", summary(.0))]
    InvalidFields(Violations),
    /// No API key came with the call.
    #[error("an API key is required: authorization: Bearer <key>")]
    KeyMissing,
    /// The key is not one of ours, or no longer usable.
    #[error("the API key is unknown, expired or revoked")]
    KeyRefused,
    /// The key's role may not call the method.
    #[error("a {role} key may not call {method}")]
    RoleNotAllowed {
        /// The caller's role.
        role: Role,
        /// The method's gRPC path.
        method: String,
    },
    /// A hospital key acting for another hospital.
    #[error("this key submits only for its own hospital; hospital_id names another")]
    OtherHospital,
    /// A hospital key on a connection without its hospital's certificate.
    #[error("a hospital key is accepted only with a client certificate naming its hospital")]
    CertificateMismatch,
    /// Something the request names does not exist.
    #[error("{0}")]
    NotFound(Resource),
    /// A resubmitted record id with other content.
    #[error(
        "record {external_record_id:?} of hospital {hospital_id:?} was already submitted with \
         different content; send a correction with AmendRecord"
    )]
    RecordConflict {
        /// The hospital.
        hospital_id: String,
        /// The hospital's record id.
        external_record_id: String,
    },
    /// The etag is not the flag's current revision: someone changed it.
    #[error("the flag changed since it was read (now at etag {current}); read it again")]
    StaleEtag {
        /// The current etag.
        current: i64,
    },
    /// The etag is not the case's current revision: someone changed it.
    #[error("the case changed since it was read (now at etag {current}); read it again")]
    StaleCaseEtag {
        /// The current etag.
        current: i64,
    },
    /// A flag to put in a case is in another one.
    #[error("flag {flag_id} is in case {case_id} already; a flag is in at most one case")]
    FlagInAnotherCase {
        /// The flag.
        flag_id: i64,
        /// The case holding it.
        case_id: i64,
    },
    /// The case as it stands does not allow the change.
    #[error("{0}")]
    CaseChangeRefused(CaseRefusal),
    /// Concurrent writers kept taking the same records first.
    #[error("concurrent submissions of the same records kept colliding; retry")]
    Contended,
    /// The flag's status does not allow the requested one.
    #[error("cannot move a flag from {from} to {to}")]
    IllegalTransition {
        /// The flag's status.
        from: FlagStatus,
        /// The requested status.
        to: FlagStatus,
    },
    /// A CRITICAL flag's dismissal approved by the principal who proposed it.
    #[error("dismissing a CRITICAL flag needs a second auditor to approve the proposal")]
    SecondAuditorRequired,
    /// A CRITICAL flag's dismissal approved with a key from the administrator
    /// who issued the proposer's, or by one who issued the other's key.
    #[error(
        "dismissing a CRITICAL flag needs two principals whose keys were not issued by one \
         administrator, nor by each other"
    )]
    OneIssuer,
    /// Evidence the call builds on was changed behind the service's back.
    #[error("this evidence does not match its ledger; an administrator must run verify")]
    EvidenceTampered,
    /// A rescan run to resume that already finished.
    #[error("rescan run {0} is already complete")]
    RescanFinished(i64),
    /// A rescan run to resume that names a rule this build does not know.
    #[error("rescan run {run} names unknown rule {rule:?}")]
    RescanRuleUnknown {
        /// The run.
        run: i64,
        /// The rule id it names.
        rule: String,
    },
    /// The server has as many calls in flight as it takes.
    #[error("the server is at its limit of calls in flight; retry with backoff")]
    TooManyCalls,
    /// The server has as many `SubmitRecords` streams open as it takes.
    #[error("too many SubmitRecords streams are open; retry later")]
    TooManyStreams,
    /// The caller's tenant (its hospital, or the key) has as many calls in
    /// flight as its quota allows.
    #[error(
        "this hospital or key has {limit} calls in flight, its quota; retry once one has ended"
    )]
    TenantTooManyCalls {
        /// Calls in flight per tenant.
        limit: usize,
    },
    /// The caller's tenant has as many `SubmitRecords` streams open as its
    /// quota allows.
    #[error(
        "this hospital or key has {limit} SubmitRecords streams open, its quota; retry once one has ended"
    )]
    TenantTooManyStreams {
        /// Open streams per tenant.
        limit: usize,
    },
    /// As many `grpc.health.v1.Health/Watch` streams are open as the server takes.
    #[error("{limit} health watches are open, as many as the server takes; use Health/Check")]
    TooManyHealthWatches {
        /// Health watches at once.
        limit: usize,
    },
    /// A stream carried more records than one stream may.
    #[error("a stream carries at most {limit} records; send the rest on a new stream")]
    StreamTooLong {
        /// Records one stream may carry.
        limit: u64,
    },
    /// A stream's client sent nothing for too long.
    #[error(
        "nothing arrived on this stream for {}; it ends: send the rest on a new stream",
        secs(*.timeout)
    )]
    StreamIdle {
        /// How long a stream may wait for its next message.
        timeout: Duration,
    },
    /// A call's request message did not arrive in time.
    #[error("the request message did not arrive within {}", secs(*.timeout))]
    RequestMessageTimeout {
        /// How long a call may wait for its request message.
        timeout: Duration,
    },
    /// The database cannot be reached.
    #[error("the database is unavailable; retry later")]
    Unavailable,
    /// The server is stopping; another replica (or this one, restarted) answers.
    #[error("the server is shutting down; retry, resuming from your last cursor")]
    ShuttingDown,
    /// A federation peer of that name is configured already.
    #[error("a peer named {0:?} is configured already; remove it first")]
    PeerExists(String),
    /// A federation client whose certificate chains to no configured
    /// peer's CA (or that presented none).
    #[error(
        "this registry federates only with configured peers; no peer's CA signed your certificate"
    )]
    NotAPeer,
    /// A peer asked for more elements today than its ceiling allows.
    #[error("{used} of your {ceiling} elements a day are raised already; retry tomorrow (UTC)")]
    FederationCeiling {
        /// Elements raised for the peer today.
        used: u64,
        /// Its daily ceiling.
        ceiling: u64,
    },
    /// Anything else; the cause is in the server's log, never in the answer.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// The code, the `ErrorInfo` reason, and the retry delay where a retry helps.
    pub fn parts(&self) -> (Code, &'static str, Option<Duration>) {
        use ApiError::*;
        match self {
            InvalidFields(_) => (Code::InvalidArgument, "INVALID_FIELDS", None),
            KeyMissing => (Code::Unauthenticated, "API_KEY_MISSING", None),
            KeyRefused => (Code::Unauthenticated, "API_KEY_REFUSED", None),
            RoleNotAllowed { .. } => (Code::PermissionDenied, "ROLE_NOT_ALLOWED", None),
            OtherHospital => (Code::PermissionDenied, "OTHER_HOSPITAL", None),
            CertificateMismatch => (Code::PermissionDenied, "CLIENT_CERTIFICATE_MISMATCH", None),
            NotFound(Resource::Flag | Resource::FlagId(_)) => {
                (Code::NotFound, "FLAG_NOT_FOUND", None)
            }
            NotFound(Resource::Case) => (Code::NotFound, "CASE_NOT_FOUND", None),
            NotFound(Resource::Clinic(_)) => (Code::NotFound, "CLINIC_NOT_FOUND", None),
            NotFound(Resource::ApiKey) => (Code::NotFound, "API_KEY_NOT_FOUND", None),
            NotFound(Resource::RescanRun(_)) => (Code::NotFound, "RESCAN_RUN_NOT_FOUND", None),
            NotFound(Resource::FederationPeer(_)) => {
                (Code::NotFound, "FEDERATION_PEER_NOT_FOUND", None)
            }
            NotFound(Resource::Record { .. }) => (Code::NotFound, "RECORD_NOT_FOUND", None),
            NotFound(Resource::StoredRecord) => (Code::NotFound, "RECORD_ID_NOT_FOUND", None),
            RecordConflict { .. } => (Code::AlreadyExists, "RECORD_CONFLICT", None),
            StaleEtag { .. } | StaleCaseEtag { .. } => (Code::Aborted, "STALE_ETAG", None),
            FlagInAnotherCase { .. } => (Code::FailedPrecondition, "FLAG_IN_ANOTHER_CASE", None),
            CaseChangeRefused(
                CaseRefusal::IllegalTransition { .. } | CaseRefusal::WrongFrom { .. },
            ) => (Code::FailedPrecondition, "ILLEGAL_TRANSITION", None),
            CaseChangeRefused(_) => (Code::FailedPrecondition, "CASE_CHANGE_REFUSED", None),
            Contended => (Code::Aborted, "WRITE_CONTENTION", Some(Duration::ZERO)),
            IllegalTransition { .. } => (Code::FailedPrecondition, "ILLEGAL_TRANSITION", None),
            SecondAuditorRequired => (Code::FailedPrecondition, "SECOND_AUDITOR_REQUIRED", None),
            OneIssuer => (Code::FailedPrecondition, "ONE_ISSUER", None),
            EvidenceTampered => (Code::FailedPrecondition, "EVIDENCE_TAMPERED", None),
            RescanFinished(_) => (Code::FailedPrecondition, "RESCAN_RUN_FINISHED", None),
            RescanRuleUnknown { .. } => (Code::FailedPrecondition, "RESCAN_RULE_UNKNOWN", None),
            TooManyCalls => (Code::ResourceExhausted, "TOO_MANY_CALLS", Some(RETRY_DELAY)),
            TooManyStreams => (
                Code::ResourceExhausted,
                "TOO_MANY_STREAMS",
                Some(RETRY_DELAY),
            ),
            TenantTooManyCalls { .. } => (
                Code::ResourceExhausted,
                "TENANT_TOO_MANY_CALLS",
                Some(RETRY_DELAY),
            ),
            TenantTooManyStreams { .. } => (
                Code::ResourceExhausted,
                "TENANT_TOO_MANY_STREAMS",
                Some(RETRY_DELAY),
            ),
            TooManyHealthWatches { .. } => (
                Code::ResourceExhausted,
                "TOO_MANY_HEALTH_WATCHES",
                Some(RETRY_DELAY),
            ),
            // A new stream helps, not waiting.
            StreamTooLong { .. } => (Code::ResourceExhausted, "STREAM_TOO_LONG", None),
            // The client's own silence: sending, not waiting, helps.
            StreamIdle { .. } => (Code::DeadlineExceeded, "STREAM_IDLE", None),
            RequestMessageTimeout { .. } => {
                (Code::DeadlineExceeded, "REQUEST_MESSAGE_TIMEOUT", None)
            }
            Unavailable => (Code::Unavailable, "DATABASE_UNAVAILABLE", Some(RETRY_DELAY)),
            ShuttingDown => (Code::Unavailable, "SHUTTING_DOWN", Some(RETRY_DELAY)),
            PeerExists(_) => (Code::AlreadyExists, "FEDERATION_PEER_EXISTS", None),
            NotAPeer => (Code::PermissionDenied, "NOT_A_PEER", None),
            FederationCeiling { .. } => (Code::ResourceExhausted, "FEDERATION_CEILING", None),
            Internal => (Code::Internal, "INTERNAL", None),
        }
    }

    /// What the reason's `ErrorInfo.metadata` carries besides it.
    fn metadata(&self) -> HashMap<String, String> {
        match self {
            ApiError::StaleEtag { current } | ApiError::StaleCaseEtag { current } => {
                [("etag".to_owned(), current.to_string())].into()
            }
            ApiError::FlagInAnotherCase { case_id, .. } => {
                [("case_id".to_owned(), case_id.to_string())].into()
            }
            ApiError::StreamTooLong { limit } => {
                [("max_stream_records".to_owned(), limit.to_string())].into()
            }
            ApiError::TenantTooManyCalls { limit } => {
                [("max_calls_per_tenant".to_owned(), limit.to_string())].into()
            }
            ApiError::TenantTooManyStreams { limit } => {
                [("max_streams_per_tenant".to_owned(), limit.to_string())].into()
            }
            ApiError::TooManyHealthWatches { limit } => {
                [("max_health_watches".to_owned(), limit.to_string())].into()
            }
            ApiError::StreamIdle { timeout } => {
                [("stream_idle_timeout_secs".to_owned(), secs_value(*timeout))].into()
            }
            ApiError::RequestMessageTimeout { timeout } => [(
                "request_message_timeout_secs".to_owned(),
                secs_value(*timeout),
            )]
            .into(),
            ApiError::FederationCeiling { used, ceiling } => [
                ("elements_raised_today".to_owned(), used.to_string()),
                ("federation_daily_ceiling".to_owned(), ceiling.to_string()),
            ]
            .into(),
            _ => HashMap::new(),
        }
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        let (code, reason, retry) = err.parts();
        let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, err.metadata());
        if let Some(delay) = retry {
            details.set_retry_info(Some(delay));
        }
        if let ApiError::InvalidFields(violations) = &err {
            for v in violations.0.iter().take(MAX_REPORTED_VIOLATIONS) {
                details.add_bad_request_violation(
                    v.field.clone(),
                    bounded(&v.description, MAX_DESCRIPTION_BYTES),
                );
            }
        }
        Status::with_error_details(code, err.to_string(), details)
    }
}

impl From<Violations> for ApiError {
    fn from(violations: Violations) -> Self {
        ApiError::InvalidFields(violations)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        if matches!(err, StoreError::Contended) {
            ApiError::Contended
        } else if matches!(err, StoreError::Tampered(_)) {
            // The store logged what and where; the caller learns only that.
            ApiError::EvidenceTampered
        } else if matches!(err, StoreError::Unreachable) {
            // The health check logged the outage once; calls are refused quietly.
            ApiError::Unavailable
        } else if err.is_unavailable() {
            tracing::warn!(error = %err, "database unavailable");
            ApiError::Unavailable
        } else {
            tracing::error!(error = %err, "database error");
            ApiError::Internal
        }
    }
}

impl From<PeerError> for ApiError {
    fn from(err: PeerError) -> Self {
        match err {
            PeerError::Exists(name) => ApiError::PeerExists(name),
            PeerError::Unknown(name) => ApiError::NotFound(Resource::FederationPeer(name)),
            PeerError::Store(e) => e.into(),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(err: IngestError) -> Self {
        match err {
            IngestError::Conflict {
                hospital_id,
                external_record_id,
            } => ApiError::RecordConflict {
                hospital_id,
                external_record_id,
            },
            IngestError::NotFound {
                hospital_id,
                external_record_id,
            } => ApiError::NotFound(Resource::Record {
                hospital_id,
                external_record_id,
            }),
            // A hospital must not learn that an auditor's evidence is in
            // question: the store logged it, the hospital sees an outage.
            IngestError::Store(StoreError::Tampered(_)) => ApiError::Internal,
            IngestError::Store(e) => e.into(),
        }
    }
}

impl From<TriageError> for ApiError {
    fn from(err: TriageError) -> Self {
        match err {
            TriageError::NotFound => ApiError::NotFound(Resource::Flag),
            TriageError::Stale { current } => ApiError::StaleEtag { current },
            TriageError::IllegalTransition { from, to } => ApiError::IllegalTransition { from, to },
            TriageError::SecondAuditorRequired => ApiError::SecondAuditorRequired,
            TriageError::OneIssuer => ApiError::OneIssuer,
            TriageError::Tampered => ApiError::EvidenceTampered,
            TriageError::NoteRequired(_) => {
                let mut v = Violations::default();
                v.add("note", err.to_string());
                ApiError::InvalidFields(v)
            }
            TriageError::Store(e) => e.into(),
        }
    }
}

impl From<CaseError> for ApiError {
    fn from(err: CaseError) -> Self {
        match err {
            CaseError::NotFound => ApiError::NotFound(Resource::Case),
            CaseError::FlagNotFound(id) => ApiError::NotFound(Resource::FlagId(id)),
            CaseError::FlagInAnotherCase { flag_id, case_id } => {
                ApiError::FlagInAnotherCase { flag_id, case_id }
            }
            CaseError::Stale { current } => ApiError::StaleCaseEtag { current },
            CaseError::Refused(refusal) => ApiError::CaseChangeRefused(refusal),
            CaseError::Tampered => ApiError::EvidenceTampered,
            CaseError::Store(e) => e.into(),
        }
    }
}

impl From<AuditError> for ApiError {
    fn from(err: AuditError) -> Self {
        match err {
            AuditError::FlagNotFound => ApiError::NotFound(Resource::Flag),
            AuditError::Store(e) => e.into(),
        }
    }
}

impl From<InvestigationError> for ApiError {
    fn from(err: InvestigationError) -> Self {
        match err {
            InvestigationError::RecordNotFound => ApiError::NotFound(Resource::StoredRecord),
            InvestigationError::FlagNotFound => ApiError::NotFound(Resource::Flag),
            InvestigationError::ClinicNotFound(id) => ApiError::NotFound(Resource::Clinic(id)),
            InvestigationError::Store(e) => e.into(),
        }
    }
}

impl From<RescanError> for ApiError {
    fn from(err: RescanError) -> Self {
        match err {
            RescanError::UnknownRun(run) => ApiError::NotFound(Resource::RescanRun(run)),
            RescanError::AlreadyFinished(run) => ApiError::RescanFinished(run),
            RescanError::UnknownRule { run, rule } => ApiError::RescanRuleUnknown { run, rule },
            RescanError::Store(e) => e.into(),
        }
    }
}

impl From<ExportError> for ApiError {
    fn from(err: ExportError) -> Self {
        match err {
            ExportError::Store(e) => e.into(),
            ExportError::Csv(e) => {
                tracing::error!(error = %e, "CSV export failed");
                ApiError::Internal
            }
        }
    }
}

impl From<WatchEnd> for ApiError {
    fn from(end: WatchEnd) -> Self {
        match end {
            WatchEnd::Closing => ApiError::ShuttingDown,
            WatchEnd::Store(e) => e.into(),
        }
    }
}

impl From<StreamError<Status>> for Status {
    fn from(err: StreamError<Status>) -> Self {
        match err {
            // The client's own stream broke: tonic's status says how.
            StreamError::Broken(status) => status,
            StreamError::TooLong { limit } => ApiError::StreamTooLong { limit }.into(),
            StreamError::Idle { timeout } => ApiError::StreamIdle { timeout }.into(),
            StreamError::Store(e) => e.into(),
            StreamError::Lost => ApiError::Internal.into(),
        }
    }
}

/// `?` on the library's errors in an adapter: each through [`ApiError`].
macro_rules! status_from {
    ($($error:ty),+) => {
        $(impl From<$error> for Status {
            fn from(err: $error) -> Self {
                ApiError::from(err).into()
            }
        })+
    };
}
status_from!(StoreError, IngestError, TriageError, RescanError, WatchEnd);

/// INVALID_ARGUMENT with one `google.rpc.BadRequest` field violation per bad
/// field (the first [`MAX_REPORTED_VIOLATIONS`] of them).
pub fn invalid(violations: Violations) -> Status {
    ApiError::InvalidFields(violations).into()
}

/// INVALID_ARGUMENT for one bad field.
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    let mut v = Violations::default();
    v.add(field, description);
    invalid(v)
}

/// A duration in seconds, as the settings are written (fractions for the
/// short timeouts tests use).
fn secs_value(d: Duration) -> String {
    d.as_secs_f64().to_string()
}

/// A duration for people: `30 s`.
fn secs(d: Duration) -> String {
    format!("{} s", secs_value(d))
}

/// The message of an INVALID_ARGUMENT: the field, or the fields' names.
fn summary(violations: &Violations) -> String {
    match violations.0.as_slice() {
        [one] => format!(
            "invalid {}: {}",
            one.field,
            bounded(&one.description, MAX_DESCRIPTION_BYTES)
        ),
        many => {
            let fields: Vec<&str> = many
                .iter()
                .take(MAX_SUMMARY_FIELDS)
                .map(|v| v.field.as_str())
                .collect();
            let more = match many.len().saturating_sub(MAX_SUMMARY_FIELDS) {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            format!("{} invalid fields: {}{more}", many.len(), fields.join(", "))
        }
    }
}

/// `text` cut to at most `max` bytes on a character boundary, marked when cut.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let end = (0..=max)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    format!("{}…", &text[..end])
}

/// A status as the `google.rpc.Status` message that a stream acknowledgement carries.
pub fn to_rpc_status(status: &Status) -> tonic_types::pb::Status {
    let details = status.details();
    if !details.is_empty() {
        if let Ok(full) = tonic_types::pb::Status::decode(details) {
            return full;
        }
    }
    tonic_types::pb::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CaseStatus;

    /// One error of every kind.
    fn one_of_each() -> Vec<ApiError> {
        let mut v = Violations::default();
        v.add("record.organ", "is required");
        let record = || Resource::Record {
            hospital_id: "H-1".into(),
            external_record_id: "R-1".into(),
        };
        vec![
            ApiError::InvalidFields(v),
            ApiError::KeyMissing,
            ApiError::KeyRefused,
            ApiError::RoleNotAllowed {
                role: Role::Hospital,
                method: "/x/Y".into(),
            },
            ApiError::OtherHospital,
            ApiError::CertificateMismatch,
            ApiError::NotFound(Resource::Flag),
            ApiError::NotFound(Resource::FlagId(9)),
            ApiError::NotFound(Resource::Case),
            ApiError::NotFound(Resource::Clinic("C".into())),
            ApiError::NotFound(Resource::ApiKey),
            ApiError::NotFound(Resource::RescanRun(3)),
            ApiError::NotFound(Resource::StoredRecord),
            ApiError::NotFound(record()),
            ApiError::RecordConflict {
                hospital_id: "H-1".into(),
                external_record_id: "R-1".into(),
            },
            ApiError::StaleEtag { current: 4 },
            ApiError::StaleCaseEtag { current: 4 },
            ApiError::FlagInAnotherCase {
                flag_id: 9,
                case_id: 2,
            },
            ApiError::CaseChangeRefused(CaseRefusal::IllegalTransition {
                from: CaseStatus::Open,
                to: CaseStatus::Closed,
            }),
            ApiError::CaseChangeRefused(CaseRefusal::AlreadyIn(9)),
            ApiError::Contended,
            ApiError::IllegalTransition {
                from: FlagStatus::Dismissed,
                to: FlagStatus::Open,
            },
            ApiError::SecondAuditorRequired,
            ApiError::OneIssuer,
            ApiError::EvidenceTampered,
            ApiError::RescanFinished(3),
            ApiError::RescanRuleUnknown {
                run: 3,
                rule: "X".into(),
            },
            ApiError::TooManyCalls,
            ApiError::TooManyStreams,
            ApiError::TenantTooManyCalls { limit: 4 },
            ApiError::TenantTooManyStreams { limit: 2 },
            ApiError::TooManyHealthWatches { limit: 8 },
            ApiError::StreamTooLong { limit: 10 },
            ApiError::StreamIdle {
                timeout: Duration::from_secs(60),
            },
            ApiError::RequestMessageTimeout {
                timeout: Duration::from_millis(500),
            },
            ApiError::Unavailable,
            ApiError::ShuttingDown,
            ApiError::PeerExists("kz".into()),
            ApiError::NotFound(Resource::FederationPeer("kz".into())),
            ApiError::NotAPeer,
            ApiError::FederationCeiling {
                used: 10,
                ceiling: 12,
            },
            ApiError::Internal,
        ]
    }

    /// The table callers rely on. The match has no wildcard: a new kind of
    /// error does not compile until it is listed here (and in `one_of_each`).
    fn expected(err: &ApiError) -> (Code, &'static str, bool) {
        use ApiError::*;
        match err {
            InvalidFields(_) => (Code::InvalidArgument, "INVALID_FIELDS", false),
            KeyMissing => (Code::Unauthenticated, "API_KEY_MISSING", false),
            KeyRefused => (Code::Unauthenticated, "API_KEY_REFUSED", false),
            RoleNotAllowed { .. } => (Code::PermissionDenied, "ROLE_NOT_ALLOWED", false),
            OtherHospital => (Code::PermissionDenied, "OTHER_HOSPITAL", false),
            CertificateMismatch => (Code::PermissionDenied, "CLIENT_CERTIFICATE_MISMATCH", false),
            NotFound(Resource::Flag | Resource::FlagId(_)) => {
                (Code::NotFound, "FLAG_NOT_FOUND", false)
            }
            NotFound(Resource::Case) => (Code::NotFound, "CASE_NOT_FOUND", false),
            NotFound(Resource::Clinic(_)) => (Code::NotFound, "CLINIC_NOT_FOUND", false),
            NotFound(Resource::ApiKey) => (Code::NotFound, "API_KEY_NOT_FOUND", false),
            NotFound(Resource::RescanRun(_)) => (Code::NotFound, "RESCAN_RUN_NOT_FOUND", false),
            NotFound(Resource::Record { .. }) => (Code::NotFound, "RECORD_NOT_FOUND", false),
            NotFound(Resource::StoredRecord) => (Code::NotFound, "RECORD_ID_NOT_FOUND", false),
            RecordConflict { .. } => (Code::AlreadyExists, "RECORD_CONFLICT", false),
            StaleEtag { .. } | StaleCaseEtag { .. } => (Code::Aborted, "STALE_ETAG", false),
            FlagInAnotherCase { .. } => (Code::FailedPrecondition, "FLAG_IN_ANOTHER_CASE", false),
            CaseChangeRefused(
                CaseRefusal::IllegalTransition { .. } | CaseRefusal::WrongFrom { .. },
            ) => (Code::FailedPrecondition, "ILLEGAL_TRANSITION", false),
            CaseChangeRefused(_) => (Code::FailedPrecondition, "CASE_CHANGE_REFUSED", false),
            Contended => (Code::Aborted, "WRITE_CONTENTION", true),
            IllegalTransition { .. } => (Code::FailedPrecondition, "ILLEGAL_TRANSITION", false),
            SecondAuditorRequired => (Code::FailedPrecondition, "SECOND_AUDITOR_REQUIRED", false),
            OneIssuer => (Code::FailedPrecondition, "ONE_ISSUER", false),
            EvidenceTampered => (Code::FailedPrecondition, "EVIDENCE_TAMPERED", false),
            RescanFinished(_) => (Code::FailedPrecondition, "RESCAN_RUN_FINISHED", false),
            RescanRuleUnknown { .. } => (Code::FailedPrecondition, "RESCAN_RULE_UNKNOWN", false),
            TooManyCalls => (Code::ResourceExhausted, "TOO_MANY_CALLS", true),
            TooManyStreams => (Code::ResourceExhausted, "TOO_MANY_STREAMS", true),
            TenantTooManyCalls { .. } => (Code::ResourceExhausted, "TENANT_TOO_MANY_CALLS", true),
            TenantTooManyStreams { .. } => {
                (Code::ResourceExhausted, "TENANT_TOO_MANY_STREAMS", true)
            }
            TooManyHealthWatches { .. } => {
                (Code::ResourceExhausted, "TOO_MANY_HEALTH_WATCHES", true)
            }
            StreamTooLong { .. } => (Code::ResourceExhausted, "STREAM_TOO_LONG", false),
            StreamIdle { .. } => (Code::DeadlineExceeded, "STREAM_IDLE", false),
            RequestMessageTimeout { .. } => {
                (Code::DeadlineExceeded, "REQUEST_MESSAGE_TIMEOUT", false)
            }
            Unavailable => (Code::Unavailable, "DATABASE_UNAVAILABLE", true),
            ShuttingDown => (Code::Unavailable, "SHUTTING_DOWN", true),
            PeerExists(_) => (Code::AlreadyExists, "FEDERATION_PEER_EXISTS", false),
            NotFound(Resource::FederationPeer(_)) => {
                (Code::NotFound, "FEDERATION_PEER_NOT_FOUND", false)
            }
            NotAPeer => (Code::PermissionDenied, "NOT_A_PEER", false),
            FederationCeiling { .. } => (Code::ResourceExhausted, "FEDERATION_CEILING", false),
            Internal => (Code::Internal, "INTERNAL", false),
        }
    }

    #[test]
    fn every_error_has_its_code_reason_and_retry_advice() {
        let errors = one_of_each();
        // A reason may name kindred errors (a stale flag or case etag), but
        // always with one code: clients branch on it.
        let mut reasons = std::collections::HashMap::new();
        for err in errors {
            let (code, reason, retries) = expected(&err);
            let first = *reasons.entry(reason).or_insert(code);
            assert_eq!(first, code, "{reason} comes with two codes");
            let message = err.to_string();
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{reason}");
            assert_eq!(status.message(), message);
            let details = status.get_error_details();
            let info = details.error_info().expect("an ErrorInfo");
            assert_eq!(
                (info.reason.as_str(), info.domain.as_str()),
                (reason, ERROR_DOMAIN)
            );
            assert_eq!(details.retry_info().is_some(), retries, "{reason}");
            if code == Code::Internal || code == Code::Unavailable {
                assert!(!message.contains("database error"), "{message}");
            }
        }
        assert_eq!(reasons.len(), 39, "one_of_each lists every reason");
    }

    #[test]
    fn a_stale_etag_names_the_current_one() {
        let status = Status::from(ApiError::StaleEtag { current: 7 });
        let details = status.get_error_details();
        let info = details.error_info().expect("an ErrorInfo");
        assert_eq!(info.metadata.get("etag").map(String::as_str), Some("7"));
    }

    #[test]
    fn limits_are_named_in_the_refusal() {
        for (err, key, value) in [
            (
                ApiError::TenantTooManyCalls { limit: 64 },
                "max_calls_per_tenant",
                "64",
            ),
            (
                ApiError::TenantTooManyStreams { limit: 8 },
                "max_streams_per_tenant",
                "8",
            ),
            (
                ApiError::TooManyHealthWatches { limit: 4 },
                "max_health_watches",
                "4",
            ),
            (
                ApiError::StreamIdle {
                    timeout: Duration::from_secs(60),
                },
                "stream_idle_timeout_secs",
                "60",
            ),
            (
                ApiError::RequestMessageTimeout {
                    timeout: Duration::from_millis(500),
                },
                "request_message_timeout_secs",
                "0.5",
            ),
        ] {
            let status = Status::from(err);
            let details = status.get_error_details();
            let info = details.error_info().expect("an ErrorInfo");
            assert_eq!(info.metadata.get(key).map(String::as_str), Some(value));
        }
    }

    #[test]
    fn library_errors_keep_their_meaning() {
        let stale = Status::from(TriageError::Stale { current: 2 });
        let contended = Status::from(StoreError::Contended);
        let reason = |s: &Status| s.get_error_details().error_info().unwrap().reason.clone();
        assert_eq!(stale.code(), contended.code());
        assert_ne!(reason(&stale), reason(&contended));
        let note = Status::from(TriageError::NoteRequired(FlagStatus::Dismissed));
        let details = note.get_error_details();
        assert_eq!(
            details.bad_request().unwrap().field_violations[0].field,
            "note"
        );
        let hospital_sees = Status::from(IngestError::Store(StoreError::Tampered(
            "flag 5: its row is not the fold of its steps".into(),
        )));
        assert_eq!(hospital_sees.code(), Code::Internal);
        assert!(!hospital_sees.message().contains("flag"));
        let corrupt = Status::from(StoreError::Corrupt("secret row text".into()));
        assert_eq!(corrupt.code(), Code::Internal);
        assert!(!corrupt.message().contains("secret"));
        assert_eq!(
            Status::from(RescanError::UnknownRun(9)).code(),
            Code::NotFound
        );
    }

    #[test]
    fn bad_request_lists_every_field() {
        let mut v = Violations::default();
        v.add("record.organ", "is required");
        v.add("record.donor.age_years", "must be between 0 and 120");
        let status = invalid(v);
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad = details.bad_request().expect("a BadRequest detail");
        let fields: Vec<_> = bad
            .field_violations
            .iter()
            .map(|f| f.field.as_str())
            .collect();
        assert_eq!(fields, ["record.organ", "record.donor.age_years"]);
        let rpc = to_rpc_status(&status);
        assert_eq!(rpc.code, Code::InvalidArgument as i32);
        assert_eq!(rpc.details.len(), 2, "ErrorInfo and BadRequest");
    }

    #[test]
    fn a_flood_of_violations_answers_a_bounded_status() {
        let mut v = Violations::default();
        for i in 0..100_000 {
            v.add(format!("clinic.licensed_organs[{i}]"), "é".repeat(10_000));
        }
        let status = invalid(v);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().len() < 1024, "{}", status.message());
        assert!(status.message().ends_with("and 99990 more"));
        // Sent base64-encoded in a trailer, with the message, under 16 KiB.
        assert!(
            status.details().len() < 8 * 1024,
            "{}",
            status.details().len()
        );
        let details = status.get_error_details();
        let bad = details.bad_request().expect("a BadRequest detail");
        assert_eq!(bad.field_violations.len(), MAX_REPORTED_VIOLATIONS);
        assert_eq!(bad.field_violations[0].field, "clinic.licensed_organs[0]");
        let cut = &bad.field_violations[0].description;
        assert!(cut.len() <= MAX_DESCRIPTION_BYTES + '…'.len_utf8(), "{cut}");
        assert!(cut.starts_with("éé") && cut.ends_with('…'), "{cut}");
    }
}
