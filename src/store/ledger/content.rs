//! What each table's row MAC covers: every column that is evidence, in a
//! fixed order, the same when the service writes a row and when `verify`
//! reads it back. Surrogate ids the database assigns are left out; rows
//! name what they belong to by natural keys (a flag by its record and rule,
//! a key's principal by name), so a row moved under another parent no
//! longer matches. Where a row is updated in place (records, API keys,
//! imports), its place in the ledger's sequence and the place of the state
//! it replaced are covered too, so an old state put back shows.

use chrono::{DateTime, Utc};

use crate::domain::case::{CaseChange, CaseEvent};
use crate::domain::flag_history::FlagStep;
use crate::domain::ledger::{LedgerTable, MacInput};
use crate::domain::{Clinic, RecordId};

/// A record's current version, as its row holds it.
pub(crate) struct RecordState<'a> {
    pub id: RecordId,
    pub version: i32,
    pub seq: i64,
    pub prev: Option<i64>,
    pub received_at: DateTime<Utc>,
    pub amended_at: Option<DateTime<Utc>>,
    pub content_hash: &'a [u8],
    pub reason: Option<&'a str>,
    pub recorded_at: DateTime<Utc>,
    pub chain_head: &'a [u8],
    /// The donor's and the recipient's federation elements, when stored.
    pub elements: (Option<&'a [u8]>, Option<&'a [u8]>),
}

impl RecordState<'_> {
    /// The MAC input. The content hash covers the record's columns, which
    /// verification recomputes it from. A row without federation elements
    /// keeps the first format, so rows written before elements existed
    /// verify as they are; a row with either element uses the second,
    /// which covers both (an element added or removed behind the service
    /// then no longer matches).
    pub(crate) fn input(&self) -> MacInput {
        let input = self.common();
        match self.elements {
            (None, None) => input,
            (donor, recipient) => input.opt_bytes(donor).opt_bytes(recipient),
        }
    }

    fn common(&self) -> MacInput {
        let format = if self.elements == (None, None) { 1 } else { 2 };
        MacInput::new(LedgerTable::Records, format)
            .int(self.id.0)
            .int(i64::from(self.version))
            .int(self.seq)
            .opt_int(self.prev)
            .instant(self.received_at)
            .opt_instant(self.amended_at)
            .bytes(self.content_hash)
            .opt_text(self.reason)
            .instant(self.recorded_at)
            .bytes(self.chain_head)
    }
}

/// A version an amendment replaced.
pub(crate) fn record_version(
    record_id: i64,
    version: i32,
    content_hash: &[u8],
    reason: Option<&str>,
    recorded_at: DateTime<Utc>,
    chain_hash: &[u8],
) -> MacInput {
    MacInput::new(LedgerTable::RecordVersions, 1)
        .int(record_id)
        .int(i64::from(version))
        .bytes(content_hash)
        .opt_text(reason)
        .instant(recorded_at)
        .bytes(chain_hash)
}

/// A step of the flag of `record_id` and `rule_id`, following the step at
/// sequence number `prev`. Steps that name the step they follow use the
/// second format, which covers that link; a link removed or added behind
/// the service then no longer matches.
pub(crate) fn flag_step(
    record_id: RecordId,
    rule_id: &str,
    s: &FlagStep,
    prev: Option<i64>,
) -> MacInput {
    let finding = s.finding.as_ref();
    let evidence: Vec<i64> = finding
        .map(|f| f.evidence.iter().map(|r| r.0).collect())
        .unwrap_or_default();
    let format = if prev.is_some() { 2 } else { 1 };
    let input = MacInput::new(LedgerTable::FlagEvents, format)
        .int(record_id.0)
        .text(rule_id)
        .int(i64::from(s.step))
        .text(s.kind.as_str())
        .instant(s.at)
        .text(&s.key_id)
        .text(&s.principal)
        .opt_text(s.from.map(|f| f.as_str()))
        .text(s.to.as_str())
        .text(&s.note)
        .opt_text(s.trace_id.as_deref())
        .opt_text(s.own_trace_id.as_deref())
        .boolean(finding.is_some())
        .opt_int(finding.map(|f| i64::from(f.rule_version)))
        .opt_text(finding.map(|f| f.severity.as_str()))
        .opt_text(finding.map(|f| f.explanation.as_str()))
        .ints(&evidence)
        .opt_int(finding.map(|f| i64::from(f.record_version)))
        .opt_int(s.cleared_in_version.map(i64::from));
    match prev {
        Some(prev) => input.int(prev),
        None => input,
    }
}

