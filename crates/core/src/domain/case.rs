//! An investigation case as the events that made it, and the case they fold
//! into.
//!
//! Like a flag's row, a case's row and its list of flags are derived data:
//! everything follows from its events taken in order. The service checks a
//! case against its events before it adds one, and `verify` checks every
//! case, so a row edited behind the service's back shows.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use super::{CaseEventKind, CaseStatus};

/// The longest case title accepted, in bytes.
pub const MAX_TITLE_LEN: usize = 200;
/// The longest case summary or note accepted, in bytes.
pub const MAX_CASE_TEXT_LEN: usize = 8192;
/// The longest `referred_to` or assignee accepted, in bytes.
pub const MAX_PARTY_LEN: usize = 200;
/// The most flags one call may add to a case.
pub const MAX_FLAGS_PER_CALL: usize = 1000;

/// What an event changed, beside who took it and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseChange {
    /// The case was opened.
    Opened {
        /// Its title.
        title: String,
        /// Its summary.
        summary: String,
    },
    /// A flag joined the case.
    FlagAdded(i64),
    /// A flag left the case.
    FlagRemoved(i64),
    /// The case was given to a principal.
    Assigned(String),
    /// The case moved from one status to another.
    StatusChanged {
        /// The status before.
        from: CaseStatus,
        /// The status after.
        to: CaseStatus,
        /// For REFERRED: to whom (a prosecutor's office, victim support).
        referred_to: Option<String>,
    },
    /// A note, and nothing else.
    Noted,
}

impl CaseChange {
    /// The event's kind.
    pub const fn kind(&self) -> CaseEventKind {
        match self {
            CaseChange::Opened { .. } => CaseEventKind::Opened,
            CaseChange::FlagAdded(_) => CaseEventKind::FlagAdded,
            CaseChange::FlagRemoved(_) => CaseEventKind::FlagRemoved,
            CaseChange::Assigned(_) => CaseEventKind::Assigned,
            CaseChange::StatusChanged { .. } => CaseEventKind::StatusChanged,
            CaseChange::Noted => CaseEventKind::Noted,
        }
    }
}

/// One event, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseEvent {
    /// Its position, from 1.
    pub step: i32,
    /// What it changed.
    pub change: CaseChange,
    /// When.
    pub at: DateTime<Utc>,
    /// The API key that took it.
    pub key_id: String,
    /// The person or system behind the key.
    pub principal: String,
    /// The note (required for NOTED and for a referral).
    pub note: String,
    /// The caller's W3C trace id, if it sent one.
    pub trace_id: Option<String>,
    /// The trace id the service gave the call.
    pub own_trace_id: Option<String>,
}

/// What a case's row must hold, given its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldedCase {
    /// From the OPENED event.
    pub title: String,
    /// From the OPENED event.
    pub summary: String,
    /// The last status change's `to`, OPEN before any.
    pub status: CaseStatus,
    /// The last assignment.
    pub assignee: Option<String>,
    /// Where the case was last referred, while it is REFERRED.
    pub referred_to: Option<String>,
    /// The flags in it now.
    pub flags: BTreeSet<i64>,
    /// The number of events (the etag).
    pub revision: i64,
    /// Who opened it.
    pub opened_by: String,
    /// When the first event was taken.
    pub opened_at: DateTime<Utc>,
    /// When the last event was taken.
    pub updated_at: DateTime<Utc>,
}

/// Why events do not make a case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaseFoldError {
    /// No events at all.
    #[error("the case has no events")]
    Empty,
    /// The first event is not OPENED, or a later one is.
    #[error("event {0} is misplaced: a case is opened once, by its first event")]
    Misplaced(i32),
    /// Events not numbered 1, 2, 3, …
    #[error("event {found} stands where event {expected} should")]
    Gap {
        /// The number expected.
        expected: i32,
        /// The number found.
        found: i32,
    },
    /// A change the case's state at that point does not allow.
    #[error("event {step}: {reason}")]
    Illegal {
        /// The event.
        step: i32,
        /// Why.
        reason: CaseRefusal,
    },
}

