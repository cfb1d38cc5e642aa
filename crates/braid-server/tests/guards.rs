//! The server's guards and connection limits as a client meets them:
//! requests another site's page could forge, origins, where the token may
//! be given, hosts (HTTP/1 `Host` and HTTP/2 `:authority`), and what a
//! connection may hold (header and idle timeouts, the connection cap,
//! WebSocket message size and liveness). In process with `oneshot` where
//! the transport does not matter, over real sockets where it does.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use braid_server::{AppState, HttpConfig, RunStore, ServerConfig, app};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tower::ServiceExt;

const SEED: &str = "pipeline: seed
agents:
  triage: { kind: sleep, ms: 5, writes: [t] }
  data:   { kind: sleep, ms: 5, reads: [t], writes: [d] }
";

const SLOW: &str = "pipeline: slow
agents:
  quick: { kind: sleep, ms: 1, writes: [q] }
  slow:  { kind: sleep, ms: 60000, reads: [q], writes: [s] }
";

/// Generous: only a broken server makes a test wait this long.
const PATIENCE: Duration = Duration::from_secs(15);

fn with_pipelines(config: ServerConfig) -> AppState {
    let state = AppState::new(config, None);
    for yaml in [SEED, SLOW] {
        state
            .preload(
                braid_core::Pipeline::from_yaml_str(yaml).unwrap(),
                yaml.to_owned(),
            )
            .unwrap();
    }
    state
}

fn with_token() -> ServerConfig {
    ServerConfig {
        token: Some("s3cret".into()),
        ..ServerConfig::default()
    }
}

