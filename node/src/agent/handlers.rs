//! API requests that change the desired state, and the fleet's certificates and tokens.
//!
//! A write is applied to a copy of the desired state, stored durably, and only then handed to
//! the core and acknowledged: a write that cannot be stored changes nothing. It returns what
//! must reach peers ([`Push`]) to the caller that answers (`Agent::answer`).

use starling_protocol::WorkloadName;
use starling_protocol::desired::{
    DesiredState, Key, Revision, RevisionId, RevisionMatch, RollbackOf,
};
use starling_protocol::spec::{SpecErrors, WorkloadSpec};
use starling_protocol::wire::{ApiError as WireApiError, ApiResponse};

use super::About;
use super::Agent;
use crate::clock::now_ms;
use starling_protocol::events::EventKind;

/// What a write answers, and what peers must be pushed before or as it is answered.
pub(super) struct WriteOutcome {
    /// The answer.
    pub response: ApiResponse,
    /// Set when the write changed the desired state.
    pub push: Option<Push>,
}

/// A stored write to push to peers.
pub(super) struct Push {
    /// The written entries (a workload; an object and the workloads it rolled).
    pub keys: Vec<Key>,
    /// Peers that must hold it before the answer (`--ack-replicas`).
    pub acks: u32,
}

impl From<ApiResponse> for WriteOutcome {
    /// An answer with nothing to push: a refusal, or a write that changed nothing.
    fn from(response: ApiResponse) -> Self {
        WriteOutcome {
            response,
            push: None,
        }
    }
}

impl Agent {
    /// Creates or updates a workload from a spec the caller sent; with `if_revision`, only if
    /// the workload's current write here is that one (compare-and-set). A spec that brings
    /// back a template whose rollout failed and was rolled back is refused unless `force`.
    pub(super) fn apply(
        &mut self,
        spec: WorkloadSpec,
        ack_replicas: u32,
        if_revision: Option<&str>,
        force: bool,
        by: &str,
    ) -> WriteOutcome {
        let wanted = match if_revision.map(str::parse::<RevisionMatch>).transpose() {
            Ok(wanted) => wanted,
            Err(e) => return error(format!("--if-revision: {e}")).into(),
        };
        if ack_replicas > 0 && self.fleet.is_none() {
            return error(format!(
                "--ack-replicas {ack_replicas}: this node runs alone and has no peers to wait for"
            ))
            .into();
        }
        // Decoding does not check a spec (see `wire`): it is checked here, where its field
        // errors can go back to the caller.
        if let Err(errors) = spec.check() {
            return spec_error(errors).into();
        }
        if let Some(refusal) = wanted.and_then(|w| self.revision_mismatch(&spec.name, &w)) {
            return refusal.into();
        }
        let name = spec.name.clone();
        let revision = match self.core.desired().get(&name) {
            Some(current) if current.spec == spec => {
                let at = self
                    .core
                    .desired()
                    .revision_id(&name)
                    .map_or_else(|| self.hlc.last().clone(), |id| id.at);
                return ApiResponse::Written {
                    name,
                    revision: current.number,
                    at,
                    changed: false,
                }
                .into();
            }
            Some(current) => match current.failed_template(&spec) {
                Some(failed) if !force => return failed_again(&name, failed).into(),
                _ => current.next(spec),
            },
            None => Revision::first(spec),
        };
        // The revision runs with the versions of its secrets and configs held here now.
        let mut revision = revision;
        revision.inputs = self.core.desired().pins(&revision.spec);
        let mut outcome = self.write(name, Some(revision), by);
        if let Some(push) = outcome.push.as_mut() {
            push.acks = ack_replicas;
        }
        outcome
    }

    /// The refusal of a compare-and-set whose revision is not the current one here.
    fn revision_mismatch(
        &self,
        name: &WorkloadName,
        wanted: &RevisionMatch,
    ) -> Option<ApiResponse> {
        let current = self.core.desired().revision_id(name);
        if wanted.matches(current.as_ref()) {
            return None;
        }
        let now = match &current {
            Some(id) => format!("is at revision {id}"),
            None => "does not exist".to_string(),
        };
        let lost = self.core.desired().overwritten(name).len();
        Some(error(format!(
            "{name} {now} on {}, not the revision you gave (--if-revision {}); nothing was changed{}",
            self.node,
            match wanted {
                RevisionMatch::Number(n) => n.to_string(),
                RevisionMatch::Id(id) => id.to_string(),
            },
            if lost > 0 {
                format!(" ({lost} concurrent write(s) were overwritten: see starling describe)")
            } else {
                String::new()
            }
        )))
    }

    /// Deletes a workload (a tombstone).
    pub(super) fn delete(&mut self, name: WorkloadName, by: &str) -> WriteOutcome {
        match self.core.desired().get(&name) {
            None => not_found(&name).into(),
            Some(_) => self.write(name, None, by),
        }
    }

