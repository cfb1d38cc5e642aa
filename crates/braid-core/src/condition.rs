//! `when:` conditions, written in CEL (the Common Expression Language).
//!
//! A condition is compiled once when the pipeline loads. The state fields it
//! names become dependencies of its agent (the agent waits for their
//! writers) without being passed to the agent as reads.
//!
//! CEL's parser, its evaluator and the syntax tree's `Drop` all recurse once
//! per level of the expression, so before CEL sees a condition it is
//! measured by a lexical pass ([`LoadLimits::max_condition_bytes`],
//! [`LoadLimits::max_condition_depth`]), and parsing runs on a thread with a
//! stack sized for the deepest condition allowed.

use std::fmt;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, MapExpr, StructExpr};
use serde_json::Value;

use crate::limits::LoadLimits;

/// The stack of the thread that parses conditions: CEL's generated parser
/// takes up to ~200 KB per nesting level in unoptimised builds, and the
/// depth is bounded by [`LoadLimits::max_condition_depth`] (stack memory is
/// only committed as it is used).
const PARSER_STACK: usize = 64 * 1024 * 1024;

/// Conditions no deeper than this (by [`check_shape`]'s estimate) are parsed
/// on the caller's thread, which saves a thread for the common case: a
/// few levels fit any thread's stack (an unoptimised build needs ~1.5 MiB
/// for 8 levels of parentheses, an optimised one ~20 KiB).
const INLINE_DEPTH: usize = 8;

/// Why a condition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    /// Longer than [`LoadLimits::max_condition_bytes`].
    #[error("the condition is {len} bytes long; the limit is {limit} bytes (max_condition_bytes)")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Nested deeper than [`LoadLimits::max_condition_depth`].
    #[error(
        "the condition nests deeper than {limit} levels at column {column} \
         (counting brackets, operators and member accesses); the limit is {limit} (max_condition_depth)"
    )]
    TooDeep {
        /// 1-based column (in characters) where the limit was passed.
        column: usize,
        /// The limit.
        limit: usize,
    },
    /// A comprehension (`all`, `exists`, `exists_one`, `map`, `filter`)
    /// inside another: its cost is the product of the lists' sizes, which
    /// an agent's output decides.
    #[error(
        "the condition nests the comprehension `{name}` inside another at column {column}; \
         nested comprehensions cost the product of their lists' sizes and are refused"
    )]
    NestedComprehension {
        /// The inner macro's name.
        name: String,
        /// 1-based column (in characters) of the inner macro.
        column: usize,
    },
    /// Not valid CEL: the parser's message, with columns.
    #[error("{0}")]
    Malformed(String),
    /// Not compiled: the load gave up first (compile budget) or the parser
    /// thread could not start.
    #[error("{0}")]
    NotCompiled(String),
}

/// A compiled `when:` expression.
pub struct Condition {
    source: String,
    program: cel::Program,
    fields: Vec<String>,
    /// Whether it uses `has(field)` on a bare field.
    tests_presence: bool,
    /// Fields it only tests the presence of (`has(field)` and nothing
    /// else): they need not have a value for it to be evaluated.
    presence_only: Vec<String>,
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
    /// Checks `source` against `limits` (length, nesting depth) and compiles
    /// it. The error says what is wrong and where inside the expression
    /// (column), naming the limit when one was exceeded.
    ///
    /// ```
    /// use braid_core::{Condition, LoadLimits};
    ///
    /// let limits = LoadLimits::default();
    /// let c = Condition::parse("triage.route != 'skip'", &limits).unwrap();
    /// assert_eq!(c.fields(), ["triage"]);
    /// let deep = format!("{}x{} > 0", "(".repeat(100), ")".repeat(100));
    /// let err = Condition::parse(&deep, &limits).unwrap_err();
    /// assert!(err.to_string().contains("max_condition_depth"), "{err}");
    /// ```
    pub fn parse(source: &str, limits: &LoadLimits) -> Result<Self, ConditionError> {
        Self::parse_many(&[source], limits, &|| false)
            .pop()
            .expect("one result per source")
    }

