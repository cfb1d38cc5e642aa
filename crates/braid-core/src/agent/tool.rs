//! Tools: what an agent's model may call with arguments, each call run as
//! a step of the run.
//!
//! An agent with `tool: { description, parameters }` is a tool, not a step
//! of the pipeline: it runs only when an agent that lists it under `tools:`
//! calls it, with the arguments as its reads, and its writes are the call's
//! result. Tool sources registered with [`AgentKinds::tool_source`]
//! (`braid-agents` adds `mcp`) add tools of their own the same way.
//!
//! ```yaml
//! agents:
//!   search:
//!     kind: http
//!     url: http://127.0.0.1:8081/search
//!     tool: { description: "Search the wiki", parameters: { type: object, properties: { q: { type: string } }, required: [q] } }
//!     writes: [hits]
//!   researcher:
//!     kind: llm
//!     tools: [{ agent: search }]
//!     max_tool_calls: 8          # per attempt (default 8)
//!     ...
//! ```
//!
//! The calling agent (an `llm` agent, or a Rust agent) calls
//! [`AgentInput::call_tool`]. Each call is a step named
//! `researcher.tool#3:search` (the caller, `tool#`, the call's number in
//! the caller, the tool): its arguments are checked against the tool's
//! `parameters` schema, it runs with the tool agent's own `timeout`,
//! `retries` and `backoff` (and with its `cache:`, when the run has a
//! cache, a call with the same arguments takes the stored result), it emits `tool_called` and `tool_finished`
//! events, and it is listed in the caller's report
//! ([`AgentReport::tool_calls`](crate::report::AgentReport::tool_calls)),
//! which checkpointed runs store. An attempt may make at most
//! `max_tool_calls` calls, bad ones included; the one past it is refused
//! with [`ToolCallError::TooMany`]. A tool agent calls no tools itself, so
//! calls do not nest.
//!
//! With `checkpoint: agent`, each completed call and each turn of the
//! conversation ([`AgentInput::record_transcript`]) put the caller's record
//! on record (status `running`). A resumed run hands it back: the caller
//! continues from [`AgentInput::replayed_transcript`], and its calls by id
//! ([`AgentInput::call_tool_with_id`]) that had completed give their
//! recorded results instead of running again.
//!
//! [`AgentKinds::tool_source`]: crate::AgentKinds::tool_source
//!
//! Also at `braid_core::tool`.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::Instant;

use super::{Agent, AgentError, AgentInput, Reads, Writes};
use crate::backoff::{Backoff, RetryPolicy};
use crate::event::EventKind;
use crate::report::{AgentStatus, ToolCallReport};

/// How many calls an attempt may make when its agent does not say.
pub const DEFAULT_MAX_TOOL_CALLS: u32 = 8;

/// The most `max_tool_calls` may be.
pub const MAX_TOOL_CALLS_LIMIT: u32 = 1_000;

/// The longest wait between a tool call's attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// One tool: its name, what it does, the JSON Schema of its arguments, and
/// what runs when it is called.
pub struct Tool {
    name: Arc<str>,
    description: String,
    parameters: Value,
    validator: jsonschema::Validator,
    runner: Arc<dyn Agent>,
    policy: RetryPolicy,
    /// The fields a result must have (a tool agent's writes); `None`: any
    /// object.
    results: Option<Vec<String>>,
    /// What answers it, as `explain` shows it (`http`, `mcp`, …).
    kind: String,
    /// A tool agent's `cache:`, with the definition hash its results are
    /// filed under.
    cache: Option<(crate::cache::CachePolicy, Arc<str>)>,
}

