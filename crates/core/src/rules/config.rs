//! The rules configuration file: which rules run, at what severity, with which
//! thresholds. Every key is optional and defaults to the design's values;
//! unknown keys are errors, so a typo cannot silently leave a default in force.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::RuleId;
use super::ischemia_limits::IschemiaLimits;
use crate::domain::Severity;

/// The longest window accepted, in days: a century covers any back-fill.
const MAX_WINDOW_DAYS: u32 = 36_525;

/// The rule engine's configuration, validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RulesConfig {
    /// Per-rule switches and severity overrides; a rule not listed runs at its default.
    pub rules: BTreeMap<RuleId, RuleSettings>,
    /// `ISCHEMIA_IMPLAUSIBLE` thresholds.
    pub ischemia: IschemiaConfig,
    /// `DECEASED_DONOR_INCONSISTENT` thresholds.
    pub deceased_donor: DeceasedDonorConfig,
    /// `MINOR_LIVING_DONOR` threshold.
    pub living_donor: LivingDonorConfig,
    /// `CLINIC_FOREIGN_DONOR_SURGE` thresholds.
    pub surge: SurgeConfig,
    /// `DONOR_NATIONALITY_CLUSTER` thresholds.
    pub cluster: ClusterConfig,
    /// `CLINIC_NON_RESIDENT_SHARE` thresholds.
    pub non_resident_share: NonResidentShareConfig,
}

/// One rule's switch and severity override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleSettings {
    /// Whether the rule runs at all.
    pub enabled: bool,
    /// Replaces every severity the rule would otherwise give.
    pub severity: Option<Severity>,
}

impl Default for RuleSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            severity: None,
        }
    }
}

/// `ISCHEMIA_IMPLAUSIBLE` thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IschemiaConfig {
    /// Hard limits per organ, in hours.
    pub limit_hours: IschemiaLimits,
    /// How far, in minutes, reported cold ischemia may be from the timestamps' difference.
    pub report_tolerance_minutes: u32,
}

impl Default for IschemiaConfig {
    fn default() -> Self {
        Self {
            limit_hours: IschemiaLimits::default(),
            report_tolerance_minutes: 60,
        }
    }
}

/// `DECEASED_DONOR_INCONSISTENT` thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeceasedDonorConfig {
    /// How far apart, in minutes, two records may put one donor's death.
    pub death_tolerance_minutes: u32,
}

impl Default for DeceasedDonorConfig {
    fn default() -> Self {
        Self {
            death_tolerance_minutes: 60,
        }
    }
}

/// `MINOR_LIVING_DONOR` threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LivingDonorConfig {
    /// Living donors younger than this, in whole years, are minors.
    pub minor_age_years: u8,
}

impl Default for LivingDonorConfig {
    fn default() -> Self {
        Self {
            minor_age_years: 18,
        }
    }
}

/// `CLINIC_FOREIGN_DONOR_SURGE` thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SurgeConfig {
    /// Length of the window ending at the transplant, in days.
    pub window_days: u32,
    /// Fires from this many transplants in the window, the record itself included.
    pub min_count: u32,
}

impl Default for SurgeConfig {
    fn default() -> Self {
        Self {
            window_days: 30,
            min_count: 5,
        }
    }
}

/// `DONOR_NATIONALITY_CLUSTER` thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Length of the window ending at the transplant, in days.
    pub window_days: u32,
    /// Fires from this many foreign living donors of one nationality, the record's included.
    pub min_count: u32,
    /// ... who make up at least this share (0–1) of the window's foreign living donors.
    pub min_share: f64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            window_days: 90,
            min_count: 4,
            min_share: 0.6,
        }
    }
}

/// `CLINIC_NON_RESIDENT_SHARE` thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NonResidentShareConfig {
    /// Length of the window ending at the transplant, in days.
    pub window_days: u32,
    /// The rule applies from this many deceased-donor transplants in the window.
    pub min_transplants: u32,
    /// Fires when the non-resident share (0–1) is strictly above this.
    pub max_share: f64,
}

impl Default for NonResidentShareConfig {
    fn default() -> Self {
        Self {
            window_days: 365,
            min_transplants: 20,
            max_share: 0.05,
        }
    }
}

