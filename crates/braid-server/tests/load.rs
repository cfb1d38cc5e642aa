//! Load that must hold: many subscribers on one run, many runs at once.
//! Bounded in count and time; everything stays on 127.0.0.1.

use std::time::Duration;

use braid_server::{AppState, ServerConfig};
use futures_util::StreamExt;
use serde_json::{Value, json};

const SEED: &str = "pipeline: seed
agents:
  triage:       { kind: sleep, ms: 300, writes: [triage_result] }
  data:         { kind: sleep, ms: 50, reads: [triage_result], writes: [data_analysis] }
  metrics:      { kind: sleep, ms: 50, reads: [triage_result], writes: [metrics_result] }
  cost:         { kind: sleep, ms: 50, reads: [triage_result], writes: [cost_result] }
  optimization: { kind: sleep, ms: 50, reads: [data_analysis, metrics_result, cost_result], writes: [plan] }
  report:       { kind: sleep, ms: 50, reads: [plan], writes: [report] }
";

/// run_started, 6 × (agent_started, agent_completed), run_finished.
const LIFECYCLE_EVENTS: usize = 14;

async fn server() -> (String, tokio::sync::oneshot::Sender<()>) {
    let state = AppState::new(ServerConfig::default(), None);
    state
        .preload(
            braid_core::Pipeline::from_yaml_str(SEED).unwrap(),
            SEED.to_owned(),
        )
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(braid_server::serve(state, listener, async move {
        let _ = stopped.await;
    }));
    (format!("{addr}"), stop)
}

async fn start(client: &reqwest::Client, addr: &str) -> String {
    let response = client
        .post(format!("http://{addr}/v1/runs"))
        .json(&json!({"pipeline": "seed", "events": "summary"}))
        .send()
        .await
        .unwrap();
    response.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Every event of a run over WebSocket: (seq, type).
async fn ws_events(addr: &str, run: &str) -> Vec<(u64, String)> {
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/runs/{run}/ws"))
        .await
        .unwrap();
    let mut events = Vec::new();
    while let Some(Ok(message)) = socket.next().await {
        if message.is_close() {
            break;
        }
        let event: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
        events.push((
            event["seq"].as_u64().unwrap(),
            event["type"].as_str().unwrap().to_owned(),
        ));
    }
    events
}

/// Every event of a run over SSE: (seq, type).
async fn sse_events(client: &reqwest::Client, addr: &str, run: &str) -> Vec<(u64, String)> {
    let body = client
        .get(format!("http://{addr}/v1/runs/{run}/events"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.split("\n\n")
        .filter_map(|block| {
            let id = block.lines().find_map(|l| l.strip_prefix("id: "))?;
            let kind = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            Some((id.parse().unwrap(), kind.to_owned()))
        })
        .collect()
}

fn assert_complete(events: &[(u64, String)]) {
    let seqs: Vec<u64> = events.iter().map(|e| e.0).collect();
    assert_eq!(
        seqs,
        (1..=LIFECYCLE_EVENTS as u64).collect::<Vec<_>>(),
        "{events:?}"
    );
    assert_eq!(events[0].1, "run_started");
    assert_eq!(events.last().unwrap().1, "run_finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_on_one_run_each_get_every_event_in_order() {
    let (addr, stop) = server().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let run = start(&client, &addr).await;
    let mut subscribers = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let (addr, run, client) = (addr.clone(), run.clone(), client.clone());
        subscribers.spawn(async move {
            if i % 2 == 0 {
                ws_events(&addr, &run).await
            } else {
                sse_events(&client, &addr, &run).await
            }
        });
    }
    let finished = tokio::time::timeout(Duration::from_secs(120), async {
        let mut count = 0;
        while let Some(events) = subscribers.join_next().await {
            assert_complete(&events.unwrap());
            count += 1;
        }
        count
    })
    .await
    .expect("subscribers did not finish in time");
    assert_eq!(finished, 1000);
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_runs_at_once_each_with_a_subscriber() {
    let (addr, stop) = server().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let mut runs = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let (addr, client) = (addr.clone(), client.clone());
        runs.spawn(async move {
            let run = start(&client, &addr).await;
            ws_events(&addr, &run).await
        });
    }
    let finished = tokio::time::timeout(Duration::from_secs(120), async {
        let mut count = 0;
        while let Some(events) = runs.join_next().await {
            assert_complete(&events.unwrap());
            count += 1;
        }
        count
    })
    .await
    .expect("runs did not finish in time");
    assert_eq!(finished, 1000);
    let _ = stop.send(());
}