impl fmt::Debug for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tool")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Tool {
    /// A tool that runs `runner` with its arguments as reads. `parameters`
    /// must be a JSON Schema of an object (what OpenAI-style tool calling
    /// takes).
    ///
    /// ```
    /// use braid_core::agent::{Agent, AgentError, AgentInput, Writes};
    /// use braid_core::tool::Tool;
    /// use serde_json::json;
    ///
    /// struct Add;
    /// #[async_trait::async_trait]
    /// impl Agent for Add {
    ///     async fn call(&self, input: &AgentInput) -> Result<Writes, AgentError> {
    ///         let n = |k| input.reads.get(k).and_then(|v| v.as_i64()).unwrap_or(0);
    ///         Ok(Writes::from_iter([("sum".to_owned(), json!(n("a") + n("b")))]))
    ///     }
    /// }
    /// let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}});
    /// let tool = Tool::new("add", "Adds two numbers", schema, std::sync::Arc::new(Add)).unwrap();
    /// assert_eq!(tool.name(), "add");
    /// assert!(Tool::new("add", "", json!({"type": "string"}), std::sync::Arc::new(Add)).is_err());
    /// ```
    pub fn new(
        name: &str,
        description: &str,
        parameters: Value,
        runner: Arc<dyn Agent>,
    ) -> Result<Self, String> {
        check_name(name)?;
        let validator = parameters_validator(&parameters)?;
        Ok(Self {
            name: Arc::from(name),
            description: description.to_owned(),
            parameters,
            validator,
            runner,
            policy: RetryPolicy::default(),
            results: None,
            kind: "tool".to_owned(),
            cache: None,
        })
    }

    /// The same tool with `timeout` as the limit of each attempt.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.policy.timeout = timeout;
        self
    }

    /// The same tool whose kind `explain` shows as `kind` (`mcp`, …).
    pub fn with_kind(mut self, kind: &str) -> Self {
        self.kind = kind.to_owned();
        self
    }

    /// A tool agent of the pipeline (`tool:` on an agent).
    pub(crate) fn agent(
        name: &str,
        description: String,
        parameters: Value,
        kind: &str,
        runner: Arc<dyn Agent>,
        policy: RetryPolicy,
        results: Vec<String>,
    ) -> Result<Self, String> {
        let validator = parameters_validator(&parameters)?;
        Ok(Self {
            name: Arc::from(name),
            description,
            parameters,
            validator,
            runner,
            policy,
            results: Some(results),
            kind: kind.to_owned(),
            cache: None,
        })
    }

    /// The same tool with its results cached for `policy.ttl`, filed
    /// under `definition` and the arguments.
    pub(crate) fn cached(
        mut self,
        policy: crate::cache::CachePolicy,
        definition: Arc<str>,
    ) -> Self {
        self.cache = Some((policy, definition));
        self
    }

    /// Whether its results are cached (a tool agent with `cache:`).
    pub fn is_cached(&self) -> bool {
        self.cache.is_some()
    }

    /// Its name, as the model calls it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it does, for the model.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The JSON Schema of its arguments.
    pub fn parameters(&self) -> &Value {
        &self.parameters
    }

    /// What runs when it is called: its kind's name (`http`, `command`,
    /// `mcp`, …).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Its description in the form OpenAI-style chat completions take in
    /// `tools`: `{"type": "function", "function": {name, description,
    /// parameters}}`.
    pub fn openai_schema(&self) -> Value {
        serde_json::json!({
            "type": "function",
            "function": {
                "name": &*self.name,
                "description": self.description,
                "parameters": self.parameters,
            }
        })
    }

    /// What is wrong with `arguments`, one line per problem (none: they fit).
    fn problems(&self, arguments: &Value) -> Vec<String> {
        if !arguments.is_object() {
            return vec![format!(
                "the arguments must be a JSON object, found {}",
                crate::diagnostic::json_kind(arguments)
            )];
        }
        self.validator
            .iter_errors(arguments)
            .take(8)
            .map(|e| {
                let path = e.instance_path().to_string();
                if path.is_empty() {
                    e.to_string()
                } else {
                    format!("{path}: {e}")
                }
            })
            .collect()
    }
}

/// A tool's name as OpenAI-style tool calling allows it: 1 to 64 letters,
/// digits, `_` and `-`.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` cannot be a tool's name: models call tools by names of 1 to 64 letters, digits, `_` and `-`"
        ))
    }
}

