//! The scenario's faults in the fast model: crashes, restarts, disk loss, pauses, clock skew,
//! rolling reboots, churn and API writes (links need the mesh model; the scenario says so).

use crate::faults::{Step, resolve, writer};
use crate::host::{Fleet, Power};
use crate::scenario::FaultKind;

use super::FastWorld;

pub(super) fn apply(world: &mut FastWorld, k: usize) {
    let step = world.steps[k].1.clone();
    world.note(format!("fault: {step:?}"));
    world.checker.fault_seen(world.now);
    match step {
        Step::Fault(FaultKind::Crash(s)) => {
            for i in resolve(world, &s) {
                if world.nodes[i].host.power != Power::Crashed {
                    world.crash(i);
                }
            }
        }
        Step::Fault(FaultKind::Restart(s)) => {
            for i in resolve(world, &s) {
                if world.nodes[i].host.power == Power::Crashed {
                    world.boot(i, true);
                }
            }
        }
        Step::Fault(FaultKind::DiskLoss(s)) => {
            for i in resolve(world, &s) {
                if world.nodes[i].host.power != Power::Crashed {
                    world.crash(i);
                }
                // A fresh disk: no assignment, no fleet, no desired state beyond what every
                // up node agreed on (it learns that from its first peer).
                let node = &mut world.nodes[i];
                node.host.assignment.clear();
                node.members = 0;
                node.writes = 0;
            }
        }
        Step::Fault(FaultKind::Skew { nodes, skew_ms }) => {
            for i in resolve(world, &nodes) {
                world.nodes[i].host.skew_ms += skew_ms;
            }
        }
        Step::Fault(FaultKind::Pause { nodes, duration_ms }) => {
            for i in resolve(world, &nodes) {
                if world.nodes[i].host.power == Power::Up {
                    let until_ms = world.now + duration_ms;
                    world.nodes[i].host.power = Power::Paused { until_ms };
                    world.silence(i);
                    world.schedule(until_ms, super::Ev::Resume(i));
                }
            }
        }
        Step::Fault(FaultKind::Write { node, spec }) => {
            if let Some(i) = writer(world, &node) {
                world.write(i, *spec);
            }
        }
        // Refused for this model when the scenario is read (`fast_model_supports`).
        Step::Fault(
            FaultKind::WriteSecret { .. } | FaultKind::Delete { .. } | FaultKind::SpecChurn { .. },
        ) => {}
        Step::Join => {
            // A new device joins through a random up member and starts from what it knows.
            let up: Vec<usize> = (0..world.nodes.len())
                .filter(|i| world.nodes[*i].host.power == Power::Up)
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
            let leaving = (0..world.nodes.len()).find(|i| world.nodes[*i].host.power == Power::Up);
            if let Some(i) = leaving {
                world.crash(i);
                world.nodes[i].host.power = Power::Gone;
            }
        }
        // Links are the mesh model's (the scenario refuses them here); timed faults were
        // expanded into steps.
        Step::Fault(
            FaultKind::Partition(_)
            | FaultKind::Cut { .. }
            | FaultKind::Heal
            | FaultKind::Flap { .. }
            | FaultKind::AgentRestart { .. }
            | FaultKind::RollingReboot { .. }
            | FaultKind::Churn { .. },
        ) => {}
    }
}
