//! Views of the whole registry kept ready for the console: the suggested
//! cases and the rules' flag counts. Grouping every open flag takes seconds
//! at a registry's size (about 7 s for 480,000 open flags) and counting a
//! million flags by rule and status 75 ms, so no page can wait for them: a
//! background task recounts and regroups whenever flags or case membership
//! changed since the last time, and the pages show the latest, the
//! suggested cases less the flags that left triage or joined a case since.
//! (The gRPC `SuggestCases` and `GetRuleQuality` still work on request.)

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::audit::{Auditing, RuleQuality};
use crate::store::suggest::SuggestionSignature;
use crate::store::{Store, StoreError};
use crate::suggest::{self, Suggestion};

/// How often the task asks whether flags or cases changed.
pub const POLL: Duration = Duration::from_secs(2);

/// Groups kept from each grouping: more than a page shows, so that groups
/// whose flags have gone since leave room for the next ones.
pub const KEPT_GROUPS: usize = 50;

/// One grouping of the open flags outside cases.
#[derive(Debug, Clone)]
pub struct Grouping {
    /// When the flags it groups were read.
    pub computed_at: DateTime<Utc>,
    /// How many open flags outside cases there were then.
    pub open_flags: usize,
    /// The best groups, best first.
    pub groups: Vec<Suggestion>,
}

/// A group as shown now: the grouping's, with only the flags still open
/// and in no case.
#[derive(Debug, Clone)]
pub struct ShownGroup {
    /// Its flags still open and in no case, at most the page's share.
    pub flag_ids: Vec<i64>,
    /// Its other flags as grouped, not checked again and not shown.
    pub more: usize,
    /// Its clinics, as grouped.
    pub clinic_ids: Vec<String>,
    /// Its score, as grouped.
    pub score: i64,
    /// Why its flags belong together, as grouped.
    pub reasons: Vec<String>,
}

/// What the page shows of the latest grouping.
#[derive(Debug, Clone)]
pub struct Shown {
    /// When the grouped flags were read.
    pub computed_at: DateTime<Utc>,
    /// How many open flags outside cases there were then.
    pub open_flags: usize,
    /// The groups with at least two flags still open and in no case.
    pub groups: Vec<ShownGroup>,
}

/// The rules' flag counts at one moment.
#[derive(Debug, Clone)]
pub struct RuleCounts {
    /// When the flags were counted.
    pub counted_at: DateTime<Utc>,
    /// Every rule, in catalogue order.
    pub rules: Vec<RuleQuality>,
}

/// Why a grouping or a count failed.
#[derive(Debug, thiserror::Error)]
pub enum KeptError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The grouping's thread panicked.
    #[error("the grouping failed")]
    Grouping,
}

/// The latest grouping and counts, shared by the task that makes them and
/// the pages that show them.
#[derive(Clone, Debug)]
pub struct KeptViews {
    store: Store,
    auditing: Auditing,
    latest: Arc<RwLock<Option<Arc<Grouping>>>>,
    counts: Arc<RwLock<Option<Arc<RuleCounts>>>>,
}

impl KeptViews {
    /// Nothing kept yet, over `store`, counting the rules as `auditing` does.
    pub fn new(store: Store, auditing: Auditing) -> Self {
        Self {
            store,
            auditing,
            latest: Arc::new(RwLock::new(None)),
            counts: Arc::new(RwLock::new(None)),
        }
    }

