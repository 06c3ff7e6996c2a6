//! Transplant tourism patterns: foreign pairs, and a clinic's recent activity.
//!
//! "Foreign" means non-resident of the procedure country (Eurotransplant's
//! definition: neither nationality nor residence is that country). The window
//! counts come from the store and exclude this record, so each rule adds it.

use super::ClinicWindow;
use super::config::{ClusterConfig, NonResidentShareConfig, SurgeConfig};
use super::engine::{Hit, count, instant};
use crate::domain::{DonorKind, Person, Record, RecordId, Severity};

/// `TOURISM_FOREIGN_PAIR`: an unrelated living donor where donor or recipient is foreign.
pub(super) fn foreign_pair(record: &Record) -> Option<Hit> {
    if !is_unrelated_living(record) {
        return None;
    }
    let country = record.procedure_country;
    let (severity, who) = match (record.donor_is_foreign(), record.recipient_is_foreign()) {
        (true, true) => (
            Severity::High,
            format!(
                "both the donor ({}) and the recipient ({}) are non-residents",
                origin(&record.donor.person),
                origin(&record.recipient)
            ),
        ),
        (true, false) => (
            Severity::Medium,
            format!(
                "the donor ({}) is a non-resident",
                origin(&record.donor.person)
            ),
        ),
        (false, true) => (
            Severity::Medium,
            format!(
                "the recipient ({}) is a non-resident",
                origin(&record.recipient)
            ),
        ),
        (false, false) => return None,
    };
    Some(
        Hit::new(format!(
            "A living donor declared unrelated to the recipient gave in {country}, where {who}."
        ))
        .with_severity(severity),
    )
}

/// `CLINIC_FOREIGN_DONOR_SURGE`: this unrelated foreign living donor makes the
/// clinic's count in the window reach the threshold.
pub(super) fn foreign_donor_surge(
    record: &Record,
    window: &ClinicWindow,
    cfg: &SurgeConfig,
) -> Option<Hit> {
    if !is_unrelated_living(record) || !record.donor_is_foreign() {
        return None;
    }
    let total = window.foreign_unrelated_living.len() + 1;
    if total < threshold(cfg.min_count) {
        return None;
    }
    Some(
        Hit::new(format!(
            "The clinic has {} from unrelated living donors who are non-residents of {} within the \
             {} days up to {}, this one included; the threshold is {}.",
            count(total, "transplant"),
            record.procedure_country,
            cfg.window_days,
            instant(record.transplanted_at),
            cfg.min_count
        ))
        .with_evidence(window.foreign_unrelated_living.clone()),
    )
}

/// `DONOR_NATIONALITY_CLUSTER`: the clinic's foreign living donors in the
/// window, this one included, cluster on this donor's nationality.
pub(super) fn nationality_cluster(
    record: &Record,
    window: &ClinicWindow,
    cfg: &ClusterConfig,
) -> Option<Hit> {
    if !is_living(record) || !record.donor_is_foreign() {
        return None;
    }
    let nationality = record.donor.person.nationality;
    let same: Vec<RecordId> = window
        .foreign_living_donors
        .iter()
        .filter(|(_, n)| *n == nationality)
        .map(|(id, _)| *id)
        .collect();
    let matching = same.len() + 1;
    let total = window.foreign_living_donors.len() + 1;
    // A quotient, not a product: `k / n` rounds to the same double as a
    // configured decimal equal to it, so the boundary holds exactly.
    let share = matching as f64 / total as f64;
    if matching < threshold(cfg.min_count) || share < cfg.min_share {
        return None;
    }
    Some(
        Hit::new(format!(
            "{matching} of the clinic's {total} non-resident living donors within the {} days up \
             to {}, this one included, are nationals of {nationality} ({}); the thresholds are {} \
             donors and {}.",
            cfg.window_days,
            instant(record.transplanted_at),
            percent(share),
            cfg.min_count,
            percent(cfg.min_share)
        ))
        .with_evidence(same),
    )
}

/// `CLINIC_NON_RESIDENT_SHARE`: this deceased-donor transplant to a non-resident
/// takes the clinic's non-resident share over the limit.
pub(super) fn non_resident_share(
    record: &Record,
    window: &ClinicWindow,
    cfg: &NonResidentShareConfig,
) -> Option<Hit> {
    if is_living(record) || !record.recipient_is_foreign() {
        return None;
    }
    let total = window.deceased_transplants.saturating_add(1);
    let foreign = window.deceased_to_non_residents.saturating_add(1);
    let share = foreign as f64 / total as f64;
    if total < u64::from(cfg.min_transplants) || share <= cfg.max_share {
        return None;
    }
    Some(Hit::new(format!(
        "{foreign} of the clinic's {total} deceased-donor transplants within the {} days up to {}, \
         this one included, went to non-residents of {} ({}), above the limit of {}.",
        cfg.window_days,
        instant(record.transplanted_at),
        record.procedure_country,
        percent(share),
        percent(cfg.max_share)
    )))
}

