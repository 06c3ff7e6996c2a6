//! The rule engine: pure functions from a record and its context to findings.
//!
//! The context (registry entry, the donor's earlier records, the clinic's
//! recent activity) is loaded by the store, so every rule runs without I/O.

pub mod catalogue;
pub mod config;
pub mod context;
pub mod engine;
pub mod ischemia_limits;

mod clinic;
mod federation;
mod pairing;
mod repeat_donor;
mod tourism;

#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;

pub use catalogue::RuleId;
pub use config::{RulesConfig, RulesConfigError};
pub use context::{
    ClinicWindow, ContextKey, ForeignLivingTransplant, PeerMatch, PriorDonation, RuleContext,
    WindowSpec,
};
pub use engine::Engine;

use crate::domain::{RecordId, Severity};

/// What one rule found about one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Which rule.
    pub rule: RuleId,
    /// How serious, after configuration.
    pub severity: Severity,
    /// What an auditor reads: the facts that made the rule fire.
    pub explanation: String,
    /// Earlier records that take part in the finding (the record itself is implied).
    pub evidence: Vec<RecordId>,
}
