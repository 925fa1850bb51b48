//! The fast model: real node cores at fleet scale (10,000+ nodes) over epidemic gossip rounds.
//!
//! Every node runs the real `node::core` state machine, as in the mesh model; what changes is
//! the network under it. Instead of every message, the model runs synchronous gossip rounds
//! (see `gossip`): facts spread by push-pull between random pairs, and failure detection is
//! the real agent's scheme reduced to rounds: k watchers per node (ranked by hash) declare a
//! silent node suspect and then down after the configured number of missed rounds, and the
//! verdict spreads like any other fact; a node that hears a verdict about itself refutes it
//! with a higher incarnation. Cores share views, desired states, plans and statuses (see
//! `NodeCore::shared`), so memory grows with the fleet once, not once per node.
//!
//! What it leaves out: links (partitions, cuts, flaps need the mesh model), latency within a
//! round, leases. A node that boots learns the statuses every up node agreed on at once (a real
//! one pulls them in its first exchanges) and the rest by gossip.

mod checks;
mod faults;
mod gossip;
mod rounds;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use starling_core::node::{LeaseWant, NodeCore};
use starling_protocol::desired::{DesiredState, Revision};
use starling_protocol::placement::{FleetView, Liveness, NodeView, ReplicaId};
use starling_protocol::spec::WorkloadSpec;
use starling_protocol::status::NodeStatus;
use starling_protocol::{NodeId, WorkloadName};

use crate::checks::Checker;
use crate::faults::Step;
use crate::host::{CoreSettings, Fleet, Host, HostEvent, Power};
use crate::rng::SimRng;
use crate::scenario::{GossipModel, Scenario};
use crate::trace::Trace;
use crate::world::Counters;
use crate::{RunOptions, RunReport, Violation};
use gossip::{Member, News, SharedPlanner, Write};

/// Watchers per node (the agent's default k).
const WATCHERS: usize = 3;
/// Bytes of one exchange without news (two digests and framing).
const EXCHANGE_BYTES: u64 = 2 * 64;
/// Bytes of one membership record and of one write, on the wire.
const MEMBER_BYTES: u64 = 96;
const WRITE_BYTES: u64 = 256;

/// What one node learned in a round.
#[derive(Default)]
struct Learned {
    members: Option<u32>,
    writes: Option<u32>,
    statuses: Vec<u32>,
}
/// Most events a run may process.
const EVENTS_MAX: u64 = 400_000_000;

/// Runs a fast-model scenario.
pub(crate) fn run(scenario: &Scenario, seed: u64, options: RunOptions) -> RunReport {
    let mut world = FastWorld::new(scenario, seed, options);
    let violation = world.run().err();
    RunReport::of(&mut world, seed, violation)
}

/// A node of the fast model: its host, and what the rounds keep next to it.
struct FastNode {
    host: Host,
    incarnation: u64,
    /// How much of the membership and write logs this node knows (prefix lengths). Kept
    /// across a crash, like the agent's disk.
    members: u32,
    writes: u32,
    /// Whether it ever published a status with replicas (an empty first status is news to
    /// nobody: absent and empty mean the same to a peer in a fleet that has a majority).
    published: bool,
}

#[derive(Debug, Clone)]
enum Ev {
    Round,
    /// A node's own event (its core's timer, its runtime's reports).
    Host(usize, HostEvent),
    Fault(usize),
    Resume(usize),
    Verdict {
        target: usize,
        incarnation: u64,
        watcher: usize,
        liveness: Liveness,
    },
    Sample,
}

struct FastWorld<'s> {
    scenario: &'s Scenario,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    rng: SimRng,
    trace: Trace,
    nodes: Vec<FastNode>,
    index: BTreeMap<NodeId, usize>,
    news: News,
    planner: Arc<SharedPlanner>,
    /// Verdicts by (target, incarnation, verdict), as member-log prefixes that include them, so
    /// watchers agreeing share one.
    verdicts: BTreeMap<(usize, u64, Liveness), u32>,
    /// The nodes each replica runs on (instances that reported running).
    running: BTreeMap<ReplicaId, BTreeSet<usize>>,
    counters: Counters,
    checker: Checker,
    steps: Vec<(u64, Step)>,
    cores: CoreSettings,
    fanout: usize,
    sample_ms: u64,
    /// Gossip rounds so far, and the round each write made during the run started in (by
    /// its position in the write log), until it reaches every up node.
    rounds: u64,
    spreading_writes: BTreeMap<u32, u64>,
}

