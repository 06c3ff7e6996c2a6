//! `verify`: everything the database holds, checked against its ledger and
//! against digests kept outside it.
//!
//! In order, stopping at the first break:
//! 1. The blocks: each one's hash recomputed from its entries and the block
//!    before, its signature checked, and every digest given (kept from
//!    before, outside the database) matched by the block it names. A
//!    digest's block that is gone or differs is a break: blocks cannot be
//!    rewritten, truncated or rewound under a digest.
//! 2. The sealed rows: every entry of every block matched by the row that
//!    holds its sequence number now, with the same MAC; a row whose number
//!    a block covers but lists for no row (written or changed behind the
//!    service), an entry whose row is gone (deleted), and an entry whose
//!    state a later entry replaced but whose row holds it still (rewound)
//!    are breaks. Every row's MAC is recomputed from its content.
//! 3. Rows not sealed yet: their MACs, and no second successor to a sealed
//!    state (an unsealed step that follows a step a sealed step followed
//!    already means that sealed step was deleted and replaced).
//! 4. What the MACs cannot say alone: each record's versions chain and
//!    match its columns; each flag's row is the fold of its steps, and a
//!    CRITICAL flag was dismissed by two principals whose keys no single
//!    administrator issued; each clinic's current entry is its newest.

use std::collections::{HashMap, HashSet};

use sqlx::PgConnection;

use crate::domain::ledger::{
    BlockHash, Digest, Entry, GENESIS_BLOCK, LedgerKey, LedgerTable, PublicKey, block_hash, unpack,
};
use crate::domain::{Clinic, FlagStatus, RecordId, Severity, StepKind};

use super::super::body::{RecordBody, parse};
use super::super::chain::{ChainWalk, VersionEntry};
use super::super::steps::{self, FlagRowState, StepColumns, StoredStep};
use super::super::{Store, StoreError, cases, row};
use super::content;

/// The first thing found that does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// The table (or `ledger_blocks`).
    pub table: &'static str,
    /// Which row, in words (`record 12`, `flag 5 step 3`, `block 7`).
    pub row: String,
    /// The block whose seal it breaks, when one does.
    pub block: Option<i64>,
    /// What does not hold.
    pub reason: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.row, self.table)?;
        if let Some(block) = self.block {
            write!(f, ", sealed in block {block}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// What a verification covered and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Blocks checked.
    pub blocks: u64,
    /// Digests matched.
    pub digests: u64,
    /// The last sequence number sealed.
    pub sealed_through: i64,
    /// Sealed row states checked.
    pub sealed_rows: u64,
    /// Rows written since the last block, checked by their MACs alone.
    pub unsealed_rows: u64,
    /// Record versions whose chain was walked.
    pub record_versions: u64,
    /// Flags folded from their steps.
    pub flags: u64,
    /// The first break, if any.
    pub first_break: Option<Break>,
}

/// Blocks read at a time.
const BLOCKS_PER_READ: i64 = 64;

/// Rows a span of blocks is cut at, to bound what one check holds.
const ROWS_PER_SPAN: usize = 50_000;

/// Records or flags read at a time in the checks of their histories.
const PAGE: i64 = 2_000;

type Found<T> = Result<Option<T>, StoreError>;

impl Store {
    /// Checks everything against the ledger and against `digests`, each
    /// block and digest signed by one of `trusted`. Without a trusted key,
    /// digests are refused and a block need only carry a signature by the
    /// key it names: that proves consistency, not who sealed it.
    pub async fn verify(
        &self,
        digests: &[Digest],
        trusted: &[PublicKey],
    ) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        // One snapshot for every read: rows written or sealed while verify
        // runs must not look like rows that are gone or were never sealed.
        let mut tx = self.begin().await?;
        sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        sqlx::query!(
            "SELECT set_config('application_name', $1, true)",
            super::VERIFY_APPLICATION
        )
        .fetch_one(&mut *tx)
        .await?;
        let found = self
            .verify_steps(&mut tx, digests, trusted, &mut report)
            .await?;
        tx.rollback().await?;
        report.first_break = found;
        Ok(report)
    }

    async fn verify_steps(
        &self,
        conn: &mut PgConnection,
        digests: &[Digest],
        trusted: &[PublicKey],
        report: &mut VerifyReport,
    ) -> Found<Break> {
        let index = match check_blocks(conn, digests, trusted, report).await? {
            Ok(index) => index,
            Err(found) => return Ok(Some(found)),
        };
        if let Some(found) = check_numbered(conn).await? {
            return Ok(Some(found));
        }
        let unsealed = ledger_rows(conn, &self.ledger, index.sealed_through, None).await?;
        // A sealed state of a row updated in place may have been replaced by
        // one not sealed yet; that one's MAC is checked with the unsealed rows.
        let replaced_since: HashSet<i64> = unsealed
            .iter()
            .filter(|r| !r.table.chains_steps())
            .filter_map(|r| r.prev)
            .collect();
        if let Some(found) =
            check_sealed(conn, &self.ledger, &index, &replaced_since, report).await?
        {
            return Ok(Some(found));
        }
        if let Some(found) = check_unsealed(unsealed, &index, report) {
            return Ok(Some(found));
        }
        if let Some(found) = self.check_records(conn, report).await? {
            return Ok(Some(found));
        }
        if let Some(found) = self.check_flags(conn, report).await? {
            return Ok(Some(found));
        }
        if let Some((row, reason)) = self.first_broken_case(conn).await? {
            return Ok(Some(Break {
                table: LedgerTable::CaseEvents.name(),
                row,
                block: None,
                reason,
            }));
        }
        check_clinics(conn).await
    }
}

