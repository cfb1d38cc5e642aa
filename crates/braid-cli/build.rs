//! Lays out the `braid` binary's code so the functions that run pipelines
//! sit together (see `scripts/symbol-order.sh`, which writes the list).
//!
//! The kernel maps code 64 KB at a time around each page first touched, so
//! a process's resident code is the spread of what it executes, not its
//! size: about 9.5 MB for the ~1.5 MB a run executes, scattered over 24 MB,
//! before this. Only the link order changes; the code does not.
//!
//! Done where the link is known to go through LLD, which reads a symbol
//! ordering file: Rust links with its own LLD by default on
//! x86_64-unknown-linux-gnu (since 1.90). Not done when the build names
//! its own linker or linker flags (GNU ld and gold do not know the
//! option), nor with `BRAID_NO_SYMBOL_ORDER=1`.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo::rerun-if-changed=symbol-order.txt");
    println!("cargo::rerun-if-env-changed=BRAID_NO_SYMBOL_ORDER");
    let target = env::var("TARGET").unwrap_or_default();
    // Cargo sets RUSTC_LINKER for a configured linker; linker flags come
    // through the encoded RUSTFLAGS (`-Clinker=…`, `-Clinker-features=-lld`,
    // `-Clink-arg=-fuse-ld=…`).
    let own_linker = env::var_os("RUSTC_LINKER").is_some()
        || env::var("CARGO_ENCODED_RUSTFLAGS")
            .is_ok_and(|flags| flags.contains("linker") || flags.contains("fuse-ld"));
    if target != "x86_64-unknown-linux-gnu"
        || own_linker
        || env::var_os("BRAID_NO_SYMBOL_ORDER").is_some()
    {
        return;
    }
    let manifest = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let order = Path::new(&manifest).join("symbol-order.txt");
    if !order.is_file() {
        return;
    }
    // Names the binary no longer has are skipped, silently: the list ages
    // as the code changes (`scripts/symbol-order.sh --check`).
    println!(
        "cargo::rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo::rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}
