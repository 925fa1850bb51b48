//! Compiles `tools/main.rs` (the image's network applets, standard library only) with the
//! same `rustc` and for the same target as this build, into `OUT_DIR`, and hands its path to
//! the library as `STARLING_TESTKIT_TOOLS`.
//!
//! Why here: a build script runs before any crate that depends on the testkit compiles, so
//! every test of every package (`cargo test --workspace`, `cargo nextest`, one `-p`) finds the
//! program built, once per target directory, with no Cargo lock taken from inside a test.
//! Calling `rustc` directly (not `cargo build`) keeps it to one std-only file, no nesting.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=tools/main.rs");
    println!("cargo::rerun-if-changed=src/applets.rs");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let program = out_dir.join("starling-test-tools");
    let mut command = Command::new(&rustc);
    command
        .args(["--edition", "2024", "--crate-type", "bin"])
        .args(["--crate-name", "starling_test_tools", "--target", &target])
        .args([
            "-C",
            "opt-level=1",
            "-C",
            "strip=symbols",
            "--cap-lints",
            "warn",
        ])
        .arg("-o")
        .arg(&program)
        .arg("tools/main.rs");
    // The linker Cargo resolved for this target, when one is configured.
    if let Some(linker) = std::env::var_os("RUSTC_LINKER") {
        command.arg("-C").arg({
            let mut arg = std::ffi::OsString::from("linker=");
            arg.push(linker);
            arg
        });
    }
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("running {rustc:?}: {e}"));
    assert!(
        status.success(),
        "{rustc:?} could not build tools/main.rs: {status}"
    );
    println!(
        "cargo::rustc-env=STARLING_TESTKIT_TOOLS={}",
        program.display()
    );
}
