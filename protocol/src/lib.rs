//! Starling's protocol: pure data and pure functions that every node and the simulator share.
//!
//! Nothing in this crate reads a clock, touches a socket or file, spawns a thread or draws a
//! random number: time, node ids and randomness are arguments. That is what lets `starling-sim`
//! replay any run from its seed, and lets every node compute the same placement from the same
//! view. `clippy.toml` in this crate forbids the ambient sources by name.
//!
//! - [`spec`]: workload specs, parsed from TOML/JSON and validated with field paths.
//! - [`hlc`]: hybrid logical clock timestamps, the order of all writes.
//! - [`desired`]: the desired-state CRDT and its Merkle digest for anti-entropy.
//! - [`placement`]: weighted rendezvous hashing from a fleet view to an assignment.
//! - [`lease`]: lease records and their merge rule.
//! - [`status`]: what a node publishes about its replicas.
//! - [`wire`]: every message on the wire, in a versioned envelope.
//! - [`gossip`]: the keys a node publishes in its gossip state and their checked values.
//! - [`objects`]: secrets and configs, and how a secret is sealed to the nodes that may open it.
//! - [`api`]: the typed rows and records of a node's API answers.
//! - [`access`]: operator roles and which API requests each may make.

#![forbid(unsafe_code)]

pub mod access;
pub mod api;
pub mod desired;
pub mod events;
pub mod gossip;
pub mod hash;
pub mod hlc;
pub mod lan;
pub mod lease;
pub mod names;
pub mod objects;
pub mod placement;
pub mod quantity;
pub mod rollout;
pub mod service;
pub mod spec;
pub mod status;
pub mod wire;

pub use names::{NodeId, WorkloadName};
