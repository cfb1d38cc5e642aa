//! The `http` agent against local stub services (axum on 127.0.0.1:0).

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use braid_core::{AgentStatus, Pipeline, RunOptions};
use serde_json::{Value, json};

/// What the stub saw: how many requests, and from which client ports
/// (one per TCP connection).
#[derive(Default)]
struct Seen {
    requests: usize,
    peers: HashSet<SocketAddr>,
    headers: Vec<HeaderMap>,
}

type Shared = Arc<Mutex<Seen>>;

/// Starts a stub whose handler gets (call number, request body).
async fn stub<F>(respond: F) -> (String, Shared)
where
    F: Fn(usize, Value) -> axum::response::Response + Clone + Send + Sync + 'static,
{
    let seen: Shared = Arc::default();
    let handler = {
        let respond = respond.clone();
        move |State(seen): State<Shared>,
              ConnectInfo(peer): ConnectInfo<SocketAddr>,
              headers: HeaderMap,
              Json(body): Json<Value>| {
            let respond = respond.clone();
            async move {
                let n = {
                    let mut seen = seen.lock().unwrap();
                    seen.requests += 1;
                    seen.peers.insert(peer);
                    seen.headers.push(headers);
                    seen.requests
                };
                respond(n, body)
            }
        }
    };
    let app = axum::Router::new()
        .route("/agent", post(handler))
        .with_state(seen.clone());
    let url = format!("http://{}/agent", common::serve(app).await);
    (url, seen)
}

fn pipeline(yaml: &str) -> Pipeline {
    Pipeline::from_yaml_str_with(yaml, &braid_agents::kinds()).unwrap_or_else(|e| panic!("{e}"))
}

async fn run(pipeline: &Pipeline, input: Value) -> braid_core::RunReport {
    let input = pipeline.check_input(&input).unwrap();
    pipeline.run(input, RunOptions::default()).await
}

fn doubled(_: usize, body: Value) -> axum::response::Response {
    let n = body["state"]["n"].as_i64().unwrap_or(0);
    Json(json!({"doubled": n * 2})).into_response()
}

#[tokio::test]
async fn posts_the_reads_and_takes_the_writes() {
    let (url, seen) = stub(doubled).await;
    let p = pipeline(&format!(
        "pipeline: p\ninputs: {{ n: {{ type: integer }} }}\nagents:\n  svc: {{ kind: http, url: '{url}', headers: {{ X-Home: '${{HOME}}' }}, reads: [n], writes: [doubled] }}\n"
    ));
    let report = run(&p, json!({"n": 21})).await;
    assert!(report.status.is_success(), "{report:#?}");
    assert_eq!(*report.state["doubled"], json!(42));
    let seen = seen.lock().unwrap();
    let home = std::env::var("HOME").unwrap_or_default();
    assert_eq!(
        seen.headers[0]["x-home"],
        home.as_str(),
        "header filled from the environment"
    );
}

#[tokio::test]
async fn transient_failures_are_retried_and_retry_after_is_honoured() {
    let (url, seen) = stub(|n, body| match n {
        1 => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        )
            .into_response(),
        2 => (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response(),
        _ => doubled(n, body),
    })
    .await;
    let p = pipeline(&format!(
        "pipeline: p\ninputs: {{ n: {{ type: integer }} }}\nagents:\n  svc: {{ kind: http, url: '{url}', reads: [n], writes: [doubled] }}\n"
    ));
    let started = Instant::now();
    let report = run(&p, json!({"n": 2})).await;
    assert!(report.status.is_success(), "{report:#?}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured"
    );
    assert_eq!(seen.lock().unwrap().requests, 3);
}

#[tokio::test]
async fn errors_say_what_the_service_did() {
    let (bad_json, _) = stub(|_, _| "not json".into_response()).await;
    let (refusing, _) =
        stub(|_, _| (StatusCode::BAD_REQUEST, "no such thing").into_response()).await;
    let (slow, _) = stub(|_, _| {
        std::thread::sleep(Duration::from_millis(10));
        doubled(0, json!({}))
    })
    .await;
    // A port nothing listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/agent", listener.local_addr().unwrap())
    };
    let p = pipeline(&format!(
        "pipeline: p
on_failure: continue
agents:
  garbled: {{ kind: http, url: '{bad_json}', writes: [a] }}
  refused: {{ kind: http, url: '{refusing}', writes: [b] }}
  nobody:  {{ kind: http, url: '{closed}', http_retries: 1, writes: [c] }}
  late:    {{ kind: http, url: '{slow}', request_timeout: 1ms, http_retries: 0, writes: [d] }}
"
    ));
    let report = run(&p, json!({})).await;
    let error = |a: &str| report.agents[a].error.clone().unwrap_or_default();
    assert!(
        error("garbled").contains("must answer with one JSON object of writes; got: not json"),
        "{}",
        error("garbled")
    );
    assert!(
        error("refused").contains("HTTP 400 Bad Request")
            && error("refused").contains("no such thing"),
        "{}",
        error("refused")
    );
    assert!(
        error("nobody").contains("cannot reach"),
        "{}",
        error("nobody")
    );
    assert!(
        error("late").contains("cannot reach") || error("late").contains("timed out"),
        "{}",
        error("late")
    );
    assert!(
        report
            .agents
            .values()
            .all(|a| a.status == AgentStatus::Failed)
    );
}

