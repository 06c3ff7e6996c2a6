//! Clinic activity: what one record and one flag add to a clinic's monthly
//! counters, and those counters read back as the tables a registry prints.
//!
//! The counters are kept at write time (a rollup), so reading a year of a
//! clinic costs the same whatever the registry's size. Every write computes
//! what it changes here, as a delta: the contribution of the new state minus
//! that of the old one, so an amendment that moves a record to another
//! clinic or month takes it out of one bucket and puts it in the other.
//! "Non-resident" and "foreign" are the record's own definitions
//! ([`TransplantRecord::donor_is_foreign`](super::TransplantRecord::donor_is_foreign)),
//! the ones the tourism rules use.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveDate, Utc};

use super::{CountryCode, DonorKind, DonorType, FlagStatus, Organ, Record};

/// The first day of the calendar month (UTC) that `at` falls in.
pub fn month_of(at: DateTime<Utc>) -> NaiveDate {
    let day = at.date_naive();
    // Day 1 of an existing date's month always exists.
    day.with_day(1).unwrap_or(day)
}

/// Where a record counts: the clinic, the procedure country and the month
/// of the transplant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bucket {
    /// The clinic where the transplant took place.
    pub clinic_id: String,
    /// The first day of the transplant's month (UTC).
    pub month: NaiveDate,
    /// Where the procedure took place.
    pub procedure_country: CountryCode,
}

impl Bucket {
    /// The bucket of a record's current version.
    pub fn of(record: &Record) -> Self {
        Self {
            clinic_id: record.clinic_id.clone(),
            month: month_of(record.transplanted_at),
            procedure_country: record.procedure_country,
        }
    }
}

/// One counter of a bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    /// Transplants of one organ from one type of donor.
    Transplants {
        /// The organ or part.
        organ: Organ,
        /// Living or deceased.
        donor_type: DonorType,
    },
    /// Deceased-donor transplants into a recipient who is a non-resident of
    /// the procedure country (the share rule's numerator).
    DeceasedToNonResident,
    /// Transplants from a living unrelated (`UNRELATED_DIRECTED`) donor
    /// who is a non-resident of the procedure country (what the surge rule counts).
    LivingUnrelatedForeignDonor,
    /// Transplants from a living donor who is a non-resident, by the
    /// donor's nationality (what the cluster rule counts).
    ForeignLivingDonorNationality(CountryCode),
    /// Flags on the bucket's records, by rule and current status.
    Flags {
        /// The rule's id.
        rule_id: String,
        /// The flag's triage status.
        status: FlagStatus,
    },
    /// Of those, flags an amendment cleared (the rule no longer fires).
    FlagsCleared {
        /// The rule's id.
        rule_id: String,
    },
}

/// A stored counter name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown activity counter {metric:?}/{dimension:?}")]
pub struct UnknownCounter {
    /// The metric part.
    pub metric: String,
    /// The dimension part.
    pub dimension: String,
}

const TRANSPLANTS: &str = "TRANSPLANTS";
const DECEASED_TO_NON_RESIDENT: &str = "DECEASED_TO_NON_RESIDENT";
const LIVING_UNRELATED_FOREIGN_DONOR: &str = "LIVING_UNRELATED_FOREIGN_DONOR";
const FOREIGN_LIVING_DONOR_NATIONALITY: &str = "FOREIGN_LIVING_DONOR_NATIONALITY";
const FLAGS: &str = "FLAGS";
const FLAGS_CLEARED: &str = "FLAGS_CLEARED";

impl Counter {
    /// The stable text form, as (metric, dimension): `("TRANSPLANTS",
    /// "KIDNEY/LIVING")`, `("FLAGS", "ABO_INCOMPATIBLE/OPEN")`.
    pub fn parts(&self) -> (&'static str, String) {
        match self {
            Counter::Transplants { organ, donor_type } => {
                (TRANSPLANTS, format!("{organ}/{donor_type}"))
            }
            Counter::DeceasedToNonResident => (DECEASED_TO_NON_RESIDENT, String::new()),
            Counter::LivingUnrelatedForeignDonor => (LIVING_UNRELATED_FOREIGN_DONOR, String::new()),
            Counter::ForeignLivingDonorNationality(c) => {
                (FOREIGN_LIVING_DONOR_NATIONALITY, c.as_str().to_owned())
            }
            Counter::Flags { rule_id, status } => (FLAGS, format!("{rule_id}/{status}")),
            Counter::FlagsCleared { rule_id } => (FLAGS_CLEARED, rule_id.clone()),
        }
    }

