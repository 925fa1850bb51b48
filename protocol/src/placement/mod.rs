//! Placement: which node runs which replica, by weighted rendezvous (HRW) hashing.
//!
//! [`plan`] is a pure function of the fleet view and the desired workloads, so every node that
//! holds the same view computes the same [`Assignment`] without talking to anyone. For each
//! replica, every eligible node gets a score `weight / -ln(u)` where `u` is a fixed hash of
//! (node, workload, replica) mapped into (0, 1); the highest score wins. Nodes of equal weight
//! compare by `u` alone, so the logarithm (from `libm`, identical on every platform) is only
//! computed between nodes of different weights.
//!
//! Replicas are placed greedily in a fixed order (priority descending, then name, then replica
//! index) so that capacity holds: a node is skipped once its remaining CPU or memory cannot fit
//! the replica's requests, or a host port the replica binds is already taken there. Strategies:
//! - `spread`: replica `i` of `w` ranks nodes by hash(node, w, i); a node that already holds a
//!   replica of `w` is skipped while another node fits.
//! - `bin-pack`: every replica of every workload ranks nodes by one fleet-wide order, so replicas
//!   fill the first nodes before touching the next.
//!
//! Disruption: with capacity to spare, a node leaving moves only the replicas it held, and the
//! set of nodes running any workload changes only by the departed node; a joining node takes
//! about 1/N of the replicas. (Under `spread` a displaced replica may take the node of a later
//! replica of the same workload, which then moves on: the node set still changes by one.)

mod reasons;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use reasons::{Unplaceable, may_run};

use crate::desired::DesiredState;
use crate::hash::{hash64, hash64_parts, mix64};
use crate::names::{NodeId, WorkloadName};
use crate::quantity::{Bytes, Millicores};
use crate::spec::{PlacementStrategy, PortProtocol, RuntimeKind, WorkloadSpec};

/// What placement knows of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// The node.
    pub id: NodeId,
    /// Its labels (`zone = "a"`, `voter = "true"`, ...).
    pub labels: BTreeMap<String, String>,
    /// Its CPU architecture, as `std::env::consts::ARCH` names it.
    pub arch: String,
    /// Runtimes it can run now.
    pub runtimes: BTreeSet<RuntimeKind>,
    /// Resources it offers to workloads.
    pub capacity: Capacity,
    /// Relative share of replicas it should get (1 and up; 0 takes no replicas, to drain it).
    pub weight: u32,
    /// Whether the fleet currently sees it.
    pub liveness: Liveness,
    /// A planned absence the node announced for itself (restart, drain). Gossiped under its
    /// own key and never stored or encoded with the view, so views written by older agents
    /// still decode.
    #[serde(skip)]
    pub departure: Departure,
}

/// A planned absence a node announces before its agent stops (`starling agent --on-stop`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Departure {
    /// No planned absence.
    #[default]
    Staying,
    /// The agent restarts (an upgrade) and leaves its replicas running for its next start:
    /// peers hold its replicas (the failure detector reports it `Suspect`, not `Down`) until
    /// `back_by_ms`, and it takes no singleton meanwhile, so a lease moves to another node.
    Restarting {
        /// When peers stop waiting (wall clock, ms since the epoch).
        back_by_ms: u64,
    },
    /// The node moves its replicas away (make before break) and then stops: placement gives it
    /// nothing.
    Draining,
}

/// CPU and memory, offered or reserved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// CPU.
    pub cpu: Millicores,
    /// Memory.
    pub memory: Bytes,
}

/// A node's membership state. Only `Down` nodes lose their replicas: a `Suspect` node keeps
/// them, so a flapping link does not move work around.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Liveness {
    /// Answering.
    Alive,
    /// Missed probes; not yet declared down.
    Suspect,
    /// Declared down.
    Down,
}

/// The fleet as one node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetView {
    /// Every known node by id.
    pub nodes: BTreeMap<NodeId, NodeView>,
}

/// One replica of a workload.
#[allow(missing_docs)] // a field named for what it holds has no doc to add
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReplicaId {
    pub workload: WorkloadName,
    /// Its index, `0..replicas`.
    pub index: u32,
}

/// The output of [`plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Where each placed replica runs.
    pub placed: BTreeMap<ReplicaId, NodeId>,
    /// Replicas no node can take, with the reason.
    pub unplaced: BTreeMap<ReplicaId, Unplaceable>,
    /// Resources reserved on each node by this plan.
    pub reserved: BTreeMap<NodeId, Capacity>,
}

impl Assignment {
    /// The replicas assigned to `node`, in replica order.
    pub fn for_node<'a>(&'a self, node: &'a NodeId) -> impl Iterator<Item = &'a ReplicaId> + 'a {
        self.placed
            .iter()
            .filter(move |(_, n)| *n == node)
            .map(|(r, _)| r)
    }
}

/// A node's rendezvous score for one replica; higher wins. Compare scores only for the same
/// replica key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    weight: u32,
    u: u64,
}

