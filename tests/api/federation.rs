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

// ---------------------------------------------------------------------------
// Two registries, two databases, two fingerprint keys, two federation keys.
// ---------------------------------------------------------------------------

mod two_registries {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};

    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    use transplant_audit::store::{PoolSettings, Store};
    use transplant_audit::wire::pb;
    use transplant_audit::wire::pb::federation_service_client::FederationServiceClient;
    use transplant_audit::wire::pb::ingest_service_client::IngestServiceClient;

    use crate::helpers::{Ca, ServerProcess, fresh_database, kidney, reason, test_key_hex, write};

    const RULE: &str = "CROSS_BORDER_REPEAT_LIVING_DONOR";

    /// One registry: its database, keys, certificate and running server.
    pub struct Registry {
        pub name: &'static str,
        pub url: String,
        pub fingerprint_key: String,
        pub federation_key: String,
        pub ca: Ca,
        pub cert: PathBuf,
        pub key: PathBuf,
        pub ca_file: PathBuf,
        pub server: Option<ServerProcess>,
        pub federation_addr: String,
        hospital_token: String,
    }

    impl Registry {
        fn new(name: &'static str, dir: &Path, fingerprint: u8, federation: u8) -> Self {
            let ca = Ca::new(&format!("registry {name} CA"));
            let (cert, key) = ca.issue(&["localhost"]);
            Self {
                name,
                url: String::new(),
                fingerprint_key: hex::encode([fingerprint; 32]),
                federation_key: hex::encode([federation; 32]),
                cert: write(dir, &format!("{name}-cert.pem"), &cert),
                key: write(dir, &format!("{name}-key.pem"), &key),
                ca_file: write(dir, &format!("{name}-ca.pem"), &ca.pem()),
                ca,
                server: None,
                federation_addr: String::new(),
                hospital_token: String::new(),
            }
        }

        fn env(&self) -> Vec<(&'static str, String)> {
            vec![
                ("DATABASE_URL", self.url.clone()),
                ("FINGERPRINT_KEY", self.fingerprint_key.clone()),
                ("FEDERATION_KEY", self.federation_key.clone()),
                ("FEDERATION_CERT_FILE", self.cert.display().to_string()),
                ("FEDERATION_KEY_FILE", self.key.display().to_string()),
                ("RUST_LOG", "error".to_owned()),
            ]
        }

        /// Runs the binary's command line against this registry.
        pub fn cli(&self, args: &[&str]) -> Output {
            Command::new(env!("CARGO_BIN_EXE_transplant-audit"))
                .args(args)
                .envs(self.env())
                .output()
                .expect("run the command line")
        }

        /// Runs a command that must succeed; returns its standard output.
        pub fn ok(&self, args: &[&str]) -> String {
            let out = self.cli(args);
            assert!(
                out.status.success(),
                "{} {args:?}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }

        async fn start(&mut self, ceiling: &str) {
            // Keys made before the server starts are known to it at once.
            self.hospital_token = self
                .ok(&[
                    "keys",
                    "create",
                    "--role",
                    "hospital",
                    "--hospital-id",
                    "H-DE-001",
                ])
                .trim()
                .to_owned();
            let env = self.env();
            // The server's own log level: it names its listeners at info.
            let mut env: Vec<(&str, &str)> = env
                .iter()
                .filter(|(k, _)| *k != "RUST_LOG")
                .map(|(k, v)| (*k, v.as_str()))
                .collect();
            env.push(("FEDERATION_ADDR", "127.0.0.1:0"));
            env.push(("FEDERATION_DAILY_CEILING", ceiling));
            let server = ServerProcess::start_with(&self.url, "info", &env).await;
            let addr = server
                .log
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|e| e["fields"]["message"] == "serving federation")
                .and_then(|e| e["fields"]["addr"].as_str().map(str::to_owned))
                .expect("the federation listener's address");
            self.federation_addr = addr;
            self.server = Some(server);
        }

        /// The federation listener's address as a peer configures it.
        pub fn address(&self) -> String {
            let port = self.federation_addr.rsplit(':').next().expect("a port");
            format!("https://localhost:{port}")
        }

        /// A store on this registry's database, under its fingerprint key.
        pub fn store(&self) -> Store {
            let key = transplant_audit::domain::FingerprintKey::from_bytes(
                &hex::decode(&self.fingerprint_key).expect("hex"),
            )
            .expect("a key");
            Store::connect(&self.url, &PoolSettings::default(), &key).expect("a store")
        }

        async fn submit(&self, records: Vec<pb::TransplantRecord>) {
            let server = self.server.as_ref().expect("started");
            let mut ingest = IngestServiceClient::new(server.connect(&self.hospital_token).await);
            for record in records {
                ingest
                    .submit_record(pb::SubmitRecordRequest {
                        record: Some(record),
                    })
                    .await
                    .expect("stored");
            }
        }

        /// A client of this registry's federation listener presenting
        /// `identity` (PEM certificate and key), or no certificate.
        pub async fn federation_client(
            &self,
            identity: Option<(&Path, &Path)>,
        ) -> Result<FederationServiceClient<Channel>, tonic::transport::Error> {
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(self.ca.pem()))
                .domain_name("localhost");
            if let Some((cert, key)) = identity {
                tls = tls.identity(Identity::from_pem(
                    std::fs::read(cert).expect("cert"),
                    std::fs::read(key).expect("key"),
                ));
            }
            let channel = Channel::from_shared(format!("https://{}", self.federation_addr))
                .expect("uri")
                .tls_config(tls)?
                .connect()
                .await?;
            Ok(FederationServiceClient::new(channel))
        }
    }

    /// A living donor's record whose donor holds passport `passport`.
    fn living(external: &str, passport: &str) -> pb::TransplantRecord {
        let mut r = kidney(external);
        let donor = r.donor.as_mut().expect("donor");
        donor.identifier = Some(pb::PersonIdentifier {
            scheme: pb::IdentifierScheme::Passport as i32,
            issuing_country: "MD".into(),
            value: passport.into(),
        });
        r
    }

    /// The same donor, deceased.
    fn deceased(external: &str, passport: &str) -> pb::TransplantRecord {
        let mut r = living(external, passport);
        let donor = r.donor.as_mut().expect("donor");
        donor.donor_type = pb::DonorType::Deceased as i32;
        donor.relation_to_recipient = 0;
        donor.death_at = Some(crate::helpers::ts("2025-03-03T06:00:00Z"));
        donor.death_kind = pb::DeathKind::Dbd as i32;
        r
    }

    /// Two registries: `a` initiates, `b` answers (a ceiling of `ceiling`
    /// elements a day for `a`); each configured as the other's peer.
    pub async fn start(dir: &Path, ceiling: &str) -> (Registry, Registry) {
        let mut a = Registry::new("a", dir, 0x5a, 0xa1);
        let mut b = Registry::new("b", dir, 0x6b, 0xb2);
        a.url = fresh_database().await;
        b.url = fresh_database().await;
        b.ok(&["migrate"]);
        let ca_a = a.ca_file.display().to_string();
        b.ok(&[
            "federation",
            "peers",
            "add",
            "a",
            "--address",
            "https://localhost:1",
            "--ca-file",
            &ca_a,
        ]);
        b.start(ceiling).await;
        a.start("1000000").await;
        let ca_b = b.ca_file.display().to_string();
        a.ok(&[
            "federation",
            "peers",
            "add",
            "b",
            "--address",
            &b.address(),
            "--ca-file",
            &ca_b,
        ]);
        (a, b)
    }

    /// The records of `registry` the federation rule flagged, with their explanations.
    async fn flagged(registry: &Registry) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT r.external_record_id, e.explanation FROM flags f
             JOIN records r ON r.id = f.record_id
             JOIN flag_events e ON e.flag_id = f.id AND e.step = 1
             WHERE f.rule_id = $1 ORDER BY r.external_record_id",
        )
        .bind(RULE)
        .fetch_all(registry.store().pool())
        .await
        .expect("flags")
    }

    async fn exchanges(registry: &Registry) -> Vec<(String, String, String, i64)> {
        sqlx::query_as(
            "SELECT peer, call, outcome, elements_in FROM federation_exchanges ORDER BY id",
        )
        .fetch_all(registry.store().pool())
        .await
        .expect("exchanges")
    }

    #[tokio::test]
    async fn a_sync_flags_exactly_the_living_donors_both_registries_hold() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = start(dir.path(), "8").await;
        a.submit(vec![
            living("A-SHARED-1", "MD100001"),
            living("A-SHARED-2", "MD100002"),
            living("A-ONLY", "MD100003"),
            deceased("A-DECEASED", "MD100005"),
        ])
        .await;
        b.submit(vec![
            living("B-SHARED-1", "MD100001"),
            living("B-SHARED-1-AGAIN", "MD100001"),
            living("B-SHARED-2", "MD100002"),
            living("B-ONLY", "MD100004"),
            living("B-DECEASED-AT-A", "MD100005"),
        ])
        .await;
        let said = a.ok(&["federation", "sync", "--peer", "b"]);
        assert!(said.contains("2 shared"), "{said}");
        assert_eq!(
            flagged(&a).await,
            [
                (
                    "A-SHARED-1".to_owned(),
                    "The living donor also donated as a living donor in a peer registry: \
                     2 living donations at b."
                        .to_owned()
                ),
                (
                    "A-SHARED-2".to_owned(),
                    "The living donor also donated as a living donor in a peer registry: \
                     1 living donation at b."
                        .to_owned()
                ),
            ]
        );
        assert!(flagged(&b).await.is_empty(), "the peer learns no match");
        // Again: nothing new, never a duplicate.
        a.ok(&["federation", "sync", "--peer", "b", "--since", "2020-01-01"]);
        assert_eq!(flagged(&a).await.len(), 2);
        // B logged both syncs' calls as a's; a logged its syncs.
        let served = exchanges(&b).await;
        assert!(
            served.iter().any(|(peer, call, outcome, n)| peer == "a"
                && call == "RaiseElements"
                && outcome == "OK"
                && *n == 3),
            "{served:?}"
        );
        let initiated = exchanges(&a).await;
        assert_eq!(
            initiated
                .iter()
                .filter(|(p, c, o, _)| p == "b" && c == "Sync" && o == "OK")
                .count(),
            2,
            "{initiated:?}"
        );
        // Over the ceiling (8 a day: 3 + 3 raised, 3 more refused).
        let refused = a.cli(&["federation", "sync", "--peer", "b"]);
        assert!(!refused.status.success());
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(said.contains("elements a day are raised already"), "{said}");
        assert!(
            exchanges(&b)
                .await
                .iter()
                .any(|(peer, _, outcome, _)| peer == "a" && outcome == "REFUSED_CEILING")
        );
        assert_eq!(flagged(&a).await.len(), 2, "nothing changed");
        // Every row holds.
        for registry in [&a, &b] {
            let report = registry.store().verify(&[], &[]).await.expect("verify");
            assert_eq!(report.first_break, None, "registry {}", registry.name);
        }
        // A match edited behind the service is named.
        let store = a.store();
        sqlx::query("UPDATE federation_matches SET peer_donations = peer_donations + 7")
            .execute(store.pool())
            .await
            .expect("tamper");
        let found = store.verify(&[], &[]).await.expect("verify").first_break;
        let found = found.expect("a break").to_string();
        assert!(found.contains("federation match"), "{found}");
        sqlx::query("UPDATE federation_matches SET peer_donations = peer_donations - 7")
            .execute(store.pool())
            .await
            .expect("put back");
        // A rescan raises nothing new: the flags are there.
        let rescan = a.ok(&["rescan", "--rule", RULE]);
        assert!(!rescan.is_empty());
        assert_eq!(flagged(&a).await.len(), 2);
    }

    #[tokio::test]
    async fn the_messages_hold_no_identifier_and_no_fingerprint_and_bad_input_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = start(dir.path(), "1000000").await;
        b.submit(vec![living("B-1", "MD200001"), living("B-2", "MD200002")])
            .await;
        let mut client = b
            .federation_client(Some((&a.cert, &a.key)))
            .await
            .expect("a peer connects");
        let page = client
            .list_donor_elements(pb::ListDonorElementsRequest {
                exchange_id: "test-1".into(),
                page_size: 0,
                page_token: String::new(),
            })
            .await
            .expect("listed")
            .into_inner();
        assert_eq!(page.total_size, 2);
        let fingerprints: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT donor_fp FROM records UNION SELECT recipient_fp FROM records",
        )
        .fetch_all(b.store().pool())
        .await
        .expect("fingerprints");
        let bytes = prost::Message::encode_to_vec(&page);
        for fp in &fingerprints {
            assert!(
                !bytes.windows(fp.len()).any(|w| w == fp.as_slice()),
                "a fingerprint left"
            );
        }
        for id in ["MD200001", "MD200002"] {
            assert!(
                !bytes.windows(id.len()).any(|w| w == id.as_bytes()),
                "an identifier left"
            );
        }
        // Malformed elements, an empty or too large batch, a bad token: refused, logged.
        let before = exchanges(&b).await.len();
        let good = page.donor_elements[0].element.clone();
        for (elements, field) in [
            (vec![good.clone(), vec![1; 31]], "elements[1]"),
            (vec![vec![0xff; 32]], "elements[0]"),
            (vec![vec![0; 32]], "elements[0]"),
            (Vec::new(), "elements"),
            (vec![good.clone(); 16_385], "elements"),
        ] {
            let status = client
                .raise_elements(pb::RaiseElementsRequest {
                    exchange_id: "test-2".into(),
                    elements,
                })
                .await
                .expect_err("refused");
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(
                crate::helpers::violated_fields(&status).contains(&field.to_owned()),
                "{status:?}"
            );
        }
        let bad_token = client
            .list_donor_elements(pb::ListDonorElementsRequest {
                exchange_id: "test-3".into(),
                page_size: 0,
                page_token: "zz".into(),
            })
            .await
            .expect_err("refused");
        assert_eq!(bad_token.code(), tonic::Code::InvalidArgument);
        let logged = exchanges(&b).await;
        assert_eq!(logged.len(), before + 6, "{logged:?}");
        assert!(
            logged[before..]
                .iter()
                .all(|(_, _, o, _)| o == "REFUSED_BAD_INPUT")
        );
        let raised: i64 = logged
            .iter()
            .filter(|(_, c, o, _)| c == "RaiseElements" && o == "OK")
            .map(|(_, _, _, n)| n)
            .sum();
        assert_eq!(raised, 0, "nothing was raised");
    }

    #[tokio::test]
    async fn clients_without_a_peers_certificate_are_refused_and_logged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_a, b) = start(dir.path(), "1000000").await;
        // A certificate from a CA no peer has.
        let stranger = Ca::new("stranger");
        let (cert, key) = stranger.issue(&["localhost"]);
        let cert = write(dir.path(), "stranger-cert.pem", &cert);
        let key = write(dir.path(), "stranger-key.pem", &key);
        let refused = match b.federation_client(Some((&cert, &key))).await {
            Err(_) => true,
            Ok(mut client) => client
                .list_donor_elements(pb::ListDonorElementsRequest {
                    exchange_id: "x".into(),
                    ..Default::default()
                })
                .await
                .is_err(),
        };
        assert!(refused, "a stranger's certificate is refused");
        // No certificate at all: the call is refused by the service.
        let mut anonymous = b
            .federation_client(None)
            .await
            .expect("TLS without a certificate");
        let status = anonymous
            .raise_elements(pb::RaiseElementsRequest {
                exchange_id: "x".into(),
                elements: vec![vec![1; 32]],
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(reason(&status).0, "NOT_A_PEER");
        // An API key of any role does not reach it either: the main
        // listener does not serve FederationService.
        let mut logged = Vec::new();
        for _ in 0..100 {
            logged = exchanges(&b).await;
            if logged
                .iter()
                .filter(|(_, _, o, _)| o == "REFUSED_NOT_A_PEER")
                .count()
                >= 2
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let calls: Vec<&str> = logged
            .iter()
            .filter(|(p, _, o, _)| p.is_empty() && o == "REFUSED_NOT_A_PEER")
            .map(|(_, c, _, _)| c.as_str())
            .collect();
        assert!(calls.contains(&"Handshake"), "{logged:?}");
        assert!(calls.contains(&"RaiseElements"), "{logged:?}");
    }

    #[tokio::test]
    async fn peers_are_checked_and_bad_commands_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Registry::new("a", dir.path(), 0x5a, 0xa1);
        a.url = fresh_database().await;
        a.ok(&["migrate"]);
        let ca = a.ca_file.display().to_string();
        let not_pem = write(dir.path(), "not.pem", "not a certificate")
            .display()
            .to_string();
        for (args, said) in [
            (
                vec![
                    "federation",
                    "peers",
                    "add",
                    "b",
                    "--address",
                    "https://localhost:1",
                    "--ca-file",
                    &not_pem,
                ],
                "--ca-file",
            ),
            (
                vec![
                    "federation",
                    "peers",
                    "add",
                    "b",
                    "--address",
                    "http://localhost:1",
                    "--ca-file",
                    &ca,
                ],
                "--address",
            ),
            (
                vec![
                    "federation",
                    "peers",
                    "add",
                    "b c",
                    "--address",
                    "https://localhost:1",
                    "--ca-file",
                    &ca,
                ],
                "name",
            ),
            (vec!["federation", "peers", "remove", "nobody"], "nobody"),
            (vec!["federation", "sync", "--peer", "nobody"], "nobody"),
        ] {
            let out = a.cli(&args);
            assert_eq!(out.status.code(), Some(2), "{args:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(said), "{args:?}: {stderr}");
        }
        let store = a.store();
        assert!(store.peers().await.expect("peers").is_empty());
        a.ok(&[
            "federation",
            "peers",
            "add",
            "b",
            "--address",
            "https://localhost:1",
            "--ca-file",
            &ca,
        ]);
        let twice = a.cli(&[
            "federation",
            "peers",
            "add",
            "b",
            "--address",
            "https://localhost:2",
            "--ca-file",
            &ca,
        ]);
        assert_eq!(twice.status.code(), Some(2));
        assert!(
            a.ok(&["federation", "peers", "list"])
                .contains("https://localhost:1")
        );
        a.ok(&["federation", "peers", "remove", "b"]);
        assert!(store.peers().await.expect("peers").is_empty());
        assert_eq!(
            store.verify(&[], &[]).await.expect("verify").first_break,
            None
        );
        // Rows edited behind the service are named by verify.
        let _ = test_key_hex();
        for (table, statement) in [
            (
                "federation peer",
                "UPDATE federation_peers SET address = 'https://evil:1'",
            ),
            (
                "federation exchange",
                "UPDATE federation_exchanges SET elements_in = elements_in + 1",
            ),
        ] {
            if table == "federation exchange" {
                store
                    .log_exchange(&transplant_audit::store::federation::ExchangeLog {
                        peer: "b",
                        side: transplant_audit::store::federation::Side::Served,
                        call: "RaiseElements",
                        exchange_id: "x",
                        elements_in: 1,
                        elements_out: 1,
                        outcome: "OK",
                        detail: "",
                    })
                    .await
                    .expect("logged");
            }
            sqlx::query(statement)
                .execute(store.pool())
                .await
                .expect(table);
            let found = store
                .verify(&[], &[])
                .await
                .expect("verify")
                .first_break
                .expect(table);
            assert!(found.to_string().contains(table), "{found}");
            let put_back = if table == "federation peer" {
                "UPDATE federation_peers SET address = 'https://localhost:1'"
            } else {
                "UPDATE federation_exchanges SET elements_in = elements_in - 1"
            };
            sqlx::query(put_back)
                .execute(store.pool())
                .await
                .expect("put back");
        }
    }
}

#[tokio::test]
async fn administrators_manage_peers_over_the_api_and_bad_requests_change_nothing() {
    use crate::helpers::{Ca, reason, spawn_app, violated_fields};
    use transplant_audit::wire::pb::admin_service_client::AdminServiceClient;

    let app = spawn_app().await;
    let mut admin = app.admin.clone();
    let ca = Ca::new("peer kz").pem();
    let peer = |name: &str, address: &str, ca_pem: &str| pb::AddFederationPeerRequest {
        peer: Some(pb::FederationPeer {
            name: name.into(),
            address: address.into(),
            ca_pem: ca_pem.into(),
            ..Default::default()
        }),
    };
    for (request, fields) in [
        (
            peer("kz", "https://kz.example:50052", "not a certificate"),
            vec!["peer.ca_pem"],
        ),
        (peer("kz", "http://kz.example", &ca), vec!["peer.address"]),
        (
            peer("k z", "https://kz.example:50052", &ca),
            vec!["peer.name"],
        ),
        (pb::AddFederationPeerRequest { peer: None }, vec!["peer"]),
    ] {
        let status = admin
            .add_federation_peer(request)
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(violated_fields(&status), fields);
    }
    assert_eq!(app.count("federation_peers").await, 0, "nothing stored");
    let added = admin
        .add_federation_peer(peer("kz", "https://kz.example:50052", &ca))
        .await
        .expect("added")
        .into_inner()
        .peer
        .expect("the peer");
    assert!(added.added_by.starts_with("tester-"), "{}", added.added_by);
    let twice = admin
        .add_federation_peer(peer("kz", "https://other.example:1", &ca))
        .await
        .expect_err("refused");
    assert_eq!(reason(&twice).0, "FEDERATION_PEER_EXISTS");
    let mut hospital = AdminServiceClient::new(app.authed(&app.hospital_token));
    let denied = hospital
        .list_federation_peers(pb::ListFederationPeersRequest {})
        .await
        .expect_err("admins only");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let listed = admin
        .list_federation_peers(pb::ListFederationPeersRequest {})
        .await
        .expect("listed")
        .into_inner()
        .peers;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].address, "https://kz.example:50052");
    let unknown = admin
        .remove_federation_peer(pb::RemoveFederationPeerRequest {
            name: "nobody".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(reason(&unknown).0, "FEDERATION_PEER_NOT_FOUND");
    admin
        .remove_federation_peer(pb::RemoveFederationPeerRequest { name: "kz".into() })
        .await
        .expect("removed");
    let listed = admin
        .list_federation_peers(pb::ListFederationPeersRequest {})
        .await
        .expect("listed")
        .into_inner()
        .peers;
    assert!(listed.is_empty());
    assert_eq!(first_break(&app.store).await, None);
}
