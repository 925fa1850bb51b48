//! Reconciliation: from plan, membership and peers' status to claims, starts and stops.

use std::collections::BTreeMap;

use starling_protocol::WorkloadName;
use starling_protocol::desired::{Revision, same_template};
use starling_protocol::rollout::{Gate, Observations, canaries_settled, gate, observe};
use starling_protocol::spec::UpdateOrder;
use starling_protocol::status::ReplicaStatus;
use std::sync::Arc;

use starling_protocol::placement::{
    Assignment, Departure, Liveness, ReplicaId, Score, node_hash, replica_key,
};
use starling_protocol::status::ReplicaState;

use super::plan::Plan;
use super::replica::{LocalReplica, OutgoingInstance, Phase};
use super::singleton::follows_lease;
use super::{Action, CoreEvent, NodeCore, StopReason};

impl NodeCore {
    /// Brings local replicas in line with what this node should run, then publishes and
    /// persists what changed and recomputes the next deadline.
    pub(super) fn reconcile(&mut self, now_ms: u64) {
        if self.still_rejoining(now_ms) {
            // Peers learn what it kept running; the stored assignment stays as it was, so a
            // reboot now still restores it.
            self.publish_status();
            // A held wait has no deadline here: the shell's release wakes the core.
            self.deadline_ms = self.rejoin_until_ms.filter(|_| !self.rejoin_held);
            return;
        }
        self.update_majority();
        if self.plan.is_none() {
            self.plan = Some(self.compute_plan());
        }
        let plan = self.plan.take().unwrap_or_default();
        let wanted = self.wanted(&plan);
        let assignment = &plan.assignment;
        let mut deadline: Option<u64> = None;
        let tracked: Vec<ReplicaId> = self.replicas.keys().cloned().collect();
        for replica in tracked.iter().filter(|r| !wanted.contains_key(*r)) {
            self.release(now_ms, replica, assignment);
        }
        self.wanted_since.retain(|r, _| wanted.contains_key(r));
        self.away_since
            .retain(|r, _| !wanted.contains_key(r) && self.replicas.contains_key(r));
        for since in self.away_since.values() {
            deadline = min_some(deadline, Some(since + self.config.handover_timeout_ms));
        }
        self.rollout_waiting.clear();
        for (replica, revision) in &wanted {
            let due = self.pursue(now_ms, replica, revision);
            deadline = min_some(deadline, due);
        }
        let due = self.update_candidacy(now_ms, assignment);
        deadline = min_some(deadline, due);
        self.plan = Some(plan);
        self.deadline_ms = deadline;
        self.publish_and_persist();
    }

    /// After a restart, the core waits until every member it does not see as down, and a
    /// majority of all members, have reported their status (where the replicas went, who runs
    /// what), and its desired state caught up with a peer's, or until the deadline.
    /// Acting earlier, on the view it stored, would start copies of replicas the fleet moved
    /// elsewhere while this node was away.
    fn still_rejoining(&mut self, now_ms: u64) -> bool {
        let Some(until_ms) = self.rejoin_until_ms else {
            return false;
        };
        if self.rejoin_held {
            return true;
        }
        let me = &self.config.node;
        let heard_all =
            self.view.nodes.iter().all(|(id, n)| {
                id == me || n.liveness == Liveness::Down || self.peers.contains_key(id)
            });
        // Peers it has not heard yet may look down only because it has not heard them: it
        // also waits for a majority of the members (itself included) before it trusts that.
        let heard = self
            .peers
            .keys()
            .filter(|id| self.view.nodes.contains_key(*id))
            .count();
        let heard_majority = 2 * (heard + 1) > self.view.nodes.len();
        if now_ms < until_ms && !(heard_all && heard_majority && self.rejoin_synced) {
            return true;
        }
        let heard_all = heard_all && heard_majority;
        self.rejoin_until_ms = None;
        self.actions.push_back(Action::Event(CoreEvent::Rejoined {
            heard,
            timed_out: !heard_all,
        }));
        false
    }

    fn update_majority(&mut self) {
        // Only the view decides it, and walking 10,000 members on every event would cost more
        // than everything else a reconcile does.
        if !std::mem::take(&mut self.view_changed) {
            return;
        }
        let (known, visible) = self.planner.census(&self.view);
        let known = known.max(1);
        let majority = 2 * visible > known;
        if majority != self.majority {
            self.majority = majority;
            self.plan = None;
            let event = if majority {
                CoreEvent::MajorityRegained { visible, known }
            } else {
                CoreEvent::MinoritySide { visible, known }
            };
            self.actions.push_back(Action::Event(event));
        }
    }

