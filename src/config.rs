//! Configuration: groups of command-line flags, each flag with an
//! environment variable. A command flattens the groups it uses, so its
//! `--help` lists only the flags it reads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::domain::FederationKey;
use crate::domain::federation::FEDERATION_KEY_LEN;
use crate::domain::identity::{FingerprintKey, MIN_KEY_LEN};
use crate::domain::ledger::{BadSigningKey, PublicKey, SigningKey};
use crate::server::ServeOptions;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the database is and the secret its fingerprints are keyed with:
/// every command that opens the database reads these.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Postgres URL. When unset, the service runs a Postgres of its own under --data-dir.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Folder of the local default: its Postgres cluster and generated key.
    #[arg(long, env = "DATA_DIR", default_value = ".transplant-audit")]
    pub data_dir: PathBuf,

    /// Secret key for identifier fingerprints: at least 32 bytes, hex-encoded.
    #[arg(long, env = "FINGERPRINT_KEY", hide_env_values = true)]
    pub fingerprint_key: Option<String>,

    /// File holding the fingerprint key (hex), instead of FINGERPRINT_KEY.
    #[arg(long, env = "FINGERPRINT_KEY_FILE", conflicts_with = "fingerprint_key")]
    pub fingerprint_key_file: Option<PathBuf>,

    /// Secret of this registry's federation key (the scalar its records'
    /// federation elements are raised to): 32 random bytes, hex-encoded.
    /// Without it (and outside the local default, which generates one) no
    /// elements are stored and the registry cannot federate.
    #[arg(long, env = "FEDERATION_KEY", hide_env_values = true)]
    pub federation_key: Option<String>,

    /// File holding the federation key (hex), instead of FEDERATION_KEY.
    #[arg(
        long,
        env = "FEDERATION_KEY_SECRET_FILE",
        conflicts_with = "federation_key"
    )]
    pub federation_key_secret_file: Option<PathBuf>,

    /// Most database connections open at once.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
}

/// The rules in force.
#[derive(Debug, Clone, Args)]
pub struct RulesArgs {
    /// TOML file of rule settings (enable, severity, thresholds); built-in defaults when unset.
    #[arg(long, env = "RULES_CONFIG")]
    pub rules_config: Option<PathBuf>,
}

/// What `serve` reads: the database, the rules, the listeners, TLS and the
/// server's limits.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// The rules.
    #[command(flatten)]
    pub rules: RulesArgs,

    /// Address the gRPC server listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen_addr: SocketAddr,

    /// Address of the Prometheus endpoint (`GET /metrics`). Internal: it
    /// labels flags by rule, so keep it off public networks.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,

    /// Address of a plaintext listener serving only gRPC health checks, for
    /// probes that cannot speak TLS; none when unset.
    #[arg(long, env = "HEALTH_ADDR")]
    pub health_addr: Option<SocketAddr>,

    /// TLS on the gRPC listener.
    #[command(flatten)]
    pub tls: TlsArgs,

    /// The auditors' web console.
    #[command(flatten)]
    pub console: ConsoleArgs,

    /// The ledger's seal.
    #[command(flatten)]
    pub ledger: LedgerArgs,

    /// Federation with peer registries.
    #[command(flatten)]
    pub federation: FederationArgs,

    /// Limits and timing.
    #[command(flatten)]
    pub options: ServeOptions,
}

/// This registry's certificate in federation: its server certificate on
/// FEDERATION_ADDR and its client certificate when it syncs.
#[derive(Debug, Clone, Args)]
pub struct FederationTlsArgs {
    /// PEM certificate chain of this registry in federation.
    #[arg(long, env = "FEDERATION_CERT_FILE", requires = "federation_key_file")]
    pub federation_cert_file: Option<PathBuf>,

    /// PEM private key of FEDERATION_CERT_FILE.
    #[arg(long, env = "FEDERATION_KEY_FILE", requires = "federation_cert_file")]
    pub federation_key_file: Option<PathBuf>,
}

impl FederationTlsArgs {
    /// The certificate and key, read; `None` when not configured.
    pub fn pem(&self) -> Result<Option<PemPair>, ConfigError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| ConfigError::TlsFile {
                path: path.clone(),
                source,
            })
        };
        match (&self.federation_cert_file, &self.federation_key_file) {
            (Some(cert), Some(key)) => Ok(Some((read(cert)?, read(key)?))),
            _ => Ok(None),
        }
    }
}

