//! The `command` agent: runs a program in any language, JSON over stdin and
//! stdout.
//!
//! The program gets `{"agent": NAME, "run_id": ID, "attempt": N, "state":
//! {READS...}}` on stdin and prints one JSON object of its writes on stdout.
//! Each stderr line is a log line of the agent. It runs in its own process
//! group, started from the pipeline file's folder with no shell. When the
//! program exits, anything it left running in its group is killed; when the
//! attempt is dropped (timeout, cancellation, a failed run) the whole group
//! is killed at once. The process dies with braid too, even a braid killed
//! with `SIGKILL`, and its group is on record with runs checkpointed per
//! agent (see [`super::process`]).
//!
//! The group is killed only while its leader is unreaped, so its id
//! cannot belong to another process by then.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::{Agent, AgentError, AgentInput, Reads, Writes};

/// Most bytes read from a command's stdout.
pub const MAX_STDOUT_BYTES: u64 = 16 * 1024 * 1024;
/// How many trailing stderr lines an exit error quotes.
const STDERR_TAIL_LINES: usize = 20;
/// Longer stderr lines are cut to this many bytes.
pub(crate) const MAX_LOG_LINE_BYTES: usize = 16 * 1024;
/// How long stdout and stderr may stay open after the program exits.
const PIPE_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// See the [module docs](self).
#[derive(Debug)]
pub struct CommandAgent {
    program: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl CommandAgent {
    /// A command agent for `argv`, run in `dir`. A program given as a path
    /// with a `/` is resolved against `dir`; a bare name is looked up on `PATH`.
    pub fn new(argv: &[String], dir: &Path, env: Vec<(String, String)>) -> Self {
        Self {
            program: resolve_program(&argv[0], dir),
            args: argv[1..].to_vec(),
            dir: dir.to_path_buf(),
            env,
        }
    }
}

/// Starts `program` the way every command agent runs: from `dir`, with
/// `env` and `extra` set, all three pipes, in a process group of its own,
/// killed if its handle is dropped or braid dies.
pub(crate) async fn spawn(
    program: &Path,
    args: &[String],
    dir: &Path,
    env: &[(String, String)],
    extra: &[(&str, &str)],
) -> Result<tokio::process::Child, AgentError> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .envs(extra.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    super::process::spawn(command)
        .await
        .map_err(|e| AgentError::Spawn {
            program: program.display().to_string(),
            message: e.to_string(),
        })
}

/// A program given as a path with a `/` is resolved against `dir`; a bare
/// name is looked up on `PATH`.
pub(crate) fn resolve_program(program: &str, dir: &Path) -> PathBuf {
    let path = PathBuf::from(program);
    if program.contains('/') && path.is_relative() {
        dir.join(path)
    } else {
        path
    }
}

/// What a command agent gets on stdin (one line of it, when pooled).
#[derive(Serialize)]
pub(crate) struct Request<'a> {
    pub(crate) agent: &'a str,
    pub(crate) run_id: &'a str,
    pub(crate) attempt: u32,
    pub(crate) state: &'a Reads,
}

/// Kills the process group when dropped (a cancelled or timed-out attempt),
/// unless the group was already dealt with; then takes it off the run's
/// record.
struct GroupGuard {
    /// The group, while it may need killing: its leader is not reaped.
    pid: Option<Pid>,
    /// Its record with the run, taken back after the kill.
    record: Option<super::RecordedGroup>,
}

impl GroupGuard {
    /// Kills the group now (its leader must not be reaped yet).
    fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = killpg(pid, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // The leader is not reaped while `pid` is set (the handle reaps
        // only when waited for, after `kill`), so the group id cannot
        // have been reused.
        self.kill();
        drop(self.record.take());
    }
}

