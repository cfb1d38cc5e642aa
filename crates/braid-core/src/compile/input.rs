//! `kind: input`: an agent that waits for an answer from outside the run
//! (a person, or any other system). Its own keys are `prompt`, `schema` and
//! `default`; `timeout` (a key every agent has) is how long it waits.
//!
//! Checked here, once: the prompt is text, the schema compiles, the default
//! fits the schema, the agent writes exactly one field (the answer), and it
//! is neither a `foreach` agent nor inside a group. A pipeline that waits
//! must be able to keep a waiting run: `checkpoint: none` is refused.

use std::sync::Arc;

use serde_json::Value;

use super::Compiler;
use crate::graph::AgentId;
use crate::pipeline::{InputSpec, MAX_PROMPT_BYTES};
use crate::spec::AgentSpec;

/// The keys of `kind: input` besides those every agent has.
pub(crate) const INPUT_KEYS: &[&str] = &["prompt", "schema", "default"];

impl Compiler<'_> {
    /// Agent `id`'s question, checked; `None` for other kinds, or when it
    /// has errors (reported).
    pub(super) fn input(&mut self, id: AgentId, who: &str) -> Option<Arc<InputSpec>> {
        let draft = &self.drafts[id];
        let (agent, at): (&AgentSpec, _) = (draft.spec, draft.at.clone());
        if agent.kind.as_str() != "input" {
            return None;
        }
        let before = self.errors.len();
        for (key, value) in &agent.settings {
            if !INPUT_KEYS.contains(&key.as_str()) {
                self.error(
                    value.at.clone(),
                    format!(
                        "{who}: unknown key `{key}` for an `input` agent; it takes {} and the keys every agent has",
                        INPUT_KEYS.join(", ")
                    ),
                );
            }
        }
        if self.nested.is_some() {
            self.error(
                at.clone(),
                format!("{who}: an `input` agent cannot be inside a group (`kind: pipeline`); put it in the pipeline around the group"),
            );
        }
        if let Some(foreach) = &agent.foreach {
            self.error(
                self.source.at(foreach.span()),
                format!("{who}: an `input` agent waits for one answer; it cannot have `foreach`"),
            );
        }
        match agent.writes.as_slice() {
            [one] if !one.ends_with('?') => {}
            [one] => self.error(
                self.source.at(one.span()),
                format!(
                    "{who}: an `input` agent always writes its answer; `{}` cannot be optional",
                    one.as_str()
                ),
            ),
            _ => self.error(
                at.clone(),
                format!(
                    "{who}: an `input` agent writes exactly one field (the answer), found {}",
                    agent.writes.len()
                ),
            ),
        }
        let prompt = match agent.settings.get("prompt") {
            Some(p) => {
                match &p.value {
                    Value::String(s) if s.len() <= MAX_PROMPT_BYTES => s.clone(),
                    Value::String(s) => {
                        self.error(
                        p.at.clone(),
                        format!("{who}: `prompt` is {} bytes; at most {MAX_PROMPT_BYTES} are allowed", s.len()),
                    );
                        String::new()
                    }
                    other => {
                        self.error(
                            p.at.clone(),
                            format!("{who}: `prompt` must be text, found `{other}`"),
                        );
                        String::new()
                    }
                }
            }
            None => {
                self.error(
                    at.clone(),
                    format!("{who}: an `input` agent needs a `prompt`: the question it asks"),
                );
                String::new()
            }
        };
        let schema = agent.settings.get("schema");
        let validator = match schema {
            None => Some(
                jsonschema::validator_for(&serde_json::json!({})).expect("`{}` is a valid schema"),
            ),
            Some(s) if !s.value.is_object() => {
                self.error(
                    s.at.clone(),
                    format!(
                        "{who}: `schema` must be a JSON Schema object, found `{}`",
                        s.value
                    ),
                );
                None
            }
            Some(s) => match jsonschema::validator_for(&s.value) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.error(
                        s.at.clone(),
                        format!("{who}: `schema` is not a valid JSON Schema: {e}"),
                    );
                    None
                }
            },
        };
        let default = agent.settings.get("default");
        if let (Some(default), Some(validator)) = (default, &validator) {
            for error in validator.iter_errors(&default.value) {
                let path = error.instance_path().to_string();
                self.error(
                    default.at.clone(),
                    format!("{who}: `default` does not fit `schema`: `{path}` {error}"),
                );
            }
        }
        if self.errors.len() > before {
            return None;
        }
        let field = agent.writes[0].as_str();
        Some(Arc::new(InputSpec {
            prompt,
            schema: schema.map(|s| s.value.clone()),
            validator: Arc::new(validator?),
            default: default.map(|d| Arc::new(d.value.clone())),
            field: Arc::from(field),
        }))
    }
}

/// What an input agent's `AgentDef` shows as its kind, and its runner:
/// never called (the scheduler waits for the answer instead).
pub(super) fn input_kind() -> crate::kinds::Built {
    (
        crate::kinds::AgentKind::Other {
            kind: "input".to_owned(),
        },
        Arc::new(InputRunner),
    )
}

/// See [`input_kind`].
struct InputRunner;

#[async_trait::async_trait]
impl crate::agent::Agent for InputRunner {
    async fn call(
        &self,
        _: &crate::agent::AgentInput,
    ) -> Result<crate::agent::Writes, crate::agent::AgentError> {
        Err(crate::agent::AgentError::Other(
            "an `input` agent waits for an answer; it is not called".to_owned(),
        ))
    }
}
