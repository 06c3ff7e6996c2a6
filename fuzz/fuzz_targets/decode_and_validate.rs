//! Any bytes a client can send, decoded as each request the service converts
//! and checked as the service checks it; and any line of an import file.
//! Nothing may panic; a refusal names fields under the request's own paths,
//! no more than a status reports; what is accepted holds only instants a
//! `google.protobuf.Timestamp` (and Postgres) can hold.
#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use transplant_audit_core::wire::listing::{flag_filter as filter, page_size};
use transplant_audit_core::wire::convert::{clinic, submission};
use transplant_audit_core::wire::pb;
use transplant_audit_core::domain::Violations;
use transplant_audit_core::wire::ndjson;

/// The most violations a status reports (`api::status`).
const MAX_REPORTED: usize = 48;

fn representable(at: DateTime<Utc>) -> bool {
    (-62_135_596_800..=253_402_300_799).contains(&at.timestamp())
}

fn named_under(v: &Violations, root: &str) {
    assert!(!v.0.is_empty() && v.0.len() <= MAX_REPORTED, "{v:?}");
    for f in &v.0 {
        let under = f
            .field
            .strip_prefix(root)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['));
        assert!(under, "{f:?} not under {root}");
    }
}

fn check_record(record: Option<&pb::TransplantRecord>) {
    match submission("record", record, Utc::now()) {
        Ok(s) => assert!(s.procured_at <= s.transplanted_at && representable(s.procured_at)),
        Err(v) => named_under(&v, "record"),
    }
}

fn check_clinic(raw: Option<&pb::Clinic>) {
    match clinic(raw) {
        Ok(c) => assert!(
            representable(c.licence_valid_from)
                && c.licence_valid_until.is_none_or(representable)
                && c.status_effective_from.is_none_or(representable)
        ),
        Err(v) => named_under(&v, "clinic"),
    }
}

fn check_listing(req: &pb::ListFlagsRequest) {
    let _ = page_size(req.page_size);
    match filter(req) {
        Ok(f) => assert!(
            f.raised_after.is_none_or(representable) && f.raised_before.is_none_or(representable)
        ),
        Err(v) => {
            assert!(!v.0.is_empty() && v.0.len() <= MAX_REPORTED, "{v:?}");
            assert!(v.0.iter().all(|f| !f.field.is_empty()), "{v:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = pb::SubmitRecordRequest::decode(data) {
        check_record(request.record.as_ref());
    }
    if let Ok(request) = pb::SubmitRecordsRequest::decode(data) {
        check_record(request.record.as_ref());
    }
    if let Ok(request) = pb::AmendRecordRequest::decode(data) {
        check_record(request.record.as_ref());
    }
    if let Ok(request) = pb::UpsertClinicRequest::decode(data) {
        check_clinic(request.clinic.as_ref());
    }
    if let Ok(request) = pb::ListFlagsRequest::decode(data) {
        check_listing(&request);
    }
    let (record, violations) = ndjson::parse_line(data);
    if violations.0.is_empty() {
        check_record(Some(&record));
    }
});
