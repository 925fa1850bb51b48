//! Listings for `get`, `status` and `describe`: a table for people and the same data as JSON.

use std::collections::{BTreeMap, VecDeque};

use serde_json::json;
use starling_protocol::NodeId;
use starling_protocol::desired::Revision;
use starling_protocol::placement::{Departure, Liveness};
use starling_protocol::quantity::{Millicores, format_duration_ms};
use starling_protocol::status::{NodeStatus, ReplicaStatus};
use starling_protocol::wire::ApiResponse;

use crate::clock::now_ms;
use starling_core::node::NodeCore;

fn table(columns: &[&str], rows: Vec<Vec<String>>, json: serde_json::Value) -> ApiResponse {
    ApiResponse::Table {
        columns: columns.iter().map(|c| c.to_string()).collect(),
        rows,
        json: json.to_string(),
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

fn health(r: &ReplicaStatus) -> &'static str {
    match (r.is_available(), r.state) {
        (true, _) => "healthy",
        (false, starling_protocol::status::ReplicaState::Running) => "unhealthy",
        _ => "-",
    }
}

pub(super) fn replicas(core: &NodeCore) -> ApiResponse {
    let mut rows = Vec::new();
    let mut items = Vec::new();
    for (node, status) in statuses(core) {
        let liveness = core.view().nodes.get(&node).map(|n| n.liveness);
        for (id, r) in &status.replicas {
            // A down node's last status is history, not a running replica: say so.
            let (state, healthy, reason) = match liveness {
                Some(Liveness::Down) | None => (
                    "Unknown".to_string(),
                    false,
                    Some(format!("node {node} is down (last seen {})", r.state)),
                ),
                Some(Liveness::Suspect) => (
                    r.state.to_string(),
                    r.is_available(),
                    Some(format!("node {node} is suspected; left in place")),
                ),
                Some(Liveness::Alive) => (r.state.to_string(), r.is_available(), r.reason.clone()),
            };
            rows.push(vec![
                id.workload.to_string(),
                id.index.to_string(),
                node.to_string(),
                state.clone(),
                if liveness == Some(Liveness::Alive) {
                    health(r)
                } else {
                    "-"
                }
                .to_string(),
                r.restarts.to_string(),
                r.revision.to_string(),
                r.last_exit_code.map_or("-".into(), |c| c.to_string()),
                reason.clone().unwrap_or_default(),
            ]);
            items.push(json!({
                "workload": id.workload, "replica": id.index, "node": node, "state": state,
                "healthy": healthy, "restarts": r.restarts, "revision": r.revision,
                "last_exit_code": r.last_exit_code, "reason": reason,
            }));
        }
    }
    // Replicas no node can take are shown too, so a shortfall is never silent.
    let unplaced = core.plan().map(|p| p.unplaced.clone()).unwrap_or_default();
    for (id, why) in unplaced {
        let revision = core.desired().get(&id.workload).map_or(0, |r| r.number);
        let reason = format!("unplaceable: {why}");
        rows.push(vec![
            id.workload.to_string(),
            id.index.to_string(),
            "-".into(),
            "Pending".into(),
            "-".into(),
            "0".into(),
            revision.to_string(),
            "-".into(),
            reason.clone(),
        ]);
        items.push(json!({
            "workload": id.workload, "replica": id.index, "node": null, "state": "Pending",
            "healthy": false, "restarts": 0, "revision": revision, "last_exit_code": null, "reason": reason,
        }));
    }
    table(
        &[
            "WORKLOAD", "REPLICA", "NODE", "STATE", "HEALTH", "RESTARTS", "REVISION", "EXIT",
            "REASON",
        ],
        rows,
        json!(items),
    )
}

pub(super) fn workloads(core: &NodeCore) -> ApiResponse {
    let all = statuses(core);
    let mut rows = Vec::new();
    let mut items = Vec::new();
    for (name, revision) in core.desired().workloads() {
        let states: Vec<&ReplicaStatus> = all
            .iter()
            .filter(|(node, _)| {
                core.view()
                    .nodes
                    .get(*node)
                    .is_some_and(|n| n.liveness != Liveness::Down)
            })
            .flat_map(|(_, s)| s.replicas.iter())
            .filter(|(id, _)| &id.workload == name)
            .map(|(_, r)| r)
            .collect();
        let available = states.iter().filter(|r| r.is_available()).count();
        let spec = &revision.spec;
        let runtime = format!("{:?}", spec.runtime).to_lowercase();
        rows.push(vec![
            name.to_string(),
            revision.number.to_string(),
            format!("{available}/{}", spec.replicas_to_place()),
            runtime.clone(),
            spec.command
                .clone()
                .or_else(|| spec.image.clone())
                .unwrap_or_default(),
        ]);
        items.push(json!({
            "name": name, "revision": revision.number, "available": available,
            "replicas": spec.replicas_to_place(), "runtime": runtime,
        }));
    }
    table(
        &["NAME", "REVISION", "AVAILABLE", "RUNTIME", "COMMAND/IMAGE"],
        rows,
        json!(items),
    )
}

/// Service endpoints of live nodes: `workload/index/port=host:port` as each node publishes.
pub(super) fn endpoints(core: &NodeCore, lists: Vec<(NodeId, Vec<String>)>) -> ApiResponse {
    let mut rows = Vec::new();
    let mut items = Vec::new();
    for (node, list) in lists {
        let live = core
            .view()
            .nodes
            .get(&node)
            .is_some_and(|n| n.liveness != Liveness::Down);
        if !live {
            continue;
        }
        for entry in list {
            let Some((key, address)) = entry.split_once('=') else {
                continue;
            };
            let mut parts = key.splitn(3, '/');
            let (Some(workload), Some(index), Some(port)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            rows.push(vec![
                workload.to_string(),
                index.to_string(),
                port.to_string(),
                address.to_string(),
                node.to_string(),
            ]);
            items.push(json!({
                "workload": workload, "replica": index.parse::<u32>().ok(), "port": port,
                "address": address, "node": node,
            }));
        }
    }
    rows.sort();
    table(
        &["WORKLOAD", "REPLICA", "PORT", "ADDRESS", "NODE"],
        rows,
        json!(items),
    )
}

/// Bytes rounded for people: `64Mi`, `23.5Gi`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            let value = bytes as f64 / size as f64;
            return if bytes.is_multiple_of(size) || value >= 100.0 {
                format!("{value:.0}{unit}")
            } else {
                format!("{value:.1}{unit}")
            };
        }
    }
    bytes.to_string()
}

