//! The `mcp` tool source: the tools of Model Context Protocol servers, for
//! agents' `tools:`, through rmcp (the official Rust SDK).
//!
//! ```yaml
//!   researcher:
//!     kind: llm
//!     tools:
//!       - mcp: { command: [npx, -y, "@modelcontextprotocol/server-everything"], tools: [echo, add] }
//!       - mcp: { url: "http://127.0.0.1:9000/mcp", headers: { Authorization: "Bearer ${MCP_TOKEN}" }, prefix: wiki_ }
//! ```
//!
//! | key | what it is |
//! |---|---|
//! | `command` | A server over stdio: the program and its arguments (a path with `/` is relative to the pipeline's folder). |
//! | `env` | Variables set for it (`${VAR}` from braid's environment). |
//! | `url` | A server over streamable HTTP, instead of `command`. |
//! | `headers` | Headers sent to it (`${VAR}` expanded at load, so secrets stay out of files). |
//! | `tools` | Only these of its tools (each must be listed by the server). Default: all of them. |
//! | `prefix` | Put before each tool's name as the model sees it (`wiki_search`), to tell two servers' tools apart. |
//! | `timeout` | How long one call may take (default 60s); the call is a step of the run with this timeout. |
//! | `startup_timeout` | How long starting the server and listing its tools may take at load (default 60s: `npx -y` may download it first). |
//!
//! The server is started (or connected to) when the pipeline loads, and its
//! tools are listed then: a server that cannot be started, or that lists
//! no tool named under `tools`, is a load error with the reason (a stdio
//! server's last lines of stderr included). One server per command line
//! and environment (or URL and headers) serves every agent and pipeline of
//! the process. A server that dies is started again on the next call,
//! which is tried once more; a stdio server is killed when braid exits
//! (its stdin closes, and it is killed on drop). All MCP traffic runs on
//! one thread of its own, apart from the runs' runtimes; HTTP servers are
//! reached through the process's one pooled client ([`crate::client`]).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use braid_core::agent::{Agent, AgentError, AgentInput, Writes};
use braid_core::kinds::{ToolSourceConfig, ToolSourceFactory};
use braid_core::tool::Tool;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService, ServiceExt};
use serde_json::Value;

use crate::http::expand_env;

const KEYS: &[&str] = &[
    "command",
    "env",
    "url",
    "headers",
    "tools",
    "prefix",
    "timeout",
    "startup_timeout",
];

/// The default limit of one call.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The default limit of starting a server and listing its tools.
const DEFAULT_STARTUP: Duration = Duration::from_secs(60);

/// Lines of a stdio server's stderr kept for error messages.
const STDERR_LINES: usize = 20;

/// Longer lines of a stdio server's stderr are cut to this many bytes.
const STDERR_LINE_BYTES: usize = 500;

/// The longest `timeout` or `startup_timeout` taken.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// The most tools one server may list, and pages it may list them in: a
/// server that keeps listing is a load error, not a growing list.
const MAX_LISTED_TOOLS: usize = 10_000;
const MAX_TOOL_PAGES: usize = 100;

/// The `mcp` tool source, for [`braid_core::AgentKinds::tool_source`].
pub fn source() -> ToolSourceFactory {
    Arc::new(tools_of)
}

/// Where a server is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Endpoint {
    Stdio {
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        dir: PathBuf,
    },
    Http {
        url: String,
        headers: Vec<(String, String)>,
    },
}

impl Endpoint {
    /// How errors name it.
    fn label(&self) -> String {
        match self {
            Endpoint::Stdio { program, args, .. } => {
                let mut words = vec![program.display().to_string()];
                words.extend(args.iter().cloned());
                format!("MCP server `{}`", words.join(" "))
            }
            Endpoint::Http { url, .. } => format!("MCP server {url}"),
        }
    }
}

