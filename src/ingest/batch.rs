//! A batch of new records through the pipeline in a fixed number of
//! statements, whatever its size. Each record sees the stored records and
//! the batch's earlier records exactly as if it had been sent alone after them.

use std::collections::HashMap;

use tokio::sync::oneshot;

use tracing::{Instrument, info_span};

use crate::context::{Evaluation, GroupContext};
use crate::domain::{
    Clinic, DonorKind, DonorRelation, Fingerprint, Record, RecordElements, RecordId, Severity,
};
use crate::rules::{ClinicWindow, Engine, Finding, ForeignLivingTransplant, RuleId, WindowSpec};
use crate::store::batch::{NewFlag, NewRecord, StoredForm};
use crate::store::{ExistingRecord, IngestTx, StoreError, StoredAck, WindowRequest};

use super::{Ack, IngestError, Outcome, duplicate_or_conflict};

/// How a batch went: each record's answer, in order, and the flags raised.
pub(super) struct Stored {
    pub(super) answers: Vec<Result<Ack, IngestError>>,
    pub(super) raised: Vec<(RuleId, Severity)>,
}

/// What the batch holds at one position.
enum Slot<'e> {
    /// Stored before: a retry or a conflict.
    Existing(&'e ExistingRecord),
    /// The first record of the batch with its key: stored now, as `new[k]`.
    New(usize),
    /// A later record with the key of the one at position `first`, stored now as `new[k]`.
    Repeat { first: usize, k: usize },
}

/// Runs `records` (pseudonymised, with their stored forms) through the
/// pipeline inside `tx`: looks their idempotency keys up, takes the locks
/// of the new ones' keys and their record ids, telling `ordered` then. The
/// lookup runs before the locks, outside the critical section other
/// writers of these keys wait on; `None` when a concurrent writer took one
/// of the idempotency keys between the lookup and the insert: the caller
/// must roll back and try again.
pub(super) async fn store_in(
    tx: &mut IngestTx,
    engine: &Engine,
    records: &[Record],
    forms: &[StoredForm],
    ordered: &mut Option<oneshot::Sender<()>>,
) -> Result<Option<Stored>, StoreError> {
    let keys: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r.hospital_id.as_str(), r.external_record_id.as_str()))
        .collect();
    let existing = tx.find_existing_many(&keys).await?;
    let (slots, new) = slots_of(&keys, &existing);
    let ids = if new.is_empty() {
        Vec::new()
    } else {
        let fresh: Vec<&Record> = new.iter().map(|&i| &records[i]).collect();
        tx.lock_and_allocate(&fresh)
            .instrument(info_span!("lock"))
            .await?
    };
    if let Some(ordered) = ordered.take() {
        // Whoever waits may have gone; the batch goes on regardless.
        let _ = ordered.send(());
    }
    let fresh: Vec<NewRecord<'_>> = new
        .iter()
        .zip(&ids)
        .map(|(&i, &(id, seq))| NewRecord {
            id,
            seq,
            record: &records[i],
            form: &forms[i],
        })
        .collect();
    let Some((acks, raised)) = store_new(tx, engine, &fresh).await? else {
        return Ok(None);
    };
    // A record stored before, sent again unchanged (an import run anew),
    // gives its row the elements it lacks.
    let fills: Vec<(RecordId, RecordElements)> = slots
        .iter()
        .enumerate()
        .filter_map(|(i, slot)| match (slot, forms[i].elements) {
            (Slot::Existing(e), Some(elements)) if e.content_hash == forms[i].hash => {
                Some((e.id, elements))
            }
            _ => None,
        })
        .collect();
    tx.fill_elements(&fills).await?;
    let answers = slots
        .iter()
        .enumerate()
        .map(|(i, slot)| match *slot {
            Slot::Existing(e) => duplicate_or_conflict(&records[i], e, &forms[i].hash),
            Slot::New(k) => Ok(Ack {
                outcome: Outcome::Accepted,
                stored: acks[k],
            }),
            Slot::Repeat { first, k } => {
                let earlier = ExistingRecord {
                    id: acks[k].id,
                    version: acks[k].version,
                    content_hash: forms[first].hash.clone(),
                    received_at: acks[k].received_at,
                };
                duplicate_or_conflict(&records[i], &earlier, &forms[i].hash)
            }
        })
        .collect();
    Ok(Some(Stored { answers, raised }))
}

