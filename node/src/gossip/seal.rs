//! Authenticated encryption of gossip and probe packets with the cluster keyring.
//!
//! chitchat sends plaintext UDP and checks nothing but a cluster id string, so anyone on the
//! LAN could inject state. Every packet is therefore sealed with XChaCha20-Poly1305 under the
//! newest key of the cluster's [`Keyring`]; any listed key opens it, so keys rotate without a
//! flag day (add the new key everywhere, make it primary, then drop the old one), as in Serf.
//!
//! Packet layout: a header that is associated data,
//! `version u8 | key id u32 | sender generation u64 | counter u64`, then `nonce [24]`, then the
//! ciphertext and tag of `channel u8 | sender length u8 | sender [length] | message`.
//! The sender (a node id) travels inside the ciphertext so that a listener on the LAN does not
//! learn the fleet's names, and it is authenticated like everything else: the replay window is
//! kept per sealed sender, never per source address, so a captured packet re-sent from another
//! port is still refused. The channel says which socket the packet was sealed for, so a gossip
//! packet replayed to the probe socket cannot advance the probe window of its sender.
//!
//! `(generation, counter)` is the sender's strictly increasing sequence: a receiver drops a
//! replayed or re-ordered-too-far packet with a 64-packet sliding window per sender, and never
//! goes back to an older generation of a sender it has heard. Nonces are 24 random bytes from
//! the caller: with XChaCha20's 192-bit nonces they never collide, whatever the clock did.
//! No clock, no randomness here: the caller passes the nonce, the generation (start-up time)
//! and the counter.

use std::collections::BTreeMap;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

/// Packet format version. Version 2 seals the sender's identity and channel.
const SEAL_VERSION: u8 = 2;
/// Header bytes before the nonce.
const HEADER_BYTES: usize = 1 + 4 + 8 + 8;
/// Nonce bytes.
pub const NONCE_BYTES: usize = 24;
/// Poly1305 tag bytes.
const TAG_BYTES: usize = 16;
/// Longest sender identity: its length travels as one byte (node ids are at most 128 bytes).
pub const SENDER_BYTES_MAX: usize = 255;
/// Packets remembered behind the newest one per sender, for replay detection.
const REPLAY_WINDOW: u64 = 64;
/// Most senders a [`ReplayGuard`] remembers by default; the one heard least recently is
/// forgotten beyond this. Far above any fleet, so in practice nothing is ever forgotten.
pub const SENDERS_MAX: usize = 65_536;

/// Why a packet was dropped (each is counted by the transport).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Too short, an unknown format version, or no valid sender inside.
    #[error("malformed packet")]
    Malformed,
    /// Sealed with a key this node does not hold.
    #[error("unknown key id")]
    UnknownKey,
    /// Authentication failed: forged, corrupted, or sealed with another key of that id.
    #[error("authentication failed")]
    Forged,
    /// Seen before, too old, from an older generation of its sender, or sealed for the other
    /// socket (members never send that, so it was captured and re-sent).
    #[error("replayed packet")]
    Replayed,
}

/// The socket a packet is sealed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Channel {
    /// chitchat gossip (`port`/udp).
    Gossip,
    /// Failure-detector probes and verdicts (`port+2`/udp).
    Probe,
}

impl Channel {
    fn code(self) -> u8 {
        match self {
            Channel::Gossip => 1,
            Channel::Probe => 2,
        }
    }
}

/// Who seals: a node's id, its generation and the socket its packets are for. Built once per
/// socket; its packets carry it authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    node: String,
    generation: u64,
    channel: Channel,
}

/// A sender id that cannot travel: empty or longer than [`SENDER_BYTES_MAX`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a sender id must be 1 to {SENDER_BYTES_MAX} bytes, got {0}")]
pub struct SenderIdError(pub usize);

