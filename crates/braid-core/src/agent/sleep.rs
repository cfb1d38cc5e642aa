//! The `sleep` agent: waits `ms` milliseconds, then writes `value` (or
//! `true`) to each of its declared writes.
//!
//! It stands for I/O (an LLM or database call) in benchmarks and examples;
//! with `ms: 0` it measures the engine's own per-agent cost.
//!
//! Its wait is precise to a few tens of microseconds. Tokio's timer wheel
//! rounds every deadline up to the next whole millisecond and adds the
//! reactor's own millisecond rounding, about +1.2 ms on every 50 ms sleep,
//! while the real I/O a sleep stands for completes when the socket becomes
//! readable, with no such rounding. So sleeps are handed to one process-wide
//! timer thread that waits on a futex with nanosecond deadlines. A new sleep
//! wakes that thread only when it is due before every queued one, so a
//! thousand sleeps started together cost one wake-up, not a thousand system
//! calls. (It follows the real monotonic clock, not Tokio's paused test
//! clock.)

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use serde_json::Value;

use super::{Agent, AgentError, AgentInput, Writes};

/// See the [module docs](self).
#[derive(Debug)]
pub struct SleepAgent {
    duration: Duration,
    /// What every call writes, built once: a call clones it (no key is
    /// hashed again).
    out: Writes,
}

impl SleepAgent {
    /// An agent that waits `duration`, then writes `value` to every field in `writes`.
    pub fn new(duration: Duration, value: Value, writes: Arc<[Arc<str>]>) -> Self {
        Self {
            duration,
            out: writes
                .iter()
                .map(|w| (w.to_string(), value.clone()))
                .collect(),
        }
    }
}

#[async_trait::async_trait]
impl Agent for SleepAgent {
    async fn call(&self, _input: &AgentInput) -> Result<Writes, AgentError> {
        if !self.duration.is_zero() {
            precise_sleep(self.duration).await;
        }
        Ok(self.out.clone())
    }
}

/// One pending wake-up of the timer thread.
struct Wake {
    deadline: Instant,
    seq: u64,
    done: oneshot::Sender<()>,
}

impl PartialEq for Wake {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl Eq for Wake {}
impl PartialOrd for Wake {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Wake {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
    }
}

/// The timer thread's queue: wakes by deadline, and a condition variable
/// the thread waits on until the earliest one. A new wake only wakes the
/// thread when it is due before every queued one: 1,000 sleeps started
/// together cost one wake-up of the thread, not 1,000 system calls.
struct Timer {
    due: Mutex<BinaryHeap<Reverse<Wake>>>,
    changed: Condvar,
}

impl Timer {
    fn register(&self, wake: Wake) {
        let mut due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
        let earliest = due.peek().is_none_or(|w| wake.deadline < w.0.deadline);
        due.push(Reverse(wake));
        drop(due);
        if earliest {
            self.changed.notify_one();
        }
    }

    /// The thread: fires what is due (outside the lock), then waits until
    /// the earliest deadline or a new earlier one.
    fn run(&self) {
        let mut due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let now = Instant::now();
            let mut fired = Vec::new();
            while due.peek().is_some_and(|w| w.0.deadline <= now) {
                let Reverse(wake) = due.pop().expect("peeked");
                fired.push(wake);
            }
            if !fired.is_empty() {
                drop(due);
                for wake in fired {
                    // The sleeper may have been cancelled; that is fine.
                    let _ = wake.done.send(());
                }
                due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            due = match due.peek().map(|w| w.0.deadline) {
                Some(deadline) => {
                    self.changed
                        .wait_timeout(due, deadline.saturating_duration_since(now))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .changed
                    .wait(due)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }
}

fn timer() -> &'static Timer {
    static TIMER: OnceLock<&'static Timer> = OnceLock::new();
    TIMER.get_or_init(|| {
        let timer: &'static Timer = Box::leak(Box::new(Timer {
            due: Mutex::new(BinaryHeap::new()),
            changed: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("braid-timer".into())
            .spawn(move || timer.run())
            .expect("cannot start the braid-timer thread");
        timer
    })
}

/// Waits `duration` on the precise timer thread (see the module docs).
/// Dropping the future cancels the wait.
pub async fn precise_sleep(duration: Duration) {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Some(deadline) = Instant::now().checked_add(duration) else {
        // Further than the clock can count: Tokio's timer clamps it.
        tokio::time::sleep(duration).await;
        return;
    };
    let (done, wait) = oneshot::channel();
    timer().register(Wake {
        deadline,
        seq: SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        done,
    });
    let _ = wait.await;
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::mpsc;
    use std::task::{Context, Waker};

    use super::*;

    #[tokio::test]
    async fn precise_sleep_never_wakes_early() {
        let start = Instant::now();
        let (a, b) = tokio::join!(
            async {
                precise_sleep(Duration::from_millis(30)).await;
                Instant::now()
            },
            async {
                precise_sleep(Duration::from_millis(10)).await;
                Instant::now()
            }
        );
        assert!(b - start >= Duration::from_millis(10));
        assert!(a - start >= Duration::from_millis(30));
    }

    /// A waker that notes which wake fired, and when. The timer thread calls
    /// it itself as it fires, so the notes follow the firing order exactly,
    /// however late the test's own thread runs.
    struct Note {
        name: &'static str,
        notes: mpsc::Sender<(&'static str, Instant)>,
    }

    impl std::task::Wake for Note {
        fn wake(self: Arc<Self>) {
            let _ = self.notes.send((self.name, Instant::now()));
        }
    }

    #[test]
    fn the_timer_fires_in_deadline_order_not_arrival_order() {
        let (notes, fired) = mpsc::channel();
        let base = Instant::now();
        let mut waits = Vec::new();
        // The later deadline is registered first. (It is far enough ahead
        // that a stall between the two registrations cannot let it fire
        // before the earlier one is even registered.)
        for (seq, (name, ms)) in [("late", 200), ("early", 20)].into_iter().enumerate() {
            let (done, mut wait) = oneshot::channel();
            let waker = Waker::from(Arc::new(Note {
                name,
                notes: notes.clone(),
            }));
            let polled = Pin::new(&mut wait).poll(&mut Context::from_waker(&waker));
            assert!(polled.is_pending());
            let deadline = base + Duration::from_millis(ms);
            let wake = Wake {
                deadline,
                seq: seq as u64,
                done,
            };
            timer().register(wake);
            waits.push((name, deadline, wait));
        }
        let order: Vec<(&str, Instant)> = (0..2)
            .map(|_| fired.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        let names: Vec<&str> = order.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["early", "late"]);
        for ((name, at), (_, deadline, _)) in order.iter().zip(waits.iter().rev()) {
            assert!(at >= deadline, "`{name}` fired before its deadline");
        }
    }
}
