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
mod runtime;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use starling_core::node::{CoreConfig, NodeCore, RuntimeEvent};
use starling_protocol::desired::{DesiredState, Revision};
use starling_protocol::hash::mix64;
use starling_protocol::hlc::{Hlc, Timestamp};
use starling_protocol::placement::{Capacity, FleetView, Liveness, NodeView, ReplicaId};
use starling_protocol::quantity::{Bytes, Millicores};
use starling_protocol::spec::WorkloadSpec;
use starling_protocol::{NodeId, WorkloadName};

use crate::checks::Sample;
use crate::faults::Step;
use crate::rng::SimRng;
use crate::scenario::{GossipModel, Scenario};
use crate::world::{Counters, Power};
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
    let mut world = FastWorld::new(scenario, seed, options.bug_minority_takes_over);
    let violation = world.run().err();
    RunReport {
        scenario: scenario.name.clone(),
        seed,
        trace_hash: world.trace,
        duration_ms: world.now,
        nodes: scenario.fleet.nodes,
        last_fault_end_ms: world.last_fault_end_ms,
        converged_at_ms: world.converged_at_ms,
        counters: world.counters.clone(),
        samples: std::mem::take(&mut world.samples),
        faults_at: world.faults_at.clone(),
        node_names: world.nodes.iter().map(|n| n.id.to_string()).collect(),
        violation,
        expected_violation: scenario.expect_violation.clone(),
        leases: Vec::new(),
        returns: crate::ReturnFacts::default(),
    }
}

struct Instance {
    instance: u64,
    running: bool,
    cpu: u64,
    memory: u64,
}

struct FastNode {
    id: NodeId,
    labels: BTreeMap<String, String>,
    capacity: Capacity,
    power: Power,
    core: Option<NodeCore>,
    skew_ms: i64,
    incarnation: u64,
    hlc: Hlc,
    /// How much of the membership and write logs this node knows (prefix lengths). Kept
    /// across a crash, like the agent's disk.
    members: u32,
    writes: u32,
    instances: BTreeMap<ReplicaId, Instance>,
    /// The assignment persisted on disk.
    assignment: Vec<(ReplicaId, u64)>,
    /// What it may start while on a minority side: its assignment when it lost the majority
    /// or booted (a claim made since is persisted too, so the disk alone cannot say).
    minority_baseline: Option<BTreeSet<ReplicaId>>,
    core_timer_at: Option<u64>,
    /// Whether it ever published a status with replicas (an empty first status is news to
    /// nobody: absent and empty mean the same to a peer in a fleet that has a majority).
    published: bool,
}

#[derive(Debug, Clone)]
enum Ev {
    Round,
    CoreTimer(usize),
    Runtime(usize, RuntimeEvent),
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
    trace: u64,
    nodes: Vec<FastNode>,
    index: BTreeMap<NodeId, usize>,
    news: News,
    planner: Arc<SharedPlanner>,
    /// Verdicts by (target, incarnation, verdict), as member-log prefixes that include them, so
    /// watchers agreeing share one.
    verdicts: BTreeMap<(usize, u64, Liveness), u32>,
    /// The nodes each replica runs on (instances that reported running).
    running: BTreeMap<ReplicaId, BTreeSet<usize>>,
    started_on: BTreeMap<ReplicaId, usize>,
    ever_started: BTreeSet<ReplicaId>,
    counters: Counters,
    samples: Vec<Sample>,
    faults_at: Vec<u64>,
    last_fault_end_ms: u64,
    converged_at_ms: Option<u64>,
    acked: Vec<(WorkloadName, Timestamp)>,
    violation: Option<(String, String)>,
    log: Vec<(u64, String)>,
    steps: Vec<(u64, Step)>,
    next_instance: u64,
    fanout: usize,
    bug_minority_takes_over: bool,
    sample_ms: u64,
    /// Gossip rounds so far, and the round each write made during the run started in (by
    /// its position in the write log), until it reaches every up node.
    rounds: u64,
    spreading_writes: BTreeMap<u32, u64>,
}

