//! Spawning the real server against a fresh database, and test data.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, OnceCell, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use transplant_audit::api::auth::Authenticator;
use transplant_audit::domain::access::{KeySpec, NewApiKey};
use transplant_audit::domain::ledger::SigningKey;
use transplant_audit::domain::{FingerprintKey, Role, Submission};
use transplant_audit::ingest::Ingestor;
use transplant_audit::localdb::LocalPostgres;
use transplant_audit::rules::{Engine, RulesConfig};
use transplant_audit::seal::Sinks;
use transplant_audit::server::{self, App, Listeners, Sealing, ServeOptions};
use transplant_audit::store::{self, PoolSettings, Store};
use transplant_audit::wire::convert::submission;
use transplant_audit::wire::pb;
use transplant_audit::wire::pb::admin_service_client::AdminServiceClient;
use transplant_audit::wire::pb::audit_service_client::AuditServiceClient;
use transplant_audit::wire::pb::ingest_service_client::IngestServiceClient;
use transplant_audit::wire::pb::registry_service_client::RegistryServiceClient;

/// The fingerprint key every test server uses (tests compare fingerprints).
pub const TEST_KEY: [u8; 32] = [0x5a; 32];

/// Sends an API key with every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    pub fn new(token: &str) -> Self {
        Self(format!("Bearer {token}").parse().expect("ascii token"))
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel that authenticates every call.
pub type Authed = InterceptedService<Channel, Bearer>;

/// The hospital the default client (`app.ingest`) and `kidney()` records belong to.
pub const DEFAULT_HOSPITAL: &str = "H-DE-001";

/// A running server on its own fresh database, with clients holding real keys.
pub struct TestApp {
    pub addr: SocketAddr,
    /// A HOSPITAL key's client for [`DEFAULT_HOSPITAL`].
    pub ingest: IngestServiceClient<Authed>,
    /// An ADMIN key's client.
    pub registry: RegistryServiceClient<Authed>,
    /// An AUDITOR key's client.
    pub audit: AuditServiceClient<Authed>,
    /// An ADMIN key's client.
    pub admin: AdminServiceClient<Authed>,
    pub channel: Channel,
    /// A direct connection pool to the server's database, to check what is stored.
    pub pool: PgPool,
    pub database_url: String,
    /// The store, to create keys behind the API.
    pub store: Store,
    /// The server's key check, to tell it about keys made behind its back.
    pub auth: Arc<Authenticator>,
    /// The tokens of the keys the clients above use.
    pub admin_token: String,
    pub auditor_token: String,
    pub hospital_token: String,
    hospitals: Mutex<HashMap<String, IngestServiceClient<Authed>>>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    /// The folder the server's digest sink appends to (`digests.jsonl`).
    pub digests: tempfile::TempDir,
    /// Where the web console serves, when it was started.
    pub console_addr: Option<SocketAddr>,
}

/// A connection of its own to the app, authenticating with `token`.
pub async fn second_connection(app: &TestApp, token: &str) -> Authed {
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .expect("uri")
        .connect()
        .await
        .expect("second connection");
    InterceptedService::new(channel, Bearer::new(token))
}

/// Creates a key straight in the store, for a principal of its own (a
/// hospital key: its hospital's); returns its token.
pub async fn create_key(store: &Store, role: Role, hospital_id: Option<&str>) -> String {
    static KEYS: AtomicU32 = AtomicU32::new(0);
    let principal = (role != Role::Hospital).then(|| {
        format!(
            "tester-{}@registry.test",
            KEYS.fetch_add(1, Ordering::Relaxed)
        )
    });
    create_key_for(store, role, hospital_id, principal.as_deref()).await
}

/// Creates a key straight in the store for `principal`, as the command line
/// does; returns its token.
pub async fn create_key_for(
    store: &Store,
    role: Role,
    hospital_id: Option<&str>,
    principal: Option<&str>,
) -> String {
    let new = NewApiKey::generate().expect("randomness");
    let spec = KeySpec::new(
        role,
        hospital_id,
        "test",
        None,
        principal,
        chrono::Utc::now(),
    )
    .expect("spec");
    store
        .create_key(&new, &spec, None)
        .await
        .expect("create key");
    new.token
}

