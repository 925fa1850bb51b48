//! Gossip: membership and per-node state between agents (chitchat, pinned to 0.11.1, over an
//! encrypted transport). This build has the sealing layer ([`seal`]); the chitchat transport
//! that uses it lands with the fleet issue.

pub mod seal;
