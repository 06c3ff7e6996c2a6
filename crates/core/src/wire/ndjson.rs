//! One NDJSON line as a record: the field names of design.md §4 (the proto's),
//! enum values without their prefix (`KIDNEY`, `LIVING`), instants in
//! RFC 3339. The result goes through the same conversion and validation as
//! a `SubmitRecord` call; what only JSON can get wrong (a number where text
//! belongs, an enum name the proto lacks) is named here, by the same paths.

use chrono::DateTime;
use serde_json::{Map, Value};

use crate::domain::Violations;
use crate::wire::pb;

/// The field path records are named under, as in `SubmitRecordRequest`.
pub const PREFIX: &str = "record";

/// Reads one line. The record is returned whatever was wrong, with what was
/// wrong: fields that could not be read are left unset, and their
/// violations take the place of the "is required" validation would add.
pub fn parse_line(line: &[u8]) -> (pb::TransplantRecord, Violations) {
    let mut v = Violations::default();
    let object = match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(object)) => object,
        Ok(_) => {
            v.add(PREFIX, "must be a JSON object");
            return (pb::TransplantRecord::default(), v);
        }
        // serde_json's messages give a position, never the text.
        Err(e) => {
            v.add(PREFIX, format!("is not JSON: {e}"));
            return (pb::TransplantRecord::default(), v);
        }
    };
    let mut r = Fields::new(&object, PREFIX.to_owned(), &mut v);
    let record = pb::TransplantRecord {
        external_record_id: r.text("external_record_id"),
        hospital_id: r.text("hospital_id"),
        clinic_id: r.text("clinic_id"),
        procedure_country: r.text("procedure_country"),
        organ: r.enumeration("organ", "ORGAN", |s| {
            pb::Organ::from_str_name(s).map(|e| e as i32)
        }),
        laterality: r.enumeration("laterality", "LATERALITY", |s| {
            pb::Laterality::from_str_name(s).map(|e| e as i32)
        }),
        procured_at: r.instant("procured_at"),
        transplanted_at: r.instant("transplanted_at"),
        cold_ischemia_minutes: r.int("cold_ischemia_minutes"),
        machine_perfusion: r.boolean("machine_perfusion"),
        donor: r.object("donor", |d| pb::Donor {
            identifier: d.object("identifier", identifier),
            nationality: d.text("nationality"),
            country_of_residence: d.text("country_of_residence"),
            age_years: d.int("age_years"),
            sex: sex(d),
            abo: abo(d),
            rh: rh(d),
            hla: d.object("hla", hla),
            donor_type: d.enumeration("donor_type", "DONOR_TYPE", |s| {
                pb::DonorType::from_str_name(s).map(|e| e as i32)
            }),
            relation_to_recipient: d.enumeration("relation_to_recipient", "DONOR_RELATION", |s| {
                pb::DonorRelation::from_str_name(s).map(|e| e as i32)
            }),
            death_at: d.instant("death_at"),
            death_kind: d.enumeration("death_kind", "DEATH_KIND", |s| {
                pb::DeathKind::from_str_name(s).map(|e| e as i32)
            }),
        }),
        recipient: r.object("recipient", |p| pb::Recipient {
            identifier: p.object("identifier", identifier),
            nationality: p.text("nationality"),
            country_of_residence: p.text("country_of_residence"),
            age_years: p.int("age_years"),
            sex: sex(p),
            abo: abo(p),
            rh: rh(p),
            hla: p.object("hla", hla),
        }),
        abo_exception: r.enumeration("abo_exception", "ABO_EXCEPTION", |s| {
            pb::AboException::from_str_name(s).map(|e| e as i32)
        }),
    };
    (record, v)
}

fn identifier(f: &mut Fields<'_>) -> pb::PersonIdentifier {
    pb::PersonIdentifier {
        scheme: f.enumeration("scheme", "IDENTIFIER_SCHEME", |s| {
            pb::IdentifierScheme::from_str_name(s).map(|e| e as i32)
        }),
        issuing_country: f.text("issuing_country"),
        value: f.text("value"),
    }
}

fn hla(f: &mut Fields<'_>) -> pb::HlaTyping {
    pb::HlaTyping {
        a: f.texts("a"),
        b: f.texts("b"),
        dr: f.texts("dr"),
    }
}

fn sex(f: &mut Fields<'_>) -> i32 {
    f.enumeration("sex", "SEX", |s| {
        pb::Sex::from_str_name(s).map(|e| e as i32)
    })
}

fn abo(f: &mut Fields<'_>) -> i32 {
    f.enumeration("abo", "ABO_GROUP", |s| {
        pb::AboGroup::from_str_name(s).map(|e| e as i32)
    })
}

fn rh(f: &mut Fields<'_>) -> i32 {
    f.enumeration("rh", "RH_FACTOR", |s| {
        pb::RhFactor::from_str_name(s).map(|e| e as i32)
    })
}

/// The fields of one JSON object, read into proto values; a field of the
/// wrong JSON type is a violation and reads as unset.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    path: String,
    violations: &'a mut Violations,
}

impl<'a> Fields<'a> {
    fn new(object: &'a Map<String, Value>, path: String, violations: &'a mut Violations) -> Self {
        Self {
            object,
            path,
            violations,
        }
    }

    fn field(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    /// The value of `key`, unless absent or null.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.object.get(key).filter(|v| !v.is_null())
    }

    fn wrong(&mut self, key: &str, expected: &str) {
        let field = self.field(key);
        self.violations.add(field, format!("must be {expected}"));
    }

