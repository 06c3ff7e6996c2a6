//! The ledger's primitives: the keyed MAC every piece of evidence carries,
//! the entries and blocks that seal them, and the signed digests kept
//! outside the database.
//!
//! A row's MAC (HMAC-SHA-256 under a key derived from the service's secret)
//! covers its content; nobody without the key can write a row the service
//! would accept. Rows are sealed, in the order of a database-wide sequence,
//! into blocks: each block lists its entries (sequence number, table, the
//! state it replaces, a prefix of the row's MAC), hashes them, and chains
//! to the block before. A block's digest is signed with Ed25519 and kept
//! outside the database, so that once a digest is out, no deletion, edit or
//! rewind of what its blocks cover goes unseen — even by someone holding the
//! MAC key.

use std::fmt;

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signer, Verifier};
use ring::{digest, hmac};
use serde::{Deserialize, Serialize};

use super::FingerprintKey;

/// The tables whose rows are evidence, as entries name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum LedgerTable {
    /// A record's current version.
    Records = 1,
    /// A version an amendment replaced.
    RecordVersions = 2,
    /// A step in a flag's life, from the one that raised it.
    FlagEvents = 3,
    /// A version of a clinic's registry entry.
    ClinicVersions = 4,
    /// A person or system that holds API keys.
    Principals = 5,
    /// An API key (its hash, role, expiry, revocation).
    ApiKeys = 6,
    /// An NDJSON import's checkpoint.
    Imports = 7,
    /// A read of evidence by an auditor or an administrator.
    AccessLog = 8,
    /// A peer registry of the federation.
    FederationPeers = 9,
    /// One call of a federation exchange, on either side.
    FederationExchanges = 10,
    /// A local record whose living donor a peer registry holds too.
    FederationMatches = 11,
    /// An event in an investigation case's life, from the one that opened it.
    CaseEvents = 20,
}

impl LedgerTable {
    /// Every table, in tag order.
    pub const ALL: [LedgerTable; 12] = [
        LedgerTable::Records,
        LedgerTable::RecordVersions,
        LedgerTable::FlagEvents,
        LedgerTable::ClinicVersions,
        LedgerTable::Principals,
        LedgerTable::ApiKeys,
        LedgerTable::Imports,
        LedgerTable::AccessLog,
        LedgerTable::FederationPeers,
        LedgerTable::FederationExchanges,
        LedgerTable::FederationMatches,
        LedgerTable::CaseEvents,
    ];

    /// The table's name in the database.
    pub const fn name(self) -> &'static str {
        match self {
            LedgerTable::Records => "records",
            LedgerTable::RecordVersions => "record_versions",
            LedgerTable::FlagEvents => "flag_events",
            LedgerTable::ClinicVersions => "clinic_versions",
            LedgerTable::Principals => "principals",
            LedgerTable::ApiKeys => "api_keys",
            LedgerTable::Imports => "imports",
            LedgerTable::AccessLog => "access_log",
            LedgerTable::FederationPeers => "federation_peers",
            LedgerTable::FederationExchanges => "federation_exchanges",
            LedgerTable::FederationMatches => "federation_matches",
            LedgerTable::CaseEvents => "case_events",
        }
    }

    /// Whether the table's rows stay once written, each naming the row of
    /// its chain it follows (a flag's or a case's steps), rather than being
    /// replaced in place by a later state.
    pub const fn chains_steps(self) -> bool {
        matches!(self, LedgerTable::FlagEvents | LedgerTable::CaseEvents)
    }

    /// The table of a tag, if it names one.
    pub fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u8 == tag)
    }
}

impl fmt::Display for LedgerTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The content a row's MAC covers, built field by field. Each field is
/// length-prefixed, so no two different rows share an encoding.
#[derive(Debug, Clone)]
pub struct MacInput(Vec<u8>);

