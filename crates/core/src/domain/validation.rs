//! Field-level validation errors and the cross-field checks of a record.
//!
//! What cannot be a record is rejected here; what is possible but suspicious
//! is left to the rules.

use std::fmt;

use chrono::{DateTime, Utc};

use super::{Laterality, Organ};

/// One bad field: its path in the request (`donor.age_years`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Dotted path of the field, as in the proto.
    pub field: String,
    /// What is wrong, in words a hospital's integrator can act on.
    pub description: String,
}

/// A field's dotted path in a request (`record.donor.age_years`), spelled
/// out only when a violation names it: a valid record names none, and its
/// dozens of paths would otherwise cost an allocation each.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    parent: Option<&'a Field<'a>>,
    name: &'a str,
}

impl<'a> Field<'a> {
    /// A path of one name.
    pub fn root(name: &'a str) -> Self {
        Self { parent: None, name }
    }

    /// The path of `name` inside this field.
    pub fn child(&'a self, name: &'a str) -> Field<'a> {
        Field {
            parent: Some(self),
            name,
        }
    }
}

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(parent) = self.parent {
            write!(f, "{parent}.")?;
        }
        f.write_str(self.name)
    }
}

/// Every violation found in one request, collected rather than stopping at the first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations(pub Vec<FieldViolation>);

impl Violations {
    /// Records that `field` is bad.
    pub fn add(&mut self, field: impl fmt::Display, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.to_string(),
            description: description.into(),
        });
    }

    /// Unwraps a parse result, recording its error under `field`.
    pub fn check<T, E: fmt::Display>(
        &mut self,
        field: impl fmt::Display,
        r: Result<T, E>,
    ) -> Option<T> {
        r.map_err(|e| self.add(field, e.to_string())).ok()
    }

    /// Refuses the NUL character, which Postgres text cannot hold; free text
    /// (reasons, notes, descriptions, filters) may otherwise hold anything.
    pub fn check_storable(&mut self, field: impl fmt::Display, text: &str) {
        if text.contains('\0') {
            self.add(field, "must not contain the NUL character");
        }
    }

    /// Records a missing required field.
    pub fn missing(&mut self, field: impl fmt::Display) {
        self.add(field, "is required");
    }

    /// True when nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when nothing is wrong, the collected violations otherwise.
    pub fn into_result<T>(self, value: impl FnOnce() -> T) -> Result<T, Violations> {
        if self.is_empty() {
            Ok(value())
        } else {
            Err(self)
        }
    }
}

/// Clock skew tolerated for "in the future", since hospital clocks drift.
pub const FUTURE_TOLERANCE: chrono::Duration = chrono::Duration::minutes(5);

/// The oldest instant accepted: registries hold data back to the first transplants.
pub fn earliest_instant() -> DateTime<Utc> {
    DateTime::from_timestamp(-2_208_988_800, 0).unwrap_or(DateTime::<Utc>::MIN_UTC) // 1900-01-01
}

/// Checks an instant against the plausible range (1900 to now plus skew).
pub fn check_instant(
    v: &mut Violations,
    field: impl fmt::Display,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) {
    if at > now + FUTURE_TOLERANCE {
        v.add(field, "must not be in the future");
    } else if at < earliest_instant() {
        v.add(field, "must not be before 1900-01-01");
    }
}

/// Procurement must come before (or at) transplantation.
pub fn check_order(
    v: &mut Violations,
    field: impl fmt::Display,
    procured_at: DateTime<Utc>,
    transplanted_at: DateTime<Utc>,
) {
    if procured_at > transplanted_at {
        v.add(field, "must not be after transplanted_at");
    }
}

/// Paired organs must name a side; only paired organs may say BOTH.
pub fn check_laterality(
    v: &mut Violations,
    field: impl fmt::Display,
    organ: Organ,
    laterality: Option<Laterality>,
) {
    match (organ.is_paired(), laterality) {
        (true, None | Some(Laterality::NotApplicable)) => {
            v.add(field, format!("must be LEFT, RIGHT or BOTH for {organ}"))
        }
        (false, Some(Laterality::Both)) => v.add(
            field,
            format!("BOTH applies only to kidneys and lungs, not {organ}"),
        ),
        _ => {}
    }
}

