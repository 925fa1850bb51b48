//! The agent in a fleet: gossip (chitchat over the sealed transport) carries each node's
//! description, status, digest root, incarnation and verdicts; the failure detector probes
//! over its own sealed socket; desired-state entries travel over QUIC.
//!
//! Chitchat keys a node writes (values are strings, each well under a UDP packet):
//! `node` (its [`NodeView`], postcard + base64), `status` (its [`NodeStatus`]), `digest` (the
//! desired-state root, hex), `inc` (its incarnation), `v.<node>` (its verdict on a node it
//! watches: `Down:<incarnation>`), `spent` (join token ids it accepted).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, Heartbeat,
    spawn_chitchat,
};
use starling_protocol::NodeId;
use starling_protocol::desired::{DesiredEntry, DesiredState};
use starling_protocol::placement::{FleetView, Liveness, NodeView};
use starling_protocol::status::NodeStatus;
use starling_protocol::wire::PeerMessage;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::AgentError;
use crate::cluster::{Membership, probe_addr, quic_addr};
use crate::gossip::{GossipCounters, SealedUdpTransport};
use crate::membership::{Detector, DetectorConfig, Verdict};
use crate::net::probe::{self, ProbeSender};
use crate::net::quic::Quic;

/// How an agent takes part in a fleet. Defaults suit a LAN.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// Base address to listen on: gossip on its port, QUIC on port + 1, probes on port + 2.
    pub listen: SocketAddr,
    /// Base address peers reach this node at (default: `listen`).
    pub advertise: Option<SocketAddr>,
    /// Base addresses of peers to join through (added to those stored at join time).
    pub seeds: Vec<String>,
    /// Shortest time between gossip rounds. Rounds slow down as the fleet grows (see
    /// `gossip_ms_per_member`); liveness does not depend on them.
    pub gossip_interval: Duration,
    /// Round interval per member: a round costs about 300 bytes per member, so 45 ms per
    /// member keeps gossip near 7 KB/s per node at any size (plus 2.4 KB/s of probes).
    pub gossip_ms_per_member: u64,
    /// Longest time between rounds.
    pub gossip_interval_max: Duration,
    /// The failure detector.
    pub detector: DetectorConfig,
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            listen: SocketAddr::from(([0, 0, 0, 0], 7946)),
            advertise: None,
            seeds: Vec::new(),
            gossip_interval: Duration::from_millis(1_000),
            gossip_ms_per_member: 45,
            gossip_interval_max: Duration::from_secs(30),
            detector: DetectorConfig::default(),
        }
    }
}

/// What gossip tells about one peer.
#[derive(Debug, Clone)]
pub(super) struct Peer {
    /// Its base address.
    pub base: SocketAddr,
    generation: u64,
    heartbeat: Heartbeat,
    version: u64,
    /// Its description, once gossiped.
    pub view: Option<NodeView>,
    /// Its desired-state root.
    pub digest: Option<u128>,
    /// Join tokens it accepted.
    pub spent: BTreeSet<String>,
    /// Its service endpoints: `workload/index/port=host:port`.
    pub endpoints: Vec<String>,
    /// CPU (millicores) and memory (bytes) in use on it, as it last measured.
    pub usage: Option<(u32, u64)>,
}

/// A message from a peer over QUIC, with the way back.
pub(crate) struct PeerCall {
    pub from: NodeId,
    pub message: PeerMessage,
    pub reply: oneshot::Sender<PeerMessage>,
}

/// What background sync tasks report to the loop.
pub(crate) enum SyncEvent {
    /// Entries pulled from a peer (possibly none).
    Pulled {
        from: NodeId,
        entries: Vec<DesiredEntry>,
    },
    /// A pull failed.
    Failed { from: NodeId, reason: String },
    /// A peer's keyring, fetched after packets failed to open.
    Keys {
        keys: Vec<(u32, [u8; 32])>,
        primary: u32,
    },
    /// Phase one of a key rotation is done: `installed` of `asked` live peers hold key `id`.
    KeyInstalled {
        id: u32,
        installed: usize,
        asked: usize,
        reply: oneshot::Sender<starling_protocol::wire::ApiResponse>,
    },
}

