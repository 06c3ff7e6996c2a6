//! The hash chains over record versions and triage steps: what each entry's
//! hash covers, and the check that recomputes every chain.

use chrono::{DateTime, SubsecRound, Utc};
use ring::digest;

use crate::domain::ChainKey;
use crate::domain::chain::GENESIS;

use super::body::RecordBody;
use super::{Store, StoreError, row};

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
    /// `records` (a current version), `record_versions` (a replaced one) or `flag_events`.
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
    ) -> Result<(), &'static str> {
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
            Some(_) => Err("its content or position does not match its hash"),
            None => Err("it has no chain hash"),
        }
    }
}

/// One version as stored: its chain entry, checked against its body's text.
struct VersionEntry<'a> {
    record_id: i64,
    version: i32,
    content_hash: &'a [u8],
    reason: Option<&'a str>,
    recorded_at: DateTime<Utc>,
    chain_hash: Option<&'a [u8]>,
}

impl VersionEntry<'_> {
    /// Checks that `body` is what the content hash covers and the chain hash
    /// links this entry to the walk's previous one.
    fn check(
        &self,
        body: &str,
        walk: &mut ChainWalk,
        chain: &ChainKey,
    ) -> Result<(), &'static str> {
        let body_hash = digest::digest(&digest::SHA256, body.as_bytes());
        if body_hash.as_ref() != self.content_hash {
            return Err("its content does not match its content hash");
        }
        let content = version_content(
            self.record_id,
            self.version,
            self.content_hash,
            self.reason,
            self.recorded_at,
        );
        walk.step(self.record_id, &content, self.chain_hash, chain)
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

    /// A flag whose every triage step is gone.
    async fn emptied_chain(&self) -> Result<Option<ChainBreak>, StoreError> {
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

    /// Walks every record's versions: those an amendment replaced, from
    /// `record_versions`, then the current one, from the record's columns.
    async fn verify_record_versions(
        &self,
        checked: &mut u64,
    ) -> Result<Option<ChainBreak>, StoreError> {
        let mut after = 0i64;
        loop {
            let mut conn = self.acquire().await?;
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
            let rows = row::record_rows(&mut conn, &ids).await?;
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
                let record = match row.into_current() {
                    Ok(record) => record,
                    Err(e) => {
                        tracing::warn!(record_id = id, error = %e, "a record's row holds no record");
                        return Ok(Some(ChainBreak {
                            table: "records",
                            entity_id: id,
                            entry: i64::from(version),
                            reason: "its columns hold values no record has".into(),
                        }));
                    }
                };
                let mut walk = ChainWalk::new();
                let mut expected = 1;
                while let Some(old) = archived.next_if(|v| v.record_id == record.id.0) {
                    *checked += 1;
                    let broken = |reason: &str| {
                        Some(ChainBreak {
                            table: "record_versions",
                            entity_id: old.record_id,
                            entry: i64::from(old.version),
                            reason: reason.into(),
                        })
                    };
                    if old.version != expected || old.version >= record.version {
                        return Ok(broken("an earlier version is missing or out of place"));
                    }
                    expected += 1;
                    let text = old.body.to_string();
                    let entry = VersionEntry {
                        record_id: old.record_id,
                        version: old.version,
                        content_hash: &old.content_hash,
                        reason: old.reason.as_deref(),
                        recorded_at: old.recorded_at,
                        chain_hash: old.chain_hash.as_deref(),
                    };
                    if let Err(reason) = entry.check(&text, &mut walk, &self.chain) {
                        return Ok(broken(reason));
                    }
                }
                *checked += 1;
                let broken = |reason: &str| {
                    Some(ChainBreak {
                        table: "records",
                        entity_id: record.id.0,
                        entry: i64::from(record.version),
                        reason: reason.into(),
                    })
                };
                if record.version != expected {
                    return Ok(broken("an earlier version is missing"));
                }
                let derived = (
                    record.record.donor_is_foreign(),
                    record.record.recipient_is_foreign(),
                );
                if record.non_resident != derived {
                    return Ok(broken("its non-resident columns do not match its content"));
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
                    return Ok(broken(reason));
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
                let broken = |reason: &str| {
                    Some(ChainBreak {
                        table: "flag_events",
                        entity_id: row.flag_id,
                        entry: row.id,
                        reason: reason.into(),
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
                    return Ok(broken("the flag's chain head does not match its last step"));
                }
            }
        }
    }
}