#[async_trait::async_trait]
impl Agent for CommandAgent {
    async fn call(&self, input: &AgentInput) -> Result<Writes, AgentError> {
        let request = serde_json::to_vec(&Request {
            agent: &input.agent,
            run_id: &input.run_id,
            attempt: input.attempt,
            state: &input.reads,
        })
        .map_err(|e| AgentError::Other(format!("cannot encode the agent's input: {e}")))?;

        let mut child = spawn(
            &self.program,
            &self.args,
            &self.dir,
            &self.env,
            &[
                ("BRAID_RUN_ID", &input.run_id),
                ("BRAID_AGENT", &input.agent),
                ("BRAID_ATTEMPT", &input.attempt.to_string()),
            ],
        )
        .await?;
        let pid = child.id().map(|id| Pid::from_raw(id as i32));
        let mut guard = GroupGuard { pid, record: None };
        // The program gets its input once its group is on record: one that
        // reads its input before acting leaves nothing a resume cannot find.
        if let Some(pid) = pid {
            guard.record = input.record_process_group(pid.as_raw()).await;
        }

        let mut stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");

        let feed = async move {
            // A program that exits without reading its input is not an error
            // in itself; its exit status says what happened.
            let _ = stdin.write_all(&request).await;
            let _ = stdin.shutdown().await;
        };
        let collect_stdout = read_capped(stdout);
        let collect_stderr = async {
            let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
            let mut reader = BufReader::new(stderr);
            let mut buf = Vec::new();
            // Read until EOF, whatever the bytes: a reader that stopped
            // early would kill the program with SIGPIPE on its next write.
            while let Ok(n) = read_line_capped(&mut reader, &mut buf, MAX_LOG_LINE_BYTES).await {
                if n == 0 {
                    break;
                }
                let line = String::from_utf8_lossy(&buf).replace('\0', "\u{FFFD}");
                buf.clear();
                input.log(&line);
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            tail
        };
        let io = async { tokio::join!(feed, collect_stdout, collect_stderr) };
        tokio::pin!(io);

        // Wait for the program to exit, then kill whatever it left running in
        // its group, so that background children neither outlive the agent
        // nor hold its pipes open. The leader is reaped only after that.
        let mut finished_io = None;
        let exit = async {
            match pid {
                Some(pid) => super::process::exited(pid).await,
                None => Ok(()),
            }
        };
        tokio::pin!(exit);
        let exited = tokio::select! {
            out = &mut io => {
                finished_io = Some(out);
                (&mut exit).await
            }
            exited = &mut exit => exited,
        };
        match exited {
            Ok(()) => guard.kill(),
            // Not ours to wait for any more: its group id may be reused.
            Err(_) => guard.pid = None,
        }
        let status = child.wait().await;
        let status =
            status.map_err(|e| AgentError::Other(format!("cannot wait for the process: {e}")))?;
        let ((), stdout, tail) = match finished_io {
            Some(out) => out,
            None => tokio::time::timeout(PIPE_DRAIN_TIMEOUT, &mut io)
                .await
                .map_err(|_| {
                    AgentError::Other(format!(
                        "the program exited but its stdout or stderr stayed open for {}s \
                         (a background process that left its process group?)",
                        PIPE_DRAIN_TIMEOUT.as_secs()
                    ))
                })?,
        };

        let stdout = stdout.map_err(|e| AgentError::Other(format!("cannot read stdout: {e}")))?;
        if stdout.overflowed {
            return Err(AgentError::Output(format!(
                "printed more than {MAX_STDOUT_BYTES} bytes on stdout"
            )));
        }
        if !status.success() {
            let status = match (status.code(), status.signal()) {
                (Some(code), _) => format!("exit code {code}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => status.to_string(),
            };
            return Err(AgentError::Exit {
                status,
                stderr_tail: tail.into(),
            });
        }
        let stdout = stdout.bytes;
        parse_output(&stdout)
    }
}

/// What a program printed on stdout, up to the limit.
struct Captured {
    bytes: Vec<u8>,
    overflowed: bool,
}

/// Reads to EOF, keeping at most [`MAX_STDOUT_BYTES`] and discarding the
/// rest (still reading, so the program is not killed by SIGPIPE).
/// Reads one line (through its newline, or to EOF) into `line`, keeping
/// its first `max` bytes without the newline and discarding the rest as it
/// arrives, so a program that writes without line breaks costs at most
/// `max` bytes. Returns the bytes read, 0 at EOF.
pub(crate) async fn read_line_capped<R>(
    reader: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<usize>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let mut read = 0;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(read);
        }
        let newline = available.iter().position(|&b| b == b'\n');
        let text = &available[..newline.unwrap_or(available.len())];
        let room = max.saturating_sub(line.len());
        line.extend_from_slice(&text[..text.len().min(room)]);
        let used = newline.map_or(available.len(), |at| at + 1);
        reader.consume(used);
        read += used;
        if newline.is_some() {
            return Ok(read);
        }
    }
}

async fn read_capped(mut pipe: impl tokio::io::AsyncRead + Unpin) -> std::io::Result<Captured> {
    let mut bytes = Vec::new();
    let mut overflowed = false;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = pipe.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Captured { bytes, overflowed });
        }
        let room = (MAX_STDOUT_BYTES as usize).saturating_sub(bytes.len());
        bytes.extend_from_slice(&chunk[..n.min(room)]);
        overflowed |= n > room;
    }
}

fn parse_output(stdout: &[u8]) -> Result<Writes, AgentError> {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        // No writes is a valid answer for an agent that declares none; the
        // scheduler reports any declared field that is missing.
        return Ok(Writes::new());
    }
    match serde_json::from_slice::<serde_json::Value>(stdout) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(other) => Err(AgentError::Output(format!(
            "stdout must be one JSON object of writes, got: {}",
            excerpt(other.to_string().as_bytes())
        ))),
        Err(e) => Err(AgentError::Output(format!(
            "stdout is not one JSON object ({e}); received: {}",
            excerpt(stdout)
        ))),
    }
}

fn excerpt(bytes: &[u8]) -> String {
    const MAX: usize = 300;
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.chars().count() > MAX {
        let cut: String = text.chars().take(MAX).collect();
        format!("`{cut}…` ({} bytes)", bytes.len())
    } else {
        format!("`{text}`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_must_be_an_object() {
        assert!(parse_output(b" {\"a\": 1}\n").unwrap().contains_key("a"));
        assert!(parse_output(b"\n").unwrap().is_empty());
        let err = parse_output(b"[1, 2]").unwrap_err().to_string();
        assert!(
            err.contains("one JSON object") && err.contains("[1,2]"),
            "{err}"
        );
        let err = parse_output(b"hello world").unwrap_err().to_string();
        assert!(err.contains("received: `hello world`"), "{err}");
    }
}