/// One in-process request: `(status, JSON body)`.
async fn send(state: &AppState, request: Request<Body>) -> (StatusCode, Value) {
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn post(uri: &str, content_type: Option<&str>, body: &str) -> Request<Body> {
    let mut request = Request::builder().method("POST").uri(uri);
    if let Some(kind) = content_type {
        request = request.header("content-type", kind);
    }
    request.body(Body::from(body.to_owned())).unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::builder().uri(uri).body(Body::empty()).unwrap()
}

async fn start_slow(state: &AppState) -> String {
    let (status, body) = send(
        state,
        post(
            "/v1/runs",
            Some("application/json"),
            &json!({"pipeline": "slow", "events": "summary"}).to_string(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["run_id"].as_str().unwrap().to_owned()
}

async fn status_of(state: &AppState, id: &str) -> Value {
    send(state, get(&format!("/v1/runs/{id}"))).await.1["status"].clone()
}

// ---- item 4: requests another site could forge ----

#[tokio::test]
async fn posts_without_an_api_content_type_are_refused() {
    let state = AppState::new(ServerConfig::default(), None);
    // No Content-Type is what `fetch(url, {mode: 'no-cors', body})` can
    // send; the others need no CORS preflight either, or are not the API's.
    for kind in [
        None,
        Some("image/png"),
        Some("application/csp-report"),
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let (status, body) = send(&state, post("/v1/pipelines", kind, SEED)).await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{kind:?}: {body}"
        );
        assert_eq!(body["error"]["code"], "unsupported_media_type");
    }
    let (status, _) = send(&state, get("/v1/pipelines/seed")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was registered");

    let (status, body) = send(
        &state,
        post("/v1/pipelines", Some("application/yaml"), SEED),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = send(
        &state,
        post(
            "/v1/runs",
            Some("Application/JSON; charset=utf-8"),
            r#"{"pipeline": "seed"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

#[tokio::test]
async fn cancel_and_resume_need_an_api_content_type_too() {
    let state = with_pipelines(ServerConfig::default());
    let id = start_slow(&state).await;
    for kind in [None, Some("text/plain")] {
        let (status, body) = send(&state, post(&format!("/v1/runs/{id}/cancel"), kind, "")).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
        let (status, body) = send(&state, post(&format!("/v1/runs/{id}/resume"), kind, "")).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    }
    assert_eq!(status_of(&state, &id).await, "running", "not cancelled");

    let (status, body) = send(
        &state,
        post(
            &format!("/v1/runs/{id}/cancel"),
            Some("application/json"),
            "",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    tokio::time::timeout(PATIENCE, async {
        while status_of(&state, &id).await != "cancelled" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the run is cancelled");
}

#[tokio::test]
async fn the_query_token_is_taken_only_by_the_event_streams() {
    let state = with_pipelines(with_token());
    let bearer = |mut request: Request<Body>| {
        request
            .headers_mut()
            .insert("authorization", "Bearer s3cret".parse().unwrap());
        request
    };
    let (status, body) = send(
        &state,
        bearer(post(
            "/v1/runs",
            Some("application/json"),
            r#"{"pipeline": "slow", "events": "summary"}"#,
        )),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["run_id"].as_str().unwrap().to_owned();

    // Nothing that changes state takes it, nor do the other reads.
    for request in [
        post(
            "/v1/pipelines?token=s3cret",
            Some("application/yaml"),
            "pipeline: other\nagents:\n  a: { kind: sleep }\n",
        ),
        post(
            &format!("/v1/runs/{id}/cancel?token=s3cret"),
            Some("application/json"),
            "",
        ),
        get("/v1/pipelines?token=s3cret"),
        get(&format!("/v1/runs/{id}?token=s3cret")),
        get("/metrics?token=s3cret"),
    ] {
        let uri = request.uri().to_string();
        let (status, body) = send(&state, request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}: {body}");
    }
    assert_eq!(status_of_with_token(&state, &id).await, "running");
    let (status, _) = send(&state, bearer(get("/v1/pipelines/other"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was registered");

    // The SSE stream does (a browser's EventSource cannot send headers).
    let response = app(state.clone())
        .oneshot(get(&format!("/v1/runs/{id}/events?token=s3cret")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

async fn status_of_with_token(state: &AppState, id: &str) -> Value {
    let request = Request::builder()
        .uri(format!("/v1/runs/{id}"))
        .header("authorization", "Bearer s3cret")
        .body(Body::empty())
        .unwrap();
    send(state, request).await.1["status"].clone()
}

/// A real server on a loopback port.
struct Server {
    addr: std::net::SocketAddr,
    state: AppState,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// A server with the `seed` and `slow` pipelines; runs still in flight
    /// when it stops are cancelled at once.
    async fn start(config: ServerConfig) -> Self {
        Self::with_state(with_pipelines(ServerConfig {
            grace: Duration::ZERO,
            ..config
        }))
        .await
    }

    async fn with_state(state: AppState) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(braid_server::serve(state.clone(), listener, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            state,
            stop: Some(stop),
            done,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn ws(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
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

/// A WebSocket handshake with these extra headers.
async fn ws_connect(
    url: &str,
    headers: &[(&'static str, &str)],
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    tungstenite::Error,
> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

fn refused_with(result: Result<impl Sized, tungstenite::Error>, status: u16) {
    match result {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), status),
        Err(other) => panic!("expected HTTP {status}, got {other}"),
        Ok(_) => panic!("expected HTTP {status}, the handshake succeeded"),
    }
}

#[tokio::test]
async fn websocket_and_sse_take_only_their_own_and_allowed_origins() {
    let server = Server::start(ServerConfig {
        http: HttpConfig {
            allow_origins: vec!["https://dash.example.com".into()],
            ..HttpConfig::default()
        },
        ..with_token()
    })
    .await;
    let id = {
        let response = client()
            .post(server.url("/v1/runs"))
            .bearer_auth("s3cret")
            .json(&json!({"pipeline": "slow", "events": "summary"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        response.json::<Value>().await.unwrap()["run_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let ws = server.ws(&format!("/v1/runs/{id}/ws?token=s3cret"));
    // A page on another site that knows the token still cannot stream.
    for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        refused_with(ws_connect(&ws, &[("origin", origin)]).await, 403);
    }
    let own = format!("http://{}", server.addr);
    for origin in [
        own.as_str(),
        "https://dash.example.com",
        "https://DASH.example.com:443",
    ] {
        let mut socket = ws_connect(&ws, &[("origin", origin)])
            .await
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
        let first = socket.next().await.unwrap().unwrap();
        assert!(first.to_text().unwrap().contains("run_started"), "{first}");
    }
    // Without an Origin (no browser) the token alone decides.
    assert!(ws_connect(&ws, &[]).await.is_ok());

    let sse = |origin: &str| {
        client()
            .get(server.url(&format!("/v1/runs/{id}/events?token=s3cret")))
            .header("origin", origin)
            .send()
    };
    let refused = sse("http://evil.example").await.unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden_origin");
    assert_eq!(sse("https://dash.example.com").await.unwrap().status(), 200);
    assert_eq!(sse(&own).await.unwrap().status(), 200);
    server.stop().await;
}

// ---- item 5: hosts, metrics, conflicts ----

#[tokio::test]
async fn h2c_requests_are_checked_on_their_authority() {
    let server = Server::start(ServerConfig::default()).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    // HTTP/2 without TLS: the address is `:authority`, with no Host header.
    let rebound = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("evil.example", server.addr)
        .build()
        .unwrap();
    for path in ["/v1/pipelines", "/metrics", "/readyz"] {
        let url = format!("http://evil.example:{}{path}", server.addr.port());
        let response = rebound.get(&url).send().await.unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status(), 403, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden_host");
    }
    let local = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = local.get(server.url("/v1/pipelines")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn metrics_and_readyz_follow_the_host_rule() {
    let state = AppState::new(ServerConfig::default(), None);
    for path in ["/metrics", "/readyz", "/v1/runs"] {
        let request = Request::builder()
            .uri(path)
            .header("host", "evil.example:7700")
            .body(Body::empty())
            .unwrap();
        let (status, body) = send(&state, request).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        // An absolute URI names its host too (and wins over `Host`).
        let request = Request::builder()
            .uri(format!("http://evil.example{path}"))
            .header("host", "localhost")
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            send(&state, request).await.0,
            StatusCode::FORBIDDEN,
            "{path}"
        );
        let request = Request::builder()
            .uri(path)
            .header("host", "localhost:7700")
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&state, request).await.0, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn metrics_need_the_token_unless_public() {
    let closed = AppState::new(with_token(), None);
    let (status, body) = send(&closed, get("/metrics")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let request = Request::builder()
        .uri("/metrics")
        .header("authorization", "Bearer s3cret")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&closed, request).await.0, StatusCode::OK);
    let public = AppState::new(
        ServerConfig {
            http: HttpConfig {
                public_metrics: true,
                ..HttpConfig::default()
            },
            ..with_token()
        },
        None,
    );
    assert_eq!(send(&public, get("/metrics")).await.0, StatusCode::OK);
    let (status, _) = send(&public, get("/v1/runs")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "only /metrics is public");
}

/// A server on `store` with the SLOW pipeline loaded.
fn slow_server(store: &Arc<braid_server::memory::MemoryStore>) -> AppState {
    let state = AppState::new(ServerConfig::default(), Some(store.clone()));
    state
        .preload(
            braid_core::Pipeline::from_yaml_str(SLOW).unwrap(),
            SLOW.to_owned(),
        )
        .unwrap();
    state
}

/// Starts a checkpointed SLOW run on `state` and waits until `store` has
/// it as running; its id and recorded owner.
async fn running_slow_run(
    state: &AppState,
    store: &braid_server::memory::MemoryStore,
) -> (String, String) {
    let (status, body) = send(
        state,
        post(
            "/v1/runs",
            Some("application/json"),
            r#"{"pipeline": "slow", "checkpoint": "agent"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["run_id"].as_str().unwrap().to_owned();
    let owner = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(run) = store.get_run(&id).await.unwrap()
                && run.summary.status == "running"
                && let Some(owner) = run.owner
            {
                return owner;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the run is recorded as running");
    (id, owner)
}

#[tokio::test]
async fn a_refused_resume_does_not_reveal_the_owner() {
    // What the answer reveals is the subject, not the database.
    let store = Arc::new(braid_server::memory::MemoryStore::new());
    let owner_state = slow_server(&store);
    let (id, owner) = running_slow_run(&owner_state, &store).await;

    // Another server on the same store is asked to resume it.
    let other = slow_server(&store);
    let (status, body) = send(
        &other,
        post(
            &format!("/v1/runs/{id}/resume"),
            Some("application/json"),
            "",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "cannot_resume");
    let text = body.to_string();
    assert!(text.contains("?force=true"), "{text}");
    let pid = format!(":{}", std::process::id());
    assert!(
        !text.contains(&owner) && !text.contains(&pid),
        "the 409 names the owner {owner}: {text}"
    );
    send(
        &owner_state,
        post(
            &format!("/v1/runs/{id}/cancel"),
            Some("application/json"),
            "",
        ),
    )
    .await;
    owner_state.shut_down().await;
}

#[tokio::test]
async fn a_forced_resume_never_runs_beside_a_live_owner() {
    let store = Arc::new(braid_server::memory::MemoryStore::new());
    let first = slow_server(&store);
    let (id, _) = running_slow_run(&first, &store).await;

    // As another braid on this host would have recorded it: a live process.
    let mut owner = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    store.set_owner(&id, &format!("{}:{}", host.trim(), owner.id()));

    let other = slow_server(&store);
    let resume = format!("/v1/runs/{id}/resume?force=true");
    let (status, body) = send(&other, post(&resume, Some("application/json"), "")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("live process"),
        "{body}"
    );

    // Once that process is gone, a forced resume takes the run over.
    owner.kill().unwrap();
    owner.wait().unwrap();
    let (status, body) = send(&other, post(&resume, Some("application/json"), "")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let cancel = format!("/v1/runs/{id}/cancel");
    for state in [&other, &first] {
        send(state, post(&cancel, Some("application/json"), "")).await;
        state.shut_down().await;
    }
}

// ---- item 5: what a connection may hold ----

/// A server with short timeouts (only the one a test is about is short).
async fn short(http: HttpConfig) -> Server {
    Server::start(ServerConfig {
        http,
        ..ServerConfig::default()
    })
    .await
}

/// Reads until the server closes the connection; `None` if it does not
/// within [`PATIENCE`].
async fn read_until_closed(stream: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn headers_must_arrive_within_the_header_timeout() {
    let server = short(HttpConfig {
        header_timeout: Duration::from_millis(200),
        ..HttpConfig::default()
    })
    .await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    // Half a request, and then nothing (a slowloris).
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut slow)
        .await
        .expect("the server closes a connection whose headers never end");
    assert!(!answer.contains("200 OK"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_but_requests_in_flight_are_not() {
    let server = short(HttpConfig {
        idle_timeout: Duration::from_millis(200),
        ..HttpConfig::default()
    })
    .await;
    // A keep-alive connection that asks once and then sits there.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut idle)
        .await
        .expect("the server closes an idle keep-alive connection");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");

    // A silent event stream (no event for several idle timeouts) is a
    // request in flight: it stays open until its run ends.
    let id = start_slow(&server.state).await;
    let stream = client()
        .get(server.url(&format!("/v1/runs/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (status, _) = send(
        &server.state,
        post(
            &format!("/v1/runs/{id}/cancel"),
            Some("application/json"),
            "",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let text = tokio::time::timeout(PATIENCE, stream.text())
        .await
        .expect("the stream ends with its run")
        .expect("the stream was not cut");
    assert!(text.contains("event: run_finished"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_and_a_websocket_holds_its_slot() {
    let server = short(HttpConfig {
        max_connections: 1,
        ..HttpConfig::default()
    })
    .await;
    let id = start_slow(&server.state).await;
    // The only slot: a WebSocket, long after its HTTP exchange is over.
    let mut socket = ws_connect(&server.ws(&format!("/v1/runs/{id}/ws")), &[])
        .await
        .unwrap();
    assert!(socket.next().await.unwrap().is_ok());
    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    let answer = read_until_closed(&mut extra)
        .await
        .expect("a connection beyond the cap is answered and closed");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");

    // Once the WebSocket closes, its slot is free again.
    socket.close(None).await.unwrap();
    drop(socket);
    // (One client, whose one connection then takes the slot.)
    let http = client();
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Ok(response) = http.get(server.url("/healthz")).send().await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a new connection is served once the slot is free");
    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("braid_server_connections_refused_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no refusal counter in:\n{metrics}"));
    assert!(refused >= 1.0);
    server.stop().await;
}

#[tokio::test]
async fn websocket_messages_over_a_few_kb_close_the_socket() {
    let server = short(HttpConfig::default()).await;
    let id = start_slow(&server.state).await;
    let mut socket = ws_connect(&server.ws(&format!("/v1/runs/{id}/ws")), &[])
        .await
        .unwrap();
    assert!(socket.next().await.unwrap().is_ok());
    // Small messages are taken (and ignored)...
    socket.send(Message::text("hello")).await.unwrap();
    // ...one over the limit ends the connection, while the run goes on.
    let big = "x".repeat(braid_server::WS_MAX_MESSAGE_BYTES * 16);
    let _ = socket.send(Message::text(big)).await;
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the server kept a socket that sent 64 KiB");
    assert_eq!(status_of(&server.state, &id).await, "running");
    server.stop().await;
}

#[tokio::test]
async fn a_websocket_client_that_answers_no_ping_is_dropped() {
    let server = short(HttpConfig {
        idle_timeout: Duration::from_secs(1),
        ..HttpConfig::default()
    })
    .await;
    let id = start_slow(&server.state).await;
    // A client that reads answers pings (tungstenite does it on read), so
    // it is kept however long its run is silent: here past the timeout.
    let mut live = ws_connect(&server.ws(&format!("/v1/runs/{id}/ws")), &[])
        .await
        .unwrap();
    let mut pings = 0;
    while pings < 4 {
        match tokio::time::timeout(PATIENCE, live.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(Message::Text(_)))) => {}
            other => panic!("a live client was dropped: {other:?}"),
        }
    }
    // One that completes the handshake and then reads nothing (so answers
    // nothing) is dropped.
    let mut dead = TcpStream::connect(server.addr).await.unwrap();
    dead.write_all(
        format!(
            "GET /v1/runs/{id}/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let answer = read_until_closed(&mut dead)
        .await
        .expect("a client that answers no ping is kept");
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    assert!(
        live.next().await.is_some(),
        "the live client is still served"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_request_body_that_stops_arriving_is_given_up() {
    let server = short(HttpConfig {
        idle_timeout: Duration::from_millis(200),
        ..HttpConfig::default()
    })
    .await;
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    // 1000 bytes announced, 16 sent, and then nothing.
    stalled
        .write_all(
            b"POST /v1/pipelines HTTP/1.1\r\nHost: localhost\r\n\
              content-type: application/yaml\r\ncontent-length: 1000\r\n\r\n\
              pipeline: stall\n",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut stalled)
        .await
        .expect("the server gives up on a body that stopped arriving");
    assert!(!answer.contains("201 Created"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off() {
    let server = short(HttpConfig {
        idle_timeout: Duration::from_millis(200),
        max_connections: 1,
        ..HttpConfig::default()
    })
    .await;
    // A pipeline whose source is big, asked for many times in one go by a
    // client that then reads nothing: the server's writes stall.
    let source = format!(
        "pipeline: big\n# {}\nagents:\n  a: {{ kind: sleep }}\n",
        "x".repeat(512 * 1024)
    );
    server
        .state
        .preload(
            braid_core::Pipeline::from_yaml_str(&source).unwrap(),
            source.clone(),
        )
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stuck = socket.connect(server.addr).await.unwrap();
    // 100 MiB of answers: far more than the sockets buffer.
    let request = "GET /v1/pipelines/big HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(200);
    stuck.write_all(request.as_bytes()).await.unwrap();
    // It holds the only connection slot until the server gives up on it;
    // then another client is served.
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Ok(response) = client().get(server.url("/healthz")).send().await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the slot of a client that stopped reading is never freed");
    drop(stuck);
    server.stop().await;
}

#[tokio::test]
async fn a_websocket_closes_once_its_run_has_ended_and_been_delivered() {
    let server = short(HttpConfig::default()).await;
    let (status, body) = send(
        &server.state,
        post(
            "/v1/runs",
            Some("application/json"),
            r#"{"pipeline": "seed", "events": "summary"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["run_id"].as_str().unwrap();
    let mut socket = ws_connect(&server.ws(&format!("/v1/runs/{id}/ws")), &[])
        .await
        .unwrap();
    let mut last = Value::Null;
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => last = serde_json::from_str(&text).unwrap(),
                Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return false,
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true), "the server closes the socket itself");
    assert_eq!(last["type"], "run_finished", "after the last event");
    assert!(
        matches!(
            tokio::time::timeout(PATIENCE, socket.next()).await,
            Ok(None | Some(Err(_)))
        ),
        "and the connection ends"
    );
    server.stop().await;
}
