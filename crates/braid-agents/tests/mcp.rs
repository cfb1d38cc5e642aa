//! `mcp` tools against a real MCP server written by others:
//! `@modelcontextprotocol/server-everything` from the npm registry
//! (pinned in `tests/mcp/package.json`, installed into its ignored
//! `node_modules` by `.ci/run`, or here on first use), called by a
//! scripted model.

use std::path::PathBuf;
use std::sync::OnceLock;

use braid_core::event::{EventKind, EventLevel, EventSink};
use braid_core::{AgentStatus, Pipeline, RunOptions};
use serde_json::{Value, json};

mod model;
use model::{completion, stub, tool_calls};

/// The installed server's program: `npm ci` into `tests/mcp` on first use.
fn everything() -> PathBuf {
    static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp");
            let bin = dir.join("node_modules/.bin/mcp-server-everything");
            if !bin.exists() {
                let status = std::process::Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--silent"])
                    .current_dir(&dir)
                    .status()
                    .expect("npm (Node.js) is needed to install the MCP test server");
                assert!(status.success(), "npm ci in {} failed", dir.display());
            }
            assert!(bin.exists(), "{} was not installed", bin.display());
            bin
        })
        .clone()
}

fn pipeline(endpoint: &str, mcp: &str) -> Result<Pipeline, String> {
    let yaml = format!(
        r#"
pipeline: mcp-tools
inputs: {{ question: {{ type: string }} }}
agents:
  assistant:
    kind: llm
    endpoint: "{endpoint}"
    model: tiny
    prompt: "{{{{ question }}}}"
    tools:
      - mcp: {mcp}
    reads: [question]
    writes: [answer]
"#
    );
    Pipeline::from_yaml_str_with(&yaml, &braid_agents::kinds()).map_err(|e| e.to_string())
}

fn stdio(extra: &str) -> String {
    format!(
        "{{ command: [{:?}, stdio], tools: [echo, get-sum]{extra} }}",
        everything().display().to_string()
    )
}

