//! The store when the database fails: a full disk, an outage, errors that
//! retrying cannot cure, bad or read-only files. Against real SQLite files
//! (on a small tmpfs where a disk must fill up: that needs root, which CI
//! has) and, where `BRAID_TEST_POSTGRES_URL` is set, real PostgreSQL.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Duration;

use braid_core::{AgentStatus, CheckpointPolicy, Pipeline, RunStatus};
use braid_store::{Backend, Store, StoreSettings};
use serde_json::json;
use sqlx::{Connection, Executor};

mod common;
use common::{SMALL, TestDb, postgres_db, run, sqlite_db};

/// The error and its causes, as a user reads them.
fn chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Asserts `run_id` is stored whole: completed, every agent of SMALL
/// completed with its one write, and the state is the run's.
async fn assert_whole(store: &Store, report: &braid_core::RunReport) {
    let pipeline = Pipeline::from_yaml_str(SMALL).unwrap();
    let stored = store
        .get_run(&report.run_id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("run {} is not in the store", report.run_id));
    assert_eq!(stored.summary.status, "completed");
    assert_eq!(stored.agents.len(), 4, "{:?}", stored.agents);
    for agent in &stored.agents {
        assert_eq!(agent.report.status, AgentStatus::Completed, "{agent:?}");
        assert_eq!(agent.writes.len(), 1, "{agent:?}");
    }
    let input = pipeline.check_input(&json!(stored.input)).unwrap();
    assert_eq!(pipeline.replay(input, &stored.agents), report.state);
}

/// Another connection that holds every table of the store locked: the
/// database is up, but the store's writes cannot get through.
async fn lock_out(db: &TestDb) -> sqlx::AnyConnection {
    let mut conn = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    match db.backend {
        Backend::Sqlite => {
            conn.execute("BEGIN EXCLUSIVE").await.unwrap();
        }
        Backend::Postgres => {
            conn.execute(
                "BEGIN; LOCK TABLE braid_runs, braid_agent_runs, braid_deltas IN ACCESS EXCLUSIVE MODE",
            )
            .await
            .unwrap();
        }
    }
    conn
}

fn quick(spill: &Path) -> StoreSettings {
    StoreSettings {
        write_retries: 2,
        retry_backoff: Duration::from_millis(1),
        write_timeout: Duration::from_millis(300),
        spill_dir: Some(spill.to_owned()),
        ..Default::default()
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::sqlite_db()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = super::postgres_db().await else { return };
                    super::$name(db).await;
                }
            )*
        }
    };
}

on_both_backends!(
    undeliverable_writes_are_spilled_then_replayed_in_order_once,
    errors_retrying_cannot_cure_fail_at_once_with_their_reason,
);

async fn undeliverable_writes_are_spilled_then_replayed_in_order_once(db: TestDb) {
    let spill_dir = tempfile::tempdir().unwrap();
    let settings = quick(spill_dir.path());
    let store = Store::connect(&db.url, &settings).await.unwrap();
    let spill = store.spill_path().unwrap().to_owned();
    assert!(spill.starts_with(spill_dir.path()), "{}", spill.display());
    let locker = lock_out(&db).await;

    let pipeline = Pipeline::from_yaml_str(SMALL).unwrap();
    let report = run(&pipeline, &store, CheckpointPolicy::Agent).await;
    assert_eq!(report.status, RunStatus::Completed);
    let err = store.flush_run(&report.run_id).await.unwrap_err();
    assert_eq!(err.runs.len(), 1, "{err}");
    assert_eq!(err.runs[0].0, report.run_id);
    assert!(
        err.to_string().contains(&spill.display().to_string()),
        "the report says where the records are: {err}"
    );
    assert!(
        store.stats().retries >= 2,
        "retried first: {:?}",
        store.stats()
    );
    // Every operation of the run is in the file, in order, as JSON lines.
    let text = std::fs::read_to_string(&spill).unwrap();
    let kinds: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["op"]["kind"].to_string())
        .collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("\"run\""),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("\"finished\""),
        "{kinds:?}"
    );
    assert_eq!(kinds.len(), 6, "run, four agents, finished: {kinds:?}");
    let copy = spill_dir.path().join("copy");
    std::fs::copy(&spill, &copy).unwrap();
    drop(store);

    // The outage ends; the next process to open the store replays.
    locker.close().await.unwrap();
    let again = Store::connect(&db.url, &settings).await.unwrap();
    let replay = again.replayed().expect("the spill file was replayed");
    assert_eq!(replay.error, None);
    assert_eq!((replay.written, replay.skipped, replay.runs), (6, 0, 1));
    assert!(!spill.exists(), "a replayed spill file is removed");
    assert_whole(&again, &report).await;

    // Replaying the same lines again changes nothing: the store's record
    // is newer than they are.
    std::fs::rename(&copy, &spill).unwrap();
    let third = Store::connect(&db.url, &settings).await.unwrap();
    let replay = third.replayed().unwrap();
    assert_eq!((replay.written, replay.skipped), (0, 6));
    assert_whole(&third, &report).await;
    assert!(
        Store::connect(&db.url, &settings)
            .await
            .unwrap()
            .replayed()
            .is_none()
    );
}

