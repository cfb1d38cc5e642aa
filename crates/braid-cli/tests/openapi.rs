//! `braid openapi`: the HTTP API's OpenAPI document, and its committed copy
//! in docs/.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_committed_document_is_what_braid_openapi_prints() {
    let out = Command::new(env!("CARGO_BIN_EXE_braid"))
        .arg("openapi")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let document: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    if std::env::var_os("BRAID_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &printed).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == printed,
        "docs/openapi.json is not what `braid openapi` prints now; refresh it with\n    \
         cargo run -p braid-cli -- openapi > docs/openapi.json\n(or run this test with \
         BRAID_BLESS=1) and commit it"
    );
}
