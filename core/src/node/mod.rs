//! The node core: the deterministic brain every node runs.
//!
//! A sans-IO state machine in the style of quinn-proto. Feed it with the `handle_*` methods
//! (each takes `now_ms`), drain what it decided with [`NodeCore::poll_action`] and carry each
//! action out with [`Action::execute`] on the shell's [`Effects`], and call
//! [`NodeCore::handle_timeout`] at [`NodeCore::poll_timeout`]. A spurious timeout is harmless:
//! every deadline is re-derived from state. It never reads a clock, opens a socket, spawns a
//! thread or draws a random number, so the simulator can drive many of them from one seed.
//!
//! Call order: build with [`NodeCore::new`] (restored state from disk), report instances found
//! still running with [`RuntimeEvent::Adopted`], then feed view, peer status, desired state and
//! runtime events as they come.
//!
//! The rules it implements (see docs/ARCHITECTURE.md, "node core"):
//! - Run what `placement::plan` assigns to this node; claim first, start only after a settle
//!   interval with no higher-ranked competing claim.
//! - Replicas move only off `Down` nodes; a replica running healthy elsewhere moves here only
//!   after placement has wanted it here for `move_hold_ms`, and the old copy stops only once the
//!   new one is healthy (make before break).
//! - A side of a partition that does not see a majority of the known members replaces nothing
//!   and keeps running what it ran (persisted), so a reboot with no peers restores it.
//! - Restart policies with exponential back-off; `CrashLoop` with exit code and log tail.

mod io;
mod plan;
mod reconcile;
mod replica;
mod scaling;
mod singleton;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use starling_protocol::NodeId;
use starling_protocol::desired::DesiredState;
use starling_protocol::placement::{Assignment, Capacity, Departure, FleetView, ReplicaId};
use starling_protocol::quantity::{Bytes, Millicores};
use starling_protocol::service::EndpointState;
use starling_protocol::spec::WorkloadSpec;
use starling_protocol::status::NodeStatus;

pub use io::{Action, CoreEvent, Effects, RuntimeEvent, StopReason};
pub use plan::{DirectPlanner, Plan, Planner, census, compute as compute_plan};
use replica::{AfterExit, LocalReplica, Phase};
pub use singleton::LeaseWant;

/// Settings of the core. Defaults suit a LAN; see each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreConfig {
    /// This node.
    pub node: NodeId,
    /// How long a claim is published before its replica starts, so that a competing
    /// higher-ranked claim can be seen. Default 1 s (several gossip rounds on a LAN).
    pub settle_ms: u64,
    /// How long placement must keep wanting a replica here before it moves from a node that
    /// runs it healthy. Damps flapping links. Default 10 s.
    pub move_hold_ms: u64,
    /// How long a running copy waits for its handover before it stops anyway (so two full
    /// nodes swapping replicas cannot wait on each other forever). Default 2 min.
    pub handover_timeout_ms: u64,
    /// First instance number, above every instance of the node's earlier lives: the agent
    /// passes its generation (start time in ms, growing across restarts even when the clock
    /// steps back) times 1,000; the simulator a value from its seed.
    pub instance_base: u64,
    /// The autoscaler's windows (see `crate::scale`).
    pub scale: crate::scale::ScaleConfig,
}

impl CoreConfig {
    /// LAN defaults for `node`.
    pub fn new(node: NodeId, instance_base: u64) -> Self {
        CoreConfig {
            node,
            settle_ms: 1_000,
            move_hold_ms: 10_000,
            handover_timeout_ms: 120_000,
            instance_base,
            scale: crate::scale::ScaleConfig::default(),
        }
    }
}

/// What a node restores from its own disk at start-up.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// The desired state as last stored.
    pub desired: DesiredState,
    /// The replicas (and revisions) the node ran before, from `Action::PersistAssignment`.
    pub last_assignment: Vec<(ReplicaId, u64)>,
    /// The fleet as last known (members and their resources); liveness as the shell sees it now.
    pub view: FleetView,
    /// A restart in a fleet: until this time (or until every member it sees has reported its
    /// status, whichever comes first) the core keeps what it adopted and starts, stops and
    /// claims nothing, so it learns where its replicas went before it acts on a stale view.
    /// `None` for a node with no peers to hear from.
    pub rejoin_until_ms: Option<u64>,
}

