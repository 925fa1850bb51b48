//! The Starling agent: the I/O shell around the sans-IO machines of `starling-core` (the node
//! core, the elector, the failure detector, desired-state sync), which the simulator drives
//! too. This crate feeds them events and executes what they output. Every module:
//!
//! - [`agent`]: the I/O shell: the one loop that owns the core, the fleet (gossip, sync,
//!   departures), the API handlers, the local HTTP port (metrics, leases) and the effects.
//! - [`api`]: the API framing shared by the Unix socket and QUIC.
//! - [`channel`]: bounded channels into the agent loop (wait or drop-and-count when full).
//! - [`net`]: QUIC with mutual TLS (API, sync, joins) and the failure detector's UDP socket.
//! - [`proxy`]: the L4 load-balancing proxy: a listener per service port at its stable
//!   loopback address, forwarding TCP connections and UDP flows to the instances the service
//!   table lists.
//! - [`gossip`]: sealing of gossip and probe packets with the cluster keyring (AEAD, rotation,
//!   per-sender replay windows) and the sealed UDP transport chitchat runs on.
//! - [`cluster`]: a member's cluster material on disk (CA, keyring, certificate, seeds), joins
//!   and tokens; the operator's client material.
//! - [`identity`]: certificates (cluster CA, nodes, users), join tokens, default node ids.
//! - [`runtime`]: the `Runtime` trait, the process runtime (the embedded default), Docker and
//!   Podman containers, cgroups, and the fence for singletons.
//! - [`secrets`]: secrets and configs on a node: their files in memory-backed directories,
//!   written for an instance before it starts, rewritten in place, wiped when it is gone.
//! - [`dns`]: the DNS server for `svc.starling`, answering from the service table.
//! - [`events`]: this node's events in a small bounded log on disk, and the fleet-wide
//!   answer to `starling get events` (merged by HLC from every live peer).
//! - [`health`]: exec, TCP and HTTP probes, run by the shell, fed back to the core.
//! - [`store`]: the node's durable state, written atomically (write, fsync, rename, fsync dir).
//! - [`clock`]: the only place the shell reads the wall clock.

#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod channel;
pub mod clock;
pub mod cluster;
pub mod dns;
pub mod events;
pub mod gossip;
pub mod health;
pub mod identity;
pub mod lan;
pub mod net;
pub mod proxy;
pub mod runtime;
pub mod secrets;
pub mod store;

pub use starling_core as core;
pub use starling_protocol as protocol;
