//! The `http` agent: POSTs the agent's reads as JSON to a service and
//! takes a JSON object of writes back.
//!
//! Settings: `url` (required), `headers` (values may use `${VAR}` from the
//! environment; a missing variable is a load-time error, so secrets never
//! live in pipeline files), `http_retries` (default 2: connect errors, 429
//! and 5xx are tried again with backoff, honouring `Retry-After` in
//! seconds or as an HTTP date), `request_timeout` (default: none beyond the
//! agent's own `timeout`) and `max_response_bytes` (default 16 MiB: a
//! longer answer fails the attempt, naming the limit).

use std::time::Duration;

use braid_core::AgentConfig;
use braid_core::agent::{Agent, AgentError, AgentInput, Reads, Writes};
use braid_core::backoff::Backoff;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde::Serialize;
use serde_json::Value;

/// Longest wait a `Retry-After` may ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Most bytes of an answer read unless the agent sets `max_response_bytes`.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// Most bytes of an error answer read, for the excerpt in the error.
const MAX_ERROR_BODY_BYTES: u64 = 64 * 1024;

/// See the [module docs](self).
#[derive(Debug)]
pub struct HttpAgent {
    url: reqwest::Url,
    headers: HeaderMap,
    retries: u32,
    request_timeout: Option<Duration>,
    max_response_bytes: u64,
}

pub use braid_core::kinds::expand_env;

/// The `http` kind's own keys.
const KEYS: &[&str] = &[
    "url",
    "headers",
    "http_retries",
    "request_timeout",
    "max_response_bytes",
];

/// The `http` kind's keys for the pipeline file's JSON Schema (written by
/// hand: [`build`] reads its settings from a map, with no struct to derive
/// from; a test checks the keys against the ones it takes).
pub fn schema() -> braid_core::schema::KindSchema {
    use serde_json::json;
    braid_core::schema::KindSchema::new(
        "http",
        "POSTs its reads as a JSON object to `url` and writes the JSON object it gets back.",
    )
    .required_key(
        "url",
        "The service, http(s)://…; `${VAR}` is replaced with the environment variable VAR.",
        json!({"type": "string"}),
    )
    .key(
        "headers",
        "Request headers by name; values may use `${VAR}` from the environment, so secrets stay out of the file.",
        json!({"type": "object", "additionalProperties": {"type": "string"}}),
    )
    .key(
        "http_retries",
        "How many times a connect error, 429 or 5xx is tried again, with backoff (default 2).",
        json!({"type": "integer", "minimum": 0}),
    )
    .key(
        "request_timeout",
        "How long one request may take, a duration like 10s (default: only the agent's `timeout`).",
        json!({"type": "string"}),
    )
    .key(
        "max_response_bytes",
        "The longest answer read, in bytes (default 16 MiB); a longer one fails the attempt.",
        json!({"type": "integer", "minimum": 1}),
    )
}

/// Builds an `http` agent from its settings (the kind's factory).
pub fn build(config: &AgentConfig<'_>) -> Result<std::sync::Arc<dyn Agent>, String> {
    if config.calls_tools {
        return Err(
            "an `http` agent cannot call tools; `tools` is for `llm` agents (an `http` agent can be a tool: give it `tool:`)"
                .to_owned(),
        );
    }
    if let Some(unknown) = config.settings.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown key `{unknown}` for an `http` agent; expected one of: {}",
            KEYS.join(", ")
        ));
    }
    let url = config
        .settings
        .get("url")
        .and_then(Value::as_str)
        .ok_or("an `http` agent needs `url: http(s)://…`")?;
    let url = expand_env(url, "`url`")?;
    let url = reqwest::Url::parse(&url).map_err(|e| format!("`url`: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "`url` must be http or https, not `{}`",
            url.scheme()
        ));
    }
    let mut headers = HeaderMap::new();
    if let Some(given) = config.settings.get("headers") {
        let given = given
            .as_object()
            .ok_or("`headers` must map header names to values")?;
        for (name, value) in given {
            let value = value
                .as_str()
                .ok_or_else(|| format!("header `{name}` must be a string"))?;
            let value = expand_env(value, &format!("header `{name}`"))?;
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("header name `{name}`: {e}"))?;
            let mut value =
                HeaderValue::from_str(&value).map_err(|e| format!("header `{name}`: {e}"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
    }
    let retries = match config.settings.get("http_retries") {
        None => 2,
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or("`http_retries` must be a whole number")?,
    };
    let request_timeout = match config.settings.get("request_timeout") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .and_then(|s| humantime::parse_duration(s).ok())
                .ok_or("`request_timeout` must be a duration like 10s")?,
        ),
    };
    Ok(std::sync::Arc::new(HttpAgent {
        url,
        headers,
        retries,
        request_timeout,
        max_response_bytes: max_response_bytes(config.settings)?,
    }))
}

