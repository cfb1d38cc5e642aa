//! The vocabulary every layer shares: how a run and each agent ended, and
//! the reports a run hands back.
//!
//! A leaf module (it imports nothing else from the crate), so the scheduler,
//! checkpointing, events, telemetry, the store and the server all name a
//! status without depending on one another. Each status has one string form
//! ([`RunStatus::as_str`], [`AgentStatus::as_str`]), the same in serde, in
//! [`Display`](std::fmt::Display) and in [`FromStr`](std::str::FromStr):
//! stores and servers use it rather than spelling the words themselves.

use std::fmt;
use std::sync::Arc;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How the report's maps hash their keys (agent and field names, which a
/// pipeline declares): foldhash, seeded once per process. Hashing each name
/// once a run with SipHash cost several times as much (issue 16), and the
/// names come from a validated pipeline, bounded in number.
pub type NameHasher = foldhash::fast::RandomState;

/// A map by agent or field name, in the pipeline's order. The names are
/// shared with the pipeline (`Arc<str>`), not copied for every run; look
/// one up with a `&str` (`report.agents["triage"]`).
pub type ByName<V> = IndexMap<Arc<str>, V, NameHasher>;

/// How a run ended (or, for [`Waiting`](RunStatus::Waiting), where it
/// stands). A run still in progress has no `RunStatus`; stores write it as
/// [`RUNNING`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Every agent completed or was skipped.
    Completed,
    /// An agent failed.
    Failed,
    /// The run was cancelled before it finished.
    Cancelled,
    /// The process running it stopped (a server shut down or crashed)
    /// before it finished; it can be resumed from its checkpoints. The
    /// engine never reports it: stores and servers mark runs with it.
    Interrupted,
    /// Nothing more can happen until an `input` agent is answered (or its
    /// wait times out); the run continues from its checkpoints then.
    Waiting,
}

/// What stores write as the status of a run still in progress.
pub const RUNNING: &str = "running";

impl RunStatus {
    /// Every status, in declaration order.
    pub const ALL: [RunStatus; 5] = [
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Interrupted,
        RunStatus::Waiting,
    ];

    /// True for [`RunStatus::Completed`].
    pub fn is_success(self) -> bool {
        self == RunStatus::Completed
    }

    /// Its one string form: `completed`, `failed`, `cancelled`,
    /// `interrupted` or `waiting`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Waiting => "waiting",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RunStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown run status `{s}`"))
    }
}

/// Where one agent got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    /// Not started (only seen while a run is in progress).
    Pending,
    /// In flight.
    Running,
    /// Finished; its writes are in the state.
    Completed,
    /// Failed for good (after its retries).
    Failed,
    /// Did not run: its condition was false, or a read it needs was never produced.
    Skipped,
    /// Stopped, or never started, because the run was cancelled or failed.
    Cancelled,
    /// An `input` agent waiting for its answer from outside the run.
    Waiting,
}

impl AgentStatus {
    /// Every status, in declaration order.
    pub const ALL: [AgentStatus; 7] = [
        AgentStatus::Pending,
        AgentStatus::Running,
        AgentStatus::Completed,
        AgentStatus::Failed,
        AgentStatus::Skipped,
        AgentStatus::Cancelled,
        AgentStatus::Waiting,
    ];

    /// Its one string form (the lowercase name).
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Pending => "pending",
            AgentStatus::Running => "running",
            AgentStatus::Completed => "completed",
            AgentStatus::Failed => "failed",
            AgentStatus::Skipped => "skipped",
            AgentStatus::Cancelled => "cancelled",
            AgentStatus::Waiting => "waiting",
        }
    }
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AgentStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        AgentStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown agent status `{s}`"))
    }
}

/// Token usage, per agent and per run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Tokens sent.
    pub prompt: u64,
    /// Tokens received.
    pub completion: u64,
}

