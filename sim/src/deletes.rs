//! Deletes and tombstone collection in the mesh model: `delete` and `spec-churn` faults, and
//! the checks that collection never brings a deleted workload back and that tombstones do not
//! pile up past the grace.

use starling_protocol::WorkloadName;
use starling_protocol::spec::WorkloadSpec;

use crate::host::Fleet;
use crate::world::World;

/// The spec of the `n`th workload of a `spec-churn` fault: one replica of a small command.
pub(crate) fn churn_spec(n: u32) -> Option<(WorkloadName, WorkloadSpec)> {
    let name = WorkloadName::new(format!("churn-{n}")).ok()?;
    let spec = WorkloadSpec::from_toml(&format!(
        "name = \"{name}\"\ncommand = \"churn\"\nreplicas = 1\n"
    ))
    .ok()?;
    Some((name, spec))
}

impl World<'_> {
    /// `starling delete NAME` at node `i`: a tombstone, stored, handed to the core and pushed.
    pub fn delete(&mut self, i: usize, name: WorkloadName) {
        if let Some(at) = self.write_register(i, name.clone(), None) {
            self.deleted.push((name, at));
        }
    }

    /// Tracks the largest desired state any up node holds (entries, tombstones included).
    pub(crate) fn sample_state_size(&mut self) {
        let largest = self
            .up()
            .map(|i| self.nodes[i].disk.desired.len() + self.nodes[i].disk.desired.object_count())
            .max()
            .unwrap_or(0) as u64;
        self.counters.desired_entries_max = self.counters.desired_entries_max.max(largest);
    }
}

/// A deleted workload that came back: a node holds a live write of it older than an
/// acknowledged delete (possible only if its tombstone was dropped and the old write merged
/// in again).
pub(crate) fn returned(world: &World) -> Option<String> {
    for (name, deleted_at) in &world.deleted {
        for i in world.up() {
            let node = &world.nodes[i];
            let Some(register) = node.disk.desired.register(name) else {
                continue;
            };
            if register.val.is_some() && register.marker < *deleted_at {
                return Some(format!(
                    "{name} was deleted at {} ms by {}, but {} holds its write of {} ms",
                    deleted_at.physical_ms,
                    deleted_at.node,
                    node.host.id,
                    register.marker.physical_ms
                ));
            }
        }
    }
    None
}

/// Tombstones an up node still holds past the grace and the time it has to collect them,
/// when the run was long enough for that to matter.
pub(crate) fn kept_past_grace(world: &World) -> Option<String> {
    let gossip = &world.scenario.gossip;
    let bound = gossip
        .tombstone_grace_ms
        .saturating_add(2 * gossip.collect_every_ms)
        .saturating_add(world.scenario.converge_within_ms);
    for i in world.up() {
        let node = &world.nodes[i];
        let now = world.node_now(i);
        let Some(before) = now.checked_sub(bound) else {
            continue;
        };
        let old = node.disk.desired.tombstones_before(before);
        if old > 0 {
            return Some(format!(
                "{} still holds {old} tombstones written before {before} ms (grace {} ms)",
                node.host.id, gossip.tombstone_grace_ms
            ));
        }
    }
    None
}