    /// The latest counts of the rules' flags, if a count finished.
    pub fn rule_counts(&self) -> Option<Arc<RuleCounts>> {
        self.counts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The latest grouping, if one finished.
    pub fn latest(&self) -> Option<Arc<Grouping>> {
        self.latest
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The latest grouping's best `groups` groups, each with at most
    /// `flags_each` of its flags, only those still open and in no case (one
    /// read by id of the flags it looks at). `None` before the first
    /// grouping.
    pub async fn shown(
        &self,
        groups: usize,
        flags_each: usize,
    ) -> Result<Option<Shown>, StoreError> {
        let Some(grouping) = self.latest() else {
            return Ok(None);
        };
        // Twice the share of each group is looked at, so a group keeps its
        // share when some of its first flags have gone.
        let looked_at: Vec<i64> = grouping
            .groups
            .iter()
            .flat_map(|g| g.flag_ids.iter().take(2 * flags_each).copied())
            .collect();
        let still = self.store.flags_still_outside_cases(&looked_at).await?;
        Ok(Some(Shown {
            computed_at: grouping.computed_at,
            open_flags: grouping.open_flags,
            groups: show(&grouping.groups, &still, groups, flags_each),
        }))
    }

    /// Recounts and regroups whenever flags or cases changed, one at a
    /// time, every [`POLL`]; runs until dropped.
    pub async fn keep_fresh(self) {
        let mut last = None;
        let mut failing = false;
        loop {
            match self.refresh(&mut last).await {
                Ok(()) if failing => {
                    tracing::info!("rules counted and suggested cases grouped again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "cannot recount the rules or regroup the suggested cases; keeping the last");
                    failing = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Recounts and regroups if the signature moved from `last`, and
    /// remembers the one seen before reading. The counts come first: they
    /// take a fraction of the grouping's time.
    async fn refresh(&self, last: &mut Option<SuggestionSignature>) -> Result<(), KeptError> {
        // Taken before both reads: a change that commits while they run
        // moves the signature from this one, and the next poll reads again.
        let seen = self.store.suggestion_signature().await?;
        if *last == Some(seen) {
            return Ok(());
        }
        let counted_at = Utc::now();
        let rules = self.auditing.rule_quality(None, None).await?;
        *self
            .counts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(Arc::new(RuleCounts { counted_at, rules }));
        let computed_at = Utc::now();
        let flags = self.store.open_flags_outside_cases().await?;
        let started = std::time::Instant::now();
        // Grouping many flags takes a core for seconds: off the runtime.
        let grouping = tokio::task::spawn_blocking(move || Grouping {
            computed_at,
            open_flags: flags.len(),
            groups: suggest::suggest(&flags, KEPT_GROUPS),
        })
        .await
        .map_err(|_| KeptError::Grouping)?;
        tracing::debug!(
            open_flags = grouping.open_flags,
            grouping_ms = started.elapsed().as_millis(),
            "suggested cases grouped"
        );
        *self
            .latest
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(grouping));
        *last = Some(seen);
        Ok(())
    }
}

/// The first `groups` of `grouped` that keep at least two flags in `still`,
/// each with at most `flags_each` of them.
fn show(
    grouped: &[Suggestion],
    still: &HashSet<i64>,
    groups: usize,
    flags_each: usize,
) -> Vec<ShownGroup> {
    grouped
        .iter()
        .filter_map(|g| {
            let looked_at = g.flag_ids.len().min(2 * flags_each);
            let live: Vec<i64> = g.flag_ids[..looked_at]
                .iter()
                .copied()
                .filter(|f| still.contains(f))
                .collect();
            let unchecked = g.flag_ids.len() - looked_at;
            if live.is_empty() || live.len() + unchecked < 2 {
                return None;
            }
            let more = unchecked + live.len().saturating_sub(flags_each);
            Some(ShownGroup {
                flag_ids: live.into_iter().take(flags_each).collect(),
                more,
                clinic_ids: g.clinic_ids.clone(),
                score: g.score,
                reasons: g.reasons.clone(),
            })
        })
        .take(groups)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(ids: &[i64]) -> Suggestion {
        Suggestion {
            flag_ids: ids.to_vec(),
            record_ids: ids.to_vec(),
            clinic_ids: vec!["C".into()],
            score: 1,
            reasons: vec!["r".into()],
        }
    }

    #[test]
    fn flags_that_left_are_not_shown_nor_groups_left_alone() {
        let grouped = [group(&[1, 2, 3]), group(&[4, 5]), group(&[6, 7])];
        let still: HashSet<i64> = [1, 3, 4, 6, 7].into_iter().collect();
        let shown = show(&grouped, &still, 10, 10);
        let ids: Vec<Vec<i64>> = shown.iter().map(|g| g.flag_ids.clone()).collect();
        assert_eq!(ids, vec![vec![1, 3], vec![6, 7]]);
        assert!(shown.iter().all(|g| g.more == 0));
    }

    #[test]
    fn a_page_shows_its_share_of_each_group_and_counts_the_rest() {
        let ids: Vec<i64> = (1..=10).collect();
        let grouped = [group(&ids), group(&[20, 21]), group(&[30, 31])];
        let still: HashSet<i64> = (1..=40).filter(|i| *i != 2).collect();
        let shown = show(&grouped, &still, 2, 3);
        assert_eq!(shown.len(), 2);
        // 1..=6 looked at, 2 gone: 1, 3, 4 shown, 5 and 6 checked, 7..=10 not.
        assert_eq!(shown[0].flag_ids, vec![1, 3, 4]);
        assert_eq!(shown[0].more, 2 + 4);
        assert_eq!(shown[1].flag_ids, vec![20, 21]);
    }
}
