//! Rate limiting of repeated log lines: while the API server or the IPAM is
//! unreachable, the same failure repeats every few hundred milliseconds;
//! the log says it once, then at most once a period with the count.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A failure streak's log state.
#[derive(Debug)]
pub struct Repeats {
    period: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_logged: Option<Instant>,
    suppressed: u64,
    streak: u64,
}

impl Repeats {
    /// Logs at most once per `period` during a streak of failures.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A failure happened. `Some(n)` when it should be logged now, `n` being
    /// how many repeats were not logged since the last line.
    pub fn failure(&self) -> Option<u64> {
        let mut s = self.lock();
        s.streak += 1;
        let due = s.last_logged.is_none_or(|t| t.elapsed() >= self.period);
        if due {
            s.last_logged = Some(Instant::now());
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }

    /// A success. `Some(n)` when it ends a streak of `n` failures (worth a
    /// line saying so).
    pub fn success(&self) -> Option<u64> {
        let mut s = self.lock();
        let streak = std::mem::take(&mut s.streak);
        s.suppressed = 0;
        s.last_logged = None;
        (streak > 0).then_some(streak)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streak_is_logged_once_per_period_then_its_end() {
        let r = Repeats::new(Duration::from_secs(3600));
        assert_eq!(r.failure(), Some(0));
        assert_eq!(r.failure(), None);
        assert_eq!(r.failure(), None);
        assert_eq!(r.success(), Some(3));
        assert_eq!(r.success(), None);
        assert_eq!(r.failure(), Some(0), "a new streak is logged at once");
        let fast = Repeats::new(Duration::ZERO);
        assert_eq!(fast.failure(), Some(0));
        assert_eq!(fast.failure(), Some(0));
    }
}
