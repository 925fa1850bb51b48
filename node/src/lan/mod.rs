//! Finding peers on the local network: the fleet's members, and new devices waiting to join.
//!
//! Discovery finds; it never authorises. Every agent with discovery on announces itself over
//! libp2p: mDNS to be found, identify to say who it is ([`Announcement`]). A member announces
//! `member NAME BASE CLUSTER`, a device with no certificate `pending NAME BASE`.
//! - A member hands the members of its own cluster that it finds to gossip as seeds. Gossip is
//!   sealed with the cluster's keys, so a false announcement costs one unanswered knock, and
//!   the seed's address is the one the announcement came from, not one it claims.
//! - A member keeps the waiting devices it finds in a [`PendingBook`] (`starling nodes
//!   --pending`). `starling node admit` has it send a device a one-time join token over the
//!   discovered channel (libp2p over TCP with noise: encrypted, but nobody's identity is
//!   checked on it). The device then joins through the token's seeds, with TLS pinned to the
//!   cluster CA, as any join does; the token is spent by that one join.
//!
//! Ports: the discovery channel is TCP on the base port + 3, mDNS is 5353 (UDP
//! multicast, link-local: it never leaves the LAN).
//!
//! The libp2p side is the `mdns` feature (on by default); what to do with an announcement is
//! decided in [`starling_protocol::lan`], and a build without libp2p refuses `--discover mdns`
//! clearly.

use std::net::SocketAddr;

pub use starling_protocol::lan::*;

#[cfg(feature = "mdns")]
mod swarm;

#[cfg(feature = "mdns")]
pub use swarm::{Lan, wait_for_admission};

#[cfg(not(feature = "mdns"))]
pub use absent::{Lan, wait_for_admission};

/// A build without libp2p: discovery refuses to start, so no [`Lan`] ever exists.
#[cfg(not(feature = "mdns"))]
mod absent {
    use std::net::SocketAddr;

    use starling_protocol::NodeId;
    use starling_protocol::api::PendingRow;
    use tokio::sync::mpsc;

    use super::{Announcement, LanError};

    /// Never made: [`Lan::start`] refuses.
    pub enum Lan {}

    impl Lan {
        /// Refuses: this build has no libp2p.
        pub fn start(
            _listen: SocketAddr,
            _me: &Announcement,
            _found: mpsc::Sender<(NodeId, SocketAddr)>,
        ) -> Result<Lan, LanError> {
            Err(LanError::NotBuilt)
        }

        /// Unreachable: no `Lan` exists.
        pub fn pending(&self) -> Vec<PendingRow> {
            match *self {}
        }

        /// Unreachable: no `Lan` exists.
        pub fn pick(&self, _: &[NodeId], _: bool) -> Vec<(NodeId, Result<String, String>)> {
            match *self {}
        }

        /// Unreachable: no `Lan` exists.
        pub fn admit(
            &self,
            _: &str,
            _: String,
            _: &NodeId,
        ) -> std::future::Ready<Result<(), String>> {
            match *self {}
        }
    }

    /// Refuses: this build has no libp2p.
    pub async fn wait_for_admission(
        _listen: SocketAddr,
        _me: &Announcement,
        _check: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static,
    ) -> Result<String, LanError> {
        Err(LanError::NotBuilt)
    }
}

/// The discovery channel's port is the base port plus this.
pub const PORT_OFFSET: u16 = 3;

/// The discovery channel's address for a base address.
pub fn discovery_addr(base: SocketAddr) -> SocketAddr {
    SocketAddr::new(base.ip(), base.port().wrapping_add(PORT_OFFSET))
}

/// Whether this build carries LAN discovery (the `mdns` feature).
pub const BUILT: bool = cfg!(feature = "mdns");

/// Why discovery is not available here.
#[derive(Debug, thiserror::Error)]
pub enum LanError {
    /// Built without the `mdns` feature.
    #[error(
        "this starling was built without LAN discovery (the `mdns` feature); start it with \
         --seed or --join instead, or build it with default features"
    )]
    NotBuilt,
    /// The discovery channel or mDNS could not start.
    #[error("LAN discovery on {addr}: {why}")]
    Start {
        /// The discovery channel's address.
        addr: SocketAddr,
        /// Why.
        why: String,
    },
}
