//! The baselines: the same rows inserted straight into Postgres, with no
//! service in between. A scratch table copies `records` with its indexes,
//! constraints and identity (`LIKE records INCLUDING ALL`) and stays logged,
//! so every commit pays for its WAL flush as the server's do.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Utc};
use ring::digest;
use sqlx::postgres::{PgArguments, PgPoolOptions};
use sqlx::query::Query;
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use transplant_audit_core::wire::pb;

use super::report::Outcome;

/// Rows per statement of the batched insert.
pub const BATCH_ROWS: usize = 1000;

/// The `records` columns a submission fills, with their array element type.
const COLUMNS: [(&str, &str); 34] = [
    ("hospital_id", "text"),
    ("external_record_id", "text"),
    ("content_hash", "bytea"),
    ("clinic_id", "text"),
    ("procedure_country", "text"),
    ("organ", "text"),
    ("laterality", "text"),
    ("procured_at", "timestamptz"),
    ("transplanted_at", "timestamptz"),
    ("cold_ischemia_minutes", "int4"),
    ("machine_perfusion", "bool"),
    ("abo_exception", "text"),
    ("donor_fp", "bytea"),
    ("donor_type", "text"),
    ("donor_relation", "text"),
    ("donor_death_at", "timestamptz"),
    ("donor_death_kind", "text"),
    ("donor_nationality", "text"),
    ("donor_residence", "text"),
    ("donor_age", "int2"),
    ("donor_sex", "text"),
    ("donor_abo", "text"),
    ("donor_rh", "text"),
    ("donor_hla", "jsonb"),
    ("donor_non_resident", "bool"),
    ("recipient_fp", "bytea"),
    ("recipient_nationality", "text"),
    ("recipient_residence", "text"),
    ("recipient_age", "int2"),
    ("recipient_sex", "text"),
    ("recipient_abo", "text"),
    ("recipient_rh", "text"),
    ("recipient_hla", "jsonb"),
    ("recipient_non_resident", "bool"),
];

/// A donor's or recipient's columns.
#[derive(Debug, Clone)]
struct PersonCols {
    fp: Vec<u8>,
    nationality: String,
    residence: String,
    age: i16,
    sex: Option<&'static str>,
    abo: &'static str,
    rh: Option<&'static str>,
    hla: Option<serde_json::Value>,
    non_resident: bool,
}

/// One `records` row as the server would store it, with SHA-256 stand-ins
/// for the keyed fingerprints (equal identifiers give equal fingerprints).
#[derive(Debug, Clone)]
pub struct Row {
    hospital_id: String,
    external_record_id: String,
    content_hash: Vec<u8>,
    clinic_id: String,
    procedure_country: String,
    organ: &'static str,
    laterality: &'static str,
    procured_at: DateTime<Utc>,
    transplanted_at: DateTime<Utc>,
    cold_ischemia_minutes: Option<i32>,
    machine_perfusion: bool,
    abo_exception: &'static str,
    donor: PersonCols,
    donor_type: &'static str,
    donor_relation: Option<&'static str>,
    donor_death_at: Option<DateTime<Utc>>,
    donor_death_kind: Option<&'static str>,
    recipient: PersonCols,
}

