//! Desired-state sync: the sans-IO machine that decides what a node asks of its peers and what
//! it does with their answers. The agent runs it over QUIC request/response calls and the
//! simulator over its message queue; both execute [`SyncOutput::Send`] and report the answer
//! with [`Sync::handle_answer`], so they run the same decisions.
//!
//! It owns:
//! - **Anti-entropy pulls**: at each gossip read ([`Sync::handle_tick`]) it starts one pull at
//!   a time, round-robin over the live peers whose desired-state root differs from ours. A
//!   pull sends our digest leaves, gets the peer's items in the buckets that differ, then asks
//!   for the entries we lack or hold older, page after page
//!   ([`starling_protocol::desired::PullPlan`]). Each page comes out as [`SyncOutput::Merge`]
//!   as it arrives, so a pull cut short keeps what it brought.
//! - **Pushes** of fresh writes to every live peer, page by page per peer, counting the peers
//!   that stored all pages against the write's `--ack-replicas` ([`SyncOutput::PushAcked`],
//!   [`SyncOutput::PushShort`]).
//! - **Timeouts**: a request unanswered after [`SyncConfig::request_timeout_ms`] counts as
//!   failed (a late answer is ignored), so a lost message never wedges a pull.
//! - **Bounds**: at most [`SyncConfig::in_flight_per_peer`] requests in flight per peer and
//!   [`SyncConfig::queued_per_peer`] waiting behind them; past that a push to that peer fails
//!   at once and anti-entropy brings the write later.
//! - **The tombstone horizon** ([`horizon`]): it collects tombstones older than the grace
//!   while this node is in touch with the fleet, forgets what a peer's summary shows was
//!   deleted and collected there, and takes a peer's horizon after a complete pull from it.
//! - **Failure reports**: a failed pull says whether to warn now (the first failure from a
//!   peer, then once per [`SyncConfig::warn_every_ms`] while it lasts).
//! - **The answers** a node gives to a peer's sync requests ([`answer`]) and the one checked
//!   merge of received entries ([`merge`]): merge into a copy, the shell stores the copy, and
//!   only then hands it to the node core (a merge that cannot be stored changes nothing).

use std::collections::{BTreeMap, VecDeque};

use starling_protocol::NodeId;
use starling_protocol::desired::digest::{DIGEST_DEPTH, Digest};
use starling_protocol::desired::{DesiredState, Entry, MergeReport, PAGE_BYTES, PullPlan};
use starling_protocol::hlc::Hlc;
use starling_protocol::wire::PeerMessage;

mod horizon;
pub use horizon::{Shed, shed};
#[cfg(test)]
mod tests;

/// Sync's knobs. The defaults suit the agent on real links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    /// Most bytes of entries in one answer to a pull or one pushed page.
    pub page_bytes: usize,
    /// Longest wait for one answer: 256 KiB at ~20 KB/s. Past it the request has failed.
    pub request_timeout_ms: u64,
    /// A peer whose pulls keep failing is warned about at most this often.
    pub warn_every_ms: u64,
    /// Requests sent to one peer and not yet answered; more wait in its queue.
    pub in_flight_per_peer: usize,
    /// Requests waiting for one peer; past this a new one fails at once (a write burst to a
    /// slow peer is left to anti-entropy instead of piling up).
    pub queued_per_peer: usize,
    /// How long a tombstone is kept: the time every write has to reach every node (see
    /// `starling_protocol::desired::tombstones`). Default 7 days.
    pub tombstone_grace_ms: u64,
    /// How often the machine looks for tombstones to collect.
    pub collect_every_ms: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            page_bytes: PAGE_BYTES,
            request_timeout_ms: 15_000,
            warn_every_ms: 60_000,
            in_flight_per_peer: 4,
            queued_per_peer: 64,
            tombstone_grace_ms: 7 * 24 * 3_600_000,
            collect_every_ms: 60_000,
        }
    }
}

/// Names one request the machine asked the shell to send.
pub type RequestId = u64;

/// Names one push of fresh entries.
pub type PushId = u64;

