//! Who may do what: the authorisation matrix through the real server, key
//! lifecycle, accountability, the two-auditor dismissal and the tamper-evident trail.

use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use transplant_audit::domain::Role;
use transplant_audit::wire::pb;
use transplant_audit::wire::pb::admin_service_client::AdminServiceClient;
use transplant_audit::wire::pb::audit_service_client::AuditServiceClient;
use transplant_audit::wire::pb::ingest_service_client::IngestServiceClient;
use transplant_audit::wire::pb::registry_service_client::RegistryServiceClient;

use crate::helpers::*;

/// Every method of the API, called with a harmless request.
const METHODS: &[&str] = &[
    "SubmitRecord",
    "SubmitRecords",
    "AmendRecord",
    "UpsertClinic",
    "GetClinic",
    "ListClinics",
    "ListFlags",
    "GetFlag",
    "UpdateFlagStatus",
    "GetRuleQuality",
    "WatchFlags",
    "Rescan",
    "CreateApiKey",
    "ListApiKeys",
    "RevokeApiKey",
    "VerifyAuditTrail",
];

/// The status code of one call with `channel`'s credentials (OK as `Code::Ok`).
async fn call(channel: Authed, method: &str) -> Code {
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    let mut ingest = IngestServiceClient::new(channel.clone());
    let mut registry = RegistryServiceClient::new(channel.clone());
    let mut audit = AuditServiceClient::new(channel.clone());
    let mut admin = AdminServiceClient::new(channel);
    match method {
        "SubmitRecord" => code(
            ingest
                .submit_record(pb::SubmitRecordRequest {
                    record: Some(kidney("M-1")),
                })
                .await
                .map(drop),
        ),
        "SubmitRecords" => code(
            ingest
                .submit_records(tokio_stream::iter(Vec::<pb::SubmitRecordsRequest>::new()))
                .await
                .map(drop),
        ),
        "AmendRecord" => code(
            ingest
                .amend_record(pb::AmendRecordRequest {
                    record: Some(kidney("M-1")),
                    reason: "x".into(),
                })
                .await
                .map(drop),
        ),
        "UpsertClinic" => code(
            registry
                .upsert_clinic(pb::UpsertClinicRequest {
                    clinic: Some(clinic("DE-M-01", "DE")),
                })
                .await
                .map(drop),
        ),
        "GetClinic" => code(
            registry
                .get_clinic(pb::GetClinicRequest {
                    clinic_id: "DE-M-01".into(),
                    include_history: false,
                })
                .await
                .map(drop),
        ),
        "ListClinics" => code(
            registry
                .list_clinics(pb::ListClinicsRequest::default())
                .await
                .map(drop),
        ),
        "ListFlags" => code(
            audit
                .list_flags(pb::ListFlagsRequest::default())
                .await
                .map(drop),
        ),
        "GetFlag" => code(
            audit
                .get_flag(pb::GetFlagRequest {
                    flag_id: "1".into(),
                })
                .await
                .map(drop),
        ),
        "UpdateFlagStatus" => code(
            audit
                .update_flag_status(pb::UpdateFlagStatusRequest::default())
                .await
                .map(drop),
        ),
        "GetRuleQuality" => code(
            audit
                .get_rule_quality(pb::GetRuleQualityRequest::default())
                .await
                .map(drop),
        ),
        "WatchFlags" => code(
            audit
                .watch_flags(pb::WatchFlagsRequest::default())
                .await
                .map(drop),
        ),
        "Rescan" => code(
            admin
                .rescan(pb::RescanRequest {
                    dry_run: true,
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        "CreateApiKey" => code(
            admin
                .create_api_key(pb::CreateApiKeyRequest::default())
                .await
                .map(drop),
        ),
        "ListApiKeys" => code(
            admin
                .list_api_keys(pb::ListApiKeysRequest::default())
                .await
                .map(drop),
        ),
        "RevokeApiKey" => code(
            admin
                .revoke_api_key(pb::RevokeApiKeyRequest {
                    key_id: "000000000000".into(),
                })
                .await
                .map(drop),
        ),
        "VerifyAuditTrail" => code(
            admin
                .verify_audit_trail(pb::VerifyAuditTrailRequest::default())
                .await
                .map(drop),
        ),
        other => panic!("unknown method {other}"),
    }
}

fn allowed(role: Role, method: &str) -> bool {
    match role {
        Role::Hospital => matches!(method, "SubmitRecord" | "SubmitRecords" | "AmendRecord"),
        Role::Auditor => {
            matches!(
                method,
                "GetClinic"
                    | "ListClinics"
                    | "ListFlags"
                    | "GetFlag"
                    | "UpdateFlagStatus"
                    | "GetRuleQuality"
                    | "WatchFlags"
            )
        }
        Role::Admin => matches!(
            method,
            "UpsertClinic"
                | "GetClinic"
                | "ListClinics"
                | "Rescan"
                | "CreateApiKey"
                | "ListApiKeys"
                | "RevokeApiKey"
                | "VerifyAuditTrail"
        ),
    }
}

#[tokio::test]
async fn every_cell_of_the_authorisation_matrix() {
    let app = spawn_app().await;
    let hospital = app.key(Role::Hospital, Some(DEFAULT_HOSPITAL)).await;
    let revoked = app.key(Role::Admin, None).await;
    let revoked_id = revoked.split('_').nth(1).expect("key id").to_owned();
    app.store.revoke_key(&revoked_id).await.expect("revoke");
    let expired = app.key(Role::Admin, None).await;
    sqlx::query("UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE key_id = $1")
        .bind(expired.split('_').nth(1).expect("key id"))
        .execute(&app.pool)
        .await
        .expect("expire");
    let mut forged = app.admin_token.clone();
    forged.pop();
    forged.push(if app.admin_token.ends_with('A') {
        'B'
    } else {
        'A'
    });

    let mut wrong = Vec::new();
    let no_key = InterceptedService::new(app.channel.clone(), Bearer::new("not-a-key"));
    for (name, channel) in [
        ("malformed", no_key),
        ("revoked", app.authed(&revoked)),
        ("expired", app.authed(&expired)),
        ("forged", app.authed(&forged)),
    ] {
        for method in METHODS {
            let got = call(channel.clone(), method).await;
            if got != Code::Unauthenticated {
                wrong.push(format!("{name} key on {method}: {got:?}"));
            }
        }
    }
    for (role, token) in [
        (Role::Hospital, &hospital),
        (Role::Auditor, &app.auditor_token),
        (Role::Admin, &app.admin_token),
    ] {
        for method in METHODS {
            let got = call(app.authed(token), method).await;
            let denied = matches!(got, Code::PermissionDenied | Code::Unauthenticated);
            if allowed(role, method) == denied {
                wrong.push(format!("{role} on {method}: {got:?}"));
            }
            if !allowed(role, method) && got != Code::PermissionDenied {
                wrong.push(format!(
                    "{role} on {method}: {got:?}, expected PERMISSION_DENIED"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "matrix cells wrong:\n{}",
        wrong.join("\n")
    );
    assert_eq!(
        app.count("clinic_versions").await,
        1,
        "only the admin's upsert went through"
    );
    app.stop().await;
}

#[tokio::test]
async fn without_any_metadata_only_health_answers() {
    let app = spawn_app().await;
    let status = IngestServiceClient::new(app.channel.clone())
        .submit_record(pb::SubmitRecordRequest {
            record: Some(kidney("NOKEY")),
        })
        .await
        .expect_err("no key");
    assert_eq!(status.code(), Code::Unauthenticated);
    let health = tonic_health::pb::health_client::HealthClient::new(app.channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await;
    assert!(health.is_ok(), "health needs no key: {health:?}");
    assert_eq!(app.count("records").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_hospital_key_submits_only_for_its_hospital() {
    let app = spawn_app().await;
    let mut theirs = kidney("OTHER-1");
    theirs.hospital_id = "H-DE-002".into();
    let status = app
        .ingest
        .clone()
        .submit_record(pb::SubmitRecordRequest {
            record: Some(theirs.clone()),
        })
        .await
        .expect_err("another hospital");
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = app
        .ingest
        .clone()
        .amend_record(pb::AmendRecordRequest {
            record: Some(theirs),
            reason: "x".into(),
        })
        .await
        .expect_err("another hospital");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        app.count("records").await,
        0,
        "nothing stored, nothing rewritten"
    );
    app.stop().await;
}

#[tokio::test]
async fn api_keys_are_listed_a_page_at_a_time() {
    let app = spawn_app().await;
    let mut admin = app.admin.clone();
    for i in 0..5 {
        admin
            .create_api_key(pb::CreateApiKeyRequest {
                role: pb::Role::Auditor as i32,
                description: format!("auditor {i}"),
                principal: format!("auditor-{i}@registry.test"),
                ..Default::default()
            })
            .await
            .expect("create");
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_api_keys(pb::ListApiKeysRequest {
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .expect("a page")
            .into_inner();
        assert!(page.keys.len() <= 2);
        seen.extend(page.keys.into_iter().map(|k| k.description));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let auditors: Vec<&String> = seen.iter().filter(|d| d.starts_with("auditor")).collect();
    assert_eq!(
        auditors,
        [
            "auditor 4",
            "auditor 3",
            "auditor 2",
            "auditor 1",
            "auditor 0"
        ],
        "each key once, newest first"
    );
    for (request, field) in [
        (
            pb::ListApiKeysRequest {
                page_token: "forged".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListApiKeysRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
    ] {
        let status = admin.list_api_keys(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), [field]);
    }
    app.stop().await;
}

#[tokio::test]
async fn admins_create_list_and_revoke_keys_and_revocation_is_immediate() {
    let app = spawn_app().await;
    let mut admin = app.admin.clone();
    let created = admin
        .create_api_key(pb::CreateApiKeyRequest {
            role: pb::Role::Hospital as i32,
            hospital_id: "H-DE-001".into(),
            description: "the Charité's integration".into(),
            expires_at: None,
            principal: String::new(),
        })
        .await
        .expect("create")
        .into_inner();
    let key = created.key.expect("key");
    assert!(created.token.starts_with(&format!("ta_{}_", key.key_id)));
    let mut hospital = IngestServiceClient::new(app.authed(&created.token));
    hospital
        .submit_record(pb::SubmitRecordRequest {
            record: Some(kidney("K-1")),
        })
        .await
        .expect("the new key works");

    let listed = admin
        .list_api_keys(pb::ListApiKeysRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(
        listed
            .keys
            .iter()
            .any(|k| k.key_id == key.key_id && k.hospital_id == "H-DE-001")
    );
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT secret_hash FROM api_keys")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    let secret = created.token.splitn(3, '_').nth(2).expect("secret");
    let dump: String =
        sqlx::query_scalar("SELECT string_agg(row_to_json(k)::text, ' ') FROM api_keys k")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(
        !dump.contains(secret) && !stored.is_empty(),
        "keys are stored only as hashes"
    );

    let revoked = admin
        .revoke_api_key(pb::RevokeApiKeyRequest {
            key_id: key.key_id.clone(),
        })
        .await
        .expect("revoke")
        .into_inner();
    assert!(revoked.key.expect("key").revoked_at.is_some());
    let status = hospital
        .submit_record(pb::SubmitRecordRequest {
            record: Some(kidney("K-2")),
        })
        .await
        .expect_err("revoked");
    assert_eq!(status.code(), Code::Unauthenticated);

    for (request, field) in [
        (
            pb::CreateApiKeyRequest {
                role: pb::Role::Hospital as i32,
                ..Default::default()
            },
            "hospital_id",
        ),
        (
            pb::CreateApiKeyRequest {
                role: pb::Role::Auditor as i32,
                hospital_id: "H-1".into(),
                principal: "a.rossi@registry.test".into(),
                ..Default::default()
            },
            "hospital_id",
        ),
        (pb::CreateApiKeyRequest::default(), "role"),
        (
            pb::CreateApiKeyRequest {
                role: pb::Role::Admin as i32,
                expires_at: Some(ts("2001-01-01T00:00:00Z")),
                principal: "a.rossi@registry.test".into(),
                ..Default::default()
            },
            "expires_at",
        ),
        (
            pb::CreateApiKeyRequest {
                role: pb::Role::Auditor as i32,
                ..Default::default()
            },
            "principal",
        ),
        (
            pb::CreateApiKeyRequest {
                role: pb::Role::Auditor as i32,
                principal: "nul\0in a name".into(),
                ..Default::default()
            },
            "principal",
        ),
    ] {
        let status = admin.create_api_key(request).await.expect_err("invalid");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), [field]);
    }
    let status = admin
        .revoke_api_key(pb::RevokeApiKeyRequest {
            key_id: "ffffffffffff".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    app.stop().await;
}

/// A living heart donor: LIVING_DONOR_ORGAN, a CRITICAL flag.
async fn critical_flag(app: &TestApp) -> pb::Flag {
    let mut r = kidney("CRIT-1");
    r.organ = pb::Organ::Heart as i32;
    r.laterality = pb::Laterality::NotApplicable as i32;
    submit(app, r).await.expect("accepted");
    let flags = all_flags(
        app,
        pb::ListFlagsRequest {
            rule_id: "LIVING_DONOR_ORGAN".into(),
            ..Default::default()
        },
    )
    .await;
    let flag = flags.into_iter().next().expect("a flag");
    assert_eq!(flag.severity, pb::Severity::Critical as i32);
    flag
}

fn step(flag: &pb::Flag, status: pb::FlagStatus, note: &str) -> pb::UpdateFlagStatusRequest {
    pb::UpdateFlagStatusRequest {
        flag_id: flag.flag_id.clone(),
        status: status as i32,
        note: note.into(),
        etag: flag.etag.clone(),
    }
}

#[tokio::test]
async fn dismissing_a_critical_flag_takes_two_auditors() {
    let app = spawn_app().await;
    let flag = critical_flag(&app).await;
    let mut alice = app.audit.clone();
    let bob_token = app.key(Role::Auditor, None).await;
    let mut bob = AuditServiceClient::new(app.authed(&bob_token));

    let flag = alice
        .update_flag_status(step(&flag, pb::FlagStatus::InReview, ""))
        .await
        .unwrap()
        .into_inner()
        .flag
        .unwrap();
    let proposed = alice
        .update_flag_status(step(
            &flag,
            pb::FlagStatus::Dismissed,
            "the hospital sent the consent papers",
        ))
        .await
        .expect("a proposal")
        .into_inner()
        .flag
        .unwrap();
    assert_eq!(
        proposed.status,
        pb::FlagStatus::InReview as i32,
        "one auditor alone cannot dismiss"
    );
    let alice_principal = sqlx::query_scalar::<_, String>(
        "SELECT p.name FROM api_keys k JOIN principals p ON p.id = k.principal_id WHERE k.key_id = $1",
    )
    .bind(key_id(&app.auditor_token))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(proposed.dismissal_proposed_by, alice_principal);

    let status = alice
        .update_flag_status(step(
            &proposed,
            pb::FlagStatus::Dismissed,
            "approving my own",
        ))
        .await
        .expect_err("the proposer cannot approve");
    assert_eq!(status.code(), Code::FailedPrecondition);

    let dismissed = bob
        .update_flag_status(step(&proposed, pb::FlagStatus::Dismissed, "agreed"))
        .await
        .expect("a second auditor approves")
        .into_inner()
        .flag
        .unwrap();
    assert_eq!(dismissed.status, pb::FlagStatus::Dismissed as i32);
    assert!(dismissed.dismissal_proposed_by.is_empty());

    let case = alice
        .get_flag(pb::GetFlagRequest {
            flag_id: flag.flag_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let steps: Vec<(String, bool, i32)> = case
        .history
        .iter()
        .skip(1)
        .map(|e| (e.actor.clone(), e.dismissal_proposal, e.to_status))
        .collect();
    let alice_id = key_id(&app.auditor_token);
    assert_eq!(
        steps,
        [
            (alice_id.clone(), false, pb::FlagStatus::InReview as i32),
            (alice_id, true, pb::FlagStatus::InReview as i32),
            (key_id(&bob_token), false, pb::FlagStatus::Dismissed as i32),
        ],
        "every step after the RAISED one is recorded with the auditor's key id"
    );
    let principals: Vec<&str> = case.history.iter().map(|e| e.principal.as_str()).collect();
    assert_eq!(principals[0], "rules");
    assert_ne!(principals[2], principals[3], "two principals dismissed it");
    app.stop().await;
}

#[tokio::test]
async fn opening_a_case_is_recorded_with_the_principal_key_and_trace_ids() {
    let app = spawn_app().await;
    let flag = critical_flag(&app).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(pb::GetFlagRequest {
        flag_id: flag.flag_id.clone(),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-00f067aa0ba902b7-01").parse().unwrap(),
    );
    app.audit
        .clone()
        .get_flag(request)
        .await
        .expect("open the case");
    let rows: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT key_id, resource_id, trace_id, own_trace_id FROM access_log WHERE action = 'GetFlag'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (key, resource, callers, own) = &rows[0];
    assert_eq!(
        (key.as_str(), resource.as_str(), callers.as_deref()),
        (
            key_id(&app.auditor_token).as_str(),
            flag.flag_id.as_str(),
            Some(trace)
        )
    );
    let own = own.as_deref().expect("the service's own id of the call");
    assert!(own.len() == 32 && own != trace, "{own}");
    let principal: String =
        sqlx::query_scalar("SELECT principal FROM access_log WHERE action = 'GetFlag'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(principal.starts_with("tester-"), "{principal}");
    let update = sqlx::query("UPDATE access_log SET key_id = 'someone-else'")
        .execute(&app.pool)
        .await;
    assert!(update.is_err(), "the access log is append-only");
    app.stop().await;
}

async fn verify(app: &TestApp) -> pb::VerifyAuditTrailResponse {
    app.admin
        .clone()
        .verify_audit_trail(pb::VerifyAuditTrailRequest::default())
        .await
        .expect("verify")
        .into_inner()
}

#[tokio::test]
async fn concurrent_amendments_of_one_record_each_archive_the_version_they_replace() {
    let app = spawn_app().await;
    submit(&app, kidney("V-2")).await.unwrap();
    // Different donors: the two amendments take no advisory lock in common,
    // so only the record's row orders them.
    let mut right = kidney("V-2");
    right.laterality = pb::Laterality::Right as i32;
    let mut other_donor = kidney("V-2");
    other_donor.donor = kidney("V-3").donor;

    // The row held until both amendments wait, so that they meet.
    let mut holder = app.pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM records WHERE external_record_id = 'V-2' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let amendments = async {
        tokio::join!(
            amend(&app, right, "side"),
            amend(&app, other_donor, "donor mistyped")
        )
    };
    let release = async {
        until_waiting(&app.pool, 2).await;
        holder.rollback().await.unwrap();
    };
    let ((a, b), ()) = tokio::join!(amendments, release);
    let mut versions = [a.unwrap().version, b.unwrap().version];
    versions.sort_unstable();
    assert_eq!(versions, [2, 3]);
    assert_eq!(app.count("record_versions").await, 2, "versions 1 and 2");
    let report = verify(&app).await;
    assert!(report.intact, "{report:?}");
    assert_eq!(report.record_versions_checked, 3, "{report:?}");
    app.stop().await;
}
