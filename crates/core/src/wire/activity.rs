//! `GetClinicActivity` and `GetCountryActivity` on the wire: their requests
//! read as spans of months (each bad field named), their figures written as
//! the response messages.

use chrono::NaiveDate;

use crate::domain::activity::{Activity, ClinicActivity, CountryActivity, months_between};
use crate::domain::validation::check_id;
use crate::domain::{CountryCode, Violations};
use crate::rules::config::NonResidentShareConfig;

use super::convert::{ProtoEnum, country};
use super::pb;

/// The most months one `GetClinicActivity` call covers, both ends counted.
pub const MAX_MONTHS: usize = 36;

/// The years `GetCountryActivity` accepts.
pub const YEARS: std::ops::RangeInclusive<i32> = 1900..=2999;

/// A clinic and a span of months, from the first day of its first month
/// to the first day of its last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClinicSpan {
    /// The clinic.
    pub clinic_id: String,
    /// The first month.
    pub from: NaiveDate,
    /// The last month, included.
    pub until: NaiveDate,
}

/// A procedure country and a calendar year.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountryYear {
    /// The procedure country.
    pub country: CountryCode,
    /// The year.
    pub year: i32,
}

impl CountryYear {
    /// The first days of the year's first and last months.
    pub fn span(&self) -> (NaiveDate, NaiveDate) {
        // Every year in YEARS has a January and a December.
        let first = NaiveDate::from_ymd_opt(self.year, 1, 1).unwrap_or_default();
        let last = NaiveDate::from_ymd_opt(self.year, 12, 1).unwrap_or_default();
        (first, last)
    }
}

/// A month as `YYYY-MM`, read as its first day.
fn month(v: &mut Violations, field: &str, raw: &str) -> Option<NaiveDate> {
    if raw.is_empty() {
        v.missing(field);
        return None;
    }
    let parsed = raw
        .split_once('-')
        .filter(|(y, m)| y.len() == 4 && m.len() == 2)
        .and_then(|(y, m)| Some((y.parse::<i32>().ok()?, m.parse::<u32>().ok()?)))
        .and_then(|(y, m)| NaiveDate::from_ymd_opt(y, m, 1))
        .filter(|d| YEARS.contains(&chrono::Datelike::year(d)));
    if parsed.is_none() {
        v.add(
            field,
            "must be a month as YYYY-MM, such as 2025-03, from 1900 to 2999",
        );
    }
    parsed
}

/// The span a `GetClinicActivity` request asks for, or every field that is
/// not right: a missing or malformed clinic or month, the last month
/// before the first, more than [`MAX_MONTHS`] months.
pub fn clinic_span(req: &pb::GetClinicActivityRequest) -> Result<ClinicSpan, Violations> {
    let mut v = Violations::default();
    let clinic_id = check_id(&mut v, "clinic_id", &req.clinic_id);
    let from = month(&mut v, "from_month", &req.from_month);
    let until = month(&mut v, "until_month", &req.until_month);
    if let (Some(from), Some(until)) = (from, until) {
        if until < from {
            v.add("until_month", "must not be before from_month");
        } else if months_between(from, until).len() > MAX_MONTHS {
            v.add(
                "until_month",
                format!("the span may cover at most {MAX_MONTHS} months, both ends counted"),
            );
        }
    }
    match (clinic_id, from, until) {
        (Some(clinic_id), Some(from), Some(until)) if v.is_empty() => Ok(ClinicSpan {
            clinic_id,
            from,
            until,
        }),
        _ => Err(v),
    }
}

/// The country and year a `GetCountryActivity` request asks for, or every
/// field that is not right.
pub fn country_year(req: &pb::GetCountryActivityRequest) -> Result<CountryYear, Violations> {
    let mut v = Violations::default();
    let c = country(&mut v, "procedure_country", &req.procedure_country);
    if req.year == 0 {
        v.missing("year");
    } else if !YEARS.contains(&req.year) {
        v.add("year", "must be from 1900 to 2999");
    }
    match c {
        Some(country) if v.is_empty() => Ok(CountryYear {
            country,
            year: req.year,
        }),
        _ => Err(v),
    }
}

/// A month as `YYYY-MM`.
pub fn month_text(m: NaiveDate) -> String {
    m.format("%Y-%m").to_string()
}

/// The figures of a span as the wire writes them, next to the share rule's line.
pub fn figures_to_proto(a: &Activity, share: &NonResidentShareConfig) -> pb::ActivityFigures {
    let deceased = a.deceased_transplants();
    let ratio = a.non_resident_share();
    let mut nationalities: Vec<(CountryCode, i64)> = a
        .foreign_living_donor_nationalities
        .iter()
        .filter(|(_, n)| **n != 0)
        .map(|(c, n)| (*c, *n))
        .collect();
    // Most first; a tie by code, so the order is the same every time.
    nationalities.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    pb::ActivityFigures {
        transplants: a
            .transplants
            .iter()
            .filter(|(_, n)| **n != 0)
            .map(|((organ, donor_type), n)| pb::TransplantCount {
                organ: organ.to_proto(),
                donor_type: donor_type.to_proto(),
                count: *n,
            })
            .collect(),
        total_transplants: a.total_transplants(),
        deceased_donor_transplants: deceased,
        deceased_donor_transplants_to_non_residents: a.deceased_to_non_resident,
        non_resident_share: ratio,
        non_resident_share_limit: share.max_share,
        above_non_resident_share_limit: deceased >= i64::from(share.min_transplants)
            && ratio > share.max_share,
        living_unrelated_foreign_donor_transplants: a.living_unrelated_foreign_donor,
        foreign_living_donor_nationalities: nationalities
            .into_iter()
            .map(|(c, n)| pb::NationalityCount {
                nationality: c.as_str().to_owned(),
                count: n,
            })
            .collect(),
        flags_by_rule: a
            .flags_by_rule
            .iter()
            .filter(|(_, n)| **n != 0)
            .map(|(rule_id, n)| pb::RuleFlagCount {
                rule_id: rule_id.clone(),
                count: *n,
                cleared: a.flags_cleared_by_rule.get(rule_id).copied().unwrap_or(0),
            })
            .collect(),
        flags_by_status: a
            .flags_by_status
            .iter()
            .filter(|(_, n)| **n != 0)
            .map(|(status, n)| pb::StatusFlagCount {
                status: status.to_proto(),
                count: *n,
            })
            .collect(),
    }
}