/// What the machine decided; drain with [`Sync::poll_output`].
#[allow(missing_docs)] // a field named for what it holds has no doc to add
#[derive(Debug, Clone, PartialEq)]
pub enum SyncOutput {
    /// Send `message` to `to`, then report its answer (or why there is none) with
    /// [`Sync::handle_answer`] and this `id`.
    Send {
        /// The request's id.
        id: RequestId,
        /// The peer.
        to: NodeId,
        /// What to send.
        message: PeerMessage,
    },
    /// Entries pulled from `from`: merge them with [`merge`], store the result, then hand it
    /// to the node core.
    Merge {
        /// The peer they came from.
        from: NodeId,
        /// The page.
        entries: Vec<Entry>,
    },
    /// Drop the entries of `forget` outright (no tombstone), then raise the desired state's
    /// tombstone horizon to `horizon` (collecting the tombstones before it); store the result
    /// and hand it to the node core. From a peer's summary (`from`), after a complete pull
    /// from it, or this node's own collection (`from` is `None`).
    Shed {
        /// The peer whose summary or pull decided it.
        from: Option<NodeId>,
        /// Entries the peer showed to be deleted and collected.
        forget: Vec<starling_protocol::desired::Key>,
        /// The new horizon.
        horizon: Option<u64>,
    },
    /// A pull from `from` ended having brought all it asked for.
    PullDone {
        /// The peer.
        from: NodeId,
        /// Pages it brought.
        pages: usize,
    },
    /// A pull failed part-way; pages merged before stay merged.
    PullFailed {
        /// The peer.
        from: NodeId,
        /// What went wrong.
        reason: String,
        /// Pulls from this peer that failed in a row.
        failures: u64,
        /// Whether to log it now: the first failure, then once per `warn_every_ms`.
        warn: bool,
    },
    /// `push` reached the peers it wanted: that many stored every page.
    PushAcked {
        push: PushId,
        /// Peers that stored it so far.
        stored: u32,
    },
    /// `push` ended without reaching the peers it wanted.
    PushShort {
        push: PushId,
        /// Peers that stored it.
        stored: u32,
        /// Peers it wanted.
        wanted: u32,
        /// Peers it was sent to.
        asked: usize,
    },
}

/// What a request in flight is for.
#[derive(Debug, Clone)]
enum Purpose {
    /// Our digest leaves, answered by the peer's summary.
    Leaves,
    /// A page of the pull.
    Page,
    /// Page `page` of push `push` to this peer.
    Push { push: PushId, page: usize },
}

#[derive(Debug, Clone)]
struct InFlight {
    to: NodeId,
    purpose: Purpose,
    /// `None` while it waits in the peer's queue.
    sent_at: Option<u64>,
}

/// The pull in flight.
#[derive(Debug, Clone)]
struct Pull {
    from: NodeId,
    /// Set once the summary came.
    plan: Option<PullPlan>,
    pages: usize,
    /// The peer's tombstone horizon, from its summary.
    horizon: Option<u64>,
}

/// A push in flight.
#[derive(Debug, Clone)]
struct Push {
    pages: Vec<Vec<Entry>>,
    wanted: u32,
    asked: usize,
    stored: u32,
    /// Peers still being sent to.
    open: usize,
    acked: bool,
}

/// Pull failures in a row from one peer, and when they were last warned about.
#[derive(Debug, Clone, Copy, Default)]
struct Failures {
    count: u64,
    warned_at: u64,
}

/// The sync machine of one node. See the module docs.
#[derive(Debug, Clone)]
pub struct Sync {
    config: SyncConfig,
    next_id: u64,
    in_flight: BTreeMap<RequestId, InFlight>,
    /// Requests sent and unanswered, per peer.
    sent_to: BTreeMap<NodeId, usize>,
    /// Requests waiting for a slot, per peer, in order.
    queued: BTreeMap<NodeId, VecDeque<(RequestId, PeerMessage)>>,
    /// Requests refused because their peer's queue was full, failed at the end of the call.
    refused: VecDeque<RequestId>,
    pull: Option<Pull>,
    /// Round-robin position over the peers to pull from.
    cursor: usize,
    pushes: BTreeMap<PushId, Push>,
    failures: BTreeMap<NodeId, Failures>,
    out: VecDeque<SyncOutput>,
    /// The last time this node was in sync with a peer (equal roots, or a complete pull), or
    /// the fleet had no other member: how far its horizon may move.
    in_sync_at: Option<u64>,
    /// No other member is known: this node is the whole fleet.
    alone: bool,
    /// When to look for tombstones to collect next.
    next_collect_at: u64,
}

