//! Re-running rules over stored records: after a rule or threshold change, or
//! a registry correction. Adds only flags that do not exist, never deletes an
//! auditor's work, resumes after an interruption, and as a dry run reports
//! what a change would add and which existing flags it would no longer raise.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::ControlFlow;

use crate::context::{Evaluation, GroupContext};
use crate::domain::Record;
use crate::domain::{Fingerprint, RecordId};
use crate::rules::{ClinicWindow, Engine, Finding, PriorDonation, RuleId, RulesConfig, WindowSpec};
use crate::store::rescan::{
    ExistingFlag, NewFlag, RescanRun, StoredRecord, TransplantRange, WindowProbe,
};
use crate::store::{Store, StoreError, WindowRequest};

mod deceased;

use deceased::DeceasedCache;

/// Records evaluated per transaction.
pub const DEFAULT_CHUNK: i64 = 5_000;

/// Examples kept per rule and kind of change.
pub const DEFAULT_EXAMPLES: usize = 5;

/// What to rescan.
#[derive(Debug, Clone, Default)]
pub struct RescanRequest {
    /// Rules to evaluate; empty means every enabled rule.
    pub rules: Vec<RuleId>,
    /// Only records in this transplant-time range.
    pub range: TransplantRange,
    /// Report only; write nothing.
    pub dry_run: bool,
    /// Continue this earlier run (its rules and range apply).
    pub resume: Option<i64>,
    /// Records per transaction; [`DEFAULT_CHUNK`] when zero.
    pub chunk_size: i64,
}

/// How far a rescan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The recorded run, when not a dry run.
    pub run_id: Option<i64>,
    /// Records evaluated in this invocation.
    pub processed: u64,
    /// Records this invocation will evaluate.
    pub total: u64,
    /// Flags added in this invocation.
    pub flags_added: u64,
}

/// What one rule's re-evaluation changed, or would change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleChange {
    /// Records the rule now flags that had no flag of it.
    pub added: u64,
    /// Existing flags of the rule that it still raises.
    pub still_raised: u64,
    /// Existing flags of the rule that it would no longer raise (kept as they are).
    pub no_longer_raised: u64,
    /// Some records of `added`, as (record id, hospital's record id).
    pub added_examples: Vec<(RecordId, String)>,
    /// Some flags of `no_longer_raised`, by flag id.
    pub no_longer_raised_examples: Vec<i64>,
}

/// The outcome of a rescan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RescanReport {
    /// The recorded run, when not a dry run.
    pub run_id: Option<i64>,
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Records evaluated in this invocation.
    pub processed: u64,
    /// Flags added in this invocation.
    pub flags_added: u64,
    /// Per rule.
    pub rules: BTreeMap<RuleId, RuleChange>,
}

