//! What an agent is to the scheduler: something that takes the fields it
//! reads and returns the fields it writes.
//!
//! The built-in kinds live in submodules: [`sleep`] (stands for I/O in
//! benchmarks and examples), [`command`] (any program speaking JSON over
//! stdin and stdout) and its warm-process variant [`pool`]. Library users implement [`Agent`] for their own.

pub mod command;
pub mod logs;
pub mod pool;
pub mod process;
pub mod sleep;
pub mod tool;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::event::{EventKind, EventSink};
pub use crate::report::TokenUsage;
pub use logs::{KEPT_LOG_BYTES, KEPT_LOG_LINES};

/// The fields an agent writes, by name.
pub type Writes = Map<String, Value>;

/// One agent invocation: which run, which attempt, and the values of the
/// fields the agent declared in `reads` (optional reads that were not
/// produced are absent).
#[derive(Debug, Clone)]
pub struct AgentInput {
    /// The run this call belongs to.
    pub run_id: Arc<str>,
    /// The agent's name in the pipeline.
    pub agent: Arc<str>,
    /// 1 for the first try, 2 for the first retry, and so on.
    pub attempt: u32,
    /// The agent's reads, in declaration order. Values are shared with the
    /// run's state, not copied.
    pub reads: Reads,
    pub(crate) events: Option<EventSink>,
    pub(crate) usage: TokenSlot,
    /// Where its log lines are kept (checkpointed runs).
    pub(crate) logs: Option<Arc<logs::KeptLogs>>,
    /// Where process groups go on record (runs checkpointed per agent).
    pub(crate) processes: Option<Arc<ProcessRecorder>>,
    /// The tools it may call (`tools:`), and where its calls are recorded.
    pub(crate) tools: Option<Arc<self::tool::ToolCalls>>,
}

/// Puts a run's process groups on record through its checkpointer.
pub(crate) struct ProcessRecorder {
    pub(crate) checkpointer: Arc<dyn crate::checkpoint::Checkpointer>,
    pub(crate) run: crate::checkpoint::RunRecord,
}

impl fmt::Debug for ProcessRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessRecorder")
            .field("run", &self.run.run_id)
            .finish_non_exhaustive()
    }
}

/// A process group on record with its run; dropping it takes the record
/// back (after the group was killed).
pub(crate) struct RecordedGroup {
    recorder: Arc<ProcessRecorder>,
    pgid: i32,
}

impl Drop for RecordedGroup {
    fn drop(&mut self) {
        self.recorder
            .checkpointer
            .process_ended(&self.recorder.run, self.pgid);
    }
}

/// Tokens an agent's model calls used, added up over its attempts.
#[derive(Debug, Default)]
pub struct TokenCounter {
    prompt: std::sync::atomic::AtomicU64,
    completion: std::sync::atomic::AtomicU64,
}

/// Where a call's tokens are counted: its agent's counter among its run's.
/// A run allocates its agents' counters once, together, rather than one
/// `Arc` per agent (most agents never count a token).
#[derive(Debug, Clone)]
pub(crate) struct TokenSlot {
    counters: Arc<[TokenCounter]>,
    index: usize,
}

impl TokenSlot {
    /// Agent `index`'s counter among `counters`.
    pub(crate) fn new(counters: Arc<[TokenCounter]>, index: usize) -> Self {
        debug_assert!(index < counters.len());
        Self { counters, index }
    }

    fn counter(&self) -> &TokenCounter {
        &self.counters[self.index]
    }
}

impl TokenCounter {
    pub(crate) fn usage(&self) -> Option<TokenUsage> {
        use std::sync::atomic::Ordering::Relaxed;
        let usage = TokenUsage {
            prompt: self.prompt.load(Relaxed),
            completion: self.completion.load(Relaxed),
        };
        (usage != TokenUsage::default()).then_some(usage)
    }
}

