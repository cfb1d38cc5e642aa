//! Synthetic runs, for benchmarks and tests only: [`Store::insert_synthetic_runs`]
//! fills a store with many runs fast (multi-row inserts, a few thousand
//! runs a transaction), bypassing the engine and the checkpoint writer.
//! Nothing in braid calls it on real data.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;

use crate::{Store, StoreError, acquire, writer};

/// What [`Store::insert_synthetic_runs`] inserts: `count` runs of one
/// pipeline, each with `agents` agent records (`a0`, `a1`, …, completed)
/// and one write each (field `f0`, `f1`, … = `{"n": i}`).
#[derive(Debug, Clone)]
pub struct SyntheticRuns {
    /// The runs' pipeline.
    pub pipeline: String,
    /// How many runs.
    pub count: usize,
    /// Agent records (and writes) per run.
    pub agents: usize,
    /// Their status, as stored (`completed`, `running`, …).
    pub status: String,
    /// The owner recorded (`host:pid`), if any.
    pub owner: Option<String>,
    /// When the first run was created (ms since the Unix epoch); each next
    /// run one millisecond later.
    pub created_at_ms: i64,
}

/// Runs inserted in one transaction.
const RUNS_PER_TRANSACTION: usize = 2000;

impl Store {
    /// For benchmarks and tests: inserts the runs `spec` describes and
    /// returns their ids, oldest first. Ids are `synthetic-…`, unique
    /// within the store.
    pub async fn insert_synthetic_runs(
        &self,
        spec: &SyntheticRuns,
    ) -> Result<Vec<String>, StoreError> {
        if self.read_only {
            return Err(self.read_only_error("inserting runs writes"));
        }
        static CALLS: AtomicU64 = AtomicU64::new(0);
        let prefix = format!(
            "synthetic-{}-{}-{}-",
            crate::clock::now_ms(),
            std::process::id(),
            CALLS.fetch_add(1, Ordering::Relaxed)
        );
        let ids: Vec<String> = (0..spec.count).map(|i| format!("{prefix}{i:08}")).collect();
        let mut conn = acquire(&self.pool, "store").await?;
        for (chunk_index, chunk) in ids.chunks(RUNS_PER_TRANSACTION).enumerate() {
            let first = chunk_index * RUNS_PER_TRANSACTION;
            let written = self.insert_chunk(&mut conn, spec, first, chunk).await;
            if let Err(error) = written {
                let _ = conn.close().await;
                return Err(error);
            }
        }
        Ok(ids)
    }

    async fn insert_chunk(
        &self,
        conn: &mut sqlx::AnyConnection,
        spec: &SyntheticRuns,
        first: usize,
        ids: &[String],
    ) -> Result<(), StoreError> {
        // Rows per statement: far below every backend's bound parameters.
        const ROWS: usize = 500;
        let mut tx = sqlx::Connection::begin(conn).await?;
        let created = |i: usize| spec.created_at_ms + (first + i) as i64;
        let indexed: Vec<(usize, &String)> = ids.iter().enumerate().collect();
        for rows in indexed.chunks(ROWS) {
            let sql = writer::upsert_sql(
                self.backend,
                "braid_runs (id, pipeline, pipeline_hash, checkpoint, status, input, \
                 makespan_ms, owner, created_at_ms, updated_at_ms)",
                10,
                rows.len(),
                "(id) DO NOTHING",
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (i, id) in rows {
                query = query
                    .bind((*id).clone())
                    .bind(spec.pipeline.clone())
                    .bind("synthetic")
                    .bind("agent")
                    .bind(spec.status.clone())
                    .bind("{}")
                    .bind(1.0f64)
                    .bind(spec.owner.clone())
                    .bind(created(*i))
                    .bind(created(*i));
            }
            query.persistent(false).execute(&mut *tx).await?;
        }
        let agents: Vec<(&String, usize)> = ids
            .iter()
            .flat_map(|id| (0..spec.agents).map(move |a| (id, a)))
            .collect();
        for rows in agents.chunks(ROWS) {
            let sql = writer::upsert_sql(
                self.backend,
                "braid_agent_runs (run_id, agent, status, attempts, start_ms, duration_ms, \
                 queue_ms)",
                7,
                rows.len(),
                "(run_id, agent) DO NOTHING",
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (id, a) in rows {
                query = query
                    .bind((*id).clone())
                    .bind(format!("a{a}"))
                    .bind("completed")
                    .bind(1i64)
                    .bind(0.0f64)
                    .bind(0.0f64)
                    .bind(0.0f64);
            }
            query.persistent(false).execute(&mut *tx).await?;
            let sql = writer::upsert_sql(
                self.backend,
                "braid_deltas (run_id, agent, field, value)",
                4,
                rows.len(),
                "(run_id, agent, field) DO NOTHING",
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (id, a) in rows {
                query = query
                    .bind((*id).clone())
                    .bind(format!("a{a}"))
                    .bind(format!("f{a}"))
                    .bind(json!({ "n": a }).to_string());
            }
            query.persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
