//! Per-agent definition hashes: what a resumed run compares before it
//! reuses an agent's stored output.
//!
//! An agent's *own* definition is everything in the pipeline that decides
//! what it writes: its name (command agents see it on stdin), kind, reads
//! (with their `?`), writes and the merge rules of those fields, `after`,
//! `when`, the sleep kind's `ms` and `value`, the command kind's `run`,
//! `env` and `pool`, every other kind's settings (`function`, `url`,
//! `prompt`…), and the folder the pipeline runs from. Settings that cannot
//! change a completed agent's output (`description`, `timeout`, `retries`,
//! `backoff`, `expected`) are left out.
//!
//! Its *definition hash* (SHA-256, hex) covers its own definition and the
//! definition hashes of every agent it depends on, so it covers all its
//! transitive dependencies: changing one agent changes the hash of that agent
//! and of everything downstream of it, and nothing else. The hash depends only
//! on the pipeline text (and the folder), so reloading the same file gives
//! the same hashes.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::graph::{AgentId, DependencyGraph};
use crate::merge::MergeRule;
use crate::spec::AgentSpec;

/// An agent's own definition, as a JSON document (hashed later, with its
/// dependencies' hashes, by [`chain`]).
pub(crate) fn own(
    name: &str,
    spec: &AgentSpec,
    dir: &Path,
    merge_of: impl Fn(&str) -> Option<MergeRule>,
) -> Value {
    let strings = |v: &[marked_yaml::Spanned<String>]| -> Vec<String> {
        v.iter().map(|s| s.as_str().to_owned()).collect()
    };
    let merges: serde_json::Map<String, Value> = spec
        .writes
        .iter()
        .filter_map(|w| merge_of(w.as_str()).map(|r| (w.as_str().to_owned(), r.to_string().into())))
        .collect();
    let settings: serde_json::Map<String, Value> = spec
        .settings
        .iter()
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect();
    json!({
        "name": name,
        "kind": spec.kind.as_str(),
        "reads": strings(&spec.reads),
        "writes": strings(&spec.writes),
        "merge": merges,
        "after": strings(&spec.after),
        "when": spec.when.as_ref().map(|w| w.as_str()),
        "foreach": spec.foreach.as_ref().map(|f| json!({
            "field": f.as_str(),
            "as": spec.item_as.as_ref().map(|a| a.as_str()),
            "on_item_failure": spec.on_item_failure.as_ref().map(|o| o.as_str()),
        })),
        "ms": spec.ms.as_ref().map(|ms| **ms),
        "value": spec.value.as_ref().map(|v| &v.value),
        "run": spec.run.as_deref().map(strings),
        "env": spec.env,
        "pool": spec.pool.as_ref().map(|p| **p),
        "settings": settings,
        "dir": dir.to_string_lossy(),
    })
}

/// Each agent's definition hash: its own definition and its dependencies'
/// hashes, computed in topological order.
pub(crate) fn chain(own: &[Value], graph: &DependencyGraph) -> Vec<Arc<str>> {
    let mut hashes: Vec<Option<Arc<str>>> = vec![None; own.len()];
    for &agent in graph.topological_order() {
        let mut digest = Sha256::new();
        digest.update(b"braid agent definition v1\n");
        digest.update(own[agent].to_string().as_bytes());
        let mut deps: Vec<AgentId> = graph.dependencies(agent).to_vec();
        deps.sort_unstable();
        deps.dedup();
        for dep in deps {
            digest.update(b"\n");
            let hash = hashes[dep]
                .as_deref()
                .expect("dependencies come first in topological order");
            digest.update(hash.as_bytes());
        }
        hashes[agent] = Some(Arc::from(hex(&digest.finalize())));
    }
    hashes
        .into_iter()
        .map(|h| h.expect("every agent is in the topological order"))
        .collect()
}

/// Each agent's definition hash as [`chain`] makes it, but without the
/// pipeline file's folder (and with a group's agents' portable hashes):
/// the same for copies of one pipeline in different places, as a
/// coordinator's and its workers' are. `group_agents(i)` gives agent `i`'s
/// group's agents' portable hashes, when it is a group.
pub(crate) fn portable<'a>(
    own: &[Value],
    group_agents: impl Fn(AgentId) -> Option<&'a [Arc<str>]>,
    graph: &DependencyGraph,
) -> Vec<Arc<str>> {
    let own: Vec<Value> = own
        .iter()
        .enumerate()
        .map(|(id, own)| {
            let mut own = own.clone();
            if let Some(map) = own.as_object_mut() {
                map.remove("dir");
            }
            if let (Some(group), Some(inner)) = (own.get_mut("group"), group_agents(id)) {
                group["agents"] = inner.iter().map(|h| Value::from(&**h)).collect();
            }
            own
        })
        .collect();
    chain(&own, graph)
}

