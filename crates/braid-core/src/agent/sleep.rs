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
//! readable, with no such rounding. So [`precise_sleep`] waits on a Linux
//! `timerfd` (nanosecond deadlines), in one of two ways:
//!
//! - **On a current-thread runtime whose thread asked for it** with
//!   [`use_runtime_timer`] (`braid run`, `braid bench` and each of `braid
//!   serve`'s per-core runtimes do) the runtime has a timer of its own:
//!   a heap of deadlines and one `timerfd` in the runtime's reactor, armed
//!   for the earliest. When it fires, a small task on that runtime wakes
//!   every sleeper that is due, on the runtime's own thread, exactly as a
//!   socket that became readable would: no other thread, no system call per
//!   sleeper. (A thread-wide timer that woke each sleeper across threads
//!   cost an `eventfd` write per sleeper, 600,000 a round at 100,000 runs,
//!   and a third thread competing for the cores.)
//! - **Elsewhere** (a multi-thread runtime, a thread that did not ask) sleeps
//!   go to one process-wide timer thread that waits on a futex with
//!   nanosecond deadlines; a new sleep wakes that thread only when it is
//!   due before every queued one.
//!
//! Either way a new sleep re-arms the timer only when it is due before
//! every queued one (a thousand 50 ms sleeps started together cost one
//! arming, not a thousand system calls), and no sleep ends before its
//! deadline. (They follow the real monotonic clock, not Tokio's paused
//! test clock.)

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;
use tokio::runtime::{Handle, RuntimeFlavor};
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

/// Something to do at `deadline`: a sleeper to wake, on the timer thread
/// (a channel) or on a runtime's own timer (a waker). Ordered by deadline
/// alone: what is due at the same instant is all done in one firing, in no
/// particular order.
struct At<T> {
    deadline: Instant,
    what: T,
}

impl<T> PartialEq for At<T> {
    fn eq(&self, other: &Self) -> bool {
        self.deadline == other.deadline
    }
}
impl<T> Eq for At<T> {}
impl<T> PartialOrd for At<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for At<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.deadline.cmp(&other.deadline)
    }
}

/// What in `queue` is due at `now`, earliest first, taken out of it.
fn pop_due<T>(queue: &mut BinaryHeap<Reverse<At<T>>>, now: Instant) -> Option<At<T>> {
    queue
        .peek()
        .is_some_and(|d| d.0.deadline <= now)
        .then(|| queue.pop().expect("peeked").0)
}