impl Sync {
    /// A machine with nothing in flight.
    pub fn new(config: SyncConfig) -> Self {
        Sync {
            config,
            next_id: 1,
            in_flight: BTreeMap::new(),
            sent_to: BTreeMap::new(),
            queued: BTreeMap::new(),
            refused: VecDeque::new(),
            pull: None,
            cursor: 0,
            pushes: BTreeMap::new(),
            failures: BTreeMap::new(),
            out: VecDeque::new(),
            in_sync_at: None,
            alone: false,
            next_collect_at: 0,
        }
    }

    /// Its settings.
    pub fn config(&self) -> &SyncConfig {
        &self.config
    }

    /// The peer a pull runs from, if one does.
    pub fn pulling_from(&self) -> Option<&NodeId> {
        self.pull.as_ref().map(|p| &p.from)
    }

    /// Requests sent or queued and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// A gossip read: `peers` are the live peers with the desired-state root each last
    /// published. Expires overdue requests, then starts a pull from one peer whose root
    /// differs from ours when none runs. Call it at every gossip read (at least once a second:
    /// it is also the machine's timer).
    pub fn handle_tick(&mut self, now: u64, desired: &DesiredState, peers: &[(NodeId, u128)]) {
        self.handle_timeout(now);
        let mine = desired.digest();
        let root = mine.root();
        if self.alone || peers.iter().any(|(_, theirs)| *theirs == root) {
            self.in_sync_at = Some(now);
        }
        self.collect(now, desired);
        if self.pull.is_some() {
            return;
        }
        let candidates: Vec<&NodeId> = peers
            .iter()
            .filter(|(_, theirs)| *theirs != root)
            .map(|(id, _)| id)
            .collect();
        if candidates.is_empty() {
            return;
        }
        self.cursor = self.cursor.wrapping_add(1);
        let from = candidates[self.cursor % candidates.len()].clone();
        let leaves = mine.level(DIGEST_DEPTH).to_vec();
        self.pull = Some(Pull {
            from: from.clone(),
            plan: None,
            pages: 0,
            horizon: None,
        });
        self.send(
            now,
            from,
            Purpose::Leaves,
            PeerMessage::DigestLeaves(leaves),
        );
        self.fail_refused(now);
    }

    /// Fails every request older than the timeout.
    pub fn handle_timeout(&mut self, now: u64) {
        let timeout = self.config.request_timeout_ms;
        let overdue: Vec<RequestId> = self
            .in_flight
            .iter()
            .filter(|(_, r)| {
                r.sent_at
                    .is_some_and(|at| now >= at.saturating_add(timeout))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            self.handle_answer(
                now,
                id,
                Err(format!("no answer within {timeout} ms")),
                &DesiredState::new(),
            );
        }
    }

    /// When the oldest request in flight times out.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.in_flight
            .values()
            .filter_map(|r| r.sent_at)
            .map(|at| at.saturating_add(self.config.request_timeout_ms))
            .min()
    }

    /// Starts pushing `entries` (a fresh write) to `peers`, page by page. With `wanted` > 0
    /// the machine reports [`SyncOutput::PushAcked`] once that many stored every page, or
    /// [`SyncOutput::PushShort`] when every peer answered or failed first.
    pub fn push(&mut self, now: u64, entries: Vec<Entry>, wanted: u32, peers: &[NodeId]) -> PushId {
        let push = self.next_id;
        self.next_id += 1;
        let pages = DesiredState::paginate(entries, self.config.page_bytes);
        let first = pages.first().cloned().unwrap_or_default();
        self.pushes.insert(
            push,
            Push {
                pages,
                wanted,
                asked: peers.len(),
                stored: 0,
                open: peers.len(),
                acked: wanted == 0,
            },
        );
        for peer in peers {
            self.send(
                now,
                peer.clone(),
                Purpose::Push { push, page: 0 },
                PeerMessage::Entries(first.clone()),
            );
        }
        self.fail_refused(now);
        self.settle_push(push);
        push
    }

