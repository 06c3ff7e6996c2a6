//! Signed referral dossiers: one JSON document, checkable offline.
//!
//! The registry signs the document's canonical form (object keys sorted, no
//! spaces) with its Ed25519 key, so anyone holding the public key can check
//! it without the database or any secret. A signature only says *that*
//! something changed; to say *what*, the signed document also carries a
//! short digest of every field (by JSON Pointer), and a failed check names
//! the fields whose digests no longer match, and those added or removed.

use std::collections::BTreeMap;

use ring::digest::{SHA256, digest};
use serde_json::{Map, Value};

use crate::domain::ledger::{PublicKey, SigningKey};

/// The `format` every dossier states.
pub const FORMAT: &str = "transplant-audit dossier 1";

/// The key of the signature, hex.
pub const SIGNATURE: &str = "signature";
/// The key of the per-field digests.
pub const FIELD_DIGESTS: &str = "field_digests";
/// The key of the public key the registry signed with, hex (for the reader;
/// the check trusts only the key it is given).
pub const PUBLIC_KEY: &str = "public_key";

/// Keeps dossier signatures apart from every other use of the registry's
/// key (ledger digests sign other bytes under the same key).
const CONTEXT: &[u8] = b"transplant-audit dossier signature 1\0";

/// Hex digits of a field digest: collisions matter only for naming a
/// change, never for detecting one (the signature covers everything).
const DIGEST_HEX: usize = 16;

/// Why a dossier does not check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DossierError {
    /// Not a JSON object with a hex signature.
    #[error("not a signed dossier: {0}")]
    Malformed(String),
    /// The signature does not cover what the document holds.
    #[error("the dossier was changed after it was signed: {}", describe(.0))]
    Changed(Vec<FieldChange>),
}

/// One field that differs from what was signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldChange {
    /// Its value differs.
    Edited(String),
    /// It was not in the signed document.
    Added(String),
    /// It was in the signed document and is gone.
    Removed(String),
    /// Every field matches its digest: the digests or the signature were
    /// changed, or the document was signed by another key.
    SignatureOrDigests,
}

