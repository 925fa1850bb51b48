//! chitchat over UDP, sealed with the cluster keyring.
//!
//! chitchat 0.11.1 exposes its message (de)serialisation, so this transport can serialise each
//! message, seal it ([`super::seal`]), and open and check every packet before chitchat sees it.
//! Forged, damaged, replayed and plaintext packets are dropped and counted in [`GossipCounters`],
//! and never reach chitchat, so nothing is ever sent in answer to them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use ring::rand::{SecureRandom, SystemRandom};

use super::replay::ReplayGuard;
use super::seal::{Channel, Keyring, NONCE_BYTES, OpenError, Opened, Sender};

/// Largest UDP payload chitchat may produce (its own limit).
const DATAGRAM_BYTES_MAX: usize = 65_507;

/// Most zstd frames the plaintext of a gossip packet may hold. chitchat 0.11.1 inflates every
/// compressed block of a delta, up to 64 KiB each, into one buffer before it parses anything:
/// a datagram of 2,977 tiny frames of zeros made it allocate 190 MiB and spend 0.3 s (found
/// fuzzing; `fuzz/examples/chitchat_bomb.rs`). A block that inflates starts with a frame, so
/// this bounds a packet to 8 MiB inflated; chitchat's own writer fills blocks of 16 KiB, so
/// a real packet would need 32-fold compression to come near it.
const ZSTD_FRAMES_MAX: usize = 128;

/// Whether chitchat may inflate `plain` without going past [`ZSTD_FRAMES_MAX`] frames: counts
/// every zstd frame magic number anywhere in it (over-counting is harmless), the current one
/// and the legacy ones (v0.2 to v0.7) that zstd's default build still decodes.
pub(crate) fn inflation_bounded(plain: &[u8]) -> bool {
    let frames = plain
        .windows(4)
        .filter(|w| matches!(w, [0x22..=0x28, 0xb5, 0x2f, 0xfd]))
        .count();
    frames <= ZSTD_FRAMES_MAX
}

/// Gossip and probe traffic counters, exported as metrics.
#[derive(Debug, Default)]
pub struct GossipCounters {
    /// Packets sent (both sockets).
    pub packets_out: AtomicU64,
    /// Bytes sent (both sockets).
    pub bytes_out: AtomicU64,
    /// Packets received and accepted (both sockets).
    pub packets_in: AtomicU64,
    /// Bytes received, accepted or not (both sockets).
    pub bytes_in: AtomicU64,
    /// Packets at either socket that no key held here opens (forged, or sealed with a key id
    /// this node lacks). The agent fetches the keyring from a peer when this grows: a node
    /// that was down during a rotation sees exactly that. The per-socket, per-reason counters
    /// below split it; the metrics render those.
    pub dropped_auth: AtomicU64,
    /// Gossip socket drops: failing authentication (forged, damaged, another key of that id).
    pub dropped_forged: AtomicU64,
    /// Gossip socket drops: sealed with a key id this node does not hold.
    pub dropped_unknown_key: AtomicU64,
    /// Gossip socket drops: replayed, from any address.
    pub dropped_replay: AtomicU64,
    /// Gossip socket drops: malformed (wrong format, or not a chitchat message once opened).
    pub dropped_malformed: AtomicU64,
    /// Probe socket drops: failing authentication.
    pub probe_dropped_forged: AtomicU64,
    /// Probe socket drops: unknown key id.
    pub probe_dropped_unknown_key: AtomicU64,
    /// Probe socket drops: replayed, from any address.
    pub probe_dropped_replay: AtomicU64,
    /// Probe socket drops: malformed (wrong format, or not a probe once opened).
    pub probe_dropped_malformed: AtomicU64,
    /// Probe socket drops: sealed by another life of its sender than the one the fleet
    /// follows (a second process under the same node id).
    pub probe_dropped_other_life: AtomicU64,
    /// Probe socket drops: authentic, but the agent loop was this many probes behind.
    pub probe_dropped_overload: AtomicU64,
    /// Bytes sent, by kind of packet: where a network profile's bytes go.
    pub sent: SentBytes,
}

/// Bytes sent (sealed, as on the wire), by kind of packet; `bytes_out` is their sum. Idle, a
/// fleet sends digests (`syn`, most of `syn_ack`) and probes; key-values (the rest of
/// `syn_ack`, and `ack`) only when some node's state changed.
#[derive(Debug, Default)]
pub struct SentBytes {
    /// chitchat `Syn`: this node's digest (every member's id, heartbeat and versions).
    pub syn: AtomicU64,
    /// chitchat `SynAck`: the answering node's digest and the key-values the asker lacks.
    pub syn_ack: AtomicU64,
    /// chitchat `Ack`: the key-values the answering node lacks.
    pub ack: AtomicU64,
    /// chitchat `BadCluster` (an answer to a node of another cluster sealing with our key).
    pub bad_cluster: AtomicU64,
    /// Failure detection: pings, acks and indirect ping requests.
    pub probe: AtomicU64,
    /// Watchers' verdicts pushed over the probe socket.
    pub verdict: AtomicU64,
}

