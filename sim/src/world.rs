//! The simulated world: a discrete-event scheduler driving real node cores over a simulated
//! network and runtime.
//!
//! One queue of events ordered by (virtual time, sequence number); the clock jumps to the next
//! event. Every random draw comes from one [`SimRng`] seeded by the run's seed, and every
//! collection that decides anything is ordered, so a seed replays bit for bit; a running hash
//! of the processed events, the messages delivered and the cores' decisions (the trace hash,
//! `trace`) proves it.

use std::collections::{BTreeMap, BTreeSet};

use starling_core::election::{VoterMemory, Voters};
use starling_core::membership::Detector;
use starling_core::node::LeaseWant;
use starling_protocol::desired::{DesiredState, Revision};
use starling_protocol::placement::{Departure, FleetView, ReplicaId};
use starling_protocol::spec::WorkloadSpec;
use starling_protocol::status::NodeStatus;
use starling_protocol::{NodeId, WorkloadName};

use crate::RunOptions;
use crate::checks::Checker;
use crate::host::{CoreSettings, Fleet, Host, HostEvent, Power};
use crate::lease_check::LeaseLog;
use crate::leases::NodeLeases;
pub(crate) use crate::net::Msg;
use crate::rng::SimRng;
use crate::scenario::Scenario;
use crate::trace::Trace;

/// What a node keeps across a crash, beyond the assignment its host keeps.
#[derive(Debug, Clone)]
pub(crate) struct Disk {
    pub desired: DesiredState,
    /// The desired state's digest root, kept current by `refresh_root` (every heartbeat
    /// compares it, and building the tree for each would dominate the run).
    pub root: u128,
    /// The elector's voter memory (highest epochs granted, longest grant); `None` once the
    /// disk was lost (the voter cannot know what it promised before).
    pub voter: Option<VoterMemory>,
    /// The fleet as the node last saw it (the agent's `view.bin`): a restart starts from it.
    pub view: FleetView,
}

impl Default for Disk {
    fn default() -> Self {
        let desired = DesiredState::new();
        Disk {
            root: desired.digest().root(),
            desired,
            voter: Some(VoterMemory::default()),
            view: FleetView::default(),
        }
    }
}

impl Disk {
    pub fn refresh_root(&mut self) {
        self.root = self.desired.digest().root();
    }
}

/// A node of the mesh model: its host, and what the mesh keeps next to it (gossip, the
/// detector, the elector, departures).
pub(crate) struct SimNode {
    pub host: Host,
    pub disk: Disk,
    pub heartbeat: u64,
    /// When (node clock) each member was last heard from.
    pub last_heard: BTreeMap<usize, u64>,
    /// Members this node knows of (persisted with the disk in a real agent).
    pub known: BTreeSet<usize>,
    pub view: FleetView,
    pub status: NodeStatus,
    pub status_version: u64,
    pub peer_versions: BTreeMap<usize, u64>,
    /// The real sync machine (pulls, pushes); a restart starts a new one.
    pub sync: starling_core::sync::Sync,
    /// The desired-state root each peer last gossiped.
    pub roots: BTreeMap<usize, u128>,
    /// Events queued while paused.
    pub held: Vec<Event>,
    /// The real failure detector, when the scenario uses it.
    pub detector: Option<Detector>,
    /// Boots so far: the detector's incarnation.
    pub boots: u64,
    /// The earliest pending detector timer event, so a deadline is scheduled once rather
    /// than after every call (which would flood the queue with duplicates).
    pub detector_timer_at: Option<u64>,
    /// The latest verdict this node's detector reached on each node: gossiped state (the
    /// agent keeps them as gossip keys), sent along with heartbeats when changed.
    pub verdicts: BTreeMap<NodeId, starling_core::membership::Verdict>,
    /// Bumped at every change of `verdicts` (never reset, so a reboot's empty set is news).
    pub verdict_version: u64,
    /// The verdicts version each peer's heartbeat last brought.
    pub peer_verdict_versions: BTreeMap<usize, u64>,
    /// The elector and what the simulation keeps next to it.
    pub leases: NodeLeases,
    /// The planned absence this node announced in this life (its own view carries it).
    pub departure: Departure,
    /// The planned absences other nodes announced, as this node heard them (pushed at the
    /// announcement, then carried by their heartbeats).
    pub departures_heard: BTreeMap<usize, Departure>,
    /// A planned restart under way: when the agent stops waiting for its singletons and
    /// leases to go, and how long it stays away.
    pub leaving: Option<crate::agent::Leaving>,
}

