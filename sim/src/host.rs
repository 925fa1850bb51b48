//! One simulated node host, shared by the mesh and the fast model: the node's identity, clock
//! and power, its real core, the simulated runtime that carries out the core's actions, and
//! the part of its disk the core writes (the assignment).
//!
//! The models differ only in the network under the hosts. Each implements [`Fleet`]: it
//! gives its hosts the scheduler, the seed's generator and the run's books, and takes what
//! leaves a host for the network (a published status, a lease campaign). Everything a host
//! does on its own is here, once:
//! - [`Fleet::with_core`]: call a core, carry out its actions (each hashed into the trace) through
//!   [`Runtime`], the simulator's [`Effects`], and arm its timer once per deadline;
//! - [`Fleet::handle_host`]: a host's own events (its core's timer, its runtime's reports);
//! - the runtime: a start runs after a random delay from the scenario's range, then passes one
//!   health probe 50 ms later when it has a check, and may crash at the scenario's rate; a
//!   stop ends it 50 ms later. A report about an instance the runtime no longer has is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use starling_core::node::{
    CoreConfig, CoreEvent, DirectPlanner, Effects, LeaseWant, NodeCore, Planner, RuntimeEvent,
    StopReason,
};
use starling_protocol::desired::DesiredState;
use starling_protocol::hlc::{Hlc, Timestamp};
use starling_protocol::placement::{Capacity, FleetView, ReplicaId};
use starling_protocol::quantity::{Bytes, Millicores};
use starling_protocol::spec::WorkloadSpec;
use starling_protocol::status::NodeStatus;
use starling_protocol::{NodeId, WorkloadName};

use crate::RunOptions;
use crate::checks::Checker;
use crate::rng::SimRng;
use crate::scenario::Scenario;
use crate::trace::Trace;
use crate::world::Counters;

/// A node's process state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Power {
    Up,
    Crashed,
    Paused {
        until_ms: u64,
    },
    /// Left the fleet for good (churn).
    Gone,
    /// The agent process is gone (an agent restart): no core, detector or elector, nothing
    /// answered, but its replicas keep running for the next agent to adopt.
    AgentDown,
}

/// A simulated node as both models see it. See the module docs.
pub(crate) struct Host {
    pub id: NodeId,
    pub labels: BTreeMap<String, String>,
    pub capacity: Capacity,
    pub power: Power,
    /// How far the node's clock is ahead of the simulator's (behind when negative).
    pub skew_ms: i64,
    pub hlc: Hlc,
    /// The core while an agent runs.
    pub core: Option<NodeCore>,
    /// The earliest pending timer event of the core, so a deadline is scheduled once rather
    /// than after every call (which would flood the queue with duplicates).
    pub core_timer_at: Option<u64>,
    /// The simulated runtime's instances. They outlive the agent (the next one adopts them),
    /// not the node.
    pub instances: BTreeMap<ReplicaId, Instance>,
    /// Old instances a start-first update keeps beside a replica's new one until it settles.
    pub outgoing: BTreeMap<ReplicaId, Instance>,
    /// The assignment the core persisted: on disk, so it outlives a crash (not a disk loss).
    pub assignment: Vec<(ReplicaId, u64)>,
    /// Replicas this node may start while on a minority side: its assignment when it lost the
    /// majority or booted (a claim made since is persisted too, so the disk alone cannot
    /// say); `None` while it has a majority.
    pub minority_baseline: Option<BTreeSet<ReplicaId>>,
}

/// A replica instance in the simulated runtime.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub instance: u64,
    /// The revision it runs, reported when a new agent adopts it.
    pub revision: u64,
    pub running: bool,
    /// When it began to run (valid once `running`).
    pub running_since_ms: u64,
    pub spec: Box<WorkloadSpec>,
}

/// A host's own events.
#[derive(Debug, Clone)]
pub(crate) enum HostEvent {
    /// The core's deadline (see [`Host::core_timer_at`]).
    CoreTimer,
    /// The runtime reports on an instance.
    Runtime(RuntimeEvent),
}

impl HostEvent {
    /// Node `i`'s event into the trace: its kind and node, and the runtime's report.
    pub fn trace(&self, i: usize, at_ms: u64, trace: &mut Trace) {
        match self {
            HostEvent::CoreTimer => trace.event(at_ms, 3 | (i as u64) << 8),
            HostEvent::Runtime(report) => {
                trace.event(at_ms, 4 | (i as u64) << 8);
                trace.payload(report);
            }
        }
    }
}