/// What the blocks say, for the checks of the rows.
struct BlockIndex {
    /// The blocks' spans of sequence numbers, in order.
    spans: Vec<(i64, i64, i64)>,
    /// Sequence numbers of row states a later sealed state of the same row
    /// replaced (tables updated in place: the old state must be gone).
    superseded: HashSet<i64>,
    /// Sequence numbers of flag steps a later sealed step followed (the
    /// step stays; it must not be followed twice).
    followed: HashSet<i64>,
    /// The last sequence number sealed.
    sealed_through: i64,
}

fn block_break(block: i64, reason: impl Into<String>) -> Break {
    Break {
        table: "ledger_blocks",
        row: format!("block {block}"),
        block: Some(block),
        reason: reason.into(),
    }
}

/// Checks the chain of blocks and the digests; the index of what they seal.
async fn check_blocks(
    conn: &mut PgConnection,
    digests: &[Digest],
    trusted: &[PublicKey],
    report: &mut VerifyReport,
) -> Result<Result<BlockIndex, Break>, StoreError> {
    let mut wanted: HashMap<i64, (BlockHash, i64)> = HashMap::new();
    for d in digests {
        if trusted.is_empty() {
            return Ok(Err(block_break(
                d.block,
                "digests were given but no public key to check them with",
            )));
        }
        match d.check_any(trusted) {
            Ok(hash) => {
                wanted.insert(d.block, (hash, d.last_seq));
            }
            Err(e) => {
                return Ok(Err(block_break(
                    d.block,
                    format!("its digest is not genuine: {e}"),
                )));
            }
        }
    }
    let mut index = BlockIndex {
        spans: Vec::new(),
        superseded: HashSet::new(),
        followed: HashSet::new(),
        sealed_through: 0,
    };
    let mut previous: BlockHash = GENESIS_BLOCK;
    let mut number = 0i64;
    loop {
        let blocks = super::blocks_after(conn, number, BLOCKS_PER_READ).await?;
        if blocks.is_empty() {
            break;
        }
        for b in blocks {
            if b.block != number + 1 {
                return Ok(Err(block_break(number + 1, "it is missing")));
            }
            number = b.block;
            report.blocks += 1;
            if b.first_seq != index.sealed_through + 1 || b.last_seq < b.first_seq - 1 {
                return Ok(Err(block_break(
                    b.block,
                    "its range does not follow the block before",
                )));
            }
            if b.prev_hash != previous {
                return Ok(Err(block_break(
                    b.block,
                    "it does not chain to the block before",
                )));
            }
            let hash = block_hash(&previous, b.block, b.first_seq, b.last_seq, &b.entries);
            if b.hash != hash {
                return Ok(Err(block_break(
                    b.block,
                    "its entries or range do not match its hash",
                )));
            }
            let digest = Digest {
                block: b.block,
                last_seq: b.last_seq,
                hash: hex::encode(hash),
                sealed_at: b.sealed_at,
                public_key: hex::encode(&b.public_key),
                signature: hex::encode(&b.signature),
            };
            let signed = if trusted.is_empty() {
                digest
                    .public_key
                    .parse::<PublicKey>()
                    .is_ok_and(|named| digest.check(&named).is_ok())
            } else {
                digest.check_any(trusted).is_ok()
            };
            if !signed {
                return Ok(Err(block_break(
                    b.block,
                    "its signature is not the registry's",
                )));
            }
            if let Some((expected, last_seq)) = wanted.remove(&b.block) {
                if expected != hash || last_seq != b.last_seq {
                    return Ok(Err(block_break(
                        b.block,
                        "it differs from its digest kept outside the database",
                    )));
                }
                report.digests += 1;
            }
            let entries = match unpack(&b.entries) {
                Ok(entries) => entries,
                Err(e) => return Ok(Err(block_break(b.block, e.to_string()))),
            };
            let in_order = entries.windows(2).all(|w| w[0].seq < w[1].seq)
                && entries
                    .iter()
                    .all(|e| e.seq >= b.first_seq && e.seq <= b.last_seq);
            if !in_order {
                return Ok(Err(block_break(b.block, "its entries are out of order")));
            }
            for e in entries.iter().filter(|e| e.prev != 0) {
                if e.table.chains_steps() {
                    index.followed.insert(e.prev);
                } else {
                    index.superseded.insert(e.prev);
                }
            }
            index.spans.push((b.block, b.first_seq, b.last_seq));
            index.sealed_through = b.last_seq;
            previous = hash;
        }
    }
    if let Some((&block, _)) = wanted.iter().min_by_key(|(b, _)| **b) {
        return Ok(Err(block_break(
            block,
            "a digest kept outside the database names it, and it is gone",
        )));
    }
    report.sealed_through = index.sealed_through;
    Ok(Ok(index))
}

