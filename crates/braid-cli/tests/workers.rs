//! Agents on `braid worker`s, as an operator runs them: a NATS server of
//! the test's own (`nats-server -js` on a free port), workers started and
//! killed as processes, and runs started with `braid run --nats` and
//! `braid serve --nats`. Command agents append their worker's pid (`$PPID`)
//! to a file, which says where and how often they ran.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use braid_nats::local::LocalNats;
use serde_json::Value;

/// A process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn braid(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_braid"));
    command
        .env("BRAID_STORE", format!("sqlite://{}/runs.db", dir.display()))
        .env_remove("BRAID_NATS")
        .current_dir(dir);
    command
}

fn worker(dir: &Path, url: &str, extra: &[&str]) -> Process {
    let child = braid(dir)
        .args(["worker", "--nats", url, "--pipelines"])
        .arg(dir.join("pipelines"))
        .args(["--ack-wait", "1s", "--grace", "0s"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Process(child)
}

/// Writes `pipelines/NAME.yaml`.
fn pipeline(dir: &Path, name: &str, yaml: &str) {
    std::fs::create_dir_all(dir.join("pipelines")).unwrap();
    std::fs::write(dir.join("pipelines").join(format!("{name}.yaml")), yaml).unwrap();
}

/// A command agent that appends its worker's pid to `NAME.calls`, sleeps
/// `sleep` seconds and writes `{field: 1}` (within a minute: a run whose
/// worker never came fails instead of hanging the test).
fn agent(dir: &Path, name: &str, reads: &str, field: &str, sleep: &str, extra: &str) -> String {
    format!(
        "  {name}:\n    kind: command\n    run: [sh, -c, 'echo $PPID >> {calls}; sleep {sleep}; cat > /dev/null; echo \"{{\\\"{field}\\\": 1}}\"']\n    reads: [{reads}]\n    writes: [{field}]\n    timeout: 60s\n{extra}",
        calls = dir.join(format!("{name}.calls")).display()
    )
}

/// The pids that ran agent `name`, one per call.
fn calls(dir: &Path, name: &str) -> Vec<u32> {
    std::fs::read_to_string(dir.join(format!("{name}.calls")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn until<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn json(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[test]
fn a_killed_worker_s_task_is_redelivered_and_the_run_records_the_agent_once() {
    let nats = LocalNats::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let yaml = format!(
        "pipeline: side\nagents:\n  first: {{ kind: sleep, ms: 10, writes: [a] }}\n{}  last: {{ kind: sleep, ms: 10, reads: [b], writes: [c] }}\n",
        agent(dir, "slow", "a", "b", "2", "")
    );
    pipeline(dir, "side", &yaml);
    let mut one = worker(dir, &nats.url(), &[]);
    let mut two = worker(dir, &nats.url(), &[]);
    let run = braid(dir)
        .arg("run")
        .arg(dir.join("pipelines/side.yaml"))
        .args(["--nats", &nats.url(), "--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // SIGKILL the worker that took `slow`, mid-agent.
    let first = until("a worker runs slow", Duration::from_secs(30), || {
        calls(dir, "slow").first().copied()
    });
    let victim = if first == one.0.id() {
        &mut one
    } else {
        assert_eq!(first, two.0.id(), "slow ran on one of the two workers");
        &mut two
    };
    victim.0.kill().unwrap();
    victim.0.wait().unwrap();

    let output = run.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = json(&output);
    assert_eq!(report["status"], "completed");
    // The other worker ran it after ack_wait: twice in all, at most.
    let ran = calls(dir, "slow");
    assert_eq!(ran.len(), 2, "{ran:?}");
    assert_ne!(ran[0], ran[1]);
    // The run records it once: one attempt, completed.
    assert_eq!(report["agents"]["slow"]["attempts"], 1);
    let id = report["run_id"].as_str().unwrap();
    let shown = braid(dir)
        .args(["runs", "show", id, "--output", "json"])
        .output()
        .unwrap();
    let stored = json(&shown);
    assert_eq!(stored["agents"]["slow"]["status"], "completed");
    assert_eq!(stored["agents"]["slow"]["attempts"], 1);
    assert_eq!(stored["state"]["c"], report["state"]["c"]);
}

#[test]
fn agents_go_to_the_queue_they_name() {
    let nats = LocalNats::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let yaml = format!(
        "pipeline: queues\nagents:\n{}{}",
        agent(dir, "cpu", "", "a", "0", ""),
        agent(dir, "gpu", "a", "b", "0", "    queue: gpu\n"),
    );
    pipeline(dir, "queues", &yaml);
    let default = worker(dir, &nats.url(), &[]);
    let gpu = worker(dir, &nats.url(), &["--queue", "gpu"]);
    let run = braid(dir)
        .arg("run")
        .arg(dir.join("pipelines/queues.yaml"))
        .args(["--nats", &nats.url(), "--output", "json"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(calls(dir, "cpu"), [default.0.id()]);
    assert_eq!(calls(dir, "gpu"), [gpu.0.id()]);
}

#[test]
fn a_workers_max_task_time_stops_an_agent_its_pipeline_would_let_run() {
    let nats = LocalNats::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // The agent's own timeout is 60 s; it would sleep 30 s.
    let yaml = format!(
        "pipeline: ceiling\nagents:\n{}",
        agent(dir, "stuck", "", "a", "30", "")
    );
    pipeline(dir, "ceiling", &yaml);
    let _worker = worker(dir, &nats.url(), &["--max-task-time", "1s"]);
    let started = Instant::now();
    let run = braid(dir)
        .arg("run")
        .arg(dir.join("pipelines/ceiling.yaml"))
        .args(["--nats", &nats.url(), "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report = json(&run);
    assert_eq!(report["agents"]["stuck"]["status"], "failed", "{report}");
    let error = report["agents"]["stuck"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("timed out after 1s"), "{report}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the worker let the agent run for {:?}",
        started.elapsed()
    );
    assert_eq!(
        calls(dir, "stuck").len(),
        1,
        "a timeout is not retried here"
    );
}

#[test]
fn serve_with_nats_runs_registered_pipelines_on_workers() {
    let nats = LocalNats::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let yaml = format!(
        "pipeline: served\nagents:\n{}",
        agent(dir, "work", "", "a", "0", "")
    );
    pipeline(dir, "served", &yaml);
    let w = worker(dir, &nats.url(), &[]);
    let mut serve = braid(dir)
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--nats",
            &nats.url(),
            "--pipelines",
        ])
        .arg(dir.join("pipelines"))
        .env_remove("BRAID_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = common::listening_address(&mut serve);
    let _serve = Process(serve);

    let body = r#"{"pipeline": "served", "input": {}}"#;
    let (status, response) = common::request(
        &addr,
        "POST",
        "/v1/runs?wait=true",
        Some("application/json"),
        body,
        Duration::from_secs(60),
    );
    assert!(status == 200 || status == 201, "{status}: {response}");
    assert!(response.contains(r#""status":"completed""#), "{response}");
    assert_eq!(calls(dir, "work"), [w.0.id()]);
}

#[test]
fn a_worker_that_cannot_reach_nats_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    pipeline(
        dir,
        "p",
        "pipeline: p\nagents:\n  a: { kind: sleep, ms: 1, writes: [x] }\n",
    );
    let out = braid(dir)
        .args(["worker", "--nats", "nats://127.0.0.1:1", "--pipelines"])
        .arg(dir.join("pipelines"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach NATS at nats://127.0.0.1:1"),
        "{stderr}"
    );
    let bad_queue = braid(dir)
        .args(["worker", "--nats", "nats://127.0.0.1:1", "--queue", "a.b"])
        .output()
        .unwrap();
    assert_eq!(bad_queue.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_queue.stderr).contains("not a queue name"));
    let no_time = braid(dir)
        .args([
            "worker",
            "--nats",
            "nats://127.0.0.1:1",
            "--max-task-time",
            "0s",
        ])
        .output()
        .unwrap();
    assert_eq!(no_time.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&no_time.stderr).contains("expected a duration above zero"),
        "{}",
        String::from_utf8_lossy(&no_time.stderr)
    );
}

#[test]
fn a_resumed_run_sends_what_is_left_to_the_workers() {
    let nats = LocalNats::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // `b` fails until the file `ready` exists.
    let b = format!(
        "  b:\n    kind: command\n    run: [sh, -c, 'echo $PPID >> {calls}; cat > /dev/null; test -e {ready} || exit 3; echo \"{{\\\"y\\\": 1}}\"']\n    reads: [x]\n    writes: [y]\n",
        calls = dir.join("b.calls").display(),
        ready = dir.join("ready").display(),
    );
    let yaml = format!(
        "pipeline: resumable\ncheckpoint: agent\nagents:\n{}{b}",
        agent(dir, "a", "", "x", "0", "")
    );
    pipeline(dir, "resumable", &yaml);
    let w = worker(dir, &nats.url(), &[]);
    let first = braid(dir)
        .arg("run")
        .arg(dir.join("pipelines/resumable.yaml"))
        .args(["--nats", &nats.url(), "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(
        first.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let id = json(&first)["run_id"].as_str().unwrap().to_owned();

    std::fs::write(dir.join("ready"), "").unwrap();
    let resumed = braid(dir)
        .args([
            "runs",
            "resume",
            &id,
            "--nats",
            &nats.url(),
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(json(&resumed)["status"], "completed");
    // `a` completed the first time and is not run again; `b` ran twice, on the worker.
    assert_eq!(calls(dir, "a"), [w.0.id()]);
    assert_eq!(calls(dir, "b"), [w.0.id(), w.0.id()]);
}
