//! `--mode investigate`: InvestigationService latency as auditors see it.
//! Four kinds of call, `rounds` times each, interleaved, one at a time,
//! with p50/p99 against each kind's target: SearchRecords by donor
//! fingerprint (p99 < 5 ms), SearchRecords by clinic and month (< 20 ms),
//! GetNetwork at depth 2 from a flag (< 50 ms), GetClinicActivity for the
//! 12 months up to a clinic-month (< 20 ms).
//!
//! The donors, clinic-months and flags are those of the newest records and
//! flags (one unfiltered page of 500 of each), taken in turn. Every call
//! writes the access log, as an auditor's would; nothing else is written.
//!
//! Given the server's database, each search is followed by its main query
//! (the page's ids, as src/store/investigate.rs builds it) over a
//! connection of this tool's own; the report gives the ratio of the p99s.
//! The call also reads the page's records and flags and writes the access
//! log, so the ratio shows what those and the service add.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::Serialize;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use tonic::transport::Channel;
use tonic::{Code, Request};
use transplant_audit_core::wire::pb;
use transplant_audit_core::wire::pb::audit_service_client::AuditServiceClient;
use transplant_audit_core::wire::pb::investigation_service_client::InvestigationServiceClient;

use super::baseline::direct_connection;
use super::grpc::Bearer;
use super::report::{Judged, Latency};

/// Deadline of one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Most distinct values taken in turn.
const MAX_VALUES: usize = 50;
/// Most failure messages kept per row.
const SAMPLES: usize = 3;

type Authed = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// How the phase runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Endpoint, for the report.
    pub endpoint: String,
    /// Calls per kind.
    pub rounds: usize,
    /// Records per search page.
    pub page_size: i32,
    /// The server's database, for timing the searches' main query directly.
    pub database_url: Option<String>,
}

/// One kind of call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Donor,
    ClinicMonth,
    Network,
    ClinicActivity,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::Donor,
        Kind::ClinicMonth,
        Kind::Network,
        Kind::ClinicActivity,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::Donor => "SearchRecords donor",
            Kind::ClinicMonth => "SearchRecords clinic+month",
            Kind::Network => "GetNetwork depth 2 (flag)",
            Kind::ClinicActivity => "GetClinicActivity 12 months",
        }
    }

    fn target_ms(self) -> f64 {
        match self {
            Kind::Donor => 5.0,
            Kind::ClinicMonth => 20.0,
            Kind::Network => 50.0,
            Kind::ClinicActivity => 20.0,
        }
    }
}

/// The values called with, taken in turn.
#[derive(Debug, Default)]
struct Values {
    donors: Vec<String>,
    clinic_months: Vec<(String, DateTime<Utc>)>,
    flags: Vec<String>,
}

/// The first instant of the month after `start`'s.
fn next_month(start: DateTime<Utc>) -> DateTime<Utc> {
    let (y, m) = if start.month() == 12 {
        (start.year() + 1, 1)
    } else {
        (start.year(), start.month() + 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .unwrap_or(start)
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    }
}

impl Values {
    fn search(&self, kind: Kind, round: usize, page_size: i32) -> pb::SearchRecordsRequest {
        let mut r = pb::SearchRecordsRequest {
            page_size,
            ..Default::default()
        };
        match kind {
            Kind::Donor => r.donor_fingerprint = self.donors[round % self.donors.len()].clone(),
            Kind::ClinicMonth | Kind::Network | Kind::ClinicActivity => {
                let (clinic, start) = &self.clinic_months[round % self.clinic_months.len()];
                r.clinic_id = clinic.clone();
                r.transplanted_after = Some(timestamp(*start));
                r.transplanted_before = Some(timestamp(next_month(*start)));
            }
        }
        r
    }

    fn network(&self, round: usize) -> pb::GetNetworkRequest {
        pb::GetNetworkRequest {
            origin: Some(pb::get_network_request::Origin::FlagId(
                self.flags[round % self.flags.len()].clone(),
            )),
            depth: Some(2),
            max_nodes: None,
        }
    }

    /// The 12 months up to and including a clinic-month, taken in turn.
    fn activity(&self, round: usize) -> pb::GetClinicActivityRequest {
        let (clinic, start) = &self.clinic_months[round % self.clinic_months.len()];
        let first = start
            .date_naive()
            .checked_sub_months(chrono::Months::new(11))
            .unwrap_or(start.date_naive());
        pb::GetClinicActivityRequest {
            clinic_id: clinic.clone(),
            from_month: first.format("%Y-%m").to_string(),
            until_month: start.format("%Y-%m").to_string(),
        }
    }
}

/// What one kind saw.
#[derive(Debug, Default)]
struct Calls {
    latencies: Vec<Duration>,
    items: usize,
    truncated: usize,
    errors: usize,
    samples: Vec<String>,
}

/// One row of the report.
#[derive(Debug, Serialize)]
pub struct Row {
    /// The kind of call.
    pub call: &'static str,
    /// Calls answered.
    pub calls: usize,
    /// Calls that failed.
    pub errors: usize,
    /// Mean records per search page, or nodes per network.
    pub items_per_call: f64,
    /// Networks cut at max_nodes.
    pub truncated: usize,
    /// Latency of the answered calls.
    pub latency: Option<Latency>,
    /// The main query over a direct connection, when measured.
    pub direct: Option<Latency>,
    /// The call's p99 over the main query's.
    pub ratio: Option<f64>,
    /// The target p99, in milliseconds.
    pub p99_target_ms: f64,
    /// p99 below the target, when measured.
    pub pass: Option<bool>,
    /// The first few failures.
    pub error_samples: Vec<String>,
}

/// Everything the phase measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The server.
    pub endpoint: String,
    /// Calls per kind.
    pub rounds: usize,
    /// One row per kind.
    pub rows: Vec<Row>,
}

