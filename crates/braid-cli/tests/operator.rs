//! What an operator and a pipeline author do at the terminal (issue 13):
//! read an agent's logs, name runs by the start of their id, list and
//! filter runs, start from `braid init`, validate many files at once, get
//! completions and an SVG graph, and get a clear word for each slip.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// The binary, with a store of its own in `dir`.
fn braid(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_braid"));
    command.env("BRAID_STORE", store_url(dir));
    command
}

fn store_url(dir: &Path) -> String {
    format!("sqlite://{}/runs.db", dir.display())
}

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run_ids(dir: &Path) -> Vec<String> {
    let output = braid(dir)
        .args(["runs", "list", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let runs: Value = serde_json::from_slice(&output.stdout).unwrap();
    runs.as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_owned())
        .collect()
}

const TALKER: &str = r#"pipeline: talker
agents:
  talk:
    kind: command
    run: [sh, -c, 'echo "looking at ${WHO}" >&2; echo "still here" >&2; echo "{\"said\": \"$WHO\"}"']
    env: { WHO: "${BRAID_TEST_WHO}" }
    writes: [said]
  flaky:
    kind: command
    run: [sh, -c, 'if [ -e tried ]; then echo "{\"ok\": true}"; else touch tried; echo "first try fails" >&2; exit 3; fi']
    retries: 1
    backoff: 1ms
    writes: [ok]
"#;

#[test]
fn logs_are_kept_shown_and_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("talker.yaml");
    std::fs::write(&file, TALKER).unwrap();

    // --verbose streams each agent's lines as they come, after its name;
    // `${VAR}` in a command agent's env comes from braid's environment.
    let output = braid(dir.path())
        .arg("run")
        .arg(&file)
        .arg("--verbose")
        .env("BRAID_TEST_WHO", "the moon")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("talk | looking at the moon"), "{stderr}");
    assert!(stderr.contains("flaky | first try fails"), "{stderr}");
    assert!(text(&output.stdout).contains("the moon"));

    // Kept with the run: `runs logs` shows them, by agent or all.
    let id = run_ids(dir.path()).remove(0);
    let output = braid(dir.path())
        .args(["runs", "logs", &id])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let all = text(&output.stdout);
    assert!(
        all.contains("talk | looking at the moon\ntalk | still here\n"),
        "{all}"
    );
    assert!(all.contains("flaky | first try fails"), "{all}");
    let output = braid(dir.path())
        .args(["runs", "logs", &id, "--agent", "talk"])
        .output()
        .unwrap();
    assert_eq!(text(&output.stdout), "looking at the moon\nstill here\n");
    let output = braid(dir.path())
        .args(["runs", "logs", &id, "--agent", "nobody"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("no record of agent `nobody`"));

    // `runs show` names the failed attempt and points at the logs.
    let output = braid(dir.path())
        .args(["runs", "show", &id])
        .output()
        .unwrap();
    let shown = text(&output.stdout);
    assert!(shown.contains("flaky: attempt 1 failed after"), "{shown}");
    assert!(shown.contains("see `braid runs logs"), "{shown}");
    assert!(shown.contains("started by cli:"), "{shown}");

    // An unset variable in `env` is a load error naming it.
    let output = braid(dir.path())
        .arg("validate")
        .arg(&file)
        .env_remove("BRAID_TEST_WHO")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("BRAID_TEST_WHO"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn runs_are_named_by_the_start_of_their_id_and_listed_with_who_started_them() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let output = braid(dir.path())
            .arg("run")
            .arg(examples().join("seed.yaml"))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0));
    }
    let ids = run_ids(dir.path());
    assert_eq!(ids.len(), 2);
    // UUIDv7s of runs started together share their first characters.
    let common = ids[0]
        .chars()
        .zip(ids[1].chars())
        .take_while(|(a, b)| a == b)
        .count();
    let ambiguous = &ids[0][..common.max(4)];
    let output = braid(dir.path())
        .args(["runs", "show", ambiguous])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("several runs"), "{stderr}");
    assert!(
        stderr.contains(&ids[0]) && stderr.contains(&ids[1]),
        "{stderr}"
    );

    let unique = &ids[0][..common + 1];
    let output = braid(dir.path())
        .args(["runs", "show", unique, "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown["run_id"], ids[0]);
    assert!(shown["started_by"].as_str().unwrap().starts_with("cli:"));

    let output = braid(dir.path())
        .args(["runs", "show", "ffffffff"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("no run with id `ffffffff`"));

    // --store after the subcommand, as after `braid run FILE`.
    let output = Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(["runs", "list", "--store", &store_url(dir.path())])
        .env_remove("BRAID_STORE")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let listed = text(&output.stdout);
    assert!(
        listed.contains(&ids[0]) && listed.contains("started by"),
        "{listed}"
    );

    // A status that does not exist is refused, listing those that do.
    let output = braid(dir.path())
        .args(["runs", "list", "--status", "bogus"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("interrupted") && stderr.contains("waiting"),
        "{stderr}"
    );
}

#[test]
fn slips_at_the_command_line_get_a_specific_answer() {
    let dir = tempfile::tempdir().unwrap();
    let seed = examples().join("seed.yaml");
    let output = braid(dir.path())
        .arg("run")
        .arg(&seed)
        .args(["--concurrency", "0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("--concurrency"));

    let output = braid(dir.path())
        .arg("run")
        .arg(&seed)
        .args(["--store", "plain.db"])
        .output()
        .unwrap();
    assert_ne!(output.status.code(), Some(0));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("sqlite://plain.db"), "{stderr}");

    // @- reads the input from stdin.
    let mut child = braid(dir.path())
        .arg("run")
        .arg(&seed)
        .args(["--input", "@-", "--output", "json", "--checkpoint", "none"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"request": "from stdin"}"#)
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["state"]["request"], "from stdin");
}

#[test]
fn init_writes_a_pipeline_that_runs_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("demo");
    let output = braid(dir.path()).arg("init").arg(&target).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let output = braid(dir.path())
        .arg("run")
        .arg(target.join("pipeline.yaml"))
        .args([
            "--output",
            "json",
            "--input",
            r#"{"text": "one two three"}"#,
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["state"]["word_count"], 3);
    assert!(
        report["state"]["summary"]
            .as_str()
            .unwrap()
            .contains("3 words")
    );
    // A second init there would overwrite: refused.
    let output = braid(dir.path()).arg("init").arg(&target).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("already exists"));
}

#[test]
fn validate_takes_many_files_and_reports_each() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "pipeline: broken\nagents:\n  a: { kind: sleeep, ms: 1, writes: [x] }\n",
    )
    .unwrap();
    let output = braid(dir.path())
        .arg("validate")
        .arg(examples().join("seed.yaml"))
        .arg(&broken)
        .arg(examples().join("loop/pipeline.yaml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("ok: seed-optimization") && stdout.contains("ok: draft-critique"));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("did you mean `sleep`?"), "{stderr}");
    assert!(stderr.contains("1 of 3 files are invalid"), "{stderr}");
}

#[test]
fn completions_and_an_svg_graph() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let output = braid(dir.path())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0));
        let script = text(&output.stdout);
        assert!(
            script.contains("braid") && script.contains("explain"),
            "{shell}"
        );
    }
    let output = braid(dir.path())
        .arg("explain")
        .arg(examples().join("seed.yaml"))
        .args(["--format", "svg"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let svg = text(&output.stdout);
    assert!(svg.contains("<svg"), "{svg}");
    for agent in [
        "triage",
        "data",
        "metrics",
        "cost",
        "optimization",
        "report",
    ] {
        assert!(svg.contains(&format!(">{agent}<")), "{agent} missing");
    }
}

#[test]
fn serve_loads_pipelines_from_subfolders_and_names_them_and_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_braid"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--no-store",
            "--pipelines",
        ])
        .arg(examples())
        .env_remove("BRAID_TOKEN")
        .env_remove("BRAID_LLM_URL")
        .current_dir(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.contains("console:");
        said.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let said = said.join("\n");
    for name in [
        "seed-optimization (seed.yaml)",
        "optimize-llm-spend (optimize/pipeline.yaml)",
        "summarize-folder (fanout/pipeline.yaml)",
        "approval (approval/pipeline.yaml)",
    ] {
        assert!(said.contains(&format!("loaded pipeline {name}")), "{said}");
    }
    // The tools and research examples need an LLM endpoint: reported and
    // skipped (before the research example starts its MCP server).
    assert!(said.contains("BRAID_LLM_URL"), "{said}");
    assert!(said.contains("skipped 2 pipeline files"), "{said}");
    assert!(said.contains("console: open http://127.0.0.1:"), "{said}");
}

