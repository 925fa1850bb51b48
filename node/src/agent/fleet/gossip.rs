//! What travels in gossip and on the probe socket: reading peers' keys, publishing this
//! node's, pacing rounds, and feeding the failure detector.

use starling_protocol::gossip::{self as keys, Names, Usage, VerdictValue};
use starling_protocol::quantity::{Bytes, Millicores};
use starling_protocol::wire::Check;

use super::*;

/// The checked value of `key` in a peer's gossip state; a value that does not decode is
/// logged naming the peer and the key, and read as absent.
fn value<T: serde::de::DeserializeOwned + Check>(
    peer: &(impl std::fmt::Display + ?Sized),
    state: &chitchat::NodeState,
    key: &str,
) -> Option<T> {
    checked(peer, key, state.get(key)?)
}

fn checked<T: serde::de::DeserializeOwned + Check>(
    peer: &(impl std::fmt::Display + ?Sized),
    key: &str,
    text: &str,
) -> Option<T> {
    match keys::decode(key, text) {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::warn!(%peer, "refused a gossip value: {e}");
            None
        }
    }
}

impl Fleet {
    /// Reads gossip: updates peers and feeds the detector. Returns peers whose status
    /// changed, with the status.
    pub async fn read_gossip(&mut self, now: u64) -> Vec<(NodeId, NodeStatus)> {
        let mut statuses = Vec::new();
        let mut verdicts = Vec::new();
        let mut heard = Vec::new();
        let mut incarnations = Vec::new();
        let members_before: BTreeSet<NodeId> = self.peers.keys().cloned().collect();
        let mut revoked = self
            .revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let known_revoked = revoked.len();
        {
            let chitchat = self.chitchat.lock().await;
            // A node shows up under a new generation at every start; which one is the node is
            // `membership::lives`' call: not simply the newest, or a second process under the
            // same id (a cloned data dir) would take the id from the live one.
            let quiet_ms = self.quiet_ms();
            let mut by_id: BTreeMap<&str, Vec<(&ChitchatId, &chitchat::NodeState)>> =
                BTreeMap::new();
            for (id, state) in chitchat.node_states() {
                if &*id.node_id == self.me.as_str() {
                    if id.generation_id != self.generation {
                        let heartbeat = u64::from(state.heartbeat());
                        let base = id.gossip_advertise_addr;
                        self.own_lives
                            .handle_heard(now, id.generation_id, base, heartbeat);
                    }
                    continue;
                }
                by_id.entry(&*id.node_id).or_default().push((id, state));
            }
            let mut newest: BTreeMap<&str, (&ChitchatId, &chitchat::NodeState)> = BTreeMap::new();
            for (name, candidates) in by_id {
                let lives = self.lives.entry(name.to_string()).or_default();
                for (id, state) in &candidates {
                    let heartbeat = u64::from(state.heartbeat());
                    lives.handle_heard(now, id.generation_id, id.gossip_advertise_addr, heartbeat);
                }
                let Some((generation, _)) = lives.follow(now, quiet_ms) else {
                    continue;
                };
                if let Some(chosen) = candidates
                    .into_iter()
                    .find(|(id, _)| id.generation_id == generation)
                {
                    newest.insert(name, chosen);
                }
            }
            // Revocations spread first, so a node revoked in this very read is skipped.
            for (name, (_, state)) in &newest {
                if let Some(list) = value::<Names>(name, state, keys::REVOKED) {
                    revoked.extend(list.0);
                }
            }
            for (name, (id, state)) in newest {
                let Ok(node) = NodeId::new(name) else {
                    continue;
                };
                if revoked.contains(name) {
                    self.peers.remove(&node);
                    continue;
                }
                let entry = self.peers.entry(node.clone()).or_insert_with(|| Peer {
                    base: id.gossip_advertise_addr,
                    generation: 0,
                    heartbeat: Heartbeat::default(),
                    version: u64::MAX,
                    view: None,
                    digest: None,
                    spent: BTreeSet::new(),
                    endpoints: Vec::new(),
                    usage: None,
                    load: keys::Load::default(),
                    departure: Departure::Staying,
                    seal_key: None,
                });
                if entry.generation != id.generation_id || entry.heartbeat != state.heartbeat() {
                    heard.push(node.clone());
                }
                if entry.generation == id.generation_id && entry.version == state.max_version() {
                    entry.heartbeat = state.heartbeat();
                    continue;
                }
                let new_life = entry.generation != id.generation_id;
                let restarted = new_life && entry.generation != 0;
                entry.generation = id.generation_id;
                entry.heartbeat = state.heartbeat();
                entry.version = state.max_version();
                entry.base = id.gossip_advertise_addr;
                if let Some(mut view) = value::<NodeView>(&node, state, keys::NODE) {
                    view.id = node.clone();
                    entry.view = Some(view);
                }
                // A departure pushed over QUIC may be ahead of gossip: an older state of the
                // same generation without the key must not cancel it. A new generation is a new
                // start, back from whatever it announced.
                // Within one generation a departure only moves forward (a node that announced
                // one exits): a gossiped `Staying` older than the push does not undo it.
                let gossiped = value::<Departure>(&node, state, keys::DEPARTURE);
                let departure = match gossiped {
                    _ if new_life => gossiped.unwrap_or_default(),
                    Some(d) if d != Departure::Staying => d,
                    _ => entry.departure,
                };
                if departure != entry.departure || new_life {
                    entry.departure = departure;
                    self.detector.handle_departure(&node, departure);
                }
                entry.digest = value::<u128>(&node, state, keys::DIGEST);
                match value::<NodeStatus>(&node, state, keys::STATUS) {
                    Some(status) => statuses.push((node.clone(), status)),
                    // A restarted node runs nothing it has told us of yet: what its previous
                    // life reported must not pass for a running copy (a handover to it would
                    // stop the only healthy one). A node seen for the first time has told
                    // nothing, which is not the same as running nothing.
                    None if restarted => statuses.push((node.clone(), NodeStatus::default())),
                    None => {}
                }
                if let Some(inc) = value::<u64>(&node, state, keys::INCARNATION) {
                    incarnations.push((node.clone(), inc));
                }
                entry.usage =
                    value::<Usage>(&node, state, keys::USAGE).map(|u| (u.cpu.0, u.memory.0));
                entry.load = value(&node, state, keys::LOAD).unwrap_or_default();
                entry.seal_key = state
                    .get(keys::SEAL_KEY)
                    .and_then(starling_protocol::objects::seal::parse_public);
                entry.endpoints = value::<Names>(&node, state, keys::ENDPOINTS)
                    .map(|n| n.0)
                    .unwrap_or_default();
                entry.spent = value::<Names>(&node, state, keys::SPENT)
                    .map(|n| n.0.into_iter().collect())
                    .unwrap_or_default();
                for (key, text) in state.iter_prefix(keys::LEASE_PREFIX) {
                    if let Some(lease) = checked(&node, key, &text.value) {
                        self.heard_leases.push(lease);
                    }
                }
                if let Some(voters) = value(&node, state, keys::VOTERS) {
                    self.heard_voters.push(voters);
                }
                for (key, text) in state.iter_prefix(keys::VERDICT_PREFIX) {
                    let Ok(judged) = NodeId::new(&key[keys::VERDICT_PREFIX.len()..]) else {
                        tracing::warn!(peer = %node, key, "refused a gossip key: not a node id");
                        continue;
                    };
                    if let Some(v) = checked::<VerdictValue>(&node, key, &text.value) {
                        verdicts.push(Verdict {
                            node: judged,
                            state: v.state,
                            incarnation: v.incarnation,
                            watcher: node.clone(),
                        });
                    }
                }
            }
        }
        self.share_followed();
        if revoked.len() != known_revoked {
            tracing::warn!(names = ?revoked, "certificates revoked in the fleet");
            *self.revoked.write().unwrap_or_else(|e| e.into_inner()) = revoked;
        }
        let members: BTreeSet<NodeId> = self.peers.keys().cloned().collect();
        let revoked_now = self
            .revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.remembered.retain(|id, _| {
            !revoked_now.contains(id.as_str())
                && self.peers.get(id).is_none_or(|p| p.view.is_none())
        });
        if members != members_before {
            let mut all = members;
            all.insert(self.me.clone());
            self.detector.handle_members(now, all);
        }
        for node in heard {
            self.detector.handle_heard(now, &node);
        }
        for (node, inc) in incarnations {
            self.detector.handle_incarnation(&node, inc);
        }
        for verdict in verdicts {
            self.detector.handle_verdict(verdict);
        }
        statuses
    }

