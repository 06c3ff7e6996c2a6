//! `--mode console`: the web console's pages as an auditor loads them.
//! Signs in at `/login` with an AUDITOR key, then GETs each kind of page
//! `rounds` times, kinds interleaved, one request at a time, and reports
//! p50/p99 of the time to the whole body against a p99 target of 50 ms.
//! Over loopback that is the server's time plus a few tens of
//! microseconds of HTTP.
//!
//! The flags, records, donors and clinics asked for are those of the
//! newest flags (one page of ListFlags over gRPC), taken in turn; a
//! record's donor is read from its page's link. Every page writes the
//! access log, as an auditor's would; nothing else is written.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::Serialize;
use tonic::Request;
use tonic::transport::Channel;
use transplant_audit_core::wire::pb;
use transplant_audit_core::wire::pb::audit_service_client::AuditServiceClient;

use super::grpc::Bearer;
use super::report::{Judged, Latency};

/// The p99 target of every page, in milliseconds.
const TARGET_MS: f64 = 50.0;
/// Most distinct values taken in turn.
const MAX_VALUES: usize = 20;
/// Most failure messages kept per row.
const SAMPLES: usize = 3;

/// How the phase runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The console's base address, e.g. `http://127.0.0.1:8080`.
    pub console: String,
    /// Requests per kind of page.
    pub rounds: usize,
}

/// The kinds of page measured.
const PAGES: [&str; 10] = [
    "/flags",
    "/flags?status=OPEN&min_severity=HIGH",
    "/flags/{flag}",
    "/records/{record}",
    "/donors/{donor}",
    "/clinics/{clinic}",
    "/network?flag_id={flag}",
    "/cases",
    "/cases/suggested",
    "/rules",
];

/// One row of the report.
#[derive(Debug, Serialize)]
pub struct Row {
    /// The page, with its placeholders.
    pub page: &'static str,
    /// Requests answered 200.
    pub requests: usize,
    /// Requests that failed or answered otherwise.
    pub errors: usize,
    /// Mean body size, bytes.
    pub mean_bytes: f64,
    /// Latency of the answered requests.
    pub latency: Option<Latency>,
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
    /// The console.
    pub console: String,
    /// Requests per page.
    pub rounds: usize,
    /// One row per page.
    pub rows: Vec<Row>,
}

impl Judged for Report {
    fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "console pages at {}, {} requests each, one at a time",
            self.console, self.rounds
        );
        let _ = writeln!(
            out,
            "{:<40} {:>6} {:>6} {:>9} {:>8} {:>8} {:>8}  p99 < {TARGET_MS} ms",
            "page", "ok", "errors", "bytes", "p50 ms", "p99 ms", "max ms"
        );
        for r in &self.rows {
            let (p50, p99, max) = r
                .latency
                .as_ref()
                .map(|l| (l.p50_ms, l.p99_ms, l.max_ms))
                .unwrap_or_default();
            let verdict = match r.pass {
                Some(true) => "pass",
                Some(false) => "MISS",
                None => "–",
            };
            let _ = writeln!(
                out,
                "{:<40} {:>6} {:>6} {:>9.0} {:>8.2} {:>8.2} {:>8.2}  {verdict}",
                r.page, r.requests, r.errors, r.mean_bytes, p50, p99, max
            );
            for s in &r.error_samples {
                let _ = writeln!(out, "    {s}");
            }
        }
        out
    }

    fn errors(&self) -> usize {
        self.rows.iter().map(|r| r.errors).sum()
    }

    fn missed_a_target(&self) -> bool {
        self.rows.iter().any(|r| r.pass == Some(false))
    }
}

/// The values pages are asked for, taken in turn.
#[derive(Debug, Default)]
struct Values {
    flags: Vec<String>,
    records: Vec<String>,
    donors: Vec<String>,
    clinics: Vec<String>,
}

impl Values {
    fn path(&self, page: &str, round: usize) -> String {
        let pick = |v: &Vec<String>| v[round % v.len()].clone();
        page.replace("{flag}", &pick(&self.flags))
            .replace("{record}", &pick(&self.records))
            .replace("{donor}", &pick(&self.donors))
            .replace("{clinic}", &encode(&pick(&self.clinics)))
    }
}