#[test]
fn serve_strict_refuses_a_folder_with_a_broken_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("nested")).unwrap();
    std::fs::write(
        dir.path().join("nested/bad.yaml"),
        "pipeline: bad\nagents:\n  a: { kind: nope, writes: [x] }\n",
    )
    .unwrap();
    let output: Output = Command::new(env!("CARGO_BIN_EXE_braid"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--no-store",
            "--strict",
            "--pipelines",
        ])
        .arg(dir.path())
        .env_remove("BRAID_TOKEN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("unknown kind `nope`"));
}

#[test]
fn a_resumed_run_reads_as_one_timeline_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("resumable.yaml");
    std::fs::write(
        &file,
        r#"pipeline: resumable
agents:
  a: { kind: sleep, ms: 30, writes: [x] }
  b: { kind: sleep, ms: 30, writes: [y] }
  c: { kind: command, run: [sh, -c, 'test -e ok && echo "{\"z\": 1}"'], reads: [x, y], writes: [z] }
  d: { kind: sleep, ms: 10, reads: [z], writes: [w] }
"#,
    )
    .unwrap();
    let output = braid(dir.path())
        .arg("run")
        .arg(&file)
        .args(["--checkpoint", "agent"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    std::fs::write(dir.path().join("ok"), "").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let id = run_ids(dir.path()).remove(0);
    let output = braid(dir.path())
        .args(["runs", "resume", &id, "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let output = braid(dir.path())
        .args(["runs", "show", &id, "--output", "json"])
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
    let agents = shown["agents"].as_object().unwrap();
    let names: Vec<&str> = agents.keys().map(String::as_str).collect();
    assert_eq!(names, ["a", "b", "c", "d"], "in the order they ran");
    let start = |a: &str| agents[a]["start_ms"].as_f64().unwrap();
    // `c` ran in the resumed attempt, timed from the run's first start.
    assert!(start("c") >= 300.0, "{shown}");
    assert!(start("d") > start("c"));
    assert!(shown["makespan_ms"].as_f64().unwrap() >= start("d"));
}

#[test]
fn the_timeline_shows_retries_skips_round_ticks_and_the_path_explain_shows() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(
        &file,
        r#"pipeline: drawn
agents:
  first: { kind: sleep, ms: 20, writes: [x], value: { go: false } }
  flaky:
    kind: command
    run: [sh, -c, 'if [ -e tried ]; then echo "{\"y\": 1}"; else touch tried; exit 3; fi']
    retries: 1
    backoff: 1ms
    reads: [x]
    writes: [y]
  never: { kind: sleep, ms: 1, reads: [x], writes: [z], when: 'x.go' }
"#,
    )
    .unwrap();
    let output = braid(dir.path()).arg("run").arg(&file).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let id = run_ids(dir.path()).remove(0);
    let svg_path = dir.path().join("t.svg");
    let output = braid(dir.path())
        .args(["runs", "show", &id, "--timeline"])
        .arg(&svg_path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(
        svg.contains(r#"class="failed-attempt" data-agent="flaky" data-attempt="1""#),
        "{svg}"
    );
    assert!(
        svg.contains(r#"class="not-run" data-agent="never" data-status="skipped""#),
        "{svg}"
    );
    // Tick labels are round numbers of ms.
    let ticks: Vec<f64> = svg
        .split(r#"class="tick""#)
        .skip(1)
        .map(|t| {
            let label = &t[t.find('>').unwrap() + 1..t.find('<').unwrap()];
            label.trim_end_matches(" ms").parse::<f64>().unwrap()
        })
        .collect();
    assert!(ticks.len() >= 3, "{ticks:?}");
    let step = ticks[1] - ticks[0];
    let mantissa = step / 10f64.powf(step.log10().floor());
    assert!(
        [1.0, 2.0, 5.0].iter().any(|m| (m - mantissa).abs() < 1e-6),
        "{ticks:?}"
    );

    // The seed's agents take what they are expected to: the run's
    // critical path (timeline and API) is the one `explain` estimates.
    let output = braid(dir.path())
        .arg("run")
        .arg(examples().join("seed.yaml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let id = run_ids(dir.path()).remove(0);
    let output = braid(dir.path())
        .args(["runs", "show", &id, "--timeline"])
        .arg(&svg_path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let output = braid(dir.path())
        .arg("explain")
        .arg(examples().join("seed.yaml"))
        .args(["--format", "json"])
        .output()
        .unwrap();
    let explained: Value = serde_json::from_slice(&output.stdout).unwrap();
    let path: Vec<&str> = explained["critical_path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for agent in [
        "triage",
        "data",
        "metrics",
        "cost",
        "optimization",
        "report",
    ] {
        let outlined = svg.contains(&format!(
            r##"class="run" data-agent="{agent}" data-status="completed""##
        )) && svg
            .split(&format!(r#"data-agent="{agent}" data-status="completed""#))
            .nth(1)
            .is_some_and(|rest| rest[..rest.find("/>").unwrap()].contains("#d93025"));
        assert_eq!(
            outlined,
            path.contains(&agent),
            "{agent}: explain says {path:?}"
        );
    }
}

#[test]
fn runs_logs_follow_prints_lines_as_agents_end_until_the_run_ends() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("slow.yaml");
    std::fs::write(
        &file,
        r#"pipeline: slow-talker
agents:
  first: { kind: command, run: [sh, -c, 'echo "first line" >&2; echo "{\"a\": 1}"'], writes: [a] }
  wait:  { kind: sleep, ms: 1500, reads: [a], writes: [b] }
  last:  { kind: command, run: [sh, -c, 'echo "last line" >&2; echo "{\"c\": 1}"'], reads: [b], writes: [c] }
"#,
    )
    .unwrap();
    let mut run = braid(dir.path())
        .arg("run")
        .arg(&file)
        .args(["--checkpoint", "agent"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("run.stderr")).unwrap())
        .spawn()
        .unwrap();
    // Follow it from another process once its record exists (a fresh
    // store's migrations come first: on a loaded machine, seconds). Each
    // look opens the store too, so not more often than every 100 ms.
    let mut ids = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        ids = run_ids(dir.path());
        if !ids.is_empty() {
            break;
        }
        if let Some(status) = run.try_wait().unwrap() {
            let stderr = std::fs::read_to_string(dir.path().join("run.stderr")).unwrap();
            panic!("the run ended ({status}) before it was on record: {stderr}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(ids.len(), 1, "the run is on record while it runs");
    let output = braid(dir.path())
        .args(["runs", "logs", &ids[0], "--follow"])
        .output()
        .unwrap();
    assert_eq!(run.wait().unwrap().code(), Some(0));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    // Each line once, in the order the agents ran, the last one included:
    // --follow ended only when the run did.
    assert_eq!(
        text(&output.stdout),
        "first | first line\nlast | last line\n"
    );
}
