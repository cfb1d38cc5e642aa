//! Processes of `command` agents: how they are started so that none
//! outlives braid, and what a resumed run kills when their owner died.
//!
//! Every agent process is forked from one long-lived thread (the
//! *spawner*) and asks the kernel for `SIGKILL` when that thread's process
//! dies (`PR_SET_PDEATHSIG`, Linux): a braid killed with `SIGKILL` takes its
//! agents with it. The kernel sends that signal when the *thread* that
//! forked the child exits, which is why spawns do not happen on whatever
//! runtime thread asks (tokio retires idle blocking threads): the spawner
//! lives as long as the process. The signal reaches only the direct child;
//! what it started stays in its process group, which runs checkpointed per
//! agent put on record, so that `runs resume` (or a server taking the run
//! over) can kill a dead owner's leftover groups ([`kill_leftover_groups`])
//! before anything runs again.
//!
//! A process group is killed only while its leader is unreaped (running or
//! a zombie): until then the kernel cannot hand its id to another process.
//! `exited` waits for the leader's exit without reaping it.

use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

/// How long [`kill_leftover_groups`] waits for killed groups to disappear.
pub const LEFTOVER_KILL_WAIT: Duration = Duration::from_secs(2);

type Job = Box<dyn FnOnce() + Send>;

/// The thread agent processes are forked from; `None` if it could not be
/// started (spawns then happen on the calling thread).
fn spawner() -> Option<&'static mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            // Never joined and never ends: the sender is static.
            match std::thread::Builder::new()
                .name("braid-spawner".into())
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                }) {
                Ok(_) => Some(tx),
                Err(error) => {
                    tracing::warn!(%error, "cannot start the spawner thread; agent processes are forked from runtime threads");
                    None
                }
            }
        })
        .as_ref()
}

/// Starts `command` from the spawner thread, with the parent-death signal
/// set (see the [module docs](self)). Needs a tokio runtime.
pub(crate) async fn spawn(
    mut command: tokio::process::Command,
) -> std::io::Result<tokio::process::Child> {
    die_with_parent(&mut command);
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _entered = runtime.enter();
        let spawned = command.spawn();
        if let Err(Ok(child)) = tx.send(spawned) {
            // The caller gave up (timeout, cancellation) while we forked.
            if let Some(id) = child.id() {
                let _ = killpg(Pid::from_raw(id as i32), Signal::SIGKILL);
            }
        }
    });
    match spawner() {
        Some(spawner) => {
            if let Err(mpsc::SendError(job)) = spawner.send(job) {
                job();
            }
        }
        None => job(),
    }
    rx.await
        .map_err(|_| std::io::Error::other("the spawner thread stopped"))?
}

/// Makes the child ask for `SIGKILL` when its parent dies, and fail to
/// start if the parent is already gone. The one place braid uses `unsafe`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(command: &mut tokio::process::Command) {
    let parent = nix::unistd::getpid();
    let hook = move || -> std::io::Result<()> {
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
        // The parent may have died between fork and prctl: then no signal
        // would come, and the child has been handed to another parent.
        if nix::unistd::getppid() != parent {
            return Err(Errno::ESRCH.into());
        }
        Ok(())
    };
    // SAFETY: `pre_exec` runs the hook in the forked child before exec,
    // where only async-signal-safe calls are allowed. The hook makes two
    // system calls, prctl(2) and getppid(2), through nix's thin wrappers,
    // and builds an `io::Error` from a raw errno: no allocation, no locks,
    // no shared state. `parent` is a plain integer copied into the closure.
    unsafe {
        command.pre_exec(hook);
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut tokio::process::Command) {}

/// Waits until our child `pid` has exited, without reaping it: while it is
/// a zombie its process group id is still taken, so the group can be killed.
/// An error means the child cannot be waited for (already reaped).
pub(crate) async fn exited(pid: Pid) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Listening before the first look: an exit between the look and the
    // wait still wakes us.
    let mut sigchld = signal(SignalKind::child())?;
    loop {
        match peek(pid) {
            Ok(None) => {}
            Ok(Some(_)) => return Ok(()),
            Err(errno) => return Err(errno.into()),
        }
        sigchld.recv().await;
    }
}

/// How our child `pid` ended, if it has, leaving it unreaped.
pub(crate) fn peek(pid: Pid) -> Result<Option<WaitStatus>, Errno> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    loop {
        match waitid(Id::Pid(pid), flags) {
            Ok(WaitStatus::StillAlive) => return Ok(None),
            Ok(status) => return Ok(Some(status)),
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno),
        }
    }
}

/// Where the process recorded as a run's owner (`host:pid`) is, as far as
/// this machine can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A live process on this host (or its pid taken by another process:
    /// the safe reading).
    Alive,
    /// Gone, or this very process (which is not running the run).
    Gone,
    /// On another host: cannot be checked from here.
    Elsewhere(String),
}

/// Checks `owner` (`host:pid`) with `kill(pid, 0)`: a process that exists
/// (even one we may not signal) is alive.
pub fn owner_state(owner: &str) -> Owner {
    let Some((host, pid)) = owner.rsplit_once(':') else {
        return Owner::Gone;
    };
    let this_host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned());
    if host != this_host {
        return Owner::Elsewhere(host.to_owned());
    }
    let Ok(pid) = pid.parse::<i32>() else {
        return Owner::Gone;
    };
    if pid <= 0 || pid as u32 == std::process::id() {
        return Owner::Gone;
    }
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => Owner::Alive,
        Err(_) => Owner::Gone,
    }
}

/// Kills the process groups `pgids` (recorded for a run whose owner died
/// on this host) with `SIGKILL`, then waits up to [`LEFTOVER_KILL_WAIT`]
/// until none of them exists. Ids that cannot be an agent's group (1 or
/// less, or this process's own group) are ignored. Returns the groups
/// that were still there to kill.
pub async fn kill_leftover_groups(pgids: &[i32]) -> Vec<i32> {
    let own = nix::unistd::getpgrp().as_raw();
    // killpg(0) would hit our own group and killpg(1) every process we
    // may signal: recorded ids are checked, not trusted.
    let groups: Vec<Pid> = pgids
        .iter()
        .copied()
        .filter(|&g| g > 1 && g != own)
        .map(Pid::from_raw)
        .collect();
    let killed: Vec<Pid> = groups
        .into_iter()
        .filter(|&g| killpg(g, Signal::SIGKILL).is_ok())
        .collect();
    for &group in &killed {
        tracing::warn!(
            pgid = group.as_raw(),
            "killed a process group a dead run left running"
        );
    }
    let deadline = tokio::time::Instant::now() + LEFTOVER_KILL_WAIT;
    while killed.iter().any(|&g| killpg(g, None).is_ok()) && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    killed.iter().map(|g| g.as_raw()).collect()
}
