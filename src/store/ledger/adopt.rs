//! Adopting rows written before the ledger existed: each table's rows
//! without a MAC get one, computed from what they hold now, in one
//! transaction with the check that no block exists yet.

use sqlx::{PgConnection, Postgres, Transaction};

use crate::domain::flag_history::fold;
use crate::domain::ledger::LedgerKey;
use crate::domain::{Clinic, RecordId};

use super::super::StoreError;
use super::super::body::parse;
use super::super::ingest::severity_to_db;
use super::super::steps::{self, StepColumns};
use super::content;

type Tx<'a> = Transaction<'a, Postgres>;

/// Rows MACed per statement.
const CHUNK: i64 = 5_000;

/// Turns an append-only trigger off or on again: adopting adds a MAC to
/// rows that history tables otherwise never let change.
async fn switch_trigger(tx: &mut PgConnection, statement: &'static str) -> Result<(), StoreError> {
    sqlx::query(statement).execute(&mut *tx).await?;
    Ok(())
}

/// Sets the MACs of the rows of `table` identified by `ids`.
async fn set_macs(
    tx: &mut PgConnection,
    statement: &'static str,
    ids: &[i64],
    macs: &[Vec<u8>],
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(statement)
        .bind(ids)
        .bind(macs)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

pub(super) async fn records(tx: &mut Tx<'_>, ledger: &LedgerKey) -> Result<u64, StoreError> {
    let mut adopted = 0;
    // Walks on from the last id rather than from the start: the rows behind
    // it already hold their MAC, and skipping them again on every chunk
    // would make adopting a large registry quadratic.
    let mut after = i64::MIN;
    loop {
        let rows = sqlx::query!(
            "SELECT id, version, ledger_seq, ledger_prev, received_at, amended_at, content_hash,
                    version_reason, version_recorded_at, chain_head, donor_element,
                    recipient_element
             FROM records WHERE ledger_mac IS NULL AND id > $2 ORDER BY id LIMIT $1",
            CHUNK,
            after
        )
        .fetch_all(&mut **tx)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(adopted);
        };
        after = last.id;
        let (mut ids, mut macs) = (Vec::new(), Vec::new());
        for r in &rows {
            let head = r.chain_head.clone().unwrap_or_default();
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
                chain_head: &head,
                elements: (r.donor_element.as_deref(), r.recipient_element.as_deref()),
            };
            ids.push(r.id);
            macs.push(ledger.mac(&state.input()).to_vec());
        }
        set_macs(
            tx,
            "UPDATE records r SET ledger_mac = m.mac
             FROM unnest($1::bigint[], $2::bytea[]) AS m(id, mac) WHERE r.id = m.id",
            &ids,
            &macs,
        )
        .await?;
        adopted += ids.len() as u64;
    }
}

