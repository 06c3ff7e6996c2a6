//! History rules under concurrency: two servers on one database, and one
//! stream, must give exactly the flags that one-by-one submission gives.

use std::collections::BTreeMap;

use sqlx::Connection;

use futures::future::join_all;
use transplant_audit::ingest::Ingestor;
use transplant_audit::rules::RulesConfig;
use transplant_audit::store::PoolSettings;
use transplant_audit::wire::pb;

use crate::helpers::*;

/// A living kidney from an unrelated donor of Moldova, at a German clinic.
fn foreign_unrelated_kidney(external_record_id: &str, donor: &str) -> pb::TransplantRecord {
    let mut r = kidney(external_record_id);
    let d = r.donor.as_mut().expect("donor");
    d.identifier.as_mut().expect("identifier").value = donor.into();
    d.nationality = "MD".into();
    d.country_of_residence = "MD".into();
    d.relation_to_recipient = pb::DonorRelation::UnrelatedDirected as i32;
    r
}

async fn rules_by_record(app: &TestApp) -> BTreeMap<String, Vec<String>> {
    let mut by_record: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in all_flags(app, pb::ListFlagsRequest::default()).await {
        by_record
            .entry(f.external_record_id)
            .or_default()
            .push(f.rule_id);
    }
    by_record
}

async fn register_berlin(app: &TestApp) {
    app.registry
        .clone()
        .upsert_clinic(pb::UpsertClinicRequest {
            clinic: Some(clinic("DE-BER-01", "DE")),
        })
        .await
        .expect("register clinic");
}

