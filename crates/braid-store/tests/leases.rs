//! Leases and epochs (issue 14): two stores on one database, as two braid
//! processes would be, each under its own owner name. A run's owner renews
//! its lease; once it stops, the run shows as `abandoned` and the other
//! store claims it at the next epoch, after which the first one's writes
//! of it are refused and it is told it was deposed. SQLite always;
//! PostgreSQL with `BRAID_TEST_POSTGRES_URL` (skipped without it, except
//! under CI).

mod common;

use std::sync::Arc;
use std::time::Duration;

use braid_core::checkpoint::{AgentRecord, RunRecord};
use braid_core::{AgentReport, AgentStatus, CheckpointPolicy, RunReport, RunStatus};
use braid_store::{RunFilter, Store, StoreSettings};
use common::{TestDb, postgres_db, sqlite_db};
use serde_json::{Value, json};

async fn open(db: &TestDb, owner: &str, lease: Duration) -> Store {
    let settings = StoreSettings {
        owner: Some(owner.to_owned()),
        lease,
        spill: false,
        ..StoreSettings::default()
    };
    Store::connect(&db.url, &settings).await.unwrap()
}

fn record(id: &str) -> RunRecord {
    RunRecord {
        run_id: Arc::from(id),
        pipeline: Arc::from("leased"),
        pipeline_hash: Arc::from("h"),
        pipeline_path: None,
        input: vec![(Arc::from("n"), Arc::new(json!(1)))],
        policy: CheckpointPolicy::Agent,
        started_by: None,
    }
}

fn agent(name: &str, field: &str, value: Value) -> AgentRecord {
    AgentRecord {
        agent: Arc::from(name),
        report: AgentReport::new(AgentStatus::Completed),
        writes: vec![(Arc::from(field), Arc::new(value))],
        definition: None,
    }
}

/// Ends the lease of every run now, as if its owner had stopped renewing
/// it long ago (a hung process whose store object is still alive).
async fn expire_leases(db: &TestDb) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    sqlx::query("UPDATE braid_runs SET lease_until_ms = 1 WHERE status = 'running'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

async fn status_of(store: &Store, id: &str) -> String {
    store.get_run(id).await.unwrap().unwrap().summary.status
}

async fn a_claimed_run_refuses_its_deposed_owners_writes(db: TestDb) {
    // Long leases: nothing expires unless the test says so.
    let a = open(&db, "host-a:1", Duration::from_secs(60)).await;
    let b = open(&db, "host-b:2", Duration::from_secs(60)).await;
    let mut deposed = a.deposed();
    let id = uuid::Uuid::now_v7().to_string();
    let run = record(&id);
    let ca = a.checkpointer();
    ca.run_started(&run);
    ca.agent_finished(&run, &agent("first", "x", json!("by a")));
    a.flush().await.unwrap();
    assert_eq!(a.epoch(&id), Some(0), "a new run is held at epoch 0");
    assert_eq!(status_of(&b, &id).await, "running");
    assert!(
        b.claim_expired(10, &[]).await.unwrap().is_empty(),
        "a run whose lease runs is not taken"
    );

    expire_leases(&db).await;
    assert_eq!(status_of(&b, &id).await, "abandoned");
    let claimed = b.claim_expired(10, &[]).await.unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(claimed[0].run_id, id);
    assert_eq!(claimed[0].epoch, 1);
    assert_eq!(claimed[0].previous_owner.as_deref(), Some("host-a:1"));
    assert_eq!(b.epoch(&id), Some(1));
    assert!(
        b.claim_expired(10, &[]).await.unwrap().is_empty(),
        "a claimed run is leased again"
    );
    let stored = b.get_run(&id).await.unwrap().unwrap();
    assert_eq!(stored.summary.status, "running");
    assert_eq!(stored.owner.as_deref(), Some("host-b:2"));
    assert_eq!(stored.epoch, 1);

    // A wakes up and writes what its agent did meanwhile: refused.
    ca.agent_finished(&run, &agent("second", "y", json!("by a")));
    a.flush().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), deposed.recv())
        .await
        .expect("A is told the run was taken from it")
        .unwrap();
    assert_eq!(&*got, id.as_str());
    assert!(a.is_deposed(&id));
    assert_eq!(a.epoch(&id), None);
    assert_eq!(a.stats().deposed, 1);
    assert!(a.stats().fenced >= 1, "{:?}", a.stats());
    let stored = b.get_run(&id).await.unwrap().unwrap();
    assert!(
        !stored.agents.iter().any(|r| &*r.agent == "second"),
        "the deposed owner's record did not land: {:?}",
        stored.agents
    );
    // Nor does its end, nor a status it sets on its way out.
    a.set_status(&id, RunStatus::Interrupted).await.unwrap();
    ca.run_finished(
        &run,
        &RunReport {
            run_id: id.clone(),
            pipeline: "leased".into(),
            status: RunStatus::Cancelled,
            error: Some("cancelled by a".into()),
            makespan_ms: 1.0,
            state: Default::default(),
            agents: Default::default(),
            tokens: None,
        },
        &[agent("first", "x", json!("by a"))],
    );
    a.flush().await.unwrap();
    assert_eq!(status_of(&b, &id).await, "running");

    // B's writes land, and its end is the run's.
    let cb = b.checkpointer();
    cb.run_started(&run);
    cb.agent_finished(&run, &agent("second", "y", json!("by b")));
    cb.run_finished(
        &run,
        &RunReport {
            run_id: id.clone(),
            pipeline: "leased".into(),
            status: RunStatus::Completed,
            error: None,
            makespan_ms: 2.0,
            state: Default::default(),
            agents: Default::default(),
            tokens: None,
        },
        &[
            agent("first", "x", json!("by a")),
            agent("second", "y", json!("by b")),
        ],
    );
    b.flush().await.unwrap();
    let stored = b.get_run(&id).await.unwrap().unwrap();
    assert_eq!(stored.summary.status, "completed");
    assert_eq!(stored.epoch, 1);
    let state = stored.recorded_state();
    assert_eq!(
        *state["x"],
        json!("by a"),
        "what A wrote before it lost the run stays"
    );
    assert_eq!(*state["y"], json!("by b"));
    assert_eq!(b.stats().fenced, 0);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn a_claimed_run_refuses_its_deposed_owners_writes_sqlite() {
    a_claimed_run_refuses_its_deposed_owners_writes(sqlite_db()).await;
}

