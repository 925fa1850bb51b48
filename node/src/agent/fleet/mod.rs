//! The agent in a fleet: gossip (chitchat over the sealed transport) carries each node's
//! description, status, digest root, incarnation and verdicts; the failure detector probes
//! over its own sealed socket; desired-state entries travel over QUIC.
//!
//! The chitchat keys a node writes and their values are [`starling_protocol::gossip`]'s: one
//! checked encoding per value (the wire envelope in base64), so a peer's bad value is refused
//! naming the peer and the key.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, Heartbeat,
    spawn_chitchat,
};
use starling_core::pacing::{KeyFetch, Pacing, Rounds};
use starling_core::sync::{PushId, Sync, SyncConfig};
use starling_protocol::NodeId;
use starling_protocol::gossip as keys;
use starling_protocol::placement::{Departure, FleetView, Liveness, NodeView};
use starling_protocol::status::NodeStatus;
use starling_protocol::wire::{ApiResponse, PeerMessage};
use tokio::sync::{Mutex, mpsc, oneshot};

mod gossip;
mod lan;
mod load;
mod sync;

pub(super) use load::by_replica;

use super::AgentError;
use crate::cluster::{Membership, probe_addr, quic_addr};
use crate::gossip::SealedUdpTransport;
use crate::net::probe::{self, ProbeSender};
use crate::net::quic::{Quic, QuicSettings};
use starling_core::membership::lives::Lives;
use starling_core::membership::{Detector, DetectorConfig, Verdict};

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
    /// Round interval per member: a round costs about 300 bytes per member, so 50 ms per
    /// member keeps gossip near 7 KB/s per node at any size (plus 2.4 KB/s of probes).
    pub gossip_ms_per_member: u64,
    /// Longest time between rounds.
    pub gossip_interval_max: Duration,
    /// Peers gossiped with per round (default 3). Each exchange sends both sides' digests,
    /// so one peer per round costs a third of the bytes, for a few more rounds per change.
    pub gossip_fanout: usize,
    /// Time between chitchat's own rounds (three random peers each), a floor beside the
    /// agent's rounds (default 30 s; never below `gossip_interval_max`).
    pub gossip_floor_interval: Duration,
    /// The failure detector.
    pub detector: DetectorConfig,
    /// QUIC's timeouts and the QUIC server's caps.
    pub quic: QuicSettings,
    /// Timeouts of exchanges with peers over QUIC (the sync machine times its own).
    pub exchanges: ExchangeTimeouts,
    /// How often gossip is read, and how long what it told counts.
    pub gossip_timing: GossipTimings,
    /// How long a deleted workload's or object's tombstone is kept (default 7 days): the time
    /// every write has to reach every node. A node away or cut off for longer drops the
    /// deletes it missed instead of merging them back (see
    /// `starling_protocol::desired::tombstones`).
    pub tombstone_grace: Duration,
    /// Find members and waiting devices on the LAN (`--discover mdns`, see [`crate::lan`]).
    pub discover: bool,
}

/// How long an exchange with a peer over QUIC may take, connection included; past it the
/// exchange has failed. Anti-entropy pulls and pushes are timed by the sync machine
/// (`starling_core::sync::SyncConfig::request_timeout_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeTimeouts {
    /// A message pushed to every live peer: a departure, a gossip keyring (default 5 s).
    /// Whoever has not answered by then counts as not holding it.
    pub broadcast_timeout: Duration,
    /// Fetching a peer's keyring after gossip packets failed to open (default 5 s).
    pub keys_fetch_timeout: Duration,
    /// A lease grant request to a voter (default 800 ms): well inside the shortest lease, so
    /// a campaign round learns its outcome while the grant it asks for is still worth having.
    pub lease_grant_timeout: Duration,
    /// A peer's events for `starling get events` (default 2 s): a peer slower than this is
    /// named in the answer as missing rather than holding up the operator.
    pub events_timeout: Duration,
}

