//! Invariants, checked as the run goes (safety: at every start, every sample) and against a
//! deadline (liveness: convergence after the last fault), plus the figures for the report.

use std::collections::{BTreeMap, VecDeque};

use starling_protocol::WorkloadName;
use starling_protocol::hlc::Timestamp;
use starling_protocol::placement::{Departure, FleetView, Liveness, NodeView, ReplicaId, plan};
use starling_protocol::spec::{PartitionPolicy, RuntimeKind, WorkloadSpec};

use starling_core::node::CoreConfig;

use crate::host::{Fleet, Host, Power};
use crate::scenario::Scenario;
use crate::world::World;

/// One point of the report's timeline.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Virtual time.
    pub at_ms: u64,
    /// Running replica copies in the fleet.
    pub running: usize,
    /// Replicas the desired state asks for.
    pub desired: usize,
    /// Surplus copies (beyond one per replica).
    pub surplus: usize,
    /// Per node: 0 up, 1 crashed, 2 paused, 3 gone, 4 up but on a minority side, 5 agent
    /// away (its replicas run on).
    pub node_states: Vec<u8>,
}

impl Sample {
    /// The timeline's code for a node (see `node_states`).
    pub(crate) fn node_state(power: Power, core: Option<&starling_core::node::NodeCore>) -> u8 {
        match power {
            Power::Up if core.is_some_and(|c| !c.has_majority()) => 4,
            Power::Up => 0,
            Power::Crashed => 1,
            Power::Paused { .. } => 2,
            Power::Gone => 3,
            Power::AgentDown => 5,
        }
    }
}

/// The view entry of a simulated node (every simulated node offers both runtimes).
pub(crate) fn node_view(
    id: &starling_protocol::NodeId,
    labels: &BTreeMap<String, String>,
    capacity: starling_protocol::placement::Capacity,
    liveness: Liveness,
) -> NodeView {
    NodeView {
        id: id.clone(),
        labels: labels.clone(),
        arch: "x86_64".into(),
        runtimes: [RuntimeKind::Process, RuntimeKind::Docker].into(),
        capacity,
        weight: 1,
        liveness,
        departure: Default::default(),
    }
}

/// What both models check and report the same way: the first violation, acknowledged
/// writes, where each replica started, the timeline, and the last events before a violation.
pub(crate) struct Checker {
    acked: Vec<(WorkloadName, Timestamp)>,
    violation: Option<(String, String)>,
    pub last_fault_end_ms: u64,
    converge_within_ms: u64,
    pub converged_at_ms: Option<u64>,
    /// Replicas started so far, and the node each last started on.
    started_on: BTreeMap<ReplicaId, usize>,
    pub samples: Vec<Sample>,
    pub faults_at: Vec<u64>,
    /// The last events (virtual ms, what), for a violation's report.
    log: VecDeque<(u64, String)>,
}

/// Events a violation's report shows, and events kept for it.
const REPORTED_EVENTS: usize = 30;
const KEPT_EVENTS_MAX: usize = 5_000;

impl Checker {
    pub fn new(scenario: &Scenario) -> Self {
        Checker {
            acked: Vec::new(),
            violation: None,
            last_fault_end_ms: 0,
            converge_within_ms: scenario.converge_within_ms,
            converged_at_ms: None,
            started_on: BTreeMap::new(),
            samples: Vec::new(),
            faults_at: Vec::new(),
            log: VecDeque::new(),
        }
    }

    /// (1) No acknowledged write is lost: `kept` says whether one is still on some disk.
    pub fn check_acknowledged_writes(
        &mut self,
        mut kept: impl FnMut(&WorkloadName, &Timestamp) -> bool,
    ) {
        let lost = self.acked.iter().find(|(name, at)| !kept(name, at));
        if let Some((name, at)) = lost {
            let detail = format!(
                "the write of {name} at {}ms by {} is on no disk",
                at.physical_ms, at.node
            );
            self.fail("acknowledged-write-lost", detail);
        }
    }

    /// Node `i` starts `replica`: whether that moves it (it last started on another node).
    pub fn started(&mut self, replica: &ReplicaId, i: usize) -> bool {
        self.started_on
            .insert(replica.clone(), i)
            .is_some_and(|before| before != i)
    }