#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// A node's gossip round (its boot count stops the round chain of an earlier life).
    GossipTick(usize, u64),
    DetectorTimer(usize),
    ElectorTimer(usize),
    Deliver {
        from: usize,
        to: usize,
        msg: Msg,
    },
    /// A node's own event (its core's timer, its runtime's reports).
    Host(usize, HostEvent),
    Fault(usize),
    Resume(usize),
    LinkToggle {
        a: Vec<usize>,
        b: Vec<usize>,
        down: bool,
    },
    Sample,
    /// A departing agent checks whether it may go (its boot count guards a stale check).
    DepartCheck(usize, u64),
    /// An agent that went away starts again (its boot count guards a stale return).
    AgentReturn(usize, u64),
}

/// Counters for the summary.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Messages sent.
    pub messages: u64,
    /// Bytes sent (encoded sizes).
    pub bytes: u64,
    /// Replica starts.
    pub starts: u64,
    /// Starts of a replica that had run on another node before.
    pub moved: u64,
    /// Seconds of surplus copies (sum over replicas of copies beyond one).
    pub duplicate_run_ms: u64,
    /// Writes acknowledged.
    pub writes: u64,
    /// Rollbacks written by cores whose rollout failed its health gate.
    pub rollbacks: u64,
    /// Replica counts written by autoscalers.
    pub scales: u64,
    /// Fast model: gossip rounds the slowest write made during the run took to reach every
    /// up node.
    pub write_rounds: Option<u64>,
    /// Tombstones collected below a horizon, summed over nodes.
    pub tombstones_collected: u64,
    /// Entries nodes forgot because a peer showed them deleted and collected.
    pub entries_forgotten: u64,
    /// The largest desired state an up node held (entries, tombstones included).
    pub desired_entries_max: u64,
    /// Watcher detector: observer-milliseconds an up node, linked both ways, was held suspect
    /// or down (`liveness_check`).
    pub doubt_ms: u64,
    /// The part of `doubt_ms` it was held down.
    pub doubt_down_ms: u64,
    /// The longest one observer doubted one such node without a break.
    pub doubt_longest_ms: u64,
}

pub(crate) struct World<'s> {
    pub scenario: &'s Scenario,
    pub now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Event>,
    pub rng: SimRng,
    pub nodes: Vec<SimNode>,
    pub index: BTreeMap<NodeId, usize>,
    /// Directed links that drop everything: (from, to).
    pub blocked: BTreeSet<(usize, usize)>,
    pub trace: Trace,
    pub counters: Counters,
    pub checker: Checker,
    /// The fleet's voters (fixed for the run).
    pub voters: Voters,
    /// Invariant 4: every lease holder's spans.
    pub lease_log: LeaseLog,
    pub expanded_faults: Vec<(u64, crate::faults::Step)>,
    pub cores: CoreSettings,
    /// Duplicate copies next to nodes back from a restart (`return_check`).
    pub returns: crate::return_check::ReturnLog,
    /// Invariant 12: the rollout budget (`rollout_check`).
    pub rollouts: crate::rollout_check::RolloutLog,
    /// Acknowledged deletes, for the check that none comes back (`deletes`).
    pub deleted: Vec<(
        starling_protocol::WorkloadName,
        starling_protocol::hlc::Timestamp,
    )>,
    /// Since when each observer has doubted each up node (`liveness_check`).
    pub doubted_since: BTreeMap<(usize, usize), u64>,
}

/// Most events a run may process: a guard against a livelock in the model or the core.
const EVENTS_MAX: u64 = 200_000_000;

