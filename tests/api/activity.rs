//! Clinic and country activity: the figures `GetClinicActivity` and
//! `GetCountryActivity` give, compared with counts this test makes itself
//! from the records it submitted and the flags `ListFlags` lists, after
//! amendments, triage and a rescan too; request validation; roles.

use std::collections::{BTreeMap, HashMap};

use transplant_audit::rules::RulesConfig;
use transplant_audit::wire::pb;
use transplant_audit::wire::pb::investigation_service_client::InvestigationServiceClient;

use crate::helpers::*;

type Client = InvestigationServiceClient<Authed>;

const BER: &str = "DE-BER-01";
const MUC: &str = "DE-MUC-02";
/// A clinic no registry entry names: its records still count.
const UNREGISTERED: &str = "DE-XXX-09";

fn auditor(app: &TestApp) -> Client {
    InvestigationServiceClient::new(app.authed(&app.auditor_token))
}

/// `r` transplanted on day 10 of `month` (YYYY-MM), procured two hours
/// before, a deceased donor dead seven hours before that.
fn in_month(mut r: pb::TransplantRecord, month: &str) -> pb::TransplantRecord {
    r.procured_at = Some(ts(&format!("{month}-10T08:00:00Z")));
    r.transplanted_at = Some(ts(&format!("{month}-10T10:00:00Z")));
    if let Some(d) = r.donor.as_mut()
        && d.death_at.is_some()
    {
        d.death_at = Some(ts(&format!("{month}-10T01:00:00Z")));
    }
    r
}

fn at_clinic(mut r: pb::TransplantRecord, clinic_id: &str) -> pb::TransplantRecord {
    r.clinic_id = clinic_id.into();
    r
}

fn deceased(ext: &str) -> pb::TransplantRecord {
    deceased_left_kidney(ext, &format!("DONOR{ext}"))
}

fn foreign_recipient(mut r: pb::TransplantRecord, country: &str) -> pb::TransplantRecord {
    let p = r.recipient.as_mut().expect("recipient");
    p.nationality = country.into();
    p.country_of_residence = country.into();
    r
}

fn foreign_donor(mut r: pb::TransplantRecord, country: &str) -> pb::TransplantRecord {
    let d = r.donor.as_mut().expect("donor");
    d.nationality = country.into();
    d.country_of_residence = country.into();
    r
}

fn unrelated(mut r: pb::TransplantRecord) -> pb::TransplantRecord {
    r.donor.as_mut().expect("donor").relation_to_recipient =
        pb::DonorRelation::UnrelatedDirected as i32;
    r
}

fn liver(mut r: pb::TransplantRecord) -> pb::TransplantRecord {
    r.organ = pb::Organ::Liver as i32;
    r.laterality = pb::Laterality::NotApplicable as i32;
    r
}

/// A deceased donor's record as a living sibling's, or the other way round.
fn as_deceased(mut r: pb::TransplantRecord) -> pb::TransplantRecord {
    let month = month_of(&r);
    let d = r.donor.as_mut().expect("donor");
    d.donor_type = pb::DonorType::Deceased as i32;
    d.relation_to_recipient = 0;
    d.death_at = Some(ts("2025-01-01T00:00:00Z"));
    d.death_kind = pb::DeathKind::Dbd as i32;
    in_month(r, &month)
}

fn month_of(r: &pb::TransplantRecord) -> String {
    let at = r.transplanted_at.as_ref().expect("transplanted_at");
    chrono::DateTime::from_timestamp(at.seconds, 0)
        .expect("instant")
        .format("%Y-%m")
        .to_string()
}