    /// How long a followed life may stay quiet before another life of its id is followed: five
    /// rounds (a live node's heartbeat moves at every exchange), at least
    /// [`GossipTimings::life_quiet_min`](super::GossipTimings::life_quiet_min).
    fn quiet_ms(&self) -> u64 {
        (self.round_interval_ms() * 5).max(self.timing.life_quiet_min.as_millis() as u64)
    }

    /// Tells the probe receiver and the QUIC dialer which life, at which address, each peer is.
    fn share_followed(&self) {
        let mut followed = self.followed.write().unwrap_or_else(|e| e.into_inner());
        for (node, peer) in &self.peers {
            followed.insert(node.to_string(), (peer.generation, probe_addr(peer.base)));
            self.quic.expect_node(quic_addr(peer.base), node.as_str());
        }
    }

    /// Checks, over QUIC, every other life of this node's id that gossip shows moving at
    /// another address: whoever answers there with this node's certificate is a second live
    /// agent under this id. Each is checked at most every
    /// [`GossipTimings::rival_recheck_interval`](super::GossipTimings::rival_recheck_interval);
    /// the answers come back as [`SyncEvent::Rival`]. Returns whether a check is in flight.
    pub fn check_rivals(&mut self, now: u64) -> bool {
        let quiet_ms = self.quiet_ms();
        let recheck_ms = self.timing.rival_recheck_interval.as_millis() as u64;
        let rivals = self
            .own_lives
            .moving_besides(self.generation, now, quiet_ms);
        for (generation, life) in rivals {
            let recent = self
                .rivals_checked
                .get(&generation)
                .is_some_and(|at| now.saturating_sub(*at) < recheck_ms);
            if life.base == self.base || recent || !self.rivals_checking.insert(generation) {
                continue;
            }
            let (quic, tx, me) = (self.quic.clone(), self.sync_tx.clone(), self.me.clone());
            tokio::spawn(async move {
                let answer = quic.identify(quic_addr(life.base)).await;
                let live = matches!(
                    &answer,
                    Ok(Some((crate::identity::Role::Node, name))) if name == me.as_str()
                );
                // Waits for room: a lost answer would leave the check in flight for good,
                // and the rejoin wait held with it.
                tx.send(SyncEvent::Rival {
                    generation,
                    base: life.base,
                    live,
                })
                .await;
            });
        }
        !self.rivals_checking.is_empty()
    }

