//! Pipelines from clients are hostile input (issue 9): loading them is
//! bounded and kept off the async workers, operator pipelines cannot be
//! replaced over HTTP, and a run's event log stays bounded however much the
//! run retries. Driven through the HTTP API, in process with `oneshot` and
//! over real sockets.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use braid_core::agent::AgentError;
use braid_core::agent::sleep::SleepAgent;
use braid_core::{AgentKinds, Pipeline};
use braid_server::{AppState, ServerConfig, app};
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};
use tower::ServiceExt;

const GOOD: &str = "pipeline: good
agents:
  a: { kind: sleep, ms: 1, writes: [x] }
  b: { kind: sleep, ms: 1, reads: [x], writes: [y] }
";

/// A request through the whole router, in process: status and JSON body
/// (`Null` if there is none), and the body's size in bytes.
async fn call_sized(
    state: &AppState,
    method: &str,
    uri: &str,
    body: Option<String>,
) -> (StatusCode, Value, usize) {
    let kind = if uri.starts_with("/v1/pipelines") {
        "application/yaml"
    } else {
        "application/json"
    };
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", kind)
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value, bytes.len())
}

async fn call(
    state: &AppState,
    method: &str,
    uri: &str,
    body: Option<String>,
) -> (StatusCode, Value) {
    let (status, value, _) = call_sized(state, method, uri, body).await;
    (status, value)
}

async fn register(state: &AppState, yaml: &str) -> (StatusCode, Value) {
    call(state, "POST", "/v1/pipelines", Some(yaml.to_owned())).await
}

fn problems(body: &Value) -> Vec<String> {
    body["error"]["problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

// ---- a kind whose compile step blocks until the test lets it go ----

/// Agents of kind `gate` are built only once the gate is open; the test
/// sees when a compile reached it.
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
    entered: AtomicUsize,
    arrived: Notify,
    /// Set if the gate had to open itself (the test never opened it).
    timed_out: AtomicBool,
}

impl Gate {
    fn new(open: bool) -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new(open),
            opened: Condvar::new(),
            entered: AtomicUsize::new(0),
            arrived: Notify::new(),
            timed_out: AtomicBool::new(false),
        })
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    fn is_open(&self) -> bool {
        *self.open.lock().unwrap()
    }

    /// Waits (blocking the thread, as a CPU-heavy compile would) until the
    /// gate is open; gives up after 60 s so a broken server cannot hang
    /// the tests.
    fn pass(&self) {
        self.entered.fetch_add(1, Ordering::SeqCst);
        self.arrived.notify_one();
        let open = self.open.lock().unwrap();
        let (open, wait) = self
            .opened
            .wait_timeout_while(open, Duration::from_secs(60), |open| !*open)
            .unwrap();
        if wait.timed_out() && !*open {
            self.timed_out.store(true, Ordering::SeqCst);
        }
    }

    fn kinds(self: &Arc<Self>) -> AgentKinds {
        let mut kinds = AgentKinds::standard();
        let gate = self.clone();
        kinds.kind(
            "gate",
            Arc::new(move |config| {
                gate.pass();
                let writes: Arc<[Arc<str>]> = config
                    .writes
                    .iter()
                    .map(|w| Arc::from(w.as_str()))
                    .collect();
                Ok(Arc::new(SleepAgent::new(Duration::ZERO, Value::Null, writes)) as _)
            }),
        );
        kinds
    }
}

const GATED: &str = "pipeline: gated
agents:
  g: { kind: gate, writes: [x] }
";

async fn healthz(state: &AppState) -> StatusCode {
    let (status, _) = tokio::time::timeout(
        Duration::from_secs(30),
        call(state, "GET", "/healthz", None),
    )
    .await
    .expect("/healthz answers");
    status
}

/// `#[tokio::test]` runs on one thread: had the compile run on it, nothing
/// else could be answered until the compile ended.
#[tokio::test]
async fn compiling_runs_off_the_async_workers() {
    let gate = Gate::new(false);
    let state = AppState::new(
        ServerConfig {
            kinds: gate.kinds(),
            compile_budget: Duration::from_secs(120),
            ..ServerConfig::default()
        },
        None,
    );
    let registering = tokio::spawn({
        let state = state.clone();
        async move { register(&state, GATED).await }
    });
    tokio::time::timeout(Duration::from_secs(30), gate.arrived.notified())
        .await
        .expect("the compile reached the gate kind");
    assert_eq!(healthz(&state).await, StatusCode::OK);
    assert!(
        !gate.is_open() && !gate.timed_out.load(Ordering::SeqCst),
        "/healthz answered only after the compile ended"
    );
    let (status, _) = call(&state, "GET", "/v1/pipelines", None).await;
    assert_eq!(status, StatusCode::OK);
    gate.open();
    let (status, body) = registering.await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "gated");
}

