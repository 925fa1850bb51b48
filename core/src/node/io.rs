//! The core's inputs from the runtime and its outputs (actions).

use starling_protocol::placement::ReplicaId;
use starling_protocol::spec::WorkloadSpec;
use starling_protocol::status::NodeStatus;

/// What a runtime observed about a replica instance. `instance` is the number the core gave
/// in [`Action::Start`]; events about an instance the core no longer tracks are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// The instance is running.
    Started {
        /// The replica.
        replica: ReplicaId,
        /// The instance.
        instance: u64,
    },
    /// The instance could not be started (e.g. `command not found: foo`, `port 8080 in use`).
    StartFailed {
        /// The replica.
        replica: ReplicaId,
        /// The instance.
        instance: u64,
        /// Why, in plain English.
        reason: String,
    },
    /// The instance exited (or was found gone).
    Exited {
        /// The replica.
        replica: ReplicaId,
        /// The instance.
        instance: u64,
        /// Exit code; `None` when killed by a signal or when the code is unknown (adopted).
        code: Option<i32>,
        /// The last lines of its log, for a `CrashLoop` report.
        log_tail: Vec<String>,
    },
    /// One health probe's result.
    Health {
        /// The replica.
        replica: ReplicaId,
        /// The instance.
        instance: u64,
        /// Passed.
        ok: bool,
        /// What the probe saw (`HTTP 503`, `connection refused`, `exit 1`).
        detail: String,
    },
    /// An instance left running by a previous agent process was found and taken over.
    Adopted {
        /// The replica.
        replica: ReplicaId,
        /// Its instance number from before.
        instance: u64,
        /// Its revision.
        revision: u64,
    },
}

/// What the core asks the shell to do. Drain with `NodeCore::poll_action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start an instance of a replica with this spec.
    Start {
        /// The replica.
        replica: ReplicaId,
        /// A number unique on this node; the runtime reports events with it.
        instance: u64,
        /// Revision of `spec`.
        revision: u64,
        /// The spec.
        spec: Box<WorkloadSpec>,
    },
    /// Stop an instance.
    Stop {
        /// The replica.
        replica: ReplicaId,
        /// The instance.
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
        lease: starling_protocol::WorkloadName,
        /// How.
        want: super::LeaseWant,
    },
    /// Stop campaigning; give the lease up if held.
    Withdraw {
        /// The lease.
        lease: starling_protocol::WorkloadName,
    },
}

/// Why the core stops an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreEvent {
    /// A replica keeps failing.
    CrashLoop {
        /// The replica.
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
