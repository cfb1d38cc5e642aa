//! Waiting runs and forks in the store, on SQLite and PostgreSQL: of two
//! answers racing, exactly one wins; timed-out waits are found by
//! deadline; a fork refers to its parent's deltas instead of copying them.

use braid_core::{AgentStatus, CheckpointPolicy, Pipeline, RunOptions, RunStatus};
use braid_store::{AnswerRefused, ForkRecord, Store};
use serde_json::json;

mod common;
use common::{SMALL, on_both_backends, run};

on_both_backends!(
    of_two_answers_exactly_one_wins,
    timed_out_waits_are_found_by_deadline,
    a_fork_refers_to_its_parents_deltas,
);

const ASK: &str = "pipeline: ask
agents:
  ask: { kind: input, prompt: Go?, writes: [go], timeout: 1h }
  next: { kind: sleep, reads: [go], writes: [done], value: 1 }
";

async fn waiting_run(store: &Store, yaml: &str) -> (Pipeline, String) {
    let pipeline = Pipeline::from_yaml_str(yaml).unwrap();
    let input = pipeline.check_input(&json!({})).unwrap();
    let report = pipeline
        .run(
            input,
            RunOptions {
                checkpointer: Some(store.checkpointer()),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(report.status, RunStatus::Waiting);
    store.flush().await.unwrap();
    (pipeline, report.run_id)
}

async fn of_two_answers_exactly_one_wins(store: Store) {
    let (_, id) = waiting_run(&store, ASK).await;
    let stored = store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(stored.summary.status, "waiting");
    let ask = stored.agents.iter().find(|a| &*a.agent == "ask").unwrap();
    assert_eq!(ask.report.status, AgentStatus::Waiting);
    assert!(ask.report.deadline_ms.is_some(), "its deadline is kept");

    let (first, second) = tokio::join!(
        store.answer(&id, "ask", "go", &json!(true)),
        store.answer(&id, "ask", "go", &json!(false)),
    );
    let outcomes = [first.unwrap(), second.unwrap()];
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    let refused = outcomes.iter().find_map(|o| o.clone().err()).unwrap();
    assert!(
        matches!(refused, AnswerRefused::RunNotWaiting { ref status, .. } if status == "running"),
        "{refused:?}"
    );
    let stored = store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(
        stored.summary.status, "running",
        "the winner took the run over"
    );
    let ask = stored.agents.iter().find(|a| &*a.agent == "ask").unwrap();
    assert_eq!(ask.report.status, AgentStatus::Completed);
    assert_eq!(ask.writes.len(), 1);
    // Unknown runs and agents are refused, naming them.
    assert_eq!(
        store.answer("nope", "ask", "go", &json!(1)).await.unwrap(),
        Err(AnswerRefused::NoRun("nope".to_owned()))
    );
}

async fn timed_out_waits_are_found_by_deadline(store: Store) {
    let (_, id) = waiting_run(&store, ASK).await;
    let stored = store.get_run(&id).await.unwrap().unwrap();
    let deadline = stored
        .agents
        .iter()
        .find_map(|a| a.report.deadline_ms)
        .expect("a deadline");
    let (due, next) = store.due_waits(deadline - 1, 10).await.unwrap();
    assert!(due.is_empty(), "{due:?}");
    assert_eq!(next, Some(deadline));
    let (due, next) = store.due_waits(deadline, 10).await.unwrap();
    assert_eq!(due, std::slice::from_ref(&id));
    assert_eq!(next, None);
    // Answered runs are no longer due.
    store
        .answer(&id, "ask", "go", &json!(true))
        .await
        .unwrap()
        .unwrap();
    let (due, _) = store.due_waits(deadline, 10).await.unwrap();
    assert!(due.is_empty(), "{due:?}");
}

async fn a_fork_refers_to_its_parents_deltas(store: Store) {
    let pipeline = Pipeline::from_yaml_str(SMALL).unwrap();
    let parent = run(&pipeline, &store, CheckpointPolicy::End).await;
    store.flush().await.unwrap();
    let stored = store.get_run(&parent.run_id).await.unwrap().unwrap();
    let fork = pipeline
        .fork(
            &parent.run_id,
            &stored.agents,
            &stored.input,
            Some("report"),
            &[],
        )
        .unwrap();
    assert_eq!(fork.rerun, ["report"]);
    let child = braid_core::run::new_run_id();
    store
        .record_fork(&ForkRecord {
            run_id: child.clone(),
            parent_id: parent.run_id.clone(),
            forked_from: "report".to_owned(),
            pipeline: "small".to_owned(),
            pipeline_hash: pipeline.content_hash().to_owned(),
            pipeline_path: None,
            checkpoint: CheckpointPolicy::End,
            input: fork.input.clone(),
            set_writes: Vec::new(),
        })
        .await
        .unwrap();
    let input = pipeline.check_input(&json!(fork.input)).unwrap();
    let report = pipeline
        .run(
            input,
            RunOptions {
                run_id: Some(child.clone()),
                checkpointer: Some(store.checkpointer()),
                checkpoint: Some(CheckpointPolicy::End),
                resume: Some(fork.resume),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(report.status, RunStatus::Completed);
    assert_eq!(
        report.state, parent.state,
        "the same state, only `report` re-ran"
    );
    store.flush().await.unwrap();
    let stored = store.get_run(&child).await.unwrap().unwrap();
    assert_eq!(stored.parent_id.as_deref(), Some(parent.run_id.as_str()));
    for agent in &stored.agents {
        let from = agent.report.reused_from.as_deref();
        if &*agent.agent == "report" {
            assert_eq!(from, None);
        } else {
            assert_eq!(from, Some(parent.run_id.as_str()), "{}", agent.agent);
        }
        assert!(
            !agent.writes.is_empty(),
            "{} reads back its writes",
            agent.agent
        );
    }
    // Only the agent that ran has deltas of its own.
    let own: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM braid_deltas WHERE run_id = '{child}'"
    )))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(own, 1);

    // Pruning all but the newest run (the fork) keeps the parent, which
    // the fork refers to: the fork still reads back whole. Pruning both
    // together leaves nothing dangling.
    let all_but_newest = braid_store::PruneFilter {
        older_than: Some(std::time::Duration::ZERO),
        keep_last: Some(1),
        ..Default::default()
    };
    let pruned = store.prune(&all_but_newest).await.unwrap();
    assert_eq!((pruned.runs, pruned.kept_referenced), (0, 1), "{pruned:?}");
    assert!(store.get_run(&parent.run_id).await.unwrap().is_some());
    let kept = store.get_run(&child).await.unwrap().unwrap();
    assert!(kept.agents.iter().all(|a| !a.writes.is_empty()));
    let everything = braid_store::PruneFilter {
        older_than: Some(std::time::Duration::ZERO),
        ..Default::default()
    };
    let pruned = store.prune(&everything).await.unwrap();
    assert_eq!(pruned.runs, 2, "{pruned:?}");
    assert!(store.get_run(&parent.run_id).await.unwrap().is_none());
    assert!(store.get_run(&child).await.unwrap().is_none());
}
