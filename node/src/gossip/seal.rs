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
//! replayed or re-ordered-too-far packet with a 64-packet sliding window per sender and
//! generation, and opens no generation older than the newest it heard from a sender unless it
//! kept that generation's window (`replay`). Nonces are 24 random bytes from
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
    /// Seen before, too old, from an older generation of its sender that the receiver does not
    /// keep, or sealed for the other socket (members never send that, so it was captured and
    /// re-sent).
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
    /// and the sealed sender. Replay is checked separately by [`super::replay::ReplayGuard`], after
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(node: &str, generation: u64) -> Sender {
        Sender::new(node, generation, Channel::Gossip).expect("sender")
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
}
