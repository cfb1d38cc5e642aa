//! What operators read back from the store, on SQLite and PostgreSQL:
//! each agent's kept log lines and failed attempts, who started a run, and
//! runs named by the start of their id.

use braid_core::{CheckpointPolicy, Pipeline, RunOptions, RunStatus};
use braid_store::{Store, StoreError};
use serde_json::json;

mod common;
use common::on_both_backends;

on_both_backends!(
    logs_failed_attempts_and_who_started_a_run_are_kept,
    runs_are_found_by_the_start_of_their_id,
);

async fn logs_failed_attempts_and_who_started_a_run_are_kept(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"pipeline: talker
agents:
  talk:
    kind: command
    run: [sh, -c, 'echo "über ünïcode" >&2; echo second >&2; echo "{{\"a\": 1}}"']
    writes: [a]
  flaky:
    kind: command
    run: [sh, -c, 'if [ -e {m} ]; then echo "{{\"b\": 2}}"; else touch {m}; echo not yet >&2; exit 3; fi']
    retries: 1
    backoff: 1ms
    writes: [b]
"#,
        m = dir.path().join("tried").display()
    );
    let pipeline = Pipeline::from_yaml_str(&yaml).unwrap();
    for policy in [CheckpointPolicy::Agent, CheckpointPolicy::End] {
        let _ = std::fs::remove_file(dir.path().join("tried"));
        let report = pipeline
            .run(
                pipeline.check_input(&json!({})).unwrap(),
                RunOptions {
                    checkpointer: Some(store.checkpointer()),
                    checkpoint: Some(policy),
                    started_by: Some("cli:ada@host".to_owned()),
                    ..RunOptions::default()
                },
            )
            .await;
        assert_eq!(report.status, RunStatus::Completed, "{report:#?}");
        store.flush().await.unwrap();
        let stored = store.get_run(&report.run_id).await.unwrap().unwrap();
        assert_eq!(stored.summary.started_by.as_deref(), Some("cli:ada@host"));
        let agent = |name: &str| {
            stored
                .agents
                .iter()
                .find(|a| &*a.agent == name)
                .unwrap()
                .report
                .clone()
        };
        assert_eq!(agent("talk").logs, ["über ünïcode", "second"], "{policy}");
        let flaky = agent("flaky");
        assert_eq!(flaky.logs, ["not yet"]);
        assert_eq!(flaky.failures.len(), 1);
        assert_eq!(flaky.failures[0].attempt, 1);
        assert!(
            flaky.failures[0].error.contains("exit"),
            "{:?}",
            flaky.failures
        );

        // What `braid runs logs` reads: the lines, without the writes.
        let logs = store.run_logs(&report.run_id).await.unwrap().unwrap();
        assert_eq!(logs.status, "completed");
        let talk = logs.agents.iter().find(|(a, _)| a == "talk").unwrap();
        assert_eq!(talk.1.logs, ["über ünïcode", "second"]);
        let flaky = logs.agents.iter().find(|(a, _)| a == "flaky").unwrap();
        assert_eq!(flaky.1.attempts, 2);
        assert_eq!(flaky.1.logs, ["not yet"]);
    }
    assert!(store.run_logs("no-such-run").await.unwrap().is_none());
    let listed = store.list_runs(&Default::default()).await.unwrap();
    assert!(
        listed
            .iter()
            .all(|r| r.started_by.as_deref() == Some("cli:ada@host"))
    );
}

async fn runs_are_found_by_the_start_of_their_id(store: Store) {
    let pipeline =
        Pipeline::from_yaml_str("pipeline: p\nagents:\n  a: { kind: sleep, ms: 0, writes: [x] }\n")
            .unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let report = pipeline
            .run(
                pipeline.check_input(&json!({})).unwrap(),
                RunOptions {
                    checkpointer: Some(store.checkpointer()),
                    ..RunOptions::default()
                },
            )
            .await;
        ids.push(report.run_id);
    }
    store.flush().await.unwrap();
    assert_eq!(store.resolve_run_id(&ids[0]).await.unwrap(), ids[0]);
    let common = ids[0]
        .chars()
        .zip(ids[1].chars())
        .take_while(|(a, b)| a == b)
        .count();
    assert_eq!(
        store.resolve_run_id(&ids[1][..common + 1]).await.unwrap(),
        ids[1]
    );
    // Upper case is the same hex.
    assert_eq!(
        store
            .resolve_run_id(&ids[1][..common + 1].to_ascii_uppercase())
            .await
            .unwrap(),
        ids[1]
    );
    match store.resolve_run_id(&ids[0][..common.max(4)]).await {
        Err(StoreError::AmbiguousRun { candidates, .. }) if common >= 4 => {
            assert!(candidates.contains(&ids[0]) && candidates.contains(&ids[1]));
        }
        Err(StoreError::AmbiguousRun { .. }) | Ok(_) => assert!(common < 4),
        Err(other) => panic!("{other}"),
    }
    // Too short, or not hex: only an exact id will do (no LIKE patterns).
    for given in ["01a", "%", "____%", "zzzzzzzz"] {
        assert!(
            matches!(
                store.resolve_run_id(given).await,
                Err(StoreError::NoSuchRun(_))
            ),
            "{given}"
        );
    }
}