/// The core state machine. See the module docs.
#[derive(Debug)]
pub struct NodeCore {
    config: CoreConfig,
    /// Shared: a host running many cores hands the same view to all that see the same fleet.
    view: Arc<FleetView>,
    /// Shared like the view; statuses are shared between the cores of one host, too.
    peers: BTreeMap<NodeId, Arc<NodeStatus>>,
    desired: Arc<DesiredState>,
    planner: Arc<dyn Planner>,
    replicas: BTreeMap<ReplicaId, LocalReplica>,
    last_assignment: BTreeMap<ReplicaId, u64>,
    /// Since when placement has wanted each not-yet-claimed replica here (hysteresis).
    wanted_since: BTreeMap<ReplicaId, u64>,
    /// Since when each running replica has been planned on another node (handover timeout).
    away_since: BTreeMap<ReplicaId, u64>,
    plan: Option<Arc<Plan>>,
    majority: bool,
    /// The view changed since the majority was last judged.
    view_changed: bool,
    next_instance: u64,
    actions: VecDeque<Action>,
    published: Option<NodeStatus>,
    persisted: Vec<(ReplicaId, u64)>,
    deadline_ms: Option<u64>,
    /// Leases this node holds (from the elector), with their fencing tokens.
    held: BTreeMap<starling_protocol::WorkloadName, u64>,
    /// Leases the core asked the elector to campaign for.
    campaigning: BTreeMap<starling_protocol::WorkloadName, LeaseWant>,
    /// Since when placement has put a held lease's replica elsewhere.
    lease_away_since: BTreeMap<starling_protocol::WorkloadName, u64>,
    /// Rejoining after a restart until then (see [`Restored::rejoin_until_ms`]).
    rejoin_until_ms: Option<u64>,
    /// The shell holds the rejoin wait open (see [`NodeCore::handle_rejoin_hold`]).
    rejoin_held: bool,
    /// Rejoining also waits until the shell says this node's desired state caught up with a
    /// peer's ([`NodeCore::handle_desired_synced`]): acting on the copy it stored would start
    /// workloads deleted while it was away.
    rejoin_synced: bool,
    /// Workloads with a replica here held back by the rollout gate: a peer's status about
    /// any of their replicas may open it.
    rollout_waiting: std::collections::BTreeSet<starling_protocol::WorkloadName>,
    /// Per workload, the revision whose canaries this node saw all settled, and since when
    /// (`update.canary.auto_promote_after` counts from then).
    canaries_settled: BTreeMap<starling_protocol::WorkloadName, (u64, u64)>,
    /// Rollbacks this node asked for (workload, failed revision): asked once each.
    rollbacks_asked: std::collections::BTreeSet<(starling_protocol::WorkloadName, u64)>,
    /// The scalers of the autoscaled workloads whose lease this node holds.
    scalers: BTreeMap<starling_protocol::WorkloadName, crate::scale::Scaler>,
}

impl NodeCore {
    /// A core for `config.node`, restored from disk.
    pub fn new(config: CoreConfig, restored: Restored) -> Self {
        Self::with_planner(config, restored, Arc::new(DirectPlanner))
    }

    /// A core restored from disk whose plans come from `planner`.
    pub fn with_planner(config: CoreConfig, restored: Restored, planner: Arc<dyn Planner>) -> Self {
        let mut core = Self::shared(
            config,
            restored.last_assignment,
            Arc::new(restored.view),
            Arc::new(restored.desired),
            planner,
        );
        core.rejoin_until_ms = restored.rejoin_until_ms;
        core
    }

    /// Makes a core built with [`NodeCore::shared`] rejoin first (see
    /// [`Restored::rejoin_until_ms`]).
    pub fn rejoin_until(&mut self, until_ms: u64) {
        self.rejoin_until_ms = Some(until_ms);
    }

    /// Holds the rejoin wait open while the shell checks something this node must know before
    /// it acts: that no other live process runs under its id (a cloned data dir). While held,
    /// the wait ends neither by hearing the fleet nor at its deadline; the shell releases the
    /// hold within its check's own bound. Does nothing once the wait is over.
    pub fn handle_rejoin_hold(&mut self, now_ms: u64, held: bool) {
        if self.rejoin_until_ms.is_none() || self.rejoin_held == held {
            return;
        }
        self.rejoin_held = held;
        self.reconcile(now_ms);
    }

