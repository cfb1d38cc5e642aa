//! Every way a pipeline file can be wrong gets a specific error that names
//! the agents and fields involved and the line and column in the file.

use std::path::PathBuf;

use braid_core::{Diagnostic, LoadError, Pipeline};

struct Written {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn write(yaml: &str) -> Written {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    Written { _dir: dir, path }
}

/// Loads `yaml` from a file and returns its diagnostics (it must fail).
fn errors(yaml: &str) -> Vec<Diagnostic> {
    let file = write(yaml);
    match Pipeline::from_file(&file.path) {
        Ok(_) => panic!("expected the pipeline to be rejected:\n{yaml}"),
        Err(err) => {
            let diagnostics = err.diagnostics();
            for d in &diagnostics {
                let loc = d
                    .location
                    .as_ref()
                    .expect("every diagnostic here has a location");
                assert_eq!(loc.file.as_deref(), Some(file.path.as_path()), "{d}");
            }
            diagnostics
        }
    }
}

/// The one diagnostic that mentions all of `needles`, and its (line, column).
fn find(diagnostics: &[Diagnostic], needles: &[&str]) -> (usize, usize) {
    let d = diagnostics
        .iter()
        .find(|d| needles.iter().all(|n| d.message.contains(n)))
        .unwrap_or_else(|| panic!("no diagnostic mentions {needles:?}; got:\n{diagnostics:#?}"));
    let loc = d.location.as_ref().unwrap();
    (loc.line, loc.column)
}

#[test]
fn a_cycle_is_printed_with_the_reason_for_each_step() {
    let diagnostics = errors(
        "pipeline: loop\n\
         agents:\n\
         \x20 a: { kind: sleep, reads: [z], writes: [x] }\n\
         \x20 b: { kind: sleep, reads: [x], writes: [y] }\n\
         \x20 c: { kind: sleep, reads: [y], writes: [z] }\n",
    );
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    let (line, col) = find(&diagnostics, &["dependency cycle: a -> b -> c -> a"]);
    assert_eq!((line, col), (3, 3));
    assert!(diagnostics[0].message.contains("b reads `x` written by a"));
    assert!(diagnostics[0].message.contains("a reads `z` written by c"));
}

#[test]
fn a_cycle_through_after_is_reported() {
    let diagnostics = errors(
        "pipeline: loop\n\
         agents:\n\
         \x20 a: { kind: sleep, writes: [x], after: [b] }\n\
         \x20 b: { kind: sleep, reads: [x], writes: [y] }\n",
    );
    let (line, _) = find(
        &diagnostics,
        &["dependency cycle: a -> b -> a", "a runs after b"],
    );
    assert_eq!(line, 3);
}

#[test]
fn concurrent_writers_without_a_merge_rule_are_a_race() {
    let yaml = "pipeline: race\n\
         agents:\n\
         \x20 start: { kind: sleep, writes: [go] }\n\
         \x20 left:  { kind: sleep, reads: [go], writes: [findings] }\n\
         \x20 right: { kind: sleep, reads: [go], writes: [findings] }\n";
    let diagnostics = errors(yaml);
    let (line, col) = find(
        &diagnostics,
        &[
            "write-write race on `findings`",
            "`left` and `right`",
            "merge",
        ],
    );
    assert_eq!((line, col), (5, 47));

    // Ordering them, or declaring a merge rule, makes it valid.
    let ordered = yaml.replace(
        "writes: [findings] }\n  right: { kind: sleep, reads: [go],",
        "writes: [findings] }\n  right: { kind: sleep, reads: [go], after: [left],",
    );
    assert!(Pipeline::from_yaml_str(&ordered).is_ok(), "{ordered}");
    let merged = format!("{yaml}fields:\n  findings: {{ merge: append }}\n");
    assert!(Pipeline::from_yaml_str(&merged).is_ok());
}

#[test]
fn a_read_nobody_writes_is_rejected_unless_optional() {
    let diagnostics = errors(
        "pipeline: p\n\
         agents:\n\
         \x20 a: { kind: sleep, writes: [triage_result] }\n\
         \x20 b: { kind: sleep, reads: [triage_reslt, maybe?], writes: [y] }\n",
    );
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    let (line, col) = find(
        &diagnostics,
        &[
            "agent `b` reads `triage_reslt`",
            "no agent writes",
            "did you mean `triage_result`?",
        ],
    );
    assert_eq!((line, col), (4, 29));
}

#[test]
fn unknown_keys_name_the_agent_and_the_key() {
    let diagnostics = errors(
        "pipeline: p\n\
         agents:\n\
         \x20 a:\n\
         \x20   kind: sleep\n\
         \x20   writes: [x]\n\
         \x20   retrys: 3\n\
         colour: blue\n",
    );
    let (line, col) = find(
        &diagnostics,
        &["agent `a`", "unknown key `retrys`", "retries"],
    );
    assert_eq!((line, col), (6, 5));
    let (line, col) = find(&diagnostics, &["unknown top-level key `colour`"]);
    assert_eq!((line, col), (7, 1));
}

#[test]
fn wrong_types_point_at_the_value() {
    let diagnostics = errors(
        "pipeline: p\n\
         agents:\n\
         \x20 a: { kind: sleep, ms: fifty, writes: [x] }\n\
         \x20 c: { kind: sleep, retries: -1, writes: [z] }\n\
         concurrency: lots\n",
    );
    let (line, col) = find(&diagnostics, &["agent `a`", "`ms`", "invalid digit"]);
    assert_eq!((line, col), (3, 25));
    let (line, _) = find(&diagnostics, &["agent `c`", "`retries`"]);
    assert_eq!(line, 4);
    let (line, col) = find(
        &diagnostics,
        &["`concurrency` must be a whole number", "lots"],
    );
    assert_eq!((line, col), (5, 14));
}

#[test]
fn bad_durations_point_at_the_value() {
    let diagnostics = errors(
        "pipeline: p\n\
         defaults: { backoff: 1 fortnight-ish }\n\
         agents:\n\
         \x20 b: { kind: sleep, timeout: 3 parsecs, writes: [y] }\n",
    );
    let (line, col) = find(
        &diagnostics,
        &["agent `b`", "bad duration `3 parsecs`", "200ms"],
    );
    assert_eq!((line, col), (4, 30));
    let (line, _) = find(&diagnostics, &["defaults.backoff", "bad duration"]);
    assert_eq!(line, 2);
}

#[test]
fn unknown_after_targets_and_kinds_are_rejected() {
    let diagnostics = errors(
        "pipeline: p\n\
         agents:\n\
         \x20 report: { kind: sleep, writes: [r], after: [cots] }\n\
         \x20 cost:   { kind: slep, writes: [c] }\n\
         \x20 run:    { kind: command, writes: [d] }\n",
    );
    let (line, col) = find(
        &diagnostics,
        &[
            "agent `report`",
            "`after` names `cots`",
            "did you mean `cost`?",
        ],
    );
    assert_eq!((line, col), (3, 47));
    let (line, col) = find(
        &diagnostics,
        &["agent `cost`", "unknown kind `slep`", "sleep, command"],
    );
    assert_eq!((line, col), (4, 19));
    let (line, _) = find(&diagnostics, &["agent `run`", "needs `run: [PROGRAM"]);
    assert_eq!(line, 5);
}

#[test]
fn an_empty_pipeline_is_rejected() {
    let diagnostics = errors("pipeline: nothing\nagents: {}\n");
    let (line, col) = find(&diagnostics, &["no agents"]);
    assert_eq!((line, col), (2, 1));
}

#[test]
fn a_malformed_condition_is_rejected_with_its_text() {
    let diagnostics = errors(
        "pipeline: p\n\
         agents:\n\
         \x20 a: { kind: sleep, writes: [x] }\n\
         \x20 b: { kind: sleep, writes: [y], when: 'x.route ==' }\n\
         \x20 c: { kind: sleep, writes: [z], when: 'nothing > 1' }\n",
    );
    let (line, _) = find(
        &diagnostics,
        &["agent `b`", "malformed `when` expression `x.route ==`"],
    );
    assert_eq!(line, 4);
    let (line, _) = find(&diagnostics, &["agent `c`", "`when` refers to `nothing`"]);
    assert_eq!(line, 5);
}

#[test]
fn malformed_yaml_names_the_line() {
    let diagnostics = errors("pipeline: p\nagents:\n  a: { kind: sleep, writes: [x]\n");
    assert_eq!(diagnostics.len(), 1);
    assert!(
        diagnostics[0].message.contains("malformed YAML"),
        "{diagnostics:#?}"
    );
    assert_eq!(diagnostics[0].location.as_ref().unwrap().line, 4);
}

#[test]
fn duplicate_agent_names_are_rejected() {
    let diagnostics = errors(
        "pipeline: p\nagents:\n  a: { kind: sleep, writes: [x] }\n  a: { kind: sleep, writes: [y] }\n",
    );
    let (line, _) = find(
        &diagnostics,
        &["duplicate key `a`", "first defined at line 3"],
    );
    assert_eq!(line, 4);
}

#[test]
fn writing_an_input_and_unknown_merge_rules_are_rejected() {
    let diagnostics = errors(
        "pipeline: p\n\
         inputs: { request: { type: string } }\n\
         fields: { out: { merge: concat } }\n\
         agents:\n\
         \x20 a: { kind: sleep, reads: [request], writes: [request, out] }\n",
    );
    let (line, _) = find(&diagnostics, &["agent `a` writes `request`", "run input"]);
    assert_eq!(line, 5);
    let (line, _) = find(
        &diagnostics,
        &[
            "`fields.out.merge`",
            "unknown merge rule `concat`",
            "append",
        ],
    );
    assert_eq!(line, 3);
}

#[test]
fn kind_specific_keys_must_match_the_kind() {
    let diagnostics =
        errors("pipeline: p\nagents:\n  a: { kind: command, run: [echo], ms: 5, writes: [x] }\n");
    find(
        &diagnostics,
        &["agent `a`", "`ms` does not apply to a `command` agent"],
    );
}

#[test]
fn a_missing_file_says_which_file() {
    let err = Pipeline::from_file("/nonexistent/braid/pipeline.yaml").unwrap_err();
    assert!(matches!(err, LoadError::Read { .. }));
    let message = err.to_string();
    assert!(
        message.contains("/nonexistent/braid/pipeline.yaml"),
        "{message}"
    );
    assert!(message.contains("No such file"), "{message}");
}

#[test]
fn several_problems_are_all_reported_at_once() {
    let diagnostics = errors(
        "pipeline: p\n\
         agents:\n\
         \x20 a: { kind: sleep, reads: [nope], writes: [x], timeout: soon }\n\
         \x20 b: { kind: sleep, writes: [y], after: [ghost] }\n",
    );
    assert_eq!(diagnostics.len(), 3, "{diagnostics:#?}");
}

#[test]
fn json_pipelines_load_too() {
    let pipeline = Pipeline::from_yaml_str(
        r#"{"pipeline": "json", "inputs": {"n": {"type": "integer"}},
            "agents": {"a": {"kind": "sleep", "ms": 1, "reads": ["n"], "writes": ["x"]},
                       "b": {"kind": "sleep", "reads": ["x"], "writes": ["y"], "value": {"k": [1, 2]}}}}"#,
    )
    .unwrap();
    assert_eq!(pipeline.name(), "json");
    assert_eq!(pipeline.graph().edges().collect::<Vec<_>>(), [(0, 1)]);
}