impl Default for ExchangeTimeouts {
    fn default() -> Self {
        ExchangeTimeouts {
            broadcast_timeout: Duration::from_secs(5),
            keys_fetch_timeout: Duration::from_secs(5),
            lease_grant_timeout: Duration::from_millis(800),
            events_timeout: Duration::from_secs(2),
        }
    }
}

/// How often the agent reads gossip and how long what it heard there counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GossipTimings {
    /// How often gossip state is read into the core and the detector (default 100 ms): the
    /// delay between a peer's news arriving and this node acting on it.
    pub read_interval: Duration,
    /// Shortest quiet time after which another life of a node id is followed instead of the
    /// one followed so far (default 5 s; five round intervals when rounds are slower).
    pub life_quiet_min: Duration,
    /// Another live agent under this node's id at one address is checked over QUIC at most
    /// this often (default 10 s).
    pub rival_recheck_interval: Duration,
    /// This node's measured CPU and memory use is published at most this often when it
    /// moved (default 15 s; 60 s on the `metered` profile): every published change travels to
    /// every member.
    pub usage_publish_interval_min: Duration,
    /// The load of this node's autoscaled replicas is published at most this often when it
    /// moved (default 5 s): the scaler's reaction time, against gossip bytes. Nodes running no
    /// autoscaled replica publish nothing.
    pub load_publish_interval_min: Duration,
    /// How long chitchat keeps the state of a node it considers dead (default 1 h). Liveness
    /// is the failure detector's; this only bounds how long a gone node's keys are kept.
    pub dead_node_grace: Duration,
    /// How long chitchat keeps keys marked for deletion (default 1 h).
    pub deleted_key_grace: Duration,
}

impl Default for GossipTimings {
    fn default() -> Self {
        GossipTimings {
            read_interval: Duration::from_millis(100),
            life_quiet_min: Duration::from_secs(5),
            rival_recheck_interval: Duration::from_secs(10),
            usage_publish_interval_min: Duration::from_secs(15),
            load_publish_interval_min: Duration::from_secs(5),
            dead_node_grace: Duration::from_secs(3_600),
            deleted_key_grace: Duration::from_secs(3_600),
        }
    }
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            listen: SocketAddr::from(([0, 0, 0, 0], 7946)),
            advertise: None,
            seeds: Vec::new(),
            discover: false,
            gossip_interval: Duration::from_millis(1_000),
            gossip_ms_per_member: 50,
            gossip_interval_max: Duration::from_secs(30),
            gossip_fanout: starling_core::pacing::ROUND_FANOUT,
            gossip_floor_interval: Duration::from_secs(30),
            detector: DetectorConfig::default(),
            quic: QuicSettings::default(),
            exchanges: ExchangeTimeouts::default(),
            gossip_timing: GossipTimings::default(),
            tombstone_grace: Duration::from_secs(7 * 24 * 3_600),
        }
    }
}

/// What gossip tells about one peer.
#[derive(Debug, Clone)]
pub(super) struct Peer {
    /// Its base address.
    pub base: SocketAddr,
    /// The life of it heard last (its agent's start time; 0 before it was heard).
    pub generation: u64,
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
    /// The load of its autoscaled replicas, as it last published (empty: none).
    pub load: keys::Load,
    /// A planned absence it announced in this generation (gossip key `departure`, or pushed).
    pub departure: Departure,
    /// Its X25519 public key for secrets (gossip key `sealkey`).
    pub seal_key: Option<[u8; 32]>,
}

/// A message from a peer over QUIC, with the way back.
pub(crate) struct PeerCall {
    pub from: NodeId,
    pub message: PeerMessage,
    pub reply: oneshot::Sender<PeerMessage>,
}

