//! How often the failure detectors doubt a node that is up and reachable: the cost of a
//! detector on a lossy link, where every doubt is false. Sampled with the timeline; only runs
//! with the watcher detector are measured (the heartbeat model has no probes to doubt).

use starling_protocol::placement::Liveness;

use crate::host::{Fleet, Power};
use crate::world::World;

/// Adds one sample period of every (observer, node) pair where the observer's detector holds
/// an up node, linked to it both ways, for suspect or down; tracks the longest such doubt.
pub(crate) fn sample(world: &mut World<'_>) {
    let period = world.scenario.gossip.interval_ms;
    let up: Vec<usize> = world.up().collect();
    for &i in &up {
        let now = world.node_now(i);
        for &m in up.iter().filter(|m| **m != i) {
            let linked = !world.blocked.contains(&(i, m)) && !world.blocked.contains(&(m, i));
            let judged = match (&world.nodes[i].detector, linked) {
                (Some(d), true) => d.liveness(&world.nodes[m].host.id, now),
                _ => Liveness::Alive,
            };
            if judged == Liveness::Alive {
                world.doubted_since.remove(&(i, m));
                continue;
            }
            let since = *world.doubted_since.entry((i, m)).or_insert(world.now);
            let c = &mut world.counters;
            c.doubt_ms += period;
            if judged == Liveness::Down {
                c.doubt_down_ms += period;
            }
            c.doubt_longest_ms = c.doubt_longest_ms.max(world.now - since + period);
        }
    }
    world
        .doubted_since
        .retain(|(i, m), _| world.nodes[*i].host.power == Power::Up && world.nodes[*m].host.power == Power::Up);
}
