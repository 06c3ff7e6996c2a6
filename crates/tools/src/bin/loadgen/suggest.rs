//! `--mode suggest-cases`: how long SuggestCases takes over every open flag
//! outside a case, `rounds` calls one at a time, against the 5 s target.
//! Only the access log is written.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use serde::Serialize;
use tonic::transport::Channel;
use tonic::{Code, Request};
use transplant_audit_core::wire::pb;
use transplant_audit_core::wire::pb::investigation_service_client::InvestigationServiceClient;

use super::grpc::Bearer;
use super::report::{Judged, Latency};

/// Deadline of one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// The target of one call, in milliseconds.
const TARGET_MS: f64 = 5_000.0;

/// Everything the phase measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The server.
    pub endpoint: String,
    /// Calls answered.
    pub calls: usize,
    /// Open flags outside cases that the server grouped (from its answer).
    pub open_flags: i64,
    /// Groups returned per call.
    pub groups: usize,
    /// Flags in the groups returned.
    pub flags_in_groups: usize,
    /// Latency of the answered calls.
    pub latency: Option<Latency>,
    /// The slowest call below the target, when measured.
    pub pass: Option<bool>,
}

impl Judged for Report {
    fn errors(&self) -> usize {
        0
    }

    fn missed_a_target(&self) -> bool {
        self.pass == Some(false)
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "transplant-audit SuggestCases: {} calls, one at a time, {}",
            self.calls, self.endpoint
        );
        let _ = writeln!(
            out,
            "open flags outside cases {}, groups returned {}, flags in them {}",
            self.open_flags, self.groups, self.flags_in_groups
        );
        if let Some(l) = &self.latency {
            let verdict = if self.pass == Some(true) {
                "PASS"
            } else {
                "FAIL"
            };
            let _ = writeln!(
                out,
                "p50 {:.0} ms, max {:.0} ms (target every call < {TARGET_MS:.0} ms)  {verdict}",
                l.p50_ms, l.max_ms
            );
        }
        out
    }
}

/// Calls SuggestCases `rounds` times over `channel` with an AUDITOR key,
/// after one unmeasured call.
pub async fn run(
    channel: Channel,
    key: Option<&str>,
    endpoint: &str,
    rounds: usize,
) -> anyhow::Result<Report> {
    let mut client = InvestigationServiceClient::with_interceptor(channel, Bearer::new(key)?);
    let mut latencies = Vec::with_capacity(rounds);
    let mut last = pb::SuggestCasesResponse::default();
    for round in 0..=rounds {
        let mut request = Request::new(pb::SuggestCasesRequest { max_groups: 500 });
        request.set_timeout(CALL_TIMEOUT);
        let sent = Instant::now();
        last = match client.suggest_cases(request).await {
            Ok(answer) => answer.into_inner(),
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unauthenticated | Code::PermissionDenied
                ) =>
            {
                return Err(anyhow!(
                    "{:?}: {}; --mode suggest-cases needs an AUDITOR key (--api-key)",
                    status.code(),
                    status.message()
                ));
            }
            Err(status) => return Err(anyhow!("SuggestCases failed: {status}")),
        };
        if round > 0 {
            latencies.push(sent.elapsed());
        }
        eprintln!(
            "  call {round}: {:.0} ms",
            sent.elapsed().as_secs_f64() * 1e3
        );
    }
    let latency = Latency::of(&mut latencies);
    Ok(Report {
        endpoint: endpoint.to_owned(),
        calls: latencies.len(),
        open_flags: last.open_flags,
        groups: last.groups.len(),
        flags_in_groups: last.groups.iter().map(|g| g.flag_ids.len()).sum(),
        pass: latency.map(|l| l.max_ms < TARGET_MS),
        latency,
    })
}
