//! `--mode list-flags`: ListFlags latency as auditors see it. For each of a
//! few common filters, the first page, then the next page with the returned
//! token, `rounds` times, one call at a time; p50/p99 per filter and page
//! against the target (p99 under 5 ms).
//!
//! The clinics and hospitals filtered on are the ones of the newest flags
//! (one unfiltered page of 500), taken in turn; the rules are every rule of
//! the catalogue in turn, rare ones included.
//!
//! Given the server's database, each call is followed by the same SQL the
//! store runs for that page, over a connection of this tool's own (a
//! prepared statement, as the store's): the ratio of the two p99s is what
//! the service adds to its database's own tail (target at most 2). Each
//! round also times a health check over the same connection: the floor
//! any call pays (HTTP/2, the layers, both ends' scheduling) before the
//! service does any work.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde::Serialize;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row as _};
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use transplant_audit_core::rules::RuleId;
use transplant_audit_core::wire::pb;
use transplant_audit_core::wire::pb::audit_service_client::AuditServiceClient;

use super::baseline::direct_connection;
use super::grpc::Bearer;
use super::report::{Judged, Latency};

/// Target: p99 of every listing page below this, in milliseconds.
pub const P99_TARGET_MS: f64 = 5.0;
/// Target: a listing's p99 through the service at most this multiple of
/// the p99 of its SQL over a direct connection.
pub const RATIO_TARGET: f64 = 2.0;
/// Deadline of one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Most distinct clinics and hospitals taken in turn.
const MAX_VALUES: usize = 20;
/// Most failure messages kept per row.
const SAMPLES: usize = 3;

type Audit = AuditServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// How the listing phase runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Endpoint, for the report.
    pub endpoint: String,
    /// First-and-next-page pairs per query kind.
    pub rounds: usize,
    /// Flags per page.
    pub page_size: i32,
    /// The server's database, for timing the same SQL directly.
    pub database_url: Option<String>,
}

/// The filter of one kind of query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    All,
    Open,
    Rule,
    Clinic,
    Hospital,
    High,
    Critical,
    OpenAtClinic,
    OpenCritical,
}

impl Kind {
    const ALL: [Kind; 9] = [
        Kind::All,
        Kind::Open,
        Kind::Rule,
        Kind::Clinic,
        Kind::Hospital,
        Kind::High,
        Kind::Critical,
        Kind::OpenAtClinic,
        Kind::OpenCritical,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::All => "no filter",
            Kind::Open => "status=OPEN",
            Kind::Rule => "rule_id (each rule)",
            Kind::Clinic => "clinic_id",
            Kind::Hospital => "hospital_id",
            Kind::High => "min_severity=HIGH",
            Kind::Critical => "min_severity=CRITICAL",
            Kind::OpenAtClinic => "status=OPEN + clinic_id",
            Kind::OpenCritical => "status=OPEN + CRITICAL",
        }
    }
}

/// The values filtered on, taken in turn.
#[derive(Debug)]
struct Values {
    clinics: Vec<String>,
    hospitals: Vec<String>,
}

impl Values {
    /// The `round`th request of `kind`, first page.
    fn request(&self, kind: Kind, round: usize, page_size: i32) -> pb::ListFlagsRequest {
        let open = pb::FlagStatus::Open as i32;
        let pick = |v: &[String]| v[round % v.len()].clone();
        let mut r = pb::ListFlagsRequest {
            page_size,
            ..pb::ListFlagsRequest::default()
        };
        match kind {
            Kind::All => {}
            Kind::Open => r.status = open,
            Kind::Rule => r.rule_id = RuleId::ALL[round % RuleId::ALL.len()].as_str().into(),
            Kind::Clinic => r.clinic_id = pick(&self.clinics),
            Kind::Hospital => r.hospital_id = pick(&self.hospitals),
            Kind::High => r.min_severity = pb::Severity::High as i32,
            Kind::Critical => r.min_severity = pb::Severity::Critical as i32,
            Kind::OpenAtClinic => {
                r.status = open;
                r.clinic_id = pick(&self.clinics);
            }
            Kind::OpenCritical => {
                r.status = open;
                r.min_severity = pb::Severity::Critical as i32;
            }
        }
        r
    }
}

/// What one query kind and page saw.
#[derive(Debug, Default)]
struct Calls {
    latencies: Vec<Duration>,
    flags: usize,
    errors: usize,
    samples: Vec<String>,
}

impl Calls {
    fn failed(&mut self, message: String) {
        self.errors += 1;
        if self.samples.len() < SAMPLES {
            self.samples.push(message);
        }
    }
}