/// A row as the ledger sees it.
struct LedgerRow {
    table: LedgerTable,
    seq: i64,
    prev: Option<i64>,
    mac: Option<Vec<u8>>,
    /// Whether its MAC matches its content.
    genuine: bool,
    label: String,
}

impl LedgerRow {
    fn broken(&self, block: Option<i64>, reason: impl Into<String>) -> Break {
        Break {
            table: self.table.name(),
            row: self.label.clone(),
            block,
            reason: reason.into(),
        }
    }
}

/// Matches every block's entries with the rows that hold their numbers.
async fn check_sealed(
    conn: &mut PgConnection,
    ledger: &LedgerKey,
    index: &BlockIndex,
    replaced_since: &HashSet<i64>,
    report: &mut VerifyReport,
) -> Found<Break> {
    let mut i = 0;
    while i < index.spans.len() {
        // Blocks are read again a span at a time; a span's rows at once.
        let first_block = index.spans[i].0;
        let lo = index.spans[i].1 - 1;
        let mut hi = index.spans[i].2;
        let mut j = i + 1;
        while j < index.spans.len() && (index.spans[j].2 - lo) < ROWS_PER_SPAN as i64 {
            hi = index.spans[j].2;
            j += 1;
        }
        let rows = ledger_rows(conn, ledger, lo, Some(hi)).await?;
        let mut by_seq: HashMap<i64, LedgerRow> = HashMap::with_capacity(rows.len());
        for row in rows {
            if let Some(other) = by_seq.get(&row.seq) {
                return Ok(Some(row.broken(
                    None,
                    format!(
                        "it claims sequence number {}, which {} holds too",
                        row.seq, other.label
                    ),
                )));
            }
            by_seq.insert(row.seq, row);
        }
        let blocks = super::blocks_after(
            conn,
            first_block - 1,
            i64::try_from(j - i).unwrap_or(i64::MAX),
        )
        .await?;
        for b in &blocks {
            let entries = unpack(&b.entries).unwrap_or_default();
            for entry in entries {
                report.sealed_rows += 1;
                if let Some(found) =
                    match_entry(&entry, b.block, &mut by_seq, index, replaced_since)
                {
                    return Ok(Some(found));
                }
            }
        }
        if let Some(row) = by_seq.values().min_by_key(|r| r.seq) {
            let block = index
                .spans
                .iter()
                .find(|(_, f, l)| row.seq >= *f && row.seq <= *l)
                .map(|(b, _, _)| *b);
            return Ok(Some(row.broken(
                block,
                "its block lists no such row: it was written or changed behind the service",
            )));
        }
        i = j;
    }
    Ok(None)
}

/// Checks one sealed entry against the row holding its number, if any.
fn match_entry(
    entry: &Entry,
    block: i64,
    by_seq: &mut HashMap<i64, LedgerRow>,
    index: &BlockIndex,
    replaced_since: &HashSet<i64>,
) -> Option<Break> {
    let replaced = index.superseded.contains(&entry.seq);
    match by_seq.remove(&entry.seq) {
        None if replaced || replaced_since.contains(&entry.seq) => None,
        None => Some(Break {
            table: entry.table.name(),
            row: format!("the row sealed at sequence number {}", entry.seq),
            block: Some(block),
            reason: "it is gone: deleted, or moved to another number".into(),
        }),
        Some(row) if row.table != entry.table => Some(row.broken(
            Some(block),
            format!("its number was sealed for a row of {}", entry.table),
        )),
        Some(row) if !row.genuine => Some(row.broken(
            Some(block),
            "its content does not match its MAC: edited behind the service",
        )),
        Some(row) if !row.mac.as_deref().is_some_and(|m| entry.seals(m)) => {
            Some(row.broken(Some(block), "it is not the state its block sealed"))
        }
        Some(row) if replaced => Some(row.broken(
            Some(block),
            "a later sealed state replaced this one, yet the row holds it: rewound",
        )),
        Some(_) => None,
    }
}

