//! Membership: who is alive, without a fast full-digest gossip.
//!
//! Each node is watched by `k` peers chosen by rendezvous hash ([`watchers_of`]), so every node
//! can compute who watches whom and the probing load per node stays `k` whatever the fleet size.
//! A watcher probes directly, asks a few helpers to probe indirectly before it suspects (so one
//! bad link does not make a suspect), and declares a node down only after it stayed unreachable
//! for `down_after_ms`. Verdicts are data ([`Verdict`]) that the shell gossips and pushes to the
//! nodes taking over; a node that learns it is suspected refutes it with a higher incarnation,
//! as in SWIM. See [`Detector`].

mod detector;
pub mod lives;
pub mod profile;

pub use detector::{Detector, DetectorConfig, Verdict};

use starling_protocol::NodeId;
use starling_protocol::hash::{hash64_parts, mix64};

/// The `k` watchers of `node` among `members`: the top `k` by a rendezvous hash of
/// (watcher, node). Stable: a member joining or leaving changes few watcher sets.
pub fn watchers_of<'a>(
    node: &NodeId,
    members: impl IntoIterator<Item = &'a NodeId>,
    k: usize,
) -> Vec<NodeId> {
    let target = hash64_parts(&[b"watch", node.as_str().as_bytes()]);
    let mut ranked: Vec<(u64, &NodeId)> = members
        .into_iter()
        .filter(|m| *m != node)
        .map(|m| (mix64(hash64_parts(&[m.as_str().as_bytes()]) ^ target), m))
        .collect();
    ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    ranked.into_iter().take(k).map(|(_, m)| m.clone()).collect()
}
