//! Which of a record's fields make each rule's finding: the case page
//! highlights them in the record and its evidence.

use crate::rules::RuleId;

/// The fields (as [`super::views::record_fields`] names them) that rule
/// `rule_id` reads; none for a rule this build does not know.
pub fn fields_of(rule_id: &str) -> &'static [&'static str] {
    use RuleId::*;
    let Ok(rule) = rule_id.parse::<RuleId>() else {
        return &[];
    };
    match rule {
        AboIncompatible => &[
            "donor.abo",
            "recipient.abo",
            "abo_exception",
            "donor.type",
            "recipient.age",
            "organ",
        ],
        IschemiaImplausible => &[
            "procured_at",
            "transplanted_at",
            "cold_ischemia_minutes",
            "machine_perfusion",
            "organ",
        ],
        LivingDonorOrgan => &["donor.type", "organ", "laterality"],
        MinorLivingDonor => &["donor.type", "donor.age"],
        SamePerson => &["donor.fingerprint", "recipient.fingerprint"],
        DeathAfterProcurement => &["donor.death_at", "procured_at"],
        RelationGeneticallyImplausible => &[
            "donor.relation",
            "donor.abo",
            "recipient.abo",
            "donor.hla",
            "recipient.hla",
        ],
        AnatomicalMaximum => &["donor.fingerprint", "donor.type", "organ", "laterality"],
        CrossBorderRepeatLivingDonor => &["donor.type"],
        RepeatForeignLivingDonor => &[
            "donor.fingerprint",
            "donor.type",
            "donor.nationality",
            "donor.residence",
            "procedure_country",
        ],
        DeceasedDonorInconsistent => &[
            "donor.fingerprint",
            "donor.type",
            "donor.death_at",
            "donor.death_kind",
            "procured_at",
        ],
        ClinicUnregistered | ClinicNotLicensed | ClinicLicenceInvalid => {
            &["clinic_id", "organ", "transplanted_at"]
        }
        ClinicCountryMismatch => &["clinic_id", "procedure_country"],
        ClinicNonResidentShare => &[
            "clinic_id",
            "donor.type",
            "recipient.nationality",
            "recipient.residence",
            "procedure_country",
        ],
        TourismForeignPair => &[
            "donor.relation",
            "donor.nationality",
            "donor.residence",
            "recipient.nationality",
            "recipient.residence",
            "procedure_country",
        ],
        ClinicForeignDonorSurge => &[
            "clinic_id",
            "donor.relation",
            "donor.nationality",
            "donor.residence",
            "transplanted_at",
        ],
        DonorNationalityCluster => &[
            "clinic_id",
            "donor.type",
            "donor.nationality",
            "procedure_country",
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_highlights_fields_the_page_shows() {
        let shown = super::super::views::FIELD_NAMES;
        for rule in RuleId::ALL {
            let fields = fields_of(rule.as_str());
            assert!(!fields.is_empty(), "{rule}");
            for field in fields {
                assert!(shown.contains(field), "{rule}: {field}");
            }
        }
        assert!(fields_of("NOT_A_RULE").is_empty());
    }
}
