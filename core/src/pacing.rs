//! Gossip pacing: when a node runs a gossip round, with whom, and how often it may ask a peer
//! for the keyring. Rounds slow down as the fleet grows so gossip bytes per node stay flat
//! at any size (a round costs about 300 bytes per member with three peers); liveness does not
//! depend on them (the failure detector probes on its own schedule).
//!
//! A round exchanges digests with `fanout` peers. Each exchange sends both sides' digest (about
//! 50 bytes per member), so bytes per round grow with the fanout while the rounds a change needs
//! to cross the fleet shrink only slowly: push-pull with one peer per round still reaches every
//! node in O(log N) rounds, a few more than with three (`starling bench dissemination`). The
//! `metered` profile gossips with one peer per round for that reason.

/// How round intervals follow the fleet's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Shortest time between rounds.
    pub shortest_ms: u64,
    /// Round interval per member: 50 ms keeps gossip near 7 KB/s per node at any size.
    pub per_member_ms: u64,
    /// Longest time between rounds.
    pub longest_ms: u64,
    /// Peers gossiped with per round (at least one).
    pub fanout: usize,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            shortest_ms: 1_000,
            per_member_ms: 50,
            longest_ms: 30_000,
            fanout: ROUND_FANOUT,
        }
    }
}

impl Pacing {
    /// The round interval in a fleet of `members` (this node included).
    pub fn interval_ms(&self, members: usize) -> u64 {
        (members as u64)
            .saturating_mul(self.per_member_ms)
            .clamp(self.shortest_ms, self.longest_ms.max(self.shortest_ms))
    }
}

/// Peers gossiped with per round, unless the pacing says otherwise.
pub const ROUND_FANOUT: usize = 3;

/// One round: whom to gossip with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    /// The round's interval (the next comes after it).
    pub interval_ms: u64,
    /// The failure detector's silence backstop at this pace: 20 rounds, at least 10 s.
    pub stale_after_ms: u64,
    /// Indices into the candidates passed to [`Rounds::handle_tick`], at most the pacing's
    /// `fanout`, spread over the list round after round.
    pub targets: Vec<usize>,
    /// Index into the unknown seeds to knock at this round: a member that joined through a
    /// node that just died is only found by knocking.
    pub seed: Option<usize>,
}

/// The round schedule of one node.
#[derive(Debug, Clone, Default)]
pub struct Rounds {
    pacing: Pacing,
    next_at: u64,
    cursor: usize,
}

impl Rounds {
    /// A schedule whose first round is due at once.
    pub fn new(pacing: Pacing) -> Self {
        Rounds {
            pacing,
            next_at: 0,
            cursor: 0,
        }
    }

    /// The interval in a fleet of `members`.
    pub fn interval_ms(&self, members: usize) -> u64 {
        self.pacing.interval_ms(members)
    }

    /// A round when one is due: `members` is the fleet's size, `candidates` how many peers
    /// to pick from (the live ones, or the seeds while none is), `unknown_seeds` how many
    /// seeds no gossip told of yet.
    pub fn handle_tick(
        &mut self,
        now: u64,
        members: usize,
        candidates: usize,
        unknown_seeds: usize,
    ) -> Option<Round> {
        if now < self.next_at {
            return None;
        }
        let interval_ms = self.pacing.interval_ms(members);
        self.next_at = now + interval_ms;
        // A stride coprime to the count keeps the picks distinct (7 peers with a stride of 7
        // would be one peer three times).
        let stride = if candidates.is_multiple_of(7) { 1 } else { 7 };
        let targets: Vec<usize> = (0..candidates.min(self.pacing.fanout.max(1)))
            .map(|k| (self.cursor + k * stride) % candidates)
            .collect();
        let seed = (unknown_seeds > 0).then(|| self.cursor % unknown_seeds);
        self.cursor = self.cursor.wrapping_add(1);
        Some(Round {
            interval_ms,
            stale_after_ms: interval_ms.saturating_mul(20).max(10_000),
            targets,
            seed,
        })
    }
}

