//! Shedding tombstones (not called by any node yet: see DESIGN.md, "Tombstones and long
//! absences", and the edge-network issue that turns it on with its resync rule).

use super::objects::object_bucket;
use super::{DesiredState, bucket_of};
use crate::names::WorkloadName;
use crate::objects::ObjectKey;

impl DesiredState {
    /// Drops tombstones written more than `grace_ms` before `now_ms`; returns how many.
    ///
    /// After this, an old write of the same name that arrives from a node that was away longer
    /// than the grace period would resurrect the workload: such a node must discard its copy and
    /// resync before it merges (see DESIGN.md, "Tombstones and long absences").
    pub fn collect_tombstones(&mut self, now_ms: u64, grace_ms: u64) -> usize {
        let expired: Vec<WorkloadName> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                s.register.val.is_none()
                    && s.register.marker.physical_ms.saturating_add(grace_ms) <= now_ms
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in &expired {
            if let Some(slot) = self.slots.remove(name) {
                self.buckets[bucket_of(name)] ^= slot.hash;
            }
        }
        let expired_objects: Vec<ObjectKey> = self
            .objects
            .iter()
            .filter(|(_, s)| {
                s.register.val.is_none()
                    && s.register.marker.physical_ms.saturating_add(grace_ms) <= now_ms
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in &expired_objects {
            if let Some(slot) = self.objects.remove(key) {
                self.buckets[object_bucket(key)] ^= slot.hash;
            }
        }
        expired.len() + expired_objects.len()
    }
}