/// A tool agent's definition hash: its own definition (a tool is called,
/// not a step, so nothing upstream of it matters). Its cached results are
/// filed under it.
pub(crate) fn tool_hash(own: &Value) -> Arc<str> {
    let mut digest = Sha256::new();
    digest.update(b"braid tool definition v1\n");
    digest.update(own.to_string().as_bytes());
    Arc::from(hex(&digest.finalize()))
}

/// Lowercase hex, into one string (not a string per byte: this runs for
/// every agent at every load).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::Pipeline;

    const BASE: &str = r#"pipeline: p
agents:
  a: { kind: sleep, ms: 1, writes: [x], value: 1 }
  b: { kind: command, run: [sh, -c, 'echo {}'], env: { K: v }, reads: [x], writes: [y], when: 'x == 1' }
  c: { kind: sleep, writes: [z] }
"#;

    fn hashes(text: &str) -> Vec<String> {
        let pipeline = Pipeline::from_yaml_str(text).unwrap_or_else(|e| panic!("{e}"));
        pipeline
            .agents()
            .iter()
            .map(|a| a.definition_hash().to_owned())
            .collect()
    }

    /// `BASE` written to a file in a folder of its own, loaded from there.
    fn load_in_own_folder(text: &str, folder: &str) -> Pipeline {
        let dir =
            std::env::temp_dir().join(format!("braid-portable-{}-{folder}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.yaml");
        std::fs::write(&path, text).unwrap();
        let pipeline = Pipeline::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
        std::fs::remove_dir_all(&dir).unwrap();
        pipeline
    }

    #[test]
    fn portable_hashes_ignore_the_folder_but_not_the_definition() {
        let here = load_in_own_folder(BASE, "here");
        let there = load_in_own_folder(BASE, "there");
        let command = 1;
        // The resume hash covers the folder a command agent runs in...
        assert_ne!(
            here.agents()[command].definition_hash(),
            there.agents()[command].definition_hash()
        );
        // ...the portable hash does not, so a coordinator and its workers agree.
        assert_eq!(here.portable_hashes(), there.portable_hashes());
        assert!(here.portable_hashes().iter().all(|h| h.len() == 64));
        // A changed agent changes its own and its dependents' portable hashes.
        let changed = load_in_own_folder(&BASE.replace("value: 1", "value: 2"), "changed");
        let (a, b) = (here.portable_hashes(), changed.portable_hashes());
        assert_ne!(a[0], b[0]);
        assert_ne!(a[1], b[1], "b reads what a writes");
        assert_eq!(a[2], b[2], "c depends on neither");
    }

    #[test]
    fn the_same_text_gives_the_same_hashes() {
        assert_eq!(hashes(BASE), hashes(BASE));
        let all = hashes(BASE);
        assert!(all.iter().all(|h| h.len() == 64));
        assert_ne!(all[0], all[2]);
    }

    #[test]
    fn what_decides_an_output_changes_the_agent_and_its_downstream_only() {
        let base = hashes(BASE);
        for (from, to) in [
            ("value: 1", "value: 2"),
            ("ms: 1,", "ms: 2,"),
            ("a: { kind: sleep", "a: { kind: sleep, after: [c]"),
        ] {
            let changed = hashes(&BASE.replace(from, to));
            assert_ne!(changed[0], base[0], "{from} -> {to}");
            assert_ne!(changed[1], base[1], "{from} -> {to}: b is downstream of a");
        }
        for (from, to) in [
            ("'echo {}'", "'echo {} '"),
            ("K: v", "K: w"),
            ("x == 1", "x == 2"),
            ("writes: [y]", "writes: [y2]"),
        ] {
            let changed = hashes(&BASE.replace(from, to));
            assert_eq!(changed[0], base[0], "{from} -> {to}: a is upstream");
            assert_ne!(changed[1], base[1], "{from} -> {to}");
            assert_eq!(changed[2], base[2], "{from} -> {to}: c is unrelated");
        }
        // Settings that cannot change a completed output do not count.
        let described = hashes(&BASE.replace(
            "c: { kind: sleep,",
            "c: { kind: sleep, description: hi, timeout: 5s, retries: 2,",
        ));
        assert_eq!(described, base);
    }
}
