//! The `llm` agent: one chat completion from any OpenAI-compatible
//! endpoint (OpenAI, vLLM, Ollama, llama.cpp's server).
//!
//! ```yaml
//!   summarise:
//!     kind: llm
//!     endpoint: http://127.0.0.1:8080/v1    # or BRAID_LLM_URL; /chat/completions is added
//!     model: qwen2.5-7b-instruct
//!     api_key_env: OPENAI_API_KEY           # optional: the variable holding the key
//!     system: You are a terse analyst.
//!     prompt: "Summarise for {{ audience }}: {{ findings | tojson }}"   # minijinja, over the reads
//!     output: json                          # or text (the default)
//!     schema: { type: object, required: [summary], properties: { summary: { type: string } } }
//!     temperature: 0.2
//!     max_tokens: 400
//!     requests_per_minute: 60               # shared by every agent calling this endpoint
//!     max_response_bytes: 16777216          # the default (16 MiB); a longer answer fails the call
//!     reads: [findings, audience]
//!     writes: [summary]
//! ```
//!
//! With `output: text` the answer goes to the one declared write. With
//! `output: json` the answer must be JSON: with one declared write it goes
//! there whole; with several it must be an object holding each. A `schema`
//! is checked, and on a mismatch the model is asked once more, shown what
//! was wrong; a second miss fails the agent with the model's answer in the
//! error. Token usage is recorded per agent and per run. When the run asked
//! for `full` events the answer streams into the event stream as it comes,
//! one `partial` log event per delta (the new text only, never the answer
//! so far).
//!
//! `requests_per_minute` is one limit per endpoint, whatever the model or
//! agent: when agents name different rates for the same endpoint, the
//! lowest applies to all of them.
//!
//! # Tools
//!
//! With `tools:` (see [`braid_core::tool`]) the model is offered the
//! tools' schemas as OpenAI-style `tools`, and the agent runs the
//! tool-calling loop: each turn's `tool_calls` run concurrently through
//! [`AgentInput::call_tool`], each a step of the run; their results (the
//! tool's writes as a JSON object) or errors (`error: ...`: arguments that
//! are not JSON or do not fit, an unknown tool, a tool that failed) go back
//! as `tool` messages under their `tool_call_id`; the loop ends with an
//! answer without calls, which becomes the agent's writes as above. When
//! the model calls past `max_tool_calls`, the attempt fails with the
//! conversation so far; the whole conversation is recorded with
//! [`AgentInput::record_transcript`] after every turn, so the report has it
//! whatever happened. Streamed turns (`full` events) assemble tool calls
//! from their pieces.
//!
//! ```yaml
//!   researcher:
//!     kind: llm
//!     model: qwen2.5-7b-instruct
//!     prompt: "Answer: {{ question }}"
//!     tools: [{ agent: search }]      # a tool agent of the pipeline (`tool:`)
//!     max_tool_calls: 8               # per attempt (the default)
//!     reads: [question]
//!     writes: [answer]
//! ```

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};

use braid_core::AgentConfig;
use braid_core::agent::{Agent, AgentError, AgentInput, Writes};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::{Value, json};

use crate::http::{self, expand_env};

/// How the answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

/// See the [module docs](self).
pub struct LlmAgent {
    url: reqwest::Url,
    headers: HeaderMap,
    model: String,
    templates: minijinja::Environment<'static>,
    has_system: bool,
    output: Output,
    schema: Option<Arc<jsonschema::Validator>>,
    temperature: Option<f64>,
    max_tokens: Option<u64>,
    writes: Vec<String>,
    limiter: Option<Arc<EndpointLimiter>>,
    max_response_bytes: u64,
    /// It has `tools:` (its tools are the run's: [`AgentInput::tools`]).
    calls_tools: bool,
}

impl std::fmt::Debug for LlmAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmAgent")
            .field("url", &self.url.as_str())
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

const KEYS: &[&str] = &[
    "endpoint",
    "model",
    "api_key_env",
    "system",
    "prompt",
    "output",
    "schema",
    "temperature",
    "max_tokens",
    "requests_per_minute",
    "max_response_bytes",
];

/// The rate limit of one endpoint: the lowest `requests_per_minute` any
/// agent calling it declared.
struct EndpointLimiter(Mutex<(NonZeroU32, Arc<DefaultDirectRateLimiter>)>);

impl EndpointLimiter {
    /// Waits for the endpoint's next free request.
    async fn until_ready(&self) {
        let limiter = self.0.lock().unwrap_or_else(|e| e.into_inner()).1.clone();
        limiter.until_ready().await;
    }
}

