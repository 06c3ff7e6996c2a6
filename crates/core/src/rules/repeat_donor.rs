//! Repeat donors: the record against the same donor's earlier records, at any hospital.
//!
//! One deceased donor normally gives several organs to several recipients on
//! one day; that is not suspicious. Only what one body cannot give, a foreign
//! living donor who keeps coming back, or records that disagree on the death are.

use chrono::{DateTime, Utc};

use super::PriorDonation;
use super::config::DeceasedDonorConfig;
use super::engine::{Hit, count, instant};
use crate::domain::{DeathKind, DonorKind, Laterality, Organ, Record, RecordId};

/// One donation of the donor: this record's (`id: None`) or an earlier one.
#[derive(Debug, Clone, Copy)]
struct Donation {
    id: Option<RecordId>,
    organ: Organ,
    laterality: Laterality,
    living: bool,
}

/// One limit of what a single body can give.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// At most `max` donations of `organ` (of one side, or by a living donor, when given).
    Count {
        organ: Organ,
        side: Option<Laterality>,
        living_only: bool,
        max: usize,
    },
    /// A pair given en bloc (BOTH) leaves no other of that organ.
    PairAlone(Organ),
    /// A whole organ and parts of it never come from one body together.
    WholeOrParts { whole: Organ, part: Organ },
}

impl Limit {
    const fn at_most(organ: Organ, max: usize) -> Self {
        Self::Count {
            organ,
            side: None,
            living_only: false,
            max,
        }
    }

    const fn one_side(organ: Organ, side: Laterality) -> Self {
        Self::Count {
            organ,
            side: Some(side),
            living_only: false,
            max: 1,
        }
    }

    const fn once_living(organ: Organ) -> Self {
        Self::Count {
            organ,
            side: None,
            living_only: true,
            max: 1,
        }
    }
}

/// Design §5: a deceased body has one left and one right kidney or lung (or a
/// pair en bloc), one liver (or at most two split segments, never both), one
/// heart, pancreas and intestine; a living donor gives a kidney, a liver
/// segment and a lung lobe at most once in a lifetime.
const LIMITS: &[Limit] = &[
    Limit::one_side(Organ::Kidney, Laterality::Left),
    Limit::one_side(Organ::Kidney, Laterality::Right),
    Limit::PairAlone(Organ::Kidney),
    Limit::one_side(Organ::Lung, Laterality::Left),
    Limit::one_side(Organ::Lung, Laterality::Right),
    Limit::PairAlone(Organ::Lung),
    Limit::at_most(Organ::Liver, 1),
    Limit::at_most(Organ::LiverSegment, 2),
    Limit::WholeOrParts {
        whole: Organ::Liver,
        part: Organ::LiverSegment,
    },
    Limit::at_most(Organ::Heart, 1),
    Limit::at_most(Organ::Pancreas, 1),
    Limit::at_most(Organ::Intestine, 1),
    Limit::once_living(Organ::Kidney),
    Limit::once_living(Organ::LiverSegment),
    Limit::once_living(Organ::LungLobe),
];

impl Limit {
    /// The donations the limit counts.
    fn counts(&self, d: &Donation) -> bool {
        match *self {
            Limit::Count {
                organ,
                side,
                living_only,
                ..
            } => {
                d.organ == organ
                    && side.is_none_or(|s| d.laterality == s)
                    && (d.living || !living_only)
            }
            Limit::PairAlone(organ) => d.organ == organ,
            Limit::WholeOrParts { whole, part } => d.organ == whole || d.organ == part,
        }
    }

    /// Whether the counted donations break the limit.
    fn is_broken(&self, group: &[&Donation]) -> bool {
        match *self {
            Limit::Count { max, .. } => group.len() > max,
            Limit::PairAlone(_) => {
                group.len() > 1 && group.iter().any(|d| d.laterality == Laterality::Both)
            }
            Limit::WholeOrParts { whole, part } => {
                group.iter().any(|d| d.organ == whole) && group.iter().any(|d| d.organ == part)
            }
        }
    }