/// One pending wake-up of the timer thread.
type Wake = At<oneshot::Sender<()>>;

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
            while let Some(wake) = pop_due(&mut due, now) {
                fired.push(wake);
            }
            if !fired.is_empty() {
                drop(due);
                for wake in fired {
                    // The sleeper may have been cancelled; that is fine.
                    let _ = wake.what.send(());
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

/// One sleeper of a runtime's own timer: when, its sleep's id, and whom to
/// wake.
type Due = At<(u64, Waker)>;

/// A `timerfd` as Tokio's [`AsyncFd`] wants it.
struct TimerFile(TimerFd);

impl AsRawFd for TimerFile {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// `file` in the current runtime's reactor. Panics when the runtime has no
/// I/O driver (see [`use_runtime_timer`]).
#[allow(unsafe_code)]
fn register_fd(file: TimerFile) -> Option<AsyncFd<TimerFile>> {
    // SAFETY: `AsyncFd::register` needs the descriptor to stay open, and
    // to be the one `as_raw_fd` returns, for as long as the `AsyncFd`
    // lives. `TimerFile` owns its `TimerFd`, which owns the descriptor
    // (an `OwnedFd`, closed only when it is dropped); the `AsyncFd` owns
    // the `TimerFile` and lives in the timer's `Arc`, so nothing ever
    // takes it mutably, and nothing here replaces or closes the `TimerFd`.
    unsafe { AsyncFd::register(file) }.ok()
}

/// What a [`RuntimeTimer`] keeps under its lock.
struct Sleepers {
    /// The queue; the `timerfd` is armed for its earliest deadline (or an
    /// earlier one, of a sleep since cancelled).
    due: BinaryHeap<Reverse<Due>>,
    /// The id the next sleep queued here gets.
    next_id: u64,
    /// Sleeps dropped while still queued, before their deadline. Their
    /// entries are not woken when they come due, and once they are half the queue (and at least
    /// [`COMPACT_AT`]) they are taken out at once: an entry holds its
    /// task's waker, and with it the task's memory.
    cancelled: HashSet<u64>,
}

/// The fewest cancelled sleeps a runtime's timer takes out of its queue at
/// once (see [`Sleepers::cancelled`]).
const COMPACT_AT: usize = 64;

/// The timer of one current-thread runtime (see the [module docs](self)).
///
/// Its runtime's thread is nearly always the only one to touch it, so its
/// lock is rarely contended; it is a lock, not a `RefCell`, because the
/// task that fires it must be `Send` to be spawned, and because a sleep
/// can be polled again from another thread (its future moved there).
struct RuntimeTimer {
    runtime: tokio::runtime::Id,
    sleepers: Mutex<Sleepers>,
    file: AsyncFd<TimerFile>,
    /// False once the timer takes no more sleeps (its firing task ended
    /// with its runtime, or the `timerfd` failed): a sleep then makes a new
    /// timer, or uses the thread-wide one. Set under the lock, so that no
    /// sleep is queued after the queue was emptied for good.
    firing: AtomicBool,
}

/// What this thread's sleeps use: the timers of the current-thread
/// runtimes that slept here (one, unless runtimes take turns on this
/// thread), and the last runtime that cannot have one.
struct ThisThread {
    /// Those still firing; one that stopped is let go at the next new one.
    timers: Vec<Arc<RuntimeTimer>>,
    /// A `timerfd` could not be made for this runtime: its sleeps use the
    /// timer thread.
    unable: Option<tokio::runtime::Id>,
}

thread_local! {
    static THIS_THREAD: RefCell<ThisThread> = const {
        RefCell::new(ThisThread { timers: Vec::new(), unable: None })
    };
    static RUNTIME_TIMER_WANTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Lets the [`precise_sleep`]s made on this thread, while a current-thread
/// runtime runs on it, wait in that runtime's own reactor instead of on
/// the process-wide timer thread (see the [module docs](self)): sleepers
/// are then woken on this thread, with no system call each.
///
/// Call it on a thread that drives current-thread runtimes built with I/O
/// enabled (`enable_io` or `enable_all`): Tokio panics when a file is
/// registered with a runtime that has no I/O driver, and offers no way to
/// ask first. On a multi-thread runtime it changes nothing.
///
/// ```
/// braid_core::agent::sleep::use_runtime_timer();
/// let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// runtime.block_on(braid_core::agent::sleep::precise_sleep(std::time::Duration::from_millis(1)));
/// ```
pub fn use_runtime_timer() {
    RUNTIME_TIMER_WANTED.with(|wanted| wanted.set(true));
}

impl RuntimeTimer {
    /// The current runtime's timer, started at its first sleep; `None` when
    /// the runtime is not current-thread, or cannot have one.
    fn current() -> Option<Arc<Self>> {
        if !RUNTIME_TIMER_WANTED.with(std::cell::Cell::get) {
            return None;
        }
        let handle = Handle::try_current().ok()?;
        if handle.runtime_flavor() != RuntimeFlavor::CurrentThread {
            return None;
        }
        let id = handle.id();
        THIS_THREAD.with(|this| {
            let mut this = this.borrow_mut();
            let firing = |timer: &Arc<Self>| timer.firing.load(Ordering::Relaxed);
            if let Some(timer) = this.timers.iter().find(|t| t.runtime == id && firing(t)) {
                return Some(timer.clone());
            }
            if this.unable == Some(id) {
                return None;
            }
            // Timers of runtimes that shut down (or whose `timerfd` failed)
            // are let go here, so a thread keeps one per live runtime.
            this.timers.retain(firing);
            match Self::start(&handle) {
                Some(timer) => {
                    this.timers.push(timer.clone());
                    Some(timer)
                }
                None => {
                    this.unable = Some(id);
                    None
                }
            }
        })
    }

    /// A `timerfd` in `handle`'s reactor, and the task that fires it.
    fn start(handle: &Handle) -> Option<Arc<Self>> {
        let file = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .ok()?;
        let file = register_fd(TimerFile(file))?;
        let timer = Arc::new(Self {
            runtime: handle.id(),
            sleepers: Mutex::new(Sleepers {
                due: BinaryHeap::new(),
                next_id: 0,
                cancelled: HashSet::new(),
            }),
            file,
            firing: AtomicBool::new(true),
        });
        handle.spawn(timer.clone().fire());
        Some(timer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sleepers> {
        self.sleepers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Arms the `timerfd` for `deadline` (never for less than a
    /// nanosecond: a zero time would disarm it).
    fn arm(&self, deadline: Instant) -> nix::Result<()> {
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        self.file.get_ref().0.set(
            Expiration::OneShot(TimeSpec::from_duration(wait)),
            TimerSetTimeFlags::empty(),
        )
    }

    /// Queues `waker` to be woken at `deadline`, under the sleep's `id`
    /// (given one the first time); false if the `timerfd` could not be
    /// armed (the sleep then uses the timer thread).
    fn register(&self, deadline: Instant, waker: Waker, id: &mut Option<u64>) -> bool {
        let mut sleepers = self.lock();
        // Checked under the lock: the queue may have just been emptied for
        // good (`Ended`), by another thread than this sleep's.
        if !self.firing.load(Ordering::Relaxed) {
            return false;
        }
        if sleepers.due.peek().is_none_or(|d| deadline < d.0.deadline)
            && self.arm(deadline).is_err()
        {
            self.firing.store(false, Ordering::Relaxed);
            return false;
        }
        let id = *id.get_or_insert_with(|| {
            sleepers.next_id += 1;
            sleepers.next_id
        });
        sleepers.due.push(Reverse(Due {
            deadline,
            what: (id, waker),
        }));
        true
    }

    /// Notes that the sleep `id` was dropped while queued; takes every
    /// such sleep out of the queue once they are half of it.
    fn cancel(&self, id: u64) {
        let mut sleepers = self.lock();
        sleepers.cancelled.insert(id);
        let cancelled = sleepers.cancelled.len();
        if cancelled < COMPACT_AT || cancelled * 2 < sleepers.due.len() {
            return;
        }
        let cancelled = std::mem::take(&mut sleepers.cancelled);
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut sleepers.due)
            .into_vec()
            .into_iter()
            .partition(|d| cancelled.contains(&d.0.what.0));
        sleepers.due = BinaryHeap::from(kept);
        drop(sleepers);
        // Outside the lock: dropping a waker may drop its task, and with
        // it another sleep.
        drop(gone);
    }

    /// The task that fires the timer: each time the `timerfd` expires, wakes
    /// every sleeper that is due and arms it for the next.
    fn fire(self: Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        /// However the task ends (dropped with its runtime, even before it
        /// first ran; the `timerfd` failed; arming failed, which ends it at
        /// its next expiry): marks the timer as no longer firing and wakes
        /// every sleeper still queued, which then finds it is not due and
        /// sleeps on the timer thread instead (or is dropped with its
        /// runtime). None is left waiting on a timer that will never fire.
        struct Ended(Arc<RuntimeTimer>);
        impl Drop for Ended {
            fn drop(&mut self) {
                let mut sleepers = self.0.lock();
                // Under the lock: `register` queues nothing after this.
                self.0.firing.store(false, Ordering::Relaxed);
                let left: Vec<Waker> = sleepers.due.drain().map(|d| d.0.what.1).collect();
                drop(sleepers);
                for waker in left {
                    waker.wake();
                }
            }
        }
        // Made here, not in the async block: a task dropped before its
        // first poll drops what its future captured, and only that.
        let ended = Ended(self);
        async move {
            let this = &ended.0;
            let mut woken = Vec::new();
            let mut stale = Vec::new();
            loop {
                let Ok(mut ready) = this.file.readable().await else {
                    return;
                };
                // Consume the expiry, then clear readiness before re-arming,
                // so that the next expiry is a new edge.
                let _ = this.file.get_ref().0.wait();
                ready.clear_ready();
                {
                    let mut sleepers = this.lock();
                    let now = Instant::now();
                    while let Some(due) = pop_due(&mut sleepers.due, now) {
                        let (id, waker) = due.what;
                        // (Hashed only when some sleep was cancelled.)
                        if !sleepers.cancelled.is_empty() && sleepers.cancelled.remove(&id) {
                            stale.push(waker);
                        } else {
                            woken.push(waker);
                        }
                    }
                    if let Some(next) = sleepers.due.peek().map(|d| d.0.deadline)
                        && this.arm(next).is_err()
                    {
                        // The rest are woken as the task ends (`Ended`).
                        this.firing.store(false, Ordering::Relaxed);
                    }
                }
                // Outside the lock: a waker may do anything, sleep included.
                for waker in woken.drain(..) {
                    waker.wake();
                }
                stale.clear();
                if !this.firing.load(Ordering::Relaxed) {
                    return;
                }
            }
        }
    }
}

/// A sleep on a runtime's own timer: dropped before it is over, it tells
/// the timer, which then need not keep its waker until the deadline.
struct Queued<'a> {
    timer: &'a RuntimeTimer,
    deadline: Instant,
    /// Its id in the timer's queue, once queued.
    id: Option<u64>,
    /// The waker it is queued with, to queue again if polled with another
    /// (as a future must).
    waker: Option<Waker>,
    /// It ended: slept, or moved to the timer thread.
    over: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        // Once due, its entry may already be out of the queue (woken, then
        // dropped before it was polled): noting it as cancelled would leave
        // an id behind that no entry clears. An entry still queued past its
        // deadline is simply woken, for nothing, at the next firing.
        if let (Some(id), false) = (self.id, self.over)
            && Instant::now() < self.deadline
        {
            self.timer.cancel(id);
        }
    }
}

/// Waits `duration` precisely (see the [module docs](self)). Dropping the
/// future cancels the wait.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::{Duration, Instant};
/// let start = Instant::now();
/// braid_core::agent::sleep::precise_sleep(Duration::from_millis(5)).await;
/// assert!(start.elapsed() >= Duration::from_millis(5));
/// # });
/// ```
pub async fn precise_sleep(duration: Duration) {
    if duration.is_zero() {
        return;
    }
    let Some(deadline) = Instant::now().checked_add(duration) else {
        // Further than the clock can count: Tokio's timer clamps it.
        tokio::time::sleep(duration).await;
        return;
    };
    if let Some(timer) = RuntimeTimer::current() {
        let mut queued = Queued {
            timer: &timer,
            deadline,
            id: None,
            waker: None,
            over: false,
        };
        let slept = std::future::poll_fn(|cx| {
            // The first poll queues it without reading the clock: the
            // deadline was just set ahead (if it passed meanwhile, the
            // timer wakes it at once).
            if queued.waker.is_some() && Instant::now() >= deadline {
                queued.over = true;
                return Poll::Ready(true);
            }
            if !timer.firing.load(Ordering::Relaxed) {
                // Its runtime is going away, or its `timerfd` failed (and
                // its queue was emptied).
                queued.over = true;
                return Poll::Ready(false);
            }
            if !queued
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                if !timer.register(deadline, cx.waker().clone(), &mut queued.id) {
                    queued.over = true;
                    return Poll::Ready(false);
                }
                queued.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
        if slept {
            return;
        }
    }
    if Instant::now() >= deadline {
        return;
    }
    let (done, wait) = oneshot::channel();
    timer().register(Wake {
        deadline,
        what: done,
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

    /// Sleeps `ms` milliseconds each, all at once, in the order given, and
    /// checks that none ended before its deadline.
    async fn none_ends_early(ms: impl Iterator<Item = u64>) {
        let start = Instant::now();
        let ends = futures_util::future::join_all(ms.map(|ms| async move {
            precise_sleep(Duration::from_millis(ms)).await;
            (ms, Instant::now())
        }))
        .await;
        for (ms, end) in ends {
            assert!(
                end - start >= Duration::from_millis(ms),
                "{ms} ms ended early"
            );
        }
    }

    #[test]
    fn sleeps_on_a_multi_thread_runtime_use_the_timer_thread_and_never_wake_early() {
        // Even on worker threads that asked for a runtime timer.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .on_thread_start(use_runtime_timer)
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(runtime.spawn(async {
                assert!(
                    RuntimeTimer::current().is_none(),
                    "a multi-thread runtime has no timer of its own"
                );
                none_ends_early((1..=20u64).rev()).await;
            }))
            .unwrap();
    }

    #[test]
    fn a_zero_sleep_ends_at_its_first_poll() {
        current_thread_runtime().block_on(async {
            let sleep = std::pin::pin!(precise_sleep(Duration::ZERO));
            assert!(futures_util::poll!(sleep).is_ready());
            assert_eq!(
                RuntimeTimer::current().unwrap().lock().due.len(),
                0,
                "nothing queued"
            );
        });
    }

    /// A sleep woken as it came due, then dropped before it was polled (a
    /// `select!` another branch won), leaves nothing behind in its timer.
    #[test]
    fn a_sleep_dropped_after_its_wake_leaves_no_cancelled_id() {
        current_thread_runtime().block_on(async {
            let mut sleep = Box::pin(precise_sleep(Duration::from_millis(5)));
            assert!(futures_util::poll!(sleep.as_mut()).is_pending());
            // The runtime's timer fires meanwhile and wakes it.
            tokio::time::sleep(Duration::from_millis(30)).await;
            drop(sleep);
            // (Had the thread stalled past both deadlines, its entry may
            // still be queued, to be woken for nothing: only a cancelled id
            // would outstay it.)
            let timer = RuntimeTimer::current().unwrap();
            assert!(timer.lock().cancelled.is_empty());
        });
    }

    /// A waker that notes the thread it is woken on, then wakes `inner`.
    struct OnThread {
        threads: Mutex<Vec<std::thread::ThreadId>>,
        inner: Waker,
    }

    impl std::task::Wake for OnThread {
        fn wake(self: Arc<Self>) {
            self.threads
                .lock()
                .unwrap()
                .push(std::thread::current().id());
            self.inner.wake_by_ref();
        }
    }

    /// Awaits `sleep`, noting each thread its waker was woken on.
    async fn woken_on(sleep: impl Future<Output = ()>) -> Vec<std::thread::ThreadId> {
        let mut sleep = std::pin::pin!(sleep);
        let mut noted: Option<Arc<OnThread>> = None;
        std::future::poll_fn(|cx| {
            let waker = noted
                .get_or_insert_with(|| {
                    Arc::new(OnThread {
                        threads: Mutex::new(Vec::new()),
                        inner: cx.waker().clone(),
                    })
                })
                .clone();
            sleep
                .as_mut()
                .poll(&mut Context::from_waker(&Waker::from(waker)))
        })
        .await;
        let noted = noted.expect("polled at least once");
        noted.threads.lock().unwrap().clone()
    }

    /// A current-thread runtime whose sleeps use its own timer.
    fn current_thread_runtime() -> tokio::runtime::Runtime {
        use_runtime_timer();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn sleeps_on_a_current_thread_runtime_are_woken_on_its_own_thread() {
        let runtime = current_thread_runtime();
        let here = std::thread::current().id();
        let woken_on = runtime.block_on(async {
            let start = Instant::now();
            let threads = woken_on(precise_sleep(Duration::from_millis(20))).await;
            assert!(start.elapsed() >= Duration::from_millis(20));
            threads
        });
        assert!(!woken_on.is_empty(), "the sleep was never woken");
        assert!(
            woken_on.iter().all(|t| *t == here),
            "woken on another thread: {woken_on:?} (the runtime runs on {here:?})"
        );
    }

    #[test]
    fn many_sleeps_on_one_runtime_each_end_at_or_after_their_deadline() {
        current_thread_runtime().block_on(async {
            assert!(
                RuntimeTimer::current().is_some(),
                "the runtime has its own timer"
            );
            // Registered latest first, with repeats, so the timer is armed
            // again and again for earlier deadlines.
            none_ends_early((0..200u64).rev().map(|i| 1 + (i * 7) % 40)).await;
        });
    }

    #[test]
    fn a_cancelled_sleep_leaves_the_others_on_time() {
        current_thread_runtime().block_on(async {
            let start = Instant::now();
            tokio::select! {
                () = precise_sleep(Duration::from_millis(5)) => {}
                () = precise_sleep(Duration::from_secs(3600)) => panic!("the hour-long sleep won"),
            }
            {
                // The hour-long sleep told its timer it was dropped.
                let timer = RuntimeTimer::current().unwrap();
                let sleepers = timer.lock();
                assert_eq!((sleepers.due.len(), sleepers.cancelled.len()), (1, 1));
            }
            tokio::time::timeout(
                Duration::from_secs(10),
                precise_sleep(Duration::from_millis(10)),
            )
            .await
            .expect("the next sleep was never woken");
            assert!(start.elapsed() >= Duration::from_millis(15));
        });
    }

    /// A waker that counts how often it is dropped.
    struct Counted(Arc<std::sync::atomic::AtomicUsize>);

    impl std::task::Wake for Counted {
        fn wake(self: Arc<Self>) {}
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn cancelled_sleeps_give_their_wakers_back_before_their_deadline() {
        current_thread_runtime().block_on(async {
            let start = Instant::now();
            let mut on_time = std::pin::pin!(precise_sleep(Duration::from_millis(20)));
            assert!(futures_util::poll!(on_time.as_mut()).is_pending());
            let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            for _ in 0..1_000 {
                let mut sleep = std::pin::pin!(precise_sleep(Duration::from_secs(3600)));
                let waker = Waker::from(Arc::new(Counted(dropped.clone())));
                let polled = sleep.as_mut().poll(&mut Context::from_waker(&waker));
                assert!(polled.is_pending());
                // Dropped here, an hour early.
            }
            let queued = RuntimeTimer::current().unwrap().lock().due.len();
            assert!(queued <= 2 * COMPACT_AT, "{queued} sleeps still queued");
            assert!(
                dropped.load(Ordering::Relaxed) >= 1_000 - 2 * COMPACT_AT,
                "only {} of 1,000 wakers given back",
                dropped.load(Ordering::Relaxed)
            );
            // A sleep queued before them all is still on time.
            on_time.await;
            let slept = start.elapsed();
            assert!(slept >= Duration::from_millis(20) && slept < Duration::from_secs(60));
        });
    }

    /// Each runtime gets a timer of its own, even on one thread: one that
    /// has shut down, or is not running while another is, fires nothing.
    #[test]
    fn runtimes_that_follow_or_alternate_on_one_thread_each_sleep() {
        let sleep_on = |runtime: &tokio::runtime::Runtime| {
            runtime.block_on(async {
                let start = Instant::now();
                tokio::time::timeout(
                    Duration::from_secs(10),
                    precise_sleep(Duration::from_millis(5)),
                )
                .await
                .expect("the sleep never ended");
                assert!(start.elapsed() >= Duration::from_millis(5));
            });
        };
        let timer_of = |runtime: &tokio::runtime::Runtime| {
            runtime.block_on(async { RuntimeTimer::current().expect("a timer") })
        };
        let first = current_thread_runtime();
        sleep_on(&first);
        drop(first);
        let (a, b) = (current_thread_runtime(), current_thread_runtime());
        sleep_on(&a);
        let a_timer = timer_of(&a);
        sleep_on(&b);
        sleep_on(&a);
        sleep_on(&b);
        // Taking turns, each runtime keeps its one timer; the first one's,
        // which stopped with it, was let go.
        assert!(
            Arc::ptr_eq(&a_timer, &timer_of(&a)),
            "a second timer for `a`"
        );
        assert!(!Arc::ptr_eq(&a_timer, &timer_of(&b)));
        assert_eq!(THIS_THREAD.with(|this| this.borrow().timers.len()), 2);
    }

    /// A sleep first polled under a runtime that then shuts down is woken
    /// as the runtime's timer goes, and finishes on the timer thread, even
    /// when its task is on another runtime and nothing else polls it.
    #[test]
    fn a_sleep_outlives_the_runtime_whose_timer_it_was_queued_on() {
        let first = current_thread_runtime();
        let start = Instant::now();
        let mut sleep = Box::pin(precise_sleep(Duration::from_millis(50)));
        first.block_on(async {
            assert!(futures_util::poll!(sleep.as_mut()).is_pending());
        });
        let other = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (polled, polled_there) = mpsc::channel();
        let ended = other.spawn(async move {
            // Queued again on the first runtime's timer, with this task's
            // waker.
            assert!(futures_util::poll!(sleep.as_mut()).is_pending());
            polled.send(()).unwrap();
            sleep.await;
            Instant::now()
        });
        polled_there.recv_timeout(Duration::from_secs(10)).unwrap();
        drop(first);
        let ended = other
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), ended).await })
            .expect("the sleep was never woken after its timer's runtime shut down")
            .unwrap();
        assert!(ended - start >= Duration::from_millis(50), "it ended early");
    }

    #[test]
    fn a_thread_that_did_not_ask_sleeps_on_the_timer_thread() {
        let (threads, here) = std::thread::spawn(|| {
            // No I/O driver: the runtime's own timer would panic here.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            let threads = runtime.block_on(woken_on(precise_sleep(Duration::from_millis(5))));
            (threads, std::thread::current().id())
        })
        .join()
        .unwrap();
        assert!(!threads.is_empty() && threads.iter().all(|t| *t != here));
    }

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
        for (name, ms) in [("late", 200), ("early", 20)] {
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
                what: done,
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
