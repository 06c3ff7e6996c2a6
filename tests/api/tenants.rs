//! No tenant starves another, and the smaller holes: quotas per hospital
//! and per key, calls and streams that send nothing, idle and half-open
//! connections, unauthenticated health watches, made-up keys, forged page
//! tokens, notes that hide their text, and hospital ids spelled two ways.
//! Each test is an attack that succeeded before these defences.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use transplant_audit::domain::Role;
use transplant_audit::rules::RulesConfig;
use transplant_audit::server::ServeOptions;
use transplant_audit::wire::pb;
use transplant_audit::wire::pb::admin_service_client::AdminServiceClient;
use transplant_audit::wire::pb::audit_service_client::AuditServiceClient;
use transplant_audit::wire::pb::ingest_service_client::IngestServiceClient;
use transplant_audit::wire::pb::registry_service_client::RegistryServiceClient;

use crate::helpers::*;
use crate::tls::{tls_channel, tls_server};
use rustls_pki_types::pem::PemObject;

/// A flag in review, ready to be closed with a note.
async fn flag_in_review(app: &TestApp, ext: &str) -> pb::Flag {
    submit(app, abo_incompatible(ext)).await.expect("flagged");
    let flag = all_flags(app, pb::ListFlagsRequest::default())
        .await
        .into_iter()
        .find(|f| f.external_record_id == ext)
        .expect("a flag");
    app.audit
        .clone()
        .update_flag_status(pb::UpdateFlagStatusRequest {
            flag_id: flag.flag_id.clone(),
            status: pb::FlagStatus::InReview as i32,
            note: String::new(),
            etag: flag.etag.clone(),
        })
        .await
        .expect("in review")
        .into_inner()
        .flag
        .expect("the flag")
}

#[tokio::test]
async fn notes_that_reorder_or_hide_their_text_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let flag = flag_in_review(&app, "NOTE-1").await;
    let events = app.count("flag_events").await;
    for note in [
        // Shown as "confirmed: trafficking ruled out": the override reverses the rest.
        "confirmed: \u{202E}tuo delur gnikciffart",
        "\u{2066}dismissed\u{2069} per hospital",
        "ok\u{1b}[1A\u{1b}[2Kerased line",
        "line\rover",
        "\u{200B}\u{FEFF}",
        " \n\t ",
    ] {
        let status = app
            .audit
            .clone()
            .update_flag_status(pb::UpdateFlagStatusRequest {
                flag_id: flag.flag_id.clone(),
                status: pb::FlagStatus::Confirmed as i32,
                note: note.into(),
                etag: flag.etag.clone(),
            })
            .await
            .expect_err(note);
        assert_eq!(status.code(), Code::InvalidArgument, "{note:?}: {status:?}");
        assert_eq!(violated_fields(&status), ["note"], "{note:?}");
    }
    assert_eq!(app.count("flag_events").await, events, "no triage step");

    let mut amended = abo_incompatible("NOTE-1");
    amended.laterality = pb::Laterality::Right as i32;
    for reason in ["side \u{202D}corrected", "\u{2067}", "\u{00AD}\u{200D}"] {
        let status = amend(&app, amended.clone(), reason)
            .await
            .expect_err(reason);
        assert_eq!(status.code(), Code::InvalidArgument, "{reason:?}");
        assert_eq!(violated_fields(&status), ["reason"], "{reason:?}");
    }
    assert_eq!(app.count("record_versions").await, 0, "no amendment");

    // Prose with line breaks, tabs and other scripts still goes through.
    app.audit
        .clone()
        .update_flag_status(pb::UpdateFlagStatusRequest {
            flag_id: flag.flag_id.clone(),
            status: pb::FlagStatus::Confirmed as i32,
            note: "Konsil bestätigt:\n\tkeine Einwilligung (لا موافقة)".into(),
            etag: flag.etag.clone(),
        })
        .await
        .expect("a plain note");
    amend(&app, amended, "side corrected")
        .await
        .expect("a plain reason");
    app.stop().await;
}

