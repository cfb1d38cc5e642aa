//! Hostile pipeline files: every [`LoadLimits`] bound is enforced with an
//! error that names the limit and the place, and the process lives on.
//!
//! Loads run on a thread with a 2 MiB stack (what a `braid serve` worker
//! has), so an input that recurses without bound overflows here as it would
//! there, whatever `RUST_MIN_STACK` says.

use std::path::Path;
use std::time::Duration;

use braid_core::{AgentKinds, Condition, Diagnostic, LoadError, LoadLimits, Pipeline};

const WORKER_STACK: usize = 2 * 1024 * 1024;

/// Loads `text` with `limits` on a thread with a worker's stack.
fn load_with(text: String, limits: LoadLimits) -> Result<Pipeline, LoadError> {
    std::thread::Builder::new()
        .stack_size(WORKER_STACK)
        .spawn(move || Pipeline::from_yaml_str_limited(&text, &AgentKinds::standard(), &limits))
        .unwrap()
        .join()
        .expect("loading must not panic")
}

fn load(text: String) -> Result<Pipeline, LoadError> {
    load_with(text, LoadLimits::default())
}

fn load_file(path: &Path, limits: LoadLimits) -> Result<Pipeline, LoadError> {
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .stack_size(WORKER_STACK)
        .spawn(move || Pipeline::from_file_limited(&path, &AgentKinds::standard(), &limits))
        .unwrap()
        .join()
        .expect("loading must not panic")
}

/// The diagnostics of a load that must fail.
fn refused(result: Result<Pipeline, LoadError>) -> Vec<Diagnostic> {
    match result {
        Ok(_) => panic!("expected the pipeline to be refused"),
        Err(err) => err.diagnostics(),
    }
}

/// The only diagnostic, which must mention every needle; its (line, column).
fn only(diagnostics: &[Diagnostic], needles: &[&str]) -> (usize, usize) {
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    let d = &diagnostics[0];
    for n in needles {
        assert!(d.message.contains(n), "`{n}` not in: {d}");
    }
    let loc = d.location.as_ref().expect("a location");
    (loc.line, loc.column)
}

const HEAD: &str = "pipeline: p\nagents:\n  a: { kind: sleep, writes: [x] }\n";

#[test]
fn a_block_sequence_nested_6000_deep_is_refused_where_it_passes_the_limit() {
    let text = format!(
        "pipeline: p\ndescription:\n  {}x\n{}",
        "- ".repeat(6000),
        &HEAD[12..]
    );
    assert!(text.len() > 12_000);
    let diagnostics = refused(load(text));
    // The top-level mapping is level 1, so the 64th `-` is level 65.
    let (line, column) = only(&diagnostics, &["nested deeper than 64", "max_depth"]);
    assert_eq!((line, column), (3, 3 + 2 * 63));
}

