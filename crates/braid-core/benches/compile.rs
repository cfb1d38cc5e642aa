//! What loading large pipelines costs (divan):
//!
//!     cargo bench -p braid-core --bench compile
//!
//! Parse and compile only, nothing runs. The shapes are the ones that were
//! quadratic: long chains, wide fan-outs with a fan-in that reads every
//! field, many writers of one field (ordered with `after:`, or racing,
//! which is an error with one diagnostic per field).

use braid_core::{AgentKinds, LoadLimits, Pipeline};

// The allocator of the `braid` binary (and so of `braid serve`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    divan::main();
}

/// Loads `text` under the default limits: `Ok` or the first diagnostic.
fn load(text: &str) -> Result<(), String> {
    Pipeline::from_yaml_str_limited(text, &AgentKinds::standard(), &LoadLimits::default())
        .map(drop)
        .map_err(|e| e.diagnostics()[0].to_string())
}

/// `n` agents, each reading what the one before wrote.
fn chain(n: usize) -> String {
    let mut text = String::from("pipeline: chain\nagents:\n  a0: { kind: sleep, writes: [f0] }\n");
    for i in 1..n {
        text.push_str(&format!(
            "  a{i}: {{ kind: sleep, reads: [f{}], writes: [f{i}] }}\n",
            i - 1
        ));
    }
    text
}

/// One root, agents reading its field, and a join reading all of theirs:
/// `n` agents in all.
fn wide(n: usize) -> String {
    let n = n - 2;
    let mut text = String::from("pipeline: wide\nagents:\n  root: { kind: sleep, writes: [go] }\n");
    for i in 0..n {
        text.push_str(&format!(
            "  a{i}: {{ kind: sleep, reads: [go], writes: [f{i}] }}\n"
        ));
    }
    let reads: Vec<String> = (0..n).map(|i| format!("f{i}")).collect();
    text.push_str(&format!(
        "  join: {{ kind: sleep, reads: [{}], writes: [done] }}\n",
        reads.join(", ")
    ));
    text
}

/// `n` agents writing one field, each after the one before.
fn ordered_writers(n: usize) -> String {
    let mut text =
        String::from("pipeline: ordered\nagents:\n  a0: { kind: sleep, writes: [out] }\n");
    for i in 1..n {
        text.push_str(&format!(
            "  a{i}: {{ kind: sleep, writes: [out], after: [a{}] }}\n",
            i - 1
        ));
    }
    text
}

/// `n` agents writing one field with no order and no merge rule.
fn racing_writers(n: usize) -> String {
    let mut text = String::from("pipeline: racing\nagents:\n");
    for i in 0..n {
        text.push_str(&format!("  a{i}: {{ kind: sleep, writes: [out] }}\n"));
    }
    text
}

#[divan::bench(args = [10_000, 100_000], sample_count = 3, sample_size = 1)]
fn compile_chain(bencher: divan::Bencher, n: usize) {
    let text = chain(n);
    bencher.bench_local(|| load(&text).unwrap());
}

#[divan::bench(args = [10_000, 50_000, 100_000], sample_count = 3, sample_size = 1)]
fn compile_wide_with_fan_in(bencher: divan::Bencher, n: usize) {
    let text = wide(n);
    bencher.bench_local(|| load(&text).unwrap());
}

#[divan::bench(args = [2_000, 20_000], sample_count = 3, sample_size = 1)]
fn compile_ordered_writers(bencher: divan::Bencher, n: usize) {
    let text = ordered_writers(n);
    bencher.bench_local(|| load(&text).unwrap());
}

#[divan::bench(args = [1_000, 10_000], sample_count = 3, sample_size = 1)]
fn compile_racing_writers(bencher: divan::Bencher, n: usize) {
    let text = racing_writers(n);
    bencher.bench_local(|| assert!(load(&text).unwrap_err().contains("race")));
}