impl<'s> World<'s> {
    pub fn new(scenario: &'s Scenario, seed: u64, options: RunOptions) -> Self {
        let mut rng = SimRng::new(seed);
        let mut world = World {
            scenario,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            rng: rng.fork(),
            nodes: Vec::new(),
            index: BTreeMap::new(),
            blocked: BTreeSet::new(),
            trace: Trace::new(seed),
            counters: Counters::default(),
            checker: Checker::new(scenario),
            voters: Voters::default(),
            lease_log: LeaseLog::default(),
            expanded_faults: Vec::new(),
            cores: CoreSettings::new(scenario, options),
            returns: crate::return_check::ReturnLog::new(scenario),
            deleted: Vec::new(),
            rollouts: Default::default(),
            doubted_since: BTreeMap::new(),
        };
        for _ in 0..scenario.fleet.nodes {
            world.add_node();
        }
        world.voters = crate::leases::voters_of(&world);
        let all: BTreeSet<usize> = (0..world.nodes.len()).collect();
        for i in 0..world.nodes.len() {
            world.nodes[i].known = all.clone();
            world.boot(i);
        }
        world.apply_initial_workloads();
        world.expanded_faults = crate::faults::expand(&mut world);
        world.checker.last_fault_end_ms = crate::faults::last_end_ms(&world.expanded_faults);
        for (i, (at, _)) in world.expanded_faults.clone().iter().enumerate() {
            world.schedule(*at, Event::Fault(i));
        }
        world.schedule(scenario.gossip.interval_ms, Event::Sample);
        world
    }

    fn apply_initial_workloads(&mut self) {
        let specs = self.scenario.workloads.clone();
        for spec in specs {
            self.write(0, spec);
        }
    }

    /// Every running core gets the scenario's load of each autoscaled workload: the value for
    /// every replica running somewhere (its holder's scaler acts on it, the others ignore it).
    fn feed_load(&mut self) {
        if self.scenario.runtime.load.is_empty() {
            return;
        }
        let mut running: BTreeMap<WorkloadName, BTreeMap<u32, u64>> = BTreeMap::new();
        for i in self.up().collect::<Vec<_>>() {
            for (r, x) in &self.nodes[i].host.instances {
                if let (true, Some(value)) = (
                    x.running,
                    self.scenario.runtime.load.get(r.workload.as_str()),
                ) {
                    running
                        .entry(r.workload.clone())
                        .or_default()
                        .insert(r.index, *value);
                }
            }
        }
        for i in self.up().collect::<Vec<_>>() {
            for (workload, values) in &running {
                let (w, v) = (workload.clone(), values.clone());
                self.with_core(i, |core, now| core.handle_load(now, w, v));
            }
        }
    }

    /// An API write at node `i`: stored on its disk, then acknowledged.
    pub fn write(&mut self, i: usize, spec: WorkloadSpec) {
        let node = &mut self.nodes[i];
        if node.host.power != Power::Up {
            return;
        }
        let revision = match node.disk.desired.get(&spec.name) {
            Some(current) => current.next(spec),
            None => Revision::first(spec),
        };
        self.write_revision(i, revision);
    }

