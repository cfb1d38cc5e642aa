//! `when:` conditions, written in CEL (the Common Expression Language).
//!
//! A condition is compiled once when the pipeline loads. The state fields it
//! names become dependencies of its agent (the agent waits for their
//! writers) without being passed to the agent as reads.

use std::fmt;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, MapExpr, StructExpr};
use serde_json::Value;

/// A compiled `when:` expression.
pub struct Condition {
    source: String,
    program: cel::Program,
    fields: Vec<String>,
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition")
            .field("source", &self.source)
            .field("fields", &self.fields)
            .finish()
    }
}

impl Condition {
    /// Compiles `source`. The error is the parser's message, with its
    /// position inside the expression.
    pub(crate) fn compile(source: &str) -> Result<Self, String> {
        let program = cel::Program::compile(source).map_err(|err| {
            let details: Vec<String> = err
                .errors
                .iter()
                .map(|e| format!("column {}: {}", e.pos.1 + 1, e.msg))
                .collect();
            if details.is_empty() {
                err.to_string()
            } else {
                details.join("; ")
            }
        })?;
        let mut fields = std::collections::BTreeSet::new();
        free_variables(program.expression(), &mut Vec::new(), &mut fields);
        let fields: Vec<String> = fields.into_iter().collect();
        Ok(Self {
            source: source.to_owned(),
            program,
            fields,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The state fields the expression refers to.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// Evaluates the condition with the given field values.
    pub(crate) fn evaluate<'a>(
        &self,
        values: impl IntoIterator<Item = (&'a str, &'a Value)>,
    ) -> Result<bool, String> {
        let mut context = cel::Context::default();
        for (name, value) in values {
            context
                .add_variable(name, CelJson(value))
                .map_err(|e| format!("cannot pass field `{name}` to the condition: {e}"))?;
        }
        match self.program.execute(&context) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!(
                "`when: {}` must evaluate to true or false, got {other:?}",
                self.source
            )),
            Err(e) => Err(format!("`when: {}` failed: {e}", self.source)),
        }
    }
}

/// Collects the identifiers `expr` reads from its environment: every name
/// except those bound by a comprehension macro (`all`, `exists`,
/// `exists_one`, `map`, `filter`) inside that macro, and CEL's internal
/// `@`-names.
fn free_variables(
    expr: &IdedExpr,
    bound: &mut Vec<String>,
    out: &mut std::collections::BTreeSet<String>,
) {
    match &expr.expr {
        Expr::Unspecified | Expr::Literal(_) => {}
        Expr::Ident(name) => {
            if !name.starts_with('@') && !bound.contains(name) {
                out.insert(name.clone());
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                free_variables(target, bound, out);
            }
            for arg in &call.args {
                free_variables(arg, bound, out);
            }
        }
        Expr::Comprehension(c) => {
            free_variables(&c.iter_range, bound, out);
            free_variables(&c.accu_init, bound, out);
            let depth = bound.len();
            bound.push(c.iter_var.clone());
            bound.extend(c.iter_var2.iter().cloned());
            bound.push(c.accu_var.clone());
            for part in [&c.loop_cond, &c.loop_step, &c.result] {
                free_variables(part, bound, out);
            }
            bound.truncate(depth);
        }
        Expr::List(list) => {
            for element in &list.elements {
                free_variables(element, bound, out);
            }
        }
        Expr::Select(select) => free_variables(&select.operand, bound, out),
        Expr::Map(MapExpr { entries }) | Expr::Struct(StructExpr { entries, .. }) => {
            for entry in entries {
                match &entry.expr {
                    EntryExpr::StructField(field) => free_variables(&field.value, bound, out),
                    EntryExpr::MapEntry(pair) => {
                        free_variables(&pair.key, bound, out);
                        free_variables(&pair.value, bound, out);
                    }
                }
            }
        }
    }
}

/// Passes JSON to CEL with integers as CEL `int` (signed) whenever they
/// fit, as CEL literals are: `count + 1` must work when `count` is `3`.
/// (serde_json reports non-negative integers as unsigned, and CEL does not
/// mix `uint` and `int` in arithmetic.)
struct CelJson<'a>(&'a Value);

impl serde::Serialize for CelJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => serializer.serialize_i64(i),
                (None, Some(u), _) => serializer.serialize_u64(u),
                (_, _, f) => serializer.serialize_f64(f.unwrap_or(f64::NAN)),
            },
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&CelJson(item))?;
                }
                seq.end()
            }
            Value::Object(map) => {
                let mut out = serializer.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    out.serialize_entry(k, &CelJson(v))?;
                }
                out.end()
            }
            other => other.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_its_fields_and_evaluates_over_json() {
        let c = Condition::compile(r#"triage.route != "skip" && size(items) > 1"#).unwrap();
        assert_eq!(c.fields(), ["items", "triage"]);
        let triage = json!({"route": "cost"});
        let items = json!([1, 2]);
        assert_eq!(
            c.evaluate([("triage", &triage), ("items", &items)]),
            Ok(true)
        );
        let skip = json!({"route": "skip"});
        assert_eq!(
            c.evaluate([("triage", &skip), ("items", &items)]),
            Ok(false)
        );
    }

    #[test]
    fn json_integers_mix_with_integer_literals() {
        let c = Condition::compile("count + 1 == 4 && ratio > 0.5 && tags[0] == 'a'").unwrap();
        let (count, ratio, tags) = (json!(3), json!(0.75), json!(["a"]));
        assert_eq!(
            c.evaluate([("count", &count), ("ratio", &ratio), ("tags", &tags)]),
            Ok(true)
        );
    }

    #[test]
    fn names_bound_by_macros_are_not_fields() {
        let c =
            Condition::compile("findings.exists(f, f.high) && findings.all(x, x.score > limit)")
                .unwrap();
        assert_eq!(c.fields(), ["findings", "limit"]);
        let (findings, limit) = (json!([{"high": true, "score": 5}]), json!(1));
        assert_eq!(
            c.evaluate([("findings", &findings), ("limit", &limit)]),
            Ok(true)
        );
    }

    #[test]
    fn a_non_boolean_result_is_an_error() {
        let c = Condition::compile("count + 1").unwrap();
        let err = c.evaluate([("count", &json!(1))]).unwrap_err();
        assert!(err.contains("must evaluate to true or false"), "{err}");
    }

    #[test]
    fn malformed_expressions_are_rejected_with_a_position() {
        let err = Condition::compile("a == ").unwrap_err();
        assert!(err.contains("column"), "{err}");
    }
}