impl<'s> FastWorld<'s> {
    fn new(scenario: &'s Scenario, seed: u64, options: RunOptions) -> Self {
        let mut rng = SimRng::new(seed);
        let fanout = match scenario.gossip.model {
            GossipModel::Fast { fanout } => fanout,
            GossipModel::Mesh => 3,
        };
        let mut world = FastWorld {
            scenario,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            rng: rng.fork(),
            trace: Trace::new(seed),
            nodes: Vec::new(),
            index: BTreeMap::new(),
            news: News::default(),
            planner: Arc::new(SharedPlanner::new(options.bug_minority_takes_over)),
            verdicts: BTreeMap::new(),
            running: BTreeMap::new(),
            counters: Counters::default(),
            checker: Checker::new(scenario),
            steps: Vec::new(),
            cores: CoreSettings::new(scenario, options),
            fanout,
            sample_ms: scenario.gossip.interval_ms.max(5_000),
            rounds: 0,
            spreading_writes: BTreeMap::new(),
        };
        // The fleet starts formed, with the scenario's workloads applied (the epidemic of one
        // write is measured on its own: `epidemic`, `starling bench dissemination`).
        let mut view = FleetView::default();
        for _ in 0..scenario.fleet.nodes {
            let i = world.add_node();
            world.nodes[i].incarnation = 1;
            view.nodes
                .insert(world.nodes[i].host.id.clone(), world.describe(i));
        }
        let mut desired = DesiredState::new();
        if !world.nodes.is_empty() {
            for spec in &scenario.workloads {
                let at = world.nodes[0].host.hlc.tick(0);
                let name = spec.name.clone();
                desired.write(
                    name.clone(),
                    Some(Revision::first(spec.clone())),
                    at.clone(),
                );
                world.checker.acknowledge(name, at);
                world.counters.writes += 1;
            }
        }
        world.news = News::new(view, desired);
        for i in 0..world.nodes.len() {
            world.boot(i, false);
        }
        world.steps = crate::faults::expand(&mut world);
        world.checker.last_fault_end_ms = crate::faults::last_end_ms(&world.steps);
        for (k, (at, _)) in world.steps.clone().iter().enumerate() {
            world.schedule(*at, Ev::Fault(k));
        }
        world.schedule(scenario.gossip.interval_ms, Ev::Round);
        world.schedule(world.sample_ms, Ev::Sample);
        world
    }

    fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let host = Host::new(self.scenario, i);
        self.index.insert(host.id.clone(), i);
        self.nodes.push(FastNode {
            host,
            incarnation: 0,
            members: 0,
            writes: 0,
            published: false,
        });
        i
    }

    fn describe(&self, i: usize) -> NodeView {
        describe(&self.nodes[i])
    }

    /// Starts (or restarts) node `i` from its disk; `announce` spreads its new incarnation.
    fn boot(&mut self, i: usize, announce: bool) {
        if announce {
            self.nodes[i].incarnation += 1;
            let member = Member {
                node: i,
                incarnation: self.nodes[i].incarnation,
                liveness: Liveness::Alive,
            };
            self.nodes[i].members = self.news.start_member(member);
        }
        // Statuses it may have heard before the crash are forgotten with its memory.
        for id in self.news.active.clone() {
            self.news.rumours[id as usize].knows.clear(i);
        }
        // What every up node agreed on meanwhile it hears in its first exchange.
        self.catch_up(i);
        let (view, desired) = self.knowledge(i);
        let config = self.cores.next(&self.nodes[i].host.id);
        let node = &mut self.nodes[i];
        node.published = false;
        let assignment = node.host.assignment.clone();
        let core = NodeCore::shared(
            config,
            assignment,
            view,
            desired.clone(),
            self.planner.clone(),
        );
        node.host.boot(core, &desired);
        let statuses: Vec<(NodeId, Arc<_>)> = self
            .news
            .statuses
            .iter()
            .filter(|(o, _)| **o != i)
            .map(|(o, s)| (self.nodes[*o].host.id.clone(), s.clone()))
            .collect();
        self.with_core(i, |core, now| {
            for (node, status) in statuses {
                core.handle_shared_peer_status(now, node, status);
            }
            core.handle_timeout(now);
        });
    }

    /// Node `i` stops: memory and processes gone, disk kept; its watchers will notice.
    fn crash(&mut self, i: usize) {
        let host = &mut self.nodes[i].host;
        let gone: Vec<ReplicaId> = host.instances.keys().cloned().collect();
        host.crash();
        for r in gone {
            self.not_running(&r, i);
        }
        self.silence(i);
    }

    /// The fleet and the desired state as node `i` knows them (its log prefixes).
    fn knowledge(&mut self, i: usize) -> (Arc<FleetView>, Arc<DesiredState>) {
        let nodes = &self.nodes;
        let view = self
            .news
            .view(nodes[i].members, &self.planner, |m| describe(&nodes[m]));
        (view, self.news.desired(nodes[i].writes))
    }

    /// Node `i` learns the base (what every up node knows): a booting or resuming node gets it
    /// from its first peer.
    fn catch_up(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.members = node.members.max(self.news.member_base());
        node.writes = node.writes.max(self.news.write_base());
    }

    fn schedule(&mut self, at: u64, event: Ev) {
        self.seq += 1;
        self.queue.insert((at.max(self.now), self.seq), event);
    }

    fn run(&mut self) -> Result<(), Violation> {
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
            if let Some((invariant, detail)) = self.checker.take_violation() {
                return Err(self.violation(&invariant, detail));
            }
        }
        self.now = self.scenario.duration_ms;
        checks::final_checks(self);
        match self.checker.take_violation() {
            Some((invariant, detail)) => Err(self.violation(&invariant, detail)),
            None => Ok(()),
        }
    }

    fn violation(&self, invariant: &str, detail: String) -> Violation {
        self.checker.violation(invariant, detail, self.now)
    }

    fn handle(&mut self, event: Ev) {
        let target = match &event {
            Ev::Host(i, _) => Some(*i),
            _ => None,
        };
        if let Some(i) = target {
            match self.nodes[i].host.power {
                // The fast model refuses agent restarts (scenario check): never `AgentDown`.
                Power::Crashed | Power::Gone | Power::AgentDown => return,
                Power::Paused { until_ms } => {
                    // A frozen agent handles nothing; its replicas' events wait for it.
                    self.schedule(until_ms, event);
                    return;
                }
                Power::Up => {}
            }
        }
        match event {
            Ev::Round => self.round(),
            Ev::Host(i, event) => self.handle_host(i, event),
            Ev::Fault(k) => faults::apply(self, k),
            Ev::Resume(i) => self.resume(i),
            Ev::Verdict {
                target,
                incarnation,
                watcher,
                liveness,
            } => self.verdict(target, incarnation, watcher, liveness),
            Ev::Sample => {
                checks::sample(self);
                self.schedule(self.now + self.sample_ms, Ev::Sample);
            }
        }
    }

    fn resume(&mut self, i: usize) {
        if let Power::Paused { until_ms } = self.nodes[i].host.power
            && until_ms <= self.now
        {
            self.nodes[i].host.power = Power::Up;
            self.catch_up(i);
            let (view, desired) = self.knowledge(i);
            self.with_core(i, |core, now| {
                core.handle_shared_view(now, view);
                core.handle_shared_desired(now, desired);
            });
        }
    }

    /// An API write at node `i`, acknowledged once on its disk.
    fn write(&mut self, i: usize, spec: WorkloadSpec) {
        if self.nodes[i].host.power != Power::Up {
            return;
        }
        let current = self.news.desired(self.nodes[i].writes);
        let name = spec.name.clone();
        let revision = match current.get(&name) {
            Some(rev) => rev.next(spec),
            None => Revision::first(spec),
        };
        let now = self.node_now(i);
        let at = self.nodes[i].host.hlc.tick(now);
        self.nodes[i].writes = self.news.start_write(Write {
            name: name.clone(),
            revision: Some(revision),
            at: at.clone(),
        });
        self.spreading_writes
            .insert(self.nodes[i].writes, self.rounds);
        self.checker.acknowledge(name, at);
        self.counters.writes += 1;
        let desired = self.news.desired(self.nodes[i].writes);
        self.with_core(i, |core, now| core.handle_shared_desired(now, desired));
    }
}