/// The fleet side of an agent.
pub(super) struct Fleet {
    pub membership: Membership,
    me: NodeId,
    pub base: SocketAddr,
    chitchat: Arc<Mutex<Chitchat>>,
    handle: ChitchatHandle,
    /// Round pacing: (shortest, per member in ms, longest) and the next round's time.
    pacing: (u64, u64, u64),
    next_round_at: u64,
    round_cursor: usize,
    /// Seeds, resolved at start.
    seed_addrs: Vec<SocketAddr>,
    pub detector: Detector,
    probe: ProbeSender,
    pub quic: Arc<Quic>,
    pub peers: BTreeMap<NodeId, Peer>,
    me_view: NodeView,
    me_view_dirty: bool,
    /// The pull in flight: from whom, since when.
    pub syncing: Option<(NodeId, u64)>,
    published_digest: Option<u128>,
    /// The endpoints last published.
    pub published_endpoints: Vec<String>,
    published_inc: u64,
    published_verdicts: BTreeMap<NodeId, String>,
    /// Join tokens spent here.
    pub spent: BTreeSet<String>,
    /// Round-robin position for picking whom to pull from.
    sync_cursor: usize,
    /// The keyring the gossip transport and the probe socket seal and open with.
    keyring: Arc<RwLock<crate::gossip::seal::Keyring>>,
    /// When keys were last fetched from a peer, and the auth drops seen then.
    pub keys_fetched: (u64, u64),
    /// Certificate names refused fleet-wide (shared with the QUIC server).
    pub revoked: Arc<RwLock<BTreeSet<String>>>,
    /// How many revoked names this node last published.
    published_revoked: usize,
    pub sync_tx: mpsc::UnboundedSender<SyncEvent>,
}

/// Channels the fleet feeds into the agent loop.
pub(crate) struct FleetInbox {
    pub probes: mpsc::UnboundedReceiver<(NodeId, PeerMessage)>,
    pub sync: mpsc::UnboundedReceiver<SyncEvent>,
}

fn encode<T: serde::Serialize>(value: &T) -> String {
    postcard::to_allocvec(value)
        .map(|bytes| B64.encode(bytes))
        .unwrap_or_default()
}

fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
    let bytes = B64.decode(text).ok()?;
    postcard::from_bytes(&bytes).ok()
}

fn liveness_name(l: Liveness) -> &'static str {
    match l {
        Liveness::Alive => "Alive",
        Liveness::Suspect => "Suspect",
        Liveness::Down => "Down",
    }
}

fn parse_liveness(text: &str) -> Option<Liveness> {
    match text {
        "Alive" => Some(Liveness::Alive),
        "Suspect" => Some(Liveness::Suspect),
        "Down" => Some(Liveness::Down),
        _ => None,
    }
}

