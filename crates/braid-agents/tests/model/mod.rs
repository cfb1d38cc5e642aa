//! A scripted stand-in for an OpenAI-compatible model, shared by the
//! tests of `llm` agents and of their tools: each answer is decided by the
//! test from the call's number and request.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};

pub(crate) type Requests = Arc<Mutex<Vec<Value>>>;

/// A stub `/v1/chat/completions`; `answer(call number, request)` decides.
pub(crate) async fn stub<F>(answer: F) -> (String, Requests)
where
    F: Fn(usize, &Value) -> axum::response::Response + Clone + Send + Sync + 'static,
{
    let requests: Requests = Arc::default();
    let handler = move |State(requests): State<Requests>, Json(body): Json<Value>| {
        let answer = answer.clone();
        async move {
            let n = {
                let mut seen = requests.lock().unwrap();
                seen.push(body.clone());
                seen.len()
            };
            answer(n, &body)
        }
    };
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(handler))
        .with_state(requests.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (endpoint, requests)
}

pub(crate) fn completion(content: &str) -> axum::response::Response {
    Json(json!({
        "choices": [{"message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5}
    }))
    .into_response()
}

/// A model reply that calls tools: `(id, name, arguments as JSON text)`.
pub(crate) fn tool_calls(calls: &[(&str, &str, &str)]) -> axum::response::Response {
    let calls: Vec<Value> = calls
        .iter()
        .map(|(id, name, arguments)| {
            json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
        })
        .collect();
    Json(json!({
        "choices": [{"message": {"role": "assistant", "content": null, "tool_calls": calls}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2}
    }))
    .into_response()
}
