//! What the rules read about a group of records besides the records
//! themselves, cut per record and evaluated in one place for new records,
//! amendments and rescans alike.
//!
//! The paths load it differently: ingest for records not yet stored (what
//! was stored before the group, plus the group's earlier records counted in
//! memory), a rescan in bulk for stored ones. Each hands over the same
//! [`GroupContext`], so a record's context means the same on every path: its
//! donor's donations and its clinic's windows as they stood before it, in
//! record-id order, and the registry as it is now.

use std::collections::HashMap;
use std::time::Instant;

use crate::domain::{Clinic, Fingerprint, Record, RecordId};
use crate::rules::{ClinicWindow, Engine, Finding, PeerMatch, PriorDonation, RuleContext, RuleId};
use crate::telemetry::metrics;

/// The context of a group of records, in record-id order.
#[derive(Debug, Clone, Default)]
pub struct GroupContext {
    /// The donations of the group's donors that may precede one of its
    /// records (stored ones and the group's own), each donor's in id order.
    pub donations: HashMap<Fingerprint, Vec<PriorDonation>>,
    /// Each record's clinic windows, complete, in the group's order.
    pub windows: Vec<ClinicWindow>,
    /// Peer registries that hold a record's living donor too, by record
    /// (stored federation matches; none for records not yet stored).
    pub peer_matches: HashMap<RecordId, Vec<PeerMatch>>,
}

/// Which rules to run, and whether to trace them.
#[derive(Debug, Clone, Copy)]
pub enum Evaluation<'a> {
    /// Every enabled rule, as records arrive: timed, and traced per rule
    /// family for a record stored alone (a span per family and record would
    /// cost a large batch more than its rules do).
    Arriving,
    /// The enabled rules among these, over stored records.
    Rescan(&'a [RuleId]),
}

impl GroupContext {
    /// The rules' findings for each of `records` (the group's, in id order),
    /// each against the registry entries in `clinics`.
    pub fn evaluate(
        &self,
        engine: &Engine,
        clinics: &HashMap<String, Clinic>,
        records: &[(RecordId, &Record)],
        evaluation: Evaluation<'_>,
    ) -> Vec<Vec<Finding>> {
        records
            .iter()
            .zip(&self.windows)
            .map(|(&(id, record), window)| {
                let ctx = RuleContext {
                    clinic: clinics.get(&record.clinic_id),
                    donor_history: self.history_before(id, record),
                    clinic_window: window,
                    peer_matches: self.peer_matches.get(&id).map_or(&[], Vec::as_slice),
                };
                match evaluation {
                    Evaluation::Rescan(rules) => engine.evaluate_only(record, &ctx, rules),
                    Evaluation::Arriving => {
                        let started = Instant::now();
                        let findings = if records.len() == 1 {
                            engine.evaluate_traced(record, &ctx)
                        } else {
                            engine.evaluate(record, &ctx)
                        };
                        metrics::rule_evaluation(started.elapsed());
                        findings
                    }
                }
            })
            .collect()
    }

    /// The donations of `record`'s donor before record `id`.
    pub fn history_before(&self, id: RecordId, record: &Record) -> &[PriorDonation] {
        self.donations
            .get(&record.donor.person.identifier)
            .map_or(&[][..], |h| &h[..h.partition_point(|p| p.record_id < id)])
    }

    /// Adds the group's own records as donations of their donors, after
    /// those loaded (which must all precede the group's first record).
    pub fn add_group_donations<'r>(
        &mut self,
        records: impl IntoIterator<Item = (RecordId, &'r Record)>,
    ) {
        for (id, record) in records {
            self.donations
                .entry(record.donor.person.identifier)
                .or_default()
                .push(PriorDonation::of(id, record));
        }
    }
}