/// What happened to one agent.
#[derive(Debug, Clone, Serialize)]
pub struct AgentReport {
    /// Where it got to.
    pub status: AgentStatus,
    /// When its first attempt started, in ms from the run's start.
    pub start_ms: Option<f64>,
    /// From its first attempt's start to its last attempt's end, in ms.
    pub duration_ms: Option<f64>,
    /// How long it waited between being ready and starting (concurrency limit), in ms.
    pub queue_ms: Option<f64>,
    /// How many attempts it made.
    pub attempts: u32,
    /// Why it failed or was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// It finished in an earlier attempt at this run, which this one resumed;
    /// its timings are from then.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    /// Model tokens it used (LLM agents).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens: Option<TokenUsage>,
    /// For a `foreach` agent: how many instances it had, by status.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub items: Option<ItemCounts>,
    /// For a `foreach` agent: each instance's report, keyed by its name
    /// (`summarize[3]`), in element order. Left out by
    /// [`RunReport::without_instances`].
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub instances: Option<ByName<AgentReport>>,
    /// Its writes came from the cache (`cache:`): it did not run.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub cached: bool,
    /// In a fork: the run whose recorded result it kept (it did not run).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reused_from: Option<String>,
    /// A waiting `input` agent: when its wait times out, in ms since the
    /// Unix epoch (`None`: it waits for ever).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub deadline_ms: Option<i64>,
    /// Each failed attempt, oldest first (the last one's error is also
    /// [`AgentReport::error`] when the agent failed).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub failures: Vec<AttemptFailure>,
    /// Its last log lines (a command agent's stderr, an LLM agent's
    /// streamed text), kept with checkpointed runs: at most
    /// [`KEPT_LOG_LINES`](crate::agent::KEPT_LOG_LINES) lines and
    /// [`KEPT_LOG_BYTES`](crate::agent::KEPT_LOG_BYTES) bytes. A `foreach`
    /// agent's instances' lines start with the instance's name.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub logs: Vec<String>,
    /// Earlier log lines that did not fit the bound and were dropped.
    #[serde(skip_serializing_if = "is_zero", default)]
    pub logs_dropped: u64,
    /// Its tool calls (see [`crate::tool`]), in the order they started,
    /// its instances' included.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub tool_calls: Vec<ToolCallReport>,
    /// A tool-calling agent's conversation with its model: the messages
    /// sent and received, tool calls and results included, as of its last
    /// attempt.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub transcript: Option<Vec<Value>>,
}

/// One tool call of an agent: a step of the run (see [`crate::tool`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallReport {
    /// The step's name, `agent.tool#N:tool`.
    pub name: String,
    /// The tool called.
    pub tool: String,
    /// `running`, `completed`, `failed` or `cancelled`.
    pub status: AgentStatus,
    /// The arguments it was called with.
    pub arguments: Value,
    /// Attempts made (0 when the call was refused before running: an
    /// unknown tool, arguments that do not fit).
    pub attempts: u32,
    /// When it started, in ms from the run's start.
    pub start_ms: f64,
    /// How long it took, retries included.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub duration_ms: Option<f64>,
    /// What it returned (a tool agent's writes).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub result: Option<Value>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// The id the model gave the call (`tool_call_id`), when it gave one:
    /// what a resumed run finds it by.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub call_id: Option<String>,
    /// It completed before the run was resumed, and its recorded result
    /// was given again instead of calling the tool a second time.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub resumed: bool,
    /// Its result came from the cache (the tool agent has `cache:`): the
    /// tool was not called.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub cached: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One failed attempt of an agent: which, why, and how long it took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptFailure {
    /// 1 for the first try, 2 for the first retry, and so on.
    pub attempt: u32,
    /// Why it failed.
    pub error: String,
    /// How long the attempt ran, in ms.
    pub duration_ms: f64,
}

impl AgentReport {
    /// A report of an agent that has not run: `status`, nothing else.
    pub fn new(status: AgentStatus) -> Self {
        Self {
            status,
            start_ms: None,
            duration_ms: None,
            queue_ms: None,
            attempts: 0,
            error: None,
            reason: None,
            resumed: false,
            tokens: None,
            items: None,
            instances: None,
            cached: false,
            reused_from: None,
            deadline_ms: None,
            failures: Vec::new(),
            logs: Vec::new(),
            logs_dropped: 0,
            tool_calls: Vec::new(),
            transcript: None,
        }
    }
}

/// How many instances of a `foreach` agent ended each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemCounts {
    /// Elements of the list (instances in all).
    pub total: u64,
    /// Instances that completed.
    pub completed: u64,
    /// Instances that failed.
    pub failed: u64,
    /// Instances cancelled, in flight or before they started.
    pub cancelled: u64,
    /// Instances that had not ended when the report was made.
    pub pending: u64,
}

