//! Lease records and their merge rule: the data under leader election.
//!
//! A [`Lease`] says that `holder` holds `name` for `duration_ms` from `granted_at`, in election
//! round `epoch`, with a `fencing_token` that storage can use to refuse a stale holder. Lease
//! tables merge entry-wise by a total order on records: the higher epoch wins; within an epoch
//! the later grant (a renewal) wins; then the holder id breaks ties deterministically. Because
//! the order is total over every field, merge is a join (commutative, associative, idempotent).
//! The election protocol that decides who may write a new epoch lives in the node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hlc::Timestamp;
use crate::names::{NodeId, WorkloadName};

/// Leases are named like workloads (a singleton's lease has its workload's name).
pub type LeaseName = WorkloadName;

/// One grant of a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The lease.
    pub name: LeaseName,
    /// The node holding it.
    pub holder: NodeId,
    /// Election round; grows by one with each new holder.
    pub epoch: u64,
    /// When it was granted or last renewed.
    pub granted_at: Timestamp,
    /// How long it lasts from `granted_at`.
    pub duration_ms: u64,
    /// Strictly increasing per lease across holders; given to the active workload.
    pub fencing_token: u64,
}

impl Lease {
    /// The first grant of a lease.
    pub fn first(name: LeaseName, holder: NodeId, granted_at: Timestamp, duration_ms: u64) -> Self {
        Lease {
            name,
            holder,
            epoch: 1,
            granted_at,
            duration_ms,
            fencing_token: 1,
        }
    }

    /// The grant of the next epoch to `holder`; its fencing token is larger than this one's.
    pub fn successor(&self, holder: NodeId, granted_at: Timestamp, duration_ms: u64) -> Self {
        Lease {
            name: self.name.clone(),
            holder,
            epoch: self.epoch + 1,
            granted_at,
            duration_ms,
            fencing_token: self.fencing_token + 1,
        }
    }

    /// The same grant renewed at `granted_at` (same epoch, same token).
    pub fn renewed(&self, granted_at: Timestamp) -> Self {
        Lease {
            granted_at,
            ..self.clone()
        }
    }

    /// Wall-clock millisecond at which the lease lapses.
    pub fn expires_at_ms(&self) -> u64 {
        self.granted_at.physical_ms.saturating_add(self.duration_ms)
    }

    /// Whether an observer whose clock reads `now_ms` sees the lease as held.
    pub fn is_held_at(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms()
    }

    /// Until when the holder itself may act: the lease's end minus `max_drift_ms`, so the holder
    /// stops before any node whose clock runs up to `max_drift_ms` ahead sees the lease lapse.
    pub fn holder_may_act_until_ms(&self, max_drift_ms: u64) -> u64 {
        self.expires_at_ms().saturating_sub(max_drift_ms)
    }

    /// The merge order: `true` when `self` replaces `other`.
    pub fn supersedes(&self, other: &Lease) -> bool {
        self.order_key() > other.order_key()
    }

    fn order_key(&self) -> (u64, &Timestamp, &NodeId, u64, u64) {
        (
            self.epoch,
            &self.granted_at,
            &self.holder,
            self.fencing_token,
            self.duration_ms,
        )
    }
}

/// A candidate asks a voter: grant me `lease` (its epoch, start and duration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRequest {
    /// The proposed grant; `holder` is the candidate.
    pub lease: Lease,
    /// Version of the voter set the candidate counts its majority in; a voter with another
    /// version refuses, so a majority is always counted in one set.
    pub voters: u64,
}

/// A voter's answer to a [`GrantRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantReply {
    /// The lease asked for.
    pub name: LeaseName,
    /// The proposal answered (epoch and start identify it).
    pub epoch: u64,
    /// Start of the proposal answered.
    pub granted_at: Timestamp,
    /// Whether the voter granted it.
    pub granted: bool,
    /// Why not, for people (empty when granted).
    pub reason: String,
    /// The highest epoch the voter has granted for this lease.
    pub highest_epoch: u64,
    /// To whom it granted that epoch (a candidate may reuse an epoch granted to itself).
    pub highest_holder: Option<NodeId>,
    /// When refused: how long until the voter's current promise lapses (0 if none).
    pub retry_in_ms: u64,
}

