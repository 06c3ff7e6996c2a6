//! Federation between registries: recognising peers by their client
//! certificates, serving the private set intersection on its own listener,
//! and syncing with a peer.

pub mod peers;
pub mod serve;
pub mod sync;

/// Elements one `RaiseElements` call carries at most, and one
/// `ListDonorElements` page: 16384 × 34 bytes stays well inside a message.
pub const MAX_BATCH: usize = 16_384;

/// Elements a peer may have raised here per day (UTC) unless configured.
pub const DEFAULT_DAILY_CEILING: u64 = 1_000_000;