/// A PEM certificate chain and its private key.
pub type PemPair = (Vec<u8>, Vec<u8>);

/// The federation listener and its limits.
#[derive(Debug, Clone, Args)]
pub struct FederationArgs {
    /// Address of the federation listener (FederationService, mutual TLS
    /// only); none when unset.
    #[arg(long, env = "FEDERATION_ADDR", requires = "federation_cert_file")]
    pub federation_addr: Option<SocketAddr>,

    /// This registry's certificate in federation.
    #[command(flatten)]
    pub tls: FederationTlsArgs,

    /// Elements one peer may have raised here per day (UTC); more are
    /// refused with RESOURCE_EXHAUSTED, and logged.
    #[arg(long, env = "FEDERATION_DAILY_CEILING", default_value_t = crate::federation::DEFAULT_DAILY_CEILING)]
    pub federation_daily_ceiling: u64,

    /// Seconds between syncs with every configured peer, run by the
    /// server; none when unset.
    #[arg(long = "federation-sync-interval-secs", env = "FEDERATION_SYNC_INTERVAL_SECS", value_name = "SECS", value_parser = positive_seconds)]
    pub federation_sync_interval: Option<Duration>,
}

/// The registry's Ed25519 signing key: it signs ledger digests and
/// referral dossiers.
#[derive(Debug, Clone, Args)]
pub struct SigningArgs {
    /// The signing key: 32 random bytes, hex-encoded; generated and kept
    /// under --data-dir by the local default.
    #[arg(long, env = "SIGNING_KEY", hide_env_values = true)]
    pub signing_key: Option<String>,

    /// File holding the signing key (hex), instead of SIGNING_KEY.
    #[arg(long, env = "SIGNING_KEY_FILE", conflicts_with = "signing_key")]
    pub signing_key_file: Option<PathBuf>,
}

/// How the server seals the ledger and where its digests go.
#[derive(Debug, Clone, Args)]
pub struct LedgerArgs {
    /// The signing key.
    #[command(flatten)]
    pub signing: SigningArgs,

    /// Milliseconds between seals: rows written are sealed into a block
    /// within about this long.
    #[arg(long, env = "LEDGER_SEAL_INTERVAL_MS", default_value_t = 2000)]
    pub ledger_seal_interval_ms: u64,

    /// Append every block's signed digest to this file (one JSON object per
    /// line), for a write-once volume; the local default writes
    /// digests.jsonl under --data-dir.
    #[arg(long, env = "LEDGER_DIGEST_FILE")]
    pub ledger_digest_file: Option<PathBuf>,

    /// Print every digest on standard output, one JSON object per line, for
    /// a log collector.
    #[arg(long, env = "LEDGER_DIGEST_STDOUT")]
    pub ledger_digest_stdout: bool,

    /// POST every digest (JSON) to this URL.
    #[arg(long, env = "LEDGER_DIGEST_URL")]
    pub ledger_digest_url: Option<String>,

    /// Public keys (hex, comma-separated) the registry signed blocks with
    /// before its current signing key: `VerifyAuditTrail` trusts them too.
    #[arg(long, env = "LEDGER_PREVIOUS_PUBLIC_KEYS", value_delimiter = ',', value_parser = public_key)]
    pub ledger_previous_public_keys: Vec<PublicKey>,
}

fn public_key(text: &str) -> Result<PublicKey, String> {
    text.parse()
        .map_err(|e: crate::domain::ledger::BadPublicKey| format!("{text:?}: {e}"))
}

impl LedgerArgs {
    /// The interval between seals.
    pub fn seal_interval(&self) -> Duration {
        Duration::from_millis(self.ledger_seal_interval_ms.max(1))
    }
}

/// TLS of the gRPC listener.
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// PEM certificate chain of the gRPC listener; with TLS_KEY_FILE, turns TLS on.
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of the gRPC listener.
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// PEM certificates of the CA that signs client certificates: turns on
    /// mutual TLS, and a hospital key is then accepted only with a client
    /// certificate whose subjectAltName carries DNS:<its hospital id>.
    #[arg(long, env = "TLS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub tls_client_ca_file: Option<PathBuf>,

    /// Serve plaintext gRPC on an address other than loopback (a private
    /// network only; a warning is logged).
    #[arg(long, env = "INSECURE_PLAINTEXT", conflicts_with = "tls_cert_file")]
    pub insecure_plaintext: bool,
}