impl ItemCounts {
    /// Counts one instance that ended (or not yet) with `status`.
    pub fn count(&mut self, status: AgentStatus) {
        match status {
            AgentStatus::Completed => self.completed += 1,
            AgentStatus::Failed => self.failed += 1,
            AgentStatus::Cancelled | AgentStatus::Skipped => self.cancelled += 1,
            AgentStatus::Pending | AgentStatus::Running | AgentStatus::Waiting => self.pending += 1,
        }
    }
}

/// The outcome of a run: status, timings, and the final state.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The run's id.
    pub run_id: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// How it ended.
    pub status: RunStatus,
    /// Why it failed or was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// From start to the last agent's end, in ms (monotonic clock).
    pub makespan_ms: f64,
    /// Every field that has a value: the inputs and what completed agents wrote.
    pub state: ByName<Arc<Value>>,
    /// Every agent, in declaration order.
    pub agents: ByName<AgentReport>,
    /// Model tokens all agents used, when any did.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens: Option<TokenUsage>,
}

/// The agent and element index an instance's name stands for: `work[3]`
/// is element 3 of the `foreach` agent `work`. `None` for other names.
///
/// ```
/// assert_eq!(braid_core::report::split_instance("work[3]"), Some(("work", 3)));
/// assert_eq!(braid_core::report::split_instance("work"), None);
/// ```
pub fn split_instance(name: &str) -> Option<(&str, usize)> {
    let (agent, index) = name.strip_suffix(']')?.rsplit_once('[')?;
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((agent, index.parse().ok()?))
}

/// The top-level agent a member's name starts with: `per_doc` for
/// `per_doc[3].classify`, `refine` for `refine#2.draft`, `work` for
/// `work[3]`, and the name itself for a top-level agent.
///
/// ```
/// assert_eq!(braid_core::report::top_agent("per_doc[3].classify"), "per_doc");
/// assert_eq!(braid_core::report::top_agent("refine#2"), "refine");
/// assert_eq!(braid_core::report::top_agent("report"), "report");
/// ```
pub fn top_agent(name: &str) -> &str {
    let end = name.find(['[', '.', '#']).unwrap_or(name.len());
    &name[..end]
}

/// Compares member names with their numbers as numbers (`per_doc[2]`
/// before `per_doc[10]`), as [`natural_order`]'s keys do, without
/// allocating them.
///
/// ```
/// use braid_core::report::natural_cmp;
/// assert!(natural_cmp("per_doc[2]", "per_doc[10]").is_lt());
/// assert!(natural_cmp("refine#3.draft", "refine#3").is_gt());
/// ```
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    if a == b {
        // Members of one nested run, side by side in a report.
        return std::cmp::Ordering::Equal;
    }
    natural_chunks(a).cmp(natural_chunks(b))
}

/// `name` as [`natural_order`]'s key: each run of text before a number,
/// with the number, then the text after the last number (with 0).
fn natural_chunks(name: &str) -> impl Iterator<Item = (&str, u64)> {
    let mut rest = Some(name);
    std::iter::from_fn(move || {
        let text = rest?;
        let Some(start) = text.find(|c: char| c.is_ascii_digit()) else {
            rest = None;
            return Some((text, 0));
        };
        let digits = text[start..]
            .find(|c: char| !c.is_ascii_digit())
            .map_or(text.len(), |end| start + end);
        let n = text[start..digits].bytes().fold(0u64, |n, d| {
            n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        });
        rest = Some(&text[digits..]);
        Some((&text[..start], n))
    })
}

/// The nested run a member belongs to (`per_doc[3]` for
/// `per_doc[3].classify`), or the name itself.
pub(crate) fn nested_run_of(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(run, _)| run)
}

/// A sort key that orders member names by their numbers as numbers
/// (`per_doc[2]` before `per_doc[10]`).
pub fn natural_order(name: &str) -> Vec<(String, u64)> {
    let mut key = Vec::new();
    let mut text = String::new();
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(first) = c.to_digit(10) {
            let mut n = u64::from(first);
            while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                n = n.saturating_mul(10).saturating_add(u64::from(d));
                chars.next();
            }
            key.push((std::mem::take(&mut text), n));
        } else {
            text.push(c);
        }
    }
    key.push((text, 0));
    key
}

