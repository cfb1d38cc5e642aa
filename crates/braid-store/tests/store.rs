//! The store against real databases: every test runs on SQLite (a fresh
//! file) and on PostgreSQL (a fresh schema in the database named by
//! `BRAID_TEST_POSTGRES_URL`). Without that variable the PostgreSQL half is
//! skipped, and says so, except under CI, where it fails.

use std::sync::Arc;

use braid_core::{AgentStatus, CheckpointPolicy, Pipeline, ResumePoint, RunOptions, RunStatus};
use braid_store::{Backend, RunFilter, Store, StoreSettings, SyntheticRuns};
use serde_json::json;

mod common;
use common::{SMALL, postgres_db, run, sqlite_db};

/// Declares `NAME` as a test on both backends, calling `NAME(Store, url)`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::sqlite_db();
                    let store = braid_store::Store::connect(&db.url, &Default::default()).await.unwrap();
                    super::$name(store, &db.url).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = super::postgres_db().await else { return };
                    let store = braid_store::Store::connect(&db.url, &Default::default()).await.unwrap();
                    super::$name(store, &db.url).await;
                }
            )*
        }
    };
}

on_both_backends!(
    end_policy_writes_the_run_in_one_transaction,
    agent_policy_checkpoints_each_agent_and_resumes,
    concurrent_runs_share_transactions,
    listing_filters_by_status_and_pipeline,
    listing_filters_by_time_and_id_prefix_and_pages,
    only_one_resume_can_claim_a_run,
    failed_writes_are_reported_not_dropped,
    reopening_a_store_keeps_its_runs,
    a_resume_reruns_changed_agents_and_their_downstream_only,
    everything_written_reads_back_and_over_deep_outputs_are_refused,
    statuses_are_the_cores_vocabulary,
);

async fn end_policy_writes_the_run_in_one_transaction(store: Store, _url: &str) {
    let pipeline = Pipeline::from_yaml_str(SMALL).unwrap();
    let report = run(&pipeline, &store, CheckpointPolicy::End).await;
    store.flush().await.unwrap();
    assert_eq!(store.stats().transactions, 1);

    let stored = store.get_run(&report.run_id).await.unwrap().unwrap();
    assert_eq!(stored.summary.status, "completed");
    assert_eq!(stored.summary.checkpoint, "end");
    assert_eq!(stored.pipeline_hash, pipeline.content_hash());
    assert_eq!(stored.input, *json!({"request": "hi"}).as_object().unwrap());
    assert_eq!(stored.agents.len(), 4);
    let data = stored.agents.iter().find(|a| &*a.agent == "data").unwrap();
    assert_eq!(data.report.status, AgentStatus::Completed);
    assert_eq!(
        data.writes.len(),
        1,
        "only the agent's own writes are stored"
    );
    assert_eq!(*data.writes[0].1, json!({"rows": 3}));

    // Input plus deltas is the final state.
    let input = pipeline.check_input(&json!(stored.input)).unwrap();
    assert_eq!(pipeline.replay(input, &stored.agents), report.state);
}

