//! A run's state: one shared value per field, and per-writer contributions
//! for fields that merge concurrent writes.
//!
//! Values are `Arc`-shared: handing an agent its reads clones pointers, not
//! JSON, and applying an agent's writes touches only the fields it wrote.

use std::sync::Arc;

use indexmap::IndexMap;
use serde_json::Value;

use crate::graph::AgentId;
use crate::pipeline::{FieldId, Pipeline};
use crate::run::ValidInput;

pub(crate) struct RunState {
    values: Vec<Option<Arc<Value>>>,
    /// For merge fields: each writer's contribution, in writer order.
    contributions: Vec<Vec<Option<Arc<Value>>>>,
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
            values,
            contributions,
        }
    }

    pub(crate) fn get(&self, field: FieldId) -> Option<&Arc<Value>> {
        self.values[field].as_ref()
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
                Some(rule) => {
                    let slot = def
                        .writers
                        .iter()
                        .position(|&w| w == writer)
                        .expect("only declared writers write a field");
                    self.contributions[field][slot] = Some(value);
                    let combined =
                        rule.combine(self.contributions[field].iter().flatten().map(|v| &**v));
                    self.values[field] = Some(Arc::new(combined));
                }
            }
        }
    }

    /// Every field that has a value, in the pipeline's field order.
    pub(crate) fn into_map(self, pipeline: &Pipeline) -> IndexMap<String, Arc<Value>> {
        self.values
            .into_iter()
            .enumerate()
            .filter_map(|(f, v)| v.map(|v| (pipeline.field_name(f).to_owned(), v)))
            .collect()
    }
}
