//! Retention, driven the way an operator drives it: `braid runs prune` and
//! `braid serve --retention` on a SQLite store. Old runs are made with the
//! store's synthetic runs (for tests), aged by their creation time; fresh
//! ones by `braid run`.

mod common;

use common::json_of;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use braid_store::{RunFilter, Store, SyntheticRuns};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// A fresh folder with a store file and a one-agent pipeline.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("pipeline.yaml"),
            "pipeline: fresh\nagents:\n  a: { kind: sleep, ms: 1, writes: [x] }\n",
        )
        .unwrap();
        Self { dir }
    }

    fn store_url(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("store.db").display())
    }

    fn pipeline(&self) -> PathBuf {
        self.dir.path().join("pipeline.yaml")
    }

    fn braid(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_braid"));
        command.env("BRAID_STORE", self.store_url());
        command
    }

    /// `braid run` of the pipeline: a fresh, stored run; its id.
    fn fresh_run(&self) -> String {
        let output = self
            .braid()
            .arg("run")
            .arg(self.pipeline())
            .args(["--output", "json"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        json_of(&output)["run_id"].as_str().unwrap().to_owned()
    }

    /// `count` completed runs of `pipeline`, created `days` ago.
    fn old_runs(&self, pipeline: &str, count: usize, days: i64) -> Vec<String> {
        let url = self.store_url();
        let pipeline = pipeline.to_owned();
        on_store(&url, move |store| async move {
            store
                .insert_synthetic_runs(&SyntheticRuns {
                    pipeline,
                    count,
                    agents: 2,
                    status: "completed".into(),
                    owner: None,
                    created_at_ms: now_ms() - days * DAY_MS,
                })
                .await
                .unwrap()
        })
    }

    /// Every run id in the store, newest first.
    fn run_ids(&self) -> Vec<String> {
        on_store(&self.store_url(), |store| async move {
            store
                .list_runs(&RunFilter {
                    limit: Some(1000),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.run_id)
                .collect()
        })
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Opens the store at `url`, calls `f` with it, closes it.
fn on_store<T, F, Fut>(url: &str, f: F) -> T
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = T>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::connect(url, &Default::default()).await.unwrap();
        f(store).await
    })
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[test]
fn runs_prune_deletes_old_runs_and_keeps_the_rest() {
    let ws = Workspace::new();
    let old = ws.old_runs("nightly", 3, 40);
    let old_other = ws.old_runs("weekly", 2, 40);
    let fresh = ws.fresh_run();

    // A dry run counts and deletes nothing.
    let output = ws
        .braid()
        .args(["runs", "prune", "--older-than", "30d", "--dry-run"])
        .args(["--output", "json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report = json_of(&output);
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["runs"], 5, "{report}");
    assert_eq!(report["agent_records"], 10, "{report}");
    assert_eq!(ws.run_ids().len(), 6);

    // One pipeline, keeping its newest.
    let output = ws
        .braid()
        .args([
            "runs",
            "prune",
            "--older-than",
            "30d",
            "--pipeline",
            "nightly",
        ])
        .args(["--keep-last", "1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("pruned 2 runs (4 agent records, 4 writes, 0 events")
            && text.contains("kept 1 run among the newest of their pipeline"),
        "{text}"
    );
    let mut expected = vec![old[2].clone(), fresh.clone()];
    expected.extend(old_other.iter().cloned());
    assert_eq!(sorted(ws.run_ids()), sorted(expected));

    // Everything older than 30 days, with the default statuses.
    let output = ws
        .braid()
        .args(["runs", "prune", "--older-than", "30d", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(json_of(&output)["runs"], 3);
    assert_eq!(ws.run_ids(), vec![fresh.clone()]);
    let output = ws
        .braid()
        .args(["runs", "show", &fresh, "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(json_of(&output)["status"], "completed");
}

#[test]
fn runs_prune_says_what_it_expected_when_the_command_line_is_wrong() {
    let ws = Workspace::new();
    let old = ws.old_runs("nightly", 1, 40);
    let cases: &[(&[&str], &str)] = &[
        (
            &[],
            "needs --older-than DURATION (e.g. 30d) or --keep-last N",
        ),
        (
            &["--older-than", "soon"],
            "expected a duration such as 30d, 12h or 1h30m, found `soon`",
        ),
        (
            &["--older-than", "30d", "--status", "done"],
            "possible values: completed, failed, cancelled, interrupted, waiting, running",
        ),
        (
            &["--keep-last", "0"],
            "expected a number of runs to keep, at least 1, found `0`",
        ),
    ];
    for (args, message) in cases {
        let output = ws
            .braid()
            .args(["runs", "prune"])
            .args(*args)
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(message),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    assert_eq!(ws.run_ids(), old, "nothing was deleted");

    // A read-only store counts but does not delete.
    let read_only = format!("{}?mode=ro", ws.store_url());
    let output = ws
        .braid()
        .args([
            "runs",
            "--store",
            &read_only,
            "prune",
            "--older-than",
            "30d",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("read-only: pruning deletes runs"),
        "{}",
        stderr(&output)
    );
    let output = ws
        .braid()
        .args([
            "runs",
            "--store",
            &read_only,
            "prune",
            "--older-than",
            "30d",
        ])
        .arg("--dry-run")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("would prune 1 run"));
}

/// `braid serve` on the workspace's store, killed when dropped.
struct Serve {
    child: Child,
    addr: String,
}

impl Serve {
    fn start(ws: &Workspace, args: &[&str]) -> Self {
        let mut child = ws
            .braid()
            .args(["serve", "--bind", "127.0.0.1:0"])
            .args(args)
            .env_remove("BRAID_TOKEN")
            .env("RUST_LOG", "braid_server=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let addr = common::listening_address(&mut child);
        Self { child, addr }
    }

    /// The body of `GET path`, which must answer 200.
    fn get(&self, path: &str) -> String {
        let (status, body) =
            common::request(&self.addr, "GET", path, None, "", Duration::from_secs(30));
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "waited for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pruned_runs_total(serve: &Serve) -> Option<u64> {
    let metrics = serve.get("/metrics");
    metrics
        .lines()
        .find(|l| l.starts_with("braid_pruned_runs_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
}

#[test]
fn serve_with_retention_prunes_old_runs_in_the_background_and_stops_cleanly() {
    let ws = Workspace::new();
    let fresh = ws.fresh_run();
    ws.old_runs("nightly", 2, 40);
    let mut serve = Serve::start(
        &ws,
        &["--retention", "30d", "--retention-interval", "100ms"],
    );
    // At start…
    wait_until("the old runs to be pruned at start", || {
        ws.run_ids() == vec![fresh.clone()]
    });
    // …and then periodically.
    ws.old_runs("weekly", 3, 31);
    wait_until("a run that became old to be pruned", || {
        ws.run_ids() == vec![fresh.clone()]
    });
    wait_until("the metric to count every pruned run", || {
        pruned_runs_total(&serve) == Some(5)
    });
    // A recent run stays.
    assert_eq!(ws.run_ids(), vec![fresh]);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = serve.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "braid serve did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn serve_retention_needs_a_store_and_a_duration() {
    let ws = Workspace::new();
    let output = ws
        .braid()
        .args(["serve", "--no-store", "--retention", "30d"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("'--no-store' cannot be used with '--retention"),
        "{}",
        stderr(&output)
    );
    let output = ws
        .braid()
        .args(["serve", "--retention", "a month"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("expected a duration such as 30d"),
        "{}",
        stderr(&output)
    );
    let output = ws
        .braid()
        .args(["serve", "--retention", "30d", "--retention-interval", "0s"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("expected a duration above zero"),
        "{}",
        stderr(&output)
    );
}