/// One row of the report: a query kind's first or next pages.
#[derive(Debug, Serialize)]
pub struct Row {
    /// The same SQL over a direct connection, when measured.
    pub direct: Option<Latency>,
    /// The service's p99 over the direct p99.
    pub ratio: Option<f64>,
    /// The ratio at most the target, when measured.
    pub ratio_pass: Option<bool>,
    /// The filter.
    pub query: &'static str,
    /// `first` or `next`.
    pub page: &'static str,
    /// Calls answered.
    pub calls: usize,
    /// Calls that failed.
    pub errors: usize,
    /// Mean flags per answered page.
    pub flags_per_page: f64,
    /// Latency of the answered calls.
    pub latency: Option<Latency>,
    /// p99 below the target, when measured.
    pub pass: Option<bool>,
    /// The first few failures.
    pub error_samples: Vec<String>,
}

impl Row {
    fn new(query: &'static str, page: &'static str, mut calls: Calls, mut direct: Calls) -> Self {
        let answered = calls.latencies.len();
        let latency = Latency::of(&mut calls.latencies);
        let direct = Latency::of(&mut direct.latencies);
        let ratio = match (latency, direct) {
            (Some(l), Some(d)) if d.p99_ms > 0.0 => Some(l.p99_ms / d.p99_ms),
            _ => None,
        };
        Self {
            direct,
            ratio,
            ratio_pass: ratio.map(|r| r <= RATIO_TARGET),
            query,
            page,
            calls: answered,
            errors: calls.errors,
            flags_per_page: calls.flags as f64 / answered.max(1) as f64,
            latency,
            pass: latency.map(|l| l.p99_ms < P99_TARGET_MS),
            error_samples: calls.samples,
        }
    }
}

/// Everything the listing phase measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The server.
    pub endpoint: String,
    /// Rounds per query kind.
    pub rounds: usize,
    /// Flags per page asked for.
    pub page_size: i32,
    /// The target p99, in milliseconds.
    pub p99_target_ms: f64,
    /// Clinics and hospitals filtered on, in turn.
    pub clinics: Vec<String>,
    /// Hospitals filtered on, in turn.
    pub hospitals: Vec<String>,
    /// A health check's latency over the same connection, once a round:
    /// what any call costs before the service does any work.
    pub floor: Option<Latency>,
    /// One row per query kind and page.
    pub rows: Vec<Row>,
}

impl Report {}

impl Judged for Report {
    /// Calls that failed.
    fn errors(&self) -> usize {
        self.rows.iter().map(|r| r.errors).sum()
    }

    /// Whether a row's p99 missed the target.
    fn missed_a_target(&self) -> bool {
        self.rows
            .iter()
            .any(|r| r.pass == Some(false) || r.ratio_pass == Some(false))
    }

    /// The human-readable table.
    fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "transplant-audit ListFlags latency: {} rounds of first + next page per query, page size {}, one call at a time, {}",
            self.rounds, self.page_size, self.endpoint
        );
        let _ = writeln!(
            out,
            "clinics in turn: {}; hospitals in turn: {}\n",
            self.clinics.join(" "),
            self.hospitals.join(" ")
        );
        let _ = writeln!(
            out,
            "{:<26} {:<5} {:>6} {:>6} {:>7} {:>8} {:>8} {:>8}  {:<13} {:>10} {:>10} {:>6}  ratio <= {}",
            "query",
            "page",
            "calls",
            "errors",
            "flags",
            "p50 ms",
            "p99 ms",
            "max ms",
            format!("p99 < {P99_TARGET_MS} ms"),
            "SQL p50 ms",
            "SQL p99 ms",
            "ratio",
            RATIO_TARGET
        );
        for r in &self.rows {
            let ms = |f: fn(&Latency) -> f64| {
                r.latency
                    .as_ref()
                    .map_or_else(|| "-".into(), |l| format!("{:.2}", f(l)))
            };
            let direct = |f: fn(&Latency) -> f64| {
                r.direct
                    .as_ref()
                    .map_or_else(|| "-".into(), |l| format!("{:.2}", f(l)))
            };
            let verdict = |pass: Option<bool>| match pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "not measured",
            };
            let ratio = r.ratio.map_or_else(|| "-".into(), |x| format!("{x:.2}"));
            let _ = writeln!(
                out,
                "{:<26} {:<5} {:>6} {:>6} {:>7.1} {:>8} {:>8} {:>8}  {:<13} {:>10} {:>10} {:>6}  {}",
                r.query,
                r.page,
                r.calls,
                r.errors,
                r.flags_per_page,
                ms(|l| l.p50_ms),
                ms(|l| l.p99_ms),
                ms(|l| l.max_ms),
                verdict(r.pass),
                direct(|l| l.p50_ms),
                direct(|l| l.p99_ms),
                ratio,
                verdict(r.ratio_pass),
            );
        }
        if let Some(floor) = &self.floor {
            let _ = writeln!(
                out,
                "\nthe floor, a health check over the same connection (no database): p50 {:.2} ms, p99 {:.2} ms",
                floor.p50_ms, floor.p99_ms
            );
        }
        for r in self.rows.iter().filter(|r| !r.error_samples.is_empty()) {
            let _ = writeln!(
                out,
                "{} errors in {} ({}), first ones:",
                r.errors, r.query, r.page
            );
            for s in &r.error_samples {
                let _ = writeln!(out, "  {s}");
            }
        }
        out
    }
}