/// The `max_response_bytes` setting: a whole number of at least 1, or
/// [`DEFAULT_MAX_RESPONSE_BYTES`].
pub(crate) fn max_response_bytes(settings: &serde_json::Map<String, Value>) -> Result<u64, String> {
    match settings.get("max_response_bytes") {
        None => Ok(DEFAULT_MAX_RESPONSE_BYTES),
        Some(v) => v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
            format!("`max_response_bytes` must be a whole number of bytes of at least 1, not {v}")
        }),
    }
}

#[derive(Serialize)]
struct Request<'a> {
    agent: &'a str,
    run_id: &'a str,
    attempt: u32,
    state: &'a Reads,
}

/// Whether a response status is worth another try.
fn transient(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// The delay before transport retry `n` (1-based): the server's
/// `Retry-After` if it gave one, else 200 ms doubling, with jitter.
fn delay(n: u32, retry_after: Option<Duration>) -> Duration {
    match retry_after {
        Some(asked) => asked.min(MAX_RETRY_AFTER),
        None => TRANSPORT_BACKOFF.delay(n),
    }
}

/// Transport retries without `Retry-After`: 200 ms doubling, at most
/// 256 × 200 ms, with jitter.
const TRANSPORT_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(200), Duration::from_millis(200 * 256)).with_jitter();

/// A `Retry-After` header: seconds, or an HTTP date (a date already past
/// means no wait).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn excerpt(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() > 300 {
        format!("{}…", text.chars().take(300).collect::<String>())
    } else {
        text.to_owned()
    }
}

#[async_trait::async_trait]
impl Agent for HttpAgent {
    async fn call(&self, input: &AgentInput) -> Result<Writes, AgentError> {
        let body = serde_json::to_vec(&Request {
            agent: &input.agent,
            run_id: &input.run_id,
            attempt: input.attempt,
            state: &input.reads,
        })
        .map_err(|e| AgentError::Other(format!("cannot encode the request: {e}")))?;
        let text = post(
            &self.url,
            &self.headers,
            body,
            self.retries,
            self.request_timeout,
            self.max_response_bytes,
        )
        .await?;
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(writes)) => Ok(writes),
            Ok(_) | Err(_) => Err(AgentError::Output(format!(
                "{} must answer with one JSON object of writes; got: {}",
                self.url,
                excerpt(&text)
            ))),
        }
    }
}

