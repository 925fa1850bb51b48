//! The plan a core acts on, and who computes it.
//!
//! A plan is a pure function of the fleet view, the desired state and whether this node's side
//! has a majority, so every node that sees the same fleet computes the same plan. The
//! [`Planner`] seam lets a host with many cores (the simulator's 10,000-node model) compute it
//! once and share it; the agent uses [`DirectPlanner`].

use std::collections::BTreeMap;
use std::sync::Arc;

use starling_protocol::NodeId;
use starling_protocol::desired::DesiredState;
use starling_protocol::placement::{
    Assignment, FleetView, Liveness, ReplicaId, plan as place, plan_specs,
};
use starling_protocol::spec::{PartitionPolicy, WorkloadSpec};

/// An assignment with the replicas of each node at hand, so a core finds its own share
/// without walking the whole fleet's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The fleet-wide assignment.
    pub assignment: Assignment,
    by_node: BTreeMap<NodeId, Vec<ReplicaId>>,
}

impl Plan {
    /// Indexes `assignment` by node.
    pub fn new(assignment: Assignment) -> Self {
        let mut by_node: BTreeMap<NodeId, Vec<ReplicaId>> = BTreeMap::new();
        // `placed` iterates in replica order, so every list comes out sorted.
        for (replica, node) in &assignment.placed {
            by_node
                .entry(node.clone())
                .or_default()
                .push(replica.clone());
        }
        Plan {
            assignment,
            by_node,
        }
    }

    /// The replicas placed on `node`, sorted.
    pub fn on(&self, node: &NodeId) -> &[ReplicaId] {
        self.by_node.get(node).map_or(&[], Vec::as_slice)
    }
}

/// Computes plans (and other fleet-wide functions of a view) for a core. Implementations must return exactly
/// [`compute`]`(view, desired, majority)`: sharing is allowed, a different answer is not.
pub trait Planner: Send + Sync + std::fmt::Debug {
    /// The plan for this view and desired state.
    fn plan(&self, view: &Arc<FleetView>, desired: &Arc<DesiredState>, majority: bool)
    -> Arc<Plan>;

    /// Whether a side without a majority may replace what it cannot see. Never, by the
    /// design's partition rule; the simulator's self-test injects a planner that says yes (a
    /// deliberate bug its invariants must catch), so no flag for it rides in production code.
    fn minority_may_replace(&self) -> bool {
        false
    }

    /// Whether replicas move to a new revision without the rollout gate (all at once).
    /// Never; the simulator's self-test injects a planner that says yes, to show its
    /// rollout-budget invariant catches it.
    fn rollout_ignores_budget(&self) -> bool {
        false
    }

    /// How many members the view holds and how many of them are seen alive (the majority
    /// rule's inputs), which [`census`] computes; a host may share the answer like the plan.
    fn census(&self, view: &Arc<FleetView>) -> (usize, usize) {
        census(view)
    }
}

/// Known members, and those seen alive: neither down nor suspected. A suspect does not count
/// towards a majority: when a partition begins, verdicts arrive one by one, and a node that saw
/// some of the other side down and the rest only suspected would count itself in the majority
/// and replace the downed nodes' replicas for a moment, then keep them for the whole split
/// (found by tests/netlab.rs). Holding takeovers until suspicion resolves costs a real failover
/// at most the time a suspicion takes to settle.
pub fn census(view: &FleetView) -> (usize, usize) {
    let visible = view
        .nodes
        .values()
        .filter(|n| n.liveness == Liveness::Alive)
        .count();
    (view.nodes.len(), visible)
}

/// Computes every plan afresh (one core per process).
#[derive(Debug, Default, Clone, Copy)]
pub struct DirectPlanner;

impl Planner for DirectPlanner {
    fn plan(
        &self,
        view: &Arc<FleetView>,
        desired: &Arc<DesiredState>,
        majority: bool,
    ) -> Arc<Plan> {
        Arc::new(Plan::new(compute(view, desired, majority)))
    }
}

/// The plan a node acts on. Without a majority, nodes it cannot see are treated as merely
/// suspected, so their replicas stay theirs (no replacement), except for workloads that chose
/// `partition = "availability"`.
pub fn compute(view: &FleetView, desired: &DesiredState, majority: bool) -> Assignment {
    if majority {
        return place(view, desired);
    }
    let mut frozen = view.clone();
    for node in frozen.nodes.values_mut() {
        if node.liveness == Liveness::Down {
            node.liveness = Liveness::Suspect;
        }
    }
    let specs: Vec<&WorkloadSpec> = desired.workloads().map(|(_, r)| &r.spec).collect();
    let (available, consistent): (Vec<&WorkloadSpec>, Vec<&WorkloadSpec>) = specs
        .into_iter()
        .partition(|s| s.partition == PartitionPolicy::Availability);
    let mut assignment = plan_specs(&frozen, consistent);
    let replaced = plan_specs(view, available);
    assignment.placed.extend(replaced.placed);
    assignment.unplaced.extend(replaced.unplaced);
    assignment
}