/// Measures ListFlags over `channel` with an AUDITOR key.
pub async fn run(
    channel: Channel,
    key: Option<&str>,
    settings: &Settings,
) -> anyhow::Result<Report> {
    let mut health = HealthClient::new(channel.clone());
    let mut client = AuditServiceClient::with_interceptor(channel, Bearer::new(key)?);
    let values = discover(&mut client).await?;
    let mut db = direct_connection(settings.database_url.as_deref()).await?;
    eprintln!(
        "ListFlags: {} rounds x {} queries, first and next page",
        settings.rounds,
        Kind::ALL.len()
    );
    let calls = || -> Vec<Calls> { Kind::ALL.iter().map(|_| Calls::default()).collect() };
    let (mut first, mut next, mut direct_first, mut direct_next) =
        (calls(), calls(), calls(), calls());
    // Unmeasured rounds: connections, prepared statements (the server's
    // pool has several connections, each preparing its own) and caches warm.
    let mut discard = (Calls::default(), Calls::default());
    let mut floor = Calls::default();
    for round in 0..WARM_UP_ROUNDS {
        empty_call(&mut health, &mut discard.0).await?;
        for kind in Kind::ALL {
            let request = values.request(kind, round, settings.page_size);
            pair(&mut client, request.clone(), &mut discard.0, &mut discard.1).await?;
            if let Some(db) = db.as_mut() {
                direct_pair(db, &request, &mut discard.0, &mut discard.1).await?;
            }
        }
    }
    // Rounds interleave the kinds, and each call is followed by its SQL, so
    // whatever else the machine does falls on all alike.
    for round in 0..settings.rounds {
        empty_call(&mut health, &mut floor).await?;
        for (k, kind) in Kind::ALL.into_iter().enumerate() {
            let request = values.request(kind, round, settings.page_size);
            pair(&mut client, request.clone(), &mut first[k], &mut next[k]).await?;
            if let Some(db) = db.as_mut() {
                direct_pair(db, &request, &mut direct_first[k], &mut direct_next[k]).await?;
            }
        }
    }
    let mut rows = Vec::new();
    let measured = first
        .into_iter()
        .zip(next)
        .zip(direct_first)
        .zip(direct_next);
    for (kind, (((f, n), df), dn)) in Kind::ALL.into_iter().zip(measured) {
        rows.push(Row::new(kind.label(), "first", f, df));
        rows.push(Row::new(kind.label(), "next", n, dn));
    }
    Ok(Report {
        endpoint: settings.endpoint.clone(),
        rounds: settings.rounds,
        page_size: settings.page_size,
        p99_target_ms: P99_TARGET_MS,
        clinics: values.clinics,
        hospitals: values.hospitals,
        floor: Latency::of(&mut floor.latencies),
        rows,
    })
}

/// One timed health check: a call through the same connection and layers
/// that reads no database, the floor under every listing's latency.
async fn empty_call(health: &mut HealthClient<Channel>, calls: &mut Calls) -> anyhow::Result<()> {
    let mut request = Request::new(HealthCheckRequest::default());
    request.set_timeout(CALL_TIMEOUT);
    let sent = Instant::now();
    health
        .check(request)
        .await
        .context("grpc.health.v1.Health/Check")?;
    calls.latencies.push(sent.elapsed());
    Ok(())
}

/// Unmeasured rounds of every query before the measured ones.
const WARM_UP_ROUNDS: usize = 20;