/// A HOSPITAL key stored with `spelling` as its hospital id, exactly, as the
/// service wrote keys before hospital ids had one normal form.
pub async fn legacy_hospital_key(store: &Store, spelling: &str) -> String {
    let new = NewApiKey::generate().expect("randomness");
    let mut spec = KeySpec::new(
        Role::Hospital,
        Some(spelling),
        "legacy",
        None,
        None,
        chrono::Utc::now(),
    )
    .expect("spec");
    spec.hospital_id = Some(spelling.to_owned());
    store
        .create_key(&new, &spec, None)
        .await
        .expect("create key");
    new.token
}

/// The registry's signing key in tests.
pub fn test_signing_key() -> SigningKey {
    SigningKey::from_seed(&[0x3c; 32])
}

/// The hex seed of [`test_signing_key`], as SIGNING_KEY takes it.
pub fn test_signing_key_hex() -> String {
    hex::encode([0x3c; 32])
}

/// The key id of a token (`ta_<key id>_<secret>`).
pub fn key_id(token: &str) -> String {
    token.split('_').nth(1).expect("key id").to_owned()
}

impl TestApp {
    /// Creates a key straight in the store and tells the server at once, as
    /// a key created through it (others learn of it within two seconds).
    pub async fn key(&self, role: Role, hospital_id: Option<&str>) -> String {
        let token = create_key(&self.store, role, hospital_id).await;
        self.auth.learn(&key_id(&token));
        token
    }

    /// A client with this token.
    pub fn authed(&self, token: &str) -> Authed {
        InterceptedService::new(self.channel.clone(), Bearer::new(token))
    }

    /// An ingest client holding a HOSPITAL key for `hospital_id`, made on first use.
    pub async fn ingest_for(&self, hospital_id: &str) -> IngestServiceClient<Authed> {
        if let Some(client) = self.hospitals.lock().await.get(hospital_id) {
            return client.clone();
        }
        let token = self.key(Role::Hospital, Some(hospital_id)).await;
        let client = IngestServiceClient::new(self.authed(&token));
        self.hospitals
            .lock()
            .await
            .insert(hospital_id.to_owned(), client.clone());
        client
    }

    /// Stops the server gracefully and waits until it has.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task");
        }
    }

    /// Rows in a table.
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The server of the database tests create their databases on: DATABASE_URL
/// if set, else Postgres on 127.0.0.1:5432, else a cluster the tests run themselves.
async fn admin_url() -> &'static str {
    static URL: OnceCell<String> = OnceCell::const_new();
    URL.get_or_init(|| async {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return url;
        }
        let local = "postgres://postgres@127.0.0.1:5432/postgres".to_owned();
        if PgConnection::connect(&local).await.is_ok() {
            return local;
        }
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-postgres");
        let pg = tokio::task::spawn_blocking(move || LocalPostgres::ensure_running(&dir))
            .await
            .expect("join")
            .expect("no Postgres at DATABASE_URL or 127.0.0.1:5432, and starting one failed");
        pg.url("postgres")
    })
    .await
}

fn with_database(admin: &str, name: &str) -> String {
    let mut url = url_parts(admin);
    url.1 = name.to_owned();
    format!("{}/{}{}", url.0, url.1, url.2)
}

/// (everything before the database name, the name, the query string).
fn url_parts(url: &str) -> (String, String, String) {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    match base[scheme_end..].rfind('/') {
        Some(i) => {
            let (head, name) = base.split_at(scheme_end + i);
            (head.to_owned(), name[1..].to_owned(), query)
        }
        None => (base.to_owned(), String::new(), query),
    }
}

/// The test Postgres's admin URL and a database name no test has used, with
/// the prefix under which databases of earlier, finished test runs are dropped.
pub async fn unused_database_name() -> (&'static str, String) {
    static CLEANED: OnceCell<()> = OnceCell::const_new();
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let admin = admin_url().await;
    CLEANED.get_or_init(|| drop_stale_databases(admin)).await;
    let name = format!(
        "ta_test_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    (admin, name)
}

/// A fresh database; databases of earlier, finished test runs are dropped.
pub async fn fresh_database() -> String {
    let (admin, name) = unused_database_name().await;
    store::create_database_if_missing(admin, &name)
        .await
        .expect("create test database");
    with_database(admin, &name)
}

async fn drop_stale_databases(admin: &str) {
    let Ok(mut conn) = PgConnection::connect(admin).await else {
        return;
    };
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'ta\\_test\\_%'")
            .fetch_all(&mut conn)
            .await
            .unwrap_or_default();
    for name in names {
        let pid: Option<i32> = name.split('_').nth(2).and_then(|p| p.parse().ok());
        let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut conn)
                .await;
        }
    }
}