    pub fn ever_started(&self, replica: &ReplicaId) -> bool {
        self.started_on.contains_key(replica)
    }

    /// Keeps `text` (at virtual `now_ms`) for a violation's report.
    pub fn note(&mut self, now_ms: u64, text: String) {
        if self.log.len() == KEPT_EVENTS_MAX {
            self.log.pop_front();
        }
        // `STARLING_SIM_EVENTS=1 starling sim ...` prints every event as it is noted: the way
        // to follow a run that holds its invariants but not what its author expected.
        if std::env::var_os("STARLING_SIM_EVENTS").is_some() {
            eprintln!("{now_ms} {text}");
        }
        self.log.push_back((now_ms, text));
    }

    /// The report of a violation found at `now_ms`, with the events before it.
    pub fn violation(&self, invariant: &str, detail: String, now_ms: u64) -> crate::Violation {
        let skip = self.log.len().saturating_sub(REPORTED_EVENTS);
        let trace = self
            .log
            .iter()
            .skip(skip)
            .map(|(t, s)| format!("{:>9.3}s  {s}", *t as f64 / 1000.0))
            .collect();
        crate::Violation {
            invariant: invariant.to_string(),
            at_ms: now_ms,
            detail,
            trace,
        }
    }

    pub fn acknowledge(&mut self, name: WorkloadName, at: Timestamp) {
        self.acked.push((name, at));
    }

    pub fn fault_seen(&mut self, at_ms: u64) {
        self.faults_at.push(at_ms);
    }

    pub fn fail(&mut self, invariant: &str, detail: String) {
        if self.violation.is_none() {
            self.violation = Some((invariant.to_string(), detail));
        }
    }

    pub fn take_violation(&mut self) -> Option<(String, String)> {
        self.violation.take()
    }

    /// Whether a sample at `now_ms` looks for convergence: after the last fault (strictly: a
    /// sample at the very instant of the last fault may run before it), until it is seen.
    pub fn awaits_convergence(&self, now_ms: u64) -> bool {
        now_ms > self.last_fault_end_ms && self.converged_at_ms.is_none()
    }

    /// What a convergence check found at `now_ms`: converged, or not yet (a violation once
    /// the deadline after the last fault passed).
    pub fn convergence(&mut self, now_ms: u64, found: Result<(), String>) {
        match found {
            Ok(()) => self.converged_at_ms = Some(now_ms),
            Err(why) if now_ms > self.last_fault_end_ms + self.converge_within_ms => {
                let detail = format!(
                    "not converged {} ms after the last fault: {why}",
                    self.converge_within_ms
                );
                self.fail("no-convergence", detail);
            }
            Err(_) => {}
        }
    }
}

/// Safety checks when node `i` starts `replica`.
pub(crate) fn on_start(world: &mut World, i: usize, replica: &ReplicaId, spec: &WorkloadSpec) {
    if let Some(detail) = world.nodes[i].host.over_committed_by(replica, spec) {
        world.checker.fail("capacity-over-committed", detail);
    }
    moved_on_suspicion(world, i, replica);
    replaced_during_planned_restart(world, i, replica, spec);
    moved_back_early(world, i, replica, spec);
    if let Some(detail) = minority_replacement(&world.nodes[i].host, &world.checker, replica, spec)
    {
        world.checker.fail("minority-replacement", detail);
    }
}

/// (6) A minority side starts no replacements: only its own assignment, or brand-new replicas.
/// A singleton that follows its lease is the lease's business (invariant 4): it starts where
/// the lease is held, majority or not, and never from a last assignment.
pub(crate) fn minority_replacement(
    host: &Host,
    checker: &Checker,
    replica: &ReplicaId,
    spec: &WorkloadSpec,
) -> Option<String> {
    let minority = host.core.as_ref().is_some_and(|c| !c.has_majority());
    let replaces = minority
        && spec.partition == PartitionPolicy::Consistency
        && !follows_lease(spec)
        && !host.ran_before_minority(replica)
        && checker.ever_started(replica);
    replaces.then(|| {
        format!(
            "{} sees no majority but starts {}/{}, which it did not run before",
            host.id, replica.workload, replica.index
        )
    })
}