/// Why a rescan could not run.
#[derive(Debug, thiserror::Error)]
pub enum RescanError {
    /// No run with that id.
    #[error("no rescan run {0}")]
    UnknownRun(i64),
    /// The run was already completed.
    #[error("rescan run {0} is already complete")]
    AlreadyFinished(i64),
    /// A run names a rule this build does not know.
    #[error("rescan run {run} names unknown rule {rule:?}")]
    UnknownRule {
        /// The run.
        run: i64,
        /// The rule id.
        rule: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs a rescan, calling `progress` once before the first chunk (with the
/// run's id) and after every chunk; after a chunk `progress` may stop it
/// with `ControlFlow::Break`, which leaves a recorded run resumable.
///
/// While one chunk is evaluated and its flags written, the next is read (its
/// records, donors' histories, clinic windows and existing flags) on other
/// connections, so the database and the rules work side by side.
pub async fn rescan(
    store: &Store,
    engine: &Engine,
    request: RescanRequest,
    mut progress: impl FnMut(Progress) -> ControlFlow<()>,
) -> Result<RescanReport, RescanError> {
    let (run, rules, range) = prepare(store, engine, &request).await?;
    let cursor = run.as_ref().map_or(RecordId(0), |r| r.cursor);
    let total = u64::try_from(store.count_records(range, cursor).await?).unwrap_or(0);
    let clinics = store.all_clinics().await?;
    let mut report = RescanReport {
        run_id: run.as_ref().map(|r| r.id),
        dry_run: request.dry_run,
        rules: rules.iter().map(|r| (*r, RuleChange::default())).collect(),
        ..RescanReport::default()
    };
    let reader = Reader::new(store, engine, &rules, range, cursor, request.chunk_size);
    // The run's id before any work, so that an interrupted caller can
    // resume it; stopping takes effect after a chunk.
    let _ = progress(report.progress(total));
    let mut pending = Prefetch::start(reader, cursor);
    loop {
        let (reader, loaded) = pending.finish().await;
        let Some(loaded) = loaded? else { break };
        let Some(last_id) = loaded.chunk.last().map(|r| r.id) else {
            break;
        };
        // Read the next chunk while this one is evaluated and written.
        pending = Prefetch::start(reader, last_id);
        let records: Vec<(RecordId, &Record)> =
            loaded.chunk.iter().map(|r| (r.id, &r.record)).collect();
        let findings =
            loaded
                .group
                .evaluate(engine, &clinics, &records, Evaluation::Rescan(&rules));
        let new_flags = report.compare(&rules, &loaded, &findings);
        let processed = loaded.chunk.len() as u64;
        if !request.dry_run {
            report.flags_added += store
                .commit_rescan_chunk(report.run_id, last_id, processed as i64, &new_flags)
                .await?;
        }
        report.processed += processed;
        if progress(report.progress(total)).is_break() {
            // Dropping `pending` abandons the read ahead; it wrote nothing.
            return Ok(report);
        }
    }
    if let Some(run) = report.run_id {
        store.finish_rescan(run).await?;
    }
    Ok(report)
}

impl RescanReport {
    /// Where the run stands, of `total` records.
    fn progress(&self, total: u64) -> Progress {
        Progress {
            run_id: self.run_id,
            processed: self.processed,
            total,
            flags_added: self.flags_added,
        }
    }

    /// Counts what `findings` (one per record of the chunk) change against
    /// the chunk's existing flags of `rules`; returns the flags to add.
    fn compare<'c>(
        &mut self,
        rules: &[RuleId],
        loaded: &'c Loaded,
        findings: &'c [Vec<Finding>],
    ) -> Vec<NewFlag<'c>> {
        let existing = &loaded.existing;
        let flagged: HashSet<RecordId> = existing.keys().map(|(id, _)| *id).collect();
        let mut new_flags = Vec::new();
        for (stored, found) in loaded.chunk.iter().zip(findings) {
            if found.is_empty() && !flagged.contains(&stored.id) {
                // Nothing raised and nothing to compare with: no change to count.
                continue;
            }
            let fired: HashSet<RuleId> = found.iter().map(|f| f.rule).collect();
            for rule in rules {
                let change = self.rules.entry(*rule).or_default();
                change.count(
                    stored,
                    fired.contains(rule),
                    existing.get(&(stored.id, *rule)),
                );
            }
            new_flags.extend(
                found
                    .iter()
                    .filter(|f| !existing.contains_key(&(stored.id, f.rule)))
                    .map(|finding| NewFlag {
                        record: stored,
                        finding,
                    }),
            );
        }
        new_flags
    }
}

impl RuleChange {
    /// Counts one record: whether the rule fired on it now, and its flag of
    /// the rule from before, if any.
    fn count(&mut self, stored: &StoredRecord, fired: bool, flag: Option<&ExistingFlag>) {
        match (fired, flag) {
            (true, Some(_)) => self.still_raised += 1,
            (true, None) => {
                self.added += 1;
                if self.added_examples.len() < DEFAULT_EXAMPLES {
                    self.added_examples
                        .push((stored.id, stored.record.external_record_id.clone()));
                }
            }
            (false, Some(flag)) => {
                self.no_longer_raised += 1;
                if self.no_longer_raised_examples.len() < DEFAULT_EXAMPLES {
                    self.no_longer_raised_examples.push(flag.flag_id);
                }
            }
            (false, None) => {}
        }
    }
}

/// A chunk with everything its rules read besides the registry.
struct Loaded {
    /// The records, in id order.
    chunk: Vec<StoredRecord>,
    /// The chunk's donors' records before the chunk's last record, and each
    /// record's clinic windows.
    group: GroupContext,
    /// Flags of the rescanned rules already on the chunk's records.
    existing: HashMap<(RecordId, RuleId), ExistingFlag>,
}

/// Reads chunks in id order; owns what it carries from one chunk to the next.
struct Reader {
    store: Store,
    config: RulesConfig,
    range: TransplantRange,
    chunk_size: i64,
    rule_ids: Vec<String>,
    deceased: DeceasedCache,
    /// The donors of every record read so far, when that is every record
    /// below the cursor (a whole rescan from the first record).
    donors_seen: Option<DonorFilter>,
}

impl Reader {
    /// Reads the records of `range` after `cursor` in chunks of
    /// `chunk_size` ([`DEFAULT_CHUNK`] when zero), for `rules`.
    fn new(
        store: &Store,
        engine: &Engine,
        rules: &[RuleId],
        range: TransplantRange,
        cursor: RecordId,
        chunk_size: i64,
    ) -> Self {
        Self {
            store: store.clone(),
            config: engine.config().clone(),
            range,
            chunk_size: if chunk_size > 0 {
                chunk_size
            } else {
                DEFAULT_CHUNK
            },
            rule_ids: rules.iter().map(|r| r.as_str().to_owned()).collect(),
            deceased: DeceasedCache::default(),
            // Only a rescan that reads every record from the first one knows
            // every donor below its cursor.
            donors_seen: (cursor == RecordId(0) && range == TransplantRange::default())
                .then(DonorFilter::new),
        }
    }