/// The address the local default serves the console on when CONSOLE_ADDR is unset.
pub const LOCAL_CONSOLE_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

/// The auditors' web console.
#[derive(Debug, Clone, Args)]
pub struct ConsoleArgs {
    /// Address of the auditors' web console. Unset: off, except in the local
    /// default (no DATABASE_URL), which serves it on 127.0.0.1:8080. Plain
    /// HTTP on a loopback address only; elsewhere it takes the gRPC
    /// listener's TLS (TLS_CERT_FILE, TLS_KEY_FILE, TLS_CLIENT_CA_FILE).
    #[arg(long, env = "CONSOLE_ADDR")]
    pub console_addr: Option<SocketAddr>,

    /// Seconds a console session may go unused before it ends.
    #[arg(
        long = "console-session-idle-secs",
        env = "CONSOLE_SESSION_IDLE_SECS",
        value_name = "SECS",
        default_value = "1800",
        value_parser = positive_seconds
    )]
    pub session_idle: Duration,
}

impl ConsoleArgs {
    /// Where the console listens, if anywhere: `local_default` turns it on
    /// at [`LOCAL_CONSOLE_ADDR`] when no address is set.
    pub fn addr(&self, local_default: bool) -> Option<SocketAddr> {
        self.console_addr
            .or(local_default.then_some(LOCAL_CONSOLE_ADDR))
    }

    /// How the console on `addr` protects its traffic: the gRPC listener's
    /// TLS when configured, plain HTTP on loopback only (INSECURE_PLAINTEXT
    /// does not extend to it: a session cookie must not cross a network in
    /// the clear).
    pub fn transport(&self, tls: &TlsArgs, addr: SocketAddr) -> Result<Transport, ConfigError> {
        match tls.transport(addr) {
            Ok(Transport::PlaintextInsecure) | Err(ConfigError::PlaintextRefused(_)) => {
                Err(ConfigError::ConsolePlaintextRefused(addr))
            }
            other => other,
        }
    }
}

/// Reads a number of seconds, as the `*_SECS` settings are written.
pub fn seconds(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{text:?} is not a whole number of seconds"))
}

/// Reads a number of seconds that must not be zero: a timeout of nothing
/// would refuse every call.
pub fn positive_seconds(text: &str) -> Result<Duration, String> {
    match seconds(text)? {
        Duration::ZERO => Err("must be at least 1 second".to_owned()),
        d => Ok(d),
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

impl TlsArgs {
    /// How a listener on `addr` is to run: TLS when configured; plaintext
    /// on loopback; plaintext elsewhere only when explicitly allowed.
    pub fn transport(&self, addr: SocketAddr) -> Result<Transport, ConfigError> {
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
            _ if addr.ip().is_loopback() => Ok(Transport::PlaintextLoopback),
            _ if self.insecure_plaintext => Ok(Transport::PlaintextInsecure),
            _ => Err(ConfigError::PlaintextRefused(addr)),
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
    /// The console asked for on a reachable address without TLS.
    #[error(
        "refusing a plain-HTTP console on {0}: plain HTTP is served on loopback only; \
         set TLS_CERT_FILE and TLS_KEY_FILE, or CONSOLE_ADDR to a loopback address"
    )]
    ConsolePlaintextRefused(SocketAddr),
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
    /// No signing key outside the local default.
    #[error(
        "no signing key: set SIGNING_KEY (or SIGNING_KEY_FILE) to 32 random bytes, \
         hex-encoded (e.g. `openssl rand -hex 32`)"
    )]
    MissingSigningKey,
    /// The signing key is not usable.
    #[error("the signing key {0}")]
    BadSigningKey(String),
    /// The federation key is not usable.
    #[error("the federation key must be {FEDERATION_KEY_LEN} random bytes, hex-encoded")]
    BadFederationKey,
    /// A key file could not be read or written.
    #[error("key file {path}: {source}")]
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

impl DatabaseArgs {
    /// The configured key; `None` when none is configured.
    pub fn configured_key(&self) -> Result<Option<FingerprintKey>, ConfigError> {
        if let Some(text) = &self.fingerprint_key {
            return parse_key(text).map(Some);
        }
        if let Some(path) = &self.fingerprint_key_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::KeyFile {
                path: path.clone(),
                source,
            })?;
            return parse_key(&text).map(Some);
        }
        Ok(None)
    }
}

