//! A flag's life in SQL: raising flags with their RAISED step, reading a
//! flag's steps, checking its row against them, and appending a step.
//!
//! A flag's row is the fold of its steps ([`fold`]); the service checks the
//! row and every step's MAC before it adds a step, so it never signs a step
//! on top of a row that was changed behind its back.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::activity::{ActivityDelta, Bucket, FlagState};
use crate::domain::flag_history::{FlagStep, FoldedFlag, StepFinding, fold, fold_after};
use crate::domain::ledger::LedgerKey;
use crate::domain::{FlagStatus, Record, RecordId, StepKind};
use crate::rules::Finding;

use super::body::parse;
use super::ingest::{severity_from_db, severity_to_db};
use super::ledger::content;
use super::{StoreError, chain};

/// The principal of steps the rules take.
pub const RULES_PRINCIPAL: &str = "rules";

/// A finding to raise as a new flag on a stored record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Raise<'a> {
    /// The record.
    pub record_id: RecordId,
    /// The record version the rule ran on.
    pub record_version: i32,
    /// The record (hospital, clinic, the hospital's id of it).
    pub record: &'a Record,
    /// What the rule found.
    pub finding: &'a Finding,
}

/// The finding a step states.
fn step_finding(finding: &Finding, record_version: i32) -> StepFinding {
    StepFinding {
        rule_version: finding.rule.version(),
        severity: finding.severity,
        explanation: finding.explanation.clone(),
        evidence: finding.evidence.clone(),
        record_version,
    }
}

/// The first step of a flag the rules raise now.
fn raised_step(finding: StepFinding, at: DateTime<Utc>, note: &str) -> FlagStep {
    FlagStep {
        step: 1,
        kind: StepKind::Raised,
        at,
        key_id: String::new(),
        principal: RULES_PRINCIPAL.to_owned(),
        from: None,
        to: FlagStatus::Open,
        note: note.to_owned(),
        trace_id: None,
        own_trace_id: None,
        finding: Some(finding),
        cleared_in_version: None,
    }
}

/// A step the rules take on an existing flag when its record is amended.
pub(crate) fn amendment_step(
    folded: &FoldedFlag,
    at: DateTime<Utc>,
    finding: Option<StepFinding>,
    cleared_in_version: Option<i32>,
) -> FlagStep {
    FlagStep {
        step: i32::try_from(folded.revision + 1).unwrap_or(i32::MAX),
        kind: if finding.is_some() {
            StepKind::Reevaluated
        } else {
            StepKind::Cleared
        },
        at,
        key_id: String::new(),
        principal: RULES_PRINCIPAL.to_owned(),
        from: Some(folded.status),
        to: folded.status,
        note: String::new(),
        trace_id: None,
        own_trace_id: None,
        finding,
        cleared_in_version,
    }
}

/// The finding a step states, for an amendment's evaluation.
pub(crate) fn finding_of(finding: &Finding, record_version: i32) -> StepFinding {
    step_finding(finding, record_version)
}