impl Judged for Report {
    fn errors(&self) -> usize {
        self.rows.iter().map(|r| r.errors).sum()
    }

    fn missed_a_target(&self) -> bool {
        self.rows.iter().any(|r| r.pass == Some(false))
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "transplant-audit InvestigationService latency: {} calls per kind, one at a time, {}\n",
            self.rounds, self.endpoint
        );
        let _ = writeln!(
            out,
            "{:<28} {:>6} {:>6} {:>7} {:>5} {:>8} {:>8} {:>8} {:>8}        {:>10} {:>10} {:>6}",
            "call",
            "calls",
            "errors",
            "items",
            "cut",
            "p50 ms",
            "p99 ms",
            "max ms",
            "target",
            "SQL p50 ms",
            "SQL p99 ms",
            "ratio"
        );
        for r in &self.rows {
            let ms = |f: fn(&Latency) -> f64| {
                r.latency
                    .as_ref()
                    .map_or_else(|| "-".into(), |l| format!("{:.2}", f(l)))
            };
            let verdict = match r.pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "not measured",
            };
            let direct = |f: fn(&Latency) -> f64| {
                r.direct
                    .as_ref()
                    .map_or_else(|| "-".into(), |l| format!("{:.2}", f(l)))
            };
            let ratio = r.ratio.map_or_else(|| "-".into(), |x| format!("{x:.2}"));
            let _ = writeln!(
                out,
                "{:<28} {:>6} {:>6} {:>7.1} {:>5} {:>8} {:>8} {:>8} {:>6} ms  {verdict:<4} {:>10} {:>10} {:>6}",
                r.call,
                r.calls,
                r.errors,
                r.items_per_call,
                r.truncated,
                ms(|l| l.p50_ms),
                ms(|l| l.p99_ms),
                ms(|l| l.max_ms),
                r.p99_target_ms,
                direct(|l| l.p50_ms),
                direct(|l| l.p99_ms),
                ratio,
            );
        }
        for r in self.rows.iter().filter(|r| !r.error_samples.is_empty()) {
            let _ = writeln!(out, "{} errors in {}, first ones:", r.errors, r.call);
            for s in &r.error_samples {
                let _ = writeln!(out, "  {s}");
            }
        }
        out
    }
}

fn refused(status: &tonic::Status) -> anyhow::Error {
    anyhow!(
        "{:?}: {}; --mode investigate needs an AUDITOR key (--api-key), \
         e.g. from `transplant-audit keys create --role auditor --principal NAME`",
        status.code(),
        status.message()
    )
}

