//! All SQL: records, flags, the clinic registry and the triage trail in Postgres.

pub mod activity;
pub mod batch;
mod body;
pub mod cases;
pub mod chain;
mod context;
pub mod dossier;
pub mod federation;
pub mod feed;
pub mod flags;
pub mod imports;
pub mod ingest;
pub mod investigate;
pub mod keys;
pub mod ledger;
pub mod records;
pub mod registry;
pub mod rescan;
mod row;
pub mod sessions;
pub mod steps;
pub mod suggest;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres, Transaction};

use crate::domain::ledger::LedgerKey;
use crate::domain::{ChainKey, FingerprintKey};
use crate::telemetry::metrics;
use ledger::view::LedgerView;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub use context::WindowRequest;
pub use flags::{FlagCase, FlagPage, TriageError, TriageStep};
pub use ingest::{ExistingRecord, IngestTx, StoredAck};
pub use registry::ClinicPage;

/// What can go wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or answered with an error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Concurrent writers kept taking this batch's idempotency keys first;
    /// retrying the batch resolves it.
    #[error("concurrent submissions of the same records kept colliding; retry")]
    Contended,
    /// A stored row holds something the code cannot read.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The health check found the database unreachable and has not seen
    /// it back yet: refused at once rather than after the pool's timeout.
    #[error("the database is unreachable")]
    Unreachable,
    /// Evidence the service is about to build on was changed behind its
    /// back (its MAC or its history does not match): refused, and logged.
    #[error("evidence was changed behind the service's back: {0}")]
    Tampered(String),
}

impl StoreError {
    /// True when the database is unreachable or overloaded rather than the query wrong.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(e) => Self::unavailable(e),
            StoreError::Unreachable => true,
            _ => false,
        }
    }

    fn unavailable(e: &sqlx::Error) -> bool {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::WorkerCrashed => true,
            // Connection exceptions (08), insufficient resources (53) and
            // operator intervention such as a shutdown (57): retry later.
            sqlx::Error::Database(e) => e
                .code()
                .is_some_and(|code| ["08", "53", "57"].iter().any(|c| code.starts_with(c))),
            _ => false,
        }
    }
}

/// The schema migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Whether the database has every migration this build knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaState {
    /// Every migration is applied.
    Current,
    /// Some are not: their versions and descriptions, oldest first.
    Behind {
        /// The missing migrations.
        missing: Vec<(i64, String)>,
    },
}

/// A pool of connections to the service's database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    chain: Arc<ChainKey>,
    ledger: Arc<LedgerKey>,
    /// Which row states the sealed blocks say were followed.
    view: Arc<LedgerView>,
    /// False while the database is known to be unreachable: calls then
    /// fail at once instead of each waiting the pool's timeout.
    reachable: Arc<watch::Sender<bool>>,
    /// Woken when a call suspects the database is gone, so that the health
    /// check looks at once rather than at its next turn.
    suspect: Arc<Notify>,
    options: PgConnectOptions,
}

/// How long a call waits for a connection before it asks the health check
/// to look: a pool that is only busy answers the probe, a database that is
/// gone fails it, and every waiting call is then refused.
const SUSPECT_AFTER: Duration = Duration::from_millis(20);

/// A connection that only checks the database answers.
#[derive(Debug)]
pub struct Probe(sqlx::PgConnection);

impl Probe {
    /// Whether the database answers a trivial query within `within`.
    pub async fn ping(&mut self, within: Duration) -> bool {
        let answered = tokio::time::timeout(
            within,
            sqlx::query_scalar!("SELECT 1 AS \"one!\"").fetch_one(&mut self.0),
        )
        .await;
        matches!(answered, Ok(Ok(_)))
    }
}

/// How to size and time the connection pool.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// Most connections open at once.
    pub max_connections: u32,
    /// How long a caller waits for a free connection before the call fails.
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// Builds a query's future with no span current. sqlx wraps every row
/// stream in the span current when it is built and enters that span again
/// for each row it reads; the caller's span is entered anyway while the
/// future is polled, so what sqlx logs still carries it. A listing's page
/// of 50 flags spent a tenth of its CPU entering and leaving its own span.
pub(crate) fn unspanned<T>(build: impl FnOnce() -> T) -> T {
    tracing::dispatcher::with_default(&tracing::Dispatch::none(), build)
}

impl Store {
    /// Connects (lazily: the pool opens connections on demand, so start-up
    /// survives a database that is still coming up). Record versions are
    /// chained, and every row of evidence MACed, under keys derived from
    /// `secret`.
    pub fn connect(
        url: &str,
        settings: &PoolSettings,
        secret: &FingerprintKey,
    ) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let options = options.application_name("transplant-audit");
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_lazy_with(options.clone());
        Ok(Self {
            pool,
            chain: Arc::new(ChainKey::derive(secret)),
            ledger: Arc::new(LedgerKey::derive(secret)),
            view: Arc::default(),
            reachable: Arc::new(watch::Sender::new(true)),
            suspect: Arc::new(Notify::new()),
            options,
        })
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A pooled connection; the wait is measured. Refused at once while
    /// the database is known to be unreachable.
    pub(crate) async fn acquire(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        self.connecting(self.pool.acquire()).await
    }

