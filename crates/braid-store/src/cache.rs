//! The agent cache in the store (`braid_cache`): what
//! [`Store::cache`](crate::Store::cache) hands to runs.
//!
//! Lookups go to one lookup task, which answers all those waiting with one
//! query (`WHERE key IN (…)`, at most [`MAX_KEYS_PER_QUERY`] keys), on a
//! connection taken from the pool and kept while lookups keep coming (for
//! [`KEEP_CONNECTION`] after the last one), so a hit costs neither a pool
//! acquire nor a query of its own when many agents look up at once: 100
//! agents ready together cost one query. Results are kept through the
//! store's one writer, which commits them with whatever else is queued
//! (group commit), never blocking the run. An entry whose `expires_at_ms`
//! has passed is never returned (pruning deletes it later), and a newer
//! result for the same key replaces the older one. Every braid on the
//! store shares its entries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use braid_core::cache::{AgentCache, CacheEntry, CacheError, CacheLookup};
use serde_json::{Map, Value};
use sqlx::{AnyPool, AssertSqlSafe, Row};
use tokio::sync::{mpsc, oneshot};

use crate::Backend;
use crate::writer::{CacheRow, Writer, now_ms};

/// Most keys one lookup query asks for (SQLite binds at most 32,766
/// parameters, PostgreSQL 65,535).
pub(crate) const MAX_KEYS_PER_QUERY: usize = 512;

/// How long the lookup task keeps its connection after the last lookup,
/// so that a run's agents looking up one after another do not each take
/// (and check) a connection from the pool.
pub(crate) const KEEP_CONNECTION: Duration = Duration::from_millis(200);

/// What a lookup is answered with.
type Answer = Result<Option<Map<String, Value>>, CacheError>;

/// One lookup waiting for the lookup task.
struct Waiting {
    key: Arc<str>,
    answer: oneshot::Sender<Answer>,
}

/// The store's [`AgentCache`].
pub(crate) struct StoreCache {
    lookups: mpsc::UnboundedSender<Waiting>,
    writer: Arc<Writer>,
    /// A store opened with `?mode=ro` looks up but keeps nothing.
    read_only: bool,
}

impl StoreCache {
    /// The cache over `pool`, keeping results through `writer`; starts the
    /// lookup task (call inside a Tokio runtime).
    pub(crate) fn start(
        pool: AnyPool,
        backend: Backend,
        writer: Arc<Writer>,
        read_only: bool,
    ) -> Self {
        let (lookups, waiting) = mpsc::unbounded_channel();
        tokio::spawn(serve_lookups(pool, backend, waiting));
        Self {
            lookups,
            writer,
            read_only,
        }
    }
}

impl AgentCache for StoreCache {
    fn lookup(&self, key: Arc<str>) -> CacheLookup {
        let (answer, answered) = oneshot::channel();
        let sent = self.lookups.send(Waiting { key, answer });
        Box::pin(async move {
            if sent.is_err() {
                return Err(CacheError("the store's lookup task has stopped".into()));
            }
            answered
                .await
                .unwrap_or_else(|_| Err(CacheError("the store's lookup task has stopped".into())))
        })
    }

    fn store(&self, entry: CacheEntry) {
        if self.read_only {
            return;
        }
        let created_at_ms = now_ms();
        let ttl_ms = i64::try_from(entry.ttl.as_millis()).unwrap_or(i64::MAX);
        self.writer.cache(CacheRow {
            writes: writes_json(&entry),
            key: entry.key,
            agent: entry.agent,
            created_at_ms,
            expires_at_ms: created_at_ms.saturating_add(ttl_ms),
        });
    }
}

