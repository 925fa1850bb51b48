//! CLI-to-node frames: `ApiRequest` and `ApiResponse`. Decoding never panics, and what
//! decodes round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_fuzz::decode_round_trip;
use starling_protocol::wire::{ApiRequest, ApiResponse};

fuzz_target!(|data: &[u8]| {
    let _ = decode_round_trip::<ApiRequest>(data);
    let _ = decode_round_trip::<ApiResponse>(data);
});