#[test]
fn flow_and_json_nesting_is_refused_too() {
    for (open, close) in [("[", "]"), ("{a: ", "}")] {
        let text = format!(
            "{HEAD}  b: {{ kind: sleep, writes: [y], value: {}1{} }}\n",
            open.repeat(10_000),
            close.repeat(10_000)
        );
        let diagnostics = refused(load(text));
        let (line, _) = only(&diagnostics, &["max_depth"]);
        assert_eq!(line, 4);
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.json");
    let json = format!(
        r#"{{"pipeline": "p", "agents": {{"a": {{"kind": "sleep", "writes": ["x"], "value": {}1{}}}}}}}"#,
        r#"{"k": "#.repeat(10_000),
        "}".repeat(10_000)
    );
    std::fs::write(&path, json).unwrap();
    let diagnostics = refused(load_file(&path, LoadLimits::default()));
    only(&diagnostics, &["max_depth"]);
    let loc = diagnostics[0].location.as_ref().unwrap();
    assert_eq!(loc.file.as_deref(), Some(path.as_path()));
}

#[test]
fn a_deep_value_is_refused_and_one_within_the_limit_loads() {
    let value = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    // agents (1) > b (2) > its mapping (3) > value: 61 more levels is 64.
    let ok = format!(
        "{HEAD}  b:\n    kind: sleep\n    writes: [y]\n    value: {}\n",
        value(61)
    );
    let pipeline = load(ok).unwrap();
    // It runs, and its state goes through JSON text and back (stores keep
    // values as JSON; serde_json refuses more than 128 levels).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let input = pipeline.check_input(&serde_json::json!({})).unwrap();
    let report = runtime.block_on(pipeline.run(input, braid_core::RunOptions::default()));
    assert!(report.status.is_success());
    let stored = serde_json::json!({ "run": { "state": { "y": *report.state["y"] } } }).to_string();
    let back: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(back["run"]["state"]["y"], *report.state["y"]);

    // Block style, which no scanner limit stops: 3,000 levels loaded before.
    let deep = format!(
        "{HEAD}  b:\n    kind: sleep\n    writes: [y]\n    value:\n      {}1\n",
        "- ".repeat(3000)
    );
    let (line, column) = only(&refused(load(deep)), &["max_depth"]);
    assert_eq!((line, column), (8, 7 + 2 * 61));

    // A server may ask for less.
    let limits = LoadLimits {
        max_depth: 8,
        ..LoadLimits::default()
    };
    let shallow = format!(
        "{HEAD}  b: {{ kind: sleep, writes: [y], value: {} }}\n",
        value(6)
    );
    only(
        &refused(load_with(shallow, limits)),
        &["deeper than 8", "max_depth"],
    );
}

#[test]
fn anchors_and_aliases_are_refused_before_they_are_expanded() {
    let text = format!(
        "{HEAD}  b: {{ kind: sleep, writes: [y], value: &v [1, 2] }}\n  c: {{ kind: sleep, writes: [z], value: *v }}\n"
    );
    let (line, _) = only(
        &refused(load(text)),
        &["anchors and aliases are not supported"],
    );
    assert_eq!(line, 4);
}

#[test]
fn a_condition_of_10000_terms_or_members_is_refused_by_its_size() {
    let long_sum = format!("{}x > 0", "x + ".repeat(10_000));
    let long_member = format!("x{} == 1", ".a".repeat(10_000));
    for when in [long_sum, long_member] {
        let text =
            format!("{HEAD}  b: {{ kind: sleep, reads: [x], writes: [y], when: '{when}' }}\n");
        let (line, _) = only(
            &refused(load(text)),
            &["agent `b`", "`when`", "max_condition_bytes"],
        );
        assert_eq!(line, 4);
    }
}

#[test]
fn a_deeply_nested_condition_is_refused_by_its_depth_with_a_column() {
    let cases = [
        format!("{}x{} > 0", "(".repeat(40), ")".repeat(40)),
        format!("size({}x{}) > 0", "[".repeat(40), "]".repeat(40)),
        format!("{}x > 0", "x + ".repeat(40)),
        format!("x{} == 1", ".a".repeat(40)),
        format!("{}x", "!".repeat(40)),
    ];
    for when in cases {
        let text =
            format!("{HEAD}  b: {{ kind: sleep, reads: [x], writes: [y], when: '{when}' }}\n");
        let (line, _) = only(
            &refused(load(text)),
            &[
                "agent `b`",
                "deeper than 32 levels at column",
                "max_condition_depth",
            ],
        );
        assert_eq!(line, 4);
    }
    // The same check through the public condition API.
    let err = Condition::parse(
        &format!("{}x{}", "(".repeat(33), ")".repeat(33)),
        &LoadLimits::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("column 33"), "{err}");
}

#[test]
fn conditions_within_the_limits_load_whatever_the_caller_stack() {
    // Twelve parentheses already overflowed a 2 MiB stack in CEL's parser
    // (unoptimised build) when it ran on the loading thread.
    let nested = format!(
        "{}x{} > 0 && 'a(b)[c' != \"((\"",
        "(".repeat(12),
        ")".repeat(12)
    );
    let text = format!(
        "{HEAD}  b: {{ kind: sleep, reads: [x], writes: [y], when: '{}' }}\n",
        nested.replace('\'', "''")
    );
    let pipeline = load(text).unwrap();
    assert_eq!(pipeline.agents()[1].condition().unwrap().fields(), ["x"]);
    // Shallow ones are parsed on the loading thread itself: 8 levels fit.
    let shallow = format!("{}x{}", "(".repeat(8), ")".repeat(8));
    let text =
        format!("{HEAD}  b: {{ kind: sleep, reads: [x], writes: [y], when: '{shallow}' }}\n");
    load(text).unwrap();
}

#[test]
fn a_thousand_racing_writers_are_one_diagnostic_per_field() {
    let mut text = String::from("pipeline: p\nagents:\n");
    for i in 0..1000 {
        text.push_str(&format!(
            "  w{i}: {{ kind: sleep, writes: [out, other{i}] }}\n"
        ));
    }
    let diagnostics = refused(load(text));
    let (line, column) = only(
        &diagnostics,
        &[
            "write-write race on `out`",
            "`w0`, `w1`, `w2`, `w3`, `w4` and 995 more",
            "merge",
        ],
    );
    assert_eq!((line, column), (4, 31));
}

#[test]
fn writers_ordered_through_a_long_chain_are_no_race() {
    // Every agent writes `out`; each runs after the one before, so they are
    // ordered through paths, not direct edges, for the writers of `log`.
    let mut text = String::from(
        "pipeline: p\nfields: { out: { merge: append } }\nagents:\n  w0: { kind: sleep, writes: [out, log] }\n",
    );
    for i in 1..2000 {
        let log = if i % 100 == 0 { ", log" } else { "" };
        text.push_str(&format!(
            "  w{i}: {{ kind: sleep, writes: [out{log}], after: [w{}] }}\n",
            i - 1
        ));
    }
    load(text.clone()).unwrap();
    // Cut the chain once: the writers of `log` on either side now race.
    let cut = text.replace("after: [w1049]", "after: [w0]");
    let (_, _) = only(
        &refused(load(cut)),
        &["write-write race on `log`", "`w1000` and `w1100`"],
    );
}

#[test]
fn many_readers_of_a_field_with_many_writers_cannot_ask_for_unbounded_edges() {
    // 2,000 writers of a merged field and 2,501 readers of it: 5,002,000
    // dependencies from 200 KB of text.
    let mut text = String::from("pipeline: p\nfields: { out: { merge: append } }\nagents:\n");
    for i in 0..2000 {
        text.push_str(&format!("  w{i}: {{ kind: sleep, writes: [out] }}\n"));
    }
    for i in 0..2501 {
        text.push_str(&format!(
            "  r{i}: {{ kind: sleep, reads: [out], writes: [r{i}] }}\n"
        ));
    }
    let (line, _) = only(
        &refused(load(text)),
        &["5000000 or more dependencies", "agent `r2500`"],
    );
    assert_eq!(line, 2000 + 2500 + 4);
}

#[test]
fn at_most_max_diagnostics_are_reported_and_the_rest_counted() {
    let mut text = String::from("pipeline: p\nagents:\n");
    for i in 0..150 {
        text.push_str(&format!(
            "  a{i}: {{ kind: sleep, reads: [missing{i}], writes: [x{i}] }}\n"
        ));
    }
    let diagnostics = refused(load(text.clone()));
    assert_eq!(diagnostics.len(), 101, "{diagnostics:#?}");
    assert!(
        diagnostics[..100]
            .iter()
            .all(|d| d.message.contains("no agent writes"))
    );
    let last = &diagnostics[100].message;
    assert!(
        last.contains("and 50 more problems") && last.contains("max_diagnostics"),
        "{last}"
    );

    let limits = LoadLimits {
        max_diagnostics: 3,
        ..LoadLimits::default()
    };
    assert_eq!(refused(load_with(text, limits)).len(), 4);
}

#[test]
fn a_spent_compile_budget_is_a_clear_error() {
    let limits = LoadLimits {
        compile_budget: Duration::ZERO,
        ..LoadLimits::default()
    };
    let diagnostics = refused(load_with(HEAD.to_owned(), limits));
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    assert!(
        diagnostics[0].message.contains("compile_budget"),
        "{}",
        diagnostics[0]
    );
    // The same pipeline within its budget.
    load(HEAD.to_owned()).unwrap();
}

#[test]
fn a_dependency_cycle_through_20000_agents_is_one_short_diagnostic() {
    let n = 20_000;
    let mut text = String::from("pipeline: p\nagents:\n");
    for i in 0..n {
        text.push_str(&format!(
            "  a{i}: {{ kind: sleep, writes: [x{i}], after: [a{}] }}\n",
            (i + n - 1) % n
        ));
    }
    // The subject is the diagnostic, not the compile budget (tested on its
    // own): an unoptimised build on a busy shared machine takes most of the
    // default 10 s here, so this load gets more.
    let limits = LoadLimits {
        compile_budget: Duration::from_secs(120),
        ..LoadLimits::default()
    };
    let diagnostics = refused(load_with(text, limits));
    let (line, _) = only(
        &diagnostics,
        &["dependency cycle: a0 -> a1 -> ", "20000 agents"],
    );
    assert_eq!(line, 3);
    assert!(
        diagnostics[0].message.len() < 2_000,
        "{}",
        diagnostics[0].message.len()
    );
}

#[test]
fn a_byte_order_mark_is_accepted_and_invalid_utf8_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bom.yaml");
    std::fs::write(&path, format!("\u{feff}{HEAD}")).unwrap();
    let pipeline = load_file(&path, LoadLimits::default()).unwrap();
    assert_eq!(pipeline.name(), "p");
    load(format!("\u{feff}{HEAD}")).unwrap();

    let mut bytes = HEAD.as_bytes().to_vec();
    bytes.extend_from_slice(b"  b: { kind: sleep, description: \"caf\xe9\", writes: [y] }\n");
    std::fs::write(&path, bytes).unwrap();
    let diagnostics = refused(load_file(&path, LoadLimits::default()));
    let (line, column) = only(&diagnostics, &["invalid UTF-8", "0xe9"]);
    assert_eq!((line, column), (4, 38));
    let loc = diagnostics[0].location.as_ref().unwrap();
    assert_eq!(loc.file.as_deref(), Some(path.as_path()));
}

