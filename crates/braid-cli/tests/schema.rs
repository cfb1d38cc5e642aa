//! `braid schema`: the pipeline file's JSON Schema, its committed copy in
//! docs/, and the examples checked against it the way an editor checks
//! them.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const REFRESH: &str = "cargo run -p braid-cli -- schema > docs/pipeline.schema.json";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What `braid schema` prints, as text.
fn schema_text() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_braid"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "braid schema failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&schema_text()).unwrap();
    assert_eq!(
        schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "the schema declares draft 2020-12"
    );
    jsonschema::validator_for(&schema).expect("braid schema prints a valid JSON Schema")
}

/// The schema's complaints about a pipeline file's text.
fn problems(validator: &jsonschema::Validator, text: &str) -> Vec<String> {
    let json = braid_core::schema::pipeline_json(text, &braid_core::LoadLimits::default())
        .unwrap_or_else(|e| panic!("not YAML the loader reads: {e}"));
    validator
        .iter_errors(&json)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Every *.yaml / *.yml file under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn the_committed_schema_is_what_braid_schema_prints() {
    let printed = schema_text();
    let path = root().join("docs/pipeline.schema.json");
    if std::env::var_os("BRAID_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &printed).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == printed,
        "docs/pipeline.schema.json is not what `braid schema` prints now; refresh it with\n    {REFRESH}\n(or run this test with BRAID_BLESS=1) and commit it"
    );
}

#[test]
fn every_example_names_the_schema_on_its_first_line_and_matches_it() {
    let validator = validator();
    let examples = root().join("examples");
    let files = yaml_files(&examples);
    assert!(files.len() >= 9, "examples found: {files:?}");
    for file in files {
        let below = file.strip_prefix(root()).unwrap();
        let ups = below.components().count() - 1;
        let expected = format!(
            "# yaml-language-server: $schema={}docs/pipeline.schema.json",
            "../".repeat(ups)
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            text.lines().next(),
            Some(expected.as_str()),
            "{}: the first line must point editors at the schema",
            below.display()
        );
        let problems = problems(&validator, &text);
        assert!(
            problems.is_empty(),
            "{} does not match the schema: {problems:#?}",
            below.display()
        );
    }
}

#[test]
fn a_misspelt_key_breaks_the_schema() {
    let validator = validator();
    let seed = std::fs::read_to_string(root().join("examples/seed.yaml")).unwrap();
    assert!(problems(&validator, &seed).is_empty());
    let typo = seed.replacen("reads:", "reeds:", 1);
    assert_ne!(typo, seed);
    let found = problems(&validator, &typo);
    assert!(
        found.iter().any(|p| p.contains("reeds")),
        "`reeds:` should be refused, found {found:?}"
    );
}

#[test]
fn a_key_of_another_kind_or_a_missing_one_breaks_the_schema() {
    let validator = validator();
    let ok = "pipeline: p\nagents:\n  a: { kind: sleep, ms: 5, writes: [x] }\n";
    assert!(problems(&validator, ok).is_empty());
    // `run` is command's, not sleep's.
    let wrong_kind = ok.replace("ms: 5", "run: [echo]");
    let found = problems(&validator, &wrong_kind);
    assert!(found.iter().any(|p| p.contains("run")), "{found:?}");
    // A command agent without `run`.
    let no_run = ok.replace("kind: sleep, ms: 5", "kind: command");
    let found = problems(&validator, &no_run);
    assert!(found.iter().any(|p| p.contains("run")), "{found:?}");
    // An unknown kind, and a file without `pipeline:`.
    assert!(!problems(&validator, &ok.replace("sleep", "slep")).is_empty());
    let found = problems(&validator, &ok.replace("pipeline: p\n", ""));
    assert!(found.iter().any(|p| p.contains("pipeline")), "{found:?}");
}
