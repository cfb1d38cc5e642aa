//! What the HTTP tests share: serving a stub on a free loopback port, and a
//! load scenario (a service that takes 5 ms per call, and `runs` concurrent
//! runs of a pipeline of `width` `http` agents calling it).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::routing::post;
use braid_core::{Pipeline, RunOptions};
use serde_json::{Value, json};

/// What the service saw.
#[derive(Debug, Default)]
pub(crate) struct Load {
    /// Calls being served now.
    pub(crate) now: usize,
    /// The most calls served at once.
    pub(crate) peak: usize,
    /// Calls served.
    pub(crate) requests: usize,
    /// Client addresses, one per TCP connection that carried a call.
    pub(crate) peers: HashSet<SocketAddr>,
}

/// Starts the service; returns its `host:port` and what it sees.
pub(crate) async fn slow_service() -> (String, Arc<Mutex<Load>>) {
    let load: Arc<Mutex<Load>> = Arc::default();
    let handler = |State(load): State<Arc<Mutex<Load>>>,
                   ConnectInfo(peer): ConnectInfo<SocketAddr>,
                   Json(body): Json<Value>| async move {
        {
            let mut load = load.lock().unwrap();
            load.now += 1;
            load.peak = load.peak.max(load.now);
            load.requests += 1;
            load.peers.insert(peer);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        load.lock().unwrap().now -= 1;
        // Each agent `aK` writes `fK`: answer with the field the caller declared.
        let agent = body["agent"].as_str().unwrap_or("a0");
        Json(json!({ format!("f{}", &agent[1..]): body["state"]["n"] }))
    };
    let app = axum::Router::new()
        .route("/agent", post(handler))
        .with_state(load.clone());
    (serve(app).await, load)
}

/// Serves `app` on 127.0.0.1 (handlers may take `ConnectInfo<SocketAddr>`);
/// returns its `host:port`.
pub(crate) async fn serve(app: axum::Router) -> String {
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
    host
}

/// Runs `runs` runs at once of a pipeline of `width` agents that each call
/// the service at `host`, and checks that every run completed.
pub(crate) async fn run_wide(host: &str, width: usize, runs: usize) {
    let mut yaml = String::from("pipeline: wide\ninputs: { n: { type: integer } }\nagents:\n");
    for i in 0..width {
        yaml.push_str(&format!(
            "  a{i}: {{ kind: http, url: 'http://{host}/agent', reads: [n], writes: [f{i}] }}\n"
        ));
    }
    let pipeline = Arc::new(
        Pipeline::from_yaml_str_with(&yaml, &braid_agents::kinds())
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let mut set = tokio::task::JoinSet::new();
    for n in 0..runs {
        let pipeline = pipeline.clone();
        set.spawn(async move {
            let input = pipeline.check_input(&json!({ "n": n })).unwrap();
            pipeline.run(input, RunOptions::default()).await
        });
    }
    while let Some(report) = set.join_next().await {
        let report = report.unwrap();
        assert!(report.status.is_success(), "{:?}", report.error);
    }
}