    /// [`Condition::parse`] for many conditions, on one parser thread;
    /// once `give_up` says so, the rest are not compiled.
    pub(crate) fn parse_many(
        sources: &[&str],
        limits: &LoadLimits,
        give_up: &(dyn Fn() -> bool + Sync),
    ) -> Vec<Result<Self, ConditionError>> {
        let mut deepest = 0;
        let checked: Vec<Result<&str, ConditionError>> = sources
            .iter()
            .map(|s| {
                let depth = check_shape(s, limits)?;
                deepest = deepest.max(depth);
                Ok(*s)
            })
            .collect();
        let compile_all = || {
            checked
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let source = r.clone()?;
                    if i % 64 == 0 && give_up() {
                        return Err(ConditionError::NotCompiled("out of time".into()));
                    }
                    Self::compile(source).map_err(ConditionError::Malformed)
                })
                .collect::<Vec<_>>()
        };
        if deepest <= INLINE_DEPTH {
            return compile_all();
        }
        std::thread::scope(|scope| {
            let parser = std::thread::Builder::new()
                .name("braid-condition-parser".into())
                .stack_size(PARSER_STACK)
                .spawn_scoped(scope, compile_all);
            match parser {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(e) => sources
                    .iter()
                    .map(|_| {
                        Err(ConditionError::NotCompiled(format!(
                            "cannot start the condition parser thread: {e}"
                        )))
                    })
                    .collect(),
            }
        })
    }

    /// Compiles `source` on the current thread, without limits. The error
    /// is the parser's message, with its position inside the expression.
    fn compile(source: &str) -> Result<Self, String> {
        let (rewritten, present) = rewrite_has(source);
        let program = cel::Program::compile(&rewritten).map_err(|err| {
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
        fields.remove(PRESENT);
        let mut presence_only: Vec<String> = present
            .iter()
            .filter(|name| !fields.contains(*name))
            .cloned()
            .collect();
        presence_only.sort();
        presence_only.dedup();
        fields.extend(present.iter().cloned());
        let fields: Vec<String> = fields.into_iter().collect();
        Ok(Self {
            source: source.to_owned(),
            program,
            fields,
            tests_presence: !present.is_empty(),
            presence_only,
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

    /// Fields the expression only asks the presence of (`has(field)`):
    /// it can be evaluated without them.
    pub fn presence_only(&self) -> &[String] {
        &self.presence_only
    }

    /// Evaluates the condition with the given field values.
    pub(crate) fn evaluate<'a>(
        &self,
        values: impl IntoIterator<Item = (&'a str, &'a Value)>,
    ) -> Result<bool, String> {
        let mut context = cel::Context::with_env(stdlib());
        let mut present = serde_json::Map::new();
        for (name, value) in values {
            if self.tests_presence {
                present.insert(name.to_owned(), Value::Bool(true));
            }
            context
                .add_variable(name, CelJson(value))
                .map_err(|e| format!("cannot pass field `{name}` to the condition: {e}"))?;
        }
        if self.tests_presence {
            let present = Value::Object(present);
            context
                .add_variable(PRESENT, CelJson(&present))
                .map_err(|e| format!("cannot pass the fields present to the condition: {e}"))?;
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

/// CEL's standard functions and macros, built once for the process: a
/// `Context::default()` would build them again for every evaluation (a
/// condition is evaluated each time its agent is ready, a loop's `until`
/// after every round).
fn stdlib() -> std::sync::Arc<cel::Env> {
    static STDLIB: std::sync::LazyLock<std::sync::Arc<cel::Env>> =
        std::sync::LazyLock::new(|| std::sync::Arc::new(cel::Env::stdlib()));
    STDLIB.clone()
}

/// The variable `has(field)` is rewritten to look in: a map with a key for
/// every field that has a value. (CEL's `has` takes `a.b` only, but whether
/// a field was written at all, `has(answer)`, is what a loop over optional
/// writes asks.)
const PRESENT: &str = "__braid_present";

/// Rewrites each `has(NAME)` of a bare name (outside string literals) to
/// `has(__braid_present.NAME)`, and returns the names.
fn rewrite_has(source: &str) -> (std::borrow::Cow<'_, str>, Vec<String>) {
    let bytes = source.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = String::new();
    let mut names = Vec::new();
    let (mut i, mut copied) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'"' | b'\'' => {
                let raw = i > 0 && matches!(bytes[i - 1], b'r' | b'R');
                i = skip_string(bytes, i, raw).unwrap_or(i + 1);
                continue;
            }
            b'h' if source[i..].starts_with("has(") && (i == 0 || !ident(bytes[i - 1])) => {
                let open = i + 4;
                let inner_start = open + source[open..].len() - source[open..].trim_start().len();
                let mut end = inner_start;
                while end < bytes.len() && ident(bytes[end]) {
                    end += 1;
                }
                let after = end + source[end..].len() - source[end..].trim_start().len();
                let name = &source[inner_start..end];
                let starts_well = name.bytes().next().is_some_and(|b| !b.is_ascii_digit());
                if starts_well && bytes.get(after) == Some(&b')') {
                    out.push_str(&source[copied..inner_start]);
                    out.push_str(PRESENT);
                    out.push('.');
                    out.push_str(name);
                    copied = end;
                    names.push(name.to_owned());
                }
                i = open;
            }
            _ => i += 1,
        }
    }
    if names.is_empty() {
        return (std::borrow::Cow::Borrowed(source), names);
    }
    out.push_str(&source[copied..]);
    (std::borrow::Cow::Owned(out), names)
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

/// Measures `source` without parsing it: its length, and an upper bound
/// on the depth of its syntax tree (each open bracket or parenthesis, plus
/// every operator, member access and call since the start of the innermost
/// list element or argument, in every enclosing group). String literals
/// are skipped.
fn check_shape(source: &str, limits: &LoadLimits) -> Result<usize, ConditionError> {
    if source.len() > limits.max_condition_bytes {
        return Err(ConditionError::TooLong {
            len: source.len(),
            limit: limits.max_condition_bytes,
        });
    }
    let max_depth = limits.max_condition_depth;
    let bytes = source.as_bytes();
    let column = |i: usize| source[..i].chars().count() + 1;
    // Operators counted in each open group, outermost first.
    let mut groups: Vec<usize> = vec![0];
    // Per open group (parallel to `groups`): whether it holds a
    // comprehension's arguments; and whether the next `(` opens one.
    let mut comprehension: Vec<bool> = vec![false];
    let mut opens_comprehension = false;
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let mut op = false;
        match c {
            b'"' | b'\'' => {
                if let Some(end) = skip_string(bytes, i, false) {
                    i = end;
                    continue;
                }
            }
            b'(' | b'[' | b'{' => {
                groups.push(0);
                comprehension.push(c == b'(' && opens_comprehension);
                depth += 1;
            }
            b')' | b']' | b'}' if groups.len() > 1 => {
                depth -= 1 + groups.pop().unwrap_or(0);
                comprehension.pop();
            }
            b',' => {
                let last = groups.last_mut().expect("the outermost group stays");
                depth -= *last;
                *last = 0;
            }
            b'.' => {
                let in_number = i > 0
                    && bytes[i - 1].is_ascii_digit()
                    && bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
                op = !in_number;
            }
            b'&' | b'|' | b'=' | b'!' | b'<' | b'>' => {
                op = true;
                if matches!(bytes.get(i + 1), Some(b'&' | b'|' | b'=')) {
                    i += 1;
                }
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'?' => op = true,
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                if matches!(bytes.get(i), Some(b'"' | b'\''))
                    && let Some(end) = skip_string(bytes, i, source[start..i].contains(['r', 'R']))
                {
                    // A string with a prefix: r"…", b'…', br"…".
                    i = end;
                    continue;
                }
                let word = &source[start..i];
                op = word == "in";
                let is_macro = matches!(word, "all" | "exists" | "exists_one" | "map" | "filter")
                    && start > 0
                    && bytes[..start]
                        .iter()
                        .rev()
                        .find(|b| !b.is_ascii_whitespace())
                        == Some(&b'.')
                    && bytes[i..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'(');
                if is_macro && comprehension.iter().any(|&open| open) {
                    return Err(ConditionError::NestedComprehension {
                        name: word.to_owned(),
                        column: column(start),
                    });
                }
                opens_comprehension = is_macro;
                i -= 1;
            }
            _ => {}
        }
        if op {
            *groups.last_mut().expect("the outermost group stays") += 1;
            depth += 1;
        }
        deepest = deepest.max(depth);
        if depth > max_depth {
            return Err(ConditionError::TooDeep {
                column: column(i),
                limit: max_depth,
            });
        }
        i += 1;
    }
    Ok(deepest)
}

/// The index just past the string literal whose quote is at `bytes[start]`,
/// if it is one CEL's lexer accepts (closed, valid escapes, no line break
/// unless triple-quoted). Otherwise `None`: that lexer then skips the quote
/// alone and reads what follows as code, and so must the depth estimate.
fn skip_string(bytes: &[u8], start: usize, raw: bool) -> Option<usize> {
    let quote = bytes[start];
    let triple = bytes.get(start + 1) == Some(&quote) && bytes.get(start + 2) == Some(&quote);
    let mut i = start + if triple { 3 } else { 1 };
    let digits = |from: usize, n: usize, ok: fn(&u8) -> bool| {
        bytes.get(from..from + n).is_some_and(|d| d.iter().all(ok))
    };
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if !raw => {
                let len = match bytes.get(i + 1)? {
                    b'a' | b'b' | b'f' | b'n' | b'r' | b't' | b'v' | b'\\' | b'\'' | b'"'
                    | b'`' | b'?' => 0,
                    b'x' | b'X' if digits(i + 2, 2, u8::is_ascii_hexdigit) => 2,
                    b'u' if digits(i + 2, 4, u8::is_ascii_hexdigit) => 4,
                    b'U' if digits(i + 2, 8, u8::is_ascii_hexdigit) => 8,
                    b'0'..=b'3' if digits(i + 2, 2, |d| (b'0'..=b'7').contains(d)) => 2,
                    _ => return None,
                };
                i += 2 + len;
            }
            b'\n' | b'\r' if !triple => return None,
            q if q == quote => {
                if !triple {
                    return Some(i + 1);
                }
                if bytes.get(i + 1) == Some(&quote) && bytes.get(i + 2) == Some(&quote) {
                    return Some(i + 3);
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
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
    fn has_asks_whether_a_bare_field_has_a_value() {
        let c = Condition::parse("has(answer) || round > 3", &LoadLimits::default()).unwrap();
        assert_eq!(c.fields(), ["answer", "round"]);
        assert_eq!(c.presence_only(), ["answer"]);
        assert_eq!(c.evaluate([("round", &json!(1))]), Ok(false));
        assert_eq!(
            c.evaluate([("answer", &json!("x")), ("round", &json!(1))]),
            Ok(true)
        );
        // `has` on a member, and inside a string, are CEL's own.
        let c = Condition::parse("has(a.b) && 'has(c)' != ''", &LoadLimits::default()).unwrap();
        assert_eq!(c.fields(), ["a"]);
        assert!(c.presence_only().is_empty());
        assert_eq!(c.evaluate([("a", &json!({"b": 1}))]), Ok(true));
    }

    #[test]
    fn a_non_boolean_result_is_an_error() {
        let c = Condition::compile("count + 1").unwrap();
        let err = c.evaluate([("count", &json!(1))]).unwrap_err();
        assert!(err.contains("must evaluate to true or false"), "{err}");
    }

    /// Found by fuzzing: a string CEL's lexer rejects is read as code by
    /// that lexer, so it must not hide the brackets after it.
    #[test]
    fn strings_the_lexer_rejects_do_not_hide_nesting() {
        let limits = LoadLimits::default();
        let nested = format!("{}x{}", "(".repeat(40), ")".repeat(40));
        for prefix in ["\"unclosed ", "'\\q' ", "'line\nbreak' + ", "\"\\x1 "] {
            let err = Condition::parse(&format!("{prefix}{nested}"), &limits).unwrap_err();
            assert!(
                matches!(err, ConditionError::TooDeep { .. }),
                "{prefix}: {err}"
            );
        }
        // Brackets inside well-formed strings do not count.
        let strings = "a == \"((((((((((\" && b == '[[[[[[[[[[[[' && c == r'\\((((((((((' && d == '''(((((((((\n((('''";
        let c = Condition::parse(strings, &limits).unwrap();
        assert_eq!(c.fields(), ["a", "b", "c", "d"]);
    }

    #[test]
    fn malformed_expressions_are_rejected_with_a_position() {
        let err = Condition::compile("a == ").unwrap_err();
        assert!(err.contains("column"), "{err}");
    }
}
