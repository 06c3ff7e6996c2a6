//! Closed vocabularies of the domain, each with its stable text form.
//!
//! The text form (`KIDNEY`, `LIVING`) is what the database stores and what
//! rule explanations use; the proto enums carry a type prefix on top of it.

use std::fmt;
use std::str::FromStr;

/// Text that is not one of an enum's names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownVariant {
    /// The enum's name.
    pub kind: &'static str,
    /// The text that did not match.
    pub value: String,
}

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* #[doc = concat!("Written `", $text, "`.")] $variant),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable text form.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownVariant;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownVariant { kind: stringify!($name), value: s.to_owned() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum! {
    /// The transplanted organ, or the declared part of one.
    Organ {
        Kidney = "KIDNEY",
        Liver = "LIVER",
        LiverSegment = "LIVER_SEGMENT",
        Heart = "HEART",
        Lung = "LUNG",
        LungLobe = "LUNG_LOBE",
        Pancreas = "PANCREAS",
        Intestine = "INTESTINE",
    }
}

impl Organ {
    /// Paired organs must say which side (or both, en bloc) was transplanted.
    pub const fn is_paired(self) -> bool {
        matches!(self, Organ::Kidney | Organ::Lung)
    }
}

text_enum! {
    /// Which side of a paired organ; `Both` is an en-bloc kidney pair or a bilateral lung.
    Laterality {
        Left = "LEFT",
        Right = "RIGHT",
        Both = "BOTH",
        NotApplicable = "NOT_APPLICABLE",
    }
}

text_enum! {
    /// Whether the donor was alive when the organ was procured.
    DonorType {
        Living = "LIVING",
        Deceased = "DECEASED",
    }
}

text_enum! {
    /// A living donor's declared relation to the recipient.
    DonorRelation {
        Spouse = "SPOUSE",
        Parent = "PARENT",
        Child = "CHILD",
        Sibling = "SIBLING",
        OtherRelative = "OTHER_RELATIVE",
        EmotionallyRelated = "EMOTIONALLY_RELATED",
        UnrelatedDirected = "UNRELATED_DIRECTED",
        AltruisticNonDirected = "ALTRUISTIC_NON_DIRECTED",
        PairedExchange = "PAIRED_EXCHANGE",
    }
}

text_enum! {
    /// How a deceased donor died: brain death or circulatory death.
    DeathKind {
        Dbd = "DBD",
        Dcd = "DCD",
    }
}

text_enum! {
    /// ABO blood group.
    AboGroup {
        O = "O",
        A = "A",
        B = "B",
        Ab = "AB",
    }
}

impl AboGroup {
    /// Whether red cells of `self` can be given to `recipient` without an ABO barrier.
    pub const fn can_donate_to(self, recipient: AboGroup) -> bool {
        matches!(
            (self, recipient),
            (AboGroup::O, _)
                | (AboGroup::A, AboGroup::A | AboGroup::Ab)
                | (AboGroup::B, AboGroup::B | AboGroup::Ab)
                | (AboGroup::Ab, AboGroup::Ab)
        )
    }
}

text_enum! {
    /// Rhesus D factor.
    RhFactor {
        Positive = "POSITIVE",
        Negative = "NEGATIVE",
    }
}

text_enum! {
    /// Sex as recorded by the hospital.
    Sex {
        Female = "FEMALE",
        Male = "MALE",
        Other = "OTHER",
    }
}

text_enum! {
    /// Why an ABO-incompatible transplant is intended.
    AboException {
        None = "NONE",
        DesensitisationProtocol = "DESENSITISATION_PROTOCOL",
        A2SubtypeDonor = "A2_SUBTYPE_DONOR",
        InfantHeart = "INFANT_HEART",
    }
}

text_enum! {
    /// The kind of document a person identifier comes from.
    IdentifierScheme {
        NationalId = "NATIONAL_ID",
        Passport = "PASSPORT",
        DonorRegistryId = "DONOR_REGISTRY_ID",
    }
}

text_enum! {
    /// How serious a flag is; ordered from least to most serious.
    Severity {
        Low = "LOW",
        Medium = "MEDIUM",
        High = "HIGH",
        Critical = "CRITICAL",
    }
}

text_enum! {
    /// Where a flag stands in triage.
    FlagStatus {
        Open = "OPEN",
        InReview = "IN_REVIEW",
        Confirmed = "CONFIRMED",
        Dismissed = "DISMISSED",
    }
}

