//! The failure detector's socket: pings, acks, indirect pings and verdicts as single UDP
//! datagrams sealed with the cluster keyring (the same AEAD and replay window as gossip).
//!
//! Probes stay off QUIC on purpose: a probe of a dead peer must cost one datagram, not a
//! handshake that times out, and verdicts are broadcast to every member.
//!
//! This socket never answers by itself: an accepted message goes to the agent as
//! `(sender, message)`, without the source address, and the agent answers the sender at the
//! address the fleet knows for it. A dropped packet (forged, unknown key, malformed, replayed
//! from any port) is counted and nothing else happens.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use ring::rand::SystemRandom;
use starling_protocol::NodeId;
use starling_protocol::wire::{self, PeerMessage};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::gossip::GossipCounters;
use crate::gossip::replay::ReplayGuard;
use crate::gossip::seal::{Channel, Keyring, OpenError, Sender};
use crate::gossip::transport::{fresh_nonce, open_counted};

/// Probes queued for the agent loop at most (a few seconds of a large fleet's probing); more
/// are dropped and counted as `overload`.
pub const PROBE_QUEUE: usize = 1024;
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
    sender: Arc<Sender>,
    rng: SystemRandom,
    counter: Arc<AtomicU64>,
}

impl ProbeSender {
    /// Sends `message` to `to`; failures are the detector's business (a lost probe).
    pub fn send(&self, to: SocketAddr, message: PeerMessage) {
        let verdict = matches!(message, PeerMessage::Verdict { .. });
        let packet = ProbePacket {
            from: self.me.clone(),
            message,
        };
        let Ok(plain) = wire::encode(&packet) else {
            return;
        };
        let Some(nonce) = fresh_nonce(&self.rng) else {
            return;
        };
        let counter = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let sealed = {
            let ring = self.keyring.read().unwrap_or_else(|e| e.into_inner());
            ring.seal_as(&self.sender, counter, nonce, &plain)
        };
        if self.socket.try_send_to(&sealed, to).is_ok() {
            self.counters.packets_out.fetch_add(1, Ordering::Relaxed);
            self.counters
                .bytes_out
                .fetch_add(sealed.len() as u64, Ordering::Relaxed);
            self.counters.sent.count_probe(verdict, sealed.len());
        }
    }