#[tokio::test]
async fn a_compile_over_its_budget_is_refused_and_holds_its_slot_until_it_ends() {
    let gate = Gate::new(false);
    let state = AppState::new(
        ServerConfig {
            kinds: gate.kinds(),
            compile_budget: Duration::from_millis(300),
            max_concurrent_compiles: 1,
            ..ServerConfig::default()
        },
        None,
    );
    // The gate stays shut: the client is answered when the budget is spent.
    let (status, body) = register(&state, GATED).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_pipeline");
    let listed = problems(&body);
    assert!(
        listed.iter().any(|p| p.contains("compile_budget")),
        "{listed:?}"
    );
    assert_eq!(healthz(&state).await, StatusCode::OK);
    let (status, _) = call(&state, "GET", "/v1/pipelines/gated", None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a refused pipeline is not kept"
    );

    // The abandoned compile still occupies the only compile slot.
    let (status, body) = register(&state, GOOD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "too_many_compiles");

    // Once it ends, the slot is free again.
    gate.open();
    let registered = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (status, body) = register(&state, GOOD).await;
            if status != StatusCode::TOO_MANY_REQUESTS {
                return (status, body);
            }
        }
    })
    .await
    .expect("the compile slot is freed");
    assert_eq!(registered.0, StatusCode::CREATED, "{}", registered.1);
}

#[tokio::test]
async fn the_agent_count_is_checked_before_anything_is_compiled() {
    let gate = Gate::new(true);
    let state = AppState::new(
        ServerConfig {
            kinds: gate.kinds(),
            max_agents: 2,
            ..ServerConfig::default()
        },
        None,
    );
    let three = "pipeline: three
agents:
  a: { kind: gate, writes: [a] }
  b: { kind: gate, writes: [b] }
  c: { kind: gate, writes: [c] }
";
    let (status, body) = register(&state, three).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "too_many_agents");
    assert!(
        problems(&body).iter().any(|p| p.contains("max_agents")),
        "{body}"
    );
    assert_eq!(
        gate.entered.load(Ordering::SeqCst),
        0,
        "no agent was built for a pipeline over the limit"
    );
    let two = "pipeline: two
agents:
  a: { kind: gate, writes: [a] }
  b: { kind: gate, writes: [b] }
