//! The invariants in the fast model: the same rules as the mesh model's checks, computed from
//! indexes kept as the run goes (who runs what), so a check costs the replicas it looks at,
//! not the fleet.

use starling_protocol::desired::DesiredState;
use starling_protocol::placement::{Liveness, ReplicaId};
use starling_protocol::spec::WorkloadSpec;

use crate::checks::{minority_replacement, record_sample};
use crate::host::Power;

use super::FastWorld;

/// Safety checks when node `i` starts `replica`.
pub(super) fn on_start(world: &mut FastWorld, i: usize, replica: &ReplicaId, spec: &WorkloadSpec) {
    if let Some((invariant, detail)) = start_violation(world, i, replica, spec) {
        world.checker.fail(invariant, detail);
    }
}

fn start_violation(
    world: &FastWorld,
    i: usize,
    replica: &ReplicaId,
    spec: &WorkloadSpec,
) -> Option<(&'static str, String)> {
    let node = &world.nodes[i].host;
    // (3) Capacity is never over-committed.
    if let Some(detail) = node.over_committed_by(replica, spec) {
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
                && matches!(other.host.power, Power::Up | Power::Paused { .. })
                && view
                    .nodes
                    .get(&other.host.id)
                    .is_some_and(|v| v.liveness == Liveness::Suspect)
        });
    if let Some(&y) = suspected_runner {
        let mut trusting = view.clone();
        for v in trusting.nodes.values_mut() {
            if v.liveness == Liveness::Suspect {
                v.liveness = Liveness::Alive;
            }
        }
        let planned = starling_core::node::compute_plan(&trusting, core.desired(), true);
        if planned.placed.get(replica) != Some(&node.id) {
            let detail = format!(
                "{} starts {}/{} while {} runs it and is only suspected",
                node.id, replica.workload, replica.index, world.nodes[y].host.id
            );
            return Some(("moved-on-suspicion", detail));
        }
    }
    // (6) A minority side starts no replacements.
    minority_replacement(node, &world.checker, replica, spec)
        .map(|detail| ("minority-replacement", detail))
}

/// Periodic sampling: duplicate-run time, the timeline, and the liveness deadline.
pub(super) fn sample(world: &mut FastWorld) {
    let running: usize = world.running.values().map(|on| on.len()).sum();
    let surplus: usize = world
        .running
        .values()
        .map(|on| on.len().saturating_sub(1))
        .sum();
    let desired = world
        .news
        .base_desired()
        .workloads()
        .map(|(_, r)| r.spec.replicas_to_place() as usize)
        .sum();
    let every_ms = world.sample_ms;
    record_sample(world, (running, surplus), desired, every_ms, converged);
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
        let up = matches!(node.host.power, Power::Up | Power::Paused { .. });
        let seen = view.nodes.get(&node.host.id).map(|v| v.liveness);
        let right = match seen {
            Some(Liveness::Alive) => up,
            Some(Liveness::Down) | None => !up,
            Some(Liveness::Suspect) => false,
        };
        if !right {
            return Err(format!("the fleet sees {} as {seen:?}", node.host.id));
        }
    }
    let desired = news.base_desired();
    let plan = starling_core::node::compute_plan(&view, &desired, true);
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
    let (nodes, news) = (&world.nodes, &mut world.news);
    world.checker.check_acknowledged_writes(|name, at| {
        let kept = |desired: &DesiredState| desired.register(name).is_some_and(|r| r.marker >= *at);
        kept(&news.base_desired())
            || nodes
                .iter()
                .any(|n| n.host.power != Power::Gone && kept(&news.desired(n.writes)))
    });
}