/// (5) No replica moves while its node is only suspected: node `i` starts `replica` while a
/// node it suspects runs it. That is a move on suspicion unless placement gives the replica
/// to `i` even with every suspected node counted alive: then the suspicion changed nothing,
/// and the start is a planned move (say, a node back from a reboot taking its replica back
/// after the move hold, make before break: the old copy runs until the new one is healthy).
fn moved_on_suspicion(world: &mut World, i: usize, replica: &ReplicaId) {
    let node = &world.nodes[i];
    let suspected_runner = world.nodes.iter().enumerate().find(|(y, other)| {
        *y != i
            && matches!(other.host.power, Power::Up | Power::AgentDown)
            && other.host.instances.get(replica).is_some_and(|x| x.running)
            && node
                .view
                .nodes
                .get(&other.host.id)
                .is_some_and(|v| v.liveness == Liveness::Suspect)
    });
    let Some((_, runner)) = suspected_runner else {
        return;
    };
    let mut trusting = node.view.clone();
    for v in trusting.nodes.values_mut() {
        if v.liveness == Liveness::Suspect {
            v.liveness = Liveness::Alive;
        }
    }
    let desired = node
        .host
        .core
        .as_ref()
        .map_or(&node.disk.desired, |c| c.desired());
    if plan(&trusting, desired).placed.get(replica) == Some(&node.host.id) {
        return;
    }
    let detail = format!(
        "{} starts {}/{} while {} runs it and is only suspected",
        node.host.id, replica.workload, replica.index, runner.host.id
    );
    world.checker.fail("moved-on-suspicion", detail);
}

/// (8) A planned restart replaces nothing: node `i` starts `replica` while a node runs it
/// whose restart `i` has heard of, before the deadline announced (on `i`'s clock). A node
/// that never heard of it (cut off from every node that did) replaces it as after a crash,
/// rightly. Singletons are exempt: a restarting node gives them up, and they move by design.
fn replaced_during_planned_restart(
    world: &mut World,
    i: usize,
    replica: &ReplicaId,
    spec: &WorkloadSpec,
) {
    if spec.singleton {
        return;
    }
    let now = world.node_now(i);
    let heard = &world.nodes[i].departures_heard;
    let restarting = world.nodes.iter().enumerate().find(|(y, other)| {
        *y != i
            && matches!(other.host.power, Power::Up | Power::AgentDown)
            && matches!(heard.get(y), Some(Departure::Restarting { back_by_ms }) if now < *back_by_ms)
            && other.host.instances.get(replica).is_some_and(|x| x.running)
    });
    if let Some((_, other)) = restarting {
        let detail = format!(
            "{} starts {}/{} while {} runs it and restarts as announced",
            world.nodes[i].host.id, replica.workload, replica.index, other.host.id
        );
        world.checker.fail("planned-restart-replaced", detail);
    }
}

/// (9) A node back from a restart takes a replica back only by the move rules: it starts a
/// replica that a node it can reach has run since before its return only once placement has
/// wanted it there for the move hold, so no earlier than `move_hold_ms` after the return.
/// Earlier means it acted before it heard where the fleet put its replicas (the rejoin wait
/// is there to prevent it). A singleton that follows its lease is exempt: the lease moves it.
fn moved_back_early(world: &mut World, i: usize, replica: &ReplicaId, spec: &WorkloadSpec) {
    let Some(back_at_ms) = world.returns.back_at_ms(i) else {
        return;
    };
    let hold_ms = CoreConfig::new(world.nodes[i].host.id.clone(), 0).move_hold_ms;
    if follows_lease(spec) || world.now >= back_at_ms + hold_ms {
        return;
    }
    let blocked = &world.blocked;
    let runner = world.nodes.iter().enumerate().find(|(y, other)| {
        *y != i
            && other.host.power == Power::Up
            && !blocked.contains(&(i, *y))
            && !blocked.contains(&(*y, i))
            && other
                .host
                .instances
                .get(replica)
                .is_some_and(|x| x.running && x.running_since_ms <= back_at_ms)
    });
    if let Some((_, other)) = runner {
        let detail = format!(
            "{}, back at {:.3} s, starts {}/{} {} ms later while {} has run it since before: \
             a move back waits out the move hold ({hold_ms} ms)",
            world.nodes[i].host.id,
            back_at_ms as f64 / 1000.0,
            replica.workload,
            replica.index,
            world.now - back_at_ms,
            other.host.id
        );
        world.checker.fail("moved-back-early", detail);
    }
}

