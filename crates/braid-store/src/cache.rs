//! The agent cache in the store (`braid_cache`): what
//! [`Store::cache`](crate::Store::cache) hands to runs.
//!
//! Lookups read through the pool; results are kept through the store's one
//! writer, which commits them with whatever else is queued (group commit),
//! never blocking the run. An entry whose `expires_at_ms` has passed is
//! never returned (pruning deletes it later), and a newer result for the
//! same key replaces the older one. Every braid on the store shares its
//! entries.

use std::sync::Arc;

use braid_core::cache::{AgentCache, CacheEntry, CacheError, CacheLookup};
use serde_json::Value;
use sqlx::AnyPool;

use crate::writer::{CacheRow, Writer, now_ms};

/// The store's [`AgentCache`].
pub(crate) struct StoreCache {
    pub(crate) pool: AnyPool,
    pub(crate) writer: Arc<Writer>,
    /// A store opened with `?mode=ro` looks up but keeps nothing.
    pub(crate) read_only: bool,
}

impl AgentCache for StoreCache {
    fn lookup(&self, key: Arc<str>) -> CacheLookup {
        let pool = self.pool.clone();
        Box::pin(async move {
            let stored: Option<String> = sqlx::query_scalar(
                "SELECT writes FROM braid_cache WHERE key = $1 AND expires_at_ms > $2",
            )
            .bind(key.to_string())
            .bind(now_ms())
            .fetch_optional(&pool)
            .await
            .map_err(|e| CacheError(format!("reading the cache: {e}")))?;
            stored.map(|text| parse_writes(&key, &text)).transpose()
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
pub(crate) fn parse_writes(
    key: &str,
    text: &str,
) -> Result<serde_json::Map<String, Value>, CacheError> {
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
