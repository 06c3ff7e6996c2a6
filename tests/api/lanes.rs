//! A stream's batch is stored in lanes, one transaction per lane, split by
//! clinic: the lanes commit independently, and records that meet across
//! lanes (one donor at two clinics) still read each other in stream order.

use std::collections::BTreeSet;

use sqlx::PgPool;
use tokio::sync::oneshot;
use transplant_audit::ingest::{Ingestor, LANES, Outcome, lane_of};
use transplant_audit::wire::pb;

use crate::helpers::*;

/// A clinic id of each lane, in lane order.
fn clinic_per_lane() -> Vec<String> {
    (0..LANES)
        .map(|lane| {
            (0..)
                .map(|i| format!("DE-LANE-{i:02}"))
                .find(|clinic| lane_of(clinic) == lane)
                .expect("some clinic falls in every lane")
        })
        .collect()
}

async fn register(app: &TestApp, clinics: &[String]) {
    for id in clinics {
        app.registry
            .clone()
            .upsert_clinic(pb::UpsertClinicRequest {
                clinic: Some(clinic(id, "DE")),
            })
            .await
            .expect("register clinic");
    }
}

/// A deceased donor's left kidney, transplanted at `clinic`.
fn left_kidney_at(external_record_id: &str, donor: &str, clinic: &str) -> pb::TransplantRecord {
    let mut r = deceased_left_kidney(external_record_id, donor);
    r.clinic_id = clinic.into();
    r
}

/// Sends `records` on one stream, all up front, and checks that every one
/// was accepted, in order.
async fn stream_accepted(app: &TestApp, records: Vec<pb::TransplantRecord>) {
    let n = records.len() as u64;
    let responses = stream_all(app, records.into_iter().map(Some).collect()).await;
    let sequences: Vec<u64> = responses.iter().map(|r| r.sequence).collect();
    assert_eq!(
        sequences,
        (0..n).collect::<Vec<_>>(),
        "acknowledged in order"
    );
    for response in responses {
        let ack = response.ack.expect("ack");
        assert_eq!(ack.outcome, pb::Outcome::Accepted as i32, "{ack:?}");
    }
}

/// Stores `records` as one stream batch, in lanes; every record must be accepted.
async fn store_in_lanes(ingestor: &Ingestor, records: Vec<pb::TransplantRecord>) {
    let (ordered, _) = oneshot::channel();
    let answers = ingestor
        .store_in_lanes(ingestor.prepare(submissions(&records)), ordered)
        .await
        .expect("stored");
    assert_eq!(answers.len(), records.len());
    for answer in answers {
        assert_eq!(answer.expect("accepted").outcome, Outcome::Accepted);
    }
}