impl AgentInput {
    /// An input for one call made outside a run: a worker running an agent
    /// for a run whose scheduler is elsewhere (`braid worker`). Its log
    /// lines are kept as a checkpointed run keeps them (bounded by
    /// [`KEPT_LOG_LINES`] and [`KEPT_LOG_BYTES`]) and its tokens counted:
    /// read them with [`AgentInput::kept_logs`] and
    /// [`AgentInput::tokens`] after the call, to send back with its writes.
    ///
    /// ```
    /// use braid_core::agent::AgentInput;
    /// let input = AgentInput::standalone("run-1".into(), "summarise".into(), 1, [("text".to_owned(), "hi".into())]);
    /// input.log("thinking");
    /// input.record_tokens(3, 4);
    /// assert_eq!(input.kept_logs(), (vec!["thinking".to_owned()], 0));
    /// assert_eq!(input.tokens().map(|t| t.prompt + t.completion), Some(7));
    /// ```
    pub fn standalone(
        run_id: Arc<str>,
        agent: Arc<str>,
        attempt: u32,
        reads: impl IntoIterator<Item = (String, Value)>,
    ) -> Self {
        let reads = reads
            .into_iter()
            .map(|(name, value)| (Arc::from(name), Arc::new(value)))
            .collect();
        Self {
            logs: Some(Arc::new(logs::KeptLogs::new(agent.clone()))),
            run_id,
            agent,
            attempt,
            reads: Reads(reads),
            events: None,
            usage: TokenSlot::new(Arc::new([TokenCounter::default()]), 0),
            processes: None,
            tools: None,
        }
    }

    /// The tools this agent may call (its `tools:`), in the order it lists
    /// them; empty for an agent without tools.
    pub fn tools(&self) -> &[Arc<self::tool::Tool>] {
        self.tools.as_ref().map_or(&[], |t| t.tools())
    }

    /// How many tool calls one attempt may make (`max_tool_calls`).
    pub fn max_tool_calls(&self) -> u32 {
        self.tools.as_ref().map_or(0, |t| t.max_calls())
    }

    /// Calls tool `name` with `arguments` (a JSON object), as a step of the
    /// run (see [`crate::tool`]): the arguments are checked against the
    /// tool's `parameters`, it runs with its own timeout and retries, and
    /// its result is the object of its writes. Calls may run concurrently
    /// (join their futures); dropping one cancels it.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use braid_core::agent::{Agent, AgentError, AgentInput, Writes};
    /// use braid_core::{AgentKinds, Pipeline, RunOptions};
    /// use serde_json::json;
    ///
    /// // A Rust agent that calls the pipeline's `double` tool twice at once.
    /// struct Planner;
    /// #[async_trait::async_trait]
    /// impl Agent for Planner {
    ///     async fn call(&self, input: &AgentInput) -> Result<Writes, AgentError> {
    ///         let (a, b) = tokio::join!(
    ///             input.call_tool("double", json!({"n": 2})),
    ///             input.call_tool("double", json!({"n": 5})),
    ///         );
    ///         let doubled = |r: Result<serde_json::Value, _>| r.map(|v| v["doubled"].as_i64().unwrap_or(0));
    ///         let sum = doubled(a).and_then(|a| Ok(a + doubled(b)?))
    ///             .map_err(|e: braid_core::tool::ToolCallError| AgentError::Other(e.to_string()))?;
    ///         Ok(Writes::from_iter([("sum".to_owned(), json!(sum))]))
    ///     }
    /// }
    /// let mut kinds = AgentKinds::standard();
    /// kinds.builtin("planner", Arc::new(Planner));
    /// kinds.builtin_fn("double", |reads| async move {
    ///     let n = reads.get("n").and_then(|v| v.as_i64()).unwrap_or(0);
    ///     Ok::<_, AgentError>(Writes::from_iter([("doubled".to_owned(), json!(n * 2))]))
    /// });
    /// let pipeline = Pipeline::from_yaml_str_with(r#"
    /// pipeline: p
    /// agents:
    ///   double:
    ///     kind: builtin
    ///     function: double
    ///     tool: { description: Doubles n, parameters: { type: object, properties: { n: { type: integer } }, required: [n] } }
    ///     writes: [doubled]
    ///   plan: { kind: builtin, function: planner, tools: [{ agent: double }], writes: [sum] }
    /// "#, &kinds).unwrap();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let report = pipeline.run(pipeline.check_input(&json!({})).unwrap(), RunOptions::default()).await;
    /// assert_eq!(*report.state["sum"], json!(14));
    /// let calls = &report.agents["plan"].tool_calls;
    /// assert_eq!(calls.len(), 2);
    /// assert!(calls[0].name.starts_with("plan.tool#"));
    /// # });
    /// ```
    pub async fn call_tool(
        &self,
        name: &str,
        arguments: Value,
    ) -> Result<Value, self::tool::ToolCallError> {
        match &self.tools {
            Some(calls) => calls.call(self, name, arguments, None).await,
            None => Err(self::tool::ToolCallError::Unknown {
                tool: name.to_owned(),
                available: Vec::new(),
            }),
        }
    }

