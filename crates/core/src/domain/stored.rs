//! What the service keeps, as auditors and administrators read it back: a
//! stored record, a flag, a triage step, a version of a registry entry.

use chrono::{DateTime, Utc};

use super::{Clinic, FlagStatus, Record, RecordId, Severity, StepKind};

/// A stored record version as auditors see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView {
    /// The record's id.
    pub id: RecordId,
    /// Its current version.
    pub version: i32,
    /// When first stored.
    pub received_at: DateTime<Utc>,
    /// The pseudonymised content of the current version.
    pub record: Record,
}

/// A flag with what a listing shows of its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagView {
    /// The flag's id.
    pub id: i64,
    /// The flagged record.
    pub record_id: RecordId,
    /// The rule id text.
    pub rule_id: String,
    /// The rule's version.
    pub rule_version: i32,
    /// Severity.
    pub severity: Severity,
    /// What the rule found.
    pub explanation: String,
    /// Other records involved.
    pub evidence: Vec<RecordId>,
    /// Triage status.
    pub status: FlagStatus,
    /// Bumped by every triage step; the optimistic-concurrency token.
    pub revision: i64,
    /// When raised.
    pub raised_at: DateTime<Utc>,
    /// When last changed.
    pub updated_at: DateTime<Utc>,
    /// Submitting hospital.
    pub hospital_id: String,
    /// Clinic of the record.
    pub clinic_id: String,
    /// The hospital's id of the record.
    pub external_record_id: String,
    /// The record version the rule ran on.
    pub record_version: i32,
    /// The record version that no longer raises it, if any.
    pub cleared_in_version: Option<i32>,
    /// The principal who proposed dismissing this CRITICAL flag, awaiting a second.
    pub dismissal_proposed_by: Option<String>,
}

/// One step in a flag's life, as auditors read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagEvent {
    /// Its position, from 1 (the RAISED step).
    pub step: i32,
    /// What it did.
    pub kind: StepKind,
    /// When.
    pub at: DateTime<Utc>,
    /// The API key that took it (empty for the rules' own steps).
    pub key_id: String,
    /// The person or system behind the key.
    pub principal: String,
    /// Status before; none for the RAISED step.
    pub from: Option<FlagStatus>,
    /// Status after.
    pub to: FlagStatus,
    /// The note.
    pub note: String,
    /// The caller's trace id, if it sent one.
    pub trace_id: Option<String>,
    /// The trace id the service gave the call.
    pub own_trace_id: Option<String>,
    /// For RAISED and REEVALUATED steps, the finding's severity.
    pub severity: Option<Severity>,
    /// For CLEARED steps, the record version that no longer raises the flag.
    pub cleared_in_version: Option<i32>,
}

/// One stored version of a clinic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClinicVersion {
    /// The entry.
    pub clinic: Clinic,
    /// Its version number, from 1.
    pub version: i32,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
}

/// Filters of a flag listing; `None` means any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlagFilter {
    /// Only this status.
    pub status: Option<FlagStatus>,
    /// Only at least this severity.
    pub min_severity: Option<Severity>,
    /// Only this rule.
    pub rule_id: Option<String>,
    /// Only this clinic.
    pub clinic_id: Option<String>,
    /// Only this hospital.
    pub hospital_id: Option<String>,
    /// Raised at or after.
    pub raised_after: Option<DateTime<Utc>>,
    /// Raised before.
    pub raised_before: Option<DateTime<Utc>>,
}
