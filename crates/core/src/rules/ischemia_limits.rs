//! Cold-ischemia hard limits per organ: the one place they are defined.
//!
//! These are not clinical targets but the edge of the plausible. Guidelines
//! disagree on how long an organ survives cold storage and keep moving as
//! preservation improves, so each default is about twice the usual guideline
//! value; a time beyond it means the record is wrong, or that a perfusion
//! device nobody declared was used (machine perfusion lifts the limit).
//!
//! Guideline values the defaults are doubled from:
//!
//! - heart 4–6 h, lung 6–8 h, liver 8–12 h, pancreas 12–15 h, intestine 6–8 h,
//!   kidney 24–36 h: Council of Europe (EDQM), *Guide to the quality and safety
//!   of organs for transplantation*, 8th ed. (2022), organ-specific chapters;
//!   Eurotransplant Manual, chapters on organ-specific allocation and the
//!   ESOT guidance it follows; OPTN/UNOS policies and the OPTN/SRTR annual
//!   data reports, which record ischemia times of accepted organs.
//! - Kidney: Debout A. et al., "Each additional hour of cold ischemia time
//!   significantly increases the risk of graft failure and mortality following
//!   renal transplantation", Kidney Int. 2015;87(2):343–349.
//! - Liver: Stahl J.E. et al., "Consequences of cold-ischemia time on primary
//!   nonfunction and patient and graft survival in liver transplantation: a
//!   meta-analysis", PLoS One 2008;3(6):e2468.
//! - Heart: Russo M.J. et al., "The effect of ischemic time on survival after
//!   heart transplantation varies by donor age: an analysis of the United
//!   Network for Organ Sharing database", J Thorac Cardiovasc Surg
//!   2007;133(2):554–559.
//! - Lung: Grimm J.C. et al., "Association between prolonged graft ischemia
//!   and primary graft failure or survival following lung transplantation",
//!   JAMA Surg. 2015;150(6):547–553.
//!
//! A liver segment or a lung lobe takes its whole organ's limit: splitting
//! does not make the tissue survive longer or shorter in a way a hard limit
//! could tell apart.

use serde::Deserialize;

use crate::domain::Organ;

/// The built-in limits, in hours (see the module documentation for sources).
pub const DEFAULT_LIMITS: IschemiaLimits = IschemiaLimits {
    heart: 8,
    lung: 12,
    liver: 24,
    pancreas: 30,
    intestine: 16,
    kidney: 72,
};

/// Cold-ischemia hard limits in whole hours, one per whole organ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IschemiaLimits {
    /// Heart.
    pub heart: u32,
    /// Lung, and a lung lobe.
    pub lung: u32,
    /// Liver, and a liver segment.
    pub liver: u32,
    /// Pancreas.
    pub pancreas: u32,
    /// Intestine.
    pub intestine: u32,
    /// Kidney.
    pub kidney: u32,
}

impl Default for IschemiaLimits {
    fn default() -> Self {
        DEFAULT_LIMITS
    }
}

impl IschemiaLimits {
    /// The limit for `organ` in hours; parts take their whole organ's limit.
    pub const fn hours(&self, organ: Organ) -> u32 {
        match organ {
            Organ::Heart => self.heart,
            Organ::Lung | Organ::LungLobe => self.lung,
            Organ::Liver | Organ::LiverSegment => self.liver,
            Organ::Pancreas => self.pancreas,
            Organ::Intestine => self.intestine,
            Organ::Kidney => self.kidney,
        }
    }

    /// The limit for `organ` in minutes.
    pub fn minutes(&self, organ: Organ) -> i64 {
        i64::from(self.hours(organ)) * 60
    }

    /// Every limit with its configuration key, for validation.
    pub(super) const fn entries(&self) -> [(&'static str, u32); 6] {
        [
            ("heart", self.heart),
            ("lung", self.lung),
            ("liver", self.liver),
            ("pancreas", self.pancreas),
            ("intestine", self.intestine),
            ("kidney", self.kidney),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_hard_limits() {
        let l = IschemiaLimits::default();
        let expected = [
            (Organ::Heart, 8),
            (Organ::Lung, 12),
            (Organ::Liver, 24),
            (Organ::Pancreas, 30),
            (Organ::Intestine, 16),
            (Organ::Kidney, 72),
        ];
        for (organ, hours) in expected {
            assert_eq!(l.hours(organ), hours, "{organ}");
        }
        assert_eq!(l.minutes(Organ::Heart), 480);
    }

    #[test]
    fn parts_take_the_whole_organs_limit() {
        let l = IschemiaLimits {
            liver: 20,
            lung: 10,
            ..DEFAULT_LIMITS
        };
        assert_eq!(l.hours(Organ::LiverSegment), 20);
        assert_eq!(l.hours(Organ::LungLobe), 10);
    }
}