#[test]
fn retries_are_bounded_and_backoff_has_a_floor() {
    let cases = [
        ("retries: 4294967295", "too many; at most 100 retries"),
        ("retries: 101", "too many; at most 100 retries"),
        ("backoff: 0ms", "too short; the shortest backoff is 1ms"),
        ("backoff: 500us", "too short"),
    ];
    for (setting, needle) in cases {
        let text = format!("{HEAD}  b: {{ kind: sleep, writes: [y], {setting} }}\n");
        let (line, column) = only(&refused(load(text)), &["agent `b`", needle]);
        assert_eq!(line, 4);
        assert_eq!(column, 35 + setting.find(' ').unwrap());

        let defaults = format!("{HEAD}defaults: {{ {setting} }}\n");
        let (line, _) = only(&refused(load(defaults)), &["defaults.", needle]);
        assert_eq!(line, 4);
    }
    let ok = format!("{HEAD}  b: {{ kind: sleep, writes: [y], retries: 100, backoff: 1ms }}\n");
    let pipeline = load(ok).unwrap();
    assert_eq!(pipeline.agents()[1].policy().retries, 100);
}

#[test]
fn text_over_max_bytes_is_refused_before_parsing() {
    let limits = LoadLimits {
        max_bytes: 64,
        ..LoadLimits::default()
    };
    let text = format!("{HEAD}# {}\n", "padding ".repeat(10));
    let (line, column) = only(
        &refused(load_with(text.clone(), limits.clone())),
        &["max_bytes", "64 bytes"],
    );
    assert_eq!((line, column), (1, 1));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    std::fs::write(&path, &text).unwrap();
    only(&refused(load_file(&path, limits)), &["max_bytes"]);
}