async fn agent_policy_checkpoints_each_agent_and_resumes(store: Store, _url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.yaml");
    std::fs::write(
        &path,
        r#"pipeline: resumable
agents:
  first: { kind: command, run: [sh, -c, "echo first >> ran; echo '{\"a\": 1}'"], writes: [a] }
  flaky: { kind: command, run: [sh, -c, "echo flaky >> ran; [ -f ok ] || { touch ok; exit 1; }; echo '{\"b\": 2}'"], reads: [a], writes: [b] }
  last:  { kind: command, run: [sh, -c, "echo last >> ran; echo '{\"c\": 3}'"], reads: [b], writes: [c] }
"#,
    )
    .unwrap();
    let pipeline = Pipeline::from_file(&path).unwrap();
    let input = pipeline.check_input(&json!({})).unwrap();
    let options = |resume| RunOptions {
        checkpointer: Some(store.checkpointer()),
        checkpoint: Some(CheckpointPolicy::Agent),
        resume,
        ..Default::default()
    };
    let first = pipeline.run(input.clone(), options(None)).await;
    assert_eq!(first.status, RunStatus::Failed);
    store.flush().await.unwrap();
    // Start, two agents, end: more than one transaction is fine, but every
    // agent's record is there.
    let stored = store.get_run(&first.run_id).await.unwrap().unwrap();
    assert_eq!(stored.summary.status, "failed");
    assert_eq!(
        stored.pipeline_path.as_deref(),
        Some(path.to_str().unwrap())
    );

    let mut resume = options(Some(ResumePoint {
        agents: stored.agents,
    }));
    resume.run_id = Some(first.run_id.clone());
    let second = pipeline.run(input, resume).await;
    assert_eq!(second.status, RunStatus::Completed, "{second:#?}");
    store.flush().await.unwrap();
    let stored = store.get_run(&first.run_id).await.unwrap().unwrap();
    assert_eq!(stored.summary.status, "completed");
    assert!(
        stored
            .agents
            .iter()
            .all(|a| a.report.status == AgentStatus::Completed)
    );
    let ran = std::fs::read_to_string(dir.path().join("ran")).unwrap();
    assert_eq!(ran.matches("first").count(), 1, "{ran}");
    assert_eq!(ran.matches("flaky").count(), 2, "{ran}");
}

async fn concurrent_runs_share_transactions(store: Store, _url: &str) {
    let pipeline = Arc::new(Pipeline::from_yaml_str(SMALL).unwrap());
    let store = Arc::new(store);
    // Another connection holds the write lock while the runs finish: the
    // writer's first commit waits for it, and every other run's record
    // queues up behind that commit however fast or slow the machine is.
    let mut blocker = store.pool().acquire().await.unwrap();
    match store.backend() {
        Backend::Sqlite => {
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut *blocker)
                .await
                .unwrap();
        }
        Backend::Postgres => {
            sqlx::query("BEGIN").execute(&mut *blocker).await.unwrap();
            sqlx::query("LOCK TABLE braid_runs IN EXCLUSIVE MODE")
                .execute(&mut *blocker)
                .await
                .unwrap();
        }
    }
    let mut runs = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (pipeline, store) = (pipeline.clone(), store.clone());
        runs.spawn(async move { run(&pipeline, &store, CheckpointPolicy::End).await });
    }
    let mut ids = Vec::new();
    while let Some(report) = runs.join_next().await {
        ids.push(report.unwrap().run_id);
    }
    assert_eq!(
        store.stats().transactions,
        0,
        "nothing commits while the lock is held"
    );
    sqlx::query("COMMIT").execute(&mut *blocker).await.unwrap();
    drop(blocker);
    store.flush().await.unwrap();
    let stats = store.stats();
    assert_eq!(stats.operations, 100);
    // At most the commit that was waiting for the lock, then one for all
    // the records queued meanwhile.
    assert!(
        stats.transactions <= 2,
        "group commit should batch the queued runs: {stats:?}"
    );
    let listed = store
        .list_runs(&RunFilter {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 100);
    for id in &ids {
        assert!(store.get_run(id).await.unwrap().is_some());
    }
}

async fn listing_filters_by_status_and_pipeline(store: Store, _url: &str) {
    let ok = Pipeline::from_yaml_str(SMALL).unwrap();
    let failing = Pipeline::from_yaml_str(
        "pipeline: failing\nagents:\n  a: { kind: command, run: [sh, -c, 'exit 2'], writes: [x] }\n",
    )
    .unwrap();
    run(&ok, &store, CheckpointPolicy::End).await;
    run(&ok, &store, CheckpointPolicy::End).await;
    let input = failing.check_input(&json!({})).unwrap();
    let failed = failing
        .run(
            input,
            RunOptions {
                checkpointer: Some(store.checkpointer()),
                ..Default::default()
            },
        )
        .await;
    store.flush().await.unwrap();
    let list = |status: Option<&str>, pipeline: Option<&str>, limit| RunFilter {
        status: status.map(str::to_owned),
        pipeline: pipeline.map(str::to_owned),
        limit,
        ..Default::default()
    };
    assert_eq!(
        store
            .list_runs(&list(None, None, None))
            .await
            .unwrap()
            .len(),
        3
    );
    let failures = store
        .list_runs(&list(Some("failed"), None, None))
        .await
        .unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].run_id, failed.run_id);
    assert!(
        failures[0]
            .error
            .as_deref()
            .unwrap()
            .contains("exit code 2")
    );
    assert_eq!(
        store
            .list_runs(&list(None, Some("small"), None))
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store
            .list_runs(&list(None, None, Some(1)))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(store.get_run("no-such-run").await.unwrap().is_none());
}

