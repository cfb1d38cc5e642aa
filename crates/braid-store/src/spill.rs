//! The spill file: writes the database could not take, kept on local disk
//! until a later `braid` opens the same store and replays them.
//!
//! One file per store (named after a hash of its identity: a SQLite file's
//! real path, a PostgreSQL URL without its password), readable by its owner only,
//! JSON lines, appended under an exclusive file lock and fsynced before the
//! writer reports the runs as not saved. Each line is one operation of the
//! writer, stamped with the time it was spilled: replay skips the spilled
//! operations of a run whose stored record is newer than them (another
//! process wrote it since), and writes the rest in order. Every statement
//! is an upsert, so a replay that is cut short is simply done again.

use std::io::{BufRead, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use braid_core::AgentReport;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::writer::{AgentRow, Op, RunRow};

/// Most bytes of one spill file that replay reads: a file larger than this
/// is not braid's (or is damaged) and is left alone.
pub(crate) const MAX_SPILL_BYTES: u64 = 1 << 30;

/// One line of a spill file.
#[derive(Serialize, Deserialize)]
pub(crate) struct Line {
    /// The store the operation was meant for (password masked).
    pub store: String,
    /// When it was spilled, in ms since the Unix epoch.
    pub at_ms: i64,
    /// `host:pid` of the process that ran it, kept as the run's owner.
    #[serde(default)]
    pub owner: String,
    /// The operation.
    pub op: SpilledOp,
}

/// An operation of the writer, as spilled.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum SpilledOp {
    Run {
        run: RunRow,
    },
    Agent {
        run_id: String,
        agent: SpilledAgent,
    },
    Finished {
        run: RunRow,
        agents: Vec<SpilledAgent>,
    },
}

/// An agent's record, as spilled.
#[derive(Serialize, Deserialize)]
pub(crate) struct SpilledAgent {
    agent: String,
    report: ReportFields,
    writes: Vec<(String, Value)>,
    /// The agent's definition hash, so a resume after replay can reuse it.
    #[serde(default)]
    definition: Option<String>,
}

/// The fields of an [`AgentReport`] the store keeps.
#[derive(Serialize, Deserialize)]
struct ReportFields {
    status: braid_core::AgentStatus,
    start_ms: Option<f64>,
    duration_ms: Option<f64>,
    queue_ms: Option<f64>,
    attempts: u32,
    error: Option<String>,
    reason: Option<String>,
    /// A fork's kept agent: the run whose deltas hold its writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reused_from: Option<String>,
    /// A waiting agent's deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deadline_ms: Option<i64>,
    /// Its logs, failed attempts and tokens (the `details` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    details: Option<String>,
}

impl SpilledAgent {
    fn of(row: &AgentRow) -> Self {
        let r = &row.report;
        Self {
            agent: row.agent.to_string(),
            report: ReportFields {
                status: r.status,
                start_ms: r.start_ms,
                duration_ms: r.duration_ms,
                queue_ms: r.queue_ms,
                attempts: r.attempts,
                error: r.error.clone(),
                reason: r.reason.clone(),
                reused_from: r.reused_from.clone(),
                deadline_ms: r.deadline_ms,
                details: crate::details::to_column(r),
            },
            writes: row
                .writes
                .iter()
                .map(|(k, v)| (k.to_string(), (**v).clone()))
                .collect(),
            definition: row.definition.as_deref().map(str::to_owned),
        }
    }

    fn row(self) -> AgentRow {
        let r = self.report;
        let mut report = AgentReport {
            start_ms: r.start_ms,
            duration_ms: r.duration_ms,
            queue_ms: r.queue_ms,
            attempts: r.attempts,
            error: r.error,
            reason: r.reason,
            reused_from: r.reused_from,
            deadline_ms: r.deadline_ms,
            ..AgentReport::new(r.status)
        };
        crate::details::from_column(r.details, &mut report);
        AgentRow {
            agent: self.agent.into(),
            report,
            writes: self
                .writes
                .into_iter()
                .map(|(k, v)| (k.into(), std::sync::Arc::new(v)))
                .collect(),
            definition: self.definition.map(Into::into),
        }
    }
}

impl SpilledOp {
    pub(crate) fn of(op: &Op) -> Option<Self> {
        Some(match op {
            Op::Run(run) => SpilledOp::Run { run: run.clone() },
            Op::Agent { run_id, row } => SpilledOp::Agent {
                run_id: run_id.to_string(),
                agent: SpilledAgent::of(row),
            },
            Op::Finished { run, agents } => SpilledOp::Finished {
                run: run.clone(),
                agents: agents.iter().map(SpilledAgent::of).collect(),
            },
            // Process groups are live state of this process, not history:
            // a later braid finds none of them alive.
            Op::Flush(..) | Op::Process { .. } => return None,
            // A cache entry that is not written costs a later miss, no more.
            Op::Cache(_) => return None,
        })
    }

    pub(crate) fn op(self) -> Op {
        match self {
            SpilledOp::Run { run } => Op::Run(run),
            SpilledOp::Agent { run_id, agent } => Op::Agent {
                run_id: run_id.into(),
                row: agent.row(),
            },
            SpilledOp::Finished { run, agents } => Op::Finished {
                run,
                agents: agents.into_iter().map(SpilledAgent::row).collect(),
            },
        }
    }
}