    /// The counter whose text form is (`metric`, `dimension`).
    pub fn from_parts(metric: &str, dimension: &str) -> Result<Self, UnknownCounter> {
        let unknown = || UnknownCounter {
            metric: metric.to_owned(),
            dimension: dimension.to_owned(),
        };
        let pair = || dimension.split_once('/').ok_or_else(unknown);
        Ok(match metric {
            TRANSPLANTS => {
                let (organ, donor_type) = pair()?;
                Counter::Transplants {
                    organ: organ.parse().map_err(|_| unknown())?,
                    donor_type: donor_type.parse().map_err(|_| unknown())?,
                }
            }
            DECEASED_TO_NON_RESIDENT => Counter::DeceasedToNonResident,
            LIVING_UNRELATED_FOREIGN_DONOR => Counter::LivingUnrelatedForeignDonor,
            FOREIGN_LIVING_DONOR_NATIONALITY => {
                Counter::ForeignLivingDonorNationality(dimension.parse().map_err(|_| unknown())?)
            }
            FLAGS => {
                // Rule ids hold no slash; the status is after the last one.
                let (rule_id, status) = dimension.rsplit_once('/').ok_or_else(unknown)?;
                Counter::Flags {
                    rule_id: rule_id.to_owned(),
                    status: status.parse().map_err(|_| unknown())?,
                }
            }
            FLAGS_CLEARED => Counter::FlagsCleared {
                rule_id: dimension.to_owned(),
            },
            _ => return Err(unknown()),
        })
    }
}

/// The counters one record version adds to its bucket, each by one.
pub fn record_counters(record: &Record) -> Vec<Counter> {
    let mut counters = vec![Counter::Transplants {
        organ: record.organ,
        donor_type: record.donor.kind.donor_type(),
    }];
    match record.donor.kind {
        DonorKind::Deceased { .. } => {
            if record.recipient_is_foreign() {
                counters.push(Counter::DeceasedToNonResident);
            }
        }
        DonorKind::Living { .. } => {
            if record.donor_is_foreign() {
                if record.donor_is_unrelated_living() {
                    counters.push(Counter::LivingUnrelatedForeignDonor);
                }
                counters.push(Counter::ForeignLivingDonorNationality(
                    record.donor.person.nationality,
                ));
            }
        }
    }
    counters
}

/// A flag as its counters see it: its rule, its status, whether cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagState<'a> {
    /// The rule that raised it.
    pub rule_id: &'a str,
    /// Its triage status.
    pub status: FlagStatus,
    /// Whether an amendment cleared it.
    pub cleared: bool,
}

impl FlagState<'_> {
    fn counters(&self) -> Vec<Counter> {
        let mut counters = vec![Counter::Flags {
            rule_id: self.rule_id.to_owned(),
            status: self.status,
        }];
        if self.cleared {
            counters.push(Counter::FlagsCleared {
                rule_id: self.rule_id.to_owned(),
            });
        }
        counters
    }
}

/// What a set of writes changes in the counters: a signed amount per
/// (bucket, counter), zeros left out, in one fixed order (every writer
/// touches the rows it changes in this order, so that two never wait on
/// each other in a cycle).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivityDelta(BTreeMap<(Bucket, Counter), i64>);