    fn compute_plan(&self) -> Arc<Plan> {
        let acts_as_majority = self.majority || self.planner.minority_may_replace();
        self.planner
            .plan(&self.view, &self.desired, acts_as_majority)
    }

    /// The replicas this node should run, with the revision to run.
    fn wanted(&self, plan: &Plan) -> BTreeMap<ReplicaId, Revision> {
        let me = &self.config.node;
        let mut wanted = BTreeMap::new();
        let desired_revision = |r: &ReplicaId| {
            self.desired
                .get(&r.workload)
                .filter(|rev| r.index < rev.spec.replicas_to_place())
                .cloned()
        };
        for replica in plan.on(me) {
            let Some(rev) = desired_revision(replica) else {
                continue;
            };
            if follows_lease(&rev.spec) {
                continue;
            }
            let may_start = self.majority
                || self.planner.minority_may_replace()
                || !self.maybe_running_elsewhere(replica);
            if may_start {
                wanted.insert(replica.clone(), rev);
            }
        }
        if !self.majority {
            // A minority side keeps what it ran, including after a reboot with no peers.
            for replica in self.last_assignment.keys() {
                if let Some(rev) = desired_revision(replica).filter(|r| !follows_lease(&r.spec)) {
                    wanted.insert(replica.clone(), rev);
                }
            }
        }
        wanted.extend(self.lease_replicas());
        wanted
    }

    /// Claims, starts or updates one wanted replica. Returns when it next needs attention.
    fn pursue(&mut self, now_ms: u64, replica: &ReplicaId, revision: &Revision) -> Option<u64> {
        let settle_ms = self.config.settle_ms;
        let not_started = self
            .replicas
            .get(replica)
            .is_none_or(|r| matches!(r.phase, Phase::Claimed { .. }));
        // A move (the replica runs healthy elsewhere) waits out the hold before it claims or
        // starts; a replacement (nobody runs it) does not.
        let by_lease = follows_lease(&revision.spec);
        if not_started && !by_lease && self.available_elsewhere(replica) {
            let since = *self.wanted_since.entry(replica.clone()).or_insert(now_ms);
            let due = since + self.config.move_hold_ms;
            if now_ms < due {
                return Some(due);
            }
        }
        let Some(local) = self.replicas.get_mut(replica) else {
            let mut local = LocalReplica::claimed(revision.number, revision.spec.clone(), now_ms);
            local.inputs = revision.inputs.clone();
            self.replicas.insert(replica.clone(), local);
            if by_lease {
                // The lease is the claim: start at once.
                if self.fits_locally(replica) {
                    self.start(replica);
                    return None;
                }
                return Some(now_ms + settle_ms);
            }
            return Some(now_ms + settle_ms);
        };
        if local.revision != revision.number || local.spec != revision.spec {
            if same_template(&local.spec, &revision.spec) && local.inputs == revision.inputs {
                local.revision = revision.number;
                local.spec = revision.spec.clone();
            } else {
                let moved = self.move_to(now_ms, replica, revision, by_lease);
                if let Err(due) = moved {
                    return due;
                }
            }
        }
        let local = self.replicas.get_mut(replica)?;
        let settle_due = local.refresh_settled(now_ms);
        let mut due = settle_due;
        if local.settled
            && let Some(old) = local.outgoing.as_mut().filter(|o| !o.stopping)
        {
            // The new instance has settled: the old one has served its turn.
            old.stopping = true;
            let instance = old.instance;
            self.actions.push_back(Action::Stop {
                replica: replica.clone(),
                instance,
                reason: StopReason::NewRevision,
            });
        }
        due = min_some(due, self.check_health_gate(now_ms, replica, revision));
        let local = self.replicas.get(replica)?;
        match local.phase {
            Phase::Claimed { since_ms } if now_ms >= since_ms + settle_ms => {
                // Re-checked at the next event: a peer status that drops the competing claim,
                // or the exit of a handed-over replica that frees room here.
                if (!by_lease && self.outranked_claim(replica)) || !self.fits_locally(replica) {
                    return None;
                }
                self.start(replica);
                None
            }
            Phase::BackingOff { until_ms } if now_ms >= until_ms => {
                self.start(replica);
                None
            }
            _ => min_some(local.deadline_ms(settle_ms), due),
        }
    }