/// Raises `raises` as new flags, each with its RAISED step, in one
/// statement; a record and rule already flagged is left as it is. Adds the
/// flags raised to `activity`; returns how many were raised.
pub(crate) async fn raise(
    conn: &mut PgConnection,
    ledger: &LedgerKey,
    raises: &[Raise<'_>],
    note: &str,
    activity: &mut ActivityDelta,
) -> Result<u64, StoreError> {
    if raises.is_empty() {
        // The insert trigger wakes every watcher, so only real flags may fire it.
        return Ok(0);
    }
    let at = chain::now();
    let n = raises.len();
    let (mut record_id, mut rule_id, mut rule_version) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut severity, mut explanation, mut evidence) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut hospital_id, mut clinic_id, mut record_version) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut external_record_id, mut mac) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for r in raises {
        let f = r.finding;
        let step = raised_step(step_finding(f, r.record_version), at, note);
        mac.push(
            ledger
                .mac(&content::flag_step(
                    r.record_id,
                    f.rule.as_str(),
                    &step,
                    None,
                ))
                .to_vec(),
        );
        record_id.push(r.record_id.0);
        rule_id.push(f.rule.as_str());
        rule_version.push(f.rule.version());
        severity.push(severity_to_db(f.severity));
        explanation.push(f.explanation.as_str());
        evidence.push(array_literal(&f.evidence));
        hospital_id.push(r.record.hospital_id.as_str());
        clinic_id.push(r.record.clinic_id.as_str());
        record_version.push(r.record_version);
        external_record_id.push(r.record.external_record_id.as_str());
    }
    let raised = sqlx::query!(
        r#"WITH input AS MATERIALIZED (
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], $4::smallint[], $5::text[],
                                  $6::text[], $7::text[], $8::text[], $9::int[], $10::text[],
                                  $11::bytea[])
                 AS t(record_id, rule_id, rule_version, severity, explanation, evidence,
                      hospital_id, clinic_id, record_version, external_record_id, mac)),
         f AS (
             INSERT INTO flags (record_id, rule_id, rule_version, severity, explanation,
                                evidence_record_ids, hospital_id, clinic_id, record_version,
                                external_record_id, raised_at, updated_at)
             SELECT record_id, rule_id, rule_version, severity, explanation, evidence::bigint[],
                    hospital_id, clinic_id, record_version, external_record_id, $12, $12
             FROM input
             ON CONFLICT ON CONSTRAINT flags_one_per_record_and_rule DO NOTHING
             RETURNING id, record_id, rule_id),
         e AS (
             INSERT INTO flag_events (flag_id, step, kind, at, key_id, principal, from_status,
                                      to_status, note, rule_version, severity, explanation,
                                      evidence_record_ids, record_version, ledger_mac)
             SELECT f.id, 1, 'RAISED', $12, '', $14, NULL, 'OPEN', $13, i.rule_version,
                    i.severity, i.explanation, i.evidence::bigint[], i.record_version, i.mac
             FROM f JOIN input i USING (record_id, rule_id))
         SELECT record_id AS "record_id!", rule_id AS "rule_id!" FROM f"#,
        &record_id,
        &rule_id as &[&str],
        &rule_version,
        &severity,
        &explanation as &[&str],
        &evidence,
        &hospital_id as &[&str],
        &clinic_id as &[&str],
        &record_version,
        &external_record_id as &[&str],
        &mac,
        at,
        note,
        RULES_PRINCIPAL,
    )
    .fetch_all(&mut *conn)
    .await?;
    let by_key: HashMap<(i64, &str), &Raise<'_>> = raises
        .iter()
        .map(|r| ((r.record_id.0, r.finding.rule.as_str()), r))
        .collect();
    for row in &raised {
        if let Some(r) = by_key.get(&(row.record_id, row.rule_id.as_str())) {
            activity.flag_raised(
                &Bucket::of(r.record),
                FlagState {
                    rule_id: &row.rule_id,
                    status: FlagStatus::Open,
                    cleared: false,
                },
            );
        }
    }
    Ok(raised.len() as u64)
}

/// Record ids as a Postgres array literal (`{1,2,3}`): a flag's evidence is
/// an array, and arrays of arrays of different lengths cannot be bound.
fn array_literal(ids: &[RecordId]) -> String {
    let inner: Vec<String> = ids.iter().map(|id| id.0.to_string()).collect();
    format!("{{{}}}", inner.join(","))
}

/// A flag's row, with what its steps must fold into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FlagRowState {
    pub id: i64,
    pub record_id: RecordId,
    pub rule_id: String,
    pub status: FlagStatus,
    pub revision: i64,
    pub finding: StepFinding,
    pub cleared_in_version: Option<i32>,
    pub raised_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub dismissal_proposed_by: Option<String>,
}

impl FlagRowState {
    /// The flag as the activity counters see it, as its row stands.
    pub(crate) fn activity_state(&self) -> FlagState<'_> {
        FlagState {
            rule_id: &self.rule_id,
            status: self.status,
            cleared: self.cleared_in_version.is_some(),
        }
    }

    /// The flag as the activity counters see it once folded into `next`.
    pub(crate) fn activity_state_after<'a>(&'a self, next: &FoldedFlag) -> FlagState<'a> {
        FlagState {
            rule_id: &self.rule_id,
            status: next.status,
            cleared: next.cleared_in_version.is_some(),
        }
    }

    /// What differs between the row and the fold of its steps, if anything.
    pub(crate) fn differs_from(&self, folded: &FoldedFlag) -> Option<&'static str> {
        if self.status != folded.status {
            Some("its status is not the last step's")
        } else if self.revision != folded.revision {
            Some("its revision does not count its steps")
        } else if self.finding != folded.finding {
            Some("its finding (severity, explanation, evidence, versions) is not its steps'")
        } else if self.cleared_in_version != folded.cleared_in_version {
            Some("its cleared version is not its steps'")
        } else if (self.raised_at, self.updated_at) != (folded.raised_at, folded.updated_at) {
            Some("its times are not its steps'")
        } else if self.dismissal_proposed_by != folded.dismissal_proposed_by {
            Some("its pending dismissal proposal is not its steps'")
        } else {
            None
        }
    }
}

