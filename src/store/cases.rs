//! Investigation cases in SQL: opening one, changing it by appending events,
//! reading it, and checking a case's row against its events.
//!
//! A case's row and its flags (`case_flags`) are the fold of its events
//! ([`fold`]); every event is MACed, sealed, and names the event it follows,
//! so the service checks a case before it appends to it, exactly as it
//! checks a flag before a triage step.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::case::{CaseChange, CaseEvent, CaseRefusal, FoldedCase, fold};
use crate::domain::ledger::LedgerKey;
use crate::domain::{CaseEventKind, CaseStatus};

use super::body::parse;
use super::flags::{Actor, FlagCase};
use super::investigate::Read;
use super::ledger::content::{self, CaseEventColumns};
use super::{Store, StoreError, chain, ledger};

/// A case as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseView {
    /// Its id.
    pub id: i64,
    /// Its title.
    pub title: String,
    /// Its summary.
    pub summary: String,
    /// Where it stands.
    pub status: CaseStatus,
    /// Who works on it.
    pub assignee: Option<String>,
    /// Where it was referred, while REFERRED.
    pub referred_to: Option<String>,
    /// The number of events: the etag.
    pub revision: i64,
    /// Who opened it.
    pub opened_by: String,
    /// When.
    pub opened_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Its flags, by id.
    pub flag_ids: Vec<i64>,
}

/// One stored event with its place in the ledger.
#[derive(Debug, Clone)]
pub struct StoredCaseEvent {
    /// The event.
    pub event: CaseEvent,
    /// Its sequence number.
    pub seq: i64,
    /// The sequence number of the event it follows.
    pub prev: Option<i64>,
    /// Its MAC.
    pub mac: Vec<u8>,
}

/// A case with everything an auditor reads on its page.
#[derive(Debug, Clone)]
pub struct CaseDetail {
    /// The case.
    pub case: CaseView,
    /// Each flag with its record, evidence records and triage history.
    pub flags: Vec<FlagCase>,
    /// Its events: notes, status changes, assignments, flags in and out.
    pub events: Vec<StoredCaseEvent>,
}

impl CaseDetail {
    /// What reading the case reads: the case, each flag, its record and
    /// its evidence records, for the access log.
    pub fn reads(&self) -> Vec<Read> {
        let mut reads = vec![Read::of("case", self.case.id)];
        for f in &self.flags {
            reads.push(Read::of("flag", f.flag.id));
            reads.push(Read::of("record", f.record.id.0));
            reads.extend(f.evidence.iter().map(|r| Read::of("record", r.id.0)));
        }
        reads
    }
}

/// A page of cases.
#[derive(Debug, Clone)]
pub struct CasePage {
    /// The cases, newest first.
    pub cases: Vec<CaseView>,
    /// The id to continue below, when there is more.
    pub next_before: Option<i64>,
}

/// A change asked of a case.
#[derive(Debug)]
pub struct CaseCommand<'a> {
    /// The case.
    pub case_id: i64,
    /// The revision the caller last read; `None` when the change does not
    /// depend on what the case holds (a note, an assignment).
    pub expected_revision: Option<i64>,
    /// What to change, in order.
    pub changes: Vec<CaseChange>,
    /// The note every event of the call carries.
    pub note: &'a str,
    /// Who asks.
    pub actor: &'a Actor<'a>,
}

