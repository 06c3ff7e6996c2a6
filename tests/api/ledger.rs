//! The ledger against an insider: with digests kept from before, every
//! change to evidence behind the service's back is named by `verify`.

use std::process::{Command, Output};
use std::time::Duration;

use crate::helpers::*;

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

/// `transplant-audit verify --digests FILE` against the app's database.
pub fn verify_with(app: &TestApp, digests: &str) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("kept-digests.jsonl");
    std::fs::write(&file, digests).expect("write digests");
    Command::new(env!("CARGO_BIN_EXE_transplant-audit"))
        .args(["verify", "--digests"])
        .arg(&file)
        .env("DATABASE_URL", &app.database_url)
        .env("FINGERPRINT_KEY", test_key_hex())
        .env("SIGNING_KEY", test_signing_key_hex())
        .env("RUST_LOG", "error")
        .output()
        .expect("run verify")
}

/// Runs `sql` as an insider with the table owner's rights would, triggers off.
pub async fn tamper(app: &TestApp, sql: &str) {
    let mut tx = app.pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .expect("replica role (the tests connect as a superuser)");
    sqlx::raw_sql(sql).execute(&mut *tx).await.expect(sql);
    tx.commit().await.expect("commit");
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