    /// The broken limit in an auditor's words.
    fn describe(&self, group: &[&Donation]) -> String {
        let n = group.len();
        match *self {
            Limit::Count {
                organ,
                side: Some(side),
                ..
            } => {
                format!(
                    "{} of the {side} {organ} where one body has one",
                    count(n, "donation")
                )
            }
            Limit::Count {
                organ,
                living_only: true,
                max,
                ..
            } => {
                format!(
                    "{n} living donations of a {organ} where a living donor gives at most {max}"
                )
            }
            Limit::Count { organ, max, .. } => {
                format!(
                    "{} of a {organ} where one body gives at most {max}",
                    count(n, "donation")
                )
            }
            Limit::PairAlone(organ) => {
                format!("a {organ} pair given whole (BOTH), yet {n} {organ} donations in all")
            }
            Limit::WholeOrParts { whole, part } => {
                format!("a whole {whole} and a {part} from the same body")
            }
        }
    }
}

/// `ANATOMICAL_MAXIMUM`: this record takes part in giving more than one body has.
pub(super) fn anatomical_maximum(record: &Record, history: &[PriorDonation]) -> Option<Hit> {
    let this = Donation {
        id: None,
        organ: record.organ,
        laterality: record.laterality,
        living: is_living(&record.donor.kind),
    };
    let all: Vec<Donation> = history.iter().map(earlier_donation).chain([this]).collect();
    let mut broken = Vec::new();
    let mut evidence = Vec::new();
    for limit in LIMITS.iter().filter(|limit| limit.counts(&this)) {
        let group: Vec<&Donation> = all.iter().filter(|d| limit.counts(d)).collect();
        if limit.is_broken(&group) {
            broken.push(limit.describe(&group));
            evidence.extend(group.iter().filter_map(|d| d.id));
        }
    }
    (!broken.is_empty()).then(|| {
        Hit::new(format!(
            "This donor's records, this one included, give more than one body has: {}.",
            broken.join("; ")
        ))
        .with_evidence(evidence)
    })
}

fn earlier_donation(p: &PriorDonation) -> Donation {
    Donation {
        id: Some(p.record_id),
        organ: p.organ,
        laterality: p.laterality,
        living: is_living(&p.kind),
    }
}

/// `REPEAT_FOREIGN_LIVING_DONOR`: a living donor foreign to this procedure's
/// country who has given while alive before.
pub(super) fn repeat_foreign_living_donor(
    record: &Record,
    history: &[PriorDonation],
) -> Option<Hit> {
    if !is_living(&record.donor.kind) || !record.donor_is_foreign() {
        return None;
    }
    let earlier: Vec<RecordId> = history
        .iter()
        .filter(|p| is_living(&p.kind))
        .map(|p| p.record_id)
        .collect();
    if earlier.is_empty() {
        return None;
    }
    let donor = &record.donor.person;
    Some(
        Hit::new(format!(
            "A living donor who is not a resident of {} (nationality {}, residence {}) already \
             has {} on record.",
            record.procedure_country,
            donor.nationality,
            donor.country_of_residence,
            count(earlier.len(), "earlier living donation"),
        ))
        .with_evidence(earlier),
    )
}

/// `DECEASED_DONOR_INCONSISTENT`: records of one donor that disagree on the
/// death, or a living donation procured after a recorded death.
pub(super) fn deceased_donor_inconsistent(
    record: &Record,
    history: &[PriorDonation],
    cfg: &DeceasedDonorConfig,
) -> Option<Hit> {
    let (sentences, evidence) = match record.donor.kind {
        DonorKind::Deceased {
            death_at,
            death_kind,
        } => against_this_death(death_at, death_kind, history, cfg),
        DonorKind::Living { .. } => after_an_earlier_death(record.procured_at, history),
    };
    (!sentences.is_empty()).then(|| Hit::new(sentences.join(" ")).with_evidence(evidence))
}

/// Earlier records that contradict this record's death: another death, or a
/// living donation after it.
fn against_this_death(
    death_at: DateTime<Utc>,
    death_kind: DeathKind,
    history: &[PriorDonation],
    cfg: &DeceasedDonorConfig,
) -> (Vec<String>, Vec<RecordId>) {
    let tolerance = chrono::Duration::minutes(cfg.death_tolerance_minutes.into());
    let mut sentences = Vec::new();
    let mut evidence = Vec::new();

    let other_deaths: Vec<(RecordId, DateTime<Utc>, DeathKind)> = history
        .iter()
        .filter_map(|p| match p.kind {
            DonorKind::Deceased {
                death_at: at,
                death_kind: kind,
            } => Some((p.record_id, at, kind)),
            DonorKind::Living { .. } => None,
        })
        .filter(|(_, at, kind)| *kind != death_kind || (*at - death_at).abs() > tolerance)
        .collect();
    if !other_deaths.is_empty() {
        let stated = deaths(other_deaths.iter().map(|(_, at, kind)| (*at, *kind)));
        sentences.push(format!(
            "This record states a {death_kind} death at {}, but {} {stated}.",
            instant(death_at),
            earlier_records_state(other_deaths.len()),
        ));
        evidence.extend(other_deaths.iter().map(|(id, ..)| *id));
    }

    let living_after: Vec<RecordId> = history
        .iter()
        .filter(|p| is_living(&p.kind) && p.procured_at > death_at)
        .map(|p| p.record_id)
        .collect();
    if !living_after.is_empty() {
        sentences.push(format!(
            "{} of the same donor procured after this recorded death.",
            match living_after.len() {
                1 => "There is a living donation".to_owned(),
                n => format!("There are {n} living donations"),
            }
        ));
        evidence.extend(living_after);
    }
    (sentences, evidence)
}

