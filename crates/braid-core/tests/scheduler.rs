//! The scheduler as a library user sees it: load a pipeline, run it, read
//! the report.

use std::path::Path;
use std::time::Duration;

use braid_core::event::{EventKind, EventLevel, EventSink};
use braid_core::{AgentStatus, Pipeline, RunOptions, RunReport, RunStatus};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn load(yaml: &str) -> Pipeline {
    Pipeline::from_yaml_str(yaml).unwrap_or_else(|e| panic!("{e}"))
}

/// Loads a pipeline written to `dir` (command agents run from there).
fn load_in(dir: &Path, yaml: &str) -> Pipeline {
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    Pipeline::from_file(&path).unwrap_or_else(|e| panic!("{e}"))
}

async fn run(pipeline: &Pipeline, options: RunOptions) -> RunReport {
    let input = pipeline.check_input(&json!({})).unwrap();
    pipeline.run(input, options).await
}

/// Waits up to 5 s for the process whose pid is in `pid_file` to be gone
/// (or a zombie), failing with `message` otherwise.
async fn exits_soon(pid_file: &Path, message: &str) {
    let pid = std::fs::read_to_string(pid_file).unwrap();
    let stat = format!("/proc/{}/stat", pid.trim());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(
            std::time::Instant::now() < deadline,
            "{message} (pid {})",
            pid.trim()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn end_ms(report: &RunReport, agent: &str) -> f64 {
    let a = &report.agents[agent];
    a.start_ms.unwrap() + a.duration_ms.unwrap()
}

fn start_ms(report: &RunReport, agent: &str) -> f64 {
    report.agents[agent].start_ms.unwrap()
}

#[tokio::test]
async fn a_join_starts_when_both_branches_finish_not_after_per_level_maxima() {
    // triage -> slow(500)              -> join
    //        -> quick(10) -> slow2(100) -> join
    // Eager, slow2 starts when quick ends (about 20 ms in) and runs while
    // slow is still sleeping (until 510 ms at the earliest). A level barrier
    // would hold slow2 (level 2) until slow (level 1) ended. The gap is wide
    // enough that no machine stall can close it; only the ordering is checked.
    let pipeline = load(
        "pipeline: skewed
agents:
  triage: { kind: sleep, ms: 10, writes: [t] }
  slow:   { kind: sleep, ms: 500, reads: [t], writes: [a] }
  quick:  { kind: sleep, ms: 10, reads: [t], writes: [q] }
  slow2:  { kind: sleep, ms: 100, reads: [q], writes: [b] }
  join:   { kind: sleep, ms: 10, reads: [a, b], writes: [done] }
",
    );
    let report = run(&pipeline, RunOptions::default()).await;
    assert_eq!(report.status, RunStatus::Completed);
    let join = start_ms(&report, "join");
    assert!(join >= end_ms(&report, "slow") && join >= end_ms(&report, "slow2"));
    assert!(start_ms(&report, "slow2") >= end_ms(&report, "quick"));
    // slow2 starts when quick ends, not when slow ends.
    assert!(
        start_ms(&report, "slow2") < end_ms(&report, "slow"),
        "slow2 started at {} ms, after slow ended at {} ms: a level barrier",
        start_ms(&report, "slow2"),
        end_ms(&report, "slow")
    );
    assert!(report.makespan_ms >= 520.0);
}

const SEED: &str = "pipeline: seed
agents:
  triage:       { kind: sleep, ms: 10, writes: [triage_result] }
  data:         { kind: sleep, ms: 10, reads: [triage_result], writes: [data_analysis] }
  metrics:      { kind: sleep, ms: 10, reads: [triage_result], writes: [metrics_result] }
  cost:         { kind: sleep, ms: 10, reads: [triage_result], writes: [cost_result] }
  optimization: { kind: sleep, ms: 10, reads: [data_analysis, metrics_result, cost_result], writes: [optimization_plan] }
  report:       { kind: sleep, ms: 10, reads: [optimization_plan], writes: [report] }
";

#[tokio::test]
async fn sequential_runs_one_agent_at_a_time_in_topological_order() {
    let pipeline = load(SEED);
    let report = run(
        &pipeline,
        RunOptions {
            sequential: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(report.status, RunStatus::Completed);
    let mut order: Vec<(&str, f64)> = report
        .agents
        .iter()
        .map(|(name, a)| (&**name, a.start_ms.unwrap()))
        .collect();
    order.sort_by(|a, b| a.1.total_cmp(&b.1));
    let names: Vec<&str> = order.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "triage",
            "data",
            "metrics",
            "cost",
            "optimization",
            "report"
        ]
    );
    for pair in names.windows(2) {
        assert!(
            start_ms(&report, pair[1]) >= end_ms(&report, pair[0]),
            "{pair:?} overlap"
        );
    }
    assert!(report.makespan_ms >= 60.0);
}

/// Six independent `ms`-long agents, with a pipeline limit of 2.
fn capped(ms: u64) -> String {
    let mut yaml = String::from("pipeline: capped\nconcurrency: 2\nagents:\n");
    for i in 0..6 {
        yaml.push_str(&format!(
            "  w{i}: {{ kind: sleep, ms: {ms}, writes: [f{i}] }}\n"
        ));
    }
    yaml
}

#[tokio::test]
async fn the_concurrency_limit_caps_agents_in_flight() {
    let report = run(&load(&capped(20)), RunOptions::default()).await;
    let intervals: Vec<(f64, f64)> = report
        .agents
        .keys()
        .map(|n| (start_ms(&report, n), end_ms(&report, n)))
        .collect();
    for &(s, _) in &intervals {
        let in_flight = intervals
            .iter()
            .filter(|&&(s2, e2)| s2 <= s && s < e2)
            .count();
        assert!(
            in_flight <= 2,
            "{in_flight} agents in flight at {s} ms: {intervals:?}"
        );
    }
    assert!(report.agents.values().any(|a| a.queue_ms.unwrap() >= 15.0));
    assert!(report.makespan_ms >= 60.0);

    // The run's option overrides the pipeline's limit: all six run at once,
    // every one starting before the first of them ends. (Under the
    // pipeline's limit of 2, the third could only start after an end.) They
    // all start within microseconds and sleep 200 ms, so a stall cannot
    // make an end come before a start.
    let report = run(
        &load(&capped(200)),
        RunOptions {
            concurrency: Some(6),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(report.status, RunStatus::Completed);
    let first_end = report
        .agents
        .keys()
        .map(|n| end_ms(&report, n))
        .fold(f64::INFINITY, f64::min);
    for name in report.agents.keys() {
        assert!(
            start_ms(&report, name) < first_end,
            "{name} started at {} ms, after an agent ended at {first_end} ms",
            start_ms(&report, name)
        );
    }
}

#[tokio::test]
async fn concurrent_writes_combine_in_declaration_order_whoever_finishes_first() {
    let pipeline = load(
        r#"pipeline: merged
fields:
  findings: { merge: append }
  totals:   { merge: merge }
  cost:     { merge: sum }
  worst:    { merge: max }
agents:
  first:  { kind: sleep, ms: 300, writes: [findings, cost, worst], value: 1 }
  second: { kind: sleep, ms: 1, writes: [findings, cost, worst], value: 7 }
  third:  { kind: command, run: [sh, -c, "echo '{\"findings\": [\"c\", \"d\"], \"totals\": {\"x\": 2}}'"], writes: [findings, totals] }
"#,
    );
    let report = run(&pipeline, RunOptions::default()).await;
    assert_eq!(report.status, RunStatus::Completed, "{report:#?}");
    // `second` finishes first (299 ms apart: no stall reorders them), yet
    // its values come after `first`'s.
    assert!(end_ms(&report, "second") < end_ms(&report, "first"));
    assert_eq!(*report.state["findings"], json!([1, 7, "c", "d"]));
    assert_eq!(*report.state["cost"], json!(8));
    assert_eq!(*report.state["worst"], json!(7));
    assert_eq!(*report.state["totals"], json!({"x": 2}));
}

#[tokio::test]
async fn a_value_a_merge_rule_cannot_combine_fails_its_writer() {
    let pipeline = load(
        "pipeline: bad-merge
fields:
  totals: { merge: merge }
agents:
  a: { kind: sleep, writes: [totals], value: { x: 1 } }
  b: { kind: sleep, writes: [totals], value: 5 }
",
    );
    let report = run(&pipeline, RunOptions::default()).await;
    assert_eq!(report.status, RunStatus::Failed);
    let error = report.agents["b"].error.as_deref().unwrap();
    assert!(
        error.contains("field `totals`") && error.contains("needs an object"),
        "{error}"
    );
}

#[tokio::test]
async fn false_conditions_skip_and_skips_propagate_to_required_reads_only() {
    let pipeline = load(
        "pipeline: skipping
agents:
  triage:   { kind: sleep, writes: [triage_result], value: { route: skip } }
  analysis: { kind: sleep, reads: [triage_result], writes: [analysis], when: 'triage_result.route != \"skip\"' }
  report:   { kind: sleep, reads: [analysis], writes: [report] }
  summary:  { kind: sleep, reads: [analysis?, triage_result], writes: [summary] }
",
    );
    let report = run(&pipeline, RunOptions::default()).await;
    assert_eq!(report.status, RunStatus::Completed);
    let analysis = &report.agents["analysis"];
    assert_eq!(analysis.status, AgentStatus::Skipped);
    assert!(analysis.reason.as_deref().unwrap().contains("is false"));
    let downstream = &report.agents["report"];
    assert_eq!(downstream.status, AgentStatus::Skipped);
    let reason = downstream.reason.as_deref().unwrap();
    assert!(
        reason.contains("`analysis`") && reason.contains("skipped"),
        "{reason}"
    );
    assert_eq!(report.agents["summary"].status, AgentStatus::Completed);
    assert!(!report.state.contains_key("analysis"));
    assert!(report.state.contains_key("summary"));
}

#[tokio::test]
async fn a_failed_agent_fails_the_run_cancels_the_rest_and_keeps_finished_work() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = load_in(
        dir.path(),
        "pipeline: failing
agents:
  early:  { kind: sleep, ms: 1, writes: [e] }
  broken: { kind: command, run: [sh, -c, 'sleep 0.05; echo something went wrong >&2; exit 3'], reads: [e], writes: [b] }
  slow:   { kind: command, run: [sleep, '30'], writes: [s] }
  after:  { kind: sleep, reads: [b], writes: [a] }
",
    );
    let started = std::time::Instant::now();
    let report = run(&pipeline, RunOptions::default()).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the slow agent was not cancelled"
    );
    assert_eq!(report.status, RunStatus::Failed);
    let error = report.error.as_deref().unwrap();
    assert!(
        error.contains("agent `broken` failed") && error.contains("exit code 3"),
        "{error}"
    );
    let broken = report.agents["broken"].error.as_deref().unwrap();
    assert!(broken.contains("something went wrong"), "{broken}");
    assert_eq!(report.agents["early"].status, AgentStatus::Completed);
    assert_eq!(*report.state["e"], json!(true));
    assert_eq!(report.agents["slow"].status, AgentStatus::Cancelled);
    assert_eq!(report.agents["after"].status, AgentStatus::Cancelled);
    assert!(
        report.agents["after"]
            .error
            .as_deref()
            .unwrap()
            .contains("not started")
    );
}

#[tokio::test]
async fn on_failure_continue_runs_everything_that_does_not_need_the_failure() {
    let pipeline = load(
        "pipeline: tolerant
on_failure: continue
agents:
  broken: { kind: command, run: [sh, -c, 'exit 1'], writes: [b] }
  needs:  { kind: sleep, reads: [b], writes: [n] }
  fine:   { kind: sleep, ms: 20, writes: [f] }
",
    );
    let report = run(&pipeline, RunOptions::default()).await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.agents["fine"].status, AgentStatus::Completed);
    assert_eq!(report.agents["needs"].status, AgentStatus::Skipped);
    assert!(
        report.agents["needs"]
            .reason
            .as_deref()
            .unwrap()
            .contains("`broken` failed")
    );
}

#[tokio::test]
async fn outputs_are_checked_against_declared_writes_only() {
    let pipeline = load(
        r#"pipeline: contracts
on_failure: continue
agents:
  extra:    { kind: command, run: [sh, -c, 'echo "{\"x\": 1, \"sneaky\": 2}"'], writes: [x] }
  missing:  { kind: command, run: [sh, -c, 'echo "{}"'], writes: [y] }
  list:     { kind: command, run: [sh, -c, 'echo "[1, 2]"'], writes: [z] }
  garbage:  { kind: command, run: [sh, -c, 'echo not json'], writes: [w] }
  ok:       { kind: command, run: [sh, -c, 'echo "{\"v\": {\"deep\": [1]}}"'], writes: [v] }
"#,
    );
    let report = run(&pipeline, RunOptions::default()).await;
    let error = |a: &str| report.agents[a].error.clone().unwrap_or_default();
    assert!(
        error("extra").contains("undeclared field(s) `sneaky`"),
        "{}",
        error("extra")
    );
    assert!(error("missing").contains("did not write declared field(s) `y`"));
    assert!(error("list").contains("one JSON object"));
    assert!(error("garbage").contains("received: `not json`"));
    assert_eq!(report.agents["ok"].status, AgentStatus::Completed);
    assert_eq!(*report.state["v"], json!({"deep": [1]}));
}

#[tokio::test]
async fn the_input_is_checked_once_at_entry_with_every_problem() {
    let pipeline = load(
        "pipeline: typed
inputs:
  request: { type: string, minLength: 3 }
  limit:   { type: integer, default: 10 }
agents:
  a: { kind: sleep, reads: [request, limit], writes: [x] }
",
    );
    let err = pipeline
        .check_input(&json!({"request": 5, "colour": "blue"}))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("unknown input field `colour`") && text.contains("request, limit"),
        "{text}"
    );
    assert!(
        text.contains("input `request`") && text.contains("string"),
        "{text}"
    );
    let err = pipeline.check_input(&json!({})).unwrap_err();
    assert_eq!(err.problems, ["missing input field `request`"]);
    assert!(pipeline.check_input(&json!("hello")).is_err());

    let input = pipeline.check_input(&json!({"request": "hello"})).unwrap();
    let report = pipeline.run(input, RunOptions::default()).await;
    assert_eq!(*report.state["limit"], json!(10));
}

