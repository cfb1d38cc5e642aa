//! Dependency edges: every reader of a field (by `reads` or a `when`
//! condition) depends on every writer of it, and `after` adds edges where
//! no data flows. Each read edge remembers its reason, so a cycle is
//! reported with why each step depends on the one before. At most
//! [`MAX_DEPENDENCIES`] edges.

use std::collections::HashSet;

use super::{Compiler, Draft, Stop, suggestion};
use crate::condition::{Condition, ConditionError};
use crate::diagnostic::Diagnostic;
use crate::graph::{AgentId, DependencyGraph};
use crate::pipeline::{FieldId, Foreach, MAX_DEPENDENCIES, Read};

impl Compiler<'_> {
    /// Agent `id`'s reads, resolved, with an edge from each writer. A
    /// `foreach` agent's element and index are local to each instance: no
    /// field, no edge (`foreach` records that they are read).
    pub(super) fn reads(
        &mut self,
        id: AgentId,
        who: &str,
        mut foreach: Option<&mut Foreach>,
    ) -> Vec<Read> {
        let agent = self.drafts[id].spec;
        // The element's names, even when `foreach` itself did not resolve
        // (that was reported; reads of them are not errors of their own).
        let locals = agent.foreach.as_ref().map(|_| {
            let item = agent
                .item_as
                .as_ref()
                .map_or(super::foreach::DEFAULT_ITEM, |s| s.as_str());
            (item, format!("{item}_index"))
        });
        let mut reads = Vec::new();
        let mut read_names = HashSet::new();
        for r in &agent.reads {
            let at = self.source.at(r.span());
            let (field, optional) = match r.strip_suffix('?') {
                Some(f) => (f, true),
                None => (r.as_str(), false),
            };
            if !super::fields::is_identifier(field) {
                self.error(at, format!("{who} reads `{field}`: field names must be letters, digits and `_` (mark an optional read with a trailing `?`)"));
                continue;
            }
            if !read_names.insert(field) {
                self.error(at, format!("{who} lists `{field}` twice in `reads`"));
                continue;
            }
            if let Some((item, index)) = &locals
                && (field == *item || field == index)
            {
                if let Some(foreach) = foreach.as_deref_mut() {
                    foreach.reads_item |= field == *item;
                    foreach.reads_index |= field == index;
                }
                continue;
            }
            match self.field_ids.get(field) {
                Some(&f)
                    if !optional
                        && self.fields[f].input.is_none()
                        && self.fields[f].writers == [id] =>
                {
                    self.error(
                        at,
                        format!("{who} reads `{field}`, which only it writes, so it could never start; mark the read optional (`{field}?`) or read a field another agent writes"),
                    )
                }
                Some(&f) => {
                    self.add_edges(id, f);
                    self.edge_fields[id].push((f, "reads"));
                    reads.push(Read { field: f, optional });
                }
                None if optional => {}
                // Its writer is an agent already reported as malformed.
                None if self.spec.broken_writes.contains(field) => {}
                None => {
                    let hint = self.field_suggestion(field);
                    self.error(
                        at,
                        format!(
                            "{who} reads `{field}`, which no agent writes and no input declares{hint}"
                        ),
                    )
                }
            }
        }
        reads
    }

    /// Agent `id`'s `when` condition (compiled already, in `compiled`), with
    /// an edge from each writer of the fields it names.
    pub(super) fn condition(
        &mut self,
        id: AgentId,
        who: &str,
        compiled: &mut impl Iterator<Item = Result<Condition, ConditionError>>,
    ) -> (Option<Condition>, Vec<FieldId>) {
        let mut condition_fields = Vec::new();
        let agent = self.drafts[id].spec;
        let Some(expr) = &agent.when else {
            return (None, condition_fields);
        };
        let at = self.source.at(expr.span());
        let condition = match compiled.next().expect("one compiled condition per `when`") {
            Ok(condition) => condition,
            Err(e @ ConditionError::Malformed(_)) => {
                self.error(
                    at,
                    format!(
                        "{who}: malformed `when` expression `{}`: {e}",
                        abbreviate(expr.as_str())
                    ),
                );
                return (None, condition_fields);
            }
            Err(e) => {
                self.error(at, format!("{who}: `when`: {e}"));
                return (None, condition_fields);
            }
        };
        for field in condition.fields() {
            match self.field_ids.get(field.as_str()) {
                Some(&f) if self.fields[f].input.is_none() && self.fields[f].writers == [id] => {
                    self.error(
                        at.clone(),
                        format!("{who}: `when` refers to `{field}`, which only this agent writes, so the condition could never be evaluated"),
                    )
                }
                Some(&f) => {
                    self.add_edges(id, f);
                    self.edge_fields[id].push((f, "has a condition on"));
                    condition_fields.push(f);
                }
                None if self.spec.broken_writes.contains(field.as_str()) => {}
                None => {
                    let hint = self.field_suggestion(field);
                    self.error(
                        at.clone(),
                        format!(
                            "{who}: `when` refers to `{field}`, which no agent writes and no input declares{hint}"
                        ),
                    )
                }
            }
        }
        (Some(condition), condition_fields)
    }

    /// Agent `id`'s `after` targets (their edges are added after all the
    /// others, by [`Compiler::graph`]).
    pub(super) fn after(&mut self, id: AgentId, who: &str) {
        let agent = self.drafts[id].spec;
        for target in &agent.after {
            let at = self.source.at(target.span());
            match self.agent_ids.get(target.as_str()) {
                Some(&t) if t == id => self.error(at, format!("{who} lists itself in `after`")),
                Some(&t) => self.after_edges.push((t, id)),
                None if self.spec.broken_agents.contains(target.as_str()) => {}
                None => {
                    let hint = suggestion(
                        target.as_str(),
                        self.drafts.iter().map(|d| d.name),
                        &self.errors,
                    );
                    self.error(
                        at,
                        format!(
                            "{who}: `after` names `{}`, which is not an agent of this pipeline{hint}",
                            target.as_str(),
                        ),
                    )
                }
            }
        }
    }

    /// Stops at [`MAX_DEPENDENCIES`] edges, reported at agent `id`.
    pub(super) fn check_dependencies(&mut self, id: AgentId) -> Result<(), Stop> {
        if self.edges.len() >= MAX_DEPENDENCIES {
            let d = too_many_dependencies(&self.drafts[id]);
            self.errors.push(d);
            return Err(Stop);
        }
        Ok(())
    }

    /// The dependency graph of every edge, `after` ones included; its
    /// cycles are reported alongside other problems (the edges that did
    /// resolve are enough to find them).
    pub(super) fn graph(&mut self) -> Result<DependencyGraph, Stop> {
        // (Edges imply agents: the last one is where the limit was reached.)
        self.check_dependencies(self.drafts.len().saturating_sub(1))?;
        self.edges.extend(std::mem::take(&mut self.after_edges));
        match DependencyGraph::build(self.drafts.len(), &self.edges) {
            Ok(graph) => Ok(graph),
            Err(cycles) => {
                let found: Vec<Diagnostic> = cycles
                    .into_iter()
                    .map(|cycle| self.cycle_diagnostic(&cycle.agents))
                    .collect();
                self.errors.extend(found);
                Err(Stop)
            }
        }
    }

    /// A cycle, with the reason for each step; a long one is shown by its
    /// first steps and its length.
    fn cycle_diagnostic(&self, agents: &[AgentId]) -> Diagnostic {
        const SHOWN: usize = 10;
        let drafts = &self.drafts;
        let steps = agents.len() - 1;
        let mut names: Vec<&str> = agents
            .iter()
            .take(SHOWN + 1)
            .map(|&a| drafts[a].name)
            .collect();
        if steps > SHOWN {
            names.push("…");
            names.push(drafts[agents[0]].name);
        }
        let length = if steps > SHOWN {
            format!("; {steps} agents, the first {SHOWN} steps shown")
        } else {
            String::new()
        };
        let reasons: Vec<String> = agents[..agents.len().min(SHOWN + 1)]
            .windows(2)
            .filter_map(|w| {
                let (from, to) = (drafts[w[0]].name, drafts[w[1]].name);
                let field = self.edge_fields[w[1]]
                    .iter()
                    .find(|(f, _)| self.fields[*f].writers.contains(&w[0]));
                match field {
                    Some((f, how)) => Some(format!(
                        "{to} {how} `{}` written by {from}",
                        self.fields[*f].name
                    )),
                    None if drafts[w[1]].spec.after.iter().any(|a| a.as_str() == from) => {
                        Some(format!("{to} runs after {from}"))
                    }
                    None => None,
                }
            })
            .collect();
        Diagnostic::new(
            drafts[agents[0]].at.clone(),
            format!(
                "dependency cycle: {} ({}{length})",
                names.join(" -> "),
                reasons.join("; ")
            ),
        )
    }

    /// Adds an edge from every writer of `field` to `to` (except `to`
    /// itself), up to [`MAX_DEPENDENCIES`] edges in all.
    pub(super) fn add_edges(&mut self, to: AgentId, field: FieldId) {
        for &from in &self.fields[field].writers {
            if self.edges.len() >= MAX_DEPENDENCIES {
                return;
            }
            if from != to {
                self.edges.push((from, to));
            }
        }
    }

    /// ` (did you mean …?)` for a field no one declares.
    pub(super) fn field_suggestion(&self, field: &str) -> String {
        suggestion(
            field,
            self.field_ids.keys().map(String::as_str),
            &self.errors,
        )
    }
}

/// The error for a pipeline with [`MAX_DEPENDENCIES`] edges, at the agent
/// that reached it.
fn too_many_dependencies(draft: &Draft<'_>) -> Diagnostic {
    Diagnostic::new(
        draft.at.clone(),
        format!(
            "the pipeline implies {MAX_DEPENDENCIES} or more dependencies \
             (every reader of a field depends on every writer of it), \
             reached at agent `{}`; the limit is {MAX_DEPENDENCIES}: share fewer fields between many writers and many readers",
            draft.name
        ),
    )
}

/// `text` cut to its first 80 characters, for quoting in a message.
fn abbreviate(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}