/// Finds a row with no place in the ledger's sequence (numbers start at 1):
/// the checks by number would never see it.
async fn check_numbered(conn: &mut PgConnection) -> Found<Break> {
    let outside = sqlx::query!(
        r#"SELECT t AS "table!", id AS "id!" FROM (
               (SELECT 'records' AS t, id::text AS id FROM records
                WHERE ledger_seq IS NULL OR ledger_seq < 1 LIMIT 1)
               UNION ALL (SELECT 'record_versions', record_id || '/' || version FROM record_versions
                WHERE ledger_seq IS NULL OR ledger_seq < 1 LIMIT 1)
               UNION ALL (SELECT 'flag_events', id::text FROM flag_events
                WHERE ledger_seq IS NULL OR ledger_seq < 1 LIMIT 1)
               UNION ALL (SELECT 'clinic_versions', clinic_id || '/' || version FROM clinic_versions
                WHERE ledger_seq IS NULL OR ledger_seq < 1 LIMIT 1)
               UNION ALL (SELECT 'principals', id::text FROM principals
                WHERE ledger_seq IS NULL OR ledger_seq < 1 LIMIT 1)
               UNION ALL (SELECT 'api_keys', key_id FROM api_keys
                WHERE ledger_seq IS NULL OR ledger_seq < 1 LIMIT 1)
               UNION ALL (SELECT 'imports', file_name FROM imports
                WHERE ledger_seq IS NULL OR ledger_seq < 1 LIMIT 1)
               UNION ALL (SELECT 'access_log', id::text FROM access_log
                WHERE ledger_seq IS NULL OR ledger_seq < 1 LIMIT 1)
               UNION ALL (SELECT 'federation_peers', name FROM federation_peers
                WHERE ledger_seq IS NULL OR ledger_seq < 1 LIMIT 1)
               UNION ALL (SELECT 'federation_exchanges', id::text FROM federation_exchanges
                WHERE ledger_seq IS NULL OR ledger_seq < 1 LIMIT 1)
               UNION ALL (SELECT 'federation_matches', id::text FROM federation_matches
                WHERE ledger_seq IS NULL OR ledger_seq < 1 LIMIT 1)
               UNION ALL (SELECT 'case_events', case_id || '/' || step FROM case_events
                WHERE ledger_seq < 1 LIMIT 1)
           ) outside LIMIT 1"#
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(outside.map(|r| {
        let table = LedgerTable::ALL
            .iter()
            .map(|t| t.name())
            .find(|name| *name == r.table)
            .unwrap_or("ledger");
        Break {
            table,
            row: format!("{} {}", table, r.id),
            block: None,
            reason: "it has no sequence number of the ledger: written behind the service".into(),
        }
    }))
}

/// Checks the rows written after the last block.
fn check_unsealed(
    mut rows: Vec<LedgerRow>,
    index: &BlockIndex,
    report: &mut VerifyReport,
) -> Option<Break> {
    rows.sort_by_key(|r| r.seq);
    if let Some(pair) = rows.windows(2).find(|w| w[0].seq == w[1].seq) {
        return Some(pair[1].broken(
            None,
            format!(
                "it claims sequence number {}, which {} holds too",
                pair[1].seq, pair[0].label
            ),
        ));
    }
    for row in rows {
        report.unsealed_rows += 1;
        if !row.genuine {
            return Some(row.broken(
                None,
                "its content does not match its MAC: edited or written behind the service",
            ));
        }
        let Some(prev) = row.prev else { continue };
        if row.table.chains_steps() && index.followed.contains(&prev) {
            return Some(row.broken(
                None,
                "it follows a step that a sealed step followed already: a step was deleted",
            ));
        }
        if index.superseded.contains(&prev) {
            return Some(row.broken(
                None,
                "it replaces a state that a sealed state replaced already: rewound",
            ));
        }
    }
    None
}

