//! Authenticated encryption of gossip packets with the cluster keyring.
//!
//! chitchat sends plaintext UDP and checks nothing but a cluster id string, so anyone on the
//! LAN could inject state. Every packet is therefore sealed with XChaCha20-Poly1305 under the
//! newest key of the cluster's [`Keyring`]; any listed key opens it, so keys rotate without a
//! flag day (add the new key everywhere, make it primary, then drop the old one), as in Serf.
//!
//! Packet layout (all authenticated; the header is associated data):
//! `version u8 | key id u32 | sender generation u64 | counter u64 | nonce [24] | ciphertext+tag`.
//! Nonces are 24 random bytes from the caller (no counter reuse across restarts can collide);
//! `(generation, counter)` is the sender's strictly increasing sequence, so a receiver drops a
//! replayed or re-ordered-too-far packet with a 64-packet sliding window per sender generation.
//! No clock, no randomness here: the caller passes the nonce, the generation (start-up time)
//! and the counter.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

/// Packet format version.
const SEAL_VERSION: u8 = 1;
/// Header bytes before the nonce.
const HEADER_BYTES: usize = 1 + 4 + 8 + 8;
/// Nonce bytes.
pub const NONCE_BYTES: usize = 24;
/// Poly1305 tag bytes.
const TAG_BYTES: usize = 16;
/// Packets remembered behind the newest one per sender, for replay detection.
const REPLAY_WINDOW: u64 = 64;
/// Most senders remembered; the oldest generation is forgotten beyond this.
const SENDERS_MAX: usize = 65_536;

/// Why a packet was dropped (each is counted by the transport).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Too short, or an unknown format version.
    #[error("malformed packet")]
    Malformed,
    /// Sealed with a key this node does not hold.
    #[error("unknown key id")]
    UnknownKey,
    /// Authentication failed: forged, corrupted, or sealed with another key of that id.
    #[error("authentication failed")]
    Forged,
    /// Seen before, or too old.
    #[error("replayed packet")]
    Replayed,
}

/// The cluster's gossip keys: the primary seals, every key opens.
#[derive(Clone)]
pub struct Keyring {
    primary: u32,
    keys: BTreeMap<u32, XChaCha20Poly1305>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Keyring")
            .field("primary", &self.primary)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Keyring {
    /// A keyring with one key, which is primary.
    pub fn new(id: u32, key: [u8; 32]) -> Self {
        let mut keys = BTreeMap::new();
        keys.insert(id, XChaCha20Poly1305::new(Key::from_slice(&key)));
        Keyring { primary: id, keys }
    }

    /// Adds a key that opens packets (step 1 of a rotation).
    pub fn add(&mut self, id: u32, key: [u8; 32]) {
        self.keys
            .insert(id, XChaCha20Poly1305::new(Key::from_slice(&key)));
    }

    /// Makes a held key the one that seals (step 2). Returns false if the id is unknown.
    pub fn set_primary(&mut self, id: u32) -> bool {
        let known = self.keys.contains_key(&id);
        if known {
            self.primary = id;
        }
        known
    }

    /// Drops a key (step 3). The primary cannot be dropped.
    pub fn remove(&mut self, id: u32) -> bool {
        id != self.primary && self.keys.remove(&id).is_some()
    }

    /// Seals `plaintext` as sender `(generation, counter)` with a fresh random `nonce`.
    pub fn seal(
        &self,
        generation: u64,
        counter: u64,
        nonce: [u8; NONCE_BYTES],
        plaintext: &[u8],
    ) -> Vec<u8> {
        let mut packet =
            Vec::with_capacity(HEADER_BYTES + NONCE_BYTES + plaintext.len() + TAG_BYTES);
        packet.push(SEAL_VERSION);
        packet.extend_from_slice(&self.primary.to_be_bytes());
        packet.extend_from_slice(&generation.to_be_bytes());
        packet.extend_from_slice(&counter.to_be_bytes());
        packet.extend_from_slice(&nonce);
        let cipher = &self.keys[&self.primary];
        let aad = packet[..HEADER_BYTES].to_vec();
        // Encryption cannot fail for in-memory buffers of this size; an empty body would be
        // refused by every receiver, which is the safe failure.
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        packet.extend_from_slice(&sealed);
        packet
    }

    /// Opens a packet: checks format, key and authenticity. Replay is checked separately by
    /// [`ReplayGuard`], after authentication, so forged packets cannot poison the window.
    pub fn open(&self, packet: &[u8]) -> Result<Opened, OpenError> {
        if packet.len() < HEADER_BYTES + NONCE_BYTES + TAG_BYTES || packet[0] != SEAL_VERSION {
            return Err(OpenError::Malformed);
        }
        let word = |at: usize, len: usize| {
            packet[at..at + len]
                .iter()
                .fold(0u64, |acc, b| acc << 8 | u64::from(*b))
        };
        let key_id = word(1, 4) as u32;
        let generation = word(5, 8);
        let counter = word(13, 8);
        let cipher = self.keys.get(&key_id).ok_or(OpenError::UnknownKey)?;
        let nonce = XNonce::from_slice(&packet[HEADER_BYTES..HEADER_BYTES + NONCE_BYTES]);
        let body = &packet[HEADER_BYTES + NONCE_BYTES..];
        let plaintext = cipher
            .decrypt(
                nonce,
                Payload {
                    msg: body,
                    aad: &packet[..HEADER_BYTES],
                },
            )
            .map_err(|_| OpenError::Forged)?;
        Ok(Opened {
            generation,
            counter,
            plaintext,
        })
    }
}

/// An authenticated packet's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The sender's generation (its start-up time).
    pub generation: u64,
    /// The sender's packet counter within that generation.
    pub counter: u64,
    /// The message.
    pub plaintext: Vec<u8>,
}

