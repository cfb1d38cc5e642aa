//! `command` agents with `pool: N`: N warm processes speaking JSON lines.
//!
//! Each process reads one request per line on stdin (the same object a
//! one-shot command gets: `{"agent", "run_id", "attempt", "state"}`) and
//! answers with one JSON object of writes per line on stdout, in order. An
//! answer `{"$error": "why"}` fails that call. Processes start on demand,
//! at most N at once, and are reused across calls and runs of the
//! pipeline, so a pipeline that runs thousands of times does not pay a
//! process spawn per call. A process that dies, misbehaves or is
//! interrupted mid-call (timeout, cancellation) is killed and replaced on
//! the next call; the failed call is retried per the agent's policy.
//!
//! ```python
//! import json, sys
//! for line in sys.stdin:                  # one request per line
//!     request = json.loads(line)
//!     text = request["state"]["text"]
//!     answer = {"words": len(text.split())}
//!     print(json.dumps(answer), flush=True)   # one answer per line
//! ```

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::Semaphore;

use super::command::{MAX_LOG_LINE_BYTES, read_line_capped};
use super::{Agent, AgentError, AgentInput, Writes};

/// Longest answer line read from a pooled process.
const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// A warm process and its pipes.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Its whole process group: helpers it started die with it.
        if let Some(id) = self.child.id() {
            let _ = killpg(Pid::from_raw(id as i32), Signal::SIGKILL);
        }
    }
}

/// See the [module docs](self).
pub struct PooledCommandAgent {
    program: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    env: Vec<(String, String)>,
    /// One permit per process the pool may have busy at once.
    busy_limit: Semaphore,
    idle: Mutex<Vec<Worker>>,
    spawned: AtomicU64,
}

impl std::fmt::Debug for PooledCommandAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledCommandAgent")
            .field("program", &self.program)
            .field("size", &self.busy_limit.available_permits())
            .finish_non_exhaustive()
    }
}

impl PooledCommandAgent {
    /// A pool of at most `size` processes of `program args…`, run in `dir`.
    pub fn new(
        program: PathBuf,
        args: Vec<String>,
        dir: PathBuf,
        env: Vec<(String, String)>,
        size: usize,
    ) -> Self {
        Self {
            program,
            args,
            dir,
            env,
            busy_limit: Semaphore::new(size.max(1)),
            idle: Mutex::new(Vec::new()),
            spawned: AtomicU64::new(0),
        }
    }

    /// How many processes this pool has started so far.
    pub fn spawned(&self) -> u64 {
        self.spawned.load(Ordering::Relaxed)
    }

    async fn spawn(&self) -> Result<Worker, AgentError> {
        let mut child = super::command::spawn(
            &self.program,
            &self.args,
            &self.dir,
            &self.env,
            &[("BRAID_POOLED", "1")],
        )
        .await?;
        self.spawned.fetch_add(1, Ordering::Relaxed);
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let tail = stderr_tail.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stderr);
                let mut buf = Vec::new();
                while let Ok(n) = read_line_capped(&mut reader, &mut buf, MAX_LOG_LINE_BYTES).await
                {
                    if n == 0 {
                        break;
                    }
                    let line = String::from_utf8_lossy(&buf).into_owned();
                    buf.clear();
                    let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                    if tail.len() == 20 {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            });
        }
        Ok(Worker {
            stdin: child.stdin.take().expect("stdin is piped"),
            stdout: BufReader::new(child.stdout.take().expect("stdout is piped")),
            child,
            stderr_tail,
        })
    }

    fn died(worker: &mut Worker, what: &str) -> AgentError {
        // Looked at, not reaped: the worker's drop still kills its group,
        // which is safe only while the leader is unreaped.
        let peeked = worker.child.id().and_then(|id| {
            super::process::peek(Pid::from_raw(id as i32))
                .ok()
                .flatten()
        });
        let status = match peeked {
            Some(WaitStatus::Exited(_, code)) => format!("{what} (exit status: {code})"),
            Some(WaitStatus::Signaled(_, signal, _)) => {
                format!("{what} (signal: {} ({signal}))", signal as i32)
            }
            _ => what.to_owned(),
        };
        let tail: Vec<String> = worker
            .stderr_tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        AgentError::Exit {
            status,
            stderr_tail: tail,
        }
    }
}

#[async_trait::async_trait]
impl Agent for PooledCommandAgent {
    async fn call(&self, input: &AgentInput) -> Result<Writes, AgentError> {
        let mut request = serde_json::to_vec(&super::command::Request {
            agent: &input.agent,
            run_id: &input.run_id,
            attempt: input.attempt,
            state: &input.reads,
        })
        .map_err(|e| AgentError::Other(format!("cannot encode the agent's input: {e}")))?;
        request.push(b'\n');

        let _busy = self
            .busy_limit
            .acquire()
            .await
            .map_err(|_| AgentError::Other("the process pool is closed".into()))?;
        let reused = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut worker = match reused {
            Some(worker) => worker,
            None => self.spawn().await?,
        };
        // If this future is dropped from here on (timeout, cancellation),
        // `worker` is dropped too: the process is killed, never reused.
        if worker.stdin.write_all(&request).await.is_err() || worker.stdin.flush().await.is_err() {
            return Err(Self::died(
                &mut worker,
                "the pooled process exited before reading the request",
            ));
        }
        let mut line = Vec::new();
        let read = (&mut worker.stdout)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut line)
            .await;
        match read {
            Ok(0) | Err(_) => {
                return Err(Self::died(
                    &mut worker,
                    "the pooled process exited mid-call",
                ));
            }
            Ok(_) if !line.ends_with(b"\n") => {
                return Err(AgentError::Output(format!(
                    "a pooled process answered with a line longer than {MAX_LINE_BYTES} bytes"
                )));
            }
            Ok(_) => {}
        }
        let answer: serde_json::Value = serde_json::from_slice(&line).map_err(|e| {
            AgentError::Output(format!(
                "a pooled process must answer with one JSON object per line ({e}); got: {}",
                String::from_utf8_lossy(&line).trim()
            ))
        })?;
        let serde_json::Value::Object(mut writes) = answer else {
            return Err(AgentError::Output(format!(
                "a pooled process must answer with one JSON object per line; got: {}",
                String::from_utf8_lossy(&line).trim()
            )));
        };
        // The process answered in protocol: it can serve the next call.
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(worker);
        if let Some(error) = writes.remove("$error") {
            return Err(AgentError::Other(match error {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            }));
        }
        Ok(writes)
    }
}

use tokio::io::AsyncReadExt as _;
