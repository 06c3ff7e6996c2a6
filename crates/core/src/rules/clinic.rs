//! Unregistered clinics: the record against the registry of licensed clinics.
//!
//! The engine runs the registered-clinic rules only when the registry knows the
//! clinic, so an unregistered clinic raises `CLINIC_UNREGISTERED` alone.

use super::engine::Hit;
use crate::domain::{Clinic, Record};

/// `CLINIC_UNREGISTERED`: the registry does not know the clinic.
pub(super) fn unregistered(clinic: Option<&Clinic>) -> Option<Hit> {
    clinic
        .is_none()
        .then(|| Hit::new("The clinic named in the record is not in the registry."))
}

/// `CLINIC_NOT_LICENSED`: registered, but not for this organ.
pub(super) fn not_licensed(record: &Record, clinic: &Clinic) -> Option<Hit> {
    if clinic.is_licensed_for(record.organ) {
        return None;
    }
    let licensed: Vec<&str> = clinic.licensed_organs.iter().map(|o| o.as_str()).collect();
    let licensed = if licensed.is_empty() {
        "no organ".to_owned()
    } else {
        licensed.join(", ")
    };
    Some(Hit::new(format!(
        "The clinic is licensed for {licensed}, not for the transplanted {}.",
        record.organ
    )))
}

/// `CLINIC_LICENCE_INVALID`: the licence was not in force on the transplant date.
pub(super) fn licence_invalid(record: &Record, clinic: &Clinic) -> Option<Hit> {
    let problem = clinic.licence_problem_at(record.transplanted_at)?;
    Some(Hit::new(format!(
        "On the transplant date, {}, {problem}.",
        record.transplanted_at.date_naive()
    )))
}

/// `CLINIC_COUNTRY_MISMATCH`: the clinic is registered in another country.
pub(super) fn country_mismatch(record: &Record, clinic: &Clinic) -> Option<Hit> {
    (clinic.country != record.procedure_country).then(|| {
        Hit::new(format!(
            "The clinic is registered in {}, but the procedure is recorded in {}.",
            clinic.country, record.procedure_country
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ClinicStatus, Organ};
    use crate::rules::fixtures::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn unregistered_fires_only_without_a_registry_entry() {
        fired(unregistered(None));
        assert!(unregistered(Some(&clinic_de())).is_none());
    }

    #[test]
    fn licence_must_cover_the_organ() {
        let mut c = clinic_de();
        c.licensed_organs = vec![Organ::Kidney];
        let mut r = deceased();
        assert!(not_licensed(&r, &c).is_none());
        r.organ = Organ::Liver;
        let hit = fired(not_licensed(&r, &c));
        assert!(
            hit.explanation
                .contains("licensed for KIDNEY, not for the transplanted LIVER")
        );
        c.licensed_organs.clear();
        assert!(fired(not_licensed(&r, &c)).explanation.contains("no organ"));
    }

    #[test]
    fn a_whole_organ_licence_covers_its_parts() {
        let mut c = clinic_de();
        c.licensed_organs = vec![Organ::Liver, Organ::Lung];
        let mut r = deceased();
        for organ in [Organ::LiverSegment, Organ::LungLobe] {
            r.organ = organ;
            assert!(not_licensed(&r, &c).is_none(), "{organ}");
        }
        c.licensed_organs = vec![Organ::LiverSegment];
        r.organ = Organ::Liver;
        fired(not_licensed(&r, &c));
    }

    #[test]
    fn licence_validity_is_half_open() {
        let mut c = clinic_de();
        let mut r = deceased();
        r.transplanted_at = c.licence_valid_from;
        assert!(licence_invalid(&r, &c).is_none());
        r.transplanted_at = c.licence_valid_from - chrono::Duration::minutes(1);
        fired(licence_invalid(&r, &c));
        let until = Utc.with_ymd_and_hms(2024, 12, 31, 0, 0, 0).unwrap();
        c.licence_valid_until = Some(until);
        r.transplanted_at = until;
        assert!(
            fired(licence_invalid(&r, &c))
                .explanation
                .contains("expired on 2024-12-31")
        );
        r.transplanted_at = until - chrono::Duration::minutes(1);
        assert!(licence_invalid(&r, &c).is_none());
    }

    #[test]
    fn suspension_and_revocation_apply_from_their_date() {
        for status in [ClinicStatus::Suspended, ClinicStatus::Revoked] {
            let mut c = clinic_de();
            c.status = status;
            c.status_effective_from = Some(at(3, 1, 0, 0));
            let mut r = deceased();
            r.transplanted_at = at(2, 10, 12, 0);
            assert!(licence_invalid(&r, &c).is_none(), "{status}");
            r.transplanted_at = at(4, 10, 12, 0);
            let hit = fired(licence_invalid(&r, &c));
            assert!(
                hit.explanation.contains(status.as_str()),
                "{}",
                hit.explanation
            );
        }
    }

    #[test]
    fn clinic_country_must_be_the_procedure_country() {
        let c = clinic_de();
        let mut r = deceased();
        assert!(country_mismatch(&r, &c).is_none());
        r.procedure_country = country("PL");
        let hit = fired(country_mismatch(&r, &c));
        assert!(
            hit.explanation.contains("registered in DE"),
            "{}",
            hit.explanation
        );
        assert!(hit.explanation.contains("in PL"), "{}", hit.explanation);
    }
}
