//! A run's members in flight (its agents' attempts, `foreach` instances and
//! groups' nested runs), and how they are polled.
//!
//! On a current-thread runtime (`braid run`, `braid bench`, each of
//! `braid serve`'s per-core runtimes) a run lives on one thread for its
//! whole life, so spawning each agent as a Tokio task buys no parallelism:
//! it only costs a task cell, a trip through the runtime's queue, a join
//! waker and a map from task id to member (about 2,700 of the 10,534
//! instructions a no-op agent cost, measured with callgrind). There the
//! run's own task polls its
//! members, in a [`FuturesUnordered`] it owns. On a multi-thread runtime
//! they are spawned in a [`JoinSet`], so that one run's agents spread over
//! the workers.
//!
//! Either way the run owns what it started: dropping the run drops (or, in
//! a `JoinSet`, aborts) every member in flight, a panicking member fails
//! its agent instead of the run, and [`InFlight::abort_where`] cancels
//! members at once (a `foreach` whose instance failed).

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::task::{AbortHandle, JoinSet};

use super::attempt::{Finished, Member};

/// A member's work, boxed once (see `scheduler::spawn`). A polled
/// member's work may borrow from the run (`'a`, its pipeline: its runner
/// and declared writes, with no reference count taken); a spawned
/// member's is `'static`.
pub(super) type MemberTask<'a> = Pin<Box<dyn Future<Output = Finished> + Send + 'a>>;

/// How a member in flight ended.
pub(super) enum Ended {
    /// Its task returned.
    Finished(Finished),
    /// It was aborted ([`InFlight::abort_where`], [`InFlight::abort_all`]).
    Cancelled(Member),
    /// It panicked, with this message.
    Panicked(Member, String),
}

/// The members of one run in flight. See the [module docs](self).
pub(super) struct InFlight<'a> {
    mode: Mode<'a>,
    /// Members aborted here (polled mode), handed back by
    /// [`InFlight::join_next`] before anything else.
    cancelled: VecDeque<Member>,
}

enum Mode<'a> {
    /// Nothing started yet: the mode is picked, by the runtime the run is
    /// on, when the first member starts (and nothing is allocated before).
    Idle,
    /// Polled by the run's task. `live` counts the members not yet ended:
    /// an aborted member's slot stays in the set, emptied, until the set is
    /// next empty of live ones.
    Polled {
        set: FuturesUnordered<Polled<'a>>,
        live: usize,
    },
    /// Spawned on a multi-thread runtime; the map says whose each task is.
    Spawned {
        tasks: JoinSet<Finished>,
        members: HashMap<tokio::task::Id, (Member, AbortHandle), TaskIdHasher>,
    },
}

/// A polled member: its task until it ends (or is aborted).
struct Polled<'a> {
    member: Member,
    task: Option<MemberTask<'a>>,
}

impl Future for Polled<'_> {
    /// `None` for a member aborted while it was already queued to be polled.
    type Output = Option<Ended>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let member = self.member;
        let Some(task) = self.task.as_mut() else {
            return Poll::Ready(None);
        };
        // A panic fails this member, not the run (as a panicking task does).
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| task.as_mut().poll(cx)));
        let ended = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(finished)) => Ended::Finished(finished),
            Err(panic) => Ended::Panicked(member, panic_message(&*panic)),
        };
        drop_quietly(self.task.take());
        Poll::Ready(Some(ended))
    }
}

/// Drops a member's task; a panic while it drops (a nested run's
/// bookkeeping, say) is caught, as Tokio catches one in a task it drops,
/// rather than unwinding into the run's loop.
fn drop_quietly(task: Option<MemberTask<'_>>) {
    if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| drop(task))) {
        tracing::warn!(
            panic = %panic_message(&*panic),
            "an agent's future panicked while it was dropped"
        );
    }
}

/// What a panic said, when it said it with a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

impl Default for InFlight<'_> {
    /// None in flight; the mode is picked when the first member starts.
    fn default() -> Self {
        Self {
            mode: Mode::Idle,
            cancelled: VecDeque::new(),
        }
    }
}

impl Mode<'_> {
    /// For the runtime this is called on: spawned on a multi-thread
    /// runtime, polled by the run's task otherwise.
    fn for_this_runtime() -> Self {
        let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
        match flavor {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => Mode::Spawned {
                tasks: JoinSet::new(),
                members: HashMap::default(),
            },
            _ => Mode::Polled {
                set: FuturesUnordered::new(),
                live: 0,
            },
        }
    }
}