/// A server with the default rules on a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(RulesConfig::default()).await
}

/// A server with these rules on a fresh database.
pub async fn spawn_app_with(rules: RulesConfig) -> TestApp {
    let database_url = fresh_database().await;
    spawn_app_on(&database_url, rules).await
}

/// A server with these rules on an existing database.
pub async fn spawn_app_on(database_url: &str, rules: RulesConfig) -> TestApp {
    spawn_app_configured(database_url, rules, ServeOptions::default()).await
}

/// A server with these rules and limits on an existing database.
pub async fn spawn_app_configured(
    database_url: &str,
    rules: RulesConfig,
    options: ServeOptions,
) -> TestApp {
    spawn_app_serving(database_url, rules, options, None).await
}

/// A server on a fresh database with its web console (plain HTTP on
/// loopback), sessions ending after `session_idle` unused.
pub async fn spawn_app_with_console(session_idle: std::time::Duration) -> TestApp {
    let database_url = fresh_database().await;
    spawn_app_serving(
        &database_url,
        RulesConfig::default(),
        ServeOptions::default(),
        Some(session_idle),
    )
    .await
}

async fn spawn_app_serving(
    database_url: &str,
    rules: RulesConfig,
    options: ServeOptions,
    console_idle: Option<std::time::Duration>,
) -> TestApp {
    let key = FingerprintKey::from_bytes(&TEST_KEY).expect("key");
    let store = Store::connect(database_url, &PoolSettings::default(), &key).expect("database url");
    store.migrate().await.expect("migrate");
    let digests = tempfile::tempdir().expect("a folder for digests");
    let sealing = Sealing {
        signer: test_signing_key(),
        previous_keys: Vec::new(),
        sinks: Sinks {
            file: Some(digests.path().join("digests.jsonl")),
            ..Sinks::default()
        },
        interval: std::time::Duration::from_millis(200),
    };
    let app = App::new(
        store.clone(),
        Engine::new(rules),
        key,
        options.ingest_batch_size,
        sealing,
    );
    let auth = app.auth.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel();
    let options = ServeOptions {
        shutdown_grace: std::time::Duration::ZERO,
        ..options
    };
    let mut listeners = Listeners::grpc(listener);
    let mut console_addr = None;
    if let Some(session_idle) = console_idle {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        console_addr = Some(listener.local_addr().expect("addr"));
        listeners.console = Some(server::ConsoleListener {
            listener,
            tls: None,
            session_idle,
        });
    }
    let server = tokio::spawn(async move {
        server::serve(listeners, app, options, async {
            let _ = rx.await;
        })
        .await
        .expect("server failed");
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect to the test server");
    let pool = PgPool::connect(database_url).await.expect("test pool");
    let admin_token = create_key(&store, Role::Admin, None).await;
    let auditor_token = create_key(&store, Role::Auditor, None).await;
    let hospital_token = create_key(&store, Role::Hospital, Some(DEFAULT_HOSPITAL)).await;
    for token in [&admin_token, &auditor_token, &hospital_token] {
        auth.learn(&key_id(token));
    }
    let with = |token: &str| InterceptedService::new(channel.clone(), Bearer::new(token));
    let ingest = IngestServiceClient::new(with(&hospital_token));
    TestApp {
        addr,
        hospitals: Mutex::new(HashMap::from([(
            DEFAULT_HOSPITAL.to_owned(),
            ingest.clone(),
        )])),
        ingest,
        registry: RegistryServiceClient::new(with(&admin_token)),
        audit: AuditServiceClient::new(with(&auditor_token)),
        admin: AdminServiceClient::new(with(&admin_token)),
        channel,
        pool,
        database_url: database_url.to_owned(),
        store,
        auth,
        admin_token,
        auditor_token,
        hospital_token,
        shutdown: Some(tx),
        server: Some(server),
        digests,
        console_addr,
    }
}

pub fn ts(rfc3339: &str) -> prost_types::Timestamp {
    let at = chrono::DateTime::parse_from_rfc3339(rfc3339).expect("timestamp");
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    }
}

pub fn identifier(value: &str) -> Option<pb::PersonIdentifier> {
    Some(pb::PersonIdentifier {
        scheme: pb::IdentifierScheme::NationalId as i32,
        issuing_country: "DE".into(),
        value: value.into(),
    })
}

/// A valid, unremarkable record: a sibling's left kidney in Berlin, ABO-compatible.
pub fn kidney(external_record_id: &str) -> pb::TransplantRecord {
    pb::TransplantRecord {
        external_record_id: external_record_id.into(),
        hospital_id: "H-DE-001".into(),
        clinic_id: "DE-BER-01".into(),
        procedure_country: "DE".into(),
        organ: pb::Organ::Kidney as i32,
        laterality: pb::Laterality::Left as i32,
        procured_at: Some(ts("2025-03-03T08:00:00Z")),
        transplanted_at: Some(ts("2025-03-03T10:00:00Z")),
        cold_ischemia_minutes: None,
        machine_perfusion: false,
        donor: Some(pb::Donor {
            identifier: identifier(&format!("DONOR{external_record_id}")),
            nationality: "DE".into(),
            country_of_residence: "DE".into(),
            age_years: Some(45),
            sex: pb::Sex::Female as i32,
            abo: pb::AboGroup::O as i32,
            rh: pb::RhFactor::Positive as i32,
            hla: None,
            donor_type: pb::DonorType::Living as i32,
            relation_to_recipient: pb::DonorRelation::Sibling as i32,
            death_at: None,
            death_kind: 0,
        }),
        recipient: Some(pb::Recipient {
            identifier: identifier(&format!("RECIPIENT{external_record_id}")),
            nationality: "DE".into(),
            country_of_residence: "DE".into(),
            age_years: Some(44),
            sex: pb::Sex::Male as i32,
            abo: pb::AboGroup::A as i32,
            rh: pb::RhFactor::Positive as i32,
            hla: None,
        }),
        abo_exception: pb::AboException::None as i32,
    }
}

/// The same record made ABO-incompatible (an A donor to an O recipient).
pub fn abo_incompatible(external_record_id: &str) -> pb::TransplantRecord {
    let mut r = kidney(external_record_id);
    if let Some(d) = r.donor.as_mut() {
        d.abo = pb::AboGroup::A as i32;
    }
    if let Some(p) = r.recipient.as_mut() {
        p.abo = pb::AboGroup::O as i32;
    }
    r
}

/// A registry entry licensed for every organ from 2015 to 2035.
pub fn clinic(clinic_id: &str, country: &str) -> pb::Clinic {
    pb::Clinic {
        clinic_id: clinic_id.into(),
        name: format!("{clinic_id} transplant centre"),
        country: country.into(),
        licensed_organs: (1..=8).collect(),
        licence_valid_from: Some(ts("2015-01-01T00:00:00Z")),
        licence_valid_until: Some(ts("2035-01-01T00:00:00Z")),
        status: pb::ClinicStatus::Active as i32,
        ..pb::Clinic::default()
    }
}

/// Submits one record and returns its acknowledgement.
pub async fn submit(
    app: &TestApp,
    record: pb::TransplantRecord,
) -> Result<pb::RecordAck, tonic::Status> {
    // A malformed hospital_id cannot have a key: send it with the default one,
    // for the server to reject.
    let valid_hospital = !record.hospital_id.is_empty()
        && record.hospital_id.len() <= 128
        && record.hospital_id.trim() == record.hospital_id
        && !record.hospital_id.chars().any(char::is_control);
    let mut client = if valid_hospital {
        app.ingest_for(&record.hospital_id).await
    } else {
        app.ingest.clone()
    };
    let response = client
        .submit_record(pb::SubmitRecordRequest {
            record: Some(record),
        })
        .await?;
    Ok(response.into_inner().ack.expect("an ack"))
}

/// Amends a record with the key of its hospital; the ack when accepted.
pub async fn amend(
    app: &TestApp,
    record: pb::TransplantRecord,
    reason: &str,
) -> Result<pb::RecordAck, tonic::Status> {
    let response = app
        .ingest_for(&record.hospital_id)
        .await
        .amend_record(pb::AmendRecordRequest {
            record: Some(record),
            reason: reason.into(),
        })
        .await?;
    Ok(response.into_inner().ack.expect("an ack"))
}

/// Every flag, newest first, following page tokens.
pub async fn all_flags(app: &TestApp, mut request: pb::ListFlagsRequest) -> Vec<pb::Flag> {
    let mut flags = Vec::new();
    loop {
        let page = app
            .audit
            .clone()
            .list_flags(request.clone())
            .await
            .expect("list flags")
            .into_inner();
        flags.extend(page.flags);
        if page.next_page_token.is_empty() {
            return flags;
        }
        request.page_token = page.next_page_token;
    }
}

/// The field paths of a status's BadRequest detail.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// A certificate authority of the test's own.
pub struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        Self(CertifiedIssuer::self_signed(params, key).expect("CA"))
    }

    pub fn pem(&self) -> String {
        self.0.pem()
    }

    /// A leaf certificate for `names` (PEM certificate, PEM key).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.signed_by(&key, &self.0).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes `text` to `dir/name`.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// The `google.rpc.ErrorInfo` reason of a status, and whether it advises a
