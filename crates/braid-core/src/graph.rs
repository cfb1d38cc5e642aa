//! The dependency graph derived from what agents read and write.
//!
//! Agent B depends on agent A when B reads a field A writes (or names it in
//! its `when` condition), or lists A in `after`. The graph is built once at
//! load; the scheduler only walks the precomputed `dependents` lists.

use std::collections::VecDeque;

use petgraph::graph::{DiGraph, NodeIndex};

/// An agent's position in its pipeline's declaration order.
pub type AgentId = usize;

/// Why one agent waits for another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeReason {
    /// The later agent reads a field the earlier one writes.
    Reads(String),
    /// The later agent's `when` condition names a field the earlier one writes.
    Condition(String),
    /// The later agent lists the earlier one in `after`.
    After,
}

/// An agent's dependencies and dependents, and a topological order.
#[derive(Debug, Clone)]
pub struct DependencyGraph {
    deps: Vec<Vec<AgentId>>,
    dependents: Vec<Vec<AgentId>>,
    topo: Vec<AgentId>,
    /// Each agent's position in `topo`.
    rank: Vec<usize>,
}

/// A dependency cycle: `agents[0] -> agents[1] -> … -> agents[0]`, with the
/// reason for each step.
#[derive(Debug, Clone)]
pub(crate) struct Cycle {
    pub(crate) agents: Vec<AgentId>,
}

impl DependencyGraph {
    /// Builds the graph for `n` agents from `(from, to)` edges, or returns
    /// every cycle (one per strongly connected component).
    pub(crate) fn build(n: usize, edges: &[(AgentId, AgentId)]) -> Result<Self, Vec<Cycle>> {
        let mut deps = vec![Vec::new(); n];
        let mut dependents = vec![Vec::new(); n];
        for &(from, to) in edges {
            deps[to].push(from);
            dependents[from].push(to);
        }
        for list in deps.iter_mut().chain(dependents.iter_mut()) {
            list.sort_unstable();
            list.dedup();
        }

        // Kahn's algorithm, always taking the earliest-declared ready agent,
        // so the order is stable and reads like the file.
        let mut missing: Vec<usize> = deps.iter().map(Vec::len).collect();
        let mut ready: std::collections::BTreeSet<AgentId> =
            (0..n).filter(|&a| missing[a] == 0).collect();
        let mut topo = Vec::with_capacity(n);
        while let Some(a) = ready.pop_first() {
            topo.push(a);
            for &d in &dependents[a] {
                missing[d] -= 1;
                if missing[d] == 0 {
                    ready.insert(d);
                }
            }
        }
        if topo.len() == n {
            let mut rank = vec![0; n];
            for (i, &a) in topo.iter().enumerate() {
                rank[a] = i;
            }
            return Ok(Self {
                deps,
                dependents,
                topo,
                rank,
            });
        }

        let mut graph: DiGraph<(), ()> = DiGraph::with_capacity(n, edges.len());
        for _ in 0..n {
            graph.add_node(());
        }
        for &(from, to) in edges {
            graph.add_edge(NodeIndex::new(from), NodeIndex::new(to), ());
        }
        let mut cycles = Vec::new();
        for scc in petgraph::algo::tarjan_scc(&graph) {
            let members: Vec<AgentId> = scc.iter().map(|i| i.index()).collect();
            let self_loop = members.len() == 1 && dependents[members[0]].contains(&members[0]);
            if members.len() > 1 || self_loop {
                cycles.push(Cycle {
                    agents: shortest_cycle(&dependents, &members),
                });
            }
        }
        cycles.sort_by_key(|c| c.agents[0]);
        Err(cycles)
    }

    /// The agents `agent` waits for.
    pub fn dependencies(&self, agent: AgentId) -> &[AgentId] {
        &self.deps[agent]
    }

    /// The agents that wait for `agent`.
    pub fn dependents(&self, agent: AgentId) -> &[AgentId] {
        &self.dependents[agent]
    }

    /// Every agent in a topological order (ties broken by declaration order).
    pub fn topological_order(&self) -> &[AgentId] {
        &self.topo
    }

    /// `agent`'s position in [`topological_order`](Self::topological_order).
    pub fn rank(&self, agent: AgentId) -> usize {
        self.rank[agent]
    }

