//! The simulated network and gossip: message delivery, heartbeats with status deltas, the
//! real sync machine's requests and answers (anti-entropy pulls, pushed writes), the failure detectors and the views they give each node.

use starling_core::membership::{Detector, Verdict};
use starling_core::sync::{self, RequestId, SyncOutput};
use starling_protocol::NodeId;
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
        /// The sender's detector verdicts (when changed), with their version.
        verdicts: Option<(u64, Vec<Verdict>)>,
    },
    /// Leader election: grant requests, replies and releases.
    Lease(LeaseMessage),
    /// The real probe messages.
    Peer(PeerMessage),
    /// A request of the sender's sync machine (`boots` names the sender's life: an answer
    /// that reaches a later life is dropped, as a restarted agent has no such call open).
    SyncRequest {
        id: RequestId,
        boots: u64,
        message: PeerMessage,
    },
    /// The answer to a `SyncRequest`.
    SyncAnswer {
        id: RequestId,
        boots: u64,
        message: PeerMessage,
    },
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
            let version = self.nodes[i].verdict_version;
            let verdicts = (self.nodes[p].peer_verdict_versions.get(&i) != Some(&version))
                .then(|| (version, self.nodes[i].verdicts.values().cloned().collect()));
            let msg = Msg::Heartbeat {
                incarnation,
                status: fresh.then(|| (status_version, status.clone())),
                root,
                leases: self.records_for(i, p),
                departure: (heard.unwrap_or_default() != departure).then_some(departure),
                verdicts,
            };
            self.send(i, p, msg);
        }
        self.refresh_view(i);
        // The agent hands its sync machine the live peers' roots at every gossip read.
        let now = self.node_now(i);
        let roots: Vec<(NodeId, u128)> = self
            .live_peers(i)
            .into_iter()
            .filter_map(|id| {
                let j = *self.index.get(&id)?;
                Some((id, *self.nodes[i].roots.get(&j)?))
            })
            .collect();
        let node = &mut self.nodes[i];
        // As the agent: alone only when the node's view holds no other node.
        let me = node.host.id.clone();
        let alone = node.view.nodes.keys().all(|id| *id == me);
        node.sync.set_alone(alone);
        node.sync.handle_tick(now, &node.disk.desired, &roots);
        let synced = node.sync.in_sync_at().is_some();
        if synced && node.host.core.as_ref().is_some_and(|c| c.is_rejoining()) {
            self.with_core(i, |core, now| core.handle_desired_synced(now));
        }
        self.drain_sync(i);
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
                verdicts,
            } => {
                if let Some((version, verdicts)) = verdicts
                    && self.nodes[to]
                        .peer_verdict_versions
                        .get(&from)
                        .is_none_or(|v| *v < version)
                {
                    self.nodes[to].peer_verdict_versions.insert(from, version);
                    if let Some(d) = self.nodes[to].detector.as_mut() {
                        for v in verdicts {
                            d.handle_verdict(v);
                        }
                    }
                    self.flush_detector(to);
                }
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
                self.nodes[to].roots.insert(from, root);
            }
            Msg::SyncRequest { id, boots, message } => {
                let node = &self.nodes[to];
                let answer = match message {
                    PeerMessage::Entries(entries) => {
                        self.merge_into(to, from, entries);
                        Some(PeerMessage::Stored)
                    }
                    message => sync::answer(
                        &node.disk.desired,
                        &message,
                        self.scenario.gossip.page_bytes,
                    ),
                };
                if let Some(message) = answer {
                    self.send(to, from, Msg::SyncAnswer { id, boots, message });
                }
            }
            Msg::SyncAnswer { id, boots, message } => {
                let node = &mut self.nodes[to];
                if boots == node.boots {
                    node.sync
                        .handle_answer(now, id, Ok(message), &node.disk.desired);
                    self.drain_sync(to);
                }
            }
            Msg::Peer(
                probe @ (PeerMessage::Ping { .. }
                | PeerMessage::Ack { .. }
                | PeerMessage::PingReq { .. }
                | PeerMessage::Verdict { .. }),
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
        // As the agent: `Down` straight to every member (replacements wait on it), every
        // verdict into gossip state.
        for v in verdicts {
            if v.state == Liveness::Down {
                for &p in &peers {
                    self.send(i, p, Msg::Verdict(v.clone()));
                }
            }
            let node = &mut self.nodes[i];
            node.verdicts.insert(v.node.clone(), v);
            node.verdict_version += 1;
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

impl World<'_> {
    /// The scenario's settings for every node's sync machine.
    pub(crate) fn sync_config(&self) -> sync::SyncConfig {
        sync::SyncConfig {
            page_bytes: self.scenario.gossip.page_bytes,
            request_timeout_ms: self.scenario.gossip.sync_timeout_ms,
            tombstone_grace_ms: self.scenario.gossip.tombstone_grace_ms,
            collect_every_ms: self.scenario.gossip.collect_every_ms,
            ..sync::SyncConfig::default()
        }
    }

    /// The peers node `i` sees alive (its view), as its sync machine's peers: like the
    /// agent's `live_peers`, a suspect is neither pulled from nor pushed to.
    pub(crate) fn live_peers(&self, i: usize) -> Vec<NodeId> {
        let me = &self.nodes[i].host.id;
        self.nodes[i]
            .view
            .nodes
            .iter()
            .filter(|(id, n)| *id != me && n.liveness == Liveness::Alive)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Carries out what node `i`'s sync machine decided, as the agent's `drain_sync` does.
    pub(crate) fn drain_sync(&mut self, i: usize) {
        while let Some(output) = self.nodes[i].sync.poll_output() {
            match output {
                SyncOutput::Send { id, to, message } => {
                    let boots = self.nodes[i].boots;
                    match self.index.get(&to).copied() {
                        Some(j) => self.send(i, j, Msg::SyncRequest { id, boots, message }),
                        None => {
                            let now = self.node_now(i);
                            let node = &mut self.nodes[i];
                            let no_address = Err(format!("no address known for {to}"));
                            node.sync
                                .handle_answer(now, id, no_address, &node.disk.desired);
                        }
                    }
                }
                SyncOutput::Merge { from, entries } => {
                    if let Some(j) = self.index.get(&from).copied() {
                        self.merge_into(i, j, entries);
                    }
                }
                SyncOutput::Shed {
                    from,
                    forget,
                    horizon,
                } => self.shed(i, from, &forget, horizon),
                SyncOutput::PullDone { .. }
                | SyncOutput::PullFailed { .. }
                | SyncOutput::PushAcked { .. }
                | SyncOutput::PushShort { .. } => {}
            }
        }
    }

    /// Node `i` forgets entries a peer showed deleted and collected, and collects tombstones
    /// below a new horizon: stored, then handed to the core, as the agent does.
    fn shed(
        &mut self,
        i: usize,
        from: Option<NodeId>,
        forget: &[starling_protocol::desired::Key],
        horizon: Option<u64>,
    ) {
        let shed = sync::shed(&self.nodes[i].disk.desired, forget, horizon);
        let Some(next) = shed.next else {
            return;
        };
        if shed.forgotten > 0 {
            let me = self.nodes[i].host.id.clone();
            let peer = from.map_or_else(|| "itself".to_string(), |f| f.to_string());
            self.note(format!(
                "{me} forgot {} entries deleted and collected at {peer}",
                shed.forgotten
            ));
        }
        self.counters.tombstones_collected += shed.collected as u64;
        self.counters.entries_forgotten += shed.forgotten as u64;
        self.nodes[i].disk.desired = next;
        self.nodes[i].disk.refresh_root();
        let desired = self.nodes[i].disk.desired.clone();
        self.with_core(i, |core, now| core.handle_desired(now, desired));
    }

    /// Entries from node `from` reach node `to`: the agent's one checked merge, stored (the
    /// disk), then handed to the core.
    fn merge_into(
        &mut self,
        to: usize,
        from: usize,
        entries: Vec<starling_protocol::desired::Entry>,
    ) {
        let now = self.node_now(to);
        let node = &mut self.nodes[to];
        let merged = sync::merge(&node.disk.desired, entries, &mut node.host.hlc, now);
        for (workload, why) in merged.report.refused {
            let (me, peer) = (
                self.nodes[to].host.id.clone(),
                self.nodes[from].host.id.clone(),
            );
            self.note(format!("{me} refused {workload} from {peer}: {why}"));
        }
        if let Some(next) = merged.next {
            self.nodes[to].disk.desired = next;
            self.nodes[to].disk.refresh_root();
            let desired = self.nodes[to].disk.desired.clone();
            self.with_core(to, |core, now| core.handle_desired(now, desired));
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
            verdicts,
            ..
        } => {
            8 + 16
                + verdicts.as_ref().map_or(0, |(_, vs)| {
                    8 + vs
                        .iter()
                        .map(|v| v.node.as_str().len() + v.watcher.as_str().len() + 12)
                        .sum::<usize>()
                })
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
        // The request id rides along (QUIC framing is not counted, as for every message).
        Msg::SyncRequest { message, .. } | Msg::SyncAnswer { message, .. } => {
            8 + postcard::to_allocvec(message).map_or(0, |b| b.len())
        }
        Msg::Verdict(v) => v.node.as_str().len() + v.watcher.as_str().len() + 12,
    };
    len as u64 + 28 // UDP/IP header
}