impl Fleet for FastWorld<'_> {
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
        self.schedule(at, Ev::Host(i, event));
    }

    fn check_start(&mut self, i: usize, replica: &ReplicaId, spec: &WorkloadSpec) {
        checks::on_start(self, i, replica, spec);
    }

    fn publish(&mut self, i: usize, status: NodeStatus) {
        if status.replicas.is_empty() && !self.nodes[i].published {
            return;
        }
        self.nodes[i].published = true;
        let bytes = 48 + 64 * status.replicas.len() as u64;
        self.news.start_status(i, Arc::new(status), bytes);
    }

    // Scenario validation keeps lease workloads out of the fast model.
    fn campaign(&mut self, _i: usize, _lease: WorkloadName, _want: LeaseWant) {}
    fn withdraw(&mut self, _i: usize, _lease: WorkloadName) {}

    fn runs_changed(&mut self, i: usize, replica: &ReplicaId, running: bool) {
        if running {
            self.running.entry(replica.clone()).or_default().insert(i);
        } else {
            self.not_running(replica, i);
        }
    }
}

impl FastWorld<'_> {
    /// Node `i` no longer runs `replica`.
    fn not_running(&mut self, replica: &ReplicaId, i: usize) {
        if let Some(on) = self.running.get_mut(replica) {
            on.remove(&i);
            if on.is_empty() {
                self.running.remove(replica);
            }
        }
    }
}

fn describe(node: &FastNode) -> NodeView {
    crate::checks::node_view(
        &node.host.id,
        &node.host.labels,
        node.host.capacity,
        Liveness::Alive,
    )
}

/// An event into the trace: its time, kind and node, and what it carries (the runtime's
/// report, the verdict). What a round delivers goes in as the round runs.
fn trace_event(trace: &mut Trace, at_ms: u64, event: &Ev) {
    let code = match event {
        Ev::Round => 1,
        Ev::Host(i, event) => return event.trace(*i, at_ms, trace),
        Ev::Fault(k) => 5 | (*k as u64) << 8,
        Ev::Resume(i) => 6 | (*i as u64) << 8,
        Ev::Verdict {
            target,
            incarnation,
            watcher,
            liveness,
        } => {
            trace.event(at_ms, 7 | (*target as u64) << 8 | (*watcher as u64) << 32);
            trace.payload(&(incarnation, liveness));
            return;
        }
        Ev::Sample => 8,
    };
    trace.event(at_ms, code);
}
