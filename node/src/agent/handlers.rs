//! API requests that read or change the desired state.
//!
//! A write is applied to a copy of the desired state, stored durably, and only then handed to
//! the core and acknowledged: a write that cannot be stored changes nothing.

use std::collections::BTreeMap;

use starling_protocol::WorkloadName;
use starling_protocol::desired::{DesiredState, Revision, RevisionId, RevisionMatch};
use starling_protocol::spec::{SpecDoc, SpecErrors, WorkloadSpec};
use starling_protocol::wire::{
    ApiError as WireApiError, ApiRequest, ApiResponse, ObjectKind, SpecFormat, SpecText,
};

use super::Agent;
use super::tables;
use crate::clock::now_ms;

impl Agent {
    /// Answers an API request made by `by` (an operator's certificate name, a node, or the
    /// local socket): writes record it.
    pub(super) fn handle_api(&mut self, request: ApiRequest, by: &str) -> ApiResponse {
        match request {
            ApiRequest::Apply { spec, ack_replicas } => {
                self.apply_text(spec, ack_replicas, None, by)
            }
            ApiRequest::ApplyIf {
                spec,
                ack_replicas,
                if_revision,
            } => match if_revision.parse::<RevisionMatch>() {
                Ok(wanted) => self.apply_text(spec, ack_replicas, Some(wanted), by),
                Err(e) => error(format!("--if-revision: {e}")),
            },
            ApiRequest::Delete { name } => match self.core.desired().get(&name) {
                None => not_found(&name),
                Some(_) => self.write(name, None, by),
            },
            ApiRequest::Scale { name, replicas } => {
                let Some(current) = self.core.desired().get(&name).cloned() else {
                    return not_found(&name);
                };
                let mut spec = current.spec.clone();
                spec.replicas = replicas;
                match spec.check() {
                    Ok(()) => self.write(name, Some(current.next(spec)), by),
                    Err(errors) => spec_error(errors),
                }
            }
            ApiRequest::Rollback { name } => {
                let Some(current) = self.core.desired().get(&name).cloned() else {
                    return not_found(&name);
                };
                match current.rollback() {
                    Some(revision) => self.write(name, Some(revision), by),
                    None => error(format!("{name} has no previous revision to roll back to")),
                }
            }
            ApiRequest::Get { kind } => match kind {
                ObjectKind::Workloads => tables::workloads(&self.core),
                ObjectKind::Replicas => tables::replicas(&self.core),
                ObjectKind::Nodes => {
                    let problem = self.store.health().problem();
                    tables::nodes(&self.core, &self.usages(), problem.map(|p| (&self.node, p)))
                }
                ObjectKind::Endpoints => tables::endpoints(&self.core, self.endpoint_lists()),
                ObjectKind::Leases => self.lease_table(),
            },
            ApiRequest::Describe { name } => match self.core.desired().get(&name) {
                None => not_found(&name),
                Some(revision) => tables::describe(&self.core, revision, &self.events),
            },
            ApiRequest::Status => tables::replicas(&self.core),
            ApiRequest::Logs { .. } => {
                error("logs are served by the connection handler".to_string())
            }
            ApiRequest::Revoke { name } => self.revoke(name),
            ApiRequest::RotateGossipKey => error("key rotation is run by the agent loop".into()),
            ApiRequest::LeaseAcquire { .. } => {
                error("lease requests are run by the agent loop".into())
            }
            ApiRequest::LeaseRelease { name } => self.release(&name),
            ApiRequest::Voters { set, force } => self.voters_api(set, force),
            ApiRequest::TokenCreate => self.token_create(),
        }
    }

    /// A one-time join token naming this node as the seed to join through. Who may ask is
    /// decided before: the local socket (the data dir's owner) or an operator over QUIC.
    fn token_create(&self) -> ApiResponse {
        let Some(fleet) = &self.fleet else {
            return error("this node is not in a cluster: there is nothing to join".into());
        };
        match fleet.membership.token(vec![fleet.base.to_string()]) {
            Ok(token) => {
                let token = token.encode();
                ApiResponse::Table {
                    columns: vec!["TOKEN".into()],
                    rows: vec![vec![token.clone()]],
                    json: serde_json::json!({ "token": token }).to_string(),
                }
            }
            Err(e) => error(format!("cannot make a join token: {e}")),
        }
    }

    /// Measured usage of every node that published one.
    fn usages(&self) -> BTreeMap<starling_protocol::NodeId, (u32, u64)> {
        let mut out = BTreeMap::new();
        if let Some(u) = self.usage {
            out.insert(self.node.clone(), u);
        }
        if let Some(fleet) = &self.fleet {
            for (id, peer) in &fleet.peers {
                if let Some(u) = peer.usage {
                    out.insert(id.clone(), u);
                }
            }
        }
        out
    }