/// `store_problem`: this node's failing store, if it fails (only the answering node knows
/// its own; it shows as `store failing` in its state).
pub(super) fn nodes(
    core: &NodeCore,
    usage: &BTreeMap<NodeId, (u32, u64)>,
    store_problem: Option<(&NodeId, String)>,
) -> ApiResponse {
    let all = statuses(core);
    let mut rows = Vec::new();
    let mut items = Vec::new();
    for (id, node) in &core.view().nodes {
        let status = all.get(id).cloned().unwrap_or_default();
        let liveness = format!("{:?}", node.liveness).to_lowercase();
        let departure = match node.departure {
            Departure::Staying => None,
            Departure::Restarting { .. } => Some("restarting"),
            Departure::Draining => Some("draining"),
        };
        let store_error = store_problem
            .as_ref()
            .filter(|(node, _)| *node == id)
            .map(|(_, problem)| problem.clone());
        let mut state = departure.map_or_else(|| liveness.clone(), |d| format!("{liveness}, {d}"));
        if store_error.is_some() {
            state.push_str(", store failing");
        }
        rows.push(vec![
            id.to_string(),
            state,
            node.arch.clone(),
            format!("{}/{}", status.reserved.cpu, node.capacity.cpu),
            format!(
                "{}/{}",
                human_bytes(status.reserved.memory.0),
                human_bytes(node.capacity.memory.0)
            ),
            status.replicas.len().to_string(),
            usage.get(id).map_or("-".into(), |(cpu, mem)| {
                format!("{}/{}", Millicores(*cpu), human_bytes(*mem))
            }),
            node.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        ]);
        items.push(json!({
            "node": id, "state": liveness, "departure": departure, "arch": node.arch, "replicas": status.replicas.len(),
            "cpu_reserved_millicores": status.reserved.cpu.0, "cpu_millicores": node.capacity.cpu.0,
            "memory_reserved_bytes": status.reserved.memory.0, "memory_bytes": node.capacity.memory.0,
            "labels": node.labels,
            "cpu_used_millicores": usage.get(id).map(|u| u.0),
            "memory_used_bytes": usage.get(id).map(|u| u.1),
            "runtimes": node.runtimes.iter().map(|r| format!("{r:?}").to_lowercase()).collect::<Vec<_>>(),
            "store_error": store_error,
        }));
    }
    table(
        &[
            "NODE", "STATE", "ARCH", "CPU", "MEMORY", "REPLICAS", "IN USE", "LABELS",
        ],
        rows,
        json!(items),
    )
}

