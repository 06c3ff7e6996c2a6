//! What the pages show, as askama templates (compiled into the binary;
//! every value is HTML-escaped by the templates, whoever typed it) and the
//! plain values they are filled with.

use askama::Template;
use chrono::{DateTime, Utc};

use crate::audit::RuleQuality;
use crate::domain::{DonorKind, FlagEvent, FlagStatus, FlagView, Person, Record, RecordView};
use crate::store::records::RecordVersionEntry;

use super::filters::InboxQuery;
use super::pages::{AUDIT_SERVICE, CASE_CHANGES, INVESTIGATION_SERVICE, may};
use super::session::Signed;

/// The header every signed-in page shows: who is signed in, and the
/// sign-out form's CSRF token; and which forms the session may submit, so
/// that a page shows only those.
#[derive(Debug, Clone)]
pub struct Nav {
    /// The principal signed in.
    pub principal: String,
    /// Their key's role.
    pub role: String,
    /// The session's CSRF token.
    pub csrf: String,
    /// Whether the role may triage flags.
    pub may_triage: bool,
    /// Whether the role may open cases and change them.
    pub may_work_cases: bool,
}

impl Nav {
    /// The header of `signed`'s pages.
    pub fn of(signed: &Signed) -> Self {
        let role = signed.caller.role;
        Self {
            principal: signed.caller.principal.clone(),
            role: role.to_string(),
            csrf: signed.csrf(),
            may_triage: may(role, AUDIT_SERVICE, "UpdateFlagStatus"),
            may_work_cases: CASE_CHANGES
                .iter()
                .all(|method| may(role, INVESTIGATION_SERVICE, method)),
        }
    }
}

/// `text` as one segment of a path: every byte but the unreserved ones
/// percent-encoded, so an id cannot add a segment or a query.
pub fn path_segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, UNRESERVED_KEPT).to_string()
}

/// Every byte but RFC 3986's unreserved characters is percent-encoded.
const UNRESERVED_KEPT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// An instant as pages show it.
pub fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// A flag as a row of a listing.
#[derive(Debug, Clone)]
pub struct FlagRow {
    /// The flag id.
    pub id: i64,
    /// Its severity.
    pub severity: String,
    /// Its rule.
    pub rule_id: String,
    /// Its triage status.
    pub status: String,
    /// The record's clinic.
    pub clinic_id: String,
    /// The record's hospital.
    pub hospital_id: String,
    /// The hospital's record id.
    pub external_record_id: String,
    /// The service's record id.
    pub record_id: i64,
    /// When raised.
    pub raised_at: String,
    /// What the rule found.
    pub explanation: String,
}

impl From<&FlagView> for FlagRow {
    fn from(f: &FlagView) -> Self {
        Self {
            id: f.id,
            severity: f.severity.to_string(),
            rule_id: f.rule_id.clone(),
            status: f.status.to_string(),
            clinic_id: f.clinic_id.clone(),
            hospital_id: f.hospital_id.clone(),
            external_record_id: f.external_record_id.clone(),
            record_id: f.record_id.0,
            raised_at: when(&f.raised_at),
            explanation: f.explanation.clone(),
        }
    }
}

/// The sign-in page.
#[derive(Template)]
#[template(path = "console/login.html")]
pub struct LoginPage {
    /// Why the last attempt failed.
    pub error: Option<String>,
}

/// The inbox.
#[derive(Template)]
#[template(path = "console/inbox.html")]
pub struct InboxPage {
    /// The header.
    pub nav: Nav,
    /// The filters as typed.
    pub query: InboxQuery,
    /// The page's flags, newest first.
    pub rows: Vec<FlagRow>,
    /// The next page's query string, when there is one.
    pub next: Option<String>,
    /// The address of these flags as CSV.
    pub csv: String,
    /// The live feed's address.
    pub events: String,
    /// Filters that are not valid.
    pub errors: Vec<(String, String)>,
    /// The statuses to filter on.
    pub statuses: &'static [FlagStatus],
    /// The severities to filter on.
    pub severities: &'static [crate::domain::Severity],
    /// The rule ids to filter on.
    pub rules: Vec<&'static str>,
}

/// One column of the case page's comparison: the flagged record or an
/// evidence record.
#[derive(Debug, Clone)]
pub struct Column {
    /// "Flagged record" or "Evidence".
    pub title: &'static str,
    /// The service's record id.
    pub record_id: i64,
    /// The record's current version.
    pub version: i32,
}

/// One field across the compared records.
#[derive(Debug, Clone)]
pub struct FieldRow {
    /// What the field is.
    pub label: &'static str,
    /// Whether the finding rests on it.
    pub highlighted: bool,
    /// Its value in each column.
    pub values: Vec<String>,
}

/// One triage step as the history shows it.
#[derive(Debug, Clone)]
pub struct Step {
    /// Its number.
    pub step: i32,
    /// What it did.
    pub kind: String,
    /// When.
    pub at: String,
    /// Who.
    pub principal: String,
    /// With which key.
    pub key_id: String,
    /// The status before, if any.
    pub from: String,
    /// The status after.
    pub to: String,
    /// The note.
    pub note: String,
}

