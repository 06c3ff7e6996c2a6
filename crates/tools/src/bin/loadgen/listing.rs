//! `--mode list-flags`: ListFlags latency as auditors see it. For each of a
//! few common filters, the first page, then the next page with the returned
//! token, `rounds` times, one call at a time; p50/p99 per filter and page
//! against the target (p99 under 5 ms).
//!
//! The clinics and hospitals filtered on are the ones of the newest flags
//! (one unfiltered page of 500), taken in turn; the rules are every rule of
//! the catalogue in turn, rare ones included.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde::Serialize;
use tonic::transport::Channel;
use tonic::{Code, Request};
use transplant_audit_core::rules::RuleId;
use transplant_audit_core::wire::pb;
use transplant_audit_core::wire::pb::audit_service_client::AuditServiceClient;

use super::grpc::Bearer;
use super::report::{Judged, Latency};

/// Target: p99 of every listing page below this, in milliseconds.
pub const P99_TARGET_MS: f64 = 5.0;
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
    fn new(query: &'static str, page: &'static str, mut calls: Calls) -> Self {
        let answered = calls.latencies.len();
        let latency = Latency::of(&mut calls.latencies);
        Self {
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
        self.rows.iter().any(|r| r.pass == Some(false))
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
            "{:<26} {:<5} {:>6} {:>6} {:>7} {:>8} {:>8} {:>8}  p99 < {} ms",
            "query",
            "page",
            "calls",
            "errors",
            "flags",
            "p50 ms",
            "p99 ms",
            "max ms",
            P99_TARGET_MS
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
            let _ = writeln!(
                out,
                "{:<26} {:<5} {:>6} {:>6} {:>7.1} {:>8} {:>8} {:>8}  {verdict}",
                r.query,
                r.page,
                r.calls,
                r.errors,
                r.flags_per_page,
                ms(|l| l.p50_ms),
                ms(|l| l.p99_ms),
                ms(|l| l.max_ms),
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
    let mut client = AuditServiceClient::with_interceptor(channel, Bearer::new(key)?);
    let values = discover(&mut client).await?;
    eprintln!(
        "ListFlags: {} rounds x {} queries, first and next page",
        settings.rounds,
        Kind::ALL.len()
    );
    let mut first: Vec<Calls> = Kind::ALL.iter().map(|_| Calls::default()).collect();
    let mut next: Vec<Calls> = Kind::ALL.iter().map(|_| Calls::default()).collect();
    // One unmeasured round: connections, prepared statements and caches warm.
    let mut discard = (Calls::default(), Calls::default());
    for (k, kind) in Kind::ALL.into_iter().enumerate() {
        let request = values.request(kind, k, settings.page_size);
        pair(&mut client, request, &mut discard.0, &mut discard.1).await?;
    }
    // Rounds interleave the kinds, so whatever else the machine does falls on all alike.
    for round in 0..settings.rounds {
        for (k, kind) in Kind::ALL.into_iter().enumerate() {
            let request = values.request(kind, round, settings.page_size);
            pair(&mut client, request, &mut first[k], &mut next[k]).await?;
        }
    }
    let mut rows = Vec::new();
    for ((kind, f), n) in Kind::ALL.into_iter().zip(first).zip(next) {
        rows.push(Row::new(kind.label(), "first", f));
        rows.push(Row::new(kind.label(), "next", n));
    }
    Ok(Report {
        endpoint: settings.endpoint.clone(),
        rounds: settings.rounds,
        page_size: settings.page_size,
        p99_target_ms: P99_TARGET_MS,
        clinics: values.clinics,
        hospitals: values.hospitals,
        rows,
    })
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
    fn rows_judge_the_p99() {
        let calls = Calls {
            latencies: (1..=100).map(Duration::from_micros).collect(),
            flags: 5000,
            ..Calls::default()
        };
        let row = Row::new("q", "first", calls);
        assert_eq!(
            (row.calls, row.flags_per_page, row.pass),
            (100, 50.0, Some(true))
        );
        let slow = Calls {
            latencies: vec![Duration::from_millis(6)],
            ..Calls::default()
        };
        assert_eq!(Row::new("q", "next", slow).pass, Some(false));
        assert_eq!(Row::new("q", "next", Calls::default()).pass, None);
    }
}
