//! One current-thread runtime per core, for runs.
//!
//! A run is I/O-bound and its agents talk to its scheduler all the time: on
//! one thread those wake-ups cost a queue push, while a multi-threaded
//! runtime moves tasks between workers and wakes them across threads
//! (measured slower than one thread at 10,000 runs in flight). [`Cores`]
//! starts N threads, each driving its own current-thread runtime, and
//! hands runs to them in turn: a run, and every task it spawns (its
//! agents, its event pump), stays on one core for its whole life, while
//! runs spread over all of them. The HTTP server, the store's writer and
//! the background jobs stay on the runtime that created them.
//!
//! ```
//! let cores = braid_server::cores::Cores::new(2).unwrap();
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! let ran = rt.block_on(async {
//!     let (a, b) = (cores.handle().spawn(async { 1 }), cores.handle().spawn(async { 2 }));
//!     a.await.unwrap() + b.await.unwrap()
//! });
//! assert_eq!(ran, 3);
//! ```

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// N threads, each driving a current-thread runtime; see the [module docs](self).
pub struct Cores {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stops: Mutex<Vec<oneshot::Sender<()>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Cores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cores")
            .field("threads", &self.handles.len())
            .finish_non_exhaustive()
    }
}

impl Cores {
    /// Starts `n` threads (at least one), named `braid-run-I`, each with a
    /// current-thread runtime (timers, I/O, processes) that runs until the
    /// `Cores` is dropped.
    pub fn new(n: usize) -> std::io::Result<Self> {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("braid-run-{i}"))
                    .spawn(move || {
                        // Sleeps wake on this thread, from this runtime's
                        // reactor (see `precise_sleep`).
                        braid_core::agent::sleep::use_runtime_timer();
                        runtime.block_on(async {
                            let _ = stopped.await;
                        });
                        // Tasks still there are dropped with the runtime.
                    })?,
            );
        }
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            stops: Mutex::new(stops),
            threads: Mutex::new(threads),
        })
    }

    /// The number of threads (at least one).
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Always false: there is at least one thread.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Every thread's runtime, in order: to hand each its share of work at
    /// once rather than one piece at a time.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// The runtime the next run goes to (each in turn).
    pub fn handle(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }
}

impl Drop for Cores {
    fn drop(&mut self) {
        for stop in self
            .stops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = stop.send(());
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        // Joining from inside a runtime would block one of its workers: the
        // threads then end on their own, unjoined.
        if Handle::try_current().is_err() {
            for thread in threads {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_spread_over_the_threads_and_each_stays_on_one() {
        let cores = Cores::new(2).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let threads = rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..4 {
                tasks.push(cores.handle().spawn(async {
                    let before = std::thread::current().name().map(str::to_owned);
                    // A task it spawns, after a timer, runs on the same thread.
                    let child = tokio::spawn(async {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        std::thread::current().name().map(str::to_owned)
                    });
                    let after = child.await.unwrap();
                    assert_eq!(before, after);
                    before.unwrap()
                }));
            }
            let mut names = Vec::new();
            for task in tasks {
                names.push(task.await.unwrap());
            }
            names
        });
        let mut distinct = threads.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct, ["braid-run-0", "braid-run-1"], "{threads:?}");
    }
}
