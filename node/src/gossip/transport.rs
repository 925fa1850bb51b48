//! chitchat over UDP, sealed with the cluster keyring.
//!
//! chitchat 0.11.1 exposes its message (de)serialisation, so this transport can serialise each
//! message, seal it ([`super::seal`]), and open and check every packet before chitchat sees it.
//! Forged, damaged, replayed and plaintext packets are dropped and counted in [`GossipCounters`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use starling_protocol::hash::hash64;

use super::seal::{Keyring, NONCE_BYTES, OpenError, ReplayGuard};

/// Largest UDP payload chitchat may produce (its own limit).
const DATAGRAM_BYTES_MAX: usize = 65_507;

/// Gossip traffic counters, exported as metrics.
#[derive(Debug, Default)]
pub struct GossipCounters {
    /// Packets sent.
    pub packets_out: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// Packets received and accepted.
    pub packets_in: AtomicU64,
    /// Bytes received (accepted or not).
    pub bytes_in: AtomicU64,
    /// Dropped: sealed with an unknown key or failing authentication.
    pub dropped_auth: AtomicU64,
    /// Dropped: replayed.
    pub dropped_replay: AtomicU64,
    /// Dropped: malformed (wrong format, or not a chitchat message once opened).
    pub dropped_malformed: AtomicU64,
}

/// Opens a received packet: counts its bytes, checks key, authenticity and freshness, and
/// counts every drop by reason. The plaintext of an accepted packet, else `None`. Shared by
/// the gossip transport and the failure detector's socket.
pub(crate) fn open_counted(
    keyring: &RwLock<Keyring>,
    guard: &mut ReplayGuard,
    counters: &GossipCounters,
    from: SocketAddr,
    packet: &[u8],
) -> Option<Vec<u8>> {
    counters
        .bytes_in
        .fetch_add(packet.len() as u64, Ordering::Relaxed);
    let opened = {
        let ring = keyring.read().unwrap_or_else(|e| e.into_inner());
        ring.open(packet)
    };
    match opened.and_then(|o| guard.accept(from, &o).map(|_| o)) {
        Ok(o) => Some(o.plaintext),
        Err(OpenError::Replayed) => {
            counters.dropped_replay.fetch_add(1, Ordering::Relaxed);
            None
        }
        Err(OpenError::Malformed) => {
            counters.dropped_malformed.fetch_add(1, Ordering::Relaxed);
            None
        }
        Err(OpenError::UnknownKey | OpenError::Forged) => {
            counters.dropped_auth.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%from, "dropped a packet that failed authentication");
            None
        }
    }
}

/// A chitchat transport that seals every packet.
pub struct SealedUdpTransport {
    keyring: Arc<RwLock<Keyring>>,
    counters: Arc<GossipCounters>,
    /// This node's generation (start-up time): part of every nonce and replay sequence.
    generation: u64,
    /// Distinguishes this sender in nonces.
    sender_tag: u64,
}

impl SealedUdpTransport {
    /// A transport for node `node` started at `generation` (must grow across restarts).
    pub fn new(
        keyring: Arc<RwLock<Keyring>>,
        counters: Arc<GossipCounters>,
        node: &str,
        generation: u64,
    ) -> Self {
        SealedUdpTransport {
            keyring,
            counters,
            generation,
            sender_tag: hash64(node.as_bytes()),
        }
    }
}

#[async_trait]
impl Transport for SealedUdpTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("cannot bind {listen_addr}/udp for gossip"))?;
        Ok(Box::new(SealedSocket {
            socket,
            keyring: self.keyring.clone(),
            counters: self.counters.clone(),
            generation: self.generation,
            sender_tag: self.sender_tag,
            counter: 0,
            guard: ReplayGuard::default(),
            buf: vec![0u8; DATAGRAM_BYTES_MAX + 128],
        }))
    }
}

struct SealedSocket {
    socket: tokio::net::UdpSocket,
    keyring: Arc<RwLock<Keyring>>,
    counters: Arc<GossipCounters>,
    generation: u64,
    sender_tag: u64,
    counter: u64,
    guard: ReplayGuard,
    buf: Vec<u8>,
}

impl SealedSocket {
    /// Nonces never repeat for a key: (generation, counter) never repeats for a sender, and
    /// the sender tag separates senders.
    fn nonce(&self) -> [u8; NONCE_BYTES] {
        let mut nonce = [0u8; NONCE_BYTES];
        nonce[..8].copy_from_slice(&self.generation.to_be_bytes());
        nonce[8..16].copy_from_slice(&self.counter.to_be_bytes());
        nonce[16..].copy_from_slice(&self.sender_tag.to_be_bytes());
        nonce
    }

    fn accept(&mut self, from: SocketAddr, len: usize) -> Option<ChitchatMessage> {
        let c = &self.counters;
        let plaintext = open_counted(&self.keyring, &mut self.guard, c, from, &self.buf[..len])?;
        let mut body = plaintext.as_slice();
        match ChitchatMessage::deserialize(&mut body) {
            Ok(message) => {
                c.packets_in.fetch_add(1, Ordering::Relaxed);
                Some(message)
            }
            Err(_) => {
                c.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

#[async_trait]
impl Socket for SealedSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        let mut plain = Vec::with_capacity(message.serialized_len());
        message.serialize(&mut plain);
        self.counter += 1;
        let packet = {
            let ring = self.keyring.read().unwrap_or_else(|e| e.into_inner());
            ring.seal(self.generation, self.counter, self.nonce(), &plain)
        };
        match self.socket.send_to(&packet, to).await {
            Ok(_) => {
                self.counters.packets_out.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .bytes_out
                    .fetch_add(packet.len() as u64, Ordering::Relaxed);
            }
            // A peer that is gone is the failure detector's business, not a broken transport.
            Err(e) => tracing::debug!(%to, error = %e, "gossip send failed"),
        }
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (len, from) = match self.socket.recv_from(&mut self.buf).await {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e).context("gossip socket failed"),
            };
            if let Some(message) = self.accept(from, len) {
                return Ok((from, message));
            }
        }
    }
}
