//! Network profiles: one name for the timing of gossip and failure detection that suits a kind
//! of link. An agent takes one with `--network-profile`; single flags still override it.
//!
//! | profile | gossip rounds | peers per round | probes per watched node | failed-probe wait (direct, indirect) | down after | worst death to `Down` | for |
//! |---|---|---|---|---|---|---|---|
//! | `lan` | 1 s + 50 ms per member (≤ 30 s) | 3 | every 200 ms | 100 ms, 150 ms | 400 ms | 0.9 s | one switch, wired or good Wi-Fi |
//! | `wan` | 1 s + 50 ms per member (≤ 30 s) | 3 | every 1 s | 400 ms, 600 ms | 4 s | 6 s | sites over the internet, loss and 50–150 ms jitter |
//! | `metered` | 5 s + 250 ms per member (≤ 60 s) | 1 | every 2 s | 500 ms, 1 s | 3 s | 7 s | cellular data plans: bytes cost money |
//!
//! A probe round that fails (no direct ack, no ack through the helpers) only suspects; the
//! node is declared down once it stayed unreachable `down after` since its first failed round,
//! checked at each further failed round, so at least two rounds fail (a single lost packet on
//! a lossy link never fails anything over) and the worst case is [`worst_down_ms`]. `metered`
//! keeps failover within 10 s (at worst 7 s to `Down`, then the claim and the start) while
//! sending under 1 KB/s per node (measured at 5, 20 and 100 members): one peer per gossip round (each
//! exchange carries both sides' digests, ~50 bytes per member) and chitchat's own rounds only
//! every 10 minutes. See docs/BENCHMARKS.md, "Network profiles", for the measured figures.

use super::DetectorConfig;

/// A named set of timings. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkProfile {
    /// One switch: fast detection, chatty.
    Lan,
    /// Lossy, jittery links between sites: calm detection.
    Wan,
    /// Data plans: fewest bytes that still fail over within 10 s.
    Metered,
}

/// What a profile sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileTimings {
    /// Shortest time between gossip rounds.
    pub gossip_interval_ms: u64,
    /// Added to the round interval per member.
    pub gossip_ms_per_member: u64,
    /// Longest time between gossip rounds.
    pub gossip_interval_max_ms: u64,
    /// Peers gossiped with per round (`starling_core::pacing::Pacing::fanout`).
    pub gossip_fanout: usize,
    /// Time between chitchat's own rounds, which run beside the agent's as a slow floor and
    /// gossip with three random peers each (a count chitchat fixes).
    pub gossip_floor_interval_ms: u64,
    /// Shortest time between two publications of this node's CPU and memory in use: each
    /// travels to every member.
    pub usage_publish_interval_min_ms: u64,
    /// The failure detector.
    pub detector: DetectorConfig,
}

impl NetworkProfile {
    /// Every profile, for help texts and tests.
    pub const ALL: [NetworkProfile; 3] = [
        NetworkProfile::Lan,
        NetworkProfile::Wan,
        NetworkProfile::Metered,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            NetworkProfile::Lan => "lan",
            NetworkProfile::Wan => "wan",
            NetworkProfile::Metered => "metered",
        }
    }

    /// The profile called `name`.
    pub fn from_name(name: &str) -> Result<Self, String> {
        NetworkProfile::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| format!("unknown network profile {name:?}; use lan, wan or metered"))
    }

    /// Its timings.
    pub fn timings(self) -> ProfileTimings {
        let (gossip, per_member, gossip_max, probe, direct, indirect, down) = match self {
            NetworkProfile::Lan => (1_000, 50, 30_000, 200, 100, 150, 400),
            NetworkProfile::Wan => (1_000, 50, 30_000, 1_000, 400, 600, 4_000),
            // Metered: down at the second failed round (as on lan), so failover stays within
            // 10 s on a loaded device; a third round would push it to 10.5 s
            // (`worst_down_ms`).
            NetworkProfile::Metered => (5_000, 250, 60_000, 2_000, 500, 1_000, 3_000),
        };
        // Metered: one peer per round, and chitchat's own three-peer rounds only every ten
        // minutes (a floor should the agent's rounds stop), since every exchange sends two
        // digests of about 50 bytes per member (docs/BENCHMARKS.md, "Network profiles").
        let (fanout, floor, usage_min) = match self {
            NetworkProfile::Lan | NetworkProfile::Wan => (3, gossip_max, 15_000),
            NetworkProfile::Metered => (1, 600_000, 60_000),
        };
        ProfileTimings {
            gossip_interval_ms: gossip,
            gossip_ms_per_member: per_member,
            gossip_interval_max_ms: gossip_max,
            gossip_fanout: fanout,
            gossip_floor_interval_ms: floor,
            usage_publish_interval_min_ms: usage_min,
            detector: DetectorConfig {
                probe_interval_ms: probe,
                probe_timeout_ms: direct,
                indirect_timeout_ms: indirect,
                down_after_ms: down,
                // A heartbeat needs about log2(N) rounds to cross the fleet: 20 rounds.
                stale_after_ms: (gossip * 20).max(10_000),
                ..DetectorConfig::default()
            },
        }
    }
}

/// The longest time from a node's death to its watchers' `Down` verdict under `detector`:
/// it died just after a successful probe, the next probe fails after both waits, which
/// starts the clock, and each further round takes the probe interval plus both waits (the
/// next probe is due an interval after the previous one failed). Excludes the claim and start
/// of replacements.
pub fn worst_down_ms(detector: &DetectorConfig) -> u64 {
    let round =
        detector.probe_interval_ms + detector.probe_timeout_ms + detector.indirect_timeout_ms;
    let further_rounds = detector.down_after_ms.div_ceil(round.max(1));
    round + further_rounds * round
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_detects_within_its_bound_and_names_round_trip() {
        for profile in NetworkProfile::ALL {
            assert_eq!(NetworkProfile::from_name(profile.name()), Ok(profile));
            let t = profile.timings();
            let d = &t.detector;
            // A failed round (direct wait, then the helpers') ends before the next probe.
            assert!(d.probe_timeout_ms + d.indirect_timeout_ms <= d.probe_interval_ms + 300);
            // Down takes at least two failed rounds: one lost packet never fails over.
            assert!(d.down_after_ms > 0, "{profile:?}");
            let round = d.probe_interval_ms + d.probe_timeout_ms + d.indirect_timeout_ms;
            assert!(worst_down_ms(d) >= 2 * round, "{profile:?}");
            assert!(t.gossip_interval_ms <= t.gossip_interval_max_ms);
            assert!(t.gossip_fanout >= 1, "{profile:?}");
            // chitchat's rounds are a floor under the agent's, never in their place.
            assert!(t.gossip_floor_interval_ms >= t.gossip_interval_max_ms);
        }
        // Metered leaves 10 s minus the worst verdict for the claim and the start.
        assert_eq!(
            worst_down_ms(&NetworkProfile::Metered.timings().detector),
            7_000
        );
        assert_eq!(worst_down_ms(&NetworkProfile::Lan.timings().detector), 900);
        assert_eq!(
            worst_down_ms(&NetworkProfile::Wan.timings().detector),
            6_000
        );
        assert!(NetworkProfile::from_name("lte").is_err());
    }
}