/// The count threshold as a length; a `u32` always fits in `usize` on supported targets.
fn threshold(min: u32) -> usize {
    usize::try_from(min).unwrap_or(usize::MAX)
}

/// A share as a percentage with at most one decimal: `60%`, `6.7%`.
fn percent(share: f64) -> String {
    let p = (share * 1000.0).round() / 10.0;
    format!("{p}%")
}

/// Nationality and residence, the facts that make a person foreign.
fn origin<I>(p: &Person<I>) -> String {
    format!(
        "nationality {}, residence {}",
        p.nationality, p.country_of_residence
    )
}

fn is_living(record: &Record) -> bool {
    matches!(record.donor.kind, DonorKind::Living { .. })
}

fn is_unrelated_living(record: &Record) -> bool {
    record.donor_is_unrelated_living()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CountryCode;
    use crate::domain::DonorRelation;
    use crate::rules::fixtures::*;

    fn unrelated(donor_from: Option<&str>, recipient_from: Option<&str>) -> Record {
        let mut r = living(DonorRelation::UnrelatedDirected);
        if let Some(code) = donor_from {
            r.donor.person = foreigner(r.donor.person, code);
        }
        if let Some(code) = recipient_from {
            r.recipient = foreigner(r.recipient, code);
        }
        r
    }

    #[test]
    fn foreign_pair_is_high_when_both_are_foreign_and_medium_when_one_is() {
        let both = fired(foreign_pair(&unrelated(Some("MD"), Some("IL"))));
        assert_eq!(both.severity, Some(Severity::High));
        assert!(
            both.explanation.contains("nationality MD"),
            "{}",
            both.explanation
        );
        assert!(
            both.explanation.contains("nationality IL"),
            "{}",
            both.explanation
        );
        let donor = fired(foreign_pair(&unrelated(Some("MD"), None)));
        assert_eq!(donor.severity, Some(Severity::Medium));
        let recipient = fired(foreign_pair(&unrelated(None, Some("IL"))));
        assert_eq!(recipient.severity, Some(Severity::Medium));
        assert!(
            recipient.explanation.contains("the recipient"),
            "{}",
            recipient.explanation
        );
    }

    #[test]
    fn foreign_pair_needs_an_unrelated_living_donor_and_a_foreigner() {
        assert!(foreign_pair(&unrelated(None, None)).is_none());
        for relation in DonorRelation::ALL
            .iter()
            .filter(|r| **r != DonorRelation::UnrelatedDirected)
        {
            let mut r = unrelated(Some("MD"), Some("IL"));
            r.donor.kind = DonorKind::Living {
                relation: *relation,
            };
            assert!(foreign_pair(&r).is_none(), "{relation}");
        }
        let mut r = deceased();
        r.donor.person = foreigner(r.donor.person, "MD");
        assert!(foreign_pair(&r).is_none());
    }

    #[test]
    fn a_national_living_abroad_is_a_resident() {
        let mut r = unrelated(Some("MD"), None);
        r.donor.person.nationality = country("DE");
        assert!(foreign_pair(&r).is_none());
    }

    fn surge_window(n: i64) -> ClinicWindow {
        ClinicWindow {
            foreign_unrelated_living: ids(&(1..=n).collect::<Vec<_>>()),
            ..Default::default()
        }
    }

    #[test]
    fn surge_fires_when_the_record_makes_the_count() {
        let cfg = SurgeConfig::default();
        let r = unrelated(Some("MD"), Some("IL"));
        assert!(foreign_donor_surge(&r, &surge_window(3), &cfg).is_none());
        let hit = fired(foreign_donor_surge(&r, &surge_window(4), &cfg));
        assert_eq!(hit.evidence, ids(&[1, 2, 3, 4]));
        assert!(
            hit.explanation.contains("5 transplants"),
            "{}",
            hit.explanation
        );
        fired(foreign_donor_surge(&r, &surge_window(5), &cfg));
        let one = SurgeConfig {
            min_count: 1,
            ..cfg
        };
        fired(foreign_donor_surge(&r, &surge_window(0), &one));
    }

    #[test]
    fn surge_counts_only_unrelated_foreign_living_donors() {
        let cfg = SurgeConfig::default();
        let busy = surge_window(10);
        assert!(foreign_donor_surge(&unrelated(None, Some("IL")), &busy, &cfg).is_none());
        let mut sibling = unrelated(Some("MD"), None);
        sibling.donor.kind = DonorKind::Living {
            relation: DonorRelation::Sibling,
        };
        assert!(foreign_donor_surge(&sibling, &busy, &cfg).is_none());
        assert!(foreign_donor_surge(&deceased(), &busy, &cfg).is_none());
    }

    fn donors(nationalities: &[&str]) -> ClinicWindow {
        let foreign_living_donors: Vec<(RecordId, CountryCode)> = nationalities
            .iter()
            .zip(1..)
            .map(|(code, id)| (RecordId(id), country(code)))
            .collect();
        ClinicWindow {
            foreign_living_donors,
            ..Default::default()
        }
    }

    #[test]
    fn cluster_needs_the_count_and_the_share() {
        let cfg = ClusterConfig::default();
        let r = unrelated(Some("MD"), None);
        // Tourism scenario, record 00057 then 00058: UA breaks no cluster, the fourth MD does.
        let mut ua = r.clone();
        ua.donor.person = foreigner(ua.donor.person, "UA");
        assert!(nationality_cluster(&ua, &donors(&["MD", "MD", "MD"]), &cfg).is_none());
        assert!(nationality_cluster(&r, &donors(&["MD", "MD"]), &cfg).is_none());
        let hit = fired(nationality_cluster(
            &r,
            &donors(&["MD", "MD", "MD", "UA"]),
            &cfg,
        ));
        assert_eq!(hit.evidence, ids(&[1, 2, 3]));
        assert!(
            hit.explanation.contains("4 of the clinic's 5"),
            "{}",
            hit.explanation
        );
        assert!(hit.explanation.contains("80%"), "{}", hit.explanation);
    }

    #[test]
    fn cluster_share_is_inclusive_at_the_boundary() {
        let r = unrelated(Some("MD"), None);
        let cfg = ClusterConfig {
            min_count: 3,
            ..Default::default()
        };
        // 3 of 5 is exactly 60%.
        fired(nationality_cluster(
            &r,
            &donors(&["MD", "MD", "UA", "TR"]),
            &cfg,
        ));
        // 3 of 6 is 50%.
        assert!(nationality_cluster(&r, &donors(&["MD", "MD", "UA", "TR", "UA"]), &cfg).is_none());
        // 4 of 7 is 57%, below 60% although the count is reached.
        let window = donors(&["MD", "MD", "MD", "UA", "TR", "UA"]);
        assert!(nationality_cluster(&r, &window, &ClusterConfig::default()).is_none());
    }

    #[test]
    fn cluster_counts_foreign_living_donors_of_any_relation() {
        let cfg = ClusterConfig::default();
        let window = donors(&["MD", "MD", "MD"]);
        let mut sibling = unrelated(Some("MD"), None);
        sibling.donor.kind = DonorKind::Living {
            relation: DonorRelation::Sibling,
        };
        fired(nationality_cluster(&sibling, &window, &cfg));
        assert!(nationality_cluster(&unrelated(None, Some("MD")), &window, &cfg).is_none());
        let mut dead = deceased();
        dead.donor.person = foreigner(dead.donor.person, "MD");
        assert!(nationality_cluster(&dead, &window, &cfg).is_none());
    }

    fn share_window(total: u64, foreign: u64) -> ClinicWindow {
        ClinicWindow {
            deceased_transplants: total,
            deceased_to_non_residents: foreign,
            ..Default::default()
        }
    }

    fn to_non_resident() -> Record {
        let mut r = deceased();
        r.recipient = foreigner(r.recipient, "NL");
        r
    }

    #[test]
    fn share_fires_strictly_above_the_limit_from_the_minimum_volume() {
        let cfg = NonResidentShareConfig::default();
        let r = to_non_resident();
        // 1 of 20 is exactly 5%: not above.
        assert!(non_resident_share(&r, &share_window(19, 0), &cfg).is_none());
        // 2 of 20 is 10%.
        let hit = fired(non_resident_share(&r, &share_window(19, 1), &cfg));
        assert!(
            hit.explanation.contains("2 of the clinic's 20"),
            "{}",
            hit.explanation
        );
        assert!(hit.explanation.contains("10%"), "{}", hit.explanation);
        assert!(hit.evidence.is_empty());
        // 2 of 19: above 5%, but under the minimum volume.
        assert!(non_resident_share(&r, &share_window(18, 1), &cfg).is_none());
    }

    #[test]
    fn share_flags_only_deceased_donor_transplants_to_non_residents() {
        let cfg = NonResidentShareConfig::default();
        let heavy = share_window(100, 50);
        assert!(non_resident_share(&deceased(), &heavy, &cfg).is_none());
        let mut living_donor = to_non_resident();
        living_donor.donor.kind = DonorKind::Living {
            relation: DonorRelation::Sibling,
        };
        assert!(non_resident_share(&living_donor, &heavy, &cfg).is_none());
        fired(non_resident_share(&to_non_resident(), &heavy, &cfg));
    }

    #[test]
    fn percentages_read_naturally() {
        assert_eq!(percent(0.6), "60%");
        assert_eq!(percent(0.05), "5%");
        assert_eq!(percent(1.0 / 15.0), "6.7%");
    }
}
