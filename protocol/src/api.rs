//! What a node's API answers carry ([`crate::wire::ApiResponse`]): rows and records as typed
//! data. The node says what it knows (a replica's status and its node's liveness as seen from
//! here); the CLI decides how that reads, as a table for people or JSON for scripts.

use serde::{Deserialize, Serialize};

use crate::desired::{RevisionId, RollbackOf, WriteRecord};
use crate::lease::LeaseName;
use crate::names::{NodeId, WorkloadName};
use crate::placement::{Capacity, Departure, Liveness, NodeView, ReplicaId, Unplaceable};
use crate::quantity::{Bytes, Millicores};
use crate::rollout::Progress;
use crate::spec::{RuntimeKind, WorkloadSpec};
use crate::status::ReplicaStatus;

/// One workload of `starling get workloads`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadRow {
    /// The workload.
    pub name: WorkloadName,
    /// Its current revision number.
    pub revision: u64,
    /// Replicas running and healthy on nodes that are not down.
    pub available: u32,
    /// Replicas placement counts (a singleton: its active instance and its standbys).
    pub replicas: u32,
    /// The runtime that runs it.
    pub runtime: RuntimeKind,
    /// The program (process runtime) or entrypoint override (containers).
    pub command: Option<String>,
    /// The container image.
    pub image: Option<String>,
}

/// One replica of `starling status` and `get replicas`, and of a description.
#[allow(missing_docs)] // a field named for what it holds has no doc to add
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRow {
    pub replica: ReplicaId,
    /// Where it is, as the answering node knows.
    pub place: ReplicaPlace,
}

/// Where a replica of a [`ReplicaRow`] is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaPlace {
    /// A node reports it: `status` is what that node last published, and `liveness` how the
    /// answering node sees that node (`None`: not a member it knows). A down node's status is
    /// history, not a running replica.
    On {
        /// The node that reports it.
        node: NodeId,
        /// That node's liveness as seen from the answering node.
        liveness: Option<Liveness>,
        /// What that node published about the replica.
        status: ReplicaStatus,
    },
    /// No node can take it, so a shortfall is never silent.
    Unplaced {
        /// The revision it would run.
        revision: u64,
        /// Why no node can take it.
        why: Unplaceable,
    },
}

/// A device found on the answering node's LAN that has no certificate of this cluster and asks
/// to join (`starling nodes --pending`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRow {
    /// The name it announces (and would join under).
    pub node: NodeId,
    /// The address its announcement came from (`ip:port` of its discovery channel).
    pub address: String,
    /// Its discovery identity (a libp2p peer id), to tell two devices of one name apart.
    pub peer: String,
    /// How long it has been seen waiting, in ms.
    pub waiting_ms: u64,
}

/// What became of one device of an admission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmitRow {
    /// The device.
    pub node: NodeId,
    /// Why it was not admitted; `None` once it took the token (it then joins by itself).
    pub error: Option<String>,
}

/// One node of `starling get nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    /// The node as the answering node sees it: liveness, arch, labels, runtimes and capacity.
    pub view: NodeView,
    /// The absence it announced (a view never encodes it, see [`NodeView::departure`]).
    pub departure: Departure,
    /// Replicas it reports.
    pub replicas: u32,
    /// Resources its replicas reserve.
    pub reserved: Capacity,
    /// CPU and memory in use on its host, when it published a measure.
    pub usage: Option<Usage>,
    /// Why its store fails, when it does. Only the answering node knows its own store, so
    /// only its own row can carry one.
    pub store_error: Option<String>,
    /// The node's life as the answering node heard it last: its agent's start time in ms,
    /// larger at every start (0: not heard yet). A rolling upgrade waits for it to grow.
    pub generation: u64,
}

/// CPU and memory in use on a host (everything on it, not only Starling's replicas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU in use.
    pub cpu: Millicores,
    /// Memory in use.
    pub memory: Bytes,
}

/// One service endpoint of `starling get endpoints`: where a running replica's port is
/// reachable.
#[allow(missing_docs)] // a field named for what it holds has no doc to add
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointRow {
    pub replica: ReplicaId,
    /// The port's name in the spec.
    pub port: String,
    /// `host:port` to reach it at.
    pub address: String,
    /// The node that runs it.
    pub node: NodeId,
    /// Whether it takes new connections.
    pub state: crate::service::EndpointState,
}

/// One lease of `starling get leases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRow {
    /// The lease.
    pub name: LeaseName,
    /// Its holder in the newest record known here (`None`: never granted).
    pub holder: Option<NodeId>,
    /// The record's epoch (0 without a record).
    pub epoch: u64,
    /// The record's fencing token (0 without a record).
    pub fencing_token: u64,
    /// Time left of the record's grant, by the answering node's clock (0: expired).
    pub expires_in_ms: u64,
    /// What the answering node does about it.
    pub here: LeaseHere,
}

/// What the answering node does about a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseHere {
    /// It holds it.
    Holder,
    /// It campaigns for it and does not hold it yet.
    Candidate {
        /// The last reason its campaign did not succeed.
        waiting_for: String,
    },
    /// It neither holds nor wants it.
    Bystander,
}