#[tokio::test]
async fn a_hospital_id_is_one_hospital_however_it_is_spelled() {
    let app = spawn_app().await;
    let created = app
        .admin
        .clone()
        .create_api_key(pb::CreateApiKeyRequest {
            role: pb::Role::Hospital as i32,
            hospital_id: " h-de-007 ".into(),
            ..Default::default()
        })
        .await
        .expect("a key for a spelling of H-DE-007")
        .into_inner();
    assert_eq!(created.key.expect("key").hospital_id, "H-DE-007");
    let mut hospital = IngestServiceClient::new(app.authed(&created.token));
    let mut record = abo_incompatible("SPELL-1");
    record.hospital_id = "H-DE-007".into();
    let mut respelled = record.clone();
    respelled.hospital_id = "\th-De-007 ".into();
    for r in [record, respelled] {
        let ack = hospital
            .submit_record(pb::SubmitRecordRequest { record: Some(r) })
            .await
            .expect("its own hospital, however spelled")
            .into_inner()
            .ack
            .expect("ack");
        assert_ne!(ack.outcome, pb::Outcome::Rejected as i32, "{ack:?}");
    }
    let stored: Vec<String> = sqlx::query_scalar("SELECT hospital_id FROM records")
        .fetch_all(&app.pool)
        .await
        .expect("records");
    assert_eq!(stored, ["H-DE-007"], "one record, in the normal form");
    let flags = all_flags(
        &app,
        pb::ListFlagsRequest {
            hospital_id: "h-de-007".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(
        !flags.is_empty() && flags.iter().all(|f| f.external_record_id == "SPELL-1"),
        "the filter reads the normal form too: {flags:?}"
    );

    // A key stored before ids were normalised still speaks for its hospital.
    let legacy = legacy_hospital_key(&app.store, "h-de-008").await;
    app.auth.learn(&key_id(&legacy));
    let mut theirs = kidney("SPELL-2");
    theirs.hospital_id = "H-DE-008".into();
    IngestServiceClient::new(app.authed(&legacy))
        .submit_record(pb::SubmitRecordRequest {
            record: Some(theirs),
        })
        .await
        .expect("the legacy key's own hospital");
    let mut other = kidney("SPELL-3");
    other.hospital_id = "H-DE-0078".into();
    let status = hospital
        .submit_record(pb::SubmitRecordRequest {
            record: Some(other),
        })
        .await
        .expect_err("another hospital");
    assert_eq!(status.code(), Code::PermissionDenied);
    app.stop().await;
}

#[tokio::test]
async fn a_client_certificate_binds_its_hospital_however_either_side_spells_it() {
    let database_url = fresh_database().await;
    let app = spawn_app_on(&database_url, Default::default()).await;
    // As a key created before ids were normalised spelled it.
    let hospital = legacy_hospital_key(&app.store, "h-de-001").await;
    app.stop().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_ca, clients) = (Ca::new("server CA"), Ca::new("client CA"));
    let server = tls_server(&database_url, dir.path(), &server_ca, Some(&clients)).await;
    let submit = |identity: (String, String), hospital_id: &'static str| {
        let (server, server_ca, token) = (&server, &server_ca, hospital.clone());
        async move {
            let channel = tls_channel(server, server_ca, Some(&identity))
                .await
                .expect("connects");
            let mut record = kidney(&format!("CERT-{}", hospital_id.trim()));
            record.hospital_id = hospital_id.into();
            IngestServiceClient::new(InterceptedService::new(channel, Bearer::new(&token)))
                .submit_record(pb::SubmitRecordRequest {
                    record: Some(record),
                })
                .await
        }
    };
    // Key h-de-001, certificate H-De-001, record "H-DE-001 ": one hospital.
    submit(clients.issue(&["H-De-001"]), "H-DE-001 ")
        .await
        .expect("the key's hospital, its certificate, its record");
    let denied = submit(clients.issue(&["H-DE-0010"]), "H-DE-001")
        .await
        .expect_err("another hospital's certificate");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    server.signal(libc::SIGTERM);
    let _ = server.drain().await;
    let stored: Vec<String> = sqlx::query_scalar("SELECT hospital_id FROM records")
        .fetch_all(&sqlx::PgPool::connect(&database_url).await.expect("connect"))
        .await
        .expect("records");
    assert_eq!(stored, ["H-DE-001"]);
}

