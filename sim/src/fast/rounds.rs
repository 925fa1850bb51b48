//! Gossip rounds and failure detection in the fast model: who learns what each round, what
//! retires into the base, and how watchers turn a silent node into suspect and down verdicts.

use std::collections::BTreeMap;
use std::sync::Arc;

use starling_protocol::NodeId;
use starling_protocol::hash::{hash64, mix64};
use starling_protocol::placement::Liveness;

use super::gossip::{self, Member};
use super::{
    EXCHANGE_BYTES, Ev, FastWorld, Learned, MEMBER_BYTES, WATCHERS, WRITE_BYTES, describe,
};
use crate::host::{Fleet, Power};

impl FastWorld<'_> {
    /// Node `i` fell silent: its watchers (the up nodes that rank highest for it) suspect it and
    /// then declare it down after the configured rounds, unless it speaks again first.
    pub(super) fn silence(&mut self, i: usize) {
        let target = hash64(self.nodes[i].host.id.as_str().as_bytes());
        let mut ranked: Vec<(u64, usize)> = (0..self.nodes.len())
            .filter(|w| *w != i && self.nodes[*w].host.power == Power::Up)
            .map(|w| {
                (
                    mix64(target ^ hash64(self.nodes[w].host.id.as_str().as_bytes())),
                    w,
                )
            })
            .collect();
        ranked.sort_unstable();
        let interval = self.scenario.gossip.interval_ms;
        let rounds = |ms: u64| ms.div_ceil(interval).max(1) * interval;
        let (suspect, down) = (
            rounds(self.scenario.gossip.suspect_after_ms),
            rounds(self.scenario.gossip.down_after_ms),
        );
        let incarnation = self.nodes[i].incarnation;
        for &(_, watcher) in ranked.iter().rev().take(WATCHERS) {
            // Watchers probe on their own schedules: each notices within one round.
            let offset = self.rng.range(0, interval);
            for (after, liveness) in [(suspect, Liveness::Suspect), (down, Liveness::Down)] {
                let at = self.now + after + offset;
                self.schedule(
                    at,
                    Ev::Verdict {
                        target: i,
                        incarnation,
                        watcher,
                        liveness,
                    },
                );
            }
        }
    }

    pub(super) fn verdict(
        &mut self,
        target: usize,
        incarnation: u64,
        watcher: usize,
        liveness: Liveness,
    ) {
        let t = &self.nodes[target];
        let still_silent = t.host.power != Power::Up && t.incarnation == incarnation;
        if !still_silent || self.nodes[watcher].host.power != Power::Up {
            return;
        }
        let key = (target, incarnation, liveness);
        let upto = match self.verdicts.get(&key) {
            Some(upto) => *upto,
            None => {
                let member = Member {
                    node: target,
                    incarnation,
                    liveness,
                };
                let upto = self.news.start_member(member);
                self.verdicts.insert(key, upto);
                self.note(format!(
                    "{} declares {} {liveness:?}",
                    self.nodes[watcher].host.id, self.nodes[target].host.id
                ));
                upto
            }
        };
        if self.nodes[watcher].members < upto {
            self.deliver(watcher, Some(upto), None, &[]);
        }
    }

    /// One synchronous gossip round: every up node reconciles with `fanout` random up peers.
    pub(super) fn round(&mut self) {
        let interval = self.scenario.gossip.interval_ms;
        self.schedule(self.now + interval, Ev::Round);
        self.rounds += 1;
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].host.power == Power::Up)
            .collect();
        if up.len() < 2 {
            return;
        }
        // Exchanges without news cost their digests whatever happens.
        let exchanges = (up.len() * self.fanout) as u64;
        self.counters.messages += 2 * exchanges;
        self.counters.bytes += EXCHANGE_BYTES * exchanges;
        let members: Vec<u32> = self.nodes.iter().map(|n| n.members).collect();
        let writes: Vec<u32> = self.nodes.iter().map(|n| n.writes).collect();
        let logs_settled = up
            .iter()
            .all(|i| members[*i] == self.news.members.len() as u32)
            && up
                .iter()
                .all(|i| writes[*i] == self.news.writes.len() as u32);
        if self.news.active.is_empty() && logs_settled {
            return;
        }
        let snapshot: Vec<(u32, gossip::Bits)> = self
            .news
            .active
            .iter()
            .map(|id| (*id, self.news.rumours[*id as usize].knows.clone()))
            .collect();
        let loss = self.scenario.network.loss;
        let mut learned: BTreeMap<usize, Learned> = BTreeMap::new();
        for &a in &up {
            for _ in 0..self.fanout {
                let b = up[self.rng.range(0, up.len() as u64 - 1) as usize];
                if a == b || (loss > 0.0 && self.rng.chance(loss)) {
                    continue;
                }
                // Each side ends the round with the longer prefix of each log.
                for (log, known, unit) in [(0, &members, MEMBER_BYTES), (1, &writes, WRITE_BYTES)] {
                    let (ka, kb) = (known[a], known[b]);
                    if ka == kb {
                        continue;
                    }
                    let (learner, upto) = if ka > kb { (b, ka) } else { (a, kb) };
                    let entry = learned.entry(learner).or_default();
                    let slot = if log == 0 {
                        &mut entry.members
                    } else {
                        &mut entry.writes
                    };
                    if slot.is_none_or(|s| s < upto) {
                        self.counters.bytes +=
                            u64::from(upto - slot.unwrap_or(known[learner])) * unit;
                        *slot = Some(upto);
                    }
                }
                for (id, bits) in &snapshot {
                    let (ka, kb) = (bits.get(a), bits.get(b));
                    if ka == kb {
                        continue;
                    }
                    let learner = if ka { b } else { a };
                    let rumour = &mut self.news.rumours[*id as usize];
                    if rumour.knows.set(learner) {
                        self.counters.bytes += rumour.bytes;
                        learned.entry(learner).or_default().statuses.push(*id);
                    }
                }
            }
        }
        for (node, news) in learned {
            // What node learned: the log prefixes and the statuses (their contents are the
            // publishing cores' decisions, hashed as those were made).
            let delivered = (node as u64, news.members, news.writes, &news.statuses);
            self.trace.payload(&delivered);
            self.deliver(node, news.members, news.writes, &news.statuses);
        }
        self.retire(&up);
    }

    /// Retires statuses every up node has, and folds the log prefixes every up node knows.
    pub(super) fn retire(&mut self, up: &[usize]) {
        let news = &self.news;
        let done: Vec<u32> = news
            .active
            .iter()
            .copied()
            .filter(|id| {
                let knows = &news.rumours[*id as usize].knows;
                // Counting first: most rounds most rumours are still far from everyone.
                knows.ones() >= up.len() && up.iter().all(|n| knows.get(*n))
            })
            .collect();
        if !done.is_empty() {
            self.news.active.retain(|id| !done.contains(id));
            for id in done {
                let rumour = &mut self.news.rumours[id as usize];
                rumour.knows = gossip::Bits::default();
                let (origin, status) = (rumour.origin, rumour.status.clone());
                self.news.statuses.insert(origin, status);
            }
        }
        let members = up.iter().map(|i| self.nodes[*i].members).min().unwrap_or(0);
        let writes = up.iter().map(|i| self.nodes[*i].writes).min().unwrap_or(0);
        let nodes = &self.nodes;
        self.news
            .fold(members, writes, &self.planner, |m| describe(&nodes[m]));
        let base = self.news.write_base();
        while let Some(entry) = self.spreading_writes.first_entry() {
            if *entry.key() > base {
                break;
            }
            let took = self.rounds - entry.remove();
            self.counters.write_rounds = Some(self.counters.write_rounds.unwrap_or(0).max(took));
        }
        self.news.sweep();
        self.planner.sweep();
    }

    /// Node `n` learned longer log prefixes and statuses: hand the news to its core.
    pub(super) fn deliver(
        &mut self,
        n: usize,
        members: Option<u32>,
        writes: Option<u32>,
        statuses: &[u32],
    ) {
        let mut refute = None;
        if let Some(upto) = members {
            let from = self.nodes[n].members as usize;
            for m in &self.news.members[from.min(upto as usize)..upto as usize] {
                if m.node == n
                    && m.liveness != Liveness::Alive
                    && m.incarnation >= self.nodes[n].incarnation
                {
                    refute = Some(m.incarnation);
                }
            }
            self.nodes[n].members = self.nodes[n].members.max(upto);
        }
        if let Some(upto) = writes {
            self.nodes[n].writes = self.nodes[n].writes.max(upto);
        }
        if let Some(incarnation) = refute {
            // Declared suspect or down while alive: speak up with a higher incarnation.
            self.nodes[n].incarnation = incarnation + 1;
            let member = Member {
                node: n,
                incarnation: incarnation + 1,
                liveness: Liveness::Alive,
            };
            self.nodes[n].members = self.news.start_member(member);
        }
        let statuses: Vec<(NodeId, Arc<_>)> = statuses
            .iter()
            .map(|id| &self.news.rumours[*id as usize])
            .filter(|r| r.origin != n)
            .map(|r| (self.nodes[r.origin].host.id.clone(), r.status.clone()))
            .collect();
        let nodes = &self.nodes;
        let view = members.map(|_| {
            self.news
                .view(nodes[n].members, &self.planner, |m| describe(&nodes[m]))
        });
        let desired = writes.map(|_| self.news.desired(nodes[n].writes));
        self.with_core(n, |core, now| {
            if let Some(view) = view {
                core.handle_shared_view(now, view);
            }
            if let Some(desired) = desired {
                core.handle_shared_desired(now, desired);
            }
            for (node, status) in statuses {
                core.handle_shared_peer_status(now, node, status);
            }
        });
    }
}
