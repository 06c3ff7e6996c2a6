//! The ingest transaction: lock the keys the rules read, load their context,
//! store the record and its flags together.

use chrono::{DateTime, Utc};
use ring::digest;
use std::collections::HashMap;
use std::sync::Arc;

use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::domain::activity::{ActivityDelta, Bucket};
use crate::domain::chain::GENESIS;
use crate::domain::ledger::LedgerKey;
use crate::domain::{
    ChainKey, DonorKind, DonorType, HlaTyping, Record, RecordElements, RecordId, Severity,
};
use crate::rules::{ContextKey, Finding, RuleId};

use super::body::{HlaBody, RecordBody, parse};
use super::ledger::content::RecordState;
use super::ledger::view::LedgerView;
use super::ledger::{self, content};
use super::steps::{self, Raise};
use super::{Store, StoreError, chain, row};

/// A record already stored under a (hospital, external id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingRecord {
    /// Its id.
    pub id: RecordId,
    /// Its current version.
    pub version: i32,
    /// Hash of its current content.
    pub content_hash: Vec<u8>,
    /// When it was first stored.
    pub received_at: DateTime<Utc>,
}

/// What the store says about a record it has committed (or is about to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredAck {
    /// The record's id.
    pub id: RecordId,
    /// The version now current.
    pub version: i32,
    /// When the record was first stored.
    pub received_at: DateTime<Utc>,
}

/// The content hash of a pseudonymised record: SHA-256 of its stored body.
pub fn content_hash(record: &Record) -> Vec<u8> {
    super::body::RecordBody::hash(record)
}

/// A record's elements as its row's MAC covers them.
pub(crate) fn element_bytes(elements: Option<&RecordElements>) -> (Option<&[u8]>, Option<&[u8]>) {
    match elements {
        Some(e) => (Some(&e.donor.0[..]), Some(&e.recipient.0[..])),
        None => (None, None),
    }
}

/// One open ingest transaction. Dropping it without `commit` rolls back.
pub struct IngestTx {
    pub(super) tx: Transaction<'static, Postgres>,
    pub(super) chain: Arc<ChainKey>,
    pub(super) ledger: Arc<LedgerKey>,
    pub(super) view: Arc<LedgerView>,
    /// The pool the transaction came from, for reads that may run beside it.
    pub(super) pool: PgPool,
    /// What the transaction's writes change in the clinic activity
    /// counters, applied in one statement at commit.
    pub(super) activity: ActivityDelta,
    /// Where each record amended in this transaction counted before, so
    /// that its flags leave that bucket.
    pub(super) replaced: HashMap<RecordId, Bucket>,
}

impl Store {
    /// Opens an ingest transaction.
    pub async fn begin_ingest(&self) -> Result<IngestTx, StoreError> {
        Ok(IngestTx {
            tx: self.begin().await?,
            chain: self.chain.clone(),
            ledger: self.ledger.clone(),
            view: self.view.clone(),
            pool: self.pool.clone(),
            activity: ActivityDelta::new(),
            replaced: HashMap::new(),
        })
    }
}

async fn find_existing(
    conn: &mut PgConnection,
    hospital_id: &str,
    external_record_id: &str,
) -> Result<Option<ExistingRecord>, StoreError> {
    let row = sqlx::query!(
        "SELECT id, version, content_hash, received_at FROM records
         WHERE hospital_id = $1 AND external_record_id = $2",
        hospital_id,
        external_record_id,
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| ExistingRecord {
        id: RecordId(r.id),
        version: r.version,
        content_hash: r.content_hash,
        received_at: r.received_at,
    }))
}

/// The advisory locks `records` take, in the one order every writer takes
/// them in: each key once, exclusive where any of the records reads it.
pub(super) fn lock_order<'r>(
    records: impl IntoIterator<Item = &'r Record>,
) -> (Vec<i64>, Vec<bool>) {
    let mut wanted: Vec<(i64, bool)> = records
        .into_iter()
        .flat_map(|r| ContextKey::of(r).map(|(k, reads)| (lock_number(&k), reads)))
        .collect();
    // Exclusive before shared for one key, so that dedup keeps it.
    wanted.sort_unstable_by_key(|&(key, reads)| (key, !reads));
    wanted.dedup_by_key(|&mut (key, _)| key);
    wanted.into_iter().unzip()
}