/// What background sync tasks report to the loop.
pub(crate) enum SyncEvent {
    /// The answer to a request of the sync machine, or why there is none.
    Answer {
        id: starling_core::sync::RequestId,
        answer: Result<PeerMessage, String>,
    },
    /// A peer's keyring, fetched after packets failed to open.
    Keys {
        keys: Vec<(u32, [u8; 32])>,
        primary: u32,
    },
    /// The push of this node's departure is done: `acked` of `asked` live peers hold it.
    DepartureAnnounced { acked: usize, asked: usize },
    /// Whether another live agent answers under this node's id at `base` (life
    /// `generation`): a QUIC handshake there presented this node's certificate.
    Rival {
        generation: u64,
        base: SocketAddr,
        live: bool,
    },
    /// Phase one of a key rotation is done: `installed` of `asked` live peers hold key `id`.
    KeyInstalled {
        id: u32,
        installed: usize,
        asked: usize,
        reply: oneshot::Sender<starling_protocol::wire::ApiResponse>,
    },
}

/// Reports of background fleet tasks queued for the loop. Mostly answers of the sync
/// machine's requests, of which at most `in_flight_per_peer` (4) per peer are out at once, so
/// a fleet of 64 nodes answering together fits; rival checks, keyrings, departures and key
/// installs are rare. Tasks wait when it is full (back-pressure: a lost rival answer would
/// hold the rejoin wait forever, a lost key install would leave the CLI waiting); only the
/// loop's own report of a request it could not send is dropped when full, counted, and
/// recovered by the sync machine's request timeout.
pub(super) const SYNC_QUEUE: usize = 256;

/// The fleet side of an agent.
pub(super) struct Fleet {
    pub membership: Membership,
    me: NodeId,
    pub base: SocketAddr,
    chitchat: Arc<Mutex<Chitchat>>,
    handle: ChitchatHandle,
    /// When gossip rounds are due and with whom (`starling_core::pacing`).
    rounds: Rounds,
    /// Seeds, resolved at start, and members LAN discovery found since.
    seed_addrs: Vec<SocketAddr>,
    /// LAN discovery, when on.
    lan: Option<crate::lan::Lan>,
    /// How many seeds LAN discovery added (bounded).
    found_seeds: usize,
    pub detector: Detector,
    probe: ProbeSender,
    pub quic: Arc<Quic>,
    pub peers: BTreeMap<NodeId, Peer>,
    me_view: NodeView,
    me_view_dirty: bool,
    /// Desired-state sync: pulls, pushes and their acks (decided in `starling_core::sync`).
    pub sync: Sync,
    /// The API answers waiting for a push's acks (`--ack-replicas`).
    pub push_replies: BTreeMap<PushId, (oneshot::Sender<ApiResponse>, ApiResponse)>,
    published_digest: Option<u128>,
    /// The endpoints last published.
    pub published_endpoints: Vec<String>,
    /// The usage last published (rounded), and when.
    published_usage: (Option<starling_protocol::gossip::Usage>, u64),
    /// The load last published (rounded), and when.
    published_load: (keys::Load, u64),
    published_inc: u64,
    published_verdicts: BTreeMap<NodeId, String>,
    /// Join tokens spent here.
    pub spent: BTreeSet<String>,
    /// Node ids enrolled here, so a second join under one of them is refused before the
    /// first one's gossip arrives.
    pub enrolled: BTreeSet<NodeId>,
    /// Round-robin position for picking whom to fetch keys from.
    keys_cursor: usize,
    /// Timeouts of broadcasts and keyring fetches (see [`FleetSettings::exchanges`]).
    exchanges: ExchangeTimeouts,
    /// Gossip's timings (see [`FleetSettings::gossip_timing`]).
    timing: GossipTimings,
    /// The keyring the gossip transport and the probe socket seal and open with.
    keyring: Arc<RwLock<crate::gossip::seal::Keyring>>,
    /// When keys were last fetched from a peer, and the auth drops seen then.
    pub keys_fetched: KeyFetch,
    /// Certificate names refused fleet-wide (shared with the QUIC server).
    pub revoked: Arc<RwLock<BTreeSet<String>>>,
    /// How many revoked names this node last published.
    published_revoked: usize,
    /// Where background tasks report to the loop (see [`SYNC_QUEUE`]).
    pub sync_tx: crate::channel::Sender<SyncEvent>,
    /// Keys to set in this node's gossip state at the next gossip tick (set from sync code).
    pending_keys: BTreeMap<String, String>,
    /// Members from the fleet this node last saw (its stored view), until gossip tells of
    /// them: a restarted node counts them (and waits to hear them) instead of seeing a fleet
    /// of one and planning every replica onto itself.
    remembered: BTreeMap<NodeId, NodeView>,
    /// This node's generation (its start-up time): its own life in gossip.
    pub generation: u64,
    /// Every life gossip tells of, per node id, and the one followed (`membership::lives`).
    lives: BTreeMap<String, Lives>,
    /// Other lives of this node's own id.
    own_lives: Lives,
    /// The followed life per node id, shared with the probe receiver.
    followed: probe::Followed,
    /// Lives of this node's id being checked over QUIC, and when each was last checked.
    pub rivals_checking: BTreeSet<u64>,
    rivals_checked: BTreeMap<u64, u64>,
    /// Lease records and voter sets read from peers' gossip since the agent last took them.
    pub heard_leases: Vec<starling_protocol::lease::Lease>,
    pub heard_voters: Vec<crate::agent::leases::VoterRecord>,
}