    /// [`AgentInput::call_tool`] for the call the model named `id`
    /// (its `tool_call_id`): in a resumed run, a call by that id that
    /// completed before is not made again; its recorded result is given
    /// back (see [`AgentInput::replayed_transcript`]).
    pub async fn call_tool_with_id(
        &self,
        id: &str,
        name: &str,
        arguments: Value,
    ) -> Result<Value, self::tool::ToolCallError> {
        match &self.tools {
            Some(calls) => calls.call(self, name, arguments, Some(id)).await,
            None => Err(self::tool::ToolCallError::Unknown {
                tool: name.to_owned(),
                available: Vec::new(),
            }),
        }
    }

    /// In a resumed run (`checkpoint: agent`), the conversation this agent
    /// had recorded ([`AgentInput::record_transcript`]) when the process
    /// running it stopped, once: a tool-calling agent continues from it
    /// instead of asking its model again, and its calls by id that had
    /// completed are not made again. `None` otherwise.
    pub fn replayed_transcript(&self) -> Option<Vec<Value>> {
        self.tools.as_ref()?.take_replayed(&self.agent)
    }

    /// Records the conversation of a tool-calling agent (the messages sent
    /// to the model and received), shown in its report as
    /// [`AgentReport::transcript`](crate::report::AgentReport::transcript).
    /// With `checkpoint: agent` it goes on record at once, with the calls
    /// so far, for a resumed run to continue from. Without tools it is not
    /// kept.
    pub fn record_transcript(&self, messages: Vec<Value>) {
        if let Some(calls) = &self.tools {
            calls.set_transcript(&self.agent, messages);
        }
    }

    /// The log lines kept so far (oldest first) and how many older ones
    /// were dropped; none unless the run keeps logs (or the input is
    /// [`standalone`](AgentInput::standalone)).
    pub fn kept_logs(&self) -> (Vec<String>, u64) {
        self.logs.as_ref().map(|l| l.lines()).unwrap_or_default()
    }

    /// The tokens recorded with [`AgentInput::record_tokens`] so far.
    pub fn tokens(&self) -> Option<TokenUsage> {
        self.usage.counter().usage()
    }

    /// Records tokens a model call used; they appear in the agent's report
    /// and the run's total.
    pub fn record_tokens(&self, prompt: u64, completion: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let counter = self.usage.counter();
        counter.prompt.fetch_add(prompt, Relaxed);
        counter.completion.fetch_add(completion, Relaxed);
    }

    /// Puts process group `pgid` on record with the run, when the run is
    /// checkpointed per agent, and waits until the record is durable.
    pub(crate) async fn record_process_group(&self, pgid: i32) -> Option<RecordedGroup> {
        let recorder = self.processes.clone()?;
        recorder
            .checkpointer
            .process_started(&recorder.run, &self.agent, pgid)
            .await;
        Some(RecordedGroup { recorder, pgid })
    }

    /// Whether anyone listens to this agent's log lines (the run asked for
    /// `full` events): worth streaming partial output for.
    pub fn wants_progress(&self) -> bool {
        self.events.as_ref().is_some_and(EventSink::wants_logs)
    }

    /// Reports one line of the agent's log. It reaches event subscribers
    /// when the run asked for `full` events, is kept with the run when it
    /// is checkpointed (see [`logs`]), and is a `debug` trace line of
    /// target `braid::agent_log` (`RUST_LOG=braid::agent_log=debug`);
    /// otherwise it costs nothing.
    pub fn log(&self, line: &str) {
        tracing::debug!(target: "braid::agent_log", agent = %self.agent, "{line}");
        if let Some(kept) = &self.logs {
            kept.push(&self.agent, line, false);
        }
        if let Some(events) = &self.events
            && events.wants_logs()
        {
            events.emit(EventKind::AgentLog {
                agent: self.agent.clone(),
                line: line.to_owned(),
                partial: false,
            });
        }
    }