impl Row {
    /// The row of a synthesised record; `None` for a record missing a part
    /// (the synthesiser never makes one).
    pub fn from_proto(r: &pb::TransplantRecord) -> Option<Self> {
        let d = r.donor.as_ref()?;
        let p = r.recipient.as_ref()?;
        let donor_type = enum_text(pb::DonorType::try_from(d.donor_type).ok()?.as_str_name())?;
        let death = d.death_at.as_ref().and_then(instant);
        let country = r.procedure_country.as_str();
        Some(Self {
            hospital_id: r.hospital_id.clone(),
            external_record_id: r.external_record_id.clone(),
            content_hash: sha256(r.external_record_id.as_bytes()),
            clinic_id: r.clinic_id.clone(),
            procedure_country: r.procedure_country.clone(),
            organ: enum_text(pb::Organ::try_from(r.organ).ok()?.as_str_name())?,
            laterality: enum_text(pb::Laterality::try_from(r.laterality).ok()?.as_str_name())
                .unwrap_or("NOT_APPLICABLE"),
            procured_at: instant(r.procured_at.as_ref()?)?,
            transplanted_at: instant(r.transplanted_at.as_ref()?)?,
            cold_ischemia_minutes: r.cold_ischemia_minutes,
            machine_perfusion: r.machine_perfusion,
            abo_exception: enum_text(
                pb::AboException::try_from(r.abo_exception)
                    .ok()?
                    .as_str_name(),
            )
            .unwrap_or("NONE"),
            donor: PersonCols::new(
                country,
                d.identifier.as_ref()?,
                [&d.nationality, &d.country_of_residence],
                (d.age_years?, d.sex, d.abo, d.rh),
                d.hla.as_ref(),
            )?,
            donor_type,
            donor_relation: pb::DonorRelation::try_from(d.relation_to_recipient)
                .ok()
                .and_then(|x| enum_text(x.as_str_name())),
            donor_death_at: death,
            donor_death_kind: pb::DeathKind::try_from(d.death_kind)
                .ok()
                .and_then(|x| enum_text(x.as_str_name())),
            recipient: PersonCols::new(
                country,
                p.identifier.as_ref()?,
                [&p.nationality, &p.country_of_residence],
                (p.age_years?, p.sex, p.abo, p.rh),
                p.hla.as_ref(),
            )?,
        })
    }
}

impl PersonCols {
    fn new(
        procedure_country: &str,
        id: &pb::PersonIdentifier,
        [nationality, residence]: [&String; 2],
        (age, sex, abo, rh): (i32, i32, i32, i32),
        hla: Option<&pb::HlaTyping>,
    ) -> Option<Self> {
        let fingerprint_input = format!("{}/{}/{}", id.scheme, id.issuing_country, id.value);
        Some(Self {
            fp: sha256(fingerprint_input.as_bytes()),
            nationality: nationality.clone(),
            residence: residence.clone(),
            age: i16::try_from(age).ok()?,
            sex: pb::Sex::try_from(sex)
                .ok()
                .and_then(|x| enum_text(x.as_str_name())),
            abo: enum_text(pb::AboGroup::try_from(abo).ok()?.as_str_name())?,
            rh: pb::RhFactor::try_from(rh)
                .ok()
                .and_then(|x| enum_text(x.as_str_name())),
            hla: hla.map(|h| serde_json::json!({ "a": h.a, "b": h.b, "dr": h.dr })),
            non_resident: nationality != procedure_country && residence != procedure_country,
        })
    }
}

/// A proto enum name as the database stores it: `ORGAN_KIDNEY` → `KIDNEY`;
/// `None` for an `_UNSPECIFIED` value.
fn enum_text(proto_name: &'static str) -> Option<&'static str> {
    const PREFIXES: [&str; 10] = [
        "ORGAN_",
        "LATERALITY_",
        "DONOR_TYPE_",
        "DONOR_RELATION_",
        "DEATH_KIND_",
        "ABO_GROUP_",
        "ABO_EXCEPTION_",
        "RH_FACTOR_",
        "SEX_",
        "IDENTIFIER_SCHEME_",
    ];
    let text = PREFIXES
        .iter()
        .find_map(|p| proto_name.strip_prefix(p))
        .unwrap_or(proto_name);
    (text != "UNSPECIFIED").then_some(text)
}

fn instant(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, bytes).as_ref().to_vec()
}

/// What about the database would make the server's figures unrepresentative:
/// without autovacuum, `records` is never analyzed during a run, and plans
/// the server's connections cached on a small table stay in use as it grows.
pub async fn database_notes(database_url: &str) -> anyhow::Result<Vec<String>> {
    let mut conn = PgConnection::connect(database_url)
        .await
        .context("connecting to --database-url")?;
    let autovacuum: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(&mut conn)
        .await?;
    let analyzed: Option<(i64, bool)> = sqlx::query_as(
        "SELECT n_live_tup, last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL
         FROM pg_stat_user_tables WHERE relname = 'records'",
    )
    .fetch_optional(&mut conn)
    .await?;
    let mut notes = Vec::new();
    if autovacuum != "on" {
        notes.push(
            "autovacuum is off on this Postgres: records is not re-analyzed during the run, so \
             the server's cached plans can go stale as the table grows (run ANALYZE, restart the \
             server, and measure again for steady-state figures)"
                .to_owned(),
        );
    }
    if let Some((rows, false)) = analyzed.filter(|(rows, _)| *rows > 1000) {
        notes.push(format!(
            "records holds about {rows} rows but was never analyzed: the server's plans rest on guesses"
        ));
    }
    conn.close().await?;
    Ok(notes)
}

