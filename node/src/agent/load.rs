//! The load of this node's autoscaled replicas (workloads with `[scaling]`), measured at every
//! usage tick and gossiped under `load`, and the fleet's loads for whoever runs a workload's
//! scaler (`starling_core::scale`).
//!
//! A replica's value is in its policy's unit: for `cpu`, the CPU it used over the last
//! interval as a percent of its `cpu_request` (`runtime::usage`, its own cgroup, process group
//! or container, never the host's); for a custom metric, the value it last reported to this
//! agent (`report`), while fresh. A replica with no value yet is left out, not sent as zero.
//! CPU is read by a task of its own, so a slow container engine never holds the agent loop:
//! the loop hands it the replicas to measure and takes the latest result.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use starling_protocol::NodeId;
use starling_protocol::WorkloadName;
use starling_protocol::gossip::Load;
use starling_protocol::placement::ReplicaId;
use starling_protocol::quantity::Millicores;
use starling_protocol::spec::ScalingMetric;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::About;
use super::Agent;
use crate::runtime::Runtimes;
use crate::runtime::usage::{self, CpuMeter};
use starling_protocol::events::EventKind;

/// This node's load, and the task that measures CPU.
#[derive(Default)]
pub(super) struct LoadState {
    /// Started at the first tick with a CPU-scaled replica.
    sampler: Option<CpuSampler>,
    /// This node's load as measured at the last tick (unrounded).
    latest: Load,
}

/// Measures the CPU of the replicas it is handed, every interval, on its own task.
struct CpuSampler {
    targets: watch::Sender<Vec<ReplicaId>>,
    used: watch::Receiver<BTreeMap<ReplicaId, Millicores>>,
    task: JoinHandle<()>,
}

impl CpuSampler {
    fn start(runtime: Arc<Runtimes>, interval: Duration) -> Self {
        let (targets, mut wanted) = watch::channel(Vec::new());
        let (report, used) = watch::channel(BTreeMap::new());
        let task = tokio::spawn(async move {
            let mut meter = CpuMeter::default();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // The agent dropped its side: it is stopping.
                if wanted.has_changed().is_err() {
                    return;
                }
                let replicas = wanted.borrow_and_update().clone();
                let meters = usage::meters(&runtime, &replicas);
                report.send_replace(meter.measure(meters).await);
            }
        });
        CpuSampler {
            targets,
            used,
            task,
        }
    }
}

impl Drop for CpuSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// CPU used as a percent of the request; none without a request (no yardstick).
fn percent_of_request(used: Millicores, request: Millicores) -> Option<u64> {
    (request.0 > 0)
        .then(|| (u64::from(used.0) * 100 + u64::from(request.0) / 2) / u64::from(request.0))
}

impl Agent {
    /// At each usage tick: tells the report door which replicas run here, measures the load
    /// of the autoscaled ones and publishes it (gossip paces and rounds it).
    pub(super) async fn sample_load(&mut self, now: u64) {
        let running: BTreeSet<ReplicaId> =
            self.core.instances().into_iter().map(|(r, _)| r).collect();
        let max_age_ms = self.config.host.report_max_age.as_millis() as u64;
        self.reports.prune(now, max_age_ms);
        self.reports.set_running(running.clone());
        let used = match &self.load.sampler {
            Some(sampler) => sampler.used.borrow().clone(),
            None => BTreeMap::new(),
        };
        let mut cpu_scaled = Vec::new();
        let mut load = Load::default();
        for replica in running {
            let Some(revision) = self.core.desired().get(&replica.workload) else {
                continue;
            };
            let Some(policy) = &revision.spec.scaling else {
                continue;
            };
            let value = match &policy.metric {
                ScalingMetric::Cpu => {
                    let request = revision.spec.resources.cpu_request;
                    let value = used
                        .get(&replica)
                        .and_then(|u| percent_of_request(*u, request));
                    cpu_scaled.push(replica.clone());
                    value
                }
                ScalingMetric::Custom(name) => self.reports.value(&replica, name, now, max_age_ms),
            };
            if let Some(value) = value {
                let values = load.0.entry(replica.workload).or_default();
                values.insert(replica.index, value);
            }
        }
        self.hand_cpu_targets(cpu_scaled);
        self.load.latest = load.clone();
        if let Some(fleet) = self.fleet.as_mut() {
            fleet.publish_load(now, load).await;
        }
    }