/// The one rate limiter of `endpoint`, shared by every agent that calls
/// it, lowered to `per_minute` if that is lower than what it allowed.
fn limiter(endpoint: &str, per_minute: NonZeroU32) -> Arc<EndpointLimiter> {
    static LIMITERS: OnceLock<Mutex<HashMap<String, Arc<EndpointLimiter>>>> = OnceLock::new();
    let direct = || Arc::new(RateLimiter::direct(Quota::per_minute(per_minute)));
    let endpoint = LIMITERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(endpoint.to_owned())
        .or_insert_with(|| Arc::new(EndpointLimiter(Mutex::new((per_minute, direct())))))
        .clone();
    {
        let mut current = endpoint.0.lock().unwrap_or_else(|e| e.into_inner());
        if per_minute < current.0 {
            *current = (per_minute, direct());
        }
    }
    endpoint
}

/// The `llm` kind's keys for the pipeline file's JSON Schema (written by
/// hand: [`build`] reads its settings from a map, with no struct to derive
/// from; a test checks the keys against the ones it takes).
pub fn schema() -> braid_core::schema::KindSchema {
    use serde_json::json;
    let string = json!({"type": "string"});
    braid_core::schema::KindSchema::new(
        "llm",
        "One chat completion from an OpenAI-compatible endpoint; the answer is written as text or JSON.",
    )
    .key(
        "endpoint",
        "The API's base URL, http(s)://HOST/v1 (`/chat/completions` is added; default: BRAID_LLM_URL from the environment).",
        string.clone(),
    )
    .required_key("model", "The model's name, as the endpoint knows it.", string.clone())
    .key(
        "api_key_env",
        "The environment variable holding the API key (sent as a bearer token).",
        string.clone(),
    )
    .key(
        "system",
        "The system message, a minijinja template over the agent's reads.",
        string.clone(),
    )
    .required_key(
        "prompt",
        "The user message, a minijinja template over the agent's reads (e.g. `{{ findings | tojson }}`).",
        string,
    )
    .key(
        "output",
        "`text` (default): the answer goes to the one write; `json`: the answer is parsed as JSON (an object holding each write when there are several).",
        json!({"enum": ["text", "json"]}),
    )
    .key(
        "schema",
        "With `output: json`: the JSON Schema the answer must match; on a mismatch the model is asked once more.",
        json!({"type": "object"}),
    )
    .key("temperature", "The sampling temperature.", json!({"type": "number"}))
    .key(
        "max_tokens",
        "The most tokens the answer may have.",
        json!({"type": "integer", "minimum": 0}),
    )
    .key(
        "requests_per_minute",
        "A rate limit shared by every agent calling this endpoint (the lowest one given applies).",
        json!({"type": "integer", "minimum": 1}),
    )
    .key(
        "max_response_bytes",
        "The longest answer read, in bytes (default 16 MiB); a longer one fails the call.",
        json!({"type": "integer", "minimum": 1}),
    )
}