/// A stored step with its place in the ledger and its MAC.
#[derive(Debug, Clone)]
pub(crate) struct StoredStep {
    pub step: FlagStep,
    /// Its sequence number.
    pub seq: i64,
    /// The sequence number of the step it follows, when it names it.
    pub prev: Option<i64>,
    pub mac: Option<Vec<u8>>,
}

/// A flag whose row and steps were checked: their fold, and the step a new
/// one follows.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    pub folded: FoldedFlag,
    /// The sequence number of its newest step.
    pub head: i64,
}

/// The rows of these flags, locked for update: a triage or an amendment
/// about to add steps.
pub(crate) async fn flag_rows(
    conn: &mut PgConnection,
    flag_ids: &[i64],
) -> Result<Vec<FlagRowState>, StoreError> {
    let rows = sqlx::query!(
        "SELECT id, record_id, rule_id, status, revision, rule_version, severity, explanation,
                evidence_record_ids, record_version, cleared_in_version, raised_at,
                updated_at, dismissal_proposed_by
         FROM flags WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        flag_ids,
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(FlagRowState {
                id: r.id,
                record_id: RecordId(r.record_id),
                rule_id: r.rule_id,
                status: parse(&r.status)?,
                revision: r.revision,
                finding: StepFinding {
                    rule_version: r.rule_version,
                    severity: severity_from_db(r.severity)?,
                    explanation: r.explanation,
                    evidence: r.evidence_record_ids.into_iter().map(RecordId).collect(),
                    record_version: r.record_version,
                },
                cleared_in_version: r.cleared_in_version,
                raised_at: r.raised_at,
                updated_at: r.updated_at,
                dismissal_proposed_by: r.dismissal_proposed_by,
            })
        })
        .collect()
}

/// The flags of a record, locked for update.
pub(crate) async fn flags_of_record(
    conn: &mut PgConnection,
    record_id: RecordId,
) -> Result<Vec<FlagRowState>, StoreError> {
    let ids: Vec<i64> = sqlx::query_scalar!(
        "SELECT id FROM flags WHERE record_id = $1 ORDER BY id",
        record_id.0
    )
    .fetch_all(&mut *conn)
    .await?;
    flag_rows(conn, &ids).await
}

