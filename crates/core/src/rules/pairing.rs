//! Implausible donor–recipient pairings: rules that read the record alone.

use super::config::{IschemiaConfig, LivingDonorConfig};
use super::engine::{Hit, duration, instant};
use crate::domain::{
    AboException, AboGroup, DonorKind, DonorRelation, HlaTyping, Laterality, Organ, Record,
};

/// `ABO_INCOMPATIBLE`: an ABO barrier that no declared exception covers.
pub(super) fn abo_incompatible(record: &Record) -> Option<Hit> {
    let donor = record.donor.person.abo;
    let recipient = record.recipient.abo;
    if donor.can_donate_to(recipient) {
        return None;
    }
    let gap = exception_gap(record)?;
    Some(Hit::new(format!(
        "A donor of blood group {donor} cannot give to a recipient of group {recipient}, and {gap}."
    )))
}

/// Why the declared exception does not cover an incompatible pair, or `None` when it does.
fn exception_gap(record: &Record) -> Option<String> {
    let donor = record.donor.person.abo;
    let recipient = record.recipient.abo;
    let age = record.recipient.age_years;
    let gap = match record.abo_exception {
        AboException::None => "no exception was declared".to_owned(),
        AboException::DesensitisationProtocol if !is_living(record) => {
            "the declared desensitisation protocol applies only to living donors".to_owned()
        }
        AboException::A2SubtypeDonor if !matches!(donor, AboGroup::A | AboGroup::Ab) => {
            format!("the declared A2-subtype exception needs a donor of group A or AB, not {donor}")
        }
        AboException::A2SubtypeDonor if !matches!(recipient, AboGroup::O | AboGroup::B) => {
            format!(
                "the declared A2-subtype exception needs a recipient of group O or B, not {recipient}"
            )
        }
        AboException::InfantHeart if record.organ != Organ::Heart => {
            format!(
                "the declared infant-heart exception does not apply to a {}",
                record.organ
            )
        }
        AboException::InfantHeart if age >= INFANT_HEART_AGE_LIMIT => format!(
            "the declared infant-heart exception applies only to recipients under \
             {INFANT_HEART_AGE_LIMIT}, not to one aged {age}"
        ),
        _ => return None,
    };
    Some(gap)
}

/// Infants' immature isohaemagglutinins make ABO-incompatible hearts safe only under this age.
const INFANT_HEART_AGE_LIMIT: u8 = 3;

/// `ISCHEMIA_IMPLAUSIBLE`: cold ischemia beyond the organ's hard limit, or a
/// reported time that the timestamps contradict.
pub(super) fn ischemia_implausible(record: &Record, cfg: &IschemiaConfig) -> Option<Hit> {
    let organ = record.organ;
    let limit = cfg.limit_hours.minutes(organ);
    let elapsed = record.ischemia_minutes_from_timestamps();
    let reported = record.cold_ischemia_minutes.map(i64::from);
    let beyond = format!(
        "beyond the {} limit for a {organ} without machine perfusion",
        duration(limit)
    );
    let mut reasons = Vec::new();
    if !record.machine_perfusion {
        if elapsed > limit {
            reasons.push(format!(
                "{} passed between procurement and transplantation, {beyond}.",
                duration(elapsed)
            ));
        } else if let Some(minutes) = reported.filter(|m| *m > limit) {
            reasons.push(format!(
                "The reported cold ischemia of {} is {beyond}.",
                duration(minutes)
            ));
        }
    }
    // Checked even under perfusion: a report the timestamps contradict is wrong either way.
    if let Some(minutes) = reported {
        let gap = (minutes - elapsed).abs();
        if gap > i64::from(cfg.report_tolerance_minutes) {
            reasons.push(format!(
                "The reported cold ischemia of {} differs by {} from the {} between the \
                 procurement and transplantation times.",
                duration(minutes),
                duration(gap),
                duration(elapsed)
            ));
        }
    }
    (!reasons.is_empty()).then(|| Hit::new(reasons.join(" ")))
}

