//! Hybrid logical clocks: the order of every write in the fleet.
//!
//! A [`Timestamp`] is (physical milliseconds, logical counter, node id), compared in that order,
//! so any two writes are totally ordered and a node's own writes always move forward even when
//! its wall clock steps back. The wall clock comes in as an argument (`now_ms`); this module never
//! reads it. A remote timestamp further ahead of our clock than `max_drift_ms` is rejected, so one
//! node with a clock running fast cannot win every last-writer-wins register in the fleet.

use serde::{Deserialize, Serialize};

use crate::names::NodeId;

/// A point in hybrid logical time. Ordered by `physical_ms`, then `logical`, then `node`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp {
    /// Wall-clock milliseconds since the Unix epoch, as the writer saw them (or later).
    pub physical_ms: u64,
    /// Counter that orders events within one millisecond.
    pub logical: u32,
    /// The node that made the timestamp; breaks ties so no two writers ever collide.
    pub node: NodeId,
}

/// A remote timestamp was too far ahead of our clock to accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "clock drift: timestamp from node {node} is {ahead_ms} ms ahead of this node's clock \
     (max drift {max_drift_ms} ms); check NTP on both nodes"
)]
pub struct DriftError {
    /// The node whose timestamp was refused.
    pub node: NodeId,
    /// How far ahead of our clock it was.
    pub ahead_ms: u64,
    /// The configured tolerance.
    pub max_drift_ms: u64,
}

/// One node's hybrid logical clock.
///
/// Call [`Hlc::tick`] to stamp a local event and [`Hlc::update`] whenever a timestamp arrives
/// from a peer; both return a timestamp greater than every one this clock returned or accepted.
#[derive(Debug, Clone)]
pub struct Hlc {
    last: Timestamp,
    max_drift_ms: u64,
}

impl Hlc {
    /// A clock for `node` that accepts remote timestamps at most `max_drift_ms` ahead.
    pub fn new(node: NodeId, max_drift_ms: u64) -> Self {
        Hlc {
            last: Timestamp {
                physical_ms: 0,
                logical: 0,
                node,
            },
            max_drift_ms,
        }
    }

    /// A clock that resumes after `last` (e.g. the newest timestamp found in the store after a
    /// restart), so a clock that stepped back across a reboot still moves forward.
    pub fn resume(last: Timestamp, max_drift_ms: u64) -> Self {
        Hlc { last, max_drift_ms }
    }

    /// The newest timestamp this clock has produced or accepted.
    pub fn last(&self) -> &Timestamp {
        &self.last
    }

    /// Stamps a local event at wall time `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Timestamp {
        if now_ms > self.last.physical_ms {
            self.last.physical_ms = now_ms;
            self.last.logical = 0;
        } else {
            self.bump_logical();
        }
        self.last.clone()
    }

    /// Merges a timestamp received from a peer at wall time `now_ms`, and returns a timestamp
    /// for the receive event. A timestamp more than `max_drift_ms` ahead of `now_ms` is refused
    /// and leaves the clock unchanged.
    pub fn update(&mut self, remote: &Timestamp, now_ms: u64) -> Result<Timestamp, DriftError> {
        self.check(remote, now_ms)?;
        let physical_ms = now_ms.max(self.last.physical_ms).max(remote.physical_ms);
        let logical = if physical_ms == self.last.physical_ms && physical_ms == remote.physical_ms {
            self.last.logical.max(remote.logical)
        } else if physical_ms == self.last.physical_ms {
            self.last.logical
        } else if physical_ms == remote.physical_ms {
            remote.logical
        } else {
            self.last.physical_ms = physical_ms;
            self.last.logical = 0;
            return Ok(self.last.clone());
        };
        self.last.physical_ms = physical_ms;
        self.last.logical = logical;
        self.bump_logical();
        Ok(self.last.clone())
    }

    /// Checks a remote timestamp against the drift bound without changing the clock.
    pub fn check(&self, remote: &Timestamp, now_ms: u64) -> Result<(), DriftError> {
        let ahead_ms = remote.physical_ms.saturating_sub(now_ms);
        if ahead_ms > self.max_drift_ms {
            return Err(DriftError {
                node: remote.node.clone(),
                ahead_ms,
                max_drift_ms: self.max_drift_ms,
            });
        }
        Ok(())
    }

    /// The logical counter saturates by moving physical time one millisecond on, which keeps
    /// the order strict; it takes 2^32 events in one millisecond to get there.
    fn bump_logical(&mut self) {
        match self.last.logical.checked_add(1) {
            Some(l) => self.last.logical = l,
            None => {
                self.last.physical_ms += 1;
                self.last.logical = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn node(n: &str) -> NodeId {
        NodeId::new(n).expect("valid id")
    }

    #[test]
    fn tick_moves_forward_when_the_wall_clock_steps_back() {
        let mut clock = Hlc::new(node("a"), 1_000);
        let t1 = clock.tick(5_000);
        let t2 = clock.tick(4_000);
        let t3 = clock.tick(4_000);
        assert!(t1 < t2 && t2 < t3);
        assert_eq!(t3.physical_ms, 5_000);
        assert_eq!(t3.logical, 2);
    }

    #[test]
    fn update_rejects_a_peer_beyond_max_drift_and_keeps_the_clock() {
        let mut clock = Hlc::new(node("a"), 500);
        let before = clock.tick(10_000);
        let far = Timestamp {
            physical_ms: 10_501,
            logical: 0,
            node: node("b"),
        };
        let err = clock.update(&far, 10_000).expect_err("too far ahead");
        assert_eq!(err.ahead_ms, 501);
        assert!(err.to_string().contains("node b"));
        assert_eq!(clock.last(), &before);
        let near = Timestamp {
            physical_ms: 10_500,
            logical: 7,
            node: node("b"),
        };
        let after = clock.update(&near, 10_000).expect("within drift");
        assert!(after > near);
        assert_eq!((after.physical_ms, after.logical), (10_500, 8));
    }

    #[test]
    fn logical_overflow_moves_physical_time_on() {
        let last = Timestamp {
            physical_ms: 7,
            logical: u32::MAX,
            node: node("a"),
        };
        let mut clock = Hlc::resume(last.clone(), 0);
        let next = clock.tick(0);
        assert!(next > last);
        assert_eq!((next.physical_ms, next.logical), (8, 0));
    }

    proptest! {
        /// Whatever the wall clock and the peers do, a clock's outputs strictly increase and
        /// exceed every remote timestamp it accepted.
        #[test]
        fn outputs_strictly_increase(events in proptest::collection::vec((any::<bool>(), 0u64..10_000, 0u64..10_000, 0u32..5), 1..200)) {
            let mut clock = Hlc::new(node("a"), 2_000);
            let mut prev: Option<Timestamp> = None;
            for (is_remote, now, remote_ms, remote_logical) in events {
                let out = if is_remote {
                    let remote = Timestamp { physical_ms: remote_ms, logical: remote_logical, node: node("b") };
                    match clock.update(&remote, now) {
                        Ok(t) => { prop_assert!(t > remote); t }
                        Err(_) => { prop_assert!(remote_ms > now + 2_000); continue }
                    }
                } else {
                    clock.tick(now)
                };
                if let Some(p) = &prev { prop_assert!(out > *p); }
                prop_assert!(out.physical_ms >= now);
                prev = Some(out);
            }
        }
    }
}
