//! The Starling agent: a sans-IO node core plus the I/O shell around it.
//!
//! - [`core`]: the deterministic reconciler. Events in (`handle_*`), actions out (`poll_action`),
//!   one `poll_timeout`; no clocks, sockets, threads or randomness. `sim/` drives it directly.
//! - [`runtime`]: the `Runtime` trait and the process runtime (the embedded default).
//! - [`health`]: exec, TCP and HTTP probes, run by the shell, fed back to the core.
//! - [`gossip`]: sealing of gossip packets with the cluster keyring (AEAD, rotation, replay).
//! - [`identity`]: the cluster CA, node and user certificates, join tokens.
//! - [`membership`]: the failure detector (k rendezvous-chosen watchers, indirect probes).
//! - [`store`]: the node's durable state, written atomically (write, fsync, rename, fsync dir).
//! - [`clock`]: the only place the shell reads the wall clock.
//!
//! Gossip, sync, the QUIC API, discovery, proxy and secrets land with their issues.

#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod clock;
pub mod cluster;
pub mod core;
pub mod election;
pub mod gossip;
pub mod health;
pub mod identity;
pub mod membership;
pub mod net;
pub mod runtime;
pub mod store;

pub use starling_protocol as protocol;
