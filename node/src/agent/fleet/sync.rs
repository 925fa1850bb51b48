//! What travels over QUIC between nodes: the requests of the sync machine
//! ([`starling_core::sync`]: anti-entropy pulls and pushed writes, decided there), and the
//! gossip keyring (rotation and catch-up).

use starling_core::sync::RequestId;

use super::*;

impl Fleet {
    /// The live peers and the desired-state root each last published, for
    /// [`starling_core::sync::Sync::handle_tick`].
    pub fn live_roots(&self, now: u64) -> Vec<(NodeId, u128)> {
        self.live_peers(now)
            .into_iter()
            .filter_map(|(id, _)| {
                let root = self.peers.get(&id).and_then(|p| p.digest)?;
                Some((id, root))
            })
            .collect()
    }

    /// The ids of the live peers, for a push.
    pub fn live_ids(&self, now: u64) -> Vec<NodeId> {
        self.live_peers(now).into_iter().map(|(id, _)| id).collect()
    }

    /// Sends request `id` of the sync machine to `to` over QUIC; its answer (or why there is
    /// none) comes back to the loop as [`SyncEvent::Answer`]. A peer with no known address
    /// fails at once.
    pub fn send_sync(&self, id: RequestId, to: &NodeId, message: PeerMessage) {
        let (quic, tx) = (self.quic.clone(), self.sync_tx.clone());
        let timeout = Duration::from_millis(self.sync.config().request_timeout_ms);
        let Some(addr) = self.peers.get(to).map(|p| quic_addr(p.base)) else {
            // The loop itself sends this one, so it must not wait for room in its own queue:
            // when full it is dropped and counted, and the request times out in the machine.
            tx.try_send(SyncEvent::Answer {
                id,
                answer: Err(format!("no address known for {to}")),
            });
            return;
        };
        tokio::spawn(async move {
            let answer = quic
                .peer(addr, message, timeout)
                .await
                .map_err(|e| e.to_string());
            tx.send(SyncEvent::Answer { id, answer }).await;
        });
    }

    /// Merges a keyring (see [`Membership::merge_keys`]) and reseals with the result.
    /// Returns whether anything changed (the caller persists it).
    pub fn merge_keys(&mut self, keys: &[(u32, [u8; 32])], primary: u32) -> bool {
        if !self.membership.merge_keys(keys, primary) {
            return false;
        }
        *self.keyring.write().unwrap_or_else(|e| e.into_inner()) = self.membership.keyring();
        tracing::info!(
            primary = self.membership.gossip_keys[0].0,
            keys = self.membership.gossip_keys.len(),
            "gossip keyring updated"
        );
        true
    }

    /// Adds a fresh key (not yet sealing with it) and returns its id.
    pub fn install_new_key(&mut self) -> u32 {
        let id = self.membership.new_key();
        *self.keyring.write().unwrap_or_else(|e| e.into_inner()) = self.membership.keyring();
        id
    }

    /// The keyring as a peer message.
    pub fn keys_message(&self) -> PeerMessage {
        PeerMessage::Keys {
            keys: self.membership.gossip_keys.clone(),
            primary: self.membership.gossip_keys[0].0,
        }
    }

    /// Sends `message` to every live peer; returns how many answered `Stored`, and how many
    /// were asked, through `done` (awaited in the broadcast's task, so it may wait for room
    /// in the loop's queue).
    pub fn broadcast<F, Fut>(&self, now: u64, message: PeerMessage, done: F)
    where
        F: FnOnce(usize, usize) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let peers = self.live_peers(now);
        let quic = self.quic.clone();
        let timeout = self.exchanges.broadcast_timeout;
        tokio::spawn(async move {
            let asked = peers.len();
            let mut tasks = tokio::task::JoinSet::new();
            for (_, addr) in peers {
                let (quic, message) = (quic.clone(), message.clone());
                tasks.spawn(async move {
                    matches!(
                        quic.peer(addr, message, timeout).await,
                        Ok(PeerMessage::Stored)
                    )
                });
            }
            let mut stored = 0;
            while let Some(done) = tasks.join_next().await {
                if matches!(done, Ok(true)) {
                    stored += 1;
                }
            }
            done(stored, asked).await;
        });
    }

    /// Packets failed to open since the last check: fetch the keyring from a peer (this node
    /// may have missed a rotation while it was down). At most every 5 s.
    pub fn maybe_fetch_keys(&mut self, now: u64, dropped_auth: u64) {
        if !self.keys_fetched.due(now, dropped_auth) {
            return;
        }
        let mut addrs: Vec<SocketAddr> = self.peers.values().map(|p| quic_addr(p.base)).collect();
        addrs.extend(
            self.membership
                .seeds
                .iter()
                .filter_map(|s| crate::cluster::resolve(s).ok())
                .map(quic_addr),
        );
        if addrs.is_empty() {
            return;
        }
        self.keys_cursor = self.keys_cursor.wrapping_add(1);
        let addr = addrs[self.keys_cursor % addrs.len()];
        let (quic, tx) = (self.quic.clone(), self.sync_tx.clone());
        let timeout = self.exchanges.keys_fetch_timeout;
        tokio::spawn(async move {
            if let Ok(PeerMessage::Keys { keys, primary }) =
                quic.peer(addr, PeerMessage::KeysRequest, timeout).await
            {
                tx.send(SyncEvent::Keys { keys, primary }).await;
            }
        });
    }
}
