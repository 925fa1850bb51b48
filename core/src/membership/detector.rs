//! The failure detector state machine (sans-IO).
//!
//! Call order: [`Detector::handle_members`] whenever membership changes, feed every probe
//! message with [`Detector::handle_message`] and every gossiped verdict with
//! [`Detector::handle_verdict`], call [`Detector::handle_timeout`] at
//! [`Detector::poll_timeout`], and send what [`Detector::poll_transmit`] yields. Time comes in
//! as `now_ms`; no clocks, sockets or randomness.
//!
//! Two ideas from Lifeguard (HashiCorp memberlist) keep it fast on a clean LAN and calm on a
//! lossy one:
//! - **Suspicion that shortens with confirmations.** A watcher that alone fails to reach a node
//!   waits `lone_down_factor` times `down_after_ms` before declaring it down; every other
//!   watcher that suspects it too shortens the wait, down to `down_after_ms` when all of them
//!   do. A dead node fails every watcher's probes at once, so it is still declared down after
//!   `down_after_ms`; a lossy link between one watcher and a live node is not. Watchers send
//!   each other their suspicions directly, so the confirmations arrive within a probe round.
//! - **Local health.** A node told that it is suspected (it refutes) is more likely the slow
//!   or lossy one than its peers: its health penalty grows by one (up to
//!   `max_health_penalty`) and shrinks by one with every probe answered. Its probe timeouts and
//!   interval are stretched by `1 + penalty`, so a node with a bad link of its own stops
//!   suspecting healthy peers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use starling_protocol::NodeId;
use starling_protocol::placement::{Departure, Liveness};
use starling_protocol::wire::PeerMessage;

use super::watchers_of;

/// Settings. Defaults suit a LAN: with 3 watchers each probing every 250 ms, a dead node is
/// suspected within about 0.6 s (a direct and an indirect probe failed) and declared down once
/// it stayed unreachable for 1 s more; suspicion alone moves nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectorConfig {
    /// Watchers per node.
    pub watchers: usize,
    /// Time between probes of one watchee.
    pub probe_interval_ms: u64,
    /// Wait for a direct ack before asking helpers.
    pub probe_timeout_ms: u64,
    /// Helpers asked to probe indirectly.
    pub indirect_helpers: usize,
    /// Wait for an indirect ack before the probe counts as failed.
    pub indirect_timeout_ms: u64,
    /// Failed probes in a row before the watchee is suspected.
    pub suspect_after_probes: u32,
    /// Unreachable this long (since its first failed probe) before it is declared down.
    pub down_after_ms: u64,
    /// A node this node does not watch, and has heard nothing from (no gossip, no verdict)
    /// for this long, counts as down: the backstop for a side of a partition that no watcher
    /// verdict can reach. Keep it a few calm gossip intervals.
    pub stale_after_ms: u64,
    /// A watcher no other watcher confirms waits this many times `down_after_ms` before it
    /// declares the node down (Lifeguard's dynamic suspicion; 1 turns it off).
    pub lone_down_factor: u32,
    /// Most the local health penalty can grow (Lifeguard's awareness; 0 turns it off).
    pub max_health_penalty: u32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            watchers: 3,
            probe_interval_ms: 250,
            probe_timeout_ms: 100,
            indirect_helpers: 2,
            indirect_timeout_ms: 250,
            suspect_after_probes: 1,
            down_after_ms: 1_000,
            stale_after_ms: 5_000,
            lone_down_factor: 3,
            max_health_penalty: 4,
        }
    }
}

/// A watcher's judgement of a node, at the node's incarnation it judged. Serializable so a
/// simulator can hash the verdicts it delivers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// The node judged.
    pub node: NodeId,
    /// What the watcher concluded.
    pub state: Liveness,
    /// The node's incarnation when judged; a higher incarnation from the node refutes it.
    pub incarnation: u64,
    /// Who judged.
    pub watcher: NodeId,
}

#[derive(Debug, Clone, Default)]
struct Probe {
    /// The outstanding probe: its seq and deadline, and whether helpers were asked already.
    pending: Option<(u64, u64, bool)>,
    /// When the outstanding probe's ping went out.
    sent_ms: u64,
    /// Smoothed round trip and its variation (RFC 6298), from direct acks only.
    rtt: Option<(u64, u64)>,
    next_at_ms: u64,
    failures: u32,
    failing_since_ms: Option<u64>,
    state: Option<Liveness>,
}