impl Host {
    /// The `i`th node of the scenario's fleet (joiners continue the count), crashed until it
    /// boots, with an empty disk.
    pub fn new(scenario: &Scenario, i: usize) -> Self {
        let (id, labels) = node_identity(scenario, i);
        Host {
            hlc: Hlc::new(id.clone(), 5_000),
            id,
            labels,
            capacity: Capacity {
                cpu: Millicores(scenario.fleet.cpu_millicores),
                memory: Bytes(scenario.fleet.memory_bytes),
            },
            power: Power::Crashed,
            skew_ms: 0,
            core: None,
            core_timer_at: None,
            instances: BTreeMap::new(),
            outgoing: BTreeMap::new(),
            assignment: Vec::new(),
            minority_baseline: None,
        }
    }

    /// Runs `core` from now on: the node is up, its clock resumes after the newest write it
    /// holds (`desired`), and it may start on a minority side what its disk says it ran.
    pub fn boot(&mut self, core: NodeCore, desired: &DesiredState) {
        self.power = Power::Up;
        self.hlc = match desired.newest_timestamp().cloned() {
            Some(t) => Hlc::resume(
                Timestamp {
                    node: self.id.clone(),
                    ..t
                },
                5_000,
            ),
            None => Hlc::new(self.id.clone(), 5_000),
        };
        self.minority_baseline = Some(self.replicas_on_disk());
        self.core = Some(core);
    }

    /// The agent goes: the core and its timer with it; the instances run on.
    pub fn lose_agent(&mut self) {
        self.core = None;
        self.core_timer_at = None;
    }

    /// The node stops: the agent and every instance go, the disk stays.
    pub fn crash(&mut self) {
        self.power = Power::Crashed;
        self.lose_agent();
        self.instances.clear();
        self.outgoing.clear();
    }

    fn replicas_on_disk(&self) -> BTreeSet<ReplicaId> {
        self.assignment.iter().map(|(r, _)| r.clone()).collect()
    }

    /// (3) Whether starting `replica` with `spec` here over-commits the node's capacity.
    pub fn over_committed_by(&self, replica: &ReplicaId, spec: &WorkloadSpec) -> Option<String> {
        let mut cpu = u64::from(spec.resources.cpu_request.0);
        let mut memory = spec.resources.memory_request.0;
        for x in self.instances.values() {
            cpu += u64::from(x.spec.resources.cpu_request.0);
            memory += x.spec.resources.memory_request.0;
        }
        (cpu > u64::from(self.capacity.cpu.0) || memory > self.capacity.memory.0).then(|| {
            format!(
                "{} starts {}/{} with {cpu}m cpu and {memory} bytes reserved, over its capacity",
                self.id, replica.workload, replica.index
            )
        })
    }

    /// Whether this node may start `replica` while on a minority side: it ran it before.
    pub fn ran_before_minority(&self, replica: &ReplicaId) -> bool {
        self.minority_baseline
            .as_ref()
            .is_some_and(|b| b.contains(replica))
    }
}

/// How a model configures the cores it boots: the scenario's settings, the run's options, and
/// instance numbers that no two boots of the run share.
pub(crate) struct CoreSettings {
    next_instance: u64,
    settle_ms: u64,
    bug_minority_takes_over: bool,
    bug_rollout_ignores_budget: bool,
}

impl CoreSettings {
    pub fn new(scenario: &Scenario, options: RunOptions) -> Self {
        CoreSettings {
            next_instance: 1 + options.instance_offset,
            settle_ms: scenario.core.settle_ms,
            bug_minority_takes_over: options.bug_minority_takes_over,
            bug_rollout_ignores_budget: options.bug_rollout_ignores_budget,
        }
    }

    /// The configuration of `node`'s next core.
    pub fn next(&mut self, node: &NodeId) -> CoreConfig {
        // A million instances per life: more than any run starts.
        let mut config = CoreConfig::new(node.clone(), self.next_instance);
        self.next_instance += 1_000_000;
        config.settle_ms = self.settle_ms;
        config
    }

    /// The planner a core of this run plans with: the agent's, or the self-test's bug.
    pub fn planner(&self) -> Arc<dyn Planner> {
        if self.bug_minority_takes_over || self.bug_rollout_ignores_budget {
            Arc::new(InjectedBug {
                minority: self.bug_minority_takes_over,
                rollout: self.bug_rollout_ignores_budget,
            })
        } else {
            Arc::new(DirectPlanner)
        }
    }
}

/// The simulator's self-test bugs: the agent's planner, except that a side without a majority
/// replaces what it cannot see (`minority`), or replicas move to a new revision without the
/// rollout gate (`rollout`). The invariants must catch each.
#[derive(Debug)]
struct InjectedBug {
    minority: bool,
    rollout: bool,
}