    /// The address the socket is bound to (useful when bound to port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// The life the fleet follows per node id: generation and probe address (see
/// `membership::lives`). Set by the fleet, read by the probe receiver.
pub type Followed = Arc<RwLock<std::collections::BTreeMap<String, (u64, SocketAddr)>>>;

/// Binds the probe socket; returns the sender and spawns a receiver that forwards every
/// authentic, fresh message as `(sender, message)`, unless it comes from another life of its
/// sender than the one in `followed` (another process under the same id).
pub async fn bind(
    addr: SocketAddr,
    keyring: Arc<RwLock<Keyring>>,
    counters: Arc<GossipCounters>,
    me: NodeId,
    generation: u64,
    followed: Followed,
    inbox: mpsc::Sender<(NodeId, PeerMessage)>,
) -> std::io::Result<ProbeSender> {
    let sealed_as = Sender::new(me.as_str(), generation, Channel::Probe)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = Arc::new(UdpSocket::bind(addr).await?);
    let sender = ProbeSender {
        socket: socket.clone(),
        keyring: keyring.clone(),
        counters: counters.clone(),
        me,
        sender: Arc::new(sealed_as),
        rng: SystemRandom::new(),
        counter: Arc::new(AtomicU64::new(0)),
    };
    tokio::spawn(receive(socket, keyring, counters, followed, inbox));
    Ok(sender)
}

/// Forwards every authentic, fresh probe to `inbox` until the socket fails or the agent stops.
async fn receive(
    socket: Arc<UdpSocket>,
    keyring: Arc<RwLock<Keyring>>,
    counters: Arc<GossipCounters>,
    followed: Followed,
    inbox: mpsc::Sender<(NodeId, PeerMessage)>,
) {
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
        let packet = &buf[..len];
        let probe = Channel::Probe;
        let Some(opened) = open_counted(&keyring, &mut guard, &counters, probe, from, packet)
        else {
            continue;
        };
        let life = followed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&opened.sender)
            .copied();
        if !starling_core::membership::lives::probe_is_followed(life, opened.generation, from) {
            counters
                .probe_dropped_other_life
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(sender = %opened.sender, %from, "dropped a probe from another life of its sender");
            continue;
        }
        match wire::decode::<ProbePacket>(&opened.plaintext) {
            // A member naming another node inside its own sealed packet is not a probe.
            Ok(packet) if packet.from.as_str() == opened.sender => {
                counters.packets_in.fetch_add(1, Ordering::Relaxed);
                // Bounded: a loop that falls behind drops probes (the detector retries them)
                // instead of queueing without limit what the socket can deliver.
                match inbox.try_send((packet.from, packet.message)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        counters
                            .probe_dropped_overload
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            Ok(_) | Err(_) => counters.count_drop(probe, OpenError::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn node(
        name: &str,
        keyring: &Arc<RwLock<Keyring>>,
    ) -> (
        ProbeSender,
        Arc<GossipCounters>,
        mpsc::Receiver<(NodeId, PeerMessage)>,
    ) {
        let counters = Arc::new(GossipCounters::default());
        let (tx, inbox) = mpsc::channel(PROBE_QUEUE);
        let me = NodeId::new(name).expect("node id");
        let addr = "127.0.0.1:0".parse().expect("addr");
        let sender = bind(
            addr,
            keyring.clone(),
            counters.clone(),
            me,
            7,
            Followed::default(),
            tx,
        )
        .await
        .expect("probe socket binds");
        (sender, counters, inbox)
    }

    /// Nothing arrives at `socket` within 300 ms.
    async fn silent(socket: &UdpSocket) -> bool {
        let mut buf = [0u8; 2_048];
        tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf))
            .await
            .is_err()
    }

    #[tokio::test]
    async fn a_probe_replayed_from_a_fresh_port_is_counted_and_unanswered() {
        let keyring = Arc::new(RwLock::new(Keyring::new(1, [5; 32])));
        let (a, _, _) = node("a", &keyring).await;
        let (b, b_counters, mut b_inbox) = node("b", &keyring).await;
        let b_addr = b.local_addr().expect("addr");

        // Capture a real ping from a, as someone on the LAN would.
        let tap = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        // `send` never waits: let the reactor first learn that the new socket is writable.
        tokio::time::sleep(Duration::from_millis(50)).await;
        a.send(
            tap.local_addr().expect("addr"),
            PeerMessage::Ping { seq: 1 },
        );
        let mut buf = [0u8; 2_048];
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), tap.recv_from(&mut buf))
            .await
            .expect("the ping arrives")
            .expect("recv");
        let captured = buf[..len].to_vec();

        // Delivered once from one port: b accepts it, from a.
        let first = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        first.send_to(&captured, b_addr).await.expect("send");
        let (from, message) = tokio::time::timeout(Duration::from_secs(5), b_inbox.recv())
            .await
            .expect("b hears the ping")
            .expect("inbox open");
        assert_eq!(
            (from.as_str(), message),
            ("a", PeerMessage::Ping { seq: 1 })
        );

        // The same bytes from a fresh port: a replay, counted, and nobody answers.
        let stranger = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        assert_ne!(stranger.local_addr().ok(), first.local_addr().ok());
        stranger.send_to(&captured, b_addr).await.expect("send");
        assert!(silent(&stranger).await, "the stranger gets no answer");
        assert_eq!(b_counters.probe_dropped_replay.load(Ordering::Relaxed), 1);
        assert_eq!(b_counters.dropped_replay.load(Ordering::Relaxed), 0);
        assert!(
            b_inbox.try_recv().is_err(),
            "the replay never reaches the agent"
        );
        assert!(silent(&first).await, "the socket itself answers no one");
        assert_eq!(b_counters.packets_in.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn forged_unknown_key_and_garbage_probes_are_counted_by_reason() {
        let keyring = Arc::new(RwLock::new(Keyring::new(1, [5; 32])));
        let (b, counters, mut inbox) = node("b", &keyring).await;
        let b_addr = b.local_addr().expect("addr");
        let stranger = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let as_a = Sender::new("a", 1, Channel::Probe).expect("sender");
        let ping = wire::encode(&ProbePacket {
            from: NodeId::new("a").expect("id"),
            message: PeerMessage::Ping { seq: 1 },
        })
        .expect("encodes");
        let forged = Keyring::new(1, [6; 32]).seal_as(&as_a, 1, [1; 24], &ping);
        let unknown = Keyring::new(2, [5; 32]).seal_as(&as_a, 2, [2; 24], &ping);
        let as_gossip = Sender::new("a", 1, Channel::Gossip).expect("sender");
        let wrong_socket = keyring
            .read()
            .expect("lock")
            .seal_as(&as_gossip, 3, [3; 24], &ping);
        let lying = wire::encode(&ProbePacket {
            from: NodeId::new("c").expect("id"),
            message: PeerMessage::Ping { seq: 1 },
        })
        .expect("encodes");
        let claims_c = keyring
            .read()
            .expect("lock")
            .seal_as(&as_a, 4, [4; 24], &lying);
        for packet in [
            &forged,
            &unknown,
            &wrong_socket,
            &claims_c,
            &b"garbage".to_vec(),
        ] {
            stranger.send_to(packet, b_addr).await.expect("send");
        }
        assert!(silent(&stranger).await, "no answer to any of them");
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(
            (
                load(&counters.probe_dropped_forged),
                load(&counters.probe_dropped_unknown_key),
                load(&counters.probe_dropped_replay),
                load(&counters.probe_dropped_malformed),
            ),
            (1, 1, 1, 2)
        );
        assert_eq!(
            load(&counters.dropped_auth),
            2,
            "what fails to open, at either socket, makes the agent fetch the keyring"
        );
        assert!(inbox.try_recv().is_err());
    }
}