fn parameters_validator(parameters: &Value) -> Result<jsonschema::Validator, String> {
    if parameters.get("type").and_then(Value::as_str) != Some("object") {
        return Err(
            "`parameters` must be the JSON Schema of an object (`type: object`, with `properties`): a model calls a tool with named arguments"
                .to_owned(),
        );
    }
    jsonschema::validator_for(parameters)
        .map_err(|e| format!("`parameters` is not a valid JSON Schema: {e}"))
}

/// Why a tool call gave no result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ToolCallError {
    /// The agent has no tool by that name.
    #[error("there is no tool `{tool}`; the tools are: {}", .available.join(", "))]
    Unknown {
        /// The name called.
        tool: String,
        /// The tools the agent has.
        available: Vec<String>,
    },
    /// The arguments do not fit the tool's `parameters`.
    #[error("the arguments to `{tool}` do not fit its parameters: {}", .problems.join("; "))]
    InvalidArguments {
        /// The tool.
        tool: String,
        /// One line per problem.
        problems: Vec<String>,
    },
    /// The tool ran and failed (after its retries).
    #[error("`{tool}` failed: {error}")]
    Failed {
        /// The tool.
        tool: String,
        /// Its last attempt's error.
        error: AgentError,
    },
    /// The attempt already made `max` calls (`max_tool_calls`).
    #[error("the attempt already made {max} tool calls, its limit (max_tool_calls)")]
    TooMany {
        /// The limit.
        max: u32,
    },
}

impl ToolCallError {
    /// Whether the error is worth telling the model (it can call again
    /// differently) rather than ending the agent's attempt.
    pub fn is_for_the_model(&self) -> bool {
        !matches!(self, ToolCallError::TooMany { .. })
    }
}

/// The tools one agent may call, and how many calls an attempt may make.
#[derive(Debug)]
pub(crate) struct AgentTools {
    pub(crate) tools: Vec<Arc<Tool>>,
    pub(crate) max_calls: u32,
}

/// One agent's tool calls in one run: what its calls share, and their
/// records for its report. A `foreach` agent's instances share their
/// agent's (each call is named after the instance that made it).
pub(crate) struct ToolCalls {
    tools: Arc<AgentTools>,
    /// The run's start, which the records' times count from.
    start: Instant,
    max_depth: usize,
    state: Mutex<CallsState>,
    /// With `checkpoint: agent`: where each completed call and each turn
    /// of the conversation go on record, so a resumed run repeats neither.
    journal: Option<Journal>,
    /// The run's cache, for tool agents with `cache:`.
    cache: Option<Arc<dyn crate::cache::AgentCache>>,
}

/// Where a calling agent's progress is recorded while it runs: its record,
/// status `running`, with its tool calls and transcript so far.
pub(crate) struct Journal {
    pub(crate) recorder: Arc<super::ProcessRecorder>,
    /// The calling agent's definition hash (a resumed run replays only an
    /// unchanged agent's calls).
    pub(crate) definition: Arc<str>,
}

impl fmt::Debug for ToolCalls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolCalls").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct CallsState {
    /// Per caller (the agent, or an instance): the attempt its count is
    /// for, calls made in that attempt, calls made in all.
    callers: Vec<(Arc<str>, u32, u32, u32)>,
    records: Vec<ToolCallReport>,
    /// Per caller, its last recorded conversation.
    transcripts: Vec<(Arc<str>, Vec<Value>)>,
    /// Per caller, the conversation an earlier process recorded, until the
    /// caller takes it (see [`AgentInput::replayed_transcript`]).
    replayed: Vec<(Arc<str>, Vec<Value>)>,
    /// How many of `records` (the first ones) an earlier process made:
    /// only those are given again.
    restored: usize,
}

impl ToolCalls {
    pub(crate) fn new(
        tools: Arc<AgentTools>,
        start: Instant,
        max_depth: usize,
        journal: Option<Journal>,
        cache: Option<Arc<dyn crate::cache::AgentCache>>,
    ) -> Self {
        Self {
            tools,
            start,
            max_depth,
            state: Mutex::default(),
            journal,
            cache,
        }
    }

