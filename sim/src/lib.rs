//! The deterministic fault simulator: many instances of the real `node::core` driven by one
//! seeded discrete-event scheduler, over a simulated network and runtime.
//!
//! - [`scenario`]: scenario files (fleet, workloads, timeline of faults).
//! - `world`: the mesh model: its scheduler and its nodes (a host each, with the gossip,
//!   detector and elector state next to it); `lifecycle`: boot and crash.
//! - `net`: the network (latency, loss, duplication, partitions, one-way cuts), gossip
//!   (heartbeats and status) with the real anti-entropy messages and digests, the detectors.
//! - `host`: one simulated node, shared by both models: its core, the simulated runtime that
//!   carries out the core's actions (the simulator's `Effects`), its disk's assignment.
//! - `fast`: the fast model (epidemic rounds at fleet scale) over the same hosts.
//! - `faults`: crash, restart, agent restart, disk loss, partition, heal, skew, pause, flap,
//!   rolling reboot, churn, API writes; `agent`: agent restarts (replicas outlive the agent,
//!   the next one adopts them) and planned restarts announced as departures.
//! - `leases`: each node's real elector (leader election), wired to its core, the network,
//!   gossip and its disk.
//! - `checks`: the invariants and the timeline; `lease_check`: invariant 4 (one valid holder
//!   per lease at any instant) and the lease facts; `return_check`: invariant 7 (a node back
//!   from a restart makes no replica run twice beyond one handover).
//! - [`report`]: the summary and the SVG picture.
//!
//! The same seed gives the same run, byte for byte: [`RunReport::trace_hash`] is a running hash
//! of every processed event, its payload and every core's decisions (`trace`), and the report
//! text is a function of the run alone.

#![forbid(unsafe_code)]

mod agent;
mod checks;
mod deletes;
pub mod epidemic;
mod fast;
mod faults;
mod host;
mod lease_check;
mod leases;
mod lifecycle;
mod liveness_check;
mod net;
pub mod report;
mod return_check;
pub mod rng;
mod rollout_check;
pub mod scenario;
mod trace;
mod world;

pub use checks::Sample;
pub use lease_check::{HolderSpan, LeaseFacts};
pub use scenario::{Scenario, ScenarioError};
pub use world::Counters;

use host::Fleet;

pub use starling_core as core;

/// What a run found.
#[allow(missing_docs)] // a field named for what it holds has no doc to add
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The scenario's name.
    pub scenario: String,
    pub seed: u64,
    /// Hash of every processed event, what it carried and what each core decided: equal for
    /// equal runs, and different when any decision differs.
    pub trace_hash: u64,
    /// Hash of the processed events' times, kinds and nodes alone: equal for runs that do the
    /// same things at the same moments, whatever they decide (against `trace_hash`, it tells a
    /// changed decision from a changed schedule).
    pub schedule_hash: u64,
    /// Virtual time simulated.
    pub duration_ms: u64,
    /// Nodes at the start.
    pub nodes: usize,
    /// When the last fault ended.
    pub last_fault_end_ms: u64,
    /// When the fleet converged after it (None: not within the run).
    pub converged_at_ms: Option<u64>,
    /// Counters.
    pub counters: Counters,
    /// The timeline.
    pub samples: Vec<Sample>,
    /// Fault times.
    pub faults_at: Vec<u64>,
    /// Node ids, for the picture.
    pub node_names: Vec<String>,
    /// The violation that stopped the run, if any.
    pub violation: Option<Violation>,
    /// The invariant the scenario is built to break, if any.
    pub expected_violation: Option<String>,
    /// Per lease: holders over time, gaps, tokens.
    pub leases: Vec<LeaseFacts>,
    /// Nodes back from restarts and the duplicate time next to them (invariant 7).
    pub returns: ReturnFacts,
}

/// What invariant 7 saw: nodes back from a restart, and how long a replica ran twice next to
/// one of them at most, against the bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReturnFacts {
    /// Returns counted (restarts from disk, agent restarts).
    pub returns: u64,
    /// The most duplicate time one replica had next to one returned node.
    pub duplicate_ms_max: u64,
    /// One make-before-break handover: what each replica may have.
    pub bound_ms: u64,
}

impl RunReport {
    /// Whether the run went as the scenario says it should: no violation, or exactly the one
    /// it is built to provoke.
    pub fn as_expected(&self) -> bool {
        match (&self.violation, &self.expected_violation) {
            (None, None) => true,
            (Some(v), Some(e)) => &v.invariant == e,
            _ => false,
        }
    }
}

/// An invariant that failed: what, when, and the events before it.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The invariant's name.
    pub invariant: String,
    /// Virtual time.
    pub at_ms: u64,
    /// What was seen.
    pub detail: String,
    /// The last events before it.
    pub trace: Vec<String>,
}

/// Options of a run beyond the scenario.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Turn on the core's deliberate bug (a minority side replaces replicas), to show the
    /// invariants can fail.
    pub bug_minority_takes_over: bool,
    /// Turn on the core's deliberate rollout bug (replicas move to a new revision all at
    /// once, past the budget), to show invariant 12 catches it.
    pub bug_rollout_ignores_budget: bool,
    /// Added to every instance number the cores hand out (default 0). It changes what the
    /// cores decide (the instances they start and stop) and nothing of when anything happens,
    /// to show the trace hash sees decisions, not only the schedule.
    pub instance_offset: u64,
}

/// Runs `scenario` with `seed`.
pub fn run(scenario: &Scenario, seed: u64, options: RunOptions) -> RunReport {
    if scenario.gossip.model != scenario::GossipModel::Mesh {
        return fast::run(scenario, seed, options);
    }
    let mut world = world::World::new(scenario, seed, options);
    let violation = world.run().err();
    let leases = world.lease_facts();
    let returns = ReturnFacts {
        returns: world.returns.returns,
        duplicate_ms_max: world.returns.overlap_ms_max,
        bound_ms: world.returns.bound_ms(),
    };
    RunReport {
        leases,
        returns,
        ..RunReport::of(&mut world, seed, violation)
    }
}

impl RunReport {
    /// What a run of either model found, but the leases and returns (the mesh model's).
    fn of(fleet: &mut impl Fleet, seed: u64, violation: Option<Violation>) -> Self {
        let scenario = fleet.scenario();
        let (name, nodes) = (scenario.name.clone(), scenario.fleet.nodes);
        let expected_violation = scenario.expect_violation.clone();
        let node_names = (0..fleet.node_count())
            .map(|i| fleet.id(i).to_string())
            .collect();
        let (trace_hash, schedule_hash) = (fleet.trace().hash(), fleet.trace().schedule());
        let duration_ms = fleet.now();
        let counters = fleet.counters().clone();
        let checker = fleet.checker();
        RunReport {
            scenario: name,
            seed,
            trace_hash,
            schedule_hash,
            duration_ms,
            nodes,
            last_fault_end_ms: checker.last_fault_end_ms,
            converged_at_ms: checker.converged_at_ms,
            counters,
            samples: std::mem::take(&mut checker.samples),
            faults_at: std::mem::take(&mut checker.faults_at),
            node_names,
            violation,
            expected_violation,
            leases: Vec::new(),
            returns: ReturnFacts::default(),
        }
    }
}
