//! Suggested cases: open flags that belong together, grouped.
//!
//! Two flagged records are linked when
//! (a) they share a person: a donor or recipient fingerprint;
//! (b) they are at the same clinic, transplanted at most 30 days apart, and
//!     each has a flag of a clinic or tourism rule;
//! (c) they are in the same procedure country, transplanted at most 30 days
//!     apart, both with a living donor who is not resident there and of the
//!     same nationality, and each has a flag of a tourism rule.
//!
//! A group is a connected component of that relation (windows chain: a
//! ring that ran for a year is one group) with at least two records. Groups
//! rank by the sum of their flags' severities; everything is ordered, so the
//! same flags always give the same answer.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, Utc};

use crate::domain::{CountryCode, Severity};
use crate::rules::RuleId;

/// How far apart two transplants may be for a clinic or nationality link.
pub const WINDOW: Duration = Duration::days(30);

/// An open flag not in a case, with what its record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFlag {
    /// The flag.
    pub flag_id: i64,
    /// Its rule id (a rule the catalogue no longer knows links by person only).
    pub rule_id: String,
    /// Its severity.
    pub severity: Severity,
    /// The flagged record.
    pub record_id: i64,
    /// The record's donor fingerprint.
    pub donor: Vec<u8>,
    /// The record's recipient fingerprint.
    pub recipient: Vec<u8>,
    /// The record's clinic.
    pub clinic_id: String,
    /// The record's procedure country.
    pub procedure_country: CountryCode,
    /// When the transplant took place.
    pub transplanted_at: DateTime<Utc>,
    /// For a living donor not resident in the procedure country: their
    /// nationality.
    pub foreign_living_donor: Option<CountryCode>,
}

/// Why records of a group are linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkKind {
    /// A shared donor or recipient.
    SharedPerson,
    /// One clinic within the window, clinic or tourism flags.
    ClinicWindow,
    /// One country, foreign living donors of one nationality within the
    /// window, tourism flags.
    DonorNationality,
}

/// A suggested case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suggestion {
    /// Its flags, by id.
    pub flag_ids: Vec<i64>,
    /// Its records, by id.
    pub record_ids: Vec<i64>,
    /// Its clinics.
    pub clinic_ids: Vec<String>,
    /// The sum of its flags' severities (LOW 1 … CRITICAL 4).
    pub score: i64,
    /// One line per kind of link present.
    pub reasons: Vec<String>,
}

/// What one record contributes.
struct Node<'a> {
    flag: &'a OpenFlag,
    clinic_or_tourism: bool,
    tourism: bool,
}

