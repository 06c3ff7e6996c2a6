//! The keyed hash chain that makes history tables tamper-evident.
//!
//! Each entry's hash is HMAC-SHA-256 over the previous entry's hash and the
//! entry's own content, under a key derived from the service's secret: a
//! row edited, inserted or removed behind the service's back no longer
//! matches, and without the key nobody can recompute a consistent chain.

use std::fmt;

use ring::hmac;

use super::FingerprintKey;

/// The hash before the first entry of a chain.
pub const GENESIS: [u8; 32] = [0; 32];

/// The key history entries are chained under.
#[derive(Clone)]
pub struct ChainKey(hmac::Key);

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChainKey(<redacted>)")
    }
}

impl ChainKey {
    /// Derives the chain key from the service's secret, so one secret serves both.
    pub fn derive(secret: &FingerprintKey) -> Self {
        Self(hmac::Key::new(
            hmac::HMAC_SHA256,
            &secret.derive(b"transplant-audit/chain/v1"),
        ))
    }

    /// The hash of an entry with `content` following an entry hashed `previous`.
    pub fn link(&self, previous: &[u8], content: &[u8]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(previous);
        ctx.update(content);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_depend_on_key_predecessor_and_content() {
        let a = ChainKey::derive(&FingerprintKey::from_bytes(&[1; 32]).unwrap());
        let b = ChainKey::derive(&FingerprintKey::from_bytes(&[2; 32]).unwrap());
        let first = a.link(&GENESIS, b"v1");
        assert_eq!(first, a.link(&GENESIS, b"v1"));
        assert_ne!(first, a.link(&GENESIS, b"v2"));
        assert_ne!(first, a.link(&first, b"v1"));
        assert_ne!(first, b.link(&GENESIS, b"v1"));
    }
}
