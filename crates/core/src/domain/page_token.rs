//! The key page tokens are signed with.
//!
//! A page token carries the position a listing stopped at. Signed, a token
//! the service did not issue (forged, or altered on the way) is told apart
//! from a real one before its position reaches a query.

use std::fmt;

use ring::hmac;

use super::FingerprintKey;

/// The HMAC-SHA-256 key of page tokens, derived from the service's secret
/// for this purpose alone, so every replica signs and checks alike.
#[derive(Clone)]
pub struct PageTokenKey(hmac::Key);

impl fmt::Debug for PageTokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PageTokenKey(<redacted>)")
    }
}

impl PageTokenKey {
    /// Derives the page-token key from the service's secret.
    pub fn derive(secret: &FingerprintKey) -> Self {
        Self(hmac::Key::new(
            hmac::HMAC_SHA256,
            &secret.derive(b"transplant-audit/page-token/v1"),
        ))
    }

    /// The tag of `parts`, each length-prefixed so that no two lists of
    /// parts share an input.
    pub fn sign(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.0);
        for part in parts {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Whether `tag` is the tag of `parts`, compared in constant time.
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let expected = self.sign(parts);
        tag.len() == expected.len()
            && tag
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_depend_on_the_key_and_every_part() {
        let secret = FingerprintKey::from_bytes(&[1; 32]).unwrap();
        let key = PageTokenKey::derive(&secret);
        let other = PageTokenKey::derive(&FingerprintKey::from_bytes(&[2; 32]).unwrap());
        let tag = key.sign(&[b"flags", b"42"]);
        assert!(key.verify(&[b"flags", b"42"], &tag));
        assert!(!key.verify(&[b"flags", b"43"], &tag));
        assert!(!key.verify(&[b"flag", b"s42"], &tag), "parts are delimited");
        assert!(!key.verify(&[b"flags", b"42"], &tag[..31]));
        assert!(!other.verify(&[b"flags", b"42"], &tag));
    }
}
