//! Where a run in flight has got to, on request.
//!
//! A run started without events builds none, so nobody can follow it by
//! listening. It can still be asked: give it a [`SnapshotInbox`] in
//! [`RunOptions::snapshots`](crate::RunOptions), and the matching
//! [`SnapshotTaker::take`] returns its agents' reports and its state as of
//! now. The run does the work only when asked (the server asks when a
//! client reads a running run), so a run nobody looks at pays nothing.
//!
//! ```
//! use braid_core::{AgentStatus, Pipeline, RunOptions};
//! use braid_core::snapshot;
//! use serde_json::json;
//!
//! let pipeline = Pipeline::from_yaml_str(r#"
//! pipeline: snap
//! agents:
//!   quick: { kind: sleep, ms: 0, writes: [a] }
//!   slow: { kind: sleep, ms: 300, reads: [a], writes: [b] }
//! "#).unwrap();
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! # rt.block_on(async {
//! let (taker, inbox) = snapshot::channel();
//! let input = pipeline.check_input(&json!({})).unwrap();
//! let run = pipeline.run(input, RunOptions { snapshots: Some(inbox), ..RunOptions::default() });
//! let look = async {
//!     tokio::time::sleep(std::time::Duration::from_millis(100)).await;
//!     taker.take().await.unwrap()
//! };
//! let (_, seen) = tokio::join!(run, look);
//! assert_eq!(seen.agents["quick"].status, AgentStatus::Completed);
//! assert_eq!(seen.agents["slow"].status, AgentStatus::Running);
//! assert!(seen.state.contains_key("a"));
//! # });
//! ```

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::report::AgentReport;

/// A run in flight as of one moment.
#[derive(Debug, Clone, Serialize)]
pub struct RunSnapshot {
    /// Time since the run started, in ms.
    pub elapsed_ms: f64,
    /// Each top-level agent's report so far (a `foreach` agent's instance
    /// counts included; nested reports come with the final report).
    pub agents: crate::report::ByName<AgentReport>,
    /// Every field that has a value so far (merge fields as last combined).
    pub state: crate::report::ByName<Arc<Value>>,
}

/// Asks one run in flight for a [`RunSnapshot`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SnapshotTaker(mpsc::Sender<oneshot::Sender<RunSnapshot>>);

impl SnapshotTaker {
    /// The run as of now; `None` once the run has ended (or is ending).
    pub async fn take(&self) -> Option<RunSnapshot> {
        let (reply, snapshot) = oneshot::channel();
        self.0.send(reply).await.ok()?;
        snapshot.await.ok()
    }
}

/// Where a run takes snapshot requests from: give it in
/// [`RunOptions::snapshots`](crate::RunOptions).
#[derive(Debug, Clone)]
pub struct SnapshotInbox(
    pub(crate) Arc<tokio::sync::Mutex<mpsc::Receiver<oneshot::Sender<RunSnapshot>>>>,
);

/// A taker and the inbox it asks through.
pub fn channel() -> (SnapshotTaker, SnapshotInbox) {
    let (tx, rx) = mpsc::channel(8);
    (
        SnapshotTaker(tx),
        SnapshotInbox(Arc::new(tokio::sync::Mutex::new(rx))),
    )
}
