//! The non-resident share window of a rescan, counted in memory.
//!
//! Asked record by record, the database reads a clinic's deceased-donor
//! transplants of the last 365 days again for every deceased-donor transplant
//! to a non-resident: hundreds of rows each time, scattered over the table.
//! Chunks follow one another in id order, and ids mostly follow transplant
//! time, so the windows of one chunk overlap those of the previous one almost
//! entirely. The cache keeps, per clinic, every deceased-donor transplant in
//! a span of transplant instants, fetches only the part of the next span it
//! lacks, and drops what the current chunk no longer needs. A window is then
//! counted from the cached rows, keeping only records stored before the
//! record (lower ids), exactly as the per-record query does.
//!
//! Memory stays bounded: a clinic's span never exceeds [`MAX_SPAN_WINDOWS`]
//! share windows (a chunk whose records at one clinic are further apart is
//! counted by the database instead), clinics unused for [`EVICT_AFTER`]
//! chunks are dropped, and so is every clinic the current chunk does not
//! use once [`MAX_CACHED_ROWS`] rows are held.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};

use crate::rules::WindowSpec;
use crate::store::rescan::{ClinicSpan, DeceasedTransplant, WindowProbe};
use crate::store::{Store, StoreError, WindowRequest};

/// Longest span a clinic may cache, in share windows.
pub const MAX_SPAN_WINDOWS: i32 = 2;

/// Chunks after which an unused clinic is dropped.
pub const EVICT_AFTER: u64 = 64;

/// Rows held at most across clinics, beyond the current chunk's needs.
pub const MAX_CACHED_ROWS: usize = 1_000_000;

/// One clinic's deceased-donor transplants with instants in `[from, until)`,
/// sorted by instant and id.
#[derive(Debug, Clone)]
struct Cached {
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    rows: Vec<DeceasedTransplant>,
    used: u64,
}

/// Per clinic, the deceased-donor transplants around the current chunk.
#[derive(Debug, Default)]
pub struct DeceasedCache {
    clinics: HashMap<String, Cached>,
    chunk: u64,
}

/// What a chunk needs: the spans to fetch and the span each clinic keeps.
#[derive(Debug, Default)]
pub struct Plan {
    /// Parts of spans not cached yet.
    pub fetch: Vec<ClinicSpan>,
    /// Per cached clinic, the span it covers once the fetched parts are in.
    keep: Vec<ClinicSpan>,
}

/// The last instant a window ending at `at` includes, as an exclusive bound.
fn after(at: DateTime<Utc>) -> DateTime<Utc> {
    at + Duration::microseconds(1)
}