/// The SQL the store runs for a page of `request` (src/store/flags.rs:
/// `FLAG_COLUMNS`, `push_filter`, `list_flags`), with the same literals
/// and binds, so it is prepared and planned as the store's is. A change
/// there must be copied here.
fn store_sql(
    request: &pb::ListFlagsRequest,
    before: Option<i64>,
) -> QueryBuilder<'static, Postgres> {
    let mut q = QueryBuilder::new(
        "SELECT f.id, f.record_id, f.rule_id, f.rule_version, f.severity,
    f.explanation, f.evidence_record_ids, f.status, f.revision, f.raised_at, f.updated_at,
    f.hospital_id, f.clinic_id, f.external_record_id, f.record_version, f.cleared_in_version, f.dismissal_proposed_by
    FROM flags f",
    );
    q.push(" WHERE true");
    if request.status == pb::FlagStatus::Open as i32 {
        q.push(" AND f.status = ").push_bind("OPEN");
    }
    let severity = match pb::Severity::try_from(request.min_severity) {
        Ok(pb::Severity::Low) => Some(1),
        Ok(pb::Severity::Medium) => Some(2),
        Ok(pb::Severity::High) => Some(3),
        Ok(pb::Severity::Critical) => Some(4),
        _ => None,
    };
    if let Some(min) = severity {
        q.push(format_args!(" AND f.severity >= {min}"));
    }
    if !request.rule_id.is_empty() {
        // Catalogue rule ids only (what this tool asks for), as literals.
        q.push(format_args!(
            " AND f.rule_id BETWEEN '{0}' AND '{0}'",
            request.rule_id.replace('\'', "")
        ));
    }
    if !request.clinic_id.is_empty() {
        q.push(" AND f.clinic_id = ")
            .push_bind(request.clinic_id.clone());
    }
    if !request.hospital_id.is_empty() {
        q.push(" AND f.hospital_id = ")
            .push_bind(request.hospital_id.clone());
    }
    if let Some(before) = before {
        q.push(" AND f.id < ").push_bind(before);
    }
    let by_rule = !request.rule_id.is_empty()
        && request.clinic_id.is_empty()
        && request.hospital_id.is_empty();
    let order = if by_rule {
        "f.rule_id, f.id DESC"
    } else {
        "f.id DESC"
    };
    q.push(format_args!(
        " ORDER BY {order} LIMIT {}",
        request.page_size + 1
    ));
    q
}

/// The store's SQL for the first page of `request`, then, when there is
/// one, for the next page, each timed.
async fn direct_pair(
    db: &mut PgConnection,
    request: &pb::ListFlagsRequest,
    first: &mut Calls,
    next: &mut Calls,
) -> anyhow::Result<()> {
    let Some(before) = direct(db, request, None, first).await? else {
        return Ok(());
    };
    direct(db, request, Some(before), next).await?;
    Ok(())
}

/// One timed run of the store's SQL; the id the next page starts below,
/// when there is a next page.
async fn direct(
    db: &mut PgConnection,
    request: &pb::ListFlagsRequest,
    before: Option<i64>,
    calls: &mut Calls,
) -> anyhow::Result<Option<i64>> {
    let mut q = store_sql(request, before);
    let sent = Instant::now();
    let rows = q
        .build()
        .fetch_all(&mut *db)
        .await
        .context("the store's listing SQL over a direct connection")?;
    calls.latencies.push(sent.elapsed());
    calls.flags += rows.len().min(request.page_size as usize);
    let page = usize::try_from(request.page_size).unwrap_or(0);
    if rows.len() > page && page > 0 {
        Ok(Some(rows[page - 1].try_get("id")?))
    } else {
        Ok(None)
    }
}

/// The first page of `request`, then, when it has a token, the next page.
async fn pair(
    client: &mut Audit,
    request: pb::ListFlagsRequest,
    first: &mut Calls,
    next: &mut Calls,
) -> anyhow::Result<()> {
    let Some(token) = call(client, request.clone(), first).await? else {
        return Ok(());
    };
    if token.is_empty() {
        return Ok(());
    }
    let request = pb::ListFlagsRequest {
        page_token: token,
        ..request
    };
    call(client, request, next).await?;
    Ok(())
}

