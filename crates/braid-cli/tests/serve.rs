//! `braid serve` as an operator starts it: its flags reach the server, the
//! pipelines in `--pipelines DIR` are the operator's, and a client's
//! hostile pipeline cannot kill the process (issue 9). Plain HTTP/1.1 over
//! a socket, as any client would speak it.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `braid serve` process on a free loopback port, killed when dropped.
struct Serve {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Serve {
    /// Starts `braid serve` with `args`, with `operator` (name, text) as
    /// the only pipeline in `--pipelines DIR`, and waits until it listens.
    fn start(operator: (&str, &str), args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(format!("{}.yaml", operator.0)), operator.1).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_braid"))
            .args([
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--no-store",
                "--pipelines",
            ])
            .arg(dir.path())
            .args(args)
            .env_remove("BRAID_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let addr = common::listening_address(&mut child);
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    /// One request; (status, body).
    fn call(&self, method: &str, path: &str, kind: &str, body: &str) -> (u16, String) {
        common::request(
            &self.addr,
            method,
            path,
            Some(kind),
            body,
            Duration::from_secs(60),
        )
    }

    fn register(&self, yaml: &str) -> (u16, String) {
        self.call("POST", "/v1/pipelines", "application/yaml", yaml)
    }

    /// The process is still there and answers.
    fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "braid serve exited"
        );
        assert_eq!(self.call("GET", "/healthz", "application/json", "").0, 200);
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const OPS: &str = "pipeline: ops\nagents:\n  a: { kind: sleep, ms: 1, writes: [x] }\n";

fn named(name: &str) -> String {
    format!("pipeline: {name}\nagents:\n  a: {{ kind: sleep, ms: 1, writes: [x] }}\n")
}

#[test]
fn serve_keeps_operator_pipelines_and_bounds_what_clients_register() {
    let mut serve = Serve::start(("ops", OPS), &["--max-pipelines", "1", "--max-agents", "2"]);
    let (status, body) = serve.register(&named("ops"));
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("pipeline_protected"), "{body}");
    let (status, body) = serve.call("DELETE", "/v1/pipelines/ops", "application/json", "");
    assert_eq!(status, 409, "{body}");
    let (_, body) = serve.call("GET", "/v1/pipelines/ops", "application/json", "");
    assert!(body.contains("\"origin\":\"operator\""), "{body}");

    let (status, body) = serve.register(&named("mine"));
    assert_eq!(status, 201, "{body}");
    let (status, body) = serve.register(&named("another"));
    assert_eq!(status, 409, "--max-pipelines 1: {body}");
    assert!(body.contains("too_many_pipelines"), "{body}");

    let three = "pipeline: three\nagents:\n  a: { kind: sleep }\n  b: { kind: sleep }\n  c: { kind: sleep }\n";
    let (status, body) = serve.register(three);
    assert_eq!(status, 422, "--max-agents 2: {body}");
    assert!(body.contains("too_many_agents"), "{body}");
    serve.assert_alive();
}

/// Each of these killed `braid serve` (a stack overflow aborts the whole
/// process). Needs the core's depth and condition limits.
#[test]
fn serve_survives_hostile_pipelines() {
    let mut serve = Serve::start(("ops", OPS), &[]);
    let agents = "agents:\n  a: { kind: sleep, ms: 1, reads: [x], writes: [y] }\n";
    let deep = format!(
        "pipeline: deep\ndescription:\n  {}x\ninputs: {{ x: {{ type: object }} }}\n{agents}",
        "- ".repeat(6_000)
    );
    let (status, body) = serve.register(&deep);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("max_depth"), "{body}");
    serve.assert_alive();

    let terms = format!(
        "pipeline: cond\ninputs: {{ x: {{ type: object }} }}\nagents:\n  a: {{ kind: sleep, ms: 1, reads: [x], writes: [y], when: \"{}\" }}\n",
        vec!["x == 1"; 10_000].join(" && ")
    );
    let (status, body) = serve.register(&terms);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("max_condition"), "{body}");
    serve.assert_alive();

    // And it still runs pipelines.
    let (status, body) = serve.call(
        "POST",
        "/v1/runs?wait=true",
        "application/json",
        r#"{"pipeline": "ops"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"completed\""), "{body}");
}