    /// A tracked replica runs an older template than `revision`: moves it when the rollout
    /// gate lets it (stop-first: restart on the new template; start-first: start the new
    /// instance beside the old one). `Err` carries when to look again while it waits.
    fn move_to(
        &mut self,
        now_ms: u64,
        replica: &ReplicaId,
        revision: &Revision,
        by_lease: bool,
    ) -> Result<(), Option<u64>> {
        let Some(local) = self.replicas.get_mut(replica) else {
            return Ok(());
        };
        let back_to_old = local.outgoing.as_ref().is_some_and(|o| {
            !o.stopping && same_template(&o.spec, &revision.spec) && o.inputs == revision.inputs
        });
        if back_to_old {
            // Rolled back while the old instance still runs beside the new one: keep the old
            // one, stop the new one.
            let Some(old) = local.outgoing.take() else {
                return Ok(());
            };
            let new = OutgoingInstance {
                instance: local.instance,
                revision: local.revision,
                spec: std::mem::replace(&mut local.spec, revision.spec.clone()),
                inputs: std::mem::replace(&mut local.inputs, revision.inputs.clone()),
                healthy: false,
                stopping: true,
            };
            let had_instance = local.has_instance();
            local.instance = old.instance;
            local.revision = revision.number;
            local.phase = Phase::Running;
            local.healthy = old.healthy;
            local.healthy_since_ms = None;
            local.settled = false;
            local.failures = 0;
            local.crash_loop = false;
            local.reason = None;
            local.updating_since_ms = None;
            if had_instance {
                self.actions.push_back(Action::Stop {
                    replica: replica.clone(),
                    instance: new.instance,
                    reason: StopReason::NewRevision,
                });
                local.outgoing = Some(new);
            }
            return Ok(());
        }
        let serving = local.phase == Phase::Running && local.healthy;
        let gated = !by_lease && !self.planner.rollout_ignores_budget();
        if matches!(local.phase, Phase::Starting | Phase::Running) && gated {
            let hold = self.rollout_gate(now_ms, replica, revision);
            if let Err(due) = hold {
                self.rollout_waiting.insert(replica.workload.clone());
                return Err(due);
            }
        }
        let Some(local) = self.replicas.get_mut(replica) else {
            return Ok(());
        };
        let old = OutgoingInstance {
            instance: local.instance,
            revision: local.revision,
            spec: std::mem::replace(&mut local.spec, revision.spec.clone()),
            inputs: std::mem::replace(&mut local.inputs, revision.inputs.clone()),
            healthy: serving,
            stopping: false,
        };
        local.revision = revision.number;
        local.failures = 0;
        local.crash_loop = false;
        local.updating_since_ms = Some(now_ms);
        match local.phase {
            Phase::Starting | Phase::Running => {
                let beside = revision.spec.update.order == UpdateOrder::StartFirst
                    && serving
                    && !by_lease
                    && local.outgoing.is_none();
                if beside {
                    local.outgoing = Some(old);
                    local.phase = Phase::Claimed { since_ms: now_ms };
                    local.healthy = false;
                    local.healthy_since_ms = None;
                    local.settled = false;
                    self.start(replica);
                } else {
                    self.stop(replica, StopReason::NewRevision, true);
                }
                Err(None)
            }
            // A new template starts with a fresh back-off.
            Phase::Exited | Phase::BackingOff { .. } => {
                local.phase = Phase::BackingOff { until_ms: now_ms };
                Ok(())
            }
            Phase::Claimed { .. } | Phase::Stopping { .. } => Ok(()),
        }
    }

    /// What the fleet reports of `workload`'s replicas: this node's own and every live
    /// peer's last status.
    pub(super) fn observe(&self, workload: &WorkloadName, target: u64) -> Observations {
        let mine: Vec<(u32, ReplicaStatus)> = self
            .replicas
            .iter()
            .filter(|(id, _)| &id.workload == workload)
            .map(|(id, r)| (id.index, r.status()))
            .collect();
        let theirs = self
            .peers
            .iter()
            .filter(|(node, _)| self.is_live(node))
            .flat_map(|(_, status)| {
                status
                    .replicas
                    .iter()
                    .filter(|(id, _)| &id.workload == workload)
                    .map(|(id, r)| (id.index, r))
            });
        observe(target, mine.iter().map(|(i, r)| (*i, r)).chain(theirs))
    }