/// A version of a clinic's registry entry.
pub(crate) fn clinic_version(c: &Clinic, version: i32, recorded_at: DateTime<Utc>) -> MacInput {
    let organs: Vec<&str> = c.licensed_organs.iter().map(|o| o.as_str()).collect();
    MacInput::new(LedgerTable::ClinicVersions, 1)
        .text(&c.clinic_id)
        .int(i64::from(version))
        .text(&c.name)
        .text(c.country.as_str())
        .texts(&organs)
        .instant(c.licence_valid_from)
        .opt_instant(c.licence_valid_until)
        .text(c.status.as_str())
        .opt_instant(c.status_effective_from)
        .instant(recorded_at)
}

/// A principal.
pub(crate) fn principal(
    name: &str,
    kind: &str,
    created_by: Option<&str>,
    created_at: DateTime<Utc>,
) -> MacInput {
    MacInput::new(LedgerTable::Principals, 1)
        .text(name)
        .text(kind)
        .opt_text(created_by)
        .instant(created_at)
}

/// An API key's state.
pub(crate) struct KeyState<'a> {
    pub key_id: &'a str,
    pub secret_hash: &'a [u8],
    pub role: &'a str,
    pub hospital_id: Option<&'a str>,
    pub description: &'a str,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub principal: &'a str,
    pub created_by: Option<&'a str>,
    pub seq: i64,
    pub prev: Option<i64>,
}

impl KeyState<'_> {
    /// The MAC input.
    pub(crate) fn input(&self) -> MacInput {
        MacInput::new(LedgerTable::ApiKeys, 1)
            .text(self.key_id)
            .bytes(self.secret_hash)
            .text(self.role)
            .opt_text(self.hospital_id)
            .text(self.description)
            .instant(self.created_at)
            .opt_instant(self.expires_at)
            .opt_instant(self.revoked_at)
            .text(self.principal)
            .opt_text(self.created_by)
            .int(self.seq)
            .opt_int(self.prev)
    }
}

/// An import's checkpoint.
pub(crate) struct ImportState<'a> {
    pub file_sha256: &'a [u8],
    pub file_name: &'a str,
    pub lines_done: i64,
    pub accepted: i64,
    pub duplicates: i64,
    pub rejected: i64,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub seq: i64,
    pub prev: Option<i64>,
}

impl ImportState<'_> {
    /// The MAC input.
    pub(crate) fn input(&self) -> MacInput {
        MacInput::new(LedgerTable::Imports, 1)
            .bytes(self.file_sha256)
            .text(self.file_name)
            .int(self.lines_done)
            .int(self.accepted)
            .int(self.duplicates)
            .int(self.rejected)
            .instant(self.started_at)
            .instant(self.updated_at)
            .opt_instant(self.finished_at)
            .int(self.seq)
            .opt_int(self.prev)
    }
}

/// One read of evidence.
pub(crate) struct Access<'a> {
    pub at: DateTime<Utc>,
    pub principal: &'a str,
    pub key_id: &'a str,
    pub action: &'a str,
    pub resource: &'a str,
    pub resource_id: &'a str,
    pub trace_id: Option<&'a str>,
    pub own_trace_id: Option<&'a str>,
}

impl Access<'_> {
    /// The MAC input.
    pub(crate) fn input(&self) -> MacInput {
        MacInput::new(LedgerTable::AccessLog, 1)
            .instant(self.at)
            .text(self.principal)
            .text(self.key_id)
            .text(self.action)
            .text(self.resource)
            .text(self.resource_id)
            .opt_text(self.trace_id)
            .opt_text(self.own_trace_id)
    }
}