/// The tools one `- mcp: {...}` entry gives (the source's factory).
fn tools_of(config: &ToolSourceConfig<'_>) -> Result<Vec<Arc<Tool>>, String> {
    let Some(settings) = config.settings.as_object() else {
        return Err(
            "expected a mapping, e.g. `- mcp: { command: [npx, -y, \"@modelcontextprotocol/server-everything\"] }`"
                .to_owned(),
        );
    };
    if let Some(unknown) = settings.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown key `{unknown}`; expected one of: {}",
            KEYS.join(", ")
        ));
    }
    let endpoint = endpoint(settings, config.dir)?;
    if matches!(endpoint, Endpoint::Stdio { .. }) && !config.allow_processes {
        return Err(
            "this pipeline may not start programs, and an MCP server over stdio is one (a pipeline registered over a server's API needs its --allow-command-agents); reach the server over HTTP with `url:` instead"
                .to_owned(),
        );
    }
    let duration = |key: &str, default: Duration| -> Result<Duration, String> {
        match settings.get(key) {
            None => Ok(default),
            Some(Value::String(text)) => humantime::parse_duration(text.trim())
                .ok()
                .filter(|d| !d.is_zero() && *d <= MAX_TIMEOUT)
                .ok_or_else(|| {
                    format!("`{key}: {text}` is not a duration between 1ms and 1h, like 30s or 2m")
                }),
            Some(other) => Err(format!(
                "`{key}` must be a duration like 30s, found {other}"
            )),
        }
    };
    let timeout = duration("timeout", DEFAULT_TIMEOUT)?;
    let startup = duration("startup_timeout", DEFAULT_STARTUP)?;
    let prefix = match settings.get("prefix") {
        None => String::new(),
        Some(Value::String(p)) => p.clone(),
        Some(other) => return Err(format!("`prefix` must be text, found {other}")),
    };
    let wanted: Option<Vec<String>> = match settings.get("tools") {
        None => None,
        Some(Value::Array(names)) => Some(
            names
                .iter()
                .map(|n| {
                    n.as_str()
                        .map(str::to_owned)
                        .ok_or("`tools` lists tool names")
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(_) => {
            return Err("`tools` must be a list of tool names, e.g. `tools: [echo]`".to_owned());
        }
    };
    let server = server(endpoint);
    let listed = server.clone().start(startup)?;
    let mut tools = Vec::new();
    if let Some(wanted) = &wanted {
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|w| !listed.iter().any(|t| t.name == w.as_str()))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            let names: Vec<&str> = listed.iter().map(|t| &*t.name).collect();
            return Err(format!(
                "{} lists no tool {}; it has: {}",
                server.label,
                missing
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                names.join(", ")
            ));
        }
    }
    for tool in listed {
        let picked = wanted
            .as_ref()
            .is_none_or(|w| w.iter().any(|n| n == &*tool.name));
        if !picked {
            continue;
        }
        let name = format!("{prefix}{}", tool.name);
        let runner = Arc::new(McpTool {
            server: server.clone(),
            name: tool.name.to_string(),
        });
        let parameters = Value::Object((*tool.input_schema).clone());
        let description = tool.description.as_deref().unwrap_or("").to_owned();
        match Tool::new(&name, &description, parameters, runner) {
            Ok(made) => tools.push(Arc::new(made.with_timeout(Some(timeout)).with_kind("mcp"))),
            // A tool asked for by name must be usable; others the model
            // cannot call (a name OpenAI-style calling refuses) are left out.
            Err(e) if wanted.is_some() => {
                return Err(format!("{}: tool `{}`: {e}", server.label, tool.name));
            }
            Err(e) => tracing::warn!(server = %server.label, tool = %tool.name, "left out: {e}"),
        }
    }
    Ok(tools)
}

