//! Cached members: the lookup before an agent's (or a group's) task, and
//! the store after it, both inside the task, never in the scheduler loop.
//!
//! [`Scheduler::spawn_member`] wraps the task of a member whose agent has
//! a `cache:` (when the run has a cache) in [`CacheCall::around`]: the key
//! is worked out and looked up first; a hit ends the task at once with
//! the stored writes (checked like any output) and `cached` set, without
//! calling the agent; a miss, a failed lookup (or one that takes longer
//! than [`CACHE_LOOKUP_TIMEOUT`]) or a stored entry that no
//! longer fits the agent's writes runs the task, and its writes, if it
//! completed, are handed to the cache to keep.

use std::future::Future;
use std::sync::Arc;

use serde_json::Value;
use tokio::time::Instant;

use super::attempt::{Finished, Member, check_writes};
use super::scheduler::Scheduler;
use crate::cache::{
    AgentCache, CACHE_LOOKUP_TIMEOUT, CacheEntry, CacheError, CachePolicy, cache_key,
};
use crate::pipeline::FieldWrite;

/// What a cached member's task needs besides its own work.
pub(super) struct CacheCall {
    cache: Arc<dyn AgentCache>,
    policy: CachePolicy,
    member: Member,
    /// The agent's own name (the entry's `agent`), and the member's
    /// (`work[3]`, `per_doc[2].a`) for what is logged.
    agent: Arc<str>,
    member_name: Arc<str>,
    /// Its definition hash as its records carry it.
    definition: Arc<str>,
    /// A `foreach` instance's list and index: the element is part of the key.
    element: Option<(Arc<Value>, usize)>,
    reads: Vec<(Arc<str>, Arc<Value>)>,
    writes: Arc<[FieldWrite]>,
    max_depth: usize,
}

impl Scheduler<'_> {
    /// The cache call for `member`, if its agent is cached and the run has
    /// a cache. `reads` and `name` are the member's input.
    pub(super) fn cache_call(
        &self,
        member: Member,
        name: &Arc<str>,
        reads: &[(Arc<str>, Arc<Value>)],
    ) -> Option<CacheCall> {
        let def = &self.pipeline.agents[member.agent];
        let policy = def.cache?;
        let cache = self.options.cache.clone()?;
        let element = member.item.zip(def.foreach.as_deref()).and_then(|(i, f)| {
            let list = self.state.get(f.field)?;
            Some((list.clone(), i))
        });
        Some(CacheCall {
            cache,
            policy,
            member,
            agent: def.name.clone(),
            member_name: name.clone(),
            definition: self.definition_of(member.agent),
            element,
            reads: reads.to_vec(),
            writes: def.writes.clone(),
            max_depth: self.max_depth,
        })
    }
}

impl CacheCall {
    /// Looks the member up; on a hit returns the stored writes without
    /// polling `task`, otherwise runs it and keeps what it wrote.
    pub(super) async fn around(self, task: impl Future<Output = Finished>) -> Finished {
        let element = self
            .element
            .as_ref()
            .and_then(|(list, i)| list.as_array()?.get(*i));
        let key: Arc<str> = Arc::from(cache_key(&self.definition, element, &self.reads));
        let lookup = tokio::time::timeout(CACHE_LOOKUP_TIMEOUT, self.cache.lookup(key.clone()))
            .await
            .unwrap_or_else(|_| {
                Err(CacheError(format!(
                    "no answer within {}",
                    humantime::format_duration(CACHE_LOOKUP_TIMEOUT)
                )))
            });
        match lookup {
            Ok(Some(stored)) => {
                match check_writes(stored, &self.writes, &self.member_name, self.max_depth) {
                    Ok(writes) => {
                        crate::telemetry::cache_lookup(true);
                        return Finished {
                            member: self.member,
                            attempts: 0,
                            finished: Some(Instant::now()),
                            result: Ok(writes),
                            cached: true,
                            failures: Vec::new(),
                        };
                    }
                    // Possible only if the store was written by hand, or
                    // by another braid with other limits: run the agent.
                    Err(error) => tracing::warn!(
                        agent = %self.member_name,
                        %error,
                        "a cached result does not fit the agent's writes; running it"
                    ),
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(
                agent = %self.member_name,
                %error,
                "the cache lookup failed; running the agent"
            ),
        }
        crate::telemetry::cache_lookup(false);
        let finished = task.await;
        if let Ok(writes) = &finished.result {
            let writes = writes
                .iter()
                .filter_map(|(field, value)| {
                    let write = self.writes.iter().find(|w| w.field == *field)?;
                    Some((write.name.clone(), value.clone()))
                })
                .collect();
            self.cache.store(CacheEntry {
                key,
                agent: self.agent,
                writes,
                ttl: self.policy.ttl,
            });
        }
        finished
    }
}