/// The scratch table, created on connect and dropped by [`Baseline::close`].
#[derive(Debug)]
pub struct Baseline {
    pool: PgPool,
    table: String,
}

impl Baseline {
    /// Connects with `connections` connections (all opened now, so the
    /// measurements do not pay for them) and creates the scratch table.
    pub async fn open(database_url: &str, run_id: &str, connections: u32) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(connections)
            .min_connections(connections)
            .connect(database_url)
            .await
            .context("connecting to --database-url")?;
        let conns = futures::future::try_join_all((0..connections).map(|_| pool.acquire()))
            .await
            .context("opening the baseline's connections")?;
        drop(conns);
        let table = table_name(run_id);
        // The server writes each version's entry and receipt times and its
        // place in the ledger's sequence with the row's MAC; here the
        // database stamps the times and draws the number, as a plain insert
        // of the same rows would.
        sqlx::raw_sql(&format!(
            "CREATE TABLE {table} (LIKE records INCLUDING ALL);
             ALTER TABLE {table} ALTER COLUMN version_recorded_at SET DEFAULT now(),
                                 ALTER COLUMN received_at SET DEFAULT now(),
                                 ALTER COLUMN ledger_seq SET DEFAULT nextval('ledger_seq');"
        ))
        .execute(&pool)
        .await
        .with_context(|| {
            format!("creating the scratch table {table} (is this the server's database?)")
        })?;
        Ok(Self { pool, table })
    }

    /// Drops the scratch table and closes the connections.
    pub async fn close(self) -> anyhow::Result<()> {
        let dropped = sqlx::query(&format!("DROP TABLE IF EXISTS {}", self.table))
            .execute(&self.pool)
            .await
            .with_context(|| format!("dropping the scratch table {}", self.table));
        self.pool.close().await;
        dropped.map(drop)
    }

    /// Inserts `rows` in statements of [`BATCH_ROWS`] rows (`INSERT … SELECT
    /// FROM UNNEST`), one after another on one connection; latencies are per statement.
    pub async fn batched(&self, rows: &[Row]) -> anyhow::Result<Outcome> {
        let sql = format!(
            "INSERT INTO {} ({}) SELECT * FROM UNNEST({}) ON CONFLICT (hospital_id, external_record_id) DO NOTHING",
            self.table,
            column_list(),
            placeholders(|i, ty| format!("${i}::{ty}[]")),
        );
        let batches: Vec<Columns> = rows.chunks(BATCH_ROWS).map(Columns::of).collect();
        let mut conn = self.pool.acquire().await?;
        let mut out = Outcome::default();
        let started = Instant::now();
        for batch in batches {
            let sent = Instant::now();
            let n = batch.len;
            let done = batch.bind(sqlx::query(&sql)).execute(&mut *conn).await?;
            out.latencies.push(sent.elapsed());
            out.accepted += usize::try_from(done.rows_affected()).unwrap_or(0);
            if done.rows_affected() != n as u64 {
                out.failures
                    .add(format!("a batch of {n} inserted {}", done.rows_affected()));
            }
        }
        out.elapsed = started.elapsed();
        Ok(out)
    }

    /// Inserts `rows` one per transaction, each after looking its key up
    /// (what idempotent ingest does at least), from `concurrency` callers.
    pub async fn one_per_transaction(
        &self,
        rows: Arc<Vec<Row>>,
        concurrency: usize,
    ) -> anyhow::Result<Outcome> {
        let lookup = Arc::new(format!(
            "SELECT id FROM {} WHERE hospital_id = $1 AND external_record_id = $2",
            self.table
        ));
        let insert = Arc::new(format!(
            "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (hospital_id, external_record_id) DO NOTHING",
            self.table,
            column_list(),
            placeholders(|i, ty| format!("${i}::{ty}")),
        ));
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let callers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (pool, rows, next) = (self.pool.clone(), rows.clone(), next.clone());
                let (lookup, insert) = (lookup.clone(), insert.clone());
                tokio::spawn(async move {
                    let mut out = Outcome::default();
                    while let Some(row) = rows.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let sent = Instant::now();
                        let inserted = insert_one(&pool, &lookup, &insert, row).await?;
                        out.latencies.push(sent.elapsed());
                        if inserted {
                            out.accepted += 1;
                        } else {
                            out.failures
                                .add(format!("{} was already there", row.external_record_id));
                        }
                    }
                    anyhow::Ok(out)
                })
            })
            .collect();
        let mut out = Outcome::default();
        for caller in callers {
            out.merge(caller.await.context("a baseline caller panicked")??);
        }
        out.elapsed = started.elapsed();
        Ok(out)
    }
}