/// A holder gives a lease up: voters may grant it to another candidate at once.
#[allow(missing_docs)] // a field named for what it holds has no doc to add
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The lease.
    pub name: LeaseName,
    /// The holder giving it up.
    pub holder: NodeId,
    pub epoch: u64,
}

/// Election messages between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseMessage {
    /// Candidate to voter.
    Request(GrantRequest),
    /// Voter to candidate.
    Reply(GrantReply),
    /// Holder to voters.
    Release(Release),
}

/// Every lease a node knows, merged entry-wise by [`Lease::supersedes`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTable {
    leases: BTreeMap<LeaseName, Lease>,
}

impl LeaseTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current record of `name`.
    pub fn get(&self, name: &LeaseName) -> Option<&Lease> {
        self.leases.get(name)
    }

    /// All records in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// Merges one record; returns whether it replaced what we had.
    pub fn merge_lease(&mut self, lease: Lease) -> bool {
        match self.leases.get(&lease.name) {
            Some(current) if !lease.supersedes(current) => false,
            _ => {
                self.leases.insert(lease.name.clone(), lease);
                true
            }
        }
    }

    /// Merges another table (the join); returns how many records changed.
    pub fn merge(&mut self, other: &LeaseTable) -> usize {
        other
            .leases
            .values()
            .filter(|l| self.merge_lease((*l).clone()))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn lease(name: usize, holder: usize, epoch: u64, at: u64, token: u64) -> Lease {
        Lease {
            name: WorkloadName::new(["db", "cron"][name]).expect("valid"),
            holder: NodeId::new(["n1", "n2", "n3"][holder]).expect("valid"),
            epoch,
            granted_at: Timestamp {
                physical_ms: at,
                logical: 0,
                node: NodeId::new(["n1", "n2", "n3"][holder]).expect("valid"),
            },
            duration_ms: 2_000,
            fencing_token: token,
        }
    }

    fn table() -> impl Strategy<Value = LeaseTable> {
        proptest::collection::vec((0usize..2, 0usize..3, 0u64..4, 0u64..4, 0u64..4), 0..8).prop_map(
            |ls| {
                let mut t = LeaseTable::new();
                for (n, h, e, at, tok) in ls {
                    t.merge_lease(lease(n, h, e, at, tok));
                }
                t
            },
        )
    }

    proptest! {
        #[test]
        fn lease_merge_is_commutative(a in table(), b in table()) {
            let mut ab = a.clone(); ab.merge(&b);
            let mut ba = b.clone(); ba.merge(&a);
            prop_assert_eq!(ab, ba);
        }

        #[test]
        fn lease_merge_is_associative(a in table(), b in table(), c in table()) {
            let mut left = a.clone(); left.merge(&b); left.merge(&c);
            let mut bc = b.clone(); bc.merge(&c);
            let mut right = a.clone(); right.merge(&bc);
            prop_assert_eq!(left, right);
        }

        #[test]
        fn lease_merge_is_idempotent(a in table(), b in table()) {
            let mut t = a.clone(); t.merge(&b);
            let once = t.clone();
            prop_assert_eq!(t.merge(&once), 0);
            prop_assert_eq!(t, once);
        }
    }

    #[test]
    fn higher_epoch_wins_even_when_granted_earlier() {
        let old = lease(0, 0, 3, 9_000, 3);
        let new = lease(0, 1, 4, 1_000, 4);
        let mut t = LeaseTable::new();
        t.merge_lease(new.clone());
        assert!(!t.merge_lease(old));
        assert_eq!(t.get(&new.name), Some(&new));
    }

    #[test]
    fn renewal_extends_within_an_epoch_and_successor_raises_the_token() {
        let first = lease(0, 0, 1, 1_000, 1);
        let renewed = first.renewed(Timestamp {
            physical_ms: 2_000,
            ..first.granted_at.clone()
        });
        assert!(renewed.supersedes(&first));
        assert_eq!(renewed.expires_at_ms(), 4_000);
        assert!(renewed.is_held_at(3_999) && !renewed.is_held_at(4_000));
        assert_eq!(renewed.holder_may_act_until_ms(500), 3_500);
        let next = renewed.successor(
            NodeId::new("n2").expect("valid"),
            renewed.granted_at.clone(),
            2_000,
        );
        assert!(next.fencing_token > renewed.fencing_token && next.epoch > renewed.epoch);
    }
}