    /// `secret set NAME` at node `i`: sealed to every node's key (as the CLI seals to the
    /// recipients a peer names), stored, handed to the core and pushed like a spec.
    pub fn write_secret(&mut self, i: usize, name: starling_protocol::WorkloadName, value: &str) {
        use starling_protocol::objects::ObjectKey;
        use starling_protocol::objects::seal::{Draw, seal_secret, seal_to};
        if self.nodes[i].host.power != Power::Up {
            return;
        }
        let key = ObjectKey::secret(name);
        let mut bytes = || {
            let mut out = [0u8; 32];
            for chunk in out.chunks_mut(8) {
                chunk.copy_from_slice(&self.rng.next_u64().to_le_bytes()[..chunk.len()]);
            }
            out
        };
        let (id_bytes, data_key, nonce_bytes) = (bytes(), bytes(), bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&id_bytes[..16]);
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&nonce_bytes[..24]);
        let draw = Draw {
            id: u128::from_le_bytes(id),
            data_key,
            nonce,
        };
        let entries = vec![("value".to_string(), value.as_bytes().to_vec())];
        let Ok((version, sealing)) = seal_secret(&key, entries, draw) else {
            return;
        };
        let recipients: Vec<_> = self.nodes.iter().map(|n| n.host.id.clone()).collect();
        let mut seals = std::collections::BTreeMap::new();
        for node in recipients {
            let public = sim_node_keys(&node).public();
            let ephemeral = bytes();
            if let Ok(seal) = seal_to(&sealing, &key, version.id, &node, &public, ephemeral) {
                seals.insert(node, seal);
            }
        }
        let now = self.node_now(i);
        let node = &mut self.nodes[i];
        let at = node.host.hlc.tick(now);
        node.disk
            .desired
            .write_object(key.clone(), Some(version), seals, at, "sim");
        node.disk.refresh_root();
        self.counters.writes += 1;
        let desired = self.nodes[i].disk.desired.clone();
        self.with_core(i, |core, now| core.handle_desired(now, desired));
        let entries: Vec<_> = self.nodes[i]
            .disk
            .desired
            .object_entry(&key)
            .into_iter()
            .map(starling_protocol::desired::Entry::Object)
            .collect();
        let peers = self.live_peers(i);
        self.nodes[i].sync.push(now, entries, 0, &peers);
        self.drain_sync(i);
    }

    /// Stores `revision` on node `i`'s disk, hands it to its core and pushes it to its live
    /// peers, as the agent does with an operator's write.
    fn write_revision(&mut self, i: usize, revision: Revision) {
        let name = revision.spec.name.clone();
        self.write_register(i, name, Some(revision));
    }

    /// Writes `value` (`None`: a delete) for `name` at node `i` with a fresh HLC marker,
    /// acknowledged once on its disk, then handed to its core and pushed to its live peers.
    /// Returns the marker, or `None` when the node is not up.
    pub(crate) fn write_register(
        &mut self,
        i: usize,
        name: starling_protocol::WorkloadName,
        value: Option<Revision>,
    ) -> Option<starling_protocol::hlc::Timestamp> {
        let now = self.node_now(i);
        let node = &mut self.nodes[i];
        if node.host.power != Power::Up {
            return None;
        }
        let at = node.host.hlc.tick(now);
        node.disk.desired.write(name.clone(), value, at.clone());
        node.disk.refresh_root();
        self.checker.acknowledge(name.clone(), at.clone());
        self.counters.writes += 1;
        let desired = self.nodes[i].disk.desired.clone();
        self.with_core(i, |core, now| core.handle_desired(now, desired));
        // Pushed to the live peers as the agent does (an operator's write asks no acks here).
        let entries = self.nodes[i]
            .disk
            .desired
            .export(&[name])
            .into_iter()
            .map(starling_protocol::desired::Entry::Workload)
            .collect();
        let peers = self.live_peers(i);
        self.nodes[i].sync.push(now, entries, 0, &peers);
        self.drain_sync(i);
        Some(at)
    }

    pub fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.insert((at.max(self.now), self.seq), event);
    }

    /// Runs until the scenario's end or the first invariant violation.
    pub fn run(&mut self) -> Result<(), crate::Violation> {
        let mut processed = 0u64;
        while let Some(((at, _), event)) = self.queue.pop_first() {
            if at > self.scenario.duration_ms {
                break;
            }
            self.now = at;
            processed += 1;
            if processed > EVENTS_MAX {
                return Err(self.violation("livelock", format!("more than {EVENTS_MAX} events")));
            }
            trace_event(&mut self.trace, at, &event);
            self.handle(event);
            if let Some(v) = self.checker.take_violation() {
                return Err(self.violation(&v.0, v.1));
            }
        }
        self.now = self.scenario.duration_ms;
        crate::checks::final_checks(self);
        match self.checker.take_violation() {
            Some(v) => Err(self.violation(&v.0, v.1)),
            None => Ok(()),
        }
    }

    pub fn violation(&self, invariant: &str, detail: String) -> crate::Violation {
        self.checker.violation(invariant, detail, self.now)
    }

    fn handle(&mut self, event: Event) {
        let target = match &event {
            Event::GossipTick(i, _)
            | Event::DetectorTimer(i)
            | Event::ElectorTimer(i)
            | Event::Host(i, _)
            | Event::Resume(i)
            | Event::DepartCheck(i, _)
            | Event::AgentReturn(i, _) => Some(*i),
            Event::Deliver { to, .. } => Some(*to),
            _ => None,
        };
        if let Some(i) = target {
            match self.nodes[i].host.power {
                Power::Crashed | Power::Gone => return,
                // Its replicas run on without the agent (the runtime's events still change
                // them); nothing else reaches it until the agent starts again.
                Power::AgentDown
                    if !matches!(
                        event,
                        Event::Host(_, HostEvent::Runtime(_)) | Event::AgentReturn(..)
                    ) =>
                {
                    return;
                }
                Power::Paused { .. } if !matches!(event, Event::Resume(_)) => {
                    self.nodes[i].held.push(event);
                    return;
                }
                _ => {}
            }
        }
        let copies_may_change = matches!(
            event,
            Event::Host(_, HostEvent::Runtime(_))
                | Event::Fault(_)
                | Event::Resume(_)
                | Event::DepartCheck(..)
                | Event::AgentReturn(..)
        );
        self.dispatch(event);
        if copies_may_change {
            crate::checks::copies_changed(self);
        }
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::GossipTick(i, boots) => {
                if boots == self.nodes[i].boots {
                    self.gossip_tick(i);
                }
            }
            Event::DetectorTimer(i) => {
                if self.nodes[i].detector_timer_at == Some(self.now) {
                    self.nodes[i].detector_timer_at = None;
                }
                let now = self.node_now(i);
                if let Some(d) = self.nodes[i].detector.as_mut() {
                    d.handle_timeout(now);
                }
                self.flush_detector(i);
            }
            Event::Deliver { from, to, msg } => self.deliver(from, to, msg),
            Event::Host(i, event) => self.handle_host(i, event),
            Event::Fault(k) => crate::faults::apply(self, k),
            Event::Resume(i) => self.resume(i),
            Event::LinkToggle { a, b, down } => crate::faults::toggle_links(self, &a, &b, down),
            Event::ElectorTimer(i) => self.elector_timer(i),
            Event::Sample => {
                self.check_leases();
                crate::return_check::sample(self);
                crate::rollout_check::sample(self);
                self.feed_load();
                crate::checks::sample(self);
                crate::liveness_check::sample(self);
                let next = self.now + self.scenario.gossip.interval_ms;
                self.schedule(next, Event::Sample);
            }
            Event::DepartCheck(i, boots) => self.departure_check(i, boots),
            Event::AgentReturn(i, boots) => self.agent_return(i, boots),
        }
    }

    fn resume(&mut self, i: usize) {
        if let Power::Paused { until_ms } = self.nodes[i].host.power
            && until_ms <= self.now
        {
            self.nodes[i].host.power = Power::Up;
            // Its first gossip exchanges bring every member's state, announcements included.
            self.learn_departures(i);
            let held = std::mem::take(&mut self.nodes[i].held);
            for event in held {
                self.handle(event);
            }
        }
    }

    /// Nodes that are up (not crashed, paused or gone).
    pub fn up(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].host.power == Power::Up)
    }
}

