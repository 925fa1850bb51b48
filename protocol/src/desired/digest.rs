//! A Merkle tree over the desired state's fixed hash buckets.
//!
//! Leaves are the XOR of the entry hashes in each bucket; an inner node hashes its two children.
//! Two nodes whose roots differ descend only into differing subtrees ([`Digest::diff`]), so the
//! work is O(differing buckets · depth). The root alone is small enough for gossip; a peer that
//! sees a different root asks for levels ([`Digest::level`]) or leaves over QUIC.

use serde::{Deserialize, Serialize};

use crate::hash::hash128;

/// Number of leaf buckets: a power of two. 1024 keeps ~10 entries per bucket at 10k workloads.
pub const DIGEST_BUCKETS: usize = 1024;
/// Depth of the tree: the root is level 0, the leaves are level `DIGEST_DEPTH`.
pub const DIGEST_DEPTH: u32 = DIGEST_BUCKETS.trailing_zeros();

/// A full binary Merkle tree in heap order: `nodes[1]` is the root, the children of `i` are
/// `2i` and `2i + 1`, and leaf `b` is `nodes[DIGEST_BUCKETS + b]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    nodes: Vec<u128>,
}

impl Digest {
    /// Builds the tree over bucket hashes (`buckets.len()` must be [`DIGEST_BUCKETS`]).
    pub fn from_buckets(buckets: &[u128]) -> Self {
        assert_eq!(
            buckets.len(),
            DIGEST_BUCKETS,
            "digest needs exactly DIGEST_BUCKETS leaves"
        );
        let mut nodes = vec![0u128; 2 * DIGEST_BUCKETS];
        nodes[DIGEST_BUCKETS..].copy_from_slice(buckets);
        for i in (1..DIGEST_BUCKETS).rev() {
            nodes[i] = inner_hash(nodes[2 * i], nodes[2 * i + 1]);
        }
        Digest { nodes }
    }

    /// The root hash: equal roots mean equal states (up to a 128-bit collision).
    pub fn root(&self) -> u128 {
        self.nodes[1]
    }

    /// The hashes of one level, left to right (level 0 is the root, `DIGEST_DEPTH` the leaves).
    pub fn level(&self, level: u32) -> &[u128] {
        let level = level.min(DIGEST_DEPTH);
        let start = 1usize << level;
        &self.nodes[start..2 * start]
    }

    /// The buckets whose contents differ between two digests, found by descending only into
    /// subtrees whose hashes differ. Sorted ascending.
    pub fn diff(&self, other: &Digest) -> Vec<usize> {
        let mut out = Vec::new();
        let mut stack = vec![1usize];
        while let Some(i) = stack.pop() {
            if self.nodes[i] == other.nodes[i] {
                continue;
            }
            if i >= DIGEST_BUCKETS {
                out.push(i - DIGEST_BUCKETS);
            } else {
                stack.push(2 * i + 1);
                stack.push(2 * i);
            }
        }
        out.sort_unstable();
        out
    }

    /// Checks a digest decoded from the wire has the right shape.
    pub fn is_well_formed(&self) -> bool {
        self.nodes.len() == 2 * DIGEST_BUCKETS
    }
}

fn inner_hash(left: u128, right: u128) -> u128 {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(&left.to_le_bytes());
    bytes[16..].copy_from_slice(&right.to_le_bytes());
    hash128(&bytes)
}