#[test]
fn an_input_schema_as_deep_as_the_limit_allows_loads_and_validates() {
    // inputs (2) > x (3) > then `properties: { a: {…} }` two levels a time.
    let mut schema = String::from("{ type: integer }");
    let mut value = serde_json::json!(1);
    for _ in 0..30 {
        schema = format!("{{ type: object, properties: {{ a: {schema} }}, required: [a] }}");
        value = serde_json::json!({ "a": value });
    }
    let text = format!(
        "pipeline: p\ninputs:\n  x: {schema}\nagents:\n  a: {{ kind: sleep, reads: [x], writes: [y] }}\n"
    );
    let pipeline = load(text).unwrap();
    let input = serde_json::json!({ "x": value });
    let checked = std::thread::Builder::new()
        .stack_size(WORKER_STACK)
        .spawn(move || pipeline.check_input(&input).is_ok())
        .unwrap()
        .join()
        .unwrap();
    assert!(checked);
}

#[test]
fn an_explanation_lists_a_bounded_number_of_edges_and_counts_them_all() {
    // 150 writers of a merged field and 150 readers: 22,500 edges.
    let mut text = String::from("pipeline: wide\nfields: { x: { merge: append } }\nagents:\n");
    for i in 0..150 {
        text.push_str(&format!("  w{i}: {{ kind: sleep, writes: [x] }}\n"));
        text.push_str(&format!(
            "  r{i}: {{ kind: sleep, reads: [x], writes: [y{i}] }}\n"
        ));
    }
    let explanation = load(text).unwrap().explain();
    assert_eq!(explanation.edges_total, 150 * 150);
    assert_eq!(
        explanation.edges.len(),
        braid_core::explain::MAX_EXPLAINED_EDGES
    );
    assert!(explanation.to_text().contains("22500 edges"));
    assert!(
        explanation
            .to_dot()
            .contains("and 17500 more edges, not drawn")
    );
    assert!(
        serde_json::to_string(&explanation).unwrap().len() < 1024 * 1024,
        "the JSON stays small"
    );
}

#[test]
fn nested_comprehensions_are_refused_and_sequential_ones_load() {
    // x.all(a, x.all(b, ...)) over a list an agent wrote costs n^k steps
    // on the run's task: refused where it is written.
    let text = "pipeline: p\nagents:\n  make: { kind: sleep, writes: [x] }\n  \
                check: { kind: sleep, reads: [x], writes: [y], when: 'x.all(a, x.exists(b, b == a))' }\n";
    let diagnostics = refused(load(text.to_owned()));
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    let message = diagnostics[0].to_string();
    assert!(
        message.contains("nests the comprehension `exists` inside another at column 12"),
        "{message}"
    );
    // One after the other, or on fields, they are fine.
    let text = "pipeline: p\nagents:\n  make: { kind: sleep, writes: [x] }\n  \
                check: { kind: sleep, reads: [x], writes: [y], when: 'x.all(a, a > 0) && x.map(b, b).size() > 0' }\n";
    assert!(load(text.to_owned()).is_ok());
}