/// The failure detector of one node. See the module docs.
#[derive(Debug)]
pub struct Detector {
    config: DetectorConfig,
    me: NodeId,
    incarnation: u64,
    members: BTreeSet<NodeId>,
    incarnations: BTreeMap<NodeId, u64>,
    /// Probes of the nodes this node watches.
    probes: BTreeMap<NodeId, Probe>,
    /// Verdicts heard from watchers: node -> watcher -> verdict.
    heard: BTreeMap<NodeId, BTreeMap<NodeId, Verdict>>,
    /// Indirect probes run for others: our seq -> (requester, their seq).
    relays: BTreeMap<u64, (NodeId, u64)>,
    /// Each member's top-ranked watchers (then helpers), from the last membership change.
    ranked: BTreeMap<NodeId, Vec<NodeId>>,
    /// When each member was last heard of (its gossip, or a verdict about it).
    fresh: BTreeMap<NodeId, u64>,
    /// When this detector got its first member list (silence is counted from there).
    started_ms: Option<u64>,
    /// Members that announced a planned restart, and until when they count as suspect
    /// rather than down.
    departures: BTreeMap<NodeId, u64>,
    /// Local health: grows when this node has to refute a suspicion about itself, shrinks with
    /// every answered probe; stretches this node's probe timing.
    health_penalty: u32,
    seq: u64,
    outbox: VecDeque<(NodeId, PeerMessage)>,
    verdicts_out: VecDeque<Verdict>,
}

impl Detector {
    /// A detector for `me`, starting at `incarnation` (pass a value that grows across restarts).
    pub fn new(config: DetectorConfig, me: NodeId, incarnation: u64) -> Self {
        Detector {
            config,
            me,
            incarnation,
            members: BTreeSet::new(),
            incarnations: BTreeMap::new(),
            probes: BTreeMap::new(),
            heard: BTreeMap::new(),
            relays: BTreeMap::new(),
            ranked: BTreeMap::new(),
            fresh: BTreeMap::new(),
            started_ms: None,
            departures: BTreeMap::new(),
            health_penalty: 0,
            seq: 0,
            outbox: VecDeque::new(),
            verdicts_out: VecDeque::new(),
        }
    }

    /// Changes the silence backstop (the shell slows gossip as the fleet grows).
    pub fn set_stale_after_ms(&mut self, ms: u64) {
        self.config.stale_after_ms = ms;
    }

    /// This node's incarnation (gossip it; it refutes suspicion).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// This node's local health penalty: 0 when healthy. Its probe timing is stretched by
    /// `1 + penalty`.
    pub fn health_penalty(&self) -> u32 {
        self.health_penalty
    }

    /// `ms` stretched by the local health penalty.
    fn scaled(&self, ms: u64) -> u64 {
        ms.saturating_mul(1 + u64::from(self.health_penalty))
    }

    /// The members (including this node) changed: recompute whom this node watches.
    pub fn handle_members(&mut self, now_ms: u64, members: BTreeSet<NodeId>) {
        self.started_ms.get_or_insert(now_ms);
        self.members = members;
        self.members.insert(self.me.clone());
        // Rank once per membership change: liveness and probing look these up all the time.
        let keep = self.config.watchers + self.config.indirect_helpers + 1;
        self.ranked = self
            .members
            .iter()
            .map(|m| (m.clone(), watchers_of(m, &self.members, keep)))
            .collect();
        let k = self.config.watchers;
        let mine: BTreeSet<NodeId> = self
            .ranked
            .iter()
            .filter(|(m, ranked)| **m != self.me && ranked.iter().take(k).any(|w| *w == self.me))
            .map(|(m, _)| m.clone())
            .collect();
        self.probes.retain(|n, _| mine.contains(n));
        for node in mine {
            self.probes.entry(node).or_insert_with(|| Probe {
                next_at_ms: now_ms,
                ..Probe::default()
            });
        }
        self.heard.retain(|n, _| self.members.contains(n));
    }

    /// Gossip brought fresh state from `node` (it is alive somewhere on this side).
    pub fn handle_heard(&mut self, now_ms: u64, node: &NodeId) {
        self.fresh.insert(node.clone(), now_ms);
    }

    /// A peer's incarnation, as gossiped. A higher one refutes older verdicts about it.
    pub fn handle_incarnation(&mut self, node: &NodeId, incarnation: u64) {
        let known = self.incarnations.entry(node.clone()).or_insert(0);
        if incarnation <= *known {
            return;
        }
        *known = incarnation;
        // Our verdict on a node we watch was made at its old incarnation, which everyone who
        // has heard the new one ignores. Judge again from fresh probes, so a node that is in
        // fact down gets a `Down` at its new incarnation instead of a verdict nobody counts.
        if let Some(p) = self.probes.get_mut(node)
            && p.state.is_some_and(|s| s != Liveness::Alive)
        {
            p.state = None;
            p.failures = 0;
            p.failing_since_ms = None;
        }
    }