/// The lookup task: takes every lookup waiting (up to
/// [`MAX_KEYS_PER_QUERY`] distinct keys), answers them with one query, and
/// goes on until the cache is dropped.
async fn serve_lookups(
    pool: AnyPool,
    backend: Backend,
    mut waiting: mpsc::UnboundedReceiver<Waiting>,
) {
    let mut conn: Option<sqlx::pool::PoolConnection<sqlx::Any>> = None;
    loop {
        let first = match &conn {
            // Keep the connection while lookups keep coming.
            Some(_) => match tokio::time::timeout(KEEP_CONNECTION, waiting.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    conn = None;
                    continue;
                }
            },
            None => waiting.recv().await,
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        let mut keys: Vec<Arc<str>> = vec![batch[0].key.clone()];
        while keys.len() < MAX_KEYS_PER_QUERY {
            let Ok(next) = waiting.try_recv() else { break };
            if !keys.contains(&next.key) {
                keys.push(next.key.clone());
            }
            batch.push(next);
        }
        let found = match conn.take() {
            Some(c) => Ok(c),
            None => crate::acquire(&pool, "store").await,
        };
        let found = match found {
            Ok(mut c) => {
                let found = query(&mut c, backend, &keys).await;
                // A connection that saw an error is not used again.
                if found.is_ok() {
                    conn = Some(c);
                } else {
                    let _ = c.close().await;
                }
                found
            }
            Err(e) => Err(e),
        };
        match found {
            Ok(found) => {
                for w in batch {
                    let answer = match found.get(&*w.key) {
                        Some(text) => parse_writes(&w.key, text).map(Some),
                        None => Ok(None),
                    };
                    let _ = w.answer.send(answer);
                }
            }
            Err(e) => {
                let error = CacheError(format!("reading the cache: {e}"));
                for w in batch {
                    let _ = w.answer.send(Err(error.clone()));
                }
            }
        }
    }
}

/// The unexpired entries among `keys`: key → writes (JSON text). The key
/// list is padded to a power of two (repeating the last key), so a
/// connection prepares few distinct statements whatever the batch sizes.
async fn query(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    keys: &[Arc<str>],
) -> Result<HashMap<String, String>, sqlx::Error> {
    use std::fmt::Write;
    let slots = keys.len().next_power_of_two().min(MAX_KEYS_PER_QUERY);
    let mut sql = String::from("SELECT key, writes FROM braid_cache WHERE key IN (");
    for i in 0..slots {
        let comma = if i == 0 { "" } else { ", " };
        let _ = match backend {
            Backend::Postgres => write!(sql, "{comma}${}", i + 1),
            Backend::Sqlite => write!(sql, "{comma}?"),
        };
    }
    let _ = match backend {
        Backend::Postgres => write!(sql, ") AND expires_at_ms > ${}", slots + 1),
        Backend::Sqlite => write!(sql, ") AND expires_at_ms > ?"),
    };
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for i in 0..slots {
        let key = keys.get(i).or(keys.last()).map_or("", |k| &**k);
        q = q.bind(key.to_owned());
    }
    let rows = q.bind(now_ms()).fetch_all(&mut *conn).await?;
    rows.iter()
        .map(|row| Ok((row.try_get("key")?, row.try_get("writes")?)))
        .collect()
}

/// An entry's writes as the JSON object stored in `writes` (written out
/// directly: the values are shared with the run, not copied).
fn writes_json(entry: &CacheEntry) -> String {
    let mut out = Vec::with_capacity(64);
    out.push(b'{');
    for (i, (field, value)) in entry.writes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut out, &**field);
        out.push(b':');
        let _ = serde_json::to_writer(&mut out, &**value);
    }
    out.push(b'}');
    // serde_json writes UTF-8 only.
    String::from_utf8(out).unwrap_or_default()
}

/// A stored `writes` column read back: a JSON object, field to value.
fn parse_writes(key: &str, text: &str) -> Result<Map<String, Value>, CacheError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(writes)) => Ok(writes),
        Ok(_) => Err(CacheError(format!(
            "the cache entry {key} holds no JSON object of writes"
        ))),
        Err(e) => Err(CacheError(format!(
            "the cache entry {key} does not read back: {e}"
        ))),
    }
}
