//! Groups (`kind: pipeline`): agents of their own, compiled like a
//! pipeline by a nested [`Compiler`] (same file, same limits and deadline,
//! so every diagnostic keeps its line and column, prefixed with the group's
//! name). The group's pipeline takes as inputs the group's reads, the
//! element and its index (under `foreach`), `round` and the `carry`
//! targets (under `repeat`). Then what ties the group to the pipeline
//! around it is checked: `outputs` name fields of the group, `carry`
//! targets are read optionally inside and take fields written inside,
//! `until` names only the group's fields and `round`, `max` is bounded,
//! and groups nest at most [`MAX_GROUP_DEPTH`] deep.

use std::sync::Arc;

use serde_json::json;

use super::{Compiler, Nested, Stop};
use crate::condition::{Condition, ConditionError};
use crate::diagnostic::Location;
use crate::graph::AgentId;
use crate::pipeline::{Group, MAX_GROUP_DEPTH, MAX_ROUNDS, OnMax, Pipeline, Repeat, RetryPolicy};
use crate::spec::{AgentSpec, GroupSpec, Located, PipelineSpec, Source};
use std::path::{Path, PathBuf};

/// The input every round of a `repeat` group can read: 0, 1, 2, …
pub(crate) const ROUND: &str = "round";

impl Compiler<'_> {
    /// Agent `id`'s group, compiled; `None` when it has errors (reported).
    pub(super) fn group(
        &mut self,
        id: AgentId,
        who: &str,
        defaults: &RetryPolicy,
    ) -> Result<Option<Arc<Group>>, Stop> {
        let draft = &self.drafts[id];
        let (name, agent, at) = (draft.name, draft.spec, draft.at.clone());
        let Some(group) = agent.group.as_deref() else {
            return Ok(None);
        };
        let depth = self.nested.as_ref().map_or(1, |n| n.depth + 1);
        if depth > MAX_GROUP_DEPTH {
            self.error(
                at,
                format!("{who}: groups nest at most {MAX_GROUP_DEPTH} deep (MAX_GROUP_DEPTH)"),
            );
            return Ok(None);
        }
        for key in agent.settings.keys() {
            let at = agent.settings[key].at.clone();
            self.error(
                at,
                format!("{who}: unknown key `{key}` for a group; a group has `agents`, `outputs`, `reads`, `foreach`, `repeat`, `carry` and the keys every agent has"),
            );
        }
        let inputs = self.group_inputs(agent, group);
        // Under `foreach`, the element's index (`<as>_index`).
        let index = agent.foreach.as_ref().map(|_| {
            let item = agent
                .item_as
                .as_ref()
                .map_or(super::foreach::DEFAULT_ITEM, |s| s.as_str());
            format!("{item}_index")
        });
        let nested = Nested {
            defaults: *defaults,
            cache: self.cache_default,
            inputs: inputs.clone(),
            depth,
        };
        // The group's agents: inline, or a pipeline file's.
        let file = match &group.path {
            Some(path) => match self.group_file(who, path) {
                Some(file) => Some(file),
                None => return Ok(None),
            },
            None => None,
        };
        let (spec, source, dir) = match &file {
            Some((spec, source, dir)) => (spec, source.clone(), dir.as_path()),
            None => (&group.spec, self.source.clone(), self.dir),
        };
        let total = self.compiled_agents.get().saturating_add(spec.agents.len());
        if total > self.limits.max_agents {
            self.error(
                at,
                format!(
                    "{who}: with its groups the pipeline would have more than {} agents (max_agents)",
                    self.limits.max_agents
                ),
            );
            return Err(Stop);
        }
        self.compiled_agents.set(total);
        let mut inner = Compiler::new(
            spec,
            dir,
            self.kinds,
            self.limits,
            self.deadline,
            Some(source),
        );
        inner.nested = Some(nested);
        inner.compiled_agents = self.compiled_agents.clone();
        let compiled = inner.run();
        let prefix = match &group.path {
            Some(path) => format!("group `{name}` ({}): ", path.value),
            None => format!("group `{name}`: "),
        };
        let pipeline = match compiled {
            Ok(pipeline) => pipeline,
            Err(Stop) => {
                self.errors.absorb(inner.errors, &prefix);
                // A group past the budget stops the whole compile.
                self.budget("compiling a group")?;
                return Ok(None);
            }
        };
        if let (Some(path), Some((spec, _, _))) = (&group.path, &file)
            && !self.file_inputs(who, path, spec, &inputs, group, index.as_deref())
        {
            return Ok(None);
        }
        let outputs = self.group_outputs(who, group, &pipeline);
        let repeat = self.group_repeat(who, group, &pipeline, at);
        let (Some(outputs), Ok(repeat)) = (outputs, repeat) else {
            return Ok(None);
        };
        // Whatever changes inside changes the group's definition hash.
        let inner_hashes: Vec<&str> = pipeline
            .agents
            .iter()
            .map(|a| a.definition_hash())
            .collect();
        if let Some(own) = self.own_definitions.get_mut(id) {
            own["group"] = json!({
                "agents": inner_hashes,
                "outputs": group.outputs.iter().map(|(k, v)| (k.clone(), json!(v.value))).collect::<serde_json::Map<_, _>>(),
                "carry": group.carry.iter().map(|(k, v)| (k.clone(), json!(v.value))).collect::<serde_json::Map<_, _>>(),
                "repeat": group.repeat.as_ref().map(|r| json!({
                    "until": r.until.as_str(),
                    "max": r.max.as_ref().map(|m| **m),
                    "on_max": r.on_max.as_ref().map(|o| o.as_str()),
                })),
            });
        }
        let writes = outputs
            .iter()
            .filter_map(|(parent, _)| self.field_ids.get(&**parent).copied())
            .collect();
        Ok(Some(Arc::new(Group {
            pipeline: Arc::new(pipeline),
            outputs,
            writes,
            file: group.path.as_ref().map(|p| p.value.clone()),
            repeat,
        })))
    }

    /// A group's `path:`: the pipeline file, parsed, with where its
    /// agents run from. Only a pipeline loaded from a file may name one
    /// (a pipeline sent as text, to a server, names no files), and only a
    /// file in its folder or below.
    fn group_file(
        &mut self,
        who: &str,
        path: &Located<String>,
    ) -> Option<(PipelineSpec, Source, PathBuf)> {
        if self.source.file.is_none() {
            self.error(
                path.at.clone(),
                format!("{who}: `path: {}`: a group file can only be named by a pipeline loaded from a file", path.value),
            );
            return None;
        }
        let relative = Path::new(&path.value);
        let inside = relative.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
        if !inside || path.value.is_empty() {
            self.error(
                path.at.clone(),
                format!("{who}: `path: {}` must name a file in the pipeline's folder or below (no `..`, not absolute)", path.value),
            );
            return None;
        }
        let full = self.dir.join(relative);
        // Spelled inside is not enough: a link inside may point anywhere.
        if let (Ok(real), Ok(folder)) = (full.canonicalize(), self.dir.canonicalize())
            && !real.starts_with(&folder)
        {
            self.error(
                path.at.clone(),
                format!(
                    "{who}: `path: {}` leads outside the pipeline's folder (to {})",
                    path.value,
                    real.display()
                ),
            );
            return None;
        }
        let text = match super::load::read_text(&full, self.limits) {
            Ok(text) => text,
            Err(crate::diagnostic::LoadError::Read { source, .. }) => {
                self.error(
                    path.at.clone(),
                    format!(
                        "{who}: cannot read `path: {}` ({}): {source}",
                        path.value,
                        full.display()
                    ),
                );
                return None;
            }
            Err(crate::diagnostic::LoadError::Invalid { diagnostics }) => {
                self.errors.extend(diagnostics);
                return None;
            }
        };
        let source = Source {
            file: Some(Arc::from(full.as_path())),
        };
        let kinds = self.kinds;
        let checks_keys = |kind: &str| kinds.get(kind).is_some_and(crate::kinds::Kind::checks_keys);
        let body = text.strip_prefix('\u{feff}').unwrap_or(&text);
        match crate::spec::parse(body, &source, self.limits, &checks_keys) {
            Ok(spec) => {
                let dir = full.parent().map(Path::to_path_buf).unwrap_or_default();
                Some((spec, source, dir))
            }
            Err(errors) => {
                self.errors
                    .absorb(errors, &format!("{who} (`path: {}`): ", path.value));
                None
            }
        }
    }

    /// A group file's `inputs` are mapped from the group's reads (and the
    /// element, under `foreach`): each one without a default must be given,
    /// and nothing may be given that the file does not declare.
    fn file_inputs(
        &mut self,
        who: &str,
        path: &Located<String>,
        spec: &PipelineSpec,
        given: &[(String, Option<Location>)],
        group: &GroupSpec,
        index: Option<&str>,
    ) -> bool {
        let mut ok = true;
        // Given by braid, not read from the parent: `round`, the element's
        // index, and what a loop carries.
        let implicit =
            |name: &str| name == ROUND || Some(name) == index || group.carry.contains_key(name);
        for (name, at) in given {
            if !spec.inputs.contains_key(name) && !implicit(name) {
                ok = false;
                self.error(
                    at.clone(),
                    format!("{who}: `{name}` is given to `path: {}`, which declares no input `{name}` (its inputs: {})", path.value, spec.inputs.keys().map(String::as_str).collect::<Vec<_>>().join(", ")),
                );
            }
        }
        for (name, schema) in &spec.inputs {
            let has_default = schema.value.get("default").is_some();
            let always_given =
                given.iter().any(|(g, _)| g == name) && !group.carry.contains_key(name);
            if !has_default && !always_given {
                ok = false;
                self.error(
                    path.at.clone(),
                    format!("{who}: `path: {}` needs input `{name}`, which the group does not read (add it to `reads`, or give it a default in the file)", path.value),
                );
            }
        }
        ok
    }

    /// The inputs of a group's pipeline, each with where it is said.
    fn group_inputs(
        &self,
        agent: &AgentSpec,
        group: &GroupSpec,
    ) -> Vec<(String, Option<Location>)> {
        let mut inputs: Vec<(String, Option<Location>)> = agent
            .reads
            .iter()
            .map(|r| {
                let name = r.strip_suffix('?').unwrap_or(r.as_str());
                (name.to_owned(), self.source.at(r.span()))
            })
            .collect();
        if let Some(list) = &agent.foreach {
            let item = agent
                .item_as
                .as_ref()
                .map_or(super::foreach::DEFAULT_ITEM, |s| s.as_str());
            let at = self.source.at(list.span());
            inputs.push((item.to_owned(), at.clone()));
            inputs.push((format!("{item}_index"), at));
        }
        if let Some(repeat) = &group.repeat {
            inputs.push((ROUND.to_owned(), self.source.at(repeat.until.span())));
        }
        for (target, from) in &group.carry {
            inputs.push((target.clone(), from.at.clone()));
        }
        inputs
    }

    /// `outputs:` each name a field of the group.
    fn group_outputs(
        &mut self,
        who: &str,
        group: &GroupSpec,
        pipeline: &Pipeline,
    ) -> Option<Vec<(Arc<str>, crate::pipeline::FieldId)>> {
        let mut outputs = Vec::with_capacity(group.outputs.len());
        let mut ok = true;
        for (parent, inner) in &group.outputs {
            match pipeline.fields.iter().position(|f| *f.name == *inner.value) {
                Some(f) => outputs.push((Arc::from(parent.as_str()), f)),
                None => {
                    ok = false;
                    let names = pipeline.fields.iter().map(|f| &*f.name);
                    let hint = super::suggestion(&inner.value, names, &self.errors);
                    self.error(
                        inner.at.clone(),
                        format!("{who}: `outputs.{parent}` names `{}`, which is not a field of the group{hint}", inner.value),
                    );
                }
            }
        }
        ok.then_some(outputs)
    }

    /// `repeat:` and `carry:`; `Err` when they have errors (reported).
    fn group_repeat(
        &mut self,
        who: &str,
        group: &GroupSpec,
        pipeline: &Pipeline,
        at: Option<Location>,
    ) -> Result<Option<Repeat>, ()> {
        let field = |name: &str| pipeline.fields.iter().position(|f| *f.name == *name);
        let Some(spec) = &group.repeat else {
            if let Some((target, from)) = group.carry.first() {
                self.error(
                    from.at.clone(),
                    format!("{who}: `carry.{target}` only means something with `repeat`: add `repeat: {{ until: …, max: N }}` or remove `carry`"),
                );
                return Err(());
            }
            return Ok(None);
        };
        let mut ok = true;
        let max = match &spec.max {
            None => {
                ok = false;
                self.error(
                    self.source.at(spec.until.span()).or(at.clone()),
                    format!("{who}: `repeat` needs `max`, the most rounds (at most {MAX_ROUNDS})"),
                );
                0
            }
            Some(m) if **m == 0 || **m > MAX_ROUNDS => {
                ok = false;
                self.error(
                    self.source.at(m.span()),
                    format!(
                        "{who}: `repeat.max` must be from 1 to {MAX_ROUNDS}, found {}",
                        **m
                    ),
                );
                0
            }
            Some(m) => u32::try_from(**m).unwrap_or(u32::MAX),
        };
        let on_max = match spec.on_max.as_ref().map(|s| (s.as_str(), s)) {
            None | Some(("fail", _)) => OnMax::Fail,
            Some(("continue", _)) => OnMax::Continue,
            Some((other, s)) => {
                ok = false;
                self.error(
                    self.source.at(s.span()),
                    format!("{who}: `repeat.on_max` must be `fail` or `continue`, found `{other}`"),
                );
                OnMax::Fail
            }
        };
        let until_at = self.source.at(spec.until.span());
        let deadline = self.deadline;
        let parsed = Condition::parse_many(&[spec.until.as_str()], self.limits, &|| {
            deadline.check("").is_err()
        })
        .pop();
        let mut until_fields = Vec::new();
        let until = match parsed {
            Some(Ok(condition)) => {
                for name in condition.fields() {
                    match field(name) {
                        Some(f) => until_fields.push(f),
                        None => {
                            ok = false;
                            self.error(
                                until_at.clone(),
                                format!("{who}: `repeat.until` refers to `{name}`, which is not a field of the group (it may name the group's fields and `{ROUND}`)"),
                            );
                        }
                    }
                }
                Some(condition)
            }
            Some(Err(e @ ConditionError::Malformed(_))) => {
                self.error(
                    until_at,
                    format!("{who}: malformed `repeat.until` expression: {e}"),
                );
                None
            }
            Some(Err(e)) => {
                self.error(until_at, format!("{who}: `repeat.until`: {e}"));
                None
            }
            None => None,
        };
        let mut carry = Vec::with_capacity(group.carry.len());
        for (target, from) in &group.carry {
            let (Some(t), Some(f)) = (field(target), field(&from.value)) else {
                ok = false;
                self.error(
                    from.at.clone(),
                    format!(
                        "{who}: `carry.{target}` names `{}`, which is not a field of the group",
                        from.value
                    ),
                );
                continue;
            };
            if pipeline.fields[f].writers.is_empty() {
                ok = false;
                self.error(
                    from.at.clone(),
                    format!(
                        "{who}: `carry.{target}` takes `{}`, which no agent of the group writes",
                        from.value
                    ),
                );
            }
            // Absent in round 0: every reader must read it optionally.
            for inner in &pipeline.agents {
                if inner.reads.iter().any(|r| r.field == t && !r.optional) {
                    ok = false;
                    self.error(
                        inner.location.clone(),
                        format!("{who}: agent `{}` reads `{target}`, which is carried from the previous round and absent in round 0; read it as `{target}?`", inner.name),
                    );
                }
            }
            carry.push((t, f));
        }
        let round = field(ROUND);
        match (until, round, ok) {
            (Some(until), Some(round), true) => Ok(Some(Repeat {
                until,
                until_fields,
                max,
                on_max,
                round,
                carry,
                expected_rounds: spec.expected_rounds.as_ref().map(|n| **n),
            })),
            _ => Err(()),
        }
    }
}

/// What a group's `AgentDef` shows as its kind, and its runner: never
/// called (the scheduler runs the group's pipeline instead), and saying
/// so if it were.
pub(super) fn group_kind() -> crate::kinds::Built {
    (
        crate::kinds::AgentKind::Other {
            kind: "pipeline".to_owned(),
        },
        Arc::new(GroupRunner),
    )
}

/// See [`group_kind`].
struct GroupRunner;

#[async_trait::async_trait]
impl crate::agent::Agent for GroupRunner {
    async fn call(
        &self,
        _: &crate::agent::AgentInput,
    ) -> Result<crate::agent::Writes, crate::agent::AgentError> {
        Err(crate::agent::AgentError::Other(
            "a group runs its own agents; it is not called as one agent".to_owned(),
        ))
    }
}
