//! Cached agents through the library API, with an in-memory cache: what
//! the key covers (reads, a `foreach` element, a group as a whole), what a
//! hit says (report, events), what is never cached (`input` agents), and a
//! failing cache that only costs misses. The store's own cache is tested
//! in braid-store, and the whole through the CLI in braid-cli.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use braid_core::agent::{AgentError, Writes};
use braid_core::cache::{AgentCache, CacheEntry, CacheError, CacheLookup};
use braid_core::event::{EventKind, EventLevel, EventSink};
use braid_core::{AgentKinds, Pipeline, RunOptions, RunReport, RunStatus};
use serde_json::{Value, json};

/// Entries by key, in memory; `broken` makes every lookup fail.
#[derive(Default)]
struct MemoryCache {
    entries: Mutex<HashMap<String, serde_json::Map<String, Value>>>,
    broken: bool,
}

impl AgentCache for MemoryCache {
    fn lookup(&self, key: Arc<str>) -> CacheLookup {
        let found = self.entries.lock().unwrap().get(&*key).cloned();
        let broken = self.broken;
        Box::pin(async move {
            if broken {
                return Err(CacheError("the cache is down".into()));
            }
            Ok(found)
        })
    }

    fn store(&self, entry: CacheEntry) {
        let writes = entry
            .writes
            .iter()
            .map(|(k, v)| (k.to_string(), (**v).clone()))
            .collect();
        self.entries
            .lock()
            .unwrap()
            .insert(entry.key.to_string(), writes);
    }
}

/// A builtin `count` that writes `out: {in: <its read `x`>}` and counts its
/// calls by the value it read.
fn counting() -> (AgentKinds, Arc<Mutex<Vec<Value>>>) {
    let calls: Arc<Mutex<Vec<Value>>> = Arc::default();
    let mut kinds = AgentKinds::standard();
    let seen = calls.clone();
    kinds.builtin_fn("count", move |reads| {
        let x = reads.get("x").cloned().unwrap_or(Value::Null);
        seen.lock().unwrap().push(x.clone());
        async move {
            let mut out = Writes::new();
            out.insert("out".into(), json!({ "in": x }));
            Ok::<_, AgentError>(out)
        }
    });
    (kinds, calls)
}

async fn run(pipeline: &Pipeline, input: Value, cache: &Arc<MemoryCache>) -> RunReport {
    let input = pipeline.check_input(&input).unwrap();
    let cache: Arc<dyn AgentCache> = cache.clone();
    let report = pipeline
        .run(
            input,
            RunOptions {
                cache: Some(cache),
                ..RunOptions::default()
            },
        )
        .await;
    assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
    report
}