impl MacInput {
    /// The content of a row of `table`; `version` tells its format.
    pub fn new(table: LedgerTable, format: u8) -> Self {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"transplant-audit/ledger/row");
        out.push(table as u8);
        out.push(format);
        Self(out)
    }

    /// Adds bytes.
    pub fn bytes(mut self, bytes: &[u8]) -> Self {
        self.0
            .extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        self.0.extend_from_slice(bytes);
        self
    }

    /// Adds text.
    pub fn text(self, text: &str) -> Self {
        self.bytes(text.as_bytes())
    }

    /// Adds optional text, told apart from every text when absent.
    pub fn opt_text(mut self, text: Option<&str>) -> Self {
        match text {
            Some(t) => {
                self.0.push(1);
                self.text(t)
            }
            None => {
                self.0.push(0);
                self
            }
        }
    }

    /// Adds optional bytes, told apart from every value when absent.
    pub fn opt_bytes(mut self, bytes: Option<&[u8]>) -> Self {
        match bytes {
            Some(b) => {
                self.0.push(1);
                self.bytes(b)
            }
            None => {
                self.0.push(0);
                self
            }
        }
    }

    /// Adds an integer.
    pub fn int(self, n: i64) -> Self {
        self.bytes(&n.to_be_bytes())
    }

    /// Adds an optional integer.
    pub fn opt_int(self, n: Option<i64>) -> Self {
        self.opt_bytes(n.map(i64::to_be_bytes).as_ref().map(|b| &b[..]))
    }

    /// Adds a flag.
    pub fn boolean(self, b: bool) -> Self {
        self.bytes(&[u8::from(b)])
    }

    /// Adds an instant, at the database's precision (microseconds).
    pub fn instant(self, at: DateTime<Utc>) -> Self {
        self.int(at.timestamp_micros())
    }

    /// Adds an optional instant.
    pub fn opt_instant(self, at: Option<DateTime<Utc>>) -> Self {
        self.opt_int(at.map(|t| t.timestamp_micros()))
    }

    /// Adds a list of integers.
    pub fn ints(mut self, ns: &[i64]) -> Self {
        self.0.extend_from_slice(&(ns.len() as u64).to_be_bytes());
        for n in ns {
            self.0.extend_from_slice(&n.to_be_bytes());
        }
        self
    }

    /// Adds a list of texts.
    pub fn texts<S: AsRef<str>>(mut self, texts: &[S]) -> Self {
        self.0
            .extend_from_slice(&(texts.len() as u64).to_be_bytes());
        for t in texts {
            self = self.text(t.as_ref());
        }
        self
    }
}

/// The key row MACs are taken under.
#[derive(Clone)]
pub struct LedgerKey(hmac::Key);

impl fmt::Debug for LedgerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LedgerKey(<redacted>)")
    }
}

/// A row's MAC.
pub type RowMac = [u8; 32];

impl LedgerKey {
    /// Derives the ledger key from the service's secret.
    pub fn derive(secret: &FingerprintKey) -> Self {
        Self(hmac::Key::new(
            hmac::HMAC_SHA256,
            &secret.derive(b"transplant-audit/ledger/v1"),
        ))
    }

    /// The MAC of a row whose content is `input`.
    pub fn mac(&self, input: &MacInput) -> RowMac {
        let mut out = [0u8; 32];
        out.copy_from_slice(hmac::sign(&self.0, &input.0).as_ref());
        out
    }

    /// Whether `stored` is the MAC of `input`, compared in constant time.
    pub fn verify(&self, input: &MacInput, stored: &[u8]) -> bool {
        hmac::verify(&self.0, &input.0, stored).is_ok()
    }
}

/// Bytes of a row's MAC an entry keeps: enough to tell any change, half the size.
pub const ENTRY_MAC_BYTES: usize = 16;

/// One sealed row state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The row state's place in the database-wide sequence.
    pub seq: i64,
    /// Its table.
    pub table: LedgerTable,
    /// The sequence number of the state of the same row it replaced; 0 for a new row.
    pub prev: i64,
    /// The first bytes of the row's MAC.
    pub mac: [u8; ENTRY_MAC_BYTES],
}

