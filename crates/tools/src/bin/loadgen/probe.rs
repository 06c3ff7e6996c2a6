//! What the machine did meanwhile, from Linux's /proc: the server's resident
//! memory, and the CPU time the server, Postgres and this tool used.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;

/// How often the server's resident set is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Clock ticks per second of /proc's CPU times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// Samples a process's resident set in the background.
#[derive(Debug)]
pub struct RssSampler {
    pid: u32,
    peak_kib: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

/// The server's memory over the run, in MiB.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rss {
    /// The kernel's high-water mark for the process's whole life (VmHWM).
    pub hwm_mib: Option<f64>,
    /// The largest VmRSS sampled every 100 ms during the run.
    pub sampled_peak_mib: f64,
}

impl Rss {
    /// The peak to judge: the high-water mark when the kernel gives one.
    pub fn peak_mib(&self) -> f64 {
        self.hwm_mib.unwrap_or(self.sampled_peak_mib)
    }
}

impl RssSampler {
    /// Starts sampling `pid`; fails when its /proc entry cannot be read.
    pub fn start(pid: u32) -> anyhow::Result<Self> {
        let first = status_kib(pid, "VmRSS:").ok_or_else(|| {
            anyhow::anyhow!("cannot read /proc/{pid}/status: is the server running?")
        })?;
        let peak_kib = Arc::new(AtomicU64::new(first));
        let peak = peak_kib.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tick.tick().await;
                if let Some(kib) = status_kib(pid, "VmRSS:") {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
            }
        });
        Ok(Self {
            pid,
            peak_kib,
            task,
        })
    }

    /// Stops sampling and reads the high-water mark.
    pub fn finish(self) -> Rss {
        self.task.abort();
        Rss {
            hwm_mib: status_kib(self.pid, "VmHWM:").map(mib),
            sampled_peak_mib: mib(self.peak_kib.load(Ordering::Relaxed)),
        }
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A `kB` field of /proc/PID/status.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Which processes' CPU to count, and where to read the WAL position.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// A connection to the server's Postgres, to read the WAL position.
    pub wal: Option<sqlx::PgPool>,
    /// The server's pid.
    pub server: Option<u32>,
    /// Count only the backends of this database (plus Postgres's shared
    /// background processes); every `postgres` process when unset.
    pub database: Option<String>,
}

/// Cumulative CPU counters at one instant.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    at: Instant,
    server: Option<u64>,
    loadgen: Option<u64>,
    postgres: HashMap<u32, u64>,
    machine: Option<(u64, u64)>,
}

/// CPU used between two snapshots, in cores (1.0 = one core busy the whole time).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuUsage {
    /// The server process, when its pid is known.
    pub server: Option<f64>,
    /// Postgres: the watched database's backends and the shared background processes.
    pub postgres: f64,
    /// This tool.
    pub loadgen: Option<f64>,
    /// The whole machine (everything not idle).
    pub machine: Option<f64>,
}

impl CpuSnapshot {
    /// Reads the counters of the watched processes now.
    pub fn take(watch: &Watch) -> Self {
        Self {
            at: Instant::now(),
            server: watch
                .server
                .and_then(|pid| process_ticks(&format!("/proc/{pid}/stat")).map(|(_, t)| t)),
            loadgen: process_ticks("/proc/self/stat").map(|(_, t)| t),
            postgres: postgres_ticks(watch.database.as_deref()),
            machine: machine_ticks(),
        }
    }

    /// What was used from `self` until `later`.
    pub fn until(&self, later: &CpuSnapshot) -> CpuUsage {
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let cores = |ticks: u64| ticks as f64 / TICKS_PER_SECOND / wall;
        let delta = |a: Option<u64>, b: Option<u64>| Some(cores(b?.saturating_sub(a?)));
        let postgres = later
            .postgres
            .iter()
            .map(|(pid, t)| t.saturating_sub(self.postgres.get(pid).copied().unwrap_or(0)))
            .sum();
        let machine = match (self.machine, later.machine) {
            (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                // /proc/stat counts every core; scale to cores busy over the wall time.
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
                Some((busy1 - busy0) as f64 / (total1 - total0) as f64 * cpus)
            }
            _ => None,
        };
        CpuUsage {
            server: delta(self.server, later.server),
            postgres: cores(postgres),
            loadgen: delta(self.loadgen, later.loadgen),
            machine,
        }
    }
}

/// (command name, user + system ticks) from a /proc/PID/stat file.
fn process_ticks(path: &str) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    // After the name: state is field 3, utime field 14, stime field 15.
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// CPU ticks of the live `postgres` processes that serve `database`, by pid.
fn postgres_ticks(database: Option<&str>) -> HashMap<u32, u64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (name, ticks) = process_ticks(&format!("/proc/{pid}/stat"))?;
            if name != "postgres" {
                return None;
            }
            let title = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            serves(&String::from_utf8_lossy(&title), database).then_some((pid, ticks))
        })
        .collect()
}

/// Whether a Postgres process, by its title, works for `database`: a client
/// backend (`postgres: [cluster: ]user db host(port) activity`) only for its
/// own database, any other process (postmaster, WAL writer, checkpointer…) always.
fn serves(title: &str, database: Option<&str>) -> bool {
    let words: Vec<&str> = title.split([' ', '\0']).filter(|w| !w.is_empty()).collect();
    let client = words
        .iter()
        .any(|w| *w == "[local]" || (w.contains('(') && w.ends_with(')')));
    match database {
        Some(db) if client => words.contains(&db),
        _ => true,
    }
}

/// The cluster's current write-ahead log position, in bytes; `None` when
/// it cannot be read.
pub async fn wal_position(watch: &Watch) -> Option<u64> {
    let pool = watch.wal.as_ref()?;
    let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await
        .ok()?;
    parse_lsn(&lsn)
}

/// A `pg_lsn` as text (`16/B374D848`) as a byte position.
fn parse_lsn(lsn: &str) -> Option<u64> {
    let (high, low) = lsn.split_once('/')?;
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    Some((high << 32) | low)
}

/// (busy, total) ticks of all cores from /proc/stat.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4)?;
    Some((total - idle, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let (name, _) = process_ticks("/proc/self/stat").expect("own stat");
        assert!(!name.is_empty());
        assert!(status_kib(std::process::id(), "VmRSS:").is_some_and(|k| k > 0));
        let watch = Watch {
            server: Some(std::process::id()),
            ..Watch::default()
        };
        let before = CpuSnapshot::take(&watch);
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        let used = before.until(&CpuSnapshot::take(&watch));
        assert!(used.server.is_some() && used.loadgen.is_some(), "{used:?}");
    }

    #[test]
    fn wal_positions_parse() {
        assert_eq!(parse_lsn("0/10"), Some(16));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("16"), None);
    }

    #[test]
    fn postgres_processes_count_for_their_own_database_only() {
        let backend = "postgres: 15/main: postgres lg_scratch 127.0.0.1(37900) idle";
        assert!(serves(backend, Some("lg_scratch")));
        assert!(!serves(backend, Some("other")));
        assert!(!serves(
            "postgres: app other [local] SELECT",
            Some("lg_scratch")
        ));
        assert!(serves("postgres: 15/main: walwriter ", Some("lg_scratch")));
        assert!(serves(
            "/usr/lib/postgresql/15/bin/postgres\0-D\0/var/lib",
            Some("x")
        ));
        assert!(serves(backend, None));
    }
}