/// POSTs a JSON `body` through the shared client and returns the answer's
/// text. Connect errors, timeouts, 429 and 5xx are tried again up to
/// `retries` times, waiting as `Retry-After` asks or with backoff. An
/// answer longer than `max_bytes` fails the call.
pub(crate) async fn post(
    url: &reqwest::Url,
    headers: &HeaderMap,
    body: Vec<u8>,
    retries: u32,
    timeout: Option<Duration>,
    max_bytes: u64,
) -> Result<String, AgentError> {
    let (mut response, _slot) = send(url, headers, body, retries, timeout).await?;
    too_long(url, response.content_length(), max_bytes)?;
    let mut bytes = Vec::new();
    while let Some(chunk) = next_chunk(url, &mut response).await? {
        too_long(url, Some((bytes.len() + chunk.len()) as u64), max_bytes)?;
        bytes.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Fails when `len` (what the answer has sent or announced) is over `max_bytes`.
fn too_long(url: &reqwest::Url, len: Option<u64>, max_bytes: u64) -> Result<(), AgentError> {
    match len {
        Some(len) if len > max_bytes => Err(AgentError::Output(format!(
            "the answer from {url} is longer than max_response_bytes ({max_bytes} bytes); \
             raise `max_response_bytes` if that is expected"
        ))),
        _ => Ok(()),
    }
}

async fn next_chunk(
    url: &reqwest::Url,
    response: &mut reqwest::Response,
) -> Result<Option<impl std::ops::Deref<Target = [u8]> + use<>>, AgentError> {
    response
        .chunk()
        .await
        .map_err(|e| AgentError::Other(format!("reading the answer from {url}: {e}")))
}

/// The first `MAX_ERROR_BODY_BYTES` of an error answer, as text (the rest
/// is not read).
async fn error_text(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while (bytes.len() as u64) < MAX_ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    bytes.truncate(MAX_ERROR_BODY_BYTES as usize);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Like [`post`], but hands each line of the answer to `on_line` as it
/// arrives (for streamed answers); retries happen only before the first
/// byte. More than `max_bytes` in all fails the call.
pub(crate) async fn post_lines(
    url: &reqwest::Url,
    headers: &HeaderMap,
    body: Vec<u8>,
    retries: u32,
    max_bytes: u64,
    mut on_line: impl FnMut(&str),
) -> Result<(), AgentError> {
    let (mut response, _slot) = send(url, headers, body, retries, None).await?;
    too_long(url, response.content_length(), max_bytes)?;
    let mut pending: Vec<u8> = Vec::new();
    let mut received: u64 = 0;
    while let Some(chunk) = next_chunk(url, &mut response).await? {
        received += chunk.len() as u64;
        too_long(url, Some(received), max_bytes)?;
        // Only the new bytes are searched for line ends: a long line is
        // not scanned again with every chunk.
        let mut from = pending.len();
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending[from..].iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=from + end).collect();
            on_line(String::from_utf8_lossy(&line).trim_end());
            from = 0;
        }
    }
    if !pending.is_empty() {
        on_line(String::from_utf8_lossy(&pending).trim_end());
    }
    Ok(())
}

/// Sends until a success status (with retries), holding the host's slot
/// while the caller reads the body: the connection is busy until then.
async fn send(
    url: &reqwest::Url,
    headers: &HeaderMap,
    body: Vec<u8>,
    retries: u32,
    timeout: Option<Duration>,
) -> Result<(reqwest::Response, crate::HostSlot), AgentError> {
    let host = format!(
        "{}:{}",
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    );
    let mut tried = 0;
    loop {
        tried += 1;
        let mut request = crate::client()
            .post(url.clone())
            .headers(headers.clone())
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(limit) = timeout {
            request = request.timeout(limit);
        }
        request = with_trace_context(request);
        let slot = crate::host_slot(&host).await;
        let (wait, failure) = match request.send().await {
            Ok(response) if response.status().is_success() => return Ok((response, slot)),
            Ok(response) => {
                let status = response.status();
                let wait = retry_after(response.headers());
                let text = error_text(response).await;
                let failure =
                    AgentError::Other(format!("HTTP {status} from {url}: {}", excerpt(&text)));
                if !transient(status) {
                    return Err(failure);
                }
                (wait, failure)
            }
            Err(err) if err.is_connect() || err.is_timeout() => (
                None,
                AgentError::Other(format!("cannot reach {url}: {err}")),
            ),
            Err(err) => {
                return Err(AgentError::Other(format!("request to {url} failed: {err}")));
            }
        };
        drop(slot);
        if tried > retries {
            return Err(failure);
        }
        tokio::time::sleep(delay(tried, wait)).await;
    }
}

/// Adds the W3C trace context (`traceparent`, `tracestate`) of the current
/// span (the agent attempt's), so the service joins the run's trace. Only
/// with the `otlp` feature, and only once a propagator is installed (the
/// `braid` binary does when it exports traces); otherwise nothing is added.
#[cfg(feature = "otlp")]
fn with_trace_context(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    struct Headers(Vec<(String, String)>);
    impl opentelemetry::propagation::Injector for Headers {
        fn set(&mut self, key: &str, value: String) {
            self.0.push((key.to_owned(), value));
        }
    }
    let context = tracing::Span::current().context();
    let mut headers = Headers(Vec::new());
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut headers);
    });
    headers
        .0
        .into_iter()
        .fold(request, |request, (key, value)| request.header(key, value))
}

#[cfg(not(feature = "otlp"))]
fn with_trace_context(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_variables_are_expanded_or_named_when_missing() {
        // SAFETY-free: the test only reads variables it knows are set.
        let home = std::env::var("HOME").unwrap_or_default();
        assert_eq!(
            expand_env("at ${HOME}!", "x").unwrap(),
            format!("at {home}!")
        );
        let err =
            expand_env("Bearer ${BRAID_SURELY_UNSET_VAR}", "header `Authorization`").unwrap_err();
        assert!(
            err.contains("header `Authorization` uses ${BRAID_SURELY_UNSET_VAR}, which is not set"),
            "{err}"
        );
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        assert_eq!(
            delay(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(delay(1, Some(Duration::from_secs(600))), MAX_RETRY_AFTER);
        let d = delay(2, None);
        assert!(
            d >= Duration::from_millis(200) && d <= Duration::from_millis(400),
            "{d:?}"
        );
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