/// One workload in detail, for `starling describe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    /// The answering node's wall clock when it answered (ms since the epoch): ages are
    /// measured against it, not against the caller's clock.
    pub now_ms: u64,
    /// The current spec.
    pub spec: WorkloadSpec,
    /// The current revision number.
    pub revision: u64,
    /// The current write's id.
    pub id: Option<RevisionId>,
    /// Who asked for the current write.
    pub by: String,
    /// The number of the revision it replaced.
    pub previous_revision: Option<u64>,
    /// Writes that lost to a concurrent write: what a racing operator should know was dropped.
    pub overwritten: Vec<WriteRecord>,
    /// Every write of the workload on record here (at most `WRITES_KEPT`), newest first, the
    /// overwritten ones included: the revision history is read from it.
    pub writes: Vec<WriteRecord>,
    /// The current revision's rollout.
    pub rollout: RolloutReport,
    /// Its replicas as their nodes report them.
    pub replicas: Vec<ReplicaRow>,
    /// Recent events of the answering node about it (at most 200), oldest first; the
    /// fleet's are in `starling get events --workload`.
    pub events: Vec<NodeEvent>,
    /// The autoscaler, for a workload with `[scaling]`.
    pub autoscaler: Option<AutoscalerReport>,
}

/// Who scales an autoscaled workload and what it decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoscalerReport {
    /// The holder of the workload's lease (its scaler), as the answering node knows it.
    pub scaler: Option<NodeId>,
    /// Whether the answering node is the scaler (only it knows the decisions).
    pub answered_by_scaler: bool,
    /// The average metric per replica the scaler saw last (its unit: percent of the CPU
    /// request, or the custom metric's).
    pub average: Option<u64>,
    /// Its last decisions, oldest first: when (ms since the epoch), from, to, why.
    pub decisions: Vec<(u64, u32, u32, String)>,
}

/// A notable event an agent recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEvent {
    /// When (wall clock, ms since the epoch).
    pub at_ms: u64,
    /// What happened, in a sentence.
    pub text: String,
}

/// One lease voter of `starling voters`.
#[allow(missing_docs)] // a field named for what it holds has no doc to add
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voter {
    pub node: NodeId,
    /// Its liveness as the answering node sees it (`None`: not a member it knows).
    pub liveness: Option<Liveness>,
}

/// A workload's rollout as the answering node sees it (`starling rollout status`): its
/// current revision, what operators and failed health gates said about it, and how far the
/// replicas have moved to it by this node's status and every live peer's last one. Status
/// reports can be late, never early, so a node's progress may lag the fleet's, never lead it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutReport {
    /// The workload.
    pub name: WorkloadName,
    /// The revision the replicas move to.
    pub revision: u64,
    /// Its current write.
    pub id: Option<RevisionId>,
    /// The revision it replaced (`None`: the first one, which moves nothing).
    pub previous: Option<u64>,
    /// Replicas updated, pending, failing and serving.
    pub progress: Progress,
    /// `rollout pause`: no replica moves until `rollout resume`.
    pub paused: bool,
    /// A canary rollout's canaries and whether they were promoted.
    pub canary: Option<CanaryReport>,
    /// This revision rolls back the one it replaced, and why (`failure: None`: by hand).
    pub rollback_of: Option<RollbackOf>,
    /// `update.auto_rollback`: a failing rollout is rolled back by the fleet, not left as is.
    pub auto_rollback: bool,
}

/// The canaries of a [`RolloutReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryReport {
    /// Replicas that move before the rollout waits for a promote.
    pub count: u32,
    /// `rollout promote` was written.
    pub promoted: bool,
    /// Every canary runs the new revision, settled.
    pub settled: bool,
    /// The rollout promotes itself once the canaries were settled this long (`None`: only
    /// `rollout promote` does).
    pub auto_promote_after_ms: Option<u64>,
}

impl RolloutReport {
    /// Every replica runs the revision, settled.
    pub fn complete(&self) -> bool {
        self.progress.complete()
    }

    /// The revision is an automatic rollback: the rollout before it failed.
    pub fn automatic_rollback(&self) -> Option<&RollbackOf> {
        self.rollback_of.as_ref().filter(|r| r.failure.is_some())
    }

    /// The canaries are done and nothing promoted the rest yet. With an
    /// `auto_promote_after_ms`, the fleet may promote them by itself soon.
    pub fn waiting_for_promote(&self) -> bool {
        self.canary
            .is_some_and(|c| c.settled && !c.promoted && !self.complete())
    }
}

/// One secret or config as `get`/`list` show it: metadata, never a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRow {
    /// Which object.
    pub key: crate::objects::ObjectKey,
    /// The write of its current version (when, and which peer took it).
    pub at: crate::hlc::Timestamp,
    /// Who wrote it.
    pub by: String,
    /// Plaintext bytes.
    pub size: u64,
    /// Entry names.
    pub keys: Vec<String>,
    /// Nodes the current version is sealed to (secrets; empty for configs).
    pub sealed_to: Vec<NodeId>,
    /// Workloads that reference it.
    pub used_by: Vec<crate::names::WorkloadName>,
}
