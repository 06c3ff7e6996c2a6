//! The one place where library errors become gRPC statuses.
//!
//! Internal errors are logged here and answered with a generic message: a
//! database error's text never reaches a caller.

use prost::Message;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::Violations;
use crate::ingest::IngestError;
use crate::store::{StoreError, TriageError};

/// The most field violations one status carries. A record has fewer fields;
/// the bound keeps a hostile request's answer inside HTTP/2 trailer limits
/// (16 KiB by default), past which the client sees a protocol error instead.
pub(crate) const MAX_REPORTED_VIOLATIONS: usize = 48;

/// The most field names the summary message lists.
const MAX_SUMMARY_FIELDS: usize = 10;

/// The longest description carried, in bytes (some echo the input).
const MAX_DESCRIPTION_BYTES: usize = 120;

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

/// INVALID_ARGUMENT with one `google.rpc.BadRequest` field violation per bad
/// field (the first [`MAX_REPORTED_VIOLATIONS`] of them).
pub fn invalid(violations: Violations) -> Status {
    let mut details = ErrorDetails::new();
    for v in violations.0.iter().take(MAX_REPORTED_VIOLATIONS) {
        details.add_bad_request_violation(
            v.field.clone(),
            bounded(&v.description, MAX_DESCRIPTION_BYTES),
        );
    }
    let summary = match violations.0.as_slice() {
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
    };
    Status::with_error_details(Code::InvalidArgument, summary, details)
}

/// INVALID_ARGUMENT for one bad field.
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    let mut v = Violations::default();
    v.add(field, description);
    invalid(v)
}

/// UNAVAILABLE for a database that cannot be reached, ABORTED for writers
/// that kept colliding; INTERNAL otherwise.
pub fn store(err: StoreError) -> Status {
    if matches!(err, StoreError::Contended) {
        Status::aborted(err.to_string())
    } else if err.is_unavailable() {
        tracing::warn!(error = %err, "database unavailable");
        Status::unavailable("the database is unavailable; retry later")
    } else {
        tracing::error!(error = %err, "database error");
        Status::internal("internal error")
    }
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Self {
        store(err)
    }
}

impl From<IngestError> for Status {
    fn from(err: IngestError) -> Self {
        match err {
            IngestError::Conflict { .. } => Status::already_exists(err.to_string()),
            IngestError::NotFound { .. } => Status::not_found(err.to_string()),
            IngestError::Store(e) => store(e),
        }
    }
}

impl From<TriageError> for Status {
    fn from(err: TriageError) -> Self {
        match err {
            TriageError::NotFound => Status::not_found(err.to_string()),
            TriageError::Stale { .. } => Status::aborted(err.to_string()),
            TriageError::IllegalTransition { .. } | TriageError::SecondAuditorRequired => {
                Status::failed_precondition(err.to_string())
            }
            TriageError::NoteRequired(_) => invalid_field("note", err.to_string()),
            TriageError::Store(e) => store(e),
        }
    }
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
        assert_eq!(rpc.details.len(), 1);
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
