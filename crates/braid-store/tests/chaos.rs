//! Chaos: PostgreSQL restarted in the middle of a run checkpointed agent by
//! agent. The run completes and its stored record is whole.
//!
//! Restarting the shared server disturbs every other test that uses it at
//! the time, so this test has its binary to itself and runs only when
//! `BRAID_TEST_PG_RESTART=1` (CI sets it and runs this binary alone, after
//! the others). It finds the cluster as `.ci/run` does (`ls
//! /etc/postgresql`) and restarts it with `pg_ctlcluster`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_core::{AgentStatus, CheckpointPolicy, Pipeline, RunOptions, RunStatus};
use braid_store::{Store, StoreSettings};
use serde_json::json;
use sqlx::{Connection, Executor};

fn restart_postgres() {
    let versions =
        std::fs::read_dir("/etc/postgresql").expect("/etc/postgresql lists the clusters");
    let mut versions: Vec<String> = versions
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    versions.sort();
    let version = versions.first().expect("a PostgreSQL cluster");
    let status = std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", version, "main", "restart"])
        .status()
        .expect("pg_ctlcluster runs");
    assert!(
        status.success(),
        "pg_ctlcluster {version} main restart: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_run_loses_nothing() {
    if std::env::var("BRAID_TEST_PG_RESTART").as_deref() != Ok("1") {
        eprintln!("skipping: set BRAID_TEST_PG_RESTART=1 to restart PostgreSQL mid-run");
        return;
    }
    let base = std::env::var("BRAID_TEST_POSTGRES_URL")
        .expect("BRAID_TEST_PG_RESTART needs BRAID_TEST_POSTGRES_URL");
    sqlx::any::install_default_drivers();
    let mut admin = sqlx::AnyConnection::connect(&base).await.unwrap();
    let schema = format!("braid_chaos_{}", uuid::Uuid::now_v7().simple());
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .await
        .unwrap();
    admin.close().await.unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let spill = tempfile::tempdir().unwrap();
    let settings = StoreSettings {
        // Enough to outlast a restart (the default schedule: 16 s).
        spill_dir: Some(spill.path().to_owned()),
        ..Default::default()
    };
    let store = Store::connect(&url, &settings).await.unwrap();

    // `before` finishes and is checkpointed; `hold` waits for the test,
    // which restarts the server meanwhile; `after` then finishes and is
    // checkpointed against the restarted server.
    let release = Arc::new(tokio::sync::Notify::new());
    let mut builder = Pipeline::builder("chaos");
    builder.agent_spec(
        "before",
        json!({"kind": "sleep", "writes": ["b"], "value": 1}),
    );
    builder
        .agent_fn("hold", {
            let release = release.clone();
            move |_reads| {
                let release = release.clone();
                async move {
                    release.notified().await;
                    let mut writes = braid_core::agent::Writes::new();
                    writes.insert("h".into(), json!(2));
                    Ok::<_, braid_core::agent::AgentError>(writes)
                }
            }
        })
        .reads(["b"])
        .writes(["h"]);
    builder.agent_spec(
        "after",
        json!({"kind": "sleep", "reads": ["h"], "writes": ["a"], "value": 3}),
    );
    let pipeline = builder.build().unwrap();
    let run_id = uuid::Uuid::now_v7().to_string();
    let input = pipeline.check_input(&json!({})).unwrap();
    let options = RunOptions {
        run_id: Some(run_id.clone()),
        checkpointer: Some(store.checkpointer()),
        checkpoint: Some(CheckpointPolicy::Agent),
        ..Default::default()
    };
    let running = tokio::spawn(async move { pipeline.run(input, options).await });

    // `before` is in the store.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        store.flush_run(&run_id).await.unwrap();
        if let Some(run) = store.get_run(&run_id).await.unwrap()
            && run.agents.iter().any(|a| &*a.agent == "before")
        {
            break;
        }
        assert!(Instant::now() < deadline, "`before` was never checkpointed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let restart = tokio::task::spawn_blocking(restart_postgres);
    // Let the rest of the run race the restart.
    tokio::time::sleep(Duration::from_millis(100)).await;
    release.notify_one();
    let report = running.await.unwrap();
    restart.await.unwrap();
    assert_eq!(report.status, RunStatus::Completed, "{report:#?}");
    store
        .flush_run(&run_id)
        .await
        .expect("the writer rode out the restart");
    assert!(
        !store.spill_path().unwrap().exists(),
        "nothing needed spilling"
    );

    // Read back through a fresh store: the record is whole.
    let fresh = Store::connect(&url, &settings).await.unwrap();
    let stored = fresh.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(stored.summary.status, "completed");
    assert_eq!(stored.agents.len(), 3);
    for agent in &stored.agents {
        assert_eq!(agent.report.status, AgentStatus::Completed, "{agent:?}");
        assert_eq!(agent.writes.len(), 1, "{agent:?}");
    }
}
