//! The gossip and probe sockets' packet opening (`node::gossip::seal`), the replay window
//! behind it (`node::gossip::replay`) and the probe plaintext decode, with a fixed keyring.
//!
//! Random bytes almost never authenticate, so the first byte picks what the rest is:
//! a raw datagram; the plaintext of a packet this target seals under the fixed key (so the
//! fuzzer reaches the sealed framing: channel, sender length, sender, message); or a run of
//! authenticated (sender, generation, counter) triples for the replay window.
#![no_main]

use std::collections::BTreeSet;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use libfuzzer_sys::fuzz_target;
use starling_fuzz::gossip::replay::ReplayGuard;
use starling_fuzz::gossip::seal::{Channel, Keyring, NONCE_BYTES, OpenError, Opened};
use starling_fuzz::{KEY, KEY_ID, ProbePacket};
use starling_protocol::wire;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let ring = Keyring::new(KEY_ID, KEY);
    match mode % 3 {
        0 => {
            for channel in [Channel::Gossip, Channel::Probe] {
                if let Ok(opened) = ring.open(channel, rest) {
                    received(channel, opened);
                }
            }
        }
        1 => {
            // generation u64 | counter u64 | framed plaintext
            let Some((numbers, framed)) = rest.split_first_chunk::<16>() else {
                return;
            };
            let packet = seal_raw(numbers, framed);
            for channel in [Channel::Gossip, Channel::Probe] {
                match ring.open(channel, &packet) {
                    Ok(opened) => {
                        assert!(
                            !opened.sender.is_empty(),
                            "an opened packet names its sender"
                        );
                        assert!(
                            framed.ends_with(&opened.plaintext),
                            "the message is the rest"
                        );
                        received(channel, opened);
                    }
                    Err(e) => assert!(
                        matches!(e, OpenError::Malformed | OpenError::Replayed),
                        "a packet sealed under the key authenticates, got {e:?}"
                    ),
                }
            }
        }
        _ => replay_window(rest),
    }
});

/// What the sockets do with an authentic packet: the replay window, then the probe decode
/// (the gossip socket hands the plaintext to chitchat: see the `chitchat_packet` target).
fn received(channel: Channel, opened: Opened) {
    let mut guard = ReplayGuard::default();
    assert_eq!(guard.accept(&opened), Ok(()), "a first packet is fresh");
    assert_eq!(
        guard.accept(&opened),
        Err(OpenError::Replayed),
        "the same packet twice is a replay"
    );
    if channel == Channel::Probe {
        let _ = wire::decode::<ProbePacket>(&opened.plaintext);
    }
}

/// Seals `framed` (channel, sender length, sender, message) as a sender would, under the
/// fixed key, whatever its framing.
fn seal_raw(numbers: &[u8; 16], framed: &[u8]) -> Vec<u8> {
    let mut packet = vec![2u8];
    packet.extend_from_slice(&KEY_ID.to_be_bytes());
    packet.extend_from_slice(numbers);
    let nonce = [9u8; NONCE_BYTES];
    packet.extend_from_slice(&nonce);
    let cipher = XChaCha20Poly1305::new(Key::from_slice(&KEY));
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: framed,
                aad: &packet[..21],
            },
        )
        .expect("in-memory encryption succeeds");
    packet.extend_from_slice(&sealed);
    packet
}

/// Authenticated packets from a few senders, generations and counters, in any order, at a
/// guard that remembers two senders: the same packet is never accepted twice while its
/// sender is remembered, and a refusal changes nothing.
fn replay_window(ops: &[u8]) {
    let mut guard = ReplayGuard::with_senders_max(2);
    let mut accepted = BTreeSet::new();
    let mut forgotten = BTreeSet::new();
    for op in ops.chunks_exact(4) {
        let sender = format!("n{}", op[0] % 3);
        let generation = u64::from(op[1] % 6);
        let counter = u64::from(u16::from_be_bytes([op[2], op[3]]) % 300);
        let opened = Opened {
            sender: sender.clone(),
            generation,
            counter,
            plaintext: Vec::new(),
        };
        let before = format!("{guard:?}");
        match guard.accept(&opened) {
            Ok(()) => {
                let fresh = accepted.insert((sender.clone(), generation, counter));
                assert!(
                    fresh || forgotten.contains(&sender),
                    "{sender} gen {generation} counter {counter} accepted twice"
                );
                // Beyond two senders the quietest is forgotten, and its old packets open
                // again (documented): track who may have been.
                if accepted
                    .iter()
                    .map(|(s, _, _)| s)
                    .collect::<BTreeSet<_>>()
                    .len()
                    > 2
                {
                    forgotten.extend(accepted.iter().map(|(s, _, _)| s.clone()));
                }
            }
            Err(e) => {
                assert_eq!(e, OpenError::Replayed, "the window refuses only replays");
                assert_eq!(
                    format!("{guard:?}"),
                    before,
                    "a refused packet changes nothing"
                );
            }
        }
    }
}