impl DeceasedCache {
    /// The deceased-donor transplants in each probe's window stored before
    /// its record, and how many went to non-residents.
    pub async fn counts(
        &mut self,
        store: &Store,
        probes: &[WindowProbe],
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        if probes.is_empty() {
            return Ok(Vec::new());
        }
        let plan = self.plan(probes);
        let fetched = store.deceased_transplants(&plan.fetch).await?;
        self.apply(plan, fetched);
        let mut counts: Vec<Option<(u64, u64)>> = probes.iter().map(|p| self.count(p)).collect();
        let wide: Vec<WindowProbe> = probes
            .iter()
            .zip(&counts)
            .filter(|(_, c)| c.is_none())
            .map(|(p, _)| p.clone())
            .collect();
        let requests: Vec<WindowRequest<'_>> = wide
            .iter()
            .map(|p| WindowRequest {
                clinic_id: &p.clinic_id,
                until: p.at,
                spec: WindowSpec {
                    foreign_living: false,
                    deceased: true,
                    surge: Duration::zero(),
                    cluster: Duration::zero(),
                    share: p.at - p.since,
                },
                before: p.before,
            })
            .collect();
        let mut from_database = store
            .clinic_windows(&requests)
            .await?
            .into_iter()
            .map(|w| (w.deceased_transplants, w.deceased_to_non_residents));
        for count in &mut counts {
            if count.is_none() {
                *count = from_database.next();
            }
        }
        Ok(counts.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// The spans this chunk's probes need and what to fetch of them.
    pub fn plan(&self, probes: &[WindowProbe]) -> Plan {
        let mut needs: HashMap<&str, (DateTime<Utc>, DateTime<Utc>)> = HashMap::new();
        for p in probes {
            let need = needs
                .entry(p.clinic_id.as_str())
                .or_insert((p.since, after(p.at)));
            need.0 = need.0.min(p.since);
            need.1 = need.1.max(after(p.at));
        }
        let max_span = probes
            .iter()
            .map(|p| p.at - p.since)
            .max()
            .unwrap_or_default()
            * MAX_SPAN_WINDOWS;
        let mut plan = Plan::default();
        let mut needs: Vec<_> = needs.into_iter().collect();
        needs.sort_unstable_by_key(|(clinic, _)| *clinic);
        for (clinic, (from, until)) in needs {
            if until - from > max_span {
                continue;
            }
            let span = |from, until| ClinicSpan {
                clinic_id: clinic.to_owned(),
                from,
                until,
            };
            match self.clinics.get(clinic) {
                Some(c) if c.from <= until && from <= c.until => {
                    if from < c.from {
                        plan.fetch.push(span(from, c.from));
                    }
                    if c.until < until {
                        plan.fetch.push(span(c.until, until));
                    }
                }
                _ => plan.fetch.push(span(from, until)),
            }
            plan.keep.push(span(from, until));
        }
        plan
    }

    /// Takes in the fetched parts of `plan` and trims every clinic to its span.
    pub fn apply(&mut self, plan: Plan, fetched: Vec<Vec<DeceasedTransplant>>) {
        self.chunk += 1;
        for keep in plan.keep {
            let entry = self
                .clinics
                .entry(keep.clinic_id)
                .or_insert_with(|| Cached {
                    from: keep.from,
                    until: keep.from,
                    rows: Vec::new(),
                    used: 0,
                });
            if !(entry.from <= keep.until && keep.from <= entry.until) {
                // Disjoint from what was cached: everything was fetched anew.
                entry.rows.clear();
            }
            entry
                .rows
                .retain(|r| keep.from <= r.transplanted_at && r.transplanted_at < keep.until);
            entry.from = keep.from;
            entry.until = keep.until;
            entry.used = self.chunk;
        }
        for (span, rows) in plan.fetch.into_iter().zip(fetched) {
            if let Some(entry) = self.clinics.get_mut(&span.clinic_id) {
                entry.rows.extend(rows);
            }
        }
        let chunk = self.chunk;
        self.clinics.retain(|_, c| {
            if c.used == chunk {
                c.rows.sort_unstable();
                c.rows.dedup();
            }
            c.used + EVICT_AFTER > chunk
        });
        if self.clinics.values().map(|c| c.rows.len()).sum::<usize>() > MAX_CACHED_ROWS {
            self.clinics.retain(|_, c| c.used == chunk);
        }
    }

    /// The probe's counts from the cache, or `None` when its clinic's span
    /// was too wide to cache.
    pub fn count(&self, probe: &WindowProbe) -> Option<(u64, u64)> {
        let c = self.clinics.get(&probe.clinic_id)?;
        if probe.since < c.from || c.until < after(probe.at) {
            return None;
        }
        let start = c.rows.partition_point(|r| r.transplanted_at < probe.since);
        let end = c.rows.partition_point(|r| r.transplanted_at <= probe.at);
        let (mut total, mut non_resident) = (0, 0);
        for r in c.rows[start..end].iter().filter(|r| r.id < probe.before) {
            total += 1;
            non_resident += u64::from(r.to_non_resident);
        }
        Some((total, non_resident))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RecordId;

    /// A deterministic stream of pseudo-random numbers (no dependency needed).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    fn day(d: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_600_000_000, 0).unwrap() + Duration::days(d)
    }

    /// What the per-record query counts.
    fn brute(rows: &[(String, DeceasedTransplant)], p: &WindowProbe) -> (u64, u64) {
        let hits: Vec<_> = rows
            .iter()
            .filter(|(c, r)| {
                *c == p.clinic_id
                    && r.transplanted_at >= p.since
                    && r.transplanted_at <= p.at
                    && r.id < p.before
            })
            .collect();
        (
            hits.len() as u64,
            hits.iter().filter(|(_, r)| r.to_non_resident).count() as u64,
        )
    }

    fn fetch(rows: &[(String, DeceasedTransplant)], span: &ClinicSpan) -> Vec<DeceasedTransplant> {
        rows.iter()
            .filter(|(c, r)| {
                *c == span.clinic_id
                    && span.from <= r.transplanted_at
                    && r.transplanted_at < span.until
            })
            .map(|(_, r)| *r)
            .collect()
    }

    /// Chunks mostly in time order with back-filled records, instants shared
    /// by several records, and now and then a chunk spread too wide to cache.
    #[test]
    fn cached_counts_match_the_per_record_query() {
        let mut rng = Lcg(7);
        let clinics = ["C0", "C1", "C2"];
        let mut rows = Vec::new();
        for id in 1..=3_000_i64 {
            let base = id / 4;
            let d = if rng.next(10) == 0 {
                rng.next(900) as i64
            } else {
                base
            };
            let at = day(d) + Duration::hours(rng.next(3) as i64 * 6);
            let clinic = clinics[rng.next(3) as usize].to_owned();
            rows.push((
                clinic,
                DeceasedTransplant {
                    transplanted_at: at,
                    id: RecordId(id),
                    to_non_resident: rng.next(4) == 0,
                },
            ));
        }
        let window = Duration::days(30);
        let mut cache = DeceasedCache::default();
        let mut wide = 0;
        for chunk in rows.chunks(40) {
            let probes: Vec<WindowProbe> = chunk
                .iter()
                .filter(|_| rng.next(3) == 0)
                .map(|(c, r)| WindowProbe {
                    clinic_id: c.clone(),
                    since: r.transplanted_at - window,
                    at: r.transplanted_at,
                    before: r.id,
                })
                .collect();
            let plan = cache.plan(&probes);
            let fetched = plan.fetch.iter().map(|s| fetch(&rows, s)).collect();
            cache.apply(plan, fetched);
            for p in &probes {
                match cache.count(p) {
                    Some(counted) => assert_eq!(counted, brute(&rows, p), "{p:?}"),
                    None => wide += 1,
                }
            }
            let held: usize = cache.clinics.values().map(|c| c.rows.len()).sum();
            assert!(held <= rows.len());
            for c in cache.clinics.values() {
                assert!(c.until - c.from <= window * MAX_SPAN_WINDOWS);
            }
        }
        assert!(wide > 0, "some chunks are too wide to cache");
    }

    #[test]
    fn an_overlapping_chunk_fetches_only_what_it_lacks() {
        let mut cache = DeceasedCache::default();
        let probe = |d: i64, id: i64| WindowProbe {
            clinic_id: "C".into(),
            since: day(d) - Duration::days(365),
            at: day(d),
            before: RecordId(id),
        };
        let plan = cache.plan(&[probe(400, 10)]);
        assert_eq!(plan.fetch.len(), 1);
        cache.apply(plan, vec![Vec::new()]);
        let plan = cache.plan(&[probe(410, 20)]);
        assert_eq!(
            plan.fetch,
            [ClinicSpan {
                clinic_id: "C".into(),
                from: after(day(400)),
                until: after(day(410)),
            }]
        );
    }
}