    /// Sets a workload's replica count.
    pub(super) fn scale(&mut self, name: WorkloadName, replicas: u32, by: &str) -> WriteOutcome {
        let Some(current) = self.core.desired().get(&name).cloned() else {
            return not_found(&name).into();
        };
        if replicas < current.spec.replicas
            && current.previous.is_some()
            && let Some(report) = self.rollout_report(&name)
            && !report.progress.complete()
        {
            return error(format!(
                "{name} is rolling out revision {} ({}/{} updated): scaling down now would take \
                 away replicas its budget counts on; wait for it (starling rollout status {name} \
                 --watch) or roll back first. Nothing was changed.",
                current.number, report.progress.updated, report.progress.replicas
            ))
            .into();
        }
        let mut spec = current.spec.clone();
        spec.replicas = replicas;
        match spec.check() {
            Ok(()) => self.write(name, Some(current.next(spec)), by),
            Err(errors) => spec_error(errors).into(),
        }
    }

    /// Goes back to a workload's previous revision.
    pub(super) fn rollback(&mut self, name: WorkloadName, by: &str) -> WriteOutcome {
        let Some(current) = self.core.desired().get(&name).cloned() else {
            return not_found(&name).into();
        };
        match current.rollback(None) {
            Some(revision) => self.write(name, Some(revision), by),
            None => error(format!("{name} has no previous revision to roll back to")).into(),
        }
    }

    /// A one-time join token naming this node as the seed to join through. Who may ask is
    /// decided before (`dispatch`): the local socket (the data dir's owner) or an operator.
    pub(super) fn token_create(&self) -> ApiResponse {
        let Some(fleet) = &self.fleet else {
            return error("this node is not in a cluster: there is nothing to join".into());
        };
        match fleet.membership.token(vec![fleet.base.to_string()]) {
            Ok(token) => ApiResponse::Token(token.encode()),
            Err(e) => error(format!("cannot make a join token: {e}")),
        }
    }

    /// Refuses a certificate name from now on; gossip spreads it to every member.
    pub(super) fn revoke(&mut self, name: String) -> ApiResponse {
        if self.fleet.is_none() {
            return error("this node is not in a cluster: nothing to revoke".into());
        }
        let id = match starling_protocol::NodeId::new(name.clone()) {
            Ok(id) => id,
            Err(e) => return error(format!("{name:?} is not a node or user name: {e}")),
        };
        if name == self.node.as_str() {
            return error(format!(
                "{name} is this node: ask another member to remove it"
            ));
        }
        let names: Vec<String> = {
            let mut set = self.revoked.write().unwrap_or_else(|e| e.into_inner());
            set.insert(name.clone());
            set.iter().cloned().collect()
        };
        if let Err(e) = crate::cluster::Membership::write_revoked(self.store.dir(), &names) {
            return error(format!("could not store the revocation: {e}"));
        }
        self.note(
            EventKind::Membership,
            About::Node,
            format!("revoked the certificate of {name}"),
        );
        ApiResponse::Revoked(id)
    }

    /// Stores a write durably, then hands the new state to the core.
    pub(super) fn write(
        &mut self,
        name: WorkloadName,
        revision: Option<Revision>,
        by: &str,
    ) -> WriteOutcome {
        let now = now_ms();
        let at = self.hlc.tick(now);
        let mut next: DesiredState = self.core.desired().clone();
        let number = revision.as_ref().map_or(0, |r| r.number);
        next.write_by(name.clone(), revision, at.clone(), by);
        if let Err(e) = self.store.write_desired(&next) {
            return error(format!(
                "could not store the change, nothing was changed: {e}"
            ))
            .into();
        }
        let id = RevisionId {
            number,
            at: at.clone(),
        };
        self.note(
            EventKind::WorkloadWritten,
            About::Workload(&name),
            format!(
                "{} {name} (revision {id}, by {by})",
                if number == 0 { "deleted" } else { "wrote" }
            ),
        );
        self.decide(|core| core.handle_desired(now, next));
        WriteOutcome {
            response: ApiResponse::Written {
                name: name.clone(),
                revision: number,
                at,
                changed: true,
            },
            push: Some(Push {
                keys: vec![Key::Workload(name)],
                acks: 0,
            }),
        }
    }
}

pub(super) fn error(message: String) -> ApiResponse {
    ApiResponse::Error(WireApiError {
        message,
        fields: Vec::new(),
    })
}

/// The refusal of an apply that would roll out again what the fleet just rolled back.
fn failed_again(name: &WorkloadName, failed: &RollbackOf) -> ApiResponse {
    let why = failed.failure.as_deref().unwrap_or("no reason recorded");
    error(format!(
        "{name}: this spec is the template of revision {}, whose rollout failed and was \
         rolled back ({why}); nothing was changed. Fix the spec, or apply it with --force to \
         roll it out again",
        failed.number
    ))
}

pub(super) fn not_found(name: &WorkloadName) -> ApiResponse {
    error(format!("no workload named {name}"))
}

fn spec_error(errors: SpecErrors) -> ApiResponse {
    let n = errors.errors().len();
    ApiResponse::Error(WireApiError {
        message: format!(
            "the spec has {n} problem{}; nothing was changed",
            if n == 1 { "" } else { "s" }
        ),
        fields: errors.0,
    })
}
