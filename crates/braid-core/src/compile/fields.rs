//! The field table: inputs first, then every written field in declaration
//! order, each with its writers and merge rule; and the `output` field.

use std::collections::HashSet;
use std::sync::Arc;

use super::{Compiler, Stop};
use crate::merge::MergeRule;
use crate::pipeline::{Field, FieldWrite, InputField};
use crate::spec::AgentSpec;

impl Compiler<'_> {
    /// The declared inputs, with their compiled JSON Schemas.
    pub(super) fn inputs(&mut self) -> Result<(), Stop> {
        let spec = self.spec;
        for (input, schema) in &spec.inputs {
            self.budget("compiling input schemas")?;
            if !is_identifier(input) {
                self.error(
                    schema.at.clone(),
                    format!("input `{input}`: field names must be letters, digits and `_`, starting with a letter or `_`"),
                );
            }
            let validator = match jsonschema::validator_for(&schema.value) {
                Ok(v) => Arc::new(v),
                Err(e) => {
                    self.error(
                        schema.at.clone(),
                        format!("input `{input}`: invalid JSON Schema: {e}"),
                    );
                    continue;
                }
            };
            self.field_ids.insert(input.clone(), self.fields.len());
            self.fields.push(Field {
                name: Arc::from(input.as_str()),
                merge: None,
                writers: Vec::new(),
                input: Some(InputField {
                    schema: Arc::new(schema.value.clone()),
                    default: schema.value.get("default").cloned(),
                    validator,
                }),
            });
        }
        // A group's inputs come from the pipeline around it, checked there.
        if let Some(nested) = &self.nested {
            let any = Arc::new(
                jsonschema::validator_for(&serde_json::json!({})).expect("`{}` is a valid schema"),
            );
            for (input, _) in &nested.inputs {
                if self.field_ids.contains_key(input) {
                    continue;
                }
                self.field_ids.insert(input.clone(), self.fields.len());
                self.fields.push(Field {
                    name: Arc::from(input.as_str()),
                    merge: None,
                    writers: Vec::new(),
                    input: Some(InputField {
                        schema: Arc::new(serde_json::json!({})),
                        default: None,
                        validator: any.clone(),
                    }),
                });
            }
        }
        Ok(())
    }

    /// Every agent's name and writes: the written fields join the table
    /// and each field learns its writers.
    pub(super) fn writes(&mut self) -> Result<(), Stop> {
        for id in 0..self.drafts.len() {
            let (name, spec, at) = {
                let draft = &self.drafts[id];
                (draft.name, draft.spec, draft.at.clone())
            };
            if !is_agent_name(name) {
                self.error(
                    at,
                    format!("agent `{name}`: names must be letters, digits, `_` and `-`, starting with a letter or `_`"),
                );
            }
            self.budget("resolving writes")?;
            let mut seen = HashSet::new();
            for w in &spec.writes {
                // `name?`: an optional write, which the agent may leave out.
                let field = w.strip_suffix('?').unwrap_or(w.as_str());
                let at = self.source.at(w.span());
                if !is_identifier(field) {
                    self.error(at, format!("agent `{name}` writes `{field}`: field names must be letters, digits and `_`, starting with a letter or `_` (mark an optional write with a trailing `?`)"));
                    continue;
                }
                if !seen.insert(field) {
                    self.error(
                        at,
                        format!("agent `{name}` lists `{field}` twice in `writes`"),
                    );
                    continue;
                }
                match self.field_ids.get(field) {
                    Some(&f) if self.fields[f].input.is_some() => self.error(
                        at,
                        format!("agent `{name}` writes `{field}`, which is a run input; inputs are read-only, write a new field instead"),
                    ),
                    Some(&f) => self.fields[f].writers.push(id),
                    None => {
                        self.field_ids.insert(field.to_owned(), self.fields.len());
                        self.fields.push(Field {
                            name: Arc::from(field),
                            merge: None,
                            writers: vec![id],
                            input: None,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The `fields:` section's merge rules.
    pub(super) fn merge_rules(&mut self) {
        let spec = self.spec;
        for (field, settings) in &spec.fields {
            let Some(&f) = self
                .field_ids
                .get(field.as_str())
                .filter(|&&f| self.fields[f].input.is_none())
            else {
                self.error(
                    settings.at.clone(),
                    format!("`fields.{field}` configures a field that no agent writes"),
                );
                continue;
            };
            if let Some(rule) = &settings.value.merge {
                match rule.parse::<MergeRule>() {
                    Ok(rule) => self.fields[f].merge = Some(rule),
                    Err(e) => self.error(
                        self.source.at(rule.span()),
                        format!("`fields.{field}.merge`: {e}"),
                    ),
                }
            }
        }
    }

    /// An agent's writes as the scheduler applies them (fields that did
    /// not resolve are left out: they were reported).
    pub(super) fn resolved_writes(&self, agent: &AgentSpec) -> Arc<[FieldWrite]> {
        agent
            .writes
            .iter()
            .filter_map(|w| {
                let (name, optional) = match w.strip_suffix('?') {
                    Some(name) => (name, true),
                    None => (w.as_str(), false),
                };
                Some((self.field_ids.get(name).copied()?, optional))
            })
            .filter(|&(f, _)| self.fields[f].input.is_none())
            .map(|(f, optional)| FieldWrite {
                field: f,
                name: self.fields[f].name.clone(),
                merge: self.fields[f].merge,
                optional,
            })
            .collect()
    }

    /// `output:` must name a field of the table.
    pub(super) fn output_field(&mut self) {
        let spec = self.spec;
        if let Some(output) = &spec.output
            && !self.field_ids.contains_key(output.value.as_str())
        {
            self.error(
                output.at.clone(),
                format!(
                    "`output: {}` names a field no agent writes and no input declares",
                    output.value
                ),
            );
        }
    }
}

pub(super) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_agent_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}
