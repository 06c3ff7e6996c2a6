//! Federation: every record's elements (`k·H(id)`) beside its
//! fingerprints, covered by its row's MAC, filled in by an import run anew.

use sqlx::PgPool;
use transplant_audit::domain::{FederationKey, IdentifierScheme, PersonIdentifier};
use transplant_audit::ingest::{Ingestor, Outcome};
use transplant_audit::store::Store;
use transplant_audit::wire::pb;

use crate::helpers::{kidney, pipeline, submissions};

/// An element column's value.
type Element = Option<Vec<u8>>;

/// A federation key of the tests.
fn federation_key(byte: u8) -> FederationKey {
    FederationKey::from_bytes(&[byte; 32]).expect("a federation key")
}

/// The national id `kidney(id)` gives its donor.
fn donor_of(external_record_id: &str) -> PersonIdentifier {
    let de = "DE".parse().expect("a country");
    PersonIdentifier::new(
        IdentifierScheme::NationalId,
        de,
        &format!("DONOR{external_record_id}"),
    )
    .expect("an identifier")
}

async fn store_all(ingestor: &Ingestor, records: &[pb::TransplantRecord]) -> Vec<Outcome> {
    ingestor
        .submit_batch(submissions(records))
        .await
        .expect("stored")
        .into_iter()
        .map(|a| a.expect("accepted").outcome)
        .collect()
}

/// The (donor, recipient) elements and ledger place of the record `external`.
async fn elements_of(pool: &PgPool, external: &str) -> (Element, Element, i64) {
    sqlx::query_as(
        "SELECT donor_element, recipient_element, ledger_seq FROM records
         WHERE external_record_id = $1",
    )
    .bind(external)
    .fetch_one(pool)
    .await
    .expect("the record")
}

/// The first break verify finds, in words; `None` when the trail holds.
async fn first_break(store: &Store) -> Option<String> {
    store
        .verify(&[], &[])
        .await
        .expect("verify runs")
        .first_break
        .map(|b| b.to_string())
}

#[tokio::test]
async fn records_store_their_elements_and_never_the_identifier() {
    let (store, ingestor) = pipeline(4).await;
    let key = federation_key(1);
    let ingestor = ingestor.with_federation(key.clone());
    let outcomes = store_all(&ingestor, &[kidney("FED-E1")]).await;
    assert_eq!(outcomes, [Outcome::Accepted]);
    let (donor, recipient, _) = elements_of(store.pool(), "FED-E1").await;
    let donor = donor.expect("a donor element");
    assert_eq!(donor, key.element(&donor_of("FED-E1")).0.to_vec());
    assert_eq!(recipient.map(|r| r.len()), Some(32));
    let fp: Vec<u8> =
        sqlx::query_scalar("SELECT donor_fp FROM records WHERE external_record_id = 'FED-E1'")
            .fetch_one(store.pool())
            .await
            .expect("fingerprint");
    assert_ne!(fp, donor, "the element is not the fingerprint");
    let row: String = sqlx::query_scalar("SELECT row_to_json(r)::text FROM records r")
        .fetch_one(store.pool())
        .await
        .expect("the row");
    assert!(!row.contains("DONORFED-E1"), "no identifier is stored");
    assert_eq!(first_break(&store).await, None);
}

