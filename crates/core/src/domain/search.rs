//! What auditors search records and the access log by, and what comes
//! back besides the records: flag summaries and access-log entries.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use super::{CountryCode, DonorType, Fingerprint, FlagStatus, Organ, Severity};

/// Filters of a record search; `None` means any. Every filter given must match.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RecordFilter {
    /// Only this donor's records.
    pub donor: Option<Fingerprint>,
    /// Only this recipient's records.
    pub recipient: Option<Fingerprint>,
    /// Only this clinic's.
    pub clinic_id: Option<String>,
    /// Only this hospital's (normal form).
    pub hospital_id: Option<String>,
    /// Only transplants in this country.
    pub procedure_country: Option<CountryCode>,
    /// Only this organ.
    pub organ: Option<Organ>,
    /// Only this kind of donor.
    pub donor_type: Option<DonorType>,
    /// Only donors of this nationality.
    pub donor_nationality: Option<CountryCode>,
    /// Only records whose donor is (not) resident in the procedure's country.
    pub non_resident_donor: Option<bool>,
    /// Only records whose recipient is (not) resident there.
    pub non_resident_recipient: Option<bool>,
    /// Transplanted at or after.
    pub transplanted_after: Option<DateTime<Utc>>,
    /// Transplanted before.
    pub transplanted_before: Option<DateTime<Utc>>,
    /// Only records with (without) a flag OPEN or IN_REVIEW.
    pub has_open_flags: Option<bool>,
}

impl fmt::Debug for RecordFilter {
    /// One canonical line: page tokens are bound to it and the access log
    /// names it. Fingerprints in full hex, as auditors give them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        let mut put = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                parts.push(format!("{name}={value:?}"));
            }
        };
        put("donor", self.donor.map(|d| hex::encode(d.as_bytes())));
        put(
            "recipient",
            self.recipient.map(|r| hex::encode(r.as_bytes())),
        );
        put("clinic_id", self.clinic_id.clone());
        put("hospital_id", self.hospital_id.clone());
        put(
            "procedure_country",
            self.procedure_country.map(|c| c.to_string()),
        );
        put("organ", self.organ.map(|o| o.as_str().to_owned()));
        put("donor_type", self.donor_type.map(|d| d.as_str().to_owned()));
        put(
            "donor_nationality",
            self.donor_nationality.map(|c| c.to_string()),
        );
        put(
            "non_resident_donor",
            self.non_resident_donor.map(|b| b.to_string()),
        );
        put(
            "non_resident_recipient",
            self.non_resident_recipient.map(|b| b.to_string()),
        );
        put(
            "transplanted_after",
            self.transplanted_after.map(|t| t.to_rfc3339()),
        );
        put(
            "transplanted_before",
            self.transplanted_before.map(|t| t.to_rfc3339()),
        );
        put("has_open_flags", self.has_open_flags.map(|b| b.to_string()));
        f.write_str(&parts.join(" "))
    }
}

/// Where a page of records newest transplant first stopped: the last
/// record's transplant instant (microseconds) and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordCursor {
    /// The last record's transplant instant.
    pub transplanted_at: DateTime<Utc>,
    /// The last record's id.
    pub id: i64,
}

impl fmt::Display for RecordCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transplanted_at.timestamp_micros(), self.id)
    }
}

/// The text is not a cursor a record listing wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("is not a position a record listing issued")]
pub struct BadCursor;

impl FromStr for RecordCursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (at, id) = s.split_once(':').ok_or(BadCursor)?;
        let micros: i64 = at.parse().map_err(|_| BadCursor)?;
        Ok(RecordCursor {
            transplanted_at: DateTime::from_timestamp_micros(micros).ok_or(BadCursor)?,
            id: id.parse().map_err(|_| BadCursor)?,
        })
    }
}

/// A flag in brief.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagSummary {
    /// The flag's id.
    pub id: i64,
    /// The record it is on.
    pub record_id: i64,
    /// The rule that raised it.
    pub rule_id: String,
    /// How serious.
    pub severity: Severity,
    /// Where it stands in triage.
    pub status: FlagStatus,
}

impl FlagSummary {
    /// Still to be decided: OPEN or IN_REVIEW.
    pub fn is_open(&self) -> bool {
        matches!(self.status, FlagStatus::Open | FlagStatus::InReview)
    }
}

/// Filters of the access log; `None` means any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessFilter {
    /// Only this principal's reads.
    pub principal: Option<String>,
    /// Only reads through this key.
    pub key_id: Option<String>,
    /// Only this call's.
    pub action: Option<String>,
    /// Only this kind of resource.
    pub resource: Option<String>,
    /// Only this resource.
    pub resource_id: Option<String>,
    /// At or after.
    pub after: Option<DateTime<Utc>>,
    /// Before.
    pub before: Option<DateTime<Utc>>,
}

/// One read of evidence, as the access log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEntry {
    /// The entry's id.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// The person or system behind the key.
    pub principal: String,
    /// The key used.
    pub key_id: String,
    /// The call.
    pub action: String,
    /// What kind of thing was read.
    pub resource: String,
    /// Which.
    pub resource_id: String,
    /// The caller's trace id.
    pub trace_id: Option<String>,
    /// The service's id of the call.
    pub own_trace_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_junk() {
        let c = RecordCursor {
            transplanted_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: 42,
        };
        assert_eq!(c.to_string().parse::<RecordCursor>(), Ok(c));
        for junk in ["", "1", "x:1", "1:x", "1:", ":1", "99999999999999999999:1"] {
            assert_eq!(junk.parse::<RecordCursor>(), Err(BadCursor), "{junk}");
        }
    }

    #[test]
    fn a_filter_renders_only_what_it_sets() {
        assert_eq!(format!("{:?}", RecordFilter::default()), "");
        let f = RecordFilter {
            clinic_id: Some("C 1".into()),
            has_open_flags: Some(false),
            ..RecordFilter::default()
        };
        assert_eq!(
            format!("{f:?}"),
            "clinic_id=\"C 1\" has_open_flags=\"false\""
        );
    }
}
