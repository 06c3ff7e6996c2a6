//! Log lines a flood would repeat, at most about one a second.
//!
//! A refused key, a call over a quota or a connection over the cap is
//! logged, but an attacker sending thousands of them a second must not fill
//! the disk or drown the lines that matter. Each call site keeps its own
//! [`LogThrottle`]; the line that is written says how many were left out
//! since the one before.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines written per call site: one per interval.
const INTERVAL: Duration = Duration::from_secs(1);

/// Lets a log line through at most once per second, counting the rest.
#[derive(Debug, Default)]
pub struct LogThrottle {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    /// A throttle that lets the first line through.
    pub const fn new() -> Self {
        Self {
            state: Mutex::new(State {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some(lines left out since the last one written)` when a line may be
    /// written now, `None` when it is to be left out.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match state.last {
            Some(last) if now.saturating_duration_since(last) < INTERVAL => {
                state.suppressed += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.suppressed))
            }
        }
    }
}

/// `tracing::warn!` at most once a second from this call site, with a
/// `suppressed` field counting the lines left out before it.
#[macro_export]
macro_rules! throttled_warn {
    ($($arg:tt)+) => {{
        static THROTTLE: $crate::telemetry::throttle::LogThrottle =
            $crate::telemetry::throttle::LogThrottle::new();
        if let Some(suppressed) = THROTTLE.admit() {
            tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_counting_the_rest() {
        let throttle = LogThrottle::new();
        let start = Instant::now();
        assert_eq!(throttle.admit_at(start), Some(0));
        for ms in [1, 10, 500, 999] {
            assert_eq!(throttle.admit_at(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(
            throttle.admit_at(start + Duration::from_millis(1000)),
            Some(4)
        );
        assert_eq!(throttle.admit_at(start + Duration::from_millis(1001)), None);
        assert_eq!(throttle.admit_at(start + Duration::from_secs(60)), Some(1));
        assert_eq!(throttle.admit_at(start + Duration::from_secs(61)), Some(0));
    }
}
