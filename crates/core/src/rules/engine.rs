//! Runs the catalogue's rules over one record and turns their hits into findings.

use chrono::{DateTime, Utc};

use super::{
    Finding, RuleContext, RuleId, RulesConfig, clinic, federation, pairing, repeat_donor, tourism,
};
use crate::domain::{Record, RecordId, Severity};

/// What a rule reports when it fires; the engine adds the rule id and the final severity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hit {
    /// The auditor's sentence(s): facts only, never an identifier.
    pub(super) explanation: String,
    /// Earlier records that take part.
    pub(super) evidence: Vec<RecordId>,
    /// A severity that depends on the case; `None` uses the rule's default.
    pub(super) severity: Option<Severity>,
}

impl Hit {
    /// A hit with no evidence at the rule's default severity.
    pub(super) fn new(explanation: impl Into<String>) -> Self {
        Self {
            explanation: explanation.into(),
            evidence: Vec::new(),
            severity: None,
        }
    }

    /// Adds the evidence records, sorted and without repeats so findings compare stably.
    pub(super) fn with_evidence(mut self, mut evidence: Vec<RecordId>) -> Self {
        evidence.sort_unstable();
        evidence.dedup();
        self.evidence = evidence;
        self
    }

    /// Sets a case-dependent severity (configuration may still replace it).
    pub(super) fn with_severity(mut self, severity: Severity) -> Self {
        self.severity = Some(severity);
        self
    }
}

/// The rule engine: the catalogue under one configuration. Pure and cheap to share.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    config: RulesConfig,
}

impl Engine {
    /// An engine applying `config`.
    pub fn new(config: RulesConfig) -> Self {
        Self { config }
    }

    /// The configuration in force.
    pub fn config(&self) -> &RulesConfig {
        &self.config
    }

    /// Runs every enabled rule; at most one finding per rule, in catalogue order.
    pub fn evaluate(&self, record: &Record, ctx: &RuleContext<'_>) -> Vec<Finding> {
        self.evaluate_only(record, ctx, RuleId::ALL)
    }

    /// Runs the enabled rules among `rules` (a rescan after a rule change);
    /// repeats in `rules` are ignored and findings come in catalogue order.
    pub fn evaluate_only(
        &self,
        record: &Record,
        ctx: &RuleContext<'_>,
        rules: &[RuleId],
    ) -> Vec<Finding> {
        self.config
            .enabled_rules()
            .filter(|rule| rules.contains(rule))
            .filter_map(|rule| {
                let hit = run(rule, record, ctx, &self.config)?;
                Some(self.finding(rule, hit))
            })
            .collect()
    }

    /// [`Engine::evaluate`] with a span per rule family, for one record in a
    /// traced call (a rescan of millions of records uses the untraced one).
    pub fn evaluate_traced(&self, record: &Record, ctx: &RuleContext<'_>) -> Vec<Finding> {
        let mut findings = Vec::new();
        let mut family: Option<(&str, tracing::span::EnteredSpan)> = None;
        for rule in self.config.enabled_rules() {
            if family.as_ref().map(|(name, _)| *name) != Some(rule.family()) {
                // Leave the previous family's span before entering the next,
                // so that they are siblings.
                drop(family.take());
                let span = tracing::info_span!(
                    "rule_family",
                    otel.name = %format_args!("rules.{}", rule.family()),
                    family = rule.family(),
                );
                family = Some((rule.family(), span.entered()));
            }
            if let Some(hit) = run(rule, record, ctx, &self.config) {
                findings.push(self.finding(rule, hit));
            }
        }
        drop(family);
        findings
    }

    fn finding(&self, rule: RuleId, hit: Hit) -> Finding {
        let severity = self
            .config
            .severity_override(rule)
            .or(hit.severity)
            .unwrap_or(rule.default_severity());
        Finding {
            rule,
            severity,
            explanation: hit.explanation,
            evidence: hit.evidence,
        }
    }
}