    /// A check of [`Fleet::check_rivals`] is done.
    pub fn rival_checked(&mut self, now: u64, generation: u64) {
        self.rivals_checking.remove(&generation);
        self.rivals_checked.insert(generation, now);
    }

    /// The round interval for the current fleet size.
    pub fn round_interval_ms(&self) -> u64 {
        self.rounds.interval_ms(self.peers.len() + 1)
    }

    /// Runs a gossip round when [`starling_core::pacing::Rounds`] says one is due: exchanges
    /// with the live peers it picks (the seeds while none is live: a fleet restarting
    /// together) and a knock at one seed no gossip told of yet.
    pub fn gossip_round(&mut self, now: u64) {
        let mut live: Vec<SocketAddr> = self
            .peers
            .iter()
            .filter(|(id, _)| self.detector.liveness(id, now) != Liveness::Down)
            .map(|(_, p)| p.base)
            .collect();
        if live.is_empty() {
            live = self.seed_addrs.clone();
        }
        let known: BTreeSet<SocketAddr> = self.peers.values().map(|p| p.base).collect();
        let unknown: Vec<SocketAddr> = self
            .seed_addrs
            .iter()
            .filter(|a| !known.contains(a))
            .copied()
            .collect();
        let members = self.peers.len() + 1;
        let Some(round) = self
            .rounds
            .handle_tick(now, members, live.len(), unknown.len())
        else {
            return;
        };
        self.detector.set_stale_after_ms(round.stale_after_ms);
        for k in round.targets {
            let _ = self.handle.gossip(live[k]);
        }
        if let Some(k) = round.seed {
            let _ = self.handle.gossip(unknown[k]);
        }
    }

    /// A probe-socket message from `from`.
    pub fn on_probe(&mut self, now: u64, from: NodeId, message: PeerMessage) {
        match message {
            PeerMessage::Verdict {
                node,
                state,
                incarnation,
            } => self.detector.handle_verdict(Verdict {
                node,
                state,
                incarnation,
                watcher: from,
            }),
            other => {
                self.detector.handle_heard(now, &from);
                self.detector.handle_message(now, &from, &other);
            }
        }
    }

