//! Opaque page tokens: the position a listing stopped at, bound to the
//! listing and the filters it was issued for and signed
//! ([`PageTokenKey`]), so a token reused with other filters is refused
//! instead of giving a wrong page, and a forged or altered one is refused
//! before its position reaches a query.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest;
use tonic::Status;

use super::status::invalid_field;
use crate::domain::{FingerprintKey, PageTokenKey};

/// The tag's bytes, first in a token.
const TAG_LEN: usize = 32;

/// The filters' digest's bytes, after the tag.
const FILTERS_LEN: usize = 8;

/// The longest token accepted, in characters: a tag, a digest and a
/// position of up to a few hundred bytes (a clinic id is at most 128).
const MAX_TOKEN_LEN: usize = 1024;

/// The version of the token layout, signed with the rest.
const VERSION: &[u8] = b"v2";

/// Issues and checks the page tokens of every listing.
#[derive(Clone, Debug)]
pub struct PageTokens {
    key: Arc<PageTokenKey>,
}

impl PageTokens {
    /// Tokens signed under a key derived from the service's secret.
    pub fn new(secret: &FingerprintKey) -> Self {
        Self {
            key: Arc::new(PageTokenKey::derive(secret)),
        }
    }

    /// A token for `cursor` in `listing` (`flags`, `clinics`, `keys`) whose
    /// filters render as `filters`.
    pub fn encode(&self, listing: &str, filters: &str, cursor: &str) -> String {
        let digest = digest_of(filters);
        let tag = self
            .key
            .sign(&[VERSION, listing.as_bytes(), &digest, cursor.as_bytes()]);
        let mut raw = Vec::with_capacity(TAG_LEN + FILTERS_LEN + cursor.len());
        raw.extend_from_slice(&tag);
        raw.extend_from_slice(&digest);
        raw.extend_from_slice(cursor.as_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The cursor of a token this service issued for `listing` with the
    /// same `filters`; `None` for an empty token; INVALID_ARGUMENT naming
    /// `page_token` for anything else.
    pub fn decode(
        &self,
        listing: &str,
        filters: &str,
        token: &str,
    ) -> Result<Option<String>, Status> {
        if token.is_empty() {
            return Ok(None);
        }
        let forged = || invalid_field("page_token", "is not a token this listing issued");
        if token.len() > MAX_TOKEN_LEN {
            return Err(forged());
        }
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| forged())?;
        if raw.len() < TAG_LEN + FILTERS_LEN {
            return Err(forged());
        }
        let (tag, rest) = raw.split_at(TAG_LEN);
        let (digest, cursor) = rest.split_at(FILTERS_LEN);
        if !self
            .key
            .verify(&[VERSION, listing.as_bytes(), digest, cursor], tag)
        {
            return Err(forged());
        }
        if digest != digest_of(filters) {
            return Err(invalid_field(
                "page_token",
                "was issued for other filters; start from the first page",
            ));
        }
        // Signed by us, so it is a position we wrote.
        String::from_utf8(cursor.to_vec())
            .map(Some)
            .map_err(|_| forged())
    }
}

fn digest_of(filters: &str) -> [u8; FILTERS_LEN] {
    let mut out = [0u8; FILTERS_LEN];
    out.copy_from_slice(
        &digest::digest(&digest::SHA256, filters.as_bytes()).as_ref()[..FILTERS_LEN],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(byte: u8) -> PageTokens {
        PageTokens::new(&FingerprintKey::from_bytes(&[byte; 32]).unwrap())
    }

    #[test]
    fn round_trip_and_mismatch() {
        let tokens = tokens(1);
        let t = tokens.encode("flags", "status=OPEN", "42");
        assert_eq!(
            tokens
                .decode("flags", "status=OPEN", &t)
                .unwrap()
                .as_deref(),
            Some("42")
        );
        let other_filters = tokens.decode("flags", "status=CONFIRMED", &t).unwrap_err();
        assert!(
            other_filters.message().contains("other filters"),
            "{other_filters:?}"
        );
        assert!(
            tokens.decode("clinics", "status=OPEN", &t).is_err(),
            "another listing's"
        );
        assert!(
            tokens
                .decode("flags", "status=OPEN", "not base64!")
                .is_err()
        );
        assert_eq!(tokens.decode("flags", "x", "").unwrap(), None);
    }

    #[test]
    fn forged_and_altered_tokens_are_refused() {
        let ours = tokens(1);
        let theirs = tokens(2);
        let t = ours.encode("clinics", "country=", "DE-BER-01");
        let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let altered = URL_SAFE_NO_PAD.encode(&raw);
        let unsigned = URL_SAFE_NO_PAD.encode(format!("v1|{}|\u{0}", "0".repeat(16)));
        for token in [
            altered,
            theirs.encode("clinics", "country=", "\u{0}"),
            unsigned,
            "A".repeat(2000),
            URL_SAFE_NO_PAD.encode([0u8; 39]),
        ] {
            let status = ours.decode("clinics", "country=", &token).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{token}");
            assert!(status.message().contains("page_token"), "{status:?}");
        }
    }
}