/// retry (`google.rpc.RetryInfo`).
pub fn reason(status: &tonic::Status) -> (String, bool) {
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    let reason = details.error_info().map(|i| i.reason.clone());
    (reason.unwrap_or_default(), details.retry_info().is_some())
}

/// The `transplant-audit` binary running as a child process, logging JSON.
/// Dropped before [`ServerProcess::drain`] (a test that failed half-way), it
/// kills the process, so no server outlives its test.
pub struct ServerProcess {
    child: Option<std::process::Child>,
    pub addr: String,
    /// Where it serves Prometheus metrics.
    pub metrics_addr: String,
    /// Every line it logged so far (see [`ServerProcess::drain`]).
    pub log: Vec<String>,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

/// The fingerprint key the tests use, hex-encoded as the binary reads it.
pub fn test_key_hex() -> String {
    TEST_KEY.iter().map(|b| format!("{b:02x}")).collect()
}

impl ServerProcess {
    /// Starts the binary on `database_url` and free ports; returns once it serves.
    pub async fn start(database_url: &str, rust_log: &str) -> Self {
        Self::start_with(database_url, rust_log, &[]).await
    }

    /// [`ServerProcess::start`] with more environment variables.
    pub async fn start_with(database_url: &str, rust_log: &str, env: &[(&str, &str)]) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_transplant-audit"))
            .env("DATABASE_URL", database_url)
            .env("FINGERPRINT_KEY", test_key_hex())
            .env("SIGNING_KEY", test_signing_key_hex())
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", rust_log)
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the server");
        let stderr = child.stderr.take().expect("stderr");
        let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut log = Vec::new();
        let mut metrics_addr = String::new();
        let addr = loop {
            let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.recv())
                .await
                .expect("the server starts")
                .expect("a log line");
            log.push(line.clone());
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let addr = entry["fields"]["addr"].as_str().unwrap_or_default();
            match entry["fields"]["message"].as_str() {
                Some("serving gRPC") => break addr.to_owned(),
                Some("serving metrics") => metrics_addr = addr.to_owned(),
                _ => {}
            }
        };
        Self {
            child: Some(child),
            addr,
            metrics_addr,
            log,
            lines,
        }
    }

    /// A client connection authenticating with `token`.
    pub async fn connect(&self, token: &str) -> Authed {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        InterceptedService::new(channel, Bearer::new(token))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    /// Sends `signal` (SIGTERM, SIGKILL) to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    /// Waits for the process to exit and collects the rest of its log.
    pub async fn drain(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let mut child = self.child.take().expect("drained once");
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("exit");
        while let Some(line) = self.lines.recv().await {
            self.log.push(line);
        }
        (status, std::mem::take(&mut self.log))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `GET /metrics` of a server, as Prometheus would scrape it.
pub async fn scrape(metrics_addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(metrics_addr)
        .await
        .expect("connect to metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// An ingest pipeline on a fresh database, whose pool opens at most `max_connections`.
pub async fn pipeline(max_connections: u32) -> (Store, Ingestor) {
    let key = FingerprintKey::from_bytes(&TEST_KEY).expect("key");
    let store = Store::connect(
        &fresh_database().await,
        &PoolSettings {
            max_connections,
            ..PoolSettings::default()
        },
        &key,
    )
    .expect("database url");
    store.migrate().await.expect("migrate");
    let engine = Arc::new(Engine::new(RulesConfig::default()));
    let ingestor = Ingestor::new(store.clone(), engine, key, 256);
    (store, ingestor)
}

/// Stores an uncommitted copy of record `from` as `external` in a
/// transaction of its own, so that a submission of `external` waits on it.
pub async fn hold_key(
    pool: &PgPool,
    from: &str,
    external: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.expect("begin");
    for statement in [
        format!(
            "CREATE TEMP TABLE held ON COMMIT DROP AS SELECT * FROM records WHERE external_record_id = '{from}'"
        ),
        format!(
            "UPDATE held SET id = nextval(pg_get_serial_sequence('records', 'id')), external_record_id = '{external}'"
        ),
        "INSERT INTO records OVERRIDING SYSTEM VALUE SELECT * FROM held".to_owned(),
    ] {
        sqlx::query(&statement)
            .execute(&mut *tx)
            .await
            .expect(&statement);
    }
    tx
}

/// Backends of the app's database waiting on a lock.
pub async fn waiting(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(pool)
    .await
    .expect("pg_stat_activity")
}

/// Waits (five seconds at most) until `n` backends of the app's database wait on a lock.
pub async fn until_waiting(pool: &PgPool, n: i64) {
    for _ in 0..500 {
        if waiting(pool).await == n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{n} backends waiting in time; {} are", waiting(pool).await);
}

/// Opens a stream carrying `records`, all sent up front; returns its acknowledgements.
pub async fn send_all(
    app: &TestApp,
    records: Vec<Option<pb::TransplantRecord>>,
) -> Streaming<pb::SubmitRecordsResponse> {
    let requests: Vec<_> = records
        .into_iter()
        .map(|record| pb::SubmitRecordsRequest { record })
        .collect();
    app.ingest
        .clone()
        .submit_records(tokio_stream::iter(requests))
        .await
        .expect("open SubmitRecords")
        .into_inner()
}

/// Sends `records` on one stream, all up front, and collects every acknowledgement.
pub async fn stream_all(
    app: &TestApp,
    records: Vec<Option<pb::TransplantRecord>>,
) -> Vec<pb::SubmitRecordsResponse> {
    let mut acks = send_all(app, records).await;
    let mut out = Vec::new();
    while let Some(response) = acks.message().await.expect("the stream fails") {
        out.push(response);
    }
    out
}

/// The rules raised, by external record id.
pub async fn stored_flags(pool: &PgPool) -> BTreeMap<String, Vec<String>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT external_record_id, rule_id FROM flags ORDER BY external_record_id, rule_id",
    )
    .fetch_all(pool)
    .await
    .expect("flags");
    let mut by_record: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (record, rule) in rows {
        by_record.entry(record).or_default().push(rule);
    }
    by_record
}

/// A deceased donor's left kidney: a second one of the same donor is impossible.
pub fn deceased_left_kidney(external_record_id: &str, donor: &str) -> pb::TransplantRecord {
    let mut r = kidney(external_record_id);
    let d = r.donor.as_mut().expect("donor");
    d.identifier.as_mut().expect("identifier").value = donor.into();
    d.donor_type = pb::DonorType::Deceased as i32;
    d.relation_to_recipient = 0;
    d.death_at = Some(ts("2025-03-03T06:00:00Z"));
    d.death_kind = pb::DeathKind::Dbd as i32;
    r
}

/// Opens a SubmitRecords stream fed from the returned sender.
pub async fn open_stream(
    app: &TestApp,
) -> (
    mpsc::Sender<pb::SubmitRecordsRequest>,
    Streaming<pb::SubmitRecordsResponse>,
) {
    let (tx, rx) = mpsc::channel(16);
    let acks = app
        .ingest
        .clone()
        .submit_records(ReceiverStream::new(rx))
        .await
        .expect("open SubmitRecords")
        .into_inner();
    (tx, acks)
}

/// Submissions of `records`, as the API parses them; every one must be valid.
pub fn submissions(records: &[pb::TransplantRecord]) -> Vec<Submission> {
    records
        .iter()
        .map(|r| submission("record", Some(r), chrono::Utc::now()).expect("valid"))
        .collect()
}

/// The resident set size of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}
