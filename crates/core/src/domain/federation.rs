//! Federation elements: `E = k·H(id)` on ristretto255, the only form in
//! which a person can be compared with another registry's.
//!
//! `H` maps a person's canonical identifier (the bytes the fingerprint
//! hashes) to a point of the group; `k` is this registry's secret scalar.
//! Two registries intersect their sets by each raising the other's
//! elements to its own key: `k_b·(k_a·H(id)) = k_a·(k_b·H(id))`, equal for
//! the same person and unrelated otherwise. An element alone reveals
//! nothing about the identifier without `k` (decisional Diffie–Hellman).

use std::fmt;

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use rayon::prelude::*;
use ring::digest;

use super::PersonIdentifier;

/// Every registry hashes identifiers to the group under this label, so the
/// same person gives the same `H(id)` everywhere.
const HASH_TO_GROUP_LABEL: &[u8] = b"transplant-audit/federation/v1\0";

/// The label a configured secret is hashed under to give the scalar.
const KEY_LABEL: &[u8] = b"transplant-audit/federation-key/v1\0";

/// The length of a configured federation secret, in bytes.
pub const FEDERATION_KEY_LEN: usize = 32;

/// A person as a point of ristretto255, compressed: `k·H(id)` under this
/// registry's key, or a peer's element raised to a key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element(pub [u8; 32]);

impl Element {
    /// The 32 bytes of the compressed point.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// An element from stored or received bytes: exactly 32 bytes that
    /// encode a point of the group other than the identity.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, BadElement> {
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| BadElement::Length)?;
        decompress(&bytes)?;
        Ok(Self(bytes))
    }
}

impl AsRef<[u8]> for Element {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Element({}…)", hex::encode(&self.0[..4]))
    }
}

/// Why bytes are not an element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadElement {
    /// Not 32 bytes.
    #[error("an element is 32 bytes")]
    Length,
    /// Not the canonical encoding of a point of ristretto255.
    #[error("not the encoding of a ristretto255 point")]
    NotAPoint,
    /// The identity, which no identifier maps to and which every key
    /// leaves unchanged.
    #[error("the identity point is not an element")]
    Identity,
}

/// Which element of a batch was bad, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("element {index}: {reason}")]
pub struct BadElementAt {
    /// Its place in the batch, from 0.
    pub index: usize,
    /// What is wrong with it.
    pub reason: BadElement,
}

fn decompress(bytes: &[u8; 32]) -> Result<RistrettoPoint, BadElement> {
    let point = CompressedRistretto(*bytes)
        .decompress()
        .ok_or(BadElement::NotAPoint)?;
    if point == RistrettoPoint::default() {
        return Err(BadElement::Identity);
    }
    Ok(point)
}

/// A record's two elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordElements {
    /// The donor's.
    pub donor: Element,
    /// The recipient's.
    pub recipient: Element,
}

/// Points raised together share one field inversion for their encoding
/// (`double_and_compress_batch`); a chunk this long makes that inversion's
/// cost negligible and still leaves rayon plenty of chunks to balance.
const CHUNK: usize = 256;

/// This registry's secret scalar `k`. `Debug` never shows it.
#[derive(Clone)]
pub struct FederationKey {
    k: Scalar,
    /// `k/2 mod ℓ`: raising by it and doubling gives `k·P`, and doubling is
    /// what lets a batch of points be encoded with one inversion between
    /// them instead of an inverse square root each.
    half: Scalar,
}

/// A configured federation secret of the wrong length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the federation key must be {FEDERATION_KEY_LEN} bytes")]
pub struct BadFederationKey;

/// Elements decoded and checked, ready to be raised: decoding costs an
/// inverse square root a point, so a batch is decoded once, whether to
/// refuse it or to raise it.
#[derive(Debug, Clone)]
pub struct Points(Vec<RistrettoPoint>);