    fn text(&mut self, key: &str) -> String {
        match self.get(key) {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                self.wrong(key, "a string");
                String::new()
            }
        }
    }

    fn texts(&mut self, key: &str) -> Vec<String> {
        let Some(value) = self.get(key) else {
            return Vec::new();
        };
        let items = value.as_array().and_then(|items| {
            items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
        });
        items.unwrap_or_else(|| {
            self.wrong(key, "an array of strings");
            Vec::new()
        })
    }

    fn int(&mut self, key: &str) -> Option<i32> {
        let value = self.get(key)?;
        let int = value.as_i64().and_then(|i| i32::try_from(i).ok());
        if int.is_none() {
            self.wrong(key, "a whole number");
        }
        int
    }

    fn boolean(&mut self, key: &str) -> bool {
        match self.get(key) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.wrong(key, "true or false");
                false
            }
        }
    }

    fn instant(&mut self, key: &str) -> Option<prost_types::Timestamp> {
        let value = self.get(key)?;
        let at = value
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok());
        match at {
            Some(at) => Some(prost_types::Timestamp {
                seconds: at.timestamp(),
                nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
            }),
            None => {
                self.wrong(key, "an RFC 3339 instant such as 2025-03-03T10:00:00Z");
                None
            }
        }
    }

    /// An enum written without its prefix; unset when absent (validation
    /// then decides whether it was required).
    fn enumeration(&mut self, key: &str, prefix: &str, parse: fn(&str) -> Option<i32>) -> i32 {
        let Some(value) = self.get(key) else {
            return 0;
        };
        let number = value
            .as_str()
            .filter(|name| !name.is_empty())
            .and_then(|name| parse(&format!("{prefix}_{name}")))
            .filter(|n| *n != 0);
        number.unwrap_or_else(|| {
            let field = self.field(key);
            self.violations
                .add(field, format!("is not a known value of {prefix}"));
            0
        })
    }

    /// A nested object, read by `read`.
    fn object<T>(&mut self, key: &str, read: impl FnOnce(&mut Fields<'_>) -> T) -> Option<T> {
        let value = self.get(key)?;
        match value.as_object() {
            Some(object) => {
                let path = self.field(key);
                Some(read(&mut Fields::new(object, path, self.violations)))
            }
            None => {
                self.wrong(key, "an object");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"external_record_id":"R-1","hospital_id":"H-DE-001",
        "clinic_id":"DE-BER-01","procedure_country":"DE","organ":"KIDNEY","laterality":"LEFT",
        "procured_at":"2025-03-03T08:00:00Z","transplanted_at":"2025-03-03T10:00:00+00:00",
        "donor":{"identifier":{"scheme":"NATIONAL_ID","issuing_country":"DE","value":"L1"},
          "nationality":"DE","country_of_residence":"DE","age_years":45,"sex":"FEMALE",
          "abo":"A","rh":"POSITIVE","donor_type":"LIVING","relation_to_recipient":"SIBLING",
          "hla":{"a":["A1","A2"],"b":[],"dr":["DR4"]}},
        "recipient":{"identifier":{"scheme":"NATIONAL_ID","issuing_country":"DE","value":"L2"},
          "nationality":"DE","country_of_residence":"DE","age_years":44,"sex":"MALE",
          "abo":"A","rh":"POSITIVE"},
        "abo_exception":"NONE","machine_perfusion":false,"cold_ischemia_minutes":null}"#;

    fn fields(v: &Violations) -> Vec<&str> {
        v.0.iter().map(|f| f.field.as_str()).collect()
    }

    #[test]
    fn a_well_formed_line_reads_every_field() {
        let (record, v) = parse_line(GOOD.as_bytes());
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(record.organ, pb::Organ::Kidney as i32);
        assert_eq!(
            record.transplanted_at.as_ref().map(|t| t.seconds),
            Some(1_740_996_000)
        );
        let donor = record.donor.expect("donor");
        assert_eq!(
            donor.relation_to_recipient,
            pb::DonorRelation::Sibling as i32
        );
        assert_eq!(donor.hla.expect("hla").a, ["A1", "A2"]);
        assert_eq!(donor.identifier.expect("id").value, "L1");
        assert_eq!(record.cold_ischemia_minutes, None);
    }

    #[test]
    fn json_mistakes_are_named_by_their_field_paths() {
        let line = GOOD
            .replace(r#""organ":"KIDNEY""#, r#""organ":"KIDNY""#)
            .replace(r#""age_years":45"#, r#""age_years":"45""#)
            .replace(
                r#""procured_at":"2025-03-03T08:00:00Z""#,
                r#""procured_at":"yesterday""#,
            )
            .replace(
                r#""machine_perfusion":false"#,
                r#""machine_perfusion":"no""#,
            )
            .replace(r#""b":[]"#, r#""b":[7]"#)
            .replace(r#""clinic_id":"DE-BER-01""#, r#""clinic_id":12"#);
        let (_, v) = parse_line(line.as_bytes());
        let mut got = fields(&v);
        got.sort_unstable();
        assert_eq!(
            got,
            [
                "record.clinic_id",
                "record.donor.age_years",
                "record.donor.hla.b",
                "record.machine_perfusion",
                "record.organ",
                "record.procured_at",
            ]
        );
    }

    #[test]
    fn a_line_that_is_not_an_object_is_one_violation() {
        for line in ["", "not json", "[1,2]", "\"text\"", "{\"unterminated\": "] {
            let (_, v) = parse_line(line.as_bytes());
            assert_eq!(fields(&v), ["record"], "{line:?}");
        }
        let (_, v) = parse_line(&[0xff, 0xfe, b'{', b'}']);
        assert_eq!(fields(&v), ["record"], "invalid UTF-8");
    }
}