/// The records of the tests, by external id (hospital H-DE-001), as first
/// submitted: two registered clinics and an unregistered one, three months.
fn records() -> Vec<pb::TransplantRecord> {
    vec![
        in_month(kidney("A1"), "2025-01"),
        in_month(foreign_recipient(deceased("A2"), "IL"), "2025-01"),
        in_month(liver(deceased("A3")), "2025-01"),
        in_month(unrelated(foreign_donor(kidney("A4"), "MD")), "2025-01"),
        in_month(foreign_donor(kidney("B1"), "UA"), "2025-02"),
        in_month(abo_incompatible("B2"), "2025-02"),
        in_month(foreign_recipient(deceased("B3"), "AZ"), "2025-02"),
        // A recipient of another nationality living in Germany is a resident.
        in_month(
            {
                let mut r = deceased("B4");
                r.recipient.as_mut().expect("recipient").nationality = "TR".into();
                r
            },
            "2025-02",
        ),
        at_clinic(
            in_month(unrelated(foreign_donor(kidney("C1"), "MD")), "2025-02"),
            MUC,
        ),
        at_clinic(in_month(deceased("C2"), "2025-03"), MUC),
        at_clinic(in_month(kidney("U1"), "2025-03"), UNREGISTERED),
        // Another year: counted in none of the spans asked below.
        in_month(deceased("Z1"), "2024-12"),
    ]
}

/// The figures of one clinic's month, or a sum of them, as plain text keys.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Figures {
    transplants: BTreeMap<String, i64>,
    total: i64,
    deceased: i64,
    deceased_to_non_residents: i64,
    living_unrelated_foreign: i64,
    nationalities: BTreeMap<String, i64>,
    flags_by_rule: BTreeMap<String, (i64, i64)>,
    flags_by_status: BTreeMap<String, i64>,
}

fn name<T: TryFrom<i32> + Copy>(raw: i32, as_name: fn(&T) -> &'static str) -> String {
    T::try_from(raw)
        .map(|v| as_name(&v).to_owned())
        .unwrap_or_else(|_| format!("?{raw}"))
}

fn organ_name(raw: i32) -> String {
    name::<pb::Organ>(raw, |o| o.as_str_name())
}

fn donor_type_name(raw: i32) -> String {
    name::<pb::DonorType>(raw, |t| t.as_str_name())
}

fn status_name(raw: i32) -> String {
    name::<pb::FlagStatus>(raw, |s| s.as_str_name())
}

/// What the service answered, in the test's terms.
fn answered(f: &pb::ActivityFigures) -> Figures {
    Figures {
        transplants: f
            .transplants
            .iter()
            .map(|t| {
                (
                    format!("{}/{}", organ_name(t.organ), donor_type_name(t.donor_type)),
                    t.count,
                )
            })
            .collect(),
        total: f.total_transplants,
        deceased: f.deceased_donor_transplants,
        deceased_to_non_residents: f.deceased_donor_transplants_to_non_residents,
        living_unrelated_foreign: f.living_unrelated_foreign_donor_transplants,
        nationalities: f
            .foreign_living_donor_nationalities
            .iter()
            .map(|n| (n.nationality.clone(), n.count))
            .collect(),
        flags_by_rule: f
            .flags_by_rule
            .iter()
            .map(|r| (r.rule_id.clone(), (r.count, r.cleared)))
            .collect(),
        flags_by_status: f
            .flags_by_status
            .iter()
            .map(|s| (status_name(s.status), s.count))
            .collect(),
    }
}

/// Not a national nor a resident of the procedure country.
fn non_resident(nationality: &str, residence: &str, country: &str) -> bool {
    nationality != country && residence != country
}

/// Counts made here from the records and flags, independently of the
/// service's counters: by (clinic, month).
fn expected(
    records: &HashMap<String, pb::TransplantRecord>,
    flags: &[pb::Flag],
) -> BTreeMap<(String, String), Figures> {
    let mut by: BTreeMap<(String, String), Figures> = BTreeMap::new();
    for r in records.values() {
        let f = by.entry((r.clinic_id.clone(), month_of(r))).or_default();
        let d = r.donor.as_ref().expect("donor");
        let p = r.recipient.as_ref().expect("recipient");
        *f.transplants
            .entry(format!(
                "{}/{}",
                organ_name(r.organ),
                donor_type_name(d.donor_type)
            ))
            .or_default() += 1;
        f.total += 1;
        let country = r.procedure_country.as_str();
        if d.donor_type == pb::DonorType::Deceased as i32 {
            f.deceased += 1;
            if non_resident(&p.nationality, &p.country_of_residence, country) {
                f.deceased_to_non_residents += 1;
            }
        } else if non_resident(&d.nationality, &d.country_of_residence, country) {
            *f.nationalities.entry(d.nationality.clone()).or_default() += 1;
            if d.relation_to_recipient == pb::DonorRelation::UnrelatedDirected as i32 {
                f.living_unrelated_foreign += 1;
            }
        }
    }
    for flag in flags {
        let r = &records[&flag.external_record_id];
        let f = by.entry((r.clinic_id.clone(), month_of(r))).or_default();
        let entry = f.flags_by_rule.entry(flag.rule_id.clone()).or_default();
        entry.0 += 1;
        if flag.cleared_in_record_version.is_some() {
            entry.1 += 1;
        }
        *f.flags_by_status
            .entry(status_name(flag.status))
            .or_default() += 1;
    }
    by
}

