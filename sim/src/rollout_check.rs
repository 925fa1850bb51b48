//! (12) The rollout budget: while the fleet is quiet (every up node sees every up node alive
//! and every other node down, and they agree on the workload's revision), a rollout never
//! takes a workload below `replicas - max_unavailable` serving replicas and never runs more
//! than `max_surge` old instances beside new ones (start-first). Counted from the simulated
//! runtimes, not from what the cores believe.
//!
//! A workload is checked only once it has been seen with every replica serving in a quiet
//! moment (armed); any noise (a crash not yet detected, a partition, a scale, a revision not
//! yet everywhere) disarms it until it is whole again, so a failure's own unavailability is
//! never blamed on the rollout.

use std::collections::{BTreeMap, BTreeSet};

use starling_protocol::WorkloadName;
use starling_protocol::placement::Liveness;

use crate::host::Power;
use crate::world::World;

/// Which workloads are armed, with the replica count and revision they were armed at.
#[derive(Debug, Default)]
pub(crate) struct RolloutLog {
    armed: BTreeMap<WorkloadName, u32>,
    /// Most old instances seen beside new ones at once, for the report.
    pub peak_surge: usize,
}

pub(crate) fn sample(world: &mut World) {
    if !quiet(world) {
        world.rollouts.armed.clear();
        return;
    }
    let up: Vec<usize> = world.up().collect();
    let Some(&first) = up.first() else {
        return;
    };
    let Some(desired) = world.nodes[first]
        .host
        .core
        .as_ref()
        .map(|c| c.desired().clone())
    else {
        return;
    };
    for (name, revision) in desired.workloads() {
        let spec = &revision.spec;
        if spec.singleton {
            continue;
        }
        let agreed = up.iter().all(|&i| {
            world.nodes[i]
                .host
                .core
                .as_ref()
                .and_then(|c| c.desired().get(name))
                .is_some_and(|r| r.number == revision.number && r.spec.replicas == spec.replicas)
        });
        if !agreed {
            world.rollouts.armed.remove(name);
            continue;
        }
        let mut serving = BTreeSet::new();
        let mut surge = 0;
        for &i in &up {
            let host = &world.nodes[i].host;
            for (r, x) in host.instances.iter().filter(|(r, _)| &r.workload == name) {
                if x.running && r.index < spec.replicas {
                    serving.insert(r.index);
                }
            }
            for (r, x) in host.outgoing.iter().filter(|(r, _)| &r.workload == name) {
                if x.running {
                    surge += 1;
                    if r.index < spec.replicas {
                        serving.insert(r.index);
                    }
                }
            }
        }
        world.rollouts.peak_surge = world.rollouts.peak_surge.max(surge);
        let armed = world.rollouts.armed.get(name) == Some(&spec.replicas);
        if !armed {
            if serving.len() as u32 >= spec.replicas {
                world.rollouts.armed.insert(name.clone(), spec.replicas);
            }
            continue;
        }
        let floor = spec.replicas.saturating_sub(spec.update.max_unavailable) as usize;
        if serving.len() < floor {
            let detail = format!(
                "{name} revision {}: {} of {} replicas serving, below replicas - max_unavailable = {floor}",
                revision.number,
                serving.len(),
                spec.replicas
            );
            world.checker.fail("rollout-budget", detail);
            return;
        }
        if surge > spec.update.max_surge as usize {
            let detail = format!(
                "{name} revision {}: {surge} old instances run beside new ones, above max_surge = {}",
                revision.number, spec.update.max_surge
            );
            world.checker.fail("rollout-budget", detail);
            return;
        }
    }
}

/// Every up node's core runs, and its view has every up node alive and every other one down.
fn quiet(world: &World) -> bool {
    let up: BTreeSet<usize> = world.up().collect();
    if up.len() != world.nodes.len()
        && world
            .nodes
            .iter()
            .any(|n| matches!(n.host.power, Power::AgentDown | Power::Paused { .. }))
    {
        return false;
    }
    up.iter().all(|&i| {
        let node = &world.nodes[i];
        node.host.core.is_some()
            && world.nodes.iter().enumerate().all(|(j, other)| {
                let seen = node.view.nodes.get(&other.host.id).map(|v| v.liveness);
                if up.contains(&j) {
                    seen == Some(Liveness::Alive)
                } else {
                    seen.is_none() || seen == Some(Liveness::Down)
                }
            })
    })
}
