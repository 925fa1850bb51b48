//! What `get`, `status` and `describe` answer: typed rows from the core's view of the fleet.
//! The CLI renders them (`src/output.rs`).

use std::collections::BTreeMap;

use starling_protocol::api::{
    Description, EndpointRow, NodeEvent, NodeRow, ReplicaPlace, ReplicaRow, Usage, WorkloadRow,
};
use starling_protocol::placement::Liveness;
use starling_protocol::quantity::{Bytes, Millicores};
use starling_protocol::status::NodeStatus;
use starling_protocol::wire::{ApiResponse, ObjectKind};
use starling_protocol::{NodeId, WorkloadName};

use super::Agent;
use super::handlers::not_found;
use crate::clock::now_ms;
use starling_core::node::NodeCore;

/// Most of its events a description carries (`starling get events --workload` has the fleet's).
const DESCRIBE_EVENTS_MAX: usize = 200;

impl Agent {
    /// `starling get KIND` (and `status`, which lists replicas).
    pub(super) fn get(&self, kind: ObjectKind) -> ApiResponse {
        match kind {
            ObjectKind::Workloads => ApiResponse::Workloads(workloads(&self.core)),
            ObjectKind::Replicas => ApiResponse::Replicas(replicas(&self.core)),
            ObjectKind::Nodes => ApiResponse::Nodes(self.nodes()),
            ObjectKind::Endpoints => ApiResponse::Endpoints(self.endpoint_rows()),
            ObjectKind::Services => ApiResponse::Services {
                answered_by: self.node.clone(),
                services: self
                    .services
                    .tx
                    .borrow()
                    .services
                    .values()
                    .cloned()
                    .collect(),
            },
            ObjectKind::Leases => ApiResponse::Leases(self.lease_rows()),
        }
    }

    /// `starling describe NAME`.
    pub(super) fn describe(&self, name: &WorkloadName) -> ApiResponse {
        let desired = self.core.desired();
        let Some(revision) = desired.get(name) else {
            return not_found(name);
        };
        let replicas = replicas(&self.core)
            .into_iter()
            .filter(|r| &r.replica.workload == name && matches!(r.place, ReplicaPlace::On { .. }))
            .collect();
        let events = self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .rev()
            .filter(|e| e.workload.as_ref() == Some(name))
            .take(DESCRIBE_EVENTS_MAX)
            .map(|e| NodeEvent {
                at_ms: e.at.physical_ms,
                text: e.text.clone(),
            })
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let Some(rollout) = self.rollout_report(name) else {
            return not_found(name);
        };
        ApiResponse::Described(Box::new(Description {
            now_ms: now_ms(),
            spec: revision.spec.clone(),
            revision: revision.number,
            id: desired.revision_id(name),
            by: revision.by.clone(),
            previous_revision: revision.previous.as_ref().map(|p| p.number),
            overwritten: desired.overwritten(name),
            writes: desired.entry(name).map(|e| e.writes).unwrap_or_default(),
            rollout,
            replicas,
            events,
            autoscaler: self.autoscaler_report(name, &revision.spec),
        }))
    }

    /// Every node of the view, with what it reports and its measured usage.
    fn nodes(&self) -> Vec<NodeRow> {
        let usage = |u: (u32, u64)| Usage {
            cpu: Millicores(u.0),
            memory: Bytes(u.1),
        };
        let mut usages: BTreeMap<NodeId, Usage> = BTreeMap::new();
        if let Some(u) = self.usage {
            usages.insert(self.node.clone(), usage(u));
        }
        if let Some(fleet) = &self.fleet {
            for (id, peer) in &fleet.peers {
                if let Some(u) = peer.usage {
                    usages.insert(id.clone(), usage(u));
                }
            }
        }
        let store_problem = self.store.health().problem();
        let all = statuses(&self.core);
        self.core
            .view()
            .nodes
            .iter()
            .map(|(id, view)| {
                let status = all.get(id).cloned().unwrap_or_default();
                NodeRow {
                    view: view.clone(),
                    departure: view.departure,
                    replicas: u32::try_from(status.replicas.len()).unwrap_or(u32::MAX),
                    reserved: status.reserved,
                    usage: usages.get(id).copied(),
                    store_error: store_problem.clone().filter(|_| *id == self.node),
                    generation: self.generation_of(id),
                }
            })
            .collect()
    }