/// Nests the reports of `foreach` instances (`work[3]`) and of groups'
/// members and rounds (`per_doc[3].classify`, `refine#2`) under their
/// top-level agent's `instances`, in element and round order, and counts a
/// `foreach` agent's instances in its `items` (for reports rebuilt from
/// stored records, which keep one record a member).
pub fn nest_instances<N: Into<Arc<str>>>(
    members: impl IntoIterator<Item = (N, AgentReport)>,
) -> ByName<AgentReport> {
    let mut agents: ByName<AgentReport> = ByName::default();
    let mut nested: Vec<(Arc<str>, AgentReport)> = Vec::new();
    for (name, report) in members {
        let name: Arc<str> = name.into();
        if top_agent(&name) == &*name {
            agents.insert(name, report);
        } else {
            nested.push((name, report));
        }
    }
    // By the nested run each belongs to; within one, as given.
    nested.sort_by(|(a, _), (b, _)| natural_cmp(nested_run_of(a), nested_run_of(b)));
    for (name, report) in nested {
        let Some(parent) = agents.get_mut(top_agent(&name)) else {
            agents.insert(name, report);
            continue;
        };
        if split_instance(&name).is_some_and(|(agent, _)| agent == top_agent(&name)) {
            let counts = parent.items.get_or_insert_with(ItemCounts::default);
            if parent.instances.is_none() {
                *counts = ItemCounts {
                    total: counts.total,
                    ..ItemCounts::default()
                };
            }
            counts.count(report.status);
            counts.total = counts
                .total
                .max(counts.completed + counts.failed + counts.cancelled + counts.pending);
        }
        parent
            .instances
            .get_or_insert_with(ByName::default)
            .insert(name, report);
    }
    agents
}

impl RunReport {
    /// Drops every `foreach` agent's per-instance entries, keeping their
    /// counts: a fan-out over many elements then reports in a few lines.
    pub fn without_instances(mut self) -> Self {
        for agent in self.agents.values_mut() {
            agent.instances = None;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The comparison that does not allocate orders names exactly as
        /// their allocated keys do.
        #[test]
        fn natural_cmp_agrees_with_natural_order(
            a in "[a-c0-9\\[\\]#._]{0,12}",
            b in "[a-c0-9\\[\\]#._]{0,12}",
        ) {
            proptest::prop_assert_eq!(
                natural_cmp(&a, &b),
                natural_order(&a).cmp(&natural_order(&b)),
                "{} vs {}", a, b
            );
        }
    }

    #[test]
    fn stored_members_nest_under_their_top_level_agent_in_order() {
        let done = || AgentReport::new(AgentStatus::Completed);
        let names = [
            "per_doc",
            "per_doc[10]",
            "per_doc[2].b",
            "per_doc[2]",
            "per_doc[2].a",
            "refine#1.draft",
            "refine",
            "refine#0",
            "refine#1",
            "orphan[1]",
        ];
        let nested = nest_instances(names.iter().map(|n| (n.to_string(), done())));
        assert_eq!(
            nested.keys().map(|k| &**k).collect::<Vec<_>>(),
            ["per_doc", "refine", "orphan[1]"]
        );
        let per_doc = &nested["per_doc"];
        assert_eq!(
            per_doc
                .instances
                .as_ref()
                .unwrap()
                .keys()
                .map(|k| &**k)
                .collect::<Vec<_>>(),
            ["per_doc[2].b", "per_doc[2]", "per_doc[2].a", "per_doc[10]"]
        );
        assert_eq!(
            per_doc.items.unwrap().completed,
            2,
            "two elements, not their members"
        );
        let refine = &nested["refine"];
        assert_eq!(
            refine
                .instances
                .as_ref()
                .unwrap()
                .keys()
                .map(|k| &**k)
                .collect::<Vec<_>>(),
            ["refine#0", "refine#1.draft", "refine#1"]
        );
        assert!(refine.items.is_none(), "rounds are not elements");
    }

    #[test]
    fn one_string_form_in_serde_display_and_from_str() {
        for status in RunStatus::ALL {
            let json = serde_json::to_value(status).unwrap();
            assert_eq!(json, Value::String(status.as_str().to_owned()));
            assert_eq!(status.to_string(), status.as_str());
            assert_eq!(status.as_str().parse::<RunStatus>(), Ok(status));
        }
        for status in AgentStatus::ALL {
            let json = serde_json::to_value(status).unwrap();
            assert_eq!(json, Value::String(status.as_str().to_owned()));
            assert_eq!(status.as_str().parse::<AgentStatus>(), Ok(status));
        }
        assert!("running".parse::<RunStatus>().is_err());
        assert_eq!(
            "interrupted".parse::<RunStatus>(),
            Ok(RunStatus::Interrupted)
        );
    }
}
