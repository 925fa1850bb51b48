//! Which life of a node id the fleet follows when gossip carries more than one.
//!
//! A node's gossip identity is `(id, generation, address)`; the generation is its start-up
//! time, so every start is a new life. One id normally has one live life: a restart ends the
//! old one. Two live lives under one id are a mistake in the field (a cloned data dir, a
//! device flashed from an image that already joined): following whichever started last, as
//! the agent used to, let a clone take the id for as long as it ran, and the real node was
//! declared down and its replicas replaced while it kept running them.
//!
//! The rules ([`Lives::follow`]):
//! - the life followed stays followed while its heartbeat moves (chitchat bumps it at every
//!   exchange, so a live process moves it every round) and for `quiet_ms` after;
//! - a newer life at the followed life's own address replaces it at once: two processes cannot
//!   hold one address, so this is a restart in place (the common case, kept fast);
//! - once the followed life is quiet, the newest life heard moving within `quiet_ms` is
//!   followed, or the newest life of all when none moves (a restart at a new address).
//!
//! No clock here: every call takes `now_ms`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// What gossip told of one life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Life {
    /// Its gossip (base) address.
    pub base: SocketAddr,
    /// Its chitchat heartbeat, as last heard.
    pub heartbeat: u64,
    /// When its heartbeat last moved here (or when it was first heard).
    pub moved_at_ms: u64,
}

/// Lives kept per id: more would only be lives of a process in a restart loop.
const LIVES_MAX: usize = 8;

/// The lives of one node id, and the one followed.
#[derive(Debug, Clone, Default)]
pub struct Lives {
    lives: BTreeMap<u64, Life>,
    followed: Option<u64>,
}

impl Lives {
    /// Gossip tells of life `generation` at `base` with `heartbeat`, at `now_ms`.
    pub fn handle_heard(&mut self, now_ms: u64, generation: u64, base: SocketAddr, heartbeat: u64) {
        let life = self.lives.entry(generation).or_insert(Life {
            base,
            heartbeat,
            moved_at_ms: now_ms,
        });
        if heartbeat > life.heartbeat {
            life.heartbeat = heartbeat;
            life.moved_at_ms = now_ms;
        }
        life.base = base;
        while self.lives.len() > LIVES_MAX {
            // The quietest life that is not followed goes.
            let quietest = self
                .lives
                .iter()
                .filter(|(g, _)| Some(**g) != self.followed)
                .min_by_key(|(g, l)| (l.moved_at_ms, **g))
                .map(|(g, _)| *g);
            match quietest {
                Some(g) => self.lives.remove(&g),
                None => break,
            };
        }
    }

    /// The life to follow now (see the module doc), remembered for the next call.
    pub fn follow(&mut self, now_ms: u64, quiet_ms: u64) -> Option<(u64, Life)> {
        let moving = |l: &Life| now_ms.saturating_sub(l.moved_at_ms) < quiet_ms;
        let newest = self.lives.iter().next_back().map(|(g, l)| (*g, *l))?;
        let chosen = match self
            .followed
            .and_then(|g| self.lives.get(&g).map(|l| (g, *l)))
        {
            None => newest,
            Some((g, life)) => {
                let in_place = self
                    .lives
                    .range(g + 1..)
                    .rev()
                    .find(|(_, l)| l.base == life.base)
                    .map(|(g, l)| (*g, *l));
                match in_place {
                    Some(restart) => restart,
                    None if moving(&life) => (g, life),
                    None => self
                        .lives
                        .iter()
                        .rev()
                        .find(|(_, l)| moving(l))
                        .map(|(g, l)| (*g, *l))
                        .unwrap_or(newest),
                }
            }
        };
        self.followed = Some(chosen.0);
        Some(chosen)
    }

    /// Lives other than `except` whose heartbeat moved within `quiet_ms`: another process
    /// under the same id, or a restart not yet told apart from one.
    pub fn moving_besides(&self, except: u64, now_ms: u64, quiet_ms: u64) -> Vec<(u64, Life)> {
        self.lives
            .iter()
            .filter(|(g, l)| **g != except && now_ms.saturating_sub(l.moved_at_ms) < quiet_ms)
            .map(|(g, l)| (*g, *l))
            .collect()
    }
}

