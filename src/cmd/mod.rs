//! One module per subcommand.

pub mod admission;
pub mod agent;
#[cfg(feature = "bench")]
pub mod bench;
#[cfg(feature = "bench")]
pub mod bench_fleet;
#[cfg(feature = "bench")]
pub mod bench_lease;
pub mod client;
pub mod cluster;
pub mod events;
pub mod fence;
pub mod image;
pub mod lease;
pub mod node_wait;
pub mod objects;
pub mod plan;
pub mod rollout;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "top")]
pub mod top;
pub mod up;
pub mod validate;
pub mod workloads;

use std::path::Path;

use anyhow::Context as _;
use starling_protocol::spec::{SpecDoc, SpecErrors, WorkloadSpec};

/// Reads and validates one spec file; JSON by extension, TOML otherwise.
/// The outer error is I/O (the file could not be read); the inner one lists the spec's problems.
pub fn load_spec(path: &Path) -> anyhow::Result<Result<WorkloadSpec, SpecErrors>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(parse_spec(path, &text))
}

/// Parses spec text named `path` (the name picks JSON or TOML).
pub fn parse_spec(path: &Path, text: &str) -> Result<WorkloadSpec, SpecErrors> {
    let doc = if path.extension().is_some_and(|e| e == "json") {
        SpecDoc::from_json(text)
    } else {
        SpecDoc::from_toml(text)
    };
    doc.and_then(|d| d.validate())
}
