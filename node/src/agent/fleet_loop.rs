//! The agent loop's fleet inputs: gossip reads, probe messages, peer calls over QUIC, joins,
//! and the results of background pulls. Every one of them ends in the core or the store here,
//! in the loop that owns both.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use starling_core::sync::SyncOutput;
use starling_protocol::desired::{Entry, PAGE_BYTES};
use starling_protocol::placement::Liveness;
use starling_protocol::wire::{ApiResponse, JoinReply, JoinRequest, PeerMessage};
use tokio::sync::{mpsc, oneshot};

use super::About;
use super::Agent;
use super::fleet::{FleetInbox, PeerCall, SyncEvent};
use super::handlers::{Push, WriteOutcome};
use super::quic_api::JoinCall;
use crate::clock::now_ms;
use starling_protocol::events::EventKind;

/// Receivers of fleet inputs.
pub(crate) struct Inbox {
    pub fleet: FleetInbox,
    pub peers: mpsc::Receiver<PeerCall>,
    pub joins: mpsc::Receiver<JoinCall>,
}

/// One fleet input.
pub(crate) enum Input {
    Probe(starling_protocol::NodeId, PeerMessage),
    Sync(SyncEvent),
    Peer(PeerCall),
    Join(JoinCall),
    /// LAN discovery found a member of this cluster at this base address.
    Found(starling_protocol::NodeId, std::net::SocketAddr),
}

/// The next fleet input; never resolves without a fleet.
pub(super) async fn next(inbox: &mut Option<Inbox>) -> Option<Input> {
    let Some(inbox) = inbox.as_mut() else {
        return std::future::pending().await;
    };
    tokio::select! {
        Some((from, m)) = inbox.fleet.probes.recv() => Some(Input::Probe(from, m)),
        Some(e) = inbox.fleet.sync.recv() => Some(Input::Sync(e)),
        Some(c) = inbox.peers.recv() => Some(Input::Peer(c)),
        Some(j) = inbox.joins.recv() => Some(Input::Join(j)),
        Some((node, base)) = inbox.fleet.lan.recv() => Some(Input::Found(node, base)),
        else => None,
    }
}

impl Agent {
    /// Sends an API answer; a write is first pushed to peers (and, with `--ack-replicas`,
    /// answered only once enough of them hold it).
    pub(super) fn answer(&mut self, outcome: WriteOutcome, reply: oneshot::Sender<ApiResponse>) {
        let WriteOutcome { response, push } = outcome;
        let (Some(fleet), Some(Push { keys, acks })) = (self.fleet.as_mut(), push) else {
            let _ = reply.send(response);
            return;
        };
        let now = now_ms();
        let desired = self.core.desired();
        let entries = keys.iter().filter_map(|k| desired.any_entry(k)).collect();
        let peers = fleet.live_ids(now);
        let push = fleet.sync.push(now, entries, acks, &peers);
        if acks == 0 {
            let _ = reply.send(response);
        } else {
            fleet.push_replies.insert(push, (reply, response));
        }
        self.drain_sync();
    }