    /// Every `(from, to)` edge, ordered by `to` then `from`.
    pub fn edges(&self) -> impl Iterator<Item = (AgentId, AgentId)> + '_ {
        self.deps
            .iter()
            .enumerate()
            .flat_map(|(to, froms)| froms.iter().map(move |&from| (from, to)))
    }

    /// Whether `to` is reachable from `from` along dependency edges.
    pub fn reaches(&self, from: AgentId, to: AgentId) -> bool {
        let mut seen = vec![false; self.deps.len()];
        let mut stack = vec![from];
        while let Some(a) = stack.pop() {
            if a == to {
                return true;
            }
            for &d in &self.dependents[a] {
                if !std::mem::replace(&mut seen[d], true) {
                    stack.push(d);
                }
            }
        }
        false
    }

    /// Groups agents by their depth: stage 0 has no dependencies, stage k
    /// agents depend on something in stage k-1. For display only: the
    /// scheduler has no stage barrier.
    pub fn stages(&self) -> Vec<Vec<AgentId>> {
        let mut level = vec![0usize; self.deps.len()];
        for &a in &self.topo {
            level[a] = self.deps[a]
                .iter()
                .map(|&d| level[d] + 1)
                .max()
                .unwrap_or(0);
        }
        let depth = level.iter().copied().max().map_or(0, |m| m + 1);
        let mut stages = vec![Vec::new(); depth];
        for (a, &l) in level.iter().enumerate() {
            stages[l].push(a);
        }
        stages
    }

    /// The heaviest path through the graph with the given per-agent weights,
    /// and its total weight.
    pub fn critical_path(&self, weight: impl Fn(AgentId) -> f64) -> (Vec<AgentId>, f64) {
        let n = self.deps.len();
        let mut finish = vec![0.0f64; n];
        let mut via: Vec<Option<AgentId>> = vec![None; n];
        for &a in &self.topo {
            let mut best: Option<AgentId> = None;
            for &d in &self.deps[a] {
                if best.is_none_or(|b| finish[d] > finish[b]) {
                    best = Some(d);
                }
            }
            finish[a] = best.map_or(0.0, |b| finish[b]) + weight(a);
            via[a] = best;
        }
        let Some(mut last) =
            (0..n).max_by(|&x, &y| finish[x].total_cmp(&finish[y]).then(y.cmp(&x)))
        else {
            return (Vec::new(), 0.0);
        };
        let total = finish[last];
        let mut path = vec![last];
        while let Some(prev) = via[last] {
            path.push(prev);
            last = prev;
        }
        path.reverse();
        (path, total)
    }
}

/// The shortest cycle through the earliest-declared member of a strongly
/// connected component, starting and ending at that member.
fn shortest_cycle(dependents: &[Vec<AgentId>], members: &[AgentId]) -> Vec<AgentId> {
    let start = *members.iter().min().expect("a component is never empty");
    let in_scc = |a: AgentId| members.contains(&a);
    let mut parent: Vec<Option<AgentId>> = vec![None; dependents.len()];
    let mut queue = VecDeque::from([start]);
    while let Some(a) = queue.pop_front() {
        for &d in &dependents[a] {
            if d == start {
                // Walk back from `a` to `start`, then close the loop.
                let mut path = vec![a];
                let mut cur = a;
                while let Some(p) = parent[cur] {
                    path.push(p);
                    cur = p;
                }
                path.reverse();
                path.push(start);
                return path;
            }
            if in_scc(d) && d != start && parent[d].is_none() {
                parent[d] = Some(a);
                queue.push_back(d);
            }
        }
    }
    vec![start, start]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_stages_and_finds_the_critical_path() {
        // 0 -> {1, 2} -> 3
        let g = DependencyGraph::build(4, &[(0, 1), (0, 2), (1, 3), (2, 3)]).unwrap();
        assert_eq!(g.topological_order(), [0, 1, 2, 3]);
        assert_eq!(g.stages(), vec![vec![0], vec![1, 2], vec![3]]);
        let (path, total) = g.critical_path(|a| [1.0, 5.0, 2.0, 1.0][a]);
        assert_eq!(path, [0, 1, 3]);
        assert_eq!(total, 7.0);
        assert!(g.reaches(0, 3) && !g.reaches(1, 2));
    }

    #[test]
    fn reports_each_cycle_from_its_first_agent() {
        // 0 -> 1 -> 2 -> 0, and 3 -> 3
        let cycles = DependencyGraph::build(4, &[(0, 1), (1, 2), (2, 0), (3, 3)]).unwrap_err();
        let paths: Vec<Vec<AgentId>> = cycles.into_iter().map(|c| c.agents).collect();
        assert_eq!(paths, vec![vec![0, 1, 2, 0], vec![3, 3]]);
    }
}