/// An event into the trace: its time, kind and node, and what it carries (the message
/// delivered, the runtime's report, the links cut or mended).
fn trace_event(trace: &mut Trace, at_ms: u64, event: &Event) {
    let code = match event {
        Event::GossipTick(i, _) => 1 | (*i as u64) << 8,
        Event::Deliver { from, to, msg } => {
            trace.event(at_ms, 2 | (*from as u64) << 8 | (*to as u64) << 32);
            trace.payload(msg);
            return;
        }
        Event::Host(i, event) => return event.trace(*i, at_ms, trace),
        Event::Fault(k) => 5 | (*k as u64) << 8,
        Event::Resume(i) => 6 | (*i as u64) << 8,
        Event::LinkToggle { a, b, down } => {
            trace.event(at_ms, 7 | u64::from(*down) << 8);
            trace.payload(&(a, b));
            return;
        }
        Event::Sample => 8,
        Event::DetectorTimer(i) => 9 | (*i as u64) << 8,
        Event::ElectorTimer(i) => 10 | (*i as u64) << 8,
        Event::DepartCheck(i, _) => 11 | (*i as u64) << 8,
        Event::AgentReturn(i, _) => 12 | (*i as u64) << 8,
    };
    trace.event(at_ms, code);
}

impl Fleet for World<'_> {
    fn scenario(&self) -> &Scenario {
        self.scenario
    }
    fn now(&self) -> u64 {
        self.now
    }
    fn node_count(&self) -> usize {
        self.nodes.len()
    }
    fn host(&self, i: usize) -> &Host {
        &self.nodes[i].host
    }
    fn host_mut(&mut self, i: usize) -> &mut Host {
        &mut self.nodes[i].host
    }
    fn index_of(&self, id: &NodeId) -> Option<usize> {
        self.index.get(id).copied()
    }
    fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }
    fn trace(&mut self) -> &mut Trace {
        &mut self.trace
    }
    fn counters(&mut self) -> &mut Counters {
        &mut self.counters
    }
    fn checker(&mut self) -> &mut Checker {
        &mut self.checker
    }
    fn schedule_host(&mut self, at: u64, i: usize, event: HostEvent) {
        self.schedule(at, Event::Host(i, event));
    }

    fn check_start(&mut self, i: usize, replica: &ReplicaId, spec: &WorkloadSpec) {
        crate::checks::on_start(self, i, replica, spec);
    }
    fn publish(&mut self, i: usize, status: NodeStatus) {
        self.nodes[i].status = status;
        self.nodes[i].status_version += 1;
    }
    fn campaign(&mut self, i: usize, lease: WorkloadName, want: LeaseWant) {
        World::campaign(self, i, lease, want);
    }
    fn withdraw(&mut self, i: usize, lease: WorkloadName) {
        World::withdraw(self, i, lease);
    }
    fn scale(&mut self, i: usize, workload: WorkloadName, from: u32, to: u32) {
        // (13) One scaler at a time: the node that scales holds the workload's lease, alone.
        let holders = self.lease_log.holders_at(&workload, self.now);
        if holders != [i] {
            let ids: Vec<String> = holders
                .iter()
                .map(|j| self.nodes[*j].host.id.to_string())
                .collect();
            let detail = format!(
                "{} scales {workload} {from} -> {to} while the lease holders are {ids:?}",
                self.nodes[i].host.id
            );
            self.checker.fail("two-scalers", detail);
            return;
        }
        let Some(current) = self.nodes[i].disk.desired.get(&workload).cloned() else {
            return;
        };
        if current.spec.replicas != from {
            return;
        }
        let mut spec = current.spec.clone();
        spec.replicas = to;
        self.counters.scales += 1;
        self.write_revision(i, current.next(spec));
    }
    fn roll_back(&mut self, i: usize, workload: WorkloadName, revision: u64, reason: String) {
        let Some(current) = self.nodes[i].disk.desired.get(&workload) else {
            return;
        };
        if current.number != revision || current.rollout.rollback_of.is_some() {
            return;
        }
        let Some(back) = current.rollback(Some(reason)) else {
            return;
        };
        self.counters.rollbacks += 1;
        self.write_revision(i, back);
    }
}

/// A simulated node's secrets key pair: derived from its id, so a run replays from its seed.
pub fn sim_node_keys(
    node: &starling_protocol::NodeId,
) -> starling_protocol::objects::seal::NodeKeys {
    let a = starling_protocol::hash::hash128(node.as_str().as_bytes());
    let b = starling_protocol::hash::hash128(format!("{node}/seal").as_bytes());
    let mut secret = [0u8; 32];
    secret[..16].copy_from_slice(&a.to_le_bytes());
    secret[16..].copy_from_slice(&b.to_le_bytes());
    starling_protocol::objects::seal::NodeKeys::from_secret(secret)
}
