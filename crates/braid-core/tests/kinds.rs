//! Rust agents by name, kinds defined outside the core, and pipelines
//! built in code: all through the same loading and validation as files.

use std::sync::Arc;

use braid_core::agent::{Agent, AgentError, AgentInput, Writes};
use braid_core::{AgentKinds, Pipeline, RunOptions};
use serde_json::json;

/// A kind of agent defined outside the core: writes its `text` setting.
struct Echo(String);

#[async_trait::async_trait]
impl Agent for Echo {
    async fn call(&self, _input: &AgentInput) -> Result<Writes, AgentError> {
        let mut out = Writes::new();
        out.insert("said".into(), json!(self.0));
        Ok(out)
    }
}

fn kinds() -> AgentKinds {
    let mut kinds = AgentKinds::standard();
    kinds.kind(
        "echo",
        Arc::new(|config| {
            let text = config
                .settings
                .get("text")
                .and_then(|t| t.as_str())
                .ok_or_else(|| "an `echo` agent needs `text: STRING`".to_owned())?;
            if let Some(extra) = config.settings.keys().find(|k| *k != "text") {
                return Err(format!("unknown key `{extra}` for an `echo` agent"));
            }
            Ok(Arc::new(Echo(text.to_owned())) as Arc<dyn Agent>)
        }),
    );
    kinds.builtin_fn("double", |reads| async move {
        let n = reads.get("n").and_then(|v| v.as_i64()).unwrap_or(0);
        let mut out = Writes::new();
        out.insert("doubled".into(), json!(n * 2));
        Ok::<_, AgentError>(out)
    });
    kinds
}

#[tokio::test]
async fn builtin_and_custom_kinds_run_like_any_other() {
    let pipeline = Pipeline::from_yaml_str_with(
        "pipeline: mixed
inputs: { n: { type: integer } }
agents:
  twice: { kind: builtin, function: double, reads: [n], writes: [doubled] }
  say:   { kind: echo, text: hello, reads: [doubled], writes: [said] }
",
        &kinds(),
    )
    .unwrap();
    assert_eq!(pipeline.agents()[1].kind().name(), "echo");
    let input = pipeline.check_input(&json!({"n": 21})).unwrap();
    let report = pipeline.run(input, RunOptions::default()).await;
    assert!(report.status.is_success(), "{report:#?}");
    assert_eq!(*report.state["doubled"], json!(42));
    assert_eq!(*report.state["said"], json!("hello"));
}

#[test]
fn kind_errors_name_the_agent_and_where_it_is() {
    let err = Pipeline::from_yaml_str_with(
        "pipeline: bad
agents:
  a: { kind: echo, writes: [said] }
  b: { kind: echo, text: hi, volume: 11, writes: [x] }
  c: { kind: builtin, function: triple, writes: [y] }
  d: { kind: shout, writes: [z] }
",
        &kinds(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("<pipeline>:3:3: agent `a`: an `echo` agent needs `text: STRING`"),
        "{err}"
    );
    assert!(
        err.contains("<pipeline>:4:3: agent `b`: unknown key `volume` for an `echo` agent"),
        "{err}"
    );
    assert!(
        err.contains("agent `c`: no builtin agent `triple` is registered; registered: double"),
        "{err}"
    );
    assert!(
        err.contains(
            "agent `d`: unknown kind `shout`; expected one of: sleep, command, builtin, echo"
        ),
        "{err}"
    );
    // Without the kinds, a file that uses them says which kinds exist.
    let err = Pipeline::from_yaml_str("pipeline: p\nagents:\n  a: { kind: echo, text: hi }\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown kind `echo`; expected one of: sleep, command, builtin"),
        "{err}"
    );
}

#[test]
fn sleep_and_command_agents_still_refuse_unknown_keys() {
    let err = Pipeline::from_yaml_str("pipeline: p\nagents:\n  e: { kind: sleep, loudness: 3 }\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "<pipeline>:3:21: agent `e`: unknown key `loudness`; expected one of: kind, description"
        ),
        "{err}"
    );
}