/// `LIVING_DONOR_ORGAN`: a living donor of an organ no living person gives whole.
pub(super) fn living_donor_organ(record: &Record) -> Option<Hit> {
    if !is_living(record) {
        return None;
    }
    let what = match (record.organ, record.laterality) {
        (Organ::Kidney, Laterality::Both) => "both kidneys".to_owned(),
        (Organ::Heart | Organ::Liver | Organ::Lung | Organ::Pancreas | Organ::Intestine, _) => {
            format!("a whole {}", record.organ)
        }
        _ => return None,
    };
    Some(Hit::new(format!(
        "A living donor is recorded as giving {what}, which no living person can."
    )))
}

/// `MINOR_LIVING_DONOR`: a living donor under the configured age.
pub(super) fn minor_living_donor(record: &Record, cfg: &LivingDonorConfig) -> Option<Hit> {
    let age = record.donor.person.age_years;
    (is_living(record) && age < cfg.minor_age_years).then(|| {
        Hit::new(format!(
            "The living donor is {age} years old, under the minimum age of {}.",
            cfg.minor_age_years
        ))
    })
}

/// `SAME_PERSON`: donor and recipient have one fingerprint.
pub(super) fn same_person(record: &Record) -> Option<Hit> {
    (record.donor.person.identifier == record.recipient.identifier).then(|| {
        Hit::new("The donor and the recipient are the same person: their identifiers match.")
    })
}

/// `DEATH_AFTER_PROCUREMENT`: a deceased donor who died after the organ was taken.
pub(super) fn death_after_procurement(record: &Record) -> Option<Hit> {
    let DonorKind::Deceased { death_at, .. } = record.donor.kind else {
        return None;
    };
    (death_at > record.procured_at).then(|| {
        Hit::new(format!(
            "The donor's death is recorded at {}, {} after the organ was procured at {}.",
            instant(death_at),
            duration((death_at - record.procured_at).num_minutes()),
            instant(record.procured_at)
        ))
    })
}

/// `RELATION_GENETICALLY_IMPLAUSIBLE`: a declared parent or child that ABO
/// inheritance or HLA haplotype sharing rules out.
pub(super) fn relation_genetically_implausible(record: &Record) -> Option<Hit> {
    let DonorKind::Living { relation } = record.donor.kind else {
        return None;
    };
    let (word, parent, child) = match relation {
        DonorRelation::Parent => ("parent", &record.donor.person, &record.recipient),
        DonorRelation::Child => ("child", &record.recipient, &record.donor.person),
        _ => return None,
    };
    let why = abo_rules_out(parent.abo, child.abo)
        .or_else(|| hla_rules_out(parent.hla.as_ref()?, child.hla.as_ref()?))?;
    Some(Hit::new(format!(
        "The donor is declared the recipient's {word}, but {why}."
    )))
}

/// An O parent passes on an O allele, so cannot have an AB child, and an AB parent
/// passes on A or B, so cannot have an O child.
fn abo_rules_out(parent: AboGroup, child: AboGroup) -> Option<String> {
    matches!(
        (parent, child),
        (AboGroup::O, AboGroup::Ab) | (AboGroup::Ab, AboGroup::O)
    )
    .then(|| format!("a parent of blood group {parent} cannot have a child of group {child}"))
}

/// Parent and child share a haplotype, hence an antigen at every typed locus.
/// Only typings that can be compared (a locus typed on both sides) count, so
/// that a partial typing is not taken for a mismatch.
fn hla_rules_out(parent: &HlaTyping, child: &HlaTyping) -> Option<String> {
    let comparable = [
        (&parent.a, &child.a),
        (&parent.b, &child.b),
        (&parent.dr, &child.dr),
    ]
    .iter()
    .any(|(x, y)| !x.is_empty() && !y.is_empty());
    (comparable && !parent.shares_antigen_with(child))
        .then(|| "the two share no HLA-A, -B or -DR antigen, as a parent and child must".to_owned())
}

