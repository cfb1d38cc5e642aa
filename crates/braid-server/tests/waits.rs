//! People in the loop and forks over HTTP, on a real SQLite store: a run
//! that waits, answered through the API (in flight and after it ended
//! waiting); bad and second answers refused; a timeout applied by a server
//! that restarted; a fork that re-runs only what is downstream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_server::{AppState, RunStore, ServerConfig};
use serde_json::{Value, json};
use tokio::sync::oneshot;

struct Server {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(store: Arc<dyn RunStore>, pipeline: &str) -> Self {
        let state = AppState::new(
            ServerConfig {
                allow_command_agents: true,
                ..Default::default()
            },
            Some(store),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(braid_server::serve(state, listener, async move {
            let _ = stopped.await;
        }));
        let server = Self {
            base,
            stop: Some(stop),
            done,
        };
        let (status, body) = server.post("/v1/pipelines", pipeline.to_owned()).await;
        assert_eq!(status, 201, "{body}");
        server
    }

    async fn post(&self, path: &str, body: String) -> (u16, Value) {
        let response = client()
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        client()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Polls the run until its status is `status`.
    async fn until_status(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let run = self.get(&format!("/v1/runs/{id}")).await;
            if run["status"] == status {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run never became {status}: {run}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.done.await.unwrap().unwrap();
    }
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn sqlite_store(dir: &tempfile::TempDir) -> Arc<braid_store::Store> {
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    Arc::new(
        braid_store::Store::connect(&url, &Default::default())
            .await
            .unwrap(),
    )
}

/// `approve` waits; `apply` needs its answer and counts its calls in a
/// file; `other` does not need it and takes `other_ms`.
fn approval(dir: &std::path::Path, other_ms: u64, timeout: &str) -> String {
    let calls = dir.join("apply-calls");
    format!(
        r#"pipeline: approval
inputs: {{ plan: {{ type: string }} }}
agents:
  approve:
    kind: input
    prompt: Apply these changes?
    reads: [plan]
    writes: [approval]
    schema: {{ type: object, properties: {{ approved: {{ type: boolean }} }}, required: [approved] }}
{timeout}
  apply:
    kind: command
    run: [sh, -c, 'echo x >> {calls}; cat >/dev/null; echo "{{\"applied\": true}}"']
    reads: [approval]
    writes: [applied]
  other: {{ kind: sleep, ms: {other_ms}, value: 7, reads: [plan], writes: [numbers] }}
"#,
        calls = calls.display()
    )
}

fn calls(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join("apply-calls"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

async fn start(server: &Server) -> String {
    let (status, body) = server
        .post(
            "/v1/runs",
            json!({"pipeline": "approval", "input": {"plan": "p"}, "events": "summary"})
                .to_string(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["run_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_waiting_run_is_answered_over_the_api_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let server = Server::start(store.clone(), &approval(dir.path(), 0, "")).await;
    let id = start(&server).await;
    let run = server.until_status(&id, "waiting").await;
    assert_eq!(run["agents"]["other"]["status"], "completed", "{run}");
    assert_eq!(run["agents"]["approve"]["status"], "waiting");
    // The stored run says so too (a server restart would find it).
    assert_eq!(
        store.get_run(&id).await.unwrap().unwrap().summary.status,
        "waiting"
    );

    // A bad answer: 422 with the schema's message; nothing recorded.
    let (status, body) = server
        .post(
            &format!("/v1/runs/{id}/agents/approve/answer"),
            json!({"value": {"approved": "yes"}}).to_string(),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("boolean"), "{body}");
    // Not an input agent.
    let (status, _) = server
        .post(
            &format!("/v1/runs/{id}/agents/apply/answer"),
            json!({"value": true}).to_string(),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(calls(dir.path()), 0);

    let (status, report) = server
        .post(
            &format!("/v1/runs/{id}/agents/approve/answer?wait=true"),
            json!({"value": {"approved": true}}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(report["state"]["applied"], json!(true));
    assert_eq!(report["agents"]["other"]["resumed"], true, "not run again");
    assert_eq!(calls(dir.path()), 1);

    // A second answer is refused.
    let (status, body) = server
        .post(
            &format!("/v1/runs/{id}/agents/approve/answer"),
            json!({"value": {"approved": false}}).to_string(),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(calls(dir.path()), 1);
    server.stop().await;
}

#[tokio::test]
async fn an_answer_reaches_a_run_still_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    // `other` keeps the run in flight for 3 s.
    let server = Server::start(store, &approval(dir.path(), 3000, "")).await;
    let id = start(&server).await;
    // Until `approve` waits, an answer is refused as not waiting (409).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        let (status, body) = server
            .post(
                &format!("/v1/runs/{id}/agents/approve/answer"),
                json!({"value": {"approved": true}}).to_string(),
            )
            .await;
        if status != 409 {
            break (status, body);
        }
        assert!(Instant::now() < deadline, "never waited: {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(status, 202, "{body}");
    // `apply` ran while `other` was still going: before the run ended.
    let deadline = Instant::now() + Duration::from_secs(2);
    while calls(dir.path()) == 0 {
        assert!(Instant::now() < deadline, "`apply` did not start at once");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let run = server.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(run["status"], "running", "{run}");
    let run = server.until_status(&id, "completed").await;
    assert_eq!(run["state"]["applied"], json!(true));
    server.stop().await;
}

#[tokio::test]
async fn a_timeout_is_applied_by_a_server_that_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let pipeline = approval(
        dir.path(),
        0,
        "    timeout: 1500ms\n    default: { approved: true }",
    );
    let first = Server::start(store.clone(), &pipeline).await;
    let id = start(&first).await;
    first.until_status(&id, "waiting").await;
    first.stop().await;
    assert_eq!(calls(dir.path()), 0);

    // A new server on the same store applies the timeout when it is due.
    let second = Server::start(store.clone(), &pipeline).await;
    let run = second.until_status(&id, "completed").await;
    assert_eq!(run["state"]["approval"], json!({"approved": true}), "{run}");
    assert_eq!(calls(dir.path()), 1);
    let stored = store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(stored.summary.status, "completed");
    let approve = stored
        .agents
        .iter()
        .find(|a| &*a.agent == "approve")
        .unwrap();
    assert!(
        approve
            .report
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("default"),
        "{:?}",
        approve.report
    );
    second.stop().await;
}

#[tokio::test]
async fn a_fork_re_runs_only_what_is_downstream() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let count = |name: &str| {
        std::fs::read_to_string(dir.path().join(name))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let agent = |name: &str, reads: &str, writes: &str| {
        format!(
            "  {name}: {{ kind: command, run: [sh, -c, 'echo x >> {}; cat >/dev/null; echo \"{{\\\"{writes}\\\": 1}}\"'], reads: [{reads}], writes: [{writes}] }}\n",
            dir.path().join(name).display()
        )
    };
    let pipeline = format!(
        "pipeline: chain\ninputs: {{ q: {{ type: string }} }}\nagents:\n{}{}{}{}",
        agent("a", "q", "fa"),
        agent("b", "fa", "fb"),
        agent("c", "fb", "fc"),
        agent("side", "q", "fs"),
    );
    let server = Server::start(store.clone(), &pipeline).await;
    let (status, report) = server
        .post(
            "/v1/runs?wait=true",
            json!({"pipeline": "chain", "input": {"q": "x"}}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["status"], "completed");
    let id = report["run_id"].as_str().unwrap().to_owned();
    let (status, fork) = server
        .post(
            &format!("/v1/runs/{id}/fork?wait=true"),
            json!({"from": "b"}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{fork}");
    assert_eq!(fork["status"], "completed", "{fork}");
    assert_eq!(
        [count("a"), count("b"), count("c"), count("side")],
        [1, 2, 2, 1],
        "only b and what is downstream of it ran again"
    );
    assert_eq!(fork["agents"]["a"]["reused_from"], json!(id));
    assert_eq!(fork["state"]["fc"], json!(1));
    let child = fork["run_id"].as_str().unwrap();
    let stored = store.get_run(child).await.unwrap().unwrap();
    assert_eq!(stored.parent_id.as_deref(), Some(id.as_str()));
    assert_eq!(store.get_run(&id).await.unwrap().unwrap().forks, [child]);
    // The kept agents' writes are read from the parent's deltas.
    let kept = stored.agents.iter().find(|a| &*a.agent == "a").unwrap();
    assert_eq!(kept.writes.len(), 1);

    // A point the pipeline does not have.
    let (status, body) = server
        .post(
            &format!("/v1/runs/{id}/fork"),
            json!({"from": "zz"}).to_string(),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("no agent `zz`"), "{body}");
    server.stop().await;
}