impl Fleet {
    /// Starts gossip, the probe socket and the QUIC endpoint.
    pub async fn start(
        settings: &FleetSettings,
        membership: Membership,
        me: NodeId,
        me_view: NodeView,
        generation: u64,
        counters: Arc<GossipCounters>,
        revoked: Arc<RwLock<BTreeSet<String>>>,
    ) -> Result<(Fleet, FleetInbox), AgentError> {
        let base = settings.advertise.unwrap_or(settings.listen);
        let keyring = Arc::new(RwLock::new(membership.keyring()));
        let transport =
            SealedUdpTransport::new(keyring.clone(), counters.clone(), me.as_str(), generation);
        let mut seeds: Vec<String> = membership.seeds.clone();
        seeds.extend(settings.seeds.iter().cloned());
        seeds.sort();
        seeds.dedup();
        let base_text = base.to_string();
        seeds.retain(|s| *s != base_text);
        let seed_addrs: Vec<SocketAddr> = seeds
            .iter()
            .filter_map(|s| crate::cluster::resolve(s).ok())
            .collect();
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(me.to_string(), generation, base),
            cluster_id: membership.cluster.clone(),
            // Chitchat's own rounds are the slow floor; the agent adds rounds at the pace the
            // fleet size allows (`gossip_round`).
            gossip_interval: settings.gossip_interval_max,
            listen_addr: settings.listen,
            seed_nodes: seeds,
            failure_detector_config: FailureDetectorConfig {
                initial_interval: settings.gossip_interval,
                dead_node_grace_period: Duration::from_secs(3_600),
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: Duration::from_secs(3_600),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let initial = vec![
            ("node".to_string(), encode(&me_view)),
            ("inc".to_string(), "0".to_string()),
        ];
        let handle = spawn_chitchat(config, initial, &transport)
            .await
            .map_err(|e| AgentError::Net(format!("gossip on {}: {e:#}", settings.listen)))?;
        let (probe_tx, probes) = mpsc::unbounded_channel();
        let keyring_for_fleet = keyring.clone();
        let probe = probe::bind(
            probe_addr(settings.listen),
            keyring,
            counters.clone(),
            me.clone(),
            generation,
            probe_tx,
        )
        .await
        .map_err(|e| {
            AgentError::Net(format!(
                "probes on {}/udp: {e}",
                probe_addr(settings.listen)
            ))
        })?;
        let tls = membership
            .tls()
            .map_err(|e| AgentError::Net(e.to_string()))?;
        let quic = Quic::serve(quic_addr(settings.listen), &tls)
            .map_err(|e| AgentError::Net(e.to_string()))?;
        let (sync_tx, sync) = mpsc::unbounded_channel();
        let fleet = Fleet {
            chitchat: handle.chitchat(),
            handle,
            pacing: (
                settings.gossip_interval.as_millis() as u64,
                settings.gossip_ms_per_member,
                settings.gossip_interval_max.as_millis() as u64,
            ),
            next_round_at: 0,
            round_cursor: 0,
            seed_addrs,
            // The start time as incarnation: a restarted node refutes every verdict about its
            // previous life at once.
            detector: Detector::new(settings.detector.clone(), me.clone(), generation),
            membership,
            me,
            base,
            probe,
            quic: Arc::new(quic),
            peers: BTreeMap::new(),
            me_view,
            me_view_dirty: false,
            syncing: None,
            published_digest: None,
            published_endpoints: Vec::new(),
            published_inc: 0,
            published_verdicts: BTreeMap::new(),
            spent: BTreeSet::new(),
            sync_cursor: 0,
            keyring: keyring_for_fleet,
            keys_fetched: (0, 0),
            revoked,
            published_revoked: 0,
            sync_tx,
        };
        Ok((fleet, FleetInbox { probes, sync }))
    }

    /// Reads gossip: updates peers and feeds the detector. Returns peers whose status
    /// changed, with the status.
    pub async fn read_gossip(&mut self, now: u64) -> Vec<(NodeId, NodeStatus)> {
        let mut statuses = Vec::new();
        let mut verdicts = Vec::new();
        let mut heard = Vec::new();
        let mut incarnations = Vec::new();
        let members_before: BTreeSet<NodeId> = self.peers.keys().cloned().collect();
        let mut revoked = self
            .revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let known_revoked = revoked.len();
        {
            let chitchat = self.chitchat.lock().await;
            // A restarted node shows up under a new generation; the newest one is the node.
            let mut newest: BTreeMap<&str, (&ChitchatId, &chitchat::NodeState)> = BTreeMap::new();
            for (id, state) in chitchat.node_states() {
                if &*id.node_id == self.me.as_str() {
                    continue;
                }
                let keep = newest
                    .get(&*id.node_id)
                    .is_none_or(|(old, _)| old.generation_id < id.generation_id);
                if keep {
                    newest.insert(&*id.node_id, (id, state));
                }
            }
            // Revocations spread first, so a node revoked in this very read is skipped.
            for (_, state) in newest.values() {
                if let Some(list) = state.get("revoked") {
                    revoked.extend(
                        list.split(',')
                            .filter(|n| !n.is_empty())
                            .map(str::to_string),
                    );
                }
            }
            for (name, (id, state)) in newest {
                let Ok(node) = NodeId::new(name) else {
                    continue;
                };
                if revoked.contains(name) {
                    self.peers.remove(&node);
                    continue;
                }
                let entry = self.peers.entry(node.clone()).or_insert_with(|| Peer {
                    base: id.gossip_advertise_addr,
                    generation: 0,
                    heartbeat: Heartbeat::default(),
                    version: u64::MAX,
                    view: None,
                    digest: None,
                    spent: BTreeSet::new(),
                    endpoints: Vec::new(),
                    usage: None,
                });
                if entry.generation != id.generation_id || entry.heartbeat != state.heartbeat() {
                    heard.push(node.clone());
                }
                if entry.generation == id.generation_id && entry.version == state.max_version() {
                    entry.heartbeat = state.heartbeat();
                    continue;
                }
                entry.generation = id.generation_id;
                entry.heartbeat = state.heartbeat();
                entry.version = state.max_version();
                entry.base = id.gossip_advertise_addr;
                if let Some(mut view) = state.get("node").and_then(decode::<NodeView>) {
                    view.id = node.clone();
                    entry.view = Some(view);
                }
                entry.digest = state
                    .get("digest")
                    .and_then(|d| u128::from_str_radix(d, 16).ok());
                if let Some(status) = state.get("status").and_then(decode::<NodeStatus>) {
                    statuses.push((node.clone(), status));
                }
                if let Some(inc) = state.get("inc").and_then(|i| i.parse::<u64>().ok()) {
                    incarnations.push((node.clone(), inc));
                }
                entry.usage = state.get("usage").and_then(|u| {
                    let (cpu, mem) = u.split_once(',')?;
                    Some((cpu.parse().ok()?, mem.parse().ok()?))
                });
                entry.endpoints = state
                    .get("endpoints")
                    .map(|s| {
                        s.split(',')
                            .filter(|e| !e.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                entry.spent = state
                    .get("spent")
                    .map(|s| s.split(',').map(str::to_string).collect())
                    .unwrap_or_default();
                for (key, value) in state.iter_prefix("v.") {
                    let Ok(judged) = NodeId::new(&key[2..]) else {
                        continue;
                    };
                    let Some((l, inc)) = value.value.split_once(':') else {
                        continue;
                    };
                    if let (Some(state), Ok(incarnation)) = (parse_liveness(l), inc.parse()) {
                        verdicts.push(Verdict {
                            node: judged,
                            state,
                            incarnation,
                            watcher: node.clone(),
                        });
                    }
                }
            }
        }
        if revoked.len() != known_revoked {
            tracing::warn!(names = ?revoked, "certificates revoked in the fleet");
            *self.revoked.write().unwrap_or_else(|e| e.into_inner()) = revoked;
        }
        let members: BTreeSet<NodeId> = self.peers.keys().cloned().collect();
        if members != members_before {
            let mut all = members;
            all.insert(self.me.clone());
            self.detector.handle_members(now, all);
        }
        for node in heard {
            self.detector.handle_heard(now, &node);
        }
        for (node, inc) in incarnations {
            self.detector.handle_incarnation(&node, inc);
        }
        for verdict in verdicts {
            self.detector.handle_verdict(verdict);
        }
        statuses
    }

    /// The round interval for the current fleet size.
    pub fn round_interval_ms(&self) -> u64 {
        let (min, per_member, max) = self.pacing;
        ((self.peers.len() as u64 + 1) * per_member).clamp(min, max.max(min))
    }

    /// Runs a gossip round (three exchanges with rotating live peers) when one is due, and
    /// keeps the silence backstop at 20 rounds (at least 10 s).
    pub fn gossip_round(&mut self, now: u64) {
        if now < self.next_round_at {
            return;
        }
        let interval = self.round_interval_ms();
        self.next_round_at = now + interval;
        self.detector
            .set_stale_after_ms((interval * 20).max(10_000));
        let mut live: Vec<SocketAddr> = self
            .peers
            .iter()
            .filter(|(id, _)| self.detector.liveness(id, now) != Liveness::Down)
            .map(|(_, p)| p.base)
            .collect();
        if live.is_empty() {
            // Alone so far (a fleet restarting together): keep knocking at the seeds.
            live = self.seed_addrs.clone();
        }
        for k in 0..live.len().min(3) {
            let addr = live[(self.round_cursor + k * 7) % live.len()];
            let _ = self.handle.gossip(addr);
        }
        self.round_cursor = self.round_cursor.wrapping_add(1);
    }

    /// A probe-socket message from `from`.
    pub fn on_probe(&mut self, now: u64, from: NodeId, message: PeerMessage) {
        match message {
            PeerMessage::Verdict {
                node,
                state,
                incarnation,
            } => self.detector.handle_verdict(Verdict {
                node,
                state,
                incarnation,
                watcher: from,
            }),
            other => {
                self.detector.handle_heard(now, &from);
                self.detector.handle_message(now, &from, &other);
            }
        }
    }

    /// Sends what the detector wants sent, and spreads its verdicts: `Down` straight to every
    /// member over the probe socket (fast), and every verdict in gossip.
    pub async fn flush_detector(&mut self) {
        while let Some((to, message)) = self.detector.poll_transmit() {
            if let Some(peer) = self.peers.get(&to) {
                self.probe.send(probe_addr(peer.base), message);
            }
        }
        let mut changed = false;
        while let Some(verdict) = self.detector.poll_verdict() {
            if verdict.state == Liveness::Alive {
                tracing::debug!(node = %verdict.node, incarnation = verdict.incarnation, "verdict: alive");
            } else {
                tracing::warn!(node = %verdict.node, state = ?verdict.state, incarnation = verdict.incarnation, "verdict");
            }
            // Only `Down` is urgent (replacements wait on it); suspicion and recovery travel in
            // gossip, so a busy fleet is not flooded with datagrams it does not need.
            let urgent = verdict.state == Liveness::Down;
            for peer in self.peers.values().filter(|_| urgent) {
                self.probe.send(
                    probe_addr(peer.base),
                    PeerMessage::Verdict {
                        node: verdict.node.clone(),
                        state: verdict.state,
                        incarnation: verdict.incarnation,
                    },
                );
            }
            self.published_verdicts.insert(
                verdict.node.clone(),
                format!("{}:{}", liveness_name(verdict.state), verdict.incarnation),
            );
            changed = true;
        }
        let inc = self.detector.incarnation();
        if changed || inc != self.published_inc {
            let mut chitchat = self.chitchat.lock().await;
            let state = chitchat.self_node_state();
            for (node, text) in &self.published_verdicts {
                let key = format!("v.{node}");
                if state.get(&key) != Some(text.as_str()) {
                    state.set(key, text);
                }
            }
            if inc != self.published_inc {
                state.set("inc", inc);
                self.published_inc = inc;
            }
        }
    }

    /// This node's own description changed (its runtimes): gossip it.
    pub fn set_me_view(&mut self, view: NodeView) {
        self.me_view = view;
        self.me_view_dirty = true;
    }

    /// Publishes this node's description when it changed.
    pub async fn publish_me_view(&mut self) {
        if !self.me_view_dirty {
            return;
        }
        self.me_view_dirty = false;
        let text = encode(&self.me_view);
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .set("node", text);
    }

    /// The fleet as this node sees it now.
    pub fn view(&self, now: u64) -> FleetView {
        let mut nodes = BTreeMap::new();
        nodes.insert(self.me.clone(), self.me_view.clone());
        for (id, peer) in &self.peers {
            if let Some(view) = &peer.view {
                let mut view = view.clone();
                view.liveness = self.detector.liveness(id, now);
                nodes.insert(id.clone(), view);
            }
        }
        FleetView { nodes }
    }

    /// Publishes this node's status.
    pub async fn publish_status(&self, status: &NodeStatus) {
        let text = encode(status);
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .set("status", text);
    }

    /// Publishes this node's service endpoints when they changed.
    pub async fn publish_endpoints(&mut self, endpoints: Vec<String>) {
        if self.published_endpoints == endpoints {
            return;
        }
        let text = endpoints.join(",");
        self.published_endpoints = endpoints;
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .set("endpoints", text);
    }

    /// Publishes what this node measured in use.
    pub async fn publish_usage(&self, (cpu, memory): (u32, u64)) {
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .set("usage", format!("{cpu},{memory}"));
    }

    /// Publishes the desired-state root when it changed.
    pub async fn publish_digest(&mut self, root: u128) {
        if self.published_digest == Some(root) {
            return;
        }
        self.published_digest = Some(root);
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .set("digest", format!("{root:032x}"));
    }

    /// Publishes the revoked names when they changed; returns them when they did (to
    /// persist).
    pub async fn publish_revoked(&mut self) -> Option<Vec<String>> {
        let names: Vec<String> = self
            .revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        if names.len() == self.published_revoked {
            return None;
        }
        self.published_revoked = names.len();
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .set("revoked", names.join(","));
        Some(names)
    }

    /// Publishes the join tokens spent here.
    pub async fn publish_spent(&self) {
        let text: Vec<&str> = self.spent.iter().map(String::as_str).collect();
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .set("spent", text.join(","));
    }

    /// Whether a join token id was spent anywhere this node heard of.
    pub fn is_spent(&self, id: &str) -> bool {
        self.spent.contains(id) || self.peers.values().any(|p| p.spent.contains(id))
    }

    /// Live peers (not suspected or down), with their QUIC addresses.
    pub fn live_peers(&self, now: u64) -> Vec<(NodeId, SocketAddr)> {
        self.peers
            .iter()
            .filter(|(id, p)| {
                p.view.is_some() && self.detector.liveness(id, now) == Liveness::Alive
            })
            .map(|(id, p)| (id.clone(), quic_addr(p.base)))
            .collect()
    }

    /// Base addresses of every known member and this node: seeds for a joiner.
    pub fn seeds(&self) -> Vec<String> {
        let mut seeds = vec![self.base.to_string()];
        seeds.extend(self.peers.values().map(|p| p.base.to_string()));
        seeds
    }

    /// Starts a pull from a live peer whose root differs from `mine`, one at a time.
    pub fn maybe_pull(&mut self, now: u64, desired: &DesiredState, mine: u128) {
        if let Some((_, since)) = &self.syncing {
            if now < since + 5_000 {
                return;
            }
            self.syncing = None;
        }
        let candidates: Vec<(NodeId, SocketAddr)> = self
            .live_peers(now)
            .into_iter()
            .filter(|(id, _)| {
                self.peers
                    .get(id)
                    .and_then(|p| p.digest)
                    .is_some_and(|d| d != mine)
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        self.sync_cursor = self.sync_cursor.wrapping_add(1);
        let (from, addr) = candidates[self.sync_cursor % candidates.len()].clone();
        self.syncing = Some((from.clone(), now));
        let leaves = desired
            .digest()
            .level(starling_protocol::desired::digest::DIGEST_DEPTH)
            .to_vec();
        let snapshot = desired.clone();
        let (quic, tx) = (self.quic.clone(), self.sync_tx.clone());
        tokio::spawn(async move {
            let event = match pull(&quic, addr, leaves, &snapshot).await {
                Ok(entries) => SyncEvent::Pulled { from, entries },
                Err(reason) => SyncEvent::Failed { from, reason },
            };
            let _ = tx.send(event);
        });
    }

    /// Pushes fresh entries to live peers; answers `reply` once `acks` of them stored them.
    pub fn push(
        &self,
        now: u64,
        entries: Vec<DesiredEntry>,
        acks: u32,
        reply: Option<(
            oneshot::Sender<starling_protocol::wire::ApiResponse>,
            starling_protocol::wire::ApiResponse,
        )>,
    ) {
        let peers = self.live_peers(now);
        let quic = self.quic.clone();
        tokio::spawn(async move {
            let available = peers.len();
            let mut tasks = tokio::task::JoinSet::new();
            for (id, addr) in peers {
                let (quic, entries) = (quic.clone(), entries.clone());
                tasks.spawn(async move {
                    let answer = quic
                        .peer(addr, PeerMessage::Entries(entries), Duration::from_secs(5))
                        .await;
                    (id, matches!(answer, Ok(PeerMessage::Stored)))
                });
            }
            let mut stored = 0u32;
            let mut reply = reply;
            while let Some(done) = tasks.join_next().await {
                if let Ok((_, true)) = done {
                    stored += 1;
                }
                if stored >= acks
                    && let Some((tx, response)) = reply.take()
                {
                    let _ = tx.send(response);
                }
            }
            if let Some((tx, _)) = reply.take() {
                let _ = tx.send(starling_protocol::wire::ApiResponse::Error(
                    starling_protocol::wire::ApiError {
                        message: format!(
                            "stored durably here, but only {stored} of the {acks} peers asked for (--ack-replicas) confirmed it ({available} reachable); it will still spread"
                        ),
                        fields: Vec::new(),
                    },
                ));
            }
        });
    }

    /// Merges a keyring (see [`Membership::merge_keys`]) and reseals with the result.
    /// Returns whether anything changed (the caller persists it).
    pub fn merge_keys(&mut self, keys: &[(u32, [u8; 32])], primary: u32) -> bool {
        if !self.membership.merge_keys(keys, primary) {
            return false;
        }
        *self.keyring.write().unwrap_or_else(|e| e.into_inner()) = self.membership.keyring();
        tracing::info!(
            primary = self.membership.gossip_keys[0].0,
            keys = self.membership.gossip_keys.len(),
            "gossip keyring updated"
        );
        true
    }

    /// Adds a fresh key (not yet sealing with it) and returns its id.
    pub fn install_new_key(&mut self) -> u32 {
        let id = self.membership.new_key();
        *self.keyring.write().unwrap_or_else(|e| e.into_inner()) = self.membership.keyring();
        id
    }

    /// The keyring as a peer message.
    pub fn keys_message(&self) -> PeerMessage {
        PeerMessage::Keys {
            keys: self.membership.gossip_keys.clone(),
            primary: self.membership.gossip_keys[0].0,
        }
    }

    /// Sends `message` to every live peer; returns how many answered `Stored`, and how many
    /// were asked, through `done`.
    pub fn broadcast<F>(&self, now: u64, message: PeerMessage, done: F)
    where
        F: FnOnce(usize, usize) + Send + 'static,
    {
        let peers = self.live_peers(now);
        let quic = self.quic.clone();
        tokio::spawn(async move {
            let asked = peers.len();
            let mut tasks = tokio::task::JoinSet::new();
            for (_, addr) in peers {
                let (quic, message) = (quic.clone(), message.clone());
                tasks.spawn(async move {
                    matches!(
                        quic.peer(addr, message, Duration::from_secs(5)).await,
                        Ok(PeerMessage::Stored)
                    )
                });
            }
            let mut stored = 0;
            while let Some(done) = tasks.join_next().await {
                if matches!(done, Ok(true)) {
                    stored += 1;
                }
            }
            done(stored, asked);
        });
    }

    /// Packets failed to open since the last check: fetch the keyring from a peer (this node
    /// may have missed a rotation while it was down). At most every 5 s.
    pub fn maybe_fetch_keys(&mut self, now: u64, dropped_auth: u64) {
        let (at, seen) = self.keys_fetched;
        if dropped_auth <= seen || now < at + 5_000 {
            return;
        }
        self.keys_fetched = (now, dropped_auth);
        let mut addrs: Vec<SocketAddr> = self.peers.values().map(|p| quic_addr(p.base)).collect();
        addrs.extend(
            self.membership
                .seeds
                .iter()
                .filter_map(|s| crate::cluster::resolve(s).ok())
                .map(quic_addr),
        );
        if addrs.is_empty() {
            return;
        }
        self.sync_cursor = self.sync_cursor.wrapping_add(1);
        let addr = addrs[self.sync_cursor % addrs.len()];
        let (quic, tx) = (self.quic.clone(), self.sync_tx.clone());
        tokio::spawn(async move {
            if let Ok(PeerMessage::Keys { keys, primary }) = quic
                .peer(addr, PeerMessage::KeysRequest, Duration::from_secs(5))
                .await
            {
                let _ = tx.send(SyncEvent::Keys { keys, primary });
            }
        });
    }

    /// Leaves: shuts gossip down and closes QUIC.
    pub async fn leave(&self) {
        self.quic.close().await;
    }
}

/// Anti-entropy with one peer: send our leaves, get its items in differing buckets, pull the
/// entries we lack or hold older.
async fn pull(
    quic: &Quic,
    addr: SocketAddr,
    leaves: Vec<u128>,
    mine: &DesiredState,
) -> Result<Vec<DesiredEntry>, String> {
    let timeout = Duration::from_secs(5);
    let summary = match quic
        .peer(addr, PeerMessage::DigestLeaves(leaves), timeout)
        .await
        .map_err(|e| e.to_string())?
    {
        PeerMessage::Summary(items) => items,
        other => return Err(format!("expected a summary, got {other:?}")),
    };
    let wanted = mine.wanted(&summary);
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    match quic
        .peer(addr, PeerMessage::Pull(wanted), timeout)
        .await
        .map_err(|e| e.to_string())?
    {
        PeerMessage::Entries(entries) => Ok(entries),
        other => Err(format!("expected entries, got {other:?}")),
    }
}