/// Parses a hex-encoded federation key.
pub fn parse_federation_key(hex_text: &str) -> Result<FederationKey, ConfigError> {
    let bytes = hex::decode(hex_text.trim()).map_err(|_| ConfigError::BadFederationKey)?;
    FederationKey::from_bytes(&bytes).map_err(|_| ConfigError::BadFederationKey)
}

impl DatabaseArgs {
    /// The configured federation key, or the local default's under
    /// `local_dir` (generated on first use, beside the fingerprint key);
    /// `None` when neither is there: the registry does not federate.
    pub fn federation_key(
        &self,
        local_dir: Option<&Path>,
    ) -> Result<Option<FederationKey>, ConfigError> {
        if let Some(text) = &self.federation_key {
            return parse_federation_key(text).map(Some);
        }
        if let Some(path) = &self.federation_key_secret_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::KeyFile {
                path: path.clone(),
                source,
            })?;
            return parse_federation_key(&text).map(Some);
        }
        match local_dir {
            Some(dir) => parse_federation_key(&local_secret(dir, FEDERATION_KEY_FILE)?).map(Some),
            None => Ok(None),
        }
    }
}

/// The local default's federation key, under --data-dir.
const FEDERATION_KEY_FILE: &str = "federation.key";

/// The key of the local default: read from `dir/fingerprint.key`, created
/// (32 random bytes, owner-only) on first use.
pub fn local_key(dir: &Path) -> Result<FingerprintKey, ConfigError> {
    parse_key(&local_secret(dir, "fingerprint.key")?)
}

/// A secret of the local default, hex: read from `dir/name`, created (32
/// random bytes, owner-only) on first use.
/// The local default's signing key, under --data-dir.
const SIGNING_KEY_FILE: &str = "signing.key";

fn local_secret(dir: &Path, name: &str) -> Result<String, ConfigError> {
    let path = dir.join(name);
    let io = |source| ConfigError::KeyFile {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
                .map_err(|_| io(std::io::Error::other("no system randomness")))?;
            std::fs::create_dir_all(dir).map_err(io)?;
            write_private(&path, &hex::encode(secret)).map_err(io)?;
            Ok(hex::encode(secret))
        }
        Err(e) => Err(io(e)),
    }
}

impl SigningArgs {
    /// The configured signing key, or the local default's under `local_dir`
    /// if it was generated already: for commands that check, never sign.
    pub fn existing_key(
        &self,
        local_dir: Option<&Path>,
    ) -> Result<Option<SigningKey>, ConfigError> {
        let generated = local_dir.filter(|dir| dir.join(SIGNING_KEY_FILE).exists());
        if self.signing_key.is_none() && self.signing_key_file.is_none() && generated.is_none() {
            return Ok(None);
        }
        self.key(generated)
    }