#[tokio::test]
async fn two_servers_see_each_others_records_of_one_donor() {
    let database_url = fresh_database().await;
    let a = spawn_app_on(&database_url, RulesConfig::default()).await;
    let b = spawn_app_on(&database_url, RulesConfig::default()).await;
    register_berlin(&a).await;

    const DONORS: usize = 12;
    let mut calls = Vec::new();
    for i in 0..DONORS {
        let donor = format!("DECEASED{i}");
        calls.push(submit(&a, deceased_left_kidney(&format!("A-{i}"), &donor)));
        calls.push(submit(&b, deceased_left_kidney(&format!("B-{i}"), &donor)));
    }
    for result in join_all(calls).await {
        assert_eq!(
            result.expect("accepted").outcome,
            pb::Outcome::Accepted as i32
        );
    }

    // One-by-one, the second left kidney of each donor is flagged and the first is not.
    let flagged = rules_by_record(&a).await;
    for i in 0..DONORS {
        let on_a = flagged.get(&format!("A-{i}")).cloned().unwrap_or_default();
        let on_b = flagged.get(&format!("B-{i}")).cloned().unwrap_or_default();
        let both: Vec<&String> = on_a.iter().chain(&on_b).collect();
        assert_eq!(
            both,
            ["ANATOMICAL_MAXIMUM"],
            "donor {i}: A raised {on_a:?}, B raised {on_b:?}"
        );
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn two_servers_count_each_others_records_in_clinic_windows() {
    let database_url = fresh_database().await;
    let a = spawn_app_on(&database_url, RulesConfig::default()).await;
    let b = spawn_app_on(&database_url, RulesConfig::default()).await;
    register_berlin(&a).await;

    // Five unrelated foreign donors at one clinic within 30 days: one by one,
    // the fifth reaches the surge threshold (5); the other four do not.
    let calls = (0..5).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        submit(
            app,
            foreign_unrelated_kidney(&format!("F-{i}"), &format!("MDDONOR{i}")),
        )
    });
    for result in join_all(calls).await {
        assert_eq!(
            result.expect("accepted").outcome,
            pb::Outcome::Accepted as i32
        );
    }
    let surges: Vec<String> = rules_by_record(&a)
        .await
        .into_iter()
        .filter(|(_, rules)| rules.iter().any(|r| r == "CLINIC_FOREIGN_DONOR_SURGE"))
        .map(|(record, _)| record)
        .collect();
    assert_eq!(
        surges.len(),
        1,
        "exactly one record completes the surge, got {surges:?}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn records_in_one_stream_see_each_other() {
    let app = spawn_app().await;
    register_berlin(&app).await;
    let records = ["S-1", "S-2"].map(|id| Some(deceased_left_kidney(id, "STREAMDONOR")));
    for response in stream_all(&app, records.into()).await {
        assert_eq!(
            response.ack.expect("ack").outcome,
            pb::Outcome::Accepted as i32
        );
    }
    let flagged = rules_by_record(&app).await;
    assert_eq!(flagged.get("S-1"), None);
    assert_eq!(
        flagged.get("S-2").map(Vec::as_slice),
        Some(&["ANATOMICAL_MAXIMUM".to_owned()][..])
    );
    app.stop().await;
}

#[tokio::test]
async fn concurrent_writers_that_are_only_counted_never_hide_from_a_reader() {
    // Deceased-donor transplants to residents are only counted in the
    // clinic's share window (their writers share its lock); those to
    // non-residents read it (and take the lock alone). Whatever the
    // interleaving, each reader must count exactly the records stored
    // before it.
    let rules = RulesConfig::from_toml_str(
        "[non_resident_share]\nwindow_days = 365\nmin_transplants = 1\nmax_share = 0.3\n",
    )
    .expect("rules");
    let database_url = fresh_database().await;
    let a = spawn_app_on(&database_url, rules.clone()).await;
    let b = spawn_app_on(&database_url, rules).await;
    register_berlin(&a).await;
    let calls = (0..60).map(|i| {
        let mut record = deceased_left_kidney(&format!("S-{i}"), &format!("SHAREDONOR{i}"));
        if i % 3 == 0 {
            let recipient = record.recipient.as_mut().expect("recipient");
            recipient.nationality = "MD".into();
            recipient.country_of_residence = "MD".into();
        }
        submit(if i % 2 == 0 { &a } else { &b }, record)
    });
    for result in join_all(calls).await {
        assert_eq!(
            result.expect("accepted").outcome,
            pb::Outcome::Accepted as i32
        );
    }

    let stored: Vec<(String, bool)> = sqlx::query_as(
        "SELECT external_record_id, recipient_non_resident FROM records ORDER BY id",
    )
    .fetch_all(&a.pool)
    .await
    .expect("records");
    let mut expected = Vec::new();
    let mut non_residents = 0u32;
    for (total, (id, non_resident)) in (1u32..).zip(&stored) {
        if *non_resident {
            non_residents += 1;
            if f64::from(non_residents) / f64::from(total) > 0.3 {
                expected.push(id.clone());
            }
        }
    }
    let flagged: Vec<String> = rules_by_record(&a)
        .await
        .into_iter()
        .filter(|(_, rules)| rules.iter().any(|r| r == "CLINIC_NON_RESIDENT_SHARE"))
        .map(|(record, _)| record)
        .collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(
        flagged, expected_sorted,
        "flags as one by one in storage order"
    );
    assert!(!expected.is_empty(), "the share is crossed somewhere");
    a.stop().await;
    b.stop().await;
}

/// Stores `batch` as one batch; every record must be accepted.
async fn store_batch(ingestor: &Ingestor, batch: &[pb::TransplantRecord]) {
    for answer in ingestor
        .submit_batch(submissions(batch))
        .await
        .expect("stored")
    {
        answer.expect("accepted");
    }
}

/// Stores `batches` one after another through a pipeline whose pool opens
/// at most `max_connections`; returns the rules raised, by external record id.
async fn flags_through_a_pool_of(
    max_connections: u32,
    batches: &[Vec<pb::TransplantRecord>],
) -> BTreeMap<String, Vec<String>> {
    let (store, ingestor) = pipeline(max_connections).await;
    for batch in batches {
        store_batch(&ingestor, batch).await;
    }
    stored_flags(store.pool()).await
}

/// Two batches whose second reads what the first stored: a donor's second
/// left kidney, foreign living donors and deceased donors to non-residents
/// at one clinic.
fn batches_reading_each_other() -> Vec<Vec<pb::TransplantRecord>> {
    let to_non_resident = |id: &str| {
        let mut r = deceased_left_kidney(id, &format!("DONOR-{id}"));
        r.recipient
            .as_mut()
            .expect("recipient")
            .country_of_residence = "MD".into();
        r
    };
    vec![
        vec![
            deceased_left_kidney("POOL-A1", "POOL-DONOR"),
            foreign_unrelated_kidney("POOL-F1", "POOL-MD-1"),
            to_non_resident("POOL-N1"),
            to_non_resident("POOL-N2"),
        ],
        vec![
            deceased_left_kidney("POOL-A2", "POOL-DONOR"),
            foreign_unrelated_kidney("POOL-F2", "POOL-MD-2"),
            to_non_resident("POOL-N3"),
        ],
    ]
}

#[tokio::test]
async fn a_batch_reads_the_same_context_beside_its_transaction_as_inside_it() {
    // With spare pool connections a batch reads donor histories and clinic
    // windows beside its transaction; with none, inside it. Earlier batches'
    // records reach the later one only through those reads.
    let batches = batches_reading_each_other();
    let inside = flags_through_a_pool_of(1, &batches).await;
    let beside = flags_through_a_pool_of(16, &batches).await;
    assert_eq!(inside, beside);
    assert!(
        inside["POOL-A2"].contains(&"ANATOMICAL_MAXIMUM".to_owned()),
        "the second batch saw the first's donation: {inside:?}"
    );
}

#[tokio::test]
async fn a_context_read_failing_beside_the_transaction_is_read_inside_it() {
    let batches = batches_reading_each_other();
    let expected = flags_through_a_pool_of(1, &batches).await;
    let (store, ingestor) = pipeline(16).await;
    store_batch(&ingestor, &batches[0]).await;
    // Every idle connection of the pool is cut behind its back, as a
    // database restart would: the next batch's reads beside it fail.
    let url = store.pool().connect_options();
    let mut admin = sqlx::PgConnection::connect_with(&url)
        .await
        .expect("connect");
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut admin)
    .await
    .expect("terminate");
    assert!(cut > 0, "the pool had idle connections");
    store_batch(&ingestor, &batches[1]).await;
    assert_eq!(stored_flags(store.pool()).await, expected);
}

#[tokio::test]
async fn amendments_of_one_record_outnumbering_the_pool_all_go_through() {
    // Every amendment waiting for the record's lock holds a pooled
    // connection; the one holding the lock then checks the sealed ledger,
    // which must not need a connection of its own.
    let app = spawn_app().await;
    register_berlin(&app).await;
    submit(&app, kidney("AMENDED-MANY")).await.expect("stored");
    let callers = i32::try_from(PoolSettings::default().max_connections).expect("a small pool") + 8;
    let amendments = (0..callers).map(|i| {
        let mut record = kidney("AMENDED-MANY");
        record.cold_ischemia_minutes = Some(60 + i);
        amend(&app, record, "ischemia time corrected")
    });
    let mut versions = Vec::new();
    for (i, result) in join_all(amendments).await.into_iter().enumerate() {
        let ack = result.unwrap_or_else(|s| panic!("amendment {i} refused: {s:?}"));
        assert_eq!(ack.outcome, pb::Outcome::Accepted as i32, "amendment {i}");
        versions.push(ack.version);
    }
    versions.sort_unstable();
    let expected: Vec<i32> = (2..).take(versions.len()).collect();
    assert_eq!(versions, expected, "one version each, none lost");
}
