//! Leader election through leases: the sans-IO state machine every node runs.
//!
//! It owns both sides of the protocol. As a **candidate** it campaigns for the leases the
//! node was told to want ([`Elector::want`]): in quorum mode it asks every voter for a grant
//! of epoch `e` and holds the lease once a majority granted, from the moment it *sent* the
//! request, for the lease's duration minus `max_drift_ms`; it renews every third of the
//! duration and reports [`ElectionOutput::Lost`] at the end of what it may act for if it could
//! not renew (self-fencing). In local mode it takes a lease nobody visible holds.
//! As a **voter** it grants one candidate per lease and promises, on its own clock, not to
//! grant another until that grant's duration has passed since it received the request
//! (PaxosLease). The highest epoch it granted per lease is remembered on disk (emitted as
//! [`ElectionOutput::Persist`] before the reply that depends on it), so fencing tokens never go
//! back; after a restart it grants nothing for the longest duration it ever granted, because
//! the promises themselves are not stored.
//!
//! Like the node core it never reads a clock or draws a random number: the shell passes
//! `now_ms`, delivers messages and calls [`Elector::handle_timeout`] at
//! [`Elector::poll_timeout`], so the simulator drives the same code.

mod campaign;
#[cfg(test)]
mod tests;
mod voter;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use starling_protocol::NodeId;
use starling_protocol::lease::{
    GrantReply, GrantRequest, Lease, LeaseMessage, LeaseName, LeaseTable, Release,
};
use starling_protocol::spec::LeaseMode;

/// Settings of the elector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectorConfig {
    /// This node.
    pub node: NodeId,
    /// How far two clocks may drift apart over one lease duration. A holder stops acting this
    /// long before the end of its grant, so a voter whose clock runs faster has not yet
    /// released its promise while the holder still acts.
    pub max_drift_ms: u64,
}

/// What a node wants of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidacy {
    /// How long each grant lasts.
    pub ttl_ms: u64,
    /// Quorum or local.
    pub mode: LeaseMode,
}

/// The fleet's voters, with a version both sides of a grant must agree on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voters {
    /// Changes whenever the set changes.
    pub version: u64,
    /// The voters.
    pub nodes: BTreeSet<NodeId>,
}

impl Voters {
    /// A majority of the set.
    pub fn majority(&self) -> usize {
        self.nodes.len() / 2 + 1
    }
}

/// What a voter keeps on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoterMemory {
    /// Per lease, the highest epoch granted and to whom.
    pub highest: BTreeMap<LeaseName, (u64, NodeId)>,
    /// The longest duration ever granted: how long a restarted voter stays silent.
    pub longest_grant_ms: u64,
}

/// What the elector asks the shell to do, in order.
#[allow(missing_docs)] // a field named for what it holds has no doc to add
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElectionOutput {
    /// Send a message to a node.
    Send {
        /// The receiver.
        to: NodeId,
        message: LeaseMessage,
    },
    /// Store the voter's memory durably before sending anything that follows.
    Persist(VoterMemory),
    /// This node holds `lease` (acquired or renewed) and may act until `may_act_until_ms` on
    /// its own clock; publish the record.
    Holding {
        /// The grant.
        lease: Lease,
        /// End of the time the holder may act.
        may_act_until_ms: u64,
    },
    /// This node no longer holds the lease: stop the active instance now.
    Lost {
        /// The lease.
        name: LeaseName,
        /// Why, for people.
        reason: String,
    },
}

/// Why a lease is not (yet) held here, and what is known of it, for status displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    /// The newest record known (ours or gossiped).
    pub record: Option<Lease>,
    /// Held here, acting until this local time.
    pub may_act_until_ms: Option<u64>,
    /// Whether this node campaigns for it.
    pub wanted: bool,
    /// The last reason a campaign did not succeed.
    pub waiting_for: String,
}

#[derive(Debug, Clone)]
struct Held {
    lease: Lease,
    may_act_until_ms: u64,
}

#[derive(Debug, Clone)]
struct Round {
    proposal: Lease,
    sent_at_ms: u64,
    /// When the request last went to the voters that have not answered.
    resent_at_ms: u64,
    voters: Voters,
    granted: BTreeSet<NodeId>,
    refused: BTreeMap<NodeId, u64>,
}

#[derive(Debug, Clone)]
struct Campaign {
    want: Candidacy,
    held: Option<Held>,
    round: Option<Round>,
    next_try_ms: u64,
    waiting_for: String,
}

#[derive(Debug, Clone)]
struct Promise {
    lease: Lease,
    until_ms: u64,
}