    /// The chunk after `after`, or `None` past the last record.
    async fn read(&mut self, after: RecordId) -> Result<Option<Loaded>, StoreError> {
        let chunk = self.records_after(after).await?;
        let Some(last_id) = chunk.last().map(|r| r.id) else {
            return Ok(None);
        };
        // Without a range the chunk holds every record from `after` to its
        // last: their donations come from the chunk itself, and only earlier
        // ones from the database (and, when every earlier record has been
        // read, only for donors seen before). With a range, records outside
        // it may lie between the chunk's, so the database gives all of them.
        let whole_span = self.range.from.is_none() && self.range.until.is_none();
        let history_before = if whole_span {
            RecordId(after.0.saturating_add(1))
        } else {
            last_id
        };
        let donors = self.donors_to_ask(&chunk);
        let ids: Vec<RecordId> = chunk.iter().map(|r| r.id).collect();
        let probes = WindowProbes::of(&chunk, &self.config);
        let deceased: Vec<WindowProbe> = probes.deceased.iter().map(|(_, p)| p.clone()).collect();
        let store = &self.store;
        let (donations, existing, living, deceased, peer_matches) = tokio::try_join!(
            store.donor_histories(&donors, history_before),
            store.existing_flags(&ids, &self.rule_ids),
            store.clinic_windows(&probes.living),
            self.deceased.counts(store, &deceased),
            store.peer_matches(&ids),
        )?;
        let windows = probes.windows(chunk.len(), living, deceased);
        let mut group = GroupContext {
            donations,
            windows,
            peer_matches,
        };
        if whole_span {
            // The chunk's records are earlier donations to the ones after them.
            group.add_group_donations(chunk.iter().map(|r| (r.id, &r.record)));
        }
        let existing = existing
            .into_iter()
            .filter_map(|((record, rule), flag)| Some(((record, rule.parse().ok()?), flag)))
            .collect();
        Ok(Some(Loaded {
            chunk,
            group,
            existing,
        }))
    }

    /// The next chunk's records after `after`, read in two halves on two
    /// connections and decoded on two threads.
    async fn records_after(&self, after: RecordId) -> Result<Vec<StoredRecord>, StoreError> {
        let ids = self
            .store
            .record_ids_after(after, self.chunk_size, self.range)
            .await?;
        let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else {
            return Ok(Vec::new());
        };
        let mid = ids[(ids.len() - 1) / 2];
        if mid == last {
            return self.store.records_between(first, last, self.range).await;
        }
        let (store, range) = (self.store.clone(), self.range);
        let head = tokio::spawn(async move { store.records_between(first, mid, range).await });
        let tail = self
            .store
            .records_between(RecordId(mid.0 + 1), last, self.range)
            .await?;
        let mut chunk = match head.await {
            Ok(head) => head?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => unreachable!("rescan read cancelled: {e}"),
        };
        chunk.extend(tail);
        Ok(chunk)
    }