/// Channels the fleet feeds into the agent loop.
pub(crate) struct FleetInbox {
    pub probes: mpsc::Receiver<(NodeId, PeerMessage)>,
    pub sync: mpsc::Receiver<SyncEvent>,
    /// Members LAN discovery found.
    pub lan: lan::Found,
}

/// The refusal of a join under `node`: `member` says how the fleet knows it (if it does),
/// `revoked` whether it was removed. The message names the id and what to do.
fn clash_message(node: &NodeId, member: Option<&str>, revoked: bool) -> Option<String> {
    if revoked {
        return Some(format!(
            "node id {node} belonged to a node removed from the fleet (`starling node remove`); \
             removed ids are never used again: join with another id (--node-id, or none for a \
             new default)"
        ));
    }
    let how = member?;
    Some(format!(
        "node id {node} is already a member of the fleet ({how}); two nodes under one id would \
         take each other's replicas. Join this device with another id (--node-id, or none for a \
         new default), or, if {node} is gone for good, remove it with `starling node remove \
         {node}` (its id is then retired)"
    ))
}

impl Fleet {
    /// Starts gossip, the probe socket and the QUIC endpoint. `last_seen` is the fleet as
    /// this node last saw it, this node included.
    pub async fn start(
        settings: &FleetSettings,
        membership: Membership,
        me: NodeId,
        last_seen: &FleetView,
        generation: u64,
        metrics: &super::metrics::Metrics,
        revoked: Arc<RwLock<BTreeSet<String>>>,
    ) -> Result<(Fleet, FleetInbox), AgentError> {
        let mut remembered = last_seen.nodes.clone();
        let me_view = remembered
            .remove(&me)
            .ok_or_else(|| AgentError::Net(format!("{me} is not in its own fleet view")))?;
        let counters = metrics.gossip.clone();
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
            gossip_interval: settings
                .gossip_floor_interval
                .max(settings.gossip_interval_max),
            listen_addr: settings.listen,
            seed_nodes: seeds,
            failure_detector_config: FailureDetectorConfig {
                initial_interval: settings.gossip_interval,
                dead_node_grace_period: settings.gossip_timing.dead_node_grace,
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: settings.gossip_timing.deleted_key_grace,
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let initial = vec![
            (keys::NODE.to_string(), keys::encode(&me_view)),
            // Encoded as every gossip value: a bare "0" was refused by peers as not base64.
            (keys::INCARNATION.to_string(), keys::encode(&0u64)),
        ];
        let handle = spawn_chitchat(config, initial, &transport)
            .await
            .map_err(|e| AgentError::Net(format!("gossip on {}: {e:#}", settings.listen)))?;
        let (probe_tx, probes) = mpsc::channel(probe::PROBE_QUEUE);
        let keyring_for_fleet = keyring.clone();
        let followed = probe::Followed::default();
        let probe = probe::bind(
            probe_addr(settings.listen),
            keyring,
            counters.clone(),
            me.clone(),
            generation,
            followed.clone(),
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
        let quic = Quic::serve(quic_addr(settings.listen), &tls, &settings.quic)
            .map_err(|e| AgentError::Net(e.to_string()))?;
        let (sync_tx, sync) = crate::channel::bounded(SYNC_QUEUE, metrics.channels.sync.clone());
        let (lan, lan_found) = lan::start(settings, &membership, &me, base)?;
        let fleet = Fleet {
            lan,
            found_seeds: 0,
            chitchat: handle.chitchat(),
            handle,
            rounds: Rounds::new(Pacing {
                shortest_ms: settings.gossip_interval.as_millis() as u64,
                per_member_ms: settings.gossip_ms_per_member,
                longest_ms: settings.gossip_interval_max.as_millis() as u64,
                fanout: settings.gossip_fanout,
            }),
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
            sync: Sync::new(SyncConfig {
                tombstone_grace_ms: settings.tombstone_grace.as_millis() as u64,
                // Tombstones wait at most a quarter of the grace past it (and never a scan
                // more than once a second).
                collect_every_ms: (settings.tombstone_grace.as_millis() as u64 / 4)
                    .clamp(1_000, 60_000),
                ..SyncConfig::default()
            }),
            push_replies: BTreeMap::new(),
            published_digest: None,
            published_endpoints: Vec::new(),
            published_usage: (None, 0),
            published_load: (keys::Load::default(), 0),
            published_inc: 0,
            published_verdicts: BTreeMap::new(),
            spent: BTreeSet::new(),
            enrolled: BTreeSet::new(),
            keys_cursor: 0,
            exchanges: settings.exchanges,
            timing: settings.gossip_timing,
            keyring: keyring_for_fleet,
            keys_fetched: KeyFetch::default(),
            revoked,
            published_revoked: 0,
            sync_tx,
            pending_keys: BTreeMap::new(),
            remembered,
            generation,
            lives: BTreeMap::new(),
            own_lives: Lives::default(),
            followed,
            rivals_checking: BTreeSet::new(),
            rivals_checked: BTreeMap::new(),
            heard_leases: Vec::new(),
            heard_voters: Vec::new(),
        };
        Ok((
            fleet,
            FleetInbox {
                probes,
                sync,
                lan: lan_found,
            },
        ))
    }

    /// This node's own description changed (its runtimes): gossip it.
    pub fn set_me_view(&mut self, view: NodeView) {
        self.me_view = view;
        self.me_view_dirty = true;
    }

    /// The fleet as this node sees it now.
    pub fn view(&self, now: u64) -> FleetView {
        let mut nodes = BTreeMap::new();
        for (id, view) in &self.remembered {
            // Not a detector member (it has no address to probe): alive until the silence
            // backstop says otherwise, like any member nobody here watches.
            let mut view = view.clone();
            view.liveness = self.detector.liveness(id, now);
            nodes.insert(id.clone(), view);
        }
        nodes.insert(self.me.clone(), self.me_view.clone());
        for (id, peer) in &self.peers {
            if let Some(view) = &peer.view {
                let mut view = view.clone();
                view.liveness = self.detector.liveness(id, now);
                view.departure = peer.departure;
                nodes.insert(id.clone(), view);
            }
        }
        FleetView { nodes }
    }

    /// A peer's QUIC address, if gossip has told it.
    pub fn quic_addr_of(&self, node: &NodeId) -> Option<SocketAddr> {
        self.peers.get(node).map(|p| quic_addr(p.base))
    }

    /// Publishes a lease this node holds (at the next gossip tick).
    pub fn publish_lease(&mut self, lease: &starling_protocol::lease::Lease) {
        self.pending_keys.insert(
            format!("{}{}", keys::LEASE_PREFIX, lease.name),
            keys::encode(lease),
        );
    }

    /// Publishes the fleet's voter set as this node knows it.
    pub fn publish_voters(&mut self, record: &crate::agent::leases::VoterRecord) {
        self.pending_keys
            .insert(keys::VOTERS.into(), keys::encode(record));
    }

    /// Sets the keys queued by `publish_lease` and `publish_voters`.
    pub async fn flush_keys(&mut self) {
        if self.pending_keys.is_empty() {
            return;
        }
        let keys = std::mem::take(&mut self.pending_keys);
        let mut chitchat = self.chitchat.lock().await;
        let state = chitchat.self_node_state();
        for (key, value) in keys {
            state.set(key, value);
        }
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

    /// A peer announced over QUIC that it is about to stop; gossip brings the same news later.
    pub fn on_departure(&mut self, from: &NodeId, departure: Departure) {
        if let Some(peer) = self.peers.get_mut(from) {
            peer.departure = departure;
        }
        self.detector.handle_departure(from, departure);
    }

    /// Announces that this node is about to stop: in its own view (so its core acts on it),
    /// in gossip, and pushed to every live peer; `done(acked, asked)` reports the push.
    pub fn announce_departure<F, Fut>(&mut self, now: u64, departure: Departure, done: F)
    where
        F: FnOnce(usize, usize) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        self.me_view.departure = departure;
        self.me_view_dirty = true;
        self.broadcast(now, PeerMessage::Departure(departure), done);
    }

    /// Why a join under `node` must be refused, if it must: the id is this node's, a member's
    /// this node knows of (alive or not: only `starling node remove` retires a member), one
    /// it enrolled a moment ago (not gossiping yet), or a removed node's (its certificate name
    /// is refused everywhere, so the id cannot be used again).
    pub fn join_clash(&self, node: &NodeId, now: u64) -> Option<String> {
        let revoked = self
            .revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(node.as_str());
        let member = if *node == self.me {
            Some(format!("alive at {}", self.base))
        } else if let Some(peer) = self.peers.get(node) {
            let state = match self.detector.liveness(node, now) {
                Liveness::Down => "down, not removed",
                Liveness::Suspect => "suspected",
                Liveness::Alive => "alive",
            };
            Some(format!("{state}, last at {}", peer.base))
        } else if self.remembered.contains_key(node) {
            Some("known from the fleet's last view".to_string())
        } else if self.enrolled.contains(node) {
            Some("enrolled here a moment ago".to_string())
        } else {
            None
        };
        clash_message(node, member.as_deref(), revoked)
    }

    /// Leaves: shuts gossip down and closes QUIC.
    pub async fn leave(&self) {
        self.quic.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_under_a_members_id_is_refused_with_the_id_and_the_way_out() {
        let n3 = NodeId::new("n3").expect("id");
        assert_eq!(clash_message(&n3, None, false), None, "a new id joins");
        let text = clash_message(&n3, Some("alive, last at 127.0.0.1:7946"), false)
            .expect("a member's id is refused");
        assert!(text.contains("node id n3 is already a member"), "{text}");
        assert!(text.contains("127.0.0.1:7946"), "{text}");
        assert!(text.contains("--node-id"), "{text}");
        assert!(text.contains("starling node remove n3"), "{text}");
        let removed = clash_message(&n3, None, true).expect("a removed id is refused");
        assert!(
            removed.contains("n3") && removed.contains("another id"),
            "{removed}"
        );
    }
}
