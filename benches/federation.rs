//! Federation's arithmetic alone: the elements ingest computes for a record
//! (two hashes to the group and two scalar multiplications), one record at a
//! time on one core and a batch on all cores as ingest does, and the raising
//! a sync does, one element at a time on one core and a batch on all cores
//! (decoding, multiplying and encoding, as the serving side does).
//! Criterion's throughput (`elem/s`) is records per second for `elements`
//! and elements raised per second for the others.
//!
//! ```text
//! cargo bench -p transplant-audit-core --bench federation
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use transplant_audit_core::domain::{Element, FederationKey, IdentifierScheme, PersonIdentifier};

/// Elements per iteration.
const BATCH: usize = 4096;

fn person(i: usize) -> PersonIdentifier {
    let country = "KZ".parse().expect("a country");
    PersonIdentifier::new(IdentifierScheme::Passport, country, &format!("N{i:08}"))
        .expect("an identifier")
}

fn bench(c: &mut Criterion) {
    let ours = FederationKey::from_bytes(&[1; 32]).expect("a key");
    let theirs = FederationKey::from_bytes(&[2; 32]).expect("a key");
    let people: Vec<(PersonIdentifier, PersonIdentifier)> = (0..BATCH)
        .map(|i| (person(2 * i), person(2 * i + 1)))
        .collect();
    let elements: Vec<Element> = people.iter().map(|(d, _)| ours.element(d)).collect();

    let mut group = c.benchmark_group("federation");
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("record_elements_one_core", |b| {
        b.iter(|| {
            for (donor, recipient) in &people {
                black_box(ours.record_elements(donor, recipient));
            }
        })
    });
    let pairs: Vec<(&PersonIdentifier, &PersonIdentifier)> =
        people.iter().map(|(d, r)| (d, r)).collect();
    group.bench_function("records_elements_all_cores", |b| {
        b.iter(|| black_box(ours.records_elements(&pairs)))
    });
    group.bench_function("raise_one_core", |b| {
        b.iter(|| {
            for e in &elements {
                black_box(theirs.raise(e).expect("a point"));
            }
        })
    });
    group.bench_function("raise_all_cores", |b| {
        b.iter(|| black_box(theirs.raise_all(&elements).expect("points")))
    });
    group.finish();
}

// The group function the macro generates carries no documentation.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, bench);
}
criterion_main!(group::benches);
