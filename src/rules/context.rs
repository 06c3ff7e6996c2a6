//! What a rule may know beyond the record itself, loaded by the store.

use chrono::{DateTime, Utc};

use crate::domain::{Clinic, CountryCode, DonorKind, Laterality, Organ, RecordId};

/// Everything the rules read besides the record.
#[derive(Debug, Clone, Copy)]
pub struct RuleContext<'a> {
    /// The clinic's registry entry at evaluation time; `None` when unregistered.
    pub clinic: Option<&'a Clinic>,
    /// Records of the same donor fingerprint accepted before this one, at any hospital.
    pub donor_history: &'a [PriorDonation],
    /// The clinic's earlier activity inside the rule windows.
    pub clinic_window: &'a ClinicWindow,
}

/// One earlier record of the same donor, reduced to what the repeat-donor rules read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorDonation {
    /// The earlier record.
    pub record_id: RecordId,
    /// What was given.
    pub organ: Organ,
    /// Which side.
    pub laterality: Laterality,
    /// Living or deceased, with the death as that record states it.
    pub kind: DonorKind,
    /// When that organ was procured.
    pub procured_at: DateTime<Utc>,
}

/// A clinic's earlier records inside the rule windows, all ending at this
/// record's `transplanted_at`; this record itself is not included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClinicWindow {
    /// Surge window: living `UNRELATED_DIRECTED` transplants whose donor is a non-resident.
    pub foreign_unrelated_living: Vec<RecordId>,
    /// Cluster window: living transplants whose donor is a non-resident, with the donor's nationality.
    pub foreign_living_donors: Vec<(RecordId, CountryCode)>,
    /// Share window: deceased-donor transplants in all.
    pub deceased_transplants: u64,
    /// Share window: deceased-donor transplants to non-resident recipients.
    pub deceased_to_non_residents: u64,
}

/// Which clinic windows a record's rules read, and how long each is, so the
/// store loads only what will be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    /// Load the clinic's living foreign-donor transplants (surge and cluster windows).
    pub foreign_living: bool,
    /// Load the clinic's deceased-donor counts (share window).
    pub deceased: bool,
    /// Length of the surge window.
    pub surge: chrono::Duration,
    /// Length of the cluster window.
    pub cluster: chrono::Duration,
    /// Length of the share window.
    pub share: chrono::Duration,
}

impl WindowSpec {
    /// Whether any window must be loaded at all.
    pub fn reads_any(&self) -> bool {
        self.foreign_living || self.deceased
    }

    /// The windows `record`'s enabled rules read: a clinic's foreign living
    /// donors only for a living transplant from a foreign donor, its
    /// deceased-donor counts only for a deceased-donor transplant to a foreign recipient.
    pub fn for_record(record: &crate::domain::Record, config: &super::RulesConfig) -> Self {
        use super::RuleId;
        let living = matches!(record.donor.kind, crate::domain::DonorKind::Living { .. });
        Self {
            foreign_living: living
                && record.donor_is_foreign()
                && (config.is_enabled(RuleId::ClinicForeignDonorSurge)
                    || config.is_enabled(RuleId::DonorNationalityCluster)),
            deceased: !living
                && record.recipient_is_foreign()
                && config.is_enabled(RuleId::ClinicNonResidentShare),
            surge: config.surge_window(),
            cluster: config.cluster_window(),
            share: config.share_window(),
        }
    }
}

/// A key whose records the rules read together: writers of records that
/// share a key must take turns, so each sees the other (design.md §5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ContextKey<'a> {
    /// Every record of one donor (the repeat-donor rules).
    Donor(&'a crate::domain::Fingerprint),
    /// A clinic's living transplants from foreign donors (surge and cluster windows).
    ClinicForeignLiving(&'a str),
    /// A clinic's deceased-donor transplants (the non-resident share window).
    ClinicDeceased(&'a str),
}

impl<'a> ContextKey<'a> {
    /// The keys `record` is read under or counted in.
    pub fn of(record: &'a crate::domain::Record) -> impl Iterator<Item = ContextKey<'a>> {
        let living = matches!(record.donor.kind, crate::domain::DonorKind::Living { .. });
        let clinic = record.clinic_id.as_str();
        [
            Some(ContextKey::Donor(&record.donor.person.identifier)),
            (living && record.donor_is_foreign())
                .then_some(ContextKey::ClinicForeignLiving(clinic)),
            (!living).then_some(ContextKey::ClinicDeceased(clinic)),
        ]
        .into_iter()
        .flatten()
    }
}