/// The packed size of an entry.
pub const ENTRY_BYTES: usize = 8 + 1 + 8 + ENTRY_MAC_BYTES;

impl Entry {
    /// The entry of a row state.
    pub fn new(seq: i64, table: LedgerTable, prev: Option<i64>, mac: &[u8]) -> Self {
        let mut prefix = [0u8; ENTRY_MAC_BYTES];
        let n = mac.len().min(ENTRY_MAC_BYTES);
        prefix[..n].copy_from_slice(&mac[..n]);
        Self {
            seq,
            table,
            prev: prev.unwrap_or(0),
            mac: prefix,
        }
    }

    /// Whether `mac` is the MAC this entry sealed.
    pub fn seals(&self, mac: &[u8]) -> bool {
        mac.len() >= ENTRY_MAC_BYTES && mac[..ENTRY_MAC_BYTES] == self.mac
    }

    fn pack(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.push(self.table as u8);
        out.extend_from_slice(&self.prev.to_be_bytes());
        out.extend_from_slice(&self.mac);
    }
}

/// Packs entries, in sequence order, as a block stores them.
pub fn pack(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_BYTES);
    for e in entries {
        e.pack(&mut out);
    }
    out
}

/// Why packed entries cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnpackError {
    /// The length is no multiple of an entry's.
    #[error("{0} bytes are no whole number of entries")]
    Length(usize),
    /// An entry names no table.
    #[error("entry {index} names no table ({tag})")]
    Table {
        /// Its position.
        index: usize,
        /// The tag it holds.
        tag: u8,
    },
}

/// Reads packed entries.
pub fn unpack(bytes: &[u8]) -> Result<Vec<Entry>, UnpackError> {
    if bytes.len() % ENTRY_BYTES != 0 {
        return Err(UnpackError::Length(bytes.len()));
    }
    bytes
        .chunks_exact(ENTRY_BYTES)
        .enumerate()
        .map(|(index, c)| {
            let int = |b: &[u8]| i64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
            let tag = c[8];
            let table = LedgerTable::from_tag(tag).ok_or(UnpackError::Table { index, tag })?;
            let mut mac = [0u8; ENTRY_MAC_BYTES];
            mac.copy_from_slice(&c[17..17 + ENTRY_MAC_BYTES]);
            Ok(Entry {
                seq: int(&c[0..8]),
                table,
                prev: int(&c[9..17]),
                mac,
            })
        })
        .collect()
}

/// A block's hash.
pub type BlockHash = [u8; 32];

/// The hash before the first block.
pub const GENESIS_BLOCK: BlockHash = [0; 32];

/// What a block's hash covers: its number, the sequence range it seals,
/// its packed entries and the hash of the block before it.
pub fn block_hash(
    previous: &BlockHash,
    number: i64,
    first_seq: i64,
    last_seq: i64,
    packed_entries: &[u8],
) -> BlockHash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"transplant-audit/ledger/block/v1");
    ctx.update(previous);
    ctx.update(&number.to_be_bytes());
    ctx.update(&first_seq.to_be_bytes());
    ctx.update(&last_seq.to_be_bytes());
    ctx.update(&(packed_entries.len() as u64).to_be_bytes());
    ctx.update(packed_entries);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The registry's Ed25519 key: it signs ledger digests and referral dossiers.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public {})", self.public())
    }
}

/// Why a signing key cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a signing key is 32 bytes, hex-encoded (64 hex digits)")]
pub struct BadSigningKey;

impl SigningKey {
    /// The key of a 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// The key of a hex-encoded seed.
    pub fn from_hex(text: &str) -> Result<Self, BadSigningKey> {
        let bytes = hex::decode(text.trim()).map_err(|_| BadSigningKey)?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| BadSigningKey)?;
        Ok(Self::from_seed(&seed))
    }

    /// The public half, for whoever checks signatures.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

