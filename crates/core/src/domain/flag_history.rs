//! A flag's life as the steps that made it, and the flag they fold into.
//!
//! A flag's row is derived data: every column follows from its steps taken
//! in order. The service checks a flag's row against its steps before it
//! adds one, and `verify` checks every flag, so a row edited behind the
//! service's back (its status, severity, revision, anything) shows.

use chrono::{DateTime, Utc};

use super::{FlagStatus, RecordId, Severity, StepKind};

/// What a rule found, as a RAISED or REEVALUATED step states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFinding {
    /// The rule's version.
    pub rule_version: i32,
    /// How serious.
    pub severity: Severity,
    /// The facts that made the rule fire.
    pub explanation: String,
    /// Other records involved.
    pub evidence: Vec<RecordId>,
    /// The record version the rule ran on.
    pub record_version: i32,
}

/// One step, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagStep {
    /// Its position, from 1.
    pub step: i32,
    /// What it did.
    pub kind: StepKind,
    /// When.
    pub at: DateTime<Utc>,
    /// The API key that took it (empty for the rules themselves).
    pub key_id: String,
    /// The person or system behind the key (`rules` for a rule).
    pub principal: String,
    /// The status before; none for the RAISED step.
    pub from: Option<FlagStatus>,
    /// The status after.
    pub to: FlagStatus,
    /// The note.
    pub note: String,
    /// The caller's W3C trace id, if it sent one.
    pub trace_id: Option<String>,
    /// The trace id the service gave the call.
    pub own_trace_id: Option<String>,
    /// For RAISED and REEVALUATED: the finding.
    pub finding: Option<StepFinding>,
    /// For CLEARED: the record version that no longer raises the flag.
    pub cleared_in_version: Option<i32>,
}

/// What a flag's row must hold, given its steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldedFlag {
    /// The last step's status.
    pub status: FlagStatus,
    /// The number of steps (the etag).
    pub revision: i64,
    /// The newest finding.
    pub finding: StepFinding,
    /// The record version that no longer raises it, since the newest finding.
    pub cleared_in_version: Option<i32>,
    /// When the first step was taken.
    pub raised_at: DateTime<Utc>,
    /// When the last step was taken.
    pub updated_at: DateTime<Utc>,
    /// The principal whose proposal to dismiss awaits a second auditor.
    pub dismissal_proposed_by: Option<String>,
}

/// Why steps do not make a flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    /// No steps at all.
    #[error("the flag has no steps")]
    Empty,
    /// Steps are not numbered 1, 2, 3, …
    #[error("step {found} is where step {expected} belongs")]
    Numbering {
        /// The position expected.
        expected: i32,
        /// The number found there.
        found: i32,
    },
    /// The first step is not RAISED, or a later one is.
    #[error("step {0}: only the first step raises the flag")]
    Raised(i32),
    /// A step starts from another status than the one before it left.
    #[error("step {step} starts from {from:?}, the step before left the flag {previous}")]
    Discontinuous {
        /// The step.
        step: i32,
        /// Its `from`.
        from: Option<FlagStatus>,
        /// The previous step's `to`.
        previous: FlagStatus,
    },
    /// A transition triage never allows.
    #[error("step {step}: a flag cannot move from {from} to {to}")]
    IllegalMove {
        /// The step.
        step: i32,
        /// From.
        from: FlagStatus,
        /// To.
        to: FlagStatus,
    },
    /// A step that does not move the flag changes its status.
    #[error("step {0} changes the status, which only a transition does")]
    StatusChanged(i32),
    /// A RAISED or REEVALUATED step without its finding, or another with one.
    #[error("step {0} lacks the finding its kind carries, or carries one it may not")]
    Finding(i32),
    /// A CLEARED step without the version, or another step with one.
    #[error("step {0} lacks the cleared version its kind carries, or carries one it may not")]
    Cleared(i32),
    /// A CRITICAL flag dismissed without a proposal by another principal.
    #[error("step {0} dismisses a CRITICAL flag without a proposal by another principal")]
    DismissedAlone(i32),
}