/// The endpoint `settings` describe.
fn endpoint(settings: &serde_json::Map<String, Value>, dir: &Path) -> Result<Endpoint, String> {
    let strings = |key: &str| -> Result<Vec<(String, String)>, String> {
        match settings.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| match v.as_str() {
                    Some(text) => Ok((k.clone(), expand_env(text, &format!("`{key}.{k}`"))?)),
                    None => Err(format!("`{key}.{k}` must be text")),
                })
                .collect(),
            Some(_) => Err(format!("`{key}` must map names to text")),
        }
    };
    match (settings.get("command"), settings.get("url")) {
        (Some(command), None) => {
            // Every word text, at least the program.
            let argv: Option<Vec<String>> = command
                .as_array()
                .filter(|words| !words.is_empty())
                .and_then(|words| words.iter().map(|w| w.as_str().map(str::to_owned)).collect());
            let argv = argv.ok_or("`command` must be a list: the program and its arguments, e.g. `command: [npx, -y, \"@modelcontextprotocol/server-everything\"]`")?;
            if settings.contains_key("headers") {
                return Err("`headers` go with `url`, not `command`".to_owned());
            }
            let program = if argv[0].contains('/') {
                dir.join(&argv[0])
            } else {
                PathBuf::from(&argv[0])
            };
            Ok(Endpoint::Stdio {
                program,
                args: argv[1..].to_vec(),
                env: strings("env")?,
                dir: dir.to_path_buf(),
            })
        }
        (None, Some(url)) => {
            let url = url.as_str().ok_or("`url` must be text")?;
            let url = expand_env(url, "`url`")?;
            let parsed = reqwest::Url::parse(&url).map_err(|e| format!("`url: {url}`: {e}"))?;
            if !["http", "https"].contains(&parsed.scheme()) {
                return Err(format!("`url: {url}` must be http(s)://…"));
            }
            if settings.contains_key("env") {
                return Err("`env` goes with `command`, not `url`".to_owned());
            }
            Ok(Endpoint::Http {
                url,
                headers: strings("headers")?,
            })
        }
        (Some(_), Some(_)) => Err("give either `command` (stdio) or `url` (HTTP), not both".to_owned()),
        (None, None) => Err(
            "give `command: [PROGRAM, ARGS...]` for a server over stdio, or `url: http(s)://…` for one over HTTP"
                .to_owned(),
        ),
    }
}

/// The thread all MCP traffic runs on: servers outlive any one run's
/// runtime (and a test's), so they live on a runtime of their own.
fn runtime() -> &'static tokio::runtime::Handle {
    static HANDLE: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds");
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("braid-mcp".to_owned())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .expect("the MCP thread starts");
        handle
    })
}

/// The one server of `endpoint` in this process.
fn server(endpoint: Endpoint) -> Arc<Server> {
    static SERVERS: OnceLock<Mutex<HashMap<Endpoint, Arc<Server>>>> = OnceLock::new();
    SERVERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(endpoint.clone())
        .or_insert_with(|| {
            Arc::new(Server {
                label: endpoint.label(),
                endpoint,
                connection: tokio::sync::Mutex::new(None),
                generations: std::sync::atomic::AtomicU64::new(0),
                stderr: Arc::default(),
            })
        })
        .clone()
}

/// One MCP server: how to reach it, and the connection while it lasts.
struct Server {
    endpoint: Endpoint,
    label: String,
    connection: tokio::sync::Mutex<Option<Connection>>,
    /// Connections made so far.
    generations: std::sync::atomic::AtomicU64,
    /// A stdio server's last lines of stderr.
    stderr: Arc<Mutex<VecDeque<String>>>,
}

struct Connection {
    service: RunningService<RoleClient, ()>,
    tools: Vec<rmcp::model::Tool>,
    /// Which connection of this server it is (1, 2… as it is made again).
    generation: u64,
}

impl Server {
    /// Starts the server if it is not running and lists its tools,
    /// blocking the calling thread (a pipeline's load) up to `limit`.
    fn start(self: Arc<Self>, limit: Duration) -> Result<Vec<rmcp::model::Tool>, String> {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        let server = self.clone();
        runtime().spawn(async move {
            // Bounded here too: a server that never answers must not keep
            // the connection's lock (every later load and call waits on it).
            let listed = tokio::time::timeout(limit, async {
                let mut connection = server.connection.lock().await;
                server
                    .connected(&mut connection)
                    .await
                    .map(|c| c.tools.clone())
            })
            .await;
            if let Ok(listed) = listed {
                let _ = done.send(listed);
            }
        });
        result.recv_timeout(limit).unwrap_or_else(|_| {
            Err(format!(
                "{} did not start and list its tools within {} (startup_timeout){}",
                self.label,
                humantime::format_duration(limit),
                self.stderr_tail()
            ))
        })
    }

