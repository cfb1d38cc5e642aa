//! Cached agents (`cache:`) through the `braid` binary: a hit that does
//! not call the agent, a miss when a read changes, expiry, `--no-cache`,
//! `cache: false` over `defaults`, load errors, metrics, and `braid serve`
//! handing the store's cache to runs (and `"no_cache": true` turning it off),
//! and the `cache` benchmark scenario.
//! Each test has a store of its own; each command agent appends a line to
//! a file per call, so the calls are counted, not timed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A pipeline file and a store in a fresh folder.
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

    fn store(&self) -> String {
        format!("sqlite://{}", self.path("braid.db").display())
    }

    fn braid(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_braid"));
        command.env("BRAID_STORE", self.store());
        command
    }

    /// `braid run pipeline.yaml --output json ARGS…`: the exit code and
    /// the report.
    fn run(&self, args: &[&str]) -> (Output, Value) {
        let output = self
            .braid()
            .arg("run")
            .arg(self.path("pipeline.yaml"))
            .args(["--output", "json"])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON object ({e}):\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (output, report)
    }

    /// How many times the agents writing to `file` were called.
    fn calls(&self, file: &str) -> usize {
        std::fs::read_to_string(self.path(file))
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }
}

/// A command agent that counts its calls in `file` and writes `field`:
/// what it read of `read`.
fn counted(name: &str, read: &str, field: &str, file: &str, extra: &str) -> String {
    format!(
        "  {name}:\n    kind: command\n    run: [sh, -c, 'echo call >> {file}; \
         cat > /dev/null; printf \"{{\\\"{field}\\\": 1}}\"']\n    reads: [{read}]\n    writes: [{field}]\n{extra}"
    )
}

fn pipeline(agents: &str) -> String {
    format!(
        "pipeline: cached\ninputs:\n  topic: {{ type: string }}\nagents:\n{agents}  \
         report: {{ kind: sleep, reads: [out], writes: [done] }}\n"
    )
}

fn cached(report: &Value, agent: &str) -> bool {
    report["agents"][agent]["cached"] == true
}

