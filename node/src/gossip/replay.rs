//! The replay window of sealed packets: per sealed sender, its generations and a sliding
//! window of counters in each (see `seal` for the packet layout).

use std::collections::BTreeMap;

use super::seal::{OpenError, Opened};

/// Packets remembered behind the newest one per sender, for replay detection.
const REPLAY_WINDOW: u64 = 64;
/// Most senders a [`ReplayGuard`] remembers by default; the one heard least recently is
/// forgotten beyond this. Far above any fleet, so in practice nothing is ever forgotten.
pub const SENDERS_MAX: usize = 65_536;

/// Remembers, per sealed sender, its newest generation, the newest counter in it and a
/// 64-packet window behind that counter. One guard per socket.
///
/// Bounded by a cap on senders: beyond it, the sender heard least recently is forgotten (a
/// forgotten sender's old packets would open once more). Only authenticated, accepted packets
/// add or refresh a sender, so someone outside the cluster cannot grow the guard or push a
/// live sender out: replays are refused without touching it, and only packets sealed by
/// members carry sender ids at all.
#[derive(Debug)]
pub struct ReplayGuard {
    senders: BTreeMap<String, Window>,
    senders_max: usize,
    /// Packets accepted so far; a sender's `heard_at` orders eviction deterministically.
    accepted: u64,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    generation: u64,
    newest: u64,
    /// Bit `i` set: counter `newest - i` was accepted.
    seen: u64,
    heard_at: u64,
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::with_senders_max(SENDERS_MAX)
    }
}

impl ReplayGuard {
    /// A guard that remembers at most `senders_max` senders (at least one).
    pub fn with_senders_max(senders_max: usize) -> Self {
        ReplayGuard {
            senders: BTreeMap::new(),
            senders_max: senders_max.max(1),
            accepted: 0,
        }
    }

    /// Accepts an authenticated packet unless its sender's window saw it, it is too old, or
    /// it belongs to an older generation than one heard from that sender. The source address
    /// plays no part.
    pub fn accept(&mut self, opened: &Opened) -> Result<(), OpenError> {
        let heard_at = self.accepted + 1;
        if let Some(window) = self.senders.get_mut(&opened.sender) {
            window.admit(opened.generation, opened.counter)?;
            window.heard_at = heard_at;
        } else {
            if self.senders.len() >= self.senders_max
                && let Some(quietest) = self
                    .senders
                    .iter()
                    .min_by_key(|(_, w)| w.heard_at)
                    .map(|(node, _)| node.clone())
            {
                self.senders.remove(&quietest);
            }
            self.senders.insert(
                opened.sender.clone(),
                Window {
                    generation: opened.generation,
                    newest: opened.counter,
                    seen: 1,
                    heard_at,
                },
            );
        }
        self.accepted = heard_at;
        Ok(())
    }
}

