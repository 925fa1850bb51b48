//! The core's inputs from the runtime and its outputs: the actions, and [`Effects`], the one
//! shape every shell that carries them out implements.

use serde::Serialize;
use starling_protocol::WorkloadName;
use starling_protocol::placement::ReplicaId;
use starling_protocol::spec::WorkloadSpec;
use starling_protocol::status::NodeStatus;

use super::LeaseWant;

/// What carries out the core's decisions: one method per kind of [`Action`], like quinn's
/// `Runtime` or foca's. The agent implements it over real processes, its disk and gossip; the
/// simulator over its simulated runtime and network. Both go through [`Action::execute`], so a
/// new kind of action is a new method that neither can leave unhandled.
///
/// Call it with each action from `NodeCore::poll_action`, in the order they come: the core
/// decided them in that order (a stop after the start it follows, a publish after the claim it
/// carries). A method starts or records the work and returns; what comes of a start or a stop
/// returns to the core as [`RuntimeEvent`]s.
pub trait Effects {
    /// Start `instance` of `replica`, running `spec` at `revision`.
    fn start(&mut self, replica: ReplicaId, instance: u64, revision: u64, spec: Box<WorkloadSpec>);
    /// Stop `instance` of `replica`; `reason` says how urgently (a lost lease cannot wait out a
    /// long grace) and what to tell the operator.
    fn stop(&mut self, replica: ReplicaId, instance: u64, reason: StopReason);
    /// Publish this node's status to the fleet.
    fn publish(&mut self, status: NodeStatus);
    /// Store the assignment on disk before anything relies on it surviving a reboot.
    fn persist_assignment(&mut self, assignment: Vec<(ReplicaId, u64)>);
    /// Tell the operator (logs, events); the minority and majority events also move what the
    /// shell keeps next to the core.
    fn notify(&mut self, event: CoreEvent);
    /// Campaign for `lease` (or change the candidacy's settings).
    fn campaign(&mut self, lease: WorkloadName, want: LeaseWant);
    /// Stop campaigning for `lease`; give it up if held.
    fn withdraw(&mut self, lease: WorkloadName);
    /// Write the rollback of `workload`'s revision `revision` into the desired state (an
    /// ordinary write, [`Revision::rollback`](starling_protocol::desired::Revision::rollback)
    /// with `reason`), if that revision is still the current one: detectors on several nodes
    /// may ask at once, and the desired state keeps one of their writes.
    fn roll_back(&mut self, workload: WorkloadName, revision: u64, reason: String);
    /// Scale `workload` from `from` replicas to `to` (the autoscaler of the node that holds
    /// its lease decided it, for `why`), if it still runs `from`: an operator's scale since
    /// wins.
    fn scale(&mut self, workload: WorkloadName, from: u32, to: u32, why: String);
}

impl Action {
    /// Hands the action to the method of `effects` for its kind.
    pub fn execute(self, effects: &mut (impl Effects + ?Sized)) {
        match self {
            Action::Start {
                replica,
                instance,
                revision,
                spec,
            } => effects.start(replica, instance, revision, spec),
            Action::Stop {
                replica,
                instance,
                reason,
            } => effects.stop(replica, instance, reason),
            Action::Publish(status) => effects.publish(status),
            Action::PersistAssignment(assignment) => effects.persist_assignment(assignment),
            Action::Event(event) => effects.notify(event),
            Action::Campaign { lease, want } => effects.campaign(lease, want),
            Action::Withdraw { lease } => effects.withdraw(lease),
            Action::RollBack {
                workload,
                revision,
                reason,
            } => effects.roll_back(workload, revision, reason),
            Action::Scale {
                workload,
                from,
                to,
                why,
            } => effects.scale(workload, from, to, why),
        }
    }
}

/// What a runtime observed about a replica instance. `instance` is the number the core gave
/// in [`Action::Start`]; events about an instance the core no longer tracks are ignored.
/// Serializable so a simulator can hash what it feeds the core.
#[allow(missing_docs)] // a field named for what it holds has no doc to add
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum RuntimeEvent {
    /// The instance is running.
    Started { replica: ReplicaId, instance: u64 },
    /// The instance could not be started (e.g. `command not found: foo`, `port 8080 in use`).
    StartFailed {
        replica: ReplicaId,
        instance: u64,
        /// Why, in plain English.
        reason: String,
    },
    /// The instance exited (or was found gone).
    Exited {
        replica: ReplicaId,
        instance: u64,
        /// Exit code; `None` when killed by a signal or when the code is unknown (adopted).
        code: Option<i32>,
        /// The last lines of its log, for a `CrashLoop` report.
        log_tail: Vec<String>,
    },
    /// One health probe's result.
    Health {
        replica: ReplicaId,
        instance: u64,
        /// Passed.
        ok: bool,
        /// What the probe saw (`HTTP 503`, `connection refused`, `exit 1`).
        detail: String,
    },
    /// An instance left running by a previous agent process was found and taken over.
    Adopted {
        replica: ReplicaId,
        /// Its instance number from before.
        instance: u64,
        revision: u64,
    },
}