    /// The desired state caught up with a peer's (equal roots, or a complete pull), or this
    /// node is alone: the rejoin wait may end once the fleet is heard too.
    pub fn handle_desired_synced(&mut self, now_ms: u64) {
        if self.rejoin_until_ms.is_none() || self.rejoin_synced {
            return;
        }
        self.rejoin_synced = true;
        self.reconcile(now_ms);
    }

    /// Whether the core still waits to hear the fleet after a restart.
    pub fn is_rejoining(&self) -> bool {
        self.rejoin_until_ms.is_some()
    }

    /// Whether this node announced that it is about to stop (restart or drain).
    pub fn departing(&self) -> bool {
        self.view
            .nodes
            .get(&self.config.node)
            .is_some_and(|n| n.departure != Departure::Staying)
    }

    /// A core restored from shared state, with plans from `planner`: for hosts that run many
    /// cores (the simulator) and share one copy of what they all see.
    pub fn shared(
        config: CoreConfig,
        last_assignment: Vec<(ReplicaId, u64)>,
        view: Arc<FleetView>,
        desired: Arc<DesiredState>,
        planner: Arc<dyn Planner>,
    ) -> Self {
        let persisted = last_assignment.clone();
        NodeCore {
            next_instance: config.instance_base.max(1),
            config,
            view,
            peers: BTreeMap::new(),
            desired,
            planner,
            replicas: BTreeMap::new(),
            last_assignment: last_assignment.into_iter().collect(),
            wanted_since: BTreeMap::new(),
            away_since: BTreeMap::new(),
            plan: None,
            majority: true,
            view_changed: true,
            actions: VecDeque::new(),
            published: None,
            persisted,
            deadline_ms: None,
            held: BTreeMap::new(),
            campaigning: BTreeMap::new(),
            lease_away_since: BTreeMap::new(),
            rejoin_until_ms: None,
            rejoin_held: false,
            rejoin_synced: false,
            rollout_waiting: Default::default(),
            canaries_settled: BTreeMap::new(),
            rollbacks_asked: Default::default(),
            scalers: BTreeMap::new(),
        }
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.config.node
    }

    /// The desired state the core works from.
    pub fn desired(&self) -> &DesiredState {
        &self.desired
    }

    /// Replicas with a live instance in the runtime, and that instance (a replica moving
    /// start-first has two: its old one first).
    pub fn instances(&self) -> Vec<(ReplicaId, u64)> {
        self.endpoint_states()
            .into_iter()
            .map(|(id, instance, _)| (id, instance))
            .collect()
    }

    /// Every live instance with whether it may take new connections (what this node publishes
    /// as its service endpoints): ready when running and healthy; draining once its stop was
    /// asked (the old instance of a start-first move included), so proxies stop sending it new
    /// connections while its open ones finish; unhealthy otherwise (starting, or failing its
    /// check).
    pub fn endpoint_states(&self) -> Vec<(ReplicaId, u64, EndpointState)> {
        let mut live = Vec::new();
        for (id, r) in &self.replicas {
            if let Some(o) = &r.outgoing {
                let state = if o.stopping {
                    EndpointState::Draining
                } else if o.healthy {
                    EndpointState::Ready
                } else {
                    EndpointState::Unhealthy
                };
                live.push((id.clone(), o.instance, state));
            }
            if r.has_instance() {
                let state = match r.phase {
                    Phase::Stopping { .. } => EndpointState::Draining,
                    Phase::Running if r.healthy => EndpointState::Ready,
                    _ => EndpointState::Unhealthy,
                };
                live.push((id.clone(), r.instance, state));
            }
        }
        live
    }

    /// The spec a live instance runs: the old revision's for the outgoing instance of a
    /// start-first move, else the replica's current one.
    pub fn instance_spec(&self, replica: &ReplicaId, instance: u64) -> Option<&WorkloadSpec> {
        let r = self.replicas.get(replica)?;
        match &r.outgoing {
            Some(o) if o.instance == instance => Some(&o.spec),
            _ => Some(&r.spec),
        }
    }

    /// The latest status each peer published.
    pub fn peer_statuses(&self) -> &BTreeMap<NodeId, Arc<NodeStatus>> {
        &self.peers
    }

