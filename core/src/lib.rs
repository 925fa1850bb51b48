//! Starling's sans-IO machines: every decision a node takes, with no clock, socket, thread or
//! random number inside (they come in as arguments). The agent (`starling-node`) feeds them
//! events and executes what they output; the simulator (`starling-sim`) drives the very same
//! code from one seed. Its dependencies are `starling-protocol` and pure crates; `clippy.toml`
//! here refuses the std clocks, sockets, threads and files.
//!
//! - [`node`]: the node core, the reconciler. Events in (`handle_*`), actions out
//!   (`poll_action`), one `poll_timeout`.
//! - [`election`]: leases and leader election, the elector every node runs (voter and
//!   candidate sides).
//! - [`membership`]: the failure detector (k rendezvous-chosen watchers, indirect probes) and
//!   which life of a node id the fleet follows (`lives`).
//! - [`pacing`]: gossip round pacing and targets, and when to fetch the keyring.
//! - [`scale`]: the autoscaler of one workload: per-replica load in, a new replica count
//!   out, up fast, down only after a cool-down.
//! - [`sync`]: desired-state sync: anti-entropy pulls page by page, pushes of fresh writes
//!   and their acks, request timeouts, the checked merge of what peers send.

#![forbid(unsafe_code)]

pub mod election;
pub mod membership;
pub mod node;
pub mod pacing;
pub mod scale;
pub mod sync;

pub use starling_protocol as protocol;