/// Earlier records whose recorded death precedes this living donation.
fn after_an_earlier_death(
    procured_at: DateTime<Utc>,
    history: &[PriorDonation],
) -> (Vec<String>, Vec<RecordId>) {
    let earlier: Vec<(RecordId, DateTime<Utc>, DeathKind)> = history
        .iter()
        .filter_map(|p| match p.kind {
            DonorKind::Deceased {
                death_at,
                death_kind,
            } if death_at < procured_at => Some((p.record_id, death_at, death_kind)),
            _ => None,
        })
        .collect();
    if earlier.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let stated = deaths(earlier.iter().map(|(_, at, kind)| (*at, *kind)));
    let sentence = format!(
        "This organ was procured from a living donor at {}, but {} {stated}.",
        instant(procured_at),
        earlier_records_state(earlier.len()),
    );
    (
        vec![sentence],
        earlier.into_iter().map(|(id, ..)| id).collect(),
    )
}

/// The subject and verb for `n` earlier records, which agree in number.
fn earlier_records_state(n: usize) -> String {
    match n {
        1 => "an earlier record of the same donor states".to_owned(),
        n => format!("{n} earlier records of the same donor state"),
    }
}

/// The distinct deaths stated, in time order: `a DBD death at …, a DCD death at …`.
fn deaths(stated: impl Iterator<Item = (DateTime<Utc>, DeathKind)>) -> String {
    let mut stated: Vec<_> = stated.collect();
    stated.sort_unstable();
    stated.dedup();
    let texts: Vec<String> = stated
        .iter()
        .map(|(at, kind)| format!("a {kind} death at {}", instant(*at)))
        .collect();
    texts.join(", ")
}