    /// The answer to request `id`, or why there is none. `desired` is this node's desired
    /// state now (a summary is compared with it). Answers to requests the machine no longer
    /// waits for are ignored.
    pub fn handle_answer(
        &mut self,
        now: u64,
        id: RequestId,
        answer: Result<PeerMessage, String>,
        desired: &DesiredState,
    ) {
        let Some(request) = self.in_flight.remove(&id) else {
            return;
        };
        if request.sent_at.is_some() {
            // Its slot frees: the peer's next queued request goes out.
            self.release_slot(now, &request.to);
        } else if let Some(queue) = self.queued.get_mut(&request.to) {
            queue.retain(|(queued, _)| *queued != id);
        }
        match request.purpose {
            Purpose::Leaves | Purpose::Page => self.on_pull_answer(now, request, answer, desired),
            Purpose::Push { push, page } => {
                self.on_push_answer(now, request.to, push, page, answer)
            }
        }
        self.fail_refused(now);
    }

    /// The next decision, if any.
    pub fn poll_output(&mut self) -> Option<SyncOutput> {
        self.out.pop_front()
    }

    /// Sends a request, or queues it behind the peer's requests in flight, or (its queue
    /// full) refuses it: it then fails at the end of the public call (`fail_refused`).
    fn send(&mut self, now: u64, to: NodeId, purpose: Purpose, message: PeerMessage) {
        let id = self.next_id;
        self.next_id += 1;
        let busy = self.sent_to.get(&to).copied().unwrap_or(0);
        let sent_at = if busy < self.config.in_flight_per_peer {
            *self.sent_to.entry(to.clone()).or_default() += 1;
            self.out.push_back(SyncOutput::Send {
                id,
                to: to.clone(),
                message,
            });
            Some(now)
        } else {
            let queue = self.queued.entry(to.clone()).or_default();
            if queue.len() >= self.config.queued_per_peer {
                self.refused.push_back(id);
            } else {
                queue.push_back((id, message));
            }
            None
        };
        self.in_flight.insert(
            id,
            InFlight {
                to,
                purpose,
                sent_at,
            },
        );
    }

    /// A request to `to` was answered or failed: send the next one queued for it.
    fn release_slot(&mut self, now: u64, to: &NodeId) {
        let busy = self.sent_to.entry(to.clone()).or_default();
        *busy = busy.saturating_sub(1);
        if *busy == 0 {
            self.sent_to.remove(to);
        }
        let Some((id, message)) = self.queued.get_mut(to).and_then(VecDeque::pop_front) else {
            self.queued.remove(to);
            return;
        };
        if let Some(request) = self.in_flight.get_mut(&id) {
            request.sent_at = Some(now);
            *self.sent_to.entry(to.clone()).or_default() += 1;
            self.out.push_back(SyncOutput::Send {
                id,
                to: to.clone(),
                message,
            });
        }
    }

    /// Fails the requests refused for a full queue.
    fn fail_refused(&mut self, now: u64) {
        while let Some(id) = self.refused.pop_front() {
            let limit = self.config.queued_per_peer;
            let reason = format!("{limit} requests already wait for this peer");
            self.handle_answer(now, id, Err(reason), &DesiredState::new());
        }
    }

    fn on_pull_answer(
        &mut self,
        now: u64,
        request: InFlight,
        answer: Result<PeerMessage, String>,
        desired: &DesiredState,
    ) {
        let Some(mut pull) = self.pull.take() else {
            return;
        };
        debug_assert_eq!(pull.from, request.to, "one pull at a time, from one peer");
        let page_number = pull.pages + 1;
        let next = match (request.purpose, answer) {
            (Purpose::Leaves, Ok(PeerMessage::Summary(summary))) => {
                self.on_summary(&pull.from, &summary, desired);
                pull.horizon = summary.horizon;
                let plan = pull
                    .plan
                    .insert(PullPlan::new(desired.wanted(&summary.items)));
                Ok(plan.next_request())
            }
            (Purpose::Page, Ok(PeerMessage::Entries(entries))) => {
                pull.pages += 1;
                let next = match pull.plan.as_mut() {
                    Some(plan) => {
                        plan.received(&entries);
                        plan.next_request()
                    }
                    None => None,
                };
                if !entries.is_empty() {
                    self.out.push_back(SyncOutput::Merge {
                        from: pull.from.clone(),
                        entries,
                    });
                }
                Ok(next)
            }
            (Purpose::Leaves, Ok(other)) => {
                Err(format!("expected a summary, got {}", other.kind()))
            }
            (_, Ok(other)) => Err(format!("expected entries, got {}", other.kind())),
            (Purpose::Leaves, Err(e)) => Err(format!("summary: {e}")),
            (_, Err(e)) => Err(format!("page {page_number}: {e}")),
        };
        match next {
            Ok(Some(names)) => {
                let from = pull.from.clone();
                self.pull = Some(pull);
                self.send(now, from, Purpose::Page, PeerMessage::Pull(names));
            }
            Ok(None) => {
                self.failures.remove(&pull.from);
                self.on_pull_done(now, &pull.from, pull.horizon, desired);
                self.out.push_back(SyncOutput::PullDone {
                    from: pull.from,
                    pages: pull.pages,
                });
            }
            Err(reason) => {
                if pull.pages > 0 {
                    // It brought something: the peer answers, the link is what failed.
                    self.failures.remove(&pull.from);
                }
                let failures = self.failures.entry(pull.from.clone()).or_default();
                failures.count += 1;
                let warn = failures.count == 1
                    || now >= failures.warned_at.saturating_add(self.config.warn_every_ms);
                if warn {
                    failures.warned_at = now;
                }
                let count = failures.count;
                self.out.push_back(SyncOutput::PullFailed {
                    from: pull.from,
                    reason,
                    failures: count,
                    warn,
                });
            }
        }
    }

