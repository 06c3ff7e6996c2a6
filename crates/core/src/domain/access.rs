//! Callers and their API keys.
//!
//! A key is `ta_<key id>_<secret>`: the id (public, in logs and audit
//! trails) finds the stored entry, the secret (32 random bytes) is checked
//! against its SHA-256. High-entropy secrets need no slow password hash.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

use chrono::{DateTime, Utc};

use super::validation::{Violations, check_hospital_id};
use super::{HospitalId, Role};

/// Who is calling, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's public id; what audit trails and logs record.
    pub key_id: String,
    /// What the key may do.
    pub role: Role,
    /// For a HOSPITAL key, the one hospital it submits for.
    pub hospital_id: Option<HospitalId>,
    /// The person or system the key belongs to: who acts, in every trail.
    pub principal: String,
    /// The principal of the administrator who issued the key; `None` when
    /// it was made on the command line.
    pub issued_by: Option<String>,
}

/// Whose quotas a call counts against: a hospital's keys share their
/// hospital's, every other key has its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tenant {
    /// All the keys of one hospital.
    Hospital(HospitalId),
    /// One auditor or admin key, by key id.
    Key(String),
}

impl Caller {
    /// The tenant the caller belongs to.
    pub fn tenant(&self) -> Tenant {
        match &self.hospital_id {
            Some(hospital) => Tenant::Hospital(hospital.clone()),
            None => Tenant::Key(self.key_id.clone()),
        }
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tenant::Hospital(id) => write!(f, "hospital {id}"),
            Tenant::Key(id) => write!(f, "key {id}"),
        }
    }
}

/// Whether a principal is a person or a system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// A person, such as an auditor.
    Person,
    /// A system, such as a hospital's integration.
    System,
}

impl PrincipalKind {
    /// The stored form.
    pub const fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Person => "PERSON",
            PrincipalKind::System => "SYSTEM",
        }
    }
}

/// The longest principal name accepted.
pub const MAX_PRINCIPAL_LEN: usize = 200;

/// What a new key is for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// Its role.
    pub role: Role,
    /// The hospital, for (and only for) HOSPITAL keys.
    pub hospital_id: Option<String>,
    /// Who or what it is for.
    pub description: String,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// The person or system it belongs to.
    pub principal: String,
    /// Whether that is a person or a system.
    pub principal_kind: PrincipalKind,
}

impl KeySpec {
    /// Checks that a HOSPITAL key names its hospital and no other key does,
    /// that an expiry lies ahead, and that the key names its principal: a
    /// person or system for auditor and administrator keys; a hospital's key
    /// without one belongs to the hospital's system, `hospital <id>`.
    pub fn new(
        role: Role,
        hospital_id: Option<&str>,
        description: &str,
        expires_at: Option<DateTime<Utc>>,
        principal: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let principal = principal.map(str::trim).filter(|p| !p.is_empty());
        let hospital_id = match (role, hospital_id.filter(|h| !h.is_empty())) {
            (Role::Hospital, Some(h)) => {
                check_hospital_id(&mut v, "hospital_id", h).map(HospitalId::into_string)
            }
            (Role::Hospital, None) => {
                v.add("hospital_id", "is required for a HOSPITAL key");
                None
            }
            (_, Some(_)) => {
                v.add("hospital_id", "applies only to HOSPITAL keys");
                None
            }
            (_, None) => None,
        };
        if description.len() > 200 {
            v.add("description", "must be at most 200 bytes");
        }
        v.check_storable("description", description);
        if expires_at.is_some_and(|e| e <= now) {
            v.add("expires_at", "must be in the future");
        }
        let (principal, principal_kind) = match (principal, &hospital_id) {
            (Some(p), _) => {
                if p.len() > MAX_PRINCIPAL_LEN {
                    v.add(
                        "principal",
                        format!("must be at most {MAX_PRINCIPAL_LEN} bytes"),
                    );
                }
                v.check_storable("principal", p);
                let kind = if role == Role::Hospital {
                    PrincipalKind::System
                } else {
                    PrincipalKind::Person
                };
                (p.to_owned(), kind)
            }
            (None, Some(h)) if role == Role::Hospital => {
                (format!("hospital {h}"), PrincipalKind::System)
            }
            (None, _) => {
                if role != Role::Hospital {
                    v.add(
                        "principal",
                        "is required: the person or system the key belongs to",
                    );
                }
                (String::new(), PrincipalKind::Person)
            }
        };
        v.into_result(|| Self {
            role,
            hospital_id,
            description: description.to_owned(),
            expires_at,
            principal,
            principal_kind,
        })
    }
}

/// A freshly generated key: shown once, stored only as `secret_hash`.
pub struct NewApiKey {
    /// The public id.
    pub key_id: String,
    /// SHA-256 of the secret, what the database keeps.
    pub secret_hash: [u8; 32],
    /// The whole key to hand to the caller, once.
    pub token: String,
}

impl fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NewApiKey({} <redacted>)", self.key_id)
    }
}

/// The system has no randomness to make a key from.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("no system randomness")]
pub struct NoRandomness;

impl NewApiKey {
    /// Generates a key from the system's secure randomness.
    pub fn generate() -> Result<Self, NoRandomness> {
        let rng = SystemRandom::new();
        let mut id = [0u8; 6];
        let mut secret = [0u8; 32];
        rng.fill(&mut id).map_err(|_| NoRandomness)?;
        rng.fill(&mut secret).map_err(|_| NoRandomness)?;
        let key_id = hex::encode(id);
        let secret_text = URL_SAFE_NO_PAD.encode(secret);
        Ok(Self {
            secret_hash: hash_secret(&secret_text),
            token: format!("ta_{key_id}_{secret_text}"),
            key_id,
        })
    }
}

