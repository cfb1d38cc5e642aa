//! The HTTP API as a client sees it: in process with `oneshot`, and over
//! real sockets for streams, auth and shutdown.

use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use braid_server::memory::MemoryStore;
use braid_server::{AppState, RunStore, ServerConfig, app};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tower::ServiceExt;

const SEED: &str = "pipeline: seed
agents:
  triage:       { kind: sleep, ms: 20, writes: [triage_result] }
  data:         { kind: sleep, ms: 20, reads: [triage_result], writes: [data_analysis] }
  metrics:      { kind: sleep, ms: 20, reads: [triage_result], writes: [metrics_result] }
  optimization: { kind: sleep, ms: 20, reads: [data_analysis, metrics_result], writes: [plan] }
";

const SLOW: &str = "pipeline: slow
agents:
  quick: { kind: sleep, ms: 1, writes: [q] }
  slow:  { kind: sleep, ms: 60000, reads: [q], writes: [s] }
";

fn state(config: ServerConfig) -> AppState {
    AppState::new(config, None)
}

async fn call(
    state: &AppState,
    method: &str,
    uri: &str,
    body: Option<String>,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

async fn register(state: &AppState, yaml: &str) -> (StatusCode, Value) {
    call(state, "POST", "/v1/pipelines", Some(yaml.to_owned())).await
}

#[tokio::test]
async fn pipelines_are_registered_validated_and_explained() {
    let state = state(ServerConfig::default());
    let (status, body) = register(&state, SEED).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["explain"]["critical_path"],
        json!(["triage", "data", "optimization"])
    );
    let (status, _) = register(&state, SEED).await;
    assert_eq!(status, StatusCode::OK, "registering again replaces it");

    let (_, list) = call(&state, "GET", "/v1/pipelines", None).await;
    assert_eq!(list[0]["name"], "seed");
    assert_eq!(list[0]["agents"], 4);
    let (status, one) = call(&state, "GET", "/v1/pipelines/seed", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        one["explain"]["stages"],
        json!([["triage"], ["data", "metrics"], ["optimization"]])
    );
    assert_eq!(one["source"], SEED);

    // The same messages as `braid validate`.
    let (status, body) = register(
        &state,
        "pipeline: bad\nagents:\n  a: { kind: sleep, reads: [nope] }\n",
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "invalid_pipeline");
    let problem = body["error"]["problems"][0].as_str().unwrap();
    assert!(
        problem.contains(":3:") && problem.contains("reads `nope`"),
        "{problem}"
    );

    let (status, body) = call(&state, "GET", "/v1/pipelines/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn command_agents_in_groups_and_tool_agents_need_the_permission_too() {
    let closed = state(ServerConfig::default());
    // A tool agent runs when a model calls it: a `command` one runs a
    // program just the same.
    let tool = "pipeline: tooled
agents:
  sh:
    kind: command
    run: [touch, /tmp/braid-should-not-exist]
    tool: { description: Runs it, parameters: { type: object, properties: {} } }
    writes: [out]
  plan: { kind: sleep, ms: 1, writes: [x] }
";
    // And a group's agent runs like any other.
    let grouped = "pipeline: grouped
agents:
  outer:
    kind: pipeline
    agents:
      inner: { kind: command, run: [touch, /tmp/braid-should-not-exist], writes: [y] }
    outputs: { z: y }
";
    for (yaml, agent) in [(tool, "sh"), (grouped, "outer.inner")] {
        let (status, body) = register(&closed, yaml).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"]["code"], "command_agents_not_allowed");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(agent), "{message}");
    }
}

#[tokio::test]
async fn command_agents_over_http_need_the_servers_permission() {
    let yaml = "pipeline: shell\nagents:\n  run: { kind: command, run: [touch, /tmp/braid-should-not-exist] }\n";
    let closed = state(ServerConfig::default());
    let (status, body) = register(&closed, yaml).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "command_agents_not_allowed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--allow-command-agents")
    );
    let (status, _) = call(&closed, "GET", "/v1/pipelines/shell", None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a refused pipeline is not registered"
    );

    let open = state(ServerConfig {
        allow_command_agents: true,
        ..ServerConfig::default()
    });
    let (status, _) = register(&open, yaml).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn limits_on_bodies_agents_and_runs_in_flight() {
    let state = state(ServerConfig {
        max_body_bytes: 2048,
        max_agents: 3,
        max_concurrent_runs: 1,
        ..ServerConfig::default()
    });
    let big = format!(
        "pipeline: big\n# {}\nagents:\n  a: {{ kind: sleep }}\n",
        "x".repeat(4096)
    );
    let (status, body) = register(&state, &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");

    let (status, body) = register(&state, SEED).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "too_many_agents");

    register(&state, SLOW).await;
    let (status, _) = call(
        &state,
        "POST",
        "/v1/runs",
        Some(json!({"pipeline": "slow"}).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = call(
        &state,
        "POST",
        "/v1/runs",
        Some(json!({"pipeline": "slow"}).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "too_many_runs");
}

#[tokio::test]
async fn runs_start_wait_report_and_cancel() {
    let state = state(ServerConfig::default());
    register(&state, SEED).await;
    register(&state, SLOW).await;

    let (status, report) = call(
        &state,
        "POST",
        "/v1/runs?wait=true",
        Some(json!({"pipeline": "seed", "input": {}}).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["status"], "completed");
    assert_eq!(report["state"]["plan"], true);
    assert_eq!(report["agents"]["data"]["status"], "completed");

    let (status, started) = call(
        &state,
        "POST",
        "/v1/runs",
        Some(json!({"pipeline": "slow", "events": "summary"}).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = started["run_id"].as_str().unwrap().to_owned();
    let (_, run) = call(&state, "GET", &format!("/v1/runs/{id}"), None).await;
    assert_eq!(run["status"], "running");
    // Cancel once the run's stream says `quick` is done (`slow` takes a minute).
    wait_for_event(&state, &id, "agent_completed", "quick").await;
    let (status, _) = call(&state, "POST", &format!("/v1/runs/{id}/cancel"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let deadline = Instant::now() + Duration::from_secs(5);
    let run = loop {
        let (_, run) = call(&state, "GET", &format!("/v1/runs/{id}"), None).await;
        if run["status"] != "running" {
            break run;
        }
        assert!(Instant::now() < deadline, "cancel did not stop the run");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(run["status"], "cancelled");
    assert_eq!(run["agents"]["quick"]["status"], "completed");
    assert_eq!(run["agents"]["slow"]["status"], "cancelled");
    let (status, body) = call(&state, "POST", &format!("/v1/runs/{id}/cancel"), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "already_finished");

    let (_, list) = call(&state, "GET", "/v1/runs", None).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn bad_run_requests_get_specific_errors() {
    let state = state(ServerConfig::default());
    register(&state, "pipeline: typed\ninputs: { n: { type: integer } }\nagents:\n  a: { kind: sleep, reads: [n], writes: [x] }\n").await;
    let post = |body: Value| call(&state, "POST", "/v1/runs", Some(body.to_string()));
    let (status, body) = post(json!({"pipeline": "typed", "input": {"n": "five"}})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "invalid_input");
    assert!(
        body["error"]["problems"][0]
            .as_str()
            .unwrap()
            .contains("input `n`")
    );
    let (status, _) = post(json!({"pipeline": "ghost"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) =
        post(json!({"pipeline": "typed", "input": {"n": 1}, "events": "loud"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "invalid_events");
    let (status, body) = post(json!({"pipline": "typed"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pipline")
    );
    let (status, body) = call(&state, "POST", "/v1/runs", Some("{not json".into())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, _) = call(&state, "GET", "/v1/runs/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = call(&state, "GET", "/v2/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
}

// ---- over real sockets ----

struct Server {
    base: String,
    state: AppState,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(config: ServerConfig, store: Option<Arc<dyn RunStore>>) -> Self {
        let state = AppState::new(config, store);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(braid_server::serve(state.clone(), listener, async move {
            let _ = stopped.await;
        }));
        Self {
            base,
            state,
            stop: Some(stop),
            done,
        }
    }

    fn ws(&self, path: &str) -> String {
        format!("{}{path}", self.base.replacen("http", "ws", 1))
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.done.await.unwrap().unwrap();
    }
}

fn client() -> reqwest::Client {
    // reqwest is built with rustls and no default crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn start_run(server: &Server, pipeline: &str, events: &str) -> String {
    let response = client()
        .post(format!("{}/v1/runs", server.base))
        .json(&json!({"pipeline": pipeline, "events": events}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Reads a whole SSE stream: (id, event type, data) per event.
async fn read_sse(response: reqwest::Response) -> Vec<(u64, String, Value)> {
    let body = response.text().await.unwrap();
    body.split("\n\n").filter_map(sse_event).collect()
}

/// One SSE event block as (id, event type, data); `None` for a comment.
fn sse_event(block: &str) -> Option<(u64, String, Value)> {
    let (mut id, mut kind, mut data) = (0, String::new(), Value::Null);
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            id = v.parse().unwrap();
        } else if let Some(v) = line.strip_prefix("event: ") {
            kind = v.to_owned();
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = serde_json::from_str(v).unwrap();
        }
    }
    (!kind.is_empty()).then_some((id, kind, data))
}

/// Follows a run's SSE stream (in process) until an event of type `kind`
/// about `agent` arrives; fails if the stream ends, or nothing comes for
/// 30 s.
async fn wait_for_event(state: &AppState, id: &str, kind: &str, agent: &str) {
    let request = Request::builder()
        .uri(format!("/v1/runs/{id}/events"))
        .body(Body::empty())
        .unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buffer = String::new();
        while let Some(chunk) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                if let Some((_, k, data)) = sse_event(&block) {
                    if k == kind && data["agent"] == agent {
                        return true;
                    }
                    seen.push(k);
                }
            }
        }
        false
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "no `{kind}` event for `{agent}` in run {id}; saw {seen:?}"
    );
}

fn lifecycle(events: &[(u64, String, Value)]) -> Vec<String> {
    events
        .iter()
        .map(|(_, kind, data)| match data["agent"].as_str() {
            Some(agent) => format!("{kind} {agent}"),
            None => kind.clone(),
        })
        .collect()
}

#[tokio::test]
async fn sse_streams_every_event_and_resumes_after_last_event_id() {
    let server = Server::start(ServerConfig::default(), None).await;
    register(&server.state, SEED).await;
    let id = start_run(&server, "seed", "summary").await;
    let url = format!("{}/v1/runs/{id}/events", server.base);
    let all = read_sse(client().get(&url).send().await.unwrap()).await;
    let ids: Vec<u64> = all.iter().map(|e| e.0).collect();
    assert_eq!(
        ids,
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "numbered in order"
    );
    assert_eq!(all.first().unwrap().1, "run_started");
    assert_eq!(
        all.last().unwrap().1,
        "run_finished",
        "ends with the run's final event"
    );
    assert_eq!(all.iter().filter(|e| e.1 == "agent_completed").count(), 4);

    // A client that saw up to 5 reconnects: it gets 6.. once each.
    let rest = read_sse(
        client()
            .get(&url)
            .header("Last-Event-ID", "5")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        rest.iter().map(|e| e.0).collect::<Vec<_>>(),
        (6..=all.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(lifecycle(&rest), lifecycle(&all[5..]));

    // `off`: no events were built; the stream is just the final event.
    let quiet = start_run(&server, "seed", "off").await;
    let events = read_sse(
        client()
            .get(format!("{}/v1/runs/{quiet}/events", server.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(lifecycle(&events), ["run_finished"]);
    server.stop().await;
}

#[tokio::test]
async fn websocket_streams_resume_with_after_and_survive_a_disconnect() {
    let server = Server::start(ServerConfig::default(), None).await;
    register(&server.state, SEED).await;
    let id = start_run(&server, "seed", "summary").await;

    // Read three events, hang up, come back with ?after=3.
    let (mut socket, _) = tokio_tungstenite::connect_async(server.ws(&format!("/v1/runs/{id}/ws")))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let message = socket.next().await.unwrap().unwrap();
        let event: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
        seen.push(event["seq"].as_u64().unwrap());
    }
    socket.close(None).await.unwrap();
    drop(socket);

    let (mut socket, _) =
        tokio_tungstenite::connect_async(server.ws(&format!("/v1/runs/{id}/ws?after=3")))
            .await
            .unwrap();
    let mut kinds = Vec::new();
    while let Some(Ok(message)) = socket.next().await {
        if message.is_close() {
            break;
        }
        let event: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
        seen.push(event["seq"].as_u64().unwrap());
        kinds.push(event["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        seen,
        (1..=seen.len() as u64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    assert_eq!(kinds.last().unwrap(), "run_finished");
    server.stop().await;
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_slows_nobody() {
    let server = Server::start(
        ServerConfig {
            allow_command_agents: true,
            ..Default::default()
        },
        None,
    )
    .await;
    // Lots of events: 400 agents, summary events.
    let mut yaml = String::from("pipeline: busy\nagents:\n");
    for i in 0..400 {
        yaml.push_str(&format!(
            "  a{i}: {{ kind: sleep, ms: 5, writes: [f{i}] }}\n"
        ));
    }
    register(&server.state, &yaml).await;
    let id = start_run(&server, "busy", "summary").await;
    // One subscriber connects and never reads.
    let (stalled, _) = tokio_tungstenite::connect_async(server.ws(&format!("/v1/runs/{id}/ws")))
        .await
        .unwrap();
    // Another reads everything.
    let (mut reader, _) = tokio_tungstenite::connect_async(server.ws(&format!("/v1/runs/{id}/ws")))
        .await
        .unwrap();
    let started = Instant::now();
    let mut seqs = Vec::new();
    while let Some(Ok(message)) = reader.next().await {
        if message.is_close() {
            break;
        }
        let event: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
        if let Some(seq) = event["seq"].as_u64() {
            seqs.push(seq);
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the run was held up"
    );
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        seqs.len(),
        2 + 400 * 2,
        "run start/end and each agent's start and end"
    );

    // The stalled one, reading at last, still gets every event once, in order
    // (from the log, after a `lagged` notice if it fell behind).
    let mut stalled = stalled;
    let mut got = Vec::new();
    while let Some(Ok(message)) = stalled.next().await {
        if message.is_close() {
            break;
        }
        let event: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
        if let Some(seq) = event["seq"].as_u64() {
            got.push(seq);
        }
    }
    assert_eq!(got, seqs);
    server.stop().await;
}

#[tokio::test]
async fn the_token_guards_every_v1_route_and_stream() {
    let server = Server::start(
        ServerConfig {
            token: Some("s3cret".into()),
            ..Default::default()
        },
        None,
    )
    .await;
    let (status, _) = register(&server.state, SEED).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "in process too");
    server
        .state
        .preload(
            braid_core::Pipeline::from_yaml_str(SEED).unwrap(),
            SEED.to_owned(),
        )
        .unwrap();
    let get = |path: &str, token: Option<&str>| {
        let mut request = client().get(format!("{}{path}", server.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let response = get("/v1/pipelines", None).await.unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(
        get("/v1/pipelines", Some("wrong")).await.unwrap().status(),
        401
    );
    assert_eq!(
        get("/v1/pipelines", Some("s3cret")).await.unwrap().status(),
        200
    );
    assert_eq!(get("/healthz", None).await.unwrap().status(), 200);
    assert_eq!(
        get("/", None).await.unwrap().status(),
        200,
        "the page itself asks for the token"
    );

    let response = client()
        .post(format!("{}/v1/runs", server.base))
        .bearer_auth("s3cret")
        .json(&json!({"pipeline": "seed", "events": "summary"}))
        .send()
        .await
        .unwrap();
    let id = response.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = tokio_tungstenite::connect_async(server.ws(&format!("/v1/runs/{id}/ws"))).await;
    assert!(refused.is_err(), "a WebSocket without the token is refused");
    let (mut socket, _) =
        tokio_tungstenite::connect_async(server.ws(&format!("/v1/runs/{id}/ws?token=s3cret")))
            .await
            .unwrap();
    assert!(socket.next().await.unwrap().is_ok());
    server.stop().await;
}

#[tokio::test]
async fn metrics_and_probes() {
    let server = Server::start(ServerConfig::default(), None).await;
    register(&server.state, SEED).await;
    client()
        .post(format!("{}/v1/runs?wait=true", server.base))
        .json(&json!({"pipeline": "seed"}))
        .send()
        .await
        .unwrap();
    let text = client()
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert!(value("braid_runs_started_total") >= 1.0);
    assert!(value("braid_runs_finished_total{status=\"completed\"}") >= 1.0);
    let ready = client()
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_runs_finish_then_interrupts_the_rest_resumably() {
    let (dir, _, store) = sqlite_store().await;
    let server = Server::start(
        ServerConfig {
            grace: Duration::from_secs(2),
            allow_command_agents: true,
            ..Default::default()
        },
        Some(store.clone()),
    )
    .await;
    // `gated` runs until the test creates `go`; `probe` finishes at once.
    let go = dir.path().join("go");
    let gated = format!(
        "pipeline: gated\nagents:\n  wait: {{ kind: command, run: [sh, -c, 'while [ ! -e {} ]; do sleep 0.01; done'] }}\n  last: {{ kind: sleep, ms: 20, after: [wait], writes: [done] }}\n",
        go.display()
    );
    assert_eq!(register(&server.state, &gated).await.0, StatusCode::CREATED);
    register(&server.state, SLOW).await;
    register(
        &server.state,
        "pipeline: probe\nagents:\n  a: { kind: sleep, ms: 0 }\n",
    )
    .await;
    let finishing = start_run(&server, "gated", "off").await;
    let slow = client()
        .post(format!("{}/v1/runs", server.base))
        .json(&json!({"pipeline": "slow", "checkpoint": "agent"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // `slow`'s first agent is done, and checkpointed, before shutdown begins.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = store.get_run(&slow).await.unwrap();
        if stored.is_some_and(|run| {
            run.agents.iter().any(|a| {
                &*a.agent == "quick" && a.report.status == braid_core::AgentStatus::Completed
            })
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "`quick` was never checkpointed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let state = server.state.clone();
    let started = Instant::now();
    let stopping = tokio::spawn(server.stop());
    // Shutdown has begun once new runs are refused.
    loop {
        let (status, body) = call(
            &state,
            "POST",
            "/v1/runs",
            Some(json!({"pipeline": "probe", "checkpoint": "none"}).to_string()),
        )
        .await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(body["error"]["code"], "shutting_down");
            break;
        }
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert!(Instant::now() < deadline, "shutdown never began");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, run) = call(&state, "GET", &format!("/v1/runs/{finishing}"), None).await;
    assert_eq!(
        run["status"], "running",
        "still in flight as shutdown began"
    );
    // Well within the grace period, `gated` may finish.
    std::fs::write(&go, "").unwrap();
    stopping.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown waited for `slow`: {:?}",
        started.elapsed()
    );

    let finishing = store.get_run(&finishing).await.unwrap().unwrap();
    assert_eq!(
        finishing.summary.status, "completed",
        "finished within the grace period"
    );
    let slow = store.get_run(&slow).await.unwrap().unwrap();
    assert_eq!(slow.summary.status, "interrupted");
    let done: Vec<&str> = slow
        .agents
        .iter()
        .filter(|a| a.report.status == braid_core::AgentStatus::Completed)
        .map(|a| &*a.agent)
        .collect();
    assert_eq!(done, ["quick"], "its finished agent is kept for the resume");
}

#[tokio::test]
async fn a_failed_run_is_resumed_over_http() {
    // Resuming is the subject, not the database: the in-memory store.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        ServerConfig {
            allow_command_agents: true,
            ..Default::default()
        },
        Some(Arc::new(MemoryStore::new())),
    )
    .await;
    let flag = dir.path().join("ok");
    let yaml = format!(
        "pipeline: flaky\nagents:\n  first: {{ kind: sleep, writes: [a] }}\n  flaky: {{ kind: command, run: [sh, -c, 'test -f {}'], reads: [a] }}\n",
        flag.display()
    );
    register(&server.state, &yaml).await;
    let response = client()
        .post(format!("{}/v1/runs?wait=true", server.base))
        .json(&json!({"pipeline": "flaky", "checkpoint": "agent"}))
        .send()
        .await
        .unwrap();
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["status"], "failed");
    let id = report["run_id"].as_str().unwrap();

    std::fs::write(&flag, "").unwrap();
    let response = client()
        .post(format!("{}/v1/runs/{id}/resume?wait=true", server.base))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let resumed: Value = response.json().await.unwrap();
    assert_eq!(resumed["status"], "completed");
    assert_eq!(resumed["agents"]["first"]["resumed"], true);
    let again = client()
        .post(format!("{}/v1/runs/{id}/resume", server.base))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    server.stop().await;
}

#[tokio::test]
async fn a_finished_runs_events_are_replayed_from_the_store() {
    // Replaying is the subject, not the database: the in-memory store.
    let store = Arc::new(MemoryStore::new());
    let first = Server::start(ServerConfig::default(), Some(store.clone())).await;
    register(&first.state, SEED).await;
    let id = start_run(&first, "seed", "summary").await;
    let live = read_sse(
        client()
            .get(format!("{}/v1/runs/{id}/events", first.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    first.stop().await;

    // A new server (a restart): the run is no longer in memory.
    let second = Server::start(ServerConfig::default(), Some(store)).await;
    let url = format!("{}/v1/runs/{id}/events", second.base);
    let replayed = read_sse(client().get(&url).send().await.unwrap()).await;
    assert_eq!(lifecycle(&replayed), lifecycle(&live));
    assert_eq!(
        replayed.iter().map(|e| e.0).collect::<Vec<_>>(),
        live.iter().map(|e| e.0).collect::<Vec<_>>()
    );
    let tail = read_sse(
        client()
            .get(&url)
            .header("Last-Event-ID", "5")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(tail.first().map(|e| e.0), Some(6));
    let (status, _) = call(&second.state, "GET", &format!("/v1/runs/{id}"), None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the run itself comes from the store"
    );
    second.stop().await;
}

/// A `foreach` group over 3 elements and a `repeat` group of 3 rounds.
const GROUPS: &str = "pipeline: groups
agents:
  plan: { kind: sleep, ms: 1, writes: [items], value: [1, 2, 3] }
  per_item:
    kind: pipeline
    foreach: items
    agents:
      extract:  { kind: sleep, ms: 5, reads: [item], writes: [a] }
      classify: { kind: sleep, ms: 5, reads: [a], writes: [b] }
    outputs: { results: b }
  refine:
    kind: pipeline
    repeat: { until: 'critique > 5', max: 3, on_max: continue }
    agents:
      draft:    { kind: sleep, ms: 5, reads: [round], writes: [draft] }
      critique: { kind: sleep, ms: 5, reads: [draft], writes: [critique], value: 1 }
    outputs: { final: critique }
  join: { kind: sleep, ms: 1, reads: [results, final], writes: [done] }
";

/// The names under `agents` and, per agent, under its `instances`.
fn nesting(report: &Value) -> Vec<(String, Vec<String>)> {
    report["agents"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, agent)| {
            let nested = agent["instances"]
                .as_object()
                .map(|i| i.keys().cloned().collect())
                .unwrap_or_default();
            (name.clone(), nested)
        })
        .collect()
}

#[tokio::test]
async fn a_group_runs_events_name_members_by_path_and_its_report_nests_them() {
    let store = Arc::new(MemoryStore::new());
    let first = Server::start(ServerConfig::default(), Some(store.clone())).await;
    let (status, body) = register(&first.state, GROUPS).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = start_run(&first, "groups", "summary").await;
    let events = read_sse(
        client()
            .get(format!("{}/v1/runs/{id}/events", first.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let seen = lifecycle(&events);
    for expected in [
        "agent_started per_item",
        "agent_completed per_item[2]",
        "agent_completed per_item[0].extract",
        "agent_completed per_item[1].classify",
        "agent_completed refine#0.draft",
        "agent_completed refine#2.critique",
        "agent_completed refine",
    ] {
        assert!(
            seen.iter().any(|e| e == expected),
            "no `{expected}` in {seen:?}"
        );
    }
    let (_, _, aggregate) = events
        .iter()
        .find(|(_, kind, data)| kind == "agent_started" && data["agent"] == "per_item")
        .unwrap();
    assert_eq!(aggregate["items"], 3, "{aggregate}");
    assert_eq!(seen.last().map(String::as_str), Some("run_finished"));

    let per_item: Vec<String> = (0..3)
        .flat_map(|i| {
            [
                format!("per_item[{i}]"),
                format!("per_item[{i}].extract"),
                format!("per_item[{i}].classify"),
            ]
        })
        .collect();
    let refine: Vec<String> = (0..3)
        .flat_map(|r| {
            [
                format!("refine#{r}.draft"),
                format!("refine#{r}.critique"),
                format!("refine#{r}"),
            ]
        })
        .collect();
    let sorted = |mut names: Vec<String>| {
        names.sort();
        names
    };
    // The same nesting from memory and, after a restart, from the store
    // (which keeps one flat record a member): every nested member under
    // its top-level group, none beside it.
    let (_, live) = call(&first.state, "GET", &format!("/v1/runs/{id}"), None).await;
    first.stop().await;
    let second = Server::start(ServerConfig::default(), Some(store)).await;
    let (status, stored) = call(&second.state, "GET", &format!("/v1/runs/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    for (from, report) in [("memory", &live), ("the store", &stored)] {
        assert_eq!(report["status"], "completed", "from {from}");
        let nested: Vec<(String, Vec<String>)> = nesting(report)
            .into_iter()
            .map(|(name, members)| (name, sorted(members)))
            .collect();
        assert_eq!(
            nested,
            [
                ("plan".to_owned(), vec![]),
                ("per_item".to_owned(), sorted(per_item.clone())),
                ("refine".to_owned(), sorted(refine.clone())),
                ("join".to_owned(), vec![]),
            ],
            "from {from}"
        );
        assert_eq!(
            report["agents"]["per_item"]["items"]["completed"], 3,
            "elements counted, not their members (from {from})"
        );
    }
    second.stop().await;
}

#[tokio::test]
async fn requests_a_browser_could_forge_are_refused() {
    let state = state(ServerConfig::default());
    // A plain-text body (no CORS preflight) cannot register a pipeline.
    let request = Request::builder()
        .method("POST")
        .uri("/v1/pipelines")
        .header("content-type", "text/plain")
        .body(Body::from(SEED))
        .unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Without a token, a request addressed to another host name (DNS
    // rebinding) is refused.
    let request = Request::builder()
        .uri("/v1/pipelines")
        .header("host", "evil.example:7700")
        .body(Body::empty())
        .unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let request = Request::builder()
        .uri("/v1/pipelines")
        .header("host", "127.0.0.1:7700")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app(state.clone()).oneshot(request).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn every_error_is_json() {
    let state = state(ServerConfig::default());
    register(&state, SEED).await;
    let (status, body) = call(
        &state,
        "POST",
        "/v1/runs?wait=maybe",
        Some(json!({"pipeline": "seed"}).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, body) = call(&state, "DELETE", "/v1/pipelines", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed");
    let (_, started) = call(
        &state,
        "POST",
        "/v1/runs",
        Some(json!({"pipeline": "seed"}).to_string()),
    )
    .await;
    let id = started["run_id"].as_str().unwrap();
    let (status, body) = call(&state, "GET", &format!("/v1/runs/{id}/ws"), None).await;
    assert_eq!(status.as_u16() / 100, 4);
    assert_eq!(body["error"]["code"], "websocket_required");
}

#[tokio::test]
async fn tokens_with_url_special_characters_work_in_the_query() {
    let token = "a+b/c=d&e";
    let server = Server::start(
        ServerConfig {
            token: Some(token.into()),
            ..Default::default()
        },
        None,
    )
    .await;
    server
        .state
        .preload(
            braid_core::Pipeline::from_yaml_str(SEED).unwrap(),
            SEED.to_owned(),
        )
        .unwrap();
    let encoded: String = url_encode(token);
    // `?token=` is taken only by the event streams; a run that does not
    // exist answers 404 once the token has been accepted.
    let ok = client()
        .get(format!(
            "{}/v1/runs/nope/events?token={encoded}",
            server.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 404);
    let empty = client()
        .get(format!("{}/v1/runs/nope/events?token=", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 401);
    server.stop().await;
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn metrics_expose_the_documented_families_after_a_run() {
    let (_dir, _, store) = sqlite_store().await;
    let server = Server::start(ServerConfig::default(), Some(store)).await;
    register(&server.state, SEED).await;
    client()
        .post(format!("{}/v1/runs?wait=true", server.base))
        .json(&json!({"pipeline": "seed", "events": "summary", "checkpoint": "agent"}))
        .send()
        .await
        .unwrap();
    let text = client()
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Prometheus text format: `# TYPE name kind`, then samples.
    let families: std::collections::HashMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    for (family, kind) in [
        ("braid_runs_total", "counter"),
        ("braid_run_makespan_seconds", "summary"),
        ("braid_agents_total", "counter"),
        ("braid_agent_duration_seconds", "summary"),
        ("braid_agent_queue_wait_seconds", "summary"),
        ("braid_events_emitted_total", "counter"),
        ("braid_checkpoint_batch_size", "summary"),
        ("braid_checkpoint_commit_seconds", "summary"),
        ("braid_checkpoint_transactions_total", "counter"),
        ("braid_db_pool_connections", "gauge"),
        ("braid_db_pool_acquire_seconds", "summary"),
        ("braid_runs_started_total", "counter"),
    ] {
        assert_eq!(families.get(family), Some(&kind), "{family} in:\n{text}");
    }
    server.stop().await;
}

/// A fresh SQLite store in a scratch folder: (folder, URL, store).
async fn sqlite_store() -> (tempfile::TempDir, String, Arc<braid_store::Store>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let store = braid_store::Store::connect(&url, &Default::default())
        .await
        .unwrap();
    (dir, url, Arc::new(store))
}

#[tokio::test]
async fn resuming_a_run_kills_what_its_dead_owner_left_running() {
    let (dir, _, store) = sqlite_store().await;
    let server = Server::start(
        ServerConfig {
            allow_command_agents: true,
            ..Default::default()
        },
        Some(store.clone()),
    )
    .await;
    let flag = dir.path().join("ok");
    let yaml = format!(
        "pipeline: flaky\nagents:\n  first: {{ kind: sleep, writes: [a] }}\n  flaky: {{ kind: command, run: [sh, -c, 'test -f {}'], reads: [a] }}\n",
        flag.display()
    );
    register(&server.state, &yaml).await;
    let response = client()
        .post(format!("{}/v1/runs?wait=true", server.base))
        .json(&json!({"pipeline": "flaky", "checkpoint": "agent"}))
        .send()
        .await
        .unwrap();
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["status"], "failed");
    let id = report["run_id"].as_str().unwrap();

    // What a braid process that died leaves: an agent's process group
    // still running, on record with the run. (Recorded by this process,
    // as a server restarted under the same pid would find it: the run is
    // not in flight here, so its groups are leftovers all the same.)
    let mut leftover = std::process::Command::new("sleep")
        .arg("300")
        .process_group(0)
        .spawn()
        .unwrap();
    let record = braid_core::checkpoint::RunRecord {
        run_id: Arc::from(id),
        pipeline: Arc::from("flaky"),
        pipeline_hash: Arc::from(""),
        pipeline_path: None,
        input: Vec::new(),
        policy: braid_core::CheckpointPolicy::Agent,
        started_by: None,
    };
    store
        .checkpointer()
        .process_started(&record, "flaky", leftover.id() as i32)
        .await;

    std::fs::write(&flag, "").unwrap();
    let response = client()
        .post(format!("{}/v1/runs/{id}/resume?wait=true", server.base))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let resumed: Value = response.json().await.unwrap();
    assert_eq!(resumed["status"], "completed");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = leftover.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the leftover process still runs");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status:?}");
    server.stop().await;
}

/// Log lines written through `tracing` as JSON (as `--log-format json`
/// does), collected for a test.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Each line's `fields.message`.
    fn messages(&self) -> Vec<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| {
                let line: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
                line["fields"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }
}

#[tokio::test]
async fn the_servers_own_logs_go_through_tracing() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::INFO)
        .finish();
    // This runtime has one thread: the server's tasks log to this subscriber.
    let _logging = tracing::subscriber::set_default(subscriber);
    let store = Arc::new(MemoryStore::new());
    let state = AppState::new(ServerConfig::default(), Some(store.clone()));
    register(&state, SEED).await;
    store.set_down(true);

    let (status, body) = call(&state, "GET", "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "store_unreachable");
    let (status, body) = call(&state, "GET", "/v1/runs", None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error"]["code"], "internal");
    let (status, report) = call(
        &state,
        "POST",
        "/v1/runs?wait=true",
        Some(json!({"pipeline": "seed", "events": "summary"}).to_string()),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the run itself does not need the store"
    );
    // The client is told what the store did not take.
    assert_eq!(report["status"], "completed");
    assert_eq!(report["saved"], false, "{report}");
    assert!(
        report["save_error"]
            .as_str()
            .is_some_and(|e| e.contains("not saved")),
        "{report}"
    );
    state.shut_down().await;

    let messages = captured.messages();
    for expected in [
        "readiness: the store does not answer",
        "internal error",
        "the run's events were not saved",
        "the run was not saved",
        "some runs could not be saved",
    ] {
        assert!(
            messages.iter().any(|m| m == expected),
            "`{expected}` was not logged through tracing: {messages:?}"
        );
    }
}

const FANOUT: &str = "pipeline: fan
agents:
  plan: { kind: sleep, ms: 1, writes: [items], value: [1, 2, 3, 4] }
  work: { kind: sleep, ms: 5, foreach: items, concurrency: 2, reads: [item], writes: [results] }
  join: { kind: sleep, ms: 1, reads: [results], writes: [done] }
";

/// A fan-out's instances stream as events of their own (`work[2]`) beside
/// the agent's, and its report counts and nests them, live and from the
/// store after a restart.
#[tokio::test]
async fn a_fanouts_instances_come_through_the_stream_and_the_report() {
    let store = Arc::new(MemoryStore::new());
    let first = Server::start(ServerConfig::default(), Some(store.clone())).await;
    register(&first.state, FANOUT).await;
    let id = start_run(&first, "fan", "summary").await;
    let events = read_sse(
        client()
            .get(format!("{}/v1/runs/{id}/events", first.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let seen = lifecycle(&events);
    for i in 0..4 {
        for kind in ["agent_started", "agent_completed"] {
            let event = format!("{kind} work[{i}]");
            assert_eq!(
                seen.iter().filter(|e| **e == event).count(),
                1,
                "{event}: {seen:?}"
            );
        }
    }
    let position = |event: &str| seen.iter().position(|e| e == event).unwrap();
    assert!(position("agent_started work") < position("agent_started work[0]"));
    assert!(position("agent_completed work[3]") < position("agent_completed work"));
    assert_eq!(seen.last().map(String::as_str), Some("run_finished"));

    let check = |run: &Value, whence: &str| {
        assert_eq!(run["status"], "completed", "{whence}: {run}");
        let work = &run["agents"]["work"];
        assert_eq!(work["status"], "completed", "{whence}");
        assert_eq!(work["items"]["total"], 4, "{whence}: {work}");
        assert_eq!(work["items"]["completed"], 4, "{whence}: {work}");
        let instances: Vec<&String> = work["instances"].as_object().unwrap().keys().collect();
        assert_eq!(
            instances,
            ["work[0]", "work[1]", "work[2]", "work[3]"],
            "{whence}"
        );
        assert_eq!(work["instances"]["work[2]"]["status"], "completed");
        assert!(
            run["agents"].get("work[0]").is_none(),
            "{whence}: instances are not top-level agents"
        );
    };
    let (status, live) = call(&first.state, "GET", &format!("/v1/runs/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    check(&live, "in memory");
    first.stop().await;

    let second = Server::start(ServerConfig::default(), Some(store)).await;
    let (status, stored) = call(&second.state, "GET", &format!("/v1/runs/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    check(&stored, "from the store");
    second.stop().await;
}

/// Past the event cap, a fan-out over many elements adds one held event
/// for all its instances: the stream stays short and still ends.
#[tokio::test]
async fn a_wide_fanout_past_the_event_cap_keeps_the_stream_bounded() {
    let server = Server::start(
        ServerConfig {
            max_events_per_run: 20,
            ..ServerConfig::default()
        },
        None,
    )
    .await;
    let items: Vec<u32> = (0..2000).collect();
    let yaml = format!(
        "pipeline: wide
agents:
  plan: {{ kind: sleep, writes: [items], value: {} }}
  work: {{ kind: sleep, foreach: items, reads: [item], writes: [results] }}
  join: {{ kind: sleep, reads: [results], writes: [done] }}
",
        json!(items)
    );
    let (status, body) = register(&server.state, &yaml).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = start_run(&server, "wide", "summary").await;
    let events = read_sse(
        client()
            .get(format!("{}/v1/runs/{id}/events", server.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        events.len() <= 20 + 2 * 3 + 1,
        "{} events: {:?}",
        events.len(),
        lifecycle(&events)
    );
    let seen = lifecycle(&events);
    assert!(
        seen.contains(&"agent_completed work".to_owned()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"agent_completed join".to_owned()),
        "{seen:?}"
    );
    let instances = events
        .iter()
        .find(|(_, _, data)| data["agent"] == "work[1999]")
        .expect("the instances' latest event is held");
    // It stands for every instance event the log had no room for.
    let kept = seen[..20].iter().filter(|e| e.contains(" work[")).count();
    assert_eq!(instances.2["coalesced"], 2 * 2000 - kept, "{seen:?}");
    let (_, run) = call(&server.state, "GET", &format!("/v1/runs/{id}"), None).await;
    assert_eq!(run["agents"]["work"]["items"]["completed"], 2000);
    server.stop().await;
}

#[tokio::test]
async fn an_abandoned_run_is_listed_as_such_and_resumed_without_force() {
    use braid_core::checkpoint::{AgentRecord, RunRecord};
    let yaml = "pipeline: two\nagents:\n  first: { kind: sleep, ms: 1, writes: [a] }\n  \
                second: { kind: sleep, ms: 1, reads: [a], writes: [b] }\n";
    let pipeline = braid_core::Pipeline::from_yaml_str(yaml).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    // A process elsewhere ran `first`, then went silent.
    let gone = braid_store::Store::connect(
        &url,
        &braid_store::StoreSettings {
            owner: Some("gone-host:1".into()),
            lease: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let id = "01900000-0000-7000-8000-00000000abcd";
    let run = RunRecord {
        run_id: Arc::from(id),
        pipeline: Arc::from("two"),
        pipeline_hash: Arc::from(pipeline.content_hash()),
        pipeline_path: None,
        input: Vec::new(),
        policy: braid_core::CheckpointPolicy::Agent,
        started_by: None,
    };
    let checkpointer = gone.checkpointer();
    checkpointer.run_started(&run);
    checkpointer.agent_finished(
        &run,
        &AgentRecord {
            agent: Arc::from("first"),
            report: braid_core::AgentReport::new(braid_core::AgentStatus::Completed),
            writes: vec![(Arc::from("a"), Arc::new(json!("from first")))],
            definition: pipeline
                .agents()
                .iter()
                .find(|a| a.name() == "first")
                .map(|a| Arc::from(a.definition_hash())),
        },
    );
    gone.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;

    let store = Arc::new(
        braid_store::Store::connect(&url, &Default::default())
            .await
            .unwrap(),
    );
    let state = AppState::new(ServerConfig::default(), Some(store.clone()));
    state.preload(pipeline, yaml.to_owned()).unwrap();
    let (status, listed) = call(&state, "GET", "/v1/runs?status=abandoned", None).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed[0]["run_id"], id, "{listed}");
    assert_eq!(listed[0]["status"], "abandoned");
    let (_, running) = call(&state, "GET", "/v1/runs?status=running", None).await;
    assert_eq!(running, json!([]));
    let (_, shown) = call(&state, "GET", &format!("/v1/runs/{id}"), None).await;
    assert_eq!(shown["status"], "abandoned", "{shown}");

    // Its lease expired: its owner is gone, no `force` needed.
    let (status, resumed) = call(
        &state,
        "POST",
        &format!("/v1/runs/{id}/resume?wait=true"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert_eq!(resumed["status"], "completed", "{resumed}");
    assert_eq!(resumed["agents"]["first"]["resumed"], true, "{resumed}");
    store.flush().await.unwrap();
    let stored = store.get_run(id).await.unwrap().unwrap();
    assert_eq!(stored.summary.status, "completed");
    assert_eq!(stored.epoch, 1, "the resume claimed it at the next epoch");
}
