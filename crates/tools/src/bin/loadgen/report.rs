//! The figures of a run: each phase's throughput, latency and CPU, the
//! ratios the targets are set on, and how they are printed.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::probe::{CpuUsage, Rss};
use super::synth::Mix;

/// Most failure messages kept per phase.
const SAMPLES: usize = 5;

/// Target: streamed ingest at least this share of the batched raw insert.
pub const STREAM_TARGET: f64 = 0.80;
/// Target: unary ingest at least this share of the one-row-per-transaction insert.
pub const UNARY_TARGET: f64 = 0.70;
/// Target: the server's peak resident set below this, in MiB.
pub const RSS_TARGET_MIB: f64 = 150.0;

/// Records that were not accepted, with the first few reasons.
#[derive(Debug, Default, Serialize)]
pub struct Failures {
    /// How many.
    pub count: usize,
    /// The first few messages.
    pub samples: Vec<String>,
}

impl Failures {
    /// Counts one failure.
    pub fn add(&mut self, message: String) {
        self.add_many(1, message);
    }

    /// Counts `n` failures described by one message.
    pub fn add_many(&mut self, n: usize, message: String) {
        self.count += n;
        if self.samples.len() < SAMPLES {
            self.samples.push(message);
        }
    }

    /// Adds another caller's failures.
    pub fn merge(&mut self, other: Failures) {
        self.count += other.count;
        let room = SAMPLES.saturating_sub(self.samples.len());
        self.samples.extend(other.samples.into_iter().take(room));
    }
}

/// What one measured phase saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// Records stored (acknowledged ACCEPTED, or inserted).
    pub accepted: usize,
    /// One latency per call or statement.
    pub latencies: Vec<Duration>,
    /// Everything else.
    pub failures: Failures,
}

