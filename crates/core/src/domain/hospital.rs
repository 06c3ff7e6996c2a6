//! Hospital ids in one normal form.
//!
//! A hospital id binds a key to the records it may submit and, with mutual
//! TLS, to a client certificate. Compared in different forms (exactly in
//! one place, ignoring case in another) two spellings of one id could pass
//! one check and fail the other; every comparison goes through
//! [`HospitalId`] instead.

use std::fmt;

/// A hospital id in its normal form: surrounding whitespace removed and
/// ASCII letters upper-cased, so `H-DE-001`, `h-de-001` and ` H-De-001 `
/// name one hospital. Other characters are kept as they are: case folding
/// beyond ASCII depends on the language, and a certificate's DNS names are
/// ASCII.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HospitalId(String);

impl HospitalId {
    /// The normal form of `raw`, whatever it holds; [`check_hospital_id`]
    /// also checks it.
    ///
    /// [`check_hospital_id`]: super::validation::check_hospital_id
    pub fn normalize(raw: &str) -> Self {
        Self(raw.trim().to_ascii_uppercase())
    }

    /// Whether `raw` names this hospital.
    pub fn is(&self, raw: &str) -> bool {
        *self == Self::normalize(raw)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as owned text.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for HospitalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_and_surrounding_whitespace_do_not_make_another_hospital() {
        let id = HospitalId::normalize("H-DE-001");
        for spelling in ["h-de-001", " H-De-001", "H-DE-001\t", "\u{a0}h-DE-001 "] {
            assert_eq!(HospitalId::normalize(spelling), id, "{spelling:?}");
            assert!(id.is(spelling), "{spelling:?}");
        }
        for other in ["H-DE-002", "H-DE-0 01", "H_DE_001", "H-DE-001."] {
            assert!(!id.is(other), "{other:?}");
        }
        assert_eq!(id.as_str(), "H-DE-001");
        assert_eq!(
            HospitalId::normalize("ärzte-1").as_str(),
            "äRZTE-1",
            "only ASCII letters change case"
        );
    }
}