/// The advisory-lock number of a context key: the first 8 bytes of a
/// SHA-256 over the key's kind and value (a collision only costs a wait).
fn lock_number(key: &ContextKey<'_>) -> i64 {
    let mut ctx = digest::Context::new(&digest::SHA256);
    match key {
        ContextKey::Donor(fp) => {
            ctx.update(b"donor\0");
            ctx.update(fp.as_bytes());
        }
        ContextKey::ClinicForeignLiving(clinic) => {
            ctx.update(b"clinic-foreign-living\0");
            ctx.update(clinic.as_bytes());
        }
        ContextKey::ClinicDeceased(clinic) => {
            ctx.update(b"clinic-deceased\0");
            ctx.update(clinic.as_bytes());
        }
    }
    let d = ctx.finish();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    i64::from_be_bytes(b)
}

impl IngestTx {
    /// Looks a record up by its idempotency key inside this transaction.
    pub async fn find_existing(
        &mut self,
        hospital_id: &str,
        external_record_id: &str,
    ) -> Result<Option<ExistingRecord>, StoreError> {
        find_existing(&mut self.tx, hospital_id, external_record_id).await
    }

    /// Takes the transaction-scoped locks on every key the rules read for
    /// these records (donors, clinic windows), in one fixed order so that
    /// concurrent writers never deadlock: exclusively where a record reads
    /// the key, shared where records are only counted in it, so that
    /// writers which read nothing of each other's do not queue.
    pub async fn lock_keys<'r>(
        &mut self,
        records: impl IntoIterator<Item = &'r Record>,
    ) -> Result<(), StoreError> {
        let (keys, exclusive) = lock_order(records);
        sqlx::query!(
            r#"SELECT count(*) AS "locked!"
               FROM unnest($1::bigint[], $2::bool[]) AS k(key, exclusive),
                    LATERAL (SELECT CASE WHEN k.exclusive THEN pg_advisory_xact_lock(k.key)
                                         ELSE pg_advisory_xact_lock_shared(k.key) END) AS l"#,
            &keys,
            &exclusive,
        )
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Replaces the current content of record `id` by `record` as a new
    /// version, moving the version it replaces into `record_versions`.
    pub async fn amend(
        &mut self,
        existing: &ExistingRecord,
        record: &Record,
        elements: Option<RecordElements>,
        reason: &str,
    ) -> Result<StoredAck, StoreError> {
        // Locked first, so that the version archived is the one replaced.
        sqlx::query!(
            "SELECT id FROM records WHERE id = $1 FOR UPDATE",
            existing.id.0
        )
        .fetch_one(&mut *self.tx)
        .await?;
        let current = row::current_versions(&mut self.tx, &[existing.id.0])
            .await?
            .pop()
            .ok_or_else(|| StoreError::Corrupt(format!("record {} vanished", existing.id.0)))?;
        self.check_current(&current).await?;
        let hash = content_hash(record);
        let version = current.version + 1;
        let recorded_at = chain::now();
        let previous = current.chain_head.as_deref().unwrap_or(&GENESIS[..]);
        let link = self.chain.link(
            previous,
            &chain::version_content(existing.id.0, version, &hash, Some(reason), recorded_at),
        );
        let archived_mac = self.ledger.mac(&content::record_version(
            existing.id.0,
            current.version,
            &current.content_hash,
            current.reason.as_deref(),
            current.recorded_at,
            previous,
        ));
        let seq = ledger::allocate(&mut self.tx, 1)
            .await?
            .pop()
            .ok_or_else(|| StoreError::Corrupt("no sequence number drawn".into()))?;
        let state = RecordState {
            id: existing.id,
            version,
            seq,
            prev: Some(current.ledger.0),
            received_at: current.received_at,
            amended_at: Some(recorded_at),
            content_hash: &hash,
            reason: Some(reason),
            recorded_at,
            chain_head: &link,
            elements: element_bytes(elements.as_ref()),
        };
        let row_mac = self.ledger.mac(&state.input());
        let (relation, death_at, death_kind) = kind_columns(&record.donor.kind);
        let d = &record.donor.person;
        let r = &record.recipient;
        sqlx::query!(
            "WITH archived AS (
                INSERT INTO record_versions
                    (record_id, version, content_hash, body, reason, recorded_at, chain_hash,
                     ledger_mac)
                VALUES ($1, $34, $35, $36::text::jsonb, $37, $38, $39, $44))
             UPDATE records SET
                version = $40, amended_at = $42, content_hash = $2, clinic_id = $3,
                procedure_country = $4, organ = $5, laterality = $6, procured_at = $7,
                transplanted_at = $8, cold_ischemia_minutes = $9, machine_perfusion = $10,
                abo_exception = $11, donor_fp = $12, donor_type = $13, donor_relation = $14,
                donor_death_at = $15, donor_death_kind = $16, donor_nationality = $17,
                donor_residence = $18, donor_age = $19, donor_sex = $20, donor_abo = $21,
                donor_rh = $22, donor_hla = $23, donor_non_resident = $24, recipient_fp = $25,
                recipient_nationality = $26, recipient_residence = $27, recipient_age = $28,
                recipient_sex = $29, recipient_abo = $30, recipient_rh = $31,
                recipient_hla = $32, recipient_non_resident = $33,
                version_reason = $41, version_recorded_at = $42, chain_head = $43,
                ledger_seq = $45, ledger_prev = ledger_seq, ledger_mac = $46,
                donor_element = $47, recipient_element = $48
             WHERE id = $1",
            existing.id.0,
            hash,
            record.clinic_id,
            record.procedure_country.as_str(),
            record.organ.as_str(),
            record.laterality.as_str(),
            record.procured_at,
            record.transplanted_at,
            record
                .cold_ischemia_minutes
                .map(|m| i32::try_from(m).unwrap_or(i32::MAX)),
            record.machine_perfusion,
            record.abo_exception.as_str(),
            d.identifier.as_bytes().as_slice(),
            record.donor.kind.donor_type().as_str(),
            relation,
            death_at,
            death_kind,
            d.nationality.as_str(),
            d.country_of_residence.as_str(),
            i16::from(d.age_years),
            d.sex.map(|s| s.as_str()),
            d.abo.as_str(),
            d.rh.map(|x| x.as_str()),
            hla_json(d.hla.as_ref()) as _,
            record.donor_is_foreign(),
            r.identifier.as_bytes().as_slice(),
            r.nationality.as_str(),
            r.country_of_residence.as_str(),
            i16::from(r.age_years),
            r.sex.map(|s| s.as_str()),
            r.abo.as_str(),
            r.rh.map(|x| x.as_str()),
            hla_json(r.hla.as_ref()) as _,
            record.recipient_is_foreign(),
            current.version,
            current.content_hash,
            RecordBody::text(&current.record),
            current.reason,
            current.recorded_at,
            current.chain_head,
            version,
            reason,
            recorded_at,
            &link[..],
            &archived_mac[..],
            seq,
            &row_mac[..],
            elements.as_ref().map(|e| &e.donor.0[..]),
            elements.as_ref().map(|e| &e.recipient.0[..]),
        )
        .execute(&mut *self.tx)
        .await?;
        self.activity.record_amended(&current.record, record);
        self.replaced
            .insert(existing.id, Bucket::of(&current.record));
        Ok(StoredAck {
            id: existing.id,
            version,
            received_at: existing.received_at,
        })
    }

    /// Stores the findings of one evaluation of amended record `ack`: a
    /// rule that already flagged the record keeps its flag and its triage,
    /// with a REEVALUATED step bringing the finding up to this version; a
    /// rule among `evaluated` that no longer fires gets a CLEARED step,
    /// never a deletion; a new finding raises a new flag. Each flag is
    /// checked against its steps before a step is added.
    pub async fn save_flags(
        &mut self,
        ack: &StoredAck,
        record: &Record,
        findings: &[Finding],
        evaluated: &[RuleId],
    ) -> Result<(), StoreError> {
        let existing = steps::flags_of_record(&mut self.tx, ack.id).await?;
        let ids: Vec<i64> = existing.iter().map(|f| f.id).collect();
        let mut history = steps::steps_of(&mut self.tx, &ids).await?;
        let at = chain::now();
        let mut raises = Vec::new();
        // What each flag becomes, where a step changes it.
        let mut folded_into = HashMap::new();
        for finding in findings {
            match existing.iter().find(|f| f.rule_id == finding.rule.as_str()) {
                Some(flag) => {
                    let checked = self.checked(flag, history.remove(&flag.id)).await?;
                    let found = steps::finding_of(finding, ack.version);
                    let step = steps::amendment_step(&checked.folded, at, Some(found), None);
                    let next = steps::append(
                        &mut self.tx,
                        &self.ledger,
                        flag,
                        &checked,
                        step,
                        Some(&record.clinic_id),
                    )
                    .await?;
                    folded_into.insert(flag.id, next);
                }
                None => raises.push(Raise {
                    record_id: ack.id,
                    record_version: ack.version,
                    record,
                    finding,
                }),
            }
        }
        for flag in &existing {
            let fired = findings.iter().any(|f| f.rule.as_str() == flag.rule_id);
            let ran = evaluated.iter().any(|r| r.as_str() == flag.rule_id);
            if fired || !ran {
                continue;
            }
            let checked = self.checked(flag, history.remove(&flag.id)).await?;
            let step = if checked.folded.cleared_in_version.is_some() {
                None
            } else {
                Some(steps::amendment_step(
                    &checked.folded,
                    at,
                    None,
                    Some(ack.version),
                ))
            };
            match step {
                Some(step) => {
                    let next = steps::append(
                        &mut self.tx,
                        &self.ledger,
                        flag,
                        &checked,
                        step,
                        Some(&record.clinic_id),
                    )
                    .await?;
                    folded_into.insert(flag.id, next);
                }
                None => {
                    // Already cleared: only the record's clinic may have moved.
                    sqlx::query!(
                        "UPDATE flags SET clinic_id = $2 WHERE id = $1",
                        flag.id,
                        record.clinic_id
                    )
                    .execute(&mut *self.tx)
                    .await?;
                }
            }
        }
        // Every flag of the record follows it to its new bucket, whether a
        // step changed it or not.
        let now_in = Bucket::of(record);
        let was_in = self
            .replaced
            .get(&ack.id)
            .cloned()
            .unwrap_or(now_in.clone());
        for flag in &existing {
            let after = match folded_into.get(&flag.id) {
                Some(next) => flag.activity_state_after(next),
                None => flag.activity_state(),
            };
            self.activity
                .flag_changed((&was_in, flag.activity_state()), (&now_in, after));
        }
        steps::raise(&mut self.tx, &self.ledger, &raises, "", &mut self.activity).await?;
        Ok(())
    }

    /// Gives records stored before with the same content their federation
    /// elements (`fills`: record id and elements): records stored before
    /// the registry had a federation key, or under an earlier one. A row
    /// that holds these elements already is left alone; every other one
    /// is checked against its MAC first, then takes a new place in the
    /// ledger's sequence (its version does not change: the elements are
    /// not the record's content). Rows are locked in id order, so two
    /// imports of one file never deadlock.
    pub async fn fill_elements(
        &mut self,
        fills: &[(RecordId, RecordElements)],
    ) -> Result<u64, StoreError> {
        if fills.is_empty() {
            return Ok(0);
        }
        let mut ids: Vec<i64> = fills.iter().map(|(id, _)| id.0).collect();
        ids.sort_unstable();
        ids.dedup();
        sqlx::query!(
            "SELECT id FROM records WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            &ids
        )
        .fetch_all(&mut *self.tx)
        .await?;
        let wanted: std::collections::HashMap<i64, RecordElements> =
            fills.iter().map(|(id, e)| (id.0, *e)).collect();
        let mut stale = Vec::new();
        for current in row::current_versions(&mut self.tx, &ids).await? {
            let Some(elements) = wanted.get(&current.id.0) else {
                continue;
            };
            let held = (current.elements.0.as_deref(), current.elements.1.as_deref());
            if held == element_bytes(Some(elements)) {
                continue;
            }
            self.check_current(&current).await?;
            stale.push((current, *elements));
        }
        let seqs = ledger::allocate(&mut self.tx, stale.len()).await?;
        let (mut row_ids, mut donors, mut recipients, mut new_seqs, mut macs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((current, elements), seq) in stale.iter().zip(seqs) {
            let state = RecordState {
                id: current.id,
                version: current.version,
                seq,
                prev: Some(current.ledger.0),
                received_at: current.received_at,
                amended_at: current.amended_at,
                content_hash: &current.content_hash,
                reason: current.reason.as_deref(),
                recorded_at: current.recorded_at,
                chain_head: current.chain_head.as_deref().unwrap_or_default(),
                elements: element_bytes(Some(elements)),
            };
            macs.push(self.ledger.mac(&state.input()).to_vec());
            row_ids.push(current.id.0);
            donors.push(elements.donor.0.to_vec());
            recipients.push(elements.recipient.0.to_vec());
            new_seqs.push(seq);
        }
        let filled = sqlx::query!(
            "UPDATE records r SET donor_element = f.donor, recipient_element = f.recipient,
                    ledger_prev = r.ledger_seq, ledger_seq = f.seq, ledger_mac = f.mac
             FROM unnest($1::bigint[], $2::bytea[], $3::bytea[], $4::bigint[], $5::bytea[])
                  AS f(id, donor, recipient, seq, mac)
             WHERE r.id = f.id",
            &row_ids,
            &donors,
            &recipients,
            &new_seqs,
            &macs,
        )
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        Ok(filled)
    }

    /// Refuses to amend a record whose row was changed behind the service:
    /// its columns no longer hash to its content hash, its MAC does not
    /// match, or a sealed block holds a later state of it (an amendment
    /// rolled back). The archived version is MACed anew, so it must be
    /// what the service wrote.
    async fn check_current(&mut self, current: &row::CurrentVersion) -> Result<(), StoreError> {
        let (seq, prev, mac) = &current.ledger;
        let state = RecordState {
            id: current.id,
            version: current.version,
            seq: *seq,
            prev: *prev,
            received_at: current.received_at,
            amended_at: current.amended_at,
            content_hash: &current.content_hash,
            reason: current.reason.as_deref(),
            recorded_at: current.recorded_at,
            chain_head: current.chain_head.as_deref().unwrap_or_default(),
            elements: (current.elements.0.as_deref(), current.elements.1.as_deref()),
        };
        let genuine = current.chain_head.is_some()
            && content_hash(&current.record) == current.content_hash
            && mac
                .as_deref()
                .is_some_and(|m| self.ledger.verify(&state.input(), m));
        if !genuine {
            tracing::error!(
                record_id = current.id.0,
                "a record was changed behind the service's back"
            );
            return Err(StoreError::Tampered(format!(
                "record {} does not match its MAC",
                current.id.0
            )));
        }
        self.view
            .check_current(&mut self.tx, *seq, || format!("record {}", current.id.0))
            .await
    }

    /// A flag's row and steps, checked against each other and against the
    /// sealed blocks (its newest step has no sealed successor).
    async fn checked(
        &mut self,
        flag: &steps::FlagRowState,
        history: Option<Vec<steps::StoredStep>>,
    ) -> Result<steps::Checked, StoreError> {
        let checked = steps::check(&self.ledger, flag, history.as_deref().unwrap_or_default())
            .map_err(|reason| {
                tracing::error!(flag_id = flag.id, %reason, "a flag was changed behind the service's back");
                StoreError::Tampered(format!("flag {}: {reason}", flag.id))
            })?;
        self.view
            .check_current(&mut self.tx, checked.head, || {
                format!("flag {}'s newest step", flag.id)
            })
            .await?;
        Ok(checked)
    }

    /// Commits: the record, its flags and the clinic activity they change
    /// become visible together.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        super::activity::apply(&mut self.tx, &self.activity).await?;
        self.tx.commit().await?;
        Ok(())
    }
}