/// A peer registry's state.
pub(crate) struct PeerState<'a> {
    pub name: &'a str,
    pub address: &'a str,
    pub ca_pem: &'a str,
    pub added_at: DateTime<Utc>,
    pub added_by: &'a str,
    pub removed_at: Option<DateTime<Utc>>,
    pub seq: i64,
    pub prev: Option<i64>,
}

impl PeerState<'_> {
    /// The MAC input.
    pub(crate) fn input(&self) -> MacInput {
        MacInput::new(LedgerTable::FederationPeers, 1)
            .text(self.name)
            .text(self.address)
            .text(self.ca_pem)
            .instant(self.added_at)
            .text(self.added_by)
            .opt_instant(self.removed_at)
            .int(self.seq)
            .opt_int(self.prev)
    }
}

/// One call of a federation exchange.
pub(crate) struct Exchange<'a> {
    pub at: DateTime<Utc>,
    pub peer: &'a str,
    pub side: &'a str,
    pub call: &'a str,
    pub exchange_id: &'a str,
    pub elements_in: i64,
    pub elements_out: i64,
    pub outcome: &'a str,
    pub detail: &'a str,
}

impl Exchange<'_> {
    /// The MAC input.
    pub(crate) fn input(&self) -> MacInput {
        MacInput::new(LedgerTable::FederationExchanges, 1)
            .instant(self.at)
            .text(self.peer)
            .text(self.side)
            .text(self.call)
            .text(self.exchange_id)
            .int(self.elements_in)
            .int(self.elements_out)
            .text(self.outcome)
            .text(self.detail)
    }
}

/// A record whose living donor a peer holds too.
pub(crate) fn federation_match(
    record_id: i64,
    peer: &str,
    peer_donations: i32,
    found_at: DateTime<Utc>,
) -> MacInput {
    MacInput::new(LedgerTable::FederationMatches, 1)
        .int(record_id)
        .text(peer)
        .int(i64::from(peer_donations))
        .instant(found_at)
}
/// An event of case `case_id`, following the event at sequence number
/// `prev` (none for the event that opened it).
pub(crate) fn case_event(case_id: i64, e: &CaseEvent, prev: Option<i64>) -> MacInput {
    let columns = CaseEventColumns::of(&e.change);
    MacInput::new(LedgerTable::CaseEvents, 1)
        .int(case_id)
        .int(i64::from(e.step))
        .text(e.change.kind().as_str())
        .instant(e.at)
        .text(&e.key_id)
        .text(&e.principal)
        .opt_text(columns.title)
        .opt_text(columns.summary)
        .opt_int(columns.flag_id)
        .opt_text(columns.assignee)
        .opt_text(columns.from)
        .opt_text(columns.to)
        .opt_text(columns.referred_to)
        .text(&e.note)
        .opt_text(e.trace_id.as_deref())
        .opt_text(e.own_trace_id.as_deref())
        .opt_int(prev)
}

/// A case event's change as the nullable columns that store it.
#[derive(Debug, Default)]
pub(crate) struct CaseEventColumns<'a> {
    pub title: Option<&'a str>,
    pub summary: Option<&'a str>,
    pub flag_id: Option<i64>,
    pub assignee: Option<&'a str>,
    pub from: Option<&'static str>,
    pub to: Option<&'static str>,
    pub referred_to: Option<&'a str>,
}

impl<'a> CaseEventColumns<'a> {
    /// The columns of `change`; the others stay NULL.
    pub(crate) fn of(change: &'a CaseChange) -> Self {
        match change {
            CaseChange::Opened { title, summary } => Self {
                title: Some(title),
                summary: Some(summary),
                ..Self::default()
            },
            CaseChange::FlagAdded(id) | CaseChange::FlagRemoved(id) => Self {
                flag_id: Some(*id),
                ..Self::default()
            },
            CaseChange::Assigned(who) => Self {
                assignee: Some(who),
                ..Self::default()
            },
            CaseChange::StatusChanged {
                from,
                to,
                referred_to,
            } => Self {
                from: Some(from.as_str()),
                to: Some(to.as_str()),
                referred_to: referred_to.as_deref(),
                ..Self::default()
            },
            CaseChange::Noted => Self::default(),
        }
    }
}
