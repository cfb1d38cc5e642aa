//! What the console (the web view) asks of the API: filtered, paged run
//! listings over the runs in memory and the store's, pipelines described
//! with their input schemas and source, and the vendored scripts.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use braid_server::{AppState, ServerConfig, app};
use braid_store::SyntheticRuns;
use serde_json::{Value, json};
use tower::ServiceExt;

const SEED: &str = "pipeline: seed
agents:
  triage: { kind: sleep, ms: 1, writes: [t] }
  report: { kind: sleep, ms: 1, reads: [t], writes: [r] }
";

const FAILING: &str = "pipeline: failing
inputs:
  topic: { type: string, default: x }
  depth: { type: integer, enum: [1, 2, 3], default: 1 }
agents:
  boom: { kind: command, run: [sh, -c, 'echo boom >&2; exit 2'], reads: [topic], writes: [b] }
";

/// The status, the `x-next-cursor` header and the JSON body.
async fn call(
    state: &AppState,
    method: &str,
    uri: &str,
    body: Option<String>,
) -> (StatusCode, Option<String>, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let next = response
        .headers()
        .get("x-next-cursor")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, next, value)
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_owned())
        .collect()
}

/// A server on a fresh SQLite store holding 4 old failed runs of `seed`
/// (store only), with 3 completed and 2 failed runs in memory.
async fn server() -> (tempfile::TempDir, AppState, Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let store = braid_store::Store::connect(&url, &Default::default())
        .await
        .unwrap();
    let stored = store
        .insert_synthetic_runs(&SyntheticRuns {
            pipeline: "seed".to_owned(),
            count: 4,
            agents: 0,
            status: "failed".to_owned(),
            owner: None,
            created_at_ms: 1_000,
        })
        .await
        .unwrap();
    let config = ServerConfig {
        allow_command_agents: true,
        ..ServerConfig::default()
    };
    let state = AppState::new(config, Some(Arc::new(store)));
    for yaml in [SEED, FAILING] {
        let (status, _, body) = call(&state, "POST", "/v1/pipelines", Some(yaml.into())).await;
        assert!(status.is_success(), "{body}");
    }
    let mut live = Vec::new();
    for pipeline in ["seed", "seed", "failing", "seed", "failing"] {
        let (status, _, report) = call(
            &state,
            "POST",
            "/v1/runs?wait=true",
            Some(json!({"pipeline": pipeline}).to_string()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{report}");
        live.push(report["run_id"].as_str().unwrap().to_owned());
        // Distinct creation times, so the order below is the order started.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    (dir, state, stored, live)
}

#[tokio::test]
async fn runs_are_listed_newest_first_filtered_and_paged() {
    let (_dir, state, stored, live) = server().await;
    let newest_first: Vec<String> = live
        .iter()
        .rev()
        .chain(stored.iter().rev())
        .cloned()
        .collect();
    let (status, next, all) = call(&state, "GET", "/v1/runs", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&all), newest_first);
    assert_eq!(next, None, "one page holds them all");
    assert!(all[0]["created_at_ms"].as_i64().unwrap() > 1_000_000);

    // The newest failed run, and a cursor to the next.
    let (status, next, one) = call(&state, "GET", "/v1/runs?status=failed&limit=1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&one), vec![live[4].clone()]);
    assert_eq!(one[0]["status"], "failed");
    let next = next.expect("more failed runs follow");
    let (_, _, after) = call(
        &state,
        "GET",
        &format!("/v1/runs?status=failed&limit=2&before={next}"),
        None,
    )
    .await;
    assert_eq!(ids(&after), vec![live[2].clone(), stored[3].clone()]);

    // Pages of 2 through everything: each run once, in order, live and stored.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let uri = match &cursor {
            Some(c) => format!("/v1/runs?limit=2&before={c}"),
            None => "/v1/runs?limit=2".to_owned(),
        };
        let (status, next, page) = call(&state, "GET", &uri, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(ids(&page).len() <= 2);
        seen.extend(ids(&page));
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);

    // By pipeline, by time and by id prefix.
    let (_, _, failing) = call(&state, "GET", "/v1/runs?pipeline=failing", None).await;
    assert_eq!(ids(&failing), vec![live[4].clone(), live[2].clone()]);
    let (_, _, old) = call(&state, "GET", "/v1/runs?since=1001&until=1003", None).await;
    assert_eq!(ids(&old), vec![stored[2].clone(), stored[1].clone()]);
    let since = all[1]["created_at_ms"].as_i64().unwrap();
    let (_, _, recent) = call(&state, "GET", &format!("/v1/runs?since={since}"), None).await;
    assert_eq!(ids(&recent), vec![live[4].clone(), live[3].clone()]);
    let prefix = &live[3][..live[3].len() - 4];
    let (_, _, found) = call(&state, "GET", &format!("/v1/runs?prefix={prefix}"), None).await;
    assert!(ids(&found).contains(&live[3]), "{found}");
    assert!(
        ids(&found).iter().all(|id| id.starts_with(prefix)),
        "{found}"
    );
    let (_, _, synthetic) = call(&state, "GET", "/v1/runs?prefix=synthetic-", None).await;
    assert_eq!(
        ids(&synthetic).into_iter().collect::<HashSet<_>>(),
        stored.iter().cloned().collect::<HashSet<_>>()
    );
    let (_, _, none) = call(&state, "GET", "/v1/runs?status=waiting", None).await;
    assert_eq!(none, json!([]));
}

#[tokio::test]
async fn bad_listing_queries_are_refused_with_what_is_valid() {
    let (_dir, state, _, _) = server().await;
    let (status, _, body) = call(&state, "GET", "/v1/runs?status=done", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_status");
    let message = body["error"]["message"].as_str().unwrap();
    for valid in [
        "running",
        "completed",
        "failed",
        "cancelled",
        "interrupted",
        "waiting",
    ] {
        assert!(message.contains(valid), "{message}");
    }
    assert!(message.contains("`done`"), "{message}");
    for limit in ["0", "501", "-1"] {
        let (status, _, body) = call(&state, "GET", &format!("/v1/runs?limit={limit}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "limit={limit}");
        assert_eq!(body["error"]["code"], "invalid_limit");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("from 1 to 500")
        );
    }
    let (status, _, list) = call(&state, "GET", "/v1/runs?limit=500", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 9);
    for cursor in ["nope", "12:", "x:abc"] {
        let (status, _, body) =
            call(&state, "GET", &format!("/v1/runs?before={cursor}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "before={cursor}");
        assert_eq!(body["error"]["code"], "invalid_cursor");
    }
    let (status, _, body) = call(&state, "GET", "/v1/runs?colour=red", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, _) = call(&state, "GET", "/v1/runs?since=yesterday", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_pipeline_is_described_with_its_inputs_and_source() {
    let (_dir, state, _, _) = server().await;
    let (status, _, body) = call(&state, "GET", "/v1/pipelines/failing", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["source"], FAILING);
    assert_eq!(
        body["inputs"],
        json!({
            "topic": {"type": "string", "default": "x"},
            "depth": {"type": "integer", "enum": [1, 2, 3], "default": 1},
        })
    );
    let keys: Vec<&String> = body["inputs"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["topic", "depth"], "in declaration order");
    let (_, _, seed) = call(&state, "GET", "/v1/pipelines/seed", None).await;
    assert_eq!(seed["inputs"], json!({}));
    let writes = &seed["explain"]["agents"][0]["writes"];
    assert_eq!(*writes, json!(["t"]));
}

#[tokio::test]
async fn the_vendored_scripts_are_served_with_a_long_cache() {
    let state = AppState::new(ServerConfig::default(), None);
    for (path, needle) in [
        ("/assets/dagre.min.js", "graphlib"),
        ("/assets/markdown-it.min.js", "markdown-it"),
    ] {
        let request = Request::builder().uri(path).body(Body::empty()).unwrap();
        let response = app(state.clone()).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/javascript")
        );
        assert!(
            headers["cache-control"]
                .to_str()
                .unwrap()
                .contains("max-age=31536000")
        );
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains(needle), "{path}");
    }
    let request = Request::builder().uri("/").body(Body::empty()).unwrap();
    let response = app(state).oneshot(request).await.unwrap();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let page = String::from_utf8_lossy(&bytes);
    assert!(page.contains("/assets/dagre.min.js"));
    assert!(
        !page.contains("https://"),
        "the page loads nothing from elsewhere"
    );
}

#[tokio::test]
async fn runs_only_in_a_memory_store_are_filtered_and_paged_too() {
    let store = braid_server::memory::MemoryStore::new();
    let config = || ServerConfig {
        allow_command_agents: true,
        ..ServerConfig::default()
    };
    let first = AppState::new(config(), Some(Arc::new(store.clone())));
    for yaml in [SEED, FAILING] {
        call(&first, "POST", "/v1/pipelines", Some(yaml.into())).await;
    }
    let mut started = Vec::new();
    for pipeline in ["seed", "failing", "seed", "seed"] {
        let (_, _, report) = call(
            &first,
            "POST",
            "/v1/runs?wait=true",
            Some(json!({"pipeline": pipeline}).to_string()),
        )
        .await;
        started.push(report["run_id"].as_str().unwrap().to_owned());
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    // A second server on the same store: nothing in memory, all stored.
    let second = AppState::new(config(), Some(Arc::new(store)));
    let (_, next, page) = call(&second, "GET", "/v1/runs?status=completed&limit=2", None).await;
    assert_eq!(ids(&page), vec![started[3].clone(), started[2].clone()]);
    let next = next.expect("a third completed run follows");
    let (_, last, rest) = call(
        &second,
        "GET",
        &format!("/v1/runs?status=completed&limit=2&before={next}"),
        None,
    )
    .await;
    assert_eq!(ids(&rest), vec![started[0].clone()]);
    assert_eq!(last, None);
    let (_, _, failed) = call(&second, "GET", "/v1/runs?pipeline=failing", None).await;
    assert_eq!(ids(&failed), vec![started[1].clone()]);
    assert_eq!(failed[0]["status"], "failed");
}
