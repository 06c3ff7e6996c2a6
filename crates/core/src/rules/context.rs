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
    /// Peer registries that hold this record's living donor too, as the
    /// federation syncs found (empty for a record just submitted).
    pub peer_matches: &'a [PeerMatch],
}

/// A peer registry that holds a record's living donor too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerMatch {
    /// The peer's name, as configured here.
    pub peer: String,
    /// The donor's living donations there.
    pub donations: u32,
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

impl PriorDonation {
    /// Record `record_id`, as later records of its donor see it.
    pub fn of(record_id: RecordId, record: &crate::domain::Record) -> Self {
        Self {
            record_id,
            organ: record.organ,
            laterality: record.laterality,
            kind: record.donor.kind,
            procured_at: record.procured_at,
        }
    }
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

impl ClinicWindow {
    /// Counts an earlier living transplant from a non-resident donor at the
    /// clinic, transplanted at `at` (in the windows ending at `until` when it falls in them).
    pub fn add_foreign_living(
        &mut self,
        spec: &WindowSpec,
        until: DateTime<Utc>,
        earlier: ForeignLivingTransplant,
    ) {
        let at = earlier.transplanted_at;
        if at > until {
            return;
        }
        if at >= until - spec.cluster {
            self.foreign_living_donors
                .push((earlier.record_id, earlier.donor_nationality));
        }
        if at >= until - spec.surge && earlier.unrelated_directed {
            self.foreign_unrelated_living.push(earlier.record_id);
        }
    }

    /// Counts an earlier deceased-donor transplant at the clinic when it
    /// falls in the share window ending at `until`.
    pub fn add_deceased(
        &mut self,
        spec: &WindowSpec,
        until: DateTime<Utc>,
        transplanted_at: DateTime<Utc>,
        to_non_resident: bool,
    ) {
        if transplanted_at > until || transplanted_at < until - spec.share {
            return;
        }
        self.deceased_transplants += 1;
        if to_non_resident {
            self.deceased_to_non_residents += 1;
        }
    }
}

/// An earlier living transplant from a non-resident donor, as the clinic windows read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForeignLivingTransplant {
    /// Its record.
    pub record_id: RecordId,
    /// When it was transplanted.
    pub transplanted_at: DateTime<Utc>,
    /// The donor's nationality.
    pub donor_nationality: CountryCode,
    /// Whether the donor is an unrelated directed donor.
    pub unrelated_directed: bool,
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
    /// The keys `record` is read under or counted in, each with whether
    /// `record` reads it: a reader must exclude every other writer of the
    /// key, while records that are only counted in it exclude only readers.
    pub fn of(record: &'a crate::domain::Record) -> impl Iterator<Item = (ContextKey<'a>, bool)> {
        let living = matches!(record.donor.kind, crate::domain::DonorKind::Living { .. });
        let clinic = record.clinic_id.as_str();
        [
            Some((ContextKey::Donor(&record.donor.person.identifier), true)),
            (living && record.donor_is_foreign())
                .then_some((ContextKey::ClinicForeignLiving(clinic), true)),
            // The share window is read only for a non-resident recipient.
            (!living).then_some((
                ContextKey::ClinicDeceased(clinic),
                record.recipient_is_foreign(),
            )),
        ]
        .into_iter()
        .flatten()
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::super::fixtures::{at, country};
    use super::*;

    fn spec() -> WindowSpec {
        WindowSpec {
            foreign_living: true,
            deceased: true,
            surge: Duration::days(30),
            cluster: Duration::days(90),
            share: Duration::days(365),
        }
    }

    fn living(id: i64, transplanted_at: DateTime<Utc>, unrelated: bool) -> ForeignLivingTransplant {
        ForeignLivingTransplant {
            record_id: RecordId(id),
            transplanted_at,
            donor_nationality: country("NP"),
            unrelated_directed: unrelated,
        }
    }

    #[test]
    fn a_foreign_living_transplant_counts_in_each_window_it_falls_in() {
        let until = at(6, 30, 12, 0);
        let mut w = ClinicWindow::default();
        w.add_foreign_living(&spec(), until, living(1, until, true));
        w.add_foreign_living(&spec(), until, living(2, until - Duration::days(30), true));
        w.add_foreign_living(&spec(), until, living(3, until - Duration::days(31), true));
        w.add_foreign_living(&spec(), until, living(4, until - Duration::days(90), false));
        w.add_foreign_living(&spec(), until, living(5, until - Duration::days(91), true));
        w.add_foreign_living(
            &spec(),
            until,
            living(6, until + Duration::seconds(1), true),
        );
        assert_eq!(w.foreign_unrelated_living, vec![RecordId(1), RecordId(2)]);
        let cluster: Vec<i64> = w.foreign_living_donors.iter().map(|(id, _)| id.0).collect();
        assert_eq!(cluster, vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_deceased_transplant_counts_only_inside_the_share_window() {
        let until = at(6, 30, 12, 0);
        let mut w = ClinicWindow::default();
        w.add_deceased(&spec(), until, until, true);
        w.add_deceased(&spec(), until, until - Duration::days(365), false);
        w.add_deceased(&spec(), until, until - Duration::days(366), true);
        w.add_deceased(&spec(), until, until + Duration::seconds(1), true);
        assert_eq!(w.deceased_transplants, 2);
        assert_eq!(w.deceased_to_non_residents, 1);
    }
}