/// Builds an `llm` agent from its settings (the kind's factory).
pub fn build(config: &AgentConfig<'_>) -> Result<Arc<dyn Agent>, String> {
    let settings = config.settings;
    if let Some(unknown) = settings.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown key `{unknown}` for an `llm` agent; expected one of: {}",
            KEYS.join(", ")
        ));
    }
    let text = |key: &str| settings.get(key).and_then(Value::as_str).map(str::to_owned);
    let endpoint = match text("endpoint") {
        Some(e) => expand_env(&e, "`endpoint`")?,
        None => std::env::var("BRAID_LLM_URL").map_err(|_| {
            "an `llm` agent needs `endpoint: http(s)://HOST/v1` (or BRAID_LLM_URL in the environment)"
                .to_owned()
        })?,
    };
    let base = endpoint.trim_end_matches('/');
    let url = if base.ends_with("/chat/completions") {
        base.to_owned()
    } else {
        format!("{base}/chat/completions")
    };
    let url = reqwest::Url::parse(&url).map_err(|e| format!("`endpoint`: {e}"))?;
    let model = text("model").ok_or("an `llm` agent needs `model: NAME`")?;
    let mut headers = HeaderMap::new();
    if let Some(var) = text("api_key_env") {
        let key = std::env::var(&var).map_err(|_| {
            format!("`api_key_env: {var}`, but {var} is not set in the environment")
        })?;
        let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|e| format!("the key in {var}: {e}"))?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    let prompt = text("prompt").ok_or("an `llm` agent needs `prompt: TEMPLATE`")?;
    let mut templates = minijinja::Environment::new();
    templates
        .add_template_owned("prompt", prompt)
        .map_err(|e| format!("`prompt` is not a valid template: {e}"))?;
    let has_system = match text("system") {
        Some(system) => {
            templates
                .add_template_owned("system", system)
                .map_err(|e| format!("`system` is not a valid template: {e}"))?;
            true
        }
        None => false,
    };
    let output = match text("output").as_deref() {
        None | Some("text") => Output::Text,
        Some("json") => Output::Json,
        Some(other) => return Err(format!("`output` must be `text` or `json`, not `{other}`")),
    };
    let writes = config.writes.clone();
    if output == Output::Text && writes.len() != 1 {
        return Err(format!(
            "with `output: text` an `llm` agent writes exactly one field; it declares {}",
            writes.len()
        ));
    }
    let schema = match settings.get("schema") {
        None => None,
        Some(_) if output == Output::Text => {
            return Err("`schema` needs `output: json`".to_owned());
        }
        Some(schema) => Some(Arc::new(
            jsonschema::validator_for(schema).map_err(|e| format!("`schema`: {e}"))?,
        )),
    };
    let number = |key: &str| settings.get(key).and_then(Value::as_f64);
    let limiter = match settings.get("requests_per_minute") {
        None => None,
        Some(v) => {
            let n = v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .and_then(NonZeroU32::new)
                .ok_or("`requests_per_minute` must be a whole number of at least 1")?;
            Some(limiter(url.as_str(), n))
        }
    };
    Ok(Arc::new(LlmAgent {
        url,
        headers,
        model,
        templates,
        has_system,
        output,
        schema,
        temperature: number("temperature"),
        max_tokens: settings.get("max_tokens").and_then(Value::as_u64),
        writes,
        limiter,
        max_response_bytes: http::max_response_bytes(settings)?,
        calls_tools: config.calls_tools,
    }))
}

impl LlmAgent {
    fn render(&self, name: &str, input: &AgentInput) -> Result<String, AgentError> {
        let context: serde_json::Map<String, Value> = input
            .reads
            .iter()
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect();
        self.templates
            .get_template(name)
            .and_then(|t| t.render(Value::Object(context)))
            .map_err(|e| AgentError::Other(format!("rendering `{name}`: {e}")))
    }