/// Where a store's spill file is: `DIR/braid-spill-HASH.jsonl`, with HASH a
/// stable hash of the store's identity (a SQLite file's real path, or a
/// PostgreSQL URL without its password).
pub(crate) fn path_for(dir: &Path, identity: &str) -> PathBuf {
    // FNV-1a: stable across Rust releases and machines, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in identity.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    dir.join(format!("braid-spill-{hash:016x}.jsonl"))
}

/// Opens `path` for appending and locks it, making sure the lock is on the
/// file that is still at `path` (a replay may have removed it meanwhile).
fn open_locked(path: &Path) -> std::io::Result<std::fs::File> {
    loop {
        // Runs' inputs and writes: readable by their owner only.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(path)?;
        file.lock()?;
        match std::fs::metadata(path) {
            Ok(meta) if meta.ino() == file.metadata()?.ino() => return Ok(file),
            // Removed or replaced while we waited: take the new one.
            _ => continue,
        }
    }
}

/// Appends `ops` to the spill file at `path` and syncs it to disk.
/// Blocking: call from a blocking thread.
pub(crate) fn append(
    path: &Path,
    store: &str,
    owner: &str,
    at_ms: i64,
    ops: &[Op],
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = Vec::new();
    for op in ops {
        if let Some(op) = SpilledOp::of(op) {
            let line = Line {
                store: store.to_owned(),
                at_ms,
                owner: owner.to_owned(),
                op,
            };
            serde_json::to_writer(&mut text, &line)?;
            text.push(b'\n');
        }
    }
    let mut file = open_locked(path)?;
    let len = file.metadata()?.len();
    if len > 0 {
        // A line an earlier append left cut short (a crash, a full disk)
        // must not swallow this append's first line.
        let mut last = [0u8];
        std::os::unix::fs::FileExt::read_at(&file, &mut last, len - 1)?;
        if last[0] != b'\n' {
            text.insert(0, b'\n');
        }
    }
    if let Err(error) = file.write_all(&text).and_then(|()| file.sync_data()) {
        // Leave no fragment behind: what was kept before stays readable.
        let _ = file.set_len(len);
        let _ = file.unlock();
        return Err(error);
    }
    file.unlock()
}

/// A spill file taken for replay: its lines, with the file locked until it
/// is [`Taken::done`] (removed) or dropped (kept).
pub(crate) struct Taken {
    file: std::fs::File,
    path: PathBuf,
    /// The lines, in order.
    pub lines: Vec<Line>,
}

impl Taken {
    /// Everything was replayed: the file goes.
    pub(crate) fn done(self) -> std::io::Result<()> {
        std::fs::remove_file(&self.path)?;
        self.file.unlock()
    }
}

/// Reads and locks the spill file at `path`, if there is one with lines.
/// Blocking: call from a blocking thread.
pub(crate) fn take(path: &Path) -> Result<Option<Taken>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let file = open_locked(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let size = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if size > MAX_SPILL_BYTES {
        return Err(format!(
            "{} has {size} bytes, more than a spill file may ({MAX_SPILL_BYTES}); left alone",
            path.display()
        ));
    }
    let mut lines = Vec::new();
    let reader = std::io::BufReader::new(&file);
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(&line) {
            Ok(line) => lines.push(line),
            // A line cut short by a crash mid-append: what it held was
            // never reported as kept. The lines around it still replay.
            Err(error) => {
                tracing::warn!(
                    file = %path.display(),
                    line = n + 1,
                    %error,
                    "ignoring a spilled line that is not a whole operation"
                );
            }
        }
    }
    if lines.is_empty() {
        let _ = std::fs::remove_file(path);
        let _ = file.unlock();
        return Ok(None);
    }
    Ok(Some(Taken {
        file,
        path: path.to_owned(),
        lines,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str) -> Op {
        Op::Run(
            serde_json::from_value(serde_json::json!({
                "id": id, "pipeline": "p", "pipeline_hash": "h", "pipeline_path": null,
                "checkpoint": "agent", "status": "running", "input": [], "error": null,
                "makespan_ms": null, "created_at_ms": 0
            }))
            .unwrap(),
        )
    }

    fn ids(taken: &Taken) -> Vec<String> {
        taken
            .lines
            .iter()
            .map(|line| match &line.op {
                SpilledOp::Run { run } => run.id.to_string(),
                _ => panic!("only runs were spilled"),
            })
            .collect()
    }

    #[test]
    fn a_line_cut_short_loses_nothing_around_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spill.jsonl");
        append(&path, "s", "h:1", 0, &[run("first")]).unwrap();
        // What a crash or a full disk mid-append leaves: half a line.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(br#"{"store": "s", "at_ms": 0, "op": {"Ru"#)
            .unwrap();
        drop(file);
        append(&path, "s", "h:1", 0, &[run("second"), run("third")]).unwrap();

        let taken = take(&path).unwrap().expect("the file has lines");
        assert_eq!(ids(&taken), ["first", "second", "third"]);
    }
}
