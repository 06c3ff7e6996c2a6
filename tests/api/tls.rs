//! TLS and mutual TLS on the real binary: certificates from files, a hospital
//! key bound to its hospital's client certificate, and plaintext refused
//! where it was not asked for.

use std::path::Path;

use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use transplant_audit::wire::pb;
use transplant_audit::wire::pb::audit_service_client::AuditServiceClient;
use transplant_audit::wire::pb::ingest_service_client::IngestServiceClient;

use crate::helpers::*;

/// A TLS client of `server` trusting `ca`, presenting `identity` if given.
pub async fn tls_channel(
    server: &ServerProcess,
    ca: &Ca,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{}", server.addr))
        .expect("uri")
        .tls_config(tls)?
        .connect()
        .await
}

/// A server process with TLS from files; mutual when `client_ca` is given.
pub async fn tls_server(
    database_url: &str,
    dir: &Path,
    server_ca: &Ca,
    client_ca: Option<&Ca>,
) -> ServerProcess {
    let (cert, key) = server_ca.issue(&["localhost"]);
    let cert = write(dir, "server.pem", &cert);
    let key = write(dir, "server.key", &key);
    let mut env = vec![
        ("TLS_CERT_FILE", cert.to_str().expect("utf-8").to_owned()),
        ("TLS_KEY_FILE", key.to_str().expect("utf-8").to_owned()),
    ];
    if let Some(ca) = client_ca {
        let ca = write(dir, "clients.pem", &ca.pem());
        env.push(("TLS_CLIENT_CA_FILE", ca.to_str().expect("utf-8").to_owned()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ServerProcess::start_with(database_url, "info", &env).await
}

/// A migrated database and the tokens of its keys (hospital, auditor).
async fn database_with_keys() -> (String, String, String) {
    let database_url = fresh_database().await;
    let app = spawn_app_on(&database_url, Default::default()).await;
    let tokens = (app.hospital_token.clone(), app.auditor_token.clone());
    app.stop().await;
    (database_url, tokens.0, tokens.1)
}

async fn submit(channel: Channel, token: &str, id: &str) -> Result<(), tonic::Status> {
    IngestServiceClient::new(InterceptedService::new(channel, Bearer::new(token)))
        .submit_record(pb::SubmitRecordRequest {
            record: Some(kidney(id)),
        })
        .await
        .map(drop)
}

#[tokio::test]
async fn tls_serves_tls_clients_and_no_plaintext() {
    let (database_url, hospital, _) = database_with_keys().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("server CA");
    let server = tls_server(&database_url, dir.path(), &ca, None).await;

    let channel = tls_channel(&server, &ca, None).await.expect("TLS connects");
    submit(channel, &hospital, "TLS-1")
        .await
        .expect("accepted over TLS");

    let plaintext = Channel::from_shared(format!("http://{}", server.addr))
        .expect("uri")
        .connect()
        .await
        .expect("TCP connects");
    let refused = submit(plaintext, &hospital, "TLS-2")
        .await
        .expect_err("no plaintext on a TLS listener");
    assert_ne!(refused.code(), Code::Ok);

    let stranger = Ca::new("another CA");
    assert!(
        tls_channel(&server, &stranger, None).await.is_err()
            || submit(
                tls_channel(&server, &stranger, None)
                    .await
                    .expect("channel"),
                &hospital,
                "TLS-3"
            )
            .await
            .is_err(),
        "a client that does not trust the server's CA gets nowhere"
    );
    server.signal(libc::SIGTERM);
    let _ = server.drain().await;
}

#[tokio::test]
async fn mutual_tls_binds_a_hospital_key_to_its_hospitals_certificate() {
    let (database_url, hospital, auditor) = database_with_keys().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let server_ca = Ca::new("server CA");
    let clients = Ca::new("client CA");
    let server = tls_server(&database_url, dir.path(), &server_ca, Some(&clients)).await;

    let own = clients.issue(&[DEFAULT_HOSPITAL]);
    let channel = tls_channel(&server, &server_ca, Some(&own))
        .await
        .expect("connects");
    submit(channel, &hospital, "MTLS-1")
        .await
        .expect("the hospital's key with its own certificate");

    let other = clients.issue(&["H-DE-009"]);
    let channel = tls_channel(&server, &server_ca, Some(&other))
        .await
        .expect("connects");
    let denied = submit(channel.clone(), &hospital, "MTLS-2")
        .await
        .expect_err("another hospital's certificate");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    // Auditors are not bound to a hospital: any client certificate will do.
    AuditServiceClient::new(InterceptedService::new(channel, Bearer::new(&auditor)))
        .list_flags(pb::ListFlagsRequest::default())
        .await
        .expect("an auditor with a valid client certificate");

    // No certificate, or one from another CA: the handshake fails.
    let forged = Ca::new("forger").issue(&[DEFAULT_HOSPITAL]);
    for identity in [None, Some(&forged)] {
        let outcome = match tls_channel(&server, &server_ca, identity).await {
            Ok(channel) => submit(channel, &hospital, "MTLS-3").await,
            Err(_) => Err(tonic::Status::unavailable("handshake failed")),
        };
        let refused = outcome.expect_err("no valid client certificate");
        assert_ne!(
            refused.code(),
            Code::PermissionDenied,
            "refused at the handshake"
        );
    }
    server.signal(libc::SIGTERM);
    let (_, log) = server.drain().await;
    assert!(
        log.iter()
            .any(|line| line.contains("the client certificate is not its hospital's")),
        "the refusal is logged"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM records")
        .fetch_one(&sqlx::PgPool::connect(&database_url).await.expect("connect"))
        .await
        .expect("count");
    assert_eq!(stored, 1, "only the bound submission was stored");
}

#[tokio::test]
async fn plaintext_beyond_loopback_needs_saying_so() {
    let database_url = fresh_database().await;
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_transplant-audit"))
        .env("DATABASE_URL", &database_url)
        .env("FINGERPRINT_KEY", test_key_hex())
        .env("SIGNING_KEY", test_signing_key_hex())
        .env("LISTEN_ADDR", "0.0.0.0:0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env_remove("INSECURE_PLAINTEXT")
        .env_remove("TLS_CERT_FILE")
        .output()
        .expect("run");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("refusing plaintext gRPC"), "{stderr}");

    let server = ServerProcess::start_with(
        &database_url,
        "info",
        &[("LISTEN_ADDR", "0.0.0.0:0"), ("INSECURE_PLAINTEXT", "true")],
    )
    .await;
    assert!(
        server
            .log
            .iter()
            .any(|line| line.contains("WARN") && line.contains("INSECURE_PLAINTEXT")),
        "a warning says so: {:?}",
        server.log
    );
    server.signal(libc::SIGTERM);
    let _ = server.drain().await;
}
