//! HLA-A, -B and -DR typing at antigen level.

use std::collections::BTreeSet;

/// A person's HLA typing: up to two antigens at each of the A, B and DR loci.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HlaTyping {
    /// HLA-A antigens, such as `A2`.
    pub a: Vec<String>,
    /// HLA-B antigens, such as `B44`.
    pub b: Vec<String>,
    /// HLA-DR antigens, such as `DR4`.
    pub dr: Vec<String>,
}

/// Why an antigen list is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidHla {
    /// More than two antigens at one locus.
    #[error("at most two antigens per locus")]
    TooMany,
    /// An antigen not written as the locus name and a number (`A2`, `B44`, `DR4`).
    #[error("antigen {0:?} must be the locus name followed by 1 to 4 digits, such as {1}")]
    Malformed(String, &'static str),
}

impl HlaTyping {
    /// Checks and normalises (upper case) the antigens of one locus.
    pub fn parse_locus(
        locus: &'static str,
        antigens: &[String],
    ) -> Result<Vec<String>, InvalidHla> {
        if antigens.len() > 2 {
            return Err(InvalidHla::TooMany);
        }
        let example = match locus {
            "A" => "A2",
            "B" => "B44",
            _ => "DR4",
        };
        antigens
            .iter()
            .map(|raw| {
                let upper = raw.trim().to_ascii_uppercase();
                let digits = upper.strip_prefix(locus).unwrap_or("");
                if (1..=4).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
                    Ok(upper)
                } else {
                    Err(InvalidHla::Malformed(
                        raw.chars().take(16).collect(),
                        example,
                    ))
                }
            })
            .collect()
    }

    /// True when no locus is typed.
    pub fn is_empty(&self) -> bool {
        self.a.is_empty() && self.b.is_empty() && self.dr.is_empty()
    }

    /// Whether the two typings share at least one antigen at A, B or DR.
    pub fn shares_antigen_with(&self, other: &HlaTyping) -> bool {
        fn overlap(x: &[String], y: &[String]) -> bool {
            let x: BTreeSet<&String> = x.iter().collect();
            y.iter().any(|a| x.contains(a))
        }
        overlap(&self.a, &other.a) || overlap(&self.b, &other.b) || overlap(&self.dr, &other.dr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_and_normalises() {
        assert_eq!(
            HlaTyping::parse_locus("DR", &s(&["dr4", "DR15"])).unwrap(),
            s(&["DR4", "DR15"])
        );
        assert!(matches!(
            HlaTyping::parse_locus("A", &s(&["B7"])),
            Err(InvalidHla::Malformed(..))
        ));
        assert!(matches!(
            HlaTyping::parse_locus("A", &s(&["A"])),
            Err(InvalidHla::Malformed(..))
        ));
        assert_eq!(
            HlaTyping::parse_locus("B", &s(&["B7", "B8", "B9"])),
            Err(InvalidHla::TooMany)
        );
    }

    #[test]
    fn sharing_is_per_locus() {
        let x = HlaTyping {
            a: s(&["A1"]),
            b: s(&["B8"]),
            dr: s(&["DR3"]),
        };
        let y = HlaTyping {
            a: s(&["A2"]),
            b: s(&["B7"]),
            dr: s(&["DR3"]),
        };
        let z = HlaTyping {
            a: s(&["A2"]),
            b: s(&["B7"]),
            dr: s(&["DR4"]),
        };
        assert!(x.shares_antigen_with(&y));
        assert!(!x.shares_antigen_with(&z));
    }
}