impl Score {
    /// The score of node `node_hash` (see [`node_hash`]) with `weight` for replica `key`.
    pub fn new(node_hash: u64, weight: u32, key: u64) -> Self {
        Score {
            weight,
            u: score_hash(node_hash, key),
        }
    }

    /// True when `self` ranks above `other`. Equal weights compare the hash directly; different
    /// weights compare `weight / -ln(u)`.
    pub fn beats(&self, other: &Score) -> bool {
        if self.weight == other.weight {
            return self.u > other.u;
        }
        self.value() > other.value()
    }

    fn value(&self) -> f64 {
        if self.weight == 0 {
            return 0.0;
        }
        // The top 53 bits as a float strictly inside (0, 1), so ln is finite and negative.
        let x = ((self.u >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        f64::from(self.weight) / -libm::log(x)
    }
}

/// The per-(node, replica) hash behind a score; forced odd so it is never 0, which lets the
/// placement loop use 0 as "no bound yet".
fn score_hash(node_hash: u64, key: u64) -> u64 {
    mix64(node_hash ^ key) | 1
}

/// The fixed hash of a node id used in scores.
pub fn node_hash(node: &NodeId) -> u64 {
    hash64(node.as_str().as_bytes())
}

/// The rendezvous key of replica `index` of `spec`: per replica for `spread`, one fleet-wide
/// key for `bin-pack`.
pub fn replica_key(spec: &WorkloadSpec, index: u32) -> u64 {
    match spec.placement {
        PlacementStrategy::Spread => hash64_parts(&[
            b"replica",
            spec.name.as_str().as_bytes(),
            &index.to_le_bytes(),
        ]),
        PlacementStrategy::BinPack => hash64(b"bin-pack"),
    }
}

/// The rendezvous key of a lease: candidates for it are ranked by this.
pub fn lease_key(name: &crate::names::WorkloadName) -> u64 {
    hash64_parts(&[b"lease", name.as_str().as_bytes()])
}

/// Places every live workload of `desired` on `view`. See the module docs for the rules.
pub fn plan(view: &FleetView, desired: &DesiredState) -> Assignment {
    plan_specs(view, desired.workloads().map(|(_, r)| &r.spec))
}

/// Places the given workloads on `view`. Same input, same output, on every node.
pub fn plan_specs<'a>(
    view: &FleetView,
    specs: impl IntoIterator<Item = &'a WorkloadSpec>,
) -> Assignment {
    let mut specs: Vec<&WorkloadSpec> = specs.into_iter().collect();
    specs.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut planner = Planner::new(view);
    for spec in specs {
        planner.place_workload(spec);
    }
    planner.finish()
}

/// The static constraints of a workload: workloads that share them share an eligible list.
type ConstraintKey<'v> = (
    bool,
    RuntimeKind,
    &'v BTreeSet<String>,
    &'v BTreeMap<String, String>,
);

/// Working state of one [`plan_specs`] call. Nodes are addressed by index in id order.
struct Planner<'v> {
    nodes: Vec<&'v NodeView>,
    /// Each node's id hash and the index of its weight in `classes`, side by side for the
    /// hot loop.
    hash_and_class: Vec<(u64, u32)>,
    weights: Vec<u32>,
    /// The distinct weights in the fleet.
    classes: Vec<u32>,
    free: Vec<Capacity>,
    /// Host ports already taken on each node by replicas placed in this plan.
    ports: Vec<BTreeSet<(u16, PortProtocol)>>,
    /// Host ports the workload being placed needs on its node.
    needs_ports: Vec<(u16, PortProtocol)>,
    out: Assignment,
    /// `used_by[n] == stamp` means node `n` already holds a replica of the current workload.
    used_by: Vec<u32>,
    stamp: u32,
    eligible: BTreeMap<ConstraintKey<'v>, Result<std::rc::Rc<[u32]>, Unplaceable>>,
}

impl<'v> Planner<'v> {
    fn new(view: &'v FleetView) -> Self {
        let nodes: Vec<&NodeView> = view
            .nodes
            .values()
            .filter(|n| {
                n.liveness != Liveness::Down && n.weight > 0 && n.departure != Departure::Draining
            })
            .collect();
        let weights: Vec<u32> = nodes.iter().map(|n| n.weight).collect();
        let mut classes = weights.clone();
        classes.sort_unstable();
        classes.dedup();
        Planner {
            hash_and_class: nodes
                .iter()
                .map(|n| {
                    let class = classes.binary_search(&n.weight).unwrap_or_default();
                    (node_hash(&n.id), class as u32)
                })
                .collect(),
            classes,
            weights,
            free: nodes.iter().map(|n| n.capacity).collect(),
            ports: vec![BTreeSet::new(); nodes.len()],
            needs_ports: Vec::new(),
            used_by: vec![0; nodes.len()],
            stamp: 0,
            nodes,
            eligible: BTreeMap::new(),
            out: Assignment::default(),
        }
    }