#[test]
fn the_examples_are_valid() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    for file in ["seed.yaml", "polyglot/pipeline.yaml"] {
        Pipeline::from_file(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

#[test]
fn an_agent_that_needs_its_own_write_could_never_start() {
    let diagnostics = errors(
        "pipeline: p\n\
         agents:\n\
         \x20 a: { kind: sleep, reads: [x], writes: [x] }\n\
         \x20 b: { kind: sleep, writes: [y], when: 'y > 1' }\n\
         \x20 c: { kind: sleep, reads: [z?], writes: [z] }\n",
    );
    assert_eq!(diagnostics.len(), 2, "{diagnostics:#?}");
    let (line, _) = find(
        &diagnostics,
        &["agent `a` reads `x`, which only it writes", "`x?`"],
    );
    assert_eq!(line, 3);
    let (line, _) = find(
        &diagnostics,
        &[
            "agent `b`",
            "`when` refers to `y`, which only this agent writes",
        ],
    );
    assert_eq!(line, 4);
}

#[test]
fn a_zero_timeout_is_rejected() {
    let diagnostics = errors(
        "pipeline: p\ndefaults: { timeout: 0s }\nagents:\n  a: { kind: sleep, writes: [x], timeout: 0ms }\n",
    );
    let (line, _) = find(
        &diagnostics,
        &["`defaults.timeout` must be longer than zero"],
    );
    assert_eq!(line, 2);
    let (line, _) = find(
        &diagnostics,
        &["agent `a`: `timeout` must be longer than zero"],
    );
    assert_eq!(line, 4);
}

#[test]
fn pipeline_names_are_url_safe() {
    let diagnostics = errors("pipeline: \"<img src=x>\"\nagents:\n  a: { kind: sleep }\n");
    let (line, _) = find(&diagnostics, &["a pipeline's name must be letters, digits"]);
    assert_eq!(line, 1);
}

#[test]
fn foreach_mistakes_name_the_agent_the_key_and_the_place() {
    let diagnostics = errors(
        "pipeline: fanout
inputs: { docs: { type: array }, doc: { type: string } }
fields: { merged: { merge: append } }
agents:
  plan:  { kind: sleep, writes: [merged] }
  typo:  { kind: sleep, foreach: docss, reads: [item], writes: [a] }
  clash: { kind: sleep, foreach: docs, as: doc, reads: [doc], writes: [b] }
  merge: { kind: sleep, foreach: docs, reads: [item], writes: [merged] }
  zero:  { kind: sleep, foreach: docs, concurrency: 0, on_item_failure: maybe, writes: [c] }
  lone:  { kind: sleep, as: x, expected_items: 3, writes: [d] }
  self:  { kind: sleep, foreach: e, writes: [e] }
",
    );
    assert_eq!(
        find(
            &diagnostics,
            &[
                "agent `typo`",
                "`foreach: docss`",
                "no agent writes",
                "did you mean `docs`"
            ]
        ),
        (6, 34)
    );
    assert!(
        !diagnostics
            .iter()
            .any(|d| d.message.contains("reads `item`")),
        "the element of an unresolved foreach is still local: {diagnostics:#?}"
    );
    assert_eq!(
        find(
            &diagnostics,
            &[
                "agent `clash`",
                "`doc` is the element",
                "a run input",
                "choose another `as`"
            ]
        ),
        (7, 44)
    );
    assert_eq!(
        find(
            &diagnostics,
            &[
                "agent `merge` writes `merged`",
                "merge rule (`append`)",
                "foreach"
            ]
        ),
        (8, 64)
    );
    assert_eq!(
        find(
            &diagnostics,
            &["agent `zero`", "`concurrency` must be at least 1"]
        ),
        (9, 53)
    );
    assert_eq!(
        find(
            &diagnostics,
            &[
                "agent `zero`",
                "`on_item_failure` must be `fail` or `skip`, found `maybe`"
            ]
        ),
        (9, 73)
    );
    assert_eq!(
        find(
            &diagnostics,
            &["agent `lone`", "`as` applies only to a `foreach` agent"]
        ),
        (10, 29)
    );
    assert_eq!(
        find(
            &diagnostics,
            &[
                "agent `lone`",
                "`expected_items` applies only to a `foreach` agent"
            ]
        ),
        (10, 48)
    );
    assert_eq!(
        find(
            &diagnostics,
            &[
                "agent `self`",
                "`foreach: e` names a field only this agent writes"
            ]
        ),
        (11, 34)
    );
}

#[test]
fn an_optional_write_is_still_a_field_name() {
    let diagnostics = errors(
        "pipeline: p
agents:
  a: { kind: sleep, writes: [ok?, not-a-field?] }
",
    );
    assert_eq!(
        find(
            &diagnostics,
            &["agent `a` writes `not-a-field`", "optional write"]
        ),
        (3, 35)
    );
}

#[test]
fn a_foreach_cycle_says_which_step_fans_out() {
    let diagnostics = errors(
        "pipeline: p
agents:
  a: { kind: sleep, reads: [y], writes: [x] }
  b: { kind: sleep, foreach: x, writes: [y] }
",
    );
    find(
        &diagnostics,
        &[
            "dependency cycle: a -> b -> a",
            "b fans out over `x` written by a",
        ],
    );
}

const BAD_GROUPS: &str = "pipeline: groups
inputs: { topic: { type: string } }
agents:
  per_doc:
    kind: pipeline
    reads: [topic]
    agents:
      a: { kind: sleep, reads: [topc], writes: [text] }
    outputs: { texts: text }
  outs:
    kind: pipeline
    agents:
      c: { kind: sleep, writes: [text] }
    outputs: { texts2: txt }
  refine:
    kind: pipeline
    repeat: { until: 'score > 3 && rund < 2' }
    carry: { feedback: critique }
    agents:
      draft:    { kind: sleep, reads: [feedback], writes: [draft] }
      critique: { kind: sleep, reads: [draft], writes: [critique] }
    outputs: { final: draft }
  once:
    kind: pipeline
    carry: { feedback: out }
    agents:
      b: { kind: sleep, writes: [out] }
    outputs: { result: out }
";

#[test]
fn group_mistakes_name_the_group_the_key_and_the_place() {
    let diagnostics = errors(BAD_GROUPS);
    // Inside a group: like a pipeline, the group named, the place kept.
    assert_eq!(
        find(
            &diagnostics,
            &[
                "group `per_doc`: agent `a` reads `topc`",
                "did you mean `topic`",
            ],
        ),
        (8, 33)
    );
    assert_eq!(
        find(
            &diagnostics,
            &[
                "agent `outs`: `outputs.texts2` names `txt`",
                "not a field of the group",
                "did you mean `text`",
            ],
        ),
        (14, 24)
    );
    assert_eq!(
        find(&diagnostics, &["agent `refine`: `repeat` needs `max`"]),
        (17, 22)
    );
    find(
        &diagnostics,
        &[
            "agent `refine`: `repeat.until` refers to `score`",
            "group's fields and `round`",
        ],
    );
    assert_eq!(
        find(
            &diagnostics,
            &[
                "agent `refine`: agent `draft` reads `feedback`",
                "absent in round 0",
                "`feedback?`",
            ],
        ),
        (20, 7)
    );
    assert_eq!(
        find(
            &diagnostics,
            &["agent `once`: `carry.feedback` only means something with `repeat`"],
        ),
        (25, 24)
    );
    for d in &diagnostics {
        assert!(d.location.is_some(), "{d}");
    }
}

#[test]
fn a_group_says_its_writes_are_its_outputs() {
    let diagnostics = errors(
        "pipeline: p
agents:
  g:
    kind: pipeline
    writes: [x]
    agents:
      a: { kind: sleep, writes: [y] }
    outputs: { x: y }
",
    );
    assert_eq!(
        find(
            &diagnostics,
            &["agent `g`: a group's writes are the keys of its `outputs`; remove `writes`"]
        ),
        (5, 13)
    );
}

#[test]
fn a_group_file_is_checked_where_it_is_named_and_in_itself() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("needs.yaml"),
        "pipeline: needs\ninputs: { doc: { type: string } }\nagents:\n  a: { kind: sleep, reads: [doc], writes: [out] }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("broken.yaml"),
        "pipeline: broken\nagents:\n  a: { kind: sleep, reads: [nothing], writes: [out] }\n",
    )
    .unwrap();
    let main = dir.path().join("pipeline.yaml");
    std::fs::write(
        &main,
        "pipeline: p
inputs: { other: { type: string } }
agents:
  missing_input: { kind: pipeline, path: needs.yaml, outputs: { o1: out } }
  extra_read:    { kind: pipeline, path: needs.yaml, reads: [other], outputs: { o2: out } }
  outside:       { kind: pipeline, path: ../elsewhere.yaml, outputs: { o3: out } }
  absent:        { kind: pipeline, path: nope.yaml, outputs: { o4: out } }
  broken:        { kind: pipeline, path: broken.yaml, outputs: { o5: out } }
",
    )
    .unwrap();
    let diagnostics = match Pipeline::from_file(&main) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.diagnostics(),
    };
    let at = |needles: &[&str]| {
        let d = diagnostics
            .iter()
            .find(|d| needles.iter().all(|n| d.message.contains(n)))
            .unwrap_or_else(|| panic!("no diagnostic mentions {needles:?}: {diagnostics:#?}"));
        let l = d.location.as_ref().unwrap();
        (
            l.file
                .as_deref()
                .unwrap()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned(),
            l.line,
            l.column,
        )
    };
    assert_eq!(
        at(&[
            "agent `missing_input`",
            "`path: needs.yaml` needs input `doc`"
        ]),
        ("pipeline.yaml".into(), 4, 42)
    );
    assert_eq!(
        at(&[
            "agent `extra_read`",
            "`other` is given to `path: needs.yaml`, which declares no input `other`"
        ]),
        ("pipeline.yaml".into(), 5, 62)
    );
    assert_eq!(
        at(&[
            "agent `outside`",
            "must name a file in the pipeline's folder or below"
        ]),
        ("pipeline.yaml".into(), 6, 42)
    );
    assert_eq!(
        at(&["agent `absent`", "cannot read `path: nope.yaml`"]),
        ("pipeline.yaml".into(), 7, 42)
    );
    // An error inside the group file is placed in that file.
    assert_eq!(
        at(&["group `broken` (broken.yaml): agent `a` reads `nothing`"]),
        ("broken.yaml".into(), 3, 29)
    );

    // A pipeline sent as text names no files.
    let err = Pipeline::from_yaml_str(
        "pipeline: p\nagents:\n  g: { kind: pipeline, path: needs.yaml, outputs: { o: out } }\n",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("a group file can only be named by a pipeline loaded from a file"),
        "{err}"
    );
}