/// One transaction: look the key up, insert when absent, commit.
async fn insert_one(pool: &PgPool, lookup: &str, insert: &str, row: &Row) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    let existing = sqlx::query(lookup)
        .bind(&row.hospital_id)
        .bind(&row.external_record_id)
        .fetch_optional(&mut *tx)
        .await?;
    if existing.is_some() {
        return Ok(false);
    }
    let done = bind_row(sqlx::query(insert), row).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// A Postgres identifier for this run's scratch table.
fn table_name(run_id: &str) -> String {
    let tag: String = run_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(40)
        .collect();
    format!("loadgen_baseline_{tag}")
}

fn column_list() -> String {
    COLUMNS
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `$1…$34` with their casts, in column order.
fn placeholders(param: impl Fn(usize, &str) -> String) -> String {
    COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| param(i + 1, ty))
        .collect::<Vec<_>>()
        .join(", ")
}

type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

/// Binds one row's values in [`COLUMNS`] order.
fn bind_row<'q>(q: PgQuery<'q>, r: &'q Row) -> PgQuery<'q> {
    let q = q
        .bind(&r.hospital_id)
        .bind(&r.external_record_id)
        .bind(&r.content_hash)
        .bind(&r.clinic_id)
        .bind(&r.procedure_country)
        .bind(r.organ)
        .bind(r.laterality)
        .bind(r.procured_at)
        .bind(r.transplanted_at)
        .bind(r.cold_ischemia_minutes)
        .bind(r.machine_perfusion)
        .bind(r.abo_exception);
    let q = bind_person(q, &r.donor, |q| {
        q.bind(r.donor_type)
            .bind(r.donor_relation)
            .bind(r.donor_death_at)
            .bind(r.donor_death_kind)
    });
    bind_person(q, &r.recipient, |q| q)
}

/// A person's columns; `kind` binds what follows the fingerprint (the donor's kind).
fn bind_person<'q>(
    q: PgQuery<'q>,
    p: &'q PersonCols,
    kind: impl FnOnce(PgQuery<'q>) -> PgQuery<'q>,
) -> PgQuery<'q> {
    kind(q.bind(&p.fp))
        .bind(&p.nationality)
        .bind(&p.residence)
        .bind(p.age)
        .bind(p.sex)
        .bind(p.abo)
        .bind(p.rh)
        .bind(&p.hla)
        .bind(p.non_resident)
}

/// A batch of rows turned column-wise, one array per column, for UNNEST.
#[derive(Debug, Default)]
struct Columns {
    len: usize,
    hospital_id: Vec<String>,
    external_record_id: Vec<String>,
    content_hash: Vec<Vec<u8>>,
    clinic_id: Vec<String>,
    procedure_country: Vec<String>,
    organ: Vec<&'static str>,
    laterality: Vec<&'static str>,
    procured_at: Vec<DateTime<Utc>>,
    transplanted_at: Vec<DateTime<Utc>>,
    cold_ischemia_minutes: Vec<Option<i32>>,
    machine_perfusion: Vec<bool>,
    abo_exception: Vec<&'static str>,
    donor_type: Vec<&'static str>,
    donor_relation: Vec<Option<&'static str>>,
    donor_death_at: Vec<Option<DateTime<Utc>>>,
    donor_death_kind: Vec<Option<&'static str>>,
    donor: PersonColumns,
    recipient: PersonColumns,
}

#[derive(Debug, Default)]
struct PersonColumns {
    fp: Vec<Vec<u8>>,
    nationality: Vec<String>,
    residence: Vec<String>,
    age: Vec<i16>,
    sex: Vec<Option<&'static str>>,
    abo: Vec<&'static str>,
    rh: Vec<Option<&'static str>>,
    hla: Vec<Option<serde_json::Value>>,
    non_resident: Vec<bool>,
}