impl Sender {
    /// Node `node` started at `generation` (must grow across restarts: a receiver refuses a
    /// generation older than one it has heard from the same node), sealing for `channel`.
    pub fn new(node: &str, generation: u64, channel: Channel) -> Result<Self, SenderIdError> {
        if node.is_empty() || node.len() > SENDER_BYTES_MAX {
            return Err(SenderIdError(node.len()));
        }
        Ok(Sender {
            node: node.to_string(),
            generation,
            channel,
        })
    }
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

    /// Seals `message` from `sender` as packet `counter` of its generation (strictly
    /// increasing per sender and generation) with a fresh random `nonce`.
    pub fn seal_as(
        &self,
        sender: &Sender,
        counter: u64,
        nonce: [u8; NONCE_BYTES],
        message: &[u8],
    ) -> Vec<u8> {
        // `Sender::new` bounds the id; the anonymous sender of `seal` is empty.
        debug_assert!(sender.node.len() <= SENDER_BYTES_MAX);
        let mut packet = Vec::with_capacity(
            HEADER_BYTES + NONCE_BYTES + 2 + sender.node.len() + message.len() + TAG_BYTES,
        );
        packet.push(SEAL_VERSION);
        packet.extend_from_slice(&self.primary.to_be_bytes());
        packet.extend_from_slice(&sender.generation.to_be_bytes());
        packet.extend_from_slice(&counter.to_be_bytes());
        packet.extend_from_slice(&nonce);
        let mut framed = Vec::with_capacity(2 + sender.node.len() + message.len());
        framed.push(sender.channel.code());
        framed.push(sender.node.len() as u8);
        framed.extend_from_slice(sender.node.as_bytes());
        framed.extend_from_slice(message);
        let cipher = &self.keys[&self.primary];
        // Encryption cannot fail for in-memory buffers of this size; an empty body would be
        // refused by every receiver, which is the safe failure.
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &framed,
                    aad: &packet[..HEADER_BYTES],
                },
            )
            .unwrap_or_default();
        packet.extend_from_slice(&sealed);
        packet
    }

    /// Seals `message` from no member, for the gossip socket: receivers authenticate it and
    /// then refuse it as malformed. For tests that need a packet under some key; members seal
    /// with [`Keyring::seal_as`].
    pub fn seal(
        &self,
        generation: u64,
        counter: u64,
        nonce: [u8; NONCE_BYTES],
        message: &[u8],
    ) -> Vec<u8> {
        let anonymous = Sender {
            node: String::new(),
            generation,
            channel: Channel::Gossip,
        };
        self.seal_as(&anonymous, counter, nonce, message)
    }

    /// Opens a packet that arrived at the `channel` socket: checks format, key, authenticity
    /// and the sealed sender. Replay is checked separately by [`ReplayGuard`], after
    /// authentication, so forged packets cannot poison the window.
    pub fn open(&self, channel: Channel, packet: &[u8]) -> Result<Opened, OpenError> {
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
        let mut plaintext = cipher
            .decrypt(
                nonce,
                Payload {
                    msg: body,
                    aad: &packet[..HEADER_BYTES],
                },
            )
            .map_err(|_| OpenError::Forged)?;
        let [code, len] = *plaintext.first_chunk::<2>().ok_or(OpenError::Malformed)?;
        let sender = plaintext
            .get(2..2 + usize::from(len))
            .filter(|s| !s.is_empty())
            .and_then(|s| std::str::from_utf8(s).ok())
            .ok_or(OpenError::Malformed)?
            .to_string();
        if code != channel.code() {
            return Err(OpenError::Replayed);
        }
        plaintext.drain(..2 + usize::from(len));
        Ok(Opened {
            sender,
            generation,
            counter,
            plaintext,
        })
    }
}

/// An authenticated packet's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The node that sealed it.
    pub sender: String,
    /// The sender's generation (its start-up time).
    pub generation: u64,
    /// The sender's packet counter within that generation.
    pub counter: u64,
    /// The message.
    pub plaintext: Vec<u8>,
}

