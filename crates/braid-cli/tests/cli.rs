//! The `braid` binary, driven the way a user drives it.

mod common;

use common::json_of;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary, with its default store in the test's scratch folder rather
/// than the user's data directory.
fn braid() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_braid"));
    command.env(
        "BRAID_STORE",
        format!("sqlite://{}/cli-tests.db", env!("CARGO_TARGET_TMPDIR")),
    );
    command
}

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// A pipeline file in a fresh folder (command agents run from there).
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new(pipeline: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pipeline.yaml"), pipeline).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn pipeline(&self) -> PathBuf {
        self.path("pipeline.yaml")
    }
}

fn run_json(args: &[&str], pipeline: &Path) -> (Output, Value) {
    let output = braid()
        .arg("run")
        .arg(pipeline)
        .args(["--output", "json"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, report)
}

#[test]
fn the_seed_pipeline_runs_in_parallel_and_reports_json() {
    let (output, report) = run_json(&[], &examples().join("seed.yaml"));
    assert_eq!(output.status.code(), Some(0));
    for key in ["run_id", "status", "makespan_ms", "state", "agents"] {
        assert!(report.get(key).is_some(), "missing `{key}` in {report}");
    }
    assert_eq!(report["status"], "completed");
    let agents = report["agents"].as_object().unwrap();
    assert_eq!(agents.len(), 6);
    for (name, agent) in agents {
        assert_eq!(agent["status"], "completed", "{name}");
        assert_eq!(agent["attempts"], 1, "{name}");
        assert!(agent["start_ms"].is_number() && agent["duration_ms"].is_number());
    }
    // data, metrics and cost overlap.
    let start = |a: &str| agents[a]["start_ms"].as_f64().unwrap();
    let end = |a: &str| start(a) + agents[a]["duration_ms"].as_f64().unwrap();
    assert!(start("metrics") < end("data") && start("cost") < end("data"));
    assert_eq!(report["state"]["report"], true);
    assert_eq!(
        report["state"]["request"],
        "How can we cut our LLM spend without hurting latency?"
    );

    // --sequential: one at a time.
    let (output, report) = run_json(&["--sequential"], &examples().join("seed.yaml"));
    assert_eq!(output.status.code(), Some(0));
    let agents = report["agents"].as_object().unwrap();
    let start = |a: &str| agents[a]["start_ms"].as_f64().unwrap();
    let end = |a: &str| start(a) + agents[a]["duration_ms"].as_f64().unwrap();
    assert!(start("metrics") >= end("data"));
    assert!(report["makespan_ms"].as_f64().unwrap() >= 300.0);
}

#[test]
fn the_text_output_is_a_table_per_agent() {
    let output = braid()
        .arg("run")
        .arg(examples().join("seed.yaml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("of seed-optimization: completed in"),
        "{stdout}"
    );
    for agent in [
        "triage",
        "data",
        "metrics",
        "cost",
        "optimization",
        "report",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(agent))
            .unwrap_or_else(|| panic!("no row for {agent}:\n{stdout}"));
        assert!(line.contains("completed") && line.contains(" ms"), "{line}");
    }
}

#[test]
fn the_polyglot_example_runs_python_and_shell_agents() {
    let (output, report) = run_json(
        &["--input", r#"{"text": "a b a c a b"}"#],
        &examples().join("polyglot/pipeline.yaml"),
    );
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert_eq!(report["state"]["word_count"], 6);
    assert_eq!(report["state"]["char_count"], 11);
    assert_eq!(
        report["state"]["top_words"],
        serde_json::json!(["a", "b", "c"])
    );
    assert_eq!(
        report["state"]["summary"],
        "6 words, 11 characters; most common: a, b, c"
    );
}

#[test]
fn the_fanout_example_summarises_each_document_in_order() {
    let pipeline = examples().join("fanout/pipeline.yaml");
    let (output, report) = run_json(&["--input", r#"{"folder": "docs"}"#], &pipeline);
    assert_eq!(output.status.code(), Some(0), "{report}");
    let summaries = report["state"]["summaries"].as_array().unwrap();
    let names: Vec<&str> = summaries
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["a-incident.txt", "b-capacity.txt", "c-costs.txt"]);
    // The empty document failed its instance; `on_item_failure: skip` left null.
    assert!(summaries[3].is_null());
    let summarize = &report["agents"]["summarize"];
    assert_eq!(summarize["status"], "completed");
    assert_eq!(
        summarize["items"],
        serde_json::json!({"total": 4, "completed": 3, "failed": 1, "cancelled": 0, "pending": 0})
    );
    let empty = &summarize["instances"]["summarize[3]"];
    assert_eq!(empty["status"], "failed");
    assert!(
        empty["error"]
            .as_str()
            .unwrap()
            .contains("d-empty.txt is empty")
    );
    let text = report["state"]["report"].as_str().unwrap();
    assert!(
        text.contains("1. **a-incident.txt** (24 words): The checkout service returned errors"),
        "{text}"
    );

    // --no-instances keeps the counts and drops the per-instance entries.
    let (_, slim) = run_json(
        &["--input", r#"{"folder": "docs"}"#, "--no-instances"],
        &pipeline,
    );
    assert_eq!(slim["agents"]["summarize"]["items"]["total"], 4);
    assert!(slim["agents"]["summarize"].get("instances").is_none());

    // The table says how the instances went, and which one failed.
    let output = braid()
        .arg("run")
        .arg(&pipeline)
        .args(["--input", r#"{"folder": "docs"}"#])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("3 of 4 items completed, 1 failed"),
        "{table}"
    );
    assert!(table.contains("summarize[3]"), "{table}");

    let output = braid().arg("explain").arg(&pipeline).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(
            "summarize: one instance per element of `docs` (as `doc`, 4 at a time, \
             on_item_failure: skip, about 4 items)"
        ),
        "{text}"
    );
}

#[test]
fn the_router_example_runs_exactly_one_desk() {
    let pipeline = examples().join("router/pipeline.yaml");
    let (output, report) = run_json(
        &[
            "--input",
            r#"{"request": "I was charged twice, please refund me"}"#,
        ],
        &pipeline,
    );
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert_eq!(report["agents"]["refund"]["status"], "completed");
    assert_eq!(report["agents"]["tech"]["status"], "skipped");
    assert_eq!(
        report["state"]["answer"],
        "Thanks for writing. A refund was opened (high priority)."
    );
    assert!(report["state"].get("tech_case").is_none());

    let (_, report) = run_json(&["--input", r#"{"request": "the app crashes"}"#], &pipeline);
    assert_eq!(report["agents"]["refund"]["status"], "skipped");
    assert_eq!(report["agents"]["tech"]["status"], "completed");
    assert_eq!(
        report["state"]["answer"],
        "Thanks for writing. A technician will look into it."
    );
}

#[test]
fn the_per_document_example_runs_a_sub_pipeline_per_document() {
    let pipeline = examples().join("fanout/per-document.yaml");
    let (output, report) = run_json(&["--input", r#"{"folder": "docs"}"#], &pipeline);
    assert_eq!(output.status.code(), Some(0), "{report}");
    let index = report["state"]["index"].as_str().unwrap();
    assert_eq!(
        index.lines().collect::<Vec<_>>(),
        [
            "1. a-incident.txt (24 words): The checkout service returned errors for twelve minutes after a configuration push.",
            "2. b-capacity.txt (15 words): Database CPU stays under forty percent at peak.",
            "3. c-costs.txt (18 words): Storage costs grew eight percent month over month.",
            "- (a document could not be read)",
        ]
    );
    let per_doc = &report["agents"]["per_doc"];
    assert_eq!(per_doc["items"]["failed"], 1);
    let instances = per_doc["instances"].as_object().unwrap();
    assert_eq!(instances["per_doc[3].words"]["status"], "failed");
    assert_eq!(instances["per_doc[3].card"]["status"], "cancelled");
    assert_eq!(instances["per_doc[1].card"]["status"], "completed");
}

#[test]
fn the_loop_example_redrafts_until_the_critique_is_good_enough() {
    let pipeline = examples().join("loop/pipeline.yaml");
    let (output, report) = run_json(&["--input", r#"{"topic": "eager scheduling"}"#], &pipeline);
    assert_eq!(output.status.code(), Some(0), "{report}");
    // 3 points by round 2: score 9 ends the loop there.
    assert_eq!(report["state"]["final_critique"]["score"], 9);
    assert_eq!(
        report["state"]["post"],
        "Eager scheduling: Independent agents run at the same time. A dependent agent starts \
         the moment its inputs exist. Nothing waits for a level or a batch. (score 9/9)"
    );
    let rounds = report["agents"]["refine"]["instances"].as_object().unwrap();
    for name in [
        "refine#0",
        "refine#1",
        "refine#2",
        "refine#2.draft",
        "refine#2.critique",
    ] {
        assert_eq!(rounds[name]["status"], "completed", "{name}");
    }
    assert!(!rounds.contains_key("refine#3"));

    // explain shows the loop and estimates it from `expected_rounds`.
    let output = braid().arg("explain").arg(&pipeline).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(
            "refine: a group of 2 agents (draft -> critique), repeated until \
             `critique.score >= 8` (at most 5 rounds, on_max: continue, about 3)"
        ),
        "{text}"
    );
    let output = braid()
        .args(["explain", "--format", "json"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let explained: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        explained["parallel_ms"], 280.0,
        "3 rounds of 80 ms, then 40 ms"
    );
    assert_eq!(
        explained["agents"][0]["group"]["critical_path"],
        serde_json::json!(["draft", "critique"])
    );
    assert_eq!(explained["agents"][0]["repeat"]["expected_rounds"], 3);
    let output = braid()
        .args(["explain", "--format", "dot"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("\"refine.draft\" -> \"refine.critique\"")
    );
}

#[test]
fn the_tools_example_calls_the_calculator_until_the_model_answers() {
    // A local stand-in for an OpenAI-compatible model.
    let mut stub = Command::new("python3")
        .arg(examples().join("tools/stub_model.py"))
        .arg("0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(stub.stdout.take().unwrap()),
        &mut port,
    )
    .unwrap();
    let output = braid()
        .arg("run")
        .arg(examples().join("tools/pipeline.yaml"))
        .args([
            "--output",
            "json",
            "--input",
            r#"{"question": "What is 19 + 23, plus 100?"}"#,
        ])
        .env(
            "BRAID_LLM_URL",
            format!("http://127.0.0.1:{}/v1", port.trim()),
        )
        .output()
        .unwrap();
    let _ = stub.kill();
    let _ = stub.wait();
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert_eq!(report["state"]["answer"], "The total is 142.");
    let rounds = report["agents"]["solve"]["instances"].as_object().unwrap();
    // Two tool calls (19 + 23, then + 100), then the answer in round 2,
    // where the tool had nothing to do.
    assert_eq!(rounds["solve#0.tool"]["status"], "completed");
    assert_eq!(rounds["solve#1.tool"]["status"], "completed");
    assert_eq!(rounds["solve#2.tool"]["status"], "skipped");
    assert!(!rounds.contains_key("solve#3"));
}

#[test]
fn a_failing_command_agent_fails_the_run_with_its_exit_code_and_stderr() {
    let ws = Workspace::new(
        "pipeline: failing
agents:
  first:  { kind: sleep, ms: 1, writes: [a] }
  broken: { kind: command, run: [sh, -c, 'echo \"disk full\" >&2; exit 4'], reads: [a], writes: [b] }
",
    );
    let (output, report) = run_json(&[], &ws.pipeline());
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(report["status"], "failed");
    assert_eq!(report["agents"]["first"]["status"], "completed");
    assert_eq!(report["state"]["a"], true);
    let error = report["agents"]["broken"]["error"].as_str().unwrap();
    assert!(
        error.contains("exit code 4") && error.contains("disk full"),
        "{error}"
    );
}

#[test]
fn a_timeout_kills_the_agent_and_fails_the_run() {
    let ws = Workspace::new(
        "pipeline: stuck
agents:
  stuck: { kind: command, run: [sleep, '30'], writes: [x], timeout: 200ms }
",
    );
    let started = Instant::now();
    let (output, report) = run_json(&[], &ws.pipeline());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(output.status.code(), Some(1));
    let error = report["agents"]["stuck"]["error"].as_str().unwrap();
    assert!(error.contains("timed out after 200ms"), "{error}");
}

#[test]
fn a_retry_that_succeeds_on_the_second_attempt_completes_the_run() {
    let ws = Workspace::new(
        "pipeline: flaky
agents:
  flaky:
    kind: command
    run: [sh, agents/flaky.sh]
    writes: [answer]
    retries: 2
    backoff: 10ms
",
    );
    std::fs::create_dir(ws.path("agents")).unwrap();
    std::fs::write(
        ws.path("agents/flaky.sh"),
        "n=$(cat attempts 2>/dev/null || echo 0)\n\
         n=$((n+1)); echo $n > attempts\n\
         if [ $n -lt 2 ]; then echo \"attempt $n fails\" >&2; exit 1; fi\n\
         echo '{\"answer\": 42}'\n",
    )
    .unwrap();
    let (output, report) = run_json(&[], &ws.pipeline());
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert_eq!(report["agents"]["flaky"]["attempts"], 2);
    assert_eq!(report["state"]["answer"], 42);
    assert_eq!(
        std::fs::read_to_string(ws.path("attempts")).unwrap().trim(),
        "2"
    );
}

#[test]
fn skips_propagate_through_required_reads() {
    let ws = Workspace::new(
        "pipeline: skipping
inputs:
  route: { type: string }
agents:
  analysis: { kind: sleep, reads: [route], writes: [analysis], when: 'route != \"skip\"' }
  report:   { kind: sleep, reads: [analysis], writes: [report] }
  note:     { kind: sleep, reads: [analysis?, route], writes: [note] }
",
    );
    let (output, report) = run_json(&["--input", r#"{"route": "skip"}"#], &ws.pipeline());
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(report["agents"]["analysis"]["status"], "skipped");
    assert_eq!(report["agents"]["report"]["status"], "skipped");
    assert!(
        report["agents"]["report"]["reason"]
            .as_str()
            .unwrap()
            .contains("`analysis` skipped")
    );
    assert_eq!(report["agents"]["note"]["status"], "completed");

    let (_, report) = run_json(&["--input", r#"{"route": "cost"}"#], &ws.pipeline());
    assert_eq!(report["agents"]["report"]["status"], "completed");
}

#[test]
fn ctrl_c_cancels_the_run_kills_command_agents_and_reports_what_finished() {
    cancel_with(nix::sys::signal::Signal::SIGINT);
}

#[test]
fn closing_the_terminal_cancels_the_run_too() {
    cancel_with(nix::sys::signal::Signal::SIGHUP);
}

fn cancel_with(signal: nix::sys::signal::Signal) {
    let ws = Workspace::new(
        "pipeline: interruptible
agents:
  quick: { kind: sleep, ms: 1, writes: [q] }
  slow:  { kind: command, run: [sh, -c, 'echo $$ > slow.pid; sleep 30; echo {}'], reads: [q], writes: [s] }
  last:  { kind: sleep, reads: [s], writes: [l] }
",
    );
    let child = braid()
        .arg("run")
        .arg(ws.pipeline())
        .args(["--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid_file = ws.path("slow.pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&pid_file).map_or(true, |s| !s.ends_with('\n')) {
        assert!(Instant::now() < deadline, "the slow agent never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["status"], "cancelled");
    assert_eq!(report["agents"]["quick"]["status"], "completed");
    assert_eq!(report["agents"]["slow"]["status"], "cancelled");
    assert_eq!(report["agents"]["last"]["status"], "cancelled");
    assert_eq!(report["state"]["q"], true);
    assert!(String::from_utf8_lossy(&output.stderr).contains("cancelling"));

    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let gone = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(pid) {
        assert!(
            Instant::now() < deadline,
            "command agent {pid} outlived the run"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn invalid_input_exits_2_and_names_the_field() {
    let pipeline = examples().join("polyglot/pipeline.yaml");
    let output = braid()
        .arg("run")
        .arg(&pipeline)
        .args(["--input", r#"{"text": 42}"#])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("input `text`") && stderr.contains("string"),
        "{stderr}"
    );

    let output = braid()
        .arg("run")
        .arg(&pipeline)
        .args(["--input", "{not json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--input is not valid JSON"));

    // @file works, and a missing one is a clear error.
    let ws = Workspace::new("");
    std::fs::write(ws.path("input.json"), r#"{"text": "x y"}"#).unwrap();
    let at = format!("@{}", ws.path("input.json").display());
    let (output, report) = run_json(&["--input", &at], &pipeline);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(report["state"]["word_count"], 2);
    let output = braid()
        .arg("run")
        .arg(&pipeline)
        .args(["--input", "@/nonexistent/input.json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/input.json"));
}

#[test]
fn validate_reports_every_error_with_file_and_line() {
    let output = braid()
        .arg("validate")
        .arg(examples().join("seed.yaml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with("ok: seed-optimization") && stdout.contains("6 agents"),
        "{stdout}"
    );

    let ws = Workspace::new(
        "pipeline: broken
agents:
  a: { kind: sleep, reads: [b_out], writes: [a_out] }
  b: { kind: sleep, reads: [a_out], writes: [b_out] }
  c: { kind: sleep, reads: [missing], writes: [c_out] }
",
    );
    let output = braid().arg("validate").arg(ws.pipeline()).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let file = ws.pipeline().display().to_string();
    assert!(stderr.contains(&format!("{file}:5:")), "{stderr}");
    assert!(stderr.contains("reads `missing`"), "{stderr}");

    let output = braid()
        .arg("validate")
        .arg("/no/such/pipeline.yaml")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/no/such/pipeline.yaml"));

    // A cycle (once the unknown read is fixed) is printed as a path.
    std::fs::write(
        ws.pipeline(),
        "pipeline: loop\nagents:\n  a: { kind: sleep, reads: [b_out], writes: [a_out] }\n  b: { kind: sleep, reads: [a_out], writes: [b_out] }\n",
    )
    .unwrap();
    let output = braid().arg("validate").arg(ws.pipeline()).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{file}:3:3: dependency cycle: a -> b -> a")),
        "{stderr}"
    );
}

#[test]
fn explain_shows_the_graph_in_four_formats() {
    let seed = examples().join("seed.yaml");
    let output = braid()
        .args(["explain", "--format", "json"])
        .arg(&seed)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let explained: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(explained["agents"].as_array().unwrap().len(), 6);
    assert_eq!(
        explained["stages"],
        serde_json::json!([
            ["triage"],
            ["data", "metrics", "cost"],
            ["optimization"],
            ["report"]
        ])
    );
    assert_eq!(
        explained["critical_path"],
        serde_json::json!(["triage", "data", "optimization", "report"])
    );
    assert_eq!(explained["sequential_ms"], 300.0);
    assert_eq!(explained["parallel_ms"], 200.0);
    assert_eq!(explained["speedup"], 1.5);
    assert!(
        explained["edges"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(["cost", "optimization"]))
    );

    let text = |format: &str| {
        let output = braid()
            .args(["explain", "--format", format])
            .arg(&seed)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0));
        String::from_utf8(output.stdout).unwrap()
    };
    assert!(text("dot").contains("\"triage\" -> \"data\" [color=red"));
    assert!(text("mermaid").contains("triage ==> data"));
    assert!(text("text").contains("critical path: triage -> data -> optimization -> report"));

    // `expected:` hints stand in for command agents' durations…
    let explain_json = |file: &Path| -> Value {
        let output = braid()
            .args(["explain", "--format", "json"])
            .arg(file)
            .output()
            .unwrap();
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let explained = explain_json(&examples().join("polyglot/pipeline.yaml"));
    assert_eq!(explained["parallel_ms"], 80.0);
    // …and without them the estimates are unknown.
    let ws =
        Workspace::new("pipeline: p\nagents:\n  a: { kind: command, run: [true], writes: [x] }\n");
    let explained = explain_json(&ws.pipeline());
    assert!(explained["parallel_ms"].is_null() && explained["speedup"].is_null());
    assert_eq!(explained["critical_path"], serde_json::json!(["a"]));
}

#[test]
fn a_reader_that_goes_away_does_not_turn_success_into_a_crash() {
    let mut child = braid()
        .arg("run")
        .arg(examples().join("seed.yaml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // like `braid run … | head -0`
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn bench_many_spreads_runs_that_do_not_divide_evenly_over_its_run_threads() {
    // 7 runs over 3 threads: shares of 3, 2 and 2, each started and
    // joined on its own thread; the bench fails unless all 7 complete.
    let output = braid()
        .args(["bench", "--scenario", "many", "--concurrent", "7"])
        .args(["--run-threads", "3", "--latency-ms", "2", "--repeat", "1"])
        .output()
        .unwrap();
    let line = common::json_of(&output);
    assert!(output.status.success(), "{line}");
    assert_eq!(line["concurrent"], 7);
    assert_eq!(line["run_threads"], 3);
    assert!(
        line["makespan_ms"].as_f64().unwrap() >= line["ideal_ms"].as_f64().unwrap(),
        "no run can beat its 4L critical path: {line}"
    );
}

#[test]
fn bench_prints_one_json_object_per_scenario_with_the_peers_fields() {
    let output = braid()
        .args(["bench", "--latency-ms", "2", "--runs", "5", "--nodes", "20"])
        .env_remove("BRAID_BENCH_POSTGRES_URL")
        .args(["--concurrent", "10", "--repeat", "1"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected: &[(&str, &[&str])] = &[
        ("seed", &["makespan_ms", "ideal_ms", "ratio"]),
        ("sequential", &["makespan_ms", "ideal_ms", "ratio"]),
        ("skewed", &["makespan_ms", "ideal_ms", "ratio"]),
        ("overhead", &["runs", "per_run_us", "per_agent_us"]),
        ("wide", &["nodes", "makespan_ms", "per_agent_us"]),
        ("deep", &["nodes", "makespan_ms", "per_agent_us"]),
        (
            "many",
            &[
                "concurrent",
                "makespan_ms",
                "ratio",
                "runs_per_s",
                "peak_rss_mb",
            ],
        ),
    ];
    // Then `persist`: SQLite only (no --postgres), 3 ways × 3 policies,
    // then the dynamic shapes: fanout, mapchain, loop.
    let (lines, rest) = lines.split_at(expected.len());
    let (persist, shapes) = rest.split_at(rest.len() - 3);
    assert_eq!(persist.len(), 9, "{persist:?}");
    let shape_fields: &[(&str, &[&str])] = &[
        (
            "fanout",
            &[
                "items",
                "makespan_ms",
                "ideal_ms",
                "ratio",
                "noop_ms",
                "per_item_us",
            ],
        ),
        ("mapchain", &["items", "makespan_ms", "ideal_ms", "ratio"]),
        (
            "loop",
            &[
                "rounds",
                "makespan_ms",
                "ideal_ms",
                "ratio",
                "noop_rounds",
                "per_round_us",
            ],
        ),
    ];
    for (line, (scenario, fields)) in shapes.iter().zip(shape_fields) {
        assert_eq!(line["scenario"], *scenario);
        for field in *fields {
            assert!(
                line[field].is_number(),
                "{scenario}: `{field}` missing in {line}"
            );
        }
    }
    assert_eq!(shapes[0]["items"], 20);
    assert_eq!(shapes[2]["ideal_ms"], 40.0, "20L with L = 2 ms");
    let none = persist.iter().find(|l| l["checkpoint"] == "none").unwrap();
    assert_eq!(none["transactions_per_run"], 0.0, "`none` writes nothing");
    let waiting_end = persist
        .iter()
        .find(|l| l["checkpoint"] == "end" && l["wait_each"] == true)
        .unwrap();
    assert_eq!(
        waiting_end["transactions_per_run"], 1.0,
        "one transaction per run"
    );
    for (line, (scenario, fields)) in lines.iter().zip(expected) {
        assert_eq!(line["scenario"], *scenario);
        for field in *fields {
            assert!(
                line[field].is_number(),
                "{scenario}: `{field}` missing in {line}"
            );
        }
    }
    assert_eq!(lines[0]["ideal_ms"], 8.0);
    assert_eq!(lines[4]["nodes"], 20);

    let output = braid()
        .args(["bench", "--scenario", "nope"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid value 'nope'") && stderr.contains("skewed"),
        "{stderr}"
    );
}

/// `braid` with its own store in `ws`.
fn braid_in(ws: &Workspace) -> Command {
    let mut command = braid();
    command.env(
        "BRAID_STORE",
        format!("sqlite://{}", ws.path("store.db").display()),
    );
    command
}

#[test]
fn runs_are_recorded_and_can_be_listed_and_shown() {
    let ws = Workspace::new(
        "pipeline: recorded
inputs:
  n: { type: integer }
agents:
  double: { kind: command, run: [sh, -c, 'echo {\\\"d\\\": 2}'], reads: [n], writes: [d] }
  fails:  { kind: command, run: [sh, -c, 'exit 9'], reads: [d], writes: [f] }
",
    );
    let output = braid_in(&ws)
        .arg("run")
        .arg(ws.pipeline())
        .args(["--input", r#"{"n": 1}"#, "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let run_id = json_of(&output)["run_id"].as_str().unwrap().to_owned();

    let output = braid_in(&ws)
        .args(["runs", "list", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let list = json_of(&output);
    assert_eq!(list[0]["run_id"], run_id.as_str());
    assert_eq!(list[0]["status"], "failed");
    assert_eq!(list[0]["checkpoint"], "end");

    let output = braid_in(&ws)
        .args(["runs", "show", &run_id, "--output", "json"])
        .output()
        .unwrap();
    let shown = json_of(&output);
    assert_eq!(shown["input"], serde_json::json!({"n": 1}));
    assert_eq!(shown["state"], serde_json::json!({"n": 1, "d": 2}));
    assert_eq!(shown["agents"]["double"]["status"], "completed");
    assert!(
        shown["agents"]["fails"]["error"]
            .as_str()
            .unwrap()
            .contains("exit code 9")
    );

    let text = braid_in(&ws)
        .args(["runs", "show", &run_id])
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("of recorded: failed") && text.contains("exit code 9"),
        "{text}"
    );

    // --checkpoint none writes nothing.
    braid_in(&ws)
        .arg("run")
        .arg(ws.pipeline())
        .args(["--input", r#"{"n": 1}"#, "--checkpoint", "none"])
        .output()
        .unwrap();
    let output = braid_in(&ws)
        .args(["runs", "list", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(json_of(&output).as_array().unwrap().len(), 1);

    let output = braid_in(&ws)
        .args(["runs", "show", "nope"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no run with id `nope`"));
}

#[test]
fn runs_started_together_on_a_new_store_are_all_recorded() {
    // Batch jobs launched side by side: each process finds the store file
    // new and migrates it at the same moment.
    let ws = Workspace::new(
        "pipeline: together
agents:
  only: { kind: sleep, ms: 1, writes: [done] }
",
    );
    let children: Vec<_> = (0..4)
        .map(|_| {
            braid_in(&ws)
                .arg("run")
                .arg(ws.pipeline())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let output = braid_in(&ws)
        .args(["runs", "list", "--output", "json"])
        .output()
        .unwrap();
    let list = json_of(&output);
    assert_eq!(list.as_array().unwrap().len(), 4, "{list:#}");
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "completed")
    );
}

#[test]
fn an_unreachable_store_is_a_clear_error_before_anything_runs() {
    let ws = Workspace::new(
        "pipeline: p\nagents:\n  a: { kind: command, run: [sh, -c, 'touch ran; echo {}'] }\n",
    );
    let output = braid()
        .arg("run")
        .arg(ws.pipeline())
        .args(["--store", "postgres://app:hunter2@127.0.0.1:1/braid"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot open the store at postgres://app:***@127.0.0.1:1/braid"),
        "{stderr}"
    );
    assert!(
        stderr.contains("refused") && !stderr.contains("hunter2"),
        "{stderr}"
    );
    assert!(
        !ws.path("ran").exists(),
        "nothing should run without the store"
    );
}

#[test]
fn a_forced_resume_never_feeds_an_agent_outputs_of_a_changed_definition() {
    // `source` stands for an impostor's agent: after the run failed, the file
    // is replaced by one whose `source` writes something else. A forced
    // resume must run `source` again (and `sink`, downstream of it) instead
    // of handing `sink` the stored "evil" value; `other` is unchanged and
    // keeps its result.
    let before = r#"pipeline: impostor
agents:
  source: { kind: command, run: [sh, -c, 'echo source >> ran; echo "{\"v\": \"evil\"}"'], writes: [v] }
  other:  { kind: command, run: [sh, -c, 'echo other >> ran; echo "{\"o\": 1}"'], writes: [o] }
  sink:   { kind: command, run: [sh, -c, 'echo sink >> ran; cat > stdin.json; test -f ok && echo "{\"s\": 1}"'], reads: [v, o], writes: [s] }
"#;
    let ws = Workspace::new(before);
    let output = braid_in(&ws)
        .arg("run")
        .arg(ws.pipeline())
        .args(["--checkpoint", "agent", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let run_id = json_of(&output)["run_id"].as_str().unwrap().to_owned();
    assert!(
        std::fs::read_to_string(ws.path("stdin.json"))
            .unwrap()
            .contains("evil")
    );

    std::fs::write(ws.pipeline(), before.replace(r#"\"evil\""#, r#"\"good\""#)).unwrap();
    std::fs::write(ws.path("ok"), "").unwrap();
    let output = braid_in(&ws)
        .args(["runs", "resume", &run_id, "--force", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = json_of(&output);
    assert_eq!(report["state"]["v"], "good", "{report}");
    assert_eq!(report["agents"]["other"]["resumed"], true, "{report}");
    assert!(
        report["agents"]["source"].get("resumed").is_none(),
        "{report}"
    );
    let stdin = std::fs::read_to_string(ws.path("stdin.json")).unwrap();
    assert!(stdin.contains("good") && !stdin.contains("evil"), "{stdin}");
    let mut ran: Vec<String> = std::fs::read_to_string(ws.path("ran"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    ran.sort();
    assert_eq!(ran, ["other", "sink", "sink", "source", "source"]);
}

#[test]
fn resuming_against_a_changed_pipeline_is_refused_unless_forced() {
    let pipeline = "pipeline: changing
agents:
  first: { kind: command, run: [sh, -c, 'echo first >> ran; echo {}'] }
  flaky: { kind: command, run: [sh, -c, 'echo flaky >> ran; test -f ok'], after: [first] }
";
    let ws = Workspace::new(pipeline);
    let output = braid_in(&ws)
        .arg("run")
        .arg(ws.pipeline())
        .args(["--checkpoint", "agent", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let run_id = json_of(&output)["run_id"].as_str().unwrap().to_owned();

    std::fs::write(ws.pipeline(), format!("{pipeline}# edited\n")).unwrap();
    std::fs::write(ws.path("ok"), "").unwrap();
    let output = braid_in(&ws)
        .args(["runs", "resume", &run_id])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("has changed since the run started") && stderr.contains("--force"),
        "{stderr}"
    );

    let output = braid_in(&ws)
        .args(["runs", "resume", &run_id, "--force", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = json_of(&output);
    assert_eq!(report["run_id"], run_id.as_str());
    assert_eq!(report["agents"]["first"]["resumed"], true);
    let ran = std::fs::read_to_string(ws.path("ran")).unwrap();
    assert_eq!(ran, "first\nflaky\nflaky\n");

    let output = braid_in(&ws)
        .args(["runs", "resume", &run_id])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("already completed"));
}

#[test]
fn a_run_killed_with_sigkill_resumes_without_rerunning_checkpointed_agents() {
    // `slow` takes 30 s unless the file `fast` exists; every agent logs each execution.
    let ws = Workspace::new(
        r#"pipeline: crashable
agents:
  a:    { kind: command, run: [sh, -c, "echo a >> ran; echo '{\"a\": 1}'"], writes: [a] }
  b:    { kind: command, run: [sh, -c, "echo b >> ran; echo '{\"b\": 2}'"], reads: [a], writes: [b] }
  side: { kind: command, run: [sh, -c, "echo side >> ran; echo '{\"side\": 5}'"], writes: [side] }
  slow: { kind: command, run: [sh, -c, "echo $$ > slow.pid; echo slow >> ran; [ -f fast ] || sleep 30; echo '{\"s\": 3}'"], reads: [b], writes: [s] }
  last: { kind: command, run: [sh, -c, "echo last >> ran; echo '{\"l\": 4}'"], reads: [s, side], writes: [l] }
"#,
    );
    let mut child = braid_in(&ws)
        .arg("run")
        .arg(ws.pipeline())
        .args(["--checkpoint", "agent", "--output", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid_file = ws.path("slow.pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&pid_file).map_or(true, |s| !s.ends_with('\n')) {
        assert!(Instant::now() < deadline, "slow never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Wait until the agent-by-agent checkpoints of a, b and side are in
    // the store, as another process sees them.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = json_of(
            &braid_in(&ws)
                .args(["runs", "list", "--output", "json"])
                .output()
                .unwrap(),
        );
        if let Some(id) = list[0]["run_id"].as_str() {
            let shown = json_of(
                &braid_in(&ws)
                    .args(["runs", "show", id, "--output", "json"])
                    .output()
                    .unwrap(),
            );
            if ["a", "b", "side"]
                .iter()
                .all(|agent| shown["agents"][agent]["status"] == "completed")
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "checkpoints never reached the store"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    // The killed process could not kill its agent; do it for it.
    let slow: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(slow),
        nix::sys::signal::Signal::SIGKILL,
    );

    let output = braid_in(&ws)
        .args(["runs", "list", "--output", "json"])
        .output()
        .unwrap();
    let list = json_of(&output);
    assert_eq!(
        list[0]["status"], "running",
        "the dead run is on record: {list}"
    );
    let run_id = list[0]["run_id"].as_str().unwrap().to_owned();

    std::fs::write(ws.path("fast"), "").unwrap();
    let output = braid_in(&ws)
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
    for agent in ["a", "b", "side"] {
        assert_eq!(
            resumed["agents"][agent]["resumed"], true,
            "{agent}: {resumed}"
        );
    }

    let ran = std::fs::read_to_string(ws.path("ran")).unwrap();
    let count = |agent: &str| ran.lines().filter(|l| *l == agent).count();
    assert_eq!((count("a"), count("b"), count("side")), (1, 1, 1), "{ran}");
    assert_eq!((count("slow"), count("last")), (2, 1), "{ran}");

    // The same final state as a run that was never interrupted.
    let (_, clean) = run_json(&["--checkpoint", "none"], &ws.pipeline());
    assert_eq!(resumed["state"], clean["state"]);

    let output = braid_in(&ws)
        .args(["runs", "show", &run_id, "--output", "json"])
        .output()
        .unwrap();
    let shown = json_of(&output);
    assert_eq!(shown["status"], "completed");
    assert_eq!(shown["state"], clean["state"]);
}

#[test]
fn a_run_whose_checkpoints_cannot_be_written_still_reports_and_exits_3() {
    // The agent breaks the store under the run's feet (a bad manual
    // migration, say): the final write fails after its retries.
    let ws = Workspace::new(
        r#"pipeline: unlucky
agents:
  vandal:
    kind: command
    run: [python3, -c, "import sqlite3; sqlite3.connect('store.db').execute('DROP TABLE braid_deltas'); print('{\"x\": 1}')"]
    writes: [x]
"#,
    );
    let output = braid_in(&ws)
        .arg("run")
        .arg(ws.pipeline())
        .args(["--output", "json", "--db-write-retries", "1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    let report = json_of(&output);
    assert_eq!(report["status"], "completed");
    assert_eq!(report["state"]["x"], 1, "the result is not lost");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the run completed but was not saved") && stderr.contains("braid_deltas"),
        "{stderr}"
    );
}

#[test]
fn serve_refuses_to_expose_itself_without_a_token() {
    let output = braid()
        .args(["serve", "--bind", "0.0.0.0:0", "--no-store"])
        .env_remove("BRAID_TOKEN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without a token"),
        "{stderr}"
    );

    let ws = Workspace::new("");
    std::fs::write(ws.path("token"), "\n").unwrap();
    let output = braid()
        .args(["serve", "--bind", "0.0.0.0:0", "--no-store", "--token-file"])
        .arg(ws.path("token"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("token file is empty"));
}

#[test]
fn the_cli_knows_http_agents_and_checks_their_secrets_at_load() {
    let ws = Workspace::new(
        "pipeline: remote
agents:
  score: { kind: http, url: 'http://127.0.0.1:9/score', headers: { Authorization: 'Bearer ${BRAID_TEST_UNSET_TOKEN}' }, writes: [score] }
",
    );
    let output = braid()
        .arg("validate")
        .arg(ws.pipeline())
        .env_remove("BRAID_TEST_UNSET_TOKEN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "agent `score`: header `Authorization` uses ${BRAID_TEST_UNSET_TOKEN}, which is not set"
        ),
        "{stderr}"
    );
    let output = braid()
        .arg("validate")
        .arg(ws.pipeline())
        .env("BRAID_TEST_UNSET_TOKEN", "t0ken")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Copies a folder (the example) into a scratch one.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "data" {
                copy_dir(&entry.path(), &target);
            }
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn the_flagship_answers_with_numbers_that_match_the_data() {
    let ws = Workspace::new("");
    let example = ws.path("optimize");
    copy_dir(&examples().join("optimize"), &example);
    let (output, report) = run_json(
        &[
            "--input",
            r#"{"request": "Cut our LLM spend without hurting latency", "records": 4000}"#,
            "--checkpoint",
            "none",
        ],
        &example.join("pipeline.yaml"),
    );
    assert_eq!(output.status.code(), Some(0), "{report}");
    let state = &report["state"];
    assert_eq!(state["dataset"]["records"], 4000);
    assert_eq!(state["triage_result"]["route"], "mixed");
    let plan = &state["optimization_plan"];

    // The same figures, computed independently from the generated data.
    let check = std::process::Command::new("python3")
        .current_dir(&example)
        .args(["-c", r#"
import json, sqlite3
db = sqlite3.connect("data/usage.db")
total = db.execute("SELECT SUM(cost_usd) FROM calls").fetchone()[0]
mini_in, mini_out = db.execute("SELECT input_per_mtok, output_per_mtok FROM prices WHERE model = 'gpt-4o-mini'").fetchone()
spend, tin, tout = db.execute("SELECT SUM(cost_usd), SUM(prompt_tokens), SUM(completion_tokens) FROM calls WHERE team = 'support' AND model = 'gpt-4o' AND prompt_tokens < 500").fetchone()
p95 = {}
for (model,) in db.execute("SELECT DISTINCT model FROM calls"):
    lat = [r[0] for r in db.execute("SELECT latency_ms FROM calls WHERE model = ? ORDER BY latency_ms", (model,))]
    import math
    p95[model] = lat[math.ceil(0.95 * len(lat)) - 1]
print(json.dumps({"total": total, "support_savings": spend - (tin * mini_in + tout * mini_out) / 1e6, "p95": p95}))
"#])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let expected: Value = serde_json::from_slice(&check.stdout).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() < 0.006;
    assert!(
        close(
            plan["total_spend_usd"].as_f64().unwrap(),
            expected["total"].as_f64().unwrap()
        ),
        "{plan} vs {expected}"
    );
    let support = plan["proposals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "cheaper_model" && p["team"] == "support" && p["from"] == "gpt-4o")
        .expect("a proposal to move support's short gpt-4o prompts");
    assert!(
        close(
            support["savings_usd"].as_f64().unwrap(),
            expected["support_savings"].as_f64().unwrap()
        ),
        "{support} vs {expected}"
    );
    for metric in state["metrics_result"].as_array().unwrap() {
        let model = metric["model"].as_str().unwrap();
        assert_eq!(metric["p95_ms"], expected["p95"][model], "p95 of {model}");
    }
    let markdown = state["report"].as_str().unwrap();
    assert!(markdown.starts_with("# How to cut LLM spend"), "{markdown}");
    assert!(markdown.contains(&format!(
        "Spend: **${:.2}**",
        plan["total_spend_usd"].as_f64().unwrap()
    )));

    // The text view shows the report itself, and --out writes it with a timeline.
    let out = ws.path("report.md");
    let text = braid()
        .arg("run")
        .arg(example.join("pipeline.yaml"))
        .args([
            "--input",
            r#"{"records": 4000}"#,
            "--checkpoint",
            "none",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("## Proposals") && !stdout.contains("\"cost_result\""),
        "{stdout}"
    );
    let written = std::fs::read_to_string(out).unwrap();
    assert!(
        written.contains("## Proposals")
            && written.contains("## Timeline")
            && written.contains("| optimization | completed |"),
        "{written}"
    );
}

#[test]
fn a_batch_run_writes_its_metrics_and_logs_as_json() {
    let ws = Workspace::new("");
    let metrics = ws.path("metrics.prom");
    let output = braid()
        .arg("run")
        .arg(examples().join("seed.yaml"))
        .args([
            "--checkpoint",
            "none",
            "--output",
            "json",
            "--log-format",
            "json",
            "--metrics-file",
        ])
        .arg(&metrics)
        .env("RUST_LOG", "braid_core=debug")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let text = std::fs::read_to_string(&metrics).unwrap();
    for family in [
        "braid_runs_total",
        "braid_run_makespan_seconds",
        "braid_agents_total",
        "braid_agent_duration_seconds",
        "braid_agent_queue_wait_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "no {family} in:\n{text}"
        );
    }
    assert!(
        text.contains("braid_agents_total{status=\"completed\"} 6"),
        "{text}"
    );
    assert!(
        text.contains("braid_runs_total{status=\"completed\"} 1"),
        "{text}"
    );
    // Debug logs are JSON lines carrying the run's and the agent's span.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("\"agent\""))
        .unwrap_or_else(|| panic!("no agent span in the log:\n{stderr}"));
    let entry: Value = serde_json::from_str(line).unwrap();
    assert_eq!(entry["span"]["name"], "agent", "{entry}");
    assert!(line.contains("seed-optimization"), "{line}");
}

#[test]
fn runs_show_draws_the_timeline_with_the_critical_path() {
    let ws = Workspace::new(
        "pipeline: timed
agents:
  start: { kind: sleep, ms: 10, writes: [s] }
  long:  { kind: sleep, ms: 80, reads: [s], writes: [l] }
  short: { kind: sleep, ms: 10, reads: [s], writes: [t] }
  end:   { kind: sleep, ms: 10, reads: [l, t], writes: [e] }
",
    );
    let output = braid_in(&ws)
        .arg("run")
        .arg(ws.pipeline())
        .args(["--output", "json"])
        .output()
        .unwrap();
    let run_id = json_of(&output)["run_id"].as_str().unwrap().to_owned();
    let svg_path = ws.path("timeline.svg");
    let output = braid_in(&ws)
        .args(["runs", "show", &run_id, "--timeline"])
        .arg(&svg_path)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    for agent in ["start", "long", "short", "end"] {
        assert!(
            svg.contains(&format!(
                r#"class="run" data-agent="{agent}" data-status="completed""#
            )),
            "{agent}: {svg}"
        );
    }
    let outlined = |agent: &str| {
        svg.lines()
            .find(|l| l.contains(&format!(r#"class="run" data-agent="{agent}""#)))
            .is_some_and(|l| l.contains("stroke=\"#d93025\""))
    };
    assert!(
        outlined("start") && outlined("long") && outlined("end"),
        "{svg}"
    );
    assert!(!outlined("short"), "short is not on the critical path");
}

/// A `foreach` agent is one bar in the timeline, labelled with how many of
/// its elements completed; its instances get no bars of their own.
#[test]
fn runs_show_draws_a_fanout_as_one_bar_with_its_progress() {
    let ws = Workspace::new(
        r#"pipeline: fanned
agents:
  plan: { kind: sleep, ms: 1, writes: [items], value: [10, 20, 30, 40] }
  work:
    kind: command
    run: [sh, -c, 'if grep -q "\"item\":30"; then echo no thirty >&2; exit 1; fi; echo "{\"out\": 1}"']
    foreach: items
    on_item_failure: skip
    reads: [item]
    writes: [out]
  join: { kind: sleep, ms: 1, reads: [out], writes: [done] }
"#,
    );
    let output = braid_in(&ws)
        .arg("run")
        .arg(ws.pipeline())
        .args(["--output", "json"])
        .output()
        .unwrap();
    let report = json_of(&output);
    assert_eq!(report["agents"]["work"]["items"]["failed"], 1, "{report}");
    let run_id = report["run_id"].as_str().unwrap().to_owned();
    let svg_path = ws.path("timeline.svg");
    let output = braid_in(&ws)
        .args(["runs", "show", &run_id, "--timeline"])
        .arg(&svg_path)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let bars: Vec<&str> = svg
        .lines()
        .filter(|l| l.contains(r#"class="run""#))
        .collect();
    assert_eq!(bars.len(), 3, "plan, work and join only: {svg}");
    assert!(
        bars.iter()
            .any(|l| l.contains(r#"data-agent="work" data-status="completed""#)),
        "{svg}"
    );
    assert!(
        svg.contains(r#"<tspan class="progress">3 of 4, 1 failed</tspan>"#),
        "{svg}"
    );
    assert!(
        svg.contains("×4"),
        "the fan-out's name carries its size: {svg}"
    );
}

/// A group is one bar in the timeline, whatever it nests: a `foreach`
/// group labelled with its size and progress, a `repeat` group with how
/// many rounds it ran; their members and rounds get no bars of their own.
#[test]
fn runs_show_draws_a_group_as_one_bar_and_a_loop_with_its_rounds() {
    let ws = Workspace::new(
        "pipeline: grouped
agents:
  plan: { kind: sleep, ms: 1, writes: [items], value: [1, 2, 3] }
  per_item:
    kind: pipeline
    foreach: items
    agents:
      extract:  { kind: sleep, ms: 5, reads: [item], writes: [a] }
      classify: { kind: sleep, ms: 5, reads: [a], writes: [b] }
    outputs: { results: b }
  refine:
    kind: pipeline
    repeat: { until: 'critique > 5', max: 3, on_max: continue }
    agents:
      draft:    { kind: sleep, ms: 5, reads: [round], writes: [draft] }
      critique: { kind: sleep, ms: 5, reads: [draft], writes: [critique], value: 1 }
    outputs: { final: critique }
  join: { kind: sleep, ms: 1, reads: [results, final], writes: [done] }
",
    );
    let output = braid_in(&ws)
        .arg("run")
        .arg(ws.pipeline())
        .args(["--output", "json"])
        .output()
        .unwrap();
    let report = json_of(&output);
    assert_eq!(report["status"], "completed", "{report}");
    let run_id = report["run_id"].as_str().unwrap().to_owned();
    let svg_path = ws.path("timeline.svg");
    let output = braid_in(&ws)
        .args(["runs", "show", &run_id, "--timeline"])
        .arg(&svg_path)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let bars: Vec<&str> = svg
        .lines()
        .filter(|l| l.contains(r#"class="run""#))
        .filter_map(|l| l.split(r#"data-agent=""#).nth(1)?.split('"').next())
        .collect();
    assert_eq!(bars, ["plan", "per_item", "refine", "join"], "{svg}");
    assert!(
        svg.contains(r##"refine <tspan class="rounds" fill="#555">3 rounds</tspan>"##),
        "the loop's name says its rounds: {svg}"
    );
    assert!(svg.contains("×3"), "{svg}");
    assert!(
        svg.contains(r#"<tspan class="progress">3 of 3</tspan>"#),
        "elements counted, not their members: {svg}"
    );
    assert!(
        !svg.contains("refine#") && !svg.contains("per_item["),
        "no row for a member or round: {svg}"
    );
}

/// Built without the `otlp` feature (the default), an OTLP endpoint in the
/// environment is not silently ignored.
#[cfg(not(feature = "otlp"))]
#[test]
fn an_otlp_endpoint_without_the_feature_gets_a_warning_not_a_failure() {
    let ws = Workspace::new(
        "pipeline: plain
agents:
  only: { kind: sleep, ms: 1, writes: [done] }
",
    );
    let output = braid_in(&ws)
        .arg("run")
        .arg(ws.pipeline())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT is set")
            && stderr.contains("without the `otlp` feature"),
        "{stderr}"
    );
}

/// `braid serve` in the background; killed when dropped.
struct Served {
    child: std::process::Child,
    addr: String,
}

impl Served {
    fn start(args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = braid()
            .args(["serve", "--bind", "127.0.0.1:0", "--no-store"])
            .args(args)
            .env("BRAID_TOKEN", "s3cret")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("braid serve said where it listens")
                .unwrap();
            if let Some(rest) = line.strip_prefix("braid: serving on http://") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr }
    }

    /// One HTTP/1.1 request; the whole answer (the server closes).
    fn ask(&self, head: &str) -> String {
        self.send(&format!(
            "{head}Host: {}\r\nConnection: close\r\n\r\n",
            self.addr
        ))
    }

    /// Sends `bytes`; reads until the server closes (at most 30 s).
    fn send(&self, bytes: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(bytes.as_bytes()).unwrap();
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .expect("the server closes the connection");
        String::from_utf8_lossy(&answer).into_owned()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_takes_its_connection_and_origin_flags() {
    let output = braid()
        .args(["serve", "--no-store", "--allow-origin", "dash.example.com"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("is not an origin"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let closed = Served::start(&[]);
    assert!(
        closed
            .ask("GET /metrics HTTP/1.1\r\n")
            .starts_with("HTTP/1.1 401")
    );
    let from_dash = "GET /v1/runs HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\
                     Origin: https://dash.example.com\r\n";
    assert!(closed.ask(from_dash).starts_with("HTTP/1.1 403"));
    drop(closed);

    let open = Served::start(&[
        "--public-metrics",
        "--allow-origin",
        "https://dash.example.com",
        "--allow-origin",
        "https://other.example.com",
        "--header-timeout",
        "200ms",
        "--idle-timeout",
        "5s",
        "--max-connections",
        "8",
    ]);
    assert!(
        open.ask("GET /metrics HTTP/1.1\r\n")
            .starts_with("HTTP/1.1 200")
    );
    assert!(open.ask(from_dash).starts_with("HTTP/1.1 200"));
    // A request whose headers never end is dropped after --header-timeout.
    let answer = open.send("GET /healthz HTTP/1.1\r\nHost: localhost\r\n");
    assert!(!answer.contains("200 OK"), "{answer}");
}

/// Whether `pid` is a running process (a zombie, dead but not yet reaped,
/// is not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// Waits (generously) until `done`, or fails with `what`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn no_agent_outlives_braid_killed_with_sigkill_and_resume_kills_what_it_left() {
    // `slow` reads its input, starts a helper in its group (out of reach of
    // the parent-death signal, which only its direct child gets), notes
    // whether the helper of an earlier execution is still running, and
    // waits unless the file `fast` exists. Every execution is logged.
    let ws = Workspace::new(
        r#"pipeline: orphans
agents:
  first: { kind: command, run: [sh, -c, "echo first >> ran; echo '{\"a\": 1}'"], writes: [a] }
  slow:
    kind: command
    reads: [a]
    writes: [s]
    run:
      - sh
      - -c
      - |
        cat > /dev/null
        old=$(cat helper.pid 2>/dev/null) && grep -qv ') Z' /proc/$old/stat 2>/dev/null && echo leftover >> ran
        sleep 300 &
        echo $! > helper.tmp && mv helper.tmp helper.pid
        echo slow >> ran
        echo $$ > slow.tmp && mv slow.tmp slow.pid
        [ -f fast ] || wait
        echo '{"s": 2}'
"#,
    );
    let mut child = braid_in(&ws)
        .arg("run")
        .arg(ws.pipeline())
        .args(["--checkpoint", "agent", "--output", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid_in = |name: &str| -> Option<i32> {
        std::fs::read_to_string(ws.path(name))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    };
    wait_until("slow never started", || pid_in("slow.pid").is_some());
    let slow = pid_in("slow.pid").unwrap();
    let helper = pid_in("helper.pid").unwrap();
    assert!(running(slow));

    child.kill().unwrap(); // SIGKILL: braid gets no chance to clean up
    child.wait().unwrap();
    wait_until("the agent's process outlived braid", || !running(slow));

    let list = json_of(
        &braid_in(&ws)
            .args(["runs", "list", "--output", "json"])
            .output()
            .unwrap(),
    );
    assert_eq!(list[0]["status"], "running", "{list}");
    let run_id = list[0]["run_id"].as_str().unwrap().to_owned();

    std::fs::write(ws.path("fast"), "").unwrap();
    let output = braid_in(&ws)
        .args(["runs", "resume", &run_id, "--output", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let resumed = json_of(&output);
    assert_eq!(resumed["agents"]["first"]["resumed"], true, "{resumed}");
    assert_eq!(resumed["state"]["s"], 2, "{resumed}");
    assert!(
        stderr.contains("killed what the run's previous process left running: slow (group"),
        "{stderr}"
    );
    // The helper the dead run left was killed before `slow` ran again.
    assert!(!running(helper), "the dead run's helper is still running");
    let ran = std::fs::read_to_string(ws.path("ran")).unwrap();
    let count = |line: &str| ran.lines().filter(|l| *l == line).count();
    assert_eq!(
        (count("first"), count("slow"), count("leftover")),
        (1, 2, 0),
        "{ran}"
    );
}

#[test]
fn a_run_whose_process_is_alive_is_not_resumed_whatever_the_program_is_called() {
    // The owner's liveness is `kill(pid, 0)`: not a guess from its command
    // line, which a renamed binary (here, a link called `runner`) defeats.
    let ws = Workspace::new(
        r#"pipeline: alive
agents:
  slow: { kind: command, run: [sh, -c, "cat > /dev/null; touch started; while [ ! -f done ]; do sleep 0.01; done; echo '{\"s\": 1}'"], writes: [s] }
"#,
    );
    let runner = ws.path("runner");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_braid"), &runner).unwrap();
    let template = braid_in(&ws);
    let mut child = Command::new(&runner)
        .envs(template.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .arg("run")
        .arg(ws.pipeline())
        .args(["--checkpoint", "agent", "--output", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("slow never started", || ws.path("started").exists());
    let list = json_of(
        &braid_in(&ws)
            .args(["runs", "list", "--output", "json"])
            .output()
            .unwrap(),
    );
    let run_id = list[0]["run_id"].as_str().unwrap().to_owned();
    let output = braid_in(&ws)
        .args(["runs", "resume", &run_id])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    std::fs::write(ws.path("done"), "").unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("it is still running (process"), "{stderr}");
}

#[test]
fn an_agent_writing_stderr_without_line_breaks_costs_bounded_memory() {
    // 256 MiB of stderr with no newline: only the first 16 KiB of a line
    // is kept, the rest is read and dropped as it arrives.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("noisy.yaml");
    std::fs::write(
        &file,
        "pipeline: noisy\nagents:\n  noisy:\n    kind: command\n    run: [python3, -c, \"import sys\\nfor _ in range(256): sys.stderr.write('x' * 1048576)\\nprint('{}')\"]\n",
    )
    .unwrap();
    // The peak memory of braid (and its agent) as seen by a parent of its
    // own, so nothing else this test binary runs is counted.
    let probe = "import resource, subprocess, sys\n\
                 code = subprocess.run(sys.argv[1:], capture_output=True).returncode\n\
                 print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)";
    let output = Command::new("python3")
        .args(["-c", probe, env!("CARGO_BIN_EXE_braid"), "run", "--store"])
        .arg(format!("sqlite://{}", dir.path().join("s.db").display()))
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut fields = stdout.split_whitespace();
    let code: i32 = fields.next().unwrap().parse().unwrap();
    let peak_kib: u64 = fields.next().unwrap().parse().unwrap();
    assert_eq!(
        code,
        0,
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        peak_kib < 128 * 1024,
        "braid peaked at {} MiB reading 256 MiB of stderr",
        peak_kib / 1024
    );
}
