//! The sealer's lock and keys, and rows the ledger's sequence does not
//! account for: what an operator's mistake or an insider could leave
//! unsealed or unchecked.

use std::process::{Command, Output};

use sqlx::Connection;
use std::time::Duration;

use transplant_audit::domain::Role;
use transplant_audit::domain::ledger::SigningKey;
use transplant_audit::store::ledger::MAX_BLOCK_SEQS;
use transplant_audit::wire::pb;

use crate::helpers::*;
use crate::ledger::{sealed_digests, tamper};

/// The backend holding the sealer's lock, if any.
async fn lock_holder(app: &TestApp) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
           AND objid = hashtext('transplant-audit/ledger/sealer')::oid",
    )
    .fetch_optional(&app.pool)
    .await
    .expect("pg_locks")
}

/// `verify` with these public keys and, when given, these digests.
fn verify_trusting(database_url: &str, keys: &[String], digests: Option<&str>) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_transplant-audit"));
    command.arg("verify");
    for key in keys {
        command.args(["--public-key", key]);
    }
    if let Some(digests) = digests {
        let file = dir.path().join("kept.jsonl");
        std::fs::write(&file, digests).expect("write digests");
        command.arg("--digests").arg(file);
    }
    command
        .env("DATABASE_URL", database_url)
        .env("FINGERPRINT_KEY", test_key_hex())
        .env_remove("SIGNING_KEY")
        .env("RUST_LOG", "error")
        .output()
        .expect("run verify")
}

/// `VerifyAuditTrail` on a server process, with `digests` (JSON lines).
async fn audit_trail(
    server: &ServerProcess,
    admin: &str,
    digests: &str,
) -> pb::VerifyAuditTrailResponse {
    pb::admin_service_client::AdminServiceClient::new(server.connect(admin).await)
        .verify_audit_trail(pb::VerifyAuditTrailRequest {
            digests: digests.lines().map(str::to_owned).collect(),
        })
        .await
        .expect("VerifyAuditTrail")
        .into_inner()
}