/// The public half of the registry's signing key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0.as_bytes()))
    }
}

/// Why a public key cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a public key is 32 bytes of an Ed25519 point, hex-encoded (64 hex digits)")]
pub struct BadPublicKey;

impl std::str::FromStr for PublicKey {
    type Err = BadPublicKey;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(text.trim()).map_err(|_| BadPublicKey)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| BadPublicKey)?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| BadPublicKey)
    }
}

impl PublicKey {
    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Whether `signature` is this key's signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        self.0.verify_strict(message, &signature).is_ok()
            && self.0.verify(message, &signature).is_ok()
    }
}

/// A signed statement of the ledger's state: every block up to `block`,
/// the last of which hashes to `hash`, sealed rows up to `last_seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// The newest block it covers.
    pub block: i64,
    /// The last sequence number that block seals.
    pub last_seq: i64,
    /// That block's hash, hex.
    pub hash: String,
    /// When that block was sealed.
    pub sealed_at: DateTime<Utc>,
    /// The signer's public key, hex.
    pub public_key: String,
    /// The Ed25519 signature of the fields above, hex.
    pub signature: String,
}

/// Why a digest is not to be believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// Signed by another key than the one trusted.
    #[error("signed by {0}, not by the trusted key")]
    OtherSigner(String),
    /// The signature does not match the fields.
    #[error("its signature does not match its fields")]
    BadSignature,
    /// A field is not what a digest holds.
    #[error("its {0} is malformed")]
    Malformed(&'static str),
}

impl Digest {
    /// What the signature covers.
    fn message(block: i64, last_seq: i64, hash: &BlockHash, sealed_at: DateTime<Utc>) -> Vec<u8> {
        let mut out = b"transplant-audit/ledger/digest/v1".to_vec();
        out.extend_from_slice(&block.to_be_bytes());
        out.extend_from_slice(&last_seq.to_be_bytes());
        out.extend_from_slice(hash);
        out.extend_from_slice(&sealed_at.timestamp_micros().to_be_bytes());
        out
    }

    /// The signed digest of a block.
    pub fn sign(
        key: &SigningKey,
        block: i64,
        last_seq: i64,
        hash: &BlockHash,
        sealed_at: DateTime<Utc>,
    ) -> Self {
        let signature = key.sign(&Self::message(block, last_seq, hash, sealed_at));
        Self {
            block,
            last_seq,
            hash: hex::encode(hash),
            sealed_at,
            public_key: key.public().to_string(),
            signature: hex::encode(signature),
        }
    }

    /// The block hash it vouches for, once its signature by `trusted` holds.
    pub fn check(&self, trusted: &PublicKey) -> Result<BlockHash, DigestError> {
        if self.public_key != trusted.to_string() {
            return Err(DigestError::OtherSigner(self.public_key.clone()));
        }
        let hash: BlockHash = hex::decode(&self.hash)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or(DigestError::Malformed("hash"))?;
        let signature =
            hex::decode(&self.signature).map_err(|_| DigestError::Malformed("signature"))?;
        let message = Self::message(self.block, self.last_seq, &hash, self.sealed_at);
        if trusted.verifies(&message, &signature) {
            Ok(hash)
        } else {
            Err(DigestError::BadSignature)
        }
    }

