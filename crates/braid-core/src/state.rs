//! A run's state: one shared value per field, and per-writer contributions
//! for fields that merge concurrent writes.
//!
//! Values are `Arc`-shared: handing an agent its reads clones pointers, not
//! JSON, and applying an agent's writes touches only the fields it wrote.
//!
//! A merge field keeps each writer's contribution and is combined lazily:
//! applying a write only stores it and marks the field stale; the field is
//! combined (in writer declaration order) when it is next read
//! ([`RunState::settle`]) or the run ends. Every reader of a field waits for
//! all its writers, so a field is combined about once per run: merging N
//! writers costs O(total size), not O(N²).

use std::sync::Arc;

use serde_json::Value;

use crate::graph::AgentId;
use crate::input::ValidInput;
use crate::pipeline::{FieldId, Pipeline};

pub(crate) struct RunState {
    values: Vec<Option<Arc<Value>>>,
    /// For merge fields: each writer's contribution, in writer order.
    contributions: Vec<Vec<Option<Arc<Value>>>>,
    /// Merge fields with a contribution not yet combined into `values`.
    stale: Vec<bool>,
}

impl RunState {
    pub(crate) fn new(pipeline: &Pipeline, input: ValidInput) -> Self {
        let mut values = vec![None; pipeline.fields.len()];
        for (field, value) in input.values {
            values[field] = Some(value);
        }
        let contributions = pipeline
            .fields
            .iter()
            .map(|f| match f.merge {
                Some(_) => vec![None; f.writers.len()],
                None => Vec::new(),
            })
            .collect();
        Self {
            stale: vec![false; values.len()],
            values,
            contributions,
        }
    }

    /// Every field's value, by field id (merge fields must be settled),
    /// taken out of the state.
    pub(crate) fn take_values(&mut self) -> Vec<Option<Arc<Value>>> {
        std::mem::take(&mut self.values)
    }

    /// The field's value. A merge field must be [`settle`](Self::settle)d
    /// first (until then it holds its last combined value, if any).
    pub(crate) fn get(&self, field: FieldId) -> Option<&Arc<Value>> {
        self.values[field].as_ref()
    }

    /// Combines a merge field's contributions if any arrived since it was
    /// last combined. The error (a `sum` that does not fit) names the field
    /// and its writers; the field then has no value.
    pub(crate) fn settle(&mut self, pipeline: &Pipeline, field: FieldId) -> Result<(), String> {
        if !std::mem::take(&mut self.stale[field]) {
            return Ok(());
        }
        let def = &pipeline.fields[field];
        let Some(rule) = def.merge else {
            return Ok(());
        };
        let contributions = &self.contributions[field];
        match rule.combine(contributions.iter().flatten().map(|v| &**v)) {
            Ok(combined) => {
                self.values[field] = Some(Arc::new(combined));
                Ok(())
            }
            Err(why) => {
                self.values[field] = None;
                const SHOWN: usize = 10;
                let writers: Vec<String> = def
                    .writers
                    .iter()
                    .zip(contributions)
                    .filter_map(|(&w, v)| {
                        v.as_ref()
                            .map(|v| format!("`{}` wrote {v}", pipeline.agents[w].name))
                    })
                    .collect();
                let more = writers.len().saturating_sub(SHOWN);
                Err(format!(
                    "field `{}` (merge: {rule}): {why}; its writers: {}{}",
                    def.name,
                    writers[..writers.len().min(SHOWN)].join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                ))
            }
        }
    }

    /// [`settle`](Self::settle)s every merge field; the first error, if any.
    pub(crate) fn settle_all(&mut self, pipeline: &Pipeline) -> Result<(), String> {
        let mut first = Ok(());
        for field in 0..self.values.len() {
            if let Err(e) = self.settle(pipeline, field)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }

    /// Merges one agent's writes (already checked against its declaration).
    pub(crate) fn apply(
        &mut self,
        pipeline: &Pipeline,
        writer: AgentId,
        writes: Vec<(FieldId, Arc<Value>)>,
    ) {
        for (field, value) in writes {
            let def = &pipeline.fields[field];
            match def.merge {
                None => self.values[field] = Some(value),
                Some(_) => {
                    // Writers are in declaration (= id) order.
                    let writer_index = def
                        .writers
                        .binary_search(&writer)
                        .expect("only declared writers write a field");
                    self.contributions[field][writer_index] = Some(value);
                    self.stale[field] = true;
                }
            }
        }
    }

    /// Every field that has a value so far, in the pipeline's field order
    /// (merge fields as last combined), shared with the state.
    pub(crate) fn map(&self, pipeline: &Pipeline) -> crate::report::ByName<Arc<Value>> {
        self.values
            .iter()
            .enumerate()
            .filter_map(|(f, v)| Some((pipeline.fields[f].name.clone(), v.clone()?)))
            .collect()
    }

    /// Every field that has a value, in the pipeline's field order (merge
    /// fields settled; one whose merge failed is left out).
    pub(crate) fn take_map(&mut self, pipeline: &Pipeline) -> crate::report::ByName<Arc<Value>> {
        let _ = self.settle_all(pipeline);
        // Sized once: collecting a filtered iterator grows the map (and
        // rehashes it) a few times a run.
        let values = std::mem::take(&mut self.values);
        let mut map = crate::report::ByName::with_capacity_and_hasher(
            values.iter().filter(|v| v.is_some()).count(),
            Default::default(),
        );
        for (f, value) in values.into_iter().enumerate() {
            if let Some(value) = value {
                map.insert(pipeline.fields[f].name.clone(), value);
            }
        }
        map
    }
}