/// Dispatches one rule; the exhaustive match keeps the catalogue and the code in step.
fn run(rule: RuleId, record: &Record, ctx: &RuleContext<'_>, cfg: &RulesConfig) -> Option<Hit> {
    let history = ctx.donor_history;
    let window = ctx.clinic_window;
    match rule {
        RuleId::AboIncompatible => pairing::abo_incompatible(record),
        RuleId::IschemiaImplausible => pairing::ischemia_implausible(record, &cfg.ischemia),
        RuleId::LivingDonorOrgan => pairing::living_donor_organ(record),
        RuleId::MinorLivingDonor => pairing::minor_living_donor(record, &cfg.living_donor),
        RuleId::SamePerson => pairing::same_person(record),
        RuleId::DeathAfterProcurement => pairing::death_after_procurement(record),
        RuleId::RelationGeneticallyImplausible => pairing::relation_genetically_implausible(record),
        RuleId::AnatomicalMaximum => repeat_donor::anatomical_maximum(record, history),
        RuleId::RepeatForeignLivingDonor => {
            repeat_donor::repeat_foreign_living_donor(record, history)
        }
        RuleId::DeceasedDonorInconsistent => {
            repeat_donor::deceased_donor_inconsistent(record, history, &cfg.deceased_donor)
        }
        RuleId::ClinicUnregistered => clinic::unregistered(ctx.clinic),
        RuleId::ClinicNotLicensed => clinic::not_licensed(record, ctx.clinic?),
        RuleId::ClinicLicenceInvalid => clinic::licence_invalid(record, ctx.clinic?),
        RuleId::ClinicCountryMismatch => clinic::country_mismatch(record, ctx.clinic?),
        RuleId::ClinicNonResidentShare => {
            tourism::non_resident_share(record, window, &cfg.non_resident_share)
        }
        RuleId::TourismForeignPair => tourism::foreign_pair(record),
        RuleId::ClinicForeignDonorSurge => tourism::foreign_donor_surge(record, window, &cfg.surge),
        RuleId::DonorNationalityCluster => {
            tourism::nationality_cluster(record, window, &cfg.cluster)
        }
        RuleId::CrossBorderRepeatLivingDonor => {
            federation::cross_border_repeat_living_donor(record, ctx.peer_matches)
        }
    }
}

