//! Autoscaling in the core: who scales a workload with `[scaling]`, and when.
//!
//! Exactly one node scales a workload: the holder of its lease. A lease named after the
//! workload is free for this, since a workload with `[scaling]` is never a singleton (the spec
//! refuses both). The nodes that run one of its replicas campaign when they hold the lease or
//! rank first for it among the nodes running one (as a singleton's standbys do), so the
//! scaler moves when its node goes. Losing this lease stops nothing: it only ends the
//! scaling. The holder feeds the load its shell sees to a [`Scaler`] and turns a decision
//! into [`Action::Scale`], which the shell writes as an ordinary scale of the workload.

use std::collections::BTreeMap;

use starling_protocol::WorkloadName;
use starling_protocol::spec::WorkloadSpec;

use super::{Action, NodeCore};
use crate::scale::{Decision, Scaler};

/// Whether `spec` is scaled automatically (and so has a scaling lease).
pub(super) fn autoscaled(spec: &WorkloadSpec) -> bool {
    spec.scaling.is_some() && !spec.singleton
}

impl NodeCore {
    /// The per-replica values of `workload`'s scaling metric (replica index -> value) as the
    /// fleet last reported them. Acted on only where the workload's lease is held; elsewhere
    /// it forgets any scaler it had, so a holder that lost the lease and wins it back watches
    /// a whole window again before it scales down.
    pub fn handle_load(&mut self, now_ms: u64, workload: WorkloadName, values: BTreeMap<u32, u64>) {
        let Some(revision) = self.desired.get(&workload) else {
            self.scalers.remove(&workload);
            return;
        };
        let (Some(policy), true) = (
            revision.spec.scaling.clone(),
            autoscaled(&revision.spec) && self.held.contains_key(&workload) && !self.departing(),
        ) else {
            self.scalers.remove(&workload);
            return;
        };
        let current = revision.spec.replicas;
        let config = self.config.scale.clone();
        let scaler = self
            .scalers
            .entry(workload.clone())
            .or_insert_with(|| Scaler::new(config));
        scaler.observe(now_ms, current, values);
        // A rollout under way holds the count: a scale-down would take away the replicas
        // its budget counts on, and new replicas would start on whichever revision.
        let rolling = revision.previous.is_some() && {
            let seen = self.observe(&workload, revision.number);
            !starling_protocol::rollout::Progress::of(current, &seen).complete()
        };
        if rolling {
            return;
        }
        let Some(scaler) = self.scalers.get_mut(&workload) else {
            return;
        };
        if let Some(decision) = scaler.decide(now_ms, &policy, current) {
            self.actions.push_back(Action::Scale {
                workload,
                from: decision.from,
                to: decision.to,
                why: decision.why.clone(),
            });
        }
    }

    /// The scaling decisions this node took for `workload` while it held its lease, oldest
    /// first (for `describe`).
    pub fn scale_decisions(&self, workload: &WorkloadName) -> Vec<Decision> {
        self.scalers
            .get(workload)
            .map(|s| s.decisions().cloned().collect())
            .unwrap_or_default()
    }

    /// The average per-replica load the scaler of `workload` saw last, if this node scales it.
    pub fn scale_average(&self, workload: &WorkloadName, now_ms: u64) -> Option<u64> {
        let current = self.desired.get(workload)?.spec.replicas;
        let average = self.scalers.get(workload)?.average(now_ms, current)?;
        Some(average.value)
    }

    /// Whether this node scales `workload` now.
    pub fn scales(&self, workload: &WorkloadName) -> bool {
        self.scalers.contains_key(workload) && self.held.contains_key(workload)
    }
}
