//! What travels over QUIC between nodes: anti-entropy pulls, pushed writes, and the gossip
//! keyring (rotation and catch-up).

use starling_protocol::desired::{PAGE_BYTES, PullPlan};

use super::*;

impl Fleet {
    /// Starts a pull from a live peer whose root differs from `mine`, one at a time. A pull
    /// runs page after page (see [`starling_protocol::desired::sync`]); each page refreshes
    /// the guard, so a long backlog on a slow link is not pulled twice at once.
    pub fn maybe_pull(&mut self, now: u64, desired: &DesiredState, mine: u128) {
        if let Some((_, since)) = &self.syncing {
            if now < since + PULL_STALL_MS {
                return;
            }
            self.syncing = None;
        }
        let candidates: Vec<(NodeId, SocketAddr)> = self
            .live_peers(now)
            .into_iter()
            .filter(|(id, _)| {
                self.peers
                    .get(id)
                    .and_then(|p| p.digest)
                    .is_some_and(|d| d != mine)
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        self.sync_cursor = self.sync_cursor.wrapping_add(1);
        let (from, addr) = candidates[self.sync_cursor % candidates.len()].clone();
        self.syncing = Some((from.clone(), now));
        let leaves = desired
            .digest()
            .level(starling_protocol::desired::digest::DIGEST_DEPTH)
            .to_vec();
        let snapshot = desired.clone();
        let (quic, tx) = (self.quic.clone(), self.sync_tx.clone());
        tokio::spawn(async move {
            if let Err(reason) = pull(&quic, addr, leaves, &snapshot, &from, &tx).await {
                let _ = tx.send(SyncEvent::Failed { from, reason });
            }
        });
    }

    /// Pushes fresh entries to live peers; answers `reply` once `acks` of them stored them.
    pub fn push(
        &self,
        now: u64,
        entries: Vec<DesiredEntry>,
        acks: u32,
        reply: Option<(
            oneshot::Sender<starling_protocol::wire::ApiResponse>,
            starling_protocol::wire::ApiResponse,
        )>,
    ) {
        let peers = self.live_peers(now);
        let quic = self.quic.clone();
        tokio::spawn(async move {
            let available = peers.len();
            let mut tasks = tokio::task::JoinSet::new();
            let pages = DesiredState::paginate(entries, PAGE_BYTES);
            for (id, addr) in peers {
                let (quic, pages) = (quic.clone(), pages.clone());
                tasks.spawn(async move {
                    // A peer holds the write once it stored every page.
                    for page in pages {
                        let answer = quic
                            .peer(addr, PeerMessage::Entries(page), PAGE_TIMEOUT)
                            .await;
                        if !matches!(answer, Ok(PeerMessage::Stored)) {
                            return (id, false);
                        }
                    }
                    (id, true)
                });
            }
            let mut stored = 0u32;
            let mut reply = reply;
            while let Some(done) = tasks.join_next().await {
                if let Ok((_, true)) = done {
                    stored += 1;
                }
                if stored >= acks
                    && let Some((tx, response)) = reply.take()
                {
                    let _ = tx.send(response);
                }
            }
            if let Some((tx, _)) = reply.take() {
                let _ = tx.send(starling_protocol::wire::ApiResponse::Error(
                    starling_protocol::wire::ApiError {
                        message: format!(
                            "stored durably here, but only {stored} of the {acks} peers asked for (--ack-replicas) confirmed it ({available} reachable); it will still spread"
                        ),
                        fields: Vec::new(),
                    },
                ));
            }
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
    /// were asked, through `done`.
    pub fn broadcast<F>(&self, now: u64, message: PeerMessage, done: F)
    where
        F: FnOnce(usize, usize) + Send + 'static,
    {
        let peers = self.live_peers(now);
        let quic = self.quic.clone();
        tokio::spawn(async move {
            let asked = peers.len();
            let mut tasks = tokio::task::JoinSet::new();
            for (_, addr) in peers {
                let (quic, message) = (quic.clone(), message.clone());
                tasks.spawn(async move {
                    matches!(
                        quic.peer(addr, message, Duration::from_secs(5)).await,
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
            done(stored, asked);
        });
    }

    /// Packets failed to open since the last check: fetch the keyring from a peer (this node
    /// may have missed a rotation while it was down). At most every 5 s.
    pub fn maybe_fetch_keys(&mut self, now: u64, dropped_auth: u64) {
        let (at, seen) = self.keys_fetched;
        if dropped_auth <= seen || now < at + 5_000 {
            return;
        }
        self.keys_fetched = (now, dropped_auth);
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
        self.sync_cursor = self.sync_cursor.wrapping_add(1);
        let addr = addrs[self.sync_cursor % addrs.len()];
        let (quic, tx) = (self.quic.clone(), self.sync_tx.clone());
        tokio::spawn(async move {
            if let Ok(PeerMessage::Keys { keys, primary }) = quic
                .peer(addr, PeerMessage::KeysRequest, Duration::from_secs(5))
                .await
            {
                let _ = tx.send(SyncEvent::Keys { keys, primary });
            }
        });
    }
}

/// Longest wait for one page (or one summary) from a peer: 256 KiB at ~20 KB/s.
const PAGE_TIMEOUT: Duration = Duration::from_secs(15);

/// A pull that brought no page for this long is given up and another peer may be tried.
const PULL_STALL_MS: u64 = 20_000;

/// Anti-entropy with one peer: send our leaves, get its items in differing buckets, then pull
/// the entries we lack or hold older, page after page; each page goes to the loop as it
/// arrives (merged and stored there), so a pull cut short keeps what it brought.
async fn pull(
    quic: &Quic,
    addr: SocketAddr,
    leaves: Vec<u128>,
    mine: &DesiredState,
    from: &NodeId,
    tx: &mpsc::UnboundedSender<SyncEvent>,
) -> Result<(), String> {
    let summary = match quic
        .peer(addr, PeerMessage::DigestLeaves(leaves), PAGE_TIMEOUT)
        .await
        .map_err(|e| format!("summary: {e}"))?
    {
        PeerMessage::Summary(items) => items,
        other => return Err(format!("expected a summary, got {other:?}")),
    };
    let mut plan = PullPlan::new(mine.wanted(&summary));
    let mut pages = 0usize;
    loop {
        let Some(names) = plan.next_request() else {
            // Nothing (more) to pull: tell the loop the pull is over.
            let _ = tx.send(SyncEvent::Pulled {
                from: from.clone(),
                entries: Vec::new(),
                more: false,
            });
            return Ok(());
        };
        let asked = names.len();
        let page = match quic
            .peer(addr, PeerMessage::Pull(names), PAGE_TIMEOUT)
            .await
            .map_err(|e| format!("page {} ({asked} names asked): {e}", pages + 1))?
        {
            PeerMessage::Entries(entries) => entries,
            other => return Err(format!("expected entries, got {other:?}")),
        };
        pages += 1;
        let more = plan.received(&page);
        let _ = tx.send(SyncEvent::Pulled {
            from: from.clone(),
            entries: page,
            more,
        });
        if !more {
            return Ok(());
        }
    }
}