/// Why a rules configuration cannot be used; each names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum RulesConfigError {
    /// The file could not be read.
    #[error("cannot read rules configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown field, or a value of the wrong type (toml names the key and line).
    #[error("invalid rules configuration: {0}")]
    Toml(Box<toml::de::Error>),
    /// A `[rules.X]` table whose `X` is not a rule id of the catalogue.
    #[error("rules.{0}: unknown rule id {0:?}")]
    UnknownRule(String),
    /// A severity that is not LOW, MEDIUM, HIGH or CRITICAL.
    #[error(
        "rules.{rule}.severity: unknown severity {value:?}, expected LOW, MEDIUM, HIGH or CRITICAL"
    )]
    UnknownSeverity {
        /// The rule whose table holds it.
        rule: RuleId,
        /// The text given.
        value: String,
    },
    /// A threshold outside the range that makes sense for it.
    #[error("{key} = {value} is out of range: must be {expected}")]
    OutOfRange {
        /// The dotted key, such as `cluster.min_share`.
        key: String,
        /// The value given.
        value: String,
        /// The accepted range, in words.
        expected: &'static str,
    },
}

impl From<toml::de::Error> for RulesConfigError {
    fn from(e: toml::de::Error) -> Self {
        Self::Toml(Box::new(e))
    }
}

/// The file as written: rule ids and severities still text, ranges unchecked.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ConfigFile {
    rules: BTreeMap<String, RuleEntry>,
    ischemia: IschemiaConfig,
    deceased_donor: DeceasedDonorConfig,
    living_donor: LivingDonorConfig,
    surge: SurgeConfig,
    cluster: ClusterConfig,
    non_resident_share: NonResidentShareConfig,
}

/// One `[rules.X]` table as written.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RuleEntry {
    enabled: bool,
    severity: Option<String>,
}

impl Default for RuleEntry {
    fn default() -> Self {
        Self {
            enabled: true,
            severity: None,
        }
    }
}

impl RulesConfig {
    /// Parses and validates a configuration from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, RulesConfigError> {
        let file: ConfigFile = toml::from_str(text)?;
        let config = Self {
            rules: rule_settings(file.rules)?,
            ischemia: file.ischemia,
            deceased_donor: file.deceased_donor,
            living_donor: file.living_donor,
            surge: file.surge,
            cluster: file.cluster,
            non_resident_share: file.non_resident_share,
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, RulesConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| RulesConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Whether `rule` runs.
    pub fn is_enabled(&self, rule: RuleId) -> bool {
        self.rules.get(&rule).is_none_or(|s| s.enabled)
    }

    /// The configured severity of `rule`, if one replaces the rule's own.
    pub fn severity_override(&self, rule: RuleId) -> Option<Severity> {
        self.rules.get(&rule).and_then(|s| s.severity)
    }

    /// The rules that run, in catalogue order.
    pub fn enabled_rules(&self) -> impl Iterator<Item = RuleId> + '_ {
        RuleId::ALL
            .iter()
            .copied()
            .filter(|rule| self.is_enabled(*rule))
    }

    /// The surge window's length.
    pub fn surge_window(&self) -> chrono::Duration {
        chrono::Duration::days(self.surge.window_days.into())
    }

    /// The cluster window's length.
    pub fn cluster_window(&self) -> chrono::Duration {
        chrono::Duration::days(self.cluster.window_days.into())
    }

    /// The non-resident share window's length.
    pub fn share_window(&self) -> chrono::Duration {
        chrono::Duration::days(self.non_resident_share.window_days.into())
    }

    /// Checks every threshold against its range; the first bad one is reported.
    fn validate(&self) -> Result<(), RulesConfigError> {
        for (organ, hours) in self.ischemia.limit_hours.entries() {
            check_positive(&format!("ischemia.limit_hours.{organ}"), hours)?;
        }
        if !(1..=120).contains(&self.living_donor.minor_age_years) {
            return Err(out_of_range(
                "living_donor.minor_age_years",
                self.living_donor.minor_age_years,
                "between 1 and 120",
            ));
        }
        check_window("surge.window_days", self.surge.window_days)?;
        check_positive("surge.min_count", self.surge.min_count)?;
        check_window("cluster.window_days", self.cluster.window_days)?;
        check_positive("cluster.min_count", self.cluster.min_count)?;
        check_share("cluster.min_share", self.cluster.min_share)?;
        check_window(
            "non_resident_share.window_days",
            self.non_resident_share.window_days,
        )?;
        check_positive(
            "non_resident_share.min_transplants",
            self.non_resident_share.min_transplants,
        )?;
        check_share(
            "non_resident_share.max_share",
            self.non_resident_share.max_share,
        )
    }
}

