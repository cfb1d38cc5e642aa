//! Exponential backoff, the one schedule of delays braid retries with: the
//! scheduler's agent retries, the `http` agent's transport retries, and
//! the store's write and migration retries.
//!
//! ```
//! use std::time::Duration;
//! use braid_core::backoff::Backoff;
//!
//! let backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
//! let delays: Vec<_> = backoff.delays().take(5).collect();
//! assert_eq!(delays, [100, 200, 400, 500, 500].map(Duration::from_millis));
//! ```

use std::time::Duration;

/// A schedule of retry delays: `initial`, then each one `factor` times the
/// last, never more than `max`; with `jitter`, each delay is drawn from its
/// upper half ("equal jitter": half fixed, half random), so that callers
/// failing together do not retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// How much each delay grows over the last (at least 1).
    pub factor: u32,
    /// Draw each delay from `[d/2, d]` rather than waiting `d` exactly.
    pub jitter: bool,
}

impl Backoff {
    /// Doubling from `initial` up to `max`, without jitter.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            factor: 2,
            jitter: false,
        }
    }

    /// The same schedule with equal jitter.
    pub const fn with_jitter(self) -> Self {
        Self {
            jitter: true,
            ..self
        }
    }

    /// The same schedule growing by `factor` (1: constant delays).
    pub const fn with_factor(self, factor: u32) -> Self {
        Self { factor, ..self }
    }

    /// The delays, first retry first (an endless iterator).
    pub fn delays(&self) -> Delays {
        Delays {
            backoff: *self,
            next: self.initial.min(self.max),
        }
    }

    /// The delay before retry number `retry` (1-based; 0 counts as 1).
    pub fn delay(&self, retry: u32) -> Duration {
        self.delays()
            .nth(retry.saturating_sub(1) as usize)
            .unwrap_or(self.max)
    }

    /// The sum of the first `retries` delays without jitter: the most a
    /// caller waits in total before giving up.
    pub fn total(&self, retries: u32) -> Duration {
        Backoff {
            jitter: false,
            ..*self
        }
        .delays()
        .take(retries as usize)
        .fold(Duration::ZERO, Duration::saturating_add)
    }
}

/// The delays of a [`Backoff`], in order; see [`Backoff::delays`].
#[derive(Debug, Clone)]
pub struct Delays {
    backoff: Backoff,
    /// The next delay before jitter.
    next: Duration,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let full = self.next;
        self.next = full
            .saturating_mul(self.backoff.factor.max(1))
            .min(self.backoff.max);
        Some(if self.backoff.jitter {
            let half = full / 2;
            half + half.mul_f64(fastrand::f64())
        } else {
            full
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn schedule() -> impl Strategy<Value = Backoff> {
        (0u64..10_000, 0u64..100_000, 1u32..5, any::<bool>()).prop_map(
            |(initial, max, factor, jitter)| Backoff {
                initial: Duration::from_millis(initial),
                max: Duration::from_millis(max),
                factor,
                jitter,
            },
        )
    }

    proptest! {
        #[test]
        fn never_exceeds_max(backoff in schedule()) {
            for delay in backoff.delays().take(40) {
                prop_assert!(delay <= backoff.max, "{delay:?} > {:?}", backoff.max);
            }
        }

        #[test]
        fn grows_monotonically_without_jitter(backoff in schedule()) {
            let backoff = Backoff { jitter: false, ..backoff };
            let delays: Vec<Duration> = backoff.delays().take(40).collect();
            for pair in delays.windows(2) {
                prop_assert!(pair[0] <= pair[1], "{delays:?}");
            }
        }

        #[test]
        fn jitter_stays_in_the_upper_half(backoff in schedule()) {
            let exact: Vec<Duration> = Backoff { jitter: false, ..backoff }.delays().take(20).collect();
            let jittered = Backoff { jitter: true, ..backoff }.delays().take(20);
            for (full, delay) in exact.into_iter().zip(jittered) {
                prop_assert!(delay >= full / 2 && delay <= full, "{delay:?} vs {full:?}");
            }
        }
    }

    #[test]
    fn doubles_with_jitter_and_is_capped() {
        // The scheduler's schedule: base × 2^(attempt-1), capped at a minute.
        let base = Duration::from_millis(100);
        let backoff = Backoff::new(base, Duration::from_secs(60)).with_jitter();
        for attempt in 1..=4 {
            let d = backoff.delay(attempt);
            let full = base * (1 << (attempt - 1));
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        let long = Backoff::new(Duration::from_secs(10), Duration::from_secs(60)).with_jitter();
        assert!(long.delay(30) <= Duration::from_secs(60));
    }

    #[test]
    fn total_sums_the_capped_schedule() {
        // The store's default: 100 ms doubling to 5 s, 8 retries (16.3 s).
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(backoff.total(8), Duration::from_millis(16_300));
        assert_eq!(backoff.total(0), Duration::ZERO);
    }
}

/// Timeout and retry settings of one agent (or tool): how long an attempt
/// may take, and how often and after how long a failed one is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Longest one attempt may take; `None` waits for ever.
    pub timeout: Option<Duration>,
    /// How many times a failed attempt is tried again.
    pub retries: u32,
    /// The first retry's delay; each later one doubles it, with jitter.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            timeout: None,
            retries: 0,
            backoff: Duration::from_millis(200),
        }
    }
}