    /// A transaction on a pooled connection; the wait is measured. Refused
    /// at once while the database is known to be unreachable.
    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.connecting(self.pool.begin()).await
    }

    /// Waits for a connection from the pool (`connecting`), measured, but
    /// no longer than the database is known to be reachable. A wait that
    /// drags on, or ends as an unreachable database's would (the pool finds
    /// its connections dead and cannot open new ones), asks the health
    /// check to look at once: the call that meets a dead database is the
    /// first to know, and once the check agrees this call and every other
    /// one waiting is refused at once instead of after the pool's timeout.
    async fn connecting<T>(
        &self,
        connecting: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        self.fail_fast()?;
        let started = Instant::now();
        let mut reachable = self.reachable.subscribe();
        let gone = async move {
            // The sender lives as long as this store, so this only ends
            // when the database is marked unreachable.
            let _ = reachable.wait_for(|up| !*up).await;
        };
        let slow = tokio::time::sleep(SUSPECT_AFTER);
        tokio::pin!(connecting, gone, slow);
        let mut asked = false;
        let connected = loop {
            tokio::select! {
                connected = &mut connecting => break connected,
                () = &mut gone => return Err(StoreError::Unreachable),
                () = &mut slow, if !asked => {
                    self.suspect.notify_one();
                    asked = true;
                }
            }
        };
        metrics::pool_wait(started.elapsed());
        match connected {
            Err(e) if StoreError::unavailable(&e) => {
                self.suspect.notify_one();
                Err(e.into())
            }
            connected => Ok(connected?),
        }
    }

    /// The refusal of a call while the database is known to be down.
    fn fail_fast(&self) -> Result<(), StoreError> {
        if *self.reachable.borrow() {
            Ok(())
        } else {
            Err(StoreError::Unreachable)
        }
    }

    /// Records what the health check found, so calls fail fast while the
    /// database is down and go through again as soon as it is back.
    pub fn set_reachable(&self, up: bool) {
        self.reachable.send_if_modified(|was| {
            let changed = *was != up;
            *was = up;
            changed
        });
    }

    /// Resolves when a call suspects the database is gone (see
    /// [`Store::acquire`]): the health check then looks at once.
    pub async fn suspected(&self) {
        self.suspect.notified().await;
    }

    /// Connections open, of which idle, and the most the pool opens.
    pub fn pool_shape(&self) -> (u32, usize, u32) {
        (
            self.pool.size(),
            self.pool.num_idle(),
            self.pool.options().get_max_connections(),
        )
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Which migrations the database lacks, without changing anything.
    pub async fn schema_state(&self) -> Result<SchemaState, StoreError> {
        // The migrator's own table, absent until the first migration (and
        // from the schema the queries are checked against at build time).
        let applied: Vec<i64> =
            match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
            {
                Ok(applied) => applied,
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
                Err(e) => return Err(e.into()),
            };
        let missing: Vec<(i64, String)> = MIGRATOR
            .iter()
            .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
            .map(|m| (m.version, m.description.to_string()))
            .collect();
        Ok(if missing.is_empty() {
            SchemaState::Current
        } else {
            SchemaState::Behind { missing }
        })
    }

    /// A connection of its own, outside the pool: a busy pool says nothing
    /// of whether the database answers.
    pub async fn probe(&self) -> Result<Probe, StoreError> {
        use sqlx::Connection;
        let conn = sqlx::PgConnection::connect_with(&self.options).await?;
        Ok(Probe(conn))
    }
}

/// Creates database `name` on the server that `admin_url` points at, unless
/// it exists. `name` must be a plain identifier (letters, digits, `_`).
pub async fn create_database_if_missing(admin_url: &str, name: &str) -> Result<(), StoreError> {
    use sqlx::Connection;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(StoreError::Corrupt(format!(
            "database name {name:?} is not a plain identifier"
        )));
    }
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    let exists: bool = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS "exists!""#,
        name
    )
    .fetch_one(&mut conn)
    .await?;
    if !exists {
        // Identifiers cannot be bound; the name was checked above.
        let sql = format!("CREATE DATABASE \"{name}\"");
        match sqlx::query(&sql).execute(&mut conn).await {
            Ok(_) => {}
            // Another process created it between the check and now: seen
            // as duplicate_database once it committed, as a unique violation
            // on the catalog while both were creating it.
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("42P04")
                    || e.constraint() == Some("pg_database_datname_index") => {}
            Err(e) => return Err(e.into()),
        }
    }
    conn.close().await?;
    Ok(())
}
