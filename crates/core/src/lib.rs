//! The pure core of transplant-audit: the domain's valid-by-construction
//! types, the rule engine, and the wire (protobuf messages and their
//! conversion to the domain).
//!
//! Nothing here does network or database I/O: this crate's dependencies hold
//! no database driver, gRPC transport or telemetry exporter, so the rules can
//! be tested, benchmarked and fuzzed alone.

pub mod domain;
pub mod dossier;
pub mod rules;
pub mod suggest;
pub mod wire;