    /// `node` announced a planned absence (or, with [`Departure::Staying`], that it is back).
    /// A node restarting on purpose stays `Suspect`, never `Down`, until its announced deadline:
    /// its replicas keep running for its next agent to adopt, and replacing them would run
    /// them twice. A draining node is judged as any other.
    pub fn handle_departure(&mut self, node: &NodeId, departure: Departure) {
        match departure {
            Departure::Restarting { back_by_ms } if *node != self.me => {
                self.departures.insert(node.clone(), back_by_ms);
            }
            _ => {
                self.departures.remove(node);
            }
        }
    }

    /// A probe message from `from`.
    pub fn handle_message(&mut self, now_ms: u64, from: &NodeId, message: &PeerMessage) {
        match message {
            PeerMessage::Ping { seq } => self
                .outbox
                .push_back((from.clone(), PeerMessage::Ack { seq: *seq })),
            PeerMessage::PingReq { target, seq } => {
                self.seq += 1;
                self.relays.insert(self.seq, (from.clone(), *seq));
                self.outbox
                    .push_back((target.clone(), PeerMessage::Ping { seq: self.seq }));
            }
            PeerMessage::Verdict {
                node,
                state,
                incarnation,
            } => self.handle_verdict(Verdict {
                node: node.clone(),
                state: *state,
                incarnation: *incarnation,
                watcher: from.clone(),
            }),
            PeerMessage::Ack { seq } => {
                if let Some((requester, their_seq)) = self.relays.remove(seq) {
                    self.outbox
                        .push_back((requester, PeerMessage::Ack { seq: their_seq }));
                    return;
                }
                let watchee = self
                    .probes
                    .iter()
                    .find(|(_, p)| p.pending.is_some_and(|(s, _, _)| s == *seq))
                    .map(|(n, _)| n.clone());
                if let Some(node) = watchee {
                    self.sample_rtt(now_ms, &node);
                    self.on_alive(now_ms, &node);
                }
            }
            _ => {}
        }
        let _ = now_ms;
    }