    fn on_push_answer(
        &mut self,
        now: u64,
        to: NodeId,
        push: PushId,
        page: usize,
        answer: Result<PeerMessage, String>,
    ) {
        let Some(state) = self.pushes.get_mut(&push) else {
            return;
        };
        if matches!(answer, Ok(PeerMessage::Stored)) {
            // A peer holds the write once it stored every page.
            if let Some(next) = state.pages.get(page + 1).cloned() {
                self.send(
                    now,
                    to,
                    Purpose::Push {
                        push,
                        page: page + 1,
                    },
                    PeerMessage::Entries(next),
                );
                return;
            }
            state.stored += 1;
        }
        state.open = state.open.saturating_sub(1);
        self.settle_push(push);
    }

    /// Reports a push's ack once it reached its count, and forgets it once every peer is done.
    fn settle_push(&mut self, push: PushId) {
        let Some(state) = self.pushes.get_mut(&push) else {
            return;
        };
        // Every peer asked is counted once: stored, failed or still open.
        debug_assert!(
            state.stored as usize + state.open <= state.asked,
            "push {push}: {} stored + {} open of {} asked",
            state.stored,
            state.open,
            state.asked
        );
        if !state.acked && state.stored >= state.wanted {
            state.acked = true;
            self.out.push_back(SyncOutput::PushAcked {
                push,
                stored: state.stored,
            });
        }
        if state.open == 0 {
            if !state.acked {
                self.out.push_back(SyncOutput::PushShort {
                    push,
                    stored: state.stored,
                    wanted: state.wanted,
                    asked: state.asked,
                });
            }
            self.pushes.remove(&push);
        }
    }
}

/// This node's answer to a peer's sync request: its summary of the buckets that differ from
/// the peer's leaves, or a page of the entries asked for. `None` for messages that are not
/// sync requests.
pub fn answer(
    desired: &DesiredState,
    message: &PeerMessage,
    page_bytes: usize,
) -> Option<PeerMessage> {
    match message {
        PeerMessage::DigestLeaves(leaves) => {
            let buckets = desired.digest().diff(&Digest::from_buckets(leaves));
            Some(PeerMessage::Summary(desired.summary_of(&buckets)))
        }
        PeerMessage::Pull(names) => {
            Some(PeerMessage::Entries(desired.export_page(names, page_bytes)))
        }
        _ => None,
    }
}

/// What [`merge`] made of entries from a peer.
#[derive(Debug, Clone)]
pub struct Merged {
    /// The state with the entries merged, when any changed it: store it, then hand it to the
    /// node core.
    pub next: Option<DesiredState>,
    /// What changed and what was refused (an invalid spec, a clock too far ahead).
    pub report: MergeReport,
}

/// The one receive path for entries, pulled or pushed: each entry is checked
/// ([`Entry::check`] and the clock-drift check of `hlc`) and merged into a copy of
/// `desired`; refused entries change nothing.
pub fn merge(desired: &DesiredState, entries: Vec<Entry>, hlc: &mut Hlc, now: u64) -> Merged {
    let mut next = desired.clone();
    let report = next.merge_checked(entries, hlc, now);
    Merged {
        next: (report.changed > 0).then_some(next),
        report,
    }
}
