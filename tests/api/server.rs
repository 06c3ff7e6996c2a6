//! What ops and generic clients rely on: reflection, health, graceful shutdown.

use std::time::Duration;

use prost::Message;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::{v1, v1alpha};
use transplant_audit::rules::RulesConfig;
use transplant_audit::store;
use transplant_audit::wire::pb;

use crate::helpers::*;

const OUR_SERVICES: [&str; 3] = [
    "transplant_audit.v1.IngestService",
    "transplant_audit.v1.RegistryService",
    "transplant_audit.v1.AuditService",
];

/// Served on the federation listener only.
const FEDERATION: &str = "transplant_audit.v1.FederationService";

#[tokio::test]
async fn reflection_v1_lists_services_and_resolves_their_files() {
    let app = spawn_app().await;
    let mut client =
        v1::server_reflection_client::ServerReflectionClient::new(app.authed(&app.auditor_token));
    let requests = vec![
        v1::ServerReflectionRequest {
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
            ..Default::default()
        },
        v1::ServerReflectionRequest {
            message_request: Some(
                v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                    "transplant_audit.v1.IngestService".into(),
                ),
            ),
            ..Default::default()
        },
    ];
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let Some(Ok(list)) = answers.next().await else {
        panic!("no list answer")
    };
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        list.message_response
    else {
        panic!("unexpected answer to ListServices")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in OUR_SERVICES.iter().chain(&["grpc.health.v1.Health"]) {
        assert!(
            names.iter().any(|n| n == service),
            "{service} not listed in {names:?}"
        );
    }
    // The federation service has a listener of its own; this one does
    // not serve it, so its reflection neither lists nor describes it.
    assert!(
        !names.iter().any(|n| n == FEDERATION),
        "{FEDERATION} listed in {names:?}"
    );
    let ingest = single_file(answers.next().await);
    assert_eq!(ingest.name(), "transplant_audit/v1/ingest.proto");
    let request = v1::ServerReflectionRequest {
        message_request: Some(
            v1::server_reflection_request::MessageRequest::FileContainingSymbol(FEDERATION.into()),
        ),
        ..Default::default()
    };
    let mut answer = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    // tonic-reflection ends the stream with NOT_FOUND for an unknown symbol.
    match answer.next().await {
        Some(Err(status)) => assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}"),
        Some(Ok(v1::ServerReflectionResponse {
            message_response:
                Some(v1::server_reflection_response::MessageResponse::ErrorResponse(e)),
            ..
        })) => assert_eq!(e.error_code, tonic::Code::NotFound as i32),
        other => panic!("{FEDERATION} described: {other:?}"),
    }
    // Clients then fetch each import by name: every one must resolve, or
    // acknowledgements and their errors cannot be decoded.
    for dependency in &ingest.dependency {
        let request = v1::ServerReflectionRequest {
            message_request: Some(
                v1::server_reflection_request::MessageRequest::FileByFilename(dependency.clone()),
            ),
            ..Default::default()
        };
        let mut answer = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(single_file(answer.next().await).name(), dependency);
    }
    for import in [
        "google/rpc/status.proto",
        "transplant_audit/v1/record.proto",
    ] {
        assert!(
            ingest.dependency.iter().any(|d| d == import),
            "{import} not imported"
        );
    }
    app.stop().await;
}

fn single_file(
    answer: Option<Result<v1::ServerReflectionResponse, tonic::Status>>,
) -> prost_types::FileDescriptorProto {
    let Some(Ok(v1::ServerReflectionResponse {
        message_response:
            Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)),
        ..
    })) = answer
    else {
        panic!("expected a file descriptor answer, got {answer:?}")
    };
    let first = files.file_descriptor_proto.first().expect("a file");
    prost_types::FileDescriptorProto::decode(first.as_slice()).expect("a descriptor")
}

#[tokio::test]
async fn reflection_v1alpha_lists_services_for_older_clients() {
    let app = spawn_app().await;
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(
        app.authed(&app.auditor_token),
    );
    let request = v1alpha::ServerReflectionRequest {
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
        ..Default::default()
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(Ok(answer)) = answers.next().await else {
        panic!("no answer")
    };
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("unexpected answer")
    };
    for service in OUR_SERVICES {
        assert!(
            list.service.iter().any(|s| s.name == service),
            "{service} not listed"
        );
    }
    assert!(!list.service.iter().any(|s| s.name == FEDERATION));
    app.stop().await;
}

async fn health_of(app: &TestApp, service: &str) -> i32 {
    HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status
}

/// Polls health until it reports `want` (the watcher runs every 2 s).
async fn wait_for_health(app: &TestApp, service: &str, want: ServingStatus) {
    for _ in 0..50 {
        if health_of(app, service).await == want as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("health of {service:?} never became {want:?}");
}

#[tokio::test]
async fn health_serves_while_the_database_answers() {
    let app = spawn_app().await;
    wait_for_health(&app, "", ServingStatus::Serving).await;
    wait_for_health(
        &app,
        "transplant_audit.v1.IngestService",
        ServingStatus::Serving,
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn without_a_database_health_is_not_serving_and_calls_are_unavailable() {
    let database_url = fresh_database().await;
    let app = spawn_app_on(&database_url, RulesConfig::default()).await;
    wait_for_health(&app, "", ServingStatus::Serving).await;
    // Take the database away behind the server's back.
    let admin_pool = app.pool.clone();
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&admin_pool)
        .await
        .unwrap();
    admin_pool.close().await;
    let admin = database_url.replace(&format!("/{name}"), "/postgres");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();

    wait_for_health(&app, "", ServingStatus::NotServing).await;
    let status = submit(&app, kidney("R-1"))
        .await
        .expect_err("no database, no ack");
    assert!(
        matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Internal
        ),
        "unexpected {status:?}"
    );
    assert!(
        !status.message().contains("database \""),
        "database error text leaked: {status:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn shutdown_lets_an_open_stream_finish() {
    let app = spawn_app().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut acks = app
        .ingest
        .clone()
        .submit_records(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    tx.send(pb::SubmitRecordsRequest {
        record: Some(kidney("S-1")),
    })
    .await
    .unwrap();
    let first = acks.next().await.expect("first ack").expect("ok");
    assert_eq!(first.ack.unwrap().outcome, pb::Outcome::Accepted as i32);

    let pool = app.pool.clone();
    let stopping = tokio::spawn(app.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !stopping.is_finished(),
        "the server stopped with a call in flight"
    );

    tx.send(pb::SubmitRecordsRequest {
        record: Some(kidney("S-2")),
    })
    .await
    .unwrap();
    let second = acks.next().await.expect("second ack").expect("ok");
    assert_eq!(second.ack.unwrap().outcome, pb::Outcome::Accepted as i32);
    drop(tx);
    assert!(
        acks.next().await.is_none(),
        "the stream ends when the client closes it"
    );
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("server stopped")
        .unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM records")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 2);
}

#[tokio::test]
async fn processes_creating_one_database_at_once_all_succeed() {
    // Two commands starting at once on a fresh machine (the server and
    // `keys create`) both create the local database.
    let (admin, prefix) = unused_database_name().await;
    for round in 0..3 {
        let name = format!("{prefix}_{round}");
        let creating = (0..6).map(|_| store::create_database_if_missing(admin, &name));
        for created in futures::future::join_all(creating).await {
            created.unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
}