#[tokio::test]
async fn cancelling_stops_the_run_and_reports_what_finished() {
    let pipeline = load(
        "pipeline: cancellable
agents:
  quick: { kind: sleep, ms: 1, writes: [q] }
  slow:  { kind: sleep, ms: 60000, reads: [q], writes: [s] }
  last:  { kind: sleep, reads: [s], writes: [l] }
",
    );
    // Cancels as soon as `quick` has completed, when `slow` (which needs
    // it) has just started: whatever the machine's delays, `quick` is done,
    // `slow` is in flight and `last` has not started.
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let (sink, mut events) = EventSink::channel(EventLevel::Summary);
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if matches!(&event.kind, EventKind::AgentCompleted { agent, .. } if &**agent == "quick")
            {
                trigger.cancel();
                return;
            }
        }
    });
    let report = run(
        &pipeline,
        RunOptions {
            cancel,
            events: Some(sink),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(report.status, RunStatus::Cancelled);
    assert_eq!(report.agents["quick"].status, AgentStatus::Completed);
    assert_eq!(*report.state["q"], json!(true));
    assert_eq!(report.agents["slow"].status, AgentStatus::Cancelled);
    assert!(
        report.agents["slow"]
            .error
            .as_deref()
            .unwrap()
            .contains("cancelled in flight")
    );
    assert_eq!(report.agents["last"].status, AgentStatus::Cancelled);
    assert!(report.agents["last"].start_ms.is_none());
    // Not the 60 s `slow` would take.
    assert!(report.makespan_ms < 5000.0);
}

#[tokio::test]
async fn dropping_a_run_kills_its_command_agents_process_groups() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = load_in(
        dir.path(),
        "pipeline: orphan-free
agents:
  parent: { kind: command, run: [sh, -c, 'sleep 30 & echo $! > child.pid; wait'], writes: [x] }
",
    );
    let pid_file = dir.path().join("child.pid");
    let input = pipeline.check_input(&json!({})).unwrap();
    let run = pipeline.run(input, RunOptions::default());
    tokio::select! {
        _ = run => panic!("the run should still be going"),
        () = async {
            while std::fs::read_to_string(&pid_file).map_or(true, |s| !s.ends_with('\n')) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } => {}
    }
    // The run's future is dropped here; its grandchild `sleep 30` must die with it.
    exits_soon(&pid_file, "a grandchild survived the run").await;
}