/// After running copies may have changed: (10) the instance of a singleton that follows its
/// lease, left running by an agent that went away, never runs next to another node's (its
/// fence stops it at the lease deadline; with its agent up, the lease and invariant 4 are the
/// judges), and invariant 7's counts.
pub(crate) fn copies_changed(world: &mut World) {
    let mut runners: BTreeMap<&ReplicaId, Vec<(&str, bool)>> = BTreeMap::new();
    for node in &world.nodes {
        if !matches!(node.host.power, Power::Up | Power::AgentDown) {
            continue;
        }
        for (r, x) in &node.host.instances {
            if x.running && follows_lease(&x.spec) {
                let orphan = node.host.power == Power::AgentDown;
                runners
                    .entry(r)
                    .or_default()
                    .push((node.host.id.as_str(), orphan));
            }
        }
    }
    let outlived = runners
        .into_iter()
        .find(|(_, nodes)| nodes.len() > 1 && nodes.iter().any(|(_, orphan)| *orphan));
    if let Some((r, nodes)) = outlived {
        let names: Vec<&str> = nodes.iter().map(|(n, _)| *n).collect();
        let detail = format!(
            "singleton {}/{} runs on {} at once, one of them left by an agent that went away",
            r.workload,
            r.index,
            names.join(" and ")
        );
        world.checker.fail("singleton-outlived-its-agent", detail);
    }
    crate::return_check::track(world);
}

/// A singleton without standbys: its one instance runs on the lease holder only.
pub(crate) fn follows_lease(spec: &WorkloadSpec) -> bool {
    spec.singleton && spec.lease.standbys == 0
}

/// Periodic sampling: duplicate-run time, the timeline, and the liveness deadline.
pub(crate) fn sample(world: &mut World) {
    let copies = copies(world);
    let surplus: usize = copies.values().map(|c| c.saturating_sub(1)).sum();
    let desired = world
        .up()
        .next()
        .map(|i| {
            world.nodes[i]
                .disk
                .desired
                .workloads()
                .map(|(_, r)| r.spec.replicas_to_place() as usize)
                .sum()
        })
        .unwrap_or(0);
    let running = copies.values().sum();
    world.sample_state_size();
    let every_ms = world.scenario.gossip.interval_ms;
    record_sample(world, (running, surplus), desired, every_ms, converged);
}

/// Puts a sample on the timeline, taken every `every_ms`: the copies running and the surplus
/// among them (beyond one per replica), the replicas desired. Once the faults are over, it
/// asks `converged` whether the fleet has.
pub(crate) fn record_sample<F: Fleet>(
    world: &mut F,
    (running, surplus): (usize, usize),
    desired: usize,
    every_ms: u64,
    converged: fn(&F) -> Result<(), String>,
) {
    world.counters().duplicate_run_ms += surplus as u64 * every_ms;
    let now = world.now();
    let sample = Sample {
        at_ms: now,
        running,
        desired,
        surplus,
        node_states: world.node_states(),
    };
    world.checker().samples.push(sample);
    if world.checker().awaits_convergence(now) {
        let found = converged(world);
        world.checker().convergence(now, found);
    }
}

/// Running copies per replica on nodes that are up or whose agent is away (a paused node's
/// processes are frozen).
fn copies(world: &World) -> BTreeMap<ReplicaId, usize> {
    let mut out = BTreeMap::new();
    let running = world
        .nodes
        .iter()
        .filter(|n| matches!(n.host.power, Power::Up | Power::AgentDown));
    for node in running {
        for (r, x) in &node.host.instances {
            if x.running {
                *out.entry(r.clone()).or_insert(0) += 1;
            }
        }
    }
    out
}

