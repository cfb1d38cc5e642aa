//! A run's input: checked once against the pipeline's `inputs` schemas
//! ([`Pipeline::check_input`]) into a [`ValidInput`] that the run trusts,
//! and the value-depth limit that inputs and agents' outputs obey.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::pipeline::{FieldId, Pipeline};

/// A run's input, checked against the pipeline's `inputs` schemas. Only
/// [`Pipeline::check_input`] makes one, so a run never re-validates.
///
/// It belongs to the pipeline instance that checked it: another pipeline
/// (even one loaded from the same file) refuses it, and its run ends
/// `failed` at once, with an error that says so and nothing run.
#[derive(Debug, Clone)]
pub struct ValidInput {
    pub(crate) values: Vec<(FieldId, Arc<Value>)>,
    /// The [`Pipeline`] instance that checked it.
    pub(crate) pipeline: u64,
    /// That pipeline's name, for the error when another one is given it.
    pub(crate) pipeline_name: Arc<str>,
}

/// Why a run's input was refused: every problem found.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid run input:\n  - {}", .problems.join("\n  - "))]
pub struct InputError {
    /// One line per problem, naming the input field.
    pub problems: Vec<String>,
}

impl Pipeline {
    /// Checks a run's input against the pipeline's `inputs` (JSON Schema per
    /// field). Unknown fields are refused; a missing field takes its
    /// schema's `default` or is refused. `null` counts as `{}`.
    pub fn check_input(&self, input: &Value) -> Result<ValidInput, InputError> {
        let empty = Map::new();
        let object = match input {
            Value::Object(map) => map,
            Value::Null => &empty,
            other => {
                return Err(InputError {
                    problems: vec![format!(
                        "the run input must be a JSON object of input fields, got `{other}`"
                    )],
                });
            }
        };
        let mut problems = Vec::new();
        let declared: Vec<&str> = self.input_names().collect();
        for key in object.keys() {
            if !declared.contains(&key.as_str()) {
                problems.push(if declared.is_empty() {
                    format!("unknown input field `{key}`: this pipeline declares no inputs")
                } else {
                    format!(
                        "unknown input field `{key}`; this pipeline's inputs are: {}",
                        declared.join(", ")
                    )
                });
            }
        }
        let mut values = Vec::new();
        for (id, field) in self.fields.iter().enumerate() {
            let Some(input) = &field.input else { continue };
            let value = match object.get(&*field.name) {
                Some(v) => v,
                None => match &input.default {
                    Some(default) => default,
                    None => {
                        problems.push(format!("missing input field `{}`", field.name));
                        continue;
                    }
                },
            };
            if crate::depth::exceeds(value, self.max_value_depth) {
                problems.push(format!(
                    "input `{}` is nested more than {} levels deep, the limit (max_value_depth)",
                    field.name, self.max_value_depth
                ));
                continue;
            }
            let before = problems.len();
            for error in input.validator.iter_errors(value) {
                let path = error.instance_path().to_string();
                problems.push(format!("input `{}{path}`: {error}", field.name));
            }
            if problems.len() == before {
                values.push((id, Arc::new(value.clone())));
            }
        }
        if problems.is_empty() {
            Ok(ValidInput {
                values,
                pipeline: self.id,
                pipeline_name: self.name.clone(),
            })
        } else {
            Err(InputError { problems })
        }
    }

    /// The deepest nesting of arrays and objects a value in this
    /// pipeline's runs may have: inputs deeper than this are refused by
    /// [`check_input`](Self::check_input), and an agent whose output is
    /// deeper fails. Defaults to [`crate::depth::DEFAULT_MAX_VALUE_DEPTH`]
    /// (64); see [`crate::depth`].
    pub fn max_value_depth(&self) -> usize {
        self.max_value_depth
    }

    /// Sets [`max_value_depth`](Self::max_value_depth), at most
    /// [`crate::depth::MAX_VALUE_DEPTH_CEILING`] (100), so that everything a
    /// run stores can be read back.
    pub fn set_max_value_depth(
        &mut self,
        depth: usize,
    ) -> Result<(), crate::depth::DepthCeilingError> {
        if depth > crate::depth::MAX_VALUE_DEPTH_CEILING {
            return Err(crate::depth::DepthCeilingError { asked: depth });
        }
        self.max_value_depth = depth;
        Ok(())
    }
}
