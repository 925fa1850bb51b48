//! The candidate's side: rounds of grant requests, holding, renewing and self-fencing.

use std::collections::{BTreeMap, BTreeSet};

use starling_protocol::NodeId;
use starling_protocol::hlc::Timestamp;
use starling_protocol::lease::{GrantReply, GrantRequest, Lease, LeaseMessage, LeaseName};
use starling_protocol::spec::LeaseMode;

use super::{ElectionOutput, Elector, Held, Round, renew_every, stagger_ms};

impl Elector {
    /// Ends a hold that ran out without renewal: the self-fencing point.
    pub(super) fn expire(&mut self, now_ms: u64, name: &LeaseName) {
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
    pub(super) fn try_campaign(&mut self, now_ms: u64, name: &LeaseName) {
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
    pub(super) fn next_epoch(&self, name: &LeaseName) -> u64 {
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

    pub(super) fn stamp(&self, now_ms: u64) -> Timestamp {
        Timestamp {
            physical_ms: now_ms,
            logical: 0,
            node: self.config.node.clone(),
        }
    }

    pub(super) fn take_locally(&mut self, now_ms: u64, proposal: Lease) {
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

    pub(super) fn start_round(&mut self, now_ms: u64, proposal: Lease) {
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
            resent_at_ms: now_ms,
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

    /// Sends the open round's request again to the voters that have neither granted nor
    /// refused it, once per [`super::resend_every`]. The same proposal: a voter that granted
    /// it and lost its reply grants it again.
    pub(super) fn resend(&mut self, now_ms: u64, name: &LeaseName) {
        let Some(campaign) = self.campaigns.get_mut(name) else {
            return;
        };
        let every = super::resend_every(campaign.want.ttl_ms);
        let Some(round) = campaign.round.as_mut() else {
            return;
        };
        if now_ms < round.resent_at_ms + every {
            return;
        }
        round.resent_at_ms = now_ms;
        let request = GrantRequest {
            lease: round.proposal.clone(),
            voters: round.voters.version,
        };
        let silent: Vec<NodeId> = round
            .voters
            .nodes
            .iter()
            .filter(|v| {
                **v != self.config.node
                    && !round.granted.contains(*v)
                    && !round.refused.contains_key(*v)
            })
            .cloned()
            .collect();
        for voter in silent {
            self.send(voter, LeaseMessage::Request(request.clone()));
        }
    }

    pub(super) fn on_reply(&mut self, now_ms: u64, from: &NodeId, reply: GrantReply) {
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

    pub(super) fn succeed(&mut self, now_ms: u64, name: &LeaseName, lease: Lease, sent_at_ms: u64) {
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
}