    /// One chat completion: the answer's text.
    async fn complete(&self, input: &AgentInput, messages: &[Value]) -> Result<String, AgentError> {
        let message = self.turn(input, messages).await?;
        message["content"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                AgentError::Output(format!(
                    "{} answered without choices[0].message.content: {}",
                    self.url,
                    message.to_string().chars().take(300).collect::<String>()
                ))
            })
    }

    /// One chat completion (offering the agent's tools, if it has any):
    /// the assistant's message, `{"role", "content", "tool_calls"?}`.
    async fn turn(&self, input: &AgentInput, messages: &[Value]) -> Result<Value, AgentError> {
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
        let stream = input.wants_progress();
        let mut body = json!({"model": self.model, "messages": messages});
        if let Some(t) = self.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(m) = self.max_tokens {
            body["max_tokens"] = json!(m);
        }
        if self.output == Output::Json {
            body["response_format"] = json!({"type": "json_object"});
        }
        if self.calls_tools {
            let tools: Vec<Value> = input.tools().iter().map(|t| t.openai_schema()).collect();
            body["tools"] = Value::Array(tools);
        }
        if stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        let body = serde_json::to_vec(&body)
            .map_err(|e| AgentError::Other(format!("cannot encode the request: {e}")))?;
        if stream {
            return self.stream(input, body).await;
        }
        let text = http::post(
            &self.url,
            &self.headers,
            body,
            2,
            None,
            self.max_response_bytes,
        )
        .await?;
        let mut answer: Value = serde_json::from_str(&text).map_err(|e| {
            AgentError::Output(format!(
                "{} answered with something that is not JSON ({e})",
                self.url
            ))
        })?;
        if let Some(usage) = answer.get("usage") {
            input.record_tokens(
                usage["prompt_tokens"].as_u64().unwrap_or(0),
                usage["completion_tokens"].as_u64().unwrap_or(0),
            );
        }
        match answer["choices"][0].get_mut("message").map(Value::take) {
            Some(message @ Value::Object(_)) => Ok(message),
            _ => Err(AgentError::Output(format!(
                "{} answered without choices[0].message: {}",
                self.url,
                answer.to_string().chars().take(300).collect::<String>()
            ))),
        }
    }

    /// Reads a streamed answer (server-sent `data:` lines) as it arrives,
    /// reporting each new piece of text as a partial line of the agent's
    /// log, and assembling tool calls from their pieces.
    async fn stream(&self, input: &AgentInput, body: Vec<u8>) -> Result<Value, AgentError> {
        let mut answer = String::new();
        let mut calls: Vec<Value> = Vec::new();
        let mut done = false;
        let max_bytes = self.max_response_bytes;
        http::post_lines(&self.url, &self.headers, body, 2, max_bytes, |line| {
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                return;
            };
            if done || data == "[DONE]" {
                done = true;
                return;
            }
            let Ok(chunk) = serde_json::from_str::<Value>(data) else {
                return;
            };
            let delta = &chunk["choices"][0]["delta"];
            if let Some(text) = delta["content"].as_str() {
                answer.push_str(text);
                // A piece the next one continues: folded under load, the
                // pieces join back into the answer exactly.
                input.log_partial(text);
            }
            for piece in delta["tool_calls"].as_array().into_iter().flatten() {
                add_call_piece(&mut calls, piece);
            }
            if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
                input.record_tokens(
                    usage["prompt_tokens"].as_u64().unwrap_or(0),
                    usage["completion_tokens"].as_u64().unwrap_or(0),
                );
            }
        })
        .await?;
        let mut message = json!({"role": "assistant", "content": answer});
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        Ok(message)
    }

    /// The tool-calling loop: the model is offered the tools; the calls of
    /// each turn run concurrently (each a step of the run) and their
    /// results go back as `tool` messages, until it answers without calls.
    async fn call_with_tools(
        &self,
        input: &AgentInput,
        mut messages: Vec<Value>,
    ) -> Result<Writes, AgentError> {
        // A resumed run (`checkpoint: agent`) continues the conversation it
        // had recorded: the model is not asked again for turns it answered,
        // and calls that completed are given their recorded results.
        if let Some(recorded) = input.replayed_transcript() {
            messages = recorded;
        }
        let mut asked_again = false;
        loop {
            if !messages.last().is_some_and(|m| m["role"] == "assistant") {
                let message = self.turn(input, &messages).await?;
                messages.push(message);
                input.record_transcript(messages.clone());
            }
            let calls: Vec<Value> = messages.last().expect("an assistant message")["tool_calls"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if calls.is_empty() {
                let answer = messages
                    .last()
                    .and_then(|m| m["content"].as_str())
                    .unwrap_or("")
                    .to_owned();
                match self.writes_of(&answer) {
                    Ok(writes) => return Ok(writes),
                    Err(problem) if !asked_again => {
                        asked_again = true;
                        messages.push(json!({
                            "role": "user",
                            "content": format!("{problem}. Answer again with only the JSON, nothing else."),
                        }));
                        continue;
                    }
                    Err(problem) => {
                        return Err(AgentError::Output(format!(
                            "{problem}, after one re-ask; the model answered: {}",
                            answer.chars().take(500).collect::<String>()
                        )));
                    }
                }
            }
            let results =
                futures_util::future::join_all(calls.iter().map(|call| run_call(input, call)))
                    .await;
            let mut over_limit = None;
            for (call, result) in calls.iter().zip(results) {
                let content = match result {
                    Ok(value) => value.to_string(),
                    Err(CallFailure::ToModel(error)) => format!("error: {error}"),
                    Err(CallFailure::Final(error)) => {
                        over_limit = Some(error);
                        continue;
                    }
                };
                messages.push(json!({
                    "role": "tool",
                    "tool_call_id": call["id"],
                    "content": content,
                }));
            }
            input.record_transcript(messages.clone());
            if let Some(error) = over_limit {
                return Err(AgentError::Output(format!(
                    "{error}; the conversation so far: {}",
                    transcript_excerpt(&messages)
                )));
            }
        }
    }

    /// The answer as the agent's writes, or what is wrong with it.
    fn writes_of(&self, answer: &str) -> Result<Writes, String> {
        if self.output == Output::Text {
            let mut out = Writes::new();
            out.insert(self.writes[0].clone(), json!(answer));
            return Ok(out);
        }
        let value: Value = serde_json::from_str(strip_fences(answer))
            .map_err(|e| format!("the answer is not JSON ({e})"))?;
        if let Some(schema) = &self.schema {
            let problems: Vec<String> = schema
                .iter_errors(&value)
                .map(|e| format!("{}: {e}", e.instance_path()))
                .collect();
            if !problems.is_empty() {
                return Err(format!(
                    "the answer does not match the schema: {}",
                    problems.join("; ")
                ));
            }
        }
        match (self.writes.len(), value) {
            (1, value) => {
                let mut out = Writes::new();
                out.insert(self.writes[0].clone(), value);
                Ok(out)
            }
            (_, Value::Object(map)) => Ok(map),
            (n, _) => Err(format!(
                "with {n} writes the answer must be a JSON object holding each"
            )),
        }
    }
}