async fn count_of(pool: &PgPool, external_record_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM records WHERE external_record_id = $1")
        .bind(external_record_id)
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn a_donor_at_clinics_of_two_lanes_is_read_in_batch_order() {
    let (store, ingestor) = pipeline(16).await;
    let clinics = clinic_per_lane();
    let (first, second) = (&clinics[0], &clinics[1]);
    // Donor A's first kidney in the first lane, its second in the second;
    // donor B's the other way round: each later record is the impossible one.
    store_in_lanes(
        &ingestor,
        vec![
            left_kidney_at("A-1", "LANE-DONOR-A", first),
            left_kidney_at("B-1", "LANE-DONOR-B", second),
            left_kidney_at("A-2", "LANE-DONOR-A", second),
            left_kidney_at("B-2", "LANE-DONOR-B", first),
        ],
    )
    .await;

    let flagged = stored_flags(store.pool()).await;
    let impossible = |id: &str| {
        flagged
            .get(id)
            .is_some_and(|rules| rules.iter().any(|r| r == "ANATOMICAL_MAXIMUM"))
    };
    assert!(!impossible("A-1") && !impossible("B-1"), "{flagged:?}");
    assert!(impossible("A-2") && impossible("B-2"), "{flagged:?}");
    let order: Vec<String> =
        sqlx::query_scalar("SELECT external_record_id FROM records ORDER BY id")
            .fetch_all(store.pool())
            .await
            .expect("records");
    let position = |id: &str| order.iter().position(|o| o == id);
    assert!(position("A-1") < position("A-2"), "{order:?}");
    assert!(position("B-1") < position("B-2"), "{order:?}");
}

#[tokio::test]
async fn the_lanes_of_a_batch_commit_without_waiting_for_each_other() {
    let (store, ingestor) = pipeline(16).await;
    let clinics = clinic_per_lane();
    store_in_lanes(
        &ingestor,
        vec![left_kidney_at("HELD-0", "HELD-DONOR", &clinics[0])],
    )
    .await;
    // The first lane's record waits on an uncommitted copy of its key.
    let holder = hold_key(store.pool(), "HELD-0", "HELD-1").await;
    let batch = vec![
        left_kidney_at("HELD-1", "HELD-DONOR-1", &clinics[0]),
        left_kidney_at("FREE-1", "FREE-DONOR", &clinics[1]),
    ];
    let storing = tokio::spawn({
        let ingestor = ingestor.clone();
        async move { store_in_lanes(&ingestor, batch).await }
    });
    until_waiting(store.pool(), 1).await;

    let mut committed = false;
    for _ in 0..200 {
        if count_of(store.pool(), "FREE-1").await == 1 {
            committed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        committed,
        "the second lane committed while the first waited"
    );
    assert!(
        !storing.is_finished(),
        "no answer before every lane is stored"
    );
    assert_eq!(count_of(store.pool(), "HELD-1").await, 0);

    holder.rollback().await.expect("rollback");
    storing.await.expect("both accepted");
    assert_eq!(count_of(store.pool(), "HELD-1").await, 1);
}

#[tokio::test]
async fn a_lane_the_database_refuses_fails_the_batch_while_the_other_lane_commits() {
    let (store, ingestor) = pipeline(16).await;
    // Something only the database refuses, so that one lane fails.
    sqlx::query(
        "ALTER TABLE records ADD CONSTRAINT test_refuses_poison \
         CHECK (external_record_id NOT LIKE 'POISON%')",
    )
    .execute(store.pool())
    .await
    .expect("add the constraint");
    let clinics = clinic_per_lane();
    let batch = |records: Vec<pb::TransplantRecord>| ingestor.prepare(submissions(&records));
    let good = left_kidney_at("GOOD-1", "GOOD-DONOR", &clinics[1]);
    let poisoned = batch(vec![
        left_kidney_at("POISON-1", "POISON-DONOR", &clinics[0]),
        good.clone(),
    ]);
    let (ordered, _) = oneshot::channel();
    let failed = ingestor.store_in_lanes(poisoned, ordered).await;
    assert!(
        failed.is_err(),
        "the refused lane fails the batch: {failed:?}"
    );
    assert_eq!(count_of(store.pool(), "POISON-1").await, 0);
    assert_eq!(
        count_of(store.pool(), "GOOD-1").await,
        1,
        "the other lane committed"
    );

    // Resent, the committed record comes back a duplicate of itself.
    let stored_id: i64 =
        sqlx::query_scalar("SELECT id FROM records WHERE external_record_id = 'GOOD-1'")
            .fetch_one(store.pool())
            .await
            .expect("id");
    let (ordered, _) = oneshot::channel();
    let resent = ingestor
        .store_in_lanes(batch(vec![good]), ordered)
        .await
        .expect("stored");
    let ack = resent
        .into_iter()
        .next()
        .expect("one answer")
        .expect("a duplicate");
    assert_eq!(ack.outcome, Outcome::Duplicate);
    assert_eq!(ack.stored.id.0, stored_id);
}

#[tokio::test]
async fn a_stream_in_lanes_raises_exactly_the_flags_of_one_by_one() {
    // Repeat donors across three clinics of each lane, foreign living
    // donors and deceased donors to non-residents in every clinic's
    // windows: streamed in one go they must be flagged as if submitted one
    // at a time.
    let clinics: Vec<String> = (0..LANES)
        .flat_map(|lane| {
            (0..)
                .map(|i| format!("DE-MIX-{i:02}"))
                .filter(move |clinic| lane_of(clinic) == lane)
                .take(3)
        })
        .collect();
    let records: Vec<pb::TransplantRecord> = (0..120)
        .map(|i| {
            let clinic = &clinics[i % clinics.len()];
            let donor = format!("MIX-D{}-{}", lane_of(clinic), i % 13);
            let mut r = left_kidney_at(&format!("MIX-{i:03}"), &donor, clinic);
            if i % 5 == 0 {
                let d = r.donor.as_mut().expect("donor");
                d.donor_type = pb::DonorType::Living as i32;
                d.death_at = None;
                d.death_kind = 0;
                d.relation_to_recipient = pb::DonorRelation::UnrelatedDirected as i32;
                d.nationality = "MD".into();
                d.country_of_residence = "MD".into();
            } else if i % 3 == 0 {
                let p = r.recipient.as_mut().expect("recipient");
                p.nationality = "MD".into();
                p.country_of_residence = "MD".into();
            }
            r
        })
        .collect();

    let streamed = spawn_app().await;
    register(&streamed, &clinics).await;
    stream_accepted(&streamed, records.clone()).await;
    let one_by_one = spawn_app().await;
    register(&one_by_one, &clinics).await;
    for record in records {
        submit(&one_by_one, record).await.expect("accepted");
    }

    let expected = stored_flags(&one_by_one.pool).await;
    assert_eq!(stored_flags(&streamed.pool).await, expected);
    let rules: BTreeSet<&String> = expected.values().flatten().collect();
    for rule in ["ANATOMICAL_MAXIMUM", "DONOR_NATIONALITY_CLUSTER"] {
        assert!(rules.iter().any(|r| *r == rule), "{rule} raised: {rules:?}");
    }
    streamed.stop().await;
    one_by_one.stop().await;
}