async fn listing_filters_by_time_and_id_prefix_and_pages(store: Store, _url: &str) {
    let insert = |pipeline: &str, status: &str, count, created_at_ms| SyntheticRuns {
        pipeline: pipeline.to_owned(),
        count,
        agents: 0,
        status: status.to_owned(),
        owner: None,
        created_at_ms,
    };
    // Created at 1000..=1004 and 2000..=2002.
    let old = store
        .insert_synthetic_runs(&insert("p", "completed", 5, 1000))
        .await
        .unwrap();
    let new = store
        .insert_synthetic_runs(&insert("q", "failed", 3, 2000))
        .await
        .unwrap();
    let ids = |runs: Vec<braid_store::RunSummary>| -> Vec<String> {
        runs.into_iter().map(|r| r.run_id).collect()
    };
    let list = |filter: RunFilter| {
        let store = &store;
        async move { ids(store.list_runs(&filter).await.unwrap()) }
    };
    // Newest first, within [since, until).
    assert_eq!(
        list(RunFilter {
            since_ms: Some(1003),
            until_ms: Some(2001),
            ..Default::default()
        })
        .await,
        vec![new[0].clone(), old[4].clone(), old[3].clone()]
    );
    // An id prefix: one batch of synthetic runs, and one run exactly.
    let batch = old[0].trim_end_matches(char::is_numeric).to_owned();
    assert_eq!(
        list(RunFilter {
            id_prefix: Some(batch.clone()),
            ..Default::default()
        })
        .await,
        old.iter().rev().cloned().collect::<Vec<_>>()
    );
    assert_eq!(
        list(RunFilter {
            id_prefix: Some(old[2].clone()),
            ..Default::default()
        })
        .await,
        vec![old[2].clone()]
    );
    // `%` and `_` are no wildcards, and case counts (SQLite's LIKE ignores it).
    for prefix in ["%", "_ynthetic", "SYNTHETIC"] {
        assert!(
            list(RunFilter {
                id_prefix: Some(prefix.to_owned()),
                ..Default::default()
            })
            .await
            .is_empty(),
            "prefix {prefix}"
        );
    }
    // Pages of 3 through all 8, each after the last row of the one before,
    // combined with a status filter on the way.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .list_runs(&RunFilter {
                limit: Some(3),
                before: before.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        before = Some((last.created_at_ms, last.run_id.clone()));
        seen.extend(ids(page));
    }
    let mut all: Vec<String> = old.iter().chain(&new).cloned().collect();
    all.reverse();
    assert_eq!(seen, all);
    assert_eq!(
        list(RunFilter {
            status: Some("failed".to_owned()),
            before: Some((2001, new[1].clone())),
            ..Default::default()
        })
        .await,
        vec![new[0].clone()]
    );
    // The filter's own test agrees with the store on a row.
    let newest = store.list_runs(&RunFilter::default()).await.unwrap();
    let filter = RunFilter {
        status: Some("failed".to_owned()),
        since_ms: Some(2002),
        ..Default::default()
    };
    let matching: Vec<_> = newest.iter().filter(|r| filter.matches(r)).collect();
    assert_eq!(matching.len(), 1);
    assert_eq!(matching[0].run_id, new[2]);
}