/// The groups `flags` fall into, best first, at most `limit`.
pub fn suggest(flags: &[OpenFlag], limit: usize) -> Vec<Suggestion> {
    let mut by_record: BTreeMap<i64, Node<'_>> = BTreeMap::new();
    for f in flags {
        let family = f.rule_id.parse::<RuleId>().ok().map(RuleId::family);
        let node = by_record.entry(f.record_id).or_insert(Node {
            flag: f,
            clinic_or_tourism: false,
            tourism: false,
        });
        node.clinic_or_tourism |= matches!(family, Some("clinic" | "tourism"));
        node.tourism |= family == Some("tourism");
    }
    let nodes: Vec<&Node<'_>> = by_record.values().collect();
    let mut sets = DisjointSets::new(nodes.len());
    let mut links: Vec<(usize, LinkKind, String)> = Vec::new();

    let mut first_with: HashMap<&[u8], usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for person in [&n.flag.donor, &n.flag.recipient] {
            if person.is_empty() {
                continue;
            }
            match first_with.get(person.as_slice()) {
                Some(&j) => {
                    sets.union(i, j);
                    links.push((i, LinkKind::SharedPerson, String::new()));
                }
                None => {
                    first_with.insert(person.as_slice(), i);
                }
            }
        }
    }

    let mut at_clinic: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut by_nationality: BTreeMap<(CountryCode, CountryCode), Vec<usize>> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        if n.clinic_or_tourism {
            at_clinic.entry(&n.flag.clinic_id).or_default().push(i);
        }
        if let (true, Some(nationality)) = (n.tourism, n.flag.foreign_living_donor) {
            by_nationality
                .entry((n.flag.procedure_country, nationality))
                .or_default()
                .push(i);
        }
    }
    for (clinic, members) in at_clinic {
        chain_in_window(&nodes, members, &mut sets, |i| {
            links.push((i, LinkKind::ClinicWindow, clinic.to_owned()));
        });
    }
    for ((country, nationality), members) in by_nationality {
        chain_in_window(&nodes, members, &mut sets, |i| {
            links.push((
                i,
                LinkKind::DonorNationality,
                format!("{nationality} in {country}"),
            ));
        });
    }

    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..nodes.len() {
        groups.entry(sets.find(i)).or_default().push(i);
    }
    let mut kinds: HashMap<usize, BTreeMap<LinkKind, BTreeSet<String>>> = HashMap::new();
    for (i, kind, detail) in links {
        kinds
            .entry(sets.find(i))
            .or_default()
            .entry(kind)
            .or_default()
            .insert(detail);
    }
    let mut flags_of: HashMap<i64, Vec<&OpenFlag>> = HashMap::new();
    for f in flags {
        flags_of.entry(f.record_id).or_default().push(f);
    }
    let mut out: Vec<Suggestion> = groups
        .into_iter()
        .filter(|(_, members)| members.len() >= 2)
        .map(|(root, members)| {
            let record_ids: Vec<i64> = members.iter().map(|&i| nodes[i].flag.record_id).collect();
            let mut group_flags: Vec<&OpenFlag> = record_ids
                .iter()
                .flat_map(|r| flags_of.get(r).into_iter().flatten().copied())
                .collect();
            group_flags.sort_by_key(|f| f.flag_id);
            group_flags.dedup_by_key(|f| f.flag_id);
            let clinic_ids: BTreeSet<&str> = members
                .iter()
                .map(|&i| nodes[i].flag.clinic_id.as_str())
                .collect();
            let reasons = kinds
                .remove(&root)
                .unwrap_or_default()
                .into_iter()
                .map(|(kind, details)| reason(kind, &details))
                .collect();
            Suggestion {
                flag_ids: group_flags.iter().map(|f| f.flag_id).collect(),
                record_ids,
                clinic_ids: clinic_ids.into_iter().map(str::to_owned).collect(),
                score: group_flags.iter().map(|f| weight(f.severity)).sum(),
                reasons,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.score
            .cmp(&a.score)
            .then(b.flag_ids.len().cmp(&a.flag_ids.len()))
            .then(a.flag_ids.first().cmp(&b.flag_ids.first()))
    });
    out.truncate(limit);
    out
}

/// Links each member to the next one in time when they are at most
/// [`WINDOW`] apart; `linked` hears of every member that got a link.
fn chain_in_window(
    nodes: &[&Node<'_>],
    mut members: Vec<usize>,
    sets: &mut DisjointSets,
    mut linked: impl FnMut(usize),
) {
    members.sort_by_key(|&i| (nodes[i].flag.transplanted_at, nodes[i].flag.record_id));
    for pair in members.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if nodes[b].flag.transplanted_at - nodes[a].flag.transplanted_at <= WINDOW {
            sets.union(a, b);
            linked(a);
        }
    }
}

