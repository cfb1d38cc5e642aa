//! The agent cache in the store (`braid_cache`): what
//! [`Store::cache`](crate::Store::cache) hands to runs.
//!
//! Lookups go to one lookup task, which answers all those waiting (at most
//! [`MAX_KEYS_PER_QUERY`] keys) with one query, on a connection taken from
//! the pool and kept while lookups keep coming (for [`KEEP_CONNECTION`]
//! after the last one), so a hit costs neither a pool acquire nor a query
//! of its own when many agents look up at once: 100 agents ready together
//! cost one query. Its keys go in as one JSON array and its answer comes
//! back as one JSON object the database builds (`json_each` and
//! `json_group_object` in SQLite, their PostgreSQL equivalents): one
//! statement and one row whatever the number of keys, since sqlx hands
//! rows over one at a time. An entry that is not JSON (written by hand)
//! fails its batch's query: those lookups are misses. Results are kept through the
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
use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot};

use crate::Backend;
use crate::clock::now_ms;
use crate::writer::{CacheRow, Writer};

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
            Ok(mut found) => {
                // Each entry goes to the last lookup of its key, copies to
                // the others (several instances with the same input).
                let mut left: HashMap<&str, usize> = HashMap::new();
                for w in &batch {
                    *left.entry(&*w.key).or_default() += 1;
                }
                let mut answers = Vec::with_capacity(batch.len());
                for w in &batch {
                    let n = left.get_mut(&*w.key).map_or(0, |n| {
                        *n -= 1;
                        *n
                    });
                    let writes = if n == 0 {
                        found.remove(&*w.key)
                    } else {
                        found.get(&*w.key).cloned()
                    };
                    answers.push(match writes {
                        Some(Value::Object(writes)) => Ok(Some(writes)),
                        Some(_) => Err(CacheError(format!(
                            "the cache entry {} holds no JSON object of writes",
                            w.key
                        ))),
                        None => Ok(None),
                    });
                }
                drop(left);
                for (w, answer) in batch.into_iter().zip(answers) {
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

/// The unexpired entries among `keys`, key → writes. Several keys are
/// looked up with one statement whatever their number (the keys go in as
/// one JSON array) answered by one row (sqlx hands rows over one at a
/// time): a JSON object the database builds.
async fn query(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    keys: &[Arc<str>],
) -> Result<Map<String, Value>, sqlx::Error> {
    if let [key] = keys {
        // Alone (agents looking up one after another): the plainest query.
        let found: Option<String> = sqlx::query_scalar(
            "SELECT writes FROM braid_cache WHERE key = $1 AND expires_at_ms > $2",
        )
        .bind(key.to_string())
        .bind(now_ms())
        .fetch_optional(&mut *conn)
        .await?;
        let mut map = Map::new();
        if let Some(text) = found {
            let writes = serde_json::from_str(&text).map_err(|e| {
                sqlx::Error::Protocol(format!("the cache entry {key} does not read back: {e}"))
            })?;
            map.insert(key.to_string(), writes);
        }
        return Ok(map);
    }
    let sql = match backend {
        Backend::Postgres => {
            "SELECT json_object_agg(key, writes::json)::text FROM braid_cache
             WHERE key IN (SELECT json_array_elements_text($1::json)) AND expires_at_ms > $2"
        }
        Backend::Sqlite => {
            "SELECT json_group_object(key, json(writes)) FROM braid_cache
             WHERE key IN (SELECT value FROM json_each($1)) AND expires_at_ms > $2"
        }
    };
    let keys = serde_json::to_string(keys).unwrap_or_default();
    let found: Option<String> = sqlx::query_scalar(sql)
        .bind(keys)
        .bind(now_ms())
        .fetch_one(&mut *conn)
        .await?;
    // No row matched: `{}` from SQLite, NULL from PostgreSQL.
    let Some(text) = found else {
        return Ok(Map::new());
    };
    match serde_json::from_str(&text) {
        Ok(Value::Object(found)) => Ok(found),
        Ok(_) | Err(_) => Err(sqlx::Error::Protocol(
            "the cache lookup did not read back as a JSON object".into(),
        )),
    }
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