/// Every covered row with a sequence number in `(lo, hi]` (`hi` open when
/// `None`), its MAC checked.
async fn ledger_rows(
    conn: &mut PgConnection,
    ledger: &LedgerKey,
    lo: i64,
    hi: Option<i64>,
) -> Result<Vec<LedgerRow>, StoreError> {
    let hi = hi.unwrap_or(i64::MAX);
    let mut rows = Vec::new();
    for r in sqlx::query!(
        "SELECT id, version, ledger_seq, ledger_prev, received_at, amended_at, content_hash,
                version_reason, version_recorded_at, chain_head, ledger_mac, donor_element,
                recipient_element
         FROM records WHERE ledger_seq > $1 AND ledger_seq <= $2",
        lo,
        hi
    )
    .fetch_all(&mut *conn)
    .await?
    {
        let genuine = r.chain_head.as_deref().is_some_and(|head| {
            let state = content::RecordState {
                id: RecordId(r.id),
                version: r.version,
                seq: r.ledger_seq,
                prev: r.ledger_prev,
                received_at: r.received_at,
                amended_at: r.amended_at,
                content_hash: &r.content_hash,
                reason: r.version_reason.as_deref(),
                recorded_at: r.version_recorded_at,
                chain_head: head,
                elements: (r.donor_element.as_deref(), r.recipient_element.as_deref()),
            };
            mac_ok(ledger, &state.input(), r.ledger_mac.as_deref())
        });
        rows.push(LedgerRow {
            table: LedgerTable::Records,
            seq: r.ledger_seq,
            prev: r.ledger_prev,
            mac: r.ledger_mac,
            genuine,
            label: format!("record {} version {}", r.id, r.version),
        });
    }
    for r in sqlx::query!(
        "SELECT record_id, version, content_hash, reason, recorded_at, chain_hash, ledger_seq,
                ledger_mac
         FROM record_versions WHERE ledger_seq > $1 AND ledger_seq <= $2",
        lo,
        hi
    )
    .fetch_all(&mut *conn)
    .await?
    {
        let genuine = r.chain_hash.as_deref().is_some_and(|chain_hash| {
            let input = content::record_version(
                r.record_id,
                r.version,
                &r.content_hash,
                r.reason.as_deref(),
                r.recorded_at,
                chain_hash,
            );
            mac_ok(ledger, &input, r.ledger_mac.as_deref())
        });
        rows.push(LedgerRow {
            table: LedgerTable::RecordVersions,
            seq: r.ledger_seq,
            prev: None,
            mac: r.ledger_mac,
            genuine,
            label: format!("record {} archived version {}", r.record_id, r.version),
        });
    }
    for r in sqlx::query!(
        r#"SELECT e.flag_id, f.record_id AS "record_id?", f.rule_id AS "rule_id?", e.step, e.kind,
                  e.at, e.key_id, e.principal, e.from_status, e.to_status, e.note, e.trace_id,
                  e.own_trace_id, e.rule_version, e.severity, e.explanation,
                  e.evidence_record_ids, e.record_version, e.cleared_in_version, e.ledger_seq,
                  e.ledger_prev, e.ledger_mac
           FROM flag_events e LEFT JOIN flags f ON f.id = e.flag_id
           WHERE e.ledger_seq > $1 AND e.ledger_seq <= $2"#,
        lo,
        hi
    )
    .fetch_all(&mut *conn)
    .await?
    {
        let label = format!("flag {} step {}", r.flag_id, r.step);
        let step = steps::step_of(StepColumns {
            step: r.step,
            kind: &r.kind,
            at: r.at,
            key_id: r.key_id,
            principal: r.principal,
            from: r.from_status.as_deref(),
            to: &r.to_status,
            note: r.note,
            trace_id: r.trace_id,
            own_trace_id: r.own_trace_id,
            rule_version: r.rule_version,
            severity: r.severity,
            explanation: r.explanation,
            evidence: r.evidence_record_ids,
            record_version: r.record_version,
            cleared_in_version: r.cleared_in_version,
        });
        let genuine = match (step, r.record_id, r.rule_id.as_deref()) {
            (Ok(step), Some(record_id), Some(rule_id)) => {
                let input = content::flag_step(RecordId(record_id), rule_id, &step, r.ledger_prev);
                mac_ok(ledger, &input, r.ledger_mac.as_deref())
            }
            _ => false,
        };
        rows.push(LedgerRow {
            table: LedgerTable::FlagEvents,
            seq: r.ledger_seq,
            prev: r.ledger_prev,
            mac: r.ledger_mac,
            genuine,
            label,
        });
    }
    for r in sqlx::query!(
        "SELECT clinic_id, version, name, country, licensed_organs, licence_valid_from,
                licence_valid_until, status, status_effective_from, recorded_at, ledger_seq,
                ledger_mac
         FROM clinic_versions WHERE ledger_seq > $1 AND ledger_seq <= $2",
        lo,
        hi
    )
    .fetch_all(&mut *conn)
    .await?
    {
        let clinic = (|| {
            Ok::<_, StoreError>(Clinic {
                clinic_id: r.clinic_id.clone(),
                name: r.name.clone(),
                country: parse(&r.country)?,
                licensed_organs: r
                    .licensed_organs
                    .iter()
                    .map(|o| parse(o))
                    .collect::<Result<_, _>>()?,
                licence_valid_from: r.licence_valid_from,
                licence_valid_until: r.licence_valid_until,
                status: parse(&r.status)?,
                status_effective_from: r.status_effective_from,
            })
        })();
        let genuine = clinic.is_ok_and(|c| {
            let input = content::clinic_version(&c, r.version, r.recorded_at);
            mac_ok(ledger, &input, r.ledger_mac.as_deref())
        });
        rows.push(LedgerRow {
            table: LedgerTable::ClinicVersions,
            seq: r.ledger_seq,
            prev: None,
            mac: r.ledger_mac,
            genuine,
            label: format!("clinic {} version {}", r.clinic_id, r.version),
        });
    }
    for r in sqlx::query!(
        r#"SELECT p.name, p.kind, c.name AS "created_by?", p.created_at, p.ledger_seq,
                  p.ledger_mac
           FROM principals p LEFT JOIN principals c ON c.id = p.created_by
           WHERE p.ledger_seq > $1 AND p.ledger_seq <= $2"#,
        lo,
        hi
    )
    .fetch_all(&mut *conn)
    .await?
    {
        let input = content::principal(&r.name, &r.kind, r.created_by.as_deref(), r.created_at);
        rows.push(LedgerRow {
            table: LedgerTable::Principals,
            seq: r.ledger_seq,
            prev: None,
            genuine: mac_ok(ledger, &input, r.ledger_mac.as_deref()),
            mac: r.ledger_mac,
            label: format!("principal {:?}", r.name),
        });
    }
    for r in sqlx::query!(
        r#"SELECT k.key_id, k.secret_hash, k.role, k.hospital_id, k.description, k.created_at,
                  k.expires_at, k.revoked_at, p.name AS "principal?", i.name AS "issued_by?",
                  k.ledger_seq, k.ledger_prev, k.ledger_mac
           FROM api_keys k
           LEFT JOIN principals p ON p.id = k.principal_id
           LEFT JOIN principals i ON i.id = k.created_by
           WHERE k.ledger_seq > $1 AND k.ledger_seq <= $2"#,
        lo,
        hi
    )
    .fetch_all(&mut *conn)
    .await?
    {
        let genuine = r.principal.as_deref().is_some_and(|principal| {
            let state = content::KeyState {
                key_id: &r.key_id,
                secret_hash: &r.secret_hash,
                role: &r.role,
                hospital_id: r.hospital_id.as_deref(),
                description: &r.description,
                created_at: r.created_at,
                expires_at: r.expires_at,
                revoked_at: r.revoked_at,
                principal,
                created_by: r.issued_by.as_deref(),
                seq: r.ledger_seq,
                prev: r.ledger_prev,
            };
            mac_ok(ledger, &state.input(), r.ledger_mac.as_deref())
        });
        rows.push(LedgerRow {
            table: LedgerTable::ApiKeys,
            seq: r.ledger_seq,
            prev: r.ledger_prev,
            mac: r.ledger_mac,
            genuine,
            label: format!("API key {}", r.key_id),
        });
    }
    for r in sqlx::query!(
        "SELECT file_sha256, file_name, lines_done, accepted, duplicates, rejected, started_at,
                updated_at, finished_at, ledger_seq, ledger_prev, ledger_mac
         FROM imports WHERE ledger_seq > $1 AND ledger_seq <= $2",
        lo,
        hi
    )
    .fetch_all(&mut *conn)
    .await?
    {
        let state = content::ImportState {
            file_sha256: &r.file_sha256,
            file_name: &r.file_name,
            lines_done: r.lines_done,
            accepted: r.accepted,
            duplicates: r.duplicates,
            rejected: r.rejected,
            started_at: r.started_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
            seq: r.ledger_seq,
            prev: r.ledger_prev,
        };
        rows.push(LedgerRow {
            table: LedgerTable::Imports,
            seq: r.ledger_seq,
            prev: r.ledger_prev,
            genuine: mac_ok(ledger, &state.input(), r.ledger_mac.as_deref()),
            mac: r.ledger_mac,
            label: format!("import of {}", r.file_name),
        });
    }
    for r in sqlx::query!(
        "SELECT id, at, principal, key_id, action, resource, resource_id, trace_id, own_trace_id,
                ledger_seq, ledger_mac
         FROM access_log WHERE ledger_seq > $1 AND ledger_seq <= $2",
        lo,
        hi
    )
    .fetch_all(&mut *conn)
    .await?
    {
        let entry = content::Access {
            at: r.at,
            principal: &r.principal,
            key_id: &r.key_id,
            action: &r.action,
            resource: &r.resource,
            resource_id: &r.resource_id,
            trace_id: r.trace_id.as_deref(),
            own_trace_id: r.own_trace_id.as_deref(),
        };
        rows.push(LedgerRow {
            table: LedgerTable::AccessLog,
            seq: r.ledger_seq,
            prev: None,
            genuine: mac_ok(ledger, &entry.input(), r.ledger_mac.as_deref()),
            mac: r.ledger_mac,
            label: format!("access log entry {}", r.id),
        });
    }
    for r in sqlx::query!(
        "SELECT name, address, ca_pem, added_at, added_by, removed_at, ledger_seq, ledger_prev,
                ledger_mac
         FROM federation_peers WHERE ledger_seq > $1 AND ledger_seq <= $2",
        lo,
        hi
    )
    .fetch_all(&mut *conn)
    .await?
    {
        let state = content::PeerState {
            name: &r.name,
            address: &r.address,
            ca_pem: &r.ca_pem,
            added_at: r.added_at,
            added_by: &r.added_by,
            removed_at: r.removed_at,
            seq: r.ledger_seq,
            prev: r.ledger_prev,
        };
        rows.push(LedgerRow {
            table: LedgerTable::FederationPeers,
            seq: r.ledger_seq,
            prev: r.ledger_prev,
            genuine: mac_ok(ledger, &state.input(), r.ledger_mac.as_deref()),
            mac: r.ledger_mac,
            label: format!("federation peer {:?}", r.name),
        });
    }
    for r in sqlx::query!(
        "SELECT id, at, peer, side, call, exchange_id, elements_in, elements_out, outcome,
                detail, ledger_seq, ledger_mac
         FROM federation_exchanges WHERE ledger_seq > $1 AND ledger_seq <= $2",
        lo,
        hi
    )
    .fetch_all(&mut *conn)
    .await?
    {
        let entry = content::Exchange {
            at: r.at,
            peer: &r.peer,
            side: &r.side,
            call: &r.call,
            exchange_id: &r.exchange_id,
            elements_in: r.elements_in,
            elements_out: r.elements_out,
            outcome: &r.outcome,
            detail: &r.detail,
        };
        rows.push(LedgerRow {
            table: LedgerTable::FederationExchanges,
            seq: r.ledger_seq,
            prev: None,
            genuine: mac_ok(ledger, &entry.input(), r.ledger_mac.as_deref()),
            mac: r.ledger_mac,
            label: format!("federation exchange {}", r.id),
        });
    }
    for r in sqlx::query!(
        "SELECT id, record_id, peer, peer_donations, found_at, ledger_seq, ledger_mac
         FROM federation_matches WHERE ledger_seq > $1 AND ledger_seq <= $2",
        lo,
        hi
    )
    .fetch_all(&mut *conn)
    .await?
    {
        let input = content::federation_match(r.record_id, &r.peer, r.peer_donations, r.found_at);
        rows.push(LedgerRow {
            table: LedgerTable::FederationMatches,
            seq: r.ledger_seq,
            prev: None,
            genuine: mac_ok(ledger, &input, r.ledger_mac.as_deref()),
            mac: r.ledger_mac,
            label: format!("federation match {}", r.id),
        });
    }
    for r in cases::case_event_rows(conn, lo, Some(hi)).await? {
        rows.push(LedgerRow {
            table: LedgerTable::CaseEvents,
            seq: r.ledger_seq,
            prev: r.ledger_prev,
            genuine: r.genuine(ledger),
            label: format!("case {} event {}", r.case_id, r.step),
            mac: Some(r.ledger_mac),
        });
    }
    Ok(rows)
}