impl Planner for InjectedBug {
    fn plan(
        &self,
        view: &Arc<FleetView>,
        desired: &Arc<DesiredState>,
        majority: bool,
    ) -> Arc<starling_core::node::Plan> {
        DirectPlanner.plan(view, desired, majority)
    }

    fn minority_may_replace(&self) -> bool {
        self.minority
    }

    fn rollout_ignores_budget(&self) -> bool {
        self.rollout
    }
}

/// A simulated fleet as its hosts and the shared fault steps see it: the mesh model and the
/// fast model implement the required methods; the provided ones are each host's behaviour.
pub(crate) trait Fleet: Sized {
    fn scenario(&self) -> &Scenario;
    /// Simulator time.
    fn now(&self) -> u64;
    fn node_count(&self) -> usize;
    fn host(&self, i: usize) -> &Host;
    fn host_mut(&mut self, i: usize) -> &mut Host;
    fn index_of(&self, id: &NodeId) -> Option<usize>;
    fn rng(&mut self) -> &mut SimRng;
    fn trace(&mut self) -> &mut Trace;
    fn counters(&mut self) -> &mut Counters;
    fn checker(&mut self) -> &mut Checker;
    fn schedule_host(&mut self, at: u64, i: usize, event: HostEvent);

    /// The safety checks when node `i` starts `replica`, before its runtime has it.
    fn check_start(&mut self, i: usize, replica: &ReplicaId, spec: &WorkloadSpec);
    /// Node `i`'s core published its status.
    fn publish(&mut self, i: usize, status: NodeStatus);
    /// Node `i`'s core asks its elector to campaign for `lease`.
    fn campaign(&mut self, i: usize, lease: WorkloadName, want: LeaseWant);
    /// Node `i`'s core withdraws from `lease`.
    fn withdraw(&mut self, i: usize, lease: WorkloadName);
    /// Node `i`'s core scales `workload` from `from` to `to` (a write, when the count is still
    /// `from`). A model without autoscaling ignores it.
    fn scale(&mut self, _i: usize, _workload: WorkloadName, _from: u32, _to: u32) {}
    /// Node `i`'s core asks for the rollback of `workload`'s `revision` (a write, when that
    /// revision is still current). A model without rollouts ignores it.
    fn roll_back(&mut self, _i: usize, _workload: WorkloadName, _revision: u64, _reason: String) {}
    /// An instance of `replica` on node `i` began to run (`running`) or is gone.
    fn runs_changed(&mut self, _i: usize, _replica: &ReplicaId, _running: bool) {}

    /// The clock node `i` reads.
    fn node_now(&self, i: usize) -> u64 {
        (self.now() as i64 + self.host(i).skew_ms).max(0) as u64
    }

    fn id(&self, i: usize) -> &NodeId {
        &self.host(i).id
    }

    fn power(&self, i: usize) -> Power {
        self.host(i).power
    }

    fn site(&self, i: usize) -> Option<&str> {
        self.host(i).labels.get("site").map(String::as_str)
    }

    /// Whether node `i` has an instance of `workload` now.
    fn runs(&self, i: usize, workload: &str) -> bool {
        self.host(i)
            .instances
            .keys()
            .any(|r| r.workload.as_str() == workload)
    }

    /// Each node's state on the report's timeline (see [`crate::Sample::node_states`]).
    fn node_states(&self) -> Vec<u8> {
        (0..self.node_count())
            .map(|i| crate::Sample::node_state(self.power(i), self.host(i).core.as_ref()))
            .collect()
    }

    /// Keeps `text` for the report of a violation (the events before it).
    fn note(&mut self, text: String) {
        let now = self.now();
        self.checker().note(now, text);
    }

    /// Calls node `i`'s core, then carries out its actions and re-arms its timer.
    fn with_core(&mut self, i: usize, f: impl FnOnce(&mut NodeCore, u64)) {
        let now = self.node_now(i);
        let Some(core) = self.host_mut(i).core.as_mut() else {
            return;
        };
        f(core, now);
        let mut actions = Vec::new();
        while let Some(a) = core.poll_action() {
            actions.push(a);
        }
        let deadline = core.poll_timeout();
        for action in actions {
            self.trace().action(i, &action);
            action.execute(&mut Runtime { fleet: self, i });
        }
        if let Some(d) = deadline {
            let now = self.now();
            let host = self.host_mut(i);
            let at = (d as i64 - host.skew_ms).max(now as i64) as u64;
            if host
                .core_timer_at
                .is_none_or(|armed| at < armed || armed < now)
            {
                host.core_timer_at = Some(at);
                self.schedule_host(at, i, HostEvent::CoreTimer);
            }
        }
    }

