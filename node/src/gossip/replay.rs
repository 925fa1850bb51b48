//! The replay window of sealed packets: per sealed sender, its generations and a sliding
//! window of counters in each (see `seal` for the packet layout).

use std::collections::BTreeMap;

use super::seal::{OpenError, Opened};

/// Packets remembered behind the newest one per sender, for replay detection.
const REPLAY_WINDOW: u64 = 64;
/// Most senders a [`ReplayGuard`] remembers by default; the one heard least recently is
/// forgotten beyond this. Far above any fleet, so in practice nothing is ever forgotten.
pub const SENDERS_MAX: usize = 65_536;

/// Generations of one sender kept open at once: the node's current life plus a few more, so
/// that a second process sealing under the same id (a cloned device, an id used twice) cannot
/// shut the first one out by starting later (see `membership::lives` for who the fleet then
/// follows). A restart loop of such a process moves through this many generations before the
/// quietest one, never the live one, is forgotten.
pub const GENERATIONS_MAX: usize = 4;

/// Remembers, per sealed sender, the newest generation it ever sealed with, and for each of
/// its last few generations ([`GENERATIONS_MAX`], the ones heard most recently) the newest
/// counter and a 64-packet window behind it. One guard per socket.
///
/// A generation never heard before is accepted only if it is newer than every generation
/// heard from that sender, so a packet of a life that ended before this guard heard a newer
/// one, or of a life forgotten here, is refused. Packets of a kept older generation are
/// accepted within their window: a restarted node's previous life sends nothing any more,
/// and a second live process under the same id must still be heard, so that the fleet can
/// keep following the first one and the second one learns it is not alone.
///
/// Bounded by a cap on senders: beyond it, the sender heard least recently is forgotten (a
/// forgotten sender's old packets would open once more). Only authenticated, accepted packets
/// add or refresh a sender, so someone outside the cluster cannot grow the guard or push a
/// live sender out: replays are refused without touching it, and only packets sealed by
/// members carry sender ids at all.
#[derive(Debug)]
pub struct ReplayGuard {
    senders: BTreeMap<String, Lives>,
    senders_max: usize,
    /// Packets accepted so far; `heard_at` stamps order eviction deterministically.
    accepted: u64,
}

/// One sender's kept generations.
#[derive(Debug, Clone)]
struct Lives {
    newest_generation: u64,
    /// At most [`GENERATIONS_MAX`].
    windows: Vec<Window>,
    heard_at: u64,
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

    /// Accepts an authenticated packet unless its generation's window saw it or it is too
    /// old, or its generation is neither kept nor newer than every one heard from that sender.
    /// The source address plays no part.
    pub fn accept(&mut self, opened: &Opened) -> Result<(), OpenError> {
        let heard_at = self.accepted + 1;
        let window = Window {
            generation: opened.generation,
            newest: opened.counter,
            seen: 1,
            heard_at,
        };
        if let Some(lives) = self.senders.get_mut(&opened.sender) {
            lives.admit(window)?;
        } else {
            if self.senders.len() >= self.senders_max
                && let Some(quietest) = self
                    .senders
                    .iter()
                    .min_by_key(|(_, l)| l.heard_at)
                    .map(|(node, _)| node.clone())
            {
                self.senders.remove(&quietest);
            }
            self.senders.insert(
                opened.sender.clone(),
                Lives {
                    newest_generation: opened.generation,
                    windows: vec![window],
                    heard_at,
                },
            );
        }
        self.accepted = heard_at;
        Ok(())
    }
}

impl Lives {
    /// `packet` is a one-packet window: its generation, counter and stamp.
    fn admit(&mut self, packet: Window) -> Result<(), OpenError> {
        if let Some(window) = self
            .windows
            .iter_mut()
            .find(|w| w.generation == packet.generation)
        {
            window.admit(packet.newest)?;
            window.heard_at = packet.heard_at;
        } else if packet.generation > self.newest_generation {
            // A new life of the sender: its counter starts again.
            self.newest_generation = packet.generation;
            if self.windows.len() >= GENERATIONS_MAX
                && let Some(quietest) = self
                    .windows
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, w)| w.heard_at)
                    .map(|(i, _)| i)
            {
                self.windows.swap_remove(quietest);
            }
            self.windows.push(packet);
        } else {
            return Err(OpenError::Replayed);
        }
        self.heard_at = packet.heard_at;
        Ok(())
    }
}

impl Window {
    fn admit(&mut self, counter: u64) -> Result<(), OpenError> {
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
    fn a_new_generation_is_accepted_and_an_unknown_older_one_refused() {
        let ring = Keyring::new(1, [7; 32]);
        let mut guard = ReplayGuard::default();
        assert!(guard.accept(&opened(&ring, "a", 10, 500)).is_ok());
        assert!(
            guard.accept(&opened(&ring, "a", 11, 1)).is_ok(),
            "a restarted sender starts a new generation at counter 1"
        );
        assert!(guard.accept(&opened(&ring, "a", 11, 2)).is_ok());
        assert_eq!(
            guard.accept(&opened(&ring, "a", 9, 1)),
            Err(OpenError::Replayed),
            "a generation older than the newest heard, and never heard itself"
        );
        assert_eq!(
            guard.accept(&opened(&ring, "a", 11, 1)),
            Err(OpenError::Replayed)
        );
        assert_eq!(
            guard.accept(&opened(&ring, "a", 10, 500)),
            Err(OpenError::Replayed),
            "a kept generation keeps its window"
        );
    }

    #[test]
    fn a_later_start_under_the_same_id_does_not_shut_the_live_one_out() {
        let ring = Keyring::new(1, [7; 32]);
        let mut guard = ReplayGuard::default();
        assert!(guard.accept(&opened(&ring, "n3", 10, 1)).is_ok());
        // A clone of n3 starts, and restarts in a loop: four newer generations.
        for (i, generation) in (20..24).enumerate() {
            assert!(guard.accept(&opened(&ring, "n3", generation, 1)).is_ok());
            // The original keeps talking between the clone's lives.
            let counter = 2 + i as u64;
            assert!(
                guard.accept(&opened(&ring, "n3", 10, counter)).is_ok(),
                "the original is still heard after clone generation {generation}"
            );
        }
        assert_eq!(
            guard.senders["n3"].windows.len(),
            GENERATIONS_MAX,
            "bounded"
        );
        assert_eq!(
            guard.accept(&opened(&ring, "n3", 20, 2)),
            Err(OpenError::Replayed),
            "the quietest generation, the clone's first life, is the one forgotten"
        );
        assert!(guard.accept(&opened(&ring, "n3", 10, 9)).is_ok());
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
