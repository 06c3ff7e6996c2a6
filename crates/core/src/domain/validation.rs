//! Field-level validation errors and the cross-field checks of a record.
//!
//! What cannot be a record is rejected here; what is possible but suspicious
//! is left to the rules.

use std::fmt;

use chrono::{DateTime, Utc};

use super::{HospitalId, Laterality, Organ};

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

/// Format characters that reorder the text around them: the bidirectional
/// embeddings, overrides and isolates, and the directional marks. In a note
/// they make what an auditor reads differ from what was stored (a name shown
/// reversed, a sentence's end moved to its start).
const BIDI_CONTROLS: &[char] = &[
    '\u{061C}', // ARABIC LETTER MARK
    '\u{200E}', // LEFT-TO-RIGHT MARK
    '\u{200F}', // RIGHT-TO-LEFT MARK
    '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', // LRE, RLE, PDF, LRO, RLO
    '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', // LRI, RLI, FSI, PDI
];

/// Characters that draw nothing: a note of only these (and whitespace) says nothing.
const INVISIBLE: &[char] = &[
    '\u{00AD}', '\u{034F}', '\u{115F}', '\u{1160}', '\u{17B4}', '\u{17B5}', '\u{180E}', '\u{200B}',
    '\u{200C}', '\u{200D}', '\u{2060}', '\u{2061}', '\u{2062}', '\u{2063}', '\u{2064}', '\u{206A}',
    '\u{206B}', '\u{206C}', '\u{206D}', '\u{206E}', '\u{206F}', '\u{2800}', '\u{3164}', '\u{FEFF}',
    '\u{FFA0}',
];

/// Whether `c` may stand in a note: not a control character (line feeds and
/// tabs aside, which prose uses), not a line or paragraph separator (which
/// break lines as a carriage return does), not a bidirectional control.
fn allowed_in_note(c: char) -> bool {
    if c == '\n' || c == '\t' {
        return true;
    }
    !(c.is_control() || c == '\u{2028}' || c == '\u{2029}' || BIDI_CONTROLS.contains(&c))
}

/// Whether `c` shows something on screen.
fn is_visible(c: char) -> bool {
    !c.is_whitespace() && !c.is_control() && !INVISIBLE.contains(&c) && !BIDI_CONTROLS.contains(&c)
}

/// Checks free text that people write and other people read later (a
/// triage note, an amendment's reason): at most `max_bytes`, no control
/// characters but line feeds and tabs, no bidirectional controls
/// (U+202A–U+202E, U+2066–U+2069, the directional marks), and, when
/// `required`, some visible text rather than only whitespace or invisible
/// characters.
pub fn check_note(
    v: &mut Violations,
    field: impl fmt::Display,
    text: &str,
    max_bytes: usize,
    required: bool,
) {
    if text.len() > max_bytes {
        v.add(field, format!("must be at most {max_bytes} bytes"));
    } else if !text.chars().all(allowed_in_note) {
        v.add(
            field,
            "must not contain control characters (line feeds and tabs aside) or \
             bidirectional formatting characters",
        );
    } else if required && !text.chars().any(is_visible) {
        v.add(field, "is required: write some visible text");
    }
}

/// Checks a hospital id and returns it in its normal form ([`HospitalId`]):
/// present, at most [`MAX_ID_LEN`] bytes, printable.
pub fn check_hospital_id(
    v: &mut Violations,
    field: impl fmt::Display,
    value: &str,
) -> Option<HospitalId> {
    let id = HospitalId::normalize(value);
    check_id(v, field, id.as_str()).map(|_| id)
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

    /// The fields a note's check names, one per text.
    fn note_violations(texts: &[&str], required: bool) -> Vec<usize> {
        texts
            .iter()
            .enumerate()
            .filter_map(|(i, text)| {
                let mut v = Violations::default();
                check_note(&mut v, "note", text, 40, required);
                (!v.is_empty()).then_some(i)
            })
            .collect()
    }

    #[test]
    fn notes_refuse_controls_and_reordering_and_need_visible_text() {
        let fine = [
            "the hospital sent the consent papers",
            "two lines\nand a\ttab",
            "Ärztin bestätigt: كلية",
            "\u{200D}👩\u{200D}⚕️ emoji with joiners",
        ];
        assert!(note_violations(&fine, true).is_empty());
        let refused = [
            "a\u{0}b",
            "carriage\rreturn",
            "escape \u{1b}[2J",
            "delete \u{7f}",
            "c1 \u{85}",
            "line\u{2028}separator",
            "invoice \u{202E}fdp.exe",
            "\u{202A}embedded\u{202C}",
            "\u{202B}",
            "\u{202D}",
            "isolate \u{2066}x\u{2069}",
            "\u{2067}",
            "\u{2068}",
            "mark \u{200F}",
            "mark \u{200E}",
            "mark \u{061C}",
            &"x".repeat(41),
        ];
        assert_eq!(
            note_violations(&refused, false),
            (0..refused.len()).collect::<Vec<_>>(),
            "every one refused, required or not"
        );
        let blank = [
            "",
            "   ",
            "\n\t",
            "\u{200B}\u{FEFF}",
            " \u{00A0}\u{3000}\u{2800} ",
        ];
        assert_eq!(
            note_violations(&blank, true),
            (0..blank.len()).collect::<Vec<_>>()
        );
        assert!(
            note_violations(&blank, false).is_empty(),
            "optional notes may be blank"
        );
    }

    #[test]
    fn hospital_ids_are_checked_in_their_normal_form() {
        let mut v = Violations::default();
        for spelling in ["H-DE-001", "h-de-001", "  H-de-001\t"] {
            let id = check_hospital_id(&mut v, "hospital_id", spelling);
            assert_eq!(id.as_ref().map(HospitalId::as_str), Some("H-DE-001"));
        }
        assert!(v.is_empty(), "{v:?}");
        for bad in ["", "   ", "H\u{0}1", &"h".repeat(129)] {
            assert!(
                check_hospital_id(&mut v, "hospital_id", bad).is_none(),
                "{bad:?}"
            );
        }
        assert_eq!(v.0.len(), 4);
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
