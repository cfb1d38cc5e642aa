//! The HTTP client's metrics, as `/metrics` and `--metrics-file` show them.
//! A test binary of its own: the metrics recorder is process-wide.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::routing::post;
use braid_core::{Pipeline, RunOptions};
use serde_json::{Value, json};

/// The value of the sample `name` (with its labels, if any) in Prometheus
/// text, or 0 if absent.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_connections_and_in_flight_are_counted() {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();

    // A service that takes 5 ms per call and notes each caller's port.
    let peers: Arc<Mutex<HashSet<SocketAddr>>> = Arc::default();
    let handler = |State(peers): State<Arc<Mutex<HashSet<SocketAddr>>>>,
                   ConnectInfo(peer): ConnectInfo<SocketAddr>,
                   Json(body): Json<Value>| async move {
        peers.lock().unwrap().insert(peer);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let agent = body["agent"].as_str().unwrap_or("a0");
        Json(json!({ format!("f{}", &agent[1..]): body["state"]["n"] }))
    };
    let app = axum::Router::new()
        .route("/agent", post(handler))
        .with_state(peers.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });

    let mut yaml = String::from("pipeline: counted\ninputs: { n: { type: integer } }\nagents:\n");
    for i in 0..10 {
        yaml.push_str(&format!(
            "  a{i}: {{ kind: http, url: 'http://{host}/agent', reads: [n], writes: [f{i}] }}\n"
        ));
    }
    let pipeline = Arc::new(
        Pipeline::from_yaml_str_with(&yaml, &braid_agents::kinds())
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let mut runs = tokio::task::JoinSet::new();
    for n in 0..10 {
        let pipeline = pipeline.clone();
        runs.spawn(async move {
            let input = pipeline.check_input(&json!({ "n": n })).unwrap();
            pipeline.run(input, RunOptions::default()).await
        });
    }
    while let Some(report) = runs.join_next().await {
        let report = report.unwrap();
        assert!(report.status.is_success(), "{:?}", report.error);
    }

    let text = metrics.render();
    assert_eq!(sample(&text, "braid_http_requests_total"), 100.0, "{text}");
    let opened = sample(&text, "braid_http_connections_opened_total");
    let used = peers.lock().unwrap().len() as f64;
    assert!(
        opened >= used,
        "{opened} connections counted, the service saw {used}: {text}"
    );
    assert!(opened * 3.0 <= 100.0, "{opened} connections for 100 calls");
    let in_flight = format!("braid_http_in_flight{{host=\"{host}\"}}");
    assert!(text.contains(&in_flight), "{text}");
    assert_eq!(
        sample(&text, &in_flight),
        0.0,
        "every slot released: {text}"
    );
}
