//! The store's agent cache (`braid_cache`) on SQLite and on PostgreSQL
//! (`BRAID_TEST_POSTGRES_URL`; skipped without it, except under CI):
//! entries found by key until they expire, replaced by newer ones, shared
//! by every braid on the store, cleared on request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use braid_core::agent::{AgentError, Writes};
use braid_core::cache::{AgentCache, CacheEntry};
use braid_core::{AgentKinds, Pipeline, RunOptions, RunStatus};
use braid_store::Store;
use serde_json::{Value, json};

mod common;
use common::{postgres_db, sqlite_db};

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
    an_entry_is_found_by_its_key_until_it_expires,
    a_newer_result_replaces_the_older_one,
    runs_on_another_connection_share_the_results,
    clearing_deletes_every_entry_or_one_agents,
    lookups_made_together_each_get_their_own_answer,
);

fn entry(key: &str, agent: &str, value: Value, ttl: Duration) -> CacheEntry {
    CacheEntry {
        key: Arc::from(key),
        agent: Arc::from(agent),
        writes: vec![(Arc::from("out"), Arc::new(value))],
        ttl,
    }
}

async fn lookup(cache: &Arc<dyn AgentCache>, key: &str) -> Option<Value> {
    cache
        .lookup(Arc::from(key))
        .await
        .unwrap()
        .map(Value::Object)
}

async fn an_entry_is_found_by_its_key_until_it_expires(store: Store, _url: &str) {
    let cache = store.cache();
    // Values that need care: nesting, a NUL, text beyond ASCII.
    let value = json!({"rows": [1, 2.5, null], "text": "nul\u{0}é"});
    cache.store(entry("k1", "a", value.clone(), Duration::from_millis(300)));
    store.flush().await.unwrap();
    assert_eq!(lookup(&cache, "k1").await, Some(json!({"out": value})));
    assert_eq!(lookup(&cache, "k2").await, None);
    // Past its ttl it is never returned, whether pruned or not.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(lookup(&cache, "k1").await, None);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM braid_cache")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(rows, 1, "expired, but only pruning deletes it");
}

async fn a_newer_result_replaces_the_older_one(store: Store, _url: &str) {
    let cache = store.cache();
    cache.store(entry("k", "a", json!(1), Duration::from_secs(60)));
    store.flush().await.unwrap();
    cache.store(entry("k", "a", json!(2), Duration::from_secs(120)));
    // Within one batch, the last one queued wins too.
    cache.store(entry("k", "a", json!(3), Duration::from_secs(120)));
    store.flush().await.unwrap();
    assert_eq!(lookup(&cache, "k").await, Some(json!({"out": 3})));
    let (created, expires): (i64, i64) =
        sqlx::query_as("SELECT created_at_ms, expires_at_ms FROM braid_cache WHERE key = 'k'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(expires - created, 120_000);
}

const PIPELINE: &str = "pipeline: shared
inputs: { x: { type: integer } }
agents:
  work:  { kind: builtin, function: work, reads: [x], writes: [out], cache: { ttl: 1h } }
  after: { kind: sleep, reads: [out], writes: [done] }
";

async fn runs_on_another_connection_share_the_results(store: Store, url: &str) {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut kinds = AgentKinds::standard();
    let counter = calls.clone();
    kinds.builtin_fn("work", move |reads| {
        counter.fetch_add(1, Ordering::SeqCst);
        let x = reads.get("x").cloned().unwrap_or(Value::Null);
        async move {
            let mut out = Writes::new();
            out.insert("out".into(), json!({ "x": x }));
            Ok::<_, AgentError>(out)
        }
    });
    let pipeline = Pipeline::from_yaml_str_with(PIPELINE, &kinds).unwrap();
    let run = |store: &Store, x: i64| {
        let input = pipeline.check_input(&json!({ "x": x })).unwrap();
        let options = RunOptions {
            cache: Some(store.cache()),
            checkpointer: Some(store.checkpointer()),
            ..RunOptions::default()
        };
        pipeline.run(input, options)
    };
    let first = run(&store, 1).await;
    assert_eq!(first.status, RunStatus::Completed);
    assert!(!first.agents["work"].cached);
    store.close().await.unwrap();

    // Another braid on the same store.
    let other = Store::connect(url, &Default::default()).await.unwrap();
    let second = run(&other, 1).await;
    assert!(second.agents["work"].cached, "{:?}", second.agents["work"]);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(second.state["out"], first.state["out"]);
    let third = run(&other, 2).await;
    assert!(!third.agents["work"].cached);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    other.flush().await.unwrap();
    let agents: Vec<String> = sqlx::query_scalar("SELECT agent FROM braid_cache ORDER BY agent")
        .fetch_all(other.pool())
        .await
        .unwrap();
    assert_eq!(agents, ["work", "work"], "only the cached agent is kept");
}

async fn clearing_deletes_every_entry_or_one_agents(store: Store, _url: &str) {
    let cache = store.cache();
    for (key, agent) in [("k1", "a"), ("k2", "a"), ("k3", "b")] {
        cache.store(entry(key, agent, json!(1), Duration::from_secs(60)));
    }
    // Queued, not yet written: clearing waits for them.
    assert_eq!(store.clear_cache(Some("a")).await.unwrap(), 2);
    assert_eq!(lookup(&cache, "k1").await, None);
    assert!(lookup(&cache, "k3").await.is_some());
    assert_eq!(store.clear_cache(None).await.unwrap(), 1);
    assert_eq!(lookup(&cache, "k3").await, None);
}

async fn lookups_made_together_each_get_their_own_answer(store: Store, _url: &str) {
    let cache = store.cache();
    for i in 0..300 {
        cache.store(entry(
            &format!("k{i}"),
            "a",
            json!(i),
            Duration::from_secs(60),
        ));
    }
    store.flush().await.unwrap();
    // 1,000 lookups at once (more than one query takes), some for the same
    // key, some for keys never stored: each is answered for its own key.
    let keys: Vec<usize> = (0..1000).map(|i| (i * 7) % 600).collect();
    let lookups = keys.iter().map(|i| {
        let cache = cache.clone();
        let key = format!("k{i}");
        tokio::spawn(async move { lookup(&cache, &key).await })
    });
    let mut answers = Vec::new();
    for lookup in lookups.collect::<Vec<_>>() {
        answers.push(lookup.await.unwrap());
    }
    for (i, answer) in keys.iter().zip(answers) {
        let expected = (*i < 300).then(|| json!({ "out": i }));
        assert_eq!(answer, expected, "k{i}");
    }
}
