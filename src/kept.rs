//! Views of the whole registry kept ready for the console: the suggested
//! cases and the rules' flag counts. Grouping every open flag takes seconds
//! at a registry's size (about 7 s for 480,000 open flags) and counting a
//! million flags by rule and status 75 ms, so no page can wait for them: a
//! background task recounts and regroups whenever the database says that
//! what they read changed (LISTEN/NOTIFY, see the migration
//! `kept_views_notify`), and the pages show the latest, the suggested cases
//! less the flags that left triage or joined a case since. (The gRPC
//! `SuggestCases` and `GetRuleQuality` still work on request.)

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::audit::{Auditing, RuleQuality};
use crate::store::suggest::ViewChange;
use crate::store::{Store, StoreError};
use crate::suggest::{self, Suggestion};

/// The least time from the end of one refresh to the start of the next: a
/// stream of commits is read again once a second at most, not once a
/// commit.
const PAUSE: Duration = Duration::from_secs(1);

/// How long after a failed refresh it is tried again, whether or not
/// anything changed.
const RETRY: Duration = Duration::from_secs(2);

/// How long the listener first waits before listening again after a
/// failure; the wait doubles up to [`MAX_RECONNECT_DELAY`] while failures
/// last.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// The longest wait between attempts to listen again.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

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

    /// Recounts and regroups at the start and whenever what the views read
    /// changed, one refresh at a time; runs until dropped.
    pub async fn keep_fresh(self) {
        let stale = Notify::new();
        tokio::join!(listen(&self.store, &stale), self.refresh_when(&stale));
    }

    /// Refreshes each time `stale` is notified: notifications that come
    /// while a refresh runs are answered by one more. A refresh that fails
    /// is tried again after [`RETRY`].
    async fn refresh_when(&self, stale: &Notify) {
        let mut failing = false;
        loop {
            stale.notified().await;
            let pause = match self.refresh().await {
                Ok(()) => {
                    if failing {
                        tracing::info!("rules counted and suggested cases grouped again");
                        failing = false;
                    }
                    PAUSE
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot recount the rules or regroup the suggested cases; keeping the last");
                        failing = true;
                    }
                    stale.notify_one();
                    RETRY
                }
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Recounts, then regroups. The counts come first: they take a fraction
    /// of the grouping's time.
    async fn refresh(&self) -> Result<(), KeptError> {
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
        Ok(())
    }
}

/// Keeps one connection listening for changes to what the views read, and
/// marks them `stale` at each change and whenever changes may have gone
/// unheard: when it starts listening (what committed before is read then),
/// after the connection was lost, and at each failed attempt to listen
/// (so that the views still follow, late, while notifications cannot be
/// had).
async fn listen(store: &Store, stale: &Notify) {
    let mut delay = RECONNECT_DELAY;
    let mut failing = false;
    loop {
        match store.listen_for_view_changes().await {
            Ok(mut changes) => {
                if failing {
                    tracing::info!("listening for changes to the kept views again");
                    failing = false;
                }
                delay = RECONNECT_DELAY;
                stale.notify_one();
                loop {
                    match changes.next().await {
                        Ok(ViewChange::Changed) => stale.notify_one(),
                        Ok(ViewChange::Reconnected) => {
                            tracing::debug!(
                                "listening for changes to the kept views on a new connection"
                            );
                            stale.notify_one();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "changes to the kept views lost; listening again");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot listen for changes to the kept views; retrying");
                    failing = true;
                }
                stale.notify_one();
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
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
