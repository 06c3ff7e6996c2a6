//! Tests of registry: versioned clinic entries, validation, listing, and the
//! registry's effect on the clinic rules.

use std::collections::HashSet;

use tonic::Code;

use transplant_audit::wire::pb;

use crate::helpers::*;

async fn upsert(
    app: &TestApp,
    entry: pb::Clinic,
) -> Result<pb::UpsertClinicResponse, tonic::Status> {
    app.registry
        .clone()
        .upsert_clinic(pb::UpsertClinicRequest {
            clinic: Some(entry),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn upserted(app: &TestApp, entry: pb::Clinic) -> pb::UpsertClinicResponse {
    let id = entry.clinic_id.clone();
    upsert(app, entry)
        .await
        .unwrap_or_else(|s| panic!("upserting {id}: {s:?}"))
}

async fn get(
    app: &TestApp,
    clinic_id: &str,
    include_history: bool,
) -> Result<pb::GetClinicResponse, tonic::Status> {
    app.registry
        .clone()
        .get_clinic(pb::GetClinicRequest {
            clinic_id: clinic_id.into(),
            include_history,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn list(
    app: &TestApp,
    request: pb::ListClinicsRequest,
) -> Result<pb::ListClinicsResponse, tonic::Status> {
    app.registry
        .clone()
        .list_clinics(request)
        .await
        .map(tonic::Response::into_inner)
}

/// (version, name) of every stored version of a clinic, oldest first.
async fn stored_versions(app: &TestApp, clinic_id: &str) -> Vec<(i32, String)> {
    sqlx::query_as(
        "SELECT version, name FROM clinic_versions WHERE clinic_id = $1 ORDER BY version",
    )
    .bind(clinic_id)
    .fetch_all(&app.pool)
    .await
    .expect("clinic versions")
}

async fn current_version(app: &TestApp, clinic_id: &str) -> Option<i32> {
    sqlx::query_scalar("SELECT current_version FROM clinics WHERE clinic_id = $1")
        .bind(clinic_id)
        .fetch_optional(&app.pool)
        .await
        .expect("clinics row")
}

/// The entry as the service returns it: without the output-only fields.
fn content(c: &pb::Clinic) -> pb::Clinic {
    pb::Clinic {
        version: 0,
        recorded_at: None,
        ..c.clone()
    }
}

/// Every clinic id a ListClinics walk returns, following page tokens.
async fn walk(app: &TestApp, mut request: pb::ListClinicsRequest) -> (Vec<String>, Vec<usize>) {
    let mut ids = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let page = list(app, request.clone()).await.expect("list clinics");
        sizes.push(page.clinics.len());
        ids.extend(page.clinics.into_iter().map(|c| c.clinic_id));
        if page.next_page_token.is_empty() {
            return (ids, sizes);
        }
        assert!(sizes.len() < 20, "pagination does not end");
        request.page_token = page.next_page_token;
    }
}

// ---------------------------------------------------------------- versions

#[tokio::test]
async fn upsert_creates_version_one() {
    let app = spawn_app().await;
    let entry = clinic("DE-BER-01", "DE");
    let response = upserted(&app, entry.clone()).await;
    assert!(response.changed, "a new clinic is a change");
    let stored = response.clinic.expect("stored entry");
    assert_eq!(stored.version, 1);
    assert!(stored.recorded_at.is_some(), "recorded_at is set");
    assert_eq!(content(&stored), entry, "the entry is stored as sent");
    assert_eq!(
        stored_versions(&app, "DE-BER-01").await,
        [(1, entry.name.clone())]
    );
    assert_eq!(current_version(&app, "DE-BER-01").await, Some(1));

    let read = get(&app, "DE-BER-01", true).await.expect("get clinic");
    assert_eq!(
        read.clinic.as_ref(),
        Some(&stored),
        "GetClinic returns the stored entry"
    );
    assert!(
        read.history.is_empty(),
        "no earlier versions: {:?}",
        read.history
    );
}

#[tokio::test]
async fn a_changed_entry_becomes_version_two_and_version_one_is_kept() {
    let app = spawn_app().await;
    let v1 = clinic("DE-BER-01", "DE");
    let first = upserted(&app, v1.clone()).await.clinic.expect("v1");
    let mut v2 = v1.clone();
    v2.name = "Charité transplant centre".into();
    v2.licensed_organs = vec![pb::Organ::Kidney as i32, pb::Organ::Liver as i32];
    v2.status = pb::ClinicStatus::Suspended as i32;
    v2.status_effective_from = Some(ts("2025-06-01T00:00:00Z"));
    let response = upserted(&app, v2.clone()).await;
    assert!(response.changed, "a changed entry is a change");
    let second = response.clinic.expect("v2");
    assert_eq!(second.version, 2);
    assert_eq!(content(&second), v2);

    let read = get(&app, "DE-BER-01", true).await.expect("get clinic");
    assert_eq!(read.clinic.as_ref(), Some(&second), "version 2 is current");
    assert_eq!(
        read.history,
        std::slice::from_ref(&first),
        "version 1 is in the history, unchanged"
    );
    let without = get(&app, "DE-BER-01", false).await.expect("get clinic");
    assert_eq!(without.clinic.as_ref(), Some(&second));
    assert!(without.history.is_empty(), "history only on request");

    assert_eq!(
        stored_versions(&app, "DE-BER-01").await,
        [(1, v1.name.clone()), (2, v2.name.clone())],
        "both versions are rows of clinic_versions"
    );
    assert_eq!(current_version(&app, "DE-BER-01").await, Some(2));

    // A third version: history is newest first.
    let mut v3 = v2.clone();
    v3.status = pb::ClinicStatus::Active as i32;
    v3.status_effective_from = None;
    let third = upserted(&app, v3).await.clinic.expect("v3");
    assert_eq!(third.version, 3);
    let read = get(&app, "DE-BER-01", true).await.expect("get clinic");
    let versions: Vec<i32> = read.history.iter().map(|c| c.version).collect();
    assert_eq!(versions, [2, 1], "history newest first, current excluded");

    // And the database refuses to rewrite a version.
    for sql in [
        "UPDATE clinic_versions SET name = 'rewritten'",
        "DELETE FROM clinic_versions WHERE version = 1",
    ] {
        let err = sqlx::query(sql).execute(&app.pool).await;
        assert!(err.is_err(), "{sql:?} should be refused");
    }
    assert_eq!(stored_versions(&app, "DE-BER-01").await.len(), 3);
}

#[tokio::test]
async fn upserting_identical_content_stores_nothing() {
    let app = spawn_app().await;
    let entry = clinic("DE-BER-01", "DE");
    let first = upserted(&app, entry.clone()).await.clinic.expect("v1");
    let again = upserted(&app, entry.clone()).await;
    assert!(!again.changed, "identical content is no change");
    assert_eq!(
        again.clinic.as_ref(),
        Some(&first),
        "the current version is returned"
    );

    // Output-only fields are ignored; a lower-case country is the same country.
    let mut same = entry.clone();
    same.version = 7;
    same.recorded_at = Some(ts("2001-01-01T00:00:00Z"));
    same.country = "de".into();
    let again = upserted(&app, same).await;
    assert!(
        !again.changed,
        "version, recorded_at and country case do not matter"
    );
    assert_eq!(again.clinic.map(|c| c.version), Some(1));

    assert_eq!(
        stored_versions(&app, "DE-BER-01").await.len(),
        1,
        "no new version row"
    );
    assert_eq!(current_version(&app, "DE-BER-01").await, Some(1));
}

/// Timestamps finer than Postgres keeps (microseconds) must not make an
/// unchanged entry look changed on every upsert.
#[tokio::test]
async fn upserting_identical_content_with_sub_microsecond_timestamps_stores_nothing() {
    let app = spawn_app().await;
    let mut entry = clinic("DE-BER-01", "DE");
    entry.licence_valid_from = Some(prost_types::Timestamp {
        seconds: 1_420_070_400,
        nanos: 1,
    });
    let first = upserted(&app, entry.clone()).await;
    assert!(first.changed);
    let again = upserted(&app, entry.clone()).await;
    assert!(
        !again.changed,
        "the same entry sent twice is no change, got version {:?}",
        again.clinic.map(|c| c.version)
    );
    assert_eq!(
        stored_versions(&app, "DE-BER-01").await.len(),
        1,
        "no second version row"
    );
}

// ---------------------------------------------------------------- validation

#[tokio::test]
async fn invalid_entries_name_the_field_and_store_nothing() {
    let app = spawn_app().await;
    let good = || clinic("DE-BER-01", "DE");
    let with = |f: &dyn Fn(&mut pb::Clinic)| {
        let mut c = good();
        f(&mut c);
        Some(c)
    };
    let cases: Vec<(&str, Option<pb::Clinic>, Vec<&str>)> = vec![
        ("no clinic", None, vec!["clinic"]),
        (
            "missing clinic_id",
            with(&|c| c.clinic_id.clear()),
            vec!["clinic.clinic_id"],
        ),
        (
            "clinic_id with spaces around",
            with(&|c| c.clinic_id = " DE-BER-01".into()),
            vec!["clinic.clinic_id"],
        ),
        (
            "missing name",
            with(&|c| c.name.clear()),
            vec!["clinic.name"],
        ),
        (
            "missing country",
            with(&|c| c.country.clear()),
            vec!["clinic.country"],
        ),
        (
            "unassigned country",
            with(&|c| c.country = "XX".into()),
            vec!["clinic.country"],
        ),
        (
            "three-letter country",
            with(&|c| c.country = "DEU".into()),
            vec!["clinic.country"],
        ),
        (
            "unknown organ",
            with(&|c| c.licensed_organs = vec![pb::Organ::Kidney as i32, 99]),
            vec!["clinic.licensed_organs[1]"],
        ),
        (
            "unspecified organ",
            with(&|c| c.licensed_organs = vec![0]),
            vec!["clinic.licensed_organs[0]"],
        ),
        (
            "missing status",
            with(&|c| c.status = 0),
            vec!["clinic.status"],
        ),
        (
            "unknown status",
            with(&|c| c.status = 12),
            vec!["clinic.status"],
        ),
        (
            "SUSPENDED without status_effective_from",
            with(&|c| c.status = pb::ClinicStatus::Suspended as i32),
            vec!["clinic.status_effective_from"],
        ),
        (
            "REVOKED without status_effective_from",
            with(&|c| c.status = pb::ClinicStatus::Revoked as i32),
            vec!["clinic.status_effective_from"],
        ),
        (
            "licence_valid_until before licence_valid_from",
            with(&|c| c.licence_valid_until = Some(ts("2014-12-31T00:00:00Z"))),
            vec!["clinic.licence_valid_until"],
        ),
        (
            "licence_valid_until equal to licence_valid_from",
            with(&|c| c.licence_valid_until = c.licence_valid_from),
            vec!["clinic.licence_valid_until"],
        ),
        (
            "missing licence_valid_from",
            with(&|c| c.licence_valid_from = None),
            vec!["clinic.licence_valid_from"],
        ),
        (
            "every problem at once",
            with(&|c| {
                c.clinic_id.clear();
                c.country = "ZZ".into();
                c.licensed_organs = vec![42];
                c.licence_valid_from = None;
                c.status = pb::ClinicStatus::Revoked as i32;
            }),
            vec![
                "clinic.clinic_id",
                "clinic.country",
                "clinic.licensed_organs[0]",
                "clinic.licence_valid_from",
                "clinic.status_effective_from",
            ],
        ),
    ];
    for (what, entry, fields) in cases {
        let status = app
            .registry
            .clone()
            .upsert_clinic(pb::UpsertClinicRequest { clinic: entry })
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        let mut got = violated_fields(&status);
        got.sort();
        let mut want: Vec<String> = fields.iter().map(|f| (*f).to_owned()).collect();
        want.sort();
        assert_eq!(got, want, "{what}: field violations ({status:?})");
        assert_eq!(
            app.count("clinic_versions").await,
            0,
            "{what}: a version was stored"
        );
        assert_eq!(app.count("clinics").await, 0, "{what}: a clinic was stored");
    }

    // The control: the same entry, valid, is stored.
    let mut suspended = good();
    suspended.status = pb::ClinicStatus::Suspended as i32;
    suspended.status_effective_from = Some(ts("2024-01-01T00:00:00Z"));
    let stored = upserted(&app, suspended.clone())
        .await
        .clinic
        .expect("stored");
    assert_eq!(content(&stored), suspended);
    assert_eq!(app.count("clinic_versions").await, 1);
}

#[tokio::test]
async fn get_clinic_refuses_unknown_and_empty_ids() {
    let app = spawn_app().await;
    upserted(&app, clinic("DE-BER-01", "DE")).await;
    let status = get(&app, "DE-NOPE-99", false)
        .await
        .expect_err("unknown clinic");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = get(&app, "de-ber-01", true)
        .await
        .expect_err("ids are exact");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = get(&app, "", false).await.expect_err("empty id");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), ["clinic_id"]);
}

// ---------------------------------------------------------------- listing

const CLINICS: [(&str, &str); 6] = [
    ("FR-PAR-02", "FR"),
    ("DE-MUC-01", "DE"),
    ("AT-VIE-01", "AT"),
    ("DE-BER-01", "DE"),
    ("FR-LYO-01", "FR"),
    ("DE-HAM-01", "DE"),
];

async fn app_with_clinics() -> TestApp {
    let app = spawn_app().await;
    for (id, country) in CLINICS {
        upserted(&app, clinic(id, country)).await;
    }
    app
}

#[tokio::test]
async fn list_clinics_is_ordered_by_id_and_filters_by_country() {
    let app = app_with_clinics().await;
    let all = list(&app, pb::ListClinicsRequest::default())
        .await
        .expect("list");
    let ids: Vec<&str> = all.clinics.iter().map(|c| c.clinic_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "AT-VIE-01",
            "DE-BER-01",
            "DE-HAM-01",
            "DE-MUC-01",
            "FR-LYO-01",
            "FR-PAR-02"
        ]
    );
    assert!(all.next_page_token.is_empty());

    let by = |country: &str| pb::ListClinicsRequest {
        country: country.into(),
        ..Default::default()
    };
    let (de, _) = walk(&app, by("DE")).await;
    assert_eq!(de, ["DE-BER-01", "DE-HAM-01", "DE-MUC-01"], "country DE");
    let (de_lower, _) = walk(&app, by("de")).await;
    assert_eq!(de_lower, de, "the country filter ignores case");
    let (at, _) = walk(&app, by("AT")).await;
    assert_eq!(at, ["AT-VIE-01"]);
    let (none, _) = walk(&app, by("PL")).await;
    assert!(none.is_empty(), "no clinic in PL");

    // A new version moves a clinic to another country and the listing follows it.
    let mut moved = clinic("DE-HAM-01", "AT");
    moved.name = "moved".into();
    let stored = upserted(&app, moved).await.clinic.expect("v2");
    assert_eq!(stored.version, 2);
    let (at, _) = walk(&app, by("AT")).await;
    assert_eq!(
        at,
        ["AT-VIE-01", "DE-HAM-01"],
        "the current version's country counts"
    );
    let (de, _) = walk(&app, by("DE")).await;
    assert_eq!(de, ["DE-BER-01", "DE-MUC-01"]);
    let listed = list(&app, by("AT")).await.expect("list").clinics;
    let ham = listed
        .iter()
        .find(|c| c.clinic_id == "DE-HAM-01")
        .expect("listed");
    assert_eq!(
        (ham.version, ham.name.as_str()),
        (2, "moved"),
        "listing shows the current version"
    );
}

#[tokio::test]
async fn list_clinics_pagination_walks_every_clinic_once() {
    let app = app_with_clinics().await;
    let (ids, sizes) = walk(
        &app,
        pb::ListClinicsRequest {
            page_size: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(sizes, [2, 2, 2], "three full pages, no empty trailing page");
    let mut expected: Vec<String> = CLINICS.iter().map(|(id, _)| (*id).to_owned()).collect();
    expected.sort();
    assert_eq!(ids, expected, "every clinic once, in id order");

    let (ids, sizes) = walk(
        &app,
        pb::ListClinicsRequest {
            page_size: 4,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(sizes, [4, 2]);
    assert_eq!(ids, expected);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());

    let (de, sizes) = walk(
        &app,
        pb::ListClinicsRequest {
            country: "DE".into(),
            page_size: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(sizes, [2, 1]);
    assert_eq!(de, ["DE-BER-01", "DE-HAM-01", "DE-MUC-01"]);

    // A token belongs to its filter; garbage and negative sizes are refused.
    let first = list(
        &app,
        pb::ListClinicsRequest {
            country: "DE".into(),
            page_size: 1,
            ..Default::default()
        },
    )
    .await
    .expect("page");
    let reused = pb::ListClinicsRequest {
        country: "FR".into(),
        page_size: 1,
        page_token: first.next_page_token,
    };
    let status = list(&app, reused)
        .await
        .expect_err("token of another filter");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), ["page_token"]);
    let garbage = pb::ListClinicsRequest {
        page_token: "garbage!".into(),
        ..Default::default()
    };
    let status = list(&app, garbage).await.expect_err("garbage token");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), ["page_token"]);
    let negative = pb::ListClinicsRequest {
        page_size: -1,
        ..Default::default()
    };
    let status = list(&app, negative).await.expect_err("negative page size");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), ["page_size"]);
}

// ---------------------------------------------------------------- effect on the rules

/// The rule ids a record raised, sorted.
async fn rules_of(app: &TestApp, record: pb::TransplantRecord) -> (String, Vec<String>) {
    let ext = record.external_record_id.clone();
    let ack = submit(app, record)
        .await
        .unwrap_or_else(|s| panic!("submitting {ext}: {s:?}"));
    assert_eq!(ack.outcome, pb::Outcome::Accepted as i32, "{ext}: {ack:?}");
    let mut rules: Vec<String> = all_flags(app, pb::ListFlagsRequest::default())
        .await
        .into_iter()
        .filter(|f| f.record_id == ack.record_id)
        .map(|f| f.rule_id)
        .collect();
    rules.sort();
    (ack.record_id, rules)
}

/// A heart from a deceased donor, otherwise as clean as `kidney`.
fn deceased_heart(ext: &str) -> pb::TransplantRecord {
    let mut r = kidney(ext);
    r.organ = pb::Organ::Heart as i32;
    r.laterality = pb::Laterality::NotApplicable as i32;
    let d = r.donor.as_mut().expect("donor");
    d.donor_type = pb::DonorType::Deceased as i32;
    d.relation_to_recipient = 0;
    d.death_at = Some(ts("2025-03-03T06:00:00Z"));
    d.death_kind = pb::DeathKind::Dbd as i32;
    r
}

#[tokio::test]
async fn a_clinic_licensed_only_for_kidneys_transplanting_a_heart_is_flagged() {
    let app = spawn_app().await;
    let mut kidneys_only = clinic("DE-BER-01", "DE");
    kidneys_only.licensed_organs = vec![pb::Organ::Kidney as i32];
    upserted(&app, kidneys_only.clone()).await;

    let (_, kidney_rules) = rules_of(&app, kidney("LIC-KIDNEY")).await;
    assert!(
        kidney_rules.is_empty(),
        "a kidney is licensed: {kidney_rules:?}"
    );
    let (_, heart_rules) = rules_of(&app, deceased_heart("LIC-HEART")).await;
    assert_eq!(
        heart_rules,
        ["CLINIC_NOT_LICENSED"],
        "a heart is not licensed"
    );

    // The next registry version licenses hearts: later hearts are fine, the old flag stays.
    let mut hearts_too = kidneys_only;
    hearts_too.licensed_organs.push(pb::Organ::Heart as i32);
    upserted(&app, hearts_too).await;
    let (_, later) = rules_of(&app, deceased_heart("LIC-HEART-2")).await;
    assert!(later.is_empty(), "licensed now: {later:?}");
    let flags = all_flags(
        &app,
        pb::ListFlagsRequest {
            rule_id: "CLINIC_NOT_LICENSED".into(),
            ..Default::default()
        },
    )
    .await;
    let exts: Vec<&str> = flags
        .iter()
        .map(|f| f.external_record_id.as_str())
        .collect();
    assert_eq!(exts, ["LIC-HEART"], "the earlier flag is kept");
}

#[tokio::test]
async fn an_unregistered_clinic_raises_clinic_unregistered_alone_and_registering_keeps_the_flag() {
    let app = spawn_app().await;
    // Procedure in DE at a clinic the registry does not know.
    let mut record = kidney("UNREG-1");
    record.clinic_id = "PL-WAW-09".into();
    let (record_id, rules) = rules_of(&app, record).await;
    assert_eq!(
        rules,
        ["CLINIC_UNREGISTERED"],
        "an unregistered clinic raises CLINIC_UNREGISTERED alone"
    );
    let before = all_flags(&app, pb::ListFlagsRequest::default()).await;
    assert_eq!(before.len(), 1);

    // Registered afterwards, in another country and without a kidney licence.
    let mut entry = clinic("PL-WAW-09", "PL");
    entry.licensed_organs = vec![pb::Organ::Liver as i32];
    upserted(&app, entry).await;

    let after = all_flags(&app, pb::ListFlagsRequest::default()).await;
    assert_eq!(
        after, before,
        "registering the clinic changes no existing flag"
    );
    let flag = &after[0];
    assert_eq!(flag.record_id, record_id);
    assert_eq!(flag.rule_id, "CLINIC_UNREGISTERED");
    assert_eq!(flag.status, pb::FlagStatus::Open as i32);
    assert_eq!(flag.cleared_in_record_version, None, "not cleared");

    // A later record at the now registered clinic is judged against the registry.
    let mut later = kidney("UNREG-2");
    later.clinic_id = "PL-WAW-09".into();
    let (_, rules) = rules_of(&app, later).await;
    assert_eq!(rules, ["CLINIC_COUNTRY_MISMATCH", "CLINIC_NOT_LICENSED"]);
}

#[tokio::test]
async fn licensed_organs_are_a_set_and_country_filters_are_checked() {
    let app = spawn_app().await;
    let mut entry = clinic("DE-SET-01", "DE");
    entry.licensed_organs = vec![pb::Organ::Liver as i32, pb::Organ::Kidney as i32];
    upserted(&app, entry.clone()).await;
    entry.licensed_organs = vec![
        pb::Organ::Kidney as i32,
        pb::Organ::Liver as i32,
        pb::Organ::Kidney as i32,
    ];
    let again = upserted(&app, entry).await;
    assert!(
        !again.changed,
        "the same organs in another order are the same licence"
    );
    assert_eq!(stored_versions(&app, "DE-SET-01").await.len(), 1);

    let status = list(
        &app,
        pb::ListClinicsRequest {
            country: "Germany".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("not a country code");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["country"]);
    let lower = list(
        &app,
        pb::ListClinicsRequest {
            country: "de".into(),
            page_size: 1,
            ..Default::default()
        },
    )
    .await
    .expect("lower case is a country");
    assert_eq!(lower.clinics.len(), 1);
    app.stop().await;
}
