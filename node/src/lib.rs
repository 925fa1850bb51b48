//! The Starling agent: a sans-IO node core plus the I/O shell around it.
//!
//! Planned modules (see DESIGN.md): `core` (the deterministic reconciler: events in, actions
//! out, no clocks or sockets), `gossip`, `sync`, `api`, `runtime`, `health`, `discovery`,
//! `proxy`, `secrets`, `store`, `metrics`. They land with the node-core and fleet issues; this
//! crate exists now so the workspace's dependency arrows are fixed from the start.

#![forbid(unsafe_code)]

pub use starling_protocol as protocol;