impl ActivityDelta {
    /// No change.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&mut self, bucket: &Bucket, counter: Counter, by: i64) {
        let key = (bucket.clone(), counter);
        let n = self.0.entry(key.clone()).or_insert(0);
        *n += by;
        if *n == 0 {
            self.0.remove(&key);
        }
    }

    /// A record version stored.
    pub fn record_stored(&mut self, record: &Record) {
        let bucket = Bucket::of(record);
        for c in record_counters(record) {
            self.add(&bucket, c, 1);
        }
    }

    /// A record version replaced by another: the old one's contribution
    /// leaves its bucket, the new one's joins its own.
    pub fn record_amended(&mut self, old: &Record, new: &Record) {
        let bucket = Bucket::of(old);
        for c in record_counters(old) {
            self.add(&bucket, c, -1);
        }
        self.record_stored(new);
    }

    /// A flag raised on a record in `bucket`.
    pub fn flag_raised(&mut self, bucket: &Bucket, flag: FlagState<'_>) {
        for c in flag.counters() {
            self.add(bucket, c, 1);
        }
    }

    /// A flag changed: its state (and its record's bucket, when the record
    /// was amended) from `before` to `after`.
    pub fn flag_changed(
        &mut self,
        before: (&Bucket, FlagState<'_>),
        after: (&Bucket, FlagState<'_>),
    ) {
        for c in before.1.counters() {
            self.add(before.0, c, -1);
        }
        for c in after.1.counters() {
            self.add(after.0, c, 1);
        }
    }

    /// Adds another delta to this one.
    pub fn merge(&mut self, other: ActivityDelta) {
        for ((bucket, counter), by) in other.0 {
            self.add(&bucket, counter, by);
        }
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every change, in the fixed order.
    pub fn changes(&self) -> impl Iterator<Item = (&Bucket, &Counter, i64)> {
        self.0.iter().map(|((b, c), n)| (b, c, *n))
    }

    /// Takes every change out, leaving no change.
    pub fn take(&mut self) -> ActivityDelta {
        std::mem::take(self)
    }
}

/// Counters summed over a span (a month, a year, a country's clinics),
/// shaped as the report prints them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Activity {
    /// Transplants by organ and donor type.
    pub transplants: BTreeMap<(Organ, DonorType), i64>,
    /// Deceased-donor transplants into non-resident recipients.
    pub deceased_to_non_resident: i64,
    /// Transplants from living unrelated donors who are non-residents.
    pub living_unrelated_foreign_donor: i64,
    /// Transplants from non-resident living donors, by the donor's nationality.
    pub foreign_living_donor_nationalities: BTreeMap<CountryCode, i64>,
    /// Flags by rule.
    pub flags_by_rule: BTreeMap<String, i64>,
    /// Flags by triage status.
    pub flags_by_status: BTreeMap<FlagStatus, i64>,
    /// Flags an amendment cleared, by rule.
    pub flags_cleared_by_rule: BTreeMap<String, i64>,
}

impl Activity {
    /// Adds `n` to `counter`.
    pub fn add(&mut self, counter: &Counter, n: i64) {
        match counter {
            Counter::Transplants { organ, donor_type } => {
                *self.transplants.entry((*organ, *donor_type)).or_default() += n;
            }
            Counter::DeceasedToNonResident => self.deceased_to_non_resident += n,
            Counter::LivingUnrelatedForeignDonor => self.living_unrelated_foreign_donor += n,
            Counter::ForeignLivingDonorNationality(c) => {
                *self
                    .foreign_living_donor_nationalities
                    .entry(*c)
                    .or_default() += n;
            }
            Counter::Flags { rule_id, status } => {
                *self.flags_by_rule.entry(rule_id.clone()).or_default() += n;
                *self.flags_by_status.entry(*status).or_default() += n;
            }
            Counter::FlagsCleared { rule_id } => {
                *self
                    .flags_cleared_by_rule
                    .entry(rule_id.clone())
                    .or_default() += n;
            }
        }
    }

    /// Adds every figure of `other`.
    pub fn absorb(&mut self, other: &Activity) {
        for (k, n) in &other.transplants {
            *self.transplants.entry(*k).or_default() += n;
        }
        self.deceased_to_non_resident += other.deceased_to_non_resident;
        self.living_unrelated_foreign_donor += other.living_unrelated_foreign_donor;
        for (k, n) in &other.foreign_living_donor_nationalities {
            *self
                .foreign_living_donor_nationalities
                .entry(*k)
                .or_default() += n;
        }
        for (k, n) in &other.flags_by_rule {
            *self.flags_by_rule.entry(k.clone()).or_default() += n;
        }
        for (k, n) in &other.flags_by_status {
            *self.flags_by_status.entry(*k).or_default() += n;
        }
        for (k, n) in &other.flags_cleared_by_rule {
            *self.flags_cleared_by_rule.entry(k.clone()).or_default() += n;
        }
    }

    /// Every transplant counted.
    pub fn total_transplants(&self) -> i64 {
        self.transplants.values().sum()
    }

    /// Deceased-donor transplants, of any organ.
    pub fn deceased_transplants(&self) -> i64 {
        self.transplants
            .iter()
            .filter(|((_, t), _)| *t == DonorType::Deceased)
            .map(|(_, n)| n)
            .sum()
    }

    /// The share (0–1) of deceased-donor transplants that went to
    /// non-residents; 0 when there were none.
    pub fn non_resident_share(&self) -> f64 {
        let deceased = self.deceased_transplants();
        if deceased <= 0 {
            0.0
        } else {
            // Counts stay far below 2^52, where f64 is exact.
            self.deceased_to_non_resident as f64 / deceased as f64
        }
    }
}

/// One stored counter of one clinic's month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterValue {
    /// The clinic.
    pub clinic_id: String,
    /// The first day of the month.
    pub month: NaiveDate,
    /// The counter.
    pub counter: Counter,
    /// Its value.
    pub n: i64,
}