fn reason(kind: LinkKind, details: &BTreeSet<String>) -> String {
    let list = details
        .iter()
        .filter(|d| !d.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match kind {
        LinkKind::SharedPerson => {
            "records share a donor or a recipient (the same fingerprint)".to_owned()
        }
        LinkKind::ClinicWindow => format!(
            "transplants at {list} at most 30 days apart, each flagged by a clinic or tourism rule"
        ),
        LinkKind::DonorNationality => format!(
            "foreign living donors of one nationality ({list}) at most 30 days apart, each \
             flagged by a tourism rule"
        ),
    }
}

fn weight(s: Severity) -> i64 {
    match s {
        Severity::Low => 1,
        Severity::Medium => 2,
        Severity::High => 3,
        Severity::Critical => 4,
    }
}

/// Union-find with path halving and union by size.
struct DisjointSets {
    parent: Vec<usize>,
    size: Vec<usize>,
}

impl DisjointSets {
    fn new(n: usize) -> Self {
        Self {
            parent: (0..n).collect(),
            size: vec![1; n],
        }
    }

    fn find(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    fn union(&mut self, a: usize, b: usize) {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return;
        }
        if self.size[a] < self.size[b] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b] = a;
        self.size[a] += self.size[b];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + d * 86_400, 0).unwrap()
    }

    fn cc(s: &str) -> CountryCode {
        s.parse().unwrap()
    }

    fn flag(flag_id: i64, record_id: i64, rule: RuleId, d: i64) -> OpenFlag {
        OpenFlag {
            flag_id,
            rule_id: rule.as_str().to_owned(),
            severity: rule.default_severity(),
            record_id,
            donor: vec![record_id as u8, 1],
            recipient: vec![record_id as u8, 2],
            clinic_id: format!("C{record_id}"),
            procedure_country: cc("DE"),
            transplanted_at: day(d),
            foreign_living_donor: None,
        }
    }

    #[test]
    fn records_sharing_a_person_are_one_group() {
        let mut b = flag(2, 20, RuleId::AnatomicalMaximum, 0);
        let a = flag(1, 10, RuleId::AnatomicalMaximum, 400);
        b.donor = a.donor.clone();
        let mut c = flag(3, 30, RuleId::SamePerson, 800);
        c.recipient = b.donor.clone();
        let lone = flag(4, 40, RuleId::SamePerson, 0);
        let got = suggest(&[a, b, c, lone], 10);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].flag_ids, [1, 2, 3]);
        assert_eq!(got[0].record_ids, [10, 20, 30]);
        assert_eq!(got[0].score, 4 + 4 + 3);
        assert_eq!(got[0].reasons.len(), 1);
    }

    #[test]
    fn clinic_windows_chain_but_need_clinic_or_tourism_flags() {
        let mut ring: Vec<OpenFlag> = (0..10)
            .map(|i| {
                let mut f = flag(i + 1, 100 + i, RuleId::ClinicNotLicensed, i * 25);
                f.clinic_id = "RING".into();
                f
            })
            .collect();
        // 40 days after the last: outside every window.
        let mut late = flag(50, 500, RuleId::ClinicNotLicensed, 9 * 25 + 40);
        late.clinic_id = "RING".into();
        // Same clinic and day, but a pairing flag only.
        let mut pairing = flag(51, 501, RuleId::AboIncompatible, 50);
        pairing.clinic_id = "RING".into();
        ring.push(late);
        ring.push(pairing);
        let got = suggest(&ring, 10);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].flag_ids, (1..=10).collect::<Vec<_>>());
        assert_eq!(got[0].clinic_ids, ["RING"]);
        assert!(got[0].reasons[0].contains("RING"), "{:?}", got[0].reasons);
    }

    #[test]
    fn foreign_donors_of_one_nationality_link_across_clinics_in_one_country() {
        let mk = |id: i64, d: i64, nationality: &str, country: &str, rule: RuleId| {
            let mut f = flag(id, id * 10, rule, d);
            f.foreign_living_donor = Some(cc(nationality));
            f.procedure_country = cc(country);
            f
        };
        let flags = [
            mk(1, 0, "MD", "TR", RuleId::TourismForeignPair),
            mk(2, 20, "MD", "TR", RuleId::DonorNationalityCluster),
            mk(3, 10, "UA", "TR", RuleId::TourismForeignPair),
            mk(4, 15, "MD", "DE", RuleId::TourismForeignPair),
            mk(5, 5, "MD", "TR", RuleId::AboIncompatible),
        ];
        let got = suggest(&flags, 10);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].flag_ids, [1, 2]);
        assert!(
            got[0].reasons[0].contains("MD in TR"),
            "{:?}",
            got[0].reasons
        );
    }

    #[test]
    fn groups_rank_by_severity_and_the_answer_does_not_depend_on_input_order() {
        let pair = |first: i64, rule: RuleId| {
            let a = flag(first, first * 10, rule, 0);
            let mut b = flag(first + 1, first * 10 + 1, rule, 0);
            b.donor = a.donor.clone();
            [a, b]
        };
        let mut flags: Vec<OpenFlag> = [
            pair(1, RuleId::IschemiaImplausible),
            pair(3, RuleId::AnatomicalMaximum),
            pair(5, RuleId::IschemiaImplausible),
        ]
        .concat();
        let got = suggest(&flags, 10);
        assert_eq!(
            got.iter().map(|g| g.flag_ids.clone()).collect::<Vec<_>>(),
            [vec![3, 4], vec![1, 2], vec![5, 6]]
        );
        flags.reverse();
        assert_eq!(suggest(&flags, 10), got);
        assert_eq!(suggest(&flags, 1).len(), 1);
    }
}
