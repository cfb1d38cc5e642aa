//! Tidy checks on braid-core's source, in the manner of rust-analyzer's
//! tidy tests: they read the files, not the compiled crate.
//!
//! - The crate's top-level modules form a DAG (ARCHITECTURE.md draws it):
//!   every `crate::MODULE` path outside `#[cfg(test)] mod tests` is an edge
//!   from the file's top-level module to `MODULE` (a name the crate root
//!   re-exports counts as the module it comes from), and the test fails
//!   naming any cycle not on the list of known ones.
//! - The core stays free of HTTP, SQL and terminal dependencies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Cycles that exist today and are on their way out; each entry is the set
/// of modules of one cycle. A cycle found must be one of these (or part of
/// one): any other fails the test.
const KNOWN_CYCLES: &[&[&str]] = &[
    // (none: issue 10 removed the last ones; the compile/ split must keep
    // it so.)
];

/// Crates the engine must not depend on: servers, clients, databases and
/// terminals build on the core, not the other way round.
const FORBIDDEN_DEPENDENCIES: &[&str] = &[
    "axum",
    "hyper",
    "reqwest",
    "sqlx",
    "indicatif",
    "clap",
    "tower",
    "tower-http",
    "async-nats",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code: comments (doc comments included) dropped, and the
/// unit tests at its end (`#[cfg(test)] mod tests`) cut off.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Every first segment after `crate::` in `code`, with `crate::{a, b::c}`
/// giving `a` and `b`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue; // e.g. `braid_crate::`
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        found.push(ident(&group[i..]).to_owned());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.push(ident(rest).to_owned());
        }
    }
    found
}

/// The top-level modules, and what each name re-exported at the crate
/// root resolves to.
fn modules_and_reexports() -> (BTreeSet<String>, BTreeMap<String, String>) {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let lib = code(&lib);
    let mut modules = BTreeSet::new();
    let mut reexports = BTreeMap::new();
    for statement in lib.split(';') {
        let statement = statement.trim();
        let words: Vec<&str> = statement.split_whitespace().collect();
        if let Some(at) = words.iter().position(|w| *w == "mod") {
            modules.insert(ident(words[at + 1]).to_owned());
        } else if let Some(path) = statement.strip_prefix("pub use ") {
            let module = ident(path).to_owned();
            let names = path[module.len()..].trim_start_matches("::");
            let names = names.trim_start_matches('{').trim_end_matches('}');
            for name in names.split(',') {
                let name = name.trim().rsplit("::").next().unwrap_or("").trim();
                if !name.is_empty() {
                    reexports.insert(name.to_owned(), module.clone());
                }
            }
        }
    }
    (modules, reexports)
}

/// Which top-level modules each one uses.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let (modules, reexports) = modules_and_reexports();
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for file in files {
        let relative = file.strip_prefix(&root).unwrap();
        let first = relative.components().next().unwrap();
        let first = first.as_os_str().to_str().unwrap();
        let from = first.trim_end_matches(".rs");
        if from == "lib" {
            continue;
        }
        assert!(
            modules.contains(from),
            "{} belongs to no module declared in lib.rs",
            relative.display()
        );
        let text = std::fs::read_to_string(&file).unwrap();
        for name in crate_paths(&code(&text)) {
            let to = if modules.contains(&name) {
                name
            } else if let Some(module) = reexports.get(&name) {
                module.clone()
            } else {
                panic!(
                    "{}: `crate::{name}` names neither a module nor a re-export of lib.rs",
                    relative.display()
                );
            };
            if to != from {
                graph.get_mut(from).unwrap().insert(to);
            }
        }
    }
    graph
}

/// The graph's cycles: its strongly connected components of more than one
/// module (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct Tarjan<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<BTreeSet<String>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, node: &'g str) {
            let n = self.index.len();
            self.index.insert(node, n);
            self.low.insert(node, n);
            self.stack.push(node);
            self.on_stack.insert(node);
            for next in &self.graph[node] {
                let next = next.as_str();
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = BTreeSet::new();
                while let Some(top) = self.stack.pop() {
                    self.on_stack.remove(top);
                    component.insert(top.to_owned());
                    if top == node {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !tarjan.index.contains_key(node.as_str()) {
            tarjan.visit(node);
        }
    }
    tarjan.found
}

#[test]
fn core_modules_form_a_dag() {
    let graph = module_graph();
    let new: Vec<String> = cycles(&graph)
        .into_iter()
        .filter(|cycle| {
            !KNOWN_CYCLES
                .iter()
                .any(|known| cycle.iter().all(|m| known.contains(&m.as_str())))
        })
        .map(|cycle| {
            let edges: Vec<String> = cycle
                .iter()
                .flat_map(|m| {
                    graph[m]
                        .iter()
                        .filter(|to| cycle.contains(*to))
                        .map(move |to| format!("{m} -> {to}"))
                })
                .collect();
            format!(
                "{{{}}} ({})",
                cycle.iter().cloned().collect::<Vec<_>>().join(", "),
                edges.join(", ")
            )
        })
        .collect();
    let drawn: Vec<String> = graph
        .iter()
        .map(|(m, to)| {
            format!(
                "{m} -> {}",
                to.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    assert!(
        new.is_empty(),
        "braid-core's modules import each other in a circle: {}\n\
         Move the shared items to a lower module (see ARCHITECTURE.md). The graph:\n{}",
        new.join("; "),
        drawn.join("\n")
    );
}

#[test]
fn the_checker_sees_paths_groups_and_reexports() {
    let code = code("use crate::{a::X, b};\n// crate::c\nlet x = crate::d::f(); my_crate::e;\n");
    assert_eq!(crate_paths(&code), ["a", "b", "d"]);
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    graph.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
    graph.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    graph.insert("d".to_owned(), BTreeSet::from(["a".to_owned()]));
    let found = cycles(&graph);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0], BTreeSet::from(["a", "b", "c"].map(String::from)));
}

#[test]
fn the_core_has_no_http_sql_or_terminal_dependency() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let mut section = String::new();
    let mut found = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        if !section.contains("dependencies") {
            continue;
        }
        let name = line.split(['=', '.', ' ']).next().unwrap_or("").trim();
        if FORBIDDEN_DEPENDENCIES.contains(&name) {
            found.push(format!("{name} (in {section})"));
        }
    }
    assert!(
        found.is_empty(),
        "braid-core must know nothing of HTTP, SQL or terminals, but depends on: {}",
        found.join(", ")
    );
}