#[tokio::test]
async fn retries_back_off_and_timeouts_end_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = load_in(
        dir.path(),
        "pipeline: flaky
on_failure: continue
agents:
  flaky:
    kind: command
    run: [sh, -c, 'n=$(cat count 2>/dev/null || echo 0); echo $((n+1)) > count; [ $n -ge 1 ] && echo \"{\\\"x\\\": $n}\" || exit 7']
    writes: [x]
    retries: 2
    backoff: 10ms
  stuck:
    kind: command
    run: [sleep, '30']
    writes: [y]
    timeout: 100ms
    retries: 1
    backoff: 1ms
",
    );
    let (sink, mut events) = EventSink::channel(EventLevel::Summary);
    let report = run(
        &pipeline,
        RunOptions {
            events: Some(sink),
            ..Default::default()
        },
    )
    .await;
    let flaky = &report.agents["flaky"];
    assert_eq!((flaky.status, flaky.attempts), (AgentStatus::Completed, 2));
    assert_eq!(*report.state["x"], json!(1));
    let stuck = &report.agents["stuck"];
    assert_eq!((stuck.status, stuck.attempts), (AgentStatus::Failed, 2));
    assert!(
        stuck
            .error
            .as_deref()
            .unwrap()
            .contains("timed out after 100ms")
    );
    assert!(stuck.duration_ms.unwrap() < 5000.0);

    let mut retried = Vec::new();
    let mut seqs = Vec::new();
    while let Ok(event) = events.try_recv() {
        seqs.push(event.seq);
        if let EventKind::AgentRetrying { agent, attempt, .. } = event.kind {
            retried.push((agent.to_string(), attempt));
        }
    }
    retried.sort();
    assert_eq!(retried, [("flaky".to_owned(), 1), ("stuck".to_owned(), 1)]);
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn full_events_carry_command_agents_log_lines() {
    let pipeline = load(
        "pipeline: chatty
agents:
  talk: { kind: command, run: [sh, -c, 'echo one >&2; echo two >&2; echo {}'] }
",
    );
    let (sink, mut events) = EventSink::channel(EventLevel::Full);
    let report = run(
        &pipeline,
        RunOptions {
            events: Some(sink),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(report.status, RunStatus::Completed);
    let mut kinds = Vec::new();
    while let Ok(event) = events.try_recv() {
        kinds.push(match event.kind {
            EventKind::AgentLog { line, .. } => format!("log {line}"),
            other => serde_json::to_value(&other).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned(),
        });
    }
    assert_eq!(
        kinds,
        [
            "run_started",
            "agent_started",
            "log one",
            "log two",
            "agent_completed",
            "run_finished"
        ]
    );
}

#[tokio::test]
async fn a_command_that_leaves_a_background_child_finishes_and_the_child_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = load_in(
        dir.path(),
        r#"pipeline: leaky
agents:
  leaky: { kind: command, run: [sh, -c, "sleep 600 & echo $! > bg.pid; echo '{\"x\": 1}'"], writes: [x] }
"#,
    );
    let started = std::time::Instant::now();
    let report = run(&pipeline, RunOptions::default()).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(report.status, RunStatus::Completed, "{report:#?}");
    assert_eq!(*report.state["x"], json!(1));
    exits_soon(&dir.path().join("bg.pid"), "the background child survived").await;
}

#[tokio::test]
async fn odd_output_is_handled_not_fatal() {
    let pipeline = load(
        r#"pipeline: odd
on_failure: continue
agents:
  binary_stderr: { kind: command, run: [sh, -c, "printf '\\377\\376\\n' >&2; sleep 0.1; echo fine >&2; echo '{}'"] }
  huge_stdout:   { kind: command, run: [sh, -c, "head -c 20000000 /dev/zero"], writes: [x] }
"#,
    );
    let report = run(&pipeline, RunOptions::default()).await;
    assert_eq!(
        report.agents["binary_stderr"].status,
        AgentStatus::Completed
    );
    let error = report.agents["huge_stdout"].error.as_deref().unwrap();
    assert!(
        error.contains("more than 16777216 bytes on stdout"),
        "{error}"
    );
}

#[tokio::test]
async fn with_on_failure_continue_partial_fields_are_not_handed_on() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = load_in(
        dir.path(),
        "pipeline: partial
on_failure: continue
fields:
  findings: { merge: append }
agents:
  good:   { kind: sleep, writes: [findings], value: [1] }
  bad:    { kind: command, run: [sh, -c, 'exit 1'], writes: [findings] }
  reader: { kind: sleep, reads: [findings], writes: [r] }
  maybe:  { kind: command, run: [sh, -c, 'cat > seen.json; echo {}'], reads: [findings?] }
",
    );
    let report = run(&pipeline, RunOptions::default()).await;
    assert_eq!(report.agents["reader"].status, AgentStatus::Skipped);
    let reason = report.agents["reader"].reason.as_deref().unwrap();
    assert!(reason.contains("`bad` failed"), "{reason}");
    assert_eq!(report.agents["maybe"].status, AgentStatus::Completed);
    let seen = std::fs::read_to_string(dir.path().join("seen.json")).unwrap();
    let seen: serde_json::Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(
        seen["state"],
        json!({}),
        "a partial optional read was handed on"
    );
}

