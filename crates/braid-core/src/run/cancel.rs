//! The run loop's watch on its cancellation token: asked on every turn of
//! the loop, but only asks the token when the token has woken it.
//!
//! [`CancellationToken::is_cancelled`] and its [`cancelled`] future each
//! take the token's lock (the future takes a second one, its `Notify`'s),
//! and the loop turns once or twice an agent: about 290 instructions an
//! agent of a no-op run went there (issue 16). [`Cancelled`] polls the
//! token's future with a waker of its own, which notes that it was woken
//! before waking the run's task; between wake-ups, a turn of the loop
//! costs a pointer comparison and a load.
//!
//! Nothing is lost by asking less: the token sets its flag before it wakes
//! the futures waiting on it, so a wake-up always comes after the flag, and
//! the next turn of the loop asks the token again.
//!
//! [`cancelled`]: CancellationToken::cancelled

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// What the token's future wakes: it notes the wake-up, then wakes the
/// run's task.
#[derive(Default)]
struct Woken {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// A future that ends when `token` is cancelled, and a cheap
/// [`Cancelled::is_cancelled`]. Made once a run and polled on every turn
/// of its loop.
pub(super) struct Cancelled<'a, 'f> {
    token: &'a CancellationToken,
    future: Pin<&'f mut WaitForCancellationFuture<'a>>,
    woken: Arc<Woken>,
    /// The task's waker `woken` wakes (the one of the last poll); `Some`
    /// once polled, when the token's future is registered and wakes
    /// `woken`.
    task: Option<Waker>,
    /// The token's future ended: the token is cancelled.
    ended: bool,
}

impl<'a, 'f> Cancelled<'a, 'f> {
    /// Watches `token` through `future`, one of its [`cancelled`] futures
    /// not polled yet (pinned by the caller: no allocation for it).
    ///
    /// [`cancelled`]: CancellationToken::cancelled
    pub(super) fn new(
        token: &'a CancellationToken,
        future: Pin<&'f mut WaitForCancellationFuture<'a>>,
    ) -> Self {
        let woken = Arc::new(Woken::default());
        Self {
            token,
            future,
            woken,
            task: None,
            ended: false,
        }
    }

    /// Whether the token is cancelled; asks it only if it may have changed
    /// since the future was registered with it.
    pub(super) fn is_cancelled(&self) -> bool {
        if self.ended {
            return true;
        }
        if self.task.is_some() && !self.woken.load_hint() {
            return false;
        }
        self.token.is_cancelled()
    }
}

impl Woken {
    /// Whether a wake-up came and was not yet taken (no read-modify-write).
    fn load_hint(&self) -> bool {
        self.woken.load(Ordering::Acquire)
    }
}

impl Future for Cancelled<'_, '_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(());
        }
        let registered = this.task.is_some();
        // The task to wake is registered again only when it changed (a run
        // is polled by one task, whose waker stays the same).
        if !this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            this.woken.task.register(cx.waker());
            this.task = Some(cx.waker().clone());
        }
        let woken = this.woken.load_hint() && this.woken.woken.swap(false, Ordering::AcqRel);
        if registered && !woken {
            return Poll::Pending;
        }
        // Made when needed (the first poll, and after each wake-up) rather
        // than kept: 16 bytes less in every run in flight.
        let waker = Waker::from(this.woken.clone());
        let polled = this.future.as_mut().poll(&mut Context::from_waker(&waker));
        this.ended = polled.is_ready();
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Whether `cancelled` is still pending after a few milliseconds.
    async fn stays_pending(cancelled: &mut Cancelled<'_, '_>) -> bool {
        tokio::time::timeout(Duration::from_millis(5), cancelled)
            .await
            .is_err()
    }

    #[tokio::test]
    async fn ends_when_the_token_is_cancelled_after_it_was_polled() {
        let token = CancellationToken::new();
        let future = token.cancelled();
        tokio::pin!(future);
        let mut cancelled = Cancelled::new(&token, future);
        assert!(!cancelled.is_cancelled());
        // Registered, and not ready yet: polled many times, it stays pending.
        for _ in 0..3 {
            assert!(stays_pending(&mut cancelled).await);
        }
        assert!(!cancelled.is_cancelled());
        let canceller = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            canceller.cancel();
        });
        tokio::time::timeout(Duration::from_secs(10), &mut cancelled)
            .await
            .expect("a cancelled token ends the future");
        assert!(cancelled.is_cancelled());
    }

    #[tokio::test]
    async fn stays_cancelled_once_it_ended() {
        let token = CancellationToken::new();
        let future = token.cancelled();
        tokio::pin!(future);
        let mut cancelled = Cancelled::new(&token, future);
        assert!(stays_pending(&mut cancelled).await);
        token.cancel();
        (&mut cancelled).await;
        // The wake-up was taken by the poll that ended it.
        assert!(cancelled.is_cancelled());
        assert!(cancelled.is_cancelled(), "asked twice");
    }

    #[tokio::test]
    async fn sees_a_token_cancelled_before_it_was_made_or_polled() {
        let token = CancellationToken::new();
        token.cancel();
        let future = token.cancelled();
        tokio::pin!(future);
        let mut cancelled = Cancelled::new(&token, future);
        assert!(cancelled.is_cancelled(), "asked before any poll");
        tokio::time::timeout(Duration::from_secs(10), &mut cancelled)
            .await
            .expect("ready at once");
    }

    #[tokio::test]
    async fn is_cancelled_sees_a_cancel_between_polls() {
        let token = CancellationToken::new();
        let future = token.cancelled();
        tokio::pin!(future);
        let mut cancelled = Cancelled::new(&token, future);
        assert!(stays_pending(&mut cancelled).await);
        token.cancel();
        // The wake-up was noted: the token is asked, without a poll between.
        assert!(cancelled.is_cancelled());
    }

    #[test]
    fn a_child_token_cancelled_through_its_parent_wakes_it() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let parent = CancellationToken::new();
            let child = parent.child_token();
            let task = tokio::spawn(async move {
                let future = child.cancelled();
                tokio::pin!(future);
                let mut cancelled = Cancelled::new(&child, future);
                (&mut cancelled).await;
                cancelled.is_cancelled()
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
            parent.cancel();
            let seen = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("woken from another thread")
                .expect("task");
            assert!(seen);
        });
    }
}
