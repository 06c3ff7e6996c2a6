//! Person identifiers and the keyed fingerprints that replace them.
//!
//! A clear identifier lives only between decoding a request and fingerprinting
//! it; nothing downstream (rules, store, logs) ever sees one.

use std::fmt;

use ring::hmac;

use super::{CountryCode, IdentifierScheme};

/// The longest identifier value accepted, after normalisation.
pub const MAX_IDENTIFIER_LEN: usize = 64;

/// A normalised person identifier: scheme, issuing country and an upper-case
/// value without spaces or dashes. Its `Debug` output never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct PersonIdentifier {
    scheme: IdentifierScheme,
    issuing_country: CountryCode,
    value: String,
}

/// Why an identifier value cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidIdentifier {
    /// Nothing left once spaces and dashes are removed.
    #[error("must not be empty")]
    Empty,
    /// Longer than [`MAX_IDENTIFIER_LEN`].
    #[error("must be at most {MAX_IDENTIFIER_LEN} characters")]
    TooLong,
    /// Something other than letters and digits.
    #[error("must hold only ASCII letters and digits (spaces and dashes are ignored)")]
    BadCharacter,
}

impl PersonIdentifier {
    /// Normalises `value` (upper case, spaces and dashes removed) and checks it.
    pub fn new(
        scheme: IdentifierScheme,
        issuing_country: CountryCode,
        value: &str,
    ) -> Result<Self, InvalidIdentifier> {
        let mut normalised = String::with_capacity(value.len());
        for c in value.chars() {
            match c {
                ' ' | '-' | '\t' => {}
                c if c.is_ascii_alphanumeric() => normalised.push(c.to_ascii_uppercase()),
                _ => return Err(InvalidIdentifier::BadCharacter),
            }
            if normalised.len() > MAX_IDENTIFIER_LEN {
                return Err(InvalidIdentifier::TooLong);
            }
        }
        if normalised.is_empty() {
            return Err(InvalidIdentifier::Empty);
        }
        Ok(Self {
            scheme,
            issuing_country,
            value: normalised,
        })
    }

    /// The canonical bytes of the identifier: scheme, issuing country and
    /// normalised value, field-separated so that no two distinct
    /// identifiers share them. The fingerprint and the federation element
    /// both hash exactly these bytes, so the two always agree on who is
    /// the same person.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.value.len());
        out.extend_from_slice(self.scheme.as_str().as_bytes());
        out.push(0);
        out.extend_from_slice(self.issuing_country.as_str().as_bytes());
        out.push(0);
        out.extend_from_slice(self.value.as_bytes());
        out
    }
}

impl fmt::Debug for PersonIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PersonIdentifier({} {} <redacted>)",
            self.scheme, self.issuing_country
        )
    }
}

/// HMAC-SHA-256 of a normalised identifier under the service's secret key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Rebuilds a fingerprint from stored bytes; `None` unless exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({}…)", hex::encode(&self.0[..4]))
    }
}

/// The secret key identifiers are fingerprinted under. `Debug` never shows it.
#[derive(Clone)]
pub struct FingerprintKey(hmac::Key);

/// The shortest key accepted, in bytes: HMAC-SHA-256's own block of security.
pub const MIN_KEY_LEN: usize = 32;

/// A key too short to be secure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the fingerprint key must be at least {MIN_KEY_LEN} bytes")]
pub struct KeyTooShort;

impl FingerprintKey {
    /// A key from raw secret bytes.
    pub fn from_bytes(secret: &[u8]) -> Result<Self, KeyTooShort> {
        if secret.len() < MIN_KEY_LEN {
            return Err(KeyTooShort);
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }

    /// The fingerprint of a normalised identifier.
    pub fn fingerprint(&self, id: &PersonIdentifier) -> Fingerprint {
        let mut ctx = hmac::Context::with_key(&self.0);
        // Versioned and field-separated so that no two distinct identifiers
        // share an input.
        ctx.update(b"transplant-audit/person/v1\0");
        ctx.update(&id.canonical_bytes());
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        Fingerprint(out)
    }
}

impl FingerprintKey {
    /// A 32-byte subkey for another purpose, so that one configured secret
    /// serves several uses without reusing the key itself.
    pub fn derive(&self, purpose: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(hmac::sign(&self.0, purpose).as_ref());
        out
    }
}

impl fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FingerprintKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(value: &str) -> PersonIdentifier {
        PersonIdentifier::new(IdentifierScheme::Passport, "KZ".parse().unwrap(), value).unwrap()
    }

    #[test]
    fn normalisation_makes_spellings_equal() {
        let key = FingerprintKey::from_bytes(&[7; 32]).unwrap();
        assert_eq!(
            key.fingerprint(&id("ab-12 34")),
            key.fingerprint(&id("AB1234"))
        );
        assert_ne!(
            key.fingerprint(&id("AB1234")),
            key.fingerprint(&id("AB1235"))
        );
    }

    #[test]
    fn the_fingerprint_hashes_the_canonical_bytes_as_it_always_did() {
        // Fingerprints stored before the canonical form was shared must not move.
        let key = FingerprintKey::from_bytes(&[7; 32]).unwrap();
        let mut ctx = hmac::Context::with_key(&key.0);
        ctx.update(b"transplant-audit/person/v1\0PASSPORT\0KZ\0AB1234");
        assert_eq!(
            key.fingerprint(&id("ab-1234")).0[..],
            ctx.sign().as_ref()[..]
        );
        assert_eq!(id("AB1234").canonical_bytes(), b"PASSPORT\0KZ\0AB1234");
    }

    #[test]
    fn scheme_and_country_are_part_of_the_identity() {
        let key = FingerprintKey::from_bytes(&[7; 32]).unwrap();
        let national = PersonIdentifier::new(
            IdentifierScheme::NationalId,
            "KZ".parse().unwrap(),
            "AB1234",
        )
        .unwrap();
        let other_country =
            PersonIdentifier::new(IdentifierScheme::Passport, "DE".parse().unwrap(), "AB1234")
                .unwrap();
        let fp = key.fingerprint(&id("AB1234"));
        assert_ne!(fp, key.fingerprint(&national));
        assert_ne!(fp, key.fingerprint(&other_country));
    }

    #[test]
    fn different_keys_give_different_fingerprints() {
        let a = FingerprintKey::from_bytes(&[1; 32]).unwrap();
        let b = FingerprintKey::from_bytes(&[2; 32]).unwrap();
        assert_ne!(a.fingerprint(&id("X1")), b.fingerprint(&id("X1")));
        assert_eq!(
            FingerprintKey::from_bytes(&[1; 31]).unwrap_err(),
            KeyTooShort
        );
    }

    #[test]
    fn bad_values_are_refused_and_debug_hides_the_value() {
        let de = "DE".parse().unwrap();
        let scheme = IdentifierScheme::NationalId;
        assert_eq!(
            PersonIdentifier::new(scheme, de, " - ").unwrap_err(),
            InvalidIdentifier::Empty
        );
        assert_eq!(
            PersonIdentifier::new(scheme, de, "AB'; DROP").unwrap_err(),
            InvalidIdentifier::BadCharacter
        );
        assert_eq!(
            PersonIdentifier::new(scheme, de, &"9".repeat(65)).unwrap_err(),
            InvalidIdentifier::TooLong
        );
        assert!(!format!("{:?}", id("SECRET42")).contains("SECRET42"));
    }
}