impl Points {
    /// Decodes every element (each 32 bytes a compressed point other than
    /// the identity), in order, on all cores; every bad one is told, in
    /// order of place.
    pub fn decode<B: AsRef<[u8]> + Sync>(elements: &[B]) -> Result<Self, Vec<BadElementAt>> {
        let decoded: Vec<Result<RistrettoPoint, BadElementAt>> = elements
            .par_iter()
            .enumerate()
            .map(|(index, bytes)| {
                let bytes: &[u8; 32] = bytes.as_ref().try_into().map_err(|_| BadElementAt {
                    index,
                    reason: BadElement::Length,
                })?;
                decompress(bytes).map_err(|reason| BadElementAt { index, reason })
            })
            .collect();
        let bad: Vec<BadElementAt> = decoded.iter().filter_map(|r| r.err()).collect();
        if !bad.is_empty() {
            return Err(bad);
        }
        Ok(Self(decoded.into_iter().flatten().collect()))
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `H(id)`: the person's canonical identifier hashed to the group.
fn hash_to_group(id: &PersonIdentifier) -> RistrettoPoint {
    let mut ctx = digest::Context::new(&digest::SHA512);
    ctx.update(HASH_TO_GROUP_LABEL);
    ctx.update(&id.canonical_bytes());
    let mut wide = [0u8; 64];
    wide.copy_from_slice(ctx.finish().as_ref());
    RistrettoPoint::from_uniform_bytes(&wide)
}

impl FederationKey {
    /// The key of a 32-byte secret. The scalar is the secret hashed wide
    /// and reduced, so it is uniform whatever the secret's bytes.
    pub fn from_bytes(secret: &[u8]) -> Result<Self, BadFederationKey> {
        if secret.len() != FEDERATION_KEY_LEN {
            return Err(BadFederationKey);
        }
        let mut ctx = digest::Context::new(&digest::SHA512);
        ctx.update(KEY_LABEL);
        ctx.update(secret);
        let wide: [u8; 64] = ctx
            .finish()
            .as_ref()
            .try_into()
            .map_err(|_| BadFederationKey)?;
        let k = Scalar::from_bytes_mod_order_wide(&wide);
        // A zero scalar would map everyone to the identity; SHA-512 gives
        // it with probability 2^-252, but a key is never allowed to be it.
        if k == Scalar::ZERO {
            return Err(BadFederationKey);
        }
        let half = k * Scalar::from(2u8).invert();
        Ok(Self { k, half })
    }

    /// `points` raised to this key, encoded, in order: `k/2·P` each, then
    /// doubled and encoded together. No point may be the identity (which
    /// would spoil the shared inversion); none is, since `Points` refuses it,
    /// `k` is not zero and the group's order is prime, and `H` reaches it
    /// with probability 2^-252, for which the one-at-a-time encoding stands
    /// in.
    fn raise_chunk(&self, points: &[RistrettoPoint]) -> Vec<Element> {
        let halves: Vec<RistrettoPoint> = points.iter().map(|p| self.half * p).collect();
        if halves.iter().any(|p| *p == RistrettoPoint::default()) {
            return points
                .iter()
                .map(|p| Element((self.k * p).compress().to_bytes()))
                .collect();
        }
        RistrettoPoint::double_and_compress_batch(&halves)
            .into_iter()
            .map(|c| Element(c.to_bytes()))
            .collect()
    }

    /// The person's element under this key: `k·H(id)`.
    pub fn element(&self, id: &PersonIdentifier) -> Element {
        Element((self.k * hash_to_group(id)).compress().to_bytes())
    }

    /// A record's two elements.
    pub fn record_elements(
        &self,
        donor: &PersonIdentifier,
        recipient: &PersonIdentifier,
    ) -> RecordElements {
        let points = [hash_to_group(donor), hash_to_group(recipient)];
        match self.raise_chunk(&points)[..] {
            [donor, recipient] => RecordElements { donor, recipient },
            // `raise_chunk` gives one element a point.
            _ => RecordElements {
                donor: self.element(donor),
                recipient: self.element(recipient),
            },
        }
    }

    /// The elements of many records' (donor, recipient) pairs, in order,
    /// on all cores.
    pub fn records_elements(
        &self,
        pairs: &[(&PersonIdentifier, &PersonIdentifier)],
    ) -> Vec<RecordElements> {
        pairs
            .par_chunks(CHUNK / 2)
            .flat_map_iter(|chunk| {
                let points: Vec<RistrettoPoint> = chunk
                    .iter()
                    .flat_map(|(d, r)| [hash_to_group(d), hash_to_group(r)])
                    .collect();
                let raised = self.raise_chunk(&points);
                raised
                    .chunks_exact(2)
                    .map(|pair| RecordElements {
                        donor: pair[0],
                        recipient: pair[1],
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// `element` raised to this key.
    pub fn raise(&self, element: &Element) -> Result<Element, BadElement> {
        let point = decompress(&element.0)?;
        Ok(Element((self.k * point).compress().to_bytes()))
    }

    /// Decoded points raised to this key, in order, on all cores.
    pub fn raise_points(&self, points: &Points) -> Vec<Element> {
        points
            .0
            .par_chunks(CHUNK)
            .flat_map_iter(|chunk| self.raise_chunk(chunk))
            .collect()
    }

    /// Every element raised to this key, in order, on all cores; the first
    /// bad one (by place) refuses the batch.
    pub fn raise_all(&self, elements: &[Element]) -> Result<Vec<Element>, BadElementAt> {
        let points = Points::decode(elements).map_err(|bad| {
            // `decode` tells at least one bad element when it refuses.
            bad.into_iter().next().unwrap_or(BadElementAt {
                index: 0,
                reason: BadElement::NotAPoint,
            })
        })?;
        Ok(self.raise_points(&points))
    }
}

impl fmt::Debug for FederationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FederationKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{FingerprintKey, IdentifierScheme};

    fn id(value: &str) -> PersonIdentifier {
        PersonIdentifier::new(IdentifierScheme::Passport, "KZ".parse().unwrap(), value).unwrap()
    }

    fn key(byte: u8) -> FederationKey {
        FederationKey::from_bytes(&[byte; 32]).unwrap()
    }

    #[test]
    fn raising_commutes_so_the_same_person_meets_across_registries() {
        let (a, b) = (key(1), key(2));
        let at_a = a.element(&id("AB-1234"));
        let at_b = b.element(&id("ab1234"));
        assert_ne!(at_a, at_b, "each registry's element is its own");
        assert_eq!(b.raise(&at_a).unwrap(), a.raise(&at_b).unwrap());
        let other = b.element(&id("AB1235"));
        assert_ne!(b.raise(&at_a).unwrap(), a.raise(&other).unwrap());
    }

    #[test]
    fn the_element_hashes_the_fingerprints_canonical_identifier() {
        let national = PersonIdentifier::new(
            IdentifierScheme::NationalId,
            "KZ".parse().unwrap(),
            "AB1234",
        )
        .unwrap();
        let k = key(1);
        assert_ne!(k.element(&national), k.element(&id("AB1234")));
        // The element is not the fingerprint, whatever the two keys.
        let fp = FingerprintKey::from_bytes(&[1; 32])
            .unwrap()
            .fingerprint(&id("AB1234"));
        assert_ne!(fp.0, k.element(&id("AB1234")).0);
    }

    #[test]
    fn bad_points_and_keys_are_refused() {
        assert_eq!(Element::from_slice(&[1; 31]), Err(BadElement::Length));
        assert_eq!(Element::from_slice(&[0; 32]), Err(BadElement::Identity));
        // Not canonical: the top bit set.
        assert_eq!(Element::from_slice(&[0xff; 32]), Err(BadElement::NotAPoint));
        let good = key(1).element(&id("X1"));
        assert_eq!(Element::from_slice(good.as_bytes()), Ok(good));
        let batch = [good, Element([0xff; 32]), good];
        assert_eq!(
            key(2).raise_all(&batch),
            Err(BadElementAt {
                index: 1,
                reason: BadElement::NotAPoint
            })
        );
        assert_eq!(
            FederationKey::from_bytes(&[1; 31]).unwrap_err(),
            BadFederationKey
        );
        assert!(!format!("{:?}", key(1)).contains('1'));
    }

    #[test]
    fn a_batch_is_raised_in_order() {
        let (a, b) = (key(3), key(4));
        let batch: Vec<Element> = (0..50).map(|i| a.element(&id(&format!("P{i}")))).collect();
        let raised = b.raise_all(&batch).unwrap();
        for (e, r) in batch.iter().zip(&raised) {
            assert_eq!(b.raise(e).unwrap(), *r);
        }
    }

    #[test]
    fn batched_encoding_gives_what_one_at_a_time_gives() {
        // Enough people for several chunks and a ragged last one.
        let (a, b) = (key(5), key(6));
        let people: Vec<PersonIdentifier> =
            (0..(3 * CHUNK + 7)).map(|i| id(&format!("Q{i}"))).collect();
        let pairs: Vec<(&PersonIdentifier, &PersonIdentifier)> =
            people.chunks_exact(2).map(|p| (&p[0], &p[1])).collect();
        let batched = a.records_elements(&pairs);
        assert_eq!(batched.len(), pairs.len());
        for ((d, r), got) in pairs.iter().zip(&batched) {
            assert_eq!(got.donor, a.element(d));
            assert_eq!(got.recipient, a.element(r));
            assert_eq!(*got, a.record_elements(d, r));
        }
        let elements: Vec<Element> = batched.iter().map(|e| e.donor).collect();
        let raised = b.raise_all(&elements).unwrap();
        for (e, r) in elements.iter().zip(&raised) {
            assert_eq!(*r, b.raise(e).unwrap());
        }
    }

    #[test]
    fn decoding_tells_every_bad_element_in_place_order() {
        let good = key(1).element(&id("X1"));
        let batch: Vec<Vec<u8>> = vec![
            good.0.to_vec(),
            vec![0xff; 32],
            good.0.to_vec(),
            vec![1; 31],
            vec![0; 32],
        ];
        let bad = Points::decode(&batch).unwrap_err();
        assert_eq!(
            bad,
            vec![
                BadElementAt {
                    index: 1,
                    reason: BadElement::NotAPoint
                },
                BadElementAt {
                    index: 3,
                    reason: BadElement::Length
                },
                BadElementAt {
                    index: 4,
                    reason: BadElement::Identity
                },
            ]
        );
        let points = Points::decode(&batch[..1]).unwrap();
        assert_eq!(points.len(), 1);
        assert_eq!(
            key(2).raise_points(&points),
            vec![key(2).raise(&good).unwrap()]
        );
    }
}
