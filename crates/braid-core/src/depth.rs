//! How deeply nested a state value may be.
//!
//! Every value in a run's state ends up in the store (as an agent's delta or
//! in the run's input) and is read back when the run is shown or resumed.
//! serde_json reads at most 127 nested arrays and objects, so a value nested
//! deeper than that could be written but never read again. braid therefore
//! refuses over-deep values where they enter a run: an input deeper than the
//! pipeline's [`max_value_depth`](crate::Pipeline::max_value_depth) is
//! refused by [`check_input`](crate::Pipeline::check_input), and an agent
//! whose output is deeper fails with an error naming the agent, the field
//! and the limit. The limit defaults to [`DEFAULT_MAX_VALUE_DEPTH`] and may
//! be raised up to [`MAX_VALUE_DEPTH_CEILING`], which leaves room for the
//! one level the store wraps a run's input in.
//!
//! Depth counts arrays and objects on the deepest path: `1` is 0 deep,
//! `[1]` is 1, `{"a": [1]}` is 2.
//!
//! ```
//! use braid_core::Pipeline;
//!
//! let pipeline = Pipeline::from_yaml_str(
//!     "pipeline: p\ninputs: { doc: {} }\nagents:\n  a: { kind: sleep, reads: [doc], writes: [x] }\n",
//! ).unwrap();
//! let mut deep = serde_json::json!(1);
//! for _ in 0..65 {
//!     deep = serde_json::json!([deep]);
//! }
//! let err = pipeline.check_input(&serde_json::json!({ "doc": deep })).unwrap_err();
//! assert!(err.to_string().contains("max_value_depth"));
//! ```

use serde_json::Value;

/// The default [`max_value_depth`](crate::Pipeline::max_value_depth): 64
/// nested arrays or objects, like the pipeline loader's `max_depth`.
pub const DEFAULT_MAX_VALUE_DEPTH: usize = 64;

/// The highest `max_value_depth` a pipeline may be given: stored values are
/// read back with serde_json's limit of 127 levels, and a run's input is
/// stored wrapped in one more object.
pub const MAX_VALUE_DEPTH_CEILING: usize = 100;

/// A `max_value_depth` above [`MAX_VALUE_DEPTH_CEILING`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "max_value_depth {asked} is above the ceiling of {MAX_VALUE_DEPTH_CEILING} (deeper values could be stored but not read back)"
)]
pub struct DepthCeilingError {
    /// The depth asked for.
    pub asked: usize,
}

/// Whether `value` nests arrays and objects more than `limit` deep. Walks
/// the value without recursion and stops at the first path over the limit,
/// so it is safe on values of any depth.
pub fn exceeds(value: &Value, limit: usize) -> bool {
    // A scalar is 0 deep: no walk, and no stack allocated (most agents
    // write strings and numbers).
    if !matches!(value, Value::Array(_) | Value::Object(_)) {
        return false;
    }
    // (value, its depth counting itself)
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((value, above)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        let depth = above + 1;
        if depth > limit {
            return true;
        }
        stack.extend(children.map(|child| (child, depth)));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(levels: usize) -> Value {
        let mut v = json!(1);
        for _ in 0..levels {
            v = json!([v]);
        }
        v
    }

    #[test]
    fn depth_counts_arrays_and_objects() {
        assert!(!exceeds(&json!(1), 0));
        assert!(exceeds(&json!([1]), 0));
        assert!(!exceeds(&json!({"a": [1]}), 2));
        assert!(exceeds(&json!({"a": [1]}), 1));
        assert!(!exceeds(&nested(64), 64));
        assert!(exceeds(&nested(65), 64));
        assert!(exceeds(&nested(500), 64));
    }

    #[test]
    fn the_ceiling_reads_back_with_serde_json_defaults() {
        // A run's input is stored as `{field: value}`: one level more.
        let wrapped = json!({ "field": nested(MAX_VALUE_DEPTH_CEILING) });
        let text = wrapped.to_string();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, wrapped);
    }
}