/// A path segment, every byte but RFC 3986's unreserved ones percent-encoded
/// (as the console encodes the links it draws).
fn encode(text: &str) -> String {
    const UNRESERVED_KEPT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, UNRESERVED_KEPT).to_string()
}

/// Signs in with `api_key`; answers the session cookie to send back.
async fn sign_in(http: &reqwest::Client, console: &str, api_key: &str) -> anyhow::Result<String> {
    let response = http
        .post(format!("{console}/login"))
        .form(&[("api_key", api_key)])
        .send()
        .await
        .context("POST /login")?;
    if response.status() != reqwest::StatusCode::SEE_OTHER {
        bail!(
            "sign-in answered {} (an AUDITOR or ADMIN key is needed)",
            response.status()
        );
    }
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("ta_session="))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("sign-in set no session cookie"))
}

/// Runs the phase against the console at `settings.console`, reading the
/// values over gRPC on `channel`, both with the AUDITOR key `api_key`.
pub async fn run(
    channel: Channel,
    api_key: Option<&str>,
    settings: &Settings,
) -> anyhow::Result<Report> {
    let api_key = api_key.context("--mode console needs an AUDITOR key (--api-key)")?;
    let console = settings.console.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let cookie = sign_in(&http, &console, api_key).await?;
    let get = |path: String| {
        http.get(format!("{console}{path}"))
            .header(reqwest::header::COOKIE, cookie.clone())
            .send()
    };

    let mut audit = AuditServiceClient::with_interceptor(channel, Bearer::new(Some(api_key))?);
    let flags = audit
        .list_flags(Request::new(pb::ListFlagsRequest {
            page_size: 200,
            ..Default::default()
        }))
        .await
        .context("ListFlags")?
        .into_inner()
        .flags;
    let mut values = Values::default();
    for f in flags.iter().take(MAX_VALUES) {
        values.flags.push(f.flag_id.clone());
        values.records.push(f.record_id.clone());
        if !values.clinics.contains(&f.clinic_id) {
            values.clinics.push(f.clinic_id.clone());
        }
    }
    for record in &values.records {
        let html = get(format!("/records/{record}")).await?.text().await?;
        if let Some(fp) = html
            .split("href=\"/donors/")
            .nth(1)
            .and_then(|s| s.split('"').next())
        {
            values.donors.push(fp.to_owned());
        }
    }
    if values.flags.is_empty() || values.donors.is_empty() {
        bail!("the server holds no flag: load records that raise some first");
    }

    let mut rows: Vec<(Vec<Duration>, usize, usize, Vec<String>)> =
        PAGES.iter().map(|_| Default::default()).collect();
    for round in 0..settings.rounds {
        for (kind, page) in PAGES.iter().enumerate() {
            let path = values.path(page, round);
            let started = Instant::now();
            let outcome = match get(path.clone()).await {
                Ok(r) if r.status() == reqwest::StatusCode::OK => {
                    r.bytes().await.map_err(|e| e.to_string())
                }
                Ok(r) => Err(format!("{path}: {}", r.status())),
                Err(e) => Err(format!("{path}: {e}")),
            };
            let took = started.elapsed();
            let row = &mut rows[kind];
            match outcome {
                Ok(body) => {
                    row.0.push(took);
                    row.1 += body.len();
                }
                Err(e) => {
                    row.2 += 1;
                    if row.3.len() < SAMPLES {
                        row.3.push(e);
                    }
                }
            }
        }
    }
    Ok(Report {
        console,
        rounds: settings.rounds,
        rows: PAGES
            .iter()
            .zip(rows)
            .map(|(page, (mut latencies, bytes, errors, error_samples))| {
                let requests = latencies.len();
                let latency = Latency::of(&mut latencies);
                Row {
                    page,
                    requests,
                    errors,
                    mean_bytes: if requests == 0 {
                        0.0
                    } else {
                        bytes as f64 / requests as f64
                    },
                    pass: latency.as_ref().map(|l| l.p99_ms < TARGET_MS),
                    latency,
                    p99_target_ms: TARGET_MS,
                    error_samples,
                }
            })
            .collect(),
    })
}
