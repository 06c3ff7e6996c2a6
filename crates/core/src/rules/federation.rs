//! `CROSS_BORDER_REPEAT_LIVING_DONOR`: a living donor whom a peer registry
//! holds as a living donor too, as a federation sync found.

use super::context::PeerMatch;
use super::engine::{Hit, count};
use crate::domain::Record;

/// Fires on a living donor's record when a sync matched its donor at one
/// or more peers; the explanation names each peer and its count.
pub(super) fn cross_border_repeat_living_donor(
    record: &Record,
    matches: &[PeerMatch],
) -> Option<Hit> {
    if record.donor.kind.donor_type() != crate::domain::DonorType::Living || matches.is_empty() {
        return None;
    }
    let mut peers: Vec<&PeerMatch> = matches.iter().collect();
    // The highest count a peer reported, one entry per peer, by name.
    peers.sort_by(|a, b| a.peer.cmp(&b.peer).then(b.donations.cmp(&a.donations)));
    peers.dedup_by(|a, b| a.peer == b.peer);
    let found: Vec<String> = peers
        .iter()
        .map(|m| {
            let n = usize::try_from(m.donations).unwrap_or(usize::MAX);
            format!("{} at {}", count(n, "living donation"), m.peer)
        })
        .collect();
    Some(Hit::new(format!(
        "The living donor also donated as a living donor in a peer registry: {}.",
        found.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::fixtures::*;

    fn matched(peer: &str, donations: u32) -> PeerMatch {
        PeerMatch {
            peer: peer.to_owned(),
            donations,
        }
    }

    #[test]
    fn fires_on_a_living_donor_matched_at_a_peer_and_names_it() {
        let hit = fired(cross_border_repeat_living_donor(
            &living(crate::domain::DonorRelation::UnrelatedDirected),
            &[matched("kz", 1), matched("at", 2), matched("kz", 3)],
        ));
        assert_eq!(
            hit.explanation,
            "The living donor also donated as a living donor in a peer registry: \
             2 living donations at at, 3 living donations at kz."
        );
        assert!(hit.evidence.is_empty(), "the evidence is at the peer");
    }

    #[test]
    fn no_match_or_a_deceased_donor_raises_nothing() {
        assert!(
            cross_border_repeat_living_donor(
                &living(crate::domain::DonorRelation::UnrelatedDirected),
                &[]
            )
            .is_none()
        );
        assert!(cross_border_repeat_living_donor(&deceased(), &[matched("kz", 1)]).is_none());
    }
}