    /// The chunk's donors whose earlier records must be asked for: all of
    /// them, or, when every earlier record has been read, those seen before.
    fn donors_to_ask(&mut self, chunk: &[StoredRecord]) -> Vec<Fingerprint> {
        let donors: Vec<Fingerprint> = chunk
            .iter()
            .map(|r| r.record.donor.person.identifier)
            .filter(|fp| {
                self.donors_seen
                    .as_ref()
                    .is_none_or(|seen| seen.may_contain(fp))
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if let Some(seen) = &mut self.donors_seen {
            for stored in chunk {
                seen.insert(&stored.record.donor.person.identifier);
            }
        }
        donors
    }
}

/// The window reads of a chunk: the foreign living donors by query, the
/// deceased-donor share from the cache.
struct WindowProbes<'c> {
    /// Positions in the chunk of the `living` requests.
    living_at: Vec<usize>,
    living: Vec<WindowRequest<'c>>,
    /// Positions in the chunk, with the cache's probe.
    deceased: Vec<(usize, WindowProbe)>,
}

impl<'c> WindowProbes<'c> {
    fn of(chunk: &'c [StoredRecord], config: &RulesConfig) -> Self {
        let mut probes = Self {
            living_at: Vec::new(),
            living: Vec::new(),
            deceased: Vec::new(),
        };
        for (i, stored) in chunk.iter().enumerate() {
            let record = &stored.record;
            let spec = WindowSpec::for_record(record, config);
            let at = record.transplanted_at;
            if spec.foreign_living {
                probes.living_at.push(i);
                probes.living.push(WindowRequest {
                    clinic_id: &record.clinic_id,
                    until: at,
                    // The deceased counts come from the cache.
                    spec: WindowSpec {
                        deceased: false,
                        ..spec
                    },
                    before: stored.id,
                });
            }
            if spec.deceased {
                let probe = WindowProbe {
                    clinic_id: record.clinic_id.clone(),
                    since: at - spec.share,
                    at,
                    before: stored.id,
                };
                probes.deceased.push((i, probe));
            }
        }
        probes
    }

    /// Each of the chunk's `len` records' windows from what the reads gave.
    fn windows(
        &self,
        len: usize,
        living: Vec<ClinicWindow>,
        deceased: Vec<(u64, u64)>,
    ) -> Vec<ClinicWindow> {
        let mut windows = vec![ClinicWindow::default(); len];
        for (&i, window) in self.living_at.iter().zip(living) {
            windows[i] = window;
        }
        for ((i, _), (total, non_resident)) in self.deceased.iter().zip(deceased) {
            windows[*i].deceased_transplants = total;
            windows[*i].deceased_to_non_residents = non_resident;
        }
        windows
    }
}

/// A Bloom filter of donor fingerprints, of fixed size: "no" means the donor
/// has no record among those inserted, so its history need not be asked
/// for; "maybe" (now and then wrongly) means it must be. Fingerprints are
/// HMAC outputs, uniformly distributed, so their bytes serve as the hashes.
pub(crate) struct DonorFilter {
    bits: Vec<u64>,
}

impl DonorFilter {
    /// 2^25 bits (4 MiB): about one false "maybe" in 4,000 at 10^6 donors.
    const BITS_LOG2: u32 = 25;
    const HASHES: usize = 3;

    pub(crate) fn new() -> Self {
        Self {
            bits: vec![0; 1 << (Self::BITS_LOG2 - 6)],
        }
    }

    fn positions(fp: &Fingerprint) -> impl Iterator<Item = usize> + '_ {
        let mask = (1_u64 << Self::BITS_LOG2) - 1;
        fp.as_bytes()
            .chunks_exact(8)
            .take(Self::HASHES)
            .map(move |b| {
                let word: [u8; 8] = b.try_into().unwrap_or_default();
                // The mask keeps the value below 2^25, which fits any usize.
                usize::try_from(u64::from_le_bytes(word) & mask).unwrap_or_default()
            })
    }

    pub(crate) fn insert(&mut self, fp: &Fingerprint) {
        for bit in Self::positions(fp) {
            self.bits[bit / 64] |= 1 << (bit % 64);
        }
    }

    pub(crate) fn may_contain(&self, fp: &Fingerprint) -> bool {
        Self::positions(fp).all(|bit| self.bits[bit / 64] & (1 << (bit % 64)) != 0)
    }
}

/// A chunk being read on another task; dropping it abandons the read.
struct Prefetch(tokio::task::JoinHandle<(Reader, Result<Option<Loaded>, StoreError>)>);

impl Prefetch {
    fn start(mut reader: Reader, after: RecordId) -> Self {
        Self(tokio::spawn(async move {
            let loaded = reader.read(after).await;
            (reader, loaded)
        }))
    }