impl SentBytes {
    /// The counter of a chitchat message's kind.
    fn of_gossip(&self, message: &ChitchatMessage) -> &AtomicU64 {
        match message {
            ChitchatMessage::Syn { .. } => &self.syn,
            ChitchatMessage::SynAck { .. } => &self.syn_ack,
            ChitchatMessage::Ack { .. } => &self.ack,
            ChitchatMessage::BadCluster => &self.bad_cluster,
        }
    }

    /// Counts `bytes` sent over the probe socket; `verdict` tells a pushed verdict.
    pub(crate) fn count_probe(&self, verdict: bool, bytes: usize) {
        let counter = if verdict { &self.verdict } else { &self.probe };
        counter.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Every kind with its metric label and count.
    pub fn labelled(&self) -> [(&'static str, u64); 6] {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("syn", load(&self.syn)),
            ("syn_ack", load(&self.syn_ack)),
            ("ack", load(&self.ack)),
            ("bad_cluster", load(&self.bad_cluster)),
            ("probe", load(&self.probe)),
            ("verdict", load(&self.verdict)),
        ]
    }
}

impl GossipCounters {
    /// Counts a packet dropped at the `channel` socket.
    pub(crate) fn count_drop(&self, channel: Channel, reason: OpenError) {
        if matches!(reason, OpenError::Forged | OpenError::UnknownKey) {
            self.dropped_auth.fetch_add(1, Ordering::Relaxed);
        }
        let counter = match (channel, reason) {
            (Channel::Gossip, OpenError::Forged) => &self.dropped_forged,
            (Channel::Gossip, OpenError::UnknownKey) => &self.dropped_unknown_key,
            (Channel::Gossip, OpenError::Replayed) => &self.dropped_replay,
            (Channel::Gossip, OpenError::Malformed) => &self.dropped_malformed,
            (Channel::Probe, OpenError::Forged) => &self.probe_dropped_forged,
            (Channel::Probe, OpenError::UnknownKey) => &self.probe_dropped_unknown_key,
            (Channel::Probe, OpenError::Replayed) => &self.probe_dropped_replay,
            (Channel::Probe, OpenError::Malformed) => &self.probe_dropped_malformed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Opens a packet received at the `channel` socket: counts its bytes, checks key,
/// authenticity and freshness (per sealed sender, whatever `from` is), and counts every drop
/// by reason. The accepted packet, else `None`: callers answer nothing to a dropped packet.
/// Shared by the gossip transport and the failure detector's socket.
pub(crate) fn open_counted(
    keyring: &RwLock<Keyring>,
    guard: &mut ReplayGuard,
    counters: &GossipCounters,
    channel: Channel,
    from: SocketAddr,
    packet: &[u8],
) -> Option<Opened> {
    counters
        .bytes_in
        .fetch_add(packet.len() as u64, Ordering::Relaxed);
    let opened = {
        let ring = keyring.read().unwrap_or_else(|e| e.into_inner());
        ring.open(channel, packet)
    };
    match opened.and_then(|o| guard.accept(&o).map(|_| o)) {
        Ok(o) => Some(o),
        Err(reason) => {
            counters.count_drop(channel, reason);
            tracing::debug!(%from, ?channel, %reason, "dropped a packet");
            None
        }
    }
}

/// A fresh nonce from the operating system, or `None` if it has none to give: then the
/// packet is not sent rather than sealed under a nonce that might repeat.
pub(crate) fn fresh_nonce(rng: &SystemRandom) -> Option<[u8; NONCE_BYTES]> {
    let mut nonce = [0u8; NONCE_BYTES];
    match rng.fill(&mut nonce) {
        Ok(()) => Some(nonce),
        Err(_) => {
            tracing::error!("the operating system's random generator failed; packet not sent");
            None
        }
    }
}

/// A chitchat transport that seals every packet.
pub struct SealedUdpTransport {
    keyring: Arc<RwLock<Keyring>>,
    counters: Arc<GossipCounters>,
    node: String,
    /// This node's generation (start-up time): the start of its replay sequence.
    generation: u64,
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
            node: node.to_string(),
            generation,
        }
    }
}

#[async_trait]
impl Transport for SealedUdpTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("cannot bind {listen_addr}/udp for gossip"))?;
        let sender = Sender::new(&self.node, self.generation, Channel::Gossip)
            .with_context(|| format!("node id {:?} cannot seal gossip", self.node))?;
        Ok(Box::new(SealedSocket {
            socket,
            keyring: self.keyring.clone(),
            counters: self.counters.clone(),
            sender,
            rng: SystemRandom::new(),
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
    sender: Sender,
    rng: SystemRandom,
    counter: u64,
    guard: ReplayGuard,
    buf: Vec<u8>,
}

impl SealedSocket {
    fn accept(&mut self, from: SocketAddr, len: usize) -> Option<ChitchatMessage> {
        let (c, gossip) = (&self.counters, Channel::Gossip);
        let packet = &self.buf[..len];
        let opened = open_counted(&self.keyring, &mut self.guard, c, gossip, from, packet)?;
        if !inflation_bounded(&opened.plaintext) {
            c.count_drop(gossip, OpenError::Malformed);
            tracing::debug!(%from, sender = %opened.sender, "dropped a gossip packet that would inflate past the bound");
            return None;
        }
        let mut body = opened.plaintext.as_slice();
        match ChitchatMessage::deserialize(&mut body) {
            Ok(message) => {
                c.packets_in.fetch_add(1, Ordering::Relaxed);
                Some(message)
            }
            Err(_) => {
                c.count_drop(gossip, OpenError::Malformed);
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
        // A packet that cannot be sealed safely is a lost packet, which gossip tolerates.
        let Some(nonce) = fresh_nonce(&self.rng) else {
            return Ok(());
        };
        self.counter += 1;
        let packet = {
            let ring = self.keyring.read().unwrap_or_else(|e| e.into_inner());
            ring.seal_as(&self.sender, self.counter, nonce, &plain)
        };
        match self.socket.send_to(&packet, to).await {
            Ok(_) => {
                let c = &self.counters;
                c.packets_out.fetch_add(1, Ordering::Relaxed);
                c.bytes_out
                    .fetch_add(packet.len() as u64, Ordering::Relaxed);
                c.sent
                    .of_gossip(&message)
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
            // Only an accepted packet reaches chitchat, the only part that answers.
            if let Some(message) = self.accept(from, len) {
                return Ok((from, message));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
    use tokio::net::UdpSocket;

    use super::*;

    fn free_port() -> SocketAddr {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.local_addr().expect("addr")
    }

    async fn chitchat_node(
        name: &str,
        addr: SocketAddr,
        seeds: &[SocketAddr],
        keyring: &Arc<RwLock<Keyring>>,
    ) -> (ChitchatHandle, Arc<GossipCounters>) {
        let counters = Arc::new(GossipCounters::default());
        let transport = SealedUdpTransport::new(keyring.clone(), counters.clone(), name, 1);
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(name.to_string(), 1, addr),
            cluster_id: "test".into(),
            gossip_interval: Duration::from_millis(50),
            listen_addr: addr,
            seed_nodes: seeds.iter().map(|s| s.to_string()).collect(),
            failure_detector_config: FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: Duration::from_secs(60),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let handle = chitchat::spawn_chitchat(config, Vec::new(), &transport)
            .await
            .expect("chitchat starts");
        (handle, counters)
    }

    /// The first datagram at `socket` within `wait`.
    async fn first_datagram(socket: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
        let (len, _) = tokio::time::timeout(wait, socket.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(buf[..len].to_vec())
    }

    #[test]
    fn a_packet_under_a_key_not_held_counts_toward_the_keyring_fetch() {
        let counters = GossipCounters::default();
        counters.count_drop(Channel::Gossip, OpenError::UnknownKey);
        counters.count_drop(Channel::Gossip, OpenError::Replayed);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(
            (
                load(&counters.dropped_auth),
                load(&counters.dropped_unknown_key),
                load(&counters.dropped_forged),
                load(&counters.dropped_replay),
            ),
            (1, 1, 0, 1),
            "a missed rotation shows as unknown keys, and the agent fetches on dropped_auth"
        );
    }

    /// A zstd frame (current format) of 65,535 zeros: 19 bytes that inflate 3,449-fold.
    const ZEROS_FRAME: [u8; 19] = [
        0x28, 0xb5, 0x2f, 0xfd, 0x60, 0xff, 0xfe, 0x4d, 0x00, 0x00, 0x08, 0x00, 0x01, 0x00, 0xfb,
        0x7f, 0x1d, 0x08, 0x01,
    ];

    /// A chitchat `Ack` whose delta is `blocks` compressed blocks of [`ZEROS_FRAME`].
    fn ack_of_zero_blocks(blocks: usize) -> Vec<u8> {
        // chitchat's magic number (little-endian), protocol V0, Ack.
        let mut packet = vec![0x53, 0xb0, 0, 2];
        for _ in 0..blocks {
            packet.push(1);
            packet.extend_from_slice(&(ZEROS_FRAME.len() as u16).to_le_bytes());
            packet.extend_from_slice(&ZEROS_FRAME);
        }
        packet.push(0);
        packet
    }

    #[test]
    fn a_packet_that_would_inflate_past_the_bound_never_reaches_chitchat() {
        // The fuzzed bomb: a full datagram of frames, 190 MiB once inflated.
        let bomb = ack_of_zero_blocks((DATAGRAM_BYTES_MAX - 5) / (3 + ZEROS_FRAME.len()));
        assert!(bomb.len() <= DATAGRAM_BYTES_MAX);
        assert!(!inflation_bounded(&bomb), "a decompression bomb is dropped");
        assert!(!inflation_bounded(&ack_of_zero_blocks(ZSTD_FRAMES_MAX + 1)));
        assert!(inflation_bounded(&ack_of_zero_blocks(ZSTD_FRAMES_MAX)));
        let mut bad_cluster = Vec::new();
        ChitchatMessage::BadCluster.serialize(&mut bad_cluster);
        assert!(
            inflation_bounded(&bad_cluster),
            "chitchat's own messages pass"
        );
    }

    #[tokio::test]
    async fn the_gossip_socket_drops_a_sealed_decompression_bomb_as_malformed() {
        let keyring = Arc::new(RwLock::new(Keyring::new(1, [4; 32])));
        let counters = Arc::new(GossipCounters::default());
        let mut socket = SealedSocket {
            socket: UdpSocket::bind("127.0.0.1:0").await.expect("bind"),
            keyring: keyring.clone(),
            counters: counters.clone(),
            sender: Sender::new("me", 1, Channel::Gossip).expect("sender"),
            rng: SystemRandom::new(),
            counter: 0,
            guard: ReplayGuard::default(),
            buf: vec![0u8; DATAGRAM_BYTES_MAX + 128],
        };
        let member = Sender::new("m", 1, Channel::Gossip).expect("sender");
        let mut bad_cluster = Vec::new();
        ChitchatMessage::BadCluster.serialize(&mut bad_cluster);
        let from = free_port();
        let ring = Keyring::new(1, [4; 32]);
        for (counter, plain, accepted) in [
            (1, ack_of_zero_blocks(ZSTD_FRAMES_MAX + 1), false),
            (2, bad_cluster, true),
        ] {
            let packet = ring.seal_as(&member, counter, [counter as u8; NONCE_BYTES], &plain);
            socket.buf[..packet.len()].copy_from_slice(&packet);
            assert_eq!(socket.accept(from, packet.len()).is_some(), accepted);
        }
        assert_eq!(counters.dropped_malformed.load(Ordering::Relaxed), 1);
        assert_eq!(counters.packets_in.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_gossip_packet_replayed_from_a_fresh_port_is_counted_and_unanswered() {
        let keyring = Arc::new(RwLock::new(Keyring::new(1, [4; 32])));
        let a_addr = free_port();
        let (_a, a_counters) = chitchat_node("a", a_addr, &[], &keyring).await;
        // m's seed is a socket of ours, so its first round hands us a real sealed Syn.
        let tap = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let seed = tap.local_addr().expect("addr");
        let (_m, _) = chitchat_node("m", free_port(), &[seed], &keyring).await;
        let syn = first_datagram(&tap, Duration::from_secs(5))
            .await
            .expect("m gossips to its seed");

        // Delivered once, a answers whoever sent it, as chitchat does.
        let first = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        first.send_to(&syn, a_addr).await.expect("send");
        assert!(
            first_datagram(&first, Duration::from_secs(5))
                .await
                .is_some(),
            "a accepts m's Syn and answers it"
        );

        // The same bytes from a fresh port: counted as a replay and answered by nobody.
        let stranger = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        stranger.send_to(&syn, a_addr).await.expect("send");
        assert_eq!(
            first_datagram(&stranger, Duration::from_millis(300)).await,
            None,
            "the stranger gets no answer"
        );
        assert_eq!(a_counters.dropped_replay.load(Ordering::Relaxed), 1);
        assert_eq!(a_counters.probe_dropped_replay.load(Ordering::Relaxed), 0);
        // The answer counts as a SynAck; a sends Syns to m meanwhile, and each send counts
        // its total before its kind, so the kinds never add up to more than was sent.
        let kinds = a_counters.sent.labelled();
        assert!(kinds[1].1 > 0, "{kinds:?}");
        let sum: u64 = kinds.iter().map(|(_, bytes)| bytes).sum();
        assert!(
            sum <= a_counters.bytes_out.load(Ordering::Relaxed),
            "{kinds:?}"
        );
    }
}
