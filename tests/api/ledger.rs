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

use sqlx::PgPool;
use transplant_audit::wire::pb;
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

#[tokio::test]
async fn digests_kept_from_before_name_an_edited_flag_status() {
    let app = spawn_app().await;
    app.registry
        .clone()
        .upsert_clinic(transplant_audit::wire::pb::UpsertClinicRequest {
            clinic: Some(clinic("DE-BER-01", "DE")),
        })
        .await
        .expect("clinic");
    let mut record = kidney("LEDGER-1");
    record.donor.as_mut().expect("donor").abo = transplant_audit::wire::pb::AboGroup::A as i32;
    record.recipient.as_mut().expect("recipient").abo =
        transplant_audit::wire::pb::AboGroup::O as i32;
    submit(&app, record).await.expect("stored");
    let digests = sealed_digests(&app).await;
    let intact = verify_with(&app, &digests);
    assert_eq!(
        intact.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&intact.stderr)
    );

    tamper(&app, "UPDATE flags SET status = 'DISMISSED'").await;
    let broken = verify_with(&app, &digests);
    assert_eq!(broken.status.code(), Some(4));
    let said = String::from_utf8_lossy(&broken.stderr);
    assert!(said.contains("flag") && said.contains("status"), "{said}");
    app.stop().await;
}
