//! What each fuzz target does with one input, shared by the targets and by
//! braid-core's `fuzz_corpus` test (which replays the corpus with a plain
//! `cargo test`, without cargo-fuzz).
//!
//! Every input must come back as `Ok` or a typed error: a panic, a stack
//! overflow, an abort or a hang is a bug.

// Each target uses one of the functions.
#![allow(dead_code)]

use braid_core::{AgentKinds, Condition, LoadLimits, Pipeline};

/// The limits a server facing untrusted clients would use, and a budget
/// long enough that only a real hang reaches it.
fn limits() -> LoadLimits {
    LoadLimits {
        max_bytes: 256 * 1024,
        max_agents: 1_000,
        compile_budget: std::time::Duration::from_secs(20),
        ..LoadLimits::default()
    }
}

/// The stack the fuzz targets give each input: an eighth of a server
/// worker's 2 MiB, because the fuzzer runs optimised code, whose frames are
/// far smaller than an unoptimised build's, and recursion that would
/// overflow a worker in a debug build must overflow here too.
pub(crate) const FUZZ_STACK: usize = 256 * 1024;

/// What the replay test gives each input: a server worker's stack.
pub(crate) const WORKER_STACK: usize = 2 * 1024 * 1024;

/// Runs `check` on its own thread with `stack` bytes of stack, passing
/// panics on.
fn on_stack(stack: usize, data: &[u8], check: fn(&[u8])) {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .stack_size(stack)
            .spawn_scoped(scope, || check(data))
            .expect("a thread can start");
        if let Err(panic) = handle.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

/// Loads the input as a pipeline (YAML, or JSON, which YAML reads too)
/// through parsing and compiling; when it loads, looks at what a user would:
/// the graph, each agent's reads, writes and condition.
pub(crate) fn load(data: &[u8], stack: usize) {
    on_stack(stack, data, load_here);
}

fn load_here(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        // Not UTF-8: through a file, where the loader reports where the
        // bad bytes are.
        let path = std::env::temp_dir().join(format!("braid-fuzz-{}.yaml", std::process::id()));
        std::fs::write(&path, data).expect("the temporary directory is writable");
        let loaded = Pipeline::from_file_limited(&path, &AgentKinds::standard(), &limits());
        let _ = std::fs::remove_file(&path);
        let err = loaded.expect_err("a file that is not UTF-8 is refused");
        let message = err.to_string();
        assert!(
            message.contains("UTF-8") || message.contains("max_bytes"),
            "{message}"
        );
        return;
    };
    let Ok(pipeline) = Pipeline::from_yaml_str_limited(text, &AgentKinds::standard(), &limits())
    else {
        return;
    };
    let graph = pipeline.graph();
    assert_eq!(graph.topological_order().len(), pipeline.agents().len());
    for (id, agent) in pipeline.agents().iter().enumerate() {
        let _ = (pipeline.reads_of(id), pipeline.writes_of(id));
        if let Some(condition) = agent.condition() {
            assert!(!condition.source().is_empty());
        }
        for &dep in graph.dependencies(id) {
            assert!(graph.rank(dep) < graph.rank(id), "edges follow the order");
        }
    }
    let _ = graph.stages();
}

/// Checks and compiles the input as a `when:` condition.
pub(crate) fn condition(data: &[u8], stack: usize) {
    on_stack(stack, data, condition_here);
}

fn condition_here(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(condition) = Condition::parse(text, &limits()) {
        let _ = condition.fields();
    }
}
