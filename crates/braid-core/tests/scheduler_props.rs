//! Property tests of the scheduler on random DAGs of `sleep` agents:
//! every agent runs exactly once, only after all its dependencies complete,
//! and as soon as they have: it waits for nothing else (no level barrier),
//! so the run takes the time of its critical path, not of its levels.

use std::collections::HashMap;

use braid_core::event::{EventKind, EventLevel, EventSink};
use braid_core::{AgentStatus, Pipeline, RunOptions, RunStatus};
use proptest::prelude::*;

/// A random DAG: agent `i` may depend on any earlier agent.
#[derive(Debug, Clone)]
struct Dag {
    ms: Vec<u64>,
    deps: Vec<Vec<usize>>,
}

fn dag() -> impl Strategy<Value = Dag> {
    (2usize..10).prop_flat_map(|n| {
        let ms = proptest::collection::vec(0u64..12, n);
        let deps = (0..n)
            .map(|i| proptest::sample::subsequence((0..i).collect::<Vec<_>>(), 0..=i.min(3)))
            .collect::<Vec<_>>();
        (ms, deps).prop_map(|(ms, deps)| Dag { ms, deps })
    })
}

impl Dag {
    fn yaml(&self) -> String {
        let mut out = String::from("pipeline: random\nagents:\n");
        for (i, deps) in self.deps.iter().enumerate() {
            let reads: Vec<String> = deps.iter().map(|d| format!("f{d}")).collect();
            out.push_str(&format!(
                "  a{i}: {{ kind: sleep, ms: {}, reads: [{}], writes: [f{i}] }}\n",
                self.ms[i],
                reads.join(", ")
            ));
        }
        out
    }

    /// The longest path, with the given per-agent durations.
    fn critical_path(&self, duration: impl Fn(usize) -> f64) -> f64 {
        let mut finish = vec![0.0f64; self.ms.len()];
        for i in 0..self.ms.len() {
            let ready = self.deps[i].iter().map(|&d| finish[d]).fold(0.0, f64::max);
            finish[i] = ready + duration(i);
        }
        finish.into_iter().fold(0.0, f64::max)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn agents_run_once_after_their_dependencies_and_as_early_as_they_can(dag in dag()) {
        let pipeline = Pipeline::from_yaml_str(&dag.yaml()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (sink, mut events) = EventSink::channel(EventLevel::Summary);
        let report = runtime.block_on(async {
            let input = pipeline.check_input(&serde_json::json!({})).unwrap();
            pipeline.run(input, RunOptions { events: Some(sink), ..Default::default() }).await
        });
        prop_assert_eq!(report.status, RunStatus::Completed);

        // Exactly once: one start and one completion event per agent. Also
        // where each start and completion falls in the event stream (events
        // arrive in the order they were numbered).
        let n = dag.ms.len();
        let index = |agent: &str| agent.strip_prefix('a').and_then(|i| i.parse::<usize>().ok()).unwrap();
        let mut started: HashMap<String, usize> = HashMap::new();
        let mut completed: HashMap<String, usize> = HashMap::new();
        let (mut started_at, mut completed_at) = (vec![0; n], vec![0; n]);
        let mut log = Vec::new();
        while let Ok(event) = events.try_recv() {
            match &event.kind {
                EventKind::AgentStarted { agent, .. } => {
                    *started.entry(agent.to_string()).or_default() += 1;
                    started_at[index(agent)] = log.len();
                }
                EventKind::AgentCompleted { agent, .. } => {
                    *completed.entry(agent.to_string()).or_default() += 1;
                    completed_at[index(agent)] = log.len();
                }
                _ => {}
            }
            log.push(event.kind);
        }
        let (mut start, mut end) = (vec![0.0; n], vec![0.0; n]);
        for i in 0..n {
            let name = format!("a{i}");
            let agent = &report.agents[name.as_str()];
            prop_assert_eq!(agent.status, AgentStatus::Completed);
            prop_assert_eq!(agent.attempts, 1);
            prop_assert_eq!(started.get(&name), Some(&1));
            prop_assert_eq!(completed.get(&name), Some(&1));
            start[i] = agent.start_ms.unwrap();
            end[i] = start[i] + agent.duration_ms.unwrap();
            prop_assert!(agent.duration_ms.unwrap() >= dag.ms[i] as f64);
        }

        // Never before a dependency completes.
        for (i, deps) in dag.deps.iter().enumerate() {
            for &d in deps {
                prop_assert!(start[i] >= end[d] - 1e-6, "a{} started at {} before a{} ended at {}", i, start[i], d, end[d]);
            }
        }

        // As early as it can: each agent starts right when its last
        // dependency completes (at the run's start if it has none), before
        // the scheduler has handled any other agent's completion, so it never
        // waits for an agent it does not depend on. A level barrier would
        // start it only after the rest of the previous level completed.
        // This is an ordering in the event stream, not a time, so a stalled
        // machine cannot break it (there is no concurrency limit here, which
        // could legitimately hold a ready agent back).
        for (i, deps) in dag.deps.iter().enumerate() {
            let ready = deps.iter().map(|&d| completed_at[d]).max();
            prop_assert!(ready.is_none_or(|r| r < started_at[i]), "a{} started before its dependencies completed", i);
            let waited_for: Vec<&str> = log[ready.map_or(0, |r| r + 1)..started_at[i]]
                .iter()
                .filter_map(|kind| match kind {
                    EventKind::AgentCompleted { agent, .. } => Some(&**agent),
                    _ => None,
                })
                .collect();
            prop_assert!(waited_for.is_empty(),
                "a{} (dependencies {:?}) started only after {:?} also completed", i, deps, waited_for);
        }
        let declared = dag.critical_path(|i| dag.ms[i] as f64);
        prop_assert!(report.makespan_ms >= declared);
    }
}