pub(super) fn describe(
    core: &NodeCore,
    revision: &Revision,
    events: &VecDeque<(u64, String)>,
) -> ApiResponse {
    let name = &revision.spec.name;
    let now = now_ms();
    let desired = core.desired();
    let id = desired.revision_id(name);
    let written = |at: &starling_protocol::hlc::Timestamp, by: &str| {
        format!(
            "at peer {} {} ago{}",
            at.node,
            format_duration_ms(now.saturating_sub(at.physical_ms) / 1000 * 1000),
            if by.is_empty() {
                String::new()
            } else {
                format!(", by {by}")
            }
        )
    };
    let mut rows = vec![
        vec!["name".into(), name.to_string()],
        vec![
            "revision".into(),
            id.as_ref()
                .map_or_else(|| revision.number.to_string(), |id| id.to_string()),
        ],
        vec![
            "written".into(),
            id.as_ref()
                .map_or_else(|| "-".into(), |id| written(&id.at, &revision.by)),
        ],
        vec![
            "previous revision".into(),
            revision
                .previous
                .as_ref()
                .map_or("-".into(), |p| p.number.to_string()),
        ],
    ];
    // Writes that lost to a concurrent write: what a racing operator should know was dropped.
    let overwritten = desired.overwritten(name);
    for w in &overwritten {
        rows.push(vec![
            "overwritten".into(),
            format!(
                "{} {} (a concurrent write won)",
                if w.number == 0 {
                    format!("delete {}", w.at.physical_ms)
                } else {
                    format!("revision {}", w.id())
                },
                written(&w.at, &w.by)
            ),
        ]);
    }
    for (node, status) in statuses(core) {
        for (id, r) in status
            .replicas
            .iter()
            .filter(|(id, _)| &id.workload == name)
        {
            rows.push(vec![
                format!("replica {}", id.index),
                format!(
                    "{} on {node}, {}, restarts {}",
                    r.state,
                    health(r),
                    r.restarts
                ),
            ]);
        }
    }
    let mine: Vec<&(u64, String)> = events
        .iter()
        .filter(|(_, text)| text.contains(name.as_str()))
        .collect();
    for (at, text) in mine.iter().rev().take(20).rev() {
        rows.push(vec![
            format!(
                "event {} ago",
                format_duration_ms(now.saturating_sub(*at) / 1000 * 1000)
            ),
            text.clone(),
        ]);
    }
    // One row per line, so the table stays aligned.
    for (i, line) in revision.spec.to_toml().lines().enumerate() {
        rows.push(vec![
            if i == 0 { "spec".into() } else { String::new() },
            line.to_string(),
        ]);
    }
    let json = json!({
        "name": name, "revision": revision.number,
        "revision_id": id.as_ref().map(|id| id.to_string()),
        "written_at_ms": id.as_ref().map(|id| id.at.physical_ms),
        "written_at_peer": id.as_ref().map(|id| id.at.node.to_string()),
        "written_by": revision.by,
        "overwritten": overwritten.iter().map(|w| json!({
            "revision": w.number,
            "revision_id": w.id().to_string(),
            "at_ms": w.at.physical_ms,
            "peer": w.at.node.to_string(),
            "by": w.by,
        })).collect::<Vec<_>>(),
        "previous_revision": revision.previous.as_ref().map(|p| p.number),
        "events": mine.iter().map(|(at, text)| json!({"at_ms": at, "event": text})).collect::<Vec<_>>(),
        "spec": revision.spec.to_toml(),
    });
    table(&["FIELD", "VALUE"], rows, json)
}