/// Remembers, per sender address, the newest `(generation, counter)` and a 64-packet window.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    senders: BTreeMap<SocketAddr, (u64, u64, u64)>,
}

impl ReplayGuard {
    /// Accepts an authenticated packet from `from` unless it was seen before or is too old.
    pub fn accept(&mut self, from: SocketAddr, opened: &Opened) -> Result<(), OpenError> {
        let (generation, counter) = (opened.generation, opened.counter);
        match self.senders.get_mut(&from) {
            Some((gen_seen, _, _)) if generation < *gen_seen => Err(OpenError::Replayed),
            Some((gen_seen, newest, window)) if generation == *gen_seen => {
                if counter > *newest {
                    let shift = counter - *newest;
                    *window = if shift >= REPLAY_WINDOW {
                        0
                    } else {
                        *window << shift
                    };
                    *window |= 1;
                    *newest = counter;
                    Ok(())
                } else {
                    let age = *newest - counter;
                    let bit = 1u64.checked_shl(age as u32).unwrap_or(0);
                    if age >= REPLAY_WINDOW || *window & bit != 0 {
                        return Err(OpenError::Replayed);
                    }
                    *window |= bit;
                    Ok(())
                }
            }
            _ => {
                if self.senders.len() >= SENDERS_MAX
                    && let Some(oldest) = self
                        .senders
                        .iter()
                        .min_by_key(|(_, (g, _, _))| *g)
                        .map(|(a, _)| *a)
                {
                    self.senders.remove(&oldest);
                }
                self.senders.insert(from, (generation, counter, 1));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:7946".parse().expect("addr")
    }

    #[test]
    fn sealed_packets_open_with_the_keyring_and_hide_the_message() {
        let ring = Keyring::new(1, [7; 32]);
        let packet = ring.seal(100, 1, [3; NONCE_BYTES], b"node-1 heartbeat 42");
        assert!(
            !packet.windows(9).any(|w| w == b"heartbeat"),
            "no plaintext on the wire"
        );
        let opened = ring.open(&packet).expect("opens");
        assert_eq!(
            (
                opened.generation,
                opened.counter,
                opened.plaintext.as_slice()
            ),
            (100, 1, b"node-1 heartbeat 42".as_slice())
        );
    }

    #[test]
    fn a_wrong_key_a_tampered_byte_or_garbage_is_refused() {
        let ring = Keyring::new(1, [7; 32]);
        let other = Keyring::new(1, [8; 32]);
        let packet = ring.seal(100, 1, [3; NONCE_BYTES], b"state");
        assert_eq!(other.open(&packet), Err(OpenError::Forged));
        for i in [0usize, 2, 7, 15, 30, packet.len() - 1] {
            let mut bad = packet.clone();
            bad[i] ^= 1;
            assert!(ring.open(&bad).is_err(), "flipping byte {i} is detected");
        }
        assert_eq!(ring.open(&packet[..20]), Err(OpenError::Malformed));
        assert_eq!(
            Keyring::new(9, [7; 32]).open(&packet),
            Err(OpenError::UnknownKey)
        );
    }

    #[test]
    fn keys_rotate_without_a_flag_day() {
        let mut old = Keyring::new(1, [1; 32]);
        let mut new = Keyring::new(1, [1; 32]);
        new.add(2, [2; 32]);
        assert!(new.set_primary(2));
        let from_new = new.seal(5, 1, [0; NONCE_BYTES], b"x");
        assert_eq!(
            old.open(&from_new),
            Err(OpenError::UnknownKey),
            "not yet added"
        );
        old.add(2, [2; 32]);
        assert!(old.open(&from_new).is_ok());
        assert!(
            new.open(&old.seal(5, 2, [1; NONCE_BYTES], b"y")).is_ok(),
            "old primary still opens"
        );
        assert!(!new.remove(2), "the primary cannot be dropped");
        assert!(new.remove(1));
        assert_eq!(
            new.open(&old.seal(5, 3, [2; NONCE_BYTES], b"z")),
            Err(OpenError::UnknownKey)
        );
    }

    #[test]
    fn replays_and_stale_generations_are_dropped() {
        let ring = Keyring::new(1, [7; 32]);
        let mut guard = ReplayGuard::default();
        let open = |g: u64, c: u64| {
            ring.open(&ring.seal(g, c, [c as u8; NONCE_BYTES], b"m"))
                .expect("opens")
        };
        assert!(guard.accept(addr(), &open(10, 5)).is_ok());
        assert_eq!(
            guard.accept(addr(), &open(10, 5)),
            Err(OpenError::Replayed),
            "same packet twice"
        );
        assert!(
            guard.accept(addr(), &open(10, 3)).is_ok(),
            "late but inside the window"
        );
        assert_eq!(guard.accept(addr(), &open(10, 3)), Err(OpenError::Replayed));
        assert!(guard.accept(addr(), &open(10, 200)).is_ok());
        assert_eq!(
            guard.accept(addr(), &open(10, 100)),
            Err(OpenError::Replayed),
            "older than the window"
        );
        assert_eq!(
            guard.accept(addr(), &open(9, 1_000)),
            Err(OpenError::Replayed),
            "a previous generation"
        );
        assert!(
            guard.accept(addr(), &open(11, 1)).is_ok(),
            "a restarted sender starts a new generation"
        );
    }
}
