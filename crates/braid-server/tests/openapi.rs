//! `GET /openapi.json`: served without the token, and the same document
//! `braid openapi` prints.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use braid_server::{AppState, ServerConfig, app, openapi_document};
use serde_json::Value;
use tower::ServiceExt;

async fn get(state: &AppState, uri: &str) -> (StatusCode, Value) {
    let request = Request::builder().uri(uri).body(Body::empty()).unwrap();
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

#[tokio::test]
async fn the_document_is_served_without_the_token_the_api_needs() {
    let state = AppState::new(
        ServerConfig {
            token: Some("s3cret".into()),
            ..ServerConfig::default()
        },
        None,
    );
    let (status, document) = get(&state, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&document, openapi_document());
    assert_eq!(document["openapi"], "3.1.0");
    // The routes it describes as needing the token do need it.
    let (status, body) = get(&state, "/v1/pipelines").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    let operation = &document["paths"]["/v1/pipelines"]["get"];
    assert_eq!(operation["security"][0]["bearer"], serde_json::json!([]));
    assert!(operation["responses"]["401"].is_object());
}
