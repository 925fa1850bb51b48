//! Runtimes: how a node actually runs a replica.
//!
//! A runtime starts and stops replicas on request and reports what happens to them as
//! [`RuntimeEvent`]s on the channel it was built with; the core turns those into decisions.
//! The process runtime (plain child processes) is the embedded default; container runtimes
//! (Docker, Podman) implement the same trait in a later issue.

pub mod cgroup;
pub mod process;

use std::future::Future;
use std::time::Duration;

use starling_protocol::NodeId;
use starling_protocol::placement::ReplicaId;
use starling_protocol::spec::WorkloadSpec;

pub use crate::core::RuntimeEvent;

/// What the core asked a runtime to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    /// The replica.
    pub replica: ReplicaId,
    /// The core's instance number for this start; every event about it carries it back.
    pub instance: u64,
    /// Revision of the spec.
    pub revision: u64,
    /// The spec to run.
    pub spec: WorkloadSpec,
    /// The node running it (for labels and `STARLING_NODE`).
    pub node: NodeId,
}

/// Errors a runtime reports synchronously (asynchronous outcomes are events).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The replica is not known to this runtime.
    #[error("replica {0} is not running here")]
    NotRunning(String),
    /// An operating-system error, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What the runtime was doing.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A way of running replicas. Implementations report every outcome as a [`RuntimeEvent`]:
/// `start` returning `Ok` means the request was accepted, not that the replica runs.
pub trait Runtime: Send + Sync + 'static {
    /// Starts a replica. Reports `Started` or `StartFailed`, later `Exited`.
    fn start(&self, request: StartRequest) -> impl Future<Output = ()> + Send;

    /// Stops an instance: SIGTERM (or the runtime's equivalent), then a hard kill after
    /// `grace`. Reports `Exited` when it is gone. Stopping an unknown instance is a no-op.
    fn stop(
        &self,
        replica: &ReplicaId,
        instance: u64,
        grace: Duration,
    ) -> impl Future<Output = ()> + Send;

    /// Finds replicas still running from before an agent restart and takes them over. Reports
    /// one `Adopted` per replica; returns how many.
    fn adopt(&self) -> impl Future<Output = usize> + Send;

    /// The last `lines` lines of a replica's log (stdout and stderr interleaved).
    fn log_tail(
        &self,
        replica: &ReplicaId,
        lines: usize,
    ) -> impl Future<Output = Vec<String>> + Send;
}