    /// `node`'s life as heard here: this agent's own, or the one gossip carried last.
    fn generation_of(&self, node: &NodeId) -> u64 {
        if *node == self.node {
            return self.generation;
        }
        self.fleet
            .as_ref()
            .and_then(|f| f.peers.get(node))
            .map_or(0, |p| p.generation)
    }

    /// Every published instance port of nodes not known to be down, with its state, sorted.
    fn endpoint_rows(&self) -> Vec<EndpointRow> {
        let mut rows: Vec<EndpointRow> = self
            .services
            .tx
            .borrow()
            .services
            .values()
            .flat_map(|s| s.instances.iter())
            .map(|i| EndpointRow {
                replica: i.replica.clone(),
                port: i.port.clone(),
                address: i.address.to_string(),
                node: i.node.clone(),
                state: i.state,
            })
            .collect();
        rows.sort();
        rows
    }
}

/// Every node's status, this node's included.
fn statuses(core: &NodeCore) -> BTreeMap<NodeId, NodeStatus> {
    let mut all: BTreeMap<NodeId, NodeStatus> = core
        .peer_statuses()
        .iter()
        .map(|(node, status)| (node.clone(), NodeStatus::clone(status)))
        .collect();
    all.insert(core.node().clone(), core.status());
    all
}

/// Every replica a node reports, then those no node can take.
fn replicas(core: &NodeCore) -> Vec<ReplicaRow> {
    let mut rows = Vec::new();
    for (node, status) in statuses(core) {
        let liveness = core.view().nodes.get(&node).map(|n| n.liveness);
        rows.extend(
            status
                .replicas
                .into_iter()
                .map(|(replica, status)| ReplicaRow {
                    replica,
                    place: ReplicaPlace::On {
                        node: node.clone(),
                        liveness,
                        status,
                    },
                }),
        );
    }
    let unplaced = core.plan().map(|p| p.unplaced.clone()).unwrap_or_default();
    rows.extend(unplaced.into_iter().map(|(replica, why)| {
        ReplicaRow {
            place: ReplicaPlace::Unplaced {
                revision: core
                    .desired()
                    .get(&replica.workload)
                    .map_or(0, |r| r.number),
                why,
            },
            replica,
        }
    }));
    rows
}

/// Every workload with its replicas available on nodes that are not down.
fn workloads(core: &NodeCore) -> Vec<WorkloadRow> {
    let all = statuses(core);
    let up = |node: &NodeId| {
        core.view()
            .nodes
            .get(node)
            .is_some_and(|n| n.liveness != Liveness::Down)
    };
    core.desired()
        .workloads()
        .map(|(name, revision)| {
            let available = all
                .iter()
                .filter(|(node, _)| up(node))
                .flat_map(|(_, s)| s.replicas.iter())
                .filter(|(id, r)| &id.workload == name && r.is_available())
                .count();
            let spec = &revision.spec;
            WorkloadRow {
                name: name.clone(),
                revision: revision.number,
                available: u32::try_from(available).unwrap_or(u32::MAX),
                replicas: spec.replicas_to_place(),
                runtime: spec.runtime,
                command: spec.command.clone(),
                image: spec.image.clone(),
            }
        })
        .collect()
}

impl Agent {
    /// Who scales `name` (its lease holder as known here) and, if it is this node, what it
    /// decided; `None` for a workload without `[scaling]`.
    fn autoscaler_report(
        &self,
        name: &WorkloadName,
        spec: &starling_protocol::spec::WorkloadSpec,
    ) -> Option<starling_protocol::api::AutoscalerReport> {
        spec.scaling.as_ref()?;
        let now = now_ms();
        let view = self.leases.elector.view(name);
        let scaler = view
            .record
            .filter(|l| l.expires_at_ms() > now)
            .map(|l| l.holder);
        Some(starling_protocol::api::AutoscalerReport {
            scaler,
            answered_by_scaler: self.core.scales(name),
            average: self.core.scale_average(name, now),
            decisions: self
                .core
                .scale_decisions(name)
                .into_iter()
                .map(|d| (d.at_ms, d.from, d.to, d.why))
                .collect(),
        })
    }
}