    /// Checks the signature against whichever of `trusted` the digest names:
    /// a registry that rotated its key trusts the old key and the new.
    pub fn check_any(&self, trusted: &[PublicKey]) -> Result<BlockHash, DigestError> {
        match trusted.iter().find(|k| k.to_string() == self.public_key) {
            Some(key) => self.check(key),
            None => Err(DigestError::OtherSigner(self.public_key.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> LedgerKey {
        LedgerKey::derive(&FingerprintKey::from_bytes(&[byte; 32]).unwrap())
    }

    #[test]
    fn a_mac_depends_on_key_table_and_every_field() {
        let input = |t, s: &str| MacInput::new(t, 1).text(s).opt_text(None).int(3);
        let a = key(1).mac(&input(LedgerTable::Records, "x"));
        assert_eq!(a, key(1).mac(&input(LedgerTable::Records, "x")));
        assert_ne!(a, key(2).mac(&input(LedgerTable::Records, "x")));
        assert_ne!(a, key(1).mac(&input(LedgerTable::ApiKeys, "x")));
        assert_ne!(a, key(1).mac(&input(LedgerTable::Records, "y")));
        // Absent and empty are two values; so are the splits of one text.
        let none = MacInput::new(LedgerTable::Records, 1).opt_text(None);
        let empty = MacInput::new(LedgerTable::Records, 1).opt_text(Some(""));
        assert_ne!(key(1).mac(&none), key(1).mac(&empty));
        let ab = MacInput::new(LedgerTable::Records, 1).text("ab").text("");
        let a_b = MacInput::new(LedgerTable::Records, 1).text("a").text("b");
        assert_ne!(key(1).mac(&ab), key(1).mac(&a_b));
        assert!(key(1).verify(&input(LedgerTable::Records, "x"), &a));
        assert!(!key(1).verify(&input(LedgerTable::Records, "y"), &a));
    }

    #[test]
    fn entries_pack_and_unpack() {
        let entries = vec![
            Entry::new(7, LedgerTable::Records, None, &[9; 32]),
            Entry::new(8, LedgerTable::ApiKeys, Some(3), &[1; 32]),
        ];
        let packed = pack(&entries);
        assert_eq!(packed.len(), 2 * ENTRY_BYTES);
        assert_eq!(unpack(&packed).unwrap(), entries);
        assert!(entries[0].seals(&[9; 32]));
        assert!(!entries[0].seals(&[8; 32]));
        assert_eq!(
            unpack(&packed[1..]),
            Err(UnpackError::Length(packed.len() - 1))
        );
        let mut bad = packed.clone();
        bad[8] = 99;
        assert!(matches!(
            unpack(&bad),
            Err(UnpackError::Table { index: 0, tag: 99 })
        ));
    }

    #[test]
    fn a_block_hash_covers_its_chain_range_and_entries() {
        let packed = pack(&[Entry::new(1, LedgerTable::Records, None, &[1; 32])]);
        let h = block_hash(&GENESIS_BLOCK, 1, 1, 1, &packed);
        assert_ne!(h, block_hash(&[1; 32], 1, 1, 1, &packed));
        assert_ne!(h, block_hash(&GENESIS_BLOCK, 2, 1, 1, &packed));
        assert_ne!(h, block_hash(&GENESIS_BLOCK, 1, 1, 2, &packed));
        assert_ne!(
            h,
            block_hash(&GENESIS_BLOCK, 1, 1, 1, &packed[..packed.len() - 1])
        );
    }

    #[test]
    fn digests_are_signed_and_checked() {
        let signer = SigningKey::from_seed(&[5; 32]);
        let other = SigningKey::from_seed(&[6; 32]);
        let at = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let digest = Digest::sign(&signer, 3, 40, &[7; 32], at);
        assert_eq!(digest.check(&signer.public()), Ok([7; 32]));
        assert!(matches!(
            digest.check(&other.public()),
            Err(DigestError::OtherSigner(_))
        ));
        let mut forged = digest.clone();
        forged.last_seq = 41;
        assert_eq!(
            forged.check(&signer.public()),
            Err(DigestError::BadSignature)
        );
        let json = serde_json::to_string(&digest).unwrap();
        let back: Digest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, digest);
        let public: PublicKey = signer.public().to_string().parse().unwrap();
        assert_eq!(public, signer.public());
        assert!("zz".parse::<PublicKey>().is_err());
        assert!(SigningKey::from_hex("abcd").is_err());
    }
}
