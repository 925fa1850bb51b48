//! The failure detector's socket: pings, acks, indirect pings and verdicts as single UDP
//! datagrams sealed with the cluster keyring (the same AEAD and replay window as gossip).
//!
//! Probes stay off QUIC on purpose: a probe of a dead peer must cost one datagram, not a
//! handshake that times out, and verdicts are broadcast to every member.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use starling_protocol::NodeId;
use starling_protocol::hash::hash64;
use starling_protocol::wire::{self, PeerMessage};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::gossip::GossipCounters;
use crate::gossip::seal::{Keyring, NONCE_BYTES, ReplayGuard};
use crate::gossip::transport::open_counted;

/// A probe datagram's content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ProbePacket {
    from: NodeId,
    message: PeerMessage,
}

impl wire::Check for ProbePacket {
    fn check(&self) -> Result<(), String> {
        wire::Check::check(&self.message)
    }
}

/// Sends sealed probe datagrams; cheap to clone.
#[derive(Clone)]
pub struct ProbeSender {
    socket: Arc<UdpSocket>,
    keyring: Arc<RwLock<Keyring>>,
    counters: Arc<GossipCounters>,
    me: NodeId,
    generation: u64,
    tag: u64,
    counter: Arc<AtomicU64>,
}

impl ProbeSender {
    /// Sends `message` to `to`; failures are the detector's business (a lost probe).
    pub fn send(&self, to: SocketAddr, message: PeerMessage) {
        let packet = ProbePacket {
            from: self.me.clone(),
            message,
        };
        let Ok(plain) = wire::encode(&packet) else {
            return;
        };
        let counter = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let mut nonce = [0u8; NONCE_BYTES];
        nonce[..8].copy_from_slice(&self.generation.to_be_bytes());
        nonce[8..16].copy_from_slice(&counter.to_be_bytes());
        nonce[16..].copy_from_slice(&self.tag.to_be_bytes());
        let sealed = {
            let ring = self.keyring.read().unwrap_or_else(|e| e.into_inner());
            ring.seal(self.generation, counter, nonce, &plain)
        };
        if self.socket.try_send_to(&sealed, to).is_ok() {
            self.counters.packets_out.fetch_add(1, Ordering::Relaxed);
            self.counters
                .bytes_out
                .fetch_add(sealed.len() as u64, Ordering::Relaxed);
        }
    }
}

/// Binds the probe socket; returns the sender and spawns a receiver that forwards every
/// authentic, fresh message as `(from, message)`.
pub async fn bind(
    addr: SocketAddr,
    keyring: Arc<RwLock<Keyring>>,
    counters: Arc<GossipCounters>,
    me: NodeId,
    generation: u64,
    inbox: mpsc::UnboundedSender<(NodeId, PeerMessage)>,
) -> std::io::Result<ProbeSender> {
    let socket = Arc::new(UdpSocket::bind(addr).await?);
    let sender = ProbeSender {
        socket: socket.clone(),
        keyring: keyring.clone(),
        counters: counters.clone(),
        tag: hash64(me.as_str().as_bytes()) ^ 0x5052_4f42,
        me,
        generation,
        counter: Arc::new(AtomicU64::new(0)),
    };
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        let mut guard = ReplayGuard::default();
        loop {
            let (len, from) = match socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    tracing::error!("probe socket failed: {e}");
                    return;
                }
            };
            let Some(plaintext) = open_counted(&keyring, &mut guard, &counters, from, &buf[..len])
            else {
                continue;
            };
            match wire::decode::<ProbePacket>(&plaintext) {
                Ok(packet) => {
                    counters.packets_in.fetch_add(1, Ordering::Relaxed);
                    if inbox.send((packet.from, packet.message)).is_err() {
                        return;
                    }
                }
                Err(_) => {
                    counters.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    Ok(sender)
}
