//! A case's referral dossier: everything the registry holds behind the case,
//! as one JSON document signed with the registry's key (see
//! `transplant_audit_core::dossier` for the signature and the offline check).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use crate::domain::case::CaseChange;
use crate::domain::ledger::SigningKey;
use crate::store::dossier::{
    CaseEvidence, FlagEvidence, LedgerPlace, StepEvidence, VersionEvidence,
};
use crate::store::flags::Actor;

pub use transplant_audit_core::dossier::{FORMAT, check, sign};

/// The dossier of `evidence`, exported by `actor` at `at`, signed by `key`.
pub fn build(
    evidence: &CaseEvidence,
    actor: &Actor<'_>,
    at: DateTime<Utc>,
    key: &SigningKey,
) -> Value {
    let c = &evidence.case;
    let mut body = Map::new();
    body.insert("format".into(), json!(FORMAT));
    body.insert("exported_at".into(), json!(instant(at)));
    body.insert(
        "exported_by".into(),
        json!({"principal": actor.principal, "key_id": actor.key_id}),
    );
    body.insert(
        "case".into(),
        json!({
            "case_id": c.id,
            "title": c.title,
            "summary": c.summary,
            "status": c.status.as_str(),
            "assignee": c.assignee,
            "referred_to": c.referred_to,
            "opened_by": c.opened_by,
            "opened_at": instant(c.opened_at),
            "updated_at": instant(c.updated_at),
            "revision": c.revision,
            "flag_ids": c.flag_ids,
        }),
    );
    body.insert(
        "case_events".into(),
        evidence
            .events
            .iter()
            .map(|e| {
                let ev = &e.event.event;
                let mut o = json!({
                    "step": ev.step,
                    "kind": ev.change.kind().as_str(),
                    "at": instant(ev.at),
                    "principal": ev.principal,
                    "key_id": ev.key_id,
                    "note": ev.note,
                    "trace_id": ev.trace_id,
                    "ledger": ledger(&e.ledger),
                });
                match &ev.change {
                    CaseChange::Opened { title, summary } => {
                        o["title"] = json!(title);
                        o["summary"] = json!(summary);
                    }
                    CaseChange::FlagAdded(id) | CaseChange::FlagRemoved(id) => {
                        o["flag_id"] = json!(id);
                    }
                    CaseChange::Assigned(who) => o["assignee"] = json!(who),
                    CaseChange::StatusChanged {
                        from,
                        to,
                        referred_to,
                    } => {
                        o["from_status"] = json!(from.as_str());
                        o["to_status"] = json!(to.as_str());
                        o["referred_to"] = json!(referred_to);
                    }
                    CaseChange::Noted => {}
                }
                o
            })
            .collect(),
    );
    body.insert("flags".into(), evidence.flags.iter().map(flag).collect());
    body.insert(
        "blocks".into(),
        evidence
            .blocks
            .iter()
            .map(|b| {
                json!({
                    "block": b.block,
                    "first_seq": b.first_seq,
                    "last_seq": b.last_seq,
                    "hash": hex::encode(&b.hash),
                    "sealed_at": instant(b.sealed_at),
                })
            })
            .collect(),
    );
    sign(body, key)
}

/// The suggested file name of case `case_id`'s dossier.
pub fn file_name(case_id: i64, at: DateTime<Utc>) -> String {
    format!(
        "case-{case_id}-{}.dossier.json",
        at.format("%Y%m%dT%H%M%SZ")
    )
}

fn flag(f: &FlagEvidence) -> Value {
    let v = &f.flag;
    json!({
        "flag": {
            "flag_id": v.id,
            "rule_id": v.rule_id,
            "rule_version": v.rule_version,
            "severity": v.severity.as_str(),
            "status": v.status.as_str(),
            "explanation": v.explanation,
            "record_id": v.record_id.0,
            "record_version": v.record_version,
            "evidence_record_ids": v.evidence.iter().map(|r| r.0).collect::<Vec<_>>(),
            "hospital_id": v.hospital_id,
            "clinic_id": v.clinic_id,
            "external_record_id": v.external_record_id,
            "raised_at": instant(v.raised_at),
            "updated_at": instant(v.updated_at),
            "revision": v.revision,
            "cleared_in_version": v.cleared_in_version,
        },
        "record_versions": f.versions.iter().map(version).collect::<Vec<_>>(),
        "evidence_records": f.evidence.iter().map(version).collect::<Vec<_>>(),
        "steps": f.steps.iter().map(step).collect::<Vec<_>>(),
    })
}

fn version(v: &VersionEvidence) -> Value {
    json!({
        "record_id": v.record_id,
        "version": v.version,
        "record": v.body,
        "content_hash": hex::encode(&v.content_hash),
        "reason": v.reason,
        "recorded_at": instant(v.recorded_at),
        "chain_hash": hex::encode(&v.chain_hash),
        "ledger": ledger(&v.ledger),
    })
}

fn step(s: &StepEvidence) -> Value {
    let st = &s.step;
    let finding = st.finding.as_ref().map(|f| {
        json!({
            "rule_version": f.rule_version,
            "severity": f.severity.as_str(),
            "explanation": f.explanation,
            "evidence_record_ids": f.evidence.iter().map(|r| r.0).collect::<Vec<_>>(),
            "record_version": f.record_version,
        })
    });
    json!({
        "step": st.step,
        "kind": st.kind.as_str(),
        "at": instant(st.at),
        "principal": st.principal,
        "key_id": st.key_id,
        "from_status": st.from.map(|s| s.as_str()),
        "to_status": st.to.as_str(),
        "note": st.note,
        "trace_id": st.trace_id,
        "finding": finding,
        "cleared_in_version": st.cleared_in_version,
        "ledger": ledger(&s.ledger),
    })
}

fn ledger(p: &LedgerPlace) -> Value {
    json!({
        "seq": p.seq,
        "prev": p.prev,
        "mac": hex::encode(&p.mac),
        "block": p.block,
    })
}

fn instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}