    /// The live connection, made (again) if there is none or it closed.
    async fn connected<'c>(
        &self,
        slot: &'c mut Option<Connection>,
    ) -> Result<&'c Connection, String> {
        if slot
            .as_ref()
            .is_some_and(|c| c.service.is_closed() || c.service.is_transport_closed())
        {
            *slot = None;
        }
        if slot.is_none() {
            let service = self.connect().await?;
            let tools = self.list_tools(&service).await?;
            let generation = self
                .generations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            *slot = Some(Connection {
                service,
                tools,
                generation,
            });
        }
        Ok(slot.as_ref().expect("connected above"))
    }

    /// Every tool the server lists, page by page, within
    /// [`MAX_TOOL_PAGES`] and [`MAX_LISTED_TOOLS`].
    async fn list_tools(
        &self,
        service: &RunningService<RoleClient, ()>,
    ) -> Result<Vec<rmcp::model::Tool>, String> {
        let mut tools = Vec::new();
        let mut cursor = None;
        for _ in 0..MAX_TOOL_PAGES {
            let params = rmcp::model::PaginatedRequestParams::default().with_cursor(cursor);
            let page = service.peer().list_tools(Some(params)).await.map_err(|e| {
                format!(
                    "{} did not list its tools: {e}{}",
                    self.label,
                    self.stderr_tail()
                )
            })?;
            tools.extend(page.tools);
            if tools.len() > MAX_LISTED_TOOLS {
                return Err(format!(
                    "{} lists more than {MAX_LISTED_TOOLS} tools; name the ones to use with `tools:`",
                    self.label
                ));
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(tools),
            }
        }
        Err(format!(
            "{} kept listing tools past {MAX_TOOL_PAGES} pages",
            self.label
        ))
    }

    async fn connect(&self) -> Result<RunningService<RoleClient, ()>, String> {
        match &self.endpoint {
            Endpoint::Stdio {
                program,
                args,
                env,
                dir,
            } => {
                let mut command = tokio::process::Command::new(program);
                command
                    .args(args)
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .current_dir(dir)
                    .kill_on_drop(true);
                let (transport, stderr) = rmcp::transport::TokioChildProcess::builder(command)
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("cannot start {}: {e}", self.label))?;
                if let Some(stderr) = stderr {
                    let kept = self.stderr.clone();
                    let label = self.label.clone();
                    tokio::spawn(async move {
                        let keep = |line: &[u8]| {
                            let line = String::from_utf8_lossy(line);
                            tracing::debug!(target: "braid::mcp", server = %label, "{line}");
                            let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                            if kept.len() == STDERR_LINES {
                                kept.pop_front();
                            }
                            kept.push_back(line.into_owned());
                        };
                        read_lines_bounded(stderr, STDERR_LINE_BYTES, keep).await;
                    });
                }
                ().serve(transport)
                    .await
                    .map_err(|e| format!("{} did not start: {e}{}", self.label, self.stderr_tail()))
            }
            Endpoint::Http { url, headers } => {
                use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
                let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
                for (name, value) in headers {
                    let name = reqwest::header::HeaderName::try_from(name.as_str())
                        .map_err(|e| format!("header `{name}`: {e}"))?;
                    let mut value = reqwest::header::HeaderValue::try_from(value.as_str())
                        .map_err(|e| format!("header `{name}`: {e}"))?;
                    value.set_sensitive(true);
                    config.custom_headers.insert(name, value);
                }
                let transport = rmcp::transport::StreamableHttpClientTransport::with_client(
                    crate::client().clone(),
                    config,
                );
                ().serve(transport)
                    .await
                    .map_err(|e| format!("cannot reach {}: {e}", self.label))
            }
        }
    }

    fn stderr_tail(&self) -> String {
        let kept = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        if kept.is_empty() {
            return String::new();
        }
        let lines: Vec<&str> = kept.iter().map(String::as_str).collect();
        format!("; its stderr ends with:\n  {}", lines.join("\n  "))
    }

    /// Calls `tool`; a connection that broke is made again and the call
    /// tried once more (the server died: it is started again).
    async fn call(
        &self,
        tool: &str,
        arguments: serde_json::Map<String, Value>,
    ) -> Result<Writes, AgentError> {
        for attempt in 0..2 {
            let (peer, generation) = {
                let mut slot = self.connection.lock().await;
                let connection = self.connected(&mut slot).await.map_err(AgentError::Other)?;
                (connection.service.peer().clone(), connection.generation)
            };
            let params =
                CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments.clone());
            match peer.call_tool(params).await {
                Ok(result) => return writes_of(tool, result),
                Err(rmcp::ServiceError::McpError(error)) => {
                    return Err(AgentError::Other(format!(
                        "{} refused `{tool}`: {}",
                        self.label, error.message
                    )));
                }
                Err(error) if attempt == 0 => {
                    tracing::warn!(server = %self.label, %error, "the connection broke; starting it again");
                    // Unless another call made it again meanwhile.
                    let mut slot = self.connection.lock().await;
                    if slot.as_ref().is_some_and(|c| c.generation == generation) {
                        *slot = None;
                    }
                }
                Err(error) => {
                    return Err(AgentError::Other(format!(
                        "{}: `{tool}`: {error}{}",
                        self.label,
                        self.stderr_tail()
                    )));
                }
            }
        }
        unreachable!("the second attempt returns")
    }
}