    /// Reports a piece of streamed text (an answer as it arrives), which
    /// the agent's next piece or line continues without a line break. Like
    /// [`AgentInput::log`], it costs nothing unless the run asked for
    /// `full` events.
    pub fn log_partial(&self, text: &str) {
        if let Some(kept) = &self.logs {
            kept.push(&self.agent, text, true);
        }
        if let Some(events) = &self.events
            && events.wants_logs()
        {
            events.emit(EventKind::AgentLog {
                agent: self.agent.clone(),
                line: text.to_owned(),
                partial: true,
            });
        }
    }
}

/// The read fields handed to an agent: a small list of shared values.
#[derive(Debug, Clone, Default)]
pub struct Reads(pub(crate) Vec<(Arc<str>, Arc<Value>)>);

impl Reads {
    /// The value of field `name`, if it was read and produced.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| &**n == name).map(|(_, v)| &**v)
    }

    /// Every (field, value) pair.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(n, v)| (&**n, &**v))
    }

    /// How many fields are present.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no field is present.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Reads {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(&**name, &**value)?;
        }
        map.end()
    }
}

/// Why one attempt of an agent failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    /// The attempt ran longer than the agent's `timeout`.
    #[error("timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// A command agent's process could not be started.
    #[error("cannot start `{program}`: {message}")]
    Spawn {
        /// The program that was run.
        program: String,
        /// The operating system's reason.
        message: String,
    },
    /// A command agent's process exited unsuccessfully.
    #[error("{}", exit_message(.status, .stderr_tail))]
    Exit {
        /// How it ended, e.g. `exit code 3` or `killed by signal 9`.
        status: String,
        /// The last lines it wrote to stderr.
        stderr_tail: Vec<String>,
    },
    /// The agent's output was not what it promised: not a JSON object, an
    /// undeclared field, a missing declared field, or a value its field's
    /// merge rule cannot combine. Not retried: the same code would do it again.
    #[error("{0}")]
    Output(String),
    /// Any other failure, as the agent describes it.
    #[error("{0}")]
    Other(String),
    /// The agent could not be run where it was sent: a worker does not
    /// hold its pipeline or holds another definition of it, or its task
    /// was dead-lettered after too many deliveries. Not retried: sending
    /// it again would meet the same refusal.
    #[error("{0}")]
    Refused(String),
}

impl AgentError {
    /// Whether another attempt could succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            AgentError::Output(_) | AgentError::Spawn { .. } | AgentError::Refused(_)
        )
    }
}

fn exit_message(status: &str, stderr_tail: &[String]) -> String {
    if stderr_tail.is_empty() {
        format!("{status} (no stderr)")
    } else {
        format!(
            "{status}; stderr ends with:\n  {}",
            stderr_tail.join("\n  ")
        )
    }
}

/// Something the scheduler can run.
///
/// ```
/// use braid_core::agent::{Agent, AgentError, AgentInput, Writes};
///
/// struct Shout;
///
/// #[async_trait::async_trait]
/// impl Agent for Shout {
///     async fn call(&self, input: &AgentInput) -> Result<Writes, AgentError> {
///         let text = input.reads.get("text").and_then(|v| v.as_str()).unwrap_or("");
///         let mut out = Writes::new();
///         out.insert("loud".into(), text.to_uppercase().into());
///         Ok(out)
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait Agent: Send + Sync + 'static {
    /// Runs one attempt. Dropping the returned future must cancel the work
    /// (the scheduler drops it on timeout and on cancellation).
    async fn call(&self, input: &AgentInput) -> Result<Writes, AgentError>;
}

impl fmt::Debug for dyn Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<agent>")
    }
}

/// One call of the agent, within its timeout.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice in its state"
)]
pub(crate) fn call_once<'a>(
    runner: &'a dyn Agent,
    input: &'a AgentInput,
    timeout: Option<Duration>,
) -> impl Future<Output = Result<Writes, AgentError>> + Send + 'a {
    async move {
        match timeout {
            // Boxed: the timer entry is over 100 bytes, which every agent
            // in flight would otherwise carry, timeout or not.
            Some(limit) => Box::pin(tokio::time::timeout(limit, runner.call(input)))
                .await
                .unwrap_or(Err(AgentError::Timeout(limit))),
            None => runner.call(input).await,
        }
    }
}
