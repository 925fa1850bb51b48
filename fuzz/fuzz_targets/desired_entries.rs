//! The desired state as stored (`desired.bin` bodies, every format the store still reads)
//! and as synced (entries, pages of entries). Decoding never panics, an entry that decodes
//! is checked without panicking, and a decoded state re-encodes to a state equal to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_protocol::desired::{DesiredState, Entry, legacy};
use starling_protocol::hlc::Hlc;
use starling_protocol::names::NodeId;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the decoder, so one corpus holds every kind of input.
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 8 {
        // The current `desired.bin` body: what `Store::desired` decodes after the checksum.
        0 => {
            if let Ok(state) = postcard::from_bytes::<DesiredState>(body) {
                let bytes = postcard::to_allocvec(&state).expect("a state encodes");
                let back: DesiredState =
                    postcard::from_bytes(&bytes).expect("an encoded state decodes");
                assert_eq!(back, state, "round trip changed the state");
            }
        }
        1 => drop(legacy::decode_v1(body)),
        2 => drop(legacy::decode_v2(body)),
        3 => drop(legacy::decode_v3(body)),
        4 => drop(legacy::decode_v4(body)),
        5 => drop(legacy::decode_v5(body)),
        // One entry, as `PeerMessage::Entries` carries them, then its check.
        6 => {
            if let Ok(entry) = postcard::from_bytes::<Entry>(body)
                && entry.check().is_ok()
            {
                let mut state = DesiredState::new();
                state.merge_any(entry.clone());
                // The merge is a join: the same entry again, or what the state now holds for
                // its key, changes nothing.
                assert!(
                    !state.merge_any(entry.clone()),
                    "merging twice changed the state"
                );
                let held = state
                    .any_entry(&entry.key())
                    .expect("a merged entry is held");
                assert!(
                    !state.merge_any(held),
                    "merging the held entry changed the state"
                );
            }
        }
        // A page of entries merged into a state, as anti-entropy does.
        _ => {
            if let Ok(entries) = postcard::from_bytes::<Vec<Entry>>(body) {
                let node = NodeId::new("fuzz").expect("a valid node id");
                let mut hlc = Hlc::new(node, 60_000);
                let mut state = DesiredState::new();
                let _ = state.merge_checked(entries, &mut hlc, 1_700_000_000_000);
                let bytes = postcard::to_allocvec(&state).expect("a state encodes");
                let back: DesiredState =
                    postcard::from_bytes(&bytes).expect("a merged state decodes");
                assert_eq!(back, state, "round trip changed the merged state");
            }
        }
    }
});