    /// A verdict gossiped by a watcher. A verdict about this node is refuted at once by raising
    /// the incarnation.
    pub fn handle_verdict(&mut self, verdict: Verdict) {
        if verdict.node == self.me {
            if verdict.state != Liveness::Alive && verdict.incarnation >= self.incarnation {
                self.incarnation = verdict.incarnation + 1;
                self.health_penalty = (self.health_penalty + 1).min(self.config.max_health_penalty);
            }
            return;
        }
        if self.members.contains(&verdict.node) {
            self.heard
                .entry(verdict.node.clone())
                .or_default()
                .insert(verdict.watcher.clone(), verdict);
        }
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let nodes: Vec<NodeId> = self.probes.keys().cloned().collect();
        for node in nodes {
            self.advance_probe(now_ms, &node);
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<(NodeId, PeerMessage)> {
        self.outbox.pop_front()
    }

    /// The next verdict this node reached, to gossip and to push to the nodes taking over.
    pub fn poll_verdict(&mut self) -> Option<Verdict> {
        self.verdicts_out.pop_front()
    }

    /// When [`Detector::handle_timeout`] is next needed.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.probes
            .values()
            .map(|p| p.pending.map_or(p.next_at_ms, |(_, deadline, _)| deadline))
            .min()
    }

    /// How this node sees `node` at `now_ms`: its own verdict if it watches it; otherwise down
    /// when nothing was heard of it for `stale_after_ms`, else its watchers' verdicts (down when
    /// a majority of them say down, suspect when any says so), ignoring verdicts refuted by a
    /// newer incarnation. A node restarting on purpose is at worst suspect until its deadline.
    pub fn liveness(&self, node: &NodeId, now_ms: u64) -> Liveness {
        let judged = self.judge(node, now_ms);
        let on_leave = self
            .departures
            .get(node)
            .is_some_and(|back_by_ms| now_ms < *back_by_ms);
        if judged == Liveness::Down && on_leave {
            Liveness::Suspect
        } else {
            judged
        }
    }

    fn judge(&self, node: &NodeId, now_ms: u64) -> Liveness {
        if *node == self.me {
            return Liveness::Alive;
        }
        if let Some(state) = self.probes.get(node).and_then(|p| p.state) {
            return state;
        }
        let last = self
            .fresh
            .get(node)
            .copied()
            .or(self.started_ms)
            .unwrap_or(now_ms);
        if now_ms.saturating_sub(last) > self.config.stale_after_ms {
            return Liveness::Down;
        }
        let watchers: &[NodeId] = self
            .ranked
            .get(node)
            .map_or(&[], |r| &r[..r.len().min(self.config.watchers)]);
        let current = self.incarnations.get(node).copied().unwrap_or(0);
        let heard = self.heard.get(node);
        let verdict_of = |w: &NodeId| {
            heard
                .and_then(|h| h.get(w))
                .filter(|v| v.incarnation >= current)
                .map(|v| v.state)
        };
        let downs = watchers
            .iter()
            .filter(|w| verdict_of(w) == Some(Liveness::Down))
            .count();
        let suspects = watchers
            .iter()
            .filter(|w| verdict_of(w) == Some(Liveness::Suspect))
            .count();
        if !watchers.is_empty() && 2 * downs > watchers.len() {
            Liveness::Down
        } else if downs + suspects > 0 {
            Liveness::Suspect
        } else {
            Liveness::Alive
        }
    }

    fn advance_probe(&mut self, now_ms: u64, node: &NodeId) {
        let Some(probe) = self.probes.get(node).cloned() else {
            return;
        };
        match probe.pending {
            None if now_ms >= probe.next_at_ms => {
                self.seq += 1;
                let (direct, _) = self.waits(&probe);
                let deadline = now_ms + self.scaled(direct);
                self.set_pending(node, Some((self.seq, deadline, false)));
                if let Some(p) = self.probes.get_mut(node) {
                    p.sent_ms = now_ms;
                }
                self.outbox
                    .push_back((node.clone(), PeerMessage::Ping { seq: self.seq }));
            }
            Some((seq, deadline, false)) if now_ms >= deadline => {
                // No direct answer: ask helpers before suspecting, so one bad link is not enough.
                let helpers = self.helpers_for(node);
                for helper in &helpers {
                    self.outbox.push_back((
                        helper.clone(),
                        PeerMessage::PingReq {
                            target: node.clone(),
                            seq,
                        },
                    ));
                }
                let wait = if helpers.is_empty() {
                    0
                } else {
                    self.scaled(self.waits(&probe).1)
                };
                self.set_pending(node, Some((seq, now_ms + wait, true)));
            }
            Some((_, deadline, true)) if now_ms >= deadline => self.on_failed(now_ms, node),
            _ => {}
        }
    }

    /// How long to wait for a direct ack and then for the helpers' (two legs each way):
    /// the configured floors, or more where this link's measured round trip (smoothed, plus
    /// four variations, as TCP's retransmission timer) needs it, up to one and two probe
    /// intervals. A clean LAN keeps the floors; a slow link stops failing probes on time alone.
    fn waits(&self, probe: &Probe) -> (u64, u64) {
        let c = &self.config;
        let Some((srtt, rttvar)) = probe.rtt else {
            return (c.probe_timeout_ms, c.indirect_timeout_ms);
        };
        let rto = srtt + 4 * rttvar;
        (
            rto.clamp(c.probe_timeout_ms, c.probe_timeout_ms.max(c.probe_interval_ms)),
            (2 * rto).clamp(
                c.indirect_timeout_ms,
                c.indirect_timeout_ms.max(2 * c.probe_interval_ms),
            ),
        )
    }

    /// A direct ack of `node`'s outstanding ping: one round-trip sample. Acks that came after
    /// helpers were asked are not sampled (Karn: it is unknown which path answered).
    fn sample_rtt(&mut self, now_ms: u64, node: &NodeId) {
        let Some(p) = self.probes.get_mut(node) else {
            return;
        };
        if !matches!(p.pending, Some((_, _, false))) {
            return;
        }
        let r = now_ms.saturating_sub(p.sent_ms);
        p.rtt = Some(match p.rtt {
            None => (r, r / 2),
            Some((srtt, rttvar)) => {
                let rttvar = (3 * rttvar + srtt.abs_diff(r)) / 4;
                let srtt = (7 * srtt + r) / 8;
                (srtt, rttvar)
            }
        });
    }

    fn set_pending(&mut self, node: &NodeId, pending: Option<(u64, u64, bool)>) {
        if let Some(p) = self.probes.get_mut(node) {
            p.pending = pending;
        }
    }

    /// Helpers for an indirect probe: the members ranked next after this node as watchers of
    /// `node` (deterministic, and spread over the fleet).
    fn helpers_for(&self, node: &NodeId) -> Vec<NodeId> {
        let ranked = self.ranked.get(node).cloned().unwrap_or_default();
        ranked
            .into_iter()
            .filter(|m| *m != self.me)
            .take(self.config.indirect_helpers)
            .collect()
    }

    fn on_alive(&mut self, now_ms: u64, node: &NodeId) {
        self.health_penalty = self.health_penalty.saturating_sub(1);
        let interval = self.scaled(self.config.probe_interval_ms);
        let changed = {
            let Some(p) = self.probes.get_mut(node) else {
                return;
            };
            p.pending = None;
            p.next_at_ms = now_ms + interval;
            p.failures = 0;
            p.failing_since_ms = None;
            let changed = p.state != Some(Liveness::Alive);
            p.state = Some(Liveness::Alive);
            changed
        };
        if changed {
            self.publish(node, Liveness::Alive);
        }
    }

    fn on_failed(&mut self, now_ms: u64, node: &NodeId) {
        let (interval, suspect_after, down_after) = (
            self.scaled(self.config.probe_interval_ms),
            self.config.suspect_after_probes,
            self.down_after_for(node, now_ms),
        );
        let new_state = {
            let Some(p) = self.probes.get_mut(node) else {
                return;
            };
            p.pending = None;
            p.next_at_ms = now_ms + interval;
            p.failures += 1;
            let since = *p.failing_since_ms.get_or_insert(now_ms);
            let state = if now_ms >= since + down_after {
                Liveness::Down
            } else if p.failures >= suspect_after {
                Liveness::Suspect
            } else {
                p.state.unwrap_or(Liveness::Alive)
            };
            let changed = p.state != Some(state);
            p.state = Some(state);
            changed.then_some(state)
        };
        if let Some(state) = new_state {
            self.publish(node, state);
        }
    }

    /// The other watchers of `node` that could confirm a suspicion: not this node, and not
    /// judged down (a dead watcher confirms nothing).
    fn co_watchers(&self, node: &NodeId, now_ms: u64) -> Vec<NodeId> {
        self.ranked
            .get(node)
            .map_or(&[][..], |r| &r[..r.len().min(self.config.watchers)])
            .iter()
            .filter(|w| **w != self.me && self.judge(w, now_ms) != Liveness::Down)
            .cloned()
            .collect()
    }

    /// How long `node` must stay unreachable before this watcher declares it down: from
    /// `lone_down_factor * down_after_ms` with no confirmation, shrinking logarithmically with
    /// each other watcher that suspects it at its current incarnation, to `down_after_ms` when
    /// all do (Lifeguard's formula).
    fn down_after_for(&self, node: &NodeId, now_ms: u64) -> u64 {
        let min = self.config.down_after_ms;
        let max = min.saturating_mul(u64::from(self.config.lone_down_factor.max(1)));
        let others = self.co_watchers(node, now_ms);
        if others.is_empty() || max == min {
            return min;
        }
        let current = self.incarnations.get(node).copied().unwrap_or(0);
        let heard = self.heard.get(node);
        let confirmed = others
            .iter()
            .filter(|w| {
                heard
                    .and_then(|h| h.get(*w))
                    .is_some_and(|v| v.incarnation >= current && v.state != Liveness::Alive)
            })
            .count();
        let k = others.len() as f64;
        let fraction = ((confirmed as f64) + 1.0).ln() / (k + 1.0).ln();
        let shortened = (max - min) as f64 * fraction.clamp(0.0, 1.0);
        max - (shortened.round() as u64).min(max - min)
    }

    fn publish(&mut self, node: &NodeId, state: Liveness) {
        let incarnation = self.incarnations.get(node).copied().unwrap_or(0);
        // The other watchers count this verdict as a confirmation (or withdraw one): send it
        // to them at once rather than wait for gossip. `Down` goes to everyone from the shell.
        if state != Liveness::Down {
            let watchers: Vec<NodeId> = self
                .ranked
                .get(node)
                .map_or(&[][..], |r| &r[..r.len().min(self.config.watchers)])
                .iter()
                .filter(|w| **w != self.me)
                .cloned()
                .collect();
            // Lifeguard's buddy system: the suspected node hears it directly and refutes
            // within a round instead of a gossip interval.
            let buddy = (state == Liveness::Suspect).then(|| node.clone());
            for w in watchers.into_iter().chain(buddy) {
                self.outbox.push_back((
                    w,
                    PeerMessage::Verdict {
                        node: node.clone(),
                        state,
                        incarnation,
                    },
                ));
            }
        }
        self.verdicts_out.push_back(Verdict {
            node: node.clone(),
            state,
            incarnation,
            watcher: self.me.clone(),
        });
    }
}

#[cfg(test)]
mod tests;
