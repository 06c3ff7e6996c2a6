//! Configuration: command-line flags, each with an environment variable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::domain::identity::{FingerprintKey, MIN_KEY_LEN};

/// Catches signs of organ trafficking and transplant fraud in transplant records.
#[derive(Debug, Parser)]
#[command(name = "transplant-audit", version, about)]
pub struct Cli {
    /// Settings shared by every command.
    #[command(flatten)]
    pub settings: Settings,
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The commands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Apply migrations and serve gRPC until SIGTERM or SIGINT.
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Re-run rules over stored records, adding only flags that do not exist.
    Rescan(RescanArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Recompute the audit trail's hash chains and name the first broken entry.
    Verify,
    /// Load an NDJSON back-fill through the ingest pipeline, resuming an
    /// interrupted run of the same file.
    Import(ImportArgs),
}

/// What `import` loads.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ImportArgs {
    /// The file: one record per line, in the field names of the proto, enum
    /// values without their prefix (KIDNEY), instants in RFC 3339.
    pub file: PathBuf,
    /// Start from the first line even if an earlier run of this file got further.
    #[arg(long)]
    pub restart: bool,
}

/// `keys` subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it; it is shown only this once.
    Create(CreateKeyArgs),
    /// List every key (never the secrets).
    List,
    /// Revoke a key by its id.
    Revoke {
        /// The key id (the part after `ta_`, before the second `_`).
        key_id: String,
    },
}

/// What `keys create` makes.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct CreateKeyArgs {
    /// hospital, auditor or admin.
    #[arg(long, value_parser = ["hospital", "auditor", "admin"])]
    pub role: String,
    /// The hospital a hospital key submits for.
    #[arg(long)]
    pub hospital_id: Option<String>,
    /// Who or what the key is for.
    #[arg(long, default_value = "")]
    pub description: String,
    /// When the key stops working (RFC 3339); never when omitted.
    #[arg(long, value_name = "RFC3339")]
    pub expires_at: Option<String>,
}

/// What `rescan` evaluates.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct RescanArgs {
    /// A rule id to evaluate (repeat for several); every enabled rule when omitted.
    #[arg(long = "rule", value_name = "RULE_ID")]
    pub rules: Vec<String>,
    /// Only records transplanted at or after this instant (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub from: Option<String>,
    /// Only records transplanted before this instant (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub until: Option<String>,
    /// Write nothing; report what would be added and which flags would no longer be raised.
    #[arg(long)]
    pub dry_run: bool,
    /// Continue an interrupted run by its id (its rules and range apply).
    #[arg(long, value_name = "RUN_ID", conflicts_with_all = ["rules", "from", "until", "dry_run"])]
    pub resume: Option<i64>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Settings shared by every command.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Postgres URL. When unset, the service runs a Postgres of its own under --data-dir.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,

    /// Address the gRPC server listens on.
    #[arg(
        long,
        env = "LISTEN_ADDR",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub listen_addr: SocketAddr,

    /// Address of the Prometheus endpoint (`GET /metrics`).
    #[arg(
        long,
        env = "METRICS_ADDR",
        default_value = "127.0.0.1:9464",
        global = true
    )]
    pub metrics_addr: SocketAddr,

    /// Address of a plaintext listener serving only gRPC health checks, for
    /// probes that cannot speak TLS; none when unset.
    #[arg(long, env = "HEALTH_ADDR", global = true)]
    pub health_addr: Option<SocketAddr>,

    /// Secret key for identifier fingerprints: at least 32 bytes, hex-encoded.
    #[arg(long, env = "FINGERPRINT_KEY", hide_env_values = true, global = true)]
    pub fingerprint_key: Option<String>,

    /// File holding the fingerprint key (hex), instead of FINGERPRINT_KEY.
    #[arg(
        long,
        env = "FINGERPRINT_KEY_FILE",
        global = true,
        conflicts_with = "fingerprint_key"
    )]
    pub fingerprint_key_file: Option<PathBuf>,

    /// Folder of the local default: its Postgres cluster and generated key.
    #[arg(
        long,
        env = "DATA_DIR",
        default_value = ".transplant-audit",
        global = true
    )]
    pub data_dir: PathBuf,

    /// TOML file of rule settings (enable, severity, thresholds); built-in defaults when unset.
    #[arg(long, env = "RULES_CONFIG", global = true)]
    pub rules_config: Option<PathBuf>,

    /// Log format; the level comes from RUST_LOG (default: info).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Most database connections open at once.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16, global = true)]
    pub db_max_connections: u32,

    /// Seconds health reports NOT_SERVING before the server stops accepting calls at shutdown.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 1, global = true)]
    pub shutdown_grace_secs: u64,

    /// Seconds in-flight calls get to finish at shutdown.
    #[arg(
        long,
        env = "SHUTDOWN_TIMEOUT_SECS",
        default_value_t = 30,
        global = true
    )]
    pub shutdown_timeout_secs: u64,

    /// Calls in flight at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "MAX_CONCURRENT_CALLS",
        default_value_t = 256,
        global = true
    )]
    pub max_concurrent_calls: usize,

    /// SubmitRecords streams open at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "MAX_CONCURRENT_STREAMS",
        default_value_t = 32,
        global = true
    )]
    pub max_concurrent_streams: usize,

    /// Records one SubmitRecords stream may carry.
    #[arg(
        long,
        env = "MAX_STREAM_RECORDS",
        default_value_t = 1_000_000,
        global = true
    )]
    pub max_stream_records: u64,

    /// Most records per transaction: a SubmitRecords batch (stored in two
    /// transactions at once, split by clinic), an import's batch, or
    /// concurrent SubmitRecord calls committed together.
    #[arg(long, env = "INGEST_BATCH_SIZE", default_value_t = 2048, global = true)]
    pub ingest_batch_size: usize,

    /// PEM certificate chain of the gRPC listener; with TLS_KEY_FILE, turns TLS on.
    #[arg(long, env = "TLS_CERT_FILE", global = true, requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of the gRPC listener.
    #[arg(long, env = "TLS_KEY_FILE", global = true, requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// PEM certificates of the CA that signs client certificates: turns on
    /// mutual TLS, and a hospital key is then accepted only with a client
    /// certificate whose subjectAltName carries DNS:<its hospital id>.
    #[arg(
        long,
        env = "TLS_CLIENT_CA_FILE",
        global = true,
        requires = "tls_cert_file"
    )]
    pub tls_client_ca_file: Option<PathBuf>,

    /// Serve plaintext gRPC on an address other than loopback (a private
    /// network only; a warning is logged).
    #[arg(
        long,
        env = "INSECURE_PLAINTEXT",
        global = true,
        conflicts_with = "tls_cert_file"
    )]
    pub insecure_plaintext: bool,

    /// Seconds a unary call may take before it is cancelled.
    #[arg(
        long,
        env = "REQUEST_TIMEOUT_SECS",
        default_value_t = 30,
        global = true
    )]
    pub request_timeout_secs: u64,
}