impl<'a> InFlight<'a> {
    /// How many members are in flight.
    pub(super) fn len(&self) -> usize {
        self.cancelled.len()
            + match &self.mode {
                Mode::Idle => 0,
                Mode::Polled { live, .. } => *live,
                Mode::Spawned { tasks, .. } => tasks.len(),
            }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether members are polled by the run's task (picking the mode, by
    /// the runtime this is called on, if nothing started yet): a member's
    /// task may then borrow from the run ([`InFlight::start_borrowing`]).
    pub(super) fn polled(&mut self) -> bool {
        if matches!(self.mode, Mode::Idle) {
            self.mode = Mode::for_this_runtime();
        }
        matches!(self.mode, Mode::Polled { .. })
    }

    /// Starts `member`'s task, which borrows from the run. Only for polled
    /// members: call it when [`InFlight::polled`] said so.
    pub(super) fn start_borrowing(&mut self, member: Member, task: MemberTask<'a>) {
        match &mut self.mode {
            Mode::Polled { set, live } => {
                set.push(Polled {
                    member,
                    task: Some(task),
                });
                *live += 1;
            }
            Mode::Idle | Mode::Spawned { .. } => {
                unreachable!("a borrowing task is started only when members are polled")
            }
        }
    }

    /// Starts `member`'s task.
    pub(super) fn start(&mut self, member: Member, task: MemberTask<'static>) {
        if matches!(self.mode, Mode::Idle) {
            self.mode = Mode::for_this_runtime();
        }
        match &mut self.mode {
            Mode::Idle => unreachable!("the mode was just picked"),
            Mode::Polled { set, live } => {
                set.push(Polled {
                    member,
                    task: Some(task),
                });
                *live += 1;
            }
            Mode::Spawned { tasks, members } => {
                let handle = tasks.spawn(task);
                members.insert(handle.id(), (member, handle));
            }
        }
    }

    /// Cancels the members in flight that `which` picks: each is handed
    /// back by [`InFlight::join_next`] as [`Ended::Cancelled`] (a spawned
    /// one that had just finished may come back finished instead).
    pub(super) fn abort_where(&mut self, which: impl Fn(Member) -> bool) {
        match &mut self.mode {
            Mode::Polled { set, live } => {
                for polled in set.iter_mut() {
                    if polled.task.is_some() && which(polled.member) {
                        // Dropping the task cancels it, here and now.
                        drop_quietly(polled.task.take());
                        *live -= 1;
                        self.cancelled.push_back(polled.member);
                    }
                }
            }
            Mode::Idle => {}
            Mode::Spawned { members, .. } => {
                for (member, handle) in members.values() {
                    if which(*member) {
                        handle.abort();
                    }
                }
            }
        }
    }

    /// Cancels every member in flight (see [`InFlight::abort_where`]).
    pub(super) fn abort_all(&mut self) {
        match &mut self.mode {
            Mode::Polled { set, live } => {
                for polled in set.iter_mut() {
                    if let Some(task) = polled.task.take() {
                        drop_quietly(Some(task));
                        self.cancelled.push_back(polled.member);
                    }
                }
                set.clear();
                *live = 0;
            }
            Mode::Spawned { tasks, .. } => tasks.abort_all(),
            Mode::Idle => {}
        }
    }

    /// The next member to end; `None` once none is in flight.
    pub(super) fn join_next(&mut self) -> impl Future<Output = Option<Ended>> + '_ {
        std::future::poll_fn(|cx| self.poll_join_next(cx))
    }

    fn poll_join_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Ended>> {
        if let Some(member) = self.cancelled.pop_front() {
            return Poll::Ready(Some(Ended::Cancelled(member)));
        }
        match &mut self.mode {
            Mode::Idle => Poll::Ready(None),
            Mode::Polled { set, live } => loop {
                if *live == 0 {
                    // Only aborted members' emptied slots are left.
                    set.clear();
                    return Poll::Ready(None);
                }
                match ready!(set.poll_next_unpin(cx)) {
                    Some(Some(ended)) => {
                        *live -= 1;
                        return Poll::Ready(Some(ended));
                    }
                    // Aborted after it was woken: already handed back.
                    Some(None) => {}
                    None => return Poll::Ready(None),
                }
            },
            Mode::Spawned { tasks, members } => loop {
                let Some(joined) = ready!(tasks.poll_join_next_with_id(cx)) else {
                    return Poll::Ready(None);
                };
                return Poll::Ready(Some(match joined {
                    Ok((id, finished)) => {
                        members.remove(&id);
                        Ended::Finished(finished)
                    }
                    Err(error) => {
                        // Every task spawned here is in the map.
                        let Some((member, _)) = members.remove(&error.id()) else {
                            continue;
                        };
                        if error.is_cancelled() {
                            Ended::Cancelled(member)
                        } else {
                            let message = error
                                .try_into_panic()
                                .map(|panic| panic_message(&*panic))
                                .unwrap_or_else(|e| e.to_string());
                            Ended::Panicked(member, message)
                        }
                    }
                }));
            },
        }
    }
}

/// Hashes a [`tokio::task::Id`] (a `u64` that is unique per task) with
/// one multiplication instead of SipHash: the ids are not chosen by
/// anyone who could make them collide, and the map sees one insert and one
/// remove per agent.
type TaskIdHasher = std::hash::BuildHasherDefault<TaskIdHash>;

#[derive(Default, Clone, Copy)]
pub(super) struct TaskIdHash(u64);

impl std::hash::Hasher for TaskIdHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: the high bits, which hashbrown uses, depend on
        // every bit of the id.
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}