pub(super) fn kind_columns(
    kind: &DonorKind,
) -> (
    Option<&'static str>,
    Option<DateTime<Utc>>,
    Option<&'static str>,
) {
    match *kind {
        DonorKind::Living { relation } => (Some(relation.as_str()), None, None),
        DonorKind::Deceased {
            death_at,
            death_kind,
        } => (None, Some(death_at), Some(death_kind.as_str())),
    }
}

pub(super) fn hla_json(hla: Option<&HlaTyping>) -> Option<Json<HlaBody<'_>>> {
    hla.map(|h| Json(HlaBody::of(h)))
}

/// Rebuilds a donor kind from its columns.
pub(super) fn donor_kind(
    donor_type: &str,
    relation: Option<String>,
    death_at: Option<DateTime<Utc>>,
    death_kind: Option<String>,
) -> Result<DonorKind, StoreError> {
    match (
        parse::<DonorType>(donor_type)?,
        relation,
        death_at,
        death_kind,
    ) {
        (DonorType::Living, Some(rel), _, _) => Ok(DonorKind::Living {
            relation: parse(&rel)?,
        }),
        (DonorType::Deceased, _, Some(death_at), Some(kind)) => Ok(DonorKind::Deceased {
            death_at,
            death_kind: parse(&kind)?,
        }),
        _ => Err(StoreError::Corrupt(
            "record row with an inconsistent donor kind".into(),
        )),
    }
}

/// Severity as stored: 1 (LOW) to 4 (CRITICAL), so that "at least" is a range.
pub(super) fn severity_to_db(s: Severity) -> i16 {
    match s {
        Severity::Low => 1,
        Severity::Medium => 2,
        Severity::High => 3,
        Severity::Critical => 4,
    }
}

/// The inverse of [`severity_to_db`].
pub(super) fn severity_from_db(v: i16) -> Result<Severity, StoreError> {
    match v {
        1 => Ok(Severity::Low),
        2 => Ok(Severity::Medium),
        3 => Ok(Severity::High),
        4 => Ok(Severity::Critical),
        _ => Err(StoreError::Corrupt(format!("severity {v}"))),
    }
}