#[tokio::test]
async fn a_run_cancelled_before_it_starts_starts_nothing() {
    let pipeline = load(SEED);
    let cancel = CancellationToken::new();
    cancel.cancel();
    let report = run(
        &pipeline,
        RunOptions {
            cancel,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(report.status, RunStatus::Cancelled);
    assert!(
        report
            .agents
            .values()
            .all(|a| a.status == AgentStatus::Cancelled && a.start_ms.is_none())
    );
}

/// Remembers every checkpoint call, as a store would receive them.
#[derive(Default)]
struct Recorder {
    calls: std::sync::Mutex<Vec<String>>,
    agents: std::sync::Mutex<Vec<braid_core::checkpoint::AgentRecord>>,
}

impl braid_core::Checkpointer for Recorder {
    fn run_started(&self, run: &braid_core::checkpoint::RunRecord) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("started {}", run.policy));
    }
    fn agent_finished(
        &self,
        _run: &braid_core::checkpoint::RunRecord,
        agent: &braid_core::checkpoint::AgentRecord,
    ) {
        let fields: Vec<&str> = agent.writes.iter().map(|(f, _)| &**f).collect();
        self.calls.lock().unwrap().push(format!(
            "agent {} {} [{}]",
            agent.agent,
            agent.report.status,
            fields.join(",")
        ));
        self.agents.lock().unwrap().push(agent.clone());
    }
    fn run_finished(
        &self,
        _run: &braid_core::checkpoint::RunRecord,
        report: &RunReport,
        agents: &[braid_core::checkpoint::AgentRecord],
    ) {
        let with_writes = agents.iter().filter(|a| !a.writes.is_empty()).count();
        self.calls.lock().unwrap().push(format!(
            "finished {} {} agents, {with_writes} with writes",
            report.status,
            agents.len()
        ));
    }
}