/// Folds `steps` (in order) into the flag they make, checking every rule a
/// flag's life follows.
pub fn fold(steps: &[FlagStep]) -> Result<FoldedFlag, FoldError> {
    let first = steps.first().ok_or(FoldError::Empty)?;
    let mut flag = FoldedFlag {
        status: first.to,
        revision: 0,
        finding: first
            .finding
            .clone()
            .ok_or(FoldError::Finding(first.step))?,
        cleared_in_version: first.cleared_in_version,
        raised_at: first.at,
        updated_at: first.at,
        dismissal_proposed_by: None,
    };
    for (i, s) in steps.iter().enumerate() {
        let expected = i32::try_from(i + 1).unwrap_or(i32::MAX);
        if s.step != expected {
            return Err(FoldError::Numbering {
                expected,
                found: s.step,
            });
        }
        if (s.kind == StepKind::Raised) != (i == 0) {
            return Err(FoldError::Raised(s.step));
        }
        let carries_finding = matches!(s.kind, StepKind::Raised | StepKind::Reevaluated);
        if carries_finding != s.finding.is_some() {
            return Err(FoldError::Finding(s.step));
        }
        if i == 0 {
            if s.from.is_some() || s.to != FlagStatus::Open {
                return Err(FoldError::Discontinuous {
                    step: s.step,
                    from: s.from,
                    previous: FlagStatus::Open,
                });
            }
        } else {
            apply(&mut flag, s)?;
        }
        flag.revision += 1;
        flag.updated_at = s.at;
    }
    Ok(flag)
}

/// The flag after one more step, taken on a flag whose steps fold into
/// `folded`; the same checks as [`fold`].
pub fn fold_after(folded: &FoldedFlag, step: &FlagStep) -> Result<FoldedFlag, FoldError> {
    let expected = i32::try_from(folded.revision + 1).unwrap_or(i32::MAX);
    if step.step != expected {
        return Err(FoldError::Numbering {
            expected,
            found: step.step,
        });
    }
    let carries_finding = matches!(step.kind, StepKind::Raised | StepKind::Reevaluated);
    if carries_finding != step.finding.is_some() {
        return Err(FoldError::Finding(step.step));
    }
    let mut next = folded.clone();
    apply(&mut next, step)?;
    next.revision += 1;
    next.updated_at = step.at;
    Ok(next)
}