fn mac_ok(ledger: &LedgerKey, input: &crate::domain::ledger::MacInput, mac: Option<&[u8]>) -> bool {
    mac.is_some_and(|m| ledger.verify(input, m))
}

impl Store {
    /// Walks every record's versions: those an amendment replaced, from
    /// `record_versions`, then the current one, from the record's columns.
    async fn check_records(
        &self,
        conn: &mut PgConnection,
        report: &mut VerifyReport,
    ) -> Found<Break> {
        let mut after = 0i64;
        loop {
            let ids = sqlx::query_scalar!(
                "SELECT id FROM records WHERE id > $1 ORDER BY id LIMIT $2",
                after,
                PAGE,
            )
            .fetch_all(&mut *conn)
            .await?;
            let Some(&last) = ids.last() else {
                return Ok(None);
            };
            after = last;
            let rows = row::record_rows(conn, &ids).await?;
            let archived = sqlx::query!(
                "SELECT record_id, version, content_hash, body, reason, recorded_at, chain_hash
                 FROM record_versions WHERE record_id = ANY($1)
                 ORDER BY record_id, version",
                &ids,
            )
            .fetch_all(&mut *conn)
            .await?;
            let mut archived = archived.into_iter().peekable();
            for row in rows {
                let (id, version) = (row.id, row.version);
                let broken = |table: &'static str, what: String, reason: &str| {
                    Some(Break {
                        table,
                        row: what,
                        block: None,
                        reason: reason.into(),
                    })
                };
                let record = match row.into_current() {
                    Ok(record) => record,
                    Err(_) => {
                        return Ok(broken(
                            "records",
                            format!("record {id} version {version}"),
                            "its columns hold values no record has",
                        ));
                    }
                };
                let mut walk = ChainWalk::new();
                let mut expected = 1;
                while let Some(old) = archived.next_if(|v| v.record_id == record.id.0) {
                    report.record_versions += 1;
                    let what = format!("record {} archived version {}", old.record_id, old.version);
                    if old.version != expected || old.version >= record.version {
                        return Ok(broken(
                            "record_versions",
                            what,
                            "an earlier version is missing or out of place",
                        ));
                    }
                    expected += 1;
                    let entry = VersionEntry {
                        record_id: old.record_id,
                        version: old.version,
                        content_hash: &old.content_hash,
                        reason: old.reason.as_deref(),
                        recorded_at: old.recorded_at,
                        chain_hash: old.chain_hash.as_deref(),
                    };
                    if let Err(reason) = entry.check(&old.body.to_string(), &mut walk, &self.chain)
                    {
                        return Ok(broken("record_versions", what, reason));
                    }
                }
                report.record_versions += 1;
                let what = format!("record {} version {}", record.id.0, record.version);
                if record.version != expected {
                    return Ok(broken("records", what, "an earlier version is missing"));
                }
                let derived = (
                    record.record.donor_is_foreign(),
                    record.record.recipient_is_foreign(),
                );
                if record.non_resident != derived {
                    return Ok(broken(
                        "records",
                        what,
                        "its non-resident columns do not match its content",
                    ));
                }
                let entry = VersionEntry {
                    record_id: record.id.0,
                    version: record.version,
                    content_hash: &record.content_hash,
                    reason: record.reason.as_deref(),
                    recorded_at: record.recorded_at,
                    chain_hash: record.chain_head.as_deref(),
                };
                if let Err(reason) =
                    entry.check(&RecordBody::text(&record.record), &mut walk, &self.chain)
                {
                    return Ok(broken("records", what, reason));
                }
            }
        }
    }

    /// Folds every flag from its steps and checks its row, the rule of two
    /// principals, and that every step belongs to a flag.
    async fn check_flags(
        &self,
        conn: &mut PgConnection,
        report: &mut VerifyReport,
    ) -> Found<Break> {
        let orphan = sqlx::query_scalar!(
            "SELECT e.flag_id FROM flag_events e
             WHERE NOT EXISTS (SELECT 1 FROM flags f WHERE f.id = e.flag_id)
             ORDER BY e.flag_id LIMIT 1"
        )
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(flag) = orphan {
            return Ok(Some(Break {
                table: "flags",
                row: format!("flag {flag}"),
                block: None,
                reason: "its steps remain but its row is gone".into(),
            }));
        }
        let issuers = key_issuers(conn).await?;
        let mut after = 0i64;
        loop {
            let rows = flag_page(conn, after).await?;
            let Some(last) = rows.last() else {
                return Ok(None);
            };
            after = last.0.id;
            let ids: Vec<i64> = rows.iter().map(|(f, _)| f.id).collect();
            let mut history = steps::steps_of(conn, &ids).await?;
            for (flag, record) in rows {
                report.flags += 1;
                let what = format!("flag {}", flag.id);
                let broken = |reason: String| {
                    Some(Break {
                        table: "flags",
                        row: what.clone(),
                        block: None,
                        reason,
                    })
                };
                let steps = history.remove(&flag.id).unwrap_or_default();
                if let Err(reason) = steps::check(&self.ledger, &flag, &steps) {
                    return Ok(broken(reason));
                }
                if let Some(reason) = one_issuer_dismissal(&steps, &issuers) {
                    return Ok(broken(reason));
                }
                if let Some(reason) = record {
                    return Ok(broken(reason));
                }
            }
        }
    }
}