fn sum<'a>(figures: impl IntoIterator<Item = &'a Figures>) -> Figures {
    let mut s = Figures::default();
    for f in figures {
        for (k, n) in &f.transplants {
            *s.transplants.entry(k.clone()).or_default() += n;
        }
        s.total += f.total;
        s.deceased += f.deceased;
        s.deceased_to_non_residents += f.deceased_to_non_residents;
        s.living_unrelated_foreign += f.living_unrelated_foreign;
        for (k, n) in &f.nationalities {
            *s.nationalities.entry(k.clone()).or_default() += n;
        }
        for (k, (n, c)) in &f.flags_by_rule {
            let e = s.flags_by_rule.entry(k.clone()).or_default();
            e.0 += n;
            e.1 += c;
        }
        for (k, n) in &f.flags_by_status {
            *s.flags_by_status.entry(k.clone()).or_default() += n;
        }
    }
    s
}

async fn clinic_activity(
    client: &mut Client,
    clinic_id: &str,
    from: &str,
    until: &str,
) -> Result<pb::GetClinicActivityResponse, tonic::Status> {
    Ok(client
        .get_clinic_activity(pb::GetClinicActivityRequest {
            clinic_id: clinic_id.into(),
            from_month: from.into(),
            until_month: until.into(),
        })
        .await?
        .into_inner())
}

async fn country_activity(
    client: &mut Client,
    country: &str,
    year: i32,
) -> Result<pb::GetCountryActivityResponse, tonic::Status> {
    Ok(client
        .get_country_activity(pb::GetCountryActivityRequest {
            procedure_country: country.into(),
            year,
        })
        .await?
        .into_inner())
}

/// Every figure the service gives for 2025 (each clinic's months and
/// total, the country's clinics and totals) against the counts made here.
async fn assert_figures_match(app: &TestApp, records: &HashMap<String, pb::TransplantRecord>) {
    let flags = all_flags(app, pb::ListFlagsRequest::default()).await;
    let want = expected(records, &flags);
    let mut client = auditor(app);
    let months: Vec<String> = (1..=12).map(|m| format!("2025-{m:02}")).collect();
    for clinic_id in [BER, MUC, UNREGISTERED] {
        let got = clinic_activity(&mut client, clinic_id, "2025-01", "2025-12")
            .await
            .expect("clinic activity");
        assert_eq!(got.clinic_id, clinic_id);
        let got_months: Vec<&str> = got.months.iter().map(|m| m.month.as_str()).collect();
        assert_eq!(got_months, months, "every month of the span, in order");
        for m in &got.months {
            let key = (clinic_id.to_owned(), m.month.clone());
            let want_month = want.get(&key).cloned().unwrap_or_default();
            assert_eq!(
                answered(m.figures.as_ref().expect("figures")),
                want_month,
                "{clinic_id} in {}",
                m.month
            );
        }
        let want_total = sum(want
            .iter()
            .filter(|((c, m), _)| c == clinic_id && m.starts_with("2025-"))
            .map(|(_, f)| f));
        assert_eq!(
            answered(got.total.as_ref().expect("total")),
            want_total,
            "{clinic_id} over 2025"
        );
    }
    let country = country_activity(&mut client, "DE", 2025)
        .await
        .expect("country activity");
    let clinics: Vec<&str> = country
        .clinics
        .iter()
        .map(|c| c.clinic_id.as_str())
        .collect();
    let mut want_clinics: Vec<&str> = want
        .keys()
        .filter(|(_, m)| m.starts_with("2025-"))
        .map(|(c, _)| c.as_str())
        .collect();
    want_clinics.dedup();
    assert_eq!(clinics, want_clinics);
    for c in &country.clinics {
        let want_total = sum(want
            .iter()
            .filter(|((id, m), _)| *id == c.clinic_id && m.starts_with("2025-"))
            .map(|(_, f)| f));
        assert_eq!(answered(c.total.as_ref().expect("total")), want_total);
        assert_eq!(c.months.len(), 12);
    }
    let want_country = sum(want
        .iter()
        .filter(|((_, m), _)| m.starts_with("2025-"))
        .map(|(_, f)| f));
    assert_eq!(
        answered(country.total.as_ref().expect("country total")),
        want_country
    );
    assert_backfill_agrees(app).await;
}