    /// The current plan (as of the last reconcile).
    pub fn plan(&self) -> Option<&Assignment> {
        self.plan.as_deref().map(|p| &p.assignment)
    }

    /// The fleet view the core works from.
    pub fn view(&self) -> &FleetView {
        &self.view
    }

    /// Whether this node's side sees a majority of the known members.
    pub fn has_majority(&self) -> bool {
        self.majority
    }

    /// The status this node publishes (also what `starling status` shows for it).
    pub fn status(&self) -> NodeStatus {
        let mut reserved = Capacity::default();
        let mut replicas = BTreeMap::new();
        for (id, r) in &self.replicas {
            if r.is_active() {
                reserved.cpu = Millicores(reserved.cpu.0 + r.spec.resources.cpu_request.0);
                reserved.memory = Bytes(reserved.memory.0 + r.spec.resources.memory_request.0);
            }
            replicas.insert(id.clone(), r.status());
        }
        NodeStatus { replicas, reserved }
    }

    /// The membership and resources of the fleet changed. `view` must include this node.
    pub fn handle_view(&mut self, now_ms: u64, view: FleetView) {
        if view != *self.view {
            self.set_view(Arc::new(view));
        }
        self.reconcile(now_ms);
    }

    /// [`NodeCore::handle_view`] for a host that shares views between cores: a view that is
    /// not the same allocation counts as changed, without comparing 10,000 members.
    pub fn handle_shared_view(&mut self, now_ms: u64, view: Arc<FleetView>) {
        if !Arc::ptr_eq(&view, &self.view) {
            self.set_view(view);
        }
        self.reconcile(now_ms);
    }

    fn set_view(&mut self, view: Arc<FleetView>) {
        // Statuses of members that left go with them; a view of the same size or larger
        // removed nobody worth the walk (a departed member's status is harmless until then:
        // every use asks the view whether its node is live).
        let shrank = view.nodes.len() < self.view.nodes.len();
        self.view = view;
        self.plan = None;
        self.view_changed = true;
        if shrank {
            let view = &self.view;
            self.peers.retain(|id, _| view.nodes.contains_key(id));
        }
    }

    /// A peer published its status.
    pub fn handle_peer_status(&mut self, now_ms: u64, node: NodeId, status: NodeStatus) {
        self.handle_shared_peer_status(now_ms, node, Arc::new(status));
    }

    /// [`NodeCore::handle_peer_status`] with a status shared between cores. A status that
    /// touches none of the replicas this node runs, claims or is planned is only stored: in a
    /// large fleet statuses change all the time, and re-planning for each would cost every
    /// node the whole fleet's churn.
    pub fn handle_shared_peer_status(
        &mut self,
        now_ms: u64,
        node: NodeId,
        status: Arc<NodeStatus>,
    ) {
        if node == self.config.node {
            return;
        }
        let old = self.peers.insert(node, status.clone());
        if self.majority
            && self.plan.is_some()
            && !self.touches_mine(&status)
            && old.as_deref().is_none_or(|s| !self.touches_mine(s))
        {
            return;
        }
        self.reconcile(now_ms);
    }

    /// Whether a peer's status names a replica this node's decisions depend on: one it
    /// tracks, one placed here, or one of a singleton (leases look at every copy).
    fn touches_mine(&self, status: &NodeStatus) -> bool {
        let mine = self
            .plan
            .as_deref()
            .map_or(&[][..], |p| p.on(&self.config.node));
        status.replicas.keys().any(|r| {
            self.replicas.contains_key(r)
                || self.rollout_waiting.contains(&r.workload)
                || mine.binary_search(r).is_ok()
                || self
                    .desired
                    .get(&r.workload)
                    .is_some_and(|rev| rev.spec.singleton)
        })
    }

    /// The desired state changed (a local write or a merge from a peer).
    pub fn handle_desired(&mut self, now_ms: u64, desired: DesiredState) {
        if desired != *self.desired {
            self.desired = Arc::new(desired);
            self.plan = None;
        }
        self.reconcile(now_ms);
    }