#[test]
fn settings_are_checked_when_the_pipeline_loads() {
    let err = Pipeline::from_yaml_str_with(
        "pipeline: p
agents:
  a: { kind: http, writes: [x] }
  b: { kind: http, url: 'ftp://x', writes: [y] }
  c: { kind: http, url: 'http://x', headers: { Authorization: 'Bearer ${BRAID_NO_SUCH_SECRET}' }, writes: [z] }
  d: { kind: http, url: 'http://x', verb: GET, writes: [w] }
  e: { kind: http, url: 'http://x', max_response_bytes: 0, writes: [v] }
",
        &braid_agents::kinds(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("agent `a`: an `http` agent needs `url"),
        "{err}"
    );
    assert!(
        err.contains("agent `b`: `url` must be http or https"),
        "{err}"
    );
    assert!(
        err.contains(
            "agent `c`: header `Authorization` uses ${BRAID_NO_SUCH_SECRET}, which is not set"
        ),
        "{err}"
    );
    assert!(err.contains("agent `d`: unknown key `verb`"), "{err}");
    assert!(
        err.contains(
            "agent `e`: `max_response_bytes` must be a whole number of bytes of at least 1"
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_parallel_calls_reuse_a_bounded_set_of_connections() {
    let (host, load) = common::slow_service().await;
    common::run_wide(&host, 20, 10).await;
    let load = load.lock().unwrap();
    assert_eq!(load.requests, 200);
    let limit = braid_agents::ClientSettings::default().max_connections_per_host;
    // The hard limit: never more calls in flight to one host than allowed.
    assert!(
        load.peak <= limit,
        "{} calls in flight at once; the limit is {limit}",
        load.peak
    );
    // Connections are reused, not opened per call. (hyper hands a
    // connection back to its pool a moment after the response is read, so
    // a call that starts in that moment may open another: the count of
    // connections is near the limit, not exactly bounded by it.)
    assert!(
        load.peers.len() * 3 <= load.requests,
        "{} connections for {} calls: too little reuse",
        load.peers.len(),
        load.requests
    );
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_honoured() {
    // The date is in whole seconds: two seconds from now is at least one
    // second away when the agent reads it.
    let asked = Arc::new(Mutex::new(None::<Instant>));
    let (url, seen) = stub({
        let asked = asked.clone();
        move |n, body| match n {
            1 => {
                *asked.lock().unwrap() = Some(Instant::now());
                let when = std::time::SystemTime::now() + Duration::from_secs(2);
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", httpdate::fmt_http_date(when))],
                    "busy",
                )
                    .into_response()
            }
            _ => doubled(n, body),
        }
    })
    .await;
    let p = pipeline(&format!(
        "pipeline: p\ninputs: {{ n: {{ type: integer }} }}\nagents:\n  svc: {{ kind: http, url: '{url}', reads: [n], writes: [doubled] }}\n"
    ));
    let report = run(&p, json!({"n": 2})).await;
    assert!(report.status.is_success(), "{report:#?}");
    assert_eq!(seen.lock().unwrap().requests, 2);
    let waited = asked.lock().unwrap().unwrap().elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "the retry came {waited:?} after a Retry-After date at least 1 s away"
    );
}

/// `{field: "xxx…"}` of about `len` bytes, sent in 1 KiB chunks without a
/// Content-Length (so only counting while reading can catch it).
fn chunked_answer(field: &str, len: usize) -> axum::response::Response {
    let body = json!({ field: "x".repeat(len) }).to_string();
    let chunks: Vec<Result<String, std::convert::Infallible>> = body
        .as_bytes()
        .chunks(1024)
        .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
        .collect();
    axum::body::Body::from_stream(tokio_stream::iter(chunks)).into_response()
}

#[tokio::test]
async fn answers_longer_than_max_response_bytes_fail_naming_the_limit() {
    let (small, _) = stub(|_, _| chunked_answer("a", 500)).await;
    let (large, _) = stub(|_, _| chunked_answer("b", 5000)).await;
    // Over the 16 MiB default, announced by its Content-Length.
    let (huge, _) =
        stub(|_, _| Json(json!({"c": "x".repeat(16 * 1024 * 1024)})).into_response()).await;
    let p = pipeline(&format!(
        "pipeline: p
on_failure: continue
agents:
  fits: {{ kind: http, url: '{small}', max_response_bytes: 4000, writes: [a] }}
  capped: {{ kind: http, url: '{large}', max_response_bytes: 4000, writes: [b] }}
  default: {{ kind: http, url: '{huge}', writes: [c] }}
"
    ));
    let report = run(&p, json!({})).await;
    assert_eq!(report.agents["fits"].status, AgentStatus::Completed);
    let capped = report.agents["capped"].error.as_deref().unwrap_or_default();
    assert!(
        capped.contains(&format!(
            "the answer from {large} is longer than max_response_bytes (4000 bytes)"
        )),
        "{capped}"
    );
    let default = report.agents["default"]
        .error
        .as_deref()
        .unwrap_or_default();
    assert!(
        default.contains("longer than max_response_bytes (16777216 bytes)"),
        "{default}"
    );
    // Too long is not worth another try: the same service would do it again.
    assert_eq!(report.agents["capped"].attempts, 1);
}
