//! A stream's batch stored in two transactions at once, its records split
//! by clinic.
//!
//! One transaction per batch runs one critical section at a time: a batch
//! has records at nearly every clinic, its window readers hold their
//! clinics exclusively, so the next batch waits for it to commit. Split
//! into lanes that share no key the rules read (records of one clinic, or
//! of one donor, always go together), the lanes' transactions take no lock
//! the other wants, and a clinic's lane is the same in every batch, so
//! consecutive batches overlap too. Within a lane records keep their batch
//! order; records of different lanes never read each other, so their
//! relative order is immaterial. Each lane takes its locks and record ids
//! only once the lane before it holds its own, exactly as consecutive
//! batches of a stream do.

use std::collections::HashMap;

use tokio::sync::oneshot;

use super::{Ack, IngestError, Ingestor, Prepared};
use crate::domain::Record;
use crate::rules::ContextKey;
use crate::store::StoreError;

/// Transactions a stream's batch is stored in at once.
pub const LANES: usize = 2;

/// The lane of a clinic's records, the same in every batch (FNV-1a).
pub fn lane_of(clinic_id: &str) -> usize {
    let hash = clinic_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % LANES as u64) as usize
}

/// Each record's lane: that of the clinic of the first record it meets,
/// through any chain of shared keys, so that records which meet share a lane.
fn lanes_of(records: &[Record]) -> Vec<usize> {
    // Union-find over positions; a set's root is its first record.
    let mut parent: Vec<usize> = (0..records.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut first_with: HashMap<ContextKey<'_>, usize> = HashMap::new();
    for (i, record) in records.iter().enumerate() {
        for (key, _) in ContextKey::of(record) {
            let earlier = *first_with.entry(key).or_insert(i);
            let (a, b) = (root(&mut parent, earlier), root(&mut parent, i));
            parent[a.max(b)] = a.min(b);
        }
    }
    (0..records.len())
        .map(|i| lane_of(&records[root(&mut parent, i)].clinic_id))
        .collect()
}

/// One lane of a batch: its records, in batch order, with their positions.
struct Lane {
    positions: Vec<usize>,
    records: Prepared,
}

impl Prepared {
    /// Splits into the lanes that hold records, in lane order.
    fn into_lanes(self) -> Vec<Lane> {
        let mut lanes: Vec<Lane> = (0..LANES)
            .map(|_| Lane {
                positions: Vec::new(),
                records: Prepared::default(),
            })
            .collect();
        let lane_of_record = lanes_of(&self.records);
        let records = self.records.into_iter().zip(self.forms);
        for (position, ((record, form), lane)) in records.zip(lane_of_record).enumerate() {
            let lane = &mut lanes[lane];
            lane.positions.push(position);
            lane.records.records.push(record);
            lane.records.forms.push(form);
        }
        lanes.retain(|lane| !lane.records.is_empty());
        lanes
    }
}

impl Ingestor {
    /// Stores a stream's batch in a transaction per lane, at once; tells
    /// `ordered` once every lane holds its locks and record ids. Answers
    /// come in batch order once every lane has committed; if one fails, its
    /// error is returned and the other lanes may have committed (their
    /// records then come back as duplicates when the client resends).
    pub async fn store_in_lanes(
        &self,
        batch: Prepared,
        ordered: oneshot::Sender<()>,
    ) -> Result<Vec<Result<Ack, IngestError>>, StoreError> {
        let lanes = batch.into_lanes();
        let mut ordered = Some(ordered);
        let mut after: Option<oneshot::Receiver<()>> = None;
        let last = lanes.len().saturating_sub(1);
        let runs = lanes.iter().enumerate().map(|(i, lane)| {
            let (signal, next) = if i == last {
                (ordered.take(), None)
            } else {
                let (signal, next) = oneshot::channel();
                (Some(signal), Some(next))
            };
            let waits_for = std::mem::replace(&mut after, next);
            async move {
                if let Some(previous) = waits_for {
                    // Sent, or dropped by a lane that failed first.
                    let _ = previous.await;
                }
                self.store_ordered(&lane.records, signal).await
            }
        });
        let stored = futures::future::join_all(runs.collect::<Vec<_>>()).await;
        let mut answers = Vec::with_capacity(lanes.iter().map(|l| l.positions.len()).sum());
        for (lane, answered) in lanes.iter().zip(stored) {
            answers.extend(lane.positions.iter().copied().zip(answered?));
        }
        answers.sort_unstable_by_key(|&(position, _)| position);
        Ok(answers.into_iter().map(|(_, answer)| answer).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Fingerprint;
    use crate::rules::fixtures::deceased;
    use crate::store::batch::StoredForm;

    /// A clinic id of each lane, in lane order.
    fn clinic_per_lane() -> Vec<String> {
        (0..LANES)
            .map(|lane| {
                (0..)
                    .map(|i| format!("CL-{i:03}"))
                    .find(|c| lane_of(c) == lane)
                    .expect("every lane has clinics")
            })
            .collect()
    }

    fn at(clinic: &str, donor: u8) -> Record {
        let mut r = deceased();
        r.clinic_id = clinic.into();
        r.donor.person.identifier = Fingerprint([donor; 32]);
        r
    }

    #[test]
    fn clinics_spread_over_the_lanes() {
        let lanes: Vec<usize> = (0..200).map(|i| lane_of(&format!("CL-{i:03}"))).collect();
        for lane in 0..LANES {
            let share = lanes.iter().filter(|&&l| l == lane).count();
            assert!(
                (60..=140).contains(&share),
                "lane {lane} holds {share} of 200 clinics"
            );
        }
    }

    #[test]
    fn records_that_share_no_key_go_to_their_clinics_lanes() {
        let clinics = clinic_per_lane();
        let records = [at(&clinics[0], 1), at(&clinics[1], 2), at(&clinics[0], 3)];
        assert_eq!(lanes_of(&records), [0, 1, 0]);
    }

    #[test]
    fn a_donor_at_two_clinics_takes_both_into_the_lane_of_the_first() {
        let clinics = clinic_per_lane();
        // Record 2 joins clinic 1 to clinic 0 through donor 1; record 3 is
        // at clinic 1 with a donor of its own and still follows.
        let records = [
            at(&clinics[1], 9),
            at(&clinics[0], 1),
            at(&clinics[1], 1),
            at(&clinics[1], 4),
        ];
        assert_eq!(lanes_of(&records), [1, 1, 1, 1]);
        let records = [at(&clinics[0], 1), at(&clinics[1], 1), at(&clinics[1], 4)];
        assert_eq!(lanes_of(&records), [0, 0, 0]);
    }

    #[test]
    fn a_batch_splits_into_its_lanes_in_batch_order() {
        let clinics = clinic_per_lane();
        let records = vec![at(&clinics[1], 1), at(&clinics[0], 2), at(&clinics[1], 3)];
        let forms = records.iter().map(|r| StoredForm::of(r, None)).collect();
        let lanes = Prepared { records, forms }.into_lanes();
        let positions: Vec<&[usize]> = lanes.iter().map(|l| l.positions.as_slice()).collect();
        assert_eq!(positions, [&[1][..], &[0, 2][..]]);
        for lane in &lanes {
            for (record, form) in lane.records.records.iter().zip(&lane.records.forms) {
                assert_eq!(
                    form.hash,
                    StoredForm::of(record, None).hash,
                    "forms stay with their records"
                );
            }
        }
    }
}
