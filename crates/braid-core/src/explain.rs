//! `braid explain`: the derived graph, its stages and critical path, and
//! what running it in parallel should save, as JSON, text, DOT or Mermaid.

use std::fmt::Write as _;

use serde::Serialize;

use crate::graph::AgentId;
use crate::pipeline::Pipeline;
use crate::report::AgentReport;

/// One agent as `explain` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainedAgent {
    /// Its name.
    pub name: String,
    /// What it is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its kind (`sleep`, `command`, …).
    pub kind: String,
    /// What it reads (optional reads end in `?`).
    pub reads: Vec<String>,
    /// What it writes.
    pub writes: Vec<String>,
    /// Its `when` condition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Its expected duration in ms, when known (for a `foreach` agent: all
    /// its instances, in waves of its `concurrency`; `None` without
    /// `expected_items:`).
    pub expected_ms: Option<f64>,
    /// How it fans out, for a `foreach` agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub foreach: Option<ExplainedForeach>,
    /// For a group (`kind: pipeline`): its own agents, explained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<Box<Explanation>>,
    /// For a group with `repeat`: its loop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat: Option<ExplainedRepeat>,
    /// The tools it may call (`tools:`), as `name (kind)`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// How many tool calls an attempt may make, when it has tools.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tool_calls: Option<u32>,
}

/// A group's `repeat`, as `explain` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainedRepeat {
    /// The condition that ends the loop.
    pub until: String,
    /// The most rounds.
    pub max: u32,
    /// `fail` or `continue`.
    pub on_max: &'static str,
    /// The `expected_rounds:` hint.
    pub expected_rounds: Option<u32>,
}

/// A `foreach` agent's fan-out, as `explain` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainedForeach {
    /// The list field it fans out over.
    pub field: String,
    /// The element's name inside an instance.
    #[serde(rename = "as")]
    pub item: String,
    /// Most instances in flight (`None`: the run's limit).
    pub concurrency: Option<usize>,
    /// `fail` or `skip`.
    pub on_item_failure: &'static str,
    /// The `expected_items:` hint.
    pub expected_items: Option<u64>,
}

/// The most edges an [`Explanation`] lists (and DOT or Mermaid draws): a
/// field with many writers and many readers implies writers × readers
/// edges, which no reader of a picture needs and no server should hold.
/// `edges_total` still counts them all.
pub const MAX_EXPLAINED_EDGES: usize = 5_000;

/// The derived graph and the timing estimates it implies.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The pipeline's name.
    pub pipeline: String,
    /// Every agent, in declaration order.
    pub agents: Vec<ExplainedAgent>,
    /// `[from, to]`: `to` waits for `from`; the first
    /// [`MAX_EXPLAINED_EDGES`] in agent order.
    pub edges: Vec<[String; 2]>,
    /// How many edges the graph has, listed or not.
    pub edges_total: usize,
    /// Agents grouped by depth (for reading; the scheduler has no stages).
    pub stages: Vec<Vec<String>>,
    /// The longest path by expected duration (by agent count when a
    /// duration is unknown).
    pub critical_path: Vec<String>,
    /// Sum of expected durations: one agent at a time. `None` when a duration is unknown.
    pub sequential_ms: Option<f64>,
    /// Length of the critical path: as fast as the dependencies allow,
    /// with no concurrency limit. `None` when a duration is unknown.
    pub parallel_ms: Option<f64>,
    /// `sequential_ms / parallel_ms`.
    pub speedup: Option<f64>,
}

/// Ends of runs' agents closer than this (ms) count as equal when the
/// critical path of a run is traced: the earlier-declared agent is taken,
/// as [`Pipeline::explain`] does for equal estimates, so a run whose agents
/// took about what was expected shows the path `explain` shows.
pub const CRITICAL_PATH_TIE_MS: f64 = 5.0;