    /// Carries out what the sync machine decided: sends its requests, merges and stores the
    /// pages it pulled, answers writes whose pushes were acked or fell short.
    pub(super) fn drain_sync(&mut self) {
        loop {
            let Some(output) = self.fleet.as_mut().and_then(|f| f.sync.poll_output()) else {
                return;
            };
            match output {
                SyncOutput::Send { id, to, message } => {
                    if let Some(fleet) = &self.fleet {
                        fleet.send_sync(id, &to, message);
                    }
                }
                SyncOutput::Merge { from, entries } => {
                    let merged = self.merge_entries(&from, entries);
                    self.metrics.pulls.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%from, merged, "pulled desired-state entries");
                }
                SyncOutput::Shed {
                    from,
                    forget,
                    horizon,
                } => self.shed_entries(from.as_ref(), &forget, horizon),
                SyncOutput::PullDone { from, pages } => {
                    tracing::trace!(%from, pages, "anti-entropy pull done");
                }
                SyncOutput::PullFailed {
                    from,
                    reason,
                    failures,
                    warn,
                } => {
                    self.metrics.pull_failures.fetch_add(1, Ordering::Relaxed);
                    // A node that cannot catch up must say so at the default log level.
                    if warn {
                        tracing::warn!(
                            %from,
                            failures,
                            "anti-entropy pull failed: {reason}; this node may be missing desired-state entries until a pull succeeds"
                        );
                    }
                }
                SyncOutput::PushAcked { push, .. } => {
                    if let Some((reply, response)) = self
                        .fleet
                        .as_mut()
                        .and_then(|f| f.push_replies.remove(&push))
                    {
                        let _ = reply.send(response);
                    }
                }
                SyncOutput::PushShort {
                    push,
                    stored,
                    wanted,
                    asked,
                } => {
                    if let Some((reply, _)) = self
                        .fleet
                        .as_mut()
                        .and_then(|f| f.push_replies.remove(&push))
                    {
                        let _ = reply.send(ApiResponse::Error(starling_protocol::wire::ApiError {
                            message: format!(
                                "stored durably here, but only {stored} of the {wanted} peers asked for (--ack-replicas) confirmed it ({asked} reachable); it will still spread"
                            ),
                            fields: Vec::new(),
                        }));
                    }
                }
            }
        }
    }

    pub(super) async fn on_fleet_input(&mut self, input: Input) {
        let now = now_ms();
        match input {
            Input::Probe(from, message) => {
                let verdict = matches!(message, PeerMessage::Verdict { .. });
                if let Some(fleet) = self.fleet.as_mut() {
                    fleet.on_probe(now, from, message);
                    fleet.flush_detector().await;
                }
                // A verdict can make a node down: act on it now, not at the next gossip read.
                if verdict {
                    self.refresh_view(now);
                }
            }
            Input::Sync(SyncEvent::Answer { id, answer }) => {
                if let Some(fleet) = self.fleet.as_mut() {
                    fleet
                        .sync
                        .handle_answer(now, id, answer, self.core.desired());
                }
                self.drain_sync();
            }
            Input::Sync(SyncEvent::Keys { keys, primary }) => self.take_keys(&keys, primary),
            Input::Sync(SyncEvent::Rival {
                generation,
                base,
                live,
            }) => self.on_rival(now, generation, base, live),
            Input::Sync(SyncEvent::DepartureAnnounced { acked, asked }) => {
                self.on_departure_announced(acked, asked);
            }
            Input::Sync(SyncEvent::KeyInstalled {
                id,
                installed,
                asked,
                reply,
            }) => {
                let Some(fleet) = self.fleet.as_mut() else {
                    return;
                };
                let keys = fleet.membership.gossip_keys.clone();
                fleet.merge_keys(&keys, id);
                let message = fleet.keys_message();
                fleet.broadcast(now, message, |_, _| async {});
                self.persist_keys();
                self.note(
                    EventKind::Membership,
                    About::Node,
                    format!(
                        "gossip key {id} now seals; {installed} of {asked} live peers held it first"
                    ),
                );
                let _ = reply.send(ApiResponse::KeyRotated {
                    key: id,
                    installed: installed as u64,
                    asked: asked as u64,
                });
            }
            Input::Peer(call) => {
                let answer = self.on_peer_message(&call.from, call.message);
                if let Some(answer) = answer {
                    let _ = call.reply.send(answer);
                }
                if let Some(fleet) = self.fleet.as_mut() {
                    fleet.flush_detector().await;
                }
            }
            Input::Join((request, reply)) => {
                let answer = self.on_join(request).await;
                let _ = reply.send(answer);
            }
            Input::Found(node, base) => {
                if let Some(fleet) = self.fleet.as_mut() {
                    fleet.add_found_seed(&node, base);
                }
            }
        }
    }

    fn on_peer_message(
        &mut self,
        from: &starling_protocol::NodeId,
        message: PeerMessage,
    ) -> Option<PeerMessage> {
        let now = now_ms();
        match message {
            message @ (PeerMessage::DigestLeaves(_) | PeerMessage::Pull(_)) => {
                let page_bytes = self
                    .fleet
                    .as_ref()
                    .map_or(PAGE_BYTES, |f| f.sync.config().page_bytes);
                starling_core::sync::answer(self.core.desired(), &message, page_bytes)
            }
            PeerMessage::Entries(entries) => {
                self.merge_entries(from, entries);
                Some(PeerMessage::Stored)
            }
            PeerMessage::Keys { keys, primary } => {
                self.take_keys(&keys, primary);
                Some(PeerMessage::Stored)
            }
            PeerMessage::KeysRequest => self.fleet.as_ref().map(|f| f.keys_message()),
            PeerMessage::Departure(departure) => {
                if let Some(fleet) = self.fleet.as_mut() {
                    fleet.on_departure(from, departure);
                }
                self.note(
                    EventKind::Membership,
                    About::Node,
                    format!("{from} announced it is stopping: {departure:?}"),
                );
                self.refresh_view(now);
                Some(PeerMessage::Stored)
            }
            PeerMessage::Lease(message) => Some(self.on_lease_message(from, message)),
            message @ (PeerMessage::Verdict { .. }
            | PeerMessage::Ping { .. }
            | PeerMessage::Ack { .. }
            | PeerMessage::PingReq { .. }) => {
                if let Some(fleet) = self.fleet.as_mut() {
                    fleet.on_probe(now, from.clone(), message);
                }
                Some(PeerMessage::Stored)
            }
            _ => None,
        }
    }

    /// Merges entries from `from` (refusing those whose clock is too far ahead), stores the
    /// result durably, then hands it to the core. Returns how many entries changed.
    fn merge_entries(&mut self, from: &starling_protocol::NodeId, entries: Vec<Entry>) -> usize {
        let now = now_ms();
        let merged = starling_core::sync::merge(self.core.desired(), entries, &mut self.hlc, now);
        for (workload, why) in &merged.report.refused {
            tracing::warn!(%from, %workload, "refused a desired-state entry: {why}");
        }
        let changed = merged.report.changed;
        let Some(next) = merged.next else {
            return 0;
        };
        self.metrics
            .merged_entries
            .fetch_add(changed as u64, Ordering::Relaxed);
        if let Err(e) = self.store.write_desired(&next) {
            tracing::error!(%from, "cannot store merged entries, dropping them: {e}");
            return 0;
        }
        self.decide(|core| core.handle_desired(now, next));
        changed
    }

    /// Forgets entries a peer showed deleted and collected, and collects tombstones below a
    /// new horizon (see `starling_protocol::desired::tombstones`); stored before the core
    /// sees it, like a merge.
    fn shed_entries(
        &mut self,
        from: Option<&starling_protocol::NodeId>,
        forget: &[starling_protocol::desired::Key],
        horizon: Option<u64>,
    ) {
        let shed = starling_core::sync::shed(self.core.desired(), forget, horizon);
        let Some(next) = shed.next else {
            return;
        };
        let source = from.map_or_else(|| "this node".to_string(), |f| f.to_string());
        if let Err(e) = self.store.write_desired(&next) {
            tracing::error!(from = %source, "cannot store the shed desired state, keeping it: {e}");
            return;
        }
        if shed.forgotten > 0 {
            tracing::info!(
                from = %source,
                forgotten = shed.forgotten,
                "dropped desired-state entries deleted elsewhere while this node was away longer than the tombstone grace"
            );
        }
        if shed.collected > 0 {
            tracing::info!(
                from = %source,
                collected = shed.collected,
                horizon,
                "collected tombstones older than the tombstone grace"
            );
        }
        let now = now_ms();
        self.decide(|core| core.handle_desired(now, next));
    }

    /// Merges a peer's keyring and stores the result when it changed.
    fn take_keys(&mut self, keys: &[(u32, [u8; 32])], primary: u32) {
        let changed = self
            .fleet
            .as_mut()
            .is_some_and(|f| f.merge_keys(keys, primary));
        if changed {
            self.persist_keys();
        }
    }

    fn persist_keys(&self) {
        if let Some(fleet) = &self.fleet
            && let Err(e) = fleet.membership.save_keys(self.store.dir())
        {
            tracing::error!("cannot store the gossip keyring: {e}");
        }
    }

    /// Rotates the gossip key: installs a new key here and on every live peer, then (in
    /// [`SyncEvent::KeyInstalled`]) seals with it everywhere. Old keys keep opening packets.
    pub(super) fn rotate_key(&mut self, reply: oneshot::Sender<ApiResponse>) {
        let now = now_ms();
        let Some(fleet) = self.fleet.as_mut() else {
            let _ = reply.send(ApiResponse::Error(starling_protocol::wire::ApiError {
                message: "this node is not in a cluster: no gossip key to rotate".into(),
                fields: Vec::new(),
            }));
            return;
        };
        let id = fleet.install_new_key();
        let current = fleet.membership.gossip_keys[0].0;
        let message = PeerMessage::Keys {
            keys: fleet.membership.gossip_keys.clone(),
            primary: current,
        };
        let tx = fleet.sync_tx.clone();
        // Waits for room in the loop's queue: the operator's `key rotate` waits for `reply`.
        fleet.broadcast(now, message, move |installed, asked| async move {
            tx.send(SyncEvent::KeyInstalled {
                id,
                installed,
                asked,
                reply,
            })
            .await;
        });
        self.persist_keys();
    }

    async fn on_join(&mut self, request: JoinRequest) -> JoinReply {
        let Some(fleet) = self.fleet.as_mut() else {
            return JoinReply::Refused("this node is not in a cluster".into());
        };
        let Some(id) = fleet.membership.check_secret(&request.secret) else {
            tracing::warn!(node = %request.node, "refused a join with a token this cluster did not make");
            return JoinReply::Refused(
                "the join token is not valid for this cluster (make a new one with `starling token create`)".into(),
            );
        };
        if fleet.is_spent(&id) {
            return JoinReply::Refused(format!(
                "the join token {id} was already used (tokens are one-time; make a new one with `starling token create`)"
            ));
        }
        // Checked after the token (strangers learn nothing about ids) and before spending it,
        // so the operator can retry under another id with the same token.
        if let Some(reason) = fleet.join_clash(&request.node, now_ms()) {
            tracing::warn!(node = %request.node, "refused a join: {reason}");
            return JoinReply::Refused(reason);
        }
        let seeds = fleet.seeds();
        match fleet.membership.enrol(&request.node, seeds) {
            Ok(enrolment) => {
                fleet.enrolled.insert(request.node.clone());
                fleet.spent.insert(id);
                fleet.publish_spent().await;
                tracing::info!(node = %request.node, "enrolled a new node");
                self.note(
                    EventKind::Membership,
                    About::Node,
                    format!("enrolled node {}", request.node),
                );
                JoinReply::Accepted(Box::new(enrolment))
            }
            Err(e) => JoinReply::Refused(format!("could not sign a certificate: {e}")),
        }
    }

    /// The answer of a check of another life of this node's id at `base`. A live one means
    /// two agents run under one id. The later start gives way: an agent still in its rejoin
    /// wait has acted on nothing and exits; past it, the agent with the newer generation
    /// exits (both sides decide alike, so one stays); the other one logs an error and keeps
    /// its id, and peers keep following it (`membership::lives`).
    fn on_rival(&mut self, now: u64, generation: u64, base: std::net::SocketAddr, live: bool) {
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        fleet.rival_checked(now, generation);
        let (mine, here, checking) = (
            fleet.generation,
            fleet.base,
            !fleet.rivals_checking.is_empty(),
        );
        if live {
            let me = self.node.clone();
            if self.core.is_rejoining() || generation < mine {
                self.identity_clash = Some(format!(
                    "another live agent runs as node {me} at {base} (started at {generation} ms, \
                     this one at {mine} ms at {here}); two agents under one id would take each \
                     other's replicas, so this one refuses to run. If this data dir is a copy of \
                     {me}'s (a cloned disk or image), give this device its own: start it with a \
                     new data dir and a new token (`starling token create` on a member, then \
                     `starling join TOKEN`, which picks a new id). If {me} moved to this machine, \
                     stop the agent at {base} first."
                ));
            } else {
                tracing::error!(
                    node = %me,
                    other = %base,
                    "another agent claims this node's id (started later, at {generation} ms); \
                     this agent keeps the id and the fleet keeps following it; stop the other one"
                );
                self.note(
                    EventKind::Agent,
                    About::Node,
                    format!("another agent at {base} claims node id {me}; it must stop"),
                );
            }
        }
        if !checking {
            self.decide(|core| core.handle_rejoin_hold(now, false));
        }
    }

    /// Reads gossip into the detector and the core, publishes the digest, starts a pull when
    /// a peer's desired state differs.
    pub(super) async fn on_gossip_tick(&mut self) {
        let now = now_ms();
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        let statuses = fleet.read_gossip(now).await;
        // Before anything heard here can end the rejoin wait: a second live agent under this
        // id must be ruled out first (or this one exits, having done nothing).
        let checking = fleet.check_rivals(now);
        self.decide(|core| core.handle_rejoin_hold(now, checking));
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        fleet.publish_me_view().await;
        fleet.flush_keys().await;
        fleet.gossip_round(now);
        fleet.maybe_fetch_keys(
            now,
            self.metrics.gossip.dropped_auth.load(Ordering::Relaxed),
        );
        fleet.detector.handle_timeout(now);
        fleet.flush_detector().await;
        if let Some(names) = fleet.publish_revoked().await
            && let Err(e) = crate::cluster::Membership::write_revoked(self.store.dir(), &names)
        {
            tracing::error!("cannot store the revoked names: {e}");
        }
        let root = self.core.desired().digest().root();
        fleet.publish_digest(root).await;
        let peers = fleet.live_roots(now);
        // Alone only when neither gossip nor the last stored view knows another node: a node
        // back from a long absence has heard nobody yet, and must not claim to be complete.
        let me = &self.node;
        let alone = fleet.peers.is_empty() && self.core.view().nodes.keys().all(|node| node == me);
        fleet.sync.set_alone(alone);
        fleet.sync.handle_tick(now, self.core.desired(), &peers);
        let synced = fleet.sync.in_sync_at().is_some();
        if synced && self.core.is_rejoining() {
            self.decide(|core| core.handle_desired_synced(now));
        }
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        let records = std::mem::take(&mut fleet.heard_leases);
        let voters = std::mem::take(&mut fleet.heard_voters);
        self.refresh_view(now);
        for (node, status) in statuses {
            self.decide(|core| core.handle_peer_status(now, node, status));
        }
        if !records.is_empty() || !voters.is_empty() {
            self.on_heard_leases(records, voters);
        }
        self.drain_sync();
        self.render_gauges();
        self.update_locator();
    }

    /// Where each replica runs on a live peer, for log requests.
    fn update_locator(&self) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        let mut map = BTreeMap::new();
        for (node, status) in self.core.peer_statuses() {
            let live = self
                .core
                .view()
                .nodes
                .get(node)
                .is_some_and(|n| n.liveness != Liveness::Down);
            let Some(peer) = fleet.peers.get(node).filter(|_| live) else {
                continue;
            };
            for (id, r) in &status.replicas {
                if r.is_active() {
                    map.insert(id.clone(), crate::cluster::quic_addr(peer.base));
                }
            }
        }
        // Replicas running here are served from here.
        for id in self.core.status().replicas.keys() {
            map.remove(id);
        }
        *self.locator.write().unwrap_or_else(|e| e.into_inner()) = map;
        let members = self
            .core
            .view()
            .nodes
            .iter()
            .filter(|(id, _)| **id != self.node)
            .map(|(id, n)| crate::events::Member {
                node: id.clone(),
                quic: fleet
                    .peers
                    .get(id)
                    .filter(|_| n.liveness != Liveness::Down)
                    .map(|p| crate::cluster::quic_addr(p.base)),
            })
            .collect();
        *self.members.write().unwrap_or_else(|e| e.into_inner()) = members;
    }

    /// The down node whose last status has `replica` running, when this node starts it: a
    /// failover, for the event log.
    pub(super) fn failed_over_from(
        &self,
        replica: &starling_protocol::placement::ReplicaId,
    ) -> Option<starling_protocol::NodeId> {
        let view = self.core.view();
        self.core
            .peer_statuses()
            .iter()
            .find(|(node, status)| {
                view.nodes
                    .get(*node)
                    .is_some_and(|n| n.liveness == Liveness::Down)
                    && status.replicas.get(replica).is_some_and(|r| r.is_active())
            })
            .map(|(node, _)| node.clone())
    }

    /// Hands the core the fleet as the detector sees it now, when it changed.
    fn refresh_view(&mut self, now: u64) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        let view = fleet.view(now);
        let went_down = view
            .nodes
            .iter()
            .filter(|(id, n)| {
                n.liveness == Liveness::Down
                    && self
                        .core
                        .view()
                        .nodes
                        .get(*id)
                        .is_some_and(|old| old.liveness != Liveness::Down)
            })
            .count() as u64;
        if went_down > 0 {
            self.metrics
                .failovers
                .fetch_add(went_down, Ordering::Relaxed);
        }
        self.note_liveness_changes(&view);
        if view != *self.core.view() {
            let members_changed = view.nodes.len() != self.core.view().nodes.len()
                || view.nodes.keys().ne(self.core.view().nodes.keys());
            if members_changed && let Err(e) = self.store.write_view(&view) {
                tracing::error!("cannot store the fleet view: {e}");
            }
            self.decide(|core| core.handle_view(now, view));
        }
    }

    /// Records the members that went down or came back up since the core's view.
    fn note_liveness_changes(&mut self, view: &starling_protocol::placement::FleetView) {
        let changes: Vec<(starling_protocol::NodeId, bool)> = view
            .nodes
            .iter()
            .filter(|(id, _)| **id != self.node)
            .filter_map(|(id, n)| {
                let old = self.core.view().nodes.get(id)?.liveness;
                let down = n.liveness == Liveness::Down;
                (down != (old == Liveness::Down)).then(|| (id.clone(), down))
            })
            .collect();
        for (node, down) in changes {
            if down {
                self.note(
                    EventKind::NodeDown,
                    About::Node,
                    format!("{node} is down: its replicas move to other nodes"),
                );
            } else {
                self.note(
                    EventKind::NodeUp,
                    About::Node,
                    format!("{node} is up again"),
                );
            }
        }
    }

    /// Members and replicas by state, and workloads, for `/metrics`.
    fn render_gauges(&self) {
        let mut members: BTreeMap<&str, usize> = [("alive", 0), ("suspect", 0), ("down", 0)].into();
        for node in self.core.view().nodes.values() {
            let key = match node.liveness {
                Liveness::Alive => "alive",
                Liveness::Suspect => "suspect",
                Liveness::Down => "down",
            };
            *members.entry(key).or_default() += 1;
        }
        let mut replicas: BTreeMap<String, usize> = BTreeMap::new();
        for status in self.core.status().replicas.values() {
            *replicas.entry(status.state.to_string()).or_default() += 1;
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP starling_members Members of the fleet as this node sees them, by state.\n# TYPE starling_members gauge"
        );
        for (state, n) in members {
            let _ = writeln!(out, "starling_members{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP starling_replicas Replicas on this node, by state.\n# TYPE starling_replicas gauge"
        );
        for (state, n) in replicas {
            let _ = writeln!(out, "starling_replicas{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP starling_workloads Workloads in the desired state.\n# TYPE starling_workloads gauge\nstarling_workloads {}",
            self.core.desired().workloads().count()
        );
        *self
            .metrics
            .gauges
            .write()
            .unwrap_or_else(|e| e.into_inner()) = out;
    }
}