#[test]
fn a_pipeline_built_in_code_is_validated_like_a_file() {
    let mut builder = Pipeline::builder("loop");
    builder
        .agent_fn("a", |_| async { Ok::<_, AgentError>(Writes::new()) })
        .reads(["y"])
        .writes(["x"]);
    builder
        .agent_fn("b", |_| async { Ok::<_, AgentError>(Writes::new()) })
        .reads(["x"])
        .writes(["y"]);
    let err = builder.build().unwrap_err().to_string();
    assert!(err.contains("dependency cycle: a -> b -> a"), "{err}");
}

/// A `sleep` of its own: writes `replaced` with its `ms` and `tone`.
struct Quiet {
    ms: u64,
    tone: String,
}

#[async_trait::async_trait]
impl Agent for Quiet {
    async fn call(&self, _input: &AgentInput) -> Result<Writes, AgentError> {
        let mut out = Writes::new();
        out.insert("said".into(), json!({"ms": self.ms, "tone": self.tone}));
        Ok(out)
    }
}

#[tokio::test]
async fn a_kind_registered_as_sleep_replaces_the_core_one() {
    let yaml = "pipeline: p\nagents:\n  a: { kind: sleep, ms: 5000, tone: low, writes: [said] }\n";
    // The core's sleep refuses a key that is not its own.
    let err = Pipeline::from_yaml_str(yaml).unwrap_err().to_string();
    assert!(err.contains("agent `a`: unknown key `tone`"), "{err}");

    let mut kinds = AgentKinds::standard();
    kinds.kind(
        "sleep",
        Arc::new(|config| {
            let ms = config.settings["ms"].as_u64().ok_or("`ms` is missing")?;
            let tone = config.settings["tone"]
                .as_str()
                .ok_or("`tone` is missing")?;
            Ok(Arc::new(Quiet {
                ms,
                tone: tone.to_owned(),
            }) as Arc<dyn Agent>)
        }),
    );
    let pipeline = Pipeline::from_yaml_str_with(yaml, &kinds).unwrap();
    assert_eq!(pipeline.agents()[0].kind().name(), "sleep");
    // Nobody waits 5 s: the replacement does not sleep at all.
    assert_eq!(pipeline.agents()[0].expected_duration(), None);
    let input = pipeline.check_input(&json!({})).unwrap();
    let report = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        pipeline.run(input, RunOptions::default()),
    )
    .await
    .expect("the core's 5 s sleep did not run");
    assert!(report.status.is_success(), "{report:#?}");
    assert_eq!(*report.state["said"], json!({"ms": 5000, "tone": "low"}));
}

#[test]
fn core_kind_errors_point_where_they_did() {
    let diagnostics = Pipeline::from_yaml_str_with(
        "pipeline: p
agents:
  a: { kind: command, run: [cat], pool: 0, writes: [x] }
  b: { kind: sleep, run: [cat], env: { K: v }, pool: 2, writes: [y] }
  c: { kind: builtin, function: triple, writes: [z] }
  d: { kind: echo, text: hi, ms: 5, value: 1, writes: [w] }
",
        &kinds(),
    )
    .unwrap_err()
    .diagnostics();
    let shown: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "<pipeline>:3:41: agent `a`: `pool` must be at least 1",
            "<pipeline>:4:3: agent `b`: `run` does not apply to a `sleep` agent",
            "<pipeline>:4:3: agent `b`: `pool` does not apply to a `sleep` agent",
            "<pipeline>:4:3: agent `b`: `env` does not apply to a `sleep` agent",
            "<pipeline>:5:23: agent `c`: no builtin agent `triple` is registered; registered: double",
            "<pipeline>:6:3: agent `d`: `ms` does not apply to a `echo` agent",
            "<pipeline>:6:3: agent `d`: `value` does not apply to a `echo` agent",
        ]
    );
}