    /// One of node `i`'s own events, once the model let it through (the node is up, or only
    /// its agent is away for a runtime report).
    fn handle_host(&mut self, i: usize, event: HostEvent) {
        match event {
            HostEvent::CoreTimer => {
                let now = self.now();
                let host = self.host_mut(i);
                if host.core_timer_at == Some(now) {
                    host.core_timer_at = None;
                }
                self.with_core(i, |core, now| core.handle_timeout(now));
            }
            HostEvent::Runtime(event) => self.runtime_event(i, event),
        }
    }

    /// The runtime reports on one of node `i`'s instances: it updates its own books, then
    /// tells the core (nothing, for an instance it no longer has).
    fn runtime_event(&mut self, i: usize, event: RuntimeEvent) {
        let now = self.now();
        let instances = &mut self.host_mut(i).instances;
        let (replica, instance) = match &event {
            RuntimeEvent::Started { replica, instance }
            | RuntimeEvent::Exited {
                replica, instance, ..
            }
            | RuntimeEvent::Health {
                replica, instance, ..
            } => (replica, *instance),
            RuntimeEvent::StartFailed { .. } | RuntimeEvent::Adopted { .. } => {
                self.with_core(i, |core, now| core.handle_runtime(now, event));
                return;
            }
        };
        let Some(x) = instances
            .get_mut(replica)
            .filter(|x| x.instance == instance)
        else {
            let host = self.host_mut(i);
            if host
                .outgoing
                .get(replica)
                .is_some_and(|x| x.instance == instance)
            {
                if matches!(event, RuntimeEvent::Exited { .. }) {
                    host.outgoing.remove(replica);
                }
                self.with_core(i, |core, now| core.handle_runtime(now, event));
            }
            return;
        };
        match &event {
            RuntimeEvent::Started { .. } => {
                x.running = true;
                x.running_since_ms = now;
                self.runs_changed(i, replica, true);
            }
            RuntimeEvent::Exited { .. } => {
                instances.remove(replica);
                // The old instance a start-first update kept (a rollback swapped back to it,
                // or the new one crashed) is now the replica's only one here.
                let host = self.host_mut(i);
                let kept = host.outgoing.remove(replica);
                let still_runs = kept.as_ref().is_some_and(|x| x.running);
                if let Some(old) = kept {
                    host.instances.insert(replica.clone(), old);
                }
                if !still_runs {
                    self.runs_changed(i, replica, false);
                }
            }
            _ => {}
        }
        self.with_core(i, |core, now| core.handle_runtime(now, event));
    }

    /// Schedules the exit of an instance that started at `started_at_ms`, if its random
    /// lifetime at the scenario's crash rate ends within the run.
    fn maybe_crash_later(
        &mut self,
        i: usize,
        replica: &ReplicaId,
        instance: u64,
        started_at_ms: u64,
    ) {
        let rate = self.scenario().runtime.crash_rate_per_hour;
        if rate <= 0.0 {
            return;
        }
        let life_ms = self.rng().lifetime_ms(rate);
        if started_at_ms + life_ms < self.scenario().duration_ms {
            let crash = RuntimeEvent::Exited {
                replica: replica.clone(),
                instance,
                code: Some(1),
                log_tail: vec!["simulated crash".into()],
            };
            self.schedule_host(started_at_ms + life_ms, i, HostEvent::Runtime(crash));
        }
    }
}

/// Node `i`'s simulated runtime, disk and network side, as its core's [`Effects`].
pub(crate) struct Runtime<'f, F> {
    fleet: &'f mut F,
    i: usize,
}

