//! Tool-calling agents through the `braid` binary: a run killed with
//! SIGKILL in the middle of an `llm` agent's tool calls resumes without
//! calling its model again for turns it had answered, and without making
//! again the calls that had completed.

mod common;

use common::json_of;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A scripted model on a free loopback port, on a thread of its own: turn
/// 1 calls `mark` with `first`; turn 2 calls it with `quick` and `slow` at
/// once; then it answers. Returns its `/v1` URL and the requests it got.
fn model() -> (String, Arc<Mutex<Vec<Value>>>) {
    let requests: Arc<Mutex<Vec<Value>>> = Arc::default();
    let seen = requests.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let answer = move |axum::Json(body): axum::Json<Value>| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(body.clone());
                    let results: Vec<&str> = body["messages"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(|m| m["tool_call_id"].as_str())
                        .collect();
                    let call = |id: &str, name: &str| {
                        json!({"id": id, "type": "function",
                               "function": {"name": "mark", "arguments": json!({"name": name}).to_string()}})
                    };
                    let message = match results.len() {
                        0 => json!({"role": "assistant", "content": null, "tool_calls": [call("c1", "first")]}),
                        1 => json!({"role": "assistant", "content": null,
                                    "tool_calls": [call("c2", "quick"), call("c3", "slow")]}),
                        _ => json!({"role": "assistant", "content": format!("done after {}", results.join(","))}),
                    };
                    axum::Json(json!({"choices": [{"message": message}]}))
                }
            };
            let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(answer));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    (format!("http://{addr}/v1"), requests)
}

/// The tool: logs each execution to `ran`; `slow` waits for the file
/// `fast` (up to 30 s), after leaving its process group's id in `slow.pid`.
const MARK: &str = r#"
import json, os, sys, time
name = json.load(sys.stdin)["state"]["name"]
with open("ran", "a") as f:
    f.write(name + "\n")
if name == "slow":
    with open("slow.pid", "w") as f:
        f.write(str(os.getpgid(0)) + "\n")
    for _ in range(600):
        if os.path.exists("fast"):
            break
        time.sleep(0.05)
print(json.dumps({"marked": name}))
"#;

struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn braid(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_braid"));
        command.env(
            "BRAID_STORE",
            format!("sqlite://{}", self.path("store.db").display()),
        );
        command
    }
}

/// A fresh folder with the `mark` tool and a pipeline whose `planner`
/// (the model at `endpoint`) calls it; `extra` is added to `mark`.
fn marking(endpoint: &str, extra: &str) -> Workspace {
    let ws = Workspace {
        dir: tempfile::tempdir().unwrap(),
    };
    std::fs::write(ws.path("mark.py"), MARK).unwrap();
    std::fs::write(
        ws.path("pipeline.yaml"),
        format!(
            r#"pipeline: marking
agents:
  mark:
    kind: command
    run: [python3, mark.py]
    tool: {{ description: Marks a name, parameters: {{ type: object, properties: {{ name: {{ type: string }} }}, required: [name] }} }}
    writes: [marked]
    {extra}
  planner:
    kind: llm
    endpoint: "{endpoint}"
    model: scripted
    prompt: Mark some names.
    tools: [{{ agent: mark }}]
    writes: [answer]
"#
        ),
    )
    .unwrap();
    ws
}