/// The migration's backfill, run now into a scratch table, gives what the
/// writes kept: the counters an existing registry starts from are the ones
/// it would have kept.
async fn assert_backfill_agrees(app: &TestApp) {
    let migration = include_str!("../../migrations/20261203000060_clinic_activity.sql");
    let backfill = migration
        .split_once("INSERT INTO clinic_activity ")
        .map(|(_, rest)| format!("INSERT INTO scratch_activity {rest}"))
        .expect("the migration's backfill");
    let mut conn = app.pool.acquire().await.expect("connection");
    sqlx::query("CREATE TEMP TABLE scratch_activity (LIKE clinic_activity)")
        .execute(&mut *conn)
        .await
        .expect("scratch table");
    sqlx::query(&backfill)
        .execute(&mut *conn)
        .await
        .expect("backfill");
    let differ: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
             (SELECT clinic_id, month, procedure_country, metric, dimension, n
              FROM clinic_activity WHERE n <> 0
              EXCEPT SELECT * FROM scratch_activity)
             UNION ALL
             (SELECT * FROM scratch_activity
              EXCEPT SELECT clinic_id, month, procedure_country, metric, dimension, n
              FROM clinic_activity WHERE n <> 0)) d",
    )
    .fetch_one(&mut *conn)
    .await
    .expect("compare");
    sqlx::query("DROP TABLE scratch_activity")
        .execute(&mut *conn)
        .await
        .expect("drop");
    assert_eq!(differ, 0, "the backfill and the kept counters differ");
}

async fn register(app: &TestApp, clinic_id: &str) {
    app.registry
        .clone()
        .upsert_clinic(pb::UpsertClinicRequest {
            clinic: Some(clinic(clinic_id, "DE")),
        })
        .await
        .expect("clinic");
}

/// Registers the clinics, submits the records; the records by external id.
async fn loaded(app: &TestApp) -> HashMap<String, pb::TransplantRecord> {
    register(app, BER).await;
    register(app, MUC).await;
    let mut by_id = HashMap::new();
    for r in records() {
        submit(app, r.clone()).await.expect("accepted");
        by_id.insert(r.external_record_id.clone(), r);
    }
    by_id
}

