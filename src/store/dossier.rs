//! Everything a referral dossier states about a case, read in one snapshot:
//! the case and its events, every flag with its steps, the flagged records'
//! versions and the evidence records, each with its place in the ledger and
//! the block that sealed it.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::domain::FlagView;
use crate::domain::flag_history::FlagStep;

use super::body::RecordBody;
use super::cases::{self, CaseView, StoredCaseEvent};
use super::flags::flags_by_id;
use super::investigate::Read;
use super::{Store, StoreError, row, steps};

/// A row's place in the ledger.
#[derive(Debug, Clone)]
pub struct LedgerPlace {
    /// Its sequence number.
    pub seq: i64,
    /// The sequence number of the state or step it follows, if it names one.
    pub prev: Option<i64>,
    /// Its MAC.
    pub mac: Vec<u8>,
    /// The block that sealed it, if one has yet.
    pub block: Option<i64>,
}

/// One version of a record.
#[derive(Debug, Clone)]
pub struct VersionEvidence {
    /// The record.
    pub record_id: i64,
    /// Its version number.
    pub version: i32,
    /// The pseudonymised record as stored (its SHA-256 is `content_hash`).
    pub body: Value,
    /// SHA-256 of the body's text.
    pub content_hash: Vec<u8>,
    /// Why the version was made (none for the first).
    pub reason: Option<String>,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// The version's link in the record's hash chain.
    pub chain_hash: Vec<u8>,
    /// Where the ledger holds it.
    pub ledger: LedgerPlace,
}

/// A flag's step with its place in the ledger.
#[derive(Debug, Clone)]
pub struct StepEvidence {
    /// The step.
    pub step: FlagStep,
    /// Where the ledger holds it.
    pub ledger: LedgerPlace,
}

/// A flag with everything behind it.
#[derive(Debug, Clone)]
pub struct FlagEvidence {
    /// The flag.
    pub flag: FlagView,
    /// Every version of the flagged record, oldest first.
    pub versions: Vec<VersionEvidence>,
    /// The current version of each evidence record.
    pub evidence: Vec<VersionEvidence>,
    /// The flag's steps, oldest first.
    pub steps: Vec<StepEvidence>,
}

/// A case event with the block that sealed it.
#[derive(Debug, Clone)]
pub struct EventEvidence {
    /// The event.
    pub event: StoredCaseEvent,
    /// Where the ledger holds it.
    pub ledger: LedgerPlace,
}

/// A sealed block the dossier's rows are in.
#[derive(Debug, Clone)]
pub struct BlockEvidence {
    /// Its number.
    pub block: i64,
    /// Its first sequence number.
    pub first_seq: i64,
    /// Its last sequence number.
    pub last_seq: i64,
    /// Its hash, which the registry's signed digest names.
    pub hash: Vec<u8>,
    /// When it was sealed.
    pub sealed_at: DateTime<Utc>,
}

/// A case and everything behind it.
#[derive(Debug, Clone)]
pub struct CaseEvidence {
    /// The case.
    pub case: CaseView,
    /// Its events, oldest first.
    pub events: Vec<EventEvidence>,
    /// Its flags.
    pub flags: Vec<FlagEvidence>,
    /// The blocks that sealed any of the rows above.
    pub blocks: Vec<BlockEvidence>,
}

impl CaseEvidence {
    /// What exporting the case reads: the case, each flag, its record and
    /// its evidence records, for the access log.
    pub fn reads(&self) -> Vec<Read> {
        let mut reads = vec![Read::of("case", self.case.id)];
        for f in &self.flags {
            reads.push(Read::of("flag", f.flag.id));
            reads.push(Read::of("record", f.flag.record_id.0));
            reads.extend(f.evidence.iter().map(|v| Read::of("record", v.record_id)));
        }
        reads
    }
}