pub(super) async fn record_versions(
    tx: &mut Tx<'_>,
    ledger: &LedgerKey,
) -> Result<u64, StoreError> {
    let rows = sqlx::query!(
        "SELECT record_id, version, content_hash, reason, recorded_at, chain_hash, ledger_seq
         FROM record_versions WHERE ledger_mac IS NULL"
    )
    .fetch_all(&mut **tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let (mut seqs, mut macs) = (Vec::new(), Vec::new());
    for r in &rows {
        let input = content::record_version(
            r.record_id,
            r.version,
            &r.content_hash,
            r.reason.as_deref(),
            r.recorded_at,
            r.chain_hash.as_deref().unwrap_or_default(),
        );
        seqs.push(r.ledger_seq);
        macs.push(ledger.mac(&input).to_vec());
    }
    switch_trigger(
        tx,
        "ALTER TABLE record_versions DISABLE TRIGGER record_versions_append_only",
    )
    .await?;
    set_macs(
        tx,
        "UPDATE record_versions v SET ledger_mac = m.mac
         FROM unnest($1::bigint[], $2::bytea[]) AS m(seq, mac) WHERE v.ledger_seq = m.seq",
        &seqs,
        &macs,
    )
    .await?;
    switch_trigger(
        tx,
        "ALTER TABLE record_versions ENABLE TRIGGER record_versions_append_only",
    )
    .await?;
    Ok(seqs.len() as u64)
}

/// MACs every step without one, and brings its flag's row to the fold.
pub(super) async fn flag_steps(tx: &mut Tx<'_>, ledger: &LedgerKey) -> Result<u64, StoreError> {
    let rows = sqlx::query!(
        "SELECT e.ledger_seq, f.id AS flag_id, f.record_id, f.rule_id, e.step, e.kind, e.at,
                e.key_id, e.principal, e.from_status, e.to_status, e.note, e.trace_id,
                e.own_trace_id, e.rule_version, e.severity, e.explanation,
                e.evidence_record_ids, e.record_version, e.cleared_in_version
         FROM flag_events e JOIN flags f ON f.id = e.flag_id
         WHERE e.ledger_mac IS NULL ORDER BY e.flag_id, e.step"
    )
    .fetch_all(&mut **tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let (mut seqs, mut macs) = (Vec::new(), Vec::new());
    let mut flags: Vec<(i64, Vec<crate::domain::flag_history::FlagStep>)> = Vec::new();
    for r in rows {
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
        })?;
        seqs.push(r.ledger_seq);
        macs.push(
            ledger
                .mac(&content::flag_step(
                    RecordId(r.record_id),
                    &r.rule_id,
                    &step,
                    None,
                ))
                .to_vec(),
        );
        match flags.last_mut() {
            Some((id, steps)) if *id == r.flag_id => steps.push(step),
            _ => flags.push((r.flag_id, vec![step])),
        }
    }
    switch_trigger(
        tx,
        "ALTER TABLE flag_events DISABLE TRIGGER flag_events_append_only",
    )
    .await?;
    set_macs(
        tx,
        "UPDATE flag_events e SET ledger_mac = m.mac
         FROM unnest($1::bigint[], $2::bytea[]) AS m(seq, mac) WHERE e.ledger_seq = m.seq",
        &seqs,
        &macs,
    )
    .await?;
    switch_trigger(
        tx,
        "ALTER TABLE flag_events ENABLE TRIGGER flag_events_append_only",
    )
    .await?;
    for (flag_id, steps) in flags {
        let folded = fold(&steps)
            .map_err(|e| StoreError::Corrupt(format!("flag {flag_id} cannot be adopted: {e}")))?;
        let evidence: Vec<i64> = folded.finding.evidence.iter().map(|r| r.0).collect();
        sqlx::query!(
            "UPDATE flags SET status = $2, revision = $3, rule_version = $4, severity = $5,
                              explanation = $6, evidence_record_ids = $7, record_version = $8,
                              cleared_in_version = $9, raised_at = $10, updated_at = $11,
                              dismissal_proposed_by = $12
             WHERE id = $1",
            flag_id,
            folded.status.as_str(),
            folded.revision,
            folded.finding.rule_version,
            severity_to_db(folded.finding.severity),
            folded.finding.explanation,
            &evidence,
            folded.finding.record_version,
            folded.cleared_in_version,
            folded.raised_at,
            folded.updated_at,
            folded.dismissal_proposed_by,
        )
        .execute(&mut **tx)
        .await?;
    }
    Ok(seqs.len() as u64)
}

pub(super) async fn clinic_versions(
    tx: &mut Tx<'_>,
    ledger: &LedgerKey,
) -> Result<u64, StoreError> {
    let rows = sqlx::query!(
        "SELECT clinic_id, version, name, country, licensed_organs, licence_valid_from,
                licence_valid_until, status, status_effective_from, recorded_at, ledger_seq
         FROM clinic_versions WHERE ledger_mac IS NULL"
    )
    .fetch_all(&mut **tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let (mut seqs, mut macs) = (Vec::new(), Vec::new());
    for r in rows {
        let clinic = Clinic {
            clinic_id: r.clinic_id,
            name: r.name,
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
        };
        seqs.push(r.ledger_seq);
        macs.push(
            ledger
                .mac(&content::clinic_version(&clinic, r.version, r.recorded_at))
                .to_vec(),
        );
    }
    switch_trigger(
        tx,
        "ALTER TABLE clinic_versions DISABLE TRIGGER clinic_versions_append_only",
    )
    .await?;
    set_macs(
        tx,
        "UPDATE clinic_versions v SET ledger_mac = m.mac
         FROM unnest($1::bigint[], $2::bytea[]) AS m(seq, mac) WHERE v.ledger_seq = m.seq",
        &seqs,
        &macs,
    )
    .await?;
    switch_trigger(
        tx,
        "ALTER TABLE clinic_versions ENABLE TRIGGER clinic_versions_append_only",
    )
    .await?;
    Ok(seqs.len() as u64)
}

pub(super) async fn principals(tx: &mut Tx<'_>, ledger: &LedgerKey) -> Result<u64, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT p.ledger_seq, p.name, p.kind, c.name AS "created_by?", p.created_at
           FROM principals p LEFT JOIN principals c ON c.id = p.created_by
           WHERE p.ledger_mac IS NULL"#
    )
    .fetch_all(&mut **tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let seqs: Vec<i64> = rows.iter().map(|r| r.ledger_seq).collect();
    let macs: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| {
            ledger
                .mac(&content::principal(
                    &r.name,
                    &r.kind,
                    r.created_by.as_deref(),
                    r.created_at,
                ))
                .to_vec()
        })
        .collect();
    switch_trigger(
        tx,
        "ALTER TABLE principals DISABLE TRIGGER principals_append_only",
    )
    .await?;
    set_macs(
        tx,
        "UPDATE principals p SET ledger_mac = m.mac
         FROM unnest($1::bigint[], $2::bytea[]) AS m(seq, mac) WHERE p.ledger_seq = m.seq",
        &seqs,
        &macs,
    )
    .await?;
    switch_trigger(
        tx,
        "ALTER TABLE principals ENABLE TRIGGER principals_append_only",
    )
    .await?;
    Ok(seqs.len() as u64)
}

