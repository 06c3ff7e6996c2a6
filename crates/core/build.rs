//! Compiles the protos with protox (no system `protoc`) and writes the
//! descriptor set that server reflection serves.

use std::path::PathBuf;

use prost::Message;

/// Our files, plus the error details that statuses carry, so reflection
/// clients can decode a `google.rpc.BadRequest`.
const PROTOS: &[&str] = &[
    "../../proto/google/rpc/error_details.proto",
    "../../proto/transplant_audit/v1/record.proto",
    "../../proto/transplant_audit/v1/ingest.proto",
    "../../proto/transplant_audit/v1/registry.proto",
    "../../proto/transplant_audit/v1/audit.proto",
    "../../proto/transplant_audit/v1/admin.proto",
    "../../proto/transplant_audit/v1/federation.proto",
    "../../proto/transplant_audit/v1/activity.proto",
    "../../proto/transplant_audit/v1/cases.proto",
    "../../proto/transplant_audit/v1/investigation.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protox does not emit rerun-if-changed lines itself.
    println!("cargo:rerun-if-changed=../../proto");
    let fds = protox::compile(PROTOS, ["../../proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("transplant_audit_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // Clients are built on a channel by their users: no transport here.
        .build_transport(false)
        .build_client(true)
        .build_server(true)
        .extern_path(".google.rpc", "::tonic_types::pb")
        // Undecodable requests answer INVALID_ARGUMENT (src/wire/codec.rs).
        .codec_path("crate::wire::codec::ProtoCodec")
        .compile_fds(fds)?;
    Ok(())
}
