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

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use starling_protocol::NodeId;
use starling_protocol::hlc::Timestamp;
use starling_protocol::lease::{
    GrantReply, GrantRequest, Lease, LeaseMessage, LeaseName, LeaseTable, Release,
};
use starling_protocol::spec::{LEASE_TTL_MAX_MS, LeaseMode};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElectionOutput {
    /// Send a message to a node.
    Send {
        /// The receiver.
        to: NodeId,
        /// The message.
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
    /// Highest epoch heard of per lease (replies, records), so a new round outbids it.
    seen_epoch: BTreeMap<LeaseName, u64>,
    /// The epoch this elector last proposed per lease.
    proposed: BTreeMap<LeaseName, u64>,
    outputs: VecDeque<ElectionOutput>,
}

impl Elector {
    /// An elector restored from the voter's memory at `now_ms`.
    pub fn new(config: ElectorConfig, memory: VoterMemory, now_ms: u64) -> Self {
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

    /// Ends a hold that ran out without renewal: the self-fencing point.
    fn expire(&mut self, now_ms: u64, name: &LeaseName) {
        let Some(campaign) = self.campaigns.get_mut(name) else {
            return;
        };
        if campaign
            .held
            .as_ref()
            .is_some_and(|h| now_ms >= h.may_act_until_ms)
        {
            campaign.held = None;
            let reason = format!("could not renew: {}", campaign.waiting_for);
            self.outputs.push_back(ElectionOutput::Lost {
                name: name.clone(),
                reason,
            });
        }
    }

    /// Starts a round (quorum) or takes the lease (local) if it is time.
    fn try_campaign(&mut self, now_ms: u64, name: &LeaseName) {
        let me = self.config.node.clone();
        let Some(campaign) = self.campaigns.get(name) else {
            return;
        };
        let want = campaign.want;
        let proposal = match &campaign.held {
            Some(h) => h.lease.renewed(self.stamp(now_ms)),
            None => {
                let epoch = self.next_epoch(name);
                self.proposed.insert(name.clone(), epoch);
                Lease {
                    name: name.clone(),
                    holder: me.clone(),
                    epoch,
                    granted_at: self.stamp(now_ms),
                    duration_ms: want.ttl_ms,
                    fencing_token: epoch,
                }
            }
        };
        match want.mode {
            LeaseMode::Local => self.take_locally(now_ms, proposal),
            LeaseMode::Quorum => self.start_round(now_ms, proposal),
        }
    }

    /// The epoch of a new campaign: above every epoch granted to another node that this
    /// node heard of; an epoch granted to this node itself may be reused (a retry is not a new
    /// holder, so a candidate refused for a while does not burn through fencing tokens).
    fn next_epoch(&self, name: &LeaseName) -> u64 {
        let me = &self.config.node;
        let others = self
            .table
            .get(name)
            .filter(|l| &l.holder != me)
            .map_or(0, |l| l.epoch)
            .max(self.seen_epoch.get(name).copied().unwrap_or(0));
        // Reuse only what this very elector proposed: after a restart an old instance may
        // still write with the old token, so a new life takes a new one.
        let own = match self.memory.highest.get(name) {
            Some((e, holder)) if holder == me && self.proposed.get(name) == Some(e) => *e,
            Some((e, _)) => e + 1,
            None => 0,
        };
        let mine = self
            .table
            .get(name)
            .filter(|l| &l.holder == me)
            .map_or(0, |l| l.epoch + 1);
        (others + 1).max(own).max(mine)
    }

    fn stamp(&self, now_ms: u64) -> Timestamp {
        Timestamp {
            physical_ms: now_ms,
            logical: 0,
            node: self.config.node.clone(),
        }
    }

    fn take_locally(&mut self, now_ms: u64, proposal: Lease) {
        let name = proposal.name.clone();
        let visible = self
            .table
            .get(&name)
            .filter(|l| l.holder != self.config.node && l.is_held_at(now_ms))
            .cloned();
        let Some(campaign) = self.campaigns.get_mut(&name) else {
            return;
        };
        if let Some(other) = visible {
            campaign.waiting_for = format!(
                "{} holds it (epoch {}) for another {} ms",
                other.holder,
                other.epoch,
                other.expires_at_ms().saturating_sub(now_ms)
            );
            campaign.next_try_ms = other.expires_at_ms().max(now_ms + 1);
            return;
        }
        self.succeed(now_ms, &name, proposal, now_ms);
    }

    fn start_round(&mut self, now_ms: u64, proposal: Lease) {
        let name = proposal.name.clone();
        let me = self.config.node.clone();
        let voters = self.voters.clone();
        let ttl = proposal.duration_ms;
        if voters.nodes.is_empty() {
            if let Some(c) = self.campaigns.get_mut(&name) {
                c.waiting_for = "no voters are set".into();
                c.next_try_ms = now_ms + ttl / 3;
                c.round = None;
            }
            return;
        }
        let request = GrantRequest {
            lease: proposal.clone(),
            voters: voters.version,
        };
        let round = Round {
            proposal,
            sent_at_ms: now_ms,
            voters: voters.clone(),
            granted: BTreeSet::new(),
            refused: BTreeMap::new(),
        };
        if let Some(c) = self.campaigns.get_mut(&name) {
            c.round = Some(round);
            c.next_try_ms = now_ms + renew_every(ttl);
        }
        for voter in &voters.nodes {
            if voter == &me {
                let reply = self.vote(now_ms, &me, &request);
                self.on_reply(now_ms, &me, reply);
            } else {
                self.send(voter.clone(), LeaseMessage::Request(request.clone()));
            }
        }
    }

    fn on_reply(&mut self, now_ms: u64, from: &NodeId, reply: GrantReply) {
        if reply.highest_holder.as_ref() != Some(&self.config.node) {
            self.note_epoch(&reply.name, reply.highest_epoch);
        }
        let Some(campaign) = self.campaigns.get_mut(&reply.name) else {
            return;
        };
        let Some(round) = campaign.round.as_mut() else {
            return;
        };
        if round.proposal.epoch != reply.epoch
            || round.proposal.granted_at != reply.granted_at
            || !round.voters.nodes.contains(from)
        {
            return;
        }
        if reply.granted {
            round.refused.remove(from);
            round.granted.insert(from.clone());
        } else {
            round.refused.insert(from.clone(), reply.retry_in_ms);
            campaign.waiting_for = format!("{from}: {}", reply.reason);
        }
        let majority = round.voters.majority();
        if round.granted.len() >= majority {
            let round = campaign.round.take().expect("checked above");
            self.succeed(now_ms, &reply.name, round.proposal, round.sent_at_ms);
            return;
        }
        let total = round.voters.nodes.len();
        if round.refused.len() > total - majority {
            // A majority is out of reach this round. Retry when the earliest promise that
            // stands in the way lapses (or at once with a higher epoch if it was outbid),
            // staggered by node so two candidates do not duel in lockstep.
            let wait = round
                .refused
                .values()
                .copied()
                .filter(|&r| r > 0)
                .min()
                .unwrap_or(0);
            let ttl = campaign.want.ttl_ms;
            let stagger = 5 + stagger_ms(&self.config.node);
            let mut next = now_ms + (wait + stagger).min(ttl / 4);
            if let Some(held) = &campaign.held {
                next = next.min(held.may_act_until_ms);
            }
            campaign.round = None;
            campaign.next_try_ms = next.max(now_ms + 1);
        }
    }

    fn succeed(&mut self, now_ms: u64, name: &LeaseName, lease: Lease, sent_at_ms: u64) {
        let margin = self.config.max_drift_ms;
        let ttl = lease.duration_ms;
        let may_act_until_ms = (sent_at_ms + ttl).saturating_sub(margin);
        let Some(campaign) = self.campaigns.get_mut(name) else {
            return;
        };
        campaign.next_try_ms = sent_at_ms + renew_every(ttl);
        if may_act_until_ms <= now_ms {
            campaign.waiting_for = "grants came back too late to act on".into();
            campaign.next_try_ms = now_ms;
            return;
        }
        campaign.waiting_for.clear();
        campaign.held = Some(Held {
            lease: lease.clone(),
            may_act_until_ms,
        });
        self.note_epoch(name, lease.epoch);
        self.table.merge_lease(lease.clone());
        self.outputs.push_back(ElectionOutput::Holding {
            lease,
            may_act_until_ms,
        });
    }

    /// The voter's rule: one candidate per lease until its grant lapses on this clock, epochs
    /// never go back, and nothing at all right after a restart.
    fn vote(&mut self, now_ms: u64, from: &NodeId, request: &GrantRequest) -> GrantReply {
        let lease = &request.lease;
        let name = &lease.name;
        let highest = self.memory.highest.get(name).cloned();
        let highest_epoch = highest.as_ref().map_or(0, |(e, _)| *e);
        let mut reply = GrantReply {
            name: name.clone(),
            epoch: lease.epoch,
            granted_at: lease.granted_at.clone(),
            granted: false,
            reason: String::new(),
            highest_epoch,
            highest_holder: highest.as_ref().map(|(_, h)| h.clone()),
            retry_in_ms: 0,
        };
        let ttl = lease.duration_ms.min(LEASE_TTL_MAX_MS);
        let refusal = if &lease.holder != from {
            Some(("a node may only ask for itself".to_string(), ttl))
        } else if request.voters != self.voters.version {
            Some((
                format!(
                    "voter set version {} here, {} in the request",
                    self.voters.version, request.voters
                ),
                ttl / 4,
            ))
        } else if !self.voters.nodes.contains(&self.config.node) {
            Some(("this node is not a voter".to_string(), ttl / 2))
        } else if now_ms < self.silent_until_ms {
            Some((
                "restarted recently; grants nothing until its old promises lapsed".to_string(),
                self.silent_until_ms - now_ms,
            ))
        } else if lease.epoch < highest_epoch
            || highest
                .as_ref()
                .is_some_and(|(e, h)| *e == lease.epoch && h != &lease.holder)
        {
            Some((format!("epoch {highest_epoch} is already granted"), 0))
        } else {
            self.promises
                .get(name)
                .filter(|p| now_ms < p.until_ms && p.lease.holder != lease.holder)
                .map(|p| {
                    (
                        format!(
                            "promised to {} (epoch {}) for another {} ms",
                            p.lease.holder,
                            p.lease.epoch,
                            p.until_ms - now_ms
                        ),
                        p.until_ms - now_ms,
                    )
                })
        };
        if let Some((reason, retry)) = refusal {
            reply.reason = reason;
            reply.retry_in_ms = retry;
            return reply;
        }
        self.promises.insert(
            name.clone(),
            Promise {
                lease: lease.clone(),
                until_ms: now_ms + ttl,
            },
        );
        let new_epoch = lease.epoch > highest_epoch || highest.is_none();
        let longer = ttl > self.memory.longest_grant_ms;
        if new_epoch {
            self.memory
                .highest
                .insert(name.clone(), (lease.epoch, lease.holder.clone()));
        }
        if longer {
            self.memory.longest_grant_ms = ttl;
        }
        if new_epoch || longer {
            self.outputs
                .push_back(ElectionOutput::Persist(self.memory.clone()));
        }
        reply.granted = true;
        if lease.epoch >= reply.highest_epoch {
            reply.highest_epoch = lease.epoch;
            reply.highest_holder = Some(lease.holder.clone());
        }
        reply
    }

    fn release_locally(&mut self, release: &Release) {
        if self
            .promises
            .get(&release.name)
            .is_some_and(|p| p.lease.holder == release.holder && p.lease.epoch == release.epoch)
        {
            self.promises.remove(&release.name);
        }
    }
}

/// Renew every third of the duration, so two renewals can fail before the hold ends.
fn renew_every(ttl_ms: u64) -> u64 {
    (ttl_ms / 3).max(1)
}

/// A round that has not reached a majority by then is retried (lost messages).
fn round_timeout(ttl_ms: u64) -> u64 {
    (ttl_ms / 4).clamp(1, 1_000)
}

/// 0-31 ms derived from the node id: deterministic, different per node.
fn stagger_ms(node: &NodeId) -> u64 {
    node.as_str()
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        % 32
}