    /// Takes up where an earlier process left `caller` (its record, status
    /// `running`, from the store): its calls are on record again (one that
    /// was in flight is marked interrupted), numbering goes on after them,
    /// completed ones are given again when the caller asks for them by id
    /// ([`AgentInput::call_tool_with_id`]), and its conversation waits for
    /// the caller ([`AgentInput::replayed_transcript`]).
    pub(crate) fn resuming(self, caller: &Arc<str>, earlier: crate::report::AgentReport) -> Self {
        {
            let mut state = self.lock();
            let mut records = earlier.tool_calls;
            for record in &mut records {
                if record.status == AgentStatus::Running {
                    record.status = AgentStatus::Cancelled;
                    record.error = Some("interrupted: the process running it stopped".to_owned());
                }
            }
            let made = u32::try_from(records.len()).unwrap_or(u32::MAX);
            state.callers.push((caller.clone(), 0, 0, made));
            state.restored = records.len();
            state.records = records;
            if let Some(transcript) = earlier.transcript {
                state.replayed.push((caller.clone(), transcript.clone()));
                state.transcripts.push((caller.clone(), transcript));
            }
        }
        self
    }

    /// `caller`'s conversation as an earlier process recorded it, once.
    pub(crate) fn take_replayed(&self, caller: &str) -> Option<Vec<Value>> {
        let mut state = self.lock();
        let at = state.replayed.iter().position(|(c, _)| &**c == caller)?;
        Some(state.replayed.swap_remove(at).1)
    }

    /// Puts `caller`'s progress on record (with `checkpoint: agent`).
    fn journal(&self, caller: &Arc<str>) {
        let Some(journal) = &self.journal else {
            return;
        };
        let mut report = crate::report::AgentReport::new(AgentStatus::Running);
        {
            let state = self.lock();
            let prefix = format!("{caller}.tool#");
            report.tool_calls = state
                .records
                .iter()
                .filter(|r| r.name.starts_with(&prefix))
                .cloned()
                .collect();
            report.transcript = state
                .transcripts
                .iter()
                .find(|(c, _)| c == caller)
                .map(|(_, t)| t.clone());
        }
        report.attempts = 1;
        let record = crate::checkpoint::AgentRecord {
            agent: caller.clone(),
            report,
            writes: Vec::new(),
            definition: Some(journal.definition.clone()),
        };
        journal
            .recorder
            .checkpointer
            .agent_finished(&journal.recorder.run, &record);
    }

