//! The command line as an operator meets it: commands that only read never
//! migrate, and each kind of failure has its own exit status.

use std::process::{Command, Output};

use sqlx::Connection;
use transplant_audit::store::{MIGRATOR, rescan::TransplantRange};

use crate::helpers::*;

/// The binary with `args` against `database_url`.
fn run(database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_transplant-audit"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("FINGERPRINT_KEY", test_key_hex())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the binary")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A database with every migration but the last one applied.
async fn one_migration_behind() -> (String, i64, String) {
    let url = fresh_database().await;
    let all = MIGRATOR.migrations.to_vec();
    let (last, earlier) = all.split_last().expect("migrations");
    let behind = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(earlier.to_vec()),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    behind.run(&mut conn).await.expect("migrate all but one");
    conn.close().await.expect("close");
    (url, last.version, last.description.to_string())
}

/// The migrations applied to the database at `url`; none before the first.
async fn applied(url: &str) -> Vec<i64> {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(&mut conn)
        .await
        .expect("lookup");
    if table.is_none() {
        return Vec::new();
    }
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut conn)
        .await
        .expect("migrations")
}

#[tokio::test]
async fn read_only_commands_name_the_missing_migration_and_change_nothing() {
    let (url, version, description) = one_migration_behind().await;
    let before = applied(&url).await;
    for args in [
        &["verify"][..],
        &["keys", "list"],
        &["rescan", "--dry-run"],
        &["rescan", "runs"],
    ] {
        let output = run(&url, args);
        assert_eq!(
            output.status.code(),
            Some(6),
            "{args:?}: {}",
            stderr(&output)
        );
        let said = stderr(&output);
        assert!(
            said.contains(&version.to_string()) && said.contains(&description),
            "{args:?} names the migration: {said}"
        );
        assert!(said.contains("transplant-audit migrate"), "{said}");
    }
    assert_eq!(applied(&url).await, before, "nothing was migrated");

    let migrated = run(&url, &["migrate"]);
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    let verified = run(&url, &["verify"]);
    assert_eq!(verified.status.code(), Some(0), "{}", stderr(&verified));
    assert!(String::from_utf8_lossy(&verified.stdout).contains("intact"));
}

#[tokio::test]
async fn an_unreachable_database_has_its_own_exit_status() {
    // Nothing listens on port 1.
    let output = run("postgres://postgres@127.0.0.1:1/none", &["keys", "list"]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("unreachable"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn bad_usage_has_its_own_exit_status() {
    let url = fresh_database().await;
    for args in [
        &["rescan", "--rule", "NOPE"][..],
        &["rescan", "--from", "yesterday"],
        &["keys", "create", "--role", "hospital"],
        &["keys", "list", "--listen-addr", "127.0.0.1:1"],
        &["no-such-command"],
    ] {
        let output = run(&url, args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    assert!(
        applied(&url).await.is_empty(),
        "refused before touching the database"
    );
}

#[tokio::test]
async fn a_rescan_says_its_run_id_and_interrupted_runs_are_listed() {
    let app = spawn_app().await;
    submit(&app, kidney("RUN-1")).await.expect("stored");
    let run_id = app
        .store
        .start_rescan(&["ABO_INCOMPATIBLE".to_owned()], TransplantRange::default())
        .await
        .expect("a run left unfinished")
        .id;
    let listed = run(&app.database_url, &["rescan", "runs"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let table = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        table
            .lines()
            .any(|l| l.trim_start().starts_with(&run_id.to_string())
                && l.contains("ABO_INCOMPATIBLE")),
        "{table}"
    );

    let resumed = run(
        &app.database_url,
        &["rescan", "--resume", &run_id.to_string()],
    );
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let fresh = run(&app.database_url, &["rescan", "--rule", "SAME_PERSON"]);
    assert!(fresh.status.success(), "{}", stderr(&fresh));
    let said = stderr(&fresh);
    assert!(
        said.contains("Rescan run ") && said.contains("--resume"),
        "{said}"
    );
    let listed = run(&app.database_url, &["rescan", "runs"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("No interrupted rescan runs"),
        "finished runs are not listed"
    );
    app.stop().await;
}
