//! The wire: the protobuf messages and services of `transplant_audit.v1`,
//! their codec, and the conversion between them and the domain. The server,
//! `import`, the benches, the fuzz target and the load generator all speak
//! it through this module.

pub mod activity;
pub mod codec;
pub mod convert;
pub mod flags_csv;
pub mod investigation;
pub mod listing;
pub mod ndjson;

/// Code generated from `proto/transplant_audit/v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("transplant_audit.v1");

    /// The encoded descriptors of every proto file, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("transplant_audit_descriptor");
}
