//! The ledger against an insider: with digests kept from before, every
//! change to evidence behind the service's back is named by `verify`, and
//! the API refuses to build on it.
//!
//! Each attack builds its evidence through the real API, keeps the digests
//! the server's sink wrote, checks that `verify --digests` finds the trail
//! intact, then changes the database as someone with the table owner's
//! rights would (`session_replication_role = replica`: triggers and foreign
//! keys off) and checks that `verify --digests` exits 4 naming the table and
//! the row. Attacks that only touch the database run on a stopped server,
//! so no sealer seals beside the insider; each is undone from an insider's
//! copy of the tables before the next.

use std::process::{Command, Output};
use std::time::Duration;

use sqlx::{Connection, PgPool};
use tonic::Code;
use transplant_audit::domain::Role;
use transplant_audit::domain::ledger::{Digest, SigningKey};
use transplant_audit::rules::RulesConfig;
use transplant_audit::store::MIGRATOR;
use transplant_audit::wire::pb;
use transplant_audit::wire::pb::admin_service_client::AdminServiceClient;
use transplant_audit::wire::pb::audit_service_client::AuditServiceClient;

use crate::helpers::*;

// ---------------------------------------------------------------- the insider's tools

/// A test database as an insider and `verify` reach it: a running app's, or
/// one whose server has stopped.
pub trait Db {
    fn pool(&self) -> &PgPool;
    fn url(&self) -> &str;
}

impl Db for TestApp {
    fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn url(&self) -> &str {
        &self.database_url
    }
}

/// A database no server runs on (any more): nothing seals beside the insider.
pub struct Offline {
    pool: PgPool,
    url: String,
}

impl Db for Offline {
    fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn url(&self) -> &str {
        &self.url
    }
}

/// Stops the app's server (it seals what is left first) and keeps its database.
pub async fn stop(app: TestApp) -> Offline {
    let stopped = Offline {
        pool: app.pool.clone(),
        url: app.database_url.clone(),
    };
    app.stop().await;
    stopped
}