#[tokio::test]
async fn forged_or_altered_page_tokens_are_invalid_argument_on_every_listing() {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    let app = spawn_app().await;
    for i in 0..3 {
        submit(&app, abo_incompatible(&format!("PAGE-{i}")))
            .await
            .expect("flagged");
        app.registry
            .clone()
            .upsert_clinic(pb::UpsertClinicRequest {
                clinic: Some(clinic(&format!("DE-PAGE-{i}"), "DE")),
            })
            .await
            .expect("a clinic");
    }
    let mut audit = AuditServiceClient::new(app.authed(&app.auditor_token));
    let mut registry = RegistryServiceClient::new(app.authed(&app.admin_token));
    let mut admin = AdminServiceClient::new(app.authed(&app.admin_token));
    let real = [
        audit
            .list_flags(pb::ListFlagsRequest {
                page_size: 1,
                ..Default::default()
            })
            .await
            .expect("flags")
            .into_inner()
            .next_page_token,
        registry
            .list_clinics(pb::ListClinicsRequest {
                page_size: 1,
                ..Default::default()
            })
            .await
            .expect("clinics")
            .into_inner()
            .next_page_token,
        admin
            .list_api_keys(pb::ListApiKeysRequest {
                page_size: 1,
                ..Default::default()
            })
            .await
            .expect("keys")
            .into_inner()
            .next_page_token,
    ];
    assert!(real.iter().all(|t| !t.is_empty()), "{real:?}");
    let altered = |token: &str| {
        let mut raw = URL_SAFE_NO_PAD.decode(token).expect("base64");
        let last = raw.len() - 1;
        raw[last] ^= 0x01;
        URL_SAFE_NO_PAD.encode(raw)
    };
    // Tokens as the unsigned layout spelled them: the filters' digest then
    // the position, here a NUL (which once reached Postgres) or another id.
    let unsigned =
        |position: &str| URL_SAFE_NO_PAD.encode(format!("v1|{}|{position}", "0123456789abcdef"));
    let mut forged: Vec<String> = real.iter().map(|t| altered(t)).collect();
    forged.extend([
        unsigned("\u{0}"),
        unsigned("1"),
        unsigned("DE-PAGE-0' OR '1'='1"),
        real[1].clone(), // a clinics token on other listings, and so on
        real[2].clone(),
        real[0].clone(),
        "%%%".into(),
        "A".repeat(5000),
    ]);
    let mut wrong = Vec::new();
    for token in &forged {
        let answers = [
            (
                "ListFlags",
                audit
                    .list_flags(pb::ListFlagsRequest {
                        page_token: token.clone(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
            (
                "ListClinics",
                registry
                    .list_clinics(pb::ListClinicsRequest {
                        page_token: token.clone(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
            (
                "ListApiKeys",
                admin
                    .list_api_keys(pb::ListApiKeysRequest {
                        page_token: token.clone(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
        ];
        for (listing, answer) in answers {
            let own = real
                .iter()
                .position(|t| t == token)
                .is_some_and(|i| ["ListFlags", "ListClinics", "ListApiKeys"][i] == listing);
            match answer {
                Ok(()) if own => {}
                Err(s)
                    if s.code() == Code::InvalidArgument
                        && violated_fields(&s) == ["page_token"] => {}
                other => wrong.push(format!("{listing} with {token:.40}: {other:?}")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    app.stop().await;
}

/// A well-formed key that no one created.
fn made_up_key(i: u32) -> String {
    format!(
        "ta_{:012x}_{}",
        0xa000_0000_u64 + u64::from(i),
        "Z".repeat(43)
    )
}

/// Log lines written on this thread, for a server running on it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().expect("lock"))
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_flood_of_made_up_keys_costs_no_key_lookup_and_few_log_lines() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    // The server runs on this test's one thread, so it logs here.
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = spawn_app().await;
    let lookups = app.auth.key_lookups();
    let flood = 500;
    for i in 0..flood {
        let status = IngestServiceClient::new(app.authed(&made_up_key(i)))
            .submit_record(pb::SubmitRecordRequest {
                record: Some(kidney("FLOOD")),
            })
            .await
            .expect_err("made up");
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(reason(&status).0, "API_KEY_REFUSED");
    }
    assert_eq!(
        app.auth.key_lookups(),
        lookups,
        "no key id the server does not hold is looked up"
    );
    let refusals: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|l| l.contains("unauthenticated call refused"))
        .collect();
    // One line a second at most (other tests' refusals share the budget).
    assert!(
        refusals.len() <= 5,
        "{flood} refusals logged in {} lines",
        refusals.len()
    );
    // A real key still works, and is looked up.
    submit(&app, kidney("REAL-1")).await.expect("a real key");
    assert_eq!(app.auth.key_lookups(), lookups + 1);
    app.stop().await;
}

#[tokio::test]
async fn keys_made_and_revoked_behind_the_servers_back_count_within_seconds() {
    let app = spawn_app().await;
    // As `keys create` or another replica would: straight in the store.
    let token = create_key(&app.store, Role::Auditor, None).await;
    let mut audit = AuditServiceClient::new(app.authed(&token));
    let works = |audit: &mut AuditServiceClient<Authed>| {
        let mut audit = audit.clone();
        async move {
            audit
                .list_flags(pb::ListFlagsRequest::default())
                .await
                .map(drop)
        }
    };
    let mut waited = 0;
    while let Err(status) = works(&mut audit).await {
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        waited += 1;
        assert!(waited < 100, "the new key never worked");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    app.store
        .revoke_key(&key_id(&token))
        .await
        .expect("revoked elsewhere");
    let mut waited = 0;
    while works(&mut audit).await.is_ok() {
        waited += 1;
        assert!(waited < 100, "the revoked key kept working");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    app.stop().await;
}

async fn app_with(options: ServeOptions) -> TestApp {
    spawn_app_configured(&fresh_database().await, RulesConfig::default(), options).await
}

/// A record of `hospital`.
fn record_of(hospital: &str, ext: &str) -> pb::TransplantRecord {
    let mut record = kidney(ext);
    record.hospital_id = hospital.into();
    record
}

/// Opens a SubmitRecords stream with `client` and sends nothing on it.
async fn idle_stream(
    client: &IngestServiceClient<Authed>,
) -> Result<
    (
        mpsc::Sender<pb::SubmitRecordsRequest>,
        tonic::Streaming<pb::SubmitRecordsResponse>,
    ),
    tonic::Status,
> {
    let (tx, rx) = mpsc::channel(1);
    let acks = client
        .clone()
        .submit_records(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, acks))
}

#[tokio::test]
async fn a_hospital_holding_idle_streams_does_not_shut_out_another() {
    let app = app_with(ServeOptions {
        max_concurrent_streams: 4,
        max_streams_per_tenant: 2,
        ..ServeOptions::default()
    })
    .await;
    let attacker = app.ingest_for("H-DE-666").await;
    // A second key of the same hospital shares its quota.
    let accomplice =
        IngestServiceClient::new(app.authed(&app.key(Role::Hospital, Some("h-de-666")).await));
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for client in [&attacker, &accomplice, &attacker, &accomplice] {
        match idle_stream(client).await {
            Ok(stream) => held.push(stream),
            Err(status) => refused.push(status),
        }
    }
    assert_eq!(held.len(), 2, "the hospital's quota of streams");
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(reason(status), ("TENANT_TOO_MANY_STREAMS".to_owned(), true));
    }

    // Another hospital still opens a stream and submits on it.
    let (tx, mut acks) = idle_stream(&app.ingest_for("H-DE-001").await)
        .await
        .expect("another hospital's stream opens");
    tx.send(pb::SubmitRecordsRequest {
        record: Some(record_of("H-DE-001", "OTHER-1")),
    })
    .await
    .expect("send");
    let ack = acks.message().await.expect("ack").expect("an ack");
    assert_eq!(ack.ack.expect("ack").outcome, pb::Outcome::Accepted as i32);
    drop((tx, acks, held));
    app.stop().await;
}

/// Calls SubmitRecord with `token` and never sends the request message.
fn bodiless_call(app: &TestApp, token: &str) -> tokio::task::JoinHandle<tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(app.authed(token));
    tokio::spawn(async move {
        if let Err(e) = grpc.ready().await {
            return tonic::Status::unavailable(e.to_string());
        }
        let never = futures::stream::pending::<pb::SubmitRecordRequest>();
        grpc.client_streaming::<_, pb::SubmitRecordRequest, pb::SubmitRecordResponse, _>(
            tonic::Request::new(never),
            http::uri::PathAndQuery::from_static("/transplant_audit.v1.IngestService/SubmitRecord"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("no message, no record")
    })
}

#[tokio::test]
async fn calls_that_never_send_their_message_do_not_shut_out_another_tenant() {
    use futures::StreamExt;

    let app = app_with(ServeOptions {
        max_concurrent_calls: 8,
        max_calls_per_tenant: 4,
        request_message_timeout: Duration::from_secs(3),
        ..ServeOptions::default()
    })
    .await;
    let token = app.key(Role::Hospital, Some("H-DE-666")).await;
    let mut hanging: futures::stream::FuturesUnordered<_> =
        (0..8).map(|_| bodiless_call(&app, &token)).collect();
    // Four hang on the server; the other four are refused at the hospital's quota.
    for _ in 0..4 {
        let refused = tokio::time::timeout(std::time::Duration::from_secs(10), hanging.next())
            .await
            .expect("calls past the hospital's quota are refused")
            .expect("a call")
            .expect("joined");
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert_eq!(reason(&refused), ("TENANT_TOO_MANY_CALLS".to_owned(), true));
    }
    let status = submit(&app, record_of("H-DE-666", "MORE-1"))
        .await
        .expect_err("the hospital is at its quota");
    assert_eq!(reason(&status).0, "TENANT_TOO_MANY_CALLS");
    submit(&app, record_of("H-DE-001", "OTHER-1"))
        .await
        .expect("another hospital's call goes through");
    app.audit
        .clone()
        .list_flags(pb::ListFlagsRequest::default())
        .await
        .expect("and an auditor's");
    // The four that hang are let go at the message deadline, their slots with them.
    while let Some(ended) = tokio::time::timeout(Duration::from_secs(20), hanging.next())
        .await
        .expect("the message deadline ends them")
    {
        let status = ended.expect("joined");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert_eq!(
            reason(&status),
            ("REQUEST_MESSAGE_TIMEOUT".to_owned(), false)
        );
    }
    submit(&app, record_of("H-DE-666", "MORE-2"))
        .await
        .expect("the hospital's slots came back");
    app.stop().await;
}

#[tokio::test]
async fn health_watch_needs_a_key_and_is_capped_while_check_stays_open() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let (database_url, auditor) = {
        let app = spawn_app().await;
        let auditor = app.auditor_token.clone();
        let url = app.database_url.clone();
        app.stop().await;
        (url, auditor)
    };
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let health_addr = probe.local_addr().expect("addr").to_string();
    drop(probe);
    let server = ServerProcess::start_with(
        &database_url,
        "info",
        &[("HEALTH_ADDR", &health_addr), ("MAX_HEALTH_WATCHES", "2")],
    )
    .await;
    for addr in [&server.addr, &health_addr] {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let check = HealthClient::new(channel.clone())
            .check(HealthCheckRequest::default())
            .await
            .expect("Check needs no key")
            .into_inner();
        assert_eq!(check.status, 1, "SERVING");
        let refused = HealthClient::new(channel.clone())
            .watch(HealthCheckRequest::default())
            .await
            .expect_err("Watch needs a key");
        assert_eq!(refused.code(), Code::Unauthenticated, "{addr}: {refused:?}");
    }
    // With a key: two watches at most, across both listeners.
    let mut watches = Vec::new();
    for addr in [&server.addr, &health_addr, &server.addr] {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let answer = HealthClient::new(InterceptedService::new(channel, Bearer::new(&auditor)))
            .watch(HealthCheckRequest::default())
            .await;
        watches.push(answer);
    }
    let refused = watches.pop().expect("three").expect_err("over the cap");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        reason(&refused),
        ("TOO_MANY_HEALTH_WATCHES".to_owned(), true)
    );
    for watch in watches {
        let first = watch
            .expect("a watch with a key")
            .into_inner()
            .message()
            .await
            .expect("a status")
            .expect("a status");
        assert_eq!(first.status, 1, "SERVING");
    }
    server.signal(libc::SIGTERM);
    let _ = server.drain().await;
}

#[tokio::test]
async fn a_stream_that_sends_nothing_ends_and_gives_its_slot_back() {
    let app = app_with(ServeOptions {
        max_concurrent_streams: 1,
        stream_idle_timeout: Duration::from_secs(1),
        ..ServeOptions::default()
    })
    .await;
    // Silent from the start, and silent after a record.
    let (silent_tx, mut silent) = idle_stream(&app.ingest).await.expect("opens");
    let status = tokio::time::timeout(Duration::from_secs(20), silent.message())
        .await
        .expect("the idle timeout ends it")
        .expect_err("ended by the server");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(reason(&status), ("STREAM_IDLE".to_owned(), false));
    drop(silent_tx);
    let (tx, mut acks) = reopen(&app).await;
    tx.send(pb::SubmitRecordsRequest {
        record: Some(kidney("IDLE-1")),
    })
    .await
    .expect("send");
    acks.message().await.expect("ack").expect("an ack");
    let status = tokio::time::timeout(Duration::from_secs(20), acks.message())
        .await
        .expect("the idle timeout ends it")
        .expect_err("ended by the server");
    assert_eq!(reason(&status).0, "STREAM_IDLE");
    drop(tx);
    let (tx, acks) = reopen(&app).await;
    drop((tx, acks));
    assert_eq!(app.count("records").await, 1, "what was acknowledged stays");
    app.stop().await;
}

#[tokio::test]
async fn a_stream_waiting_on_its_own_slow_batch_is_not_idle() {
    let app = app_with(ServeOptions {
        stream_idle_timeout: Duration::from_secs(1),
        ..ServeOptions::default()
    })
    .await;
    submit(&app, kidney("SLOW-0")).await.expect("stored");
    // The batch waits on a lock for longer than the idle timeout.
    let held = hold_key(&app.pool, "SLOW-0", "SLOW-1").await;
    let (tx, mut acks) = idle_stream(&app.ingest).await.expect("opens");
    tx.send(pb::SubmitRecordsRequest {
        record: Some(kidney("SLOW-1")),
    })
    .await
    .expect("send");
    until_waiting(&app.pool, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    held.rollback().await.expect("rollback");
    let ack = acks.message().await.expect("still open").expect("an ack");
    assert_eq!(ack.ack.expect("ack").outcome, pb::Outcome::Accepted as i32);
    tx.send(pb::SubmitRecordsRequest {
        record: Some(kidney("SLOW-2")),
    })
    .await
    .expect("send");
    acks.message().await.expect("still open").expect("an ack");
    drop(tx);
    assert!(acks.message().await.expect("a clean end").is_none());
    app.stop().await;
}

/// Opens a stream once the server has a slot for it again.
async fn reopen(
    app: &TestApp,
) -> (
    mpsc::Sender<pb::SubmitRecordsRequest>,
    tonic::Streaming<pb::SubmitRecordsResponse>,
) {
    for _ in 0..250 {
        match idle_stream(&app.ingest).await {
            Ok(stream) => return stream,
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the stream's slot never came back");
}

/// Reads from `stream` until the server closes it; false if it has not
/// within twenty seconds.
async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> bool {
    closed_by(
        stream,
        tokio::time::Instant::now() + Duration::from_secs(20),
    )
    .await
}

/// How many of `sockets` the server has not closed within twenty seconds.
async fn left_open(sockets: &mut [tokio::net::TcpStream]) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let closed =
        futures::future::join_all(sockets.iter_mut().map(|s| closed_by(s, deadline))).await;
    closed.into_iter().filter(|closed| !closed).count()
}

/// Reads from `stream` until the server closes it; false if it has not by `deadline`.
async fn closed_by(stream: &mut tokio::net::TcpStream, deadline: tokio::time::Instant) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {} // what the server says before it closes
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn idle_connections_past_the_cap_are_closed_and_clients_still_connect() {
    let app = app_with(ServeOptions {
        max_connections: 8,
        handshake_timeout: Duration::from_millis(500),
        ..ServeOptions::default()
    })
    .await;
    // The test's own client holds one slot; forty sockets that say nothing.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(
            tokio::net::TcpStream::connect(app.addr)
                .await
                .expect("connect"),
        );
    }
    assert_eq!(left_open(&mut idle).await, 0, "idle sockets still open");
    submit(&app, kidney("CONN-1"))
        .await
        .expect("the client connected before the flood was served throughout");
    let fresh = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .expect("uri")
        .connect()
        .await
        .expect("a new client connects");
    IngestServiceClient::new(InterceptedService::new(
        fresh,
        Bearer::new(&app.hospital_token),
    ))
    .submit_record(pb::SubmitRecordRequest {
        record: Some(kidney("CONN-2")),
    })
    .await
    .expect("and is served");
    app.stop().await;
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_dropped() {
    use tokio::io::AsyncWriteExt;
    let app = app_with(ServeOptions {
        keepalive_interval: Duration::from_millis(300),
        keepalive_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    })
    .await;
    let mut peer = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    // The preface and an empty SETTINGS frame: HTTP/2 begun, then silence.
    peer.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    peer.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .expect("settings");
    assert!(
        closed_by_server(&mut peer).await,
        "a connection whose pings go unanswered is closed"
    );
    app.stop().await;
}

#[tokio::test]
async fn memory_goes_back_after_a_flood_of_idle_connections() {
    let database_url = fresh_database().await;
    let token = {
        let app = spawn_app_on(&database_url, Default::default()).await;
        let token = app.hospital_token.clone();
        app.stop().await;
        token
    };
    let server = ServerProcess::start_with(
        &database_url,
        "info",
        &[("HANDSHAKE_TIMEOUT_SECS", "1"), ("MAX_CONNECTIONS", "256")],
    )
    .await;
    let mut ingest = IngestServiceClient::new(server.connect(&token).await);
    ingest
        .submit_record(pb::SubmitRecordRequest {
            record: Some(kidney("MEM-1")),
        })
        .await
        .expect("served before");
    let baseline = rss_kib(server.pid());
    let mut idle = Vec::new();
    // Fewer than the listener's backlog, so the kernel queues none for later.
    for _ in 0..1000 {
        match tokio::net::TcpStream::connect(&server.addr).await {
            Ok(socket) => idle.push(socket),
            Err(e) => panic!("connect: {e}"),
        }
    }
    let peak = rss_kib(server.pid());
    assert_eq!(
        left_open(&mut idle).await,
        0,
        "every idle connection is closed by the server"
    );
    drop(idle);
    let after = rss_kib(server.pid());
    eprintln!(
        "RSS {baseline} KiB before, {peak} KiB during, {after} KiB after 1000 idle connections"
    );
    assert!(
        after < baseline + 16 * 1024,
        "memory goes back: {baseline} KiB before, {after} KiB after"
    );
    ingest
        .submit_record(pb::SubmitRecordRequest {
            record: Some(kidney("MEM-2")),
        })
        .await
        .expect("served after");
    server.signal(libc::SIGTERM);
    let (status, _) = server.drain().await;
    assert!(status.success());
}

#[tokio::test]
async fn tls_connections_that_do_not_begin_http2_in_time_are_closed() {
    use tokio_rustls::rustls;

    let database_url = fresh_database().await;
    let token = {
        let app = spawn_app_on(&database_url, Default::default()).await;
        let token = app.auditor_token.clone();
        app.stop().await;
        token
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("server CA");
    let (cert, key) = ca.issue(&["localhost"]);
    let (cert, key) = (
        write(dir.path(), "server.pem", &cert),
        write(dir.path(), "server.key", &key),
    );
    let server = ServerProcess::start_with(
        &database_url,
        "info",
        &[
            ("TLS_CERT_FILE", cert.to_str().expect("utf-8")),
            ("TLS_KEY_FILE", key.to_str().expect("utf-8")),
            ("HANDSHAKE_TIMEOUT_SECS", "1"),
        ],
    )
    .await;
    // No handshake at all.
    let mut silent = tokio::net::TcpStream::connect(&server.addr)
        .await
        .expect("connect");
    // A handshake, then no HTTP/2.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            rustls_pki_types::CertificateDer::from_pem_slice(ca.pem().as_bytes())
                .expect("CA certificate"),
        )
        .expect("a root");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(&server.addr)
        .await
        .expect("connect");
    let mut handshaken = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().expect("name"), tcp)
        .await
        .expect("the handshake completes");
    assert!(
        closed_by_server(&mut silent).await,
        "no TLS handshake in time"
    );
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncReadExt;
        loop {
            match handshaken.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "no HTTP/2 preface in time");
    // A real client is served.
    let channel = crate::tls::tls_channel(&server, &ca, None)
        .await
        .expect("a TLS client connects");
    AuditServiceClient::new(InterceptedService::new(channel, Bearer::new(&token)))
        .list_flags(pb::ListFlagsRequest::default())
        .await
        .expect("and is served");
    server.signal(libc::SIGTERM);
    let _ = server.drain().await;
}

#[tokio::test]
async fn metrics_beyond_loopback_are_warned_about_at_start() {
    let database_url = fresh_database().await;
    spawn_app_on(&database_url, Default::default())
        .await
        .stop()
        .await;
    let warning = "metrics on a non-loopback address";
    for (metrics_addr, warned) in [("0.0.0.0:0", true), ("127.0.0.1:0", false)] {
        let server =
            ServerProcess::start_with(&database_url, "info", &[("METRICS_ADDR", metrics_addr)])
                .await;
        server.signal(libc::SIGTERM);
        let (_, log) = server.drain().await;
        let lines: Vec<&String> = log.iter().filter(|l| l.contains(warning)).collect();
        assert_eq!(
            lines.len(),
            usize::from(warned),
            "{metrics_addr}: {lines:?}"
        );
        assert!(lines.iter().all(|l| l.contains("\"WARN\"")), "{lines:?}");
    }
}
