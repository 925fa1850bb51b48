//! Shedding tombstones without letting a deleted workload come back.
//!
//! A deleted workload stays as a tombstone so the delete wins over older writes wherever they
//! still linger. Kept forever, tombstones grow without bound under create/delete churn; dropped
//! carelessly, the old live entry on a node that was away comes back through anti-entropy
//! (every peer lacks the name, so every peer pulls it).
//!
//! The rule here is a **horizon**: a wall-clock time (ms) a state holds once it is complete
//! through it, meaning it has every surviving write made before it and no tombstone made
//! before it. From that:
//! - **Collect** ([`DesiredState::raise_horizon`]): tombstones written before the horizon go.
//!   A node moves its own horizon to `min(now, last time it was in sync with a peer) - grace`,
//!   so a node cut off from the fleet stops collecting (it may have missed writes) and the
//!   tombstone grace is the time every write has to reach every node.
//! - **Refuse** ([`DesiredState::below_horizon`]): an entry for a name this state lacks, written
//!   before its horizon, was deleted and collected here (or could not reach this node within
//!   the grace): it is refused, so a returning node cannot push it back.
//! - **Forget** ([`DesiredState::outdated_by`]): a node compares a peer's summary of the buckets
//!   that differ with its own entries there; an entry the peer lacks and that was written
//!   before the peer's horizon is gone from the fleet, and the node drops it. That is how a
//!   node that was away longer than the grace sheds what was deleted meanwhile, before it runs
//!   it again.
//! - **Adopt**: after a pull that brought everything a peer had, a node is as complete as that
//!   peer, so it takes the peer's horizon (the sync machine does this).
//!
//! The price, written down in docs/ARCHITECTURE.md: a write that cannot reach the rest of the
//! fleet within the grace (a partition or an absence longer than it) is dropped when the two
//! meet, on both sides; the grace defaults to 7 days.

use super::objects::object_bucket;
use super::{DesiredState, Key, SummaryItem, bucket_of};
use crate::hlc::Timestamp;
use crate::names::WorkloadName;
use crate::objects::ObjectKey;

/// A summary of the buckets that differ between two nodes, with the answering node's horizon:
/// what the asking node compares with its own entries (what to pull and what to forget).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// The buckets compared.
    pub buckets: Vec<u16>,
    /// Names, markers and hashes of the answering node's entries in them.
    pub items: Vec<SummaryItem>,
    /// The answering node's tombstone horizon, if it has one.
    pub horizon: Option<u64>,
}

impl DesiredState {
    /// The tombstone horizon: this state has every surviving write made before it and no
    /// tombstone made before it. `None` until it has collected or adopted one.
    pub fn horizon(&self) -> Option<u64> {
        self.horizon
    }

    /// Tombstones written before `before` (wall ms).
    pub fn tombstones_before(&self, before: u64) -> usize {
        let workloads = self
            .slots
            .values()
            .filter(|s| s.register.val.is_none() && s.register.marker.physical_ms < before)
            .count();
        let objects = self
            .objects
            .values()
            .filter(|s| s.register.val.is_none() && s.register.marker.physical_ms < before)
            .count();
        workloads + objects
    }

    /// Tombstones held, of workloads and objects.
    pub fn tombstone_count(&self) -> usize {
        self.tombstones_before(u64::MAX)
    }

    /// Moves the horizon to `horizon` (never back) and drops the tombstones written before it;
    /// returns how many went.
    pub fn raise_horizon(&mut self, horizon: u64) -> usize {
        let horizon = self.horizon.map_or(horizon, |h| h.max(horizon));
        self.horizon = Some(horizon);
        let expired: Vec<WorkloadName> = self
            .slots
            .iter()
            .filter(|(_, s)| s.register.val.is_none() && s.register.marker.physical_ms < horizon)
            .map(|(n, _)| n.clone())
            .collect();
        let expired_objects: Vec<ObjectKey> = self
            .objects
            .iter()
            .filter(|(_, s)| s.register.val.is_none() && s.register.marker.physical_ms < horizon)
            .map(|(k, _)| k.clone())
            .collect();
        let keys: Vec<Key> = expired
            .into_iter()
            .map(Key::Workload)
            .chain(expired_objects.into_iter().map(Key::Object))
            .collect();
        self.forget(&keys)
    }

    /// Drops tombstones written more than `grace_ms` before `now_ms` (the horizon moves to
    /// `now_ms - grace_ms`); returns how many. Only for a state known to be complete through
    /// that time: see the module docs.
    pub fn collect_tombstones(&mut self, now_ms: u64, grace_ms: u64) -> usize {
        self.raise_horizon(now_ms.saturating_sub(grace_ms))
    }

    /// Removes the entries of `keys` outright (no tombstone); returns how many were here.
    pub fn forget(&mut self, keys: &[Key]) -> usize {
        let mut gone = 0;
        for key in keys {
            match key {
                Key::Workload(name) => {
                    if let Some(slot) = self.slots.remove(name) {
                        self.buckets[bucket_of(name)] ^= slot.hash;
                        gone += 1;
                    }
                }
                Key::Object(key) => {
                    if let Some(slot) = self.objects.remove(key) {
                        self.buckets[object_bucket(key)] ^= slot.hash;
                        gone += 1;
                    }
                }
            }
        }
        gone
    }

    /// Whether an entry for `key` written at `marker` must be refused: this state lacks the
    /// name and the write is older than its horizon (deleted and collected here, or too late).
    pub fn below_horizon(&self, key: &Key, marker: &Timestamp) -> bool {
        let Some(horizon) = self.horizon else {
            return false;
        };
        let held = match key {
            Key::Workload(name) => self.slots.contains_key(name),
            Key::Object(key) => self.objects.contains_key(key),
        };
        !held && marker.physical_ms < horizon
    }

    /// This node's summary of `buckets` for a peer, with its horizon.
    pub fn summary_of(&self, buckets: &[usize]) -> Summary {
        Summary {
            buckets: buckets
                .iter()
                .filter_map(|b| u16::try_from(*b).ok())
                .collect(),
            items: self.summary(buckets),
            horizon: self.horizon,
        }
    }

    /// Of this state's entries in the peer's summarized buckets, those the peer lacks that
    /// were written before the peer's horizon: deleted and collected there (or too late to
    /// count), so this node forgets them.
    pub fn outdated_by(&self, peer: &Summary) -> Vec<Key> {
        let Some(horizon) = peer.horizon else {
            return Vec::new();
        };
        let buckets: std::collections::BTreeSet<usize> =
            peer.buckets.iter().map(|b| usize::from(*b)).collect();
        let theirs: std::collections::BTreeSet<&Key> = peer.items.iter().map(|i| &i.name).collect();
        let old = |marker: &Timestamp| marker.physical_ms < horizon;
        let workloads = self
            .slots
            .iter()
            .filter(|(n, s)| buckets.contains(&bucket_of(n)) && old(&s.register.marker))
            .map(|(n, _)| Key::Workload(n.clone()));
        let objects = self
            .objects
            .iter()
            .filter(|(k, s)| buckets.contains(&object_bucket(k)) && old(&s.register.marker))
            .map(|(k, _)| Key::Object(k.clone()));
        workloads
            .chain(objects)
            .filter(|k| !theirs.contains(k))
            .collect()
    }
}

#[cfg(test)]
mod tests;
