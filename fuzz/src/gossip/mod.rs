//! The node's gossip sealing and replay window, compiled from its sources unchanged.

#[path = "../../../node/src/gossip/seal.rs"]
pub mod seal;

#[path = "../../../node/src/gossip/replay.rs"]
pub mod replay;