impl FlagStatus {
    /// Whether triage may move a flag from `self` to `to`.
    ///
    /// OPEN → IN_REVIEW → CONFIRMED | DISMISSED; a closed or in-review case may
    /// be reopened.
    pub const fn can_move_to(self, to: FlagStatus) -> bool {
        matches!(
            (self, to),
            (FlagStatus::Open, FlagStatus::InReview)
                | (
                    FlagStatus::InReview,
                    FlagStatus::Confirmed | FlagStatus::Dismissed | FlagStatus::Open
                )
                | (
                    FlagStatus::Confirmed | FlagStatus::Dismissed,
                    FlagStatus::Open
                )
        )
    }

    /// Whether moving to this status closes the case and so needs a note.
    pub const fn needs_note(self) -> bool {
        matches!(self, FlagStatus::Confirmed | FlagStatus::Dismissed)
    }
}

text_enum! {
    /// Where an investigation case stands.
    CaseStatus {
        Open = "OPEN",
        Investigating = "INVESTIGATING",
        Referred = "REFERRED",
        Closed = "CLOSED",
    }
}

impl CaseStatus {
    /// Whether a case may move from `self` to `to`: OPEN → INVESTIGATING →
    /// REFERRED | CLOSED, and a referred or closed case back to
    /// INVESTIGATING.
    pub const fn can_move_to(self, to: CaseStatus) -> bool {
        matches!(
            (self, to),
            (CaseStatus::Open, CaseStatus::Investigating)
                | (
                    CaseStatus::Investigating,
                    CaseStatus::Referred | CaseStatus::Closed
                )
                | (
                    CaseStatus::Referred | CaseStatus::Closed,
                    CaseStatus::Investigating
                )
        )
    }
}

text_enum! {
    /// What one event in a case's life did.
    CaseEventKind {
        /// The case was opened, with its title and summary (the first event).
        Opened = "OPENED",
        /// A flag joined the case.
        FlagAdded = "FLAG_ADDED",
        /// A flag left the case.
        FlagRemoved = "FLAG_REMOVED",
        /// The case was given to a principal.
        Assigned = "ASSIGNED",
        /// The case moved from one status to another.
        StatusChanged = "STATUS_CHANGED",
        /// A note was added.
        Noted = "NOTED",
    }
}

text_enum! {
    /// What one step in a flag's life did.
    StepKind {
        /// A rule raised the flag: what it found (the first step, always).
        Raised = "RAISED",
        /// Triage moved the flag from one status to another.
        Transition = "TRANSITION",
        /// An auditor proposed dismissing a CRITICAL flag; another must approve.
        DismissalProposed = "DISMISSAL_PROPOSED",
        /// An amendment of the record still raises the flag, with this finding.
        Reevaluated = "REEVALUATED",
        /// An amendment of the record no longer raises the flag.
        Cleared = "CLEARED",
    }
}

text_enum! {
    /// A registered clinic's standing; SUSPENDED and REVOKED apply from their effective date.
    ClinicStatus {
        Active = "ACTIVE",
        Suspended = "SUSPENDED",
        Revoked = "REVOKED",
    }
}

text_enum! {
    /// What an API key may do: submit for one hospital, audit, or administer.
    Role {
        Hospital = "HOSPITAL",
        Auditor = "AUDITOR",
        Admin = "ADMIN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        for organ in Organ::ALL {
            assert_eq!(organ.as_str().parse::<Organ>().unwrap(), *organ);
        }
        for rel in DonorRelation::ALL {
            assert_eq!(rel.to_string().parse::<DonorRelation>().unwrap(), *rel);
        }
        assert!("kidney".parse::<Organ>().is_err());
    }

    #[test]
    fn abo_compatibility_follows_red_cell_rules() {
        use AboGroup::*;
        let ok = [
            (O, O),
            (O, A),
            (O, B),
            (O, Ab),
            (A, A),
            (A, Ab),
            (B, B),
            (B, Ab),
            (Ab, Ab),
        ];
        for d in AboGroup::ALL {
            for r in AboGroup::ALL {
                assert_eq!(d.can_donate_to(*r), ok.contains(&(*d, *r)), "{d}->{r}");
            }
        }
    }

    #[test]
    fn triage_transitions() {
        use FlagStatus::*;
        assert!(Open.can_move_to(InReview));
        assert!(!Open.can_move_to(Confirmed));
        assert!(!Open.can_move_to(Dismissed));
        assert!(InReview.can_move_to(Confirmed));
        assert!(InReview.can_move_to(Dismissed));
        assert!(Confirmed.can_move_to(Open));
        assert!(Dismissed.can_move_to(Open));
        assert!(!Confirmed.can_move_to(Dismissed));
        assert!(!Open.can_move_to(Open));
        assert!(Severity::Critical > Severity::High && Severity::Medium > Severity::Low);
    }
}
