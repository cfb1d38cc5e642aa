//! Replays the fuzz corpus (`fuzz/corpus/TARGET/*`, kept in the repository)
//! through the same harness as the fuzz targets, so every input the fuzzer
//! ever found interesting (crashes it found included, once fixed) is
//! checked by a plain `cargo test`, without cargo-fuzz or libFuzzer.

use std::path::PathBuf;

#[path = "../../../fuzz/harness.rs"]
mod harness;

/// Every file of one target's corpus (there must be some).
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "{} has {} inputs",
        dir.display(),
        files.len()
    );
    files
}

/// Runs `check` on each input (the harness gives each its own thread with
/// a server worker's stack), naming the input that fails.
fn replay(target: &str, check: fn(&[u8], usize)) {
    for (path, bytes) in corpus(target) {
        // A stack overflow aborts the process without naming the input:
        // `--nocapture` shows the last one started.
        eprintln!("replaying {}", path.display());
        let outcome = std::panic::catch_unwind(|| check(&bytes, harness::WORKER_STACK));
        assert!(outcome.is_ok(), "{} panicked", path.display());
    }
}

#[test]
fn the_loader_corpus_replays() {
    replay("load", harness::load);
}

#[test]
fn the_condition_corpus_replays() {
    replay("condition", harness::condition);
}