impl<F: Fleet> Effects for Runtime<'_, F> {
    fn start(&mut self, replica: ReplicaId, instance: u64, revision: u64, spec: Box<WorkloadSpec>) {
        let (fleet, i) = (&mut *self.fleet, self.i);
        fleet.check_start(i, &replica, &spec);
        fleet.counters().starts += 1;
        if fleet.checker().started(&replica, i) {
            fleet.counters().moved += 1;
        }
        let id = &fleet.host(i).id;
        let text = format!("{id} starts {}/{}", replica.workload, replica.index);
        fleet.note(text);
        let probed = spec.health.is_some();
        let x = Instance {
            instance,
            revision,
            running: false,
            running_since_ms: 0,
            spec,
        };
        let fails = spec_fails(&x.spec);
        if let Some(old) = fleet.host_mut(i).instances.insert(replica.clone(), x) {
            // A start-first update: the old instance runs on beside the new one.
            fleet.host_mut(i).outgoing.insert(replica.clone(), old);
        }
        let (lo, hi) = fleet.scenario().runtime.start_delay_ms;
        let at = fleet.now() + fleet.rng().range(lo, hi);
        let started = RuntimeEvent::Started {
            replica: replica.clone(),
            instance,
        };
        fleet.schedule_host(at, i, HostEvent::Runtime(started));
        if fails {
            // A revision that does not work: it exits soon after it starts.
            let exited = RuntimeEvent::Exited {
                replica: replica.clone(),
                instance,
                code: Some(1),
                log_tail: vec!["simulated bad revision".into()],
            };
            fleet.schedule_host(at + 200, i, HostEvent::Runtime(exited));
        } else if probed {
            let ok = RuntimeEvent::Health {
                replica: replica.clone(),
                instance,
                ok: true,
                detail: String::new(),
            };
            fleet.schedule_host(at + 50, i, HostEvent::Runtime(ok));
        }
        fleet.maybe_crash_later(i, &replica, instance, at);
    }

    fn stop(&mut self, replica: ReplicaId, instance: u64, reason: StopReason) {
        let (fleet, i) = (&mut *self.fleet, self.i);
        let id = &fleet.host(i).id;
        let text = format!(
            "{id} stops {}/{} ({reason})",
            replica.workload, replica.index
        );
        fleet.note(text);
        let exited = RuntimeEvent::Exited {
            replica,
            instance,
            code: None,
            log_tail: Vec::new(),
        };
        let at = fleet.now() + 50;
        fleet.schedule_host(at, i, HostEvent::Runtime(exited));
    }

    fn publish(&mut self, status: NodeStatus) {
        self.fleet.publish(self.i, status);
    }

    fn persist_assignment(&mut self, assignment: Vec<(ReplicaId, u64)>) {
        self.fleet.host_mut(self.i).assignment = assignment;
    }

    fn notify(&mut self, event: CoreEvent) {
        let host = self.fleet.host_mut(self.i);
        match event {
            CoreEvent::MinoritySide { .. } => {
                host.minority_baseline = Some(host.replicas_on_disk());
            }
            CoreEvent::MajorityRegained { .. } => host.minority_baseline = None,
            _ => {}
        }
        let text = format!("{}: {event:?}", host.id);
        self.fleet.note(text);
    }

    fn campaign(&mut self, lease: WorkloadName, want: LeaseWant) {
        self.fleet.campaign(self.i, lease, want);
    }

    fn withdraw(&mut self, lease: WorkloadName) {
        self.fleet.withdraw(self.i, lease);
    }

    fn roll_back(&mut self, workload: WorkloadName, revision: u64, reason: String) {
        self.fleet.roll_back(self.i, workload, revision, reason);
    }

    fn scale(&mut self, workload: WorkloadName, from: u32, to: u32, why: String) {
        let text = format!(
            "{} scales {workload} {from} -> {to}: {why}",
            self.fleet.host(self.i).id
        );
        self.fleet.note(text);
        self.fleet.scale(self.i, workload, from, to);
    }
}

/// A scenario marks a revision that cannot run with the env variable `SIM_FAILS`: its
/// instances exit 200 ms after they start, so the rollout's health gate fails.
fn spec_fails(spec: &WorkloadSpec) -> bool {
    spec.env.contains_key("SIM_FAILS")
}

/// The id and labels of the `i`th node of a scenario's fleet (joiners continue the count).
pub(crate) fn node_identity(scenario: &Scenario, i: usize) -> (NodeId, BTreeMap<String, String>) {
    let width = scenario.fleet.nodes.max(i + 1).to_string().len().max(2);
    let id = NodeId::new(format!("node-{:0width$}", i + 1)).unwrap_or_else(|_| unreachable_id());
    let mut labels = BTreeMap::new();
    if !scenario.fleet.sites.is_empty() {
        let site = &scenario.fleet.sites[i % scenario.fleet.sites.len()];
        labels.insert("site".to_string(), site.clone());
    }
    for (selected, extra) in &scenario.fleet.labels {
        if selected.iter().any(|s| s == id.as_str()) {
            labels.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    (id, labels)
}

fn unreachable_id() -> NodeId {
    // Generated ids are always valid; this keeps the code free of a panic path anyway.
    NodeId::new("node-x").unwrap_or_else(|_| unreachable_id())
}
