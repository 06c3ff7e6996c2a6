//! transplant-audit: catches signs of organ trafficking and transplant fraud
//! in the transplant records hospitals submit over gRPC.
//!
//! Layers, dependencies pointing inward: [`domain`] (pure types), [`rules`]
//! (pure functions), [`store`] (all SQL), [`ingest`] (the pipeline), [`api`]
//! (tonic adapters), [`server`] (wiring, health, reflection, shutdown),
//! [`incoming`] (accepting connections).

pub mod api;
pub mod audit;
pub mod cli;
pub mod config;
pub mod console;
pub mod context;
pub mod dossier;
pub mod export;
pub mod federation;
pub mod import;
pub mod incoming;
pub mod ingest;
pub mod investigation;
pub mod kept;
pub mod rescan;
pub mod seal;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod watch;

pub use transplant_audit_core::{domain, rules, suggest, wire};
pub use transplant_audit_tools::localdb;
