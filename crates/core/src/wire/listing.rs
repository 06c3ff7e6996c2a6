//! Listing requests read as domain filters: page sizes (AIP-158) and the
//! filters of `ListFlags` and `WatchFlags`, each bad field named.

use crate::domain::{FlagFilter, HospitalId, Violations};
use crate::rules::RuleId;

use super::convert::{instant, optional};
use super::pb;

/// The page size when a request names none.
pub const DEFAULT_PAGE_SIZE: i64 = 50;

/// The largest page size served; larger requests get this many.
pub const MAX_PAGE_SIZE: i64 = 500;

/// The page size asked for, defaulted and capped.
pub fn page_size(raw: i32) -> Result<i64, Violations> {
    match i64::from(raw) {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => {
            let mut v = Violations::default();
            v.add("page_size", "must not be negative");
            Err(v)
        }
        n => Ok(n.min(MAX_PAGE_SIZE)),
    }
}

/// A text filter: empty means "any".
pub fn text(v: &mut Violations, field: &str, s: &str) -> Option<String> {
    v.check_storable(field, s);
    (!s.is_empty()).then(|| s.to_owned())
}

/// A hospital filter, in the normal form records are stored in; empty means "any".
fn hospital_filter(v: &mut Violations, raw: &str) -> Option<String> {
    text(v, "hospital_id", raw)
        .map(|h| HospitalId::normalize(&h).into_string())
        .filter(|h| !h.is_empty())
}

/// A rule id filter, checked against the catalogue.
fn rule_filter(v: &mut Violations, raw: &str) -> Option<String> {
    let rule_id = text(v, "rule_id", raw);
    if let Some(rule) = &rule_id {
        v.check("rule_id", rule.parse::<RuleId>());
    }
    rule_id
}

/// The filters of a `ListFlags` request, or every field that is not one.
pub fn flag_filter(req: &pb::ListFlagsRequest) -> Result<FlagFilter, Violations> {
    let mut v = Violations::default();
    let rule_id = rule_filter(&mut v, &req.rule_id);
    let filter = FlagFilter {
        status: optional(&mut v, "status", req.status),
        min_severity: optional(&mut v, "min_severity", req.min_severity),
        rule_id,
        clinic_id: text(&mut v, "clinic_id", &req.clinic_id),
        hospital_id: hospital_filter(&mut v, &req.hospital_id),
        raised_after: instant(&mut v, "raised_after", req.raised_after.as_ref()),
        raised_before: instant(&mut v, "raised_before", req.raised_before.as_ref()),
    };
    v.into_result(|| filter)
}

/// The filters of a `WatchFlags` request (a live feed has no status or
/// time range), its bad fields added to `v`.
pub fn watch_filter(v: &mut Violations, req: &pb::WatchFlagsRequest) -> FlagFilter {
    FlagFilter {
        min_severity: optional(v, "min_severity", req.min_severity),
        rule_id: rule_filter(v, &req.rule_id),
        clinic_id: text(v, "clinic_id", &req.clinic_id),
        hospital_id: hospital_filter(v, &req.hospital_id),
        ..FlagFilter::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0).unwrap(), 50);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(page_size(10_000).unwrap(), 500);
        assert_eq!(page_size(i32::MAX).unwrap(), 500);
        assert_eq!(page_size(-1).unwrap_err().0[0].field, "page_size");
    }

    #[test]
    fn a_hospital_filter_is_read_in_the_normal_form() {
        let request = |hospital_id: &str| pb::ListFlagsRequest {
            hospital_id: hospital_id.into(),
            ..Default::default()
        };
        let filter = |raw: &str| flag_filter(&request(raw)).unwrap().hospital_id;
        assert_eq!(filter(" h-de-001 ").as_deref(), Some("H-DE-001"));
        assert_eq!(filter("  "), None, "blank means any");
        assert_eq!(filter(""), None);
    }
}