    /// Sends what the detector wants sent, and spreads its verdicts: `Down` straight to every
    /// member over the probe socket (fast), and every verdict in gossip.
    pub async fn flush_detector(&mut self) {
        while let Some((to, message)) = self.detector.poll_transmit() {
            if let Some(peer) = self.peers.get(&to) {
                self.probe.send(probe_addr(peer.base), message);
            }
        }
        let mut changed = false;
        while let Some(verdict) = self.detector.poll_verdict() {
            if verdict.state == Liveness::Alive {
                tracing::debug!(node = %verdict.node, incarnation = verdict.incarnation, "verdict: alive");
            } else {
                tracing::warn!(node = %verdict.node, state = ?verdict.state, incarnation = verdict.incarnation, "verdict");
            }
            // Only `Down` is urgent (replacements wait on it); suspicion and recovery travel in
            // gossip, so a busy fleet is not flooded with datagrams it does not need.
            let urgent = verdict.state == Liveness::Down;
            for peer in self.peers.values().filter(|_| urgent) {
                self.probe.send(
                    probe_addr(peer.base),
                    PeerMessage::Verdict {
                        node: verdict.node.clone(),
                        state: verdict.state,
                        incarnation: verdict.incarnation,
                    },
                );
            }
            self.published_verdicts.insert(
                verdict.node.clone(),
                keys::encode(&VerdictValue {
                    state: verdict.state,
                    incarnation: verdict.incarnation,
                }),
            );
            changed = true;
        }
        let inc = self.detector.incarnation();
        if changed || inc != self.published_inc {
            let mut chitchat = self.chitchat.lock().await;
            let state = chitchat.self_node_state();
            for (node, text) in &self.published_verdicts {
                let key = format!("{}{node}", keys::VERDICT_PREFIX);
                if state.get(&key) != Some(text.as_str()) {
                    state.set(key, text);
                }
            }
            if inc != self.published_inc {
                state.set(keys::INCARNATION, keys::encode(&inc));
                self.published_inc = inc;
            }
        }
    }

    /// Publishes this node's description when it changed.
    pub async fn publish_me_view(&mut self) {
        if !self.me_view_dirty {
            return;
        }
        self.me_view_dirty = false;
        let text = keys::encode(&self.me_view);
        let departure = keys::encode(&self.me_view.departure);
        let mut chitchat = self.chitchat.lock().await;
        let state = chitchat.self_node_state();
        state.set(keys::NODE, text);
        state.set(keys::DEPARTURE, departure);
    }

    /// Publishes this node's status.
    pub async fn publish_status(&self, status: &NodeStatus) {
        let text = keys::encode(status);
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .set(keys::STATUS, text);
    }

    /// Publishes this node's public key for secrets (once, at start).
    pub async fn publish_seal_key(&self, public: &[u8; 32]) {
        self.chitchat.lock().await.self_node_state().set(
            keys::SEAL_KEY,
            starling_protocol::objects::seal::hex(public),
        );
    }

    /// Publishes this node's service endpoints when they changed.
    pub async fn publish_endpoints(&mut self, endpoints: Vec<String>) {
        if self.published_endpoints == endpoints {
            return;
        }
        let text = keys::encode(&Names(endpoints.clone()));
        self.published_endpoints = endpoints;
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .set(keys::ENDPOINTS, text);
    }

    /// Publishes what this node measured in use, rounded (250 millicores, 64 MiB) and at
    /// most every
    /// [`GossipTimings::usage_publish_interval_min`](super::GossipTimings::usage_publish_interval_min)
    /// when it moved a whole step from what was published ([`Usage::moved_from`]): every
    /// published change travels to every member, so a jittering gauge must not cost gossip
    /// bytes.
    pub async fn publish_usage(&mut self, now: u64, (cpu, memory): (u32, u64)) {
        let measured = Usage {
            cpu: Millicores(cpu),
            memory: Bytes(memory),
        };
        let rounded = measured.rounded();
        let (last, at) = self.published_usage;
        let interval_min_ms = self.timing.usage_publish_interval_min.as_millis() as u64;
        if last.is_some_and(|last| !measured.moved_from(last))
            || (last.is_some() && now < at + interval_min_ms)
        {
            return;
        }
        self.published_usage = (Some(rounded), now);
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .set(keys::USAGE, keys::encode(&rounded));
    }

    /// Publishes the desired-state root when it changed.
    pub async fn publish_digest(&mut self, root: u128) {
        if self.published_digest == Some(root) {
            return;
        }
        self.published_digest = Some(root);
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .set(keys::DIGEST, keys::encode(&root));
    }

    /// Publishes the revoked names when they changed; returns them when they did (to
    /// persist).
    pub async fn publish_revoked(&mut self) -> Option<Vec<String>> {
        let names: Vec<String> = self
            .revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        if names.len() == self.published_revoked {
            return None;
        }
        self.published_revoked = names.len();
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .set(keys::REVOKED, keys::encode(&Names(names.clone())));
        Some(names)
    }

    /// Publishes the join tokens spent here.
    pub async fn publish_spent(&self) {
        let text = keys::encode(&Names(self.spent.iter().cloned().collect()));
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .set(keys::SPENT, text);
    }

    /// Whether a join token id was spent anywhere this node heard of.
    pub fn is_spent(&self, id: &str) -> bool {
        self.spent.contains(id) || self.peers.values().any(|p| p.spent.contains(id))
    }
}