async fn failed_writes_are_reported_not_dropped(_store: Store, url: &str) {
    let settings = StoreSettings {
        write_retries: 2,
        retry_backoff: std::time::Duration::from_millis(1),
        ..Default::default()
    };
    let store = Store::connect(url, &settings).await.unwrap();
    // The table the deltas go to disappears (a bad manual migration, say).
    sqlx::query("DROP TABLE braid_deltas")
        .execute(store.pool())
        .await
        .unwrap();
    let pipeline = Pipeline::from_yaml_str(SMALL).unwrap();
    let report = run(&pipeline, &store, CheckpointPolicy::End).await;
    assert_eq!(
        report.status,
        RunStatus::Completed,
        "the run itself is unaffected"
    );
    let err = store.flush_run(&report.run_id).await.unwrap_err();
    assert_eq!(err.runs.len(), 1);
    assert_eq!(err.runs[0].0, report.run_id);
    assert!(err.to_string().contains("braid_deltas"), "{err}");
    assert_eq!(store.stats().retries, 2);
    // Reported once: the next flush has nothing new to say.
    store.flush().await.unwrap();
}

async fn reopening_a_store_keeps_its_runs(store: Store, url: &str) {
    let pipeline = Pipeline::from_yaml_str(SMALL).unwrap();
    let report = run(&pipeline, &store, CheckpointPolicy::End).await;
    store.close().await.unwrap();
    let again = Store::connect(url, &StoreSettings::default())
        .await
        .unwrap();
    let stored = again.get_run(&report.run_id).await.unwrap().unwrap();
    assert_eq!(stored.summary.status, "completed");
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error_without_the_password() {
    let settings = StoreSettings {
        acquire_timeout: std::time::Duration::from_secs(2),
        ..Default::default()
    };
    let err = Store::connect("postgres://braid:hunter2@127.0.0.1:1/braid", &settings)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cannot open the store at postgres://braid:***@127.0.0.1:1/braid"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");

    let err = Store::connect("sqlite:///proc/no/such/dir/braid.db", &settings)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cannot create the folder /proc/no/such/dir"),
        "{err}"
    );

    let err = Store::connect("mysql://localhost/x", &settings)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("unsupported store URL"), "{err}");

    // A bare file name is the usual slip: the error says how to write it.
    let err = Store::connect("plain.db", &settings)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("sqlite://plain.db"), "{err}");
    assert!(!err.contains("does not parse"), "{err}");
}

/// The store writes and reads statuses in the core's one vocabulary,
/// `interrupted` included (a server marks runs it stopped with it).
async fn statuses_are_the_cores_vocabulary(store: Store, _url: &str) {
    let pipeline = Pipeline::from_yaml_str(SMALL).unwrap();
    let report = run(&pipeline, &store, CheckpointPolicy::Agent).await;
    store.flush().await.unwrap();
    let seen = store.get_run(&report.run_id).await.unwrap().unwrap();
    assert_eq!(seen.summary.status, RunStatus::Completed.as_str());
    assert_eq!(seen.run_status(), Some(RunStatus::Completed));
    store
        .set_status(&report.run_id, RunStatus::Interrupted)
        .await
        .unwrap();
    let seen = store.get_run(&report.run_id).await.unwrap().unwrap();
    assert_eq!(seen.summary.status, "interrupted");
    assert_eq!(seen.run_status(), Some(RunStatus::Interrupted));
}

async fn only_one_resume_can_claim_a_run(store: Store, _url: &str) {
    let pipeline = Pipeline::from_yaml_str(
        "pipeline: failing\ninputs: { request: { type: string } }\nagents:\n  a: { kind: command, run: [sh, -c, 'exit 2'], reads: [request], writes: [x] }\n",
    )
    .unwrap();
    let report = run(&pipeline, &store, CheckpointPolicy::Agent).await;
    store.flush().await.unwrap();
    let seen = store.get_run(&report.run_id).await.unwrap().unwrap();
    assert_eq!(seen.summary.status, "failed");
    assert!(store.claim(&seen).await.unwrap(), "the first claim wins");
    assert!(
        !store.claim(&seen).await.unwrap(),
        "a second one, from the same snapshot, loses"
    );
    let now = store.get_run(&report.run_id).await.unwrap().unwrap();
    assert_eq!(now.summary.status, "running");
}