    /// Gives the CPU sampler its replicas; starts it for the first ones, stops it after the
    /// last (a node without CPU-scaled replicas runs no sampler).
    fn hand_cpu_targets(&mut self, replicas: Vec<ReplicaId>) {
        if replicas.is_empty() {
            self.load.sampler = None;
            return;
        }
        let interval = self.config.host.usage_sample_interval;
        let runtime = self.runtime.clone();
        let sampler = self
            .load
            .sampler
            .get_or_insert_with(|| CpuSampler::start(runtime, interval));
        sampler.targets.send_if_modified(|wanted| {
            let changed = *wanted != replicas;
            *wanted = replicas;
            changed
        });
    }

    /// `STARLING_METRICS_URL` for a replica's environment, when this agent serves the
    /// report door (`report`).
    pub(super) fn report_env(&self) -> Option<(String, String)> {
        let url = self.report_url.clone()?;
        Some(("STARLING_METRICS_URL".to_string(), url))
    }

    /// The load of autoscaled replicas on every node that is not down: this node's as
    /// measured at the last tick, peers' as last gossiped (rounded to two significant
    /// digits). Values are in each workload's scaling unit.
    pub(crate) fn loads(&self, now: u64) -> BTreeMap<NodeId, BTreeMap<ReplicaId, u64>> {
        let mut out = self
            .fleet
            .as_ref()
            .map(|f| f.loads(now))
            .unwrap_or_default();
        out.remove(&self.node);
        if !self.load.latest.0.is_empty() {
            out.insert(
                self.node.clone(),
                super::fleet::by_replica(&self.load.latest),
            );
        }
        out
    }

    /// One workload's load fleet-wide by replica index, what its scaler observes
    /// (`starling_core::scale::Scaler::observe`). A replica reported by two nodes (a
    /// handover under way) counts at its higher value.
    pub(crate) fn load_of(&self, now: u64, workload: &WorkloadName) -> BTreeMap<u32, u64> {
        let mut out: BTreeMap<u32, u64> = BTreeMap::new();
        for values in self.loads(now).into_values() {
            for (replica, value) in values {
                if replica.workload == *workload {
                    let kept = out.entry(replica.index).or_insert(value);
                    *kept = (*kept).max(value);
                }
            }
        }
        out
    }
}

impl Agent {
    /// Hands every autoscaled workload's fleet-wide load to the core, whose scaler acts only
    /// where the workload's lease is held.
    pub(super) fn feed_scalers(&mut self, now: u64) {
        let scaled: Vec<WorkloadName> = self
            .core
            .desired()
            .workloads()
            .filter(|(_, r)| r.spec.scaling.is_some() && !r.spec.singleton)
            .map(|(name, _)| name.clone())
            .collect();
        for workload in scaled {
            let values = self.load_of(now, &workload);
            self.decide(|core| core.handle_load(now, workload, values));
        }
    }

    /// Writes the replica count the autoscaler decided, unless the count changed since
    /// (an operator's scale, or a new revision with another count, wins).
    pub(super) fn autoscale(&mut self, workload: WorkloadName, from: u32, to: u32, why: String) {
        let Some(current) = self.core.desired().get(&workload).cloned() else {
            return;
        };
        if current.spec.replicas != from {
            return;
        }
        let mut spec = current.spec.clone();
        spec.replicas = to;
        if let Err(e) = spec.check() {
            tracing::warn!("autoscaler's count for {workload} refused: {e}");
            return;
        }
        self.note(
            EventKind::Scaled,
            About::Workload(&workload),
            format!("autoscaling {workload}: {why}"),
        );
        let by = format!("{} (autoscaler)", self.node);
        let outcome = self.write(workload, Some(current.next(spec)), &by);
        // Nobody waits for this answer; the push still goes to every live peer.
        let (reply, _) = tokio::sync::oneshot::channel();
        self.answer(outcome, reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_a_rounded_percent_of_the_request_and_none_without_one() {
        assert_eq!(
            percent_of_request(Millicores(142), Millicores(100)),
            Some(142)
        );
        assert_eq!(
            percent_of_request(Millicores(333), Millicores(500)),
            Some(67)
        );
        assert_eq!(percent_of_request(Millicores(0), Millicores(250)), Some(0));
        assert_eq!(percent_of_request(Millicores(900), Millicores(0)), None);
    }
}