/// Why a change is refused on a case as it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaseRefusal {
    /// The status move is not one a case may make.
    #[error("a case cannot move from {from} to {to}")]
    IllegalTransition {
        /// The status now.
        from: CaseStatus,
        /// The status asked for.
        to: CaseStatus,
    },
    /// A status change whose `from` is not the case's status.
    #[error("the case is {actual}, not {claimed}")]
    WrongFrom {
        /// The status the event claims.
        claimed: CaseStatus,
        /// The status the case had.
        actual: CaseStatus,
    },
    /// REFERRED without a recipient or without a note.
    #[error("a referral names whom it goes to and carries a note")]
    ReferralIncomplete,
    /// `referred_to` given on a move that is not a referral.
    #[error("only a referral names whom it goes to")]
    NotAReferral,
    /// A note event without visible text.
    #[error("a note needs text")]
    EmptyNote,
    /// The flag is in the case already.
    #[error("flag {0} is in the case already")]
    AlreadyIn(i64),
    /// The flag is not in the case.
    #[error("flag {0} is not in the case")]
    NotIn(i64),
    /// An assignment to nobody.
    #[error("an assignment names a principal")]
    NoAssignee,
}

impl FoldedCase {
    /// Whether `change` may follow on this case, with `note`.
    pub fn allows(&self, change: &CaseChange, note: &str) -> Result<(), CaseRefusal> {
        match change {
            CaseChange::Opened { .. } => Ok(()),
            CaseChange::FlagAdded(id) if self.flags.contains(id) => {
                Err(CaseRefusal::AlreadyIn(*id))
            }
            CaseChange::FlagRemoved(id) if !self.flags.contains(id) => Err(CaseRefusal::NotIn(*id)),
            CaseChange::FlagAdded(_) | CaseChange::FlagRemoved(_) => Ok(()),
            CaseChange::Assigned(who) if who.trim().is_empty() => Err(CaseRefusal::NoAssignee),
            CaseChange::Assigned(_) => Ok(()),
            CaseChange::Noted if note.trim().is_empty() => Err(CaseRefusal::EmptyNote),
            CaseChange::Noted => Ok(()),
            CaseChange::StatusChanged {
                from,
                to,
                referred_to,
            } => {
                if *from != self.status {
                    return Err(CaseRefusal::WrongFrom {
                        claimed: *from,
                        actual: self.status,
                    });
                }
                if !from.can_move_to(*to) {
                    return Err(CaseRefusal::IllegalTransition {
                        from: *from,
                        to: *to,
                    });
                }
                let named = referred_to.as_deref().is_some_and(|r| !r.trim().is_empty());
                match (*to == CaseStatus::Referred, named) {
                    (true, true) if !note.trim().is_empty() => Ok(()),
                    (true, _) => Err(CaseRefusal::ReferralIncomplete),
                    (false, _) if referred_to.is_some() => Err(CaseRefusal::NotAReferral),
                    (false, _) => Ok(()),
                }
            }
        }
    }

    /// Takes `event`, which [`FoldedCase::allows`] accepted, into the case.
    pub fn apply(&mut self, event: &CaseEvent) {
        match &event.change {
            CaseChange::Opened { .. } | CaseChange::Noted => {}
            CaseChange::FlagAdded(id) => {
                self.flags.insert(*id);
            }
            CaseChange::FlagRemoved(id) => {
                self.flags.remove(id);
            }
            CaseChange::Assigned(who) => self.assignee = Some(who.clone()),
            CaseChange::StatusChanged {
                to, referred_to, ..
            } => {
                self.status = *to;
                self.referred_to = referred_to.clone();
            }
        }
        self.revision += 1;
        self.updated_at = event.at;
    }
}

