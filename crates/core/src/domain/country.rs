//! ISO 3166-1 alpha-2 country codes.

use std::fmt;
use std::str::FromStr;

/// Every officially assigned ISO 3166-1 alpha-2 code (249 of them), plus
/// XK, the user-assigned code the EU, the IMF and ICAO passports use for Kosovo.
const ASSIGNED: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ \
CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR \
GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP \
KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT \
MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW \
SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG \
UM US UY UZ VA VC VE VG VI VN VU WF WS XK YE YT ZA ZM ZW";

/// [`ASSIGNED`] as a table indexed by `26 * first letter + second letter`, so
/// that parsing a code (six per stored record read back) is one lookup rather
/// than a scan of the list.
static ASSIGNED_TABLE: [bool; 26 * 26] = assigned_table();

const fn assigned_table() -> [bool; 26 * 26] {
    let bytes = ASSIGNED.as_bytes();
    let mut table = [false; 26 * 26];
    let mut i = 0;
    while i + 1 < bytes.len() {
        table[slot(bytes[i], bytes[i + 1])] = true;
        i += 3;
    }
    table
}

/// The table slot of two ASCII upper-case letters.
const fn slot(first: u8, second: u8) -> usize {
    (first - b'A') as usize * 26 + (second - b'A') as usize
}

/// An assigned ISO 3166-1 alpha-2 country code, always upper case.
///
/// ```
/// use transplant_audit_core::domain::CountryCode;
///
/// let de: CountryCode = "de".parse().unwrap();
/// assert_eq!(de.as_str(), "DE");
/// assert!("XX".parse::<CountryCode>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountryCode([u8; 2]);

/// The text is not an assigned ISO 3166-1 alpha-2 code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be an assigned ISO 3166-1 alpha-2 country code such as \"DE\"")]
pub struct InvalidCountry;

impl CountryCode {
    /// The two-letter code.
    pub fn as_str(&self) -> &str {
        // Constructed only from two ASCII upper-case letters.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl FromStr for CountryCode {
    type Err = InvalidCountry;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != 2 || !bytes.iter().all(u8::is_ascii_alphabetic) {
            return Err(InvalidCountry);
        }
        let code = [bytes[0].to_ascii_uppercase(), bytes[1].to_ascii_uppercase()];
        if ASSIGNED_TABLE[slot(code[0], code[1])] {
            Ok(Self(code))
        } else {
            Err(InvalidCountry)
        }
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CountryCode({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lookup_table_holds_exactly_the_assigned_list() {
        for a in b'A'..=b'Z' {
            for b in b'A'..=b'Z' {
                let code = [a, b];
                let text = std::str::from_utf8(&code).unwrap();
                assert_eq!(
                    text.parse::<CountryCode>().is_ok(),
                    ASSIGNED.split(' ').any(|c| c == text),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn accepts_assigned_codes_in_any_case() {
        assert_eq!("de".parse::<CountryCode>().unwrap().as_str(), "DE");
        assert_eq!("KZ".parse::<CountryCode>().unwrap().to_string(), "KZ");
        assert_eq!(ASSIGNED.split(' ').count(), 250);
        assert!("XK".parse::<CountryCode>().is_ok());
    }

    #[test]
    fn rejects_malformed_and_unassigned_codes() {
        for bad in ["", "D", "DEU", "XX", "1A", "ZZ", "D-", "ÄÖ"] {
            assert!(bad.parse::<CountryCode>().is_err(), "{bad} accepted");
        }
    }
}