/// The months from `from` to `until`, both included, as their first days;
/// empty when `until` is before `from`.
pub fn months_between(from: NaiveDate, until: NaiveDate) -> Vec<NaiveDate> {
    let mut months = Vec::new();
    let mut m = month_of_date(from);
    let last = month_of_date(until);
    while m <= last {
        months.push(m);
        match m.checked_add_months(chrono::Months::new(1)) {
            Some(next) => m = next,
            None => break,
        }
    }
    months
}

fn month_of_date(d: NaiveDate) -> NaiveDate {
    d.with_day(1).unwrap_or(d)
}

/// A clinic's figures month by month, with their sum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClinicActivity {
    /// The clinic.
    pub clinic_id: String,
    /// Every month of the span, in order, empty ones included.
    pub months: Vec<(NaiveDate, Activity)>,
    /// The whole span.
    pub total: Activity,
}

impl ClinicActivity {
    /// Folds stored counters of one clinic into the months `from`..=`until`;
    /// counters outside the span are left out.
    pub fn fold(
        clinic_id: &str,
        from: NaiveDate,
        until: NaiveDate,
        values: impl IntoIterator<Item = CounterValue>,
    ) -> Self {
        let mut months: BTreeMap<NaiveDate, Activity> = months_between(from, until)
            .into_iter()
            .map(|m| (m, Activity::default()))
            .collect();
        let mut total = Activity::default();
        for v in values {
            if let Some(month) = months.get_mut(&v.month) {
                month.add(&v.counter, v.n);
                total.add(&v.counter, v.n);
            }
        }
        Self {
            clinic_id: clinic_id.to_owned(),
            months: months.into_iter().collect(),
            total,
        }
    }
}

/// A procedure country's figures for a span, clinic by clinic, with the
/// country's totals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CountryActivity {
    /// Every clinic with a counter in the span, by clinic id.
    pub clinics: Vec<ClinicActivity>,
    /// The country's totals.
    pub total: Activity,
}