/// A presented key split into its id and the hash of its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct PresentedKey {
    /// The public id.
    pub key_id: String,
    /// SHA-256 of the presented secret.
    pub secret_hash: [u8; 32],
}

impl fmt::Debug for PresentedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PresentedKey({} <redacted>)", self.key_id)
    }
}

impl PresentedKey {
    /// Parses a `Bearer ta_<id>_<secret>` header value; `None` when malformed.
    ///
    /// ```
    /// use transplant_audit_core::domain::access::{NewApiKey, PresentedKey};
    ///
    /// let key = NewApiKey::generate().unwrap();
    /// let presented = PresentedKey::from_bearer(&format!("Bearer {}", key.token)).unwrap();
    /// assert!(presented.matches(&key.secret_hash));
    /// assert!(PresentedKey::from_bearer("Bearer nonsense").is_none());
    /// ```
    pub fn from_bearer(header: &str) -> Option<Self> {
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))?;
        let rest = token.trim().strip_prefix("ta_")?;
        let (key_id, secret) = rest.split_once('_')?;
        let well_formed = key_id.len() == 12
            && key_id.bytes().all(|b| b.is_ascii_hexdigit())
            && (40..=64).contains(&secret.len());
        well_formed.then(|| Self {
            key_id: key_id.to_owned(),
            secret_hash: hash_secret(secret),
        })
    }

    /// Whether the secret matches a stored hash, in constant time.
    pub fn matches(&self, stored: &[u8]) -> bool {
        stored.len() == 32
            && self
                .secret_hash
                .iter()
                .zip(stored)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

fn hash_secret(secret: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, secret.as_bytes()).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_parses_back_and_matches_its_hash() {
        let key = NewApiKey::generate().unwrap();
        let presented = PresentedKey::from_bearer(&format!("Bearer {}", key.token)).unwrap();
        assert_eq!(presented.key_id, key.key_id);
        assert!(presented.matches(&key.secret_hash));
        let other = NewApiKey::generate().unwrap();
        assert!(!presented.matches(&other.secret_hash));
        assert!(!format!("{key:?}").contains(&key.token));
    }

    #[test]
    fn key_specs_bind_hospital_keys_to_a_hospital_and_keys_to_principals() {
        let now = Utc::now();
        let hospital = KeySpec::new(Role::Hospital, Some("H-1"), "", None, None, now).unwrap();
        assert_eq!(
            (hospital.principal.as_str(), hospital.principal_kind),
            ("hospital H-1", PrincipalKind::System)
        );
        assert!(KeySpec::new(Role::Hospital, None, "", None, None, now).is_err());
        assert!(KeySpec::new(Role::Auditor, Some("H-1"), "", None, Some("a"), now).is_err());
        let past = Some(now - chrono::Duration::hours(1));
        assert!(KeySpec::new(Role::Admin, None, "", past, Some("a"), now).is_err());
        let auditor = KeySpec::new(Role::Auditor, Some(""), "x", None, Some(" a.rossi "), now);
        let auditor = auditor.unwrap();
        assert_eq!(auditor.hospital_id, None);
        assert_eq!(
            (auditor.principal.as_str(), auditor.principal_kind),
            ("a.rossi", PrincipalKind::Person)
        );
        let nameless = KeySpec::new(Role::Auditor, None, "x", None, Some("  "), now).unwrap_err();
        assert_eq!(nameless.0[0].field, "principal");
        let long = "p".repeat(MAX_PRINCIPAL_LEN + 1);
        assert!(KeySpec::new(Role::Admin, None, "", None, Some(&long), now).is_err());
        assert!(KeySpec::new(Role::Admin, None, "", None, Some("a\0b"), now).is_err());
    }

    #[test]
    fn hospital_keys_name_their_hospital_in_its_normal_form_and_are_its_tenant() {
        let now = Utc::now();
        let spec = KeySpec::new(Role::Hospital, Some(" h-de-001 "), "", None, None, now).unwrap();
        assert_eq!(spec.hospital_id.as_deref(), Some("H-DE-001"));
        assert_eq!(spec.principal, "hospital H-DE-001");
        let hospital = |key_id: &str| Caller {
            key_id: key_id.into(),
            role: Role::Hospital,
            hospital_id: Some(HospitalId::normalize("H-DE-001")),
            principal: "hospital H-DE-001".into(),
            issued_by: None,
        };
        assert_eq!(hospital("a").tenant(), hospital("b").tenant());
        let auditor = |key_id: &str| Caller {
            key_id: key_id.into(),
            role: Role::Auditor,
            hospital_id: None,
            principal: "a.rossi".into(),
            issued_by: None,
        };
        assert_ne!(auditor("a").tenant(), auditor("b").tenant());
        assert_eq!(auditor("a").tenant(), Tenant::Key("a".into()));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let key = NewApiKey::generate().unwrap();
        for bad in [
            key.token.clone(),
            "Bearer ".into(),
            "Bearer ta_".into(),
            "Bearer ta_zzzzzzzzzzzz_0123456789012345678901234567890123456789".into(),
            format!("Basic {}", key.token),
            "Bearer ta_0123456789ab_short".into(),
        ] {
            assert!(PresentedKey::from_bearer(&bad).is_none(), "{bad}");
        }
    }
}
