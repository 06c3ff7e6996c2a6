//! Re-running rules over stored records: after a rule or threshold change, or
//! a registry correction. Adds only flags that do not exist, never deletes an
//! auditor's work, resumes after an interruption, and as a dry run reports
//! what a change would add and which existing flags it would no longer raise.

use std::collections::{BTreeMap, HashSet};
use std::ops::ControlFlow;

use crate::domain::{Fingerprint, RecordId};
use crate::rules::{Engine, RuleContext, RuleId, WindowSpec};
use crate::store::rescan::{NewFlag, RescanRun, TransplantRange};
use crate::store::{Store, StoreError};

/// Records evaluated per transaction.
pub const DEFAULT_CHUNK: i64 = 2_000;

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

/// Runs a rescan, calling `progress` after every chunk; `progress` may stop
/// it with `ControlFlow::Break`, which leaves a recorded run resumable.
pub async fn rescan(
    store: &Store,
    engine: &Engine,
    request: RescanRequest,
    mut progress: impl FnMut(Progress) -> ControlFlow<()>,
) -> Result<RescanReport, RescanError> {
    let (run, rules, range) = prepare(store, engine, &request).await?;
    let rule_ids: Vec<String> = rules.iter().map(|r| r.as_str().to_owned()).collect();
    let mut cursor = run.as_ref().map_or(RecordId(0), |r| r.cursor);
    let total = u64::try_from(store.count_records(range, cursor).await?).unwrap_or(0);
    let clinics = store.all_clinics().await?;
    let chunk_size = if request.chunk_size > 0 {
        request.chunk_size
    } else {
        DEFAULT_CHUNK
    };
    let mut report = RescanReport {
        run_id: run.as_ref().map(|r| r.id),
        dry_run: request.dry_run,
        rules: rules.iter().map(|r| (*r, RuleChange::default())).collect(),
        ..RescanReport::default()
    };
    loop {
        let chunk = store.records_after(cursor, chunk_size, range).await?;
        let Some(last) = chunk.last() else { break };
        let last_id = last.id;
        let ids: Vec<RecordId> = chunk.iter().map(|r| r.id).collect();
        let donors: Vec<Fingerprint> = chunk
            .iter()
            .map(|r| r.record.donor.person.identifier)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let histories = store.donor_histories(&donors, last_id).await?;
        let existing = store.existing_flags(&ids, &rule_ids).await?;
        let mut findings = Vec::with_capacity(chunk.len());
        for stored in &chunk {
            let record = &stored.record;
            let history = histories
                .get(&record.donor.person.identifier)
                .map_or(&[][..], |h| {
                    &h[..h.partition_point(|p| p.record_id < stored.id)]
                });
            let spec = WindowSpec::for_record(record, engine.config());
            let window = store
                .clinic_window(&record.clinic_id, record.transplanted_at, spec, stored.id)
                .await?;
            let ctx = RuleContext {
                clinic: clinics.get(&record.clinic_id),
                donor_history: history,
                clinic_window: &window,
            };
            findings.push(engine.evaluate_only(record, &ctx, &rules));
        }
        let mut new_flags = Vec::new();
        for (stored, found) in chunk.iter().zip(&findings) {
            let fired: HashSet<RuleId> = found.iter().map(|f| f.rule).collect();
            for rule in &rules {
                let change = report.rules.entry(*rule).or_default();
                let flag = existing.get(&(stored.id, rule.as_str().to_owned()));
                match (fired.contains(rule), flag) {
                    (true, Some(_)) => change.still_raised += 1,
                    (true, None) => {
                        change.added += 1;
                        if change.added_examples.len() < DEFAULT_EXAMPLES {
                            change
                                .added_examples
                                .push((stored.id, stored.record.external_record_id.clone()));
                        }
                    }
                    (false, Some(flag)) => {
                        change.no_longer_raised += 1;
                        if change.no_longer_raised_examples.len() < DEFAULT_EXAMPLES {
                            change.no_longer_raised_examples.push(flag.flag_id);
                        }
                    }
                    (false, None) => {}
                }
            }
            new_flags.extend(
                found
                    .iter()
                    .filter(|f| !existing.contains_key(&(stored.id, f.rule.as_str().to_owned())))
                    .map(|finding| NewFlag {
                        record: stored,
                        finding,
                    }),
            );
        }
        let processed = chunk.len() as u64;
        if !request.dry_run {
            let run_id = report.run_id;
            report.flags_added += store
                .commit_rescan_chunk(run_id, last_id, processed as i64, &new_flags)
                .await?;
        }
        report.processed += processed;
        cursor = last_id;
        let step = Progress {
            run_id: report.run_id,
            processed: report.processed,
            total,
            flags_added: report.flags_added,
        };
        if progress(step).is_break() {
            return Ok(report);
        }
    }
    if let Some(run) = report.run_id {
        store.finish_rescan(run).await?;
    }
    Ok(report)
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