    /// The recorded result of `caller`'s completed call `call_id` of
    /// `tool` with these `arguments`, made before the run was resumed and
    /// not given again yet: counted like a call, and marked as given again.
    fn replay(
        &self,
        caller: &AgentInput,
        tool: &str,
        call_id: &str,
        arguments: &Value,
    ) -> Option<Result<Value, ToolCallError>> {
        let mut state = self.lock();
        let prefix = format!("{}.tool#", caller.agent);
        let restored = state.restored;
        let at = state.records[..restored].iter().position(|r| {
            r.call_id.as_deref() == Some(call_id)
                && r.tool == tool
                && r.status == AgentStatus::Completed
                && !r.resumed
                && r.arguments == *arguments
                && r.name.starts_with(&prefix)
        })?;
        let max = self.tools.max_calls;
        if let Some(entry) = state.callers.iter_mut().find(|(c, ..)| *c == caller.agent) {
            if entry.1 != caller.attempt {
                (entry.1, entry.2) = (caller.attempt, 0);
            }
            if entry.2 >= max {
                return Some(Err(ToolCallError::TooMany { max }));
            }
            entry.2 += 1;
        }
        let record = &mut state.records[at];
        record.resumed = true;
        Some(Ok(record.result.clone().unwrap_or(Value::Null)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CallsState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn tools(&self) -> &[Arc<Tool>] {
        &self.tools.tools
    }

    pub(crate) fn max_calls(&self) -> u32 {
        self.tools.max_calls
    }

    /// The calls made so far, in the order they started.
    pub(crate) fn records(&self) -> Vec<ToolCallReport> {
        self.lock().records.clone()
    }

    /// `caller`'s last recorded conversation.
    pub(crate) fn transcript(&self, caller: &str) -> Option<Vec<Value>> {
        let state = self.lock();
        let found = state.transcripts.iter().find(|(c, _)| &**c == caller);
        found.map(|(_, t)| t.clone())
    }

    pub(crate) fn set_transcript(&self, caller: &Arc<str>, messages: Vec<Value>) {
        {
            let mut state = self.lock();
            match state.transcripts.iter_mut().find(|(c, _)| c == caller) {
                Some((_, t)) => *t = messages,
                None => state.transcripts.push((caller.clone(), messages)),
            }
        }
        self.journal(caller);
    }

    fn ms_since_start(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.start).as_secs_f64() * 1e3
    }

    /// Counts a call against `caller`'s attempt and opens its record: the
    /// record's index and the step's name, or `TooMany`.
    fn open(
        &self,
        caller: &AgentInput,
        tool: &str,
        arguments: &Value,
        call_id: Option<&str>,
    ) -> Result<(usize, Arc<str>), ToolCallError> {
        let max = self.tools.max_calls;
        let mut state = self.lock();
        let entry = match state.callers.iter().position(|(c, ..)| *c == caller.agent) {
            Some(i) => &mut state.callers[i],
            None => {
                state
                    .callers
                    .push((caller.agent.clone(), caller.attempt, 0, 0));
                state.callers.last_mut().expect("just pushed")
            }
        };
        if entry.1 != caller.attempt {
            (entry.1, entry.2) = (caller.attempt, 0);
        }
        if entry.2 >= max {
            return Err(ToolCallError::TooMany { max });
        }
        entry.2 += 1;
        entry.3 += 1;
        let name: Arc<str> = Arc::from(format!("{}.tool#{}:{tool}", caller.agent, entry.3));
        state.records.push(ToolCallReport {
            name: name.to_string(),
            tool: tool.to_owned(),
            status: AgentStatus::Running,
            arguments: arguments.clone(),
            attempts: 0,
            start_ms: self.ms_since_start(Instant::now()),
            duration_ms: None,
            result: None,
            error: None,
            call_id: call_id.map(str::to_owned),
            resumed: false,
            cached: false,
        });
        Ok((state.records.len() - 1, name))
    }

    /// Notes that record `index`'s result came from the cache.
    fn mark_cached(&self, index: usize) {
        if let Some(record) = self.lock().records.get_mut(index) {
            record.cached = true;
        }
    }

    /// Closes record `index` with how the call ended.
    fn close(&self, index: usize, attempts: u32, began: Instant, outcome: Result<&Writes, String>) {
        let mut state = self.lock();
        let record = &mut state.records[index];
        record.attempts = attempts;
        record.duration_ms = Some(began.elapsed().as_secs_f64() * 1e3);
        match outcome {
            Ok(writes) => {
                record.status = AgentStatus::Completed;
                record.result = Some(Value::Object(writes.clone()));
            }
            Err(error) => {
                record.status = AgentStatus::Failed;
                record.error = Some(error);
            }
        }
    }

    /// Runs one call for `caller` (see [`AgentInput::call_tool`]).
    pub(crate) async fn call(
        &self,
        caller: &AgentInput,
        tool: &str,
        arguments: Value,
        call_id: Option<&str>,
    ) -> Result<Value, ToolCallError> {
        if let Some(replayed) = call_id.and_then(|id| self.replay(caller, tool, id, &arguments)) {
            return replayed;
        }
        let (index, step) = self.open(caller, tool, &arguments, call_id)?;
        let began = Instant::now();
        // Marks the record cancelled if the caller drops this call.
        let mut guard = OpenRecord {
            calls: self,
            index,
            began,
        };
        let Some(found) = self.tools.tools.iter().find(|t| &*t.name == tool) else {
            let error = ToolCallError::Unknown {
                tool: tool.to_owned(),
                available: self
                    .tools
                    .tools
                    .iter()
                    .map(|t| t.name.to_string())
                    .collect(),
            };
            guard.finish(0, Err(error.to_string()));
            return Err(error);
        };
        let problems = found.problems(&arguments);
        if !problems.is_empty() {
            let error = ToolCallError::InvalidArguments {
                tool: tool.to_owned(),
                problems,
            };
            guard.finish(0, Err(error.to_string()));
            return Err(error);
        }
        if let Some(events) = &caller.events {
            events.emit(EventKind::ToolCalled {
                agent: caller.agent.clone(),
                call: step.clone(),
                tool: found.name.clone(),
                arguments: arguments.clone(),
            });
        }
        let Value::Object(arguments) = arguments else {
            unreachable!("checked to be an object above")
        };
        let input = AgentInput {
            run_id: caller.run_id.clone(),
            agent: step.clone(),
            attempt: 1,
            reads: Reads(
                arguments
                    .into_iter()
                    .map(|(k, v)| (Arc::from(k), Arc::new(v)))
                    .collect(),
            ),
            events: caller.events.clone(),
            usage: caller.usage.clone(),
            logs: caller.logs.clone(),
            processes: caller.processes.clone(),
            tools: None,
        };
        let (outcome, attempts) = match self.cached(found, &input).await {
            Some(stored) => {
                self.mark_cached(index);
                (Ok(stored), 0)
            }
            None => {
                let reads = input.reads.0.clone();
                let (outcome, attempts) = self.attempts(found, input).await;
                if let Ok(writes) = &outcome {
                    self.keep(found, &reads, writes);
                }
                (outcome, attempts)
            }
        };
        let recorded = outcome.as_ref().map_err(ToString::to_string);
        guard.finish(attempts, recorded.clone());
        if recorded.is_ok() {
            self.journal(&caller.agent);
        }
        if let Some(events) = &caller.events {
            events.emit(EventKind::ToolFinished {
                agent: caller.agent.clone(),
                call: step,
                tool: found.name.clone(),
                duration_ms: began.elapsed().as_secs_f64() * 1e3,
                error: recorded.err(),
            });
        }
        match outcome {
            Ok(writes) => Ok(Value::Object(writes)),
            Err(error) => Err(ToolCallError::Failed {
                tool: tool.to_owned(),
                error,
            }),
        }
    }

    /// A cached tool's stored result for these arguments, if the run has a
    /// cache and one is there (checked like any result); `None` runs it.
    async fn cached(&self, tool: &Tool, input: &AgentInput) -> Option<Writes> {
        let ((_, definition), cache) = tool.cache.as_ref().zip(self.cache.as_ref())?;
        let key: Arc<str> = Arc::from(crate::cache::cache_key(definition, None, &input.reads.0));
        let lookup =
            tokio::time::timeout(crate::cache::CACHE_LOOKUP_TIMEOUT, cache.lookup(key)).await;
        let stored = match lookup {
            Ok(Ok(Some(stored))) => stored,
            Ok(Ok(None)) => {
                crate::telemetry::cache_lookup(false);
                return None;
            }
            Ok(Err(error)) => {
                tracing::warn!(tool = %tool.name, %error, "the cache lookup failed; calling the tool");
                return None;
            }
            Err(_) => {
                tracing::warn!(tool = %tool.name, "the cache did not answer in time; calling the tool");
                return None;
            }
        };
        match self.check_result(tool, stored) {
            Ok(writes) => {
                crate::telemetry::cache_lookup(true);
                Some(writes)
            }
            Err(error) => {
                tracing::warn!(tool = %tool.name, %error, "a cached result does not fit the tool; calling it");
                None
            }
        }
    }

    /// Keeps a cached tool's result for its arguments.
    fn keep(&self, tool: &Tool, reads: &[(Arc<str>, Arc<Value>)], writes: &Writes) {
        let (Some((policy, definition)), Some(cache)) = (&tool.cache, &self.cache) else {
            return;
        };
        cache.store(crate::cache::CacheEntry {
            key: Arc::from(crate::cache::cache_key(definition, None, reads)),
            agent: tool.name.clone(),
            writes: writes
                .iter()
                .map(|(k, v)| (Arc::from(k.as_str()), Arc::new(v.clone())))
                .collect(),
            ttl: policy.ttl,
        });
    }

    /// The tool's attempts: its timeout on each, its retries with backoff,
    /// its result checked.
    async fn attempts(
        &self,
        tool: &Tool,
        mut input: AgentInput,
    ) -> (Result<Writes, AgentError>, u32) {
        let policy = tool.policy;
        let mut attempt = 1;
        loop {
            input.attempt = attempt;
            let outcome = super::call_once(&*tool.runner, &input, policy.timeout)
                .await
                .and_then(|out| self.check_result(tool, out));
            match outcome {
                Err(error) if attempt <= policy.retries && error.is_retryable() => {
                    let delay = Backoff::new(policy.backoff, MAX_RETRY_DELAY)
                        .with_jitter()
                        .delay(attempt);
                    if let Some(events) = &input.events {
                        events.emit(EventKind::AgentRetrying {
                            agent: input.agent.clone(),
                            attempt,
                            error: error.to_string(),
                            delay_ms: delay.as_secs_f64() * 1e3,
                        });
                    }
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                outcome => return (outcome, attempt),
            }
        }
    }

    /// A tool agent's result has exactly its declared writes; any result
    /// is at most the run's `max_value_depth` deep.
    fn check_result(&self, tool: &Tool, out: Writes) -> Result<Writes, AgentError> {
        if let Some(declared) = &tool.results {
            let undeclared: Vec<&str> = out
                .keys()
                .filter(|k| !declared.contains(k))
                .map(String::as_str)
                .collect();
            if !undeclared.is_empty() {
                return Err(AgentError::Output(format!(
                    "wrote undeclared field(s) {}; it declares writes: [{}]",
                    undeclared.join(", "),
                    declared.join(", ")
                )));
            }
            let missing: Vec<&str> = declared
                .iter()
                .filter(|d| !out.contains_key(d.as_str()))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(AgentError::Output(format!(
                    "did not write declared field(s) {}",
                    missing.join(", ")
                )));
            }
        }
        let result = Value::Object(out);
        if crate::depth::exceeds(&result, self.max_depth) {
            return Err(AgentError::Output(format!(
                "its result is nested more than {} levels deep, the limit (max_value_depth)",
                self.max_depth
            )));
        }
        let Value::Object(out) = result else {
            unreachable!()
        };
        Ok(out)
    }
}

/// A call's record while it runs: dropped before [`OpenRecord::finish`]
/// (the caller dropped the call: its timeout, a cancelled run), the record
/// says cancelled.
struct OpenRecord<'a> {
    calls: &'a ToolCalls,
    index: usize,
    began: Instant,
}

impl OpenRecord<'_> {
    fn finish(&mut self, attempts: u32, outcome: Result<&Writes, String>) {
        self.calls.close(self.index, attempts, self.began, outcome);
        self.index = usize::MAX;
    }
}

impl Drop for OpenRecord<'_> {
    fn drop(&mut self) {
        if self.index == usize::MAX {
            return;
        }
        let mut state = self.calls.lock();
        if let Some(record) = state.records.get_mut(self.index) {
            record.status = AgentStatus::Cancelled;
            record.duration_ms = Some(self.began.elapsed().as_secs_f64() * 1e3);
            record.error = Some("cancelled: the calling agent stopped waiting".to_owned());
        }
    }
}

/// The arguments of a call as the model sent them (a JSON string, in
/// OpenAI-style tool calling): the object, or why it is not one.
///
/// ```
/// use braid_core::tool::parse_arguments;
/// assert_eq!(parse_arguments(r#"{"q": "cost"}"#).unwrap()["q"], "cost");
/// assert_eq!(parse_arguments("").unwrap(), serde_json::json!({}));
/// assert!(parse_arguments("{oops").unwrap_err().contains("not JSON"));
/// ```
pub fn parse_arguments(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_str(text).map_err(|e| format!("the arguments are not JSON ({e})"))
}