impl<'s> FastWorld<'s> {
    fn new(scenario: &'s Scenario, seed: u64, bug_minority_takes_over: bool) -> Self {
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
            trace: seed,
            nodes: Vec::new(),
            index: BTreeMap::new(),
            news: News::default(),
            planner: Arc::new(SharedPlanner::default()),
            verdicts: BTreeMap::new(),
            running: BTreeMap::new(),
            started_on: BTreeMap::new(),
            ever_started: BTreeSet::new(),
            counters: Counters::default(),
            samples: Vec::new(),
            faults_at: Vec::new(),
            last_fault_end_ms: 0,
            converged_at_ms: None,
            acked: Vec::new(),
            violation: None,
            log: Vec::new(),
            steps: Vec::new(),
            next_instance: 1,
            fanout,
            bug_minority_takes_over,
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
                .insert(world.nodes[i].id.clone(), world.describe(i));
        }
        let mut desired = DesiredState::new();
        if !world.nodes.is_empty() {
            for spec in &scenario.workloads {
                let at = world.nodes[0].hlc.tick(0);
                let name = spec.name.clone();
                desired.write(
                    name.clone(),
                    Some(Revision::first(spec.clone())),
                    at.clone(),
                );
                world.acked.push((name, at));
                world.counters.writes += 1;
            }
        }
        world.news = News::new(view, desired);
        for i in 0..world.nodes.len() {
            world.boot(i, false);
        }
        world.steps = crate::faults::expand(&mut world);
        world.last_fault_end_ms = crate::faults::last_end_ms(&world.steps);
        for (k, (at, _)) in world.steps.clone().iter().enumerate() {
            world.schedule(*at, Ev::Fault(k));
        }
        world.schedule(scenario.gossip.interval_ms, Ev::Round);
        world.schedule(world.sample_ms, Ev::Sample);
        world
    }

    fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let (id, labels) = crate::world::node_identity(self.scenario, i);
        self.nodes.push(FastNode {
            hlc: Hlc::new(id.clone(), 5_000),
            id: id.clone(),
            labels,
            capacity: Capacity {
                cpu: Millicores(self.scenario.fleet.cpu_millicores),
                memory: Bytes(self.scenario.fleet.memory_bytes),
            },
            power: Power::Crashed,
            core: None,
            skew_ms: 0,
            incarnation: 0,
            members: 0,
            writes: 0,
            instances: BTreeMap::new(),
            assignment: Vec::new(),
            minority_baseline: None,
            core_timer_at: None,
            published: false,
        });
        self.index.insert(id, i);
        i
    }

    fn describe(&self, i: usize) -> NodeView {
        describe(&self.nodes[i])
    }

    /// Starts (or restarts) node `i` from its disk; `announce` spreads its new incarnation.
    fn boot(&mut self, i: usize, announce: bool) {
        let instance_base = self.next_instance;
        self.next_instance += 1_000_000;
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
        let nodes = &self.nodes;
        let view = self
            .news
            .view(nodes[i].members, &self.planner, |m| describe(&nodes[m]));
        let desired = self.news.desired(nodes[i].writes);
        let node = &mut self.nodes[i];
        node.power = Power::Up;
        node.published = false;
        node.minority_baseline = Some(node.assignment.iter().map(|(r, _)| r.clone()).collect());
        node.instances.clear();
        node.hlc = match desired.newest_timestamp().cloned() {
            Some(t) => Hlc::resume(
                Timestamp {
                    node: node.id.clone(),
                    ..t
                },
                5_000,
            ),
            None => Hlc::new(node.id.clone(), 5_000),
        };
        let mut config = CoreConfig::new(node.id.clone(), instance_base);
        config.bug_minority_takes_over = self.bug_minority_takes_over;
        config.settle_ms = self.scenario.core.settle_ms;
        node.core = Some(NodeCore::shared(
            config,
            node.assignment.clone(),
            view,
            desired,
            self.planner.clone(),
        ));
        let statuses: Vec<(NodeId, Arc<_>)> = self
            .news
            .statuses
            .iter()
            .filter(|(o, _)| **o != i)
            .map(|(o, s)| (self.nodes[*o].id.clone(), s.clone()))
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
        let node = &mut self.nodes[i];
        node.power = Power::Crashed;
        node.core = None;
        node.core_timer_at = None;
        let gone: Vec<ReplicaId> = node.instances.keys().cloned().collect();
        node.instances.clear();
        for r in gone {
            self.not_running(&r, i);
        }
        self.silence(i);
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

    fn node_now(&self, i: usize) -> u64 {
        (self.now as i64 + self.nodes[i].skew_ms).max(0) as u64
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
            self.trace = mix64(self.trace ^ at.rotate_left(17) ^ code(&event));
            self.handle(event);
            if let Some((invariant, detail)) = self.violation.take() {
                return Err(self.violation(&invariant, detail));
            }
        }
        self.now = self.scenario.duration_ms;
        checks::final_checks(self);
        match self.violation.take() {
            Some((invariant, detail)) => Err(self.violation(&invariant, detail)),
            None => Ok(()),
        }
    }

    fn violation(&self, invariant: &str, detail: String) -> Violation {
        let trace = self
            .log
            .iter()
            .rev()
            .take(30)
            .rev()
            .map(|(t, s)| format!("{:>9.3}s  {s}", *t as f64 / 1000.0))
            .collect();
        Violation {
            invariant: invariant.to_string(),
            at_ms: self.now,
            detail,
            trace,
        }
    }

    fn fail(&mut self, invariant: &str, detail: String) {
        if self.violation.is_none() {
            self.violation = Some((invariant.to_string(), detail));
        }
    }

    fn note(&mut self, text: String) {
        self.log.push((self.now, text));
        if self.log.len() > 5_000 {
            self.log.drain(..1_000);
        }
    }

    fn handle(&mut self, event: Ev) {
        let target = match &event {
            Ev::CoreTimer(i) | Ev::Runtime(i, _) => Some(*i),
            _ => None,
        };
        if let Some(i) = target {
            match self.nodes[i].power {
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
            Ev::CoreTimer(i) => {
                if self.nodes[i].core_timer_at == Some(self.now) {
                    self.nodes[i].core_timer_at = None;
                }
                self.with_core(i, |core, now| core.handle_timeout(now));
            }
            Ev::Runtime(i, ev) => self.runtime_event(i, ev),
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
        if let Power::Paused { until_ms } = self.nodes[i].power
            && until_ms <= self.now
        {
            self.nodes[i].power = Power::Up;
            self.catch_up(i);
            let nodes = &self.nodes;
            let view = self
                .news
                .view(nodes[i].members, &self.planner, |m| describe(&nodes[m]));
            let desired = self.news.desired(nodes[i].writes);
            self.with_core(i, |core, now| {
                core.handle_shared_view(now, view);
                core.handle_shared_desired(now, desired);
            });
        }
    }

    /// An API write at node `i`, acknowledged once on its disk.
    fn write(&mut self, i: usize, spec: WorkloadSpec) {
        if self.nodes[i].power != Power::Up {
            return;
        }
        let current = self.news.desired(self.nodes[i].writes);
        let name = spec.name.clone();
        let revision = match current.get(&name) {
            Some(rev) => rev.next(spec),
            None => Revision::first(spec),
        };
        let now = self.node_now(i);
        let at = self.nodes[i].hlc.tick(now);
        self.nodes[i].writes = self.news.start_write(Write {
            name: name.clone(),
            revision: Some(revision),
            at: at.clone(),
        });
        self.spreading_writes
            .insert(self.nodes[i].writes, self.rounds);
        self.acked.push((name, at));
        self.counters.writes += 1;
        let desired = self.news.desired(self.nodes[i].writes);
        self.with_core(i, |core, now| core.handle_shared_desired(now, desired));
    }

    /// Calls node `i`'s core, then carries out its actions and re-arms its timer.
    fn with_core(&mut self, i: usize, f: impl FnOnce(&mut NodeCore, u64)) {
        let now = self.node_now(i);
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        f(core, now);
        let mut actions = Vec::new();
        while let Some(a) = core.poll_action() {
            actions.push(a);
        }
        let deadline = core.poll_timeout();
        for action in actions {
            self.act(i, action);
        }
        if let Some(d) = deadline {
            let at = (d as i64 - self.nodes[i].skew_ms).max(self.now as i64) as u64;
            if self.nodes[i]
                .core_timer_at
                .is_none_or(|armed| at < armed || armed < self.now)
            {
                self.nodes[i].core_timer_at = Some(at);
                self.schedule(at, Ev::CoreTimer(i));
            }
        }
    }
}

fn describe(node: &FastNode) -> NodeView {
    crate::checks::node_view(&node.id, &node.labels, node.capacity, Liveness::Alive)
}

fn code(event: &Ev) -> u64 {
    match event {
        Ev::Round => 1,
        Ev::CoreTimer(i) => 3 | (*i as u64) << 8,
        Ev::Runtime(i, _) => 4 | (*i as u64) << 8,
        Ev::Fault(k) => 5 | (*k as u64) << 8,
        Ev::Resume(i) => 6 | (*i as u64) << 8,
        Ev::Verdict {
            target, watcher, ..
        } => 7 | (*target as u64) << 8 | (*watcher as u64) << 32,
        Ev::Sample => 8,
    }
}
