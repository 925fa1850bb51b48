//! The invariants in the fast model: the same rules as the mesh model's checks, computed from
//! indexes kept as the run goes (who runs what), so a check costs the replicas it looks at,
//! not the fleet.

use starling_protocol::placement::{Liveness, ReplicaId};
use starling_protocol::spec::{PartitionPolicy, WorkloadSpec};

use crate::checks::Sample;
use crate::world::Power;

use super::FastWorld;

/// Safety checks when node `i` starts `replica`.
pub(super) fn on_start(world: &mut FastWorld, i: usize, replica: &ReplicaId, spec: &WorkloadSpec) {
    if let Some((invariant, detail)) = start_violation(world, i, replica, spec) {
        world.fail(invariant, detail);
    }
}

fn start_violation(
    world: &FastWorld,
    i: usize,
    replica: &ReplicaId,
    spec: &WorkloadSpec,
) -> Option<(&'static str, String)> {
    let node = &world.nodes[i];
    // (3) Capacity is never over-committed.
    let mut cpu = u64::from(spec.resources.cpu_request.0);
    let mut memory = spec.resources.memory_request.0;
    for x in node.instances.values() {
        cpu += x.cpu;
        memory += x.memory;
    }
    if cpu > u64::from(node.capacity.cpu.0) || memory > node.capacity.memory.0 {
        let detail = format!(
            "{} starts {}/{} with {cpu}m cpu and {memory} bytes reserved, over its capacity",
            node.id, replica.workload, replica.index
        );
        return Some(("capacity-over-committed", detail));
    }
    // (5) No replica moves while its node is only suspected: a start next to a suspected
    // runner is a move on suspicion unless placement gives the replica to the starter with
    // every suspect counted alive (then it is a planned make-before-break move).
    let core = node.core.as_ref()?;
    let view = core.view();
    let suspected_runner = world
        .running
        .get(replica)
        .into_iter()
        .flatten()
        .find(|&&y| {
            let other = &world.nodes[y];
            y != i
                && matches!(other.power, Power::Up | Power::Paused { .. })
                && view
                    .nodes
                    .get(&other.id)
                    .is_some_and(|v| v.liveness == Liveness::Suspect)
        });
    if let Some(&y) = suspected_runner {
        let mut trusting = view.clone();
        for v in trusting.nodes.values_mut() {
            if v.liveness == Liveness::Suspect {
                v.liveness = Liveness::Alive;
            }
        }
        let planned = starling_core::node::compute_plan(&trusting, core.desired(), true, false);
        if planned.placed.get(replica) != Some(&node.id) {
            let detail = format!(
                "{} starts {}/{} while {} runs it and is only suspected",
                node.id, replica.workload, replica.index, world.nodes[y].id
            );
            return Some(("moved-on-suspicion", detail));
        }
    }
    // (6) A minority side starts no replacements.
    if !core.has_majority()
        && spec.partition == PartitionPolicy::Consistency
        && !node
            .minority_baseline
            .as_ref()
            .is_some_and(|b| b.contains(replica))
        && world.ever_started.contains(replica)
    {
        let detail = format!(
            "{} sees no majority but starts {}/{}, which it did not run before",
            node.id, replica.workload, replica.index
        );
        return Some(("minority-replacement", detail));
    }
    None
}

/// Periodic sampling: duplicate-run time, the timeline, and the liveness deadline.
pub(super) fn sample(world: &mut FastWorld) {
    let running: usize = world.running.values().map(|on| on.len()).sum();
    let surplus: usize = world
        .running
        .values()
        .map(|on| on.len().saturating_sub(1))
        .sum();
    world.counters.duplicate_run_ms += surplus as u64 * world.sample_ms;
    let desired = world
        .news
        .base_desired()
        .workloads()
        .map(|(_, r)| r.spec.replicas_to_place() as usize)
        .sum();
    let node_states = world
        .nodes
        .iter()
        .map(|n| Sample::node_state(n.power, n.core.as_ref()))
        .collect();
    world.samples.push(Sample {
        at_ms: world.now,
        running,
        desired,
        surplus,
        node_states,
    });
    if world.now <= world.last_fault_end_ms || world.converged_at_ms.is_some() {
        return;
    }
    match converged(world) {
        Ok(()) => world.converged_at_ms = Some(world.now),
        Err(why) if world.now > world.last_fault_end_ms + world.scenario.converge_within_ms => {
            let detail = format!(
                "not converged {} ms after the last fault: {why}",
                world.scenario.converge_within_ms
            );
            world.fail("no-convergence", detail);
        }
        Err(_) => {}
    }
}

/// (2) Every membership verdict and write has reached every up node, the agreed membership is
/// the truth, and every placeable replica runs exactly once (nothing else runs).
fn converged(world: &FastWorld) -> Result<(), String> {
    let news = &world.news;
    if news.member_base() < news.members.len() as u32 {
        return Err("a membership verdict has not reached every up node".into());
    }
    if news.write_base() < news.writes.len() as u32 {
        return Err("a write has not reached every up node".into());
    }
    let view = news.base_view();
    for node in &world.nodes {
        let up = matches!(node.power, Power::Up | Power::Paused { .. });
        let seen = view.nodes.get(&node.id).map(|v| v.liveness);
        let right = match seen {
            Some(Liveness::Alive) => up,
            Some(Liveness::Down) | None => !up,
            Some(Liveness::Suspect) => false,
        };
        if !right {
            return Err(format!("the fleet sees {} as {seen:?}", node.id));
        }
    }
    let desired = news.base_desired();
    let plan = starling_core::node::compute_plan(&view, &desired, true, false);
    for r in plan.placed.keys() {
        let n = world.running.get(r).map_or(0, |on| on.len());
        if n != 1 {
            return Err(format!(
                "{}/{} runs {n} times (expected 1)",
                r.workload, r.index
            ));
        }
    }
    if let Some(r) = world.running.keys().find(|r| !plan.placed.contains_key(*r)) {
        return Err(format!(
            "{}/{} runs but is not desired",
            r.workload, r.index
        ));
    }
    Ok(())
}

/// (1) No acknowledged write is lost: each is in the agreed desired state or on some disk.
pub(super) fn final_checks(world: &mut FastWorld) {
    let acked = world.acked.clone();
    for (name, at) in acked {
        let in_base = world
            .news
            .base_desired()
            .register(&name)
            .is_some_and(|r| r.marker >= at);
        let on_a_disk = in_base
            || (0..world.nodes.len()).any(|i| {
                world.nodes[i].power != Power::Gone && {
                    let writes = world.nodes[i].writes;
                    world
                        .news
                        .desired(writes)
                        .register(&name)
                        .is_some_and(|r| r.marker >= at)
                }
            });
        if !on_a_disk {
            let detail = format!(
                "the write of {name} at {}ms by {} is on no disk",
                at.physical_ms, at.node
            );
            world.fail("acknowledged-write-lost", detail);
            return;
        }
    }
}