    /// The configured signing key, or the local default's under `local_dir`
    /// (generated on first use); `None` when neither is there.
    pub fn key(&self, local_dir: Option<&Path>) -> Result<Option<SigningKey>, ConfigError> {
        let bad = |e: BadSigningKey| ConfigError::BadSigningKey(e.to_string());
        if let Some(text) = &self.signing_key {
            return SigningKey::from_hex(text).map(Some).map_err(bad);
        }
        if let Some(path) = &self.signing_key_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::KeyFile {
                path: path.clone(),
                source,
            })?;
            return SigningKey::from_hex(&text).map(Some).map_err(bad);
        }
        match local_dir {
            Some(dir) => SigningKey::from_hex(&local_secret(dir, SIGNING_KEY_FILE)?)
                .map(Some)
                .map_err(bad),
            None => Ok(None),
        }
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
    use clap::Parser;

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

    #[test]
    fn the_federation_key_is_configured_or_generated_beside_the_fingerprint_key() {
        let dir = tempfile::tempdir().unwrap();
        let args = serve(&[]).unwrap().database;
        assert!(
            args.federation_key(None).unwrap().is_none(),
            "no key: no federation"
        );
        let first = args.federation_key(Some(dir.path())).unwrap().unwrap();
        let second = args.federation_key(Some(dir.path())).unwrap().unwrap();
        let id = crate::domain::PersonIdentifier::new(
            crate::domain::IdentifierScheme::Passport,
            "DE".parse().unwrap(),
            "X1",
        )
        .unwrap();
        assert_eq!(first.element(&id), second.element(&id));
        let hex = "ab".repeat(32);
        let configured = serve(&["--federation-key", &hex]).unwrap().database;
        let key = configured
            .federation_key(Some(dir.path()))
            .unwrap()
            .unwrap();
        assert_ne!(key.element(&id), first.element(&id), "configured wins");
        for bad in ["ab".repeat(31), "not hex".to_owned()] {
            let args = serve(&["--federation-key", &bad]).unwrap().database;
            assert!(matches!(
                args.federation_key(None),
                Err(ConfigError::BadFederationKey)
            ));
        }
    }

    /// `serve`'s flags alone.
    #[derive(Debug, Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        Serve::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).map(|s| s.args)
    }

    fn transport(args: &[&str]) -> Result<Transport, ConfigError> {
        let args = serve(args).unwrap();
        args.tls.transport(args.listen_addr)
    }

    #[test]
    fn plaintext_only_on_loopback_or_when_asked() {
        assert_eq!(transport(&[]).unwrap(), Transport::PlaintextLoopback);
        let refused = transport(&["--listen-addr", "0.0.0.0:50051"]).unwrap_err();
        assert!(matches!(refused, ConfigError::PlaintextRefused(_)));
        assert!(refused.to_string().contains("TLS_CERT_FILE"), "{refused}");
        let asked = transport(&["--listen-addr", "0.0.0.0:50051", "--insecure-plaintext"]);
        assert_eq!(asked.unwrap(), Transport::PlaintextInsecure);
    }

    #[test]
    fn the_console_is_off_unless_asked_and_plain_http_stays_on_loopback() {
        let args = serve(&[]).unwrap();
        assert_eq!(
            args.console.addr(false),
            None,
            "off in production when unset"
        );
        assert_eq!(args.console.addr(true), Some(LOCAL_CONSOLE_ADDR));
        assert_eq!(args.console.session_idle, Duration::from_secs(1800));
        let addr = LOCAL_CONSOLE_ADDR;
        assert_eq!(
            args.console.transport(&args.tls, addr).unwrap(),
            Transport::PlaintextLoopback
        );
        let open: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        for flags in [&[][..], &["--insecure-plaintext"][..]] {
            let args = serve(flags).unwrap();
            let refused = args.console.transport(&args.tls, open).unwrap_err();
            assert!(
                matches!(refused, ConfigError::ConsolePlaintextRefused(_)),
                "{refused}"
            );
        }
        assert!(serve(&["--console-session-idle-secs", "0"]).is_err());
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
        assert!(serve(&["--tls-cert-file", &cert]).is_err(), "key missing");
        assert!(serve(&["--tls-client-ca-file", &ca]).is_err(), "no TLS");
        let both_and_plaintext = [
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--insecure-plaintext",
        ];
        assert!(serve(&both_and_plaintext).is_err());
        let tls = transport(&[
            "--listen-addr",
            "0.0.0.0:1",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
        ])
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
        let mutual = transport(&[
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-client-ca-file",
            &ca,
        ])
        .unwrap();
        assert!(matches!(
            mutual,
            Transport::Tls(TlsPem {
                client_ca: Some(_),
                ..
            })
        ));
        let missing = transport(&[
            "--tls-cert-file",
            "/nonexistent.pem",
            "--tls-key-file",
            &key,
        ])
        .unwrap_err();
        assert!(matches!(missing, ConfigError::TlsFile { .. }), "{missing}");
    }

    #[test]
    fn serve_defaults_are_the_server_defaults() {
        let args = serve(&[]).unwrap();
        assert_eq!(args.listen_addr.to_string(), "127.0.0.1:50051");
        let defaults = ServeOptions::default();
        assert_eq!(args.options.request_timeout, defaults.request_timeout);
        assert_eq!(args.options.ingest_batch_size, defaults.ingest_batch_size);
        assert_eq!(defaults.request_timeout, Duration::from_secs(30));
        assert!(serve(&["--request-timeout-secs", "soon"]).is_err());
    }

    #[test]
    fn the_new_timeouts_refuse_zero() {
        for flag in [
            "--request-message-timeout-secs",
            "--stream-idle-timeout-secs",
            "--handshake-timeout-secs",
            "--keepalive-interval-secs",
            "--keepalive-timeout-secs",
        ] {
            let refused = serve(&[flag, "0"]).expect_err(flag);
            assert!(
                refused.to_string().contains("at least 1 second"),
                "{refused}"
            );
            assert!(serve(&[flag, "3"]).is_ok(), "{flag}");
        }
    }
}
