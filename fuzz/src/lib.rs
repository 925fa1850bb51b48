//! Shared pieces of the fuzz targets (see `fuzz_targets/` and `run.sh`).
//!
//! The gossip sealing and replay window are compiled here from the node's own sources
//! (`node/src/gossip/{seal,replay}.rs`, which depend on nothing else of the node), so the
//! `gossip_open` target fuzzes the agent's code without building all of `starling-node`
//! (its runtime, QUIC and container dependencies) with coverage instrumentation.

use std::fmt::Debug;

use serde::{Deserialize, Serialize};
use starling_protocol::names::NodeId;
use starling_protocol::wire::{self, Check, PeerMessage, WireError};

pub mod gossip;

/// The fixed key of the keyring the gossip targets open packets with.
pub const KEY: [u8; 32] = [0x5a; 32];
/// Its id.
pub const KEY_ID: u32 = 7;

/// The same shape as `node::net::probe::ProbePacket` (private there): the plaintext of a
/// probe-socket packet, decoded with `wire::decode` exactly as the probe receiver does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbePacket {
    /// The sender, which must be the sealed sender.
    pub from: NodeId,
    /// The failure detector's message.
    pub message: PeerMessage,
}

impl Check for ProbePacket {
    fn check(&self) -> Result<(), String> {
        self.message.check()
    }
}

/// Decodes `bytes` as an `M` and, when that succeeds, checks that the message re-encodes
/// and decodes to the same value: a decoded message is one this build can send again.
pub fn decode_round_trip<M>(bytes: &[u8]) -> Result<M, WireError>
where
    M: serde::de::DeserializeOwned + Serialize + Check + PartialEq + Debug,
{
    let message = wire::decode::<M>(bytes)?;
    let again = wire::encode(&message).expect("a decoded message encodes");
    let back = wire::decode::<M>(&again).expect("a re-encoded message decodes");
    assert_eq!(back, message, "round trip changed the message");
    Ok(message)
}
