//! The simulated network and gossip: message delivery, heartbeats with status deltas, the
//! real anti-entropy exchange, the failure detectors and the views they give each node.

use starling_core::membership::{Detector, Verdict};
use starling_protocol::NodeId;
use starling_protocol::desired::{Digest, PullPlan};
use starling_protocol::lease::{Lease, LeaseMessage};
use starling_protocol::placement::{Departure, FleetView, Liveness};
use starling_protocol::status::NodeStatus;
use starling_protocol::wire::PeerMessage;

use crate::host::{Fleet, Power};
use crate::world::{Event, World};

/// Messages between simulated nodes (serializable so the trace can hash what is delivered).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) enum Msg {
    /// A watcher's verdict, spread to every member.
    Verdict(Verdict),
    /// Liveness, status (when changed), the desired-state digest root and the sender's
    /// incarnation (which refutes suspicion).
    Heartbeat {
        status: Option<(u64, NodeStatus)>,
        root: u128,
        incarnation: u64,
        /// The sender's lease records (when changed), with their version.
        leases: Option<(u64, Vec<Lease>)>,
        /// The sender's planned absence, when the receiver has not heard it yet (a key of
        /// its gossip state, like its status).
        departure: Option<Departure>,
    },
    /// Leader election: grant requests, replies and releases.
    Lease(LeaseMessage),
    /// The real anti-entropy and probe messages.
    Peer(PeerMessage),
}