    /// The rollout gate for one replica (see `protocol::rollout`). `Err` while it waits,
    /// with when to look again (an auto-promote timer) if time alone can open it.
    fn rollout_gate(
        &mut self,
        now_ms: u64,
        replica: &ReplicaId,
        revision: &Revision,
    ) -> Result<(), Option<u64>> {
        let seen = self.observe(&replica.workload, revision.number);
        let mut auto_promoted = false;
        let mut due = None;
        if let Some(after) = revision
            .spec
            .update
            .canary
            .and_then(|c| c.auto_promote_after_ms)
        {
            if canaries_settled(revision, &seen) {
                let since = self
                    .canaries_settled
                    .entry(replica.workload.clone())
                    .or_insert((revision.number, now_ms));
                if since.0 != revision.number {
                    *since = (revision.number, now_ms);
                }
                auto_promoted = now_ms >= since.1 + after;
                due = Some(since.1 + after);
            } else {
                self.canaries_settled.remove(&replica.workload);
            }
        }
        match gate(revision, replica.index, &seen, auto_promoted) {
            Gate::Go => Ok(()),
            Gate::Wait(_) => Err(due.filter(|_| !auto_promoted)),
        }
    }

    /// A replica moving to a new revision must get healthy within the spec's
    /// `update.health_deadline` and must not crash loop; if it fails, the rollout fails and
    /// (with `auto_rollback`) this node asks for the rollback. Returns when to check again.
    fn check_health_gate(
        &mut self,
        now_ms: u64,
        replica: &ReplicaId,
        revision: &Revision,
    ) -> Option<u64> {
        let local = self.replicas.get_mut(replica)?;
        let since = local.updating_since_ms?;
        if local.settled || local.revision != revision.number {
            local.updating_since_ms = None;
            return None;
        }
        let deadline = since.saturating_add(revision.spec.update.health_deadline_ms);
        let why = if local.crash_loop || local.failures >= ROLLOUT_FAILURES_MAX {
            let last = local
                .reason
                .clone()
                .unwrap_or_else(|| "it keeps exiting".into());
            format!(
                "replica {}/{} failed {} times on revision {}: {last}",
                replica.workload, replica.index, local.failures, revision.number
            )
        } else if now_ms >= deadline && !(local.healthy && local.phase == Phase::Running) {
            format!(
                "replica {}/{} not healthy within {} on revision {}{}",
                replica.workload,
                replica.index,
                starling_protocol::quantity::format_duration_ms(
                    revision.spec.update.health_deadline_ms
                ),
                revision.number,
                local
                    .reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )
        } else if now_ms >= deadline {
            // Healthy by the deadline: the gate passed; settling is the rollout's business.
            local.updating_since_ms = None;
            return None;
        } else {
            return Some(deadline);
        };
        local.updating_since_ms = None;
        let is_rollback = revision.rollout.rollback_of.is_some();
        let rolling_back = revision.spec.update.auto_rollback
            && !is_rollback
            && revision.previous.is_some()
            && self
                .rollbacks_asked
                .insert((replica.workload.clone(), revision.number));
        let asked_before = self
            .rollbacks_asked
            .contains(&(replica.workload.clone(), revision.number))
            && !rolling_back;
        if rolling_back {
            self.actions.push_back(Action::RollBack {
                workload: replica.workload.clone(),
                revision: revision.number,
                reason: why.clone(),
            });
        }
        if !asked_before {
            self.actions
                .push_back(Action::Event(CoreEvent::RolloutFailed {
                    replica: replica.clone(),
                    revision: revision.number,
                    reason: why,
                    rolling_back,
                }));
        }
        None
    }

    /// A tracked replica this node should no longer run: stop it if nobody wants it; if it is
    /// planned elsewhere, release a mere claim at once but keep a running copy until the
    /// planned node runs it healthy (make before break).
    fn release(&mut self, now_ms: u64, replica: &ReplicaId, plan: &Assignment) {
        let still_desired = self
            .desired
            .get(&replica.workload)
            .is_some_and(|rev| replica.index < rev.spec.replicas_to_place());
        if !still_desired {
            self.stop(replica, StopReason::NotDesired, false);
            return;
        }
        let Some(local) = self.replicas.get(replica) else {
            return;
        };
        if follows_lease(&local.spec) || (local.spec.singleton && self.departing()) {
            // Not held here (any more): no handover for a singleton, it stops now. A node
            // about to stop gives its standbys up too: none may outlive the agent's leases.
            self.stop(replica, StopReason::LeaseLost, false);
            return;
        }
        match local.phase {
            Phase::Claimed { .. } | Phase::BackingOff { .. } | Phase::Exited => {
                self.replicas.remove(replica);
            }
            Phase::Starting | Phase::Running => {
                let handed_over = plan
                    .placed
                    .get(replica)
                    .is_some_and(|target| self.peer_has_available(target, replica));
                // A handover that never completes (the new node cannot start it, e.g. because
                // it waits for room this copy holds) ends after a timeout rather than deadlock.
                let since = *self.away_since.entry(replica.clone()).or_insert(now_ms);
                let timed_out = now_ms >= since + self.config.handover_timeout_ms;
                if handed_over || timed_out {
                    self.away_since.remove(replica);
                    self.stop(replica, StopReason::HandedOver, false);
                }
            }
            Phase::Stopping { .. } => {}
        }
    }