/// What each position of a batch holds, and the positions of the records
/// to store now, in batch order.
fn slots_of<'e>(
    keys: &[(&str, &str)],
    existing: &'e HashMap<(String, String), ExistingRecord>,
) -> (Vec<Slot<'e>>, Vec<usize>) {
    let mut first_at: HashMap<(&str, &str), (usize, usize)> = HashMap::new();
    let mut new: Vec<usize> = Vec::new();
    let slots = keys
        .iter()
        .enumerate()
        .map(|(i, &(hospital, external))| {
            if let Some(e) = existing.get(&(hospital.to_owned(), external.to_owned())) {
                Slot::Existing(e)
            } else if let Some(&(first, k)) = first_at.get(&(hospital, external)) {
                Slot::Repeat { first, k }
            } else {
                first_at.insert((hospital, external), (i, new.len()));
                new.push(i);
                Slot::New(new.len() - 1)
            }
        })
        .collect();
    (slots, new)
}

/// Loads the new records' context, runs the rules and stores the records
/// with their flags; their acknowledgements and the flags raised, or `None`
/// when a concurrent writer took one of their idempotency keys first.
async fn store_new(
    tx: &mut IngestTx,
    engine: &Engine,
    fresh: &[NewRecord<'_>],
) -> Result<Option<(Vec<StoredAck>, Vec<(RuleId, Severity)>)>, StoreError> {
    if fresh.is_empty() {
        return Ok(Some((Vec::new(), Vec::new())));
    }
    let group: Vec<(RecordId, &Record)> = fresh.iter().map(|n| (n.id, n.record)).collect();
    let context = Context::load(tx, engine, &group)
        .instrument(info_span!("context"))
        .await?;
    let findings = info_span!("rules").in_scope(|| context.evaluate(engine, &group));
    let flags: Vec<NewFlag<'_>> = fresh
        .iter()
        .zip(&findings)
        .flat_map(|(n, found)| {
            found.iter().map(|finding| NewFlag {
                record_id: n.id,
                record: n.record,
                finding,
            })
        })
        .collect();
    let persisted = async {
        let Some(stored) = tx.insert_new(fresh).await? else {
            return Ok(None);
        };
        tx.insert_flags(&flags).await?;
        Ok::<_, StoreError>(Some(stored))
    }
    .instrument(info_span!("persist"))
    .await?;
    let raised = flags
        .iter()
        .map(|f| (f.finding.rule, f.finding.severity))
        .collect();
    Ok(persisted.map(|acks| (acks, raised)))
}

/// What the rules read for new records (a batch's, or an amended one):
/// the registry entries of their clinics, and their group context (their
/// donors' donations and their clinic windows as stored before the first of
/// them, with the group's earlier records added).
pub(super) struct Context {
    clinics: HashMap<String, Clinic>,
    group: GroupContext,
}

impl Context {
    /// Adds what federation syncs found about stored records: an amended
    /// record keeps its peers' matches (a new record has none).
    pub(super) async fn with_peer_matches(
        mut self,
        tx: &mut IngestTx,
        ids: &[RecordId],
    ) -> Result<Self, StoreError> {
        self.group.peer_matches = tx.peer_matches(ids).await?;
        Ok(self)
    }

    /// Three statements at most (clinics, donor histories, clinic windows),
    /// at once where the pool has idle connections. `fresh` is in id order,
    /// none of it counted in what is stored.
    pub(super) async fn load(
        tx: &mut IngestTx,
        engine: &Engine,
        fresh: &[(RecordId, &Record)],
    ) -> Result<Self, StoreError> {
        let mut clinic_ids: Vec<&str> = fresh.iter().map(|(_, r)| r.clinic_id.as_str()).collect();
        clinic_ids.sort_unstable();
        clinic_ids.dedup();

        let mut donors: Vec<Fingerprint> = fresh
            .iter()
            .map(|(_, r)| r.donor.person.identifier)
            .collect();
        donors.sort_unstable();
        donors.dedup();
        let first = fresh[0].0;

        let specs: Vec<WindowSpec> = fresh
            .iter()
            .map(|(_, r)| WindowSpec::for_record(r, engine.config()))
            .collect();
        let (reading, requests): (Vec<usize>, Vec<WindowRequest<'_>>) = fresh
            .iter()
            .zip(&specs)
            .enumerate()
            .filter(|(_, (_, spec))| spec.reads_any())
            .map(|(k, (&(id, record), &spec))| {
                let request = WindowRequest {
                    clinic_id: &record.clinic_id,
                    until: record.transplanted_at,
                    spec,
                    before: id,
                };
                (k, request)
            })
            .unzip();
        let (clinics, donations, loaded) =
            tx.context(&clinic_ids, &donors, first, &requests).await?;
        let mut windows = vec![ClinicWindow::default(); fresh.len()];
        for (k, window) in reading.into_iter().zip(loaded) {
            windows[k] = window;
        }
        let mut group = GroupContext {
            donations,
            windows,
            ..GroupContext::default()
        };
        group.add_group_donations(fresh.iter().copied());
        count_earlier_in_windows(&mut group.windows, &specs, fresh);
        Ok(Self { clinics, group })
    }

    /// Every record's findings, in order.
    pub(super) fn evaluate(
        &self,
        engine: &Engine,
        fresh: &[(RecordId, &Record)],
    ) -> Vec<Vec<Finding>> {
        self.group
            .evaluate(engine, &self.clinics, fresh, Evaluation::Arriving)
    }
}

/// Adds to each record's windows the group's earlier records at its clinic,
/// which the store does not hold yet.
fn count_earlier_in_windows(
    windows: &mut [ClinicWindow],
    specs: &[WindowSpec],
    fresh: &[(RecordId, &Record)],
) {
    let mut at_clinic: HashMap<&str, Vec<(RecordId, &Record)>> = HashMap::new();
    for (k, &(id, record)) in fresh.iter().enumerate() {
        if specs[k].reads_any() {
            let earlier = at_clinic.get(record.clinic_id.as_str());
            for &(earlier_id, e) in earlier.into_iter().flatten() {
                add_to_window(&mut windows[k], &specs[k], record, e, earlier_id);
            }
        }
        at_clinic
            .entry(&record.clinic_id)
            .or_default()
            .push((id, record));
    }
}

/// Counts `earlier` (a record of the batch stored before `record`, at the
/// same clinic) in the windows `record`'s rules read.
fn add_to_window(
    window: &mut ClinicWindow,
    spec: &WindowSpec,
    record: &Record,
    earlier: &Record,
    earlier_id: RecordId,
) {
    let until = record.transplanted_at;
    match earlier.donor.kind {
        DonorKind::Living { relation } if spec.foreign_living && earlier.donor_is_foreign() => {
            window.add_foreign_living(
                spec,
                until,
                ForeignLivingTransplant {
                    record_id: earlier_id,
                    transplanted_at: earlier.transplanted_at,
                    donor_nationality: earlier.donor.person.nationality,
                    unrelated_directed: relation == DonorRelation::UnrelatedDirected,
                },
            );
        }
        DonorKind::Deceased { .. } if spec.deceased => {
            window.add_deceased(
                spec,
                until,
                earlier.transplanted_at,
                earlier.recipient_is_foreign(),
            );
        }
        _ => {}
    }
}
