//! Singletons: which leases this node campaigns for, and which singleton replicas it may run.
//!
//! The election itself is `crate::election`; the core only decides candidacy and follows what
//! the shell reports as held. Rules:
//! - Without standbys, the active replica runs on the lease holder only: the node placement
//!   picks for replica 0 campaigns, starts the replica as soon as it holds the lease (no claim
//!   settle: the lease is the claim) and stops it the moment it loses it. A holder that
//!   placement moved away keeps campaigning for `move_hold_ms` (damping a flapping link), then
//!   gives the lease up.
//! - With standbys, every placed replica runs; the node that holds the lease runs the active
//!   one. A node campaigns while a replica of it runs here and it holds the lease or ranks
//!   first (rendezvous hash of the lease name) among the live nodes running one, so a standby
//!   takes over when the holder goes, and a holder keeps it while it lives.
//! - A holder that loses its lease stops its instances of that workload at once (self-fencing);
//!   standbys restart as standbys.

use std::collections::BTreeMap;

use starling_protocol::WorkloadName;
use starling_protocol::desired::Revision;
use starling_protocol::placement::{Assignment, ReplicaId, Score, lease_key, node_hash};
use starling_protocol::spec::{LeaseMode, WorkloadSpec};

use super::replica::Phase;
use super::{Action, NodeCore, StopReason};

/// A lease the core wants the shell's elector to campaign for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LeaseWant {
    /// Duration of each grant.
    pub ttl_ms: u64,
    /// Quorum or local.
    pub mode: LeaseMode,
}

/// Whether a spec's active instance follows its lease alone (no standbys).
pub(super) fn follows_lease(spec: &WorkloadSpec) -> bool {
    spec.singleton && spec.lease.standbys == 0
}

impl NodeCore {
    /// The elector says whether this node holds `lease` (with its fencing token).
    pub fn handle_lease(&mut self, now_ms: u64, lease: WorkloadName, token: Option<u64>) {
        let lost = token.is_none() && self.held.contains_key(&lease);
        match token {
            Some(t) => {
                self.held.insert(lease.clone(), t);
            }
            None => {
                self.held.remove(&lease);
            }
        }
        let fences = self.desired.get(&lease).is_some_and(|r| r.spec.singleton);
        if token.is_none() {
            self.scalers.remove(&lease);
        }
        if lost && fences {
            // Self-fencing: every instance of it here stops now; standbys come back as such.
            let mine: Vec<ReplicaId> = self
                .replicas
                .keys()
                .filter(|r| r.workload == lease)
                .cloned()
                .collect();
            for replica in mine {
                self.stop(&replica, StopReason::LeaseLost, false);
            }
        }
        self.reconcile(now_ms);
    }

    /// The fencing token of a lease this node holds.
    pub fn held_token(&self, lease: &WorkloadName) -> Option<u64> {
        self.held.get(lease).copied()
    }

    /// The singleton replicas that run because this node holds their lease.
    pub(super) fn lease_replicas(&self) -> BTreeMap<ReplicaId, Revision> {
        let mut wanted = BTreeMap::new();
        if self.departing() {
            // Its instances stop before the agent does; the lease follows once they are gone.
            return wanted;
        }
        for name in self.held.keys() {
            if let Some(rev) = self.desired.get(name)
                && follows_lease(&rev.spec)
                && rev.spec.replicas > 0
            {
                wanted.insert(
                    ReplicaId {
                        workload: name.clone(),
                        index: 0,
                    },
                    rev.clone(),
                );
            }
        }
        wanted
    }

    /// Recomputes the leases to campaign for and emits the changes.
    pub(super) fn update_candidacy(&mut self, now_ms: u64, plan: &Assignment) -> Option<u64> {
        let me = self.config.node.clone();
        let mut wanted: BTreeMap<WorkloadName, LeaseWant> = BTreeMap::new();
        let mut deadline = None;
        for (name, rev) in self.desired.workloads() {
            let spec = &rev.spec;
            if super::scaling::autoscaled(spec) {
                // The scaler's lease: held by one of the nodes running a replica.
                let campaign = !self.departing()
                    && self.runs_one(name)
                    && (self.held.contains_key(name) || self.ranks_first(name, plan));
                if campaign {
                    wanted.insert(
                        name.clone(),
                        LeaseWant {
                            ttl_ms: starling_protocol::spec::DEFAULT_LEASE_TTL_MS,
                            mode: LeaseMode::Quorum,
                        },
                    );
                }
                continue;
            }
            if !spec.singleton || spec.replicas == 0 {
                continue;
            }
            let want = LeaseWant {
                ttl_ms: spec.lease.ttl_ms,
                mode: spec.lease.mode,
            };
            let campaign = if self.departing() {
                // A node about to stop gives its leases up, so the next holder need not wait
                // for them to run out, but only once its instances here have exited: a new
                // holder must not start next to one that is still stopping.
                self.held.contains_key(name)
                    && self
                        .replicas
                        .iter()
                        .any(|(id, r)| &id.workload == name && r.has_instance())
            } else if follows_lease(spec) {
                let replica = ReplicaId {
                    workload: name.clone(),
                    index: 0,
                };
                let placed_here = plan.placed.get(&replica) == Some(&me);
                if placed_here || !self.held.contains_key(name) {
                    self.lease_away_since.remove(name);
                    placed_here
                } else {
                    let since = *self.lease_away_since.entry(name.clone()).or_insert(now_ms);
                    let until = since + self.config.move_hold_ms;
                    if now_ms < until {
                        deadline = Some(deadline.map_or(until, |d: u64| d.min(until)));
                    }
                    now_ms < until
                }
            } else {
                self.runs_one(name)
                    && (self.held.contains_key(name) || self.ranks_first(name, plan))
            };
            if campaign {
                wanted.insert(name.clone(), want);
            }
        }
        // Kept while the lease is held: a withdrawal takes effect when the elector reports the
        // loss, and the hold must not start over in between.
        let held = &self.held;
        self.lease_away_since.retain(|n, _| held.contains_key(n));
        let old = std::mem::take(&mut self.campaigning);
        for (name, want) in &wanted {
            if old.get(name) != Some(want) {
                self.actions.push_back(Action::Campaign {
                    lease: name.clone(),
                    want: *want,
                });
            }
        }
        for name in old.keys().filter(|n| !wanted.contains_key(*n)) {
            self.actions.push_back(Action::Withdraw {
                lease: name.clone(),
            });
        }
        self.campaigning = wanted;
        deadline
    }

    /// A replica of `name` runs here.
    fn runs_one(&self, name: &WorkloadName) -> bool {
        self.replicas
            .iter()
            .any(|(id, r)| &id.workload == name && r.phase == Phase::Running)
    }

    /// Among the live nodes placed a replica of `name` and running one, this node ranks first
    /// for the lease.
    fn ranks_first(&self, name: &WorkloadName, plan: &Assignment) -> bool {
        let key = lease_key(name);
        let me = &self.config.node;
        let score = |node: &starling_protocol::NodeId| {
            let weight = self.view.nodes.get(node).map_or(1, |n| n.weight);
            Score::new(node_hash(node), weight, key)
        };
        let mine = score(me);
        !plan.placed.iter().any(|(replica, node)| {
            &replica.workload == name
                && node != me
                && self.is_live(node)
                && self
                    .peers
                    .get(node)
                    .and_then(|s| s.replicas.get(replica))
                    .is_some_and(|r| r.is_available())
                && score(node).beats(&mine)
        })
    }
}