impl Pipeline {
    /// The critical path of a run as it happened: from the agent that ended
    /// last, back through the dependency each agent waited for longest
    /// (the one that ended last), to an agent with none. Agents that did
    /// not run (skipped, pending) are not on it. `agents` is the run's
    /// report (or stored records) by name; names it lacks are left out.
    pub fn run_critical_path(&self, agents: &crate::report::ByName<AgentReport>) -> Vec<String> {
        let end = |a: AgentId| {
            let report = agents.get(&*self.agents[a].name)?;
            Some(report.start_ms? + report.duration_ms.unwrap_or(0.0))
        };
        // The later end, or on a tie the earlier-declared agent.
        let later = |x: AgentId, ex: f64, y: AgentId, ey: f64| {
            if (ex - ey).abs() < CRITICAL_PATH_TIE_MS {
                x.min(y)
            } else if ex > ey {
                x
            } else {
                y
            }
        };
        let pick = |candidates: &mut dyn Iterator<Item = AgentId>| {
            let mut best: Option<(AgentId, f64)> = None;
            for a in candidates {
                let Some(e) = end(a) else { continue };
                best = Some(match best {
                    None => (a, e),
                    Some((b, eb)) => {
                        let w = later(a, e, b, eb);
                        (w, if w == a { e } else { eb })
                    }
                });
            }
            best.map(|(a, _)| a)
        };
        let Some(mut last) = pick(&mut (0..self.agents.len())) else {
            return Vec::new();
        };
        let mut path = vec![last];
        while let Some(prev) = pick(&mut self.graph.dependencies(last).iter().copied()) {
            path.push(prev);
            last = prev;
        }
        path.reverse();
        path.into_iter()
            .map(|a| self.agents[a].name.to_string())
            .collect()
    }

    /// The graph, stages, critical path and timing estimates.
    pub fn explain(&self) -> Explanation {
        let name = |a: AgentId| self.agents[a].name.to_string();
        // (one at a time, as fast as allowed) per agent: a fan-out's
        // instances one after another, or in waves of its concurrency.
        let costs: Vec<Option<(f64, f64)>> = self
            .agents
            .iter()
            .map(|a| {
                let one = match &a.group {
                    // A group: its own estimate, once per expected round.
                    Some(group) => {
                        let inner = group.pipeline.explain().parallel_ms?;
                        let rounds = match &group.repeat {
                            Some(r) => f64::from(r.expected_rounds?),
                            None => 1.0,
                        };
                        inner * rounds
                    }
                    None => a.expected_duration()?.as_secs_f64() * 1e3,
                };
                match a.foreach.as_deref() {
                    None => Some((one, one)),
                    Some(f) => {
                        let items = f.expected_items? as f64;
                        let waves = match f.concurrency {
                            Some(c) => (items / c as f64).ceil(),
                            None => items.min(1.0),
                        };
                        Some((one * items, one * waves))
                    }
                }
            })
            .collect();
        let durations: Vec<Option<f64>> = costs.iter().map(|c| c.map(|(_, p)| p)).collect();
        let known = durations.iter().all(Option::is_some);
        let (path, total) = self.graph.critical_path(|a| {
            if known {
                durations[a].unwrap_or(0.0)
            } else {
                1.0
            }
        });
        let sequential_ms = known.then(|| costs.iter().flatten().map(|(s, _)| s).sum::<f64>());
        let parallel_ms = known.then_some(total);
        let speedup = sequential_ms
            .zip(parallel_ms)
            .filter(|&(_, p)| p > 0.0)
            .map(|(s, p)| s / p);
        Explanation {
            pipeline: self.name.to_string(),
            agents: self
                .agents
                .iter()
                .enumerate()
                .map(|(i, a)| ExplainedAgent {
                    name: a.name.to_string(),
                    description: a.description.clone(),
                    kind: a.kind.name().to_owned(),
                    reads: self.reads_of(i),
                    writes: self.writes_of(i),
                    when: a.when.as_ref().map(|c| c.source().to_owned()),
                    expected_ms: durations[i],
                    foreach: a.foreach.as_deref().map(|f| ExplainedForeach {
                        field: self.field_name(f.field).to_owned(),
                        item: f.item.to_string(),
                        concurrency: f.concurrency,
                        on_item_failure: f.on_item_failure.as_str(),
                        expected_items: f.expected_items,
                    }),
                    group: a.group.as_ref().map(|g| Box::new(g.pipeline.explain())),
                    repeat: a.group.as_ref().and_then(|g| g.repeat.as_ref()).map(|r| {
                        ExplainedRepeat {
                            until: r.until.source().to_owned(),
                            max: r.max,
                            on_max: match r.on_max {
                                crate::pipeline::OnMax::Fail => "fail",
                                crate::pipeline::OnMax::Continue => "continue",
                            },
                            expected_rounds: r.expected_rounds,
                        }
                    }),
                    tools: a
                        .tools()
                        .iter()
                        .map(|t| format!("{} ({})", t.name(), t.kind()))
                        .collect(),
                    max_tool_calls: a.tools.as_ref().map(|t| t.max_calls),
                })
                .collect(),
            edges: self
                .graph
                .edges()
                .take(MAX_EXPLAINED_EDGES)
                .map(|(from, to)| [name(from), name(to)])
                .collect(),
            edges_total: self.graph.edges().count(),
            stages: self
                .graph
                .stages()
                .into_iter()
                .map(|stage| stage.into_iter().map(name).collect())
                .collect(),
            critical_path: path.into_iter().map(name).collect(),
            sequential_ms,
            parallel_ms,
            speedup,
        }
    }
}

