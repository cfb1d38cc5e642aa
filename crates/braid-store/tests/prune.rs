//! Retention against real databases: `Store::prune` on SQLite (a fresh
//! file) and on PostgreSQL (a fresh schema in the database named by
//! `BRAID_TEST_POSTGRES_URL`; skipped without it, except under CI). Runs
//! are inserted with `insert_synthetic_runs`, aged by their creation time.

use std::collections::BTreeSet;
use std::time::Duration;

use braid_store::{PruneFilter, PruneReport, RunFilter, Store, StoreError, SyntheticRuns};

mod common;
use common::{on_both_backends, sqlite_db};

on_both_backends!(
    old_runs_go_by_age_status_and_pipeline_with_everything_stored_about_them,
    by_default_every_finished_status_goes_and_nothing_in_flight,
    keep_last_keeps_the_newest_of_each_pipeline,
    a_dry_run_deletes_nothing_and_counts_what_a_prune_deletes,
    running_runs_go_only_when_named_and_their_owner_is_gone,
    runs_that_forks_reference_are_kept_until_the_forks_go,
    expired_cache_entries_go_and_fresh_ones_stay,
    a_prune_stops_between_batches_when_asked,
    filters_that_would_delete_everything_or_name_no_status_are_refused,
);

const DAY_MS: i64 = 24 * 60 * 60 * 1000;
const AGENTS: usize = 3;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `count` runs of `pipeline` with `status`, created `days` ago.
async fn seed(store: &Store, pipeline: &str, status: &str, count: usize, days: i64) -> Vec<String> {
    seed_owned(store, pipeline, status, count, days, None).await
}

async fn seed_owned(
    store: &Store,
    pipeline: &str,
    status: &str,
    count: usize,
    days: i64,
    owner: Option<String>,
) -> Vec<String> {
    store
        .insert_synthetic_runs(&SyntheticRuns {
            pipeline: pipeline.to_owned(),
            count,
            agents: AGENTS,
            status: status.to_owned(),
            owner,
            created_at_ms: now_ms() - days * DAY_MS,
        })
        .await
        .unwrap()
}

/// Every run id in the store.
async fn ids(store: &Store) -> BTreeSet<String> {
    store
        .list_runs(&RunFilter {
            limit: Some(100_000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect()
}

fn set(groups: &[&[String]]) -> BTreeSet<String> {
    groups.iter().flat_map(|g| g.iter().cloned()).collect()
}

fn older_than_30_days() -> PruneFilter {
    PruneFilter {
        older_than: Some(Duration::from_secs(30 * 24 * 3600)),
        ..PruneFilter::default()
    }
}

async fn count(store: &Store, table: &str, run_id: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {table} WHERE run_id = $1"
    )))
    .bind(run_id.to_owned())
    .fetch_one(store.pool())
    .await
    .unwrap()
}

async fn old_runs_go_by_age_status_and_pipeline_with_everything_stored_about_them(store: Store) {
    let old_done = seed(&store, "a", "completed", 3, 40).await;
    let old_failed = seed(&store, "a", "failed", 2, 40).await;
    let new_done = seed(&store, "a", "completed", 2, 1).await;
    let other_pipeline = seed(&store, "b", "completed", 2, 40).await;
    store
        .save_events(&old_done[0], &[(1, "{}".into()), (2, "{}".into())])
        .await
        .unwrap();
    store
        .save_events(&new_done[0], &[(1, "{}".into())])
        .await
        .unwrap();

    let report = store
        .prune(&PruneFilter {
            statuses: vec!["completed".into()],
            pipeline: Some("a".into()),
            ..older_than_30_days()
        })
        .await
        .unwrap();
    assert_eq!(
        (
            report.runs,
            report.agent_records,
            report.deltas,
            report.events
        ),
        (3, 3 * AGENTS as u64, 3 * AGENTS as u64, 2),
        "{report:?}"
    );
    assert!(report.complete && !report.dry_run);
    assert_eq!(
        ids(&store).await,
        set(&[&old_failed, &new_done, &other_pipeline])
    );
    for table in ["braid_agent_runs", "braid_deltas", "braid_events"] {
        assert_eq!(count(&store, table, &old_done[0]).await, 0, "{table}");
    }
    // What stays is whole.
    let kept = store.get_run(&new_done[0]).await.unwrap().unwrap();
    assert_eq!(kept.agents.len(), AGENTS);
    assert!(kept.agents.iter().all(|a| a.writes.len() == 1));
    assert_eq!(store.load_events(&new_done[0]).await.unwrap().len(), 1);

    // Again: nothing more to do.
    let again = store
        .prune(&PruneFilter {
            statuses: vec!["completed".into()],
            pipeline: Some("a".into()),
            ..older_than_30_days()
        })
        .await
        .unwrap();
    assert_eq!(again.runs, 0, "{again:?}");
}