async fn errors_retrying_cannot_cure_fail_at_once_with_their_reason(db: TestDb) {
    let spill_dir = tempfile::tempdir().unwrap();
    // The default schedule: 16 s of retries, were the error retried.
    let settings = StoreSettings {
        spill_dir: Some(spill_dir.path().to_owned()),
        ..Default::default()
    };
    let store = Store::connect(&db.url, &settings).await.unwrap();
    // A constraint every new run breaks.
    match db.backend {
        Backend::Sqlite => {
            sqlx::query(
                "CREATE TRIGGER no_runs BEFORE INSERT ON braid_runs
                 BEGIN SELECT RAISE(ABORT, 'no new runs here'); END",
            )
            .execute(store.pool())
            .await
            .unwrap();
        }
        Backend::Postgres => {
            let mut conn = sqlx::AnyConnection::connect(&db.url).await.unwrap();
            conn.execute(
                "CREATE FUNCTION no_runs() RETURNS trigger AS $$
                 BEGIN RAISE EXCEPTION 'no new runs here' USING ERRCODE = 'check_violation'; END
                 $$ LANGUAGE plpgsql;
                 CREATE TRIGGER no_runs BEFORE INSERT ON braid_runs
                 FOR EACH ROW EXECUTE FUNCTION no_runs();",
            )
            .await
            .unwrap();
            conn.close().await.unwrap();
        }
    }
    let pipeline = Pipeline::from_yaml_str(SMALL).unwrap();
    let report = run(&pipeline, &store, CheckpointPolicy::End).await;
    let err = store.flush_run(&report.run_id).await.unwrap_err();
    assert!(err.to_string().contains("no new runs here"), "{err}");
    assert_eq!(store.stats().retries, 0, "not retried: {err}");
}

#[tokio::test]
async fn a_file_that_is_not_a_database_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.db");
    std::fs::write(&path, "these are my notes, not a database\n".repeat(100)).unwrap();
    let err = Store::connect(&format!("sqlite://{}", path.display()), &Default::default())
        .await
        .err()
        .expect("not a database");
    let text = chain(&err);
    assert!(text.contains("file is not a database"), "{text}");
    assert!(!text.contains("timed out"), "{text}");
}

#[tokio::test]
async fn a_folder_that_cannot_be_created_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "").unwrap();
    let folder = dir.path().join("file/sub");
    let url = format!("sqlite://{}/braid.db", folder.display());
    let err = Store::connect(&url, &Default::default())
        .await
        .err()
        .expect("a folder under a file cannot be made");
    let text = chain(&err);
    assert!(
        text.contains(&format!("cannot create the folder {}", folder.display())),
        "{text}"
    );
    assert!(text.contains("Not a directory"), "{text}");
}