impl Settings {
    /// How long health says NOT_SERVING before the listener closes.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// How long in-flight calls may take to finish at shutdown.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// The per-call deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

/// How the gRPC listener protects its traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// TLS, and mutual TLS when a client CA is given.
    Tls(TlsPem),
    /// Plaintext on a loopback address: for use on this machine only.
    PlaintextLoopback,
    /// Plaintext elsewhere, because INSECURE_PLAINTEXT said so.
    PlaintextInsecure,
}

/// The TLS material, read from the configured files.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsPem {
    /// The server's certificate chain.
    pub cert: Vec<u8>,
    /// The server's private key.
    pub key: Vec<u8>,
    /// The CA that signs client certificates, for mutual TLS.
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("TlsPem")
            .field("mutual", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// How the gRPC listener is to run: TLS when configured; plaintext on
    /// loopback; plaintext elsewhere only when explicitly allowed.
    pub fn transport(&self) -> Result<Transport, ConfigError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| ConfigError::TlsFile {
                path: path.clone(),
                source,
            })
        };
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Ok(Transport::Tls(TlsPem {
                cert: read(cert)?,
                key: read(key)?,
                client_ca: self.tls_client_ca_file.as_ref().map(read).transpose()?,
            })),
            _ if self.listen_addr.ip().is_loopback() => Ok(Transport::PlaintextLoopback),
            _ if self.insecure_plaintext => Ok(Transport::PlaintextInsecure),
            _ => Err(ConfigError::PlaintextRefused(self.listen_addr)),
        }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Plaintext asked for on a reachable address without saying so.
    #[error(
        "refusing plaintext gRPC on {0}: set TLS_CERT_FILE and TLS_KEY_FILE, or \
         INSECURE_PLAINTEXT=true on a private network"
    )]
    PlaintextRefused(SocketAddr),
    /// A TLS file could not be read.
    #[error("TLS file {path}: {source}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// No key configured outside the local default.
    #[error(
        "no fingerprint key: set FINGERPRINT_KEY (or FINGERPRINT_KEY_FILE) to at least {MIN_KEY_LEN} \
         random bytes, hex-encoded (e.g. `openssl rand -hex 32`)"
    )]
    MissingKey,
    /// The key is not usable.
    #[error("the fingerprint key {0}")]
    BadKey(String),
    /// A key file could not be read or written.
    #[error("fingerprint key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// Parses a hex-encoded key.
pub fn parse_key(hex_text: &str) -> Result<FingerprintKey, ConfigError> {
    let bytes = hex::decode(hex_text.trim())
        .map_err(|_| ConfigError::BadKey("must be hex-encoded".into()))?;
    FingerprintKey::from_bytes(&bytes)
        .map_err(|e| ConfigError::BadKey(format!("is too short: {e}")))
}

/// The configured key; `None` when none is configured.
pub fn configured_key(settings: &Settings) -> Result<Option<FingerprintKey>, ConfigError> {
    if let Some(text) = &settings.fingerprint_key {
        return parse_key(text).map(Some);
    }
    if let Some(path) = &settings.fingerprint_key_file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::KeyFile {
            path: path.clone(),
            source,
        })?;
        return parse_key(&text).map(Some);
    }
    Ok(None)
}

