//! The inbox's query parameters read as a flag filter, each bad one named,
//! and written back into links (the next page, the live feed).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{FlagFilter, FlagStatus, FlagView, HospitalId, Severity, Violations};
use crate::rules::RuleId;

/// The longest text filter read, in bytes: longer ones match nothing anyway.
const MAX_FILTER_LEN: usize = 200;

/// The inbox's query parameters, as typed (every one optional; empty means any).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct InboxQuery {
    /// OPEN, IN_REVIEW, CONFIRMED or DISMISSED.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// LOW, MEDIUM, HIGH or CRITICAL.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub min_severity: String,
    /// A rule id of the catalogue.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub rule_id: String,
    /// A clinic id.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub clinic_id: String,
    /// A hospital id (any spelling of its normal form).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hospital_id: String,
    /// A date (`YYYY-MM-DD`, from midnight UTC) or an RFC 3339 instant.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub raised_after: String,
    /// A date (`YYYY-MM-DD`, until midnight UTC) or an RFC 3339 instant.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub raised_before: String,
    /// The keyset page: flags with ids below this one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub before: String,
    /// The live feed's starting cursor (the inbox's, when first opened).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub after: String,
}

/// An inbox query once read.
#[derive(Debug, Clone, Default)]
pub struct Inbox {
    /// The filter.
    pub filter: FlagFilter,
    /// The page: ids below this.
    pub before: Option<i64>,
}

impl InboxQuery {
    /// The filter and page it asks for, or every parameter that is not one.
    pub fn read(&self) -> Result<Inbox, Violations> {
        let mut v = Violations::default();
        let text = |v: &mut Violations, field: &str, raw: &str| -> Option<String> {
            let raw = raw.trim();
            if raw.len() > MAX_FILTER_LEN {
                v.add(field, format!("must be at most {MAX_FILTER_LEN} bytes"));
                return None;
            }
            v.check_storable(field, raw);
            (!raw.is_empty()).then(|| raw.to_owned())
        };
        let status = text(&mut v, "status", &self.status)
            .and_then(|s| v.check("status", s.parse::<FlagStatus>()));
        let min_severity = text(&mut v, "min_severity", &self.min_severity)
            .and_then(|s| v.check("min_severity", s.parse::<Severity>()));
        let rule_id = text(&mut v, "rule_id", &self.rule_id)
            .and_then(|s| v.check("rule_id", s.parse::<RuleId>()))
            .map(|r| r.as_str().to_owned());
        let clinic_id = text(&mut v, "clinic_id", &self.clinic_id);
        let hospital_id = text(&mut v, "hospital_id", &self.hospital_id)
            .map(|h| HospitalId::normalize(&h).into_string())
            .filter(|h| !h.is_empty());
        let raised_after = text(&mut v, "raised_after", &self.raised_after)
            .and_then(|s| v.check("raised_after", instant(&s)));
        let raised_before = text(&mut v, "raised_before", &self.raised_before)
            .and_then(|s| v.check("raised_before", instant(&s)));
        let before = text(&mut v, "before", &self.before).and_then(|s| {
            v.check(
                "before",
                s.parse::<i64>()
                    .ok()
                    .filter(|id| *id > 0)
                    .ok_or("must be a flag id"),
            )
        });
        v.into_result(|| Inbox {
            filter: FlagFilter {
                status,
                min_severity,
                rule_id,
                clinic_id,
                hospital_id,
                raised_after,
                raised_before,
            },
            before,
        })
    }

    /// The query string of these filters, with `before` and `after` as given.
    pub fn with_page(&self, before: Option<i64>, after: Option<String>) -> String {
        let query = InboxQuery {
            before: before.map(|b| b.to_string()).unwrap_or_default(),
            after: after.unwrap_or_default(),
            ..self.clone()
        };
        serde_urlencoded::to_string(&query).unwrap_or_default()
    }
}

/// Whether a flag from the live feed belongs in an inbox filtered by
/// `filter` (the feed itself filters on severity, rule, clinic and hospital).
pub fn admits(filter: &FlagFilter, flag: &FlagView) -> bool {
    filter.status.is_none_or(|s| s == flag.status)
        && filter.raised_after.is_none_or(|t| flag.raised_at >= t)
        && filter.raised_before.is_none_or(|t| flag.raised_at < t)
}

/// A date (midnight UTC) or an RFC 3339 instant.
fn instant(text: &str) -> Result<DateTime<Utc>, &'static str> {
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return date
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc())
            .ok_or("is not a date");
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| "must be a date (YYYY-MM-DD) or an RFC 3339 instant")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_is_read_and_bad_ones_are_named() {
        let q = InboxQuery {
            status: "OPEN".into(),
            min_severity: "HIGH".into(),
            rule_id: "SAME_PERSON".into(),
            hospital_id: " h-de-001 ".into(),
            raised_after: "2026-01-02".into(),
            raised_before: "2026-02-01T00:00:00Z".into(),
            before: "40".into(),
            ..InboxQuery::default()
        };
        let inbox = q.read().unwrap();
        assert_eq!(inbox.filter.status, Some(FlagStatus::Open));
        assert_eq!(inbox.filter.hospital_id.as_deref(), Some("H-DE-001"));
        assert_eq!(inbox.before, Some(40));
        let bad = InboxQuery {
            status: "open\"><script>".into(),
            rule_id: "NOPE".into(),
            raised_after: "yesterday".into(),
            before: "-1".into(),
            clinic_id: "x".repeat(500),
            ..InboxQuery::default()
        };
        let fields: Vec<String> = bad
            .read()
            .unwrap_err()
            .0
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            ["status", "rule_id", "clinic_id", "raised_after", "before"]
        );
    }

    #[test]
    fn links_keep_the_filters() {
        let q = InboxQuery {
            clinic_id: "C 1&x".into(),
            ..InboxQuery::default()
        };
        assert_eq!(q.with_page(Some(9), None), "clinic_id=C+1%26x&before=9");
    }
}