async fn run_checkpointed(
    pipeline: &Pipeline,
    policy: Option<braid_core::CheckpointPolicy>,
) -> (RunReport, Vec<String>) {
    let recorder = std::sync::Arc::new(Recorder::default());
    let report = run(
        pipeline,
        RunOptions {
            checkpointer: Some(recorder.clone()),
            checkpoint: policy,
            ..Default::default()
        },
    )
    .await;
    let calls = recorder.calls.lock().unwrap().clone();
    (report, calls)
}

#[tokio::test]
async fn checkpoints_follow_the_policy_and_carry_only_each_agents_writes() {
    use braid_core::CheckpointPolicy;
    let pipeline = load(
        "pipeline: small
agents:
  a: { kind: sleep, writes: [x, y] }
  b: { kind: sleep, reads: [x], writes: [z], when: 'x == false' }
",
    );
    let (_, calls) = run_checkpointed(&pipeline, Some(CheckpointPolicy::Agent)).await;
    assert_eq!(
        calls,
        [
            "started agent",
            "agent a completed [x,y]",
            "agent b skipped []",
            // Writes again at the end, for a store that lost one on the way.
            "finished completed 2 agents, 1 with writes"
        ]
    );
    // `end` is the default: one hand-over, with every completed agent's writes.
    let (_, calls) = run_checkpointed(&pipeline, None).await;
    assert_eq!(calls, ["finished completed 2 agents, 1 with writes"]);
    let (_, calls) = run_checkpointed(&pipeline, Some(CheckpointPolicy::None)).await;
    assert!(calls.is_empty());
    // The pipeline's own `checkpoint:` applies when the run does not say.
    let agent_default = load(&format!(
        "checkpoint: agent\n{}",
        "pipeline: small\nagents:\n  a: { kind: sleep, writes: [x] }\n"
    ));
    let (_, calls) = run_checkpointed(&agent_default, None).await;
    assert_eq!(calls[0], "started agent");
}

