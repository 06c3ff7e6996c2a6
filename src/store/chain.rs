//! The hash chains over record versions and triage steps: what each entry's
//! hash covers, and the check that recomputes every chain.

use chrono::{DateTime, SubsecRound, Utc};
use ring::digest;

use crate::domain::ChainKey;
use crate::domain::chain::GENESIS;

use super::{Store, StoreError};

/// Now, at the database's precision, so a hashed timestamp reads back equal.
pub(super) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    // Length-prefixed, so that no two different entries share an encoding.
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// What a record version's hash covers.
pub(super) fn version_content(
    record_id: i64,
    version: i32,
    content_hash: &[u8],
    reason: Option<&str>,
    recorded_at: DateTime<Utc>,
) -> Vec<u8> {
    let mut out = b"record_version/v1".to_vec();
    field(&mut out, &record_id.to_be_bytes());
    field(&mut out, &version.to_be_bytes());
    field(&mut out, content_hash);
    field(&mut out, reason.unwrap_or("\u{0}none").as_bytes());
    field(&mut out, &recorded_at.timestamp_micros().to_be_bytes());
    out
}

/// What a triage step's hash covers.
pub(super) struct EventContent<'a> {
    pub(super) flag_id: i64,
    pub(super) at: DateTime<Utc>,
    pub(super) actor: &'a str,
    pub(super) from: &'a str,
    pub(super) to: &'a str,
    pub(super) note: &'a str,
    pub(super) trace_id: Option<&'a str>,
    pub(super) kind: &'a str,
}

impl EventContent<'_> {
    pub(super) fn bytes(&self) -> Vec<u8> {
        let mut out = b"flag_event/v1".to_vec();
        field(&mut out, &self.flag_id.to_be_bytes());
        field(&mut out, &self.at.timestamp_micros().to_be_bytes());
        let trace = self.trace_id.unwrap_or("\u{0}none");
        for text in [self.actor, self.from, self.to, self.note, trace, self.kind] {
            field(&mut out, text.as_bytes());
        }
        out
    }
}

/// The first entry whose stored hash does not match what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// `record_versions` or `flag_events`.
    pub table: &'static str,
    /// The record or flag whose chain breaks.
    pub entity_id: i64,
    /// The version number or the event id.
    pub entry: i64,
    /// What does not match.
    pub reason: String,
}

/// What a verification covered and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Record versions checked.
    pub record_versions: u64,
    /// Triage steps checked.
    pub flag_events: u64,
    /// The first broken entry, if any.
    pub first_break: Option<ChainBreak>,
}

/// Entries read per query while verifying.
const PAGE: i64 = 5_000;

/// Walks one entity's chain entry by entry, checking each link and finally the head.
struct ChainWalk {
    entity: Option<i64>,
    previous: [u8; 32],
}

impl ChainWalk {
    fn new() -> Self {
        Self {
            entity: None,
            previous: GENESIS,
        }
    }

    /// Checks one entry; `heads` gives the stored head of a finished entity.
    fn step(
        &mut self,
        entity: i64,
        content: &[u8],
        stored: Option<&[u8]>,
        chain: &ChainKey,
    ) -> Result<(), String> {
        if self.entity != Some(entity) {
            self.entity = Some(entity);
            self.previous = GENESIS;
        }
        let expected = chain.link(&self.previous, content);
        match stored {
            Some(hash) if hash == expected => {
                self.previous = expected;
                Ok(())
            }
            Some(_) => Err("its content or position does not match its hash".into()),
            None => Err("it has no chain hash".into()),
        }
    }
}

impl Store {
    /// Recomputes every chain and names the first entry that does not match.
    pub async fn verify_chains(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        report.first_break = self
            .verify_record_versions(&mut report.record_versions)
            .await?;
        if report.first_break.is_none() {
            report.first_break = self.verify_flag_events(&mut report.flag_events).await?;
        }
        if report.first_break.is_none() {
            report.first_break = self.emptied_chain().await?;
        }
        Ok(report)
    }