#[tokio::test]
async fn a_claimed_run_refuses_its_deposed_owners_writes_postgres() {
    if let Some(db) = postgres_db().await {
        a_claimed_run_refuses_its_deposed_owners_writes(db).await;
    }
}

async fn renewal_keeps_a_live_run_and_a_silent_one_is_abandoned(db: TestDb) {
    let lease = Duration::from_millis(600);
    let a = open(&db, "host-a:1", lease).await;
    let b = open(&db, "host-b:2", lease).await;
    let id = uuid::Uuid::now_v7().to_string();
    let run = record(&id);
    a.checkpointer().run_started(&run);
    a.flush().await.unwrap();
    // Several leases long: renewed all along, never claimable.
    for _ in 0..6 {
        tokio::time::sleep(lease / 2).await;
        assert!(b.claim_expired(10, &[]).await.unwrap().is_empty());
        assert_eq!(status_of(&b, &id).await, "running");
    }
    let running = |status: &str| RunFilter {
        status: Some(status.to_owned()),
        ..RunFilter::default()
    };
    assert_eq!(b.list_runs(&running("running")).await.unwrap().len(), 1);
    assert!(b.list_runs(&running("abandoned")).await.unwrap().is_empty());

    // A goes silent (its store closes; nothing renews the run).
    a.close().await.unwrap();
    tokio::time::sleep(lease * 2).await;
    let listed = b.list_runs(&RunFilter::default()).await.unwrap();
    assert_eq!(listed[0].status, "abandoned");
    assert_eq!(b.list_runs(&running("abandoned")).await.unwrap().len(), 1);
    assert!(b.list_runs(&running("running")).await.unwrap().is_empty());

    // A resume claims it like a takeover: the next epoch; a second resume
    // of what it saw loses.
    let seen = b.get_run(&id).await.unwrap().unwrap();
    let c = open(&db, "host-c:3", lease).await;
    assert!(b.claim(&seen).await.unwrap());
    assert!(
        !c.claim(&seen).await.unwrap(),
        "two resumes cannot both win"
    );
    assert_eq!(b.epoch(&id), Some(1));
    tokio::time::sleep(lease * 2).await;
    assert_eq!(
        status_of(&c, &id).await,
        "running",
        "B renews what it claimed"
    );

    // B gives it up (it could not continue it now): abandoned at once,
    // and no renewal of B's brings it back; C takes it at the next epoch.
    b.release(&id).await.unwrap();
    assert_eq!(b.epoch(&id), None);
    assert_eq!(status_of(&c, &id).await, "abandoned");
    b.renew_leases().await.unwrap();
    assert_eq!(status_of(&c, &id).await, "abandoned");
    let claimed = c.claim_expired(10, &[]).await.unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(claimed[0].epoch, 2);
    b.close().await.unwrap();
    c.close().await.unwrap();
}

#[tokio::test]
async fn renewal_keeps_a_live_run_and_a_silent_one_is_abandoned_sqlite() {
    renewal_keeps_a_live_run_and_a_silent_one_is_abandoned(sqlite_db()).await;
}

#[tokio::test]
async fn renewal_keeps_a_live_run_and_a_silent_one_is_abandoned_postgres() {
    if let Some(db) = postgres_db().await {
        renewal_keeps_a_live_run_and_a_silent_one_is_abandoned(db).await;
    }
}