/// One timed call; its next-page token when answered. Credentials refused end the run.
async fn call(
    client: &mut Audit,
    request: pb::ListFlagsRequest,
    calls: &mut Calls,
) -> anyhow::Result<Option<String>> {
    let mut request = Request::new(request);
    request.set_timeout(CALL_TIMEOUT);
    let sent = Instant::now();
    let result = client.list_flags(request).await;
    let took = sent.elapsed();
    match result {
        Ok(response) => {
            let response = response.into_inner();
            calls.latencies.push(took);
            calls.flags += response.flags.len();
            Ok(Some(response.next_page_token))
        }
        Err(status)
            if matches!(
                status.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ) =>
        {
            Err(anyhow!(
                "ListFlags: {:?}: {}; --mode list-flags needs an AUDITOR key (--api-key), \
                 e.g. from `transplant-audit keys create --role auditor --principal NAME`",
                status.code(),
                status.message()
            ))
        }
        Err(status) => {
            calls.failed(format!("{:?} {}", status.code(), status.message()));
            Ok(None)
        }
    }
}

/// The clinics and hospitals of the newest flags.
async fn discover(client: &mut Audit) -> anyhow::Result<Values> {
    let mut request = Request::new(pb::ListFlagsRequest {
        page_size: 500,
        ..pb::ListFlagsRequest::default()
    });
    request.set_timeout(CALL_TIMEOUT);
    let flags = client
        .list_flags(request)
        .await
        .map_err(|s| anyhow!("ListFlags: {:?}: {}", s.code(), s.message()))
        .context("finding the clinics and hospitals to filter on (an AUDITOR key is needed)")?
        .into_inner()
        .flags;
    let distinct = |f: fn(&pb::Flag) -> &str| {
        let mut seen: Vec<String> = Vec::new();
        for flag in &flags {
            let v = f(flag);
            if seen.len() < MAX_VALUES && !v.is_empty() && !seen.iter().any(|s| s == v) {
                seen.push(v.to_owned());
            }
        }
        seen
    };
    let values = Values {
        clinics: distinct(|f| &f.clinic_id),
        hospitals: distinct(|f| &f.hospital_id),
    };
    if values.clinics.is_empty() || values.hospitals.is_empty() {
        return Err(anyhow!(
            "the server lists no flags: load some first, e.g. \
             psql \"$DATABASE_URL\" -v n=10000000 -v flags=1000000 -f benches/seed.sql"
        ));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_take_the_values_in_turn() {
        let values = Values {
            clinics: vec!["C1".into(), "C2".into()],
            hospitals: vec!["H1".into()],
        };
        let r = values.request(Kind::OpenAtClinic, 3, 50);
        assert_eq!(
            (r.status, r.clinic_id.as_str(), r.page_size),
            (pb::FlagStatus::Open as i32, "C2", 50)
        );
        let rules: std::collections::HashSet<_> = (0..RuleId::ALL.len())
            .map(|i| values.request(Kind::Rule, i, 50).rule_id)
            .collect();
        assert_eq!(rules.len(), RuleId::ALL.len());
        assert_eq!(
            values.request(Kind::All, 0, 7),
            pb::ListFlagsRequest {
                page_size: 7,
                ..Default::default()
            }
        );
    }

    #[test]
    fn the_direct_sql_is_the_stores() {
        let request = pb::ListFlagsRequest {
            page_size: 50,
            status: pb::FlagStatus::Open as i32,
            min_severity: pb::Severity::Critical as i32,
            rule_id: "R1".into(),
            ..Default::default()
        };
        let sql = store_sql(&request, Some(7)).into_sql();
        assert!(
            sql.ends_with(
                " WHERE true AND f.status = $1 AND f.severity >= 4 AND f.rule_id BETWEEN 'R1' AND 'R1' \
                 AND f.id < $2 ORDER BY f.rule_id, f.id DESC LIMIT 51"
            ),
            "{sql}"
        );
    }

    #[test]
    fn rows_judge_the_p99() {
        let calls = Calls {
            latencies: (1..=100).map(Duration::from_micros).collect(),
            flags: 5000,
            ..Calls::default()
        };
        let direct = Calls {
            latencies: vec![Duration::from_micros(40)],
            ..Calls::default()
        };
        let row = Row::new("q", "first", calls, direct);
        assert_eq!(
            (row.calls, row.flags_per_page, row.pass),
            (100, 50.0, Some(true))
        );
        let ratio = row.ratio.expect("both measured");
        assert!((ratio - 99.0 / 40.0).abs() < 1e-9, "{ratio}");
        assert_eq!(row.ratio_pass, Some(false));
        let slow = Calls {
            latencies: vec![Duration::from_millis(6)],
            ..Calls::default()
        };
        let row = Row::new("q", "next", slow, Calls::default());
        assert_eq!((row.pass, row.ratio), (Some(false), None));
        let none = Row::new("q", "next", Calls::default(), Calls::default());
        assert_eq!(none.pass, None);
    }
}