/// Resolves rule ids and severities of the `[rules]` tables.
fn rule_settings(
    entries: BTreeMap<String, RuleEntry>,
) -> Result<BTreeMap<RuleId, RuleSettings>, RulesConfigError> {
    entries
        .into_iter()
        .map(|(id, entry)| {
            let rule: RuleId = id.parse().map_err(|_| RulesConfigError::UnknownRule(id))?;
            let severity = entry
                .severity
                .map(|value| {
                    value
                        .parse()
                        .map_err(|_| RulesConfigError::UnknownSeverity { rule, value })
                })
                .transpose()?;
            Ok((
                rule,
                RuleSettings {
                    enabled: entry.enabled,
                    severity,
                },
            ))
        })
        .collect()
}

fn out_of_range(key: &str, value: impl ToString, expected: &'static str) -> RulesConfigError {
    RulesConfigError::OutOfRange {
        key: key.to_owned(),
        value: value.to_string(),
        expected,
    }
}

fn check_positive(key: &str, value: u32) -> Result<(), RulesConfigError> {
    if value == 0 {
        Err(out_of_range(key, value, "at least 1"))
    } else {
        Ok(())
    }
}

fn check_window(key: &str, days: u32) -> Result<(), RulesConfigError> {
    if (1..=MAX_WINDOW_DAYS).contains(&days) {
        Ok(())
    } else {
        Err(out_of_range(key, days, "between 1 and 36525 days"))
    }
}