impl PersonColumns {
    fn push(&mut self, p: &PersonCols) {
        self.fp.push(p.fp.clone());
        self.nationality.push(p.nationality.clone());
        self.residence.push(p.residence.clone());
        self.age.push(p.age);
        self.sex.push(p.sex);
        self.abo.push(p.abo);
        self.rh.push(p.rh);
        self.hla.push(p.hla.clone());
        self.non_resident.push(p.non_resident);
    }

    /// Binds the person's arrays; `kind` binds what follows the fingerprint.
    fn bind<'q>(
        self,
        q: PgQuery<'q>,
        kind: impl FnOnce(PgQuery<'q>) -> PgQuery<'q>,
    ) -> PgQuery<'q> {
        kind(q.bind(self.fp))
            .bind(self.nationality)
            .bind(self.residence)
            .bind(self.age)
            .bind(self.sex)
            .bind(self.abo)
            .bind(self.rh)
            .bind(self.hla)
            .bind(self.non_resident)
    }
}

impl Columns {
    fn of(rows: &[Row]) -> Self {
        let mut c = Columns::default();
        for r in rows {
            c.len += 1;
            c.hospital_id.push(r.hospital_id.clone());
            c.external_record_id.push(r.external_record_id.clone());
            c.content_hash.push(r.content_hash.clone());
            c.clinic_id.push(r.clinic_id.clone());
            c.procedure_country.push(r.procedure_country.clone());
            c.organ.push(r.organ);
            c.laterality.push(r.laterality);
            c.procured_at.push(r.procured_at);
            c.transplanted_at.push(r.transplanted_at);
            c.cold_ischemia_minutes.push(r.cold_ischemia_minutes);
            c.machine_perfusion.push(r.machine_perfusion);
            c.abo_exception.push(r.abo_exception);
            c.donor_type.push(r.donor_type);
            c.donor_relation.push(r.donor_relation);
            c.donor_death_at.push(r.donor_death_at);
            c.donor_death_kind.push(r.donor_death_kind);
            c.donor.push(&r.donor);
            c.recipient.push(&r.recipient);
        }
        c
    }

    /// Binds every column array in [`COLUMNS`] order.
    fn bind(self, q: PgQuery<'_>) -> PgQuery<'_> {
        let q = q
            .bind(self.hospital_id)
            .bind(self.external_record_id)
            .bind(self.content_hash)
            .bind(self.clinic_id)
            .bind(self.procedure_country)
            .bind(self.organ)
            .bind(self.laterality)
            .bind(self.procured_at)
            .bind(self.transplanted_at)
            .bind(self.cold_ischemia_minutes)
            .bind(self.machine_perfusion)
            .bind(self.abo_exception);
        let (donor_type, relation, death_at, death_kind) = (
            self.donor_type,
            self.donor_relation,
            self.donor_death_at,
            self.donor_death_kind,
        );
        let q = self.donor.bind(q, |q| {
            q.bind(donor_type)
                .bind(relation)
                .bind(death_at)
                .bind(death_kind)
        });
        self.recipient.bind(q, |q| q)
    }
}

/// A connection of its own to `--database-url`, for timing the service's
/// SQL directly beside its calls; none without the option.
pub async fn direct_connection(url: Option<&str>) -> anyhow::Result<Option<PgConnection>> {
    match url {
        Some(url) => Ok(Some(
            PgConnection::connect(url)
                .await
                .context("connecting to --database-url")?,
        )),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_become_stored_text() {
        assert_eq!(
            enum_text(pb::Organ::LiverSegment.as_str_name()),
            Some("LIVER_SEGMENT")
        );
        assert_eq!(enum_text(pb::AboGroup::Ab.as_str_name()), Some("AB"));
        assert_eq!(
            enum_text(pb::DonorRelation::UnrelatedDirected.as_str_name()),
            Some("UNRELATED_DIRECTED")
        );
        assert_eq!(enum_text(pb::Sex::Unspecified.as_str_name()), None);
    }

    #[test]
    fn sql_lists_every_column_once_in_order() {
        assert_eq!(column_list().matches(", ").count(), 33);
        let values = placeholders(|i, ty| format!("${i}::{ty}"));
        assert!(values.starts_with("$1::text, $2::text, $3::bytea"));
        assert!(values.ends_with("$33::jsonb, $34::bool"));
        assert_eq!(table_name("17 32-ab.C"), "loadgen_baseline_1732abc");
    }
}
