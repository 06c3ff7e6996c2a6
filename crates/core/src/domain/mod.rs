//! Plain, valid-by-construction types of the transplant domain. No I/O here.

pub mod access;
pub mod activity;
pub mod case;
pub mod chain;
pub mod clinic;
pub mod country;
pub mod enums;
pub mod federation;
pub mod flag_history;
pub mod hla;
pub mod hospital;
pub mod identity;
pub mod ledger;
pub mod network;
pub mod page_token;
pub mod record;
pub mod search;
pub mod stored;
pub mod validation;

pub use access::Caller;
pub use chain::ChainKey;
pub use clinic::Clinic;
pub use country::CountryCode;
pub use enums::*;
pub use federation::{BadElement, BadElementAt, Element, FederationKey, Points, RecordElements};
pub use hla::HlaTyping;
pub use hospital::HospitalId;
pub use identity::{Fingerprint, FingerprintKey, PersonIdentifier};
pub use page_token::PageTokenKey;
pub use record::{Donor, DonorKind, Person, Record, RecordId, Submission, TransplantRecord};
pub use stored::{ClinicVersion, FlagEvent, FlagFilter, FlagView, RecordView};
pub use validation::{FieldViolation, Violations};