#[test]
fn group_files_cannot_leave_the_folder_or_multiply_past_max_agents() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("pipelines");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        root.path().join("secret.yaml"),
        "pipeline: secret\nagents:\n  a: { kind: sleep, writes: [out] }\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(root.path().join("secret.yaml"), dir.join("link.yaml")).unwrap();
    // A file whose two groups are itself: 2, 4, 8, … copies.
    std::fs::write(
        dir.join("self.yaml"),
        "pipeline: self
agents:
  a: { kind: sleep, writes: [out] }
  g1: { kind: pipeline, path: self.yaml, outputs: { o1: out } }
  g2: { kind: pipeline, path: self.yaml, outputs: { o2: out } }
",
    )
    .unwrap();
    let main = dir.join("pipeline.yaml");
    std::fs::write(
        &main,
        "pipeline: p\nagents:\n  g: { kind: pipeline, path: link.yaml, outputs: { o: out } }\n",
    )
    .unwrap();
    let err = Pipeline::from_file(&main).unwrap_err().to_string();
    assert!(
        err.contains("`path: link.yaml` leads outside the pipeline's folder"),
        "{err}"
    );

    let limits = braid_core::LoadLimits {
        max_agents: 50,
        ..braid_core::LoadLimits::default()
    };
    let err = Pipeline::from_file_limited(
        dir.join("self.yaml"),
        &braid_core::AgentKinds::standard(),
        &limits,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("with its groups the pipeline would have more than 50 agents (max_agents)"),
        "{err}"
    );
    // Under the default limits, nesting stops it first.
    let err = Pipeline::from_file(dir.join("self.yaml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("groups nest at most 8 deep"), "{err}");
}

/// One report for the whole file: shape errors (a wrong type, an unknown
/// key), kind errors, unresolved reads and races come together, so fixing
/// them does not uncover a new batch each time; misspellings get a guess.
#[test]
fn every_kind_of_problem_comes_in_one_report_with_guesses() {
    let diagnostics = errors(
        "pipeline: staged
agents:
  a: { kind: sleep, ms: \"fifty\", writes: [x] }
  b: { kind: sleeep, ms: 5, reads: [x], writes: [y] }
  c: { kind: sleep, ms: 5, reads: [yy], writes: [z] }
  d: { kind: sleep, ms: 5, writes: [z] }
  e: { kind: sleep, ms: 5, reeds: [x], writes: [w] }
  f: { kind: sleep, ms: 5, reads: [x], writes: [v] }
",
    );
    assert_eq!(diagnostics.len(), 5, "{diagnostics:#?}");
    assert_eq!(find(&diagnostics, &["agent `a`", "`ms`", "fifty"]), (3, 25));
    assert_eq!(
        find(
            &diagnostics,
            &["unknown kind `sleeep`", "did you mean `sleep`?"]
        ),
        (4, 14)
    );
    assert_eq!(
        find(&diagnostics, &["reads `yy`", "did you mean `y`?"]),
        (5, 36)
    );
    find(&diagnostics, &["write-write race on `z`", "`c` and `d`"]);
    assert_eq!(
        find(
            &diagnostics,
            &["unknown key `reeds`", "did you mean `reads`?"]
        ),
        (7, 28)
    );
    // `f` reads `x`, written by the malformed `a`: not reported again.
    assert!(
        !diagnostics.iter().any(|d| d.message.contains("reads `x`")),
        "{diagnostics:#?}"
    );
}

#[test]
fn a_queue_must_be_one_subject_token_and_not_on_an_input_agent() {
    let d = errors(
        "pipeline: q
agents:
  a: { kind: sleep, ms: 1, writes: [x], queue: eu.west }
  ask:
    kind: input
    prompt: ok?
    queue: gpu
    reads: [x]
    writes: [y]
",
    );
    assert_eq!(
        find(&d, &["agent `a`", "`queue: eu.west` is not a queue name"]),
        (3, 48)
    );
    assert_eq!(
        find(
            &d,
            &["agent `ask`", "`queue` does not apply to an `input` agent"]
        ),
        (7, 12)
    );
}