fn is_living(kind: &DonorKind) -> bool {
    matches!(kind, DonorKind::Living { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DonorRelation;
    use crate::rules::fixtures::*;
    use chrono::Duration;

    use Laterality::{Both, Left, NotApplicable as Na, Right};

    fn dead_prior(id: i64, organ: Organ, side: Laterality) -> PriorDonation {
        prior(id, organ, side, death(), procured())
    }

    fn dead(organ: Organ, side: Laterality) -> Record {
        let mut r = deceased();
        r.organ = organ;
        r.laterality = side;
        r
    }

    #[test]
    fn one_deceased_donor_giving_every_organ_once_is_normal() {
        let history = [
            dead_prior(1, Organ::Kidney, Left),
            dead_prior(2, Organ::Kidney, Right),
            dead_prior(3, Organ::Liver, Na),
            dead_prior(4, Organ::Heart, Na),
            dead_prior(5, Organ::Lung, Left),
            dead_prior(6, Organ::Lung, Right),
            dead_prior(7, Organ::Pancreas, Na),
        ];
        assert!(anatomical_maximum(&dead(Organ::Intestine, Na), &history).is_none());
        assert!(deceased_donor_inconsistent(&deceased(), &history, &Default::default()).is_none());
    }

    #[test]
    fn a_second_kidney_of_one_side_breaks_the_limit() {
        let history = [
            dead_prior(21, Organ::Kidney, Left),
            dead_prior(22, Organ::Kidney, Right),
        ];
        let hit = fired(anatomical_maximum(&dead(Organ::Kidney, Left), &history));
        assert_eq!(hit.evidence, ids(&[21]));
        assert!(
            hit.explanation.contains("LEFT KIDNEY"),
            "{}",
            hit.explanation
        );
    }

    #[test]
    fn a_pair_given_en_bloc_stands_alone() {
        let history = [dead_prior(28, Organ::Kidney, Both)];
        assert_eq!(
            fired(anatomical_maximum(&dead(Organ::Kidney, Right), &history)).evidence,
            ids(&[28])
        );
        let history = [dead_prior(1, Organ::Lung, Left)];
        fired(anatomical_maximum(&dead(Organ::Lung, Both), &history));
        let history = [dead_prior(1, Organ::Lung, Both)];
        assert!(anatomical_maximum(&dead(Organ::Kidney, Both), &history).is_none());
    }

    #[test]
    fn liver_whole_or_at_most_two_segments() {
        let two_segments = [
            dead_prior(29, Organ::LiverSegment, Na),
            dead_prior(30, Organ::LiverSegment, Na),
        ];
        assert!(anatomical_maximum(&dead(Organ::LiverSegment, Na), &two_segments[..1]).is_none());
        let hit = fired(anatomical_maximum(&dead(Organ::Liver, Na), &two_segments));
        assert_eq!(hit.evidence, ids(&[29, 30]));
        fired(anatomical_maximum(
            &dead(Organ::LiverSegment, Na),
            &two_segments,
        ));
        let whole = [dead_prior(3, Organ::Liver, Na)];
        fired(anatomical_maximum(&dead(Organ::Liver, Na), &whole));
        fired(anatomical_maximum(&dead(Organ::LiverSegment, Na), &whole));
    }

    #[test]
    fn single_organs_at_most_once() {
        for organ in [Organ::Heart, Organ::Pancreas, Organ::Intestine] {
            assert!(anatomical_maximum(&dead(organ, Na), &[]).is_none());
            let hit = fired(anatomical_maximum(
                &dead(organ, Na),
                &[dead_prior(9, organ, Na)],
            ));
            assert_eq!(hit.evidence, ids(&[9]));
        }
    }

    #[test]
    fn a_living_donor_gives_a_kidney_segment_or_lobe_once() {
        for (organ, first, second) in [
            (Organ::Kidney, Left, Right),
            (Organ::LiverSegment, Na, Na),
            (Organ::LungLobe, Left, Right),
        ] {
            let history = [prior(35, organ, first, living_kind(), procured())];
            let mut r = living(DonorRelation::Sibling);
            r.organ = organ;
            r.laterality = second;
            let hit = fired(anatomical_maximum(&r, &history));
            assert_eq!(hit.evidence, ids(&[35]), "{organ}");
            assert!(hit.explanation.contains("living"), "{}", hit.explanation);
        }
        // A kidney then a liver segment, both while alive, is within one body.
        let history = [prior(37, Organ::Kidney, Left, living_kind(), procured())];
        let mut r = living(DonorRelation::UnrelatedDirected);
        r.organ = Organ::LiverSegment;
        r.laterality = Na;
        assert!(anatomical_maximum(&r, &history).is_none());
    }

    #[test]
    fn a_record_outside_the_broken_limit_is_not_flagged_again() {
        let history = [
            dead_prior(1, Organ::Kidney, Left),
            dead_prior(2, Organ::Kidney, Left),
        ];
        assert!(anatomical_maximum(&dead(Organ::Heart, Na), &history).is_none());
    }

    #[test]
    fn evidence_gathers_every_broken_limit() {
        let history = [
            dead_prior(28, Organ::Kidney, Both),
            dead_prior(31, Organ::Kidney, Right),
        ];
        let hit = fired(anatomical_maximum(&dead(Organ::Kidney, Right), &history));
        assert_eq!(hit.evidence, ids(&[28, 31]));
    }

    fn foreign_living(relation: DonorRelation) -> Record {
        let mut r = living(relation);
        r.donor.person = foreigner(r.donor.person, "MD");
        r
    }

    #[test]
    fn a_foreign_living_donor_seen_again_fires() {
        let history = [
            prior(37, Organ::Kidney, Left, living_kind(), procured()),
            dead_prior(99, Organ::Heart, Na),
        ];
        let mut r = foreign_living(DonorRelation::UnrelatedDirected);
        r.organ = Organ::LiverSegment;
        let hit = fired(repeat_foreign_living_donor(&r, &history));
        assert_eq!(hit.evidence, ids(&[37]));
        assert!(hit.explanation.contains("MD"), "{}", hit.explanation);
    }

    #[test]
    fn a_foreign_living_donor_seen_once_passes() {
        let r = foreign_living(DonorRelation::Sibling);
        assert!(repeat_foreign_living_donor(&r, &[]).is_none());
        // Only earlier living donations count.
        assert!(repeat_foreign_living_donor(&r, &[dead_prior(1, Organ::Heart, Na)]).is_none());
    }

    #[test]
    fn a_resident_living_donor_seen_again_is_not_this_rule() {
        let history = [prior(35, Organ::Kidney, Left, living_kind(), procured())];
        assert!(repeat_foreign_living_donor(&living(DonorRelation::Sibling), &history).is_none());
        // A resident by residence alone is not foreign.
        let mut r = foreign_living(DonorRelation::Sibling);
        r.donor.person.country_of_residence = country("DE");
        assert!(repeat_foreign_living_donor(&r, &history).is_none());
    }

    fn died(id: i64, at: DateTime<Utc>, kind: DeathKind) -> PriorDonation {
        let kind = DonorKind::Deceased {
            death_at: at,
            death_kind: kind,
        };
        prior(id, Organ::Kidney, Left, kind, procured())
    }

    #[test]
    fn deaths_within_the_tolerance_agree() {
        let cfg = DeceasedDonorConfig::default();
        let DonorKind::Deceased { death_at, .. } = death() else {
            unreachable!()
        };
        let r = dead(Organ::Kidney, Right);
        for offset in [-60, 0, 60] {
            let history = [died(
                1,
                death_at + Duration::minutes(offset),
                DeathKind::Dbd,
            )];
            assert!(
                deceased_donor_inconsistent(&r, &history, &cfg).is_none(),
                "{offset}"
            );
        }
        for offset in [-61, 61, 2 * 24 * 60] {
            let history = [died(
                33,
                death_at + Duration::minutes(offset),
                DeathKind::Dbd,
            )];
            let hit = fired(deceased_donor_inconsistent(&r, &history, &cfg));
            assert_eq!(hit.evidence, ids(&[33]));
        }
    }

    #[test]
    fn another_death_kind_disagrees() {
        let DonorKind::Deceased { death_at, .. } = death() else {
            unreachable!()
        };
        let history = [died(4, death_at, DeathKind::Dcd)];
        let hit = fired(deceased_donor_inconsistent(
            &deceased(),
            &history,
            &Default::default(),
        ));
        assert!(hit.explanation.contains("DCD"), "{}", hit.explanation);
    }

    #[test]
    fn death_tolerance_follows_the_configuration() {
        let DonorKind::Deceased { death_at, .. } = death() else {
            unreachable!()
        };
        let history = [died(1, death_at + Duration::minutes(30), DeathKind::Dbd)];
        let strict = DeceasedDonorConfig {
            death_tolerance_minutes: 15,
        };
        fired(deceased_donor_inconsistent(&deceased(), &history, &strict));
    }

    #[test]
    fn a_living_donation_after_a_recorded_death_fires_in_either_order() {
        let cfg = DeceasedDonorConfig::default();
        // Earlier deceased record, this one living and later.
        let history = [died(5, procured() - Duration::days(1), DeathKind::Dbd)];
        let hit = fired(deceased_donor_inconsistent(
            &living(DonorRelation::Sibling),
            &history,
            &cfg,
        ));
        assert_eq!(hit.evidence, ids(&[5]));
        // Earlier living record procured after this record's death.
        let DonorKind::Deceased { death_at, .. } = death() else {
            unreachable!()
        };
        let history = [prior(
            6,
            Organ::Kidney,
            Left,
            living_kind(),
            death_at + Duration::days(30),
        )];
        let hit = fired(deceased_donor_inconsistent(&deceased(), &history, &cfg));
        assert_eq!(hit.evidence, ids(&[6]));
    }

    #[test]
    fn a_living_donation_before_the_death_is_consistent() {
        let cfg = DeceasedDonorConfig::default();
        let history = [died(5, procured() + Duration::days(400), DeathKind::Dbd)];
        assert!(
            deceased_donor_inconsistent(&living(DonorRelation::Sibling), &history, &cfg).is_none()
        );
        let DonorKind::Deceased { death_at, .. } = death() else {
            unreachable!()
        };
        let history = [prior(
            6,
            Organ::Kidney,
            Left,
            living_kind(),
            death_at - Duration::days(400),
        )];
        assert!(deceased_donor_inconsistent(&deceased(), &history, &cfg).is_none());
        // Two living donations say nothing about a death.
        let history = [prior(7, Organ::Kidney, Left, living_kind(), procured())];
        assert!(
            deceased_donor_inconsistent(&living(DonorRelation::Sibling), &history, &cfg).is_none()
        );
    }
}
