//! OTLP trace export (the `otlp` feature): `braid run` against a local
//! collector that records what it receives, as a user would point braid at
//! an OpenTelemetry Collector or Jaeger.
//!
//! Run with `cargo test -p braid-cli --features otlp --test otlp`.
#![cfg(feature = "otlp")]

use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use serde_json::Value;

/// A collector that keeps every span it is sent (OTLP/HTTP with JSON
/// bodies, so the test can read them).
async fn collector() -> (String, Arc<Mutex<Vec<Value>>>) {
    let spans: Arc<Mutex<Vec<Value>>> = Arc::default();
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            post(
                |State(spans): State<Arc<Mutex<Vec<Value>>>>, body: Bytes| async move {
                    let request: Value = serde_json::from_slice(&body).expect("an OTLP JSON body");
                    let mut spans = spans.lock().unwrap();
                    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
                        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                            for span in scope["spans"].as_array().into_iter().flatten() {
                                let mut span = span.clone();
                                span["resource"] = resource["resource"].clone();
                                spans.push(span);
                            }
                        }
                    }
                    ([("content-type", "application/json")], "{}")
                },
            ),
        )
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

/// `braid run FILE --output json` exporting to `endpoint`. The pipeline
/// reads one input, `request`.
async fn run(pipeline: &str, endpoint: &str) -> (Output, Value) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, pipeline).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_braid"));
    command
        .arg("run")
        .arg(&file)
        .args(["--output", "json", "--checkpoint", "none"])
        .args(["--input", r#"{"request": "cut spend"}"#])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_SDK_DISABLED")
        .env_remove("OTEL_TRACES_EXPORTER")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env(
            "BRAID_STORE",
            format!("sqlite://{}/otlp-tests.db", env!("CARGO_TARGET_TMPDIR")),
        );
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not a JSON report ({e}); stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, report)
}

/// An attribute of a span (or of a resource) as text (OTLP JSON wraps
/// values by type).
fn attribute(span: &Value, key: &str) -> Option<String> {
    let list = span["attributes"].as_array()?;
    let value = &list.iter().find(|a| a["key"] == key)?["value"];
    let inner = value.as_object()?.values().next()?;
    Some(match inner {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

fn is_error(span: &Value) -> bool {
    let code = &span["status"]["code"];
    code == 2 || code == "STATUS_CODE_ERROR"
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_exports_one_trace_with_a_span_per_agent() {
    let (endpoint, spans) = collector().await;
    let (output, report) = run(
        "pipeline: traced\n\
         inputs: { request: { type: string } }\n\
         agents:\n  \
           triage: { kind: sleep, ms: 5, reads: [request], writes: [route] }\n  \
           cost:   { kind: sleep, ms: 5, reads: [route], writes: [cost] }\n  \
           data:   { kind: sleep, ms: 5, reads: [route], writes: [data] }\n",
        &endpoint,
    )
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The exporter flushed before the process exited: nothing to wait for.
    let spans = spans.lock().unwrap().clone();
    let runs = named(&spans, "run");
    assert_eq!(runs.len(), 1, "one run span: {spans:#?}");
    let root = runs[0];
    assert_eq!(attribute(root, "pipeline").as_deref(), Some("traced"));
    assert_eq!(
        attribute(root, "run_id").as_deref(),
        report["run_id"].as_str(),
        "the span carries the run id the report shows"
    );
    assert_eq!(attribute(root, "status").as_deref(), Some("completed"));
    assert!(!is_error(root));
    assert_eq!(
        attribute(&root["resource"], "service.name").as_deref(),
        Some("braid")
    );

    let mut agents: Vec<String> = named(&spans, "agent")
        .into_iter()
        .map(|span| {
            assert_eq!(span["traceId"], root["traceId"], "one trace per run");
            assert_eq!(
                span["parentSpanId"], root["spanId"],
                "agents nest in the run"
            );
            assert_eq!(attribute(span, "attempt").as_deref(), Some("1"));
            attribute(span, "agent").unwrap()
        })
        .collect();
    agents.sort();
    assert_eq!(agents, ["cost", "data", "triage"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_error_spans_that_say_why() {
    let (endpoint, spans) = collector().await;
    let (output, report) = run(
        "pipeline: flaky\n\
         inputs: { request: { type: string } }\n\
         agents:\n  \
           broken: { kind: command, run: [sh, -c, 'echo no luck >&2; exit 3'], reads: [request], writes: [x], retries: 1, backoff: 1ms }\n",
        &endpoint,
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "the run fails");
    assert_eq!(report["status"], "failed");

    let spans = spans.lock().unwrap().clone();
    let run = named(&spans, "run")[0];
    assert!(is_error(run), "{run:#}");
    assert_eq!(attribute(run, "status").as_deref(), Some("failed"));
    let attempts = named(&spans, "agent");
    let mut numbers: Vec<String> = attempts
        .iter()
        .map(|span| {
            assert!(is_error(span), "{span:#}");
            let error = attribute(span, "error").unwrap_or_default();
            assert!(error.contains("no luck"), "the agent's stderr: {error}");
            attribute(span, "attempt").unwrap()
        })
        .collect();
    numbers.sort();
    assert_eq!(numbers, ["1", "2"], "one span per attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_does_not_fail_the_run() {
    // A port nothing listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (output, report) = run(
        "pipeline: unobserved\n\
         inputs: { request: { type: string } }\n\
         agents:\n  \
           only: { kind: sleep, ms: 1, reads: [request], writes: [done] }\n",
        &format!("http://127.0.0.1:{port}"),
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(report["status"], "completed");
    assert_eq!(report["state"]["done"], true);
    assert!(
        stderr.contains("ExportError"),
        "the export failure is reported on stderr: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_agents_carry_the_trace_to_the_services_they_call() {
    let (endpoint, spans) = collector().await;
    // A service that answers and keeps the `traceparent` it was sent.
    let seen: Arc<Mutex<Option<String>>> = Arc::default();
    let service =
        axum::Router::new()
            .route(
                "/score",
                post(
                    |State(seen): State<Arc<Mutex<Option<String>>>>,
                     headers: axum::http::HeaderMap| async move {
                        *seen.lock().unwrap() = headers
                            .get("traceparent")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        axum::Json(serde_json::json!({ "score": 7 }))
                    },
                ),
            )
            .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/score", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });

    let (output, report) = run(
        &format!(
            "pipeline: traced-http\n\
             inputs: {{ request: {{ type: string }} }}\n\
             agents:\n  \
               score: {{ kind: http, url: '{url}', reads: [request], writes: [score] }}\n"
        ),
        &endpoint,
    )
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(report["state"]["score"], 7);

    // W3C: version-traceid-parentid-flags, the parent being the agent's span.
    let header = seen.lock().unwrap().clone().expect("a traceparent header");
    let parts: Vec<&str> = header.split('-').collect();
    assert_eq!(parts.len(), 4, "{header}");
    let spans = spans.lock().unwrap().clone();
    let agent = named(&spans, "agent")[0];
    assert_eq!(parts[1], agent["traceId"].as_str().unwrap(), "{header}");
    assert_eq!(parts[2], agent["spanId"].as_str().unwrap(), "{header}");
}
