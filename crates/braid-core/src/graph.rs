//! The dependency graph derived from what agents read and write.
//!
//! Agent B depends on agent A when B reads a field A writes (or names it in
//! its `when` condition), or lists A in `after`. The graph is built once at
//! load; the scheduler only walks the precomputed `dependents` lists.
//!
//! Nothing here recurses over the graph (a pipeline may have 100,000 agents
//! in a chain): cycles are found with Kosaraju's iterative algorithm, and
//! reachability questions are answered in batches of 64 by propagating bit
//! masks along the topological order (`DependencyGraph::reaches_all`).

use std::collections::VecDeque;

use petgraph::graph::{DiGraph, NodeIndex};

/// An agent's position in its pipeline's declaration order.
pub type AgentId = usize;

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
        // Kosaraju, not Tarjan: petgraph's Tarjan recurses once per agent of
        // a component.
        for scc in petgraph::algo::kosaraju_scc(&graph) {
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

    /// For each `(from, to)` pair, whether `to` is reachable from `from`.
    ///
    /// Sources are taken 64 at a time, in topological order; each batch
    /// propagates one bit per source along the topological order, over the
    /// span of ranks between its first source and its last target only. A
    /// direct edge answers a pair without a batch. The cost is
    /// O(pairs + Σ over batches of the edges in its span): linear when the
    /// pairs are near each other in the order (neighbouring writers of a
    /// field), O((n + edges) · pairs / 64) at worst. `give_up` is asked
    /// between batches; `None` means it said yes.
    pub(crate) fn reaches_all(
        &self,
        pairs: &[(AgentId, AgentId)],
        give_up: &dyn Fn() -> bool,
    ) -> Option<Vec<bool>> {
        let mut answers = vec![false; pairs.len()];
        // Pairs not settled by a direct edge or by the order, by source rank.
        let mut open: Vec<usize> = Vec::new();
        for (i, &(from, to)) in pairs.iter().enumerate() {
            if from == to || self.deps[to].binary_search(&from).is_ok() {
                answers[i] = true;
            } else if self.rank[from] < self.rank[to] {
                open.push(i);
            }
        }
        open.sort_unstable_by_key(|&i| self.rank[pairs[i].0]);
        let n = self.topo.len();
        let mut mask = vec![0u64; n]; // by rank
        let mut start = 0;
        while start < open.len() {
            if give_up() {
                return None;
            }
            // The next 64 distinct sources.
            let mut sources: Vec<AgentId> = Vec::with_capacity(64);
            let mut end = start;
            while end < open.len() {
                let from = pairs[open[end]].0;
                if sources.last() != Some(&from) {
                    if sources.len() == 64 {
                        break;
                    }
                    sources.push(from);
                }
                end += 1;
            }
            let batch = &open[start..end];
            let lo = self.rank[sources[0]];
            let hi = batch
                .iter()
                .map(|&i| self.rank[pairs[i].1])
                .max()
                .unwrap_or(lo);
            for (bit, &s) in sources.iter().enumerate() {
                mask[self.rank[s]] |= 1 << bit;
            }
            for r in lo..=hi {
                let bits = mask[r];
                if bits == 0 {
                    continue;
                }
                for &d in &self.dependents[self.topo[r]] {
                    let rd = self.rank[d];
                    if rd <= hi {
                        mask[rd] |= bits;
                    }
                }
            }
            for &i in batch {
                let (from, to) = pairs[i];
                let bit = sources
                    .iter()
                    .position(|&s| s == from)
                    .expect("every source of the batch has a bit");
                answers[i] = mask[self.rank[to]] & (1 << bit) != 0;
            }
            mask[lo..=hi].fill(0);
            start = end;
        }
        Some(answers)
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
    let mut member = vec![false; dependents.len()];
    for &a in members {
        member[a] = true;
    }
    let in_scc = |a: AgentId| member[a];
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
        let pairs = [(0, 3), (1, 2), (2, 1), (0, 0), (3, 0), (1, 3)];
        let all = g.reaches_all(&pairs, &|| false).unwrap();
        assert_eq!(all, [true, false, false, true, false, true]);
    }

    /// The batched answers agree with a plain search on random graphs,
    /// with more than 64 sources so several batches run.
    #[test]
    fn batched_reachability_matches_a_plain_search() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20 {
            let n = rng.usize(2..200);
            let edges: Vec<(AgentId, AgentId)> = (0..rng.usize(0..3 * n))
                .map(|_| {
                    let (a, b) = (rng.usize(0..n), rng.usize(0..n));
                    (a.min(b), a.max(b))
                })
                .filter(|(a, b)| a != b)
                .collect();
            let g = DependencyGraph::build(n, &edges).unwrap();
            let pairs: Vec<(AgentId, AgentId)> = (0..300)
                .map(|_| (rng.usize(0..n), rng.usize(0..n)))
                .collect();
            let all = g.reaches_all(&pairs, &|| false).unwrap();
            for (&(a, b), &got) in pairs.iter().zip(&all) {
                assert_eq!(got, g.reaches(a, b), "{a} -> {b} in {edges:?}");
            }
        }
        let g = DependencyGraph::build(3, &[]).unwrap();
        assert_eq!(g.reaches_all(&[(0, 1)], &|| true), None);
    }

    #[test]
    fn reports_each_cycle_from_its_first_agent() {
        // 0 -> 1 -> 2 -> 0, and 3 -> 3
        let cycles = DependencyGraph::build(4, &[(0, 1), (1, 2), (2, 0), (3, 3)]).unwrap_err();
        let paths: Vec<Vec<AgentId>> = cycles.into_iter().map(|c| c.agents).collect();
        assert_eq!(paths, vec![vec![0, 1, 2, 0], vec![3, 3]]);
    }
}