async fn by_default_every_finished_status_goes_and_nothing_in_flight(store: Store) {
    let mut finished = Vec::new();
    for status in ["completed", "failed", "cancelled", "interrupted"] {
        finished.extend(seed(&store, "a", status, 2, 40).await);
    }
    let waiting = seed(&store, "a", "waiting", 2, 40).await;
    let running = seed(&store, "a", "running", 2, 40).await;
    let recent = seed(&store, "a", "completed", 2, 29).await;
    // A small batch: several transactions.
    let report = store
        .prune(&PruneFilter {
            batch_size: 3,
            batch_pause: Duration::ZERO,
            ..older_than_30_days()
        })
        .await
        .unwrap();
    assert_eq!(report.runs, 8, "{report:?}");
    assert_eq!(report.batches, 3, "{report:?}");
    assert_eq!(report.kept_running, 0, "not selected at all: {report:?}");
    assert_eq!(ids(&store).await, set(&[&waiting, &running, &recent]));
}

async fn keep_last_keeps_the_newest_of_each_pipeline(store: Store) {
    // Oldest first: a[3], a[4] are a's newest.
    let a: Vec<String> = seed(&store, "a", "completed", 5, 40).await;
    let b = seed(&store, "b", "completed", 2, 40).await;
    let a_failed = seed(&store, "a", "failed", 1, 50).await;
    let report = store
        .prune(&PruneFilter {
            keep_last: Some(3),
            statuses: vec!["completed".into()],
            ..older_than_30_days()
        })
        .await
        .unwrap();
    assert_eq!(report.runs, 2, "{report:?}");
    assert_eq!(report.kept_newest, 5, "3 of a, 2 of b: {report:?}");
    assert_eq!(ids(&store).await, set(&[&a[2..], &b, &a_failed]));

    // keep_last alone: whatever the age; the statuses' default counts
    // failed runs with the rest.
    let fresh = seed(&store, "a", "completed", 1, 0).await;
    let report = store
        .prune(&PruneFilter {
            keep_last: Some(2),
            ..PruneFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(report.runs, 3, "{report:?}");
    assert_eq!(ids(&store).await, set(&[&a[4..], &fresh, &b]));
}

async fn a_dry_run_deletes_nothing_and_counts_what_a_prune_deletes(store: Store) {
    let parent = seed(&store, "a", "completed", 1, 60).await;
    let old = seed(&store, "a", "completed", 7, 40).await;
    seed(&store, "a", "failed", 3, 40).await;
    seed(&store, "a", "completed", 2, 1).await;
    seed(&store, "b", "running", 1, 40).await;
    // A recent fork holds on to `parent`.
    let fork = seed(&store, "a", "completed", 1, 1).await;
    reference(&store, &fork[0], &parent[0]).await;
    store
        .save_events(&old[0], &[(1, "{}".into())])
        .await
        .unwrap();
    expire_cache_entry(&store, "gone", -1000).await;
    expire_cache_entry(&store, "fresh", 60_000).await;
    let before = ids(&store).await;
    let filter = PruneFilter {
        keep_last: Some(1),
        batch_size: 4,
        ..older_than_30_days()
    };
    let dry = store
        .prune(&PruneFilter {
            dry_run: true,
            ..filter.clone()
        })
        .await
        .unwrap();
    assert!(dry.dry_run);
    assert_eq!(ids(&store).await, before, "a dry run deletes nothing");
    assert_eq!(cache_keys(&store).await, vec!["fresh", "gone"]);
    let real = store.prune(&filter).await.unwrap();
    assert_eq!(
        PruneReport {
            dry_run: true,
            ..real.clone()
        },
        dry
    );
    assert_eq!(
        (
            real.runs,
            real.events,
            real.cache_entries,
            real.kept_referenced
        ),
        (10, 1, 1, 1),
        "{real:?}"
    );
    assert_eq!(ids(&store).await.len(), before.len() - 10);
}

fn this_process() -> String {
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    format!("{host}:{}", std::process::id())
}

fn a_dead_process() -> String {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    format!("{host}:{pid}")
}

async fn running_runs_go_only_when_named_and_their_owner_is_gone(store: Store) {
    // This process's own runs, a live process's (our parent, the test
    // harness), one on another host, and one whose process died.
    let mine = seed_owned(&store, "a", "running", 1, 40, Some(this_process())).await;
    let parent = format!(
        "{}:{}",
        nix::unistd::gethostname().unwrap().into_string().unwrap(),
        std::os::unix::process::parent_id()
    );
    let alive = seed_owned(&store, "a", "running", 1, 40, Some(parent)).await;
    let elsewhere = seed_owned(
        &store,
        "a",
        "running",
        1,
        40,
        Some("another-host.invalid:1".into()),
    )
    .await;
    let dead = seed_owned(&store, "a", "running", 1, 40, Some(a_dead_process())).await;
    let waiting = seed(&store, "a", "waiting", 1, 40).await;
    seed(&store, "a", "completed", 1, 40).await;

    let report = store.prune(&older_than_30_days()).await.unwrap();
    assert_eq!(report.runs, 1, "only the completed run: {report:?}");
    assert_eq!(
        ids(&store).await,
        set(&[&mine, &alive, &elsewhere, &dead, &waiting])
    );

    let report = store
        .prune(&PruneFilter {
            statuses: vec!["running".into()],
            ..older_than_30_days()
        })
        .await
        .unwrap();
    assert_eq!((report.runs, report.kept_running), (1, 3), "{report:?}");
    assert!(!ids(&store).await.contains(&dead[0]));

    let report = store
        .prune(&PruneFilter {
            statuses: vec!["waiting".into()],
            ..older_than_30_days()
        })
        .await
        .unwrap();
    assert_eq!(report.runs, 1, "{report:?}");
    assert_eq!(ids(&store).await, set(&[&mine, &alive, &elsewhere]));
}

/// Makes `fork`'s first agent reuse `source`'s writes, as a fork does.
async fn reference(store: &Store, fork: &str, source: &str) {
    let done = sqlx::query(
        "UPDATE braid_agent_runs SET source_run = $1 WHERE run_id = $2 AND agent = 'a0'",
    )
    .bind(source.to_owned())
    .bind(fork.to_owned())
    .execute(store.pool())
    .await
    .unwrap();
    assert_eq!(done.rows_affected(), 1);
}

async fn runs_that_forks_reference_are_kept_until_the_forks_go(store: Store) {
    // A chain: grandparent ← parent ← child (recent), all completed.
    let grandparent = seed(&store, "a", "completed", 1, 90).await;
    let parent = seed(&store, "a", "completed", 1, 60).await;
    let child = seed(&store, "a", "completed", 1, 1).await;
    reference(&store, &parent[0], &grandparent[0]).await;
    reference(&store, &child[0], &parent[0]).await;
    // And a parent whose fork is as old as it: both go together.
    let old_parent = seed(&store, "b", "completed", 1, 50).await;
    let old_fork = seed(&store, "b", "completed", 1, 45).await;
    reference(&store, &old_fork[0], &old_parent[0]).await;

    // One run a batch: the fork goes in an earlier batch than its parent.
    let filter = PruneFilter {
        batch_size: 1,
        batch_pause: Duration::ZERO,
        ..older_than_30_days()
    };
    let report = store.prune(&filter).await.unwrap();
    assert_eq!((report.runs, report.kept_referenced), (2, 2), "{report:?}");
    assert_eq!(ids(&store).await, set(&[&grandparent, &parent, &child]));
    // The child still reads what it reuses.
    let kept = store.get_run(&parent[0]).await.unwrap().unwrap();
    assert_eq!(kept.agents.len(), AGENTS);
    assert!(kept.agents.iter().all(|a| a.writes.len() == 1));

    // Once the child goes, the chain goes with it, in one prune.
    let report = store
        .prune(&PruneFilter {
            older_than: Some(Duration::ZERO),
            ..filter
        })
        .await
        .unwrap();
    assert_eq!((report.runs, report.kept_referenced), (3, 0), "{report:?}");
    assert!(ids(&store).await.is_empty());
}

async fn expire_cache_entry(store: &Store, key: &str, expires_in_ms: i64) {
    sqlx::query(
        "INSERT INTO braid_cache (key, agent, writes, created_at_ms, expires_at_ms)
         VALUES ($1, 'agent', '{}', $2, $3)",
    )
    .bind(key.to_owned())
    .bind(now_ms())
    .bind(now_ms() + expires_in_ms)
    .execute(store.pool())
    .await
    .unwrap();
}

async fn cache_keys(store: &Store) -> Vec<String> {
    sqlx::query_scalar("SELECT key FROM braid_cache ORDER BY key")
        .fetch_all(store.pool())
        .await
        .unwrap()
}

async fn expired_cache_entries_go_and_fresh_ones_stay(store: Store) {
    for i in 0..5 {
        expire_cache_entry(&store, &format!("expired-{i}"), -1000 - i).await;
    }
    expire_cache_entry(&store, "fresh", 3_600_000).await;
    let report = store
        .prune(&PruneFilter {
            batch_size: 2,
            batch_pause: Duration::ZERO,
            ..older_than_30_days()
        })
        .await
        .unwrap();
    assert_eq!((report.runs, report.cache_entries), (0, 5), "{report:?}");
    assert_eq!(cache_keys(&store).await, vec!["fresh"]);
}

async fn a_prune_stops_between_batches_when_asked(store: Store) {
    let old = seed(&store, "a", "completed", 5, 40).await;
    let report = store
        .prune_until(&older_than_30_days(), std::future::ready(()))
        .await
        .unwrap();
    assert!(!report.complete);
    assert_eq!(report.runs, 0);
    assert_eq!(ids(&store).await.len(), old.len());
}

async fn filters_that_would_delete_everything_or_name_no_status_are_refused(store: Store) {
    let old = seed(&store, "a", "completed", 1, 40).await;
    let error = store.prune(&PruneFilter::default()).await.unwrap_err();
    assert!(matches!(error, StoreError::InvalidFilter(_)), "{error:?}");
    assert!(error.to_string().contains("older_than"), "{error}");
    let error = store
        .prune(&PruneFilter {
            statuses: vec!["done".into()],
            ..older_than_30_days()
        })
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("unknown run status `done`")
            && error.to_string().contains("completed"),
        "{error}"
    );
    assert_eq!(ids(&store).await, set(&[&old]));
}

#[tokio::test]
async fn a_read_only_store_refuses_to_prune_but_counts() {
    let db = sqlite_db();
    let store = Store::connect(&db.url, &Default::default()).await.unwrap();
    seed(&store, "a", "completed", 2, 40).await;
    store.close().await.unwrap();
    let store = Store::connect(&format!("{}?mode=ro", db.url), &Default::default())
        .await
        .unwrap();
    let error = store.prune(&older_than_30_days()).await.unwrap_err();
    assert!(matches!(error, StoreError::ReadOnly { .. }), "{error:?}");
    let dry = store
        .prune(&PruneFilter {
            dry_run: true,
            ..older_than_30_days()
        })
        .await
        .unwrap();
    assert_eq!(dry.runs, 2);
    assert_eq!(ids(&store).await.len(), 2);
}