/// Measures InvestigationService over `channel` with an AUDITOR key.
pub async fn run(
    channel: Channel,
    key: Option<&str>,
    settings: &Settings,
) -> anyhow::Result<Report> {
    let bearer = Bearer::new(key)?;
    let mut audit = AuditServiceClient::with_interceptor(channel.clone(), bearer.clone());
    let mut investigate = InvestigationServiceClient::with_interceptor(channel, bearer);
    let values = discover(&mut audit, &mut investigate).await?;
    eprintln!(
        "InvestigationService: {} rounds x {} kinds of call",
        settings.rounds,
        Kind::ALL.len()
    );
    let mut db = direct_connection(settings.database_url.as_deref()).await?;
    let mut calls: Vec<Calls> = Kind::ALL.iter().map(|_| Calls::default()).collect();
    let mut direct: Vec<Calls> = Kind::ALL.iter().map(|_| Calls::default()).collect();
    // One unmeasured round: connections, prepared statements and caches warm.
    let mut discard = Calls::default();
    for kind in Kind::ALL {
        call(&mut investigate, &values, kind, 0, settings, &mut discard).await?;
        if let Some(db) = db.as_mut() {
            main_query(db, &values, kind, 0, settings, &mut discard).await?;
        }
    }
    // Rounds interleave the kinds, so whatever else the machine does falls on all alike.
    for round in 0..settings.rounds {
        for (k, kind) in Kind::ALL.into_iter().enumerate() {
            call(
                &mut investigate,
                &values,
                kind,
                round,
                settings,
                &mut calls[k],
            )
            .await?;
            if let Some(db) = db.as_mut() {
                main_query(db, &values, kind, round, settings, &mut direct[k]).await?;
            }
        }
    }
    let rows = Kind::ALL
        .into_iter()
        .zip(calls.into_iter().zip(direct))
        .map(|(kind, (mut c, mut d))| {
            let answered = c.latencies.len();
            let latency = Latency::of(&mut c.latencies);
            let direct = Latency::of(&mut d.latencies);
            let ratio = match (latency, direct) {
                (Some(l), Some(d)) if d.p99_ms > 0.0 => Some(l.p99_ms / d.p99_ms),
                _ => None,
            };
            Row {
                direct,
                ratio,
                call: kind.label(),
                calls: answered,
                errors: c.errors,
                items_per_call: c.items as f64 / answered.max(1) as f64,
                truncated: c.truncated,
                latency,
                p99_target_ms: kind.target_ms(),
                pass: latency.map(|l| l.p99_ms < kind.target_ms()),
                error_samples: c.samples,
            }
        })
        .collect();
    Ok(Report {
        endpoint: settings.endpoint.clone(),
        rounds: settings.rounds,
        rows,
    })
}

/// One timed call. Credentials refused end the run.
async fn call(
    client: &mut InvestigationServiceClient<Authed>,
    values: &Values,
    kind: Kind,
    round: usize,
    settings: &Settings,
    calls: &mut Calls,
) -> anyhow::Result<()> {
    let sent = Instant::now();
    let result = match kind {
        Kind::Donor | Kind::ClinicMonth => {
            let mut request = Request::new(values.search(kind, round, settings.page_size));
            request.set_timeout(CALL_TIMEOUT);
            client
                .search_records(request)
                .await
                .map(|r| (r.into_inner().results.len(), false))
        }
        Kind::Network => {
            let mut request = Request::new(values.network(round));
            request.set_timeout(CALL_TIMEOUT);
            client.get_network(request).await.map(|r| {
                let r = r.into_inner();
                (r.nodes.len(), r.truncated)
            })
        }
        Kind::ClinicActivity => {
            let mut request = Request::new(values.activity(round));
            request.set_timeout(CALL_TIMEOUT);
            client
                .get_clinic_activity(request)
                .await
                .map(|r| (r.into_inner().months.len(), false))
        }
    };
    let took = sent.elapsed();
    match result {
        Ok((items, truncated)) => {
            calls.latencies.push(took);
            calls.items += items;
            calls.truncated += usize::from(truncated);
        }
        Err(status)
            if matches!(
                status.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ) =>
        {
            return Err(refused(&status));
        }
        Err(status) => {
            calls.errors += 1;
            if calls.samples.len() < SAMPLES {
                calls
                    .samples
                    .push(format!("{:?} {}", status.code(), status.message()));
            }
        }
    }
    Ok(())
}