async fn flag_of(app: &TestApp, external_record_id: &str, rule_id: &str) -> pb::Flag {
    all_flags(
        app,
        pb::ListFlagsRequest {
            rule_id: rule_id.into(),
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .find(|f| f.external_record_id == external_record_id)
    .unwrap_or_else(|| panic!("a {rule_id} flag on {external_record_id}"))
}

async fn triage(app: &TestApp, flag: &pb::Flag, to: pb::FlagStatus, note: &str) -> pb::Flag {
    app.audit
        .clone()
        .update_flag_status(pb::UpdateFlagStatusRequest {
            flag_id: flag.flag_id.clone(),
            status: to as i32,
            note: note.into(),
            etag: flag.etag.clone(),
        })
        .await
        .expect("triage")
        .into_inner()
        .flag
        .expect("the flag")
}

#[tokio::test]
async fn figures_match_counts_of_the_records_and_their_flags() {
    let app = spawn_app().await;
    let records = loaded(&app).await;
    let flags = all_flags(&app, pb::ListFlagsRequest::default()).await;
    let rules: Vec<&str> = flags.iter().map(|f| f.rule_id.as_str()).collect();
    for rule in [
        "ABO_INCOMPATIBLE",
        "TOURISM_FOREIGN_PAIR",
        "CLINIC_UNREGISTERED",
    ] {
        assert!(rules.contains(&rule), "the records raise {rule}: {rules:?}");
    }
    assert_figures_match(&app, &records).await;

    // Spot checks, in the report's own words.
    let mut client = auditor(&app);
    let jan = clinic_activity(&mut client, BER, "2025-01", "2025-01")
        .await
        .expect("january");
    assert_eq!(jan.months.len(), 1);
    let f = jan.months[0].figures.clone().expect("figures");
    assert_eq!(
        (
            f.total_transplants,
            f.deceased_donor_transplants,
            f.deceased_donor_transplants_to_non_residents,
            f.living_unrelated_foreign_donor_transplants
        ),
        (4, 2, 1, 1)
    );
    assert!((f.non_resident_share - 0.5).abs() < 1e-9);
    assert_eq!(f.non_resident_share_limit, 0.05);
    assert!(
        !f.above_non_resident_share_limit,
        "two deceased-donor transplants are too few for the line"
    );
    let feb = clinic_activity(&mut client, BER, "2025-02", "2025-02")
        .await
        .expect("february");
    let nationalities: Vec<(String, i64)> = feb.months[0]
        .figures
        .as_ref()
        .expect("figures")
        .foreign_living_donor_nationalities
        .iter()
        .map(|n| (n.nationality.clone(), n.count))
        .collect();
    assert_eq!(nationalities, [("UA".to_owned(), 1)]);
}

#[tokio::test]
async fn amendments_and_triage_move_the_figures() {
    let app = spawn_app().await;
    let mut records = loaded(&app).await;
    let tourism = flag_of(&app, "A4", "TOURISM_FOREIGN_PAIR").await;

    let mut amendments = Vec::new();
    // Moved to another clinic, with its flag.
    amendments.push(at_clinic(records["A4"].clone(), MUC));
    // Moved to another month.
    amendments.push(in_month(records["A2"].clone(), "2025-03"));
    // A living donor's record corrected to a deceased donor.
    amendments.push(as_deceased(records["B1"].clone()));
    // A deceased donor's record corrected to a foreign living unrelated donor.
    let mut b3 = unrelated(foreign_donor(kidney("B3"), "MD"));
    b3.donor.as_mut().expect("donor").identifier = records["B3"]
        .donor
        .as_ref()
        .expect("donor")
        .identifier
        .clone();
    amendments.push(in_month(b3, "2025-02"));
    // The ABO mismatch corrected: its flag is cleared, and still counted.
    amendments.push(in_month(kidney("B2"), "2025-02"));
    for r in amendments {
        amend(&app, r.clone(), "corrected").await.expect("amended");
        records.insert(r.external_record_id.clone(), r);
    }
    let abo = flag_of(&app, "B2", "ABO_INCOMPATIBLE").await;
    assert!(abo.cleared_in_record_version.is_some());
    assert_figures_match(&app, &records).await;

    let tourism = flag_of(&app, &tourism.external_record_id, "TOURISM_FOREIGN_PAIR").await;
    let reviewing = triage(&app, &tourism, pb::FlagStatus::InReview, "").await;
    triage(
        &app,
        &reviewing,
        pb::FlagStatus::Confirmed,
        "a broker's donor",
    )
    .await;
    let abo = triage(&app, &abo, pb::FlagStatus::InReview, "").await;
    triage(&app, &abo, pb::FlagStatus::Dismissed, "a typo, corrected").await;
    assert_figures_match(&app, &records).await;

    // Moved back, after triage: the confirmed flag goes with its record.
    let back = at_clinic(records["A4"].clone(), BER);
    amend(&app, back.clone(), "the first clinic after all")
        .await
        .expect("amended");
    records.insert("A4".into(), back);
    assert_figures_match(&app, &records).await;
}

#[tokio::test]
async fn a_rescan_adds_its_flags_to_the_figures() {
    let app = spawn_app().await;
    let mut records = loaded(&app).await;
    // Two more foreign unrelated donors in February: with C1 and B-month
    // records, a lower surge threshold flags some of them.
    for ext in ["C3", "C4"] {
        let r = at_clinic(
            in_month(unrelated(foreign_donor(kidney(ext), "MD")), "2025-02"),
            MUC,
        );
        submit(&app, r.clone()).await.expect("accepted");
        records.insert(ext.into(), r);
    }
    let before = all_flags(&app, pb::ListFlagsRequest::default()).await.len();
    let config = RulesConfig::from_toml_str("[surge]\nmin_count = 2\n").expect("config");
    let tuned = spawn_app_on(&app.database_url, config).await;
    let mut stream = tuned
        .admin
        .clone()
        .rescan(pb::RescanRequest {
            rule_ids: vec!["CLINIC_FOREIGN_DONOR_SURGE".into()],
            ..Default::default()
        })
        .await
        .expect("rescan")
        .into_inner();
    while stream.message().await.expect("progress").is_some() {}
    let after = all_flags(&tuned, pb::ListFlagsRequest::default())
        .await
        .len();
    assert!(
        after > before,
        "the rescan raised flags ({before} → {after})"
    );
    assert_figures_match(&tuned, &records).await;
}

#[tokio::test]
async fn bad_requests_are_refused_naming_the_field_and_change_nothing() {
    let app = spawn_app().await;
    loaded(&app).await;
    let snapshot = || async {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT count(*), coalesce(sum(n * length(metric || dimension)), 0)::bigint
             FROM clinic_activity",
        )
        .fetch_one(&app.pool)
        .await
        .expect("snapshot")
    };
    let before = snapshot().await;
    let mut client = auditor(&app);
    for (from, until, field) in [
        ("2025-03", "2025-02", "until_month"),
        ("2025-01", "2028-01", "until_month"),
        ("2025-13", "2025-12", "from_month"),
        ("2025-1", "2025-12", "from_month"),
        ("", "2025-12", "from_month"),
        ("2025-01", "December", "until_month"),
    ] {
        let status = clinic_activity(&mut client, BER, from, until)
            .await
            .expect_err("refused");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{from}..{until}"
        );
        assert_eq!(violated_fields(&status), [field], "{from}..{until}");
    }
    let status = clinic_activity(&mut client, "", "2025-01", "2025-02")
        .await
        .expect_err("refused");
    assert_eq!(violated_fields(&status), ["clinic_id"]);

    let unknown = clinic_activity(&mut client, "NO-SUCH-CLINIC", "2025-01", "2025-12")
        .await
        .expect_err("unknown clinic");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert_eq!(reason(&unknown).0, "CLINIC_NOT_FOUND");
    // A clinic only records name is known; a registered one with no
    // transplants answers with empty months.
    clinic_activity(&mut client, UNREGISTERED, "2025-01", "2025-01")
        .await
        .expect("an unregistered clinic with records");
    register(&app, "DE-NEW-03").await;
    let empty = clinic_activity(&mut client, "DE-NEW-03", "2025-01", "2025-03")
        .await
        .expect("a registered clinic");
    assert_eq!(empty.months.len(), 3);
    assert_eq!(
        empty.total.expect("total").total_transplants,
        0,
        "nothing there"
    );

    for (country, year, field) in [
        ("XX", 2025, "procedure_country"),
        ("", 2025, "procedure_country"),
        ("DE", 0, "year"),
        ("DE", 1899, "year"),
        ("DE", 10_000, "year"),
    ] {
        let status = country_activity(&mut client, country, year)
            .await
            .expect_err("refused");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{country} {year}"
        );
        assert_eq!(violated_fields(&status), [field], "{country} {year}");
    }
    let quiet = country_activity(&mut client, "FR", 2025)
        .await
        .expect("a country with no transplants");
    assert!(quiet.clinics.is_empty());
    assert_eq!(quiet.total.expect("total").total_transplants, 0);
    assert_eq!(snapshot().await, before, "reads change no counter");
}

#[tokio::test]
async fn auditors_and_admins_read_activity_and_hospitals_never() {
    let app = spawn_app().await;
    loaded(&app).await;
    for token in [&app.auditor_token, &app.admin_token] {
        let mut client = InvestigationServiceClient::new(app.authed(token));
        clinic_activity(&mut client, BER, "2025-01", "2025-12")
            .await
            .expect("clinic activity");
        country_activity(&mut client, "DE", 2025)
            .await
            .expect("country activity");
    }
    let mut hospital = InvestigationServiceClient::new(app.authed(&app.hospital_token));
    let refused = clinic_activity(&mut hospital, BER, "2025-01", "2025-12")
        .await
        .expect_err("a hospital key");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let refused = country_activity(&mut hospital, "DE", 2025)
        .await
        .expect_err("a hospital key");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
}