fn said(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A record that raises a flag (ABO incompatible), and the flag's id.
async fn flagged(app: &TestApp, external_record_id: &str) -> i64 {
    app.registry
        .clone()
        .upsert_clinic(pb::UpsertClinicRequest {
            clinic: Some(clinic("DE-BER-01", "DE")),
        })
        .await
        .expect("clinic");
    let mut record = kidney(external_record_id);
    record.donor.as_mut().expect("donor").abo = pb::AboGroup::A as i32;
    record.recipient.as_mut().expect("recipient").abo = pb::AboGroup::O as i32;
    submit(app, record).await.expect("stored");
    sqlx::query_scalar("SELECT max(id) FROM flags")
        .fetch_one(&app.pool)
        .await
        .expect("a flag")
}

#[tokio::test]
async fn a_sealer_whose_lock_connection_dies_takes_the_lock_again() {
    let app = spawn_app().await;
    let mut holder = None;
    for _ in 0..100 {
        holder = lock_holder(&app).await;
        if holder.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = holder.expect("the sealer takes its lock");
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(first)
        .execute(&app.pool)
        .await
        .expect("terminate the lock's connection");
    let mut again = None;
    for _ in 0..100 {
        again = lock_holder(&app).await.filter(|pid| *pid != first);
        if again.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "the sealer holds its lock again");
    submit(&app, kidney("AFTER-LOSS")).await.expect("stored");
    sealed_digests(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn a_rotated_signing_key_verifies_with_both_public_keys_and_not_with_one() {
    let app = spawn_app().await;
    submit(&app, kidney("BEFORE-ROTATION"))
        .await
        .expect("stored");
    let old_digests = sealed_digests(&app).await;
    let old_key = test_signing_key().public().to_string();
    let pool = app.pool.clone();
    let database_url = app.database_url.clone();
    let token = create_key(&app.store, Role::Hospital, Some(DEFAULT_HOSPITAL)).await;
    let admin = create_key(&app.store, Role::Admin, None).await;
    app.stop().await;

    // The replica that stopped let its lock go: one with the new key seals.
    let new_seed = hex::encode([0x5a; 32]);
    let new_key = SigningKey::from_seed(&[0x5a; 32]).public().to_string();
    let server = ServerProcess::start_with(
        &database_url,
        "info",
        &[
            ("SIGNING_KEY", &new_seed),
            ("LEDGER_SEAL_INTERVAL_MS", "100"),
        ],
    )
    .await;
    pb::ingest_service_client::IngestServiceClient::new(server.connect(&token).await)
        .submit_record(pb::SubmitRecordRequest {
            record: Some(kidney("AFTER-ROTATION")),
        })
        .await
        .expect("stored by the new replica");
    let mut sealed_by_new = false;
    for _ in 0..200 {
        let signer: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT public_key FROM ledger_blocks ORDER BY block DESC LIMIT 1")
                .fetch_optional(&pool)
                .await
                .expect("blocks");
        let frontier: Option<i64> =
            sqlx::query_scalar("SELECT pg_sequence_last_value('ledger_seq')")
                .fetch_one(&pool)
                .await
                .expect("sequence");
        let sealed: Option<i64> = sqlx::query_scalar("SELECT max(last_seq) FROM ledger_blocks")
            .fetch_one(&pool)
            .await
            .expect("blocks");
        if signer.is_some_and(|k| hex::encode(k) == new_key) && sealed >= frontier {
            sealed_by_new = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sealed_by_new, "the new replica sealed what it wrote");
    let trail = audit_trail(&server, &admin, &old_digests).await;
    assert!(!trail.intact, "the old key's blocks are not trusted yet");
    server.signal(libc::SIGTERM);
    server.drain().await;
    let server = ServerProcess::start_with(
        &database_url,
        "info",
        &[
            ("SIGNING_KEY", &new_seed),
            ("LEDGER_PREVIOUS_PUBLIC_KEYS", &old_key),
        ],
    )
    .await;
    let trail = audit_trail(&server, &admin, &old_digests).await;
    assert!(trail.intact, "{:?}", trail.first_break);
    assert!(trail.digests_matched >= 1);
    server.signal(libc::SIGTERM);
    server.drain().await;

    let both = verify_trusting(
        &database_url,
        &[old_key.clone(), new_key.clone()],
        Some(&old_digests),
    );
    assert_eq!(both.status.code(), Some(0), "{}", said(&both));
    let old_only = verify_trusting(&database_url, std::slice::from_ref(&old_key), None);
    assert_eq!(old_only.status.code(), Some(4), "{}", said(&old_only));
    assert!(said(&old_only).contains("signature"), "{}", said(&old_only));
    let new_only = verify_trusting(&database_url, &[new_key], Some(&old_digests));
    assert_eq!(new_only.status.code(), Some(4), "{}", said(&new_only));
    assert!(
        said(&new_only).contains("not genuine"),
        "{}",
        said(&new_only)
    );
}

#[tokio::test]
async fn a_previous_public_key_that_is_not_one_stops_the_server_before_it_starts() {
    let database_url = fresh_database().await;
    for bad in ["zz", "00", &format!("{},abc", test_signing_key().public())] {
        let output = Command::new(env!("CARGO_BIN_EXE_transplant-audit"))
            .arg("serve")
            .env("DATABASE_URL", &database_url)
            .env("FINGERPRINT_KEY", test_key_hex())
            .env("SIGNING_KEY", test_signing_key_hex())
            .env("LEDGER_PREVIOUS_PUBLIC_KEYS", bad)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("METRICS_ADDR", "127.0.0.1:0")
            .output()
            .expect("run serve");
        assert_eq!(output.status.code(), Some(2), "{bad}: {}", said(&output));
        assert!(
            said(&output).contains("previous-public-keys"),
            "{bad}: {}",
            said(&output)
        );
    }
    let pool = sqlx::PgPool::connect(&database_url).await.expect("connect");
    let migrated: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
            .fetch_one(&pool)
            .await
            .expect("lookup");
    assert_eq!(migrated, None, "nothing was written");
}

#[tokio::test]
async fn a_row_numbered_outside_the_sequence_is_named() {
    for (number, setup) in [
        ("0", ""),
        ("-7", ""),
        (
            "NULL",
            "ALTER TABLE principals ALTER COLUMN ledger_seq DROP NOT NULL;",
        ),
    ] {
        let app = spawn_app().await;
        submit(&app, kidney("NUMBERED")).await.expect("stored");
        sealed_digests(&app).await;
        let before = verify_trusting(
            &app.database_url,
            &[test_signing_key().public().to_string()],
            None,
        );
        assert_eq!(before.status.code(), Some(0), "{}", said(&before));
        tamper(
            &app,
            &format!(
                "{setup} INSERT INTO principals (name, kind, created_at, ledger_seq, ledger_mac)
                 SELECT 'mallory', kind, created_at, {number}, ledger_mac
                 FROM principals ORDER BY id LIMIT 1"
            ),
        )
        .await;
        let after = verify_trusting(
            &app.database_url,
            &[test_signing_key().public().to_string()],
            None,
        );
        assert_eq!(after.status.code(), Some(4), "{number}: {}", said(&after));
        assert!(
            said(&after).contains("principals") && said(&after).contains("no sequence number"),
            "{number}: {}",
            said(&after)
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn a_copied_row_not_yet_sealed_is_named() {
    // The test holds the sealer's lock, so nothing is sealed: every row is
    // checked by its MAC alone, and a copy's MAC is genuine.
    let database_url = fresh_database().await;
    let mut lock = sqlx::PgConnection::connect(&database_url)
        .await
        .expect("connect");
    sqlx::query("SELECT pg_advisory_lock(hashtext('transplant-audit/ledger/sealer'))")
        .execute(&mut lock)
        .await
        .expect("take the sealer's lock");
    let app = spawn_app_on(&database_url, Default::default()).await;
    let flag = flagged(&app, "COPIED").await;
    app.audit
        .clone()
        .get_flag(pb::GetFlagRequest {
            flag_id: flag.to_string(),
        })
        .await
        .expect("read the flag");
    let trusted = [test_signing_key().public().to_string()];
    let before = verify_trusting(&app.database_url, &trusted, None);
    assert_eq!(before.status.code(), Some(0), "{}", said(&before));
    tamper(
        &app,
        "INSERT INTO access_log (at, principal, key_id, action, resource, resource_id,
                                 trace_id, own_trace_id, ledger_seq, ledger_mac)
         SELECT at, principal, key_id, action, resource, resource_id,
                trace_id, own_trace_id, ledger_seq, ledger_mac
         FROM access_log ORDER BY id LIMIT 1",
    )
    .await;
    let after = verify_trusting(&app.database_url, &trusted, None);
    assert_eq!(after.status.code(), Some(4), "{}", said(&after));
    assert!(
        said(&after).contains("access_log") && said(&after).contains("holds too"),
        "{}",
        said(&after)
    );
    app.stop().await;
    lock.close().await.expect("close");
}

#[tokio::test]
async fn a_sealed_record_amended_before_the_next_block_verifies_intact() {
    let app = spawn_app().await;
    submit(&app, kidney("LATE-1")).await.expect("stored");
    sealed_digests(&app).await;
    // A transaction begun before the amendment holds the sealer back (it
    // waits for every writer that may hold an older number), so the
    // amendment's state stays unsealed while its predecessor is sealed.
    let mut holder = app.pool.begin().await.expect("begin");
    sqlx::query("SELECT 1")
        .execute(&mut *holder)
        .await
        .expect("a statement");
    let mut right = kidney("LATE-1");
    right.laterality = pb::Laterality::Right as i32;
    amend(&app, right, "side").await.expect("amended");
    let sealed: i64 = sqlx::query_scalar("SELECT max(last_seq) FROM ledger_blocks")
        .fetch_one(&app.pool)
        .await
        .expect("blocks");
    let current: i64 = sqlx::query_scalar("SELECT ledger_seq FROM records")
        .fetch_one(&app.pool)
        .await
        .expect("the record");
    assert!(current > sealed, "the amendment is not sealed yet");

    let report = app
        .admin
        .clone()
        .verify_audit_trail(pb::VerifyAuditTrailRequest::default())
        .await
        .expect("verify")
        .into_inner();
    assert!(report.intact, "{report:?}");
    assert!(report.unsealed_rows_checked >= 2, "{report:?}");
    holder.rollback().await.expect("rollback");
    app.stop().await;
}

#[tokio::test]
async fn a_history_longer_than_a_block_is_sealed_in_blocks_of_bounded_size() {
    let app = spawn_app().await;
    submit(&app, kidney("BEFORE")).await.expect("stored");
    sealed_digests(&app).await;
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_blocks")
        .fetch_one(&app.pool)
        .await
        .expect("blocks");
    // Two and a half blocks' worth of sequence numbers at once, as an
    // adopted or imported history takes (numbers of rolled-back writes
    // leave the same gaps).
    let span = MAX_BLOCK_SEQS * 5 / 2;
    sqlx::query("SELECT setval('ledger_seq', pg_sequence_last_value('ledger_seq') + $1)")
        .bind(span)
        .execute(&app.pool)
        .await
        .expect("advance the sequence");
    submit(&app, kidney("AFTER")).await.expect("stored");
    let digests = sealed_digests(&app).await;

    let blocks: Vec<(i64, i64)> =
        sqlx::query_as("SELECT first_seq, last_seq FROM ledger_blocks ORDER BY block")
            .fetch_all(&app.pool)
            .await
            .expect("blocks");
    let new = &blocks[usize::try_from(before).expect("count")..];
    assert!(new.len() >= 3, "{blocks:?}");
    for (first, last) in new {
        assert!(last - first < MAX_BLOCK_SEQS, "{blocks:?}");
    }
    assert_eq!(digests.lines().count(), blocks.len(), "a digest per block");
    let verified = verify_trusting(
        &app.database_url,
        &[test_signing_key().public().to_string()],
        Some(&digests),
    );
    assert_eq!(verified.status.code(), Some(0), "{}", said(&verified));
    app.stop().await;
}