/// (2) Views agree with the truth, desired states agree, and every placeable replica runs
/// exactly once (and nothing else runs). A singleton that follows its lease runs once where
/// a holder can be elected (a side with a majority of the voters), and not at all elsewhere.
fn converged(world: &World) -> Result<(), String> {
    let up: Vec<usize> = world.up().collect();
    let Some(&first) = up.first() else {
        return Ok(());
    };
    // The true digests, not the model's cached roots: the invariant must not trust the model.
    let root = world.nodes[first].disk.desired.digest().root();
    if let Some(&i) = up
        .iter()
        .find(|&&i| world.nodes[i].disk.desired.digest().root() != root)
    {
        return Err(format!(
            "{} holds a different desired state than {}",
            world.nodes[i].host.id, world.nodes[first].host.id
        ));
    }
    // Secrets merged like specs: every up node opens each one with its own key (the seals of
    // the version that won survived the merge).
    for &i in &up {
        let node = &world.nodes[i];
        let keys = crate::world::sim_node_keys(&node.host.id);
        for (key, _, _) in node.disk.desired.objects() {
            let opened = node
                .disk
                .desired
                .object_entry(key)
                .ok_or_else(|| format!("{key} vanished"))
                .and_then(|entry| {
                    starling_protocol::objects::seal::open_for(&entry, &node.host.id, &keys)
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = opened {
                return Err(format!("{} cannot open {key}: {e}", node.host.id));
            }
        }
    }
    let mut truth = FleetView::default();
    for (m, node) in world.nodes.iter().enumerate() {
        if node.host.power == Power::Gone {
            continue;
        }
        let liveness = if up.contains(&m) {
            Liveness::Alive
        } else {
            Liveness::Down
        };
        truth.nodes.insert(
            node.host.id.clone(),
            node_view(
                &node.host.id,
                &node.host.labels,
                node.host.capacity,
                liveness,
            ),
        );
    }
    for &i in &up {
        for (id, v) in &world.nodes[i].view.nodes {
            let truly = truth.nodes.get(id).map(|t| t.liveness);
            if Some(v.liveness) != truly && !(v.liveness == Liveness::Down && truly.is_none()) {
                return Err(format!(
                    "{} sees {id} as {:?}",
                    world.nodes[i].host.id, v.liveness
                ));
            }
            let announced = world.index.get(id).map(|&m| world.nodes[m].departure);
            if announced.is_some_and(|d| d != v.departure) {
                return Err(format!(
                    "{} sees {id} as {:?}",
                    world.nodes[i].host.id, v.departure
                ));
            }
        }
    }
    if let Some(detail) = crate::deletes::returned(world) {
        return Err(detail);
    }
    let assignment = plan(&truth, &world.nodes[first].disk.desired);
    let copies = copies(world);
    let desired = &world.nodes[first].disk.desired;
    for r in assignment.placed.keys() {
        let n = copies.get(r).copied().unwrap_or(0);
        let expected = match desired.get(&r.workload) {
            Some(rev) if follows_lease(&rev.spec) => usize::from(world.holder_possible(&rev.spec)),
            _ => 1,
        };
        if n != expected {
            return Err(format!(
                "{}/{} runs {n} times (expected {expected})",
                r.workload, r.index
            ));
        }
    }
    if let Some(r) = copies.keys().find(|r| !assignment.placed.contains_key(*r)) {
        return Err(format!(
            "{}/{} runs but is not desired",
            r.workload, r.index
        ));
    }
    Ok(())
}

/// Checks at the end of the run: (1) no acknowledged write is lost.
pub(crate) fn final_checks(world: &mut World) {
    let nodes = &world.nodes;
    // A write is kept while a register at least as new holds it, or once a horizon past it
    // collected its tombstone (or the tombstone of a later delete).
    world.checker.check_acknowledged_writes(|name, at| {
        nodes.iter().any(|n| {
            let desired = &n.disk.desired;
            match desired.register(name) {
                Some(r) => r.marker >= *at,
                None => desired.horizon().is_some_and(|h| h > at.physical_ms),
            }
        })
    });
    if let Some(detail) = crate::deletes::returned(world) {
        world.checker.fail("deleted-workload-returned", detail);
    }
    if let Some(detail) = crate::deletes::kept_past_grace(world) {
        world.checker.fail("tombstones-kept-past-grace", detail);
    }
}