impl Outcome {
    /// Adds another caller's counts and latencies (the elapsed time is the phase's own).
    pub fn merge(&mut self, other: Outcome) {
        self.accepted += other.accepted;
        self.latencies.extend(other.latencies);
        self.failures.merge(other.failures);
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Latency {
    /// Nearest-rank percentiles of `samples`; `None` when there are none.
    pub fn of(samples: &mut [Duration]) -> Option<Self> {
        samples.sort_unstable();
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        let rank = |q: f64| {
            let i = (q * samples.len() as f64).ceil() as usize;
            samples.get(i.saturating_sub(1)).map(ms)
        };
        Some(Self {
            p50_ms: rank(0.50)?,
            p99_ms: rank(0.99)?,
            max_ms: samples.last().map(ms)?,
        })
    }
}

/// Which measurement a phase is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseKind {
    /// SubmitRecord from concurrent callers.
    Unary,
    /// One SubmitRecords stream.
    Stream,
    /// Raw insert, one row per transaction after a key lookup, concurrent callers.
    RawOnePerTransaction,
    /// Raw batched `INSERT … SELECT FROM UNNEST`.
    RawBatched,
    /// Stored records submitted again unchanged (`--replays`).
    Resubmit,
    /// Stored records amended (`--replays`).
    Amend,
}

/// One measured phase, as reported.
#[derive(Debug, Serialize)]
pub struct Phase {
    /// Which measurement.
    pub kind: PhaseKind,
    /// Which repetition of the service and baseline phases (from 1).
    pub repeat: usize,
    /// How it is labelled in the table.
    pub label: String,
    /// Records offered.
    pub records: usize,
    /// Records stored (for replays: acknowledged as expected).
    pub accepted: usize,
    /// Records not stored, or stored with a wrong acknowledgement.
    pub errors: usize,
    /// Wall time.
    pub seconds: f64,
    /// Stored records per second of wall time.
    pub records_per_second: f64,
    /// Per call (per statement for the batched insert).
    pub latency: Option<Latency>,
    /// CPU used meanwhile, in cores.
    pub cpu: Option<CpuUsage>,
    /// Write-ahead log written meanwhile by the whole Postgres cluster, in
    /// bytes per record stored.
    pub wal_bytes_per_record: Option<f64>,
    /// The first few failures.
    pub error_samples: Vec<String>,
}

impl Phase {
    /// A phase's figures from what it saw.
    pub fn new(
        (kind, repeat): (PhaseKind, usize),
        label: String,
        records: usize,
        mut outcome: Outcome,
        cpu: Option<CpuUsage>,
    ) -> Self {
        let seconds = outcome.elapsed.as_secs_f64();
        Self {
            kind,
            repeat,
            label,
            records,
            accepted: outcome.accepted,
            errors: outcome.failures.count,
            seconds,
            records_per_second: outcome.accepted as f64 / seconds.max(1e-9),
            latency: Latency::of(&mut outcome.latencies),
            cpu,
            wal_bytes_per_record: None,
            error_samples: outcome.failures.samples,
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count);
/// `None` when there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// One target of the issue, judged.
#[derive(Debug, Serialize)]
pub struct Check {
    /// Stable name, for the JSON line.
    pub name: &'static str,
    /// What is compared, for the table.
    pub label: &'static str,
    /// The measured value (the median over the repeats); `None` when the
    /// run did not measure it.
    pub value: Option<f64>,
    /// The value of each repeat that measured it, in order.
    pub runs: Vec<f64>,
    /// The value must be at least this.
    pub at_least: Option<f64>,
    /// The value must be below this.
    pub below: Option<f64>,
    /// The verdict, when measured.
    pub pass: Option<bool>,
}

impl Check {
    /// Judged on the median of `runs`.
    fn at_least(name: &'static str, label: &'static str, runs: Vec<f64>, min: f64) -> Self {
        let value = median(&runs);
        Self {
            name,
            label,
            value,
            runs,
            at_least: Some(min),
            below: None,
            pass: value.map(|v| v >= min),
        }
    }

    fn below(name: &'static str, label: &'static str, value: Option<f64>, max: f64) -> Self {
        Self {
            name,
            label,
            value,
            runs: value.into_iter().collect(),
            at_least: None,
            below: Some(max),
            pass: value.map(|v| v < max),
        }
    }
}

/// Everything a run measured.
/// A finished measurement: what it prints and whether it passed.
pub trait Judged: Serialize {
    /// The text report.
    fn render(&self) -> String;
    /// Calls or records that failed.
    fn errors(&self) -> usize;
    /// Whether a measured figure missed its target.
    fn missed_a_target(&self) -> bool;
}

#[derive(Debug, Serialize)]
pub struct Report {
    /// Prefix of the run's record ids.
    pub run_id: String,
    /// The server.
    pub endpoint: String,
    /// The synthesiser's seed.
    pub seed: u64,
    /// Records per unary phase.
    pub records_per_phase: usize,
    /// Records per stream phase.
    pub stream_records: usize,
    /// How many times the service and baseline phases ran, interleaved.
    pub repeats: usize,
    /// Concurrent callers of the unary phases.
    pub concurrency: usize,
    /// What the submitted records held.
    pub mix: Mix,
    /// The measured phases, in the order they ran.
    pub phases: Vec<Phase>,
    /// The server's memory, when its pid was given.
    pub server_rss: Option<Rss>,
    /// The targets, judged.
    pub checks: Vec<Check>,
    /// What may make the figures unrepresentative.
    pub notes: Vec<String>,
}

impl Report {
    /// Judges the targets on the measured phases: each ratio is taken
    /// within a repeat (a service phase against the baseline run right
    /// after it), and judged on its median over the repeats.
    pub fn judge(&mut self) {
        let rate = |kind, repeat| {
            self.phases
                .iter()
                .find(|p| p.kind == kind && p.repeat == repeat && p.errors == 0)
                .map(|p| p.records_per_second)
        };
        let ratios = |service, baseline| -> Vec<f64> {
            (1..=self.repeats)
                .filter_map(|r| Some(rate(service, r)? / rate(baseline, r)?))
                .collect()
        };
        self.checks = vec![
            Check::at_least(
                "stream_vs_raw_batched",
                "stream / raw batched insert",
                ratios(PhaseKind::Stream, PhaseKind::RawBatched),
                STREAM_TARGET,
            ),
            Check::at_least(
                "unary_vs_raw_one_per_transaction",
                "unary / raw one row per tx",
                ratios(PhaseKind::Unary, PhaseKind::RawOnePerTransaction),
                UNARY_TARGET,
            ),
            Check::below(
                "server_peak_rss_mib",
                "server peak RSS (MiB)",
                self.server_rss.map(|r| r.peak_mib()),
                RSS_TARGET_MIB,
            ),
        ];
    }
}

impl Judged for Report {
    /// Records that were not accepted in any phase.
    fn errors(&self) -> usize {
        self.phases.iter().map(|p| p.errors).sum()
    }

    /// Whether a measured target was missed.
    fn missed_a_target(&self) -> bool {
        self.checks.iter().any(|c| c.pass == Some(false))
    }

    /// The human-readable table.
    fn render(&self) -> String {
        let mut out = String::new();
        let share = |n: usize| 100.0 * n as f64 / self.mix.records.max(1) as f64;
        let _ = writeln!(
            out,
            "transplant-audit load test: run {}, seed {}, {} records per unary phase and {} per stream \
             phase, {} concurrent callers, {} repeats interleaved, {}",
            self.run_id,
            self.seed,
            self.records_per_phase,
            self.stream_records,
            self.concurrency,
            self.repeats,
            self.endpoint
        );
        let _ = writeln!(
            out,
            "records: {:.1}% from deceased donors, {:.1}% with a foreign donor or recipient, {:.1}% with a planted anomaly\n",
            share(self.mix.deceased_records),
            share(self.mix.foreign_records),
            share(self.mix.anomalous_records)
        );
        let _ = writeln!(
            out,
            "{:<2} {:<30} {:>8} {:>6} {:>8} {:>10} {:>8} {:>8}   {:>7} {:>8} {:>7} {:>7} {:>7}",
            "#",
            "phase",
            "records",
            "errors",
            "seconds",
            "records/s",
            "p50 ms",
            "p99 ms",
            "server",
            "postgres",
            "loadgen",
            "machine",
            "WAL B/r"
        );
        for p in &self.phases {
            let _ = writeln!(out, "{}", phase_line(p));
        }
        let _ = writeln!(
            out,
            "{:>95}",
            "(CPU in cores busy during the phase; WAL of the whole cluster per record)"
        );
        for p in self.phases.iter().filter(|p| !p.error_samples.is_empty()) {
            let _ = writeln!(out, "{} errors in {}, first ones:", p.errors, p.label);
            for s in &p.error_samples {
                let _ = writeln!(out, "  {s}");
            }
        }
        if let Some(rss) = self.server_rss {
            let hwm = rss
                .hwm_mib
                .map_or_else(|| "unknown".to_owned(), |m| format!("{m:.1} MiB"));
            let _ = writeln!(
                out,
                "\nserver peak RSS: {hwm} (VmHWM); largest 100 ms sample during the run {:.1} MiB",
                rss.sampled_peak_mib
            );
        }
        let _ = writeln!(
            out,
            "\n{:<30} {:>10} {:>17} {:>10}  result",
            "target", "median", "range (min-max)", "needed"
        );
        for c in &self.checks {
            let _ = writeln!(out, "{}", check_line(c));
        }
        for note in &self.notes {
            let _ = writeln!(out, "\nnote: {note}");
        }
        out
    }
}

fn phase_line(p: &Phase) -> String {
    let ms = |f: fn(&Latency) -> f64| {
        p.latency
            .as_ref()
            .map_or_else(|| "-".into(), |l| format!("{:.1}", f(l)))
    };
    let cores = |v: Option<f64>| v.map_or_else(|| "-".into(), |c| format!("{c:.2}"));
    let cpu = p.cpu.as_ref();
    let wal = p
        .wal_bytes_per_record
        .map_or_else(|| "-".into(), |b| format!("{b:.0}"));
    format!(
        "{:<2} {:<30} {:>8} {:>6} {:>8.1} {:>10.0} {:>8} {:>8}   {:>7} {:>8} {:>7} {:>7} {:>7}",
        p.repeat,
        p.label,
        p.records,
        p.errors,
        p.seconds,
        p.records_per_second,
        ms(|l| l.p50_ms),
        ms(|l| l.p99_ms),
        cores(cpu.and_then(|c| c.server)),
        cores(cpu.map(|c| c.postgres)),
        cores(cpu.and_then(|c| c.loadgen)),
        cores(cpu.and_then(|c| c.machine)),
        wal,
    )
}

fn check_line(c: &Check) -> String {
    let measured = c.value.map_or_else(|| "n/a".into(), |v| format!("{v:.3}"));
    let lowest = c.runs.iter().copied().reduce(f64::min);
    let highest = c.runs.iter().copied().reduce(f64::max);
    let range = match (lowest, highest) {
        (Some(lo), Some(hi)) if c.runs.len() > 1 => {
            format!("{lo:.3}-{hi:.3} ({})", c.runs.len())
        }
        _ => "-".into(),
    };
    let needed = match (c.at_least, c.below) {
        (Some(min), _) => format!(">= {min:.2}"),
        (_, Some(max)) => format!("< {max:.0}"),
        _ => String::new(),
    };
    let verdict = match c.pass {
        Some(true) => "PASS",
        Some(false) => "FAIL",
        None => "not measured",
    };
    format!(
        "{:<30} {measured:>10} {range:>17} {needed:>10}  {verdict}",
        c.label
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        samples.reverse();
        let l = Latency::of(&mut samples).unwrap();
        assert_eq!((l.p50_ms, l.p99_ms, l.max_ms), (50.0, 99.0, 100.0));
        assert!(Latency::of(&mut []).is_none());
    }

    #[test]
    fn failures_keep_the_first_few_messages() {
        let mut f = Failures::default();
        for i in 0..10 {
            f.add(format!("e{i}"));
        }
        let mut g = Failures::default();
        g.add_many(3, "more".into());
        f.merge(g);
        assert_eq!(f.count, 13);
        assert_eq!(f.samples, ["e0", "e1", "e2", "e3", "e4"]);
    }

    #[test]
    fn medians_take_the_middle() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn targets_are_judged_on_the_median_of_clean_repeats() {
        let outcome = |accepted, failed: usize, secs| {
            let mut o = Outcome {
                elapsed: Duration::from_secs(secs),
                accepted,
                ..Outcome::default()
            };
            if failed > 0 {
                o.failures.add_many(failed, "x".into());
            }
            o
        };
        let phase = |kind, repeat, accepted, failed, secs| {
            Phase::new(
                (kind, repeat),
                format!("{kind:?}"),
                100,
                outcome(accepted, failed, secs),
                None,
            )
        };
        let mut report = Report {
            run_id: "r".into(),
            endpoint: "e".into(),
            seed: 1,
            records_per_phase: 100,
            stream_records: 100,
            repeats: 3,
            concurrency: 4,
            mix: Mix::default(),
            phases: vec![
                phase(PhaseKind::Unary, 1, 100, 0, 10),
                phase(PhaseKind::RawOnePerTransaction, 1, 100, 0, 5),
                phase(PhaseKind::Stream, 1, 99, 1, 1),
                phase(PhaseKind::RawBatched, 1, 100, 0, 1),
                phase(PhaseKind::Unary, 2, 100, 0, 1),
                phase(PhaseKind::RawOnePerTransaction, 2, 100, 0, 1),
                phase(PhaseKind::Unary, 3, 100, 0, 4),
                phase(PhaseKind::RawOnePerTransaction, 3, 100, 0, 1),
            ],
            server_rss: Some(Rss {
                hwm_mib: Some(40.0),
                sampled_peak_mib: 39.0,
            }),
            checks: Vec::new(),
            notes: vec!["a note".into()],
        };
        report.judge();
        let verdicts: Vec<_> = report
            .checks
            .iter()
            .map(|c| (c.value, c.runs.clone(), c.pass))
            .collect();
        assert_eq!(
            verdicts,
            [
                (None, vec![], None),
                (Some(0.5), vec![0.5, 1.0, 0.25], Some(false)),
                (Some(40.0), vec![40.0], Some(true))
            ]
        );
        assert!(report.missed_a_target());
        assert_eq!(report.errors(), 1);
        let table = report.render();
        assert!(
            table.contains("FAIL")
                && table.contains("note: a note")
                && table.contains("0.250-1.000 (3)"),
            "{table}"
        );
    }
}