/// Why a case could not be opened or changed.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// No such case.
    #[error("case not found")]
    NotFound,
    /// A flag named does not exist.
    #[error("flag {0} not found")]
    FlagNotFound(i64),
    /// A flag named is in another case already.
    #[error("flag {flag_id} is in case {case_id} already; a flag is in at most one case")]
    FlagInAnotherCase {
        /// The flag.
        flag_id: i64,
        /// The case holding it.
        case_id: i64,
    },
    /// Somebody changed the case since the caller read it.
    #[error("the case changed since it was read (now at revision {current}); read it again")]
    Stale {
        /// The current revision.
        current: i64,
    },
    /// The change does not follow from the case as it stands.
    #[error("{0}")]
    Refused(#[from] CaseRefusal),
    /// The case's row, flags or events were changed behind the service.
    #[error("the case's history does not match its row; an administrator must run verify")]
    Tampered,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for CaseError {
    fn from(e: sqlx::Error) -> Self {
        CaseError::Store(e.into())
    }
}

/// The columns of a `cases` row.
struct CaseRow {
    id: i64,
    title: String,
    summary: String,
    status: String,
    assignee: Option<String>,
    referred_to: Option<String>,
    revision: i64,
    opened_by: String,
    opened_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl CaseRow {
    fn into_view(self, flag_ids: Vec<i64>) -> Result<CaseView, StoreError> {
        Ok(CaseView {
            id: self.id,
            title: self.title,
            summary: self.summary,
            status: parse(&self.status)?,
            assignee: self.assignee,
            referred_to: self.referred_to,
            revision: self.revision,
            opened_by: self.opened_by,
            opened_at: self.opened_at,
            updated_at: self.updated_at,
            flag_ids,
        })
    }

    /// Whether the row holds what the events fold into.
    fn matches(&self, folded: &FoldedCase) -> bool {
        self.title == folded.title
            && self.summary == folded.summary
            && self.status == folded.status.as_str()
            && self.assignee == folded.assignee
            && self.referred_to == folded.referred_to
            && self.revision == folded.revision
            && self.opened_by == folded.opened_by
            && self.opened_at == folded.opened_at
            && self.updated_at == folded.updated_at
    }
}

/// A case checked against its events: the fold and the newest event's
/// sequence number.
struct CheckedCase {
    folded: FoldedCase,
    head: i64,
}

impl Store {
    /// Opens a case holding `flag_ids`, by `actor`.
    pub async fn open_case(
        &self,
        title: &str,
        summary: &str,
        flag_ids: &[i64],
        note: &str,
        actor: &Actor<'_>,
    ) -> Result<CaseView, CaseError> {
        let mut tx = self.begin().await?;
        let at = chain::now();
        let id = sqlx::query_scalar!(
            "INSERT INTO cases (title, summary, status, revision, opened_by, opened_at, updated_at)
             VALUES ($1, $2, 'OPEN', 0, $3, $4, $4) RETURNING id",
            title,
            summary,
            actor.principal,
            at,
        )
        .fetch_one(&mut *tx)
        .await?;
        let opened = CaseEvent {
            step: 1,
            change: CaseChange::Opened {
                title: title.to_owned(),
                summary: summary.to_owned(),
            },
            at,
            key_id: actor.key_id.to_owned(),
            principal: actor.principal.to_owned(),
            note: note.to_owned(),
            trace_id: actor.trace_id.map(str::to_owned),
            own_trace_id: actor.own_trace_id.map(str::to_owned),
        };
        let folded = fold(std::slice::from_ref(&opened))
            .map_err(|e| StoreError::Corrupt(format!("a case's first event does not fold: {e}")))?;
        append(&mut tx, &self.ledger, id, &[opened], None).await?;
        let seq = sqlx::query_scalar!(
            "SELECT ledger_seq FROM case_events WHERE case_id = $1 AND step = 1",
            id
        )
        .fetch_one(&mut *tx)
        .await?;
        let checked = CheckedCase { folded, head: seq };
        let changes = flag_ids.iter().map(|f| CaseChange::FlagAdded(*f)).collect();
        self.apply(&mut tx, id, checked, changes, note, actor)
            .await?;
        tx.commit().await?;
        self.case(id).await?.ok_or(CaseError::NotFound)
    }

    /// Applies `command` to its case, refusing a stale revision, a change
    /// the case's status does not allow, a flag that does not exist or is
    /// in another case; the case and its events are checked first.
    pub async fn change_case(&self, command: CaseCommand<'_>) -> Result<CaseView, CaseError> {
        let mut tx = self.begin().await?;
        let checked = self.checked_case(&mut tx, command.case_id).await?;
        if let Some(expected) = command.expected_revision
            && expected != checked.folded.revision
        {
            return Err(CaseError::Stale {
                current: checked.folded.revision,
            });
        }
        self.apply(
            &mut tx,
            command.case_id,
            checked,
            command.changes,
            command.note,
            command.actor,
        )
        .await?;
        tx.commit().await?;
        self.case(command.case_id).await?.ok_or(CaseError::NotFound)
    }

    /// Appends one event per change and brings the row and its flags to the
    /// new fold.
    async fn apply(
        &self,
        tx: &mut PgConnection,
        case_id: i64,
        checked: CheckedCase,
        changes: Vec<CaseChange>,
        note: &str,
        actor: &Actor<'_>,
    ) -> Result<(), CaseError> {
        let CheckedCase { mut folded, head } = checked;
        let at = chain::now();
        let mut events = Vec::with_capacity(changes.len());
        for change in changes {
            folded.allows(&change, note)?;
            match &change {
                CaseChange::FlagAdded(flag_id) => add_flag(tx, case_id, *flag_id).await?,
                CaseChange::FlagRemoved(flag_id) => {
                    sqlx::query!(
                        "DELETE FROM case_flags WHERE flag_id = $1 AND case_id = $2",
                        flag_id,
                        case_id
                    )
                    .execute(&mut *tx)
                    .await?;
                }
                _ => {}
            }
            let event = CaseEvent {
                step: i32::try_from(folded.revision + 1).unwrap_or(i32::MAX),
                change,
                at,
                key_id: actor.key_id.to_owned(),
                principal: actor.principal.to_owned(),
                note: note.to_owned(),
                trace_id: actor.trace_id.map(str::to_owned),
                own_trace_id: actor.own_trace_id.map(str::to_owned),
            };
            folded.apply(&event);
            events.push(event);
        }
        if events.is_empty() {
            return Ok(());
        }
        append(tx, &self.ledger, case_id, &events, Some(head)).await?;
        sqlx::query!(
            "UPDATE cases SET status = $2, assignee = $3, referred_to = $4, revision = $5,
                              updated_at = $6
             WHERE id = $1",
            case_id,
            folded.status.as_str(),
            folded.assignee,
            folded.referred_to,
            folded.revision,
            folded.updated_at,
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// Locks case `case_id` and checks its row, its flags and its events
    /// against each other and the sealed blocks.
    async fn checked_case(
        &self,
        tx: &mut PgConnection,
        case_id: i64,
    ) -> Result<CheckedCase, CaseError> {
        let row = sqlx::query_as!(
            CaseRow,
            "SELECT id, title, summary, status, assignee, referred_to, revision, opened_by,
                    opened_at, updated_at
             FROM cases WHERE id = $1 FOR UPDATE",
            case_id
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(CaseError::NotFound)?;
        let events = events_of(tx, &[case_id])
            .await?
            .remove(&case_id)
            .unwrap_or_default();
        let flags = flags_of(tx, &[case_id])
            .await?
            .remove(&case_id)
            .unwrap_or_default();
        let checked = check(&self.ledger, &row, &flags, &events).map_err(|reason| {
            tracing::error!(case_id, %reason, "a case was changed behind the service's back");
            CaseError::Tampered
        })?;
        self.view
            .check_current(tx, checked.head, || {
                format!("case {case_id}'s newest event")
            })
            .await
            .map_err(|e| match e {
                StoreError::Tampered(_) => CaseError::Tampered,
                e => e.into(),
            })?;
        Ok(checked)
    }

    /// One case.
    pub async fn case(&self, case_id: i64) -> Result<Option<CaseView>, StoreError> {
        case_on(&mut *self.acquire().await?, case_id).await
    }

    /// The case holding `flag_id`, if one does.
    pub async fn case_of_flag(&self, flag_id: i64) -> Result<Option<i64>, StoreError> {
        let mut conn = self.acquire().await?;
        Ok(
            sqlx::query_scalar!("SELECT case_id FROM case_flags WHERE flag_id = $1", flag_id)
                .fetch_optional(&mut *conn)
                .await?,
        )
    }

    /// A case with its flags, their records and histories, and its events.
    pub async fn case_detail(&self, case_id: i64) -> Result<Option<CaseDetail>, StoreError> {
        let Some(case) = self.case(case_id).await? else {
            return Ok(None);
        };
        let mut flags = Vec::with_capacity(case.flag_ids.len());
        for flag_id in &case.flag_ids {
            if let Some(flag) = self.flag_case(*flag_id).await? {
                flags.push(flag);
            }
        }
        let events = events_of(&mut *self.acquire().await?, &[case_id])
            .await?
            .remove(&case_id)
            .unwrap_or_default();
        Ok(Some(CaseDetail {
            case,
            flags,
            events,
        }))
    }

    /// Cases with ids below `before`, newest first, by status and assignee.
    pub async fn list_cases(
        &self,
        status: Option<CaseStatus>,
        assignee: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<CasePage, StoreError> {
        let mut conn = self.acquire().await?;
        let rows = sqlx::query_as!(
            CaseRow,
            "SELECT id, title, summary, status, assignee, referred_to, revision, opened_by,
                    opened_at, updated_at
             FROM cases
             WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR assignee = $2)
               AND id < $3
             ORDER BY id DESC LIMIT $4",
            status.map(CaseStatus::as_str),
            assignee,
            before.unwrap_or(i64::MAX),
            limit + 1,
        )
        .fetch_all(&mut *conn)
        .await?;
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let mut flags = flags_of(&mut conn, &ids).await?;
        let mut cases = rows
            .into_iter()
            .map(|r| {
                let f = flags.remove(&r.id).unwrap_or_default();
                r.into_view(f.into_iter().collect())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let next_before = if cases.len() as i64 > limit {
            cases.truncate(usize::try_from(limit).unwrap_or(0));
            cases.last().map(|c| c.id)
        } else {
            None
        };
        Ok(CasePage { cases, next_before })
    }

    /// The first case whose row or flags are not the fold of its events, or
    /// whose events are not a chain, in words; for `verify`.
    pub(crate) async fn first_broken_case(
        &self,
        conn: &mut PgConnection,
    ) -> Result<Option<(String, String)>, StoreError> {
        let mut after = 0i64;
        loop {
            let rows = sqlx::query_as!(
                CaseRow,
                "SELECT id, title, summary, status, assignee, referred_to, revision, opened_by,
                        opened_at, updated_at
                 FROM cases WHERE id > $1 ORDER BY id LIMIT 500",
                after
            )
            .fetch_all(&mut *conn)
            .await?;
            let Some(last) = rows.last() else {
                break;
            };
            after = last.id;
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            let mut events = events_of(conn, &ids).await?;
            let mut flags = flags_of(conn, &ids).await?;
            for row in &rows {
                let e = events.remove(&row.id).unwrap_or_default();
                let f = flags.remove(&row.id).unwrap_or_default();
                if let Err(reason) = check(&self.ledger, row, &f, &e) {
                    return Ok(Some((format!("case {}", row.id), reason)));
                }
            }
        }
        let orphan = sqlx::query_scalar!(
            r#"SELECT e.case_id AS "case_id!" FROM case_events e
               LEFT JOIN cases c ON c.id = e.case_id WHERE c.id IS NULL LIMIT 1"#
        )
        .fetch_optional(&mut *conn)
        .await?;
        Ok(orphan.map(|id| {
            (
                format!("case {id}"),
                "its events remain but its row is gone".to_owned(),
            )
        }))
    }
}

/// One case, read on `conn`.
pub(super) async fn case_on(
    conn: &mut PgConnection,
    case_id: i64,
) -> Result<Option<CaseView>, StoreError> {
    let row = sqlx::query_as!(
        CaseRow,
        "SELECT id, title, summary, status, assignee, referred_to, revision, opened_by,
                    opened_at, updated_at
             FROM cases WHERE id = $1",
        case_id
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let flags = flags_of(conn, &[case_id])
        .await?
        .remove(&case_id)
        .unwrap_or_default();
    row.into_view(flags.into_iter().collect()).map(Some)
}

/// Puts `flag_id` in case `case_id`, refusing a flag that does not exist or
/// is in another case.
async fn add_flag(tx: &mut PgConnection, case_id: i64, flag_id: i64) -> Result<(), CaseError> {
    let exists = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM flags WHERE id = $1) AS "x!""#,
        flag_id
    )
    .fetch_one(&mut *tx)
    .await?;
    if !exists {
        return Err(CaseError::FlagNotFound(flag_id));
    }
    let added = sqlx::query!(
        "INSERT INTO case_flags (flag_id, case_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        flag_id,
        case_id
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if added == 0 {
        let holder =
            sqlx::query_scalar!("SELECT case_id FROM case_flags WHERE flag_id = $1", flag_id)
                .fetch_one(&mut *tx)
                .await?;
        return Err(CaseError::FlagInAnotherCase {
            flag_id,
            case_id: holder,
        });
    }
    Ok(())
}

/// Writes `events` of case `case_id`, each MACed and naming the one before
/// (the first names `head`, the newest event already stored).
async fn append(
    tx: &mut PgConnection,
    key: &LedgerKey,
    case_id: i64,
    events: &[CaseEvent],
    head: Option<i64>,
) -> Result<(), StoreError> {
    let seqs = ledger::allocate(tx, events.len()).await?;
    let mut prev = head;
    for (event, seq) in events.iter().zip(seqs) {
        let mac = key.mac(&content::case_event(case_id, event, prev));
        let c = CaseEventColumns::of(&event.change);
        sqlx::query!(
            "INSERT INTO case_events (case_id, step, kind, at, key_id, principal, title, summary,
                                      flag_id, assignee, from_status, to_status, referred_to,
                                      note, trace_id, own_trace_id, ledger_seq, ledger_prev,
                                      ledger_mac)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                     $18, $19)",
            case_id,
            event.step,
            event.change.kind().as_str(),
            event.at,
            event.key_id,
            event.principal,
            c.title,
            c.summary,
            c.flag_id,
            c.assignee,
            c.from,
            c.to,
            c.referred_to,
            event.note,
            event.trace_id,
            event.own_trace_id,
            seq,
            prev,
            mac.as_slice(),
        )
        .execute(&mut *tx)
        .await?;
        prev = Some(seq);
    }
    Ok(())
}

/// The columns of a `case_events` row.
pub(crate) struct CaseEventRow {
    pub(crate) case_id: i64,
    pub(crate) step: i32,
    pub(crate) kind: String,
    pub(crate) at: DateTime<Utc>,
    pub(crate) key_id: String,
    pub(crate) principal: String,
    pub(crate) title: Option<String>,
    pub(crate) summary: Option<String>,
    pub(crate) flag_id: Option<i64>,
    pub(crate) assignee: Option<String>,
    pub(crate) from_status: Option<String>,
    pub(crate) to_status: Option<String>,
    pub(crate) referred_to: Option<String>,
    pub(crate) note: String,
    pub(crate) trace_id: Option<String>,
    pub(crate) own_trace_id: Option<String>,
    pub(crate) ledger_seq: i64,
    pub(crate) ledger_prev: Option<i64>,
    pub(crate) ledger_mac: Vec<u8>,
}

impl CaseEventRow {
    /// The event the row states; an error names a column that holds what
    /// no event of its kind can.
    pub(crate) fn event(&self) -> Result<CaseEvent, StoreError> {
        let kind: CaseEventKind = parse(&self.kind)?;
        let missing = |column: &str| {
            StoreError::Corrupt(format!(
                "case {} event {}: {} without {column}",
                self.case_id, self.step, self.kind
            ))
        };
        let change = match kind {
            CaseEventKind::Opened => CaseChange::Opened {
                title: self.title.clone().ok_or_else(|| missing("title"))?,
                summary: self.summary.clone().ok_or_else(|| missing("summary"))?,
            },
            CaseEventKind::FlagAdded => {
                CaseChange::FlagAdded(self.flag_id.ok_or_else(|| missing("flag_id"))?)
            }
            CaseEventKind::FlagRemoved => {
                CaseChange::FlagRemoved(self.flag_id.ok_or_else(|| missing("flag_id"))?)
            }
            CaseEventKind::Assigned => {
                CaseChange::Assigned(self.assignee.clone().ok_or_else(|| missing("assignee"))?)
            }
            CaseEventKind::StatusChanged => CaseChange::StatusChanged {
                from: parse(
                    self.from_status
                        .as_deref()
                        .ok_or_else(|| missing("from_status"))?,
                )?,
                to: parse(
                    self.to_status
                        .as_deref()
                        .ok_or_else(|| missing("to_status"))?,
                )?,
                referred_to: self.referred_to.clone(),
            },
            CaseEventKind::Noted => CaseChange::Noted,
        };
        let event = CaseEvent {
            step: self.step,
            change,
            at: self.at,
            key_id: self.key_id.clone(),
            principal: self.principal.clone(),
            note: self.note.clone(),
            trace_id: self.trace_id.clone(),
            own_trace_id: self.own_trace_id.clone(),
        };
        // Columns the kind leaves NULL must be NULL: the MAC covers the
        // event, not what else the row holds.
        let expected = CaseEventColumns::of(&event.change);
        let extra = (self.title.is_some() != expected.title.is_some())
            || (self.summary.is_some() != expected.summary.is_some())
            || (self.flag_id.is_some() != expected.flag_id.is_some())
            || (self.assignee.is_some() != expected.assignee.is_some())
            || (self.from_status.is_some() != expected.from.is_some())
            || (self.to_status.is_some() != expected.to.is_some())
            || (self.referred_to.is_some() != expected.referred_to.is_some());
        if extra {
            return Err(StoreError::Corrupt(format!(
                "case {} event {}: a column its kind leaves empty holds a value",
                self.case_id, self.step
            )));
        }
        Ok(event)
    }

    /// Whether the row's MAC matches its content.
    pub(crate) fn genuine(&self, key: &LedgerKey) -> bool {
        self.event().is_ok_and(|e| {
            key.verify(
                &content::case_event(self.case_id, &e, self.ledger_prev),
                &self.ledger_mac,
            )
        })
    }
}

/// Every case event with a sequence number in `(lo, hi]` (`hi` open when
/// `None`), for the ledger's checks.
pub(crate) async fn case_event_rows(
    conn: &mut PgConnection,
    lo: i64,
    hi: Option<i64>,
) -> Result<Vec<CaseEventRow>, StoreError> {
    Ok(sqlx::query_as!(
        CaseEventRow,
        "SELECT case_id, step, kind, at, key_id, principal, title, summary, flag_id, assignee,
                from_status, to_status, referred_to, note, trace_id, own_trace_id, ledger_seq,
                ledger_prev, ledger_mac
         FROM case_events WHERE ledger_seq > $1 AND ledger_seq <= $2",
        lo,
        hi.unwrap_or(i64::MAX)
    )
    .fetch_all(&mut *conn)
    .await?)
}

/// The events of these cases, each case's in order.
pub(super) async fn events_of(
    conn: &mut PgConnection,
    case_ids: &[i64],
) -> Result<HashMap<i64, Vec<StoredCaseEvent>>, StoreError> {
    let rows = sqlx::query_as!(
        CaseEventRow,
        "SELECT case_id, step, kind, at, key_id, principal, title, summary, flag_id, assignee,
                from_status, to_status, referred_to, note, trace_id, own_trace_id, ledger_seq,
                ledger_prev, ledger_mac
         FROM case_events WHERE case_id = ANY($1) ORDER BY case_id, step",
        case_ids
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut events: HashMap<i64, Vec<StoredCaseEvent>> = HashMap::new();
    for row in rows {
        let event = row.event()?;
        events
            .entry(row.case_id)
            .or_default()
            .push(StoredCaseEvent {
                event,
                seq: row.ledger_seq,
                prev: row.ledger_prev,
                mac: row.ledger_mac,
            });
    }
    Ok(events)
}

/// The flags of these cases.
async fn flags_of(
    conn: &mut PgConnection,
    case_ids: &[i64],
) -> Result<HashMap<i64, BTreeSet<i64>>, StoreError> {
    let rows = sqlx::query!(
        "SELECT case_id, flag_id FROM case_flags WHERE case_id = ANY($1)",
        case_ids
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut flags: HashMap<i64, BTreeSet<i64>> = HashMap::new();
    for r in rows {
        flags.entry(r.case_id).or_default().insert(r.flag_id);
    }
    Ok(flags)
}

/// Checks a case's row and flags against its events, and each event's MAC
/// and link to the one before.
fn check(
    key: &LedgerKey,
    row: &CaseRow,
    flags: &BTreeSet<i64>,
    events: &[StoredCaseEvent],
) -> Result<CheckedCase, String> {
    let mut prev = None;
    for e in events {
        if e.prev != prev {
            return Err(format!(
                "event {} does not follow the event before it: an event was deleted",
                e.event.step
            ));
        }
        if !key.verify(&content::case_event(row.id, &e.event, e.prev), &e.mac) {
            return Err(format!(
                "event {} does not match its MAC: edited behind the service",
                e.event.step
            ));
        }
        prev = Some(e.seq);
    }
    let folded = fold(&events.iter().map(|e| e.event.clone()).collect::<Vec<_>>())
        .map_err(|e| e.to_string())?;
    if !row.matches(&folded) {
        return Err("its row is not what its events make it".into());
    }
    if *flags != folded.flags {
        return Err("its flags are not the ones its events put in it".into());
    }
    let head = prev.ok_or("the case has no events")?;
    Ok(CheckedCase { folded, head })
}