fn is_living(record: &Record) -> bool {
    matches!(record.donor.kind, DonorKind::Living { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::fixtures::*;
    use chrono::Duration;

    use AboGroup::{A, Ab, B, O};

    fn pair(donor: AboGroup, recipient: AboGroup, exception: AboException) -> Record {
        let mut r = deceased();
        r.donor.person.abo = donor;
        r.recipient.abo = recipient;
        r.abo_exception = exception;
        r
    }

    #[test]
    fn abo_compatible_pairs_pass_with_or_without_a_declared_exception() {
        assert!(abo_incompatible(&pair(O, A, AboException::None)).is_none());
        assert!(abo_incompatible(&pair(A, Ab, AboException::None)).is_none());
        assert!(abo_incompatible(&pair(O, O, AboException::InfantHeart)).is_none());
        assert!(abo_incompatible(&pair(B, B, AboException::DesensitisationProtocol)).is_none());
    }

    #[test]
    fn abo_incompatible_without_exception_fires() {
        let hit = fired(abo_incompatible(&pair(A, O, AboException::None)));
        assert!(hit.explanation.contains("group A"), "{}", hit.explanation);
        assert!(
            hit.explanation.contains("no exception"),
            "{}",
            hit.explanation
        );
        assert!(hit.evidence.is_empty());
        fired(abo_incompatible(&pair(Ab, B, AboException::None)));
    }

    #[test]
    fn desensitisation_applies_only_to_living_donors() {
        let mut r = living(DonorRelation::Spouse);
        r.donor.person.abo = A;
        r.recipient.abo = O;
        r.abo_exception = AboException::DesensitisationProtocol;
        assert!(abo_incompatible(&r).is_none());
        let hit = fired(abo_incompatible(&pair(
            A,
            O,
            AboException::DesensitisationProtocol,
        )));
        assert!(hit.explanation.contains("living"), "{}", hit.explanation);
    }

    #[test]
    fn a2_subtype_needs_an_a_or_ab_donor_and_an_o_or_b_recipient() {
        for (donor, recipient) in [(A, O), (A, B), (Ab, O), (Ab, B)] {
            assert!(
                abo_incompatible(&pair(donor, recipient, AboException::A2SubtypeDonor)).is_none()
            );
        }
        // A B donor cannot be an A2 subtype; an AB donor stays barred from an A recipient by its B.
        let hit = fired(abo_incompatible(&pair(B, O, AboException::A2SubtypeDonor)));
        assert!(
            hit.explanation.contains("donor of group A or AB"),
            "{}",
            hit.explanation
        );
        let hit = fired(abo_incompatible(&pair(Ab, A, AboException::A2SubtypeDonor)));
        assert!(
            hit.explanation.contains("recipient of group O or B"),
            "{}",
            hit.explanation
        );
    }

    #[test]
    fn infant_heart_needs_a_heart_and_a_recipient_under_three() {
        let mut r = pair(B, A, AboException::InfantHeart);
        r.organ = Organ::Heart;
        r.laterality = Laterality::NotApplicable;
        r.recipient.age_years = 2;
        assert!(abo_incompatible(&r).is_none());
        r.recipient.age_years = 3;
        let hit = fired(abo_incompatible(&r));
        assert!(hit.explanation.contains("aged 3"), "{}", hit.explanation);
        r.recipient.age_years = 1;
        r.organ = Organ::Liver;
        let hit = fired(abo_incompatible(&r));
        assert!(hit.explanation.contains("LIVER"), "{}", hit.explanation);
    }

    fn timed(organ: Organ, minutes: i64, reported: Option<u32>) -> Record {
        let mut r = deceased();
        r.organ = organ;
        r.transplanted_at = r.procured_at + Duration::minutes(minutes);
        r.cold_ischemia_minutes = reported;
        r
    }

    #[test]
    fn ischemia_at_the_limit_passes_and_beyond_it_fires() {
        let cfg = IschemiaConfig::default();
        for (organ, hours) in [
            (Organ::Heart, 8),
            (Organ::Lung, 12),
            (Organ::LungLobe, 12),
            (Organ::Liver, 24),
            (Organ::LiverSegment, 24),
            (Organ::Pancreas, 30),
            (Organ::Intestine, 16),
            (Organ::Kidney, 72),
        ] {
            assert!(
                ischemia_implausible(&timed(organ, hours * 60, None), &cfg).is_none(),
                "{organ}"
            );
            let hit = fired(ischemia_implausible(
                &timed(organ, hours * 60 + 1, None),
                &cfg,
            ));
            assert!(
                hit.explanation.contains(&format!("{hours} h limit")),
                "{}",
                hit.explanation
            );
        }
    }

    #[test]
    fn reported_minutes_beyond_the_limit_fire() {
        let cfg = IschemiaConfig::default();
        // Timestamps say 7 h 30 min, the report 8 h 1 min: within the tolerance, beyond the limit.
        assert!(ischemia_implausible(&timed(Organ::Heart, 450, Some(480)), &cfg).is_none());
        let hit = fired(ischemia_implausible(
            &timed(Organ::Heart, 450, Some(481)),
            &cfg,
        ));
        assert!(hit.explanation.contains("reported"), "{}", hit.explanation);
    }

    #[test]
    fn machine_perfusion_lifts_the_limit_but_not_the_consistency_check() {
        let cfg = IschemiaConfig::default();
        let mut r = timed(Organ::Heart, 11 * 60, Some(11 * 60));
        r.machine_perfusion = true;
        assert!(ischemia_implausible(&r, &cfg).is_none());
        r.cold_ischemia_minutes = Some(9 * 60);
        let hit = fired(ischemia_implausible(&r, &cfg));
        assert!(
            hit.explanation.contains("differs by 2 h"),
            "{}",
            hit.explanation
        );
    }

    #[test]
    fn reported_minutes_may_stray_up_to_the_tolerance() {
        let cfg = IschemiaConfig::default();
        assert!(ischemia_implausible(&timed(Organ::Kidney, 600, Some(660)), &cfg).is_none());
        assert!(ischemia_implausible(&timed(Organ::Kidney, 600, Some(540)), &cfg).is_none());
        fired(ischemia_implausible(
            &timed(Organ::Kidney, 600, Some(661)),
            &cfg,
        ));
        fired(ischemia_implausible(
            &timed(Organ::Kidney, 600, Some(539)),
            &cfg,
        ));
    }

    #[test]
    fn ischemia_limits_follow_the_configuration() {
        let mut cfg = IschemiaConfig::default();
        cfg.limit_hours.kidney = 10;
        cfg.report_tolerance_minutes = 0;
        fired(ischemia_implausible(&timed(Organ::Kidney, 601, None), &cfg));
        fired(ischemia_implausible(
            &timed(Organ::Kidney, 300, Some(301)),
            &cfg,
        ));
        assert!(ischemia_implausible(&timed(Organ::Kidney, 300, Some(300)), &cfg).is_none());
    }

    #[test]
    fn living_donors_of_whole_organs_fire() {
        for organ in [
            Organ::Heart,
            Organ::Liver,
            Organ::Lung,
            Organ::Pancreas,
            Organ::Intestine,
        ] {
            let mut r = living(DonorRelation::Sibling);
            r.organ = organ;
            let hit = fired(living_donor_organ(&r));
            assert!(
                hit.explanation.contains(organ.as_str()),
                "{}",
                hit.explanation
            );
        }
        let mut r = living(DonorRelation::Sibling);
        r.laterality = Laterality::Both;
        assert!(
            fired(living_donor_organ(&r))
                .explanation
                .contains("both kidneys")
        );
    }

    #[test]
    fn living_donors_of_parts_and_single_kidneys_pass() {
        for (organ, side) in [
            (Organ::Kidney, Laterality::Left),
            (Organ::Kidney, Laterality::Right),
            (Organ::LiverSegment, Laterality::NotApplicable),
            (Organ::LungLobe, Laterality::Left),
        ] {
            let mut r = living(DonorRelation::Sibling);
            r.organ = organ;
            r.laterality = side;
            assert!(living_donor_organ(&r).is_none(), "{organ}");
        }
        let mut r = deceased();
        r.organ = Organ::Heart;
        assert!(living_donor_organ(&r).is_none());
    }

    #[test]
    fn minor_living_donor_at_the_boundary() {
        let cfg = LivingDonorConfig::default();
        let mut r = living(DonorRelation::Sibling);
        r.donor.person.age_years = 18;
        assert!(minor_living_donor(&r, &cfg).is_none());
        r.donor.person.age_years = 17;
        assert!(
            fired(minor_living_donor(&r, &cfg))
                .explanation
                .contains("17 years")
        );
        let mut d = deceased();
        d.donor.person.age_years = 16;
        assert!(minor_living_donor(&d, &cfg).is_none());
        assert!(
            minor_living_donor(
                &r,
                &LivingDonorConfig {
                    minor_age_years: 16
                }
            )
            .is_none()
        );
    }

    #[test]
    fn same_person_compares_fingerprints() {
        let mut r = living(DonorRelation::Sibling);
        assert!(same_person(&r).is_none());
        r.recipient.identifier = r.donor.person.identifier;
        fired(same_person(&r));
    }

    #[test]
    fn death_after_procurement_fires_only_when_strictly_after() {
        let mut r = deceased();
        assert!(death_after_procurement(&r).is_none());
        r.donor.kind = DonorKind::Deceased {
            death_at: r.procured_at,
            death_kind: crate::domain::DeathKind::Dcd,
        };
        assert!(death_after_procurement(&r).is_none());
        r.donor.kind = DonorKind::Deceased {
            death_at: r.procured_at + Duration::hours(3),
            death_kind: crate::domain::DeathKind::Dbd,
        };
        let hit = fired(death_after_procurement(&r));
        assert!(hit.explanation.contains("3 h after"), "{}", hit.explanation);
        assert!(death_after_procurement(&living(DonorRelation::Sibling)).is_none());
    }

    fn hla(a: [&str; 2], b: [&str; 2], dr: [&str; 2]) -> Option<HlaTyping> {
        let v = |x: [&str; 2]| x.iter().map(|s| s.to_string()).collect();
        Some(HlaTyping {
            a: v(a),
            b: v(b),
            dr: v(dr),
        })
    }

    fn kin(relation: DonorRelation, donor: AboGroup, recipient: AboGroup) -> Record {
        let mut r = living(relation);
        r.donor.person.abo = donor;
        r.recipient.abo = recipient;
        r
    }

    #[test]
    fn abo_inheritance_rules_out_o_and_ab_either_way() {
        for relation in [DonorRelation::Parent, DonorRelation::Child] {
            for (d, rcp) in [(O, Ab), (Ab, O)] {
                fired(relation_genetically_implausible(&kin(relation, d, rcp)));
            }
            for (d, rcp) in [(O, A), (A, Ab), (B, O), (Ab, Ab)] {
                assert!(relation_genetically_implausible(&kin(relation, d, rcp)).is_none());
            }
        }
        let hit = fired(relation_genetically_implausible(&kin(
            DonorRelation::Child,
            O,
            Ab,
        )));
        assert!(
            hit.explanation.contains("parent of blood group AB"),
            "{}",
            hit.explanation
        );
        assert!(relation_genetically_implausible(&kin(DonorRelation::Sibling, O, Ab)).is_none());
    }

    #[test]
    fn hla_without_a_shared_antigen_rules_out_parent_and_child() {
        let mut r = kin(DonorRelation::Parent, A, A);
        r.donor.person.hla = hla(["A1", "A2"], ["B8", "B44"], ["DR3", "DR4"]);
        r.recipient.hla = hla(["A3", "A11"], ["B7", "B35"], ["DR1", "DR15"]);
        assert!(
            fired(relation_genetically_implausible(&r))
                .explanation
                .contains("HLA")
        );
        r.recipient.hla = hla(["A3", "A11"], ["B7", "B35"], ["DR4", "DR15"]);
        assert!(relation_genetically_implausible(&r).is_none());
    }

    #[test]
    fn hla_needs_both_typings_with_a_locus_in_common() {
        let mut r = kin(DonorRelation::Child, A, A);
        r.donor.person.hla = hla(["A1", "A2"], ["B8", "B44"], ["DR3", "DR4"]);
        assert!(relation_genetically_implausible(&r).is_none());
        r.recipient.hla = Some(HlaTyping::default());
        assert!(relation_genetically_implausible(&r).is_none());
        // Typed at different loci only: nothing to compare.
        r.donor.person.hla = Some(HlaTyping {
            a: vec!["A1".into()],
            ..HlaTyping::default()
        });
        r.recipient.hla = Some(HlaTyping {
            dr: vec!["DR1".into()],
            ..HlaTyping::default()
        });
        assert!(relation_genetically_implausible(&r).is_none());
        r.recipient.hla = Some(HlaTyping {
            a: vec!["A3".into()],
            ..HlaTyping::default()
        });
        fired(relation_genetically_implausible(&r));
    }

    #[test]
    fn hla_mismatch_between_siblings_is_not_this_rule() {
        let mut r = kin(DonorRelation::Sibling, A, A);
        r.donor.person.hla = hla(["A1", "A2"], ["B8", "B44"], ["DR3", "DR4"]);
        r.recipient.hla = hla(["A3", "A11"], ["B7", "B35"], ["DR1", "DR15"]);
        assert!(relation_genetically_implausible(&r).is_none());
    }
}
