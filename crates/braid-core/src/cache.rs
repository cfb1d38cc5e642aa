//! Cached agents, as the engine sees them: the [`CachePolicy`] an agent's
//! `cache:` loads into, the [`AgentCache`] trait a store implements, and
//! the key a cached result is filed under.
//!
//! The engine knows nothing of databases. A run given a cache
//! ([`RunOptions::cache`](crate::RunOptions::cache)) looks up each agent
//! that has a `cache:` (or inherits `defaults.cache`) inside that agent's
//! own task, never in the scheduler loop: a hit hands back the stored
//! writes without calling the agent; a miss calls it and, if it completes,
//! hands its writes to [`AgentCache::store`], which queues and returns.
//!
//! The key ([`cache_key`]) is a SHA-256 of the agent's definition hash (as
//! its records carry it: in a group, joined to the group's, see
//! [`AgentDef::definition_hash`](crate::AgentDef::definition_hash)), the
//! element of a `foreach` instance, and the values of its reads, by name.
//! Objects are hashed with their keys sorted, so the order an agent wrote
//! them in does not matter. The run's id, the attempt, an instance's index
//! (unless it is read) and the code behind a program or a `builtin`
//! function are not part of it.

use std::fmt;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::checkpoint::FieldValue;

/// The shortest `ttl` a `cache:` may have.
pub const MIN_CACHE_TTL: Duration = Duration::from_secs(1);

/// The longest `ttl` a `cache:` may have: 365 days. Entries are pruned
/// once they expire, so this bounds how long a forgotten one takes up room.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The longest a run waits for one lookup; a lookup that takes longer
/// (a database that accepts connections but does not answer) is a miss.
pub const CACHE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// What an agent's `cache:` says, once loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// How long a stored result may be reused, from when it was stored
    /// (between [`MIN_CACHE_TTL`] and [`MAX_CACHE_TTL`]).
    pub ttl: Duration,
}

/// One result to keep: what a completed agent wrote.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    /// Its key ([`cache_key`]).
    pub key: Arc<str>,
    /// The agent's name (without an instance's index or a group's path),
    /// for people reading the store.
    pub agent: Arc<str>,
    /// What it wrote, field by field.
    pub writes: Vec<FieldValue>,
    /// How long it may be reused.
    pub ttl: Duration,
}

/// Why a lookup failed (the database did not answer, a stored entry does
/// not read back). The run treats it as a miss: the agent runs.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CacheError(pub String);

/// Resolves to a lookup's answer: the stored writes (field → value) of an
/// entry that has not expired, or `None`.
pub type CacheLookup =
    Pin<Box<dyn Future<Output = Result<Option<Map<String, Value>>, CacheError>> + Send + 'static>>;

/// Where cached results live: a store shared by every run (and, for a
/// database, by every braid on it).
pub trait AgentCache: Send + Sync + 'static {
    /// The writes stored under `key`, unless there are none or they have
    /// expired. Called from the agent's task; it may wait for a database.
    fn lookup(&self, key: Arc<str>) -> CacheLookup;
    /// Keeps `entry` for its `ttl` (replacing one with the same key).
    /// Must not block: it queues and returns.
    fn store(&self, entry: CacheEntry);
}

impl fmt::Debug for dyn AgentCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<agent cache>")
    }
}

/// The key an agent's result is filed under: SHA-256 (hex) of its
/// `definition` hash, the `element` of a `foreach` instance, and its
/// `reads` in order (each as its name and its value, objects with their
/// keys sorted).
pub fn cache_key(
    definition: &str,
    element: Option<&Value>,
    reads: &[(Arc<str>, Arc<Value>)],
) -> String {
    let mut hasher = HashWriter(Sha256::new());
    hasher.0.update(b"braid cache key v1\n");
    hasher.0.update(definition.as_bytes());
    hasher.0.update(b"\n");
    // One line each: compact JSON holds no raw newline, and names are JSON
    // strings, so the lines cannot run into one another.
    if let Some(element) = element {
        hasher.0.update(b"#element:");
        canonical(&mut hasher, element);
        hasher.0.update(b"\n");
    }
    for (name, value) in reads {
        let _ = serde_json::to_writer(&mut hasher, &**name);
        hasher.0.update(b":");
        canonical(&mut hasher, value);
        hasher.0.update(b"\n");
    }
    hex(&hasher.0.finalize())
}

/// Feeds what is written into the digest.
struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Compact JSON with every object's keys sorted. Recursion is bounded by
/// the run's `max_value_depth` (at most 100): every value a run holds was
/// checked against it.
fn canonical(out: &mut HashWriter, value: &Value) {
    match value {
        Value::Array(items) => {
            out.0.update(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.0.update(b",");
                }
                canonical(out, item);
            }
            out.0.update(b"]");
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.0.update(b"{");
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.0.update(b",");
                }
                let _ = serde_json::to_writer(&mut *out, key);
                out.0.update(b":");
                canonical(out, item);
            }
            out.0.update(b"}");
        }
        scalar => {
            let _ = serde_json::to_writer(out, scalar);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reads(pairs: &[(&str, Value)]) -> Vec<(Arc<str>, Arc<Value>)> {
        pairs
            .iter()
            .map(|(k, v)| (Arc::from(*k), Arc::new(v.clone())))
            .collect()
    }

    #[test]
    fn keys_follow_the_definition_the_element_and_the_reads() {
        let base = cache_key("d1", None, &reads(&[("a", json!({"x": 1, "y": [1, 2]}))]));
        assert_eq!(base.len(), 64);
        // The order an object's keys were written in does not matter.
        assert_eq!(
            base,
            cache_key("d1", None, &reads(&[("a", json!({"y": [1, 2], "x": 1}))]))
        );
        for other in [
            cache_key("d2", None, &reads(&[("a", json!({"x": 1, "y": [1, 2]}))])),
            cache_key("d1", None, &reads(&[("a", json!({"x": 2, "y": [1, 2]}))])),
            cache_key("d1", None, &reads(&[("b", json!({"x": 1, "y": [1, 2]}))])),
            cache_key(
                "d1",
                Some(&json!(1)),
                &reads(&[("a", json!({"x": 1, "y": [1, 2]}))]),
            ),
            cache_key("d1", None, &reads(&[])),
        ] {
            assert_ne!(base, other);
        }
        // Names and values cannot run into one another.
        assert_ne!(
            cache_key("d", None, &reads(&[("a", json!("b:1")), ("c", json!(2))])),
            cache_key("d", None, &reads(&[("a", json!("b")), ("c", json!(2))])),
        );
    }
}