    fn place_workload(&mut self, spec: &'v WorkloadSpec) {
        self.stamp += 1;
        self.needs_ports = spec.host_ports();
        let key = (
            spec.singleton,
            spec.runtime,
            &spec.constraints.arch,
            &spec.constraints.labels,
        );
        let nodes = &self.nodes;
        let eligible = self
            .eligible
            .entry(key)
            .or_insert_with(|| reasons::eligible_nodes(nodes, spec).map(Into::into));
        let eligible = match eligible {
            Ok(list) => list.clone(),
            Err(reason) => {
                for index in 0..spec.replicas_to_place() {
                    self.out.unplaced.insert(
                        ReplicaId {
                            workload: spec.name.clone(),
                            index,
                        },
                        reason.clone(),
                    );
                }
                return;
            }
        };
        for index in 0..spec.replicas_to_place() {
            let replica = ReplicaId {
                workload: spec.name.clone(),
                index,
            };
            match self.place_replica(spec, index, &eligible) {
                Some(n) => {
                    self.free[n].cpu.0 -= spec.resources.cpu_request.0;
                    self.free[n].memory.0 -= spec.resources.memory_request.0;
                    self.used_by[n] = self.stamp;
                    self.ports[n].extend(self.needs_ports.iter().copied());
                    self.out.placed.insert(replica, self.nodes[n].id.clone());
                }
                None => {
                    let ports_free = |n: usize| self.ports_free(n);
                    let reason = reasons::no_capacity(spec, &eligible, &self.free, ports_free);
                    self.out.unplaced.insert(replica, reason);
                }
            }
        }
    }

    /// The best-scoring eligible node that fits, preferring nodes without a replica of this
    /// workload under `spread`.
    fn place_replica(&self, spec: &WorkloadSpec, index: u32, eligible: &[u32]) -> Option<usize> {
        let key = replica_key(spec, index);
        let spread = spec.placement == PlacementStrategy::Spread;
        self.best_node(spec, key, eligible, spread).or_else(|| {
            if spread {
                self.best_node(spec, key, eligible, false)
            } else {
                None
            }
        })
    }

    /// The highest score among eligible nodes that fit (skipping nodes already used by this
    /// workload when `skip_used`). This is the hot loop of placement: a node is first compared
    /// by its raw hash against a per-weight-class threshold derived from the best score so far,
    /// and only candidates that may win pay for the capacity check and the exact comparison.
    fn best_node(
        &self,
        spec: &WorkloadSpec,
        key: u64,
        eligible: &[u32],
        skip_used: bool,
    ) -> Option<usize> {
        let mut best: Option<(usize, Score)> = None;
        // Every `u` is odd (see `Score::new`), so 0 lets every node through until a best exists.
        let mut thresholds = vec![0u64; self.classes.len()];
        for &n in eligible {
            let n = n as usize;
            let (hash, class) = self.hash_and_class[n];
            let u = score_hash(hash, key);
            if u <= thresholds[class as usize] {
                continue;
            }
            if (skip_used && self.used_by[n] == self.stamp) || !self.fits(n, spec) {
                continue;
            }
            let score = Score {
                weight: self.weights[n],
                u,
            };
            if best.as_ref().is_none_or(|(_, b)| score.beats(b)) {
                best = Some((n, score));
                self.update_thresholds(&score, &mut thresholds);
            }
        }
        best.map(|(n, _)| n)
    }

    /// For each weight class, a hash value at or below which a node of that class cannot beat
    /// `best`. Same class: `best.u` exactly. Other classes: from `w / -ln(x) > S` follows
    /// `x > exp(-w / S)`; the bound is lowered by a margin so float rounding can only let
    /// extra candidates through to the exact comparison, never keep a winner out.
    fn update_thresholds(&self, best: &Score, thresholds: &mut [u64]) {
        let best_value = best.value();
        for (class, &weight) in self.classes.iter().enumerate() {
            thresholds[class] = if weight == best.weight {
                best.u
            } else {
                let x = libm::exp(-f64::from(weight) / best_value);
                let bound =
                    (x * 18_446_744_073_709_551_616.0).min(18_446_744_073_709_549_568.0) as u64;
                bound.saturating_sub(1 << 24)
            };
        }
    }

    fn fits(&self, n: usize, spec: &WorkloadSpec) -> bool {
        let free = &self.free[n];
        free.cpu >= spec.resources.cpu_request
            && free.memory >= spec.resources.memory_request
            && self.ports_free(n)
    }

    /// The host ports the current workload needs are all free on node `n`.
    fn ports_free(&self, n: usize) -> bool {
        self.needs_ports.is_empty() || self.needs_ports.iter().all(|p| !self.ports[n].contains(p))
    }

    fn finish(mut self) -> Assignment {
        for (i, node) in self.nodes.iter().enumerate() {
            let reserved = Capacity {
                cpu: Millicores(node.capacity.cpu.0 - self.free[i].cpu.0),
                memory: Bytes(node.capacity.memory.0 - self.free[i].memory.0),
            };
            if reserved != Capacity::default() {
                self.out.reserved.insert(node.id.clone(), reserved);
            }
        }
        self.out
    }
}

#[cfg(test)]
mod tests;