/// What the core asks the shell to do. Drain with `NodeCore::poll_action` and carry out with
/// [`Action::execute`]. Serializable so a simulator can hash what each core decided.
#[allow(missing_docs)] // a field named for what it holds has no doc to add
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Action {
    /// Start an instance of a replica with this spec.
    Start {
        replica: ReplicaId,
        /// A number unique on this node; the runtime reports events with it.
        instance: u64,
        /// Revision of `spec`.
        revision: u64,
        spec: Box<WorkloadSpec>,
    },
    /// Stop an instance.
    Stop {
        replica: ReplicaId,
        instance: u64,
        /// Why.
        reason: StopReason,
    },
    /// Publish this node's status (claims, replicas, health) to the fleet.
    Publish(NodeStatus),
    /// Persist the set of replicas this node runs, so a reboot restores them with no peer.
    PersistAssignment(Vec<(ReplicaId, u64)>),
    /// Something an operator should see in the logs and events.
    Event(CoreEvent),
    /// Campaign for a singleton's lease (or change its settings).
    Campaign {
        /// The lease (the workload's name).
        lease: WorkloadName,
        /// How.
        want: LeaseWant,
    },
    /// Stop campaigning; give the lease up if held.
    Withdraw { lease: WorkloadName },
    /// A replica failed the health gate of `revision`'s rollout: roll the workload back.
    RollBack {
        workload: WorkloadName,
        /// The revision that failed (nothing to do once it is no longer current).
        revision: u64,
        /// Why, for the operator (`replica web/2 not healthy within 2m`).
        reason: String,
    },
    /// The autoscaler decided a new replica count.
    Scale {
        workload: WorkloadName,
        /// The count it decided from.
        from: u32,
        /// The count to write.
        to: u32,
        /// Why (`cpu 140% of request > target 70% over 3 replicas for 10 s: 3 -> 6`).
        why: String,
    },
}

/// Why the core stops an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StopReason {
    /// The workload was deleted or scaled below this replica.
    NotDesired,
    /// Another node runs this replica, healthy, and placement prefers it.
    HandedOver,
    /// Failed its health check `failure_threshold` times in a row; it will be restarted.
    Unhealthy,
    /// A new revision replaces it.
    NewRevision,
    /// This node lost the singleton's lease (self-fencing): stop without delay.
    LeaseLost,
}

/// Notable things, for logs and `describe`.
#[allow(missing_docs)] // a field named for what it holds has no doc to add
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum CoreEvent {
    /// A replica keeps failing.
    CrashLoop {
        replica: ReplicaId,
        /// Its last exit code.
        exit_code: Option<i32>,
        /// Its last log lines.
        log_tail: Vec<String>,
        /// Whether restarts continue (policy always) or stopped (on-failure max reached).
        gave_up: bool,
    },
    /// This side of a partition sees no majority and will not replace others' replicas.
    MinoritySide {
        /// Members visible.
        visible: usize,
        /// Members known.
        known: usize,
    },
    /// The node heard the fleet after a restart (or stopped waiting) and acts normally now.
    Rejoined {
        /// Peers whose status it has heard.
        heard: usize,
        /// It stopped waiting at the deadline, before hearing every member it sees.
        timed_out: bool,
    },
    /// A replica on this node failed the health gate of its workload's rollout.
    RolloutFailed {
        replica: ReplicaId,
        /// The revision that failed.
        revision: u64,
        /// Why.
        reason: String,
        /// Whether this node asked for a rollback (`auto_rollback`, and the revision is not
        /// itself a rollback: a rollback that fails stops there rather than flip-flop).
        rolling_back: bool,
    },
    /// This side sees a majority again.
    MajorityRegained {
        /// Members visible.
        visible: usize,
        /// Members known.
        known: usize,
    },
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopReason::NotDesired => "no longer desired",
            StopReason::HandedOver => "handed over to its planned node",
            StopReason::Unhealthy => "failed its health check",
            StopReason::NewRevision => "replaced by a new revision",
            StopReason::LeaseLost => "lost its lease",
        })
    }
}