";
    let (status, body) = register(&state, two).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(gate.entered.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refusal_lists_at_most_max_diagnostics_problems_and_how_many_more() {
    let state = AppState::new(
        ServerConfig {
            max_diagnostics: 10,
            ..ServerConfig::default()
        },
        None,
    );
    // One problem per agent: each reads a field nobody writes.
    let mut unknown_reads = String::from("pipeline: many\nagents:\n");
    for i in 0..300 {
        unknown_reads.push_str(&format!(
            "  a{i}: {{ kind: sleep, reads: [nope{i}], writes: [out{i}] }}\n"
        ));
    }
    // Every pair of agents races on one field.
    let mut one_field = String::from("pipeline: racy\nagents:\n");
    for i in 0..300 {
        one_field.push_str(&format!("  w{i}: {{ kind: sleep, writes: [x] }}\n"));
    }
    let (status, body, size) =
        call_sized(&state, "POST", "/v1/pipelines", Some(unknown_reads)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let listed = problems(&body);
    assert!(
        listed.len() <= 11,
        "{} problems listed, more than 10 and a summary",
        listed.len()
    );
    let last = listed.last().unwrap();
    assert!(last.starts_with("and 290 more"), "{last}");
    assert!(size < 64 * 1024, "a {size}-byte error body");

    // 300 writers racing on one field are one problem naming a few of them.
    let (status, body, size) = call_sized(&state, "POST", "/v1/pipelines", Some(one_field)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let listed = problems(&body);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].contains("and 295 more write it"), "{}", listed[0]);
    assert!(size < 64 * 1024, "a {size}-byte error body");
}

// ---- item 1: hostile nesting over a real socket ----

struct Server {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(config: ServerConfig) -> Self {
        let state = AppState::new(config, None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(braid_server::serve(state, listener, async move {
            let _ = stopped.await;
        }));
        Self {
            base,
            stop: Some(stop),
            done,
        }
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

async fn post_pipeline(server: &Server, text: String) -> (u16, Value) {
    let response = client()
        .post(format!("{}/v1/pipelines", server.base))
        .header("content-type", "application/yaml")
        .body(text)
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The server still answers probes and runs pipelines.
async fn still_serving(server: &Server) {
    let health = client()
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .expect("the server is alive");
    assert_eq!(health.status(), 200);
    let (status, body) = post_pipeline(server, GOOD.to_owned()).await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let report: Value = client()
        .post(format!("{}/v1/runs?wait=true", server.base))
        .json(&json!({"pipeline": "good"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["status"], "completed", "{report}");
}

/// Today's release is killed by these (stack overflow in the parser or
/// the condition compiler): each must be a 422 naming the limit and its
/// place, and the server must live on. (Needs the core's limits.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_and_huge_conditions_are_refused_and_the_server_lives_on() {
    let server = Server::start(ServerConfig::default()).await;
    still_serving(&server).await;

    let agents = "agents:\n  a: { kind: sleep, ms: 1, writes: [x] }\n";
    let block = |depth: usize| {
        format!(
            "pipeline: deep\ndescription:\n  {}x\n{agents}",
            "- ".repeat(depth)
        )
    };
    let flow = |depth: usize| {
        format!(
            "pipeline: deep\ndescription: {}x{}\n{agents}",
            "[".repeat(depth),
            "]".repeat(depth)
        )
    };
    for (what, text) in [
        ("a block sequence 6,000 deep", block(6_000)),
        ("a block sequence 10,000 deep", block(10_000)),
        ("a flow sequence 10,000 deep", flow(10_000)),
    ] {
        let (status, body) = post_pipeline(&server, text).await;
        assert_eq!(status, 422, "{what}: {body}");
        let listed = problems(&body);
        assert!(
            listed
                .iter()
                .any(|p| p.contains("max_depth") && p.starts_with("<pipeline>:")),
            "{what}: the limit and its place are named: {listed:?}"
        );
        still_serving(&server).await;
    }

    let when = |condition: String| {
        format!(
            "pipeline: cond\ninputs: {{ x: {{ type: object }} }}\nagents:\n  a: {{ kind: sleep, ms: 1, reads: [x], writes: [y], when: \"{condition}\" }}\n"
        )
    };
    for (what, text) in [
        (
            "10,000 chained terms",
            when(vec!["x == 1"; 10_000].join(" && ")),
        ),
        (
            "10,000 chained members",
            when(format!("x{} == 1", ".a".repeat(10_000))),
        ),
        (
            "1,000 nested parentheses",
            when(format!("{}x == 1{}", "(".repeat(1_000), ")".repeat(1_000))),
        ),
        (
            "1,300 chained members",
            when(format!("x{} == 1", ".a".repeat(1_300))),
        ),
    ] {
        let (status, body) = post_pipeline(&server, text).await;
        assert_eq!(status, 422, "{what}: {body}");
        let listed = problems(&body);
        assert!(
            listed
                .iter()
                .any(|p| p.contains("max_condition") && p.starts_with("<pipeline>:")),
            "{what}: the limit and its place are named: {listed:?}"
        );
        still_serving(&server).await;
    }
    server.stop().await;
}

// ---- item 3: operator pipelines and the registry's bounds ----

#[tokio::test]
async fn operator_pipelines_cannot_be_replaced_or_deleted_over_http() {
    let state = AppState::new(ServerConfig::default(), None);
    let operator = "pipeline: seed\nagents:\n  a: { kind: sleep, ms: 1, writes: [x] }\n";
    state
        .preload(
            Pipeline::from_yaml_str(operator).unwrap(),
            operator.to_owned(),
        )
        .unwrap();
    let impostor = "pipeline: seed\nagents:\n  evil: { kind: sleep, ms: 1, writes: [x] }\n";
    let (status, body) = register(&state, impostor).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "pipeline_protected");
    let (_, seed) = call(&state, "GET", "/v1/pipelines/seed", None).await;
    assert_eq!(
        seed["source"], operator,
        "the operator's pipeline is intact"
    );
    assert_eq!(seed["origin"], "operator");

    let (status, body) = call(&state, "DELETE", "/v1/pipelines/seed", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "pipeline_protected");
    let (status, _) = call(&state, "GET", "/v1/pipelines/seed", None).await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = call(&state, "DELETE", "/v1/pipelines/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");

    // A client's own pipeline: registered, replaced, deleted.
    let (status, body) = register(&state, GOOD).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["origin"], "api");
    let (status, _) = register(&state, GOOD).await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = call(&state, "GET", "/v1/pipelines", None).await;
    let origins: Vec<(&str, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["origin"].as_str().unwrap()))
        .collect();
    assert_eq!(origins, [("seed", "operator"), ("good", "api")]);
    let (status, body) = call(&state, "DELETE", "/v1/pipelines/good", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _) = call(&state, "GET", "/v1/pipelines/good", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(
        &state,
        "POST",
        "/v1/runs",
        Some(json!({"pipeline": "good"}).to_string()),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a deleted pipeline cannot run"
    );
}

#[tokio::test]
async fn names_and_the_number_of_pipelines_are_bounded() {
    let state = AppState::new(
        ServerConfig {
            max_pipelines: 2,
            ..ServerConfig::default()
        },
        None,
    );
    let named =
        |name: &str| format!("pipeline: '{name}'\nagents:\n  a: {{ kind: sleep, ms: 1 }}\n");
    for bad in [".", "..", &"n".repeat(129)] {
        let (status, body) = register(&state, &named(bad)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "`{bad}`: {body}");
        assert_eq!(body["error"]["code"], "invalid_name", "`{bad}`: {body}");
    }
    let (_, list) = call(&state, "GET", "/v1/pipelines", None).await;
    assert_eq!(list, json!([]), "refused names are not registered");

    // Operator pipelines do not count against the limit.
    let operator = named("ops");
    state
        .preload(Pipeline::from_yaml_str(&operator).unwrap(), operator)
        .unwrap();
    let longest = "n".repeat(128);
    let (status, body) = register(&state, &named(&longest)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = register(&state, &named("second")).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = register(&state, &named("third")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "too_many_pipelines");
    // Replacing one is not adding one.
    let (status, _) = register(&state, &named("second")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&state, "DELETE", "/v1/pipelines/second", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = register(&state, &named("third")).await;
    assert_eq!(status, StatusCode::CREATED);
}

// ---- item 5: retries cannot flood a run's event log ----

/// Reads a whole SSE stream: (id, event type, data) per event.
async fn read_sse(response: reqwest::Response) -> Vec<(u64, String, Value)> {
    let body = response.text().await.unwrap();
    body.split("\n\n")
        .filter_map(|block| {
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
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_coalesce_beyond_the_event_cap_and_the_final_event_arrives() {
    // Backoff doubles from 1 ms: five retries take about 30 ms.
    const CAP: usize = 40;
    const AGENTS: usize = 20;
    const RETRIES: usize = 5;
    let mut kinds = AgentKinds::standard();
    kinds.builtin_fn("fail", |_| async {
        Err::<braid_core::agent::Writes, _>(AgentError::Other("always".into()))
    });
    let server = Server::start(ServerConfig {
        kinds,
        max_events_per_run: CAP,
        ..ServerConfig::default()
    })
    .await;
    let mut text = String::from("pipeline: flaky\non_failure: continue\nagents:\n");
    for i in 0..AGENTS {
        text.push_str(&format!(
            "  f{i}: {{ kind: builtin, function: fail, retries: {RETRIES}, backoff: 1ms, writes: [out{i}] }}\n"
        ));
    }
    let (status, body) = post_pipeline(&server, text).await;
    assert_eq!(status, 201, "{body}");
    let started: Value = client()
        .post(format!("{}/v1/runs", server.base))
        .json(&json!({"pipeline": "flaky", "events": "summary"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = started["run_id"].as_str().unwrap().to_owned();
    let stream = client()
        .get(format!("{}/v1/runs/{id}/events", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let events = tokio::time::timeout(Duration::from_secs(60), read_sse(stream))
        .await
        .expect("the stream ends with the run");

    // Far more happened than was kept.
    let emitted = 1 + AGENTS * (2 * RETRIES + 2) + 1;
    assert!(
        events.len() <= CAP + AGENTS + 1,
        "{} events kept of about {emitted}, cap {CAP}",
        events.len()
    );
    let (_, last, data) = events.last().unwrap();
    assert_eq!(last, "run_finished", "the final event arrives last");
    assert_eq!(data["status"], "failed");
    // No agent's fate vanished: each one's failure arrives.
    for i in 0..AGENTS {
        let agent = format!("f{i}");
        assert!(
            events
                .iter()
                .any(|(_, kind, data)| kind == "agent_failed" && data["agent"] == agent.as_str()),
            "no agent_failed for {agent}"
        );
    }
    // What was folded is said: a held event counts the ones it stands for.
    let folded: u64 = events
        .iter()
        .filter_map(|(_, _, data)| data["coalesced"].as_u64())
        .sum();
    assert!(
        folded as usize + events.len() > CAP + AGENTS + 1,
        "{folded} events folded"
    );
    let seqs: Vec<u64> = events.iter().map(|(seq, _, _)| *seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());

    // The stored log (what a late subscriber replays) is the same.
    let again = client()
        .get(format!("{}/v1/runs/{id}/events", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(read_sse(again).await.len(), events.len());
    server.stop().await;
}

#[tokio::test]
async fn a_body_that_is_not_utf8_is_refused_with_its_line() {
    let state = AppState::new(ServerConfig::default(), None);
    let mut body = b"pipeline: p\nagents:\n  a: { kind: sleep, description: caf".to_vec();
    body.extend_from_slice(&[0xE9, b' ', b'}', b'\n']);
    let response = braid_server::app(state)
        .oneshot(
            Request::post("/v1/pipelines")
                .header("content-type", "application/yaml")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("line 3, byte 37 is not"), "{text}");
}