/// Whether a probe datagram sealed by life `generation` of a node, arriving from `source`, is
/// that node's: `followed` is the life the fleet follows (generation and probe address), if
/// any. A newer life at the followed address is a restart in place whose gossip has not
/// arrived yet; anything else is another process under the same id, and its pings, acks and
/// verdicts must not count for the node.
pub fn probe_is_followed(
    followed: Option<(u64, SocketAddr)>,
    generation: u64,
    source: SocketAddr,
) -> bool {
    match followed {
        None => true,
        Some((g, addr)) => generation == g || (generation > g && source == addr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET_MS: u64 = 5_000;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_later_start_elsewhere_does_not_take_a_live_nodes_id() {
        let mut lives = Lives::default();
        lives.handle_heard(0, 100, addr(7000), 1);
        assert_eq!(lives.follow(0, QUIET_MS).map(|c| c.0), Some(100));
        // A clone starts at another address: both heartbeats move.
        for t in 1..20u64 {
            let now = t * 1_000;
            lives.handle_heard(now, 100, addr(7000), t + 1);
            lives.handle_heard(now, 200, addr(7100), t);
            assert_eq!(
                lives.follow(now, QUIET_MS).map(|c| c.0),
                Some(100),
                "at {now} ms the fleet still follows the live original"
            );
        }
        assert_eq!(
            lives
                .moving_besides(100, 19_000, QUIET_MS)
                .iter()
                .map(|c| c.0)
                .collect::<Vec<_>>(),
            [200],
            "the clone is seen as a rival"
        );
    }

    #[test]
    fn a_restart_in_place_is_followed_at_once_and_one_elsewhere_once_the_old_life_is_quiet() {
        let mut lives = Lives::default();
        lives.handle_heard(0, 100, addr(7000), 5);
        lives.follow(0, QUIET_MS);
        lives.handle_heard(1_000, 101, addr(7000), 1);
        assert_eq!(
            lives.follow(1_000, QUIET_MS).map(|c| c.0),
            Some(101),
            "same address: a restart"
        );
        // The node dies and comes back at another address: followed once the old life is quiet.
        lives.handle_heard(2_000, 101, addr(7000), 9);
        lives.handle_heard(3_000, 102, addr(7300), 1);
        assert_eq!(lives.follow(3_000, QUIET_MS).map(|c| c.0), Some(101));
        lives.handle_heard(6_000, 102, addr(7300), 4);
        assert_eq!(lives.follow(6_999, QUIET_MS).map(|c| c.0), Some(101));
        assert_eq!(lives.follow(7_000, QUIET_MS).map(|c| c.0), Some(102));
    }

    #[test]
    fn when_a_followed_clone_goes_quiet_the_older_live_original_is_followed_again() {
        let mut lives = Lives::default();
        // A peer that met both at once follows the newest, the clone.
        lives.handle_heard(0, 100, addr(7000), 50);
        lives.handle_heard(0, 200, addr(7100), 3);
        assert_eq!(lives.follow(0, QUIET_MS).map(|c| c.0), Some(200));
        // The clone refuses to run and exits; the original keeps gossiping.
        for t in 1..=8u64 {
            lives.handle_heard(t * 1_000, 100, addr(7000), 50 + t);
        }
        assert_eq!(lives.follow(8_000, QUIET_MS).map(|c| c.0), Some(100));
    }

    #[test]
    fn lives_are_bounded_and_the_followed_one_is_kept() {
        let mut lives = Lives::default();
        lives.handle_heard(0, 1, addr(7000), 1);
        lives.follow(0, QUIET_MS);
        for g in 2..40 {
            lives.handle_heard(g, g, addr(8000 + g as u16), 1);
        }
        assert_eq!(lives.lives.len(), LIVES_MAX);
        assert!(lives.lives.contains_key(&1), "the followed life stays");
    }

    #[test]
    fn probes_count_only_from_the_followed_life_or_a_restart_at_its_address() {
        let followed = Some((100, addr(7002)));
        assert!(probe_is_followed(None, 5, addr(1)), "nothing known yet");
        assert!(probe_is_followed(followed, 100, addr(9999)));
        assert!(probe_is_followed(followed, 101, addr(7002)), "a restart");
        assert!(!probe_is_followed(followed, 101, addr(7102)), "a clone");
        assert!(
            !probe_is_followed(followed, 99, addr(7002)),
            "an older life"
        );
    }
}