/// The key of the local default: read from `dir/fingerprint.key`, created
/// (32 random bytes, owner-only) on first use.
pub fn local_key(dir: &Path) -> Result<FingerprintKey, ConfigError> {
    let path = dir.join("fingerprint.key");
    let io = |source| ConfigError::KeyFile {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_key(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
                .map_err(|_| io(std::io::Error::other("no system randomness")))?;
            std::fs::create_dir_all(dir).map_err(io)?;
            write_private(&path, &hex::encode(secret)).map_err(io)?;
            parse_key(&hex::encode(secret))
        }
        Err(e) => Err(io(e)),
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_be_long_hex() {
        assert!(parse_key(&"ab".repeat(32)).is_ok());
        assert!(matches!(
            parse_key(&"ab".repeat(31)),
            Err(ConfigError::BadKey(_))
        ));
        assert!(matches!(parse_key("not hex"), Err(ConfigError::BadKey(_))));
    }

    #[test]
    fn the_local_key_is_generated_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = local_key(dir.path()).unwrap();
        let second = local_key(dir.path()).unwrap();
        let id = crate::domain::PersonIdentifier::new(
            crate::domain::IdentifierScheme::Passport,
            "DE".parse().unwrap(),
            "X1",
        )
        .unwrap();
        assert_eq!(first.fingerprint(&id), second.fingerprint(&id));
        let mode = std::fs::metadata(dir.path().join("fingerprint.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    fn settings(args: &[&str]) -> Result<Settings, clap::Error> {
        Cli::try_parse_from(std::iter::once("transplant-audit").chain(args.iter().copied()))
            .map(|cli| cli.settings)
    }

    #[test]
    fn plaintext_only_on_loopback_or_when_asked() {
        let local = settings(&[]).unwrap();
        assert_eq!(local.transport().unwrap(), Transport::PlaintextLoopback);
        let open = settings(&["--listen-addr", "0.0.0.0:50051"]).unwrap();
        let refused = open.transport().unwrap_err();
        assert!(matches!(refused, ConfigError::PlaintextRefused(_)));
        assert!(refused.to_string().contains("TLS_CERT_FILE"), "{refused}");
        let asked = settings(&["--listen-addr", "0.0.0.0:50051", "--insecure-plaintext"]).unwrap();
        assert_eq!(asked.transport().unwrap(), Transport::PlaintextInsecure);
    }

    #[test]
    fn tls_needs_both_files_and_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, name).unwrap();
            p.to_str().unwrap().to_owned()
        };
        let (cert, key, ca) = (path("cert.pem"), path("key.pem"), path("ca.pem"));
        assert!(
            settings(&["--tls-cert-file", &cert]).is_err(),
            "key missing"
        );
        assert!(settings(&["--tls-client-ca-file", &ca]).is_err(), "no TLS");
        assert!(
            settings(&[
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--insecure-plaintext"
            ])
            .is_err()
        );
        let tls = settings(&[
            "--listen-addr",
            "0.0.0.0:1",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
        ])
        .unwrap()
        .transport()
        .unwrap();
        let Transport::Tls(pem) = tls else {
            panic!("TLS")
        };
        assert_eq!(
            (pem.cert.as_slice(), pem.key.as_slice()),
            (&b"cert.pem"[..], &b"key.pem"[..])
        );
        assert_eq!(pem.client_ca, None);
        assert!(
            !format!("{pem:?}").contains("key.pem"),
            "the key is never printed"
        );
        let mutual = settings(&[
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-client-ca-file",
            &ca,
        ])
        .unwrap()
        .transport()
        .unwrap();
        assert!(matches!(
            mutual,
            Transport::Tls(TlsPem {
                client_ca: Some(_),
                ..
            })
        ));
        let missing = settings(&[
            "--tls-cert-file",
            "/nonexistent.pem",
            "--tls-key-file",
            &key,
        ])
        .unwrap()
        .transport()
        .unwrap_err();
        assert!(matches!(missing, ConfigError::TlsFile { .. }), "{missing}");
    }

    #[test]
    fn cli_defaults_and_secrets_hidden() {
        let cli = Cli::try_parse_from(["transplant-audit"]).unwrap();
        assert_eq!(cli.settings.listen_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(cli.command, None);
        let cli = Cli::try_parse_from([
            "transplant-audit",
            "migrate",
            "--database-url",
            "postgres://x",
        ])
        .unwrap();
        assert_eq!(cli.command, Some(Command::Migrate));
        assert_eq!(cli.settings.database_url.as_deref(), Some("postgres://x"));
        let cli = Cli::try_parse_from([
            "transplant-audit",
            "rescan",
            "--rule",
            "ABO_INCOMPATIBLE",
            "--dry-run",
        ])
        .unwrap();
        let Some(Command::Rescan(args)) = cli.command else {
            panic!("not a rescan")
        };
        assert_eq!(args.rules, ["ABO_INCOMPATIBLE"]);
        assert!(args.dry_run);
        assert!(
            Cli::try_parse_from(["transplant-audit", "rescan", "--resume", "3", "--dry-run"])
                .is_err()
        );
    }
}