/// Folds a case's events, in order, into what its row must hold.
pub fn fold(events: &[CaseEvent]) -> Result<FoldedCase, CaseFoldError> {
    let first = events.first().ok_or(CaseFoldError::Empty)?;
    let CaseChange::Opened { title, summary } = &first.change else {
        return Err(CaseFoldError::Misplaced(first.step));
    };
    let mut case = FoldedCase {
        title: title.clone(),
        summary: summary.clone(),
        status: CaseStatus::Open,
        assignee: None,
        referred_to: None,
        flags: BTreeSet::new(),
        revision: 0,
        opened_by: first.principal.clone(),
        opened_at: first.at,
        updated_at: first.at,
    };
    for (i, event) in events.iter().enumerate() {
        let expected = i32::try_from(i + 1).unwrap_or(i32::MAX);
        if event.step != expected {
            return Err(CaseFoldError::Gap {
                expected,
                found: event.step,
            });
        }
        if i > 0 && matches!(event.change, CaseChange::Opened { .. }) {
            return Err(CaseFoldError::Misplaced(event.step));
        }
        case.allows(&event.change, &event.note)
            .map_err(|reason| CaseFoldError::Illegal {
                step: event.step,
                reason,
            })?;
        case.apply(event);
    }
    Ok(case)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(step: i32, change: CaseChange, note: &str) -> CaseEvent {
        CaseEvent {
            step,
            change,
            at: DateTime::from_timestamp(1_700_000_000 + i64::from(step), 0).unwrap(),
            key_id: "k".into(),
            principal: "alice".into(),
            note: note.into(),
            trace_id: None,
            own_trace_id: None,
        }
    }

    fn opened() -> CaseEvent {
        event(
            1,
            CaseChange::Opened {
                title: "Ring".into(),
                summary: "s".into(),
            },
            "",
        )
    }

    fn status(step: i32, from: CaseStatus, to: CaseStatus, referred: Option<&str>) -> CaseEvent {
        event(
            step,
            CaseChange::StatusChanged {
                from,
                to,
                referred_to: referred.map(str::to_owned),
            },
            "because",
        )
    }

    #[test]
    fn a_case_folds_from_its_events() {
        use CaseStatus::*;
        let events = [
            opened(),
            event(2, CaseChange::FlagAdded(7), ""),
            event(3, CaseChange::FlagAdded(9), ""),
            event(4, CaseChange::FlagRemoved(7), ""),
            event(5, CaseChange::Assigned("bob".into()), ""),
            status(6, Open, Investigating, None),
            status(7, Investigating, Referred, Some("prosecutor")),
            event(8, CaseChange::Noted, "sent"),
        ];
        let case = fold(&events).unwrap();
        assert_eq!(case.status, Referred);
        assert_eq!(case.referred_to.as_deref(), Some("prosecutor"));
        assert_eq!(case.flags, BTreeSet::from([9]));
        assert_eq!(case.assignee.as_deref(), Some("bob"));
        assert_eq!(case.revision, 8);
        assert_eq!(case.updated_at, events[7].at);
        assert_eq!(case.opened_by, "alice");
    }

    #[test]
    fn events_that_cannot_follow_are_refused() {
        use CaseStatus::*;
        let illegal = |events: &[CaseEvent]| fold(events).unwrap_err();
        assert_eq!(illegal(&[]), CaseFoldError::Empty);
        assert_eq!(
            illegal(&[event(1, CaseChange::Noted, "x")]),
            CaseFoldError::Misplaced(1)
        );
        assert_eq!(
            illegal(&[opened(), opened()]),
            CaseFoldError::Gap {
                expected: 2,
                found: 1
            }
        );
        let mut again = opened();
        again.step = 2;
        assert_eq!(illegal(&[opened(), again]), CaseFoldError::Misplaced(2));
        let refusal = |events: &[CaseEvent]| match fold(events) {
            Err(CaseFoldError::Illegal { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refusal(&[opened(), status(2, Open, Referred, Some("p"))]),
            CaseRefusal::IllegalTransition {
                from: Open,
                to: Referred
            }
        );
        assert_eq!(
            refusal(&[opened(), status(2, Investigating, Closed, None)]),
            CaseRefusal::WrongFrom {
                claimed: Investigating,
                actual: Open
            }
        );
        let to_investigating = status(2, Open, Investigating, None);
        assert_eq!(
            refusal(&[
                opened(),
                to_investigating.clone(),
                status(3, Investigating, Referred, None)
            ]),
            CaseRefusal::ReferralIncomplete
        );
        let mut silent = status(3, Investigating, Referred, Some("p"));
        silent.note = " ".into();
        assert_eq!(
            refusal(&[opened(), to_investigating.clone(), silent]),
            CaseRefusal::ReferralIncomplete
        );
        assert_eq!(
            refusal(&[
                opened(),
                to_investigating,
                status(3, Investigating, Closed, Some("p"))
            ]),
            CaseRefusal::NotAReferral
        );
        assert_eq!(
            refusal(&[opened(), event(2, CaseChange::FlagRemoved(3), "")]),
            CaseRefusal::NotIn(3)
        );
        assert_eq!(
            refusal(&[
                opened(),
                event(2, CaseChange::FlagAdded(3), ""),
                event(3, CaseChange::FlagAdded(3), "")
            ]),
            CaseRefusal::AlreadyIn(3)
        );
        assert_eq!(
            refusal(&[opened(), event(2, CaseChange::Noted, " \n")]),
            CaseRefusal::EmptyNote
        );
        assert_eq!(
            refusal(&[opened(), event(2, CaseChange::Assigned(" ".into()), "")]),
            CaseRefusal::NoAssignee
        );
    }

    #[test]
    fn a_referred_or_closed_case_goes_back_to_investigating_only() {
        use CaseStatus::*;
        for from in CaseStatus::ALL {
            for to in CaseStatus::ALL {
                let allowed = matches!(
                    (from, to),
                    (Open, Investigating)
                        | (Investigating, Referred | Closed)
                        | (Referred | Closed, Investigating)
                );
                assert_eq!(from.can_move_to(*to), allowed, "{from} → {to}");
            }
        }
    }
}
