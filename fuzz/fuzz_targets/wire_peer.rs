//! Node-to-node frames: `PeerMessage`, the first frame of a QUIC stream (`Request`), the
//! answer to a join (`JoinReply`) and the probe socket's plaintext. Decoding never panics,
//! and what decodes round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_fuzz::{ProbePacket, decode_round_trip};
use starling_protocol::wire::{JoinReply, PeerMessage, Request};

fuzz_target!(|data: &[u8]| {
    let _ = decode_round_trip::<PeerMessage>(data);
    let _ = decode_round_trip::<Request>(data);
    let _ = decode_round_trip::<JoinReply>(data);
    let _ = decode_round_trip::<ProbePacket>(data);
});
