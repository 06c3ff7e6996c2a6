//! The registry of licensed transplant clinics.

use chrono::{DateTime, Utc};

use super::{ClinicStatus, CountryCode, Organ};

/// One registry entry as it stands in one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clinic {
    /// The registry's id of the clinic, as records name it.
    pub clinic_id: String,
    /// Human-readable name.
    pub name: String,
    /// Country the clinic is registered in.
    pub country: CountryCode,
    /// Organs it is licensed to transplant; LIVER covers LIVER_SEGMENT, LUNG covers LUNG_LOBE.
    pub licensed_organs: Vec<Organ>,
    /// Start of the licence, inclusive.
    pub licence_valid_from: DateTime<Utc>,
    /// End of the licence, exclusive; `None` when open-ended.
    pub licence_valid_until: Option<DateTime<Utc>>,
    /// ACTIVE, SUSPENDED or REVOKED.
    pub status: ClinicStatus,
    /// When a SUSPENDED or REVOKED status took effect.
    pub status_effective_from: Option<DateTime<Utc>>,
}

impl Clinic {
    /// Whether the licence covers `organ` (a whole-organ licence covers its parts).
    pub fn is_licensed_for(&self, organ: Organ) -> bool {
        let covering = match organ {
            Organ::LiverSegment => Some(Organ::Liver),
            Organ::LungLobe => Some(Organ::Lung),
            _ => None,
        };
        self.licensed_organs
            .iter()
            .any(|o| *o == organ || Some(*o) == covering)
    }

    /// Why the licence was not in force at `at`, or `None` when it was.
    pub fn licence_problem_at(&self, at: DateTime<Utc>) -> Option<String> {
        if at < self.licence_valid_from {
            return Some(format!(
                "the licence was not valid before {}",
                self.licence_valid_from.date_naive()
            ));
        }
        if let Some(until) = self.licence_valid_until.filter(|until| at >= *until) {
            return Some(format!("the licence expired on {}", until.date_naive()));
        }
        if self.status == ClinicStatus::Active {
            return None;
        }
        match self.status_effective_from {
            Some(from) if at < from => None,
            Some(from) => Some(format!(
                "the clinic was {} from {}",
                self.status,
                from.date_naive()
            )),
            None => Some(format!("the clinic is {}", self.status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn clinic(status: ClinicStatus, effective: Option<DateTime<Utc>>) -> Clinic {
        Clinic {
            clinic_id: "DE-X".into(),
            name: "x".into(),
            country: "DE".parse().unwrap(),
            licensed_organs: vec![Organ::Liver, Organ::Kidney],
            licence_valid_from: Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap(),
            licence_valid_until: Some(Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap()),
            status,
            status_effective_from: effective,
        }
    }

    #[test]
    fn whole_organ_licence_covers_its_parts() {
        let c = clinic(ClinicStatus::Active, None);
        assert!(c.is_licensed_for(Organ::LiverSegment));
        assert!(c.is_licensed_for(Organ::Kidney));
        assert!(!c.is_licensed_for(Organ::LungLobe));
        assert!(!c.is_licensed_for(Organ::Heart));
    }

    #[test]
    fn licence_window_is_half_open_and_status_applies_from_its_date() {
        let c = clinic(ClinicStatus::Active, None);
        assert!(
            c.licence_problem_at(Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap())
                .is_none()
        );
        assert!(
            c.licence_problem_at(Utc.with_ymd_and_hms(2019, 12, 31, 23, 0, 0).unwrap())
                .is_some()
        );
        assert!(
            c.licence_problem_at(Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap())
                .is_some()
        );
        let march = Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap();
        let s = clinic(ClinicStatus::Suspended, Some(march));
        assert!(
            s.licence_problem_at(march - chrono::Duration::days(1))
                .is_none()
        );
        assert!(s.licence_problem_at(march).is_some());
        let r = clinic(ClinicStatus::Revoked, None);
        assert!(r.licence_problem_at(march).is_some());
    }
}
