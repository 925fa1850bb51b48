//! Dissemination at fleet scale: how many gossip rounds one desired-state write needs to reach
//! every node, with the real CRDT (merges and digests), at tens of thousands of nodes.
//!
//! Each round every node contacts `fanout` random peers and the pair reconciles both ways
//! (push-pull anti-entropy, as the fleet's sync does): equal digest roots cost one comparison,
//! different ones a merge. The model has no failures or latency: it measures the epidemic's
//! shape, the first of the two simulation levels that scale to 10,000+ nodes.

use starling_protocol::NodeId;
use starling_protocol::desired::{DesiredState, Revision};
use starling_protocol::hlc::Timestamp;
use starling_protocol::spec::WorkloadSpec;

use crate::rng::SimRng;

/// The outcome of one dissemination run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dissemination {
    /// Rounds until every node held the write.
    pub rounds: u32,
    /// Nodes holding it after each round.
    pub informed_per_round: Vec<usize>,
    /// Pairwise exchanges that found different roots (and merged).
    pub merges: u64,
}

/// Most rounds simulated before giving up (a fanout of 0 never converges).
const ROUNDS_MAX: u32 = 1_000;

/// Spreads one write, made at node 0, over `nodes` nodes with `fanout` contacts per node per
/// round. Returns `None` if it did not reach everyone within 1,000 rounds.
pub fn disseminate(nodes: usize, fanout: usize, seed: u64) -> Option<Dissemination> {
    let mut rng = SimRng::new(seed);
    let spec = WorkloadSpec::from_toml("name = \"web\"\ncommand = \"web\"\nreplicas = 3").ok()?;
    let writer = NodeId::new("node-0").ok()?;
    let mut states: Vec<DesiredState> = vec![DesiredState::new(); nodes.max(1)];
    states[0].write(
        spec.name.clone(),
        Some(Revision::first(spec)),
        Timestamp {
            physical_ms: 1,
            logical: 0,
            node: writer,
        },
    );
    let mut roots: Vec<u128> = states.iter().map(|s| s.digest().root()).collect();
    let target = roots[0];
    let mut informed_per_round = Vec::new();
    let mut merges = 0;
    for round in 1..=ROUNDS_MAX {
        // Rounds are synchronous: what a node learns in this round it passes on from the next.
        let start_states = states.clone();
        let start_roots = roots.clone();
        for a in 0..states.len() {
            for _ in 0..fanout {
                let b = rng.range(0, states.len() as u64 - 1) as usize;
                if a == b || start_roots[a] == start_roots[b] {
                    continue;
                }
                merges += 1;
                states[a].merge(&start_states[b]);
                states[b].merge(&start_states[a]);
            }
        }
        for (root, state) in roots.iter_mut().zip(&states) {
            *root = state.digest().root();
        }
        let informed = roots.iter().filter(|r| **r == target).count();
        informed_per_round.push(informed);
        if informed == states.len() {
            return Some(Dissemination {
                rounds: round,
                informed_per_round,
                merges,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_reaches_every_node_in_logarithmic_rounds() {
        let small = disseminate(100, 1, 1).expect("converges");
        let large = disseminate(5_000, 1, 1).expect("converges");
        assert!(
            small.rounds < large.rounds,
            "{} vs {}",
            small.rounds,
            large.rounds
        );
        // Push-pull with one contact per round: about log3(n) + ln(ln(n)) rounds.
        assert!(large.rounds <= 20, "{} rounds", large.rounds);
        assert!(
            large.informed_per_round.windows(2).all(|w| w[0] <= w[1]),
            "knowledge never shrinks"
        );
        assert_eq!(
            disseminate(5_000, 1, 1),
            Some(large),
            "deterministic for a seed"
        );
    }

    #[test]
    fn no_contacts_means_no_spread() {
        assert_eq!(disseminate(10, 0, 1), None);
    }
}