#[tokio::test]
async fn a_read_only_store_can_be_read_but_not_written() {
    let db = sqlite_db();
    let store = Store::connect(&db.url, &Default::default()).await.unwrap();
    let pipeline = Pipeline::from_yaml_str(SMALL).unwrap();
    let report = run(&pipeline, &store, CheckpointPolicy::End).await;
    store.close().await.unwrap();

    let ro = Store::connect(&format!("{}?mode=ro", db.url), &Default::default())
        .await
        .unwrap();
    assert!(ro.read_only());
    let runs = ro.list_runs(&Default::default()).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_whole(&ro, &report).await;
    let seen = ro.get_run(&report.run_id).await.unwrap().unwrap();
    let err = ro.claim(&seen).await.unwrap_err().to_string();
    assert!(err.contains("read-only"), "{err}");

    // A file braid never set up cannot be read read-only.
    let fresh = sqlite_db();
    std::fs::File::create(fresh.url.trim_start_matches("sqlite://")).unwrap();
    let err = Store::connect(&format!("{}?mode=ro", fresh.url), &Default::default())
        .await
        .err()
        .unwrap();
    assert!(chain(&err).contains("read-only"), "{}", chain(&err));
}

/// A small tmpfs, mounted for one test (root only).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(kib: u32) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root and must run the full-disk tests"
            );
            eprintln!("skipping: cannot mount a tmpfs (not root?)");
            return None;
        }
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system up; the file returned holds the space.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        for size in [65536, 4096, 1] {
            let chunk = vec![0u8; size];
            while file.write_all(&chunk).is_ok() {}
        }
        let _ = file.sync_all();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_and_later_commits_are_real() {
    let Some(disk) = Tmpfs::mount(1024) else {
        return;
    };
    let spill_dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", disk.path().join("braid.db").display());
    let settings = StoreSettings {
        write_retries: 0,
        // One pooled connection: events are saved on the same one each time.
        max_connections: 1,
        spill_dir: Some(spill_dir.path().to_owned()),
        ..Default::default()
    };
    let store = Store::connect(&url, &settings).await.unwrap();
    let pipeline = Pipeline::from_yaml_str(SMALL).unwrap();
    let filler = disk.fill();

    let lost = run(&pipeline, &store, CheckpointPolicy::Agent).await;
    let err = store.flush_run(&lost.run_id).await.unwrap_err();
    assert!(err.to_string().contains("full"), "{err}");
    // Small enough to fail at COMMIT, where SQLite leaves the transaction open.
    let events: Vec<(u64, String)> = (0..3).map(|i| (i, format!("{{\"n\": {i}}}"))).collect();
    let err = store.save_events(&lost.run_id, &events).await.unwrap_err();
    assert!(chain(&err).contains("full"), "{}", chain(&err));

    // Space again: what this process writes now is really written, as
    // another connection sees.
    std::fs::remove_file(filler).unwrap();
    let kept = run(&pipeline, &store, CheckpointPolicy::Agent).await;
    store.flush_run(&kept.run_id).await.unwrap();
    store.save_events(&kept.run_id, &events).await.unwrap();
    let other = Store::connect(&url, &settings).await.unwrap();
    assert_whole(&other, &kept).await;
    assert_eq!(other.load_events(&kept.run_id).await.unwrap().len(), 3);
    // And what the full disk refused was kept, and is whole now.
    let replay = other.replayed().expect("the refused writes were spilled");
    assert_eq!(replay.error, None);
    assert_whole(&other, &lost).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_read_only_database_fail_at_once_with_the_reason() {
    let db = sqlite_db();
    Store::connect(&db.url, &Default::default())
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let spill_dir = tempfile::tempdir().unwrap();
    // The default schedule: 16 s of retries, were the error retried.
    let settings = StoreSettings {
        spill_dir: Some(spill_dir.path().to_owned()),
        ..Default::default()
    };
    let store = Store::connect(&format!("{}?mode=ro", db.url), &settings)
        .await
        .unwrap();
    let pipeline = Pipeline::from_yaml_str(SMALL).unwrap();
    let report = run(&pipeline, &store, CheckpointPolicy::End).await;
    let err = store.flush_run(&report.run_id).await.unwrap_err();
    assert!(err.to_string().contains("readonly"), "{err}");
    assert_eq!(store.stats().retries, 0, "not retried: {err}");
}
