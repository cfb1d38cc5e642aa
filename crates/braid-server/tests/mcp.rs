//! `/mcp` (braid as an MCP server over streamable HTTP) through the router
//! with `oneshot`: only with `ServerConfig::mcp`, behind the token, bounded
//! bodies, and the pipelines listed as tools. A real MCP client (the Python
//! SDK) drives it end to end in `tests/mcp_client` (`scripts/mcp-client-test.sh`).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use braid_server::{AppState, ServerConfig, app};
use tower::ServiceExt;

const GREET: &str = "pipeline: greet
description: Greets someone.
inputs: { name: { type: string } }
agents:
  hello: { kind: sleep, ms: 1, reads: [name], writes: [greeting], value: hi }
";

fn state(config: ServerConfig) -> AppState {
    let state = AppState::new(config, None);
    let pipeline = braid_core::Pipeline::from_yaml_str(GREET).unwrap();
    state.preload(pipeline, GREET.to_owned()).unwrap();
    state
}

/// POSTs one JSON-RPC message to `/mcp`: the status and the body's text.
async fn post(state: &AppState, token: Option<&str>, body: String) -> (StatusCode, String) {
    let mut request = Request::builder()
        .method("POST")
        .uri("/mcp")
        .header("host", "127.0.0.1:7700")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = app(state.clone())
        .oneshot(request.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn initialize() -> String {
    serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}
    })
    .to_string()
}

#[tokio::test]
async fn mcp_is_served_only_when_asked() {
    let off = state(ServerConfig::default());
    let (status, _) = post(&off, None, initialize()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let on = state(ServerConfig {
        mcp: true,
        ..ServerConfig::default()
    });
    let (status, body) = post(&on, None, initialize()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(r#""name":"braid""#), "{body}");
}

#[tokio::test]
async fn the_token_guards_mcp_and_the_tools_are_the_pipelines() {
    let guarded = state(ServerConfig {
        mcp: true,
        token: Some("s3cret".to_owned()),
        ..ServerConfig::default()
    });
    let (status, body) = post(&guarded, None, initialize()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = post(&guarded, Some("wrong"), initialize()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let list = serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string();
    let (status, body) = post(&guarded, Some("s3cret"), list).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(r#""name":"greet""#), "{body}");
    assert!(
        body.contains(r#""description":"Greets someone.""#),
        "{body}"
    );
    assert!(body.contains(r#""required":["name"]"#), "{body}");
}

#[tokio::test]
async fn a_body_larger_than_the_limit_is_refused() {
    let small = state(ServerConfig {
        mcp: true,
        max_body_bytes: 4 * 1024,
        ..ServerConfig::default()
    });
    let padding = "x".repeat(12 * 1024);
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"greet","arguments":{{"name":"{padding}"}}}}}}"#
    );
    let (status, _) = post(&small, None, big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}