    /// Every node's published endpoints (this node's from its current status).
    fn endpoint_lists(&self) -> Vec<(starling_protocol::NodeId, Vec<String>)> {
        let mut lists = vec![(self.node.clone(), self.endpoints(&self.core.status()))];
        if let Some(fleet) = &self.fleet {
            lists.extend(
                fleet
                    .peers
                    .iter()
                    .map(|(id, p)| (id.clone(), p.endpoints.clone())),
            );
        }
        lists
    }

    /// Refuses a certificate name from now on; gossip spreads it to every member.
    fn revoke(&mut self, name: String) -> ApiResponse {
        if self.fleet.is_none() {
            return error("this node is not in a cluster: nothing to revoke".into());
        }
        if let Err(e) = starling_protocol::NodeId::new(name.clone()) {
            return error(format!("{name:?} is not a node or user name: {e}"));
        }
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
        self.note(format!("revoked the certificate of {name}"));
        ApiResponse::Table {
            columns: vec!["REVOKED".into()],
            rows: vec![vec![name.clone()]],
            json: serde_json::json!({ "revoked": name }).to_string(),
        }
    }

    /// Parses and applies a spec sent as text; with `wanted`, only if the workload's
    /// current write here is that one (compare-and-set).
    fn apply_text(
        &mut self,
        spec: SpecText,
        ack_replicas: u32,
        wanted: Option<RevisionMatch>,
        by: &str,
    ) -> ApiResponse {
        if ack_replicas > 0 && self.fleet.is_none() {
            return error(format!(
                "--ack-replicas {ack_replicas}: this node runs alone and has no peers to wait for"
            ));
        }
        let parsed = match spec.format {
            SpecFormat::Toml => SpecDoc::from_toml(&spec.text),
            SpecFormat::Json => SpecDoc::from_json(&spec.text),
        }
        .and_then(|doc| doc.validate());
        let spec = match parsed {
            Ok(spec) => spec,
            Err(errors) => return spec_error(errors),
        };
        if let Some(wanted) = wanted {
            let current = self.core.desired().revision_id(&spec.name);
            if !wanted.matches(current.as_ref()) {
                let now = match &current {
                    Some(id) => format!("is at revision {id}"),
                    None => "does not exist".to_string(),
                };
                let lost = self.core.desired().overwritten(&spec.name).len();
                return error(format!(
                    "{} {now} on {}, not the revision you gave (--if-revision {}); nothing was changed{}",
                    spec.name,
                    self.node,
                    match &wanted {
                        RevisionMatch::Number(n) => n.to_string(),
                        RevisionMatch::Id(id) => id.to_string(),
                    },
                    if lost > 0 {
                        format!(
                            " ({lost} concurrent write(s) were overwritten: see starling describe)"
                        )
                    } else {
                        String::new()
                    }
                ));
            }
        }
        let response = self.apply(spec, by);
        if let Some(push) = self.push.as_mut() {
            push.1 = ack_replicas;
        }
        response
    }

    fn apply(&mut self, spec: WorkloadSpec, by: &str) -> ApiResponse {
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
                };
            }
            Some(current) => current.next(spec),
            None => Revision::first(spec),
        };
        self.write(name, Some(revision), by)
    }

    /// Stores a write durably, then hands the new state to the core.
    fn write(&mut self, name: WorkloadName, revision: Option<Revision>, by: &str) -> ApiResponse {
        let now = now_ms();
        let at = self.hlc.tick(now);
        let mut next: DesiredState = self.core.desired().clone();
        let number = revision.as_ref().map_or(0, |r| r.number);
        next.write_by(name.clone(), revision, at.clone(), by);
        if let Err(e) = self.store.write_desired(&next) {
            return error(format!(
                "could not store the change, nothing was changed: {e}"
            ));
        }
        let id = RevisionId {
            number,
            at: at.clone(),
        };
        self.note(format!(
            "{} {name} (revision {id}, by {by})",
            if number == 0 { "deleted" } else { "wrote" }
        ));
        self.decide(|core| core.handle_desired(now, next));
        self.push = Some((name.clone(), 0));
        ApiResponse::Written {
            name,
            revision: number,
            at,
            changed: true,
        }
    }
}

pub(super) fn error(message: String) -> ApiResponse {
    ApiResponse::Error(WireApiError {
        message,
        fields: Vec::new(),
    })
}

fn not_found(name: &WorkloadName) -> ApiResponse {
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
