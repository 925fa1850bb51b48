//! The scenario's faults in the fast model: crashes, restarts, disk loss, pauses, clock skew,
//! rolling reboots, churn and API writes (links need the mesh model; the scenario says so).

use std::collections::BTreeSet;

use crate::scenario::{FaultKind, Selector};
use crate::world::Power;

use super::FastWorld;

#[derive(Debug, Clone)]
pub(crate) enum Step {
    Fault(FaultKind),
    Join,
    Leave,
}

/// Expands timed faults into single steps (as the mesh model does).
pub(super) fn expand(world: &mut FastWorld) -> Vec<(u64, Step)> {
    let mut steps = Vec::new();
    for fault in &world.scenario.faults {
        let at = fault.at_ms;
        match &fault.kind {
            FaultKind::RollingReboot {
                nodes,
                downtime_ms,
                gap_ms,
            } => {
                let mut t = at;
                for i in resolve(world, nodes) {
                    let one = vec![world.nodes[i].id.to_string()];
                    steps.push((t, Step::Fault(FaultKind::Crash(one.clone()))));
                    steps.push((t + downtime_ms, Step::Fault(FaultKind::Restart(one))));
                    t += downtime_ms + gap_ms;
                }
            }
            FaultKind::Churn {
                per_minute,
                duration_ms,
            } => {
                let every = 60_000 / u64::from((*per_minute).max(1));
                let mut t = at;
                while t < at + duration_ms {
                    steps.push((t, Step::Leave));
                    steps.push((t + every / 2, Step::Join));
                    t += every;
                }
            }
            kind => steps.push((at, Step::Fault(kind.clone()))),
        }
    }
    steps.sort_by_key(|(t, _)| *t);
    steps
}

pub(super) fn last_end_ms(steps: &[(u64, Step)]) -> u64 {
    steps
        .iter()
        .map(|(at, step)| match step {
            Step::Fault(FaultKind::Pause { duration_ms, .. }) => at + duration_ms,
            _ => *at,
        })
        .max()
        .unwrap_or(0)
}

/// Resolves a selector as the mesh model does: ids, `all`, `site=X`, `holder:W`, `random:N`,
/// `random:P%` (drawn among up nodes).
fn resolve(world: &mut FastWorld, selector: &Selector) -> Vec<usize> {
    let mut out = BTreeSet::new();
    let present: Vec<usize> = (0..world.nodes.len())
        .filter(|i| world.nodes[*i].power != Power::Gone)
        .collect();
    for item in selector {
        if item == "all" {
            out.extend(present.iter().copied());
        } else if let Some(site) = item.strip_prefix("site=") {
            out.extend(present.iter().copied().filter(|i| {
                world.nodes[*i]
                    .labels
                    .get("site")
                    .is_some_and(|s| s == site)
            }));
        } else if let Some(name) = item.strip_prefix("holder:") {
            out.extend(present.iter().copied().filter(|i| {
                world.nodes[*i]
                    .instances
                    .keys()
                    .any(|r| r.workload.as_str() == name)
            }));
        } else if let Some(count) = item.strip_prefix("random:") {
            let n = match count.strip_suffix('%') {
                Some(p) => p
                    .parse::<usize>()
                    .map(|p| present.len() * p / 100)
                    .unwrap_or(0),
                None => count.parse::<usize>().unwrap_or(0),
            };
            let mut pool: Vec<usize> = present
                .iter()
                .copied()
                .filter(|i| world.nodes[*i].power == Power::Up)
                .collect();
            for _ in 0..n.min(pool.len()) {
                let k = world.rng.range(0, pool.len() as u64 - 1) as usize;
                out.insert(pool.swap_remove(k));
            }
        } else if let Some(i) = starling_protocol::NodeId::new(item.clone())
            .ok()
            .and_then(|id| world.index.get(&id).copied())
        {
            out.insert(i);
        } else {
            world.note(format!("selector {item:?} matches no node"));
        }
    }
    out.into_iter().collect()
}

pub(super) fn apply(world: &mut FastWorld, k: usize) {
    let step = world.steps[k].1.clone();
    world.note(format!("fault: {step:?}"));
    world.faults_at.push(world.now);
    match step {
        Step::Fault(FaultKind::Crash(s)) => {
            for i in resolve(world, &s) {
                if world.nodes[i].power != Power::Crashed {
                    world.crash(i);
                }
            }
        }
        Step::Fault(FaultKind::Restart(s)) => {
            for i in resolve(world, &s) {
                if world.nodes[i].power == Power::Crashed {
                    world.boot(i, true);
                }
            }
        }
        Step::Fault(FaultKind::DiskLoss(s)) => {
            for i in resolve(world, &s) {
                if world.nodes[i].power != Power::Crashed {
                    world.crash(i);
                }
                // A fresh disk: no assignment, no fleet, no desired state beyond what every
                // up node agreed on (it learns that from its first peer).
                let node = &mut world.nodes[i];
                node.assignment.clear();
                node.members = 0;
                node.writes = 0;
            }
        }
        Step::Fault(FaultKind::Skew { nodes, skew_ms }) => {
            for i in resolve(world, &nodes) {
                world.nodes[i].skew_ms += skew_ms;
            }
        }
        Step::Fault(FaultKind::Pause { nodes, duration_ms }) => {
            for i in resolve(world, &nodes) {
                if world.nodes[i].power == Power::Up {
                    let until_ms = world.now + duration_ms;
                    world.nodes[i].power = Power::Paused { until_ms };
                    world.silence(i);
                    world.schedule(until_ms, super::Ev::Resume(i));
                }
            }
        }
        Step::Fault(FaultKind::Write { node, spec }) => {
            let up = resolve(world, &node)
                .into_iter()
                .find(|i| world.nodes[*i].power == Power::Up);
            match up {
                Some(i) => world.write(i, *spec),
                None => world.note("write: no selected node is up; nothing written".into()),
            }
        }
        Step::Join => {
            // A new device joins through a random up member and starts from what it knows.
            let up: Vec<usize> = (0..world.nodes.len())
                .filter(|i| world.nodes[*i].power == Power::Up)
                .collect();
            let i = world.add_node();
            if !up.is_empty() {
                let seed = up[world.rng.range(0, up.len() as u64 - 1) as usize];
                world.nodes[i].members = world.nodes[seed].members;
                world.nodes[i].writes = world.nodes[seed].writes;
            }
            world.boot(i, true);
        }
        Step::Leave => {
            // The oldest present node leaves for good; its watchers declare it down.
            let leaving = (0..world.nodes.len()).find(|i| world.nodes[*i].power == Power::Up);
            if let Some(i) = leaving {
                world.crash(i);
                world.nodes[i].power = Power::Gone;
            }
        }
        // Links are the mesh model's (the scenario refuses them here); timed faults were
        // expanded into steps.
        Step::Fault(
            FaultKind::Partition(_)
            | FaultKind::Cut { .. }
            | FaultKind::Heal
            | FaultKind::Flap { .. }
            | FaultKind::RollingReboot { .. }
            | FaultKind::Churn { .. },
        ) => {}
    }
}
