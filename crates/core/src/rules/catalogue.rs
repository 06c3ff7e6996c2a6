//! The fixed rule ids: part of the API, so their text never changes.

use std::fmt;
use std::str::FromStr;

use crate::domain::Severity;

macro_rules! rules {
    ($($variant:ident = $text:literal, $family:literal, $version:literal, $severity:ident;)+) => {
        /// A rule of the catalogue (design.md §5).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum RuleId {
            $(#[doc = $text] $variant),+
        }

        impl RuleId {
            /// Every rule, in catalogue order.
            pub const ALL: &'static [RuleId] = &[$(RuleId::$variant),+];

            /// The stable id, such as `ABO_INCOMPATIBLE`.
            pub const fn as_str(self) -> &'static str {
                match self { $(RuleId::$variant => $text),+ }
            }

            /// The family the rule belongs to.
            pub const fn family(self) -> &'static str {
                match self { $(RuleId::$variant => $family),+ }
            }

            /// The version of the rule's logic; bumped whenever its meaning changes.
            pub const fn version(self) -> i32 {
                match self { $(RuleId::$variant => $version),+ }
            }

            /// The severity used when configuration does not override it.
            pub const fn default_severity(self) -> Severity {
                match self { $(RuleId::$variant => Severity::$severity),+ }
            }
        }

        impl FromStr for RuleId {
            type Err = UnknownRule;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(RuleId::$variant),)+
                    _ => Err(UnknownRule(s.to_owned())),
                }
            }
        }
    };
}

rules! {
    AboIncompatible = "ABO_INCOMPATIBLE", "pairing", 1, High;
    IschemiaImplausible = "ISCHEMIA_IMPLAUSIBLE", "pairing", 1, Medium;
    LivingDonorOrgan = "LIVING_DONOR_ORGAN", "pairing", 1, Critical;
    MinorLivingDonor = "MINOR_LIVING_DONOR", "pairing", 1, High;
    SamePerson = "SAME_PERSON", "pairing", 1, High;
    DeathAfterProcurement = "DEATH_AFTER_PROCUREMENT", "pairing", 1, Critical;
    RelationGeneticallyImplausible = "RELATION_GENETICALLY_IMPLAUSIBLE", "pairing", 1, High;
    AnatomicalMaximum = "ANATOMICAL_MAXIMUM", "repeat_donor", 1, Critical;
    RepeatForeignLivingDonor = "REPEAT_FOREIGN_LIVING_DONOR", "repeat_donor", 1, High;
    DeceasedDonorInconsistent = "DECEASED_DONOR_INCONSISTENT", "repeat_donor", 1, High;
    ClinicUnregistered = "CLINIC_UNREGISTERED", "clinic", 1, High;
    ClinicNotLicensed = "CLINIC_NOT_LICENSED", "clinic", 1, High;
    ClinicLicenceInvalid = "CLINIC_LICENCE_INVALID", "clinic", 1, High;
    ClinicCountryMismatch = "CLINIC_COUNTRY_MISMATCH", "clinic", 1, Medium;
    ClinicNonResidentShare = "CLINIC_NON_RESIDENT_SHARE", "tourism", 1, Medium;
    TourismForeignPair = "TOURISM_FOREIGN_PAIR", "tourism", 1, High;
    ClinicForeignDonorSurge = "CLINIC_FOREIGN_DONOR_SURGE", "tourism", 1, High;
    DonorNationalityCluster = "DONOR_NATIONALITY_CLUSTER", "tourism", 1, High;
    CrossBorderRepeatLivingDonor = "CROSS_BORDER_REPEAT_LIVING_DONOR", "federation", 1, High;
}

/// Text that is not a rule id of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown rule id {0:?}")]
pub struct UnknownRule(pub String);

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for rule in RuleId::ALL {
            assert_eq!(rule.as_str().parse::<RuleId>().unwrap(), *rule);
            assert!(seen.insert(rule.as_str()));
        }
        assert_eq!(RuleId::ALL.len(), 19);
        assert!("NOPE".parse::<RuleId>().is_err());
    }
}