/// A page of flags after `after`, each with what its denormalised columns
/// say wrongly of its record, if anything.
async fn flag_page(
    conn: &mut PgConnection,
    after: i64,
) -> Result<Vec<(FlagRowState, Option<String>)>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT f.id, f.record_id, f.rule_id, f.status, f.revision, f.rule_version, f.severity,
                  f.explanation, f.evidence_record_ids, f.record_version, f.cleared_in_version,
                  f.raised_at, f.updated_at, f.dismissal_proposed_by,
                  (r.id IS NOT NULL AND f.hospital_id = r.hospital_id
                   AND f.external_record_id = r.external_record_id
                   AND f.clinic_id = r.clinic_id) AS "matches_record!"
           FROM flags f LEFT JOIN records r ON r.id = f.record_id
           WHERE f.id > $1 ORDER BY f.id LIMIT $2"#,
        after,
        PAGE,
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let flag = FlagRowState {
                id: r.id,
                record_id: RecordId(r.record_id),
                rule_id: r.rule_id,
                status: parse(&r.status)?,
                revision: r.revision,
                finding: crate::domain::flag_history::StepFinding {
                    rule_version: r.rule_version,
                    severity: super::super::ingest::severity_from_db(r.severity)?,
                    explanation: r.explanation,
                    evidence: r.evidence_record_ids.into_iter().map(RecordId).collect(),
                    record_version: r.record_version,
                },
                cleared_in_version: r.cleared_in_version,
                raised_at: r.raised_at,
                updated_at: r.updated_at,
                dismissal_proposed_by: r.dismissal_proposed_by,
            };
            let wrong = (!r.matches_record)
                .then(|| "its hospital, clinic or record id is not its record's".to_owned());
            Ok((flag, wrong))
        })
        .collect()
}