/// Remembers, per sealed sender, its newest generation, the newest counter in it and a
/// 64-packet window behind that counter. One guard per socket.
///
/// Bounded by a cap on senders: beyond it, the sender heard least recently is forgotten (a
/// forgotten sender's old packets would open once more). Only authenticated, accepted packets
/// add or refresh a sender, so someone outside the cluster cannot grow the guard or push a
/// live sender out: replays are refused without touching it, and only packets sealed by
/// members carry sender ids at all.
#[derive(Debug)]
pub struct ReplayGuard {
    senders: BTreeMap<String, Window>,
    senders_max: usize,
    /// Packets accepted so far; a sender's `heard_at` orders eviction deterministically.
    accepted: u64,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    generation: u64,
    newest: u64,
    /// Bit `i` set: counter `newest - i` was accepted.
    seen: u64,
    heard_at: u64,
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::with_senders_max(SENDERS_MAX)
    }
}

impl ReplayGuard {
    /// A guard that remembers at most `senders_max` senders (at least one).
    pub fn with_senders_max(senders_max: usize) -> Self {
        ReplayGuard {
            senders: BTreeMap::new(),
            senders_max: senders_max.max(1),
            accepted: 0,
        }
    }

    /// Accepts an authenticated packet unless its sender's window saw it, it is too old, or
    /// it belongs to an older generation than one heard from that sender. The source address
    /// plays no part.
    pub fn accept(&mut self, opened: &Opened) -> Result<(), OpenError> {
        let heard_at = self.accepted + 1;
        if let Some(window) = self.senders.get_mut(&opened.sender) {
            window.admit(opened.generation, opened.counter)?;
            window.heard_at = heard_at;
        } else {
            if self.senders.len() >= self.senders_max
                && let Some(quietest) = self
                    .senders
                    .iter()
                    .min_by_key(|(_, w)| w.heard_at)
                    .map(|(node, _)| node.clone())
            {
                self.senders.remove(&quietest);
            }
            self.senders.insert(
                opened.sender.clone(),
                Window {
                    generation: opened.generation,
                    newest: opened.counter,
                    seen: 1,
                    heard_at,
                },
            );
        }
        self.accepted = heard_at;
        Ok(())
    }
}