/// Applies a step after the first.
fn apply(flag: &mut FoldedFlag, s: &FlagStep) -> Result<(), FoldError> {
    if s.from != Some(flag.status) {
        return Err(FoldError::Discontinuous {
            step: s.step,
            from: s.from,
            previous: flag.status,
        });
    }
    if (s.kind == StepKind::Cleared) != s.cleared_in_version.is_some() {
        return Err(FoldError::Cleared(s.step));
    }
    if s.kind != StepKind::Transition && s.to != flag.status {
        return Err(FoldError::StatusChanged(s.step));
    }
    match s.kind {
        StepKind::Raised => return Err(FoldError::Raised(s.step)),
        StepKind::Transition => {
            if !flag.status.can_move_to(s.to) {
                return Err(FoldError::IllegalMove {
                    step: s.step,
                    from: flag.status,
                    to: s.to,
                });
            }
            if s.to == FlagStatus::Dismissed && flag.finding.severity == Severity::Critical {
                let approved = flag
                    .dismissal_proposed_by
                    .as_deref()
                    .is_some_and(|proposer| proposer != s.principal);
                if !approved {
                    return Err(FoldError::DismissedAlone(s.step));
                }
            }
            flag.status = s.to;
            flag.dismissal_proposed_by = None;
        }
        StepKind::DismissalProposed => {
            flag.dismissal_proposed_by = Some(s.principal.clone());
        }
        StepKind::Reevaluated => {
            if let Some(finding) = &s.finding {
                flag.finding = finding.clone();
            }
            flag.cleared_in_version = None;
        }
        StepKind::Cleared => flag.cleared_in_version = s.cleared_in_version,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2026-01-01T00:{minute:02}:00Z"))
            .unwrap()
            .to_utc()
    }

    fn finding(severity: Severity) -> StepFinding {
        StepFinding {
            rule_version: 1,
            severity,
            explanation: "x".into(),
            evidence: vec![RecordId(3)],
            record_version: 1,
        }
    }

    fn raised(severity: Severity) -> FlagStep {
        FlagStep {
            step: 1,
            kind: StepKind::Raised,
            at: at(0),
            key_id: String::new(),
            principal: "rules".into(),
            from: None,
            to: FlagStatus::Open,
            note: String::new(),
            trace_id: None,
            own_trace_id: None,
            finding: Some(finding(severity)),
            cleared_in_version: None,
        }
    }

    fn then(steps: &mut Vec<FlagStep>, kind: StepKind, to: FlagStatus, who: &str) {
        let previous = steps.last().unwrap().to;
        let step = steps.len() as i32 + 1;
        steps.push(FlagStep {
            step,
            kind,
            at: at(step as u32),
            key_id: format!("key-of-{who}"),
            principal: who.into(),
            from: Some(previous),
            to,
            note: "n".into(),
            trace_id: None,
            own_trace_id: None,
            finding: (kind == StepKind::Reevaluated).then(|| finding(Severity::Low)),
            cleared_in_version: (kind == StepKind::Cleared).then_some(2),
        });
    }

    #[test]
    fn steps_fold_into_the_flag() {
        let mut steps = vec![raised(Severity::High)];
        then(
            &mut steps,
            StepKind::Transition,
            FlagStatus::InReview,
            "ana",
        );
        then(
            &mut steps,
            StepKind::Reevaluated,
            FlagStatus::InReview,
            "rules",
        );
        then(&mut steps, StepKind::Cleared, FlagStatus::InReview, "rules");
        then(
            &mut steps,
            StepKind::Transition,
            FlagStatus::Confirmed,
            "ana",
        );
        let flag = fold(&steps).unwrap();
        assert_eq!(flag.status, FlagStatus::Confirmed);
        assert_eq!(flag.revision, 5);
        assert_eq!(flag.finding.severity, Severity::Low);
        assert_eq!(flag.cleared_in_version, Some(2));
        assert_eq!((flag.raised_at, flag.updated_at), (at(0), at(5)));
    }

    #[test]
    fn a_critical_flag_is_dismissed_by_two_principals() {
        let mut steps = vec![raised(Severity::Critical)];
        then(
            &mut steps,
            StepKind::Transition,
            FlagStatus::InReview,
            "ana",
        );
        let mut alone = steps.clone();
        then(
            &mut alone,
            StepKind::Transition,
            FlagStatus::Dismissed,
            "ana",
        );
        assert_eq!(fold(&alone), Err(FoldError::DismissedAlone(3)));
        then(
            &mut steps,
            StepKind::DismissalProposed,
            FlagStatus::InReview,
            "ana",
        );
        assert_eq!(
            fold(&steps).unwrap().dismissal_proposed_by.as_deref(),
            Some("ana")
        );
        let mut same = steps.clone();
        then(
            &mut same,
            StepKind::Transition,
            FlagStatus::Dismissed,
            "ana",
        );
        assert_eq!(fold(&same), Err(FoldError::DismissedAlone(4)));
        then(
            &mut steps,
            StepKind::Transition,
            FlagStatus::Dismissed,
            "bo",
        );
        let flag = fold(&steps).unwrap();
        assert_eq!(flag.status, FlagStatus::Dismissed);
        assert_eq!(flag.dismissal_proposed_by, None);
    }

    #[test]
    fn broken_histories_are_named() {
        assert_eq!(fold(&[]), Err(FoldError::Empty));
        let mut steps = vec![raised(Severity::High)];
        then(
            &mut steps,
            StepKind::Transition,
            FlagStatus::InReview,
            "ana",
        );
        then(
            &mut steps,
            StepKind::Transition,
            FlagStatus::Confirmed,
            "ana",
        );

        let mut gap = steps.clone();
        gap.remove(1);
        assert!(matches!(
            fold(&gap),
            Err(FoldError::Numbering {
                expected: 2,
                found: 3
            })
        ));

        let mut rewired = steps.clone();
        rewired[2].from = Some(FlagStatus::Open);
        assert!(matches!(
            fold(&rewired),
            Err(FoldError::Discontinuous { step: 3, .. })
        ));

        let mut leap = vec![raised(Severity::High)];
        then(
            &mut leap,
            StepKind::Transition,
            FlagStatus::Confirmed,
            "ana",
        );
        assert!(matches!(
            fold(&leap),
            Err(FoldError::IllegalMove { step: 2, .. })
        ));

        let mut sneaky = steps.clone();
        sneaky[2].kind = StepKind::DismissalProposed;
        assert_eq!(fold(&sneaky), Err(FoldError::StatusChanged(3)));

        let mut second_raise = steps.clone();
        second_raise[1].kind = StepKind::Raised;
        assert_eq!(fold(&second_raise), Err(FoldError::Raised(2)));

        let mut not_raised = steps.clone();
        not_raised[0].kind = StepKind::Reevaluated;
        assert_eq!(fold(&not_raised), Err(FoldError::Raised(1)));

        let mut bare = steps.clone();
        bare[0].finding = None;
        assert_eq!(fold(&bare), Err(FoldError::Finding(1)));
    }
}