pub(super) async fn api_keys(tx: &mut Tx<'_>, ledger: &LedgerKey) -> Result<u64, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT k.key_id, k.secret_hash, k.role, k.hospital_id, k.description, k.created_at,
                  k.expires_at, k.revoked_at, p.name AS principal, i.name AS "issued_by?",
                  k.ledger_seq, k.ledger_prev
           FROM api_keys k JOIN principals p ON p.id = k.principal_id
           LEFT JOIN principals i ON i.id = k.created_by
           WHERE k.ledger_mac IS NULL"#
    )
    .fetch_all(&mut **tx)
    .await?;
    let seqs: Vec<i64> = rows.iter().map(|r| r.ledger_seq).collect();
    let macs: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| {
            let state = content::KeyState {
                key_id: &r.key_id,
                secret_hash: &r.secret_hash,
                role: &r.role,
                hospital_id: r.hospital_id.as_deref(),
                description: &r.description,
                created_at: r.created_at,
                expires_at: r.expires_at,
                revoked_at: r.revoked_at,
                principal: &r.principal,
                created_by: r.issued_by.as_deref(),
                seq: r.ledger_seq,
                prev: r.ledger_prev,
            };
            ledger.mac(&state.input()).to_vec()
        })
        .collect();
    set_macs(
        tx,
        "UPDATE api_keys k SET ledger_mac = m.mac
         FROM unnest($1::bigint[], $2::bytea[]) AS m(seq, mac) WHERE k.ledger_seq = m.seq",
        &seqs,
        &macs,
    )
    .await?;
    Ok(seqs.len() as u64)
}

pub(super) async fn imports(tx: &mut Tx<'_>, ledger: &LedgerKey) -> Result<u64, StoreError> {
    let rows = sqlx::query!(
        "SELECT file_sha256, file_name, lines_done, accepted, duplicates, rejected, started_at,
                updated_at, finished_at, ledger_seq, ledger_prev
         FROM imports WHERE ledger_mac IS NULL"
    )
    .fetch_all(&mut **tx)
    .await?;
    let seqs: Vec<i64> = rows.iter().map(|r| r.ledger_seq).collect();
    let macs: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| {
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
            ledger.mac(&state.input()).to_vec()
        })
        .collect();
    set_macs(
        tx,
        "UPDATE imports i SET ledger_mac = m.mac
         FROM unnest($1::bigint[], $2::bytea[]) AS m(seq, mac) WHERE i.ledger_seq = m.seq",
        &seqs,
        &macs,
    )
    .await?;
    Ok(seqs.len() as u64)
}

pub(super) async fn access_log(tx: &mut Tx<'_>, ledger: &LedgerKey) -> Result<u64, StoreError> {
    let rows = sqlx::query!(
        "SELECT at, principal, key_id, action, resource, resource_id, trace_id, own_trace_id,
                ledger_seq
         FROM access_log WHERE ledger_mac IS NULL"
    )
    .fetch_all(&mut **tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let seqs: Vec<i64> = rows.iter().map(|r| r.ledger_seq).collect();
    let macs: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| {
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
            ledger.mac(&entry.input()).to_vec()
        })
        .collect();
    switch_trigger(
        tx,
        "ALTER TABLE access_log DISABLE TRIGGER access_log_append_only",
    )
    .await?;
    set_macs(
        tx,
        "UPDATE access_log a SET ledger_mac = m.mac
         FROM unnest($1::bigint[], $2::bytea[]) AS m(seq, mac) WHERE a.ledger_seq = m.seq",
        &seqs,
        &macs,
    )
    .await?;
    switch_trigger(
        tx,
        "ALTER TABLE access_log ENABLE TRIGGER access_log_append_only",
    )
    .await?;
    Ok(seqs.len() as u64)
}