fn describe(changes: &[FieldChange]) -> String {
    changes
        .iter()
        .map(|c| match c {
            FieldChange::Edited(p) => format!("{p} was edited"),
            FieldChange::Added(p) => format!("{p} was added"),
            FieldChange::Removed(p) => format!("{p} was removed"),
            FieldChange::SignatureOrDigests => {
                "the signature or the field digests were changed, or another key signed it"
                    .to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Signs `body` (a JSON object): adds the field digests, the public key and
/// the signature. Keys named like those three are replaced.
pub fn sign(body: Map<String, Value>, key: &SigningKey) -> Value {
    let mut doc = body;
    doc.remove(SIGNATURE);
    doc.remove(FIELD_DIGESTS);
    doc.insert(
        PUBLIC_KEY.to_owned(),
        Value::String(key.public().to_string()),
    );
    let digests = field_digests(&doc);
    doc.insert(
        FIELD_DIGESTS.to_owned(),
        Value::Object(
            digests
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        ),
    );
    let signature = key.sign(&signed_bytes(&doc));
    doc.insert(SIGNATURE.to_owned(), Value::String(hex::encode(signature)));
    Value::Object(doc)
}

/// Checks a dossier against the registry's public key; on failure, names
/// what changed.
pub fn check(doc: &Value, trusted: &PublicKey) -> Result<(), DossierError> {
    let Value::Object(doc) = doc else {
        return Err(DossierError::Malformed("not a JSON object".into()));
    };
    let signature = doc
        .get(SIGNATURE)
        .and_then(Value::as_str)
        .and_then(|s| hex::decode(s).ok())
        .ok_or_else(|| DossierError::Malformed("no hex signature".into()))?;
    let mut signed = doc.clone();
    signed.remove(SIGNATURE);
    if trusted.verifies(&signed_bytes(&signed), &signature) {
        return Ok(());
    }
    let claimed: BTreeMap<String, String> = match signed.remove(FIELD_DIGESTS) {
        Some(Value::Object(m)) => m
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
            .collect(),
        _ => BTreeMap::new(),
    };
    let actual = field_digests(&signed);
    let mut changes = Vec::new();
    for (path, digest) in &actual {
        match claimed.get(path) {
            Some(c) if c == digest => {}
            Some(_) => changes.push(FieldChange::Edited(path.clone())),
            None => changes.push(FieldChange::Added(path.clone())),
        }
    }
    changes.extend(
        claimed
            .keys()
            .filter(|p| !actual.contains_key(*p))
            .map(|p| FieldChange::Removed(p.clone())),
    );
    if changes.is_empty() {
        changes.push(FieldChange::SignatureOrDigests);
    }
    Err(DossierError::Changed(changes))
}

/// What the signature covers.
fn signed_bytes(doc: &Map<String, Value>) -> Vec<u8> {
    let mut bytes = CONTEXT.to_vec();
    write_canonical(&mut bytes, &Value::Object(doc.clone()));
    bytes
}

/// The digest of every leaf of `doc` (scalars, empty arrays and objects),
/// by JSON Pointer; the digests themselves are left out.
fn field_digests(doc: &Map<String, Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (key, value) in doc {
        if key != FIELD_DIGESTS {
            leaves(&format!("/{}", escape(key)), value, &mut out);
        }
    }
    out
}

fn leaves(path: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                leaves(&format!("{path}/{}", escape(k)), v, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, v) in a.iter().enumerate() {
                leaves(&format!("{path}/{i}"), v, out);
            }
        }
        leaf => {
            let mut input = path.as_bytes().to_vec();
            input.push(0);
            write_canonical(&mut input, leaf);
            let mut d = hex::encode(digest(&SHA256, &input));
            d.truncate(DIGEST_HEX);
            out.insert(path.to_owned(), d);
        }
    }
}

/// A JSON Pointer reference token (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Writes `value` with object keys sorted and no spaces, whatever order
/// the map keeps them in.
fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(Value::String(k.clone()).to_string().as_bytes());
                out.push(b':');
                write_canonical(out, &m[k]);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, v);
            }
            out.push(b']');
        }
        scalar => out.extend(scalar.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_seed(&[seed; 32])
    }

    fn body() -> Map<String, Value> {
        let Value::Object(m) = json!({
            "format": FORMAT,
            "case": {"id": 7, "title": "Ring at clinic A", "notes": [{"note": "a/b ~ c"}]},
            "flags": [{"id": 3, "record": {"donor": {"age": 24}}}],
            "empty": [],
        }) else {
            unreachable!()
        };
        m
    }

    fn changed(doc: &Value, trusted: &SigningKey) -> Vec<FieldChange> {
        match check(doc, &trusted.public()) {
            Err(DossierError::Changed(c)) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_signed_dossier_checks_whatever_order_its_keys_are_read_in() {
        let doc = sign(body(), &key(1));
        check(&doc, &key(1).public()).unwrap();
        let text = serde_json::to_string_pretty(&doc).unwrap();
        let read: Value = serde_json::from_str(&text).unwrap();
        check(&read, &key(1).public()).unwrap();
    }

    #[test]
    fn an_edited_field_is_named() {
        let mut doc = sign(body(), &key(1));
        doc["flags"][0]["record"]["donor"]["age"] = json!(25);
        assert_eq!(
            changed(&doc, &key(1)),
            [FieldChange::Edited("/flags/0/record/donor/age".into())]
        );
        let mut doc = sign(body(), &key(1));
        doc["case"]["notes"][0]["note"] = json!("a/b ~ d");
        assert_eq!(
            changed(&doc, &key(1)),
            [FieldChange::Edited("/case/notes/0/note".into())]
        );
    }

    #[test]
    fn fields_added_or_removed_are_named() {
        let mut doc = sign(body(), &key(1));
        doc["case"].as_object_mut().unwrap().remove("title");
        doc["flags"][0]["extra"] = json!(true);
        let changes = changed(&doc, &key(1));
        assert!(
            changes.contains(&FieldChange::Removed("/case/title".into())),
            "{changes:?}"
        );
        assert!(
            changes.contains(&FieldChange::Added("/flags/0/extra".into())),
            "{changes:?}"
        );
        let mut doc = sign(body(), &key(1));
        doc["empty"] = json!([1]);
        let changes = changed(&doc, &key(1));
        assert!(
            changes.contains(&FieldChange::Added("/empty/0".into())),
            "{changes:?}"
        );
    }

    #[test]
    fn a_field_edited_with_its_digest_still_fails() {
        let mut doc = sign(body(), &key(1));
        doc["case"]["id"] = json!(8);
        let forged = {
            let mut m = doc.as_object().unwrap().clone();
            m.remove(SIGNATURE);
            m.remove(FIELD_DIGESTS);
            field_digests(&m)
        };
        doc[FIELD_DIGESTS]["/case/id"] = json!(forged["/case/id"]);
        assert_eq!(changed(&doc, &key(1)), [FieldChange::SignatureOrDigests]);
    }

    #[test]
    fn another_key_or_a_broken_signature_does_not_check() {
        let doc = sign(body(), &key(2));
        assert_eq!(changed(&doc, &key(1)), [FieldChange::SignatureOrDigests]);
        let mut doc = sign(body(), &key(1));
        doc[SIGNATURE] = json!("zz");
        assert!(matches!(
            check(&doc, &key(1).public()),
            Err(DossierError::Malformed(_))
        ));
        assert!(matches!(
            check(&json!([1]), &key(1).public()),
            Err(DossierError::Malformed(_))
        ));
    }
}
