//! Network profiles: one name for the timing of gossip and failure detection that suits a kind
//! of link. An agent takes one with `--network-profile`; single flags still override it.
//!
//! | profile | gossip rounds | probes per watched node | failed-probe wait (direct, indirect) | down after | for |
//! |---|---|---|---|---|---|
//! | `lan` | 1 s + 50 ms per member (≤ 30 s) | every 200 ms | 100 ms, 150 ms | 400 ms | one switch, wired or good Wi-Fi |
//! | `wan` | 1 s + 50 ms per member (≤ 30 s) | every 1 s | 400 ms, 600 ms | 4 s | sites over the internet, loss and 50–150 ms jitter |
//! | `metered` | 5 s + 250 ms per member (≤ 60 s) | every 2 s | 500 ms, 1 s | 6 s | cellular data plans: bytes cost money |
//!
//! A probe round that fails (no direct ack, no ack through the helpers) only suspects; the
//! node is declared down after `down after` of failed rounds, so a single lost packet on a
//! lossy link never fails anything over. `metered` keeps failover within 10 s (6 s to down,
//! then the verdict and a claim) while sending a fraction of `lan`'s bytes: see
//! docs/BENCHMARKS.md, "Network profiles", for the measured figures.

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
            NetworkProfile::Metered => (5_000, 250, 60_000, 2_000, 500, 1_000, 6_000),
        };
        ProfileTimings {
            gossip_interval_ms: gossip,
            gossip_ms_per_member: per_member,
            gossip_interval_max_ms: gossip_max,
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
            assert!(d.down_after_ms >= 2 * d.probe_interval_ms, "{profile:?}");
            assert!(t.gossip_interval_ms <= t.gossip_interval_max_ms);
        }
        assert!(NetworkProfile::Metered.timings().detector.down_after_ms < 10_000);
        assert!(NetworkProfile::from_name("lte").is_err());
    }
}
