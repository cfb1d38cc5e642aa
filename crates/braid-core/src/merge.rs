//! Merge rules: how concurrent writes to one field combine.
//!
//! Two agents may write the same field without a dependency path between
//! them only if the field declares a rule in the pipeline's `fields:`
//! section. Contributions are combined in the writers' declaration order, so
//! the result does not depend on which agent finished first.
//!
//! The run's state keeps each writer's contribution and combines them once,
//! when the field is next read (or the run ends), so a field with N writers
//! costs O(total size) to merge, not O(N²). `sum` is exact: integers add up
//! without wrapping, and a total that does not fit a 64-bit integer (or a
//! float sum that is not finite) is an error that fails the run.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::diagnostic::json_kind as kind;

/// How concurrent writes to one field combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeRule {
    /// Lists are concatenated; a non-list value is appended as one item.
    Append,
    /// Objects are merged key by key; a later writer's key wins.
    Merge,
    /// Numbers are added.
    Sum,
    /// The largest number wins.
    Max,
    /// The smallest number wins.
    Min,
}

impl MergeRule {
    /// Every rule, by name, for error messages.
    pub const NAMES: &'static [&'static str] = &["append", "merge", "sum", "max", "min"];

    /// Checks that one writer's value can take part in this rule.
    pub(crate) fn check(self, value: &Value) -> Result<(), String> {
        match self {
            MergeRule::Append => Ok(()),
            MergeRule::Merge if value.is_object() => Ok(()),
            MergeRule::Merge => Err(format!(
                "merge rule `merge` needs an object, got {}",
                kind(value)
            )),
            MergeRule::Sum | MergeRule::Max | MergeRule::Min if value.is_number() => Ok(()),
            _ => Err(format!(
                "merge rule `{self}` needs a number, got {}",
                kind(value)
            )),
        }
    }

    /// Combines the contributions (already [`check`](Self::check)ed), in
    /// order. Fails only for `sum`, when the total does not fit: an error
    /// that says so (the caller names the field and its writers).
    pub(crate) fn combine<'a>(
        self,
        values: impl IntoIterator<Item = &'a Value>,
    ) -> Result<Value, String> {
        let mut values = values.into_iter();
        Ok(match self {
            MergeRule::Append => {
                let values: Vec<&Value> = values.collect();
                let total = values
                    .iter()
                    .map(|v| v.as_array().map_or(1, Vec::len))
                    .sum();
                let mut out = Vec::with_capacity(total);
                for v in values {
                    match v {
                        Value::Array(items) => out.extend(items.iter().cloned()),
                        other => out.push(other.clone()),
                    }
                }
                Value::Array(out)
            }
            MergeRule::Merge => {
                let mut out = Map::new();
                for v in values {
                    if let Value::Object(map) = v {
                        out.extend(map.iter().map(|(k, v)| (k.clone(), v.clone())));
                    }
                }
                Value::Object(out)
            }
            MergeRule::Sum => {
                let nums: Vec<&Value> = values.collect();
                let integers: Option<Vec<i64>> = nums.iter().map(|v| v.as_i64()).collect();
                match integers {
                    Some(integers) => {
                        // Exact (i128 cannot overflow on fewer than 2^64
                        // contributions), so the order of writers does not
                        // decide whether it fails.
                        let total: i128 = integers.into_iter().map(i128::from).sum();
                        Value::from(i64::try_from(total).map_err(|_| {
                            format!("the sum {total} does not fit in a 64-bit integer")
                        })?)
                    }
                    None => {
                        let total: f64 = nums.iter().filter_map(|v| v.as_f64()).sum();
                        if !total.is_finite() {
                            return Err(format!("the sum is not a finite number ({total})"));
                        }
                        Value::from(total)
                    }
                }
            }
            MergeRule::Max | MergeRule::Min => {
                let Some(first) = values.next() else {
                    return Ok(Value::Null);
                };
                let better = |a: &Value, b: &Value| {
                    let (a, b) = (
                        a.as_f64().unwrap_or(f64::NAN),
                        b.as_f64().unwrap_or(f64::NAN),
                    );
                    if self == MergeRule::Max { b > a } else { b < a }
                };
                values
                    .fold(first, |best, v| if better(best, v) { v } else { best })
                    .clone()
            }
        })
    }
}

impl fmt::Display for MergeRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MergeRule::Append => "append",
            MergeRule::Merge => "merge",
            MergeRule::Sum => "sum",
            MergeRule::Max => "max",
            MergeRule::Min => "min",
        })
    }
}

impl FromStr for MergeRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "append" => MergeRule::Append,
            "merge" => MergeRule::Merge,
            "sum" => MergeRule::Sum,
            "max" => MergeRule::Max,
            "min" => MergeRule::Min,
            other => {
                return Err(format!(
                    "unknown merge rule `{other}`; expected one of: {}",
                    MergeRule::NAMES.join(", ")
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules_combine_in_the_given_order() {
        let combine = |rule: MergeRule, values: &[Value]| rule.combine(values).unwrap();
        let a = [json!([1]), json!(2), json!([3, 4])];
        assert_eq!(combine(MergeRule::Append, &a), json!([1, 2, 3, 4]));
        let o = [json!({"x": 1, "y": 1}), json!({"y": 2})];
        assert_eq!(combine(MergeRule::Merge, &o), json!({"x": 1, "y": 2}));
        assert_eq!(combine(MergeRule::Sum, &[json!(1), json!(2)]), json!(3));
        assert_eq!(combine(MergeRule::Sum, &[json!(1), json!(0.5)]), json!(1.5));
        assert_eq!(
            combine(MergeRule::Max, &[json!(1), json!(7), json!(3)]),
            json!(7)
        );
        assert_eq!(combine(MergeRule::Min, &[json!(4), json!(-2)]), json!(-2));
    }

    #[test]
    fn sums_are_exact_and_refuse_to_overflow() {
        let sum = |values: &[Value]| MergeRule::Sum.combine(values);
        // Order does not matter: no intermediate total wraps or fails.
        assert_eq!(
            sum(&[json!(i64::MAX), json!(1), json!(-1)]),
            Ok(json!(i64::MAX))
        );
        assert!(
            sum(&[json!(i64::MAX), json!(1)])
                .unwrap_err()
                .contains("does not fit in a 64-bit integer")
        );
        assert!(sum(&[json!(i64::MIN), json!(-1)]).is_err());
        assert!(
            sum(&[json!(f64::MAX), json!(f64::MAX)])
                .unwrap_err()
                .contains("not a finite number")
        );
    }

    #[test]
    fn type_mismatches_are_reported() {
        assert!(
            MergeRule::Sum
                .check(&json!("x"))
                .unwrap_err()
                .contains("needs a number")
        );
        assert!(
            MergeRule::Merge
                .check(&json!([1]))
                .unwrap_err()
                .contains("needs an object")
        );
    }
}
