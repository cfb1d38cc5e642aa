//! People in the loop and forks through the `braid` binary, as a user
//! drives them: `braid run` stops at a question (exit 4), `braid runs
//! answer` continues it, `braid runs fork` re-runs only what is downstream
//! of the point it names (side-effect counters say what ran).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The binary, with a store of the test's own.
fn braid(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_braid"));
    command.env("BRAID_STORE", format!("sqlite://{}/runs.db", dir.display()));
    command.current_dir(dir);
    command
}

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
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

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// How many times the agent `name` ran (each run appends a line).
fn count(dir: &Path, name: &str) -> usize {
    std::fs::read_to_string(dir.join(format!("{name}.calls")))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// A command agent that counts its calls and writes `{field: value}`.
fn counted(dir: &Path, name: &str, reads: &str, field: &str, value: &str) -> String {
    format!(
        "  {name}:\n    kind: command\n    run: [sh, -c, 'echo x >> {calls}; cat > /dev/null; echo \"{{\\\"{field}\\\": {value}}}\"']\n    reads: [{reads}]\n    writes: [{field}]\n",
        calls = dir.join(format!("{name}.calls")).display()
    )
}

#[test]
fn a_run_waits_for_an_answer_and_braid_runs_answer_continues_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = braid(dir.path())
        .arg("run")
        .arg(examples().join("approval/pipeline.yaml"))
        .args(["-i", r#"{"request": "cut costs"}"#, "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(4), "{}", stderr(&run));
    let report = json(&run);
    assert_eq!(report["status"], "waiting");
    // The branch that does not need the answer finished.
    assert_eq!(report["agents"]["metrics"]["status"], "completed");
    assert_eq!(report["agents"]["approve"]["status"], "waiting");
    let id = report["run_id"].as_str().unwrap().to_owned();
    let asked = stderr(&run);
    assert!(asked.contains("Apply these changes?"), "{asked}");
    assert!(
        asked.contains("optimization_plan = "),
        "the reads are shown: {asked}"
    );
    assert!(
        asked.contains("braid runs answer") && asked.contains(&id),
        "how to answer: {asked}"
    );

    // A bad answer: exit 2 with the schema's message.
    let bad = braid(dir.path())
        .args([
            "runs",
            "answer",
            &id,
            "approve",
            "--value",
            r#"{"approved": "yes"}"#,
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("\"yes\" is not of type \"boolean\""),
        "{}",
        stderr(&bad)
    );
    let not_json = braid(dir.path())
        .args(["runs", "answer", &id, "approve", "--value", "{oops"])
        .output()
        .unwrap();
    assert_eq!(not_json.status.code(), Some(2));
    assert!(
        stderr(&not_json).contains("not valid JSON"),
        "{}",
        stderr(&not_json)
    );

    let answered = braid(dir.path())
        .args(["runs", "answer", &id, "approve", "--output", "json"])
        .args(["--value", r#"{"approved": true, "note": "go"}"#])
        .output()
        .unwrap();
    assert_eq!(answered.status.code(), Some(0), "{}", stderr(&answered));
    let report = json(&answered);
    assert_eq!(report["status"], "completed");
    assert_eq!(report["state"]["result"], "applied");
    assert_eq!(
        report["agents"]["metrics"]["resumed"], true,
        "not run again"
    );

    let again = braid(dir.path())
        .args([
            "runs",
            "answer",
            &id,
            "approve",
            "--value",
            r#"{"approved": false}"#,
        ])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("not waiting"), "{}", stderr(&again));

    let show = braid(dir.path())
        .args(["runs", "show", &id, "--output", "json"])
        .output()
        .unwrap();
    let shown = json(&show);
    assert_eq!(shown["status"], "completed");
    assert_eq!(shown["state"]["approval"]["note"], "go");
}

#[test]
fn a_run_that_waits_cannot_run_without_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let run = braid(dir.path())
        .arg("run")
        .arg(examples().join("approval/pipeline.yaml"))
        .args(["-i", r#"{"request": "x"}"#, "--checkpoint", "none"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(
        stderr(&run).contains("cannot keep a run that waits"),
        "{}",
        stderr(&run)
    );
}

#[test]
fn a_timed_out_wait_refuses_answers_and_resume_applies_its_default() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "pipeline: timed\nagents:\n  ask:\n    kind: input\n    prompt: Go?\n    writes: [go]\n    timeout: 300ms\n    default: false\n{}",
        counted(dir.path(), "next", "go", "done", "1")
    );
    std::fs::write(dir.path().join("p.yaml"), yaml).unwrap();
    let run = braid(dir.path())
        .args(["run", "p.yaml", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(4), "{}", stderr(&run));
    let id = json(&run)["run_id"].as_str().unwrap().to_owned();
    std::thread::sleep(std::time::Duration::from_millis(400));
    let late = braid(dir.path())
        .args(["runs", "answer", &id, "ask", "--value", "true"])
        .output()
        .unwrap();
    assert_eq!(late.status.code(), Some(2));
    assert!(
        stderr(&late).contains("timeout passed"),
        "{}",
        stderr(&late)
    );
    assert_eq!(count(dir.path(), "next"), 0);
    let resumed = braid(dir.path())
        .args(["runs", "resume", &id, "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
    let report = json(&resumed);
    assert_eq!(report["state"]["go"], false, "the default");
    assert_eq!(count(dir.path(), "next"), 1);
}

#[test]
fn a_fork_re_runs_exactly_what_is_downstream_of_its_point() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let yaml = format!(
        "pipeline: forked\ninputs:\n  q: {{ type: string }}\n  items: {{ type: array }}\nagents:\n{}{}{}{}{}",
        counted(d, "a", "q", "fa", "1"),
        counted(d, "b", "fa", "fb", "2"),
        counted(d, "c", "fb", "fc", "3"),
        counted(d, "side", "q", "fs", "4"),
        // One counter file per element: `each[i]` appends to each-<i>.calls.
        "  each:\n    kind: command\n    foreach: items\n    run: [sh, -c, 'read line; i=$(echo \"$line\" | sed \"s/.*\\\"item_index\\\": *\\([0-9]*\\).*/\\1/\"); echo x >> each-$i.calls; echo \"{\\\"out\\\": $i}\"']\n    reads: [item, item_index]\n    writes: [out]\n  total:\n    kind: sleep\n    ms: 0\n    value: ok\n    reads: [out]\n    writes: [summed]\n",
    );
    std::fs::write(d.join("p.yaml"), yaml).unwrap();
    let run = braid(d)
        .args(["run", "p.yaml", "--output", "json", "-i"])
        .arg(r#"{"q": "x", "items": ["p", "q", "r"]}"#)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let id = json(&run)["run_id"].as_str().unwrap().to_owned();
    let counts = |names: &[&str]| names.iter().map(|n| count(d, n)).collect::<Vec<_>>();
    let all = ["a", "b", "c", "side", "each-0", "each-1", "each-2"];
    assert_eq!(counts(&all), [1, 1, 1, 1, 1, 1, 1]);

    // From `b`: b and c run again, nothing else.
    let fork = braid(d)
        .args(["runs", "fork", &id, "--from", "b", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(fork.status.code(), Some(0), "{}", stderr(&fork));
    let report = json(&fork);
    assert_ne!(report["run_id"], id);
    assert_eq!(report["state"]["fc"], 3);
    assert_eq!(report["agents"]["a"]["reused_from"], id.as_str());
    assert_eq!(counts(&all), [1, 2, 2, 1, 1, 1, 1]);

    // From one instance: only that element runs again, then what reads the list.
    let fork = braid(d)
        .args(["runs", "fork", &id, "--from", "each[1]", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(fork.status.code(), Some(0), "{}", stderr(&fork));
    assert_eq!(json(&fork)["state"]["out"], serde_json::json!([0, 1, 2]));
    assert_eq!(counts(&all), [1, 2, 2, 1, 1, 2, 1]);

    // Setting an input field re-runs its readers and what follows them.
    let fork = braid(d)
        .args(["runs", "fork", &id, "--set", r#"q="y""#, "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(fork.status.code(), Some(0), "{}", stderr(&fork));
    let report = json(&fork);
    assert_eq!(report["state"]["q"], "y");
    assert_eq!(counts(&all), [2, 3, 3, 2, 1, 2, 1]);
    let child = report["run_id"].as_str().unwrap().to_owned();

    // The lineage is shown on both sides.
    let show = braid(d).args(["runs", "show", &child]).output().unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains(&format!("forked from run {id}")), "{text}");
    let parent = json(
        &braid(d)
            .args(["runs", "show", &id, "--output", "json"])
            .output()
            .unwrap(),
    );
    assert_eq!(parent["forks"].as_array().unwrap().len(), 3);

    // Bad points are refused, naming what is wrong.
    for (args, expected) in [
        (vec!["--from", "nope"], "no agent `nope`"),
        (vec!["--from", "each[9]"], "no record of `each[9]`"),
        (vec!["--set", "zz=1"], "no field `zz`"),
        (vec!["--set", "q"], "expected FIELD=JSON"),
        (vec![], "needs a point"),
    ] {
        let out = braid(d)
            .args(["runs", "fork", &id])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(
        counts(&all),
        [2, 3, 3, 2, 1, 2, 1],
        "refused forks run nothing"
    );
}