/// The main query of a search as the store builds it (src/store/investigate.rs:
/// `search_records`, `push_record_filter`), timed over a direct connection;
/// nothing for the other kinds. A change there must be copied here.
async fn main_query(
    db: &mut PgConnection,
    values: &Values,
    kind: Kind,
    round: usize,
    settings: &Settings,
    calls: &mut Calls,
) -> anyhow::Result<()> {
    let request = values.search(kind, round, settings.page_size);
    let mut q: QueryBuilder<Postgres> =
        QueryBuilder::new("SELECT r.id, r.transplanted_at FROM records r");
    q.push(" WHERE true");
    match kind {
        Kind::Donor => {
            let fingerprint = hex::decode(&request.donor_fingerprint)
                .context("a donor fingerprint the server listed")?;
            q.push(" AND r.donor_fp = ").push_bind(fingerprint);
        }
        Kind::ClinicMonth => {
            let at = |t: Option<prost_types::Timestamp>| {
                t.and_then(|t| DateTime::from_timestamp(t.seconds, 0))
                    .context("a search's month")
            };
            q.push(" AND r.clinic_id = ")
                .push_bind(request.clinic_id.clone());
            q.push(" AND r.transplanted_at >= ")
                .push_bind(at(request.transplanted_after)?);
            q.push(" AND r.transplanted_at < ")
                .push_bind(at(request.transplanted_before)?);
        }
        Kind::Network | Kind::ClinicActivity => return Ok(()),
    }
    q.push(format_args!(
        " ORDER BY r.transplanted_at DESC, r.id DESC LIMIT {}",
        settings.page_size + 1
    ));
    let sent = Instant::now();
    let rows = q
        .build()
        .fetch_all(&mut *db)
        .await
        .context("a search's main query over a direct connection")?;
    calls.latencies.push(sent.elapsed());
    calls.items += rows.len();
    Ok(())
}

/// The donors and clinic-months of the newest records, and the newest flags.
async fn discover(
    audit: &mut AuditServiceClient<Authed>,
    investigate: &mut InvestigationServiceClient<Authed>,
) -> anyhow::Result<Values> {
    let mut request = Request::new(pb::SearchRecordsRequest {
        page_size: 500,
        ..Default::default()
    });
    request.set_timeout(CALL_TIMEOUT);
    let records = investigate
        .search_records(request)
        .await
        .map_err(|s| refused(&s))
        .context("finding the donors and clinics to search by")?
        .into_inner()
        .results;
    let mut values = Values::default();
    for r in records.iter().filter_map(|r| r.record.as_ref()) {
        if values.donors.len() < MAX_VALUES && !values.donors.contains(&r.donor_fingerprint) {
            values.donors.push(r.donor_fingerprint.clone());
        }
        let Some(t) = r.record.as_ref() else { continue };
        let Some(at) = t
            .transplanted_at
            .as_ref()
            .and_then(|ts| DateTime::from_timestamp(ts.seconds, 0))
        else {
            continue;
        };
        let Some(start) = Utc
            .with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0)
            .single()
        else {
            continue;
        };
        let pair = (t.clinic_id.clone(), start);
        if values.clinic_months.len() < MAX_VALUES && !values.clinic_months.contains(&pair) {
            values.clinic_months.push(pair);
        }
    }
    let mut request = Request::new(pb::ListFlagsRequest {
        page_size: 500,
        ..Default::default()
    });
    request.set_timeout(CALL_TIMEOUT);
    let flags = audit
        .list_flags(request)
        .await
        .map_err(|s| refused(&s))
        .context("finding the flags to start networks from")?
        .into_inner()
        .flags;
    values.flags = flags
        .into_iter()
        .take(MAX_VALUES)
        .map(|f| f.flag_id)
        .collect();
    if values.donors.is_empty() || values.flags.is_empty() {
        return Err(anyhow!(
            "the server has no records or no flags: load some first, e.g. \
             psql \"$DATABASE_URL\" -v n=10000000 -v flags=1000000 -f benches/seed.sql"
        ));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_roll_over_the_year() {
        let dec = Utc.with_ymd_and_hms(2024, 12, 1, 0, 0, 0).unwrap();
        assert_eq!(
            next_month(dec),
            Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
        );
        let mar = Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap();
        assert_eq!(
            next_month(mar),
            Utc.with_ymd_and_hms(2025, 4, 1, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn requests_take_the_values_in_turn() {
        let start = Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap();
        let values = Values {
            donors: vec!["a".into(), "b".into()],
            clinic_months: vec![("C1".into(), start)],
            flags: vec!["7".into()],
        };
        assert_eq!(values.search(Kind::Donor, 3, 50).donor_fingerprint, "b");
        let month = values.search(Kind::ClinicMonth, 0, 50);
        assert_eq!(month.clinic_id, "C1");
        assert_eq!(
            month.transplanted_before.map(|t| t.seconds),
            Some(next_month(start).timestamp())
        );
        assert_eq!(values.network(5).depth, Some(2));
        let year = values.activity(0);
        assert_eq!(
            (year.from_month.as_str(), year.until_month.as_str()),
            ("2024-04", "2025-03")
        );
    }
}