/// When to fetch the keyring from a peer: packets failed to open since the last fetch (this
/// node may have missed a rotation while it was down), at most once per `every_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyFetch {
    /// When keys were last fetched.
    pub at: u64,
    /// Packets that had failed to open by then.
    pub dropped: u64,
}

impl KeyFetch {
    /// Shortest time between two fetches.
    pub const EVERY_MS: u64 = 5_000;

    /// Whether to fetch now, given the packets that failed to open so far; records the fetch.
    pub fn due(&mut self, now: u64, dropped: u64) -> bool {
        if dropped <= self.dropped || now < self.at.saturating_add(Self::EVERY_MS) {
            return false;
        }
        *self = KeyFetch { at: now, dropped };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_slow_with_the_fleet_and_spread_over_peers() {
        let pacing = Pacing::default();
        assert_eq!(pacing.interval_ms(1), 1_000);
        assert_eq!(pacing.interval_ms(100), 5_000);
        assert_eq!(pacing.interval_ms(10_000), 30_000);
        let mut rounds = Rounds::new(pacing);
        let first = rounds.handle_tick(0, 10, 10, 0).expect("due at once");
        assert_eq!(first.interval_ms, 1_000);
        assert_eq!(first.targets, vec![0, 7, 4]);
        assert_eq!(first.seed, None);
        assert_eq!(rounds.handle_tick(999, 10, 10, 0), None);
        let second = rounds.handle_tick(1_000, 10, 10, 2).expect("due");
        assert_eq!(second.targets, vec![1, 8, 5]);
        assert_eq!(second.seed, Some(1));
        // Fewer candidates than the fanout: each once.
        let third = rounds.handle_tick(2_000, 2, 1, 0).expect("due");
        assert_eq!(third.targets, vec![0]);
        assert!(
            rounds
                .handle_tick(3_000, 1, 0, 0)
                .expect("due")
                .targets
                .is_empty()
        );
        // Seven or fourteen peers: still three distinct ones.
        for n in [7, 14] {
            let round = rounds.handle_tick(u64::MAX / 2, n + 1, n, 0).expect("due");
            let distinct: std::collections::BTreeSet<usize> =
                round.targets.iter().copied().collect();
            assert_eq!(distinct.len(), 3, "{n} peers: {:?}", round.targets);
            rounds = Rounds::new(pacing);
        }
    }

    #[test]
    fn a_fanout_of_one_walks_every_peer_one_per_round() {
        let mut rounds = Rounds::new(Pacing {
            shortest_ms: 5_000,
            per_member_ms: 250,
            longest_ms: 60_000,
            fanout: 1,
        });
        let mut seen = std::collections::BTreeSet::new();
        for k in 0..19u64 {
            let round = rounds.handle_tick(k * 5_000, 20, 19, 0).expect("due");
            assert_eq!(round.targets.len(), 1, "round {k}: {:?}", round.targets);
            seen.insert(round.targets[0]);
        }
        assert_eq!(seen.len(), 19, "every peer once in 19 rounds");
        // A fanout of zero would never gossip: it counts as one.
        let mut zero = Rounds::new(Pacing {
            fanout: 0,
            ..Pacing::default()
        });
        assert_eq!(zero.handle_tick(0, 5, 4, 0).expect("due").targets, vec![0]);
    }

    #[test]
    fn keys_are_fetched_only_after_new_drops_and_at_most_every_five_seconds() {
        let mut fetch = KeyFetch::default();
        assert!(!fetch.due(10_000, 0), "nothing failed to open");
        assert!(fetch.due(10_000, 3));
        assert!(!fetch.due(12_000, 9), "too soon");
        assert!(!fetch.due(20_000, 3), "no new drops");
        assert!(fetch.due(20_000, 4));
    }
}
