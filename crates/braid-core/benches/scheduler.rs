//! Micro-benchmarks of the scheduler's hot path (divan):
//!
//!     cargo bench -p braid-core
//!
//! No-op `sleep` agents, so what is measured is the engine: launching
//! agents, handing them their reads, merging writes, releasing dependents.

use braid_core::{Pipeline, RunOptions, ValidInput, scenarios};

fn main() {
    divan::main();
}

fn seed() -> Pipeline {
    Pipeline::from_yaml_str(&scenarios::seed_yaml(0.0)).unwrap()
}

fn chain(n: usize) -> Pipeline {
    Pipeline::from_yaml_str(&scenarios::deep_yaml(n)).unwrap()
}

fn fan_out(n: usize) -> Pipeline {
    Pipeline::from_yaml_str(&scenarios::wide_yaml(n)).unwrap()
}

fn run_once(runtime: &tokio::runtime::Runtime, pipeline: &Pipeline, input: &ValidInput) {
    let report = runtime.block_on(pipeline.run(input.clone(), RunOptions::default()));
    assert!(report.status.is_success());
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[divan::bench]
fn seed_run(bencher: divan::Bencher) {
    let (rt, pipeline) = (runtime(), seed());
    let input = pipeline.check_input(&serde_json::json!({})).unwrap();
    bencher.bench_local(|| run_once(&rt, &pipeline, &input));
}

#[divan::bench(args = [100, 1000])]
fn deep_chain(bencher: divan::Bencher, n: usize) {
    let (rt, pipeline) = (runtime(), chain(n));
    let input = pipeline.check_input(&serde_json::json!({})).unwrap();
    bencher.bench_local(|| run_once(&rt, &pipeline, &input));
}

#[divan::bench(args = [100, 1000])]
fn wide_fan_out(bencher: divan::Bencher, n: usize) {
    let (rt, pipeline) = (runtime(), fan_out(n));
    let input = pipeline.check_input(&serde_json::json!({})).unwrap();
    bencher.bench_local(|| run_once(&rt, &pipeline, &input));
}

#[divan::bench]
fn load_and_validate_seed() -> Pipeline {
    seed()
}

/// `n` agents that all write one `merge: append` field, and one that reads
/// it: merging must cost O(total items), not O(writers²).
fn append_fan_in(n: usize) -> Pipeline {
    let mut yaml = String::from(
        "pipeline: append-fan-in\nfields: { items: { merge: append } }\nagents:\n  \
         read: { kind: sleep, ms: 0, reads: [items], writes: [done] }\n",
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "  w{i}: {{ kind: sleep, ms: 0, writes: [items], value: [{i}] }}\n"
        ));
    }
    Pipeline::from_yaml_str(&yaml).unwrap()
}

#[divan::bench(args = [1000, 10000])]
fn append_merge_fan_in(bencher: divan::Bencher, n: usize) {
    let (rt, pipeline) = (runtime(), append_fan_in(n));
    let input = pipeline.check_input(&serde_json::json!({})).unwrap();
    bencher.bench_local(|| run_once(&rt, &pipeline, &input));
}