fn check_share(key: &str, share: f64) -> Result<(), RulesConfigError> {
    // Written as a range check so that NaN fails it too.
    if (0.0..=1.0).contains(&share) {
        Ok(())
    } else {
        Err(out_of_range(key, share, "a share between 0 and 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> String {
        RulesConfig::from_toml_str(text).unwrap_err().to_string()
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let c = RulesConfig::from_toml_str("").unwrap();
        assert_eq!(c, RulesConfig::default());
        assert_eq!(c.ischemia.report_tolerance_minutes, 60);
        assert_eq!(c.ischemia.limit_hours.kidney, 72);
        assert_eq!(c.deceased_donor.death_tolerance_minutes, 60);
        assert_eq!(c.living_donor.minor_age_years, 18);
        assert_eq!((c.surge.window_days, c.surge.min_count), (30, 5));
        assert_eq!((c.cluster.window_days, c.cluster.min_count), (90, 4));
        assert_eq!(c.cluster.min_share, 0.6);
        let share = c.non_resident_share;
        assert_eq!(
            (share.window_days, share.min_transplants, share.max_share),
            (365, 20, 0.05)
        );
        assert_eq!(c.surge_window(), chrono::Duration::days(30));
        assert_eq!(c.cluster_window(), chrono::Duration::days(90));
        assert_eq!(c.share_window(), chrono::Duration::days(365));
        assert_eq!(c.enabled_rules().count(), RuleId::ALL.len());
    }

    #[test]
    fn the_example_file_parses_to_the_defaults() {
        let text = include_str!("../../../../deploy/rules.example.toml");
        let mut c = RulesConfig::from_toml_str(text).unwrap();
        // It lists every rule, each with the settings a missing table would give.
        assert_eq!(c.rules.keys().copied().collect::<Vec<_>>(), RuleId::ALL);
        assert!(c.rules.values().all(|s| *s == RuleSettings::default()));
        c.rules.clear();
        assert_eq!(c, RulesConfig::default());
    }

    #[test]
    fn overrides_apply_and_leave_the_rest_at_default() {
        let c = RulesConfig::from_toml_str(
            r#"
            [rules.ABO_INCOMPATIBLE]
            severity = "CRITICAL"
            [rules.SAME_PERSON]
            enabled = false
            [ischemia.limit_hours]
            heart = 6
            [cluster]
            min_share = 0.75
            "#,
        )
        .unwrap();
        assert_eq!(
            c.severity_override(RuleId::AboIncompatible),
            Some(Severity::Critical)
        );
        assert!(c.is_enabled(RuleId::AboIncompatible));
        assert!(!c.is_enabled(RuleId::SamePerson));
        assert_eq!(c.severity_override(RuleId::SamePerson), None);
        assert!(!c.enabled_rules().any(|r| r == RuleId::SamePerson));
        assert_eq!(c.ischemia.limit_hours.heart, 6);
        assert_eq!(c.ischemia.limit_hours.lung, 12);
        assert_eq!(c.cluster.min_share, 0.75);
        assert_eq!(c.cluster.min_count, 4);
    }

    #[test]
    fn unknown_rule_id_is_named() {
        let e =
            RulesConfig::from_toml_str("[rules.ABO_INCOMPATIBEL]\nenabled = false").unwrap_err();
        assert!(matches!(&e, RulesConfigError::UnknownRule(id) if id == "ABO_INCOMPATIBEL"));
        assert!(e.to_string().contains("ABO_INCOMPATIBEL"));
    }

    #[test]
    fn unknown_severity_is_named_with_its_rule() {
        let msg = parse_err("[rules.SAME_PERSON]\nseverity = \"SEVERE\"");
        assert!(msg.contains("rules.SAME_PERSON.severity"), "{msg}");
        assert!(msg.contains("SEVERE"), "{msg}");
    }

    #[test]
    fn unknown_fields_are_named_at_every_level() {
        for (text, key) in [
            ("colour = 1", "colour"),
            ("[surge]\nwindow = 3", "window"),
            ("[ischemia.limit_hours]\nliver_segment = 3", "liver_segment"),
            ("[rules.SAME_PERSON]\nenable = false", "enable"),
            ("[non_resident_share]\nmax = 0.1", "max"),
        ] {
            let msg = parse_err(text);
            assert!(msg.contains(key), "{text:?}: {msg}");
        }
    }

    #[test]
    fn wrong_types_are_errors() {
        assert!(RulesConfig::from_toml_str("[surge]\nwindow_days = \"thirty\"").is_err());
        assert!(RulesConfig::from_toml_str("[surge]\nwindow_days = -1").is_err());
        assert!(RulesConfig::from_toml_str("[rules.SAME_PERSON]\nenabled = 1").is_err());
    }

    #[test]
    fn out_of_range_thresholds_are_named() {
        for (text, key) in [
            ("[cluster]\nmin_share = 1.5", "cluster.min_share"),
            ("[cluster]\nmin_share = -0.1", "cluster.min_share"),
            ("[cluster]\nmin_share = nan", "cluster.min_share"),
            ("[cluster]\nwindow_days = 0", "cluster.window_days"),
            ("[cluster]\nmin_count = 0", "cluster.min_count"),
            ("[surge]\nwindow_days = 0", "surge.window_days"),
            ("[surge]\nwindow_days = 40000", "surge.window_days"),
            ("[surge]\nmin_count = 0", "surge.min_count"),
            (
                "[non_resident_share]\nmax_share = 2.0",
                "non_resident_share.max_share",
            ),
            (
                "[non_resident_share]\nwindow_days = 0",
                "non_resident_share.window_days",
            ),
            (
                "[non_resident_share]\nmin_transplants = 0",
                "non_resident_share.min_transplants",
            ),
            (
                "[ischemia.limit_hours]\nheart = 0",
                "ischemia.limit_hours.heart",
            ),
            (
                "[living_donor]\nminor_age_years = 0",
                "living_donor.minor_age_years",
            ),
            (
                "[living_donor]\nminor_age_years = 121",
                "living_donor.minor_age_years",
            ),
        ] {
            let e = RulesConfig::from_toml_str(text).unwrap_err();
            assert!(
                matches!(&e, RulesConfigError::OutOfRange { key: k, .. } if k == key),
                "{text:?}: {e}"
            );
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn shares_at_the_ends_of_the_range_are_accepted() {
        let c = RulesConfig::from_toml_str(
            "[cluster]\nmin_share = 1.0\n[non_resident_share]\nmax_share = 0.0",
        )
        .unwrap();
        assert_eq!(
            (c.cluster.min_share, c.non_resident_share.max_share),
            (1.0, 0.0)
        );
    }

    #[test]
    fn load_reads_a_file_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, "[surge]\nmin_count = 7\n").unwrap();
        assert_eq!(RulesConfig::load(&path).unwrap().surge.min_count, 7);
        let missing = dir.path().join("absent.toml");
        let msg = RulesConfig::load(&missing).unwrap_err().to_string();
        assert!(msg.contains("absent.toml"), "{msg}");
    }
}
