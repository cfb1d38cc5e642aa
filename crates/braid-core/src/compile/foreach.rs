//! `foreach`: an agent that fans out over a list field. The list is a
//! dependency like a required read; the element (`as`, default `item`) and
//! its index (`<as>_index`) are names local to each instance, so they must
//! not clash with a field; the agent's writes are assembled into lists, so
//! none of them may have a merge rule. The keys that tune a fan-out
//! (`as`, `concurrency`, `on_item_failure`, `expected_items`) need
//! `foreach`.

use std::sync::Arc;

use super::Compiler;
use crate::graph::AgentId;
use crate::pipeline::{Foreach, ItemFailure};

/// The element's name when `as` is not given.
pub(super) const DEFAULT_ITEM: &str = "item";

impl Compiler<'_> {
    /// Agent `id`'s fan-out, if it has one, with an edge from each writer
    /// of its list.
    pub(super) fn foreach(&mut self, id: AgentId, who: &str) -> Option<Box<Foreach>> {
        let agent = self.drafts[id].spec;
        let Some(list) = &agent.foreach else {
            let tuning = [
                ("as", agent.item_as.as_ref().map(|s| s.span())),
                ("concurrency", agent.concurrency.as_ref().map(|s| s.span())),
                (
                    "on_item_failure",
                    agent.on_item_failure.as_ref().map(|s| s.span()),
                ),
                (
                    "expected_items",
                    agent.expected_items.as_ref().map(|s| s.span()),
                ),
            ];
            for (key, span) in tuning {
                if let Some(span) = span {
                    self.error(
                        self.source.at(span),
                        format!("{who}: `{key}` applies only to a `foreach` agent; add `foreach: FIELD` or remove `{key}`"),
                    );
                }
            }
            return None;
        };
        let at = self.source.at(list.span());
        let name = list.as_str();
        let field = match self.field_ids.get(name) {
            Some(&f) if self.fields[f].input.is_none() && self.fields[f].writers == [id] => {
                self.error(
                    at,
                    format!("{who}: `foreach: {name}` names a field only this agent writes, so it could never start"),
                );
                return None;
            }
            Some(&f) => f,
            None => {
                let hint = self.field_suggestion(name);
                self.error(
                    at,
                    format!("{who}: `foreach: {name}` names a field that no agent writes and no input declares{hint}"),
                );
                return None;
            }
        };
        self.add_edges(id, field);
        self.edge_fields[id].push((field, "fans out over"));

        let item = agent.item_as.as_ref().map_or(DEFAULT_ITEM, |s| s.as_str());
        let as_at = agent
            .item_as
            .as_ref()
            .and_then(|s| self.source.at(s.span()))
            .or_else(|| self.source.at(list.span()));
        if !super::fields::is_identifier(item) {
            self.error(
                as_at.clone(),
                format!("{who}: `as: {item}`: the element's name must be letters, digits and `_`, starting with a letter or `_`"),
            );
        }
        let index = format!("{item}_index");
        for (local, what) in [(item, "element"), (index.as_str(), "element's index")] {
            let Some(&f) = self.field_ids.get(local) else {
                continue;
            };
            let owner = match self.fields[f].writers.first() {
                _ if self.fields[f].input.is_some() => "a run input".to_owned(),
                Some(&w) => format!("written by `{}`", self.drafts[w].name),
                None => "a field".to_owned(),
            };
            let advice = if agent.item_as.is_some() {
                "choose another `as`"
            } else {
                "name the element with `as:`"
            };
            self.error(
                as_at.clone(),
                format!("{who}: inside each instance `{local}` is the {what}, but `{local}` is already a field ({owner}); {advice}"),
            );
        }
        for w in &agent.writes {
            let written = w.strip_suffix('?').unwrap_or(w.as_str());
            if let Some(&f) = self.field_ids.get(written)
                && let Some(rule) = self.fields[f].merge
            {
                self.error(
                    self.source.at(w.span()),
                    format!("{who} writes `{written}`, which has a merge rule (`{rule}`), but a `foreach` agent's write is the list of its instances' values, in element order; write another field"),
                );
            }
        }
        let concurrency = match &agent.concurrency {
            Some(c) if **c == 0 => {
                self.error(
                    self.source.at(c.span()),
                    format!(
                        "{who}: `concurrency` must be at least 1 (leave it out for the run's limit)"
                    ),
                );
                None
            }
            Some(c) => Some(usize::try_from(**c).unwrap_or(usize::MAX)),
            None => None,
        };
        let on_item_failure = match agent.on_item_failure.as_ref().map(|s| (s.as_str(), s)) {
            None | Some(("fail", _)) => ItemFailure::Fail,
            Some(("skip", _)) => ItemFailure::Skip,
            Some((other, s)) => {
                self.error(
                    self.source.at(s.span()),
                    format!("{who}: `on_item_failure` must be `fail` or `skip`, found `{other}`"),
                );
                ItemFailure::Fail
            }
        };
        Some(Box::new(Foreach {
            field,
            item: Arc::from(item),
            index: Arc::from(index.as_str()),
            reads_item: false,
            reads_index: false,
            concurrency,
            on_item_failure,
            expected_items: agent.expected_items.as_ref().map(|n| **n),
        }))
    }
}
