//! What the console and operators read through the API (issue 13): a run
//! started without events shows its progress while it runs, runs say who
//! started them, and a stored run keeps its agents' logs, failed attempts
//! and state after the server that ran it is gone.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use braid_server::{AppState, RunStore, ServerConfig, app};
use serde_json::{Value, json};
use tower::ServiceExt;

async fn call(
    state: &AppState,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
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

async fn register(state: &AppState, yaml: &str) {
    let request = Request::builder()
        .method("POST")
        .uri("/v1/pipelines")
        .header("content-type", "application/yaml")
        .body(Body::from(yaml.to_owned()))
        .unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

const SLOW: &str = "pipeline: slow
agents:
  quick: { kind: sleep, ms: 1, writes: [q], value: 7 }
  slow:  { kind: sleep, ms: 60000, reads: [q], writes: [s] }
";

#[tokio::test]
async fn a_run_without_events_shows_its_progress_while_it_runs() {
    let state = AppState::new(ServerConfig::default(), None);
    register(&state, SLOW).await;
    let (status, started) = call(
        &state,
        "POST",
        "/v1/runs",
        Some(json!({"pipeline": "slow"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["run_id"].as_str().unwrap().to_owned();

    // `quick` completes at once; `slow` then runs for a minute.
    let mut seen = Value::Null;
    for _ in 0..200 {
        let (status, run) = call(&state, "GET", &format!("/v1/runs/{id}"), None).await;
        assert_eq!(status, StatusCode::OK);
        if run["agents"]["slow"]["status"] == "running" {
            seen = run;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen["status"], "running", "{seen}");
    assert_eq!(seen["events"], "off", "no event was built for it");
    assert_eq!(seen["agents"]["quick"]["status"], "completed", "{seen}");
    assert!(seen["agents"]["quick"]["duration_ms"].is_number(), "{seen}");
    assert_eq!(seen["state"]["q"], 7, "{seen}");
    assert_eq!(seen["started_by"], "api");
    assert!(seen["makespan_ms"].as_f64().unwrap() > 0.0);

    let (status, _) = call(&state, "POST", &format!("/v1/runs/{id}/cancel"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_client_names_itself_as_who_started_a_run_within_bounds() {
    let state = AppState::new(ServerConfig::default(), None);
    register(
        &state,
        "pipeline: quick\nagents:\n  a: { kind: sleep, ms: 1, writes: [x] }\n",
    )
    .await;
    let (status, report) = call(
        &state,
        "POST",
        "/v1/runs?wait=true",
        Some(json!({"pipeline": "quick", "started_by": "nightly-report"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let id = report["run_id"].as_str().unwrap();
    let (_, run) = call(&state, "GET", &format!("/v1/runs/{id}"), None).await;
    assert_eq!(run["status"], "completed");

    for bad in ["x".repeat(129), "two\nlines".to_owned()] {
        let (status, error) = call(
            &state,
            "POST",
            "/v1/runs",
            Some(json!({"pipeline": "quick", "started_by": bad})),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("started_by"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_stored_run_keeps_logs_failed_attempts_state_and_who_started_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("runs.db").display());
    let store: Arc<dyn RunStore> = Arc::new(
        braid_store::Store::connect(&url, &Default::default())
            .await
            .unwrap(),
    );
    let flaky = format!(
        "pipeline: talker
agents:
  talk:
    kind: command
    run: [sh, -c, 'echo hello from talk >&2; echo \"{{\\\"said\\\": 1}}\"']
    writes: [said]
  flaky:
    kind: command
    run: [sh, -c, 'if [ -e {marker} ]; then echo \"{{\\\"ok\\\": 2}}\"; else touch {marker}; echo not yet >&2; exit 3; fi']
    retries: 1
    backoff: 1ms
    reads: [said]
    writes: [ok]
",
        marker = dir.path().join("tried").display()
    );
    let config = ServerConfig {
        allow_command_agents: true,
        ..ServerConfig::default()
    };
    let state = AppState::new(config.clone(), Some(store.clone()));
    register(&state, &flaky).await;
    let (status, report) = call(
        &state,
        "POST",
        "/v1/runs?wait=true",
        Some(json!({"pipeline": "talker", "started_by": "ops-script"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["agents"]["talk"]["logs"], json!(["hello from talk"]));
    let id = report["run_id"].as_str().unwrap().to_owned();
    store.flush().await.unwrap();

    // Another server on the same store (this one forgot the run): all of
    // it comes from the database.
    let later = AppState::new(config, Some(store));
    register(&later, &flaky).await;
    let (status, run) = call(&later, "GET", &format!("/v1/runs/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["started_by"], "ops-script");
    assert_eq!(run["agents"]["talk"]["logs"], json!(["hello from talk"]));
    assert_eq!(run["agents"]["flaky"]["logs"], json!(["not yet"]));
    let failures = run["agents"]["flaky"]["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{run}");
    assert_eq!(failures[0]["attempt"], 1);
    assert!(failures[0]["error"].as_str().unwrap().contains("not yet"));
    assert_eq!(run["state"], json!({"said": 1, "ok": 2}));
    let (_, listed) = call(&later, "GET", "/v1/runs", None).await;
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == id.as_str())
        .unwrap();
    assert_eq!(entry["started_by"], "ops-script");
}