/// Waits until the sealer has sealed every row written so far; returns the
/// digests the app's sink holds then (one JSON object per line).
pub async fn sealed_digests(app: &TestApp) -> String {
    let path = app.digests.path().join("digests.jsonl");
    for _ in 0..200 {
        let frontier: Option<i64> =
            sqlx::query_scalar("SELECT pg_sequence_last_value('ledger_seq')")
                .fetch_one(&app.pool)
                .await
                .expect("sequence");
        let sealed: Option<i64> = sqlx::query_scalar("SELECT max(last_seq) FROM ledger_blocks")
            .fetch_one(&app.pool)
            .await
            .expect("blocks");
        if sealed.is_some() && sealed >= frontier {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let last: Option<i64> = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|d| d["last_seq"].as_i64())
                .max();
            if last == sealed {
                return text;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the sealer sealed what was written and wrote its digest");
}

/// `transplant-audit verify --digests FILE` against the database, trusting
/// the public half of `signing_key` (a hex seed), or no key at all.
fn run_verify(db: &impl Db, digests: &str, signing_key: Option<&str>) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("kept-digests.jsonl");
    std::fs::write(&file, digests).expect("write digests");
    let mut command = Command::new(env!("CARGO_BIN_EXE_transplant-audit"));
    command
        .args(["verify", "--digests"])
        .arg(&file)
        .env("DATABASE_URL", db.url())
        .env("FINGERPRINT_KEY", test_key_hex())
        .env_remove("SIGNING_KEY")
        .env("RUST_LOG", "error");
    if let Some(key) = signing_key {
        command.env("SIGNING_KEY", key);
    }
    command.output().expect("run verify")
}

/// `transplant-audit verify --digests FILE` against the database, trusting
/// the registry's key.
pub fn verify_with(db: &impl Db, digests: &str) -> Output {
    run_verify(db, digests, Some(&test_signing_key_hex()))
}

/// Asserts that `verify --digests` finds the trail intact; returns what it said.
#[track_caller]
pub fn assert_intact(db: &impl Db, digests: &str) -> String {
    let out = verify_with(db, digests);
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify should find the trail intact: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that `verify --digests` finds the trail broken (exit 4) and says
/// every one of `names` on standard error; returns what it said.
#[track_caller]
pub fn assert_named<S: AsRef<str>>(db: &impl Db, digests: &str, what: &str, names: &[S]) -> String {
    let out = verify_with(db, digests);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{what}: verify should find the trail broken: {said}"
    );
    for name in names {
        let name = name.as_ref();
        assert!(
            said.contains(name),
            "{what}: verify should say {name:?}: {said}"
        );
    }
    said
}

/// Runs `sql` as an insider with the table owner's rights would, triggers off.
pub async fn tamper(db: &impl Db, sql: &str) {
    let mut tx = db.pool().begin().await.expect("begin");
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .expect("replica role (the tests connect as a superuser)");
    sqlx::raw_sql(sql).execute(&mut *tx).await.expect(sql);
    tx.commit().await.expect("commit");
}

/// Every table that holds evidence, the rows derived from it, or its blocks.
const EVIDENCE: &[&str] = &[
    "records",
    "record_versions",
    "flags",
    "flag_events",
    "clinic_versions",
    "clinics",
    "principals",
    "api_keys",
    "imports",
    "access_log",
    "ledger_blocks",
];

/// Every table whose rows carry a ledger MAC.
const COVERED: &[&str] = &[
    "records",
    "record_versions",
    "flag_events",
    "clinic_versions",
    "principals",
    "api_keys",
    "imports",
    "access_log",
];

/// Takes an insider's copy of `tables` (in a schema of its own), to put back later.
pub async fn keep(db: &impl Db, tables: &[&str]) {
    let mut sql = "CREATE SCHEMA IF NOT EXISTS insider;".to_owned();
    for t in tables {
        sql += &format!(
            "DROP TABLE IF EXISTS insider.{t}; CREATE TABLE insider.{t} AS SELECT * FROM public.{t};"
        );
    }
    tamper(db, &sql).await;
}

/// Puts `tables` back as [`keep`] copied them, every column of every row
/// (their places in the ledger and their MACs too).
pub async fn put_back(db: &impl Db, tables: &[&str]) {
    let sql: String = tables
        .iter()
        .map(|t| {
            format!(
                "DELETE FROM public.{t};
                 INSERT INTO public.{t} OVERRIDING SYSTEM VALUE SELECT * FROM insider.{t};"
            )
        })
        .collect();
    tamper(db, &sql).await;
}

/// One number the database answers.
async fn number(db: &impl Db, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(db.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// One change an insider makes, and what `verify` must say of it.
struct Attack {
    what: &'static str,
    sql: String,
    names: Vec<String>,
}

fn attack(what: &'static str, sql: impl Into<String>, names: &[&str]) -> Attack {
    Attack {
        what,
        sql: sql.into(),
        names: names.iter().map(|n| (*n).to_owned()).collect(),
    }
}

/// What `verify` says of a sealed row that is gone.
fn gone(seq: i64, table: &str) -> String {
    format!("the row sealed at sequence number {seq} ({table})")
}

/// The SQL that deletes a flag's newest step (its third) and rewinds its
/// row to the fold of the two before.
fn newest_step_deleted(flag: impl std::fmt::Display) -> String {
    format!(
        "DELETE FROM flag_events WHERE flag_id = {flag} AND step = 3;
         UPDATE flags SET status = 'IN_REVIEW', revision = 2,
             updated_at = (SELECT at FROM flag_events WHERE flag_id = {flag} AND step = 2)
         WHERE id = {flag}"
    )
}

/// Makes each attack in turn, `verify` naming each one, and undoes it from
/// the insider's copy before the next (a change left behind would make
/// `verify` name it instead); once all are undone the trail is intact.
async fn each_named(db: &impl Db, digests: &str, attacks: &[Attack]) {
    keep(db, EVIDENCE).await;
    for a in attacks {
        tamper(db, &a.sql).await;
        assert_named(db, digests, a.what, &a.names);
        put_back(db, EVIDENCE).await;
    }
    assert_intact(db, digests);
}

// ---------------------------------------------------------------- evidence through the API

const CLINIC: &str = "DE-BER-01";

async fn upsert(app: &TestApp, entry: pb::Clinic) {
    app.registry
        .clone()
        .upsert_clinic(pb::UpsertClinicRequest {
            clinic: Some(entry),
        })
        .await
        .expect("upsert clinic");
}

/// Submits `record` and returns the flag `rule` raised on it.
async fn flag_of(app: &TestApp, record: pb::TransplantRecord, rule: &str) -> pb::Flag {
    let ack = submit(app, record).await.expect("stored");
    all_flags(
        app,
        pb::ListFlagsRequest {
            rule_id: rule.into(),
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .find(|f| f.record_id == ack.record_id)
    .unwrap_or_else(|| panic!("{rule} raised on record {}", ack.record_id))
}

/// A living donor's heart: LIVING_DONOR_ORGAN, a CRITICAL flag.
async fn critical(app: &TestApp, external_record_id: &str) -> pb::Flag {
    let mut r = kidney(external_record_id);
    r.organ = pb::Organ::Heart as i32;
    r.laterality = pb::Laterality::NotApplicable as i32;
    let flag = flag_of(app, r, "LIVING_DONOR_ORGAN").await;
    assert_eq!(flag.severity, pb::Severity::Critical as i32);
    flag
}

/// Moves `flag` (as read, its etag too) to `to` as the auditor behind `auditor`.
async fn triage(
    auditor: &AuditServiceClient<Authed>,
    flag: &pb::Flag,
    to: pb::FlagStatus,
    note: &str,
) -> Result<pb::Flag, tonic::Status> {
    let response = auditor
        .clone()
        .update_flag_status(pb::UpdateFlagStatusRequest {
            flag_id: flag.flag_id.clone(),
            status: to as i32,
            note: note.into(),
            etag: flag.etag.clone(),
        })
        .await?;
    Ok(response.into_inner().flag.expect("the flag after the step"))
}

/// An ABO-incompatible record's flag, taken to CONFIRMED by the default
/// auditor in two steps (IN_REVIEW, CONFIRMED).
async fn confirmed_flag(app: &TestApp, external_record_id: &str) -> pb::Flag {
    let flag = flag_of(
        app,
        abo_incompatible(external_record_id),
        "ABO_INCOMPATIBLE",
    )
    .await;
    let flag = triage(&app.audit, &flag, pb::FlagStatus::InReview, "")
        .await
        .expect("in review");
    triage(&app.audit, &flag, pb::FlagStatus::Confirmed, "fraud")
        .await
        .expect("confirmed")
}

/// Opens a flag's case as the default auditor (an access log entry).
async fn open_case(app: &TestApp, flag: &pb::Flag) {
    app.audit
        .clone()
        .get_flag(pb::GetFlagRequest {
            flag_id: flag.flag_id.clone(),
        })
        .await
        .expect("open the case");
}

fn id(text: &str) -> i64 {
    text.parse().expect("a numeric id")
}

/// Asserts that a call was refused with `code` and the ErrorInfo `why`.
#[track_caller]
fn assert_refused(status: &tonic::Status, code: Code, why: &str) {
    assert_eq!(
        (status.code(), reason(status).0.as_str()),
        (code, why),
        "{status:?}"
    );
}

/// Steps stored for a flag.
async fn steps(db: &impl Db, flag: &pb::Flag) -> i64 {
    number(
        db,
        &format!(
            "SELECT count(*) FROM flag_events WHERE flag_id = {}",
            flag.flag_id
        ),
    )
    .await
}

/// Evidence in every kind of row the attacks change, sealed over at least
/// three blocks: a clinic; an ABO-incompatible record whose flag an auditor
/// took to CONFIRMED; the auditor's read of the case.
struct Scene {
    db: Offline,
    digests: String,
    record: i64,
    flag: i64,
}

/// The scene, its digests kept and its server stopped.
async fn scene() -> Scene {
    let app = spawn_app().await;
    // Each wait ends a block: the keys, the clinic, then the case.
    sealed_digests(&app).await;
    upsert(&app, clinic(CLINIC, "DE")).await;
    sealed_digests(&app).await;
    let flag = confirmed_flag(&app, "SCENE-1").await;
    open_case(&app, &flag).await;
    let digests = sealed_digests(&app).await;
    assert!(number(&app, "SELECT count(*) FROM ledger_blocks").await >= 3);
    assert_intact(&app, &digests);
    Scene {
        db: stop(app).await,
        digests,
        record: id(&flag.record_id),
        flag: id(&flag.flag_id),
    }
}

// ---------------------------------------------------------------- the intact case

/// An NDJSON line the `import` command takes: a plain kidney record.
fn import_line(external_record_id: &str) -> String {
    let person = |value: String| serde_json::json!({"scheme": "NATIONAL_ID", "issuing_country": "DE", "value": value});
    serde_json::json!({
        "external_record_id": external_record_id,
        "hospital_id": DEFAULT_HOSPITAL,
        "clinic_id": CLINIC,
        "procedure_country": "DE",
        "organ": "KIDNEY",
        "laterality": "LEFT",
        "procured_at": "2025-03-03T08:00:00Z",
        "transplanted_at": "2025-03-03T10:00:00Z",
        "donor": {
            "identifier": person(format!("D{external_record_id}")),
            "nationality": "DE", "country_of_residence": "DE", "age_years": 45,
            "sex": "FEMALE", "abo": "O", "rh": "POSITIVE",
            "donor_type": "LIVING", "relation_to_recipient": "SIBLING"
        },
        "recipient": {
            "identifier": person(format!("R{external_record_id}")),
            "nationality": "DE", "country_of_residence": "DE", "age_years": 44,
            "sex": "MALE", "abo": "A", "rh": "POSITIVE"
        },
        "abo_exception": "NONE"
    })
    .to_string()
}

/// The `transplant-audit` binary with `args` against the database.
fn binary(db: &impl Db, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_transplant-audit"))
        .args(args)
        .env("DATABASE_URL", db.url())
        .env("FINGERPRINT_KEY", test_key_hex())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the binary")
}

/// Without the replica role, TRUNCATE of every evidence table is refused by
/// its trigger, for a superuser and for the plain owner of `access_log`,
/// and nothing changes.
async fn assert_truncation_refused(db: &impl Db) {
    let dump = || async {
        let mut all = Vec::new();
        for t in EVIDENCE {
            let q = format!(
                "SELECT coalesce(string_agg(row_to_json(t)::text, E'\\n' ORDER BY row_to_json(t)::text), '') FROM {t} t"
            );
            all.push(
                sqlx::query_scalar::<_, String>(&q)
                    .fetch_one(db.pool())
                    .await
                    .expect("dump"),
            );
        }
        all
    };
    let before = dump().await;
    let refused = |sql: String, err: sqlx::Error| {
        let db = err
            .as_database_error()
            .unwrap_or_else(|| panic!("{sql}: not a database error: {err:?}"));
        assert!(
            db.message().contains("is append-only") && db.code().as_deref() == Some("42501"),
            "{sql} was refused for another reason: {db:?}"
        );
    };
    for t in EVIDENCE {
        let sql = format!("TRUNCATE {t} CASCADE");
        let err = sqlx::query(&sql).execute(db.pool()).await.expect_err(&sql);
        refused(sql, err);
    }
    // The table's owner, without a superuser's right to switch triggers off.
    let mut tx = db.pool().begin().await.expect("begin");
    let owner = format!(
        "{}_owner",
        db.url().rsplit('/').next().expect("database name")
    );
    for sql in [
        format!("CREATE ROLE {owner} NOLOGIN"),
        format!("ALTER TABLE access_log OWNER TO {owner}"),
        format!("SET LOCAL ROLE {owner}"),
    ] {
        sqlx::query(&sql).execute(&mut *tx).await.expect(&sql);
    }
    let sql = "TRUNCATE access_log".to_owned();
    let err = sqlx::query(&sql).execute(&mut *tx).await.expect_err(&sql);
    refused(sql, err);
    tx.rollback().await.expect("rollback");
    assert_eq!(dump().await, before, "nothing changed");
}

#[tokio::test]
async fn evidence_from_every_path_verifies_and_no_table_can_be_truncated() {
    let app = spawn_app().await;
    upsert(&app, clinic(CLINIC, "DE")).await;
    let mut renamed = clinic(CLINIC, "DE");
    renamed.name = "Charité transplant centre".into();
    upsert(&app, renamed).await;

    let flag = flag_of(&app, abo_incompatible("FULL-1"), "ABO_INCOMPATIBLE").await;
    let flag = triage(&app.audit, &flag, pb::FlagStatus::InReview, "")
        .await
        .expect("in review");
    open_case(&app, &flag).await;
    let mut amended = abo_incompatible("FULL-1");
    amended.cold_ischemia_minutes = Some(120);
    amend(&app, amended, "ischemia time added")
        .await
        .expect("amended");

    let mut rescan = app
        .admin
        .clone()
        .rescan(pb::RescanRequest::default())
        .await
        .expect("rescan")
        .into_inner();
    while rescan.message().await.expect("progress").is_some() {}

    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "backfill.ndjson", &import_line("IMPORTED-1"));
    let imported = binary(&app, &["import", file.to_str().expect("utf-8 path")]);
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );

    let mut admin = app.admin.clone();
    let created = admin
        .create_api_key(pb::CreateApiKeyRequest {
            role: pb::Role::Auditor as i32,
            principal: "ines@registry.test".into(),
            ..Default::default()
        })
        .await
        .expect("create key")
        .into_inner();
    admin
        .revoke_api_key(pb::RevokeApiKeyRequest {
            key_id: created.key.expect("key").key_id,
        })
        .await
        .expect("revoke key");

    let digests = sealed_digests(&app).await;
    for table in COVERED {
        assert!(
            app.count(table).await > 0,
            "{table} holds evidence to check"
        );
    }
    let said = assert_intact(&app, &digests);
    assert!(said.contains("The audit trail is intact."), "{said}");
    let kept = digests.lines().count();
    assert!(
        said.contains(&format!(
            "({kept} against digests kept outside the database)"
        )),
        "{said}"
    );

    assert_truncation_refused(&app).await;
    assert_intact(&app, &digests);
    app.stop().await;
}

// ---------------------------------------------------------------- rows changed behind the service

#[tokio::test]
async fn rows_edited_behind_the_service_are_named() {
    let Scene {
        db,
        digests,
        record,
        flag,
    } = scene().await;
    let access = number(&db, "SELECT max(id) FROM access_log").await;
    let flag_row = format!("flag {flag} (flags)");
    let record_row = format!("record {record} version 1 (records)");
    let edited = "its content does not match its MAC";
    let entries = "set_byte(entries, 20, get_byte(entries, 20) # 1)";
    let attacks = [
        attack(
            "a flag's status",
            format!("UPDATE flags SET status = 'DISMISSED' WHERE id = {flag}"),
            &[&flag_row, "status"],
        ),
        attack(
            "a flag's severity",
            format!("UPDATE flags SET severity = 1 WHERE id = {flag}"),
            &[&flag_row, "finding"],
        ),
        attack(
            "a flag's explanation",
            format!("UPDATE flags SET explanation = 'a clerical slip' WHERE id = {flag}"),
            &[&flag_row, "finding"],
        ),
        attack(
            "a flag's evidence",
            format!("UPDATE flags SET evidence_record_ids = '{{{record}}}' WHERE id = {flag}"),
            &[&flag_row, "finding"],
        ),
        attack(
            "a flag's hospital",
            format!("UPDATE flags SET hospital_id = 'H-XX-999' WHERE id = {flag}"),
            &[&flag_row, "hospital"],
        ),
        attack(
            "a record's receipt time",
            format!(
                "UPDATE records SET received_at = received_at - interval '1 day' WHERE id = {record}"
            ),
            &[&record_row, edited],
        ),
        attack(
            "a record's amendment time",
            format!("UPDATE records SET amended_at = now() WHERE id = {record}"),
            &[&record_row, edited],
        ),
        attack(
            "an access log entry's principal",
            format!("UPDATE access_log SET principal = 'someone else' WHERE id = {access}"),
            &[&format!("access log entry {access} (access_log)"), edited],
        ),
        attack(
            "a back-dated licence as a clinic's new version",
            format!(
                "INSERT INTO clinic_versions
                     (clinic_id, version, name, country, licensed_organs, licence_valid_from,
                      licence_valid_until, status, status_effective_from, recorded_at, ledger_mac)
                 SELECT clinic_id, 2, name, country, licensed_organs, '2001-01-01',
                        licence_valid_until, status, status_effective_from, now(), ledger_mac
                 FROM clinic_versions WHERE clinic_id = '{CLINIC}' AND version = 1;
                 UPDATE clinics SET current_version = 2 WHERE clinic_id = '{CLINIC}'"
            ),
            &[
                &format!("clinic {CLINIC} version 2 (clinic_versions)"),
                edited,
            ],
        ),
        attack(
            "a block's entries",
            format!("UPDATE ledger_blocks SET entries = {entries} WHERE block = 1"),
            &["block 1 (ledger_blocks)", "do not match its hash"],
        ),
        attack(
            "a block's entries, its hash computed again",
            format!(
                "UPDATE ledger_blocks SET entries = {entries} WHERE block = 1;
                 UPDATE ledger_blocks
                 SET hash = sha256(convert_to('transplant-audit/ledger/block/v1', 'UTF8')
                                   || prev_hash || int8send(block) || int8send(first_seq)
                                   || int8send(last_seq) || int8send(length(entries)::bigint)
                                   || entries)
                 WHERE block = 1"
            ),
            &["block 1 (ledger_blocks)", "signature is not the registry's"],
        ),
    ];
    each_named(&db, &digests, &attacks).await;
}

#[tokio::test]
async fn rows_deleted_behind_the_service_are_named() {
    let Scene {
        db,
        digests,
        record,
        flag,
    } = scene().await;
    let record_seq = format!("SELECT ledger_seq FROM records WHERE id = {record}");
    let record_seq = number(&db, &record_seq).await;
    let step =
        |n| format!("SELECT ledger_seq FROM flag_events WHERE flag_id = {flag} AND step = {n}");
    let (raised, confirmed) = (number(&db, &step(1)).await, number(&db, &step(3)).await);
    let access = number(&db, "SELECT max(ledger_seq) FROM access_log").await;
    let newest = number(&db, "SELECT max(block) FROM ledger_blocks").await;
    let attacks = [
        attack(
            "the newest triage step, the flag's row rewound to match",
            newest_step_deleted(flag),
            &[&gone(confirmed, "flag_events"), "it is gone"],
        ),
        attack(
            "every step of a flag, its row left",
            format!("DELETE FROM flag_events WHERE flag_id = {flag}"),
            &[&gone(raised, "flag_events")],
        ),
        attack(
            "every step of a flag and its row",
            format!(
                "DELETE FROM flag_events WHERE flag_id = {flag}; DELETE FROM flags WHERE id = {flag}"
            ),
            &[&gone(raised, "flag_events")],
        ),
        attack(
            "a record, its flags left",
            format!("DELETE FROM records WHERE id = {record}"),
            &[&gone(record_seq, "records")],
        ),
        attack(
            "a record with its flags and their steps",
            format!(
                "DELETE FROM flag_events
                 WHERE flag_id IN (SELECT id FROM flags WHERE record_id = {record});
                 DELETE FROM flags WHERE record_id = {record};
                 DELETE FROM records WHERE id = {record}"
            ),
            &[&gone(record_seq, "records")],
        ),
        attack(
            "records, versions, flags and steps truncated",
            "TRUNCATE records, record_versions, flags, flag_events CASCADE",
            &[&gone(record_seq, "records")],
        ),
        attack(
            "an access log entry",
            format!("DELETE FROM access_log WHERE ledger_seq = {access}"),
            &[&gone(access, "access_log")],
        ),
        attack(
            "a block between others",
            "DELETE FROM ledger_blocks WHERE block = 2",
            &["block 2 (ledger_blocks)", "it is missing"],
        ),
        attack(
            "the newest block",
            format!("DELETE FROM ledger_blocks WHERE block = {newest}"),
            &[
                &format!("block {newest} (ledger_blocks)"),
                "a digest kept outside the database names it, and it is gone",
            ],
        ),
    ];
    each_named(&db, &digests, &attacks).await;
}

#[tokio::test]
async fn an_amendment_rolled_back_from_a_snapshot_is_named() {
    let app = spawn_app().await;
    upsert(&app, clinic(CLINIC, "DE")).await;
    let flag = flag_of(&app, abo_incompatible("ROLL-1"), "ABO_INCOMPATIBLE").await;
    sealed_digests(&app).await;
    // The insider's snapshot of the record, its versions, flags and steps.
    let rolled_back = ["records", "record_versions", "flags", "flag_events"];
    keep(&app, &rolled_back).await;
    // ABO-compatible after all: the flag is cleared.
    let ack = amend(&app, kidney("ROLL-1"), "donor blood group mistyped")
        .await
        .expect("amended");
    assert_eq!(ack.version, 2);
    let digests = sealed_digests(&app).await;
    let db = stop(app).await;
    let cleared = number(
        &db,
        &format!(
            "SELECT count(*) FROM flag_events WHERE flag_id = {} AND kind IN ('REEVALUATED', 'CLEARED')",
            flag.flag_id
        ),
    )
    .await;
    assert_eq!(cleared, 1, "the amendment took a step on the flag");
    assert_eq!(number(&db, "SELECT count(*) FROM record_versions").await, 1);
    assert_intact(&db, &digests);

    // Columns, content hash, chain head, version, reason, times and ledger
    // columns of the record, its flag's row: as before; the archived version
    // and the amendment's steps: gone.
    put_back(&db, &rolled_back).await;
    assert_eq!(
        number(&db, "SELECT max(version)::bigint FROM records").await,
        1
    );
    assert_eq!(steps(&db, &flag).await, 1, "only the RAISED step is left");
    assert_named(
        &db,
        &digests,
        "an amendment rolled back",
        &[
            &format!("record {} version 1 (records)", flag.record_id),
            "rewound",
        ],
    );
}

#[tokio::test]
async fn a_record_rolled_back_or_edited_is_not_amended_on_top() {
    let app = spawn_app().await;
    upsert(&app, clinic(CLINIC, "DE")).await;
    let flag = flag_of(&app, abo_incompatible("ROLL-2"), "ABO_INCOMPATIBLE").await;
    sealed_digests(&app).await;
    let rolled_back = ["records", "record_versions", "flags", "flag_events"];
    keep(&app, &rolled_back).await;
    amend(&app, kidney("ROLL-2"), "donor blood group mistyped")
        .await
        .expect("amended");
    sealed_digests(&app).await;
    put_back(&app, &rolled_back).await;
    let versions = || number(&app, "SELECT count(*) FROM record_versions");
    assert_eq!(versions().await, 0, "rolled back to version 1");

    // Every state of the row is genuine, but a sealed block holds the
    // version that replaced it: nothing is built on the rolled-back one.
    let again = pb::TransplantRecord {
        cold_ischemia_minutes: Some(95),
        ..kidney("ROLL-2")
    };
    let again = amend(&app, again, "cold ischaemia time added").await;
    let status = again.expect_err("an amendment of a rolled-back record");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(versions().await, 0, "no version archived on top");
    assert_eq!(steps(&app, &flag).await, 1, "no step on its flag either");

    // A record whose content was edited: an amendment would archive the
    // edited content under a fresh MAC.
    let other = flag_of(&app, abo_incompatible("EDIT-3"), "ABO_INCOMPATIBLE").await;
    tamper(
        &app,
        &format!(
            "UPDATE records SET donor_age = donor_age + 1 WHERE id = {}",
            other.record_id
        ),
    )
    .await;
    let status = amend(&app, kidney("EDIT-3"), "donor blood group mistyped")
        .await
        .expect_err("an amendment of an edited record");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(versions().await, 0, "nothing archived");
    app.stop().await;
}

// ---------------------------------------------------------------- the API on tampered evidence

#[tokio::test]
async fn triage_refuses_a_flag_whose_row_was_edited() {
    let app = spawn_app().await;
    upsert(&app, clinic(CLINIC, "DE")).await;
    let confirmed = confirmed_flag(&app, "EDIT-1").await;
    let made_high = critical(&app, "EDIT-2").await;
    let made_high = triage(&app.audit, &made_high, pb::FlagStatus::InReview, "")
        .await
        .expect("in review");
    let digests = sealed_digests(&app).await;
    assert_intact(&app, &digests);
    keep(&app, &["flags"]).await;

    // A CONFIRMED case put back in review, so that one auditor can dismiss it.
    let id = &confirmed.flag_id;
    for (what, sql, etag) in [
        (
            "status alone",
            format!("UPDATE flags SET status = 'IN_REVIEW' WHERE id = {id}"),
            "3",
        ),
        (
            "status and revision",
            format!("UPDATE flags SET status = 'IN_REVIEW', revision = 2 WHERE id = {id}"),
            "2",
        ),
    ] {
        tamper(&app, &sql).await;
        let before = steps(&app, &confirmed).await;
        let shown = pb::Flag {
            status: pb::FlagStatus::InReview as i32,
            etag: etag.into(),
            ..confirmed.clone()
        };
        let status = triage(&app.audit, &shown, pb::FlagStatus::Dismissed, "not fraud")
            .await
            .expect_err(what);
        assert_refused(&status, Code::FailedPrecondition, "EVIDENCE_TAMPERED");
        assert_eq!(
            steps(&app, &confirmed).await,
            before,
            "{what}: no step added"
        );
        assert_named(
            &app,
            &digests,
            what,
            &[&format!("flag {id} (flags)"), "status"],
        );
        put_back(&app, &["flags"]).await;
        assert_intact(&app, &digests);
    }

    // A CRITICAL flag made HIGH, so that one auditor can dismiss it alone.
    let id = &made_high.flag_id;
    tamper(
        &app,
        &format!("UPDATE flags SET severity = 3 WHERE id = {id}"),
    )
    .await;
    let status = triage(
        &app.audit,
        &made_high,
        pb::FlagStatus::Dismissed,
        "consent on file",
    )
    .await
    .expect_err("a dismissal of a flag edited behind the service");
    assert_refused(&status, Code::FailedPrecondition, "EVIDENCE_TAMPERED");
    assert_eq!(
        steps(&app, &made_high).await,
        2,
        "neither a dismissal nor a proposal"
    );
    assert_named(
        &app,
        &digests,
        "severity lowered",
        &[&format!("flag {id} (flags)"), "finding"],
    );
    // Set back: the row is derived from its steps, which nobody signed on
    // top of, so the trail is intact again and the rule of two holds.
    tamper(
        &app,
        &format!("UPDATE flags SET severity = 4 WHERE id = {id}"),
    )
    .await;
    assert_intact(&app, &digests);
    let proposed = triage(
        &app.audit,
        &made_high,
        pb::FlagStatus::Dismissed,
        "consent on file",
    )
    .await
    .expect("a proposal");
    assert_eq!(proposed.status, pb::FlagStatus::InReview as i32);
    assert!(!proposed.dismissal_proposed_by.is_empty());
    let digests = sealed_digests(&app).await;
    assert_intact(&app, &digests);
    app.stop().await;
}

#[tokio::test]
async fn triage_refuses_a_flag_whose_newest_step_was_deleted() {
    let app = spawn_app().await;
    upsert(&app, clinic(CLINIC, "DE")).await;
    let flag = confirmed_flag(&app, "REWIND-1").await;
    sealed_digests(&app).await;
    tamper(&app, &newest_step_deleted(&flag.flag_id)).await;
    let shown = pb::Flag {
        status: pb::FlagStatus::InReview as i32,
        etag: "2".into(),
        ..flag.clone()
    };
    let dismissed = triage(&app.audit, &shown, pb::FlagStatus::Dismissed, "not fraud").await;
    assert_eq!(
        steps(&app, &flag).await,
        2,
        "no step signed on top: {dismissed:?}"
    );
    assert_refused(
        &dismissed.expect_err("a dismissal of a rewound flag"),
        Code::FailedPrecondition,
        "EVIDENCE_TAMPERED",
    );
    app.stop().await;
}

#[tokio::test]
async fn a_key_row_forged_with_an_own_secret_is_refused_and_named() {
    let app = spawn_app().await;
    let digests = sealed_digests(&app).await;
    assert_intact(&app, &digests);
    let (key_id, secret) = (
        "0badc0ffee00",
        "forged-by-someone-with-the-table-owners-rights",
    );
    let admin_key = app.admin_token.split('_').nth(1).expect("key id");
    tamper(
        &app,
        &format!(
            "INSERT INTO api_keys (key_id, secret_hash, role, description, created_at,
                                   principal_id, ledger_seq, ledger_mac)
             SELECT '{key_id}', sha256(convert_to('{secret}', 'UTF8')), 'ADMIN', 'backup',
                    now(), principal_id, nextval('ledger_seq'), ledger_mac
             FROM api_keys WHERE key_id = '{admin_key}'"
        ),
    )
    .await;
    let forged = format!("ta_{key_id}_{secret}");
    let status = AdminServiceClient::new(app.authed(&forged))
        .list_api_keys(pb::ListApiKeysRequest::default())
        .await
        .expect_err("a forged key");
    assert_refused(&status, Code::Unauthenticated, "API_KEY_REFUSED");
    let listed = app
        .admin
        .clone()
        .list_api_keys(pb::ListApiKeysRequest::default())
        .await
        .expect("list keys")
        .into_inner();
    assert!(
        listed.keys.iter().all(|k| k.key_id != key_id),
        "never listed"
    );
    assert_named(
        &app,
        &digests,
        "a forged key",
        &[&format!("API key {key_id} (api_keys)")],
    );
    app.stop().await;
}

#[tokio::test]
async fn two_auditors_dismiss_a_critical_flag_only_as_two_independent_principals() {
    let app = spawn_app().await;
    let mut admin = app.admin.clone();
    let mut minted = Vec::new();
    for principal in ["mallory@registry.test", "mallorys-alias@registry.test"] {
        let created = admin
            .create_api_key(pb::CreateApiKeyRequest {
                role: pb::Role::Auditor as i32,
                principal: principal.into(),
                ..Default::default()
            })
            .await
            .expect("an auditor key")
            .into_inner();
        minted.push(created.token);
    }
    let (store, auth) = (&app.store, &app.auth);
    let cli = |principal: &'static str| async move {
        let token = create_key_for(store, Role::Auditor, None, Some(principal)).await;
        auth.learn(&key_id(&token));
        token
    };
    let dora = [
        cli("dora@registry.test").await,
        cli("dora@registry.test").await,
    ];
    let (erin, frank) = (
        cli("erin@registry.test").await,
        cli("frank@registry.test").await,
    );
    let cases = [
        (
            "one administrator's two keys",
            &minted[0],
            &minted[1],
            Some("ONE_ISSUER"),
        ),
        (
            "one principal's two keys",
            &dora[0],
            &dora[1],
            Some("SECOND_AUDITOR_REQUIRED"),
        ),
        ("two principals from the command line", &erin, &frank, None),
    ];
    for (n, (what, proposer, approver, refused)) in cases.into_iter().enumerate() {
        let proposer = AuditServiceClient::new(app.authed(proposer));
        let approver = AuditServiceClient::new(app.authed(approver));
        let flag = critical(&app, &format!("TWO-{n}")).await;
        let flag = triage(&proposer, &flag, pb::FlagStatus::InReview, "")
            .await
            .expect(what);
        let proposed = triage(
            &proposer,
            &flag,
            pb::FlagStatus::Dismissed,
            "consent on file",
        )
        .await
        .expect(what);
        assert_eq!(proposed.status, pb::FlagStatus::InReview as i32, "{what}");
        let approved = triage(&approver, &proposed, pb::FlagStatus::Dismissed, "agreed").await;
        match refused {
            Some(why) => {
                assert_refused(&approved.expect_err(what), Code::FailedPrecondition, why);
                assert_eq!(steps(&app, &flag).await, 3, "{what}: no step added");
            }
            None => assert_eq!(
                approved.expect(what).status,
                pb::FlagStatus::Dismissed as i32,
                "{what}"
            ),
        }
    }
    let digests = sealed_digests(&app).await;
    assert_intact(&app, &digests);
    app.stop().await;
}

/// A key revoked through the API whose row the insider then put back as it
/// was before (its old place in the ledger and MAC too); returns its token,
/// its id and the digests kept after the revocation was sealed.
async fn revoked_key_put_back(app: &TestApp) -> (String, String, String) {
    let mut admin = app.admin.clone();
    let created = admin
        .create_api_key(pb::CreateApiKeyRequest {
            role: pb::Role::Auditor as i32,
            principal: "gina@registry.test".into(),
            ..Default::default()
        })
        .await
        .expect("an auditor key")
        .into_inner();
    let key_id = created.key.expect("key").key_id;
    AuditServiceClient::new(app.authed(&created.token))
        .list_flags(pb::ListFlagsRequest::default())
        .await
        .expect("the key works");
    sealed_digests(app).await;
    keep(app, &["api_keys"]).await;
    admin
        .revoke_api_key(pb::RevokeApiKeyRequest {
            key_id: key_id.clone(),
        })
        .await
        .expect("revoked");
    let digests = sealed_digests(app).await;
    assert_intact(app, &digests);
    put_back(app, &["api_keys"]).await;
    let revoked: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT revoked_at FROM api_keys WHERE key_id = $1")
            .bind(&key_id)
            .fetch_one(&app.pool)
            .await
            .expect("the key's row");
    assert_eq!(revoked, None, "the row says the key was never revoked");
    (created.token, key_id, digests)
}

#[tokio::test]
async fn a_revoked_key_put_back_is_named_as_rewound() {
    let app = spawn_app().await;
    let (_, key_id, digests) = revoked_key_put_back(&app).await;
    assert_named(
        &app,
        &digests,
        "a revocation rewound",
        &[&format!("API key {key_id} (api_keys)"), "rewound"],
    );
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_key_put_back_does_not_authenticate() {
    let app = spawn_app().await;
    let (token, _, _) = revoked_key_put_back(&app).await;
    let status = AuditServiceClient::new(app.authed(&token))
        .list_flags(pb::ListFlagsRequest::default())
        .await
        .expect_err("a revoked key, however its row reads now");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    app.stop().await;
}

// ---------------------------------------------------------------- digests

#[tokio::test]
async fn digests_not_signed_by_the_registry_are_refused() {
    let app = spawn_app().await;
    let digests = sealed_digests(&app).await;
    let db = stop(app).await;
    assert_intact(&db, &digests);
    let (earlier, last) = digests
        .trim_end()
        .rsplit_once('\n')
        .unwrap_or(("", digests.trim_end()));
    let last: Digest = serde_json::from_str(last).expect("a digest");
    let hash: [u8; 32] = hex::decode(&last.hash)
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let block = format!("block {} (ledger_blocks)", last.block);
    let other = SigningKey::from_seed(&[0x77; 32]);
    let forged = [
        (
            "signed by another key",
            Digest::sign(&other, last.block, last.last_seq, &hash, last.sealed_at),
            "not by the trusted key",
        ),
        (
            "its sequence number edited",
            Digest {
                last_seq: last.last_seq - 1,
                ..last.clone()
            },
            "its signature does not match its fields",
        ),
        (
            "its hash edited",
            Digest {
                hash: hex::encode([0x11; 32]),
                ..last.clone()
            },
            "its signature does not match its fields",
        ),
    ];
    for (what, digest, why) in forged {
        let lines = format!(
            "{earlier}\n{}\n",
            serde_json::to_string(&digest).expect("json")
        );
        assert_named(&db, &lines, what, &[block.as_str(), why]);
    }
    let keyless = run_verify(&db, &digests, None);
    let said = String::from_utf8_lossy(&keyless.stderr);
    assert_eq!(keyless.status.code(), Some(2), "a usage error: {said}");
    assert!(said.contains("--public-key"), "{said}");
}

// ---------------------------------------------------------------- a database from before the ledger

/// A database with the migrations from before the ledger's applied.
async fn before_the_ledger() -> String {
    let url = fresh_database().await;
    let ledger = MIGRATOR
        .migrations
        .iter()
        .position(|m| m.description == "ledger")
        .expect("the ledger's migration");
    let behind = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(MIGRATOR.migrations[..ledger].to_vec()),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    behind
        .run(&mut conn)
        .await
        .expect("migrate all but the ledger");
    conn.close().await.expect("close");
    url
}

#[tokio::test]
async fn rows_from_before_the_ledger_are_adopted_once() {
    let url = before_the_ledger().await;
    let (key_id, secret) = (
        "1e9ac0000001",
        "an-auditor-key-issued-before-the-ledger-existed",
    );
    let pool = PgPool::connect(&url).await.expect("connect");
    sqlx::raw_sql(&format!(
        "INSERT INTO api_keys (key_id, secret_hash, role, description, created_at)
         VALUES ('{key_id}', sha256(convert_to('{secret}', 'UTF8')), 'AUDITOR', 'legacy',
                 '2026-01-05T09:00:00Z');
         INSERT INTO clinic_versions (clinic_id, version, name, country, licensed_organs,
                                      licence_valid_from, status, recorded_at)
         VALUES ('DE-OLD-01', 1, 'An old centre', 'DE', '{{KIDNEY,LIVER}}',
                 '2010-01-01T00:00:00Z', 'ACTIVE', '2026-01-05T09:00:00Z');
         INSERT INTO clinics (clinic_id, current_version, country) VALUES ('DE-OLD-01', 1, 'DE');
         INSERT INTO imports (file_sha256, file_name, lines_done, accepted, duplicates, rejected,
                              started_at, updated_at, finished_at)
         VALUES (sha256('legacy'), 'legacy.ndjson', 10, 9, 0, 1, '2026-01-05T09:00:00Z',
                 '2026-01-05T09:01:00Z', '2026-01-05T09:01:00Z')"
    ))
    .execute(&pool)
    .await
    .expect("rows as the old service wrote them");
    pool.close().await;

    // `migrate` (as `serve` does before it serves) migrates and adopts.
    let db = Offline {
        pool: PgPool::connect(&url).await.expect("connect"),
        url: url.clone(),
    };
    let migrated = binary(&db, &["migrate"]);
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let app = spawn_app_on(&url, RulesConfig::default()).await;
    AuditServiceClient::new(app.authed(&format!("ta_{key_id}_{secret}")))
        .list_flags(pb::ListFlagsRequest::default())
        .await
        .expect("the legacy key authenticates");
    let digests = sealed_digests(&app).await;
    assert_intact(&app, &digests);
    let db = stop(app).await;

    // After the first block, a row without a MAC is a break, not a row to adopt.
    let stripped = "a legacy row's MAC removed";
    tamper(&db, "UPDATE imports SET ledger_mac = NULL").await;
    let import = ["import of legacy.ndjson (imports)"];
    assert_named(&db, &digests, stripped, &import);
    let migrated = binary(&db, &["migrate"]);
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let unmaced = number(&db, "SELECT count(*) FROM imports WHERE ledger_mac IS NULL").await;
    assert_eq!(unmaced, 1, "adopted once only");
    assert_named(&db, &digests, stripped, &import);
}