    async fn finish(&mut self) -> (Reader, Result<Option<Loaded>, StoreError>) {
        match (&mut self.0).await {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only `Drop` aborts the task, and that consumes `self`.
            Err(e) => unreachable!("rescan read cancelled: {e}"),
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the rules of one record read in a rescan besides the record and the
/// registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordContext {
    /// The record.
    pub id: RecordId,
    /// Its clinic window.
    pub window: ClinicWindow,
    /// Its donor's records stored before it, oldest first.
    pub donor_history: Vec<PriorDonation>,
}

/// The context a whole rescan in chunks of `chunk_size` gives every record,
/// in id order, to check what it loads in bulk against the per-record
/// queries of ingest.
pub async fn record_contexts(
    store: &Store,
    engine: &Engine,
    chunk_size: i64,
) -> Result<Vec<RecordContext>, StoreError> {
    let mut reader = Reader {
        store: store.clone(),
        config: engine.config().clone(),
        range: TransplantRange::default(),
        chunk_size,
        rule_ids: Vec::new(),
        deceased: DeceasedCache::default(),
        donors_seen: Some(DonorFilter::new()),
    };
    let mut contexts = Vec::new();
    let mut cursor = RecordId(0);
    while let Some(loaded) = reader.read(cursor).await? {
        for (stored, window) in loaded.chunk.iter().zip(&loaded.group.windows) {
            let history = loaded.group.history_before(stored.id, &stored.record);
            contexts.push(RecordContext {
                id: stored.id,
                window: window.clone(),
                donor_history: history.to_vec(),
            });
            cursor = stored.id;
        }
    }
    Ok(contexts)
}

/// The run to record (none for a dry run), its rules and its range.
async fn prepare(
    store: &Store,
    engine: &Engine,
    request: &RescanRequest,
) -> Result<(Option<RescanRun>, Vec<RuleId>, TransplantRange), RescanError> {
    if let Some(id) = request.resume {
        let run = store
            .rescan_run(id)
            .await?
            .ok_or(RescanError::UnknownRun(id))?;
        if run.finished_at.is_some() {
            return Err(RescanError::AlreadyFinished(id));
        }
        let rules = run
            .rules
            .iter()
            .map(|r| {
                r.parse().map_err(|_| RescanError::UnknownRule {
                    run: id,
                    rule: r.clone(),
                })
            })
            .collect::<Result<Vec<RuleId>, _>>()?;
        let range = TransplantRange {
            from: run.transplanted_from,
            until: run.transplanted_until,
        };
        return Ok((Some(run), rules, range));
    }
    let rules: Vec<RuleId> = if request.rules.is_empty() {
        engine.config().enabled_rules().collect()
    } else {
        request.rules.clone()
    };
    if request.dry_run {
        return Ok((None, rules, request.range));
    }
    let names: Vec<String> = rules.iter().map(|r| r.as_str().to_owned()).collect();
    let run = store.start_rescan(&names, request.range).await?;
    Ok((Some(run), rules, request.range))
}

impl RescanReport {
    /// The report as text for a terminal or a log.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let verb = if self.dry_run { "would add" } else { "added" };
        let _ = writeln!(
            out,
            "{} {} records; {} flags {}.",
            if self.dry_run {
                "Dry run over"
            } else {
                "Rescanned"
            },
            self.processed,
            if self.dry_run {
                self.rules.values().map(|c| c.added).sum::<u64>()
            } else {
                self.flags_added
            },
            verb,
        );
        if let Some(run) = self.run_id {
            let _ = writeln!(out, "Run {run}.");
        }
        let _ = writeln!(
            out,
            "{:<34} {:>10} {:>12} {:>16}",
            "rule", verb, "still raised", "no longer raised"
        );
        for (rule, c) in &self.rules {
            let _ = writeln!(
                out,
                "{:<34} {:>10} {:>12} {:>16}",
                rule.as_str(),
                c.added,
                c.still_raised,
                c.no_longer_raised
            );
            if !c.added_examples.is_empty() {
                let examples: Vec<String> = c
                    .added_examples
                    .iter()
                    .map(|(id, ext)| format!("record {} ({ext})", id.0))
                    .collect();
                let _ = writeln!(out, "    e.g. {}", examples.join(", "));
            }
            if !c.no_longer_raised_examples.is_empty() {
                let examples: Vec<String> = c
                    .no_longer_raised_examples
                    .iter()
                    .map(|f| format!("flag {f}"))
                    .collect();
                let _ = writeln!(out, "    no longer raised, e.g. {}", examples.join(", "));
            }
        }
        out
    }
}