    /// [`NodeCore::handle_desired`] with a desired state shared between cores.
    pub fn handle_shared_desired(&mut self, now_ms: u64, desired: Arc<DesiredState>) {
        if !Arc::ptr_eq(&desired, &self.desired) && *desired != *self.desired {
            self.desired = desired;
            self.plan = None;
        } else {
            self.desired = desired;
        }
        self.reconcile(now_ms);
    }

    /// The runtime observed something. Events about instances the core no longer tracks are
    /// ignored (a late exit of a replaced instance, say).
    pub fn handle_runtime(&mut self, now_ms: u64, event: RuntimeEvent) {
        if self.on_outgoing(&event) {
            self.reconcile(now_ms);
            return;
        }
        match event {
            RuntimeEvent::Adopted {
                replica,
                instance,
                revision,
            } => self.on_adopted(now_ms, replica, instance, revision),
            RuntimeEvent::Started { replica, instance } => {
                if let Some(r) = self.current(&replica, instance) {
                    r.on_started(now_ms);
                }
            }
            RuntimeEvent::StartFailed {
                replica,
                instance,
                reason,
            } => self.on_exit(now_ms, replica, instance, None, Some(reason), Vec::new()),
            RuntimeEvent::Exited {
                replica,
                instance,
                code,
                log_tail,
            } => self.on_exit(now_ms, replica, instance, code, None, log_tail),
            RuntimeEvent::Health {
                replica,
                instance,
                ok,
                detail,
            } => {
                let restart = self
                    .current(&replica, instance)
                    .is_some_and(|r| r.on_health(now_ms, ok, detail));
                if restart {
                    self.stop(&replica, StopReason::Unhealthy, true);
                }
            }
        }
        self.reconcile(now_ms);
    }