#[tokio::test]
async fn an_agent_checkpointed_run_whose_write_was_lost_is_restored_at_the_end() {
    // The first agent's own checkpoint fails (its table is gone); the run's
    // final record, written once the table is back, carries its writes again.
    let db = sqlite_db();
    let settings = StoreSettings {
        write_retries: 0,
        ..Default::default()
    };
    let store = Store::connect(&db.url, &settings).await.unwrap();
    // `late` finishes only when the test says so: the run is still in
    // flight, however slow the machine, until the table is back.
    let release = Arc::new(tokio::sync::Notify::new());
    let mut builder = Pipeline::builder("healing");
    builder.agent_spec(
        "early",
        json!({"kind": "sleep", "writes": ["e"], "value": 1}),
    );
    builder
        .agent_fn("late", {
            let release = release.clone();
            move |_reads| {
                let release = release.clone();
                async move {
                    release.notified().await;
                    let mut writes = braid_core::agent::Writes::new();
                    writes.insert("l".into(), json!(2));
                    Ok::<_, braid_core::agent::AgentError>(writes)
                }
            }
        })
        .reads(["e"])
        .writes(["l"]);
    let pipeline = builder.build().unwrap();
    sqlx::query("ALTER TABLE braid_deltas RENAME TO braid_deltas_away")
        .execute(store.pool())
        .await
        .unwrap();
    let run_id = uuid::Uuid::now_v7().to_string();
    let input = pipeline.check_input(&json!({})).unwrap();
    let options = RunOptions {
        run_id: Some(run_id.clone()),
        checkpointer: Some(store.checkpointer()),
        checkpoint: Some(CheckpointPolicy::Agent),
        ..Default::default()
    };
    let running = tokio::spawn(async move { pipeline.run(input, options).await });

    // `early`'s checkpoint fails, and the store says so for this run.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let err = loop {
        match store.flush_run(&run_id).await {
            Err(err) => break err,
            Ok(()) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the lost write of `early` was never reported"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    };
    assert_eq!(err.runs.len(), 1, "{err}");
    assert_eq!(err.runs[0].0, run_id);
    assert!(err.to_string().contains("braid_deltas"), "{err}");
    assert!(!running.is_finished(), "`late` waits for the test");

    // The table is back; `late` may finish, and with it the run.
    sqlx::query("ALTER TABLE braid_deltas_away RENAME TO braid_deltas")
        .execute(store.pool())
        .await
        .unwrap();
    release.notify_one();
    let report = running.await.unwrap();
    assert_eq!(report.status, RunStatus::Completed, "{report:#?}");
    store
        .flush_run(&run_id)
        .await
        .expect("the final record is written");
    let stored = store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(stored.summary.status, "completed");
    let early = stored.agents.iter().find(|a| &*a.agent == "early").unwrap();
    assert_eq!(early.report.status, AgentStatus::Completed);
    assert_eq!(early.writes.len(), 1, "restored from the final record");
    assert_eq!(*early.writes[0].1, json!(1));
    let late = stored.agents.iter().find(|a| &*a.agent == "late").unwrap();
    assert_eq!(late.writes.len(), 1, "{:?}", late.writes);
    assert_eq!(*late.writes[0].1, json!(2));
}

const DEFINITIONS: &str = r#"pipeline: definitions
agents:
  a:    { kind: sleep, writes: [x], value: 1 }
  b:    { kind: sleep, reads: [x], writes: [y], value: 2 }
  c:    { kind: sleep, reads: [y], writes: [z], value: 3 }
  d:    { kind: sleep, writes: [w], value: 4 }
  stop: { kind: command, run: [sh, -c, 'test -n "$NOT_SET_ANYWHERE" && echo "{\"done\": 1}"'], reads: [z, w], writes: [done] }
"#;

async fn resume(
    store: &Store,
    pipeline: &Pipeline,
    run_id: &str,
    agents: Vec<braid_core::checkpoint::AgentRecord>,
) -> braid_core::RunReport {
    let input = pipeline.check_input(&json!({})).unwrap();
    pipeline
        .run(
            input,
            RunOptions {
                run_id: Some(run_id.to_owned()),
                checkpointer: Some(store.checkpointer()),
                checkpoint: Some(CheckpointPolicy::Agent),
                resume: Some(ResumePoint { agents }),
                ..Default::default()
            },
        )
        .await
}

async fn a_resume_reruns_changed_agents_and_their_downstream_only(store: Store, _url: &str) {
    let resumed = |report: &braid_core::RunReport| -> Vec<String> {
        let mut names: Vec<String> = report
            .agents
            .iter()
            .filter(|(_, a)| a.resumed)
            .map(|(n, _)| n.to_string())
            .collect();
        names.sort();
        names
    };
    let v1 = Pipeline::from_yaml_str(DEFINITIONS).unwrap();
    let input = v1.check_input(&json!({})).unwrap();
    let first = v1
        .run(
            input,
            RunOptions {
                checkpointer: Some(store.checkpointer()),
                checkpoint: Some(CheckpointPolicy::Agent),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(first.status, RunStatus::Failed, "{first:#?}");
    store.flush().await.unwrap();

    // The same text, loaded again (as after a restart): every completed
    // agent's definition hash matches, so all of them are reused.
    let again = Pipeline::from_yaml_str(DEFINITIONS).unwrap();
    let stored = store.get_run(&first.run_id).await.unwrap().unwrap();
    assert!(stored.agents.iter().all(|a| a.definition.is_some()));
    let second = resume(&store, &again, &first.run_id, stored.agents).await;
    assert_eq!(resumed(&second), ["a", "b", "c", "d"]);
    store.flush().await.unwrap();

    // `b` changes: it and `c` (downstream) run again; `a` and `d` do not.
    let v2 = Pipeline::from_yaml_str(
        &DEFINITIONS
            .replace("value: 2", "value: 20")
            .replace("test -n \"$NOT_SET_ANYWHERE\" && ", ""),
    )
    .unwrap();
    let stored = store.get_run(&first.run_id).await.unwrap().unwrap();
    let third = resume(&store, &v2, &first.run_id, stored.agents).await;
    assert_eq!(third.status, RunStatus::Completed, "{third:#?}");
    assert_eq!(resumed(&third), ["a", "d"]);
    assert_eq!(*third.state["y"], json!(20));
    assert_eq!(*third.state["z"], json!(3));
    store.flush().await.unwrap();
    let stored = store.get_run(&first.run_id).await.unwrap().unwrap();
    let b = stored.agents.iter().find(|a| &*a.agent == "b").unwrap();
    assert_eq!(
        b.definition.as_deref(),
        Some(v2.agents()[1].definition_hash())
    );
}

fn nested(levels: usize) -> serde_json::Value {
    let mut v = json!(1);
    for _ in 0..levels {
        v = json!([v]);
    }
    v
}

async fn run_deep(store: &Store, pipeline: &Pipeline, levels: usize) -> braid_core::RunReport {
    let input = pipeline
        .check_input(&json!({"levels": levels, "doc": nested(levels.min(100))}))
        .unwrap();
    pipeline
        .run(
            input,
            RunOptions {
                checkpointer: Some(store.checkpointer()),
                checkpoint: Some(CheckpointPolicy::Agent),
                ..Default::default()
            },
        )
        .await
}

async fn everything_written_reads_back_and_over_deep_outputs_are_refused(store: Store, url: &str) {
    let mut kinds = braid_core::AgentKinds::standard();
    kinds.builtin_fn("deep", |reads| async move {
        let levels = reads.get("levels").and_then(|v| v.as_u64()).unwrap_or(0);
        let mut out = braid_core::agent::Writes::new();
        out.insert("out".into(), nested(levels as usize));
        Ok::<_, braid_core::agent::AgentError>(out)
    });
    let mut pipeline = Pipeline::from_yaml_str_with(
        "pipeline: deep
inputs: { levels: { type: integer }, doc: {} }
agents:
  nest: { kind: builtin, function: deep, reads: [levels, doc], writes: [out] }
",
        &kinds,
    )
    .unwrap();
    // The deepest the default allows, in the input and an output.
    let deepest = run_deep(&store, &pipeline, 64).await;
    assert_eq!(deepest.status, RunStatus::Completed, "{deepest:#?}");
    // Deeper than serde_json reads back: the agent fails, nothing deep is stored.
    pipeline.set_max_value_depth(100).unwrap();
    let too_deep = run_deep(&store, &pipeline, 500).await;
    assert_eq!(too_deep.status, RunStatus::Failed);
    // The ceiling.
    let ceiling = run_deep(&store, &pipeline, 100).await;
    assert_eq!(ceiling.status, RunStatus::Completed, "{ceiling:#?}");
    store.close().await.unwrap();

    let store = Store::connect(url, &StoreSettings::default())
        .await
        .unwrap();
    for (report, levels) in [(&deepest, 64), (&ceiling, 100)] {
        let stored = store.get_run(&report.run_id).await.unwrap().unwrap();
        assert_eq!(stored.input["doc"], nested(levels));
        assert_eq!(*stored.agents[0].writes[0].1, nested(levels));
    }
    let stored = store.get_run(&too_deep.run_id).await.unwrap().unwrap();
    assert_eq!(stored.summary.status, "failed");
    let error = stored.agents[0].report.error.as_deref().unwrap();
    assert!(
        error.contains("agent `nest`") && error.contains("max_value_depth"),
        "{error}"
    );
}

/// Process groups recorded through the checkpointer: those left on record
/// are killed by `kill_leftover_processes`, those taken back are not, nor
/// those of an owner on another host. (Recorded by this process: a run not
/// in flight here, as a server restarted under the same pid would see it.)
async fn leftover_process_groups_are_killed_once(store: Store, _url: &str) {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let sleeper = || {
        std::process::Command::new("sleep")
            .arg("300")
            .process_group(0)
            .spawn()
            .unwrap()
    };
    let (left, mut ended, mut remote) = (sleeper(), sleeper(), sleeper());
    let record = braid_core::checkpoint::RunRecord {
        run_id: Arc::from("run-with-processes"),
        pipeline: Arc::from("p"),
        pipeline_hash: Arc::from(""),
        pipeline_path: None,
        input: Vec::new(),
        policy: CheckpointPolicy::Agent,
        started_by: None,
    };
    let checkpointer = store.checkpointer();
    checkpointer
        .process_started(&record, "a", left.id() as i32)
        .await;
    checkpointer
        .process_started(&record, "b", ended.id() as i32)
        .await;
    checkpointer.process_ended(&record, ended.id() as i32);
    store.flush().await.unwrap();
    sqlx::query(
        "INSERT INTO braid_agent_processes (run_id, pgid, agent, owner) VALUES ($1, $2, $3, $4)",
    )
    .bind("run-with-processes")
    .bind(i64::from(remote.id()))
    .bind("c")
    .bind("some-other-host:1")
    .execute(store.pool())
    .await
    .unwrap();

    // Reaped as soon as it dies, as its parent would (else the zombie
    // keeps the group, and the kill waits out its grace period).
    let left_pid = left.id();
    let reaper = std::thread::spawn(move || {
        let mut left = left;
        left.wait().unwrap()
    });
    let leftovers = store
        .kill_leftover_processes("run-with-processes")
        .await
        .unwrap();
    assert_eq!(leftovers.killed, [format!("a (group {left_pid})")]);
    assert_eq!(
        leftovers.elsewhere,
        [format!("c (group {} of some-other-host:1)", remote.id())]
    );
    let status = reaper.join().unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert!(
        ended.try_wait().unwrap().is_none(),
        "an ended record was killed"
    );
    assert!(
        remote.try_wait().unwrap().is_none(),
        "another host's group was killed"
    );
    for mut child in [ended, remote] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // What was killed is off the record; the other host's group stays.
    let again = store
        .kill_leftover_processes("run-with-processes")
        .await
        .unwrap();
    assert!(again.killed.is_empty(), "{again:?}");
    assert_eq!(again.elsewhere.len(), 1, "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_process_groups_are_killed_once_on_sqlite() {
    let db = sqlite_db();
    let store = Store::connect(&db.url, &Default::default()).await.unwrap();
    leftover_process_groups_are_killed_once(store, &db.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_process_groups_are_killed_once_on_postgres() {
    let Some(db) = postgres_db().await else {
        return;
    };
    let store = Store::connect(&db.url, &Default::default()).await.unwrap();
    leftover_process_groups_are_killed_once(store, &db.url).await;
}