impl Store {
    /// Everything a dossier of case `case_id` states, from one snapshot.
    pub async fn case_evidence(&self, case_id: i64) -> Result<Option<CaseEvidence>, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let Some(case) = cases::case_on(&mut tx, case_id).await? else {
            return Ok(None);
        };
        let case_events = cases::events_of(&mut tx, &[case_id])
            .await?
            .remove(&case_id)
            .unwrap_or_default();
        let flag_ids = &case.flag_ids;
        let flags = flags_by_id(&mut tx, flag_ids).await?;
        let mut steps = steps::steps_of(&mut tx, flag_ids).await?;
        let flagged: BTreeSet<i64> = flags.iter().map(|f| f.record_id.0).collect();
        let evidence_ids: BTreeSet<i64> = flags
            .iter()
            .flat_map(|f| f.evidence.iter().map(|r| r.0))
            .collect();
        let all: Vec<i64> = flagged.union(&evidence_ids).copied().collect();
        let mut current: HashMap<i64, VersionEvidence> = row::current_versions(&mut tx, &all)
            .await?
            .into_iter()
            .map(|c| {
                let body = serde_json::from_str(&RecordBody::text(&c.record))
                    .map_err(|e| StoreError::Corrupt(format!("record {}: {e}", c.id.0)))?;
                let (seq, prev, mac) = c.ledger;
                Ok((
                    c.id.0,
                    VersionEvidence {
                        record_id: c.id.0,
                        version: c.version,
                        body,
                        content_hash: c.content_hash,
                        reason: c.reason,
                        recorded_at: c.recorded_at,
                        chain_hash: c.chain_head.unwrap_or_default(),
                        ledger: LedgerPlace {
                            seq,
                            prev,
                            mac: mac.unwrap_or_default(),
                            block: None,
                        },
                    },
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        let flagged_ids: Vec<i64> = flagged.iter().copied().collect();
        let mut archived: HashMap<i64, Vec<VersionEvidence>> = HashMap::new();
        for r in sqlx::query!(
            "SELECT record_id, version, body, content_hash, reason, recorded_at, chain_hash,
                    ledger_seq, ledger_mac
             FROM record_versions WHERE record_id = ANY($1) ORDER BY record_id, version",
            &flagged_ids
        )
        .fetch_all(&mut *tx)
        .await?
        {
            archived
                .entry(r.record_id)
                .or_default()
                .push(VersionEvidence {
                    record_id: r.record_id,
                    version: r.version,
                    body: r.body,
                    content_hash: r.content_hash,
                    reason: r.reason,
                    recorded_at: r.recorded_at,
                    chain_hash: r.chain_hash.unwrap_or_default(),
                    ledger: LedgerPlace {
                        seq: r.ledger_seq,
                        prev: None,
                        mac: r.ledger_mac.unwrap_or_default(),
                        block: None,
                    },
                });
        }
        let mut flags: Vec<FlagEvidence> = flags
            .into_iter()
            .map(|flag| {
                let mut versions = archived.get(&flag.record_id.0).cloned().unwrap_or_default();
                versions.extend(current.get(&flag.record_id.0).cloned());
                let evidence = flag
                    .evidence
                    .iter()
                    .filter_map(|r| current.get(&r.0).cloned())
                    .collect();
                let steps = steps
                    .remove(&flag.id)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|s| StepEvidence {
                        step: s.step,
                        ledger: LedgerPlace {
                            seq: s.seq,
                            prev: s.prev,
                            mac: s.mac.unwrap_or_default(),
                            block: None,
                        },
                    })
                    .collect();
                FlagEvidence {
                    flag,
                    versions,
                    evidence,
                    steps,
                }
            })
            .collect();
        current.clear();
        let mut events: Vec<EventEvidence> = case_events
            .into_iter()
            .map(|e| EventEvidence {
                ledger: LedgerPlace {
                    seq: e.seq,
                    prev: e.prev,
                    mac: e.mac.clone(),
                    block: None,
                },
                event: e,
            })
            .collect();
        let mut places: Vec<&mut LedgerPlace> = events.iter_mut().map(|e| &mut e.ledger).collect();
        for f in &mut flags {
            places.extend(f.versions.iter_mut().map(|v| &mut v.ledger));
            places.extend(f.evidence.iter_mut().map(|v| &mut v.ledger));
            places.extend(f.steps.iter_mut().map(|s| &mut s.ledger));
        }
        let blocks = blocks_of(&mut tx, &mut places).await?;
        tx.rollback().await?;
        Ok(Some(CaseEvidence {
            case,
            events,
            flags,
            blocks,
        }))
    }
}

/// Sets each place's block and returns those blocks, in order.
async fn blocks_of(
    conn: &mut sqlx::PgConnection,
    places: &mut [&mut LedgerPlace],
) -> Result<Vec<BlockEvidence>, StoreError> {
    let (Some(lo), Some(hi)) = (
        places.iter().map(|p| p.seq).min(),
        places.iter().map(|p| p.seq).max(),
    ) else {
        return Ok(Vec::new());
    };
    let blocks = sqlx::query_as!(
        BlockEvidence,
        "SELECT block, first_seq, last_seq, hash, sealed_at FROM ledger_blocks
         WHERE last_seq >= $1 AND first_seq <= $2 ORDER BY block",
        lo,
        hi
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut used = BTreeSet::new();
    for place in places.iter_mut() {
        let i = blocks.partition_point(|b| b.last_seq < place.seq);
        if let Some(b) = blocks.get(i).filter(|b| b.first_seq <= place.seq) {
            place.block = Some(b.block);
            used.insert(b.block);
        }
    }
    Ok(blocks
        .into_iter()
        .filter(|b| used.contains(&b.block))
        .collect())
}
