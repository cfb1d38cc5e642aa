//! Write-write races: two writers of a field with no merge rule must be
//! ordered by a dependency path, or the result depends on timing. The
//! writers of a field are all ordered exactly when each one reaches the
//! next in topological order, so only those neighbouring pairs are asked
//! about, all at once (see `DependencyGraph::reaches_all`), and each racing
//! field gets one diagnostic listing its writers.

use super::{Compiler, Stop};
use crate::diagnostic::Location;
use crate::graph::{AgentId, DependencyGraph};
use crate::merge::MergeRule;
use crate::pipeline::FieldId;

impl Compiler<'_> {
    /// Reports every field written by unordered writers.
    pub(super) fn races(&mut self, graph: &DependencyGraph) -> Result<(), Stop> {
        self.budget("looking for write-write races")?;
        let mut racy_fields: Vec<(FieldId, Vec<AgentId>)> = Vec::new();
        let mut queries: Vec<(AgentId, AgentId)> = Vec::new();
        for (f, field) in self.fields.iter().enumerate() {
            if field.merge.is_some() || field.writers.len() < 2 {
                continue;
            }
            let mut writers = field.writers.clone();
            writers.sort_unstable_by_key(|&a| graph.rank(a));
            queries.extend(writers.windows(2).map(|w| (w[0], w[1])));
            racy_fields.push((f, writers));
        }
        let deadline = self.deadline;
        let Some(answers) = graph.reaches_all(&queries, &|| deadline.check("").is_err()) else {
            self.budget("looking for write-write races")?;
            unreachable!("reaches_all gives up only when the budget is spent")
        };
        let mut answers = answers.into_iter();
        for (f, writers) in racy_fields {
            // Writers on either side of an unordered neighbouring pair.
            let mut involved: Vec<AgentId> = Vec::new();
            let mut first: Option<(AgentId, AgentId)> = None;
            for w in writers.windows(2) {
                if !answers.next().expect("one answer per pair") {
                    first.get_or_insert((w[0], w[1]));
                    involved.extend([w[0], w[1]]);
                }
            }
            let Some((a, b)) = first else { continue };
            involved.sort_unstable();
            involved.dedup();
            self.race(f, a.min(b), a.max(b), &involved);
        }
        Ok(())
    }

    /// The diagnostic for field `f`, whose writers `a` and `b` (and the
    /// rest of `involved`) are not ordered.
    fn race(&mut self, f: FieldId, a: AgentId, b: AgentId, involved: &[AgentId]) {
        let drafts = &self.drafts;
        let field = &self.fields[f];
        let at: Option<Location> = drafts[b]
            .spec
            .writes
            .iter()
            .find(|w| w.as_str() == &*field.name)
            .and_then(|w| self.source.at(w.span()));
        let who = if involved.len() == 2 {
            format!(
                "agents `{}` and `{}` both write it and neither depends on the other",
                drafts[a].name, drafts[b].name
            )
        } else {
            const SHOWN: usize = 5;
            let names: Vec<String> = involved
                .iter()
                .take(SHOWN)
                .map(|&x| format!("`{}`", drafts[x].name))
                .collect();
            let more = involved.len().saturating_sub(SHOWN);
            format!(
                "agents {}{} write it without an order between them (`{}` and `{}` do not depend on each other)",
                names.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                },
                drafts[a].name,
                drafts[b].name,
            )
        };
        let message = format!(
            "write-write race on `{f}`: {who}; \
             order them with `after: [{a}]` on `{b}`, or declare how concurrent writes combine: \
             `fields: {{ {f}: {{ merge: append }} }}` (one of {rules})",
            f = field.name,
            a = drafts[a].name,
            b = drafts[b].name,
            rules = MergeRule::NAMES.join(", "),
        );
        self.error(at, message);
    }
}
