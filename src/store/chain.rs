//! The hash chain over a record's versions: what each version's link
//! covers, and the walk that checks a record's versions in order.

use chrono::{DateTime, SubsecRound, Utc};
use ring::digest;

use crate::domain::ChainKey;
use crate::domain::chain::GENESIS;

/// Now, at the database's precision, so a hashed timestamp reads back equal.
pub(super) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    // Length-prefixed, so that no two different entries share an encoding.
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// What a record version's hash covers.
pub(super) fn version_content(
    record_id: i64,
    version: i32,
    content_hash: &[u8],
    reason: Option<&str>,
    recorded_at: DateTime<Utc>,
) -> Vec<u8> {
    let mut out = b"record_version/v1".to_vec();
    field(&mut out, &record_id.to_be_bytes());
    field(&mut out, &version.to_be_bytes());
    field(&mut out, content_hash);
    field(&mut out, reason.unwrap_or("\u{0}none").as_bytes());
    field(&mut out, &recorded_at.timestamp_micros().to_be_bytes());
    out
}

/// Walks one record's versions in order, checking each link.
pub(super) struct ChainWalk {
    pub(super) previous: [u8; 32],
}

impl ChainWalk {
    pub(super) fn new() -> Self {
        Self { previous: GENESIS }
    }
}

/// One version as stored: its chain entry, checked against its body's text.
pub(super) struct VersionEntry<'a> {
    pub(super) record_id: i64,
    pub(super) version: i32,
    pub(super) content_hash: &'a [u8],
    pub(super) reason: Option<&'a str>,
    pub(super) recorded_at: DateTime<Utc>,
    pub(super) chain_hash: Option<&'a [u8]>,
}

impl VersionEntry<'_> {
    /// Checks that `body` is what the content hash covers and the chain hash
    /// links this entry to the walk's previous one.
    pub(super) fn check(
        &self,
        body: &str,
        walk: &mut ChainWalk,
        chain: &ChainKey,
    ) -> Result<(), &'static str> {
        let body_hash = digest::digest(&digest::SHA256, body.as_bytes());
        if body_hash.as_ref() != self.content_hash {
            return Err("its content does not match its content hash");
        }
        let content = version_content(
            self.record_id,
            self.version,
            self.content_hash,
            self.reason,
            self.recorded_at,
        );
        let expected = chain.link(&walk.previous, &content);
        match self.chain_hash {
            Some(hash) if hash == expected => {
                walk.previous = expected;
                Ok(())
            }
            Some(_) => Err("its content or position does not match its chain hash"),
            None => Err("it has no chain hash"),
        }
    }
}