/// Every step of these flags, by flag, in step order.
pub(crate) async fn steps_of(
    conn: &mut PgConnection,
    flag_ids: &[i64],
) -> Result<HashMap<i64, Vec<StoredStep>>, StoreError> {
    let rows = sqlx::query!(
        "SELECT flag_id, step, kind, at, key_id, principal, from_status, to_status, note,
                trace_id, own_trace_id, rule_version, severity, explanation, evidence_record_ids,
                record_version, cleared_in_version, ledger_seq, ledger_prev, ledger_mac
         FROM flag_events WHERE flag_id = ANY($1) ORDER BY flag_id, step",
        flag_ids,
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut by_flag: HashMap<i64, Vec<StoredStep>> = HashMap::new();
    for r in rows {
        let step = step_of(StepColumns {
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
        by_flag.entry(r.flag_id).or_default().push(StoredStep {
            step,
            seq: r.ledger_seq,
            prev: r.ledger_prev,
            mac: r.ledger_mac,
        });
    }
    Ok(by_flag)
}

/// A step's columns as a query returns them.
pub(crate) struct StepColumns<'a> {
    pub step: i32,
    pub kind: &'a str,
    pub at: DateTime<Utc>,
    pub key_id: String,
    pub principal: String,
    pub from: Option<&'a str>,
    pub to: &'a str,
    pub note: String,
    pub trace_id: Option<String>,
    pub own_trace_id: Option<String>,
    pub rule_version: Option<i32>,
    pub severity: Option<i16>,
    pub explanation: Option<String>,
    pub evidence: Option<Vec<i64>>,
    pub record_version: Option<i32>,
    pub cleared_in_version: Option<i32>,
}

/// The step its columns hold.
pub(crate) fn step_of(c: StepColumns<'_>) -> Result<FlagStep, StoreError> {
    let finding = match (c.rule_version, c.severity, c.explanation, c.record_version) {
        (Some(rule_version), Some(severity), Some(explanation), Some(record_version)) => {
            Some(StepFinding {
                rule_version,
                severity: severity_from_db(severity)?,
                explanation,
                evidence: c
                    .evidence
                    .unwrap_or_default()
                    .into_iter()
                    .map(RecordId)
                    .collect(),
                record_version,
            })
        }
        _ => None,
    };
    Ok(FlagStep {
        step: c.step,
        kind: parse(c.kind)?,
        at: c.at,
        key_id: c.key_id,
        principal: c.principal,
        from: c.from.map(parse).transpose()?,
        to: parse(c.to)?,
        note: c.note,
        trace_id: c.trace_id,
        own_trace_id: c.own_trace_id,
        finding,
        cleared_in_version: c.cleared_in_version,
    })
}

/// Checks a flag's steps (each one's MAC, each link to the step before,
/// and the rules of a flag's life) and its row against their fold; returns
/// the fold, or what is wrong.
pub(crate) fn check(
    ledger: &LedgerKey,
    row: &FlagRowState,
    steps: &[StoredStep],
) -> Result<Checked, String> {
    let mut before: Option<i64> = None;
    for s in steps {
        let input = content::flag_step(row.record_id, &row.rule_id, &s.step, s.prev);
        let genuine = s.mac.as_deref().is_some_and(|m| ledger.verify(&input, m));
        if !genuine {
            return Err(format!(
                "step {} does not match its MAC (edited, moved or written behind the service)",
                s.step.step
            ));
        }
        if s.prev.is_some() && s.prev != before {
            return Err(format!(
                "step {} follows a step that is not the one before it",
                s.step.step
            ));
        }
        before = Some(s.seq);
    }
    let plain: Vec<FlagStep> = steps.iter().map(|s| s.step.clone()).collect();
    let folded = fold(&plain).map_err(|e| e.to_string())?;
    match (row.differs_from(&folded), before) {
        (Some(reason), _) => Err(format!("the flag's row disagrees with its steps: {reason}")),
        (None, None) => Err("the flag has no steps".into()),
        (None, Some(head)) => Ok(Checked { folded, head }),
    }
}

/// Appends `step` to a checked flag, after its newest step, and brings its
/// row to the new fold; returns it.
pub(crate) async fn append(
    conn: &mut PgConnection,
    ledger: &LedgerKey,
    row: &FlagRowState,
    checked: &Checked,
    step: FlagStep,
    clinic_id: Option<&str>,
) -> Result<FoldedFlag, StoreError> {
    let next = fold_after(&checked.folded, &step)
        .map_err(|e| StoreError::Corrupt(format!("a new step breaks the flag's history: {e}")))?;
    let prev = Some(checked.head);
    let mac = ledger.mac(&content::flag_step(
        row.record_id,
        &row.rule_id,
        &step,
        prev,
    ));
    let finding = step.finding.as_ref();
    let evidence: Option<Vec<i64>> = finding.map(|f| f.evidence.iter().map(|r| r.0).collect());
    sqlx::query!(
        "WITH step AS (
             INSERT INTO flag_events (flag_id, step, kind, at, key_id, principal, from_status,
                                      to_status, note, trace_id, own_trace_id, rule_version,
                                      severity, explanation, evidence_record_ids,
                                      record_version, cleared_in_version, ledger_mac,
                                      ledger_prev)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                     $18, $29))
         UPDATE flags SET status = $19, revision = $20, rule_version = $21, severity = $22,
                          explanation = $23, evidence_record_ids = $24, record_version = $25,
                          cleared_in_version = $26, updated_at = $4,
                          dismissal_proposed_by = $27, clinic_id = coalesce($28, clinic_id)
         WHERE id = $1",
        row.id,
        step.step,
        step.kind.as_str(),
        step.at,
        step.key_id,
        step.principal,
        step.from.map(|f| f.as_str()),
        step.to.as_str(),
        step.note,
        step.trace_id,
        step.own_trace_id,
        finding.map(|f| f.rule_version),
        finding.map(|f| severity_to_db(f.severity)),
        finding.map(|f| f.explanation.as_str()),
        evidence.as_deref(),
        finding.map(|f| f.record_version),
        step.cleared_in_version,
        &mac[..],
        next.status.as_str(),
        next.revision,
        next.finding.rule_version,
        severity_to_db(next.finding.severity),
        next.finding.explanation,
        &next
            .finding
            .evidence
            .iter()
            .map(|r| r.0)
            .collect::<Vec<_>>(),
        next.finding.record_version,
        next.cleared_in_version,
        next.dismissal_proposed_by,
        clinic_id,
        prev,
    )
    .execute(&mut *conn)
    .await?;
    Ok(next)
}