fn months_to_proto(
    months: &[(NaiveDate, Activity)],
    share: &NonResidentShareConfig,
) -> Vec<pb::MonthActivity> {
    months
        .iter()
        .map(|(m, a)| pb::MonthActivity {
            month: month_text(*m),
            figures: Some(figures_to_proto(a, share)),
        })
        .collect()
}

/// A clinic's months as the `GetClinicActivity` answer.
pub fn clinic_to_proto(
    c: &ClinicActivity,
    share: &NonResidentShareConfig,
) -> pb::GetClinicActivityResponse {
    pb::GetClinicActivityResponse {
        clinic_id: c.clinic_id.clone(),
        months: months_to_proto(&c.months, share),
        total: Some(figures_to_proto(&c.total, share)),
    }
}

/// A country's year as the `GetCountryActivity` answer.
pub fn country_to_proto(
    year: &CountryYear,
    c: &CountryActivity,
    share: &NonResidentShareConfig,
) -> pb::GetCountryActivityResponse {
    pb::GetCountryActivityResponse {
        procedure_country: year.country.as_str().to_owned(),
        year: year.year,
        clinics: c
            .clinics
            .iter()
            .map(|clinic| pb::ClinicActivity {
                clinic_id: clinic.clinic_id.clone(),
                months: months_to_proto(&clinic.months, share),
                total: Some(figures_to_proto(&clinic.total, share)),
            })
            .collect(),
        total: Some(figures_to_proto(&c.total, share)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(from: &str, until: &str) -> Result<ClinicSpan, Violations> {
        clinic_span(&pb::GetClinicActivityRequest {
            clinic_id: "DE-BER-01".into(),
            from_month: from.into(),
            until_month: until.into(),
        })
    }

    fn fields(v: Violations) -> Vec<String> {
        v.0.into_iter().map(|f| f.field).collect()
    }

    #[test]
    fn a_span_of_months_is_read_from_its_ends() {
        let s = span("2024-12", "2025-11").unwrap();
        assert_eq!(s.from, NaiveDate::from_ymd_opt(2024, 12, 1).unwrap());
        assert_eq!(s.until, NaiveDate::from_ymd_opt(2025, 11, 1).unwrap());
        assert!(span("2025-01", "2027-12").is_ok(), "36 months");
    }

    #[test]
    fn a_bad_span_names_its_field() {
        assert_eq!(
            fields(span("2025-03", "2025-02").unwrap_err()),
            ["until_month"]
        );
        assert_eq!(
            fields(span("2025-01", "2028-01").unwrap_err()),
            ["until_month"]
        );
        for bad in [
            "2025-13",
            "2025-1",
            "25-01",
            "2025/01",
            "0999-01",
            "2025-01-01",
            " ",
        ] {
            assert_eq!(
                fields(span(bad, "2025-01").unwrap_err()),
                ["from_month"],
                "{bad:?}"
            );
        }
        assert_eq!(
            fields(span("", "").unwrap_err()),
            ["from_month", "until_month"]
        );
        let no_clinic = clinic_span(&pb::GetClinicActivityRequest {
            clinic_id: String::new(),
            from_month: "2025-01".into(),
            until_month: "2025-01".into(),
        });
        assert_eq!(fields(no_clinic.unwrap_err()), ["clinic_id"]);
    }

    #[test]
    fn a_country_year_needs_a_country_and_a_plausible_year() {
        let ok = country_year(&pb::GetCountryActivityRequest {
            procedure_country: "de".into(),
            year: 2025,
        })
        .unwrap();
        assert_eq!((ok.country.as_str(), ok.year), ("DE", 2025));
        let bad = country_year(&pb::GetCountryActivityRequest {
            procedure_country: "XX".into(),
            year: 20250,
        });
        assert_eq!(fields(bad.unwrap_err()), ["procedure_country", "year"]);
    }

    #[test]
    fn the_line_needs_enough_deceased_donor_transplants() {
        use crate::domain::activity::Counter;
        use crate::domain::{DonorType, Organ};
        let share = NonResidentShareConfig::default();
        let mut a = Activity::default();
        let deceased = Counter::Transplants {
            organ: Organ::Kidney,
            donor_type: DonorType::Deceased,
        };
        a.add(&deceased, 19);
        a.add(&Counter::DeceasedToNonResident, 2);
        assert!(!figures_to_proto(&a, &share).above_non_resident_share_limit);
        a.add(&deceased, 1);
        let f = figures_to_proto(&a, &share);
        assert!(f.above_non_resident_share_limit);
        assert_eq!(f.non_resident_share_limit, 0.05);
        assert_eq!(f.deceased_donor_transplants, 20);
    }
}
