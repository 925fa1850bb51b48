//! What a node publishes about itself: the replicas it claims and runs, their health, and the
//! resources they hold. Gossiped to every peer, so it must stay small (no logs, no specs).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::placement::{Capacity, ReplicaId};

/// One node's published status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Every replica the node claims, runs or is stopping, by id.
    pub replicas: BTreeMap<ReplicaId, ReplicaStatus>,
    /// Resources reserved by those replicas.
    pub reserved: Capacity,
}

/// The status of one replica on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The revision it runs (or will run).
    pub revision: u64,
    /// Where it is in its life.
    pub state: ReplicaState,
    /// Whether it passes its health check (true when it has none and is running).
    pub healthy: bool,
    /// Restarts since it was first started on this node.
    pub restarts: u32,
    /// Exit code of the last exit, if any (`None` also when killed by a signal).
    pub last_exit_code: Option<i32>,
    /// Why it is not running as it should, in plain English (`command not found: foo`).
    pub reason: Option<String>,
    /// Healthy without a break for its spec's `update.min_healthy`: counts as updated.
    pub settled: bool,
    /// An instance of an older revision still running beside this one (start-first update).
    pub outgoing: Option<Outgoing>,
}

/// The older instance of a replica that runs beside its new one until the new one settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    /// The revision it runs.
    pub revision: u64,
    /// Whether it passes its health check (it still serves).
    pub healthy: bool,
}

/// Where a replica is in its life on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ReplicaState {
    /// Claimed, waiting out the settle interval before starting.
    Claimed,
    /// Start requested from the runtime.
    Starting,
    /// Running.
    Running,
    /// Exited; waiting for the back-off delay before the next start.
    BackingOff,
    /// Keeps failing: restarts slowed to the maximum back-off, or given up (on-failure).
    CrashLoop,
    /// Exited and will not be restarted (policy never, or on-failure after exit 0).
    Exited,
    /// Being stopped.
    Stopping,
}

impl ReplicaStatus {
    /// Counts as an available instance (for handover and updates): running and healthy.
    pub fn is_available(&self) -> bool {
        self.state == ReplicaState::Running && self.healthy
    }

    /// Some instance of the replica serves: the current one, or the old one beside it.
    pub fn is_serving(&self) -> bool {
        self.is_available() || self.outgoing.is_some_and(|o| o.healthy)
    }

    /// Occupies or is about to occupy the node (claimed, starting, running, restarting).
    pub fn is_active(&self) -> bool {
        !matches!(self.state, ReplicaState::Exited | ReplicaState::Stopping)
    }
}

impl std::fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            ReplicaState::Claimed => "Claimed",
            ReplicaState::Starting => "Starting",
            ReplicaState::Running => "Running",
            ReplicaState::BackingOff => "BackingOff",
            ReplicaState::CrashLoop => "CrashLoop",
            ReplicaState::Exited => "Exited",
            ReplicaState::Stopping => "Stopping",
        };
        f.write_str(text)
    }
}