/// Why a tool call gave the model no result.
enum CallFailure {
    /// Told to the model, which may call again differently.
    ToModel(String),
    /// Ends the attempt (`max_tool_calls` was reached).
    Final(String),
}

/// Runs one of the model's tool calls through the run (see
/// [`AgentInput::call_tool`]).
async fn run_call(input: &AgentInput, call: &Value) -> Result<Value, CallFailure> {
    let name = call["function"]["name"].as_str().unwrap_or("");
    // OpenAI sends the arguments as a JSON string; some servers send the
    // object itself.
    let (arguments, unreadable) = match &call["function"]["arguments"] {
        Value::String(text) => match braid_core::tool::parse_arguments(text) {
            Ok(value) => (value, None),
            // Still called, so the bad call is counted and on record.
            Err(why) => (Value::String(text.clone()), Some(why)),
        },
        Value::Null => (json!({}), None),
        other => (other.clone(), None),
    };
    let called = match call["id"].as_str().filter(|id| !id.is_empty()) {
        Some(id) => input.call_tool_with_id(id, name, arguments).await,
        None => input.call_tool(name, arguments).await,
    };
    match called {
        Ok(result) => Ok(result),
        Err(error) if error.is_for_the_model() => Err(CallFailure::ToModel(
            unreadable.map_or_else(|| error.to_string(), |why| format!("`{name}`: {why}")),
        )),
        Err(error) => Err(CallFailure::Final(error.to_string())),
    }
}

/// Adds one streamed piece of a tool call (`delta.tool_calls[]`) to the
/// calls assembled so far: pieces of one call share its `index`; its name
/// and arguments come in parts.
fn add_call_piece(calls: &mut Vec<Value>, piece: &Value) {
    let index = piece["index"].as_u64().unwrap_or(calls.len() as u64) as usize;
    // A server cannot make us hold more calls than it sent pieces.
    if index > calls.len() {
        return;
    }
    if index == calls.len() {
        calls
            .push(json!({"id": "", "type": "function", "function": {"name": "", "arguments": ""}}));
    }
    let call = &mut calls[index];
    if let Some(id) = piece["id"].as_str() {
        call["id"] = json!(id);
    }
    for part in ["name", "arguments"] {
        if let Some(text) = piece["function"][part].as_str()
            && let Some(Value::String(so_far)) = call["function"].get_mut(part)
        {
            // Appended in place: a long answer in many small pieces costs
            // its length, not its length squared.
            so_far.push_str(text);
        }
    }
}

/// The conversation, cut for an error message.
fn transcript_excerpt(messages: &[Value]) -> String {
    const MAX: usize = 4_000;
    let text = Value::Array(messages.to_vec()).to_string();
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… ({} bytes in all; the whole of it is in the agent's report)",
        &text[..end],
        text.len()
    )
}

/// Models often wrap JSON in a Markdown code fence.
fn strip_fences(text: &str) -> &str {
    let t = text.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .unwrap_or(t);
    t.strip_suffix("```").unwrap_or(t).trim()
}

#[async_trait::async_trait]
impl Agent for LlmAgent {
    async fn call(&self, input: &AgentInput) -> Result<Writes, AgentError> {
        let mut messages = Vec::new();
        if self.has_system {
            messages.push(json!({"role": "system", "content": self.render("system", input)?}));
        }
        messages.push(json!({"role": "user", "content": self.render("prompt", input)?}));
        if self.calls_tools {
            return self.call_with_tools(input, messages).await;
        }
        let answer = self.complete(input, &messages).await?;
        let problem = match self.writes_of(&answer) {
            Ok(writes) => return Ok(writes),
            Err(problem) => problem,
        };
        // One re-ask, showing the model what was wrong.
        messages.push(json!({"role": "assistant", "content": answer}));
        messages.push(json!({
            "role": "user",
            "content": format!("{problem}. Answer again with only the JSON, nothing else."),
        }));
        let again = self.complete(input, &messages).await?;
        self.writes_of(&again).map_err(|problem| {
            AgentError::Output(format!(
                "{problem}, after one re-ask; the model answered: {}",
                again.chars().take(500).collect::<String>()
            ))
        })
    }
}

#[cfg(test)]
mod schema_tests {
    #[test]
    fn the_schema_has_the_keys_the_agent_takes() {
        let schema = super::schema();
        assert_eq!(schema.key_names().collect::<Vec<_>>(), super::KEYS);
    }
}
