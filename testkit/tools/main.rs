//! `starling-test-tools`: the workspace-built program in the container tests' image. `build.rs`
//! compiles this file alone with `rustc`; the applets live in the testkit library, where they
//! are linted and unit-tested with the rest.

#[path = "../src/applets.rs"]
mod applets;

fn main() {
    std::process::exit(applets::main(std::env::args().collect()));
}