#[test]
fn a_run_killed_mid_tool_calls_resumes_without_repeating_completed_calls() {
    let (endpoint, requests) = model();
    let ws = marking(&endpoint, "");

    let mut child = ws
        .braid()
        .arg("run")
        .arg(ws.path("pipeline.yaml"))
        .args(["--checkpoint", "agent", "--output", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Until `slow` runs and the completed `quick` call of the same turn is
    // on record, as another process reads the store.
    let deadline = Instant::now() + Duration::from_secs(30);
    let run_id = loop {
        assert!(
            Instant::now() < deadline,
            "the calls never reached the store"
        );
        std::thread::sleep(Duration::from_millis(20));
        if !ws.path("slow.pid").exists() {
            continue;
        }
        let list = json_of(
            &ws.braid()
                .args(["runs", "list", "--output", "json"])
                .output()
                .unwrap(),
        );
        let Some(id) = list[0]["run_id"].as_str() else {
            continue;
        };
        let shown = json_of(
            &ws.braid()
                .args(["runs", "show", id, "--output", "json"])
                .output()
                .unwrap(),
        );
        let calls = shown["agents"]["planner"]["tool_calls"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if calls
            .iter()
            .any(|c| c["call_id"] == "c2" && c["status"] == "completed")
        {
            break id.to_owned();
        }
    };
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let slow: i32 = std::fs::read_to_string(ws.path("slow.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(slow),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert_eq!(
        requests.lock().unwrap().len(),
        2,
        "two turns before the kill"
    );

    std::fs::write(ws.path("fast"), "").unwrap();
    let output = ws
        .braid()
        .args(["runs", "resume", &run_id, "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let resumed = json_of(&output);
    assert_eq!(
        resumed["state"]["answer"], "done after c1,c2,c3",
        "{resumed}"
    );

    // The model was asked once more, for the last turn only: the first two
    // came from the recorded conversation.
    assert_eq!(requests.lock().unwrap().len(), 3);
    // `first` and `quick` had completed: not run again; `slow` was in
    // flight when braid died: run again (at least once).
    let ran = std::fs::read_to_string(ws.path("ran")).unwrap();
    let count = |name: &str| ran.lines().filter(|l| *l == name).count();
    assert_eq!(
        (count("first"), count("quick"), count("slow")),
        (1, 1, 2),
        "{ran}"
    );

    let calls = resumed["agents"]["planner"]["tool_calls"]
        .as_array()
        .unwrap()
        .clone();
    let by = |id: &str, status: &str| {
        calls
            .iter()
            .filter(|c| c["call_id"] == id && c["status"] == status)
            .count()
    };
    assert_eq!(by("c1", "completed"), 1, "{calls:#?}");
    assert_eq!(by("c2", "completed"), 1, "{calls:#?}");
    assert!(
        calls
            .iter()
            .any(|c| c["call_id"] == "c2" && c["resumed"] == true),
        "c2's recorded result was given again: {calls:#?}"
    );
    assert_eq!(by("c3", "cancelled"), 1, "the interrupted call: {calls:#?}");
    assert_eq!(by("c3", "completed"), 1, "{calls:#?}");
    let transcript = resumed["agents"]["planner"]["transcript"]
        .as_array()
        .unwrap();
    assert_eq!(transcript.len(), 7, "{transcript:#?}");
}

/// Kills the stand-in model when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_research_example_answers_from_the_docs_with_citations() {
    use std::io::BufRead;
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/research");
    let mut stub = Command::new("python3")
        .arg(example.join("stub_model.py"))
        .arg("0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(stub.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _stub = Killed(stub);
    let port: u16 = first.trim().parse().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_braid"))
        .arg("run")
        .arg(example.join("pipeline.yaml"))
        .args([
            "--input",
            r#"{"question": "How are tool calls checkpointed?"}"#,
            "--output",
            "json",
        ])
        .env("BRAID_LLM_URL", format!("http://127.0.0.1:{port}/v1"))
        .env(
            "BRAID_STORE",
            format!("sqlite://{}", scratch.path().join("store.db").display()),
        )
        .output()
        .unwrap();
    let report = json_of(&output);
    assert_eq!(report["status"], "completed", "{report:#}");
    let answer = report["state"]["answer"].as_str().unwrap();
    // Each citation names a line of the repo's docs that says what is quoted.
    let cited: Vec<(String, usize)> = answer
        .split('[')
        .skip(1)
        .filter_map(|c| c.split(']').next())
        .filter_map(|c| c.rsplit_once(':'))
        .map(|(file, line)| (file.to_owned(), line.parse().unwrap()))
        .collect();
    assert_eq!(cited.len(), 2, "{answer}");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (file, line) in &cited {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let quoted = text.lines().nth(line - 1).unwrap().trim();
        assert!(
            answer.contains(&quoted[..quoted.len().min(300)]),
            "{file}:{line}: {answer}"
        );
    }
    // One call to each tool: the pipeline's own and the MCP server's.
    let calls = report["agents"]["researcher"]["tool_calls"]
        .as_array()
        .unwrap();
    let tools: Vec<(&str, &str)> = calls
        .iter()
        .map(|c| (c["tool"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        tools,
        [
            ("search_docs", "completed"),
            ("read_text_file", "completed")
        ]
    );
    let read = calls[1]["result"]["content"][0]["text"].as_str().unwrap();
    let (file, line) = &cited[0];
    let text = std::fs::read_to_string(root.join(file)).unwrap();
    assert!(
        read.contains(text.lines().nth(line - 1).unwrap()),
        "the file was read"
    );
}

#[test]
fn a_cached_tool_agent_is_not_called_again_for_the_same_arguments() {
    let (endpoint, requests) = model();
    let ws = marking(&endpoint, "cache: { ttl: 1h }");
    std::fs::write(ws.path("fast"), "").unwrap(); // `slow` need not wait here
    let run = || {
        json_of(
            &ws.braid()
                .arg("run")
                .arg(ws.path("pipeline.yaml"))
                .args(["--output", "json"])
                .output()
                .unwrap(),
        )
    };
    let first = run();
    assert_eq!(first["status"], "completed", "{first:#}");
    let calls = first["agents"]["planner"]["tool_calls"].as_array().unwrap();
    assert!(
        calls.iter().all(|c| c.get("cached").is_none()),
        "{calls:#?}"
    );

    let second = run();
    assert_eq!(second["status"], "completed", "{second:#}");
    let calls = second["agents"]["planner"]["tool_calls"]
        .as_array()
        .unwrap();
    assert_eq!(calls.len(), 3);
    assert!(
        calls
            .iter()
            .all(|c| c["cached"] == true && c["attempts"] == 0 && c["status"] == "completed"),
        "{calls:#?}"
    );
    // The same results, without running the tool: one line per name.
    assert_eq!(second["state"]["answer"], first["state"]["answer"]);
    let ran = std::fs::read_to_string(ws.path("ran")).unwrap();
    assert_eq!(ran.lines().count(), 3, "{ran}");
    // The model is not cached: it was asked three turns each time.
    assert_eq!(requests.lock().unwrap().len(), 6);
}
