//! Gossip: membership and per-node state between agents, with chitchat (pinned to 0.11.1, the
//! last version whose messages can be serialised outside the crate) over a transport that
//! seals every packet with the cluster keyring.

pub mod replay;
pub mod seal;
pub mod transport;

pub use transport::{GossipCounters, SealedUdpTransport};