/// The text of a call's result (the MCP content blocks' text).
fn text_of(result: &Value) -> String {
    result["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["text"].as_str())
        .collect::<Vec<_>>()
        .join("")
}

#[tokio::test]
async fn a_model_calls_echo_and_get_sum_on_server_everything_over_stdio() {
    let (endpoint, requests) = stub(|n, _| match n {
        1 => tool_calls(&[
            ("c1", "echo", r#"{"message": "hello from braid"}"#),
            ("c2", "get-sum", r#"{"a": 2, "b": 40}"#),
        ]),
        _ => completion("The sum is 42."),
    })
    .await;
    let pipeline = pipeline(&endpoint, &stdio("")).unwrap_or_else(|e| panic!("{e}"));
    // Only the tools asked for, listed at load, with the server's schemas.
    let tools: Vec<(String, String)> = pipeline.agents()[0]
        .tools()
        .iter()
        .map(|t| (t.name().to_owned(), t.kind().to_owned()))
        .collect();
    assert_eq!(
        tools,
        [
            ("echo".into(), "mcp".into()),
            ("get-sum".into(), "mcp".into())
        ]
    );

    let (sink, mut events) = EventSink::channel(EventLevel::Summary);
    let input = pipeline.check_input(&json!({"question": "add"})).unwrap();
    let report = pipeline
        .run(
            input,
            RunOptions {
                events: Some(sink),
                ..RunOptions::default()
            },
        )
        .await;
    assert!(report.status.is_success(), "{report:#?}");
    assert_eq!(*report.state["answer"], json!("The sum is 42."));

    let calls = &report.agents["assistant"].tool_calls;
    assert_eq!(calls.len(), 2, "{calls:#?}");
    let by_tool = |tool: &str| calls.iter().find(|c| c.tool == tool).unwrap();
    let echo = by_tool("echo");
    assert_eq!(echo.status, AgentStatus::Completed, "{echo:#?}");
    assert!(
        text_of(echo.result.as_ref().unwrap()).contains("hello from braid"),
        "{echo:#?}"
    );
    let sum = by_tool("get-sum");
    assert!(
        text_of(sum.result.as_ref().unwrap()).contains("42"),
        "{sum:#?}"
    );

    // The model got each result under its call's id.
    let sent = requests.lock().unwrap()[1]["messages"].clone();
    let result_for = |id: &str| {
        sent.as_array()
            .unwrap()
            .iter()
            .find(|m| m["tool_call_id"] == id)
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(result_for("c1").contains("hello from braid"));
    assert!(result_for("c2").contains("42"));

    let mut finished = 0;
    while let Some(event) = events.recv().await {
        if let EventKind::ToolFinished { error, .. } = event.kind {
            assert_eq!(error, None);
            finished += 1;
        }
    }
    assert_eq!(finished, 2);
}

#[tokio::test]
async fn arguments_that_do_not_fit_the_servers_schema_never_reach_it() {
    let (endpoint, requests) = stub(|n, _| match n {
        1 => tool_calls(&[("c1", "get-sum", r#"{"a": "two", "b": 3}"#)]),
        _ => completion("I could not add."),
    })
    .await;
    let pipeline = pipeline(&endpoint, &stdio("")).unwrap_or_else(|e| panic!("{e}"));
    let input = pipeline.check_input(&json!({"question": "add"})).unwrap();
    let report = pipeline.run(input, RunOptions::default()).await;
    assert!(report.status.is_success(), "{report:#?}");
    let call = &report.agents["assistant"].tool_calls[0];
    assert_eq!((call.status, call.attempts), (AgentStatus::Failed, 0));
    let told = requests.lock().unwrap()[1]["messages"][2]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        told.starts_with("error: the arguments to `get-sum` do not fit"),
        "{told}"
    );
}

#[test]
fn servers_that_cannot_start_or_lack_a_tool_are_load_errors() {
    let missing = pipeline(
        "http://127.0.0.1:9/v1",
        "{ command: [/nonexistent/mcp-server], startup_timeout: 10s }",
    )
    .unwrap_err();
    assert!(
        missing.contains("cannot start MCP server `/nonexistent/mcp-server`"),
        "{missing}"
    );

    let crashing = pipeline(
        "http://127.0.0.1:9/v1",
        "{ command: [sh, -c, 'echo no config here >&2; exit 3'], startup_timeout: 10s }",
    )
    .unwrap_err();
    assert!(crashing.contains("did not start"), "{crashing}");
    assert!(
        crashing.contains("no config here"),
        "the server's stderr: {crashing}"
    );

    let lacking = pipeline(
        "http://127.0.0.1:9/v1",
        &format!(
            "{{ command: [{:?}, stdio], tools: [echo, add] }}",
            everything().display().to_string()
        ),
    )
    .unwrap_err();
    assert!(
        lacking.contains("lists no tool `add`; it has: echo"),
        "{lacking}"
    );

    let both = pipeline(
        "http://127.0.0.1:9/v1",
        "{ command: [x], url: 'http://127.0.0.1:9/mcp' }",
    )
    .unwrap_err();
    assert!(
        both.contains("either `command` (stdio) or `url` (HTTP)"),
        "{both}"
    );

    let prefixed = pipeline(
        "http://127.0.0.1:9/v1",
        &stdio(", prefix: ev_, timeout: 5s"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = prefixed.agents()[0]
        .tools()
        .iter()
        .map(|t| t.name())
        .collect();
    assert_eq!(names, ["ev_echo", "ev_get-sum"]);
}

/// A server-everything over streamable HTTP on a free port, killed when
/// dropped.
struct HttpServer {
    child: std::process::Child,
    url: String,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn http_server() -> HttpServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(everything())
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let server = HttpServer {
        child,
        url: format!("http://127.0.0.1:{port}/mcp"),
    };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return server;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("server-everything did not listen on {port}");
}

#[tokio::test]
async fn tools_of_a_server_over_streamable_http_are_called_too() {
    let server = http_server().await;
    let (endpoint, _) = stub(|n, _| match n {
        1 => tool_calls(&[("c1", "echo", r#"{"message": "over http"}"#)]),
        _ => completion("Echoed."),
    })
    .await;
    // A header from the environment (the server ignores it).
    let mcp = format!(
        "{{ url: '{}', headers: {{ Authorization: 'Bearer ${{HOME}}' }}, tools: [echo] }}",
        server.url
    );
    let pipeline = pipeline(&endpoint, &mcp).unwrap_or_else(|e| panic!("{e}"));
    let input = pipeline.check_input(&json!({"question": "echo"})).unwrap();
    let report = pipeline.run(input, RunOptions::default()).await;
    assert!(report.status.is_success(), "{report:#?}");
    let call = &report.agents["assistant"].tool_calls[0];
    assert_eq!(call.status, AgentStatus::Completed, "{call:#?}");
    assert!(text_of(call.result.as_ref().unwrap()).contains("over http"));
}

/// The pids of processes whose environment holds `marker` (`NAME=value`).
fn pids_with_env(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|&b| b == 0)
            .any(|var| var == marker.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

#[tokio::test]
async fn a_stdio_server_that_died_is_started_again_on_the_next_call() {
    let (endpoint, _) = stub(|n, _| match n % 2 {
        1 => tool_calls(&[("c", "echo", r#"{"message": "still here"}"#)]),
        _ => completion("ok"),
    })
    .await;
    // Its own server (the environment is part of what tells servers apart).
    let marker = "BRAID_TEST_MCP_INSTANCE=restarted";
    let pipeline = pipeline(
        &endpoint,
        &stdio(", env: { BRAID_TEST_MCP_INSTANCE: restarted }"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let first = pids_with_env(marker);
    assert_eq!(first.len(), 1, "one server process: {first:?}");
    std::process::Command::new("kill")
        .args(["-9", &first[0].to_string()])
        .status()
        .unwrap();
    for _ in 0..100 {
        if pids_with_env(marker).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let input = pipeline.check_input(&json!({"question": "echo"})).unwrap();
    let report = pipeline.run(input, RunOptions::default()).await;
    assert!(report.status.is_success(), "{report:#?}");
    let call = &report.agents["assistant"].tool_calls[0];
    assert_eq!(call.status, AgentStatus::Completed, "{call:#?}");
    assert!(text_of(call.result.as_ref().unwrap()).contains("still here"));
    let now = pids_with_env(marker);
    assert!(
        now.len() == 1 && now != first,
        "a new server: {first:?} then {now:?}"
    );
}

#[test]
fn loading_that_may_not_start_programs_starts_no_stdio_server() {
    // What a server does for a pipeline a client registers without
    // --allow-command-agents.
    let limits = braid_core::LoadLimits {
        allow_tool_processes: false,
        ..braid_core::LoadLimits::default()
    };
    let marker = "BRAID_TEST_MCP_INSTANCE=forbidden";
    let yaml = format!(
        r#"
pipeline: forbidden
agents:
  assistant:
    kind: llm
    endpoint: "http://127.0.0.1:9/v1"
    model: tiny
    prompt: hi
    tools:
      - mcp: {}
    writes: [answer]
"#,
        stdio(", env: { BRAID_TEST_MCP_INSTANCE: forbidden }")
    );
    let error = Pipeline::from_yaml_str_limited(&yaml, &braid_agents::kinds(), &limits)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("may not start programs") && error.contains("url:"),
        "{error}"
    );
    assert!(pids_with_env(marker).is_empty(), "no server was started");
}

#[test]
fn a_server_that_never_answers_is_a_load_error_within_its_startup_timeout() {
    // Its own command line: a "server" that reads nothing and says nothing.
    let mcp =
        "{ command: [sleep, '30'], env: { BRAID_TEST_MCP_INSTANCE: silent }, startup_timeout: 1s }";
    for _ in 0..2 {
        // The second load must not wait behind the first one's attempt.
        let began = std::time::Instant::now();
        let error = pipeline("http://127.0.0.1:9/v1", mcp).unwrap_err();
        assert!(error.contains("within 1s (startup_timeout)"), "{error}");
        assert!(began.elapsed() < std::time::Duration::from_secs(10));
    }
    let too_long = pipeline(
        "http://127.0.0.1:9/v1",
        "{ command: [x], startup_timeout: 100h }",
    )
    .unwrap_err();
    assert!(too_long.contains("between 1ms and 1h"), "{too_long}");
}
