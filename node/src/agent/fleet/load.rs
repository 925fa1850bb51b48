//! The load of autoscaled replicas in gossip (key `load`): this node's, published when it
//! moved and at most every
//! [`GossipTimings::load_publish_interval_min`](super::GossipTimings::load_publish_interval_min),
//! and every peer's as last read. A node running no autoscaled replica never sets the key, so
//! a fleet without `[scaling]` pays no byte for it; one whose last such replica went deletes
//! it.

use starling_protocol::gossip::Load;
use starling_protocol::placement::ReplicaId;

use super::*;

/// What to do with the `load` key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Set(String),
    Delete,
}

/// The change to make when `load` (rounded) is measured at `now`, `last` having been
/// published at `last_at`; `None` when it did not move or moved too recently.
fn change(
    load: &Load,
    last: &Load,
    last_at: u64,
    now: u64,
    interval_min_ms: u64,
) -> Option<Change> {
    if load == last {
        return None;
    }
    // The first value goes at once: a scaler waiting on it should not wait an interval more.
    if !last.0.is_empty() && now < last_at.saturating_add(interval_min_ms) {
        return None;
    }
    if load.0.is_empty() {
        return Some(Change::Delete);
    }
    Some(Change::Set(keys::encode(load)))
}

impl Fleet {
    /// Publishes the load of this node's autoscaled replicas, rounded to two significant
    /// digits, when it moved (see the module doc for how often and when the key goes).
    pub async fn publish_load(&mut self, now: u64, load: Load) {
        let rounded = load.rounded();
        let (last, last_at) = &self.published_load;
        let interval_min_ms = self.timing.load_publish_interval_min.as_millis() as u64;
        let Some(change) = change(&rounded, last, *last_at, now, interval_min_ms) else {
            return;
        };
        {
            let mut chitchat = self.chitchat.lock().await;
            let state = chitchat.self_node_state();
            match change {
                Change::Set(text) => state.set(keys::LOAD, text),
                Change::Delete => state.delete(keys::LOAD),
            }
        }
        self.published_load = (rounded, now);
    }

    /// The load of autoscaled replicas on every node that is not down: peers' as last
    /// gossiped, this node's as last published. Values are in each workload's scaling unit
    /// (percent of the CPU request, or the custom metric), rounded to two significant digits.
    pub fn loads(&self, now: u64) -> BTreeMap<NodeId, BTreeMap<ReplicaId, u64>> {
        let mut out = BTreeMap::new();
        let mine = &self.published_load.0;
        if !mine.0.is_empty() {
            out.insert(self.me.clone(), by_replica(mine));
        }
        for (node, peer) in &self.peers {
            if peer.load.0.is_empty() || self.detector.liveness(node, now) == Liveness::Down {
                continue;
            }
            out.insert(node.clone(), by_replica(&peer.load));
        }
        out
    }
}

/// A load as one value per replica.
pub(in crate::agent) fn by_replica(load: &Load) -> BTreeMap<ReplicaId, u64> {
    load.0
        .iter()
        .flat_map(|(workload, values)| {
            values.iter().map(|(index, value)| {
                let replica = ReplicaId {
                    workload: workload.clone(),
                    index: *index,
                };
                (replica, *value)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use starling_protocol::WorkloadName;

    use super::*;

    fn load(values: &[(u32, u64)]) -> Load {
        let web = WorkloadName::new("web").expect("name");
        Load([(web, values.iter().copied().collect())].into())
    }

    #[test]
    fn nothing_is_published_without_autoscaled_replicas_and_changes_are_paced() {
        let none = Load::default();
        assert_eq!(change(&none, &none, 0, 1_000, 5_000), None, "idle: no key");
        let first = load(&[(0, 140)]);
        assert!(matches!(
            change(&first, &none, 0, 1_000, 5_000),
            Some(Change::Set(_))
        ));
        assert_eq!(
            change(&first, &first, 1_000, 60_000, 5_000),
            None,
            "unchanged"
        );
        let next = load(&[(0, 150)]);
        assert_eq!(change(&next, &first, 1_000, 3_000, 5_000), None, "too soon");
        assert!(matches!(
            change(&next, &first, 1_000, 6_000, 5_000),
            Some(Change::Set(_))
        ));
        assert_eq!(
            change(&none, &next, 6_000, 12_000, 5_000),
            Some(Change::Delete)
        );
    }

    #[test]
    fn a_load_reads_as_one_value_per_replica() {
        let values = by_replica(&load(&[(0, 140), (2, 71)]));
        let indices: Vec<(u32, u64)> = values.iter().map(|(r, v)| (r.index, *v)).collect();
        assert_eq!(indices, [(0, 140), (2, 71)]);
    }

    /// The gossip bytes a node pays for the key: none at idle; for three replicas of one
    /// workload, the value is a few dozen bytes of base64 (printed for BENCHMARKS).
    #[test]
    fn the_load_value_is_small() {
        let three = keys::encode(&load(&[(0, 140), (1, 71), (2, 93)]).rounded());
        let bytes = keys::LOAD.len() + three.len();
        println!("load key + value for 3 replicas of `web`: {bytes} bytes");
        assert!(bytes <= 40, "{bytes}: {three}");
    }
}