    /// A record with no versions left, or a flag whose every step is gone.
    async fn emptied_chain(&self) -> Result<Option<ChainBreak>, StoreError> {
        let record = sqlx::query_scalar!(
            "SELECT r.id FROM records r
             WHERE NOT EXISTS (SELECT 1 FROM record_versions v WHERE v.record_id = r.id)
             ORDER BY r.id LIMIT 1"
        )
        .fetch_optional(&mut *self.acquire().await?)
        .await?;
        if let Some(id) = record {
            return Ok(Some(ChainBreak {
                table: "record_versions",
                entity_id: id,
                entry: 1,
                reason: "the record has no versions".into(),
            }));
        }
        let flag = sqlx::query_scalar!(
            "SELECT f.id FROM flags f
             WHERE f.chain_head IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM flag_events e WHERE e.flag_id = f.id)
             ORDER BY f.id LIMIT 1"
        )
        .fetch_optional(&mut *self.acquire().await?)
        .await?;
        Ok(flag.map(|id| ChainBreak {
            table: "flag_events",
            entity_id: id,
            entry: 0,
            reason: "the flag's triage steps are gone".into(),
        }))
    }

    async fn verify_record_versions(
        &self,
        checked: &mut u64,
    ) -> Result<Option<ChainBreak>, StoreError> {
        let mut walk = ChainWalk::new();
        let (mut after_record, mut after_version) = (0i64, 0i32);
        loop {
            let rows = sqlx::query!(
                r#"SELECT v.record_id, v.version, v.content_hash, v.body, v.reason, v.recorded_at,
                        v.chain_hash, r.chain_head,
                        (v.version = (SELECT max(version) FROM record_versions
                                      WHERE record_id = v.record_id)) AS "is_last!"
                 FROM record_versions v JOIN records r ON r.id = v.record_id
                 WHERE (v.record_id, v.version) > ($1, $2)
                 ORDER BY v.record_id, v.version LIMIT $3"#,
                after_record,
                after_version,
                PAGE,
            )
            .fetch_all(&mut *self.acquire().await?)
            .await?;
            let Some(last) = rows.last() else {
                return Ok(None);
            };
            (after_record, after_version) = (last.record_id, last.version);
            for row in rows {
                *checked += 1;
                let broken = |reason: String| {
                    Some(ChainBreak {
                        table: "record_versions",
                        entity_id: row.record_id,
                        entry: i64::from(row.version),
                        reason,
                    })
                };
                let body_hash = digest::digest(&digest::SHA256, row.body.to_string().as_bytes());
                if body_hash.as_ref() != row.content_hash.as_slice() {
                    return Ok(broken("its body does not match its content hash".into()));
                }
                let content = version_content(
                    row.record_id,
                    row.version,
                    &row.content_hash,
                    row.reason.as_deref(),
                    row.recorded_at,
                );
                if let Err(reason) = walk.step(
                    row.record_id,
                    &content,
                    row.chain_hash.as_deref(),
                    &self.chain,
                ) {
                    return Ok(broken(reason));
                }
                if row.is_last && row.chain_head.as_deref() != Some(&walk.previous[..]) {
                    return Ok(broken(
                        "the record's chain head does not match its last version".into(),
                    ));
                }
            }
        }
    }

    async fn verify_flag_events(
        &self,
        checked: &mut u64,
    ) -> Result<Option<ChainBreak>, StoreError> {
        let mut walk = ChainWalk::new();
        let mut after = (0i64, 0i64);
        loop {
            let rows = sqlx::query!(
                r#"SELECT e.id, e.flag_id, e.at, e.actor, e.from_status, e.to_status, e.note, e.trace_id, e.kind,
                          e.chain_hash, f.chain_head,
                          (e.id = (SELECT max(id) FROM flag_events WHERE flag_id = e.flag_id)) AS "is_last!"
                   FROM flag_events e JOIN flags f ON f.id = e.flag_id
                   WHERE (e.flag_id, e.id) > ($1, $2)
                   ORDER BY e.flag_id, e.id LIMIT $3"#,
                after.0,
                after.1,
                PAGE,
            )
            .fetch_all(&mut *self.acquire().await?)
            .await?;
            let Some(last) = rows.last() else {
                return Ok(None);
            };
            after = (last.flag_id, last.id);
            for row in rows {
                *checked += 1;
                let broken = |reason: String| {
                    Some(ChainBreak {
                        table: "flag_events",
                        entity_id: row.flag_id,
                        entry: row.id,
                        reason,
                    })
                };
                let content = EventContent {
                    flag_id: row.flag_id,
                    at: row.at,
                    actor: &row.actor,
                    from: &row.from_status,
                    to: &row.to_status,
                    note: &row.note,
                    trace_id: row.trace_id.as_deref(),
                    kind: &row.kind,
                }
                .bytes();
                if let Err(reason) = walk.step(
                    row.flag_id,
                    &content,
                    row.chain_hash.as_deref(),
                    &self.chain,
                ) {
                    return Ok(broken(reason));
                }
                if row.is_last && row.chain_head.as_deref() != Some(&walk.previous[..]) {
                    return Ok(broken(
                        "the flag's chain head does not match its last step".into(),
                    ));
                }
            }
        }
    }
}
