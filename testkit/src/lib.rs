//! Test support shared by the workspace's crates (a dev-dependency only).
//!
//! [`docker::test_image`] is the container tests' image: `starling-node`'s runtime tests and
//! the end-to-end `tests/docker.rs` of `starling` use the same one, built on the machine the
//! tests run on from the host's shell and coreutils and from [`applets`], a small program this
//! crate's build script compiles. No registry and no package beyond a Docker engine is needed.

#![forbid(unsafe_code)]

pub mod applets;
pub mod docker;