impl CountryActivity {
    /// Folds stored counters of the country's clinics into the months
    /// `from`..=`until`.
    pub fn fold(
        from: NaiveDate,
        until: NaiveDate,
        values: impl IntoIterator<Item = CounterValue>,
    ) -> Self {
        let mut by_clinic: BTreeMap<String, Vec<CounterValue>> = BTreeMap::new();
        for v in values {
            by_clinic.entry(v.clinic_id.clone()).or_default().push(v);
        }
        let clinics: Vec<ClinicActivity> = by_clinic
            .into_iter()
            .map(|(clinic_id, values)| ClinicActivity::fold(&clinic_id, from, until, values))
            .collect();
        let mut total = Activity::default();
        for c in &clinics {
            total.absorb(&c.total);
        }
        Self { clinics, total }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DonorRelation;
    use crate::rules::fixtures::{country, deceased, foreigner, living, person};
    use chrono::TimeZone;

    fn totals(delta: &ActivityDelta) -> Activity {
        let mut a = Activity::default();
        for (_, c, n) in delta.changes() {
            a.add(c, n);
        }
        a
    }

    #[test]
    fn a_month_starts_on_its_first_day_in_utc() {
        let late = Utc.with_ymd_and_hms(2025, 1, 31, 23, 59, 59).unwrap();
        assert_eq!(month_of(late), NaiveDate::from_ymd_opt(2025, 1, 1).unwrap());
        let first = Utc.with_ymd_and_hms(2025, 2, 1, 0, 0, 0).unwrap();
        assert_eq!(
            month_of(first),
            NaiveDate::from_ymd_opt(2025, 2, 1).unwrap()
        );
    }

    #[test]
    fn a_deceased_donor_to_a_non_resident_counts_toward_the_share() {
        let mut r = deceased();
        r.recipient = foreigner(r.recipient, "IL");
        assert_eq!(
            record_counters(&r),
            vec![
                Counter::Transplants {
                    organ: Organ::Kidney,
                    donor_type: DonorType::Deceased
                },
                Counter::DeceasedToNonResident,
            ]
        );
        // A recipient of another nationality who lives in the country is a resident.
        let mut resident = deceased();
        resident.recipient.nationality = country("IL");
        assert_eq!(record_counters(&resident).len(), 1);
    }

    #[test]
    fn a_foreign_unrelated_living_donor_counts_with_the_nationality() {
        let mut r = living(DonorRelation::UnrelatedDirected);
        r.donor.person = foreigner(r.donor.person, "MD");
        let counters = record_counters(&r);
        assert!(counters.contains(&Counter::LivingUnrelatedForeignDonor));
        assert!(counters.contains(&Counter::ForeignLivingDonorNationality(country("MD"))));
        // A foreign sibling counts by nationality only.
        let mut sibling = living(DonorRelation::Sibling);
        sibling.donor.person = foreigner(sibling.donor.person, "MD");
        let counters = record_counters(&sibling);
        assert!(!counters.contains(&Counter::LivingUnrelatedForeignDonor));
        assert!(counters.contains(&Counter::ForeignLivingDonorNationality(country("MD"))));
        // A resident unrelated donor counts as a transplant only.
        assert_eq!(
            record_counters(&living(DonorRelation::UnrelatedDirected)).len(),
            1
        );
    }

    #[test]
    fn an_amendment_moves_a_record_between_buckets() {
        let old = deceased();
        let mut new = old.clone();
        new.clinic_id = "DE-MUC-02".into();
        new.donor.kind = crate::domain::DonorKind::Living {
            relation: DonorRelation::UnrelatedDirected,
        };
        new.donor.person = foreigner(person(new.donor.person.identifier), "UA");
        let mut delta = ActivityDelta::new();
        delta.record_stored(&old);
        delta.record_amended(&old, &new);
        // Only the new version remains, in the new clinic's bucket.
        let mut only_new = ActivityDelta::new();
        only_new.record_stored(&new);
        assert_eq!(delta, only_new);
        assert!(delta.changes().all(|(b, _, _)| b.clinic_id == "DE-MUC-02"));
    }

    #[test]
    fn an_unchanged_amendment_changes_nothing() {
        let r = living(DonorRelation::Spouse);
        let mut delta = ActivityDelta::new();
        delta.record_amended(&r, &r);
        assert!(delta.is_empty());
    }

    #[test]
    fn triage_moves_a_flag_from_one_status_to_another() {
        let bucket = Bucket::of(&deceased());
        let open = FlagState {
            rule_id: "ABO_INCOMPATIBLE",
            status: FlagStatus::Open,
            cleared: false,
        };
        let confirmed = FlagState {
            status: FlagStatus::Confirmed,
            ..open
        };
        let mut delta = ActivityDelta::new();
        delta.flag_raised(&bucket, open);
        delta.flag_changed((&bucket, open), (&bucket, confirmed));
        let a = totals(&delta);
        assert_eq!(a.flags_by_rule.get("ABO_INCOMPATIBLE"), Some(&1));
        assert_eq!(a.flags_by_status.get(&FlagStatus::Confirmed), Some(&1));
        assert_eq!(a.flags_by_status.get(&FlagStatus::Open), None);
    }

    #[test]
    fn a_cleared_flag_is_still_counted_and_also_as_cleared() {
        let bucket = Bucket::of(&deceased());
        let open = FlagState {
            rule_id: "ISCHEMIA_IMPLAUSIBLE",
            status: FlagStatus::Open,
            cleared: false,
        };
        let mut delta = ActivityDelta::new();
        delta.flag_raised(&bucket, open);
        delta.flag_changed(
            (&bucket, open),
            (
                &bucket,
                FlagState {
                    cleared: true,
                    ..open
                },
            ),
        );
        let a = totals(&delta);
        assert_eq!(a.flags_by_rule.get("ISCHEMIA_IMPLAUSIBLE"), Some(&1));
        assert_eq!(
            a.flags_cleared_by_rule.get("ISCHEMIA_IMPLAUSIBLE"),
            Some(&1)
        );
    }

    #[test]
    fn counters_read_back_from_their_text_form() {
        let counters = [
            Counter::Transplants {
                organ: Organ::LiverSegment,
                donor_type: DonorType::Living,
            },
            Counter::DeceasedToNonResident,
            Counter::LivingUnrelatedForeignDonor,
            Counter::ForeignLivingDonorNationality(country("MD")),
            Counter::Flags {
                rule_id: "TOURISM_FOREIGN_PAIR".into(),
                status: FlagStatus::InReview,
            },
            Counter::FlagsCleared {
                rule_id: "CLINIC_UNREGISTERED".into(),
            },
        ];
        for c in counters {
            let (metric, dimension) = c.parts();
            assert_eq!(Counter::from_parts(metric, &dimension), Ok(c));
        }
        assert!(Counter::from_parts("TRANSPLANTS", "KIDNEY").is_err());
        assert!(Counter::from_parts("FLAGS", "X/CLOSED").is_err());
        assert!(Counter::from_parts("OTHER", "").is_err());
    }

    #[test]
    fn the_share_is_of_deceased_donor_transplants() {
        let mut a = Activity::default();
        assert_eq!(a.non_resident_share(), 0.0);
        a.add(
            &Counter::Transplants {
                organ: Organ::Kidney,
                donor_type: DonorType::Deceased,
            },
            19,
        );
        a.add(
            &Counter::Transplants {
                organ: Organ::Liver,
                donor_type: DonorType::Deceased,
            },
            1,
        );
        a.add(
            &Counter::Transplants {
                organ: Organ::Kidney,
                donor_type: DonorType::Living,
            },
            5,
        );
        a.add(&Counter::DeceasedToNonResident, 2);
        assert_eq!(a.deceased_transplants(), 20);
        assert_eq!(a.total_transplants(), 25);
        assert!((a.non_resident_share() - 0.1).abs() < 1e-12);
    }

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn value(clinic: &str, month: NaiveDate, counter: Counter, n: i64) -> CounterValue {
        CounterValue {
            clinic_id: clinic.into(),
            month,
            counter,
            n,
        }
    }

    #[test]
    fn months_run_across_a_year_end() {
        assert_eq!(
            months_between(day(2024, 11, 1), day(2025, 2, 1)),
            vec![
                day(2024, 11, 1),
                day(2024, 12, 1),
                day(2025, 1, 1),
                day(2025, 2, 1)
            ]
        );
        assert!(months_between(day(2025, 2, 1), day(2025, 1, 1)).is_empty());
    }

    #[test]
    fn a_clinic_lists_every_month_and_sums_them() {
        let kidney = Counter::Transplants {
            organ: Organ::Kidney,
            donor_type: DonorType::Living,
        };
        let a = ClinicActivity::fold(
            "C",
            day(2025, 1, 1),
            day(2025, 3, 1),
            [
                value("C", day(2025, 1, 1), kidney.clone(), 2),
                value("C", day(2025, 3, 1), kidney.clone(), 3),
                value("C", day(2025, 4, 1), kidney.clone(), 100),
            ],
        );
        assert_eq!(a.months.len(), 3);
        assert_eq!(a.months[1].1, Activity::default());
        assert_eq!(a.total.total_transplants(), 5);
    }

    #[test]
    fn a_country_sums_its_clinics() {
        let c = Counter::DeceasedToNonResident;
        let a = CountryActivity::fold(
            day(2025, 1, 1),
            day(2025, 12, 1),
            [
                value("B", day(2025, 5, 1), c.clone(), 1),
                value("A", day(2025, 1, 1), c.clone(), 2),
                value("A", day(2025, 2, 1), c.clone(), 4),
            ],
        );
        let ids: Vec<&str> = a.clinics.iter().map(|c| c.clinic_id.as_str()).collect();
        assert_eq!(ids, ["A", "B"]);
        assert_eq!(a.clinics[0].total.deceased_to_non_resident, 6);
        assert_eq!(a.total.deceased_to_non_resident, 7);
    }
}
