//! What the store's test binaries share: a fresh database per test and a
//! small pipeline to run against it.

#![allow(dead_code)] // each test binary uses its own part

use braid_core::{CheckpointPolicy, Pipeline, RunOptions};
use braid_store::{Backend, Store};
use serde_json::json;

/// A database for one test: a SQLite file in a fresh folder, or a fresh
/// schema in the test PostgreSQL database; removed afterwards.
pub(crate) struct TestDb {
    pub(crate) url: String,
    pub(crate) backend: Backend,
    _dir: Option<tempfile::TempDir>,
}

pub(crate) fn sqlite_db() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    TestDb {
        url: format!("sqlite://{}", dir.path().join("braid.db").display()),
        backend: Backend::Sqlite,
        _dir: Some(dir),
    }
}

/// A fresh schema in the test PostgreSQL database, or `None` (skipped).
pub(crate) async fn postgres_db() -> Option<TestDb> {
    let Ok(base) = std::env::var("BRAID_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the PostgreSQL tests: set BRAID_TEST_POSTGRES_URL"
        );
        eprintln!("skipping the PostgreSQL half: BRAID_TEST_POSTGRES_URL is not set");
        return None;
    };
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {base}: {e}"));
    let schema = format!("braid_test_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(TestDb {
        url: format!("{base}{sep}options=-c%20search_path%3D{schema}"),
        backend: Backend::Postgres,
        _dir: None,
    })
}

pub(crate) const SMALL: &str = "pipeline: small
inputs:
  request: { type: string }
agents:
  triage:  { kind: sleep, reads: [request], writes: [route], value: cost }
  data:    { kind: sleep, reads: [route], writes: [data], value: { rows: 3 } }
  metrics: { kind: sleep, reads: [route], writes: [metrics], value: [1, 2] }
  report:  { kind: sleep, reads: [data, metrics], writes: [report], value: done }
";

/// Runs `pipeline` (SMALL's input) checkpointed into `store` by `policy`.
pub(crate) async fn run(
    pipeline: &Pipeline,
    store: &Store,
    policy: CheckpointPolicy,
) -> braid_core::RunReport {
    let input = pipeline.check_input(&json!({"request": "hi"})).unwrap();
    pipeline
        .run(
            input,
            RunOptions {
                checkpointer: Some(store.checkpointer()),
                checkpoint: Some(policy),
                ..Default::default()
            },
        )
        .await
}

/// Declares `NAME` as a test on both backends, calling `NAME(Store)`.
#[allow(unused_macros)] // each test binary uses its own part
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = crate::common::sqlite_db();
                    let store = braid_store::Store::connect(&db.url, &Default::default()).await.unwrap();
                    super::$name(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = crate::common::postgres_db().await else { return };
                    let store = braid_store::Store::connect(&db.url, &Default::default()).await.unwrap();
                    super::$name(store).await;
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_both_backends;
