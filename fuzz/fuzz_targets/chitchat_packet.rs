//! The plaintext of an authentic gossip packet as the agent hands it to chitchat 0.11.1:
//! `ChitchatMessage::deserialize` (public in that version), exactly what
//! `node::gossip::transport::SealedSocket::accept` calls. It never panics. A `Syn` or `BadCluster` that deserializes serializes and deserializes to the same
//! message; a message carrying a delta is not re-serialized: chitchat's delta encoding is not
//! canonical (blocks may be split or compressed differently) and `Delta::serialize` asserts
//! that the length is the one received, so re-sending a received delta would panic. The agent
//! never does: chitchat applies received deltas and builds its own.
#![no_main]

use chitchat::{ChitchatMessage, Deserializable, Serializable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut body = data;
    let Ok(message) = ChitchatMessage::deserialize(&mut body) else {
        return;
    };
    if matches!(
        message,
        ChitchatMessage::Syn { .. } | ChitchatMessage::BadCluster
    ) {
        let mut again = Vec::with_capacity(message.serialized_len());
        message.serialize(&mut again);
        let back = ChitchatMessage::deserialize(&mut again.as_slice())
            .expect("a serialized message deserializes");
        assert_eq!(back, message, "round trip changed the message");
    } else {
        let _ = format!("{message:?}");
    }
});