#[tokio::test]
async fn a_hit_reuses_the_writes_and_a_changed_read_misses() {
    let (kinds, calls) = counting();
    let pipeline = Pipeline::from_yaml_str_with(
        "pipeline: p
inputs: { x: { type: object } }
agents:
  a: { kind: builtin, function: count, reads: [x], writes: [out], cache: { ttl: 1h } }
",
        &kinds,
    )
    .unwrap();
    let cache = Arc::new(MemoryCache::default());
    let first = run(&pipeline, json!({"x": {"k": 1, "j": 2}}), &cache).await;
    assert!(!first.agents["a"].cached);
    assert_eq!(first.agents["a"].attempts, 1);
    // The same read, its keys in another order: a hit, the agent not called.
    let (sink, mut events) = EventSink::channel(EventLevel::Summary);
    let input = pipeline
        .check_input(&json!({"x": {"j": 2, "k": 1}}))
        .unwrap();
    let shared: Arc<dyn AgentCache> = cache.clone();
    let second = pipeline
        .run(
            input,
            RunOptions {
                cache: Some(shared),
                events: Some(sink),
                ..RunOptions::default()
            },
        )
        .await;
    assert!(second.agents["a"].cached);
    assert_eq!(second.agents["a"].attempts, 0, "the agent was not called");
    assert_eq!(second.state["out"], first.state["out"]);
    assert_eq!(calls.lock().unwrap().len(), 1);
    let mut completed = None;
    while let Some(event) = events.recv().await {
        if let EventKind::AgentCompleted { agent, cached, .. } = &event.kind {
            completed = Some((agent.to_string(), *cached));
            let text = serde_json::to_value(&event).unwrap();
            assert_eq!(text["type"], "agent_completed");
            assert_eq!(text["cached"], true, "{text}");
        }
    }
    assert_eq!(completed, Some(("a".to_owned(), true)));
    // Another read: a miss.
    let third = run(&pipeline, json!({"x": {"k": 2}}), &cache).await;
    assert!(!third.agents["a"].cached);
    assert_eq!(calls.lock().unwrap().len(), 2);
    // Without a cache, it always runs.
    let input = pipeline.check_input(&json!({"x": {"k": 2}})).unwrap();
    let uncached = pipeline.run(input, RunOptions::default()).await;
    assert!(!uncached.agents["a"].cached);
    assert_eq!(calls.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_foreach_instance_is_keyed_by_its_element() {
    let (kinds, calls) = counting();
    let pipeline = Pipeline::from_yaml_str_with(
        "pipeline: p
inputs: { xs: { type: array } }
agents:
  each: { kind: builtin, function: count, foreach: xs, as: x, reads: [x], writes: [out], cache: { ttl: 1h } }
",
        &kinds,
    )
    .unwrap();
    let cache = Arc::new(MemoryCache::default());
    run(&pipeline, json!({"xs": [1, 2]}), &cache).await;
    assert_eq!(calls.lock().unwrap().len(), 2);
    let report = run(&pipeline, json!({"xs": [2, 3, 1]}), &cache).await;
    // Only the new element ran; the others came from the cache.
    assert_eq!(calls.lock().unwrap()[2..], [json!(3)]);
    let instances = report.agents["each"].instances.as_ref().unwrap();
    let cached: Vec<bool> = instances.values().map(|i| i.cached).collect();
    assert_eq!(cached, [true, false, true]);
    assert_eq!(
        report.state["out"],
        Arc::new(json!([{"in": 2}, {"in": 3}, {"in": 1}]))
    );
}

#[tokio::test]
async fn a_group_is_cached_whole_only_when_it_says_so() {
    let (kinds, calls) = counting();
    let yaml = |group_cache: &str| {
        format!(
            "pipeline: p
inputs: {{ x: {{ type: integer }} }}
defaults: {{ cache: {{ ttl: 1h }} }}
agents:
  g:
    kind: pipeline
    reads: [x]{group_cache}
    agents:
      inner: {{ kind: builtin, function: count, reads: [x], writes: [out] }}
      after: {{ kind: sleep, reads: [out], writes: [done] }}
    outputs: {{ result: out }}
"
        )
    };
    // `defaults.cache` reaches the group's agents, not the group itself.
    let pipeline = Pipeline::from_yaml_str_with(&yaml(""), &kinds).unwrap();
    assert!(pipeline.agents()[0].cache().is_none());
    assert!(pipeline.uses_cache());
    let cache = Arc::new(MemoryCache::default());
    run(&pipeline, json!({"x": 1}), &cache).await;
    let report = run(&pipeline, json!({"x": 1}), &cache).await;
    assert_eq!(calls.lock().unwrap().len(), 1);
    assert!(!report.agents["g"].cached);
    let members = report.agents["g"].instances.as_ref().unwrap();
    assert!(members["g.inner"].cached && members["g.after"].cached);

    // A group with `cache:` of its own: a hit runs none of its agents.
    let pipeline = Pipeline::from_yaml_str_with(&yaml("\n    cache: { ttl: 1h }"), &kinds).unwrap();
    let fresh = Arc::new(MemoryCache::default());
    run(&pipeline, json!({"x": 2}), &fresh).await;
    assert_eq!(calls.lock().unwrap().len(), 2);
    let report = run(&pipeline, json!({"x": 2}), &fresh).await;
    assert_eq!(calls.lock().unwrap().len(), 2);
    assert!(report.agents["g"].cached);
    assert!(report.agents["g"].instances.is_none(), "nothing inside ran");
    assert_eq!(report.state["result"], Arc::new(json!({"in": 2})));
}

#[tokio::test]
async fn a_failing_cache_costs_misses_not_the_run() {
    let (kinds, calls) = counting();
    let pipeline = Pipeline::from_yaml_str_with(
        "pipeline: p
inputs: { x: { type: integer } }
agents:
  a: { kind: builtin, function: count, reads: [x], writes: [out], cache: { ttl: 1h } }
",
        &kinds,
    )
    .unwrap();
    let broken = Arc::new(MemoryCache {
        broken: true,
        ..MemoryCache::default()
    });
    for _ in 0..2 {
        let report = run(&pipeline, json!({"x": 1}), &broken).await;
        assert!(!report.agents["a"].cached);
    }
    assert_eq!(calls.lock().unwrap().len(), 2);
}

#[test]
fn input_agents_are_never_cached() {
    let kinds = AgentKinds::standard();
    // `defaults.cache` leaves it out.
    let pipeline = Pipeline::from_yaml_str_with(
        "pipeline: p
defaults: { cache: { ttl: 1h } }
agents:
  ask:  { kind: input, prompt: q, writes: [answer] }
  next: { kind: sleep, reads: [answer], writes: [done] }
",
        &kinds,
    )
    .unwrap();
    assert!(pipeline.agents()[0].cache().is_none());
    assert!(pipeline.agents()[1].cache().is_some());
    // Asking for it is refused, on the agent and on a group holding one.
    let err = Pipeline::from_yaml_str_with(
        "pipeline: p
agents:
  ask: { kind: input, prompt: q, writes: [answer], cache: { ttl: 1h } }
  g:
    kind: pipeline
    cache: { ttl: 1h }
    agents:
      inner: { kind: input, prompt: q, writes: [a] }
    outputs: { got: a }
",
        &kinds,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("3:59")
            && err.contains("agent `ask`: an `input` agent cannot be cached")
            // An `input` agent inside a group is refused as such first.
            && err.contains("agent `inner`: an `input` agent cannot be inside a group"),
        "{err}"
    );
}