impl ExplainedForeach {
    /// `one instance per element of docs (as doc, 16 at a time, on_item_failure: skip)`.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "one instance per element of `{}` (as `{}`",
            self.field, self.item
        );
        if let Some(c) = self.concurrency {
            let _ = write!(out, ", {c} at a time");
        }
        let _ = write!(out, ", on_item_failure: {}", self.on_item_failure);
        if let Some(n) = self.expected_items {
            let _ = write!(out, ", about {n} items");
        }
        out.push(')');
        out
    }
}

impl Explanation {
    fn on_critical_path(&self, from: &str, to: &str) -> bool {
        self.critical_path
            .windows(2)
            .any(|w| w[0] == from && w[1] == to)
    }

    /// A human-readable summary.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "pipeline {}: {} agents, {} edges",
            self.pipeline,
            self.agents.len(),
            self.edges_total
        );
        for (i, stage) in self.stages.iter().enumerate() {
            let _ = writeln!(out, "  stage {i}: {}", stage.join(", "));
        }
        for a in &self.agents {
            if !a.tools.is_empty() {
                let _ = writeln!(
                    out,
                    "  {}: calls tools {} (at most {} calls an attempt; each call is a step of the run)",
                    a.name,
                    a.tools.join(", "),
                    a.max_tool_calls.unwrap_or_default()
                );
            }
            if let Some(f) = &a.foreach {
                let _ = writeln!(out, "  {}: {}", a.name, f.describe());
            }
            if let Some(group) = &a.group {
                let mut what = format!(
                    "  {}: a group of {} agents ({})",
                    a.name,
                    group.agents.len(),
                    group.critical_path.join(" -> ")
                );
                if let Some(r) = &a.repeat {
                    let _ = write!(
                        what,
                        ", repeated until `{}` (at most {} rounds, on_max: {}{})",
                        r.until,
                        r.max,
                        r.on_max,
                        r.expected_rounds
                            .map(|n| format!(", about {n}"))
                            .unwrap_or_default()
                    );
                }
                let _ = writeln!(out, "{what}");
            }
        }
        let _ = writeln!(out, "critical path: {}", self.critical_path.join(" -> "));
        match (self.sequential_ms, self.parallel_ms, self.speedup) {
            (Some(s), Some(p), speedup) => {
                let _ = writeln!(
                    out,
                    "estimated: {s:.0} ms one at a time, {p:.0} ms in parallel{}",
                    speedup
                        .map(|x| format!(" ({x:.2}x faster)"))
                        .unwrap_or_default()
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "estimated: unknown (give command agents an `expected:` duration, \
                     foreach agents `expected_items:` and repeat groups `expected_rounds:`)"
                );
            }
        }
        out
    }

    /// Graphviz DOT; the critical path is drawn bold red.
    pub fn to_dot(&self) -> String {
        let mut out = format!(
            "digraph {:?} {{\n  rankdir=LR;\n  node [shape=box, style=rounded];\n",
            self.pipeline
        );
        for a in &self.agents {
            let bold = if self.critical_path.contains(&a.name) {
                ", color=red, penwidth=2"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {:?} [label={:?}{bold}];",
                a.name,
                match &a.foreach {
                    Some(f) => format!("{}\n{}\nforeach {}", a.name, a.kind, f.field),
                    None => format!("{}\n{}", a.name, a.kind),
                }
            );
        }
        for a in &self.agents {
            if let Some(group) = &a.group {
                group.dot_cluster(&mut out, &a.name, a.repeat.as_ref());
            }
        }
        for [from, to] in &self.edges {
            let bold = if self.on_critical_path(from, to) {
                " [color=red, penwidth=2]"
            } else {
                ""
            };
            let _ = writeln!(out, "  {from:?} -> {to:?}{bold};");
        }
        if let Some(more) = self.edges_not_listed() {
            let _ = writeln!(out, "  // and {more} more edges, not drawn");
        }
        out.push_str("}\n");
        out
    }

    /// A group's agents as a Mermaid subgraph beside the group's node.
    fn mermaid_subgraph(
        &self,
        out: &mut String,
        gid: &str,
        group: &str,
        repeat: Option<&ExplainedRepeat>,
    ) {
        let label = match repeat {
            Some(r) => format!("{group}: repeat until {} (max {})", r.until, r.max),
            None => format!("{group}: group"),
        }
        .replace('"', "#quot;");
        let id = |name: &str| format!("{gid}__{}", name.replace('-', "_"));
        let _ = writeln!(out, "  subgraph {gid}_agents [\"{label}\"]");
        for a in &self.agents {
            let _ = writeln!(out, "    {}[\"{} ({})\"]", id(&a.name), a.name, a.kind);
        }
        for [from, to] in &self.edges {
            let _ = writeln!(out, "    {} --> {}", id(from), id(to));
        }
        out.push_str("  end\n");
        let _ = writeln!(out, "  {gid} -.- {gid}_agents");
    }

    /// A group's agents as a DOT cluster beside the group's node, joined
    /// to it by a dashed edge (their names prefixed with the group's).
    fn dot_cluster(&self, out: &mut String, group: &str, repeat: Option<&ExplainedRepeat>) {
        let label = match repeat {
            Some(r) => format!("{group}: repeat until {} (max {})", r.until, r.max),
            None => format!("{group}: group"),
        };
        let _ = writeln!(
            out,
            "  subgraph {:?} {{\n    label={label:?};\n    style=dashed;",
            format!("cluster_{group}")
        );
        let id = |name: &str| format!("{group}.{name}");
        for a in &self.agents {
            let _ = writeln!(
                out,
                "    {:?} [label={:?}];",
                id(&a.name),
                format!("{}\n{}", a.name, a.kind)
            );
        }
        for [from, to] in &self.edges {
            let _ = writeln!(out, "    {:?} -> {:?};", id(from), id(to));
        }
        out.push_str("  }\n");
        if let Some(first) = self.agents.first() {
            let _ = writeln!(
                out,
                "  {group:?} -> {:?} [style=dashed, arrowhead=none];",
                id(&first.name)
            );
        }
    }

    /// A Mermaid flowchart; the critical path's edges are thick.
    pub fn to_mermaid(&self) -> String {
        let id = |name: &str| name.replace('-', "_");
        let mut out = String::from("flowchart LR\n");
        for a in &self.agents {
            match &a.foreach {
                // A double-edged box: one node standing for many instances.
                Some(f) => {
                    let _ = writeln!(
                        out,
                        "  {}[[\"{} ({}, foreach {})\"]]",
                        id(&a.name),
                        a.name,
                        a.kind,
                        f.field
                    );
                }
                None => {
                    let _ = writeln!(out, "  {}[\"{} ({})\"]", id(&a.name), a.name, a.kind);
                }
            }
        }
        for a in &self.agents {
            if let Some(group) = &a.group {
                group.mermaid_subgraph(&mut out, &id(&a.name), &a.name, a.repeat.as_ref());
            }
        }
        for [from, to] in &self.edges {
            let arrow = if self.on_critical_path(from, to) {
                "==>"
            } else {
                "-->"
            };
            let _ = writeln!(out, "  {} {arrow} {}", id(from), id(to));
        }
        if let Some(more) = self.edges_not_listed() {
            let _ = writeln!(out, "  %% and {more} more edges, not drawn");
        }
        out
    }

    /// How many edges are beyond [`MAX_EXPLAINED_EDGES`], if any.
    fn edges_not_listed(&self) -> Option<usize> {
        Some(self.edges_total - self.edges.len()).filter(|&n| n > 0)
    }
}
