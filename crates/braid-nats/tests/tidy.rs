//! The crate's place in the workspace, as ARCHITECTURE.md states it: it
//! builds on the core alone, and neither the core nor the server knows it.

use std::path::Path;

/// The names under `[dependencies]`-like sections of a crate's manifest.
fn dependencies(krate: &str) -> Vec<String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut section = String::new();
    let mut names = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_owned();
        } else if section.contains("dependencies") && !line.is_empty() && !line.starts_with('#') {
            names.push(
                line.split(['=', '.', ' '])
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned(),
            );
        }
    }
    names
}

#[test]
fn braid_nats_builds_on_the_core_alone() {
    let deps = dependencies("braid-nats");
    for forbidden in [
        "braid-store",
        "braid-server",
        "braid-cli",
        "braid-agents",
        "sqlx",
        "axum",
    ] {
        assert!(
            !deps.iter().any(|d| d == forbidden),
            "braid-nats depends on {forbidden}"
        );
    }
    assert!(deps.iter().any(|d| d == "braid-core"));
}

#[test]
fn neither_the_core_nor_the_server_knows_nats() {
    for krate in ["braid-core", "braid-server", "braid-store"] {
        let deps = dependencies(krate);
        for nats in ["braid-nats", "async-nats"] {
            assert!(!deps.iter().any(|d| d == nats), "{krate} depends on {nats}");
        }
    }
}