/// The election state machine. See the module docs.
#[derive(Debug)]
pub struct Elector {
    config: ElectorConfig,
    voters: Voters,
    table: LeaseTable,
    campaigns: BTreeMap<LeaseName, Campaign>,
    /// The voter's promises, per lease (not stored: see the module docs).
    promises: BTreeMap<LeaseName, Promise>,
    memory: VoterMemory,
    silent_until_ms: u64,
    /// Started without any memory at this time (see `new`).
    amnesiac_since_ms: Option<u64>,
    /// Highest epoch heard of per lease (replies, records), so a new round outbids it.
    seen_epoch: BTreeMap<LeaseName, u64>,
    /// The epoch this elector last proposed per lease.
    proposed: BTreeMap<LeaseName, u64>,
    outputs: VecDeque<ElectionOutput>,
}

impl Elector {
    /// An elector restored from the voter's memory at `now_ms`. `None` means the memory is
    /// gone (a lost disk, or a node that cannot tell it never voted): the voter then grants
    /// nothing until one requested duration (plus the margin) has passed since `now_ms`, in
    /// case it promised that lease to someone before.
    pub fn new(config: ElectorConfig, memory: Option<VoterMemory>, now_ms: u64) -> Self {
        let amnesiac_since_ms = memory.is_none().then_some(now_ms);
        let memory = memory.unwrap_or_default();
        let silent_until_ms = if memory.longest_grant_ms == 0 {
            0
        } else {
            now_ms + memory.longest_grant_ms + config.max_drift_ms
        };
        Elector {
            config,
            voters: Voters::default(),
            table: LeaseTable::new(),
            campaigns: BTreeMap::new(),
            promises: BTreeMap::new(),
            memory,
            silent_until_ms,
            amnesiac_since_ms,
            seen_epoch: BTreeMap::new(),
            proposed: BTreeMap::new(),
            outputs: VecDeque::new(),
        }
    }

    /// This node.
    pub fn node(&self) -> &NodeId {
        &self.config.node
    }

    /// The voter set in force here.
    pub fn voters(&self) -> &Voters {
        &self.voters
    }

    /// Every lease record known, merged.
    pub fn table(&self) -> &LeaseTable {
        &self.table
    }

    /// Replaces the voter set (a newer version agreed fleet-wide).
    pub fn set_voters(&mut self, voters: Voters) {
        self.voters = voters;
    }

    /// Whether this node holds `name` and may act at `now_ms`.
    pub fn holds(&self, name: &LeaseName, now_ms: u64) -> Option<&Lease> {
        self.campaigns
            .get(name)
            .and_then(|c| c.held.as_ref())
            .filter(|h| now_ms < h.may_act_until_ms)
            .map(|h| &h.lease)
    }

    /// What is known of `name` here.
    pub fn view(&self, name: &LeaseName) -> LeaseView {
        let campaign = self.campaigns.get(name);
        LeaseView {
            record: self.table.get(name).cloned(),
            may_act_until_ms: campaign
                .and_then(|c| c.held.as_ref())
                .map(|h| h.may_act_until_ms),
            wanted: campaign.is_some(),
            waiting_for: campaign.map(|c| c.waiting_for.clone()).unwrap_or_default(),
        }
    }

    /// Names of the leases this node campaigns for.
    pub fn wanted(&self) -> impl Iterator<Item = &LeaseName> {
        self.campaigns.keys()
    }

    /// Campaign for `name` (or change how). Idempotent.
    pub fn want(&mut self, now_ms: u64, name: &LeaseName, candidacy: Candidacy) {
        match self.campaigns.get_mut(name) {
            Some(c) => c.want = candidacy,
            None => {
                self.campaigns.insert(
                    name.clone(),
                    Campaign {
                        want: candidacy,
                        held: None,
                        round: None,
                        next_try_ms: now_ms,
                        waiting_for: "not asked yet".into(),
                    },
                );
                self.try_campaign(now_ms, name);
            }
        }
    }

    /// Stop campaigning for `name`; a held lease is released (voters may grant it at once).
    pub fn unwant(&mut self, name: &LeaseName) {
        let Some(campaign) = self.campaigns.remove(name) else {
            return;
        };
        if let Some(held) = campaign.held {
            self.outputs.push_back(ElectionOutput::Lost {
                name: name.clone(),
                reason: "given up".into(),
            });
            let release = Release {
                name: name.clone(),
                holder: self.config.node.clone(),
                epoch: held.lease.epoch,
            };
            if campaign.want.mode == LeaseMode::Quorum {
                self.release_locally(&release);
                for voter in self.voters.nodes.clone() {
                    if voter != self.config.node {
                        self.send(voter, LeaseMessage::Release(release.clone()));
                    }
                }
            }
        }
    }

