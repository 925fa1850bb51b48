//! The voter's side: one candidate per lease until its grant lapses on this clock, epochs
//! that never go back, and silence right after a restart.

use starling_protocol::NodeId;
use starling_protocol::lease::{GrantReply, GrantRequest, Release};
use starling_protocol::spec::LEASE_TTL_MAX_MS;

use super::{ElectionOutput, Elector, Promise};

impl Elector {
    /// The voter's rule: one candidate per lease until its grant lapses on this clock, epochs
    /// never go back, and nothing at all right after a restart.
    pub(super) fn vote(
        &mut self,
        now_ms: u64,
        from: &NodeId,
        request: &GrantRequest,
    ) -> GrantReply {
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
        } else if let Some(quiet_until) = self
            .amnesiac_since_ms
            .map(|since| since + ttl + self.config.max_drift_ms)
            .filter(|until| now_ms < *until)
        {
            Some((
                "started without its voting memory; grants nothing for one lease duration"
                    .to_string(),
                quiet_until - now_ms,
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
        // A grant never goes back: an epoch below the highest granted, or the highest one for
        // another holder, was refused above.
        debug_assert!(
            self.memory
                .highest
                .get(name)
                .is_some_and(|(e, h)| *e > lease.epoch || (*e == lease.epoch && h == &lease.holder)),
            "granted {name} epoch {} to {} over {:?}",
            lease.epoch,
            lease.holder,
            self.memory.highest.get(name)
        );
        reply.granted = true;
        if lease.epoch >= reply.highest_epoch {
            reply.highest_epoch = lease.epoch;
            reply.highest_holder = Some(lease.holder.clone());
        }
        reply
    }

    pub(super) fn release_locally(&mut self, release: &Release) {
        if self
            .promises
            .get(&release.name)
            .is_some_and(|p| p.lease.holder == release.holder && p.lease.epoch == release.epoch)
        {
            self.promises.remove(&release.name);
        }
    }
}