impl From<&FlagEvent> for Step {
    fn from(e: &FlagEvent) -> Self {
        Self {
            step: e.step,
            kind: e.kind.to_string(),
            at: when(&e.at),
            principal: e.principal.clone(),
            key_id: e.key_id.clone(),
            from: e.from.map(|s| s.to_string()).unwrap_or_default(),
            to: e.to.to_string(),
            note: e.note.clone(),
        }
    }
}

/// A flag's case.
#[derive(Template)]
#[template(path = "console/flag.html")]
pub struct FlagPage {
    /// The header.
    pub nav: Nav,
    /// The case holding it, if one does.
    pub case_id: Option<i64>,
    /// The flag.
    pub flag: FlagRow,
    /// Its revision (the etag a triage step names).
    pub revision: i64,
    /// Who proposed dismissing it, awaiting a second principal.
    pub dismissal_proposed_by: Option<String>,
    /// The compared records.
    pub columns: Vec<Column>,
    /// Their fields.
    pub fields: Vec<FieldRow>,
    /// The triage history, oldest first.
    pub history: Vec<Step>,
    /// The statuses triage may move it to, with their labels.
    pub moves: Vec<(&'static str, &'static str)>,
    /// Whether dismissing takes two principals.
    pub critical: bool,
}

/// One version of a record, as the record page lists it.
#[derive(Debug, Clone)]
pub struct Version {
    /// Its number.
    pub version: i32,
    /// When recorded.
    pub at: String,
    /// The hospital's reason for the amendment.
    pub reason: String,
    /// What changed from the version before.
    pub changed: Vec<String>,
}

impl From<&RecordVersionEntry> for Version {
    fn from(v: &RecordVersionEntry) -> Self {
        Self {
            version: v.version,
            at: when(&v.recorded_at),
            reason: v.reason.clone().unwrap_or_default(),
            changed: v.changed.clone(),
        }
    }
}

/// A record.
#[derive(Template)]
#[template(path = "console/record.html")]
pub struct RecordPage {
    /// The header.
    pub nav: Nav,
    /// The service's record id.
    pub record_id: i64,
    /// The current version.
    pub version: i32,
    /// When first received.
    pub received_at: String,
    /// The donor's fingerprint, hex.
    pub donor_fp: String,
    /// The recipient's fingerprint, hex.
    pub recipient_fp: String,
    /// The clinic's id as a path segment.
    pub clinic_path: String,
    /// Its fields.
    pub fields: Vec<(&'static str, String)>,
    /// Its versions, oldest first.
    pub versions: Vec<Version>,
    /// Its flags.
    pub flags: Vec<FlagRow>,
}

/// One rule's line on the rules page.
#[derive(Debug, Clone)]
pub struct RuleRow {
    /// The rule.
    pub rule_id: &'static str,
    /// Flags by status.
    pub open: u64,
    /// In review.
    pub in_review: u64,
    /// Confirmed.
    pub confirmed: u64,
    /// Dismissed.
    pub dismissed: u64,
    /// Confirmed among closed, as a percentage; "–" before any is closed.
    pub precision: String,
}

impl From<&RuleQuality> for RuleRow {
    fn from(q: &RuleQuality) -> Self {
        Self {
            rule_id: q.rule_id.as_str(),
            open: q.open,
            in_review: q.in_review,
            confirmed: q.confirmed,
            dismissed: q.dismissed,
            precision: q
                .precision
                .map(|p| format!("{:.0}%", p * 100.0))
                .unwrap_or_else(|| "–".to_owned()),
        }
    }
}

/// The rules page.
#[derive(Template)]
#[template(path = "console/rules.html")]
pub struct RulesPage {
    /// The header.
    pub nav: Nav,
    /// Every rule.
    pub rules: Vec<RuleRow>,
    /// When the counts kept in the background were made; `None` when
    /// counted for this page.
    pub counted_at: Option<String>,
}

/// The names of the fields [`record_fields`] shows, in its order.
#[cfg(test)]
pub const FIELD_NAMES: &[&str] = &[
    "external_record_id",
    "hospital_id",
    "clinic_id",
    "procedure_country",
    "organ",
    "laterality",
    "procured_at",
    "transplanted_at",
    "cold_ischemia_minutes",
    "machine_perfusion",
    "abo_exception",
    "donor.type",
    "donor.relation",
    "donor.death_at",
    "donor.death_kind",
    "donor.fingerprint",
    "donor.nationality",
    "donor.residence",
    "donor.age",
    "donor.sex",
    "donor.abo",
    "donor.rh",
    "donor.hla",
    "recipient.fingerprint",
    "recipient.nationality",
    "recipient.residence",
    "recipient.age",
    "recipient.sex",
    "recipient.abo",
    "recipient.rh",
    "recipient.hla",
];

/// A record's fields: name, label, value.
pub fn record_fields(r: &Record) -> Vec<(&'static str, &'static str, String)> {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "–".to_owned());
    let (relation, death_at, death_kind) = match r.donor.kind {
        DonorKind::Living { relation } => (Some(relation.to_string()), None, None),
        DonorKind::Deceased {
            death_at,
            death_kind,
        } => (None, Some(when(&death_at)), Some(death_kind.to_string())),
    };
    let mut fields = vec![
        (
            "external_record_id",
            "Hospital's record id",
            r.external_record_id.clone(),
        ),
        ("hospital_id", "Hospital", r.hospital_id.clone()),
        ("clinic_id", "Clinic", r.clinic_id.clone()),
        (
            "procedure_country",
            "Procedure country",
            r.procedure_country.to_string(),
        ),
        ("organ", "Organ", r.organ.to_string()),
        ("laterality", "Laterality", r.laterality.to_string()),
        ("procured_at", "Procured", when(&r.procured_at)),
        ("transplanted_at", "Transplanted", when(&r.transplanted_at)),
        (
            "cold_ischemia_minutes",
            "Cold ischemia (reported, min)",
            opt(r.cold_ischemia_minutes.map(|m| m.to_string())),
        ),
        (
            "machine_perfusion",
            "Machine perfusion",
            if r.machine_perfusion { "yes" } else { "no" }.to_owned(),
        ),
        (
            "abo_exception",
            "ABO exception",
            r.abo_exception.to_string(),
        ),
        (
            "donor.type",
            "Donor type",
            r.donor.kind.donor_type().to_string(),
        ),
        ("donor.relation", "Donor relation", opt(relation)),
        ("donor.death_at", "Donor death", opt(death_at)),
        ("donor.death_kind", "Donor death kind", opt(death_kind)),
    ];
    fields.extend(person_fields("donor", &r.donor.person));
    fields.extend(person_fields("recipient", &r.recipient));
    fields
}