/// Each key's principal and the principal that issued it, by key id.
async fn key_issuers(
    conn: &mut PgConnection,
) -> Result<HashMap<String, (String, Option<String>)>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT k.key_id, p.name AS principal, i.name AS "issued_by?"
           FROM api_keys k JOIN principals p ON p.id = k.principal_id
           LEFT JOIN principals i ON i.id = k.created_by"#
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.key_id, (r.principal, r.issued_by)))
        .collect())
}

/// Why a CRITICAL flag's dismissal breaks the two-person rule through its
/// keys' issuers, if it does (the fold checked that the principals differ).
fn one_issuer_dismissal(
    steps: &[StoredStep],
    issuers: &HashMap<String, (String, Option<String>)>,
) -> Option<String> {
    let mut critical = false;
    let mut proposal: Option<&StoredStep> = None;
    for s in steps {
        if let Some(f) = &s.step.finding {
            critical = f.severity == Severity::Critical;
        }
        match s.step.kind {
            StepKind::DismissalProposed => proposal = Some(s),
            StepKind::Transition if critical && s.step.to == FlagStatus::Dismissed => {
                let issuer = |key: &str| issuers.get(key).and_then(|(_, i)| i.clone());
                let proposer = proposal?;
                let (a, b) = (issuer(&proposer.step.key_id), issuer(&s.step.key_id));
                let one = a.is_some() && a == b;
                let crossed = a.as_deref() == Some(s.step.principal.as_str())
                    || b.as_deref() == Some(proposer.step.principal.as_str());
                if one || crossed {
                    return Some(format!(
                        "step {} dismissed it with a key from the administrator who issued the \
                         proposer's, or the two issued each other's",
                        s.step.step
                    ));
                }
                proposal = None;
            }
            StepKind::Transition => proposal = None,
            _ => {}
        }
    }
    None
}

/// Every clinic's current entry is its newest version.
async fn check_clinics(conn: &mut PgConnection) -> Found<Break> {
    let wrong = sqlx::query!(
        r#"SELECT coalesce(v.clinic_id, c.clinic_id) AS "clinic_id!"
           FROM (SELECT DISTINCT ON (clinic_id) clinic_id, version, country
                 FROM clinic_versions ORDER BY clinic_id, version DESC) v
           FULL JOIN clinics c ON c.clinic_id = v.clinic_id
           WHERE c.clinic_id IS NULL OR v.clinic_id IS NULL
              OR c.current_version <> v.version OR c.country <> v.country
           ORDER BY 1 LIMIT 1"#
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(wrong.map(|w| Break {
        table: "clinics",
        row: format!("clinic {}", w.clinic_id),
        block: None,
        reason: "its current entry is not its newest version".into(),
    }))
}