#[tokio::test]
async fn elements_edited_added_or_removed_behind_the_service_are_named_by_verify() {
    let (store, ingestor) = pipeline(4).await;
    let with = ingestor.clone().with_federation(federation_key(1));
    store_all(&with, &[kidney("FED-V1")]).await;
    store_all(&ingestor, &[kidney("FED-V2")]).await;
    assert_eq!(first_break(&store).await, None);
    let other = federation_key(2).element(&donor_of("FED-V1")).0.to_vec();
    for (what, statement) in [
        (
            "an element replaced",
            "UPDATE records SET donor_element = $1 WHERE external_record_id = 'FED-V1'",
        ),
        (
            "elements removed",
            "UPDATE records SET donor_element = NULL, recipient_element = NULL
             WHERE external_record_id = 'FED-V1' AND $1::bytea IS NOT NULL",
        ),
        (
            "elements added to a row that had none",
            "UPDATE records SET donor_element = $1, recipient_element = $1
             WHERE external_record_id = 'FED-V2'",
        ),
    ] {
        let mut tx = store.pool().begin().await.expect("begin");
        sqlx::query(statement)
            .bind(&other)
            .execute(&mut *tx)
            .await
            .expect(what);
        // Verify reads on its own connection: commit, check, put back.
        let before: Vec<(i64, Element, Element)> =
            sqlx::query_as("SELECT id, donor_element, recipient_element FROM records ORDER BY id")
                .fetch_all(store.pool())
                .await
                .expect("rows before");
        tx.commit().await.expect("commit");
        let found = first_break(&store).await.expect(what);
        assert!(
            found.contains("records") && found.contains("MAC"),
            "{what}: {found}"
        );
        for (id, donor, recipient) in before {
            sqlx::query(
                "UPDATE records SET donor_element = $2, recipient_element = $3 WHERE id = $1",
            )
            .bind(id)
            .bind(donor)
            .bind(recipient)
            .execute(store.pool())
            .await
            .expect("put back");
        }
        assert_eq!(first_break(&store).await, None, "{what}: put back");
    }
}

#[tokio::test]
async fn an_import_run_anew_fills_in_the_elements_of_records_stored_without_them() {
    let (store, ingestor) = pipeline(4).await;
    let records = [kidney("FED-I1"), kidney("FED-I2")];
    store_all(&ingestor, &records).await;
    let (donor, _, seq_before) = elements_of(store.pool(), "FED-I1").await;
    assert_eq!(donor, None, "stored before the registry federated");
    let key = federation_key(3);
    let with = ingestor.with_federation(key.clone());
    let outcomes = store_all(&with, &records).await;
    assert_eq!(outcomes, [Outcome::Duplicate, Outcome::Duplicate]);
    let (donor, recipient, seq_after) = elements_of(store.pool(), "FED-I1").await;
    assert_eq!(donor, Some(key.element(&donor_of("FED-I1")).0.to_vec()));
    assert!(recipient.is_some());
    assert!(seq_after > seq_before, "a new place in the ledger");
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM record_versions")
        .fetch_one(store.pool())
        .await
        .expect("versions");
    assert_eq!(versions, 0, "no new version: the content did not change");
    assert_eq!(first_break(&store).await, None);
    // Run again under a new key (rotation): the elements follow the key.
    let rotated = federation_key(4);
    let again = store_all(&with_key(&store, rotated.clone()).await, &records).await;
    assert_eq!(again, [Outcome::Duplicate, Outcome::Duplicate]);
    let (donor, _, _) = elements_of(store.pool(), "FED-I1").await;
    assert_eq!(donor, Some(rotated.element(&donor_of("FED-I1")).0.to_vec()));
    assert_eq!(first_break(&store).await, None);
}

/// A pipeline over `store` federating under `key`.
async fn with_key(store: &Store, key: FederationKey) -> Ingestor {
    let engine = std::sync::Arc::new(transplant_audit::rules::Engine::new(
        transplant_audit::rules::RulesConfig::default(),
    ));
    let fingerprint =
        transplant_audit::domain::FingerprintKey::from_bytes(&crate::helpers::TEST_KEY)
            .expect("key");
    Ingestor::new(store.clone(), engine, fingerprint, 256).with_federation(key)
}

#[tokio::test]
async fn a_tampered_row_is_not_given_elements() {
    let (store, ingestor) = pipeline(4).await;
    store_all(&ingestor, &[kidney("FED-T1")]).await;
    sqlx::query("UPDATE records SET donor_age = 99 WHERE external_record_id = 'FED-T1'")
        .execute(store.pool())
        .await
        .expect("tamper");
    let with = ingestor.with_federation(federation_key(1));
    let refused = with.submit_batch(submissions(&[kidney("FED-T1")])).await;
    assert!(refused.is_err() || refused.is_ok_and(|a| a[0].is_err()));
    let (donor, _, _) = elements_of(store.pool(), "FED-T1").await;
    assert_eq!(
        donor, None,
        "nothing written on a row changed behind the service"
    );
}