impl Window {
    fn admit(&mut self, generation: u64, counter: u64) -> Result<(), OpenError> {
        if generation < self.generation {
            return Err(OpenError::Replayed);
        }
        if generation > self.generation {
            // The sender restarted: its counter starts again.
            self.generation = generation;
            self.newest = counter;
            self.seen = 1;
            return Ok(());
        }
        if counter > self.newest {
            let shift = counter - self.newest;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.newest = counter;
            return Ok(());
        }
        let age = self.newest - counter;
        if age >= REPLAY_WINDOW {
            return Err(OpenError::Replayed);
        }
        let bit = 1u64 << age;
        if self.seen & bit != 0 {
            return Err(OpenError::Replayed);
        }
        self.seen |= bit;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(node: &str, generation: u64) -> Sender {
        Sender::new(node, generation, Channel::Gossip).expect("sender")
    }

    /// Seals and opens a packet from `node` as the receiver's socket would.
    fn opened(ring: &Keyring, node: &str, generation: u64, counter: u64) -> Opened {
        let packet = ring.seal_as(
            &sender(node, generation),
            counter,
            [counter as u8; NONCE_BYTES],
            b"m",
        );
        ring.open(Channel::Gossip, &packet).expect("opens")
    }

    #[test]
    fn sealed_packets_open_with_the_keyring_and_hide_the_message_and_the_sender() {
        let ring = Keyring::new(1, [7; 32]);
        let from = Sender::new("edge-node-17", 100, Channel::Probe).expect("sender");
        let packet = ring.seal_as(&from, 1, [3; NONCE_BYTES], b"node-1 heartbeat 42");
        assert!(
            !packet.windows(9).any(|w| w == b"heartbeat"),
            "no plaintext on the wire"
        );
        assert!(
            !packet.windows(12).any(|w| w == b"edge-node-17"),
            "no sender name on the wire"
        );
        let opened = ring.open(Channel::Probe, &packet).expect("opens");
        assert_eq!(
            (
                opened.sender.as_str(),
                opened.generation,
                opened.counter,
                opened.plaintext.as_slice()
            ),
            ("edge-node-17", 100, 1, b"node-1 heartbeat 42".as_slice())
        );
    }

    #[test]
    fn a_wrong_key_a_tampered_byte_or_garbage_is_refused() {
        let ring = Keyring::new(1, [7; 32]);
        let other = Keyring::new(1, [8; 32]);
        let packet = ring.seal_as(&sender("a", 100), 1, [3; NONCE_BYTES], b"state");
        assert_eq!(other.open(Channel::Gossip, &packet), Err(OpenError::Forged));
        for i in [0usize, 2, 7, 15, 30, packet.len() - 1] {
            let mut bad = packet.clone();
            bad[i] ^= 1;
            assert!(
                ring.open(Channel::Gossip, &bad).is_err(),
                "flipping byte {i} is detected"
            );
        }
        assert_eq!(
            ring.open(Channel::Gossip, &packet[..20]),
            Err(OpenError::Malformed)
        );
        assert_eq!(
            Keyring::new(9, [7; 32]).open(Channel::Gossip, &packet),
            Err(OpenError::UnknownKey)
        );
    }

    #[test]
    fn a_packet_from_no_sender_authenticates_but_is_refused() {
        let ring = Keyring::new(1, [7; 32]);
        let packet = ring.seal(1, 1, [0; NONCE_BYTES], b"x");
        assert_eq!(
            ring.open(Channel::Gossip, &packet),
            Err(OpenError::Malformed)
        );
        assert_eq!(
            Sender::new("", 1, Channel::Gossip),
            Err(SenderIdError(0)),
            "members always name themselves"
        );
        assert!(Sender::new(&"n".repeat(SENDER_BYTES_MAX + 1), 1, Channel::Gossip).is_err());
    }

    #[test]
    fn a_packet_sealed_for_one_socket_is_refused_at_the_other() {
        let ring = Keyring::new(1, [7; 32]);
        let gossip = ring.seal_as(&sender("a", 1), 1, [0; NONCE_BYTES], b"x");
        assert_eq!(
            ring.open(Channel::Probe, &gossip),
            Err(OpenError::Replayed),
            "captured at the gossip port, re-sent to the probe port"
        );
    }

    #[test]
    fn keys_rotate_without_a_flag_day() {
        let mut old = Keyring::new(1, [1; 32]);
        let mut new = Keyring::new(1, [1; 32]);
        new.add(2, [2; 32]);
        assert!(new.set_primary(2));
        let a = sender("a", 5);
        let from_new = new.seal_as(&a, 1, [0; NONCE_BYTES], b"x");
        assert_eq!(
            old.open(Channel::Gossip, &from_new),
            Err(OpenError::UnknownKey),
            "not yet added"
        );
        old.add(2, [2; 32]);
        assert!(old.open(Channel::Gossip, &from_new).is_ok());
        assert!(
            new.open(Channel::Gossip, &old.seal_as(&a, 2, [1; NONCE_BYTES], b"y"))
                .is_ok(),
            "old primary still opens"
        );
        assert!(!new.remove(2), "the primary cannot be dropped");
        assert!(new.remove(1));
        assert_eq!(
            new.open(Channel::Gossip, &old.seal_as(&a, 3, [2; NONCE_BYTES], b"z")),
            Err(OpenError::UnknownKey)
        );
    }

    #[test]
    fn replays_and_stale_counters_are_dropped() {
        let ring = Keyring::new(1, [7; 32]);
        let mut guard = ReplayGuard::default();
        let open = |g: u64, c: u64| opened(&ring, "a", g, c);
        assert!(guard.accept(&open(10, 5)).is_ok());
        assert_eq!(
            guard.accept(&open(10, 5)),
            Err(OpenError::Replayed),
            "same packet twice"
        );
        assert!(
            guard.accept(&open(10, 3)).is_ok(),
            "late but inside the window"
        );
        assert_eq!(guard.accept(&open(10, 3)), Err(OpenError::Replayed));
        assert!(guard.accept(&open(10, 200)).is_ok());
        assert_eq!(
            guard.accept(&open(10, 100)),
            Err(OpenError::Replayed),
            "older than the window"
        );
    }

    #[test]
    fn a_replay_is_refused_whatever_address_it_comes_from() {
        // The guard never sees an address: the window belongs to the sealed sender, so the
        // same bytes re-sent from any port open to the same (sender, generation, counter).
        let ring = Keyring::new(1, [7; 32]);
        let packet = ring.seal_as(&sender("a", 10), 1, [1; NONCE_BYTES], b"ping");
        let mut guard = ReplayGuard::default();
        let first = ring.open(Channel::Gossip, &packet).expect("opens");
        assert!(guard.accept(&first).is_ok());
        let again = ring.open(Channel::Gossip, &packet).expect("opens");
        assert_eq!(guard.accept(&again), Err(OpenError::Replayed));
        assert!(
            guard.accept(&opened(&ring, "b", 10, 1)).is_ok(),
            "another sender has its own window"
        );
    }

    #[test]
    fn a_new_generation_is_accepted_and_an_older_one_refused() {
        let ring = Keyring::new(1, [7; 32]);
        let mut guard = ReplayGuard::default();
        assert!(guard.accept(&opened(&ring, "a", 10, 500)).is_ok());
        assert!(
            guard.accept(&opened(&ring, "a", 11, 1)).is_ok(),
            "a restarted sender starts a new generation at counter 1"
        );
        assert!(guard.accept(&opened(&ring, "a", 11, 2)).is_ok());
        assert_eq!(
            guard.accept(&opened(&ring, "a", 10, 501)),
            Err(OpenError::Replayed),
            "a packet of the previous generation, even with a newer counter"
        );
        assert_eq!(
            guard.accept(&opened(&ring, "a", 11, 1)),
            Err(OpenError::Replayed)
        );
    }

    #[test]
    fn the_sender_cap_forgets_the_quietest_sender_and_keeps_live_windows() {
        let ring = Keyring::new(1, [7; 32]);
        let mut guard = ReplayGuard::with_senders_max(2);
        assert!(guard.accept(&opened(&ring, "a", 1, 1)).is_ok());
        assert!(guard.accept(&opened(&ring, "b", 1, 1)).is_ok());
        assert!(
            guard.accept(&opened(&ring, "a", 1, 2)).is_ok(),
            "a heard again"
        );
        assert!(guard.accept(&opened(&ring, "c", 1, 1)).is_ok());
        assert_eq!(guard.senders.len(), 2, "bounded");
        assert!(
            guard.senders.contains_key("a") && guard.senders.contains_key("c"),
            "b, heard least recently, is the one forgotten"
        );
        assert_eq!(
            guard.accept(&opened(&ring, "a", 1, 2)),
            Err(OpenError::Replayed),
            "a's window survived the newcomer"
        );
        // Refused packets change nothing, so replaying can never push a live sender out.
        for _ in 0..10 {
            assert!(guard.accept(&opened(&ring, "c", 1, 1)).is_err());
        }
        assert!(guard.accept(&opened(&ring, "b", 1, 5)).is_ok());
        assert!(
            guard.senders.contains_key("b") && guard.senders.contains_key("c"),
            "a is now the quietest: c's last accept came after a's"
        );
    }
}