impl World<'_> {
    pub(crate) fn gossip_tick(&mut self, i: usize) {
        self.nodes[i].heartbeat += 1;
        let node = &mut self.nodes[i];
        let root = node.disk.root;
        let status_version = node.status_version;
        let status = node.status.clone();
        let peers: Vec<usize> = node.known.iter().copied().filter(|p| *p != i).collect();
        for p in peers {
            // Status rides along only when the peer has not seen this version (a real gossip
            // layer sends deltas the same way).
            let fresh = self.nodes[p].peer_versions.get(&i) != Some(&status_version);
            let incarnation = self.nodes[i]
                .detector
                .as_ref()
                .map_or(0, Detector::incarnation);
            let departure = self.nodes[i].departure;
            let heard = self.nodes[p].departures_heard.get(&i).copied();
            let msg = Msg::Heartbeat {
                incarnation,
                status: fresh.then(|| (status_version, status.clone())),
                root,
                leases: self.records_for(i, p),
                departure: (heard.unwrap_or_default() != departure).then_some(departure),
            };
            self.send(i, p, msg);
        }
        self.refresh_view(i);
        let next = self.now + self.scenario.gossip.interval_ms;
        let boots = self.nodes[i].boots;
        self.schedule(next, Event::GossipTick(i, boots));
    }

    pub fn send(&mut self, from: usize, to: usize, msg: Msg) {
        self.counters.messages += 1;
        self.counters.bytes += msg_bytes(&msg);
        if self.blocked.contains(&(from, to)) || self.rng.chance(self.scenario.network.loss) {
            return;
        }
        let (lo, hi) = self.scenario.network.latency_ms;
        let at = self.now + self.rng.range(lo, hi);
        if self.rng.chance(self.scenario.network.duplicate) {
            let again = at + self.rng.range(lo, hi);
            self.schedule(
                again,
                Event::Deliver {
                    from,
                    to,
                    msg: msg.clone(),
                },
            );
        }
        self.schedule(at, Event::Deliver { from, to, msg });
    }

    pub(crate) fn deliver(&mut self, from: usize, to: usize, msg: Msg) {
        let now = self.node_now(to);
        match msg {
            Msg::Heartbeat {
                status,
                root,
                incarnation,
                leases,
                departure,
            } => {
                if let Some(departure) = departure {
                    self.hear_departure(to, from, departure);
                }
                let from_id = self.nodes[from].host.id.clone();
                let node = &mut self.nodes[to];
                if let Some(d) = node.detector.as_mut() {
                    d.handle_heard(now, &from_id);
                    d.handle_incarnation(&from_id, incarnation);
                }
                node.last_heard.insert(from, now);
                node.known.insert(from);
                if let Some((version, status)) = status
                    && node.peer_versions.get(&from).is_none_or(|v| *v < version)
                {
                    node.peer_versions.insert(from, version);
                    let peer = self.nodes[from].host.id.clone();
                    self.with_core(to, |core, now| core.handle_peer_status(now, peer, status));
                }
                if let Some((version, records)) = leases {
                    self.merge_records(from, to, version, records);
                }
                let in_flight = self.nodes[to]
                    .syncing
                    .get(&from)
                    .is_some_and(|since| now < since + 5_000);
                if self.nodes[to].disk.root != root && !in_flight {
                    self.nodes[to].syncing.insert(from, now);
                    let mine = self.nodes[to].disk.desired.digest();
                    let leaves = mine
                        .level(starling_protocol::desired::digest::DIGEST_DEPTH)
                        .to_vec();
                    self.send(to, from, Msg::Peer(PeerMessage::DigestLeaves(leaves)));
                }
            }
            Msg::Peer(PeerMessage::DigestLeaves(leaves)) => {
                let theirs = Digest::from_buckets(&leaves);
                let desired = &self.nodes[to].disk.desired;
                let buckets = desired.digest().diff(&theirs);
                let summary = desired.summary(&buckets);
                self.send(to, from, Msg::Peer(PeerMessage::Summary(summary)));
            }
            Msg::Peer(PeerMessage::Summary(summary)) => {
                let wanted = self.nodes[to].disk.desired.wanted(&summary);
                let mut plan = PullPlan::new(wanted);
                match plan.next_request() {
                    None => {
                        self.nodes[to].syncing.remove(&from);
                    }
                    Some(names) => {
                        self.nodes[to].pulls.insert(from, plan);
                        self.send(to, from, Msg::Peer(PeerMessage::Pull(names)));
                    }
                }
            }
            Msg::Peer(PeerMessage::Pull(names)) => {
                let budget = self.scenario.gossip.page_bytes;
                let entries = self.nodes[to].disk.desired.export_page(&names, budget);
                self.send(to, from, Msg::Peer(PeerMessage::Entries(entries)));
            }
            Msg::Peer(PeerMessage::Entries(entries)) => {
                // The same paging and the same checked merge as the agent's sync.
                let next = self.nodes[to].pulls.get_mut(&from).and_then(|plan| {
                    plan.received(&entries);
                    plan.next_request()
                });
                match next {
                    Some(names) => {
                        self.nodes[to].syncing.insert(from, now);
                        self.send(to, from, Msg::Peer(PeerMessage::Pull(names)));
                    }
                    None => {
                        self.nodes[to].syncing.remove(&from);
                        self.nodes[to].pulls.remove(&from);
                    }
                }
                let node = &mut self.nodes[to];
                let report = node
                    .disk
                    .desired
                    .merge_checked(entries, &mut node.host.hlc, now);
                for (workload, why) in report.refused {
                    let (me, peer) = (
                        self.nodes[to].host.id.clone(),
                        self.nodes[from].host.id.clone(),
                    );
                    self.note(format!("{me} refused {workload} from {peer}: {why}"));
                }
                if report.changed > 0 {
                    self.nodes[to].disk.refresh_root();
                    let desired = self.nodes[to].disk.desired.clone();
                    self.with_core(to, |core, now| core.handle_desired(now, desired));
                }
            }
            Msg::Peer(
                probe @ (PeerMessage::Ping { .. }
                | PeerMessage::Ack { .. }
                | PeerMessage::PingReq { .. }),
            ) => {
                let from_id = self.nodes[from].host.id.clone();
                if let Some(d) = self.nodes[to].detector.as_mut() {
                    d.handle_message(now, &from_id, &probe);
                }
                self.flush_detector(to);
            }
            Msg::Verdict(verdict) => {
                if let Some(d) = self.nodes[to].detector.as_mut() {
                    d.handle_verdict(verdict);
                }
                self.flush_detector(to);
            }
            Msg::Lease(message) => self.deliver_lease(from, to, message),
            Msg::Peer(_) => {}
        }
    }

    /// Sends what node `i`'s detector wants sent and re-arms its timer.
    pub(crate) fn flush_detector(&mut self, i: usize) {
        let Some(d) = self.nodes[i].detector.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        while let Some(t) = d.poll_transmit() {
            out.push(t);
        }
        let mut verdicts = Vec::new();
        while let Some(v) = d.poll_verdict() {
            verdicts.push(v);
        }
        let deadline = d.poll_timeout();
        for (to, msg) in out {
            if let Some(&j) = self.index.get(&to) {
                self.send(i, j, Msg::Peer(msg));
            }
        }
        let peers: Vec<usize> = self.nodes[i]
            .known
            .iter()
            .copied()
            .filter(|p| *p != i)
            .collect();
        for v in verdicts {
            for &p in &peers {
                self.send(i, p, Msg::Verdict(v.clone()));
            }
        }
        if let Some(t) = deadline {
            let at = (t as i64 - self.nodes[i].host.skew_ms).max(self.now as i64) as u64;
            if self.nodes[i]
                .detector_timer_at
                .is_none_or(|armed| at < armed || armed < self.now)
            {
                self.nodes[i].detector_timer_at = Some(at);
                self.schedule(at, Event::DetectorTimer(i));
            }
        }
    }

    /// Tells node `i`'s detector who the members are.
    pub fn update_detector_members(&mut self, i: usize) {
        let now = self.node_now(i);
        let members: std::collections::BTreeSet<NodeId> = self.nodes[i]
            .known
            .iter()
            .filter(|m| self.nodes[**m].host.power != Power::Gone)
            .map(|m| self.nodes[*m].host.id.clone())
            .collect();
        if let Some(d) = self.nodes[i].detector.as_mut() {
            d.handle_members(now, members);
        }
        self.flush_detector(i);
    }

    /// Recomputes node `i`'s view from what it has heard, and tells its core if it changed.
    pub fn refresh_view(&mut self, i: usize) {
        let now = self.node_now(i);
        let g = &self.scenario.gossip;
        let node = &self.nodes[i];
        let mut view = FleetView::default();
        for &m in &node.known {
            let other = &self.nodes[m];
            if other.host.power == Power::Gone && m != i {
                continue;
            }
            let liveness = if m == i {
                Liveness::Alive
            } else if let Some(d) = &node.detector {
                d.liveness(&other.host.id, now)
            } else {
                match node.last_heard.get(&m) {
                    Some(t) if now.saturating_sub(*t) < g.suspect_after_ms => Liveness::Alive,
                    Some(t) if now.saturating_sub(*t) < g.down_after_ms => Liveness::Suspect,
                    _ => Liveness::Down,
                }
            };
            let mut entry = crate::checks::node_view(
                &other.host.id,
                &other.host.labels,
                other.host.capacity,
                liveness,
            );
            entry.departure = if m == i {
                node.departure
            } else {
                node.departures_heard.get(&m).copied().unwrap_or_default()
            };
            view.nodes.insert(other.host.id.clone(), entry);
        }
        if view != self.nodes[i].view {
            // A node back from an outage reports its status again (the agent hands a peer's
            // status to its core whenever that peer's gossip state moves, and a returning
            // node's does: it refutes the verdicts on it). The core counts what it reported
            // before the outage as stale until then, so its next heartbeat carries the status.
            let old = &self.nodes[i].view;
            let back: Vec<usize> = old
                .nodes
                .iter()
                .filter(|(id, was)| {
                    was.liveness == Liveness::Down
                        && view
                            .nodes
                            .get(*id)
                            .is_some_and(|v| v.liveness != Liveness::Down)
                })
                .filter_map(|(id, _)| self.index.get(id).copied())
                .collect();
            for m in back {
                self.nodes[i].peer_versions.remove(&m);
            }
            self.nodes[i].view = view.clone();
            self.nodes[i].disk.view = view.clone();
            self.with_core(i, |core, now| core.handle_view(now, view));
        }
    }
}

/// Encoded size of a message, for the bytes-per-node figure.
pub(crate) fn msg_bytes(msg: &Msg) -> u64 {
    let len = match msg {
        Msg::Heartbeat {
            status,
            leases,
            departure,
            ..
        } => {
            8 + 16
                + departure.map_or(0, |d| postcard::to_allocvec(&d).map_or(0, |b| b.len() + 8))
                + status.as_ref().map_or(0, |(_, s)| {
                    postcard::to_allocvec(s).map_or(0, |b| b.len() + 8)
                })
                + leases.as_ref().map_or(0, |(_, l)| {
                    postcard::to_allocvec(l).map_or(0, |b| b.len() + 8)
                })
        }
        Msg::Lease(m) => postcard::to_allocvec(m).map_or(0, |b| b.len()),
        Msg::Peer(m) => postcard::to_allocvec(m).map_or(0, |b| b.len()),
        Msg::Verdict(v) => v.node.as_str().len() + v.watcher.as_str().len() + 12,
    };
    len as u64 + 28 // UDP/IP header
}