    /// Time passed; call at (or after) [`NodeCore::poll_timeout`].
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.reconcile(now_ms);
    }

    /// The next action for the shell, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When the core next needs [`NodeCore::handle_timeout`], if it waits for time at all.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.deadline_ms
    }

    fn current(&mut self, replica: &ReplicaId, instance: u64) -> Option<&mut LocalReplica> {
        self.replicas
            .get_mut(replica)
            .filter(|r| r.instance == instance && instance != 0)
    }

    /// An event about the old instance a start-first update keeps beside the new one.
    /// Returns whether it was one.
    fn on_outgoing(&mut self, event: &RuntimeEvent) -> bool {
        let (replica, instance) = match event {
            RuntimeEvent::Started { replica, instance }
            | RuntimeEvent::StartFailed {
                replica, instance, ..
            }
            | RuntimeEvent::Exited {
                replica, instance, ..
            }
            | RuntimeEvent::Health {
                replica, instance, ..
            } => (replica, *instance),
            RuntimeEvent::Adopted { .. } => return false,
        };
        let Some(r) = self.replicas.get_mut(replica) else {
            return false;
        };
        let Some(old) = r.outgoing.as_mut().filter(|o| o.instance == instance) else {
            return false;
        };
        match event {
            RuntimeEvent::Health { ok, .. } => old.healthy = *ok,
            RuntimeEvent::Exited { .. } | RuntimeEvent::StartFailed { .. } => r.outgoing = None,
            _ => {}
        }
        true
    }

    fn on_adopted(&mut self, now_ms: u64, replica: ReplicaId, instance: u64, revision: u64) {
        self.next_instance = self.next_instance.max(instance + 1);
        if self
            .replicas
            .get(&replica)
            .is_some_and(|r| r.has_instance())
        {
            // A second live copy: stop the adopted one, keep ours.
            self.actions.push_back(Action::Stop {
                replica,
                instance,
                reason: StopReason::NotDesired,
            });
            return;
        }
        let spec = match self.desired.get(&replica.workload) {
            Some(rev) if rev.number == revision => (rev.spec.clone(), rev.inputs.clone()),
            // An older revision's pins are gone with it: none, so the rollout moves it.
            Some(rev) => match &rev.previous {
                Some(p) if p.number == revision => (p.spec.clone(), Default::default()),
                _ => (rev.spec.clone(), Default::default()),
            },
            None => {
                self.actions.push_back(Action::Stop {
                    replica,
                    instance,
                    reason: StopReason::NotDesired,
                });
                return;
            }
        };
        let (spec, inputs) = spec;
        let mut local = LocalReplica::adopted(revision, spec, instance, now_ms);
        local.inputs = inputs;
        self.replicas.insert(replica, local);
    }

    fn on_exit(
        &mut self,
        now_ms: u64,
        replica: ReplicaId,
        instance: u64,
        code: Option<i32>,
        reason: Option<String>,
        log_tail: Vec<String>,
    ) {
        let Some(r) = self.current(&replica, instance) else {
            return;
        };
        match r.on_exit(now_ms, code, reason, log_tail.last().map(String::as_str)) {
            AfterExit::Forget => {
                self.replicas.remove(&replica);
            }
            AfterExit::StartNow => self.start(&replica),
            AfterExit::Wait => {}
            AfterExit::ReportCrashLoop { gave_up } => {
                let exit_code = r.last_exit;
                self.actions.push_back(Action::Event(CoreEvent::CrashLoop {
                    replica,
                    exit_code,
                    log_tail,
                    gave_up,
                }));
            }
        }
    }

    /// Starts a new instance of a tracked replica with its current spec, once every secret
    /// and config it references is here (else it waits as a claim, with the reason).
    fn start(&mut self, replica: &ReplicaId) {
        let instance = self.next_instance;
        let pins = self
            .desired
            .get(&replica.workload)
            .filter(|rev| {
                self.replicas
                    .get(replica)
                    .is_some_and(|r| r.revision == rev.number)
            })
            .map(|rev| rev.inputs.clone())
            .unwrap_or_default();
        let Some(r) = self.replicas.get_mut(replica) else {
            return;
        };
        if let Some(missing) = self
            .desired
            .missing_input(&r.spec, &pins, &self.config.node)
        {
            // No start and no crash loop: the replica waits as a claim, and the next change of
            // the desired state (the object arriving) tries again.
            r.reason = Some(missing);
            r.phase = Phase::Claimed { since_ms: 0 };
            return;
        }
        if r.reason.as_deref().is_some_and(is_input_reason) {
            r.reason = None;
        }
        // One instance per replica at a time: a start comes only from a claim, a back-off or
        // an exit (a restart once its instance exited), never over an instance that may still
        // run.
        debug_assert!(
            matches!(
                r.phase,
                Phase::Claimed { .. }
                    | Phase::BackingOff { .. }
                    | Phase::Exited
                    | Phase::Stopping { restart: true, .. }
            ),
            "start of {replica:?} in phase {:?}",
            r.phase
        );
        // Instance numbers only grow, so a late event of an old instance is told apart.
        debug_assert!(
            instance > r.instance,
            "instance {instance} after {}",
            r.instance
        );
        self.next_instance += 1;
        if r.instance != 0 {
            r.restarts += 1;
        }
        r.instance = instance;
        r.phase = Phase::Starting;
        self.actions.push_back(Action::Start {
            replica: replica.clone(),
            instance,
            revision: r.revision,
            spec: Box::new(r.spec.clone()),
        });
    }

    /// Stops a tracked replica's instance; `restart` starts a new one after it exits.
    fn stop(&mut self, replica: &ReplicaId, reason: StopReason, restart: bool) {
        let Some(r) = self.replicas.get_mut(replica) else {
            return;
        };
        // The replica goes for good: an old instance kept beside the new one goes too.
        if !restart && let Some(old) = r.outgoing.as_mut().filter(|o| !o.stopping) {
            old.stopping = true;
            self.actions.push_back(Action::Stop {
                replica: replica.clone(),
                instance: old.instance,
                reason,
            });
        }
        if !r.has_instance() {
            if !restart {
                self.replicas.remove(replica);
            }
            return;
        }
        if matches!(r.phase, Phase::Stopping { .. }) {
            r.phase = Phase::Stopping { reason, restart };
            return;
        }
        r.phase = Phase::Stopping { reason, restart };
        self.actions.push_back(Action::Stop {
            replica: replica.clone(),
            instance: r.instance,
            reason,
        });
    }
}

#[cfg(test)]
mod tests;

/// A reason [`NodeCore::start`] left on a replica that waits for a secret or config.
fn is_input_reason(reason: &str) -> bool {
    [
        "SecretNotFound",
        "ConfigNotFound",
        "SecretNotSealed",
        "SecretKeyNotFound",
        "waiting for ",
    ]
    .iter()
    .any(|p| reason.starts_with(p))
}
