//! The rule engine alone: `Engine::evaluate` over a few thousand synthetic
//! records (the load generator's mix), each with the context the store would
//! load for it: the registered clinic, the donor's earlier records and the
//! clinic's windows. It runs on one thread, so Criterion's throughput
//! (`elem/s`, one element per record) is records per second per core.
//!
//! ```text
//! cargo bench --bench rules
//! ```

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use chrono::{DateTime, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use transplant_audit_core::domain::{
    Clinic, DonorKind, DonorRelation, Fingerprint, FingerprintKey, Record, RecordId,
};
use transplant_audit_core::rules::{ClinicWindow, Engine, PriorDonation, RuleContext, WindowSpec};
use transplant_audit_core::wire::convert;

// The load generator's synthesiser, shared rather than copied. Its unit tests
// come along under `cfg(test)` without a harness to run them: hence `unused_imports`.
#[allow(dead_code, unused_imports)]
#[path = "../crates/tools/src/bin/loadgen/rng.rs"]
mod rng;
#[allow(dead_code, unused_imports)]
#[path = "../crates/tools/src/bin/loadgen/synth.rs"]
mod synth;

/// Records evaluated per iteration.
const RECORDS: usize = 4096;

/// One record with everything the rules read besides it.
struct Case {
    record: Record,
    clinic: Option<usize>,
    history: Vec<PriorDonation>,
    window: ClinicWindow,
}

impl Case {
    fn context<'a>(&'a self, clinics: &'a [Clinic]) -> RuleContext<'a> {
        RuleContext {
            clinic: self.clinic.map(|i| &clinics[i]),
            donor_history: &self.history,
            clinic_window: &self.window,
            peer_matches: &[],
        }
    }
}

/// The synthetic records, pseudonymised as the server would, each with its
/// context as it stood when the records before it had been accepted.
fn cases(engine: &Engine) -> (Vec<Clinic>, Vec<Case>) {
    let latest = DateTime::from_timestamp(1_750_000_000, 0).expect("a valid instant");
    let settings = synth::Settings {
        run_id: "bench".into(),
        clinics: 100,
        hospital_id: None,
        latest,
        records: RECORDS,
        clinic_rate: 200,
    };
    let mut synth = synth::Synth::new(settings, rng::Rng::new(7));
    let (protos, _) = synth.records("b", RECORDS);
    let clinics: Vec<Clinic> = synth
        .clinics()
        .iter()
        .map(|c| convert::clinic(Some(&c.to_proto())).expect("a valid clinic"))
        .collect();
    let by_id: HashMap<&str, usize> = clinics
        .iter()
        .enumerate()
        .map(|(i, c)| (c.clinic_id.as_str(), i))
        .collect();
    let key = FingerprintKey::from_bytes(&[0x42; 32]).expect("a long enough key");
    let records: Vec<Record> = protos
        .iter()
        .map(|p| {
            convert::submission("record", Some(p), Utc::now())
                .expect("a valid record")
                .pseudonymise(&key)
        })
        .collect();
    let mut donors: HashMap<Fingerprint, Vec<PriorDonation>> = HashMap::new();
    let mut cases = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        let donor = record.donor.person.identifier;
        let spec = WindowSpec::for_record(record, engine.config());
        cases.push(Case {
            clinic: by_id.get(record.clinic_id.as_str()).copied(),
            history: donors.get(&donor).cloned().unwrap_or_default(),
            window: window(&records[..i], record, spec),
            record: record.clone(),
        });
        donors.entry(donor).or_default().push(PriorDonation {
            record_id: RecordId(i as i64),
            organ: record.organ,
            laterality: record.laterality,
            kind: record.donor.kind,
            procured_at: record.procured_at,
        });
    }
    (clinics, cases)
}

/// The clinic windows of `record` over the records accepted before it, as the store computes them.
fn window(earlier: &[Record], record: &Record, spec: WindowSpec) -> ClinicWindow {
    let at = record.transplanted_at;
    let mut window = ClinicWindow::default();
    let same_clinic = earlier
        .iter()
        .enumerate()
        .filter(|(_, r)| r.clinic_id == record.clinic_id && r.transplanted_at <= at);
    for (j, r) in same_clinic {
        let id = RecordId(j as i64);
        let t = r.transplanted_at;
        match r.donor.kind {
            DonorKind::Living { relation } if spec.foreign_living && r.donor_is_foreign() => {
                if t >= at - spec.cluster {
                    window
                        .foreign_living_donors
                        .push((id, r.donor.person.nationality));
                }
                if t >= at - spec.surge && relation == DonorRelation::UnrelatedDirected {
                    window.foreign_unrelated_living.push(id);
                }
            }
            DonorKind::Deceased { .. } if spec.deceased && t >= at - spec.share => {
                window.deceased_transplants += 1;
                window.deceased_to_non_residents += u64::from(r.recipient_is_foreign());
            }
            _ => {}
        }
    }
    window
}

fn evaluate(c: &mut Criterion) {
    let engine = Engine::default();
    let (clinics, cases) = cases(&engine);
    let flagged = cases
        .iter()
        .filter(|case| {
            !engine
                .evaluate(&case.record, &case.context(&clinics))
                .is_empty()
        })
        .count();
    println!(
        "{} records ({flagged} flagged), one thread: elem/s below is records/s per core",
        cases.len()
    );
    let mut group = c.benchmark_group("rules");
    group.throughput(Throughput::Elements(cases.len() as u64));
    group.bench_function("evaluate", |b| {
        b.iter(|| {
            cases
                .iter()
                .map(|case| {
                    engine
                        .evaluate(black_box(&case.record), &case.context(&clinics))
                        .len()
                })
                .sum::<usize>()
        })
    });
    group.finish();
}

// The group function the macro generates carries no documentation.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! {
        name = benches;
        config = Criterion::default()
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5));
        targets = evaluate
    }
}
criterion_main!(group::benches);