/// A call's result as a tool's writes: `content` (the MCP content
/// blocks) and, when the tool gave one, `structured`.
fn writes_of(tool: &str, result: rmcp::model::CallToolResult) -> Result<Writes, AgentError> {
    let content = serde_json::to_value(&result.content).unwrap_or(Value::Null);
    if result.is_error == Some(true) {
        let text: Vec<&str> = result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
            .collect();
        return Err(AgentError::Other(format!(
            "`{tool}` answered with an error: {}",
            text.join("\n")
        )));
    }
    let mut writes = Writes::new();
    writes.insert("content".to_owned(), content);
    if let Some(structured) = result.structured_content {
        writes.insert("structured".to_owned(), structured);
    }
    Ok(writes)
}

/// One tool of a server, as an agent the run calls.
struct McpTool {
    server: Arc<Server>,
    name: String,
}

#[async_trait::async_trait]
impl Agent for McpTool {
    async fn call(&self, input: &AgentInput) -> Result<Writes, AgentError> {
        let arguments: serde_json::Map<String, Value> = input
            .reads
            .iter()
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect();
        let (server, name) = (self.server.clone(), self.name.clone());
        // On the MCP thread; aborted if the run drops the call (its
        // timeout, a cancelled run).
        let task = AbortOnDrop(runtime().spawn(async move { server.call(&name, arguments).await }));
        match task.await {
            Ok(result) => result,
            Err(e) => Err(AgentError::Other(format!(
                "the MCP call did not finish: {e}"
            ))),
        }
    }
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// Calls `line` with each line `reader` gives, cut to `max` bytes (the rest
/// of a longer line is skipped, never held), until it ends.
async fn read_lines_bounded(
    mut reader: impl tokio::io::AsyncRead + Unpin,
    max: usize,
    mut line: impl FnMut(&[u8]),
) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 8192];
    let mut current: Vec<u8> = Vec::new();
    while let Ok(n) = reader.read(&mut buf).await {
        if n == 0 {
            break;
        }
        for &byte in &buf[..n] {
            if byte == b'\n' {
                line(&current);
                current.clear();
            } else if current.len() < max {
                current.push(byte);
            }
        }
    }
    if !current.is_empty() {
        line(&current);
    }
}