/// The longest free-text ids accepted (external record, hospital and clinic ids).
pub const MAX_ID_LEN: usize = 128;

/// Checks a required id: present, at most [`MAX_ID_LEN`] bytes, printable, no surrounding spaces.
pub fn check_id(v: &mut Violations, field: impl fmt::Display, value: &str) -> Option<String> {
    if value.is_empty() {
        v.missing(field);
        return None;
    }
    if value.len() > MAX_ID_LEN {
        v.add(field, format!("must be at most {MAX_ID_LEN} bytes"));
        return None;
    }
    if value.trim() != value || value.chars().any(char::is_control) {
        v.add(
            field,
            "must not contain control characters or leading or trailing spaces",
        );
        return None;
    }
    Some(value.to_owned())
}

/// Checks an age in years against 0–120.
pub fn check_age(v: &mut Violations, field: impl fmt::Display, age: Option<i32>) -> Option<u8> {
    match age {
        None => {
            v.missing(field);
            None
        }
        Some(a @ 0..=120) => u8::try_from(a).ok(),
        Some(_) => {
            v.add(field, "must be between 0 and 120");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_field_path_is_spelled_out_only_when_a_violation_names_it() {
        let record = Field::root("records[3]");
        let donor = record.child("donor");
        let value = donor.child("identifier");
        let mut v = Violations::default();
        v.missing(value.child("value"));
        v.add(record, "is incomplete");
        let fields: Vec<&str> = v.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["records[3].donor.identifier.value", "records[3]"]);
    }

    #[test]
    fn times_out_of_order_or_in_the_future_are_violations() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut v = Violations::default();
        check_instant(
            &mut v,
            "transplanted_at",
            now + chrono::Duration::hours(1),
            now,
        );
        check_instant(
            &mut v,
            "procured_at",
            now + chrono::Duration::minutes(1),
            now,
        );
        check_instant(
            &mut v,
            "donor.death_at",
            Utc.with_ymd_and_hms(1800, 1, 1, 0, 0, 0).unwrap(),
            now,
        );
        check_order(
            &mut v,
            "procured_at",
            now,
            now - chrono::Duration::seconds(1),
        );
        let fields: Vec<_> = v.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["transplanted_at", "donor.death_at", "procured_at"]);
    }

    #[test]
    fn laterality_rules() {
        let mut v = Violations::default();
        check_laterality(&mut v, "laterality", Organ::Kidney, None);
        check_laterality(
            &mut v,
            "laterality",
            Organ::Lung,
            Some(Laterality::NotApplicable),
        );
        check_laterality(&mut v, "laterality", Organ::Heart, Some(Laterality::Both));
        check_laterality(&mut v, "laterality", Organ::Kidney, Some(Laterality::Both));
        check_laterality(&mut v, "laterality", Organ::Liver, None);
        assert_eq!(v.0.len(), 3);
    }

    #[test]
    fn ids_and_ages() {
        let mut v = Violations::default();
        assert_eq!(
            check_id(&mut v, "clinic_id", "DE-BER-01").as_deref(),
            Some("DE-BER-01")
        );
        assert!(check_id(&mut v, "clinic_id", "").is_none());
        assert!(check_id(&mut v, "clinic_id", " x").is_none());
        assert!(check_id(&mut v, "clinic_id", &"x".repeat(129)).is_none());
        assert!(check_id(&mut v, "clinic_id", "a\u{0}b").is_none());
        assert_eq!(check_age(&mut v, "donor.age_years", Some(120)), Some(120));
        assert_eq!(check_age(&mut v, "donor.age_years", Some(0)), Some(0));
        assert!(check_age(&mut v, "donor.age_years", Some(121)).is_none());
        assert!(check_age(&mut v, "donor.age_years", Some(-1)).is_none());
        assert!(check_age(&mut v, "donor.age_years", None).is_none());
        assert_eq!(v.0.len(), 7);
    }
}