    /// This node has room for the replica next to everything that occupies it now (running,
    /// starting, stopping or backing off): the plan counts only planned replicas, but a copy
    /// kept for a handover still uses its resources until it stops.
    fn fits_locally(&self, replica: &ReplicaId) -> bool {
        let (Some(me), Some(wanted)) = (
            self.view.nodes.get(&self.config.node),
            self.replicas.get(replica),
        ) else {
            return true;
        };
        let mut cpu = u64::from(wanted.spec.resources.cpu_request.0);
        let mut memory = wanted.spec.resources.memory_request.0;
        for (id, r) in &self.replicas {
            if id != replica && (r.has_instance() || matches!(r.phase, Phase::BackingOff { .. })) {
                cpu += u64::from(r.spec.resources.cpu_request.0);
                memory += r.spec.resources.memory_request.0;
            }
        }
        cpu <= u64::from(me.capacity.cpu.0) && memory <= me.capacity.memory.0
    }

    pub(super) fn is_live(&self, node: &starling_protocol::NodeId) -> bool {
        self.view
            .nodes
            .get(node)
            .is_some_and(|n| n.liveness != Liveness::Down)
    }

    /// A live peer's last report says it runs the replica healthy.
    fn peer_has_available(&self, node: &starling_protocol::NodeId, replica: &ReplicaId) -> bool {
        self.is_live(node)
            && self
                .peers
                .get(node)
                .and_then(|s| s.replicas.get(replica))
                .is_some_and(|r| r.is_available())
    }

    /// A live peer runs the replica healthy and keeps running it: a copy on a draining node
    /// is about to go, so taking it over is a replacement, not a move that waits out the hold.
    fn available_elsewhere(&self, replica: &ReplicaId) -> bool {
        self.peers.keys().any(|node| {
            self.peer_has_available(node, replica)
                && self
                    .view
                    .nodes
                    .get(node)
                    .is_none_or(|n| n.departure != Departure::Draining)
        })
    }

    /// Whether another node may be running this replica: some node last reported it, or some
    /// known node never reported at all (a node rebooted with no peers knows nothing of them).
    /// A minority side starts a planned replica only when this is false: a brand-new one.
    fn maybe_running_elsewhere(&self, replica: &ReplicaId) -> bool {
        let me = &self.config.node;
        let unheard = self
            .view
            .nodes
            .keys()
            .any(|n| n != me && !self.peers.contains_key(n));
        unheard
            || self
                .peers
                .values()
                .any(|s| s.replicas.get(replica).is_some_and(|r| r.is_active()))
    }

    /// A live peer holds a competing claim (claimed or starting, not yet running) on this
    /// replica and ranks above this node for it.
    fn outranked_claim(&self, replica: &ReplicaId) -> bool {
        let Some(spec) = self.replicas.get(replica).map(|r| &r.spec) else {
            return false;
        };
        let key = replica_key(spec, replica.index);
        let score_of = |node: &starling_protocol::NodeId| {
            let weight = self.view.nodes.get(node).map_or(1, |n| n.weight);
            Score::new(node_hash(node), weight, key)
        };
        let mine = score_of(&self.config.node);
        self.peers.iter().any(|(node, status)| {
            self.is_live(node)
                && status.replicas.get(replica).is_some_and(|r| {
                    matches!(r.state, ReplicaState::Claimed | ReplicaState::Starting)
                })
                && score_of(node).beats(&mine)
        })
    }

    fn publish_status(&mut self) {
        let status = self.status();
        if self.published.as_ref() != Some(&status) {
            self.published = Some(status.clone());
            self.actions.push_back(Action::Publish(status));
        }
    }

    fn publish_and_persist(&mut self) {
        self.publish_status();
        let active: Vec<(ReplicaId, u64)> = self
            .replicas
            .iter()
            .filter(|(_, r)| r.is_active())
            .map(|(id, r)| (id.clone(), r.revision))
            .collect();
        if active != self.persisted {
            self.persisted = active.clone();
            self.last_assignment = active.iter().cloned().collect();
            self.actions.push_back(Action::PersistAssignment(active));
        }
    }
}

/// Failures in a row of a replica moving to a new revision that fail its rollout (before
/// the restart policy would call it a crash loop: a bad revision is rolled back in seconds).
pub(crate) const ROLLOUT_FAILURES_MAX: u32 = 3;

fn min_some(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}