/// An instant as explanations show it, to the minute.
pub(super) fn instant(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// A count with its noun: `1 record`, `2 records`.
pub(super) fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A span of minutes as explanations show it: `9 h 30 min`, `8 h`, `45 min`.
pub(super) fn duration(minutes: i64) -> String {
    let (sign, minutes) = if minutes < 0 {
        ("-", minutes.unsigned_abs())
    } else {
        ("", minutes.unsigned_abs())
    };
    match (minutes / 60, minutes % 60) {
        (0, m) => format!("{sign}{m} min"),
        (h, 0) => format!("{sign}{h} h"),
        (h, m) => format!("{sign}{h} h {m} min"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AboGroup, DonorRelation, Laterality, Organ};
    use crate::rules::ClinicWindow;
    use crate::rules::config::RuleSettings;
    use crate::rules::fixtures::*;

    fn rules_of(findings: &[Finding]) -> Vec<RuleId> {
        findings.iter().map(|f| f.rule).collect()
    }

    /// A record that breaks ABO (HIGH), ischemia (MEDIUM) and the unregistered clinic rule.
    fn troubled() -> Record {
        let mut r = deceased();
        r.donor.person.abo = AboGroup::A;
        r.recipient.abo = AboGroup::O;
        r.cold_ischemia_minutes = Some(10);
        r
    }

    fn config_with(rule: RuleId, settings: RuleSettings) -> RulesConfig {
        let mut config = RulesConfig::default();
        config.rules.insert(rule, settings);
        config
    }

    #[test]
    fn a_plain_record_raises_nothing() {
        let c = clinic_de();
        let window = ClinicWindow::default();
        let engine = Engine::default();
        assert!(
            engine
                .evaluate(
                    &living(DonorRelation::Sibling),
                    &ctx(Some(&c), &[], &window)
                )
                .is_empty()
        );
        assert!(
            engine
                .evaluate(&deceased(), &ctx(Some(&c), &[], &window))
                .is_empty()
        );
    }

    #[test]
    fn every_firing_rule_gives_one_finding_at_its_default_severity() {
        let window = ClinicWindow::default();
        let found = Engine::default().evaluate(&troubled(), &ctx(None, &[], &window));
        assert_eq!(
            rules_of(&found),
            [
                RuleId::AboIncompatible,
                RuleId::IschemiaImplausible,
                RuleId::ClinicUnregistered
            ]
        );
        for f in &found {
            assert_eq!(f.severity, f.rule.default_severity(), "{}", f.rule);
        }
    }

    #[test]
    fn the_traced_evaluation_finds_the_same() {
        let c = clinic_de();
        let window = ClinicWindow::default();
        let engine = Engine::default();
        for (record, clinic) in [(troubled(), None), (deceased(), Some(&c))] {
            let context = ctx(clinic, &[], &window);
            assert_eq!(
                engine.evaluate_traced(&record, &context),
                engine.evaluate(&record, &context)
            );
        }
        assert_eq!(
            rules_of(&engine.evaluate_traced(&troubled(), &ctx(None, &[], &window))),
            [
                RuleId::AboIncompatible,
                RuleId::IschemiaImplausible,
                RuleId::ClinicUnregistered
            ]
        );
    }

    #[test]
    fn severity_override_replaces_the_default() {
        let settings = RuleSettings {
            enabled: true,
            severity: Some(Severity::Low),
        };
        let engine = Engine::new(config_with(RuleId::AboIncompatible, settings));
        let window = ClinicWindow::default();
        let found = engine.evaluate(&troubled(), &ctx(None, &[], &window));
        assert_eq!(found[0].rule, RuleId::AboIncompatible);
        assert_eq!(found[0].severity, Severity::Low);
        assert_eq!(found[1].severity, Severity::Medium);
    }

    #[test]
    fn severity_override_replaces_a_case_dependent_severity() {
        let settings = RuleSettings {
            enabled: true,
            severity: Some(Severity::Critical),
        };
        let engine = Engine::new(config_with(RuleId::TourismForeignPair, settings));
        let mut r = living(DonorRelation::UnrelatedDirected);
        r.donor.person = foreigner(r.donor.person, "MD");
        let c = clinic_de();
        let window = ClinicWindow::default();
        let found = engine.evaluate(&r, &ctx(Some(&c), &[], &window));
        assert_eq!(rules_of(&found), [RuleId::TourismForeignPair]);
        assert_eq!(found[0].severity, Severity::Critical);
        let found = Engine::default().evaluate(&r, &ctx(Some(&c), &[], &window));
        assert_eq!(found[0].severity, Severity::Medium);
    }

    #[test]
    fn disabled_rules_do_not_run() {
        let settings = RuleSettings {
            enabled: false,
            severity: None,
        };
        let engine = Engine::new(config_with(RuleId::IschemiaImplausible, settings));
        let window = ClinicWindow::default();
        let found = engine.evaluate(&troubled(), &ctx(None, &[], &window));
        assert_eq!(
            rules_of(&found),
            [RuleId::AboIncompatible, RuleId::ClinicUnregistered]
        );
        let only = engine.evaluate_only(
            &troubled(),
            &ctx(None, &[], &window),
            &[RuleId::IschemiaImplausible],
        );
        assert!(only.is_empty());
    }

    #[test]
    fn evaluate_only_runs_the_chosen_rules_once_each() {
        let window = ClinicWindow::default();
        let chosen = [
            RuleId::ClinicUnregistered,
            RuleId::IschemiaImplausible,
            RuleId::ClinicUnregistered,
        ];
        let found = Engine::default().evaluate_only(&troubled(), &ctx(None, &[], &window), &chosen);
        assert_eq!(
            rules_of(&found),
            [RuleId::IschemiaImplausible, RuleId::ClinicUnregistered]
        );
    }

    #[test]
    fn unregistered_clinic_is_raised_alone_among_clinic_rules() {
        let mut r = deceased();
        r.procedure_country = "PL".parse().unwrap();
        let window = ClinicWindow::default();
        let found = Engine::default().evaluate(&r, &ctx(None, &[], &window));
        assert_eq!(rules_of(&found), [RuleId::ClinicUnregistered]);
    }

    #[test]
    fn history_rules_carry_their_evidence() {
        let earlier = [prior(
            7,
            Organ::Kidney,
            Laterality::Left,
            living_kind(),
            procured(),
        )];
        let mut r = living(DonorRelation::Sibling);
        r.laterality = Laterality::Right;
        let c = clinic_de();
        let window = ClinicWindow::default();
        let found = Engine::default().evaluate(&r, &ctx(Some(&c), &earlier, &window));
        assert_eq!(rules_of(&found), [RuleId::AnatomicalMaximum]);
        assert_eq!(found[0].evidence, [RecordId(7)]);
        assert_eq!(found[0].severity, Severity::Critical);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(45), "45 min");
        assert_eq!(duration(480), "8 h");
        assert_eq!(duration(570), "9 h 30 min");
        assert_eq!(duration(-90), "-1 h 30 min");
    }
}