impl Window {
    fn admit(&mut self, generation: u64, counter: u64) -> Result<(), OpenError> {
        if generation < self.generation {
            return Err(OpenError::Replayed);
        }
        if generation > self.generation {
            // The sender restarted: its counter starts again.
            self.generation = generation;
            self.newest = counter;
            self.seen = 1;
            return Ok(());
        }
        if counter > self.newest {
            let shift = counter - self.newest;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.newest = counter;
            return Ok(());
        }
        let age = self.newest - counter;
        if age >= REPLAY_WINDOW {
            return Err(OpenError::Replayed);
        }
        let bit = 1u64 << age;
        if self.seen & bit != 0 {
            return Err(OpenError::Replayed);
        }
        self.seen |= bit;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::seal::{Channel, Keyring, NONCE_BYTES, Sender};

    fn sender(node: &str, generation: u64) -> Sender {
        Sender::new(node, generation, Channel::Gossip).expect("sender")
    }

    /// Seals and opens a packet from `node` as the receiver's socket would.
    fn opened(ring: &Keyring, node: &str, generation: u64, counter: u64) -> Opened {
        let packet = ring.seal_as(
            &sender(node, generation),
            counter,
            [counter as u8; NONCE_BYTES],
            b"m",
        );
        ring.open(Channel::Gossip, &packet).expect("opens")
    }

    #[test]
    fn replays_and_stale_counters_are_dropped() {
        let ring = Keyring::new(1, [7; 32]);
        let mut guard = ReplayGuard::default();
        let open = |g: u64, c: u64| opened(&ring, "a", g, c);
        assert!(guard.accept(&open(10, 5)).is_ok());
        assert_eq!(
            guard.accept(&open(10, 5)),
            Err(OpenError::Replayed),
            "same packet twice"
        );
        assert!(
            guard.accept(&open(10, 3)).is_ok(),
            "late but inside the window"
        );
        assert_eq!(guard.accept(&open(10, 3)), Err(OpenError::Replayed));
        assert!(guard.accept(&open(10, 200)).is_ok());
        assert_eq!(
            guard.accept(&open(10, 100)),
            Err(OpenError::Replayed),
            "older than the window"
        );
    }

    #[test]
    fn a_replay_is_refused_whatever_address_it_comes_from() {
        // The guard never sees an address: the window belongs to the sealed sender, so the
        // same bytes re-sent from any port open to the same (sender, generation, counter).
        let ring = Keyring::new(1, [7; 32]);
        let packet = ring.seal_as(&sender("a", 10), 1, [1; NONCE_BYTES], b"ping");
        let mut guard = ReplayGuard::default();
        let first = ring.open(Channel::Gossip, &packet).expect("opens");
        assert!(guard.accept(&first).is_ok());
        let again = ring.open(Channel::Gossip, &packet).expect("opens");
        assert_eq!(guard.accept(&again), Err(OpenError::Replayed));
        assert!(
            guard.accept(&opened(&ring, "b", 10, 1)).is_ok(),
            "another sender has its own window"
        );
    }

    #[test]
    fn a_new_generation_is_accepted_and_an_older_one_refused() {
        let ring = Keyring::new(1, [7; 32]);
        let mut guard = ReplayGuard::default();
        assert!(guard.accept(&opened(&ring, "a", 10, 500)).is_ok());
        assert!(
            guard.accept(&opened(&ring, "a", 11, 1)).is_ok(),
            "a restarted sender starts a new generation at counter 1"
        );
        assert!(guard.accept(&opened(&ring, "a", 11, 2)).is_ok());
        assert_eq!(
            guard.accept(&opened(&ring, "a", 10, 501)),
            Err(OpenError::Replayed),
            "a packet of the previous generation, even with a newer counter"
        );
        assert_eq!(
            guard.accept(&opened(&ring, "a", 11, 1)),
            Err(OpenError::Replayed)
        );
    }

    #[test]
    fn the_sender_cap_forgets_the_quietest_sender_and_keeps_live_windows() {
        let ring = Keyring::new(1, [7; 32]);
        let mut guard = ReplayGuard::with_senders_max(2);
        assert!(guard.accept(&opened(&ring, "a", 1, 1)).is_ok());
        assert!(guard.accept(&opened(&ring, "b", 1, 1)).is_ok());
        assert!(
            guard.accept(&opened(&ring, "a", 1, 2)).is_ok(),
            "a heard again"
        );
        assert!(guard.accept(&opened(&ring, "c", 1, 1)).is_ok());
        assert_eq!(guard.senders.len(), 2, "bounded");
        assert!(
            guard.senders.contains_key("a") && guard.senders.contains_key("c"),
            "b, heard least recently, is the one forgotten"
        );
        assert_eq!(
            guard.accept(&opened(&ring, "a", 1, 2)),
            Err(OpenError::Replayed),
            "a's window survived the newcomer"
        );
        // Refused packets change nothing, so replaying can never push a live sender out.
        for _ in 0..10 {
            assert!(guard.accept(&opened(&ring, "c", 1, 1)).is_err());
        }
        assert!(guard.accept(&opened(&ring, "b", 1, 5)).is_ok());
        assert!(
            guard.senders.contains_key("b") && guard.senders.contains_key("c"),
            "a is now the quietest: c's last accept came after a's"
        );
    }
}
