//! Agents' log lines kept with a checkpointed run.
//!
//! A run checkpointed `end` or `agent` keeps each agent's last log lines
//! (what [`AgentInput::log`](super::AgentInput::log) receives: a command
//! agent's stderr, an LLM agent's streamed text) in its report and its
//! store, bounded per agent by [`KEPT_LOG_LINES`] and [`KEPT_LOG_BYTES`]:
//! the oldest lines go first, and the report counts what was dropped. A run
//! with `checkpoint: none` keeps none and pays nothing for it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Most log lines kept per agent of a checkpointed run (the last ones).
pub const KEPT_LOG_LINES: usize = 1000;
/// Most bytes of log lines kept per agent of a checkpointed run.
pub const KEPT_LOG_BYTES: usize = 256 * 1024;
/// A kept line (or a run of streamed pieces) is cut to this many bytes.
const KEPT_LINE_BYTES: usize = 16 * 1024;

/// One agent's kept log lines (its `foreach` instances' too, named).
#[derive(Debug)]
pub(crate) struct KeptLogs {
    /// The top-level agent: lines of its instances (`x[3]`) are prefixed
    /// with the instance's name.
    owner: Arc<str>,
    inner: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    lines: VecDeque<String>,
    bytes: usize,
    dropped: u64,
    /// The last line is a run of streamed pieces the next piece continues.
    open: bool,
}

impl KeptLogs {
    pub(crate) fn new(owner: Arc<str>) -> Self {
        Self {
            owner,
            inner: Mutex::new(Kept::default()),
        }
    }

    /// Keeps `line`, logged by `agent` (the owner or one of its
    /// instances); `partial` pieces join the line before them.
    pub(crate) fn push(&self, agent: &str, line: &str, partial: bool) {
        let mut kept = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if partial && kept.open {
            if let Some(last) = kept.lines.back_mut() {
                let room = KEPT_LINE_BYTES.saturating_sub(last.len());
                let piece = cut(line, room);
                last.push_str(piece);
                kept.bytes += piece.len();
            }
        } else {
            let mut text = String::new();
            if agent != &*self.owner {
                text.push_str(agent);
                text.push_str(": ");
            }
            text.push_str(cut(line, KEPT_LINE_BYTES));
            kept.bytes += text.len();
            kept.lines.push_back(text);
        }
        kept.open = partial;
        while kept.lines.len() > KEPT_LOG_LINES || kept.bytes > KEPT_LOG_BYTES {
            let Some(first) = kept.lines.pop_front() else {
                break;
            };
            kept.bytes -= first.len();
            kept.dropped += 1;
        }
    }

    /// The kept lines, oldest first, and how many were dropped.
    pub(crate) fn lines(&self) -> (Vec<String>, u64) {
        let kept = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (kept.lines.iter().cloned().collect(), kept.dropped)
    }
}

/// The longest prefix of `s` of at most `max` bytes, on a char boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines_and_counts_the_rest() {
        let logs = KeptLogs::new(Arc::from("a"));
        for i in 0..KEPT_LOG_LINES + 5 {
            logs.push("a", &format!("line {i}"), false);
        }
        let (lines, dropped) = logs.lines();
        assert_eq!(lines.len(), KEPT_LOG_LINES);
        assert_eq!(dropped, 5);
        assert_eq!(lines[0], "line 5");
    }

    #[test]
    fn bounds_bytes_and_names_instances_and_joins_pieces() {
        let logs = KeptLogs::new(Arc::from("x"));
        logs.push("x[2]", "hello", false);
        logs.push("x", "stream", true);
        logs.push("x", "ed", true);
        logs.push("x", "next", false);
        let (lines, _) = logs.lines();
        assert_eq!(lines, ["x[2]: hello", "streamed", "next"]);
        let big = "é".repeat(KEPT_LINE_BYTES);
        for _ in 0..40 {
            logs.push("x", &big, false);
        }
        let (lines, dropped) = logs.lines();
        assert!(lines.iter().map(String::len).sum::<usize>() <= KEPT_LOG_BYTES);
        assert!(lines.iter().all(|l| l.len() <= KEPT_LINE_BYTES));
        assert!(dropped > 0);
    }
}
