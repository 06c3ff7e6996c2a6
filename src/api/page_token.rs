//! Opaque page tokens: a cursor bound to the filters it was issued for, so a
//! token reused with other filters is refused instead of giving a wrong page.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest;
use tonic::Status;

use super::status::invalid_field;

/// Encodes `cursor` for a listing whose filters render as `filters`.
pub fn encode(filters: &str, cursor: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1|{}|{cursor}", digest_of(filters)))
}

/// Decodes a token issued by [`encode`] for the same `filters`; `None` for an empty token.
pub fn decode(filters: &str, token: &str) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || invalid_field("page_token", "is not a token this listing issued");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let mut parts = text.splitn(3, '|');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("v1"), Some(d), Some(cursor)) if d == digest_of(filters) => {
            Ok(Some(cursor.to_owned()))
        }
        (Some("v1"), Some(_), Some(_)) => Err(invalid_field(
            "page_token",
            "was issued for other filters; start from the first page",
        )),
        _ => Err(bad()),
    }
}

fn digest_of(filters: &str) -> String {
    hex::encode(&digest::digest(&digest::SHA256, filters.as_bytes()).as_ref()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_mismatch() {
        let t = encode("status=OPEN", "42");
        assert_eq!(decode("status=OPEN", &t).unwrap().as_deref(), Some("42"));
        assert!(decode("status=CONFIRMED", &t).is_err());
        assert!(decode("status=OPEN", "not base64!").is_err());
        assert_eq!(decode("x", "").unwrap(), None);
    }
}
