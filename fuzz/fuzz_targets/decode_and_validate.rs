//! Any bytes a client can send, decoded as each request that carries a
//! record and validated as the service does; and any line of an import file.
//! Nothing may panic, and a refusal names fields under `record`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use transplant_audit::api::convert::submission;
use transplant_audit::api::pb;
use transplant_audit::import::ndjson;

fn check(record: Option<&pb::TransplantRecord>) {
    if let Err(v) = submission("record", record, chrono::Utc::now()) {
        assert!(!v.0.is_empty());
        for f in &v.0 {
            assert!(f.field == "record" || f.field.starts_with("record."), "{f:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = pb::SubmitRecordRequest::decode(data) {
        check(request.record.as_ref());
    }
    if let Ok(request) = pb::AmendRecordRequest::decode(data) {
        check(request.record.as_ref());
    }
    let (record, violations) = ndjson::parse_line(data);
    if violations.0.is_empty() {
        check(Some(&record));
    }
});