#[tokio::test]
async fn a_resumed_run_does_not_rerun_finished_agents_and_ends_in_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    // `flaky` fails on its first run only; every agent logs each execution.
    // It reads `s` only so that `side` has finished when it fails: on a busy
    // machine `side` could otherwise still be in flight, and be cancelled.
    let pipeline = load_in(
        dir.path(),
        r#"pipeline: resumable
checkpoint: agent
agents:
  first:  { kind: command, run: [sh, -c, "echo first >> ran; echo '{\"a\": 1}'"], writes: [a] }
  side:   { kind: command, run: [sh, -c, "echo side >> ran; echo '{\"s\": 2}'"], writes: [s] }
  flaky:  { kind: command, run: [sh, -c, "echo flaky >> ran; [ -f ok ] || { touch ok; exit 1; }; echo '{\"b\": 3}'"], reads: [a, s], writes: [b] }
  last:   { kind: command, run: [sh, -c, "echo last >> ran; echo '{\"c\": 4}'"], reads: [b, s], writes: [c] }
"#,
    );
    let recorder = std::sync::Arc::new(Recorder::default());
    let first = run(
        &pipeline,
        RunOptions {
            checkpointer: Some(recorder.clone()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(first.status, RunStatus::Failed);
    let finished = recorder.agents.lock().unwrap().clone();

    let resumed = run(
        &pipeline,
        RunOptions {
            run_id: Some(first.run_id.clone()),
            resume: Some(braid_core::ResumePoint { agents: finished }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(resumed.status, RunStatus::Completed, "{resumed:#?}");
    assert_eq!(resumed.run_id, first.run_id);
    assert!(resumed.agents["first"].resumed && resumed.agents["side"].resumed);
    assert!(!resumed.agents["flaky"].resumed);
    let mut ran: Vec<String> = std::fs::read_to_string(dir.path().join("ran"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    ran.sort();
    assert_eq!(ran, ["first", "flaky", "flaky", "last", "side"]);

    // The same state as a run that never failed.
    let clean = run(&pipeline, RunOptions::default()).await;
    assert_eq!(resumed.state, clean.state);
}

#[tokio::test]
async fn a_resumed_run_decides_skips_again() {
    let dir = tempfile::tempdir().unwrap();
    // `source` fails the first time; `user` needs its write, so it is skipped.
    let pipeline = load_in(
        dir.path(),
        r#"pipeline: reskip
on_failure: continue
agents:
  source: { kind: command, run: [sh, -c, "[ -f ok ] || { touch ok; exit 1; }; echo '{\"v\": 1}'"], writes: [v] }
  user:   { kind: sleep, reads: [v], writes: [w] }
"#,
    );
    let recorder = std::sync::Arc::new(Recorder::default());
    let first = run(
        &pipeline,
        RunOptions {
            checkpointer: Some(recorder.clone()),
            checkpoint: Some(braid_core::CheckpointPolicy::Agent),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(first.agents["user"].status, AgentStatus::Skipped);
    let finished = recorder.agents.lock().unwrap().clone();
    let resumed = run(
        &pipeline,
        RunOptions {
            resume: Some(braid_core::ResumePoint { agents: finished }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(resumed.status, RunStatus::Completed);
    assert_eq!(resumed.agents["user"].status, AgentStatus::Completed);
    assert_eq!(*resumed.state["w"], json!(true));
}

/// Starts its command agent's attempt on a thread of its own, which ends
/// once the program is running; the attempt then goes on in the run's task.
struct StartedOnAShortLivedThread {
    inner: std::sync::Arc<braid_core::agent::command::CommandAgent>,
    dir: std::path::PathBuf,
}

#[async_trait::async_trait]
impl braid_core::agent::Agent for StartedOnAShortLivedThread {
    async fn call(
        &self,
        input: &braid_core::agent::AgentInput,
    ) -> Result<braid_core::agent::Writes, braid_core::agent::AgentError> {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        let inner = self.inner.clone();
        let input = input.clone();
        let mut attempt = Box::pin(async move { inner.call(&input).await });
        let runtime = tokio::runtime::Handle::current();
        let started = self.dir.join("started");
        let thread = std::thread::spawn(move || {
            let _entered = runtime.enter();
            let mut cx = Context::from_waker(Waker::noop());
            while !started.exists() {
                if let Poll::Ready(done) = attempt.as_mut().poll(&mut cx) {
                    panic!("the attempt ended before its program started: {done:?}");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            attempt
        });
        while !thread.is_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let attempt = thread.join().unwrap();
        // The thread that started the program is gone; let it finish.
        std::fs::write(self.dir.join("go"), "").unwrap();
        attempt.await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_survives_the_thread_that_started_it() {
    // The parent-death signal follows the thread that forked the child:
    // braid forks from a thread that lives as long as the process, so a
    // runtime thread that ends (tokio retires idle ones) kills no agent.
    let dir = tempfile::tempdir().unwrap();
    let argv: Vec<String> = [
        "sh",
        "-c",
        "touch started; while [ ! -f go ]; do sleep 0.01; done; echo '{\"x\": 1}'",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let inner = braid_core::agent::command::CommandAgent::new(&argv, dir.path(), Vec::new());
    let mut kinds = braid_core::AgentKinds::standard();
    kinds.builtin(
        "handed_over",
        std::sync::Arc::new(StartedOnAShortLivedThread {
            inner: std::sync::Arc::new(inner),
            dir: dir.path().to_path_buf(),
        }),
    );
    let pipeline = Pipeline::from_yaml_str_with(
        "pipeline: p\nagents:\n  a: { kind: builtin, function: handed_over, writes: [x], timeout: 60s }\n",
        &kinds,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let report = run(&pipeline, RunOptions::default()).await;
    assert_eq!(
        report.agents["a"].status,
        AgentStatus::Completed,
        "{:?}",
        report.agents["a"].error
    );
    assert_eq!(*report.state["x"], json!(1));
}

/// Counts `braid_agents_total` by its `status` label, as a metrics
/// exporter would.
#[derive(Default)]
struct AgentsCounted(
    std::sync::Mutex<
        std::collections::HashMap<String, std::sync::Arc<std::sync::atomic::AtomicU64>>,
    >,
);

impl AgentsCounted {
    fn get(&self, status: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(status)
            .map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl metrics::Recorder for AgentsCounted {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        if key.name() != "braid_agents_total" {
            return metrics::Counter::noop();
        }
        let status = key
            .labels()
            .find(|l| l.key() == "status")
            .map(|l| l.value().to_owned())
            .unwrap_or_default();
        metrics::Counter::from_arc(self.0.lock().unwrap().entry(status).or_default().clone())
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// Runs a one-agent pipeline whose agent cancels the run as it ends;
/// gives the report, the checkpoint calls and the metrics. On a
/// multi-thread runtime (`spawned`) the agent is a task of its own, so its
/// outcome arrives while the run winds down; on a current-thread runtime
/// the run's task polls it, and its outcome arrives with the cancellation.
fn run_ending_during_wind_down(
    fails: bool,
    spawned: bool,
) -> (RunReport, Vec<String>, AgentsCounted) {
    let cancel = CancellationToken::new();
    let trip = cancel.clone();
    let mut builder = Pipeline::builder("late");
    builder
        .agent_fn("late", move |_| {
            let trip = trip.clone();
            async move {
                // The run stops before the scheduler hears of this outcome.
                trip.cancel();
                if fails {
                    Err(braid_core::agent::AgentError::Other("gave up".into()))
                } else {
                    let mut out = braid_core::agent::Writes::new();
                    out.insert("out".into(), json!(1));
                    Ok(out)
                }
            }
        })
        .writes(["out"]);
    let pipeline = builder.build().unwrap();
    let recorder = std::sync::Arc::new(Recorder::default());
    let counted = AgentsCounted::default();
    let runtime = if spawned {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .unwrap();
    let report = metrics::with_local_recorder(&counted, || {
        runtime.block_on(run(
            &pipeline,
            RunOptions {
                cancel,
                checkpointer: Some(recorder.clone()),
                checkpoint: Some(braid_core::CheckpointPolicy::Agent),
                ..Default::default()
            },
        ))
    });
    let calls = recorder.calls.lock().unwrap().clone();
    (report, calls, counted)
}

#[test]
fn a_failure_during_wind_down_is_checkpointed_and_counted() {
    let (report, calls, counted) = run_ending_during_wind_down(true, true);
    assert_eq!(report.status, RunStatus::Cancelled, "{report:?}");
    assert_eq!(report.agents["late"].status, AgentStatus::Failed);
    assert!(
        calls.contains(&"agent late failed []".to_owned()),
        "the late failure is checkpointed per agent: {calls:?}"
    );
    assert_eq!(counted.get("failed"), 1, "the late failure is counted");
}

#[test]
fn a_failure_that_cancels_its_run_is_checkpointed_and_counted_when_polled() {
    let (report, calls, counted) = run_ending_during_wind_down(true, false);
    // The run's task heard of the failure before it looked at the token.
    assert_eq!(report.status, RunStatus::Failed, "{report:?}");
    assert_eq!(
        report.error.as_deref(),
        Some("agent `late` failed: gave up")
    );
    assert_eq!(report.agents["late"].status, AgentStatus::Failed);
    assert!(
        calls.contains(&"agent late failed []".to_owned()),
        "{calls:?}"
    );
    assert_eq!(counted.get("failed"), 1);
}

#[test]
fn a_completion_during_wind_down_is_checkpointed_and_counted() {
    for spawned in [true, false] {
        completion_during_wind_down(spawned);
    }
}

fn completion_during_wind_down(spawned: bool) {
    let (report, calls, counted) = run_ending_during_wind_down(false, spawned);
    assert_eq!(report.status, RunStatus::Cancelled, "{report:?}");
    assert_eq!(report.agents["late"].status, AgentStatus::Completed);
    assert_eq!(*report.state["out"], json!(1));
    assert!(
        calls.contains(&"agent late completed [out]".to_owned()),
        "{calls:?}"
    );
    assert_eq!(
        counted.get("completed"),
        1,
        "the late completion is counted"
    );
}