fn person_fields(
    who: &'static str,
    p: &Person<crate::domain::Fingerprint>,
) -> Vec<(&'static str, &'static str, String)> {
    let donor = who == "donor";
    let pick = |d: &'static str, r: &'static str| if donor { d } else { r };
    let hla = p
        .hla
        .as_ref()
        .map(|h| [h.a.join(" "), h.b.join(" "), h.dr.join(" ")].join(" · "))
        .unwrap_or_else(|| "–".to_owned());
    vec![
        (
            pick("donor.fingerprint", "recipient.fingerprint"),
            pick("Donor fingerprint", "Recipient fingerprint"),
            hex::encode(&p.identifier.as_bytes()[..8]),
        ),
        (
            pick("donor.nationality", "recipient.nationality"),
            pick("Donor nationality", "Recipient nationality"),
            p.nationality.to_string(),
        ),
        (
            pick("donor.residence", "recipient.residence"),
            pick("Donor residence", "Recipient residence"),
            p.country_of_residence.to_string(),
        ),
        (
            pick("donor.age", "recipient.age"),
            pick("Donor age", "Recipient age"),
            p.age_years.to_string(),
        ),
        (
            pick("donor.sex", "recipient.sex"),
            pick("Donor sex", "Recipient sex"),
            p.sex
                .map(|s| s.to_string())
                .unwrap_or_else(|| "–".to_owned()),
        ),
        (
            pick("donor.abo", "recipient.abo"),
            pick("Donor ABO", "Recipient ABO"),
            p.abo.to_string(),
        ),
        (
            pick("donor.rh", "recipient.rh"),
            pick("Donor Rh", "Recipient Rh"),
            p.rh.map(|s| s.to_string())
                .unwrap_or_else(|| "–".to_owned()),
        ),
        (
            pick("donor.hla", "recipient.hla"),
            pick("Donor HLA", "Recipient HLA"),
            hla,
        ),
    ]
}

/// The comparison of a flagged record and its evidence, fields the rule
/// reads marked.
pub fn comparison(
    record: &RecordView,
    evidence: &[RecordView],
    highlighted: &[&str],
) -> (Vec<Column>, Vec<FieldRow>) {
    let all: Vec<&RecordView> = std::iter::once(record).chain(evidence).collect();
    let columns = all
        .iter()
        .enumerate()
        .map(|(i, r)| Column {
            title: if i == 0 { "Flagged record" } else { "Evidence" },
            record_id: r.id.0,
            version: r.version,
        })
        .collect();
    let per_record: Vec<_> = all.iter().map(|r| record_fields(&r.record)).collect();
    let fields = per_record
        .first()
        .map(|first| {
            first
                .iter()
                .enumerate()
                .map(|(i, (name, label, _))| FieldRow {
                    label,
                    highlighted: highlighted.contains(name),
                    values: per_record.iter().map(|f| f[i].2.clone()).collect(),
                })
                .collect()
        })
        .unwrap_or_default();
    (columns, fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_hold_no_separator() {
        assert_eq!(path_segment("DE-BER_01.x~"), "DE-BER_01.x~");
        assert_eq!(path_segment("a/b?c#d e"), "a%2Fb%3Fc%23d%20e");
    }

    #[test]
    fn fields_are_named_as_listed() {
        let record = crate::rules::fixtures::deceased();
        let names: Vec<&str> = record_fields(&record).iter().map(|f| f.0).collect();
        assert_eq!(names, FIELD_NAMES);
    }
}