    /// A lease record from gossip.
    pub fn handle_record(&mut self, now_ms: u64, lease: Lease) {
        if lease.holder != self.config.node {
            self.note_epoch(&lease.name, lease.epoch);
        }
        let name = lease.name.clone();
        if !self.table.merge_lease(lease) {
            return;
        }
        let Some(record) = self.table.get(&name).cloned() else {
            return;
        };
        let me = self.config.node.clone();
        let Some(campaign) = self.campaigns.get_mut(&name) else {
            return;
        };
        if let Some(held) = &campaign.held
            && record.holder != me
            && record.supersedes(&held.lease)
        {
            // Local mode after a heal (or a higher epoch won): the higher record wins.
            campaign.held = None;
            campaign.round = None;
            campaign.next_try_ms = now_ms + campaign.want.ttl_ms / 3;
            campaign.waiting_for = format!("{} holds epoch {}", record.holder, record.epoch);
            self.outputs.push_back(ElectionOutput::Lost {
                name,
                reason: format!(
                    "{} holds it at epoch {} (higher than ours)",
                    record.holder, record.epoch
                ),
            });
        }
    }

    /// A message from `from`.
    pub fn handle_message(&mut self, now_ms: u64, from: &NodeId, message: LeaseMessage) {
        match message {
            LeaseMessage::Request(request) => {
                let reply = self.vote(now_ms, from, &request);
                self.send(from.clone(), LeaseMessage::Reply(reply));
            }
            LeaseMessage::Reply(reply) => self.on_reply(now_ms, from, reply),
            LeaseMessage::Release(release) => {
                if &release.holder == from {
                    self.release_locally(&release);
                }
            }
        }
    }

    /// Answers a grant request directly (the shell's request/response transports use this
    /// and send the reply back on the same stream).
    pub fn answer(&mut self, now_ms: u64, from: &NodeId, request: &GrantRequest) -> GrantReply {
        self.vote(now_ms, from, request)
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.promises.retain(|_, p| now_ms < p.until_ms);
        let names: Vec<LeaseName> = self.campaigns.keys().cloned().collect();
        for name in names {
            self.expire(now_ms, &name);
            self.resend(now_ms, &name);
            let due = self.campaigns.get(&name).is_some_and(|c| {
                now_ms >= c.next_try_ms
                    || c.round
                        .as_ref()
                        .is_some_and(|r| now_ms >= r.sent_at_ms + round_timeout(c.want.ttl_ms))
            });
            if due {
                self.try_campaign(now_ms, &name);
            }
        }
    }

    /// The next output to carry out.
    pub fn poll_output(&mut self) -> Option<ElectionOutput> {
        self.outputs.pop_front()
    }

    /// When to call [`Elector::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut at = |t: u64| next = Some(next.map_or(t, |n: u64| n.min(t)));
        for c in self.campaigns.values() {
            at(c.next_try_ms);
            if let Some(h) = &c.held {
                at(h.may_act_until_ms);
            }
            if let Some(r) = &c.round {
                at(r.sent_at_ms + round_timeout(c.want.ttl_ms));
                at(r.resent_at_ms + resend_every(c.want.ttl_ms));
            }
        }
        for p in self.promises.values() {
            at(p.until_ms);
        }
        next
    }

    fn send(&mut self, to: NodeId, message: LeaseMessage) {
        self.outputs.push_back(ElectionOutput::Send { to, message });
    }

    fn note_epoch(&mut self, name: &LeaseName, epoch: u64) {
        let seen = self.seen_epoch.entry(name.clone()).or_insert(0);
        *seen = (*seen).max(epoch);
    }
}

/// Renew every third of the duration, so two renewals can fail before the hold ends.
fn renew_every(ttl_ms: u64) -> u64 {
    (ttl_ms / 3).max(1)
}

/// A round that has not reached a majority by then is given up and a new one starts. Within
/// it, the request goes again to the voters that did not answer ([`resend_every`]), so on a
/// lossy link a round needs one of several tries per voter to arrive, not the first.
fn round_timeout(ttl_ms: u64) -> u64 {
    (ttl_ms / 4).clamp(1, 2_500)
}

/// How often a round's request goes again to the voters that have not answered: five tries
/// per voter in a round of a 10 s lease.
fn resend_every(ttl_ms: u64) -> u64 {
    (ttl_ms / 20).clamp(1, 500)
}

/// 0-31 ms derived from the node id: deterministic, different per node.
fn stagger_ms(node: &NodeId) -> u64 {
    node.as_str()
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        % 32
}