#[test]
fn a_hit_reuses_the_writes_without_calling_the_agent_and_a_changed_read_misses() {
    let ws = Workspace::new(&pipeline(&counted(
        "slow",
        "topic",
        "out",
        "calls.txt",
        "    cache: { ttl: 1h }\n",
    )));
    let (output, first) = ws.run(&["--input", r#"{"topic": "cost"}"#]);
    assert_eq!(output.status.code(), Some(0));
    assert!(!cached(&first, "slow"));
    assert_eq!(ws.calls("calls.txt"), 1);

    // The same read: the stored writes, the agent not called; what reads
    // them runs as usual. (`--checkpoint none` keeps no run, but the cache
    // is still the store's.)
    let (output, second) = ws.run(&["--input", r#"{"topic": "cost"}"#, "--checkpoint", "none"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(ws.calls("calls.txt"), 1, "a hit does not call the agent");
    assert!(cached(&second, "slow"), "{second}");
    assert_eq!(second["agents"]["slow"]["attempts"], 0);
    assert_eq!(second["agents"]["report"]["attempts"], 1);
    assert!(!cached(&second, "report"));
    assert_eq!(second["state"], first["state"]);

    // Another value of its read: a miss; the first value still hits.
    let (_, third) = ws.run(&["--input", r#"{"topic": "latency"}"#]);
    assert!(!cached(&third, "slow"));
    assert_eq!(ws.calls("calls.txt"), 2);
    let (_, fourth) = ws.run(&["--input", r#"{"topic": "cost"}"#]);
    assert!(cached(&fourth, "slow"));
    assert_eq!(ws.calls("calls.txt"), 2);

    // The table says so too.
    let output = ws
        .braid()
        .arg("run")
        .arg(ws.path("pipeline.yaml"))
        .args(["--input", r#"{"topic": "cost"}"#])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    let line = table.lines().find(|l| l.starts_with("slow ")).unwrap();
    assert!(line.contains("cached (not run)"), "{table}");
}

#[test]
fn entries_expire_after_their_ttl() {
    let ws = Workspace::new(&pipeline(&counted(
        "slow",
        "topic",
        "out",
        "calls.txt",
        "    cache: { ttl: 1s }\n",
    )));
    let input = ["--input", r#"{"topic": "cost"}"#];
    // The entry is stored while the first run runs: between these two.
    let before = Instant::now();
    ws.run(&input);
    let after = Instant::now();
    let (_, report) = ws.run(&input);
    // Within the second (a busy machine may take longer: then it missed).
    if before.elapsed() < Duration::from_millis(900) {
        assert!(cached(&report, "slow"), "{report}");
        assert_eq!(ws.calls("calls.txt"), 1);
    }
    let calls = ws.calls("calls.txt");
    // Past the second however late in the first run it was stored.
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(after.elapsed()));
    let (_, report) = ws.run(&input);
    assert!(!cached(&report, "slow"), "expired: {report}");
    assert_eq!(ws.calls("calls.txt"), calls + 1);
}

#[test]
fn no_cache_runs_every_agent_and_keeps_nothing() {
    let ws = Workspace::new(&pipeline(&counted(
        "slow",
        "topic",
        "out",
        "calls.txt",
        "    cache: { ttl: 1h }\n",
    )));
    let input = ["--input", r#"{"topic": "cost"}"#];
    for _ in 0..2 {
        let (output, report) = ws.run(&[input[0], input[1], "--no-cache"]);
        assert_eq!(output.status.code(), Some(0));
        assert!(!cached(&report, "slow"));
    }
    assert_eq!(ws.calls("calls.txt"), 2);
    // Nothing was kept: the next run misses, and the one after hits.
    let (_, report) = ws.run(&input);
    assert!(!cached(&report, "slow"));
    let (_, report) = ws.run(&input);
    assert!(cached(&report, "slow"));
    assert_eq!(ws.calls("calls.txt"), 3);
}

#[test]
fn cache_clear_drops_results_so_the_agent_runs_again() {
    let ws = Workspace::new(&pipeline(&counted(
        "slow",
        "topic",
        "out",
        "calls.txt",
        "    cache: { ttl: 1h }\n",
    )));
    let input = ["--input", r#"{"topic": "cost"}"#];
    ws.run(&input);
    let clear = |args: &[&str]| {
        let output = ws
            .braid()
            .args(["cache", "clear"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // Another agent's results only: this one's stay.
    let said = clear(&["--agent", "other"]);
    assert!(
        said.starts_with("deleted 0 cached result(s) of agent `other`"),
        "{said}"
    );
    let (_, report) = ws.run(&input);
    assert!(cached(&report, "slow"));
    let said = clear(&["--agent", "slow"]);
    assert!(said.starts_with("deleted 1 cached result(s)"), "{said}");
    let (_, report) = ws.run(&input);
    assert!(!cached(&report, "slow"));
    assert_eq!(ws.calls("calls.txt"), 2);
}

#[test]
fn cache_false_overrides_defaults() {
    let agents = format!(
        "{}{}",
        counted("plain", "topic", "out", "plain.txt", ""),
        counted(
            "side_effect",
            "topic",
            "sent",
            "sent.txt",
            "    cache: false\n"
        )
    );
    let text =
        pipeline(&agents).replace("agents:\n", "defaults: { cache: { ttl: 1h } }\nagents:\n");
    let ws = Workspace::new(&text);
    let input = ["--input", r#"{"topic": "cost"}"#];
    ws.run(&input);
    let (output, report) = ws.run(&input);
    assert_eq!(output.status.code(), Some(0));
    assert!(cached(&report, "plain") && cached(&report, "report"));
    assert!(!cached(&report, "side_effect"));
    assert_eq!(ws.calls("plain.txt"), 1);
    assert_eq!(ws.calls("sent.txt"), 2);
}

/// `braid validate` on `text`: exit 2, and its stderr.
fn invalid(text: &str) -> String {
    let ws = Workspace::new(text);
    let output = ws
        .braid()
        .arg("validate")
        .arg(ws.path("pipeline.yaml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_cache_values_are_load_errors_with_their_place() {
    // What the value's shape gets wrong, all at once.
    let stderr = invalid(
        "pipeline: bad
agents:
  a: { kind: sleep, writes: [a], cache: true }
  d: { kind: sleep, writes: [d], cache: { tll: 1h } }
  e: { kind: sleep, writes: [e], cache: 5 }
  f: { kind: sleep, writes: [f], cache: {} }
",
    );
    for expected in [
        "pipeline.yaml:3:41: agent `a`: `cache`: `true` says nothing of how long results may be reused; give a `ttl`",
        "pipeline.yaml:4:43: agent `d`: `cache`: unknown key `tll`; expected: ttl",
        "pipeline.yaml:5:41: agent `e`: `cache` must be `false` or a mapping with `ttl`",
        "pipeline.yaml:6:41: agent `f`: `cache`: missing `ttl`",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("4 errors"), "{stderr}");
    // Then the durations: malformed, or out of bounds.
    let stderr = invalid(
        "pipeline: bad
defaults: { cache: { ttl: 400days } }
agents:
  b: { kind: sleep, writes: [b], cache: { ttl: 0s } }
  c: { kind: sleep, writes: [c], cache: { ttl: soon } }
",
    );
    for expected in [
        "pipeline.yaml:2:27: defaults.cache: `ttl`: `400days` is out of bounds; a ttl is between 1s and 365days",
        "pipeline.yaml:4:48: agent `b`: `cache`: `ttl`: `0s` is out of bounds",
        "pipeline.yaml:5:48: agent `c`: `cache`: `ttl`: bad duration `soon`",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("3 errors"), "{stderr}");
}

#[test]
fn metrics_count_hits_and_misses() {
    let ws = Workspace::new(&pipeline(&counted(
        "slow",
        "topic",
        "out",
        "calls.txt",
        "    cache: { ttl: 1h }\n",
    )));
    let metrics = |name: &str| {
        let file = ws.path(name);
        let file = file.to_str().unwrap();
        ws.run(&["--input", r#"{"topic": "cost"}"#, "--metrics-file", file]);
        std::fs::read_to_string(file).unwrap()
    };
    let cold = metrics("cold.prom");
    assert!(cold.contains("braid_cache_misses_total 1"), "{cold}");
    assert!(!cold.contains("braid_cache_hits_total"), "{cold}");
    let warm = metrics("warm.prom");
    assert!(warm.contains("braid_cache_hits_total 1"), "{warm}");
    assert!(!warm.contains("braid_cache_misses_total"), "{warm}");
}

/// A `braid serve` on a free loopback port with `dir` as `--pipelines`
/// and `store`; killed when dropped.
struct Serve {
    child: Child,
    addr: String,
}

impl Serve {
    fn start(dir: &Path, store: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_braid"))
            .args([
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--store",
                store,
                "--pipelines",
            ])
            .arg(dir)
            .env_remove("BRAID_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let addr = common::listening_address(&mut child);
        Self { child, addr }
    }

    /// `POST /v1/runs?wait=true` with `body`: the report.
    fn run(&self, body: &str) -> Value {
        let (status, body) = common::request(
            &self.addr,
            "POST",
            "/v1/runs?wait=true",
            Some("application/json"),
            body,
            Duration::from_secs(60),
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_hands_the_stores_cache_to_runs_unless_asked_not_to() {
    let ws = Workspace::new(&pipeline(&counted(
        "slow",
        "topic",
        "out",
        "calls.txt",
        "    cache: { ttl: 1h }\n",
    )));
    let serve = Serve::start(ws.dir.path(), &ws.store());
    let body = r#"{"pipeline": "cached", "input": {"topic": "cost"}}"#;
    let first = serve.run(body);
    assert!(!cached(&first, "slow"), "{first}");
    let second = serve.run(body);
    assert!(cached(&second, "slow"), "{second}");
    assert_eq!(ws.calls("calls.txt"), 1);
    let off = serve.run(r#"{"pipeline": "cached", "input": {"topic": "cost"}, "no_cache": true}"#);
    assert!(!cached(&off, "slow"), "{off}");
    assert_eq!(ws.calls("calls.txt"), 2);
    // What `braid serve` stored, `braid run` on the same store finds.
    drop(serve);
    let (_, report) = ws.run(&["--input", r#"{"topic": "cost"}"#]);
    assert!(cached(&report, "slow"));
    assert_eq!(ws.calls("calls.txt"), 2);
}

#[test]
fn bench_cache_reports_uncached_cold_and_warm_runs() {
    let output = Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(["bench", "--scenario", "cache", "--repeat", "1"])
        .env_remove("BRAID_BENCH_POSTGRES_URL")
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
    let shapes: Vec<&Value> = lines.iter().map(|l| &l["shape"]).collect();
    assert_eq!(shapes, ["wide", "chain"]);
    for line in &lines {
        assert_eq!(line["scenario"], "cache");
        assert_eq!(line["backend"], "sqlite");
        assert_eq!(line["agents"], 100);
        for field in [
            "uncached_ms",
            "cold_ms",
            "warm_ms",
            "per_hit_us",
            "per_miss_us",
        ] {
            assert!(line[field].is_number(), "`{field}` missing in {line}");
        }
    }
}
