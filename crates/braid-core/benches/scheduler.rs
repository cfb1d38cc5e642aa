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
