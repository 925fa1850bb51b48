//! Listings, descriptions and records a node answers with, each rendered both ways at once:
//! a table for people and the same data as JSON for scripts.

use serde_json::{Value, json};
use starling_protocol::api::{
    AdmitRow, Description, EndpointRow, LeaseHere, LeaseRow, NodeRow, PendingRow, ReplicaPlace,
    ReplicaRow, Voter, WorkloadRow,
};
use starling_protocol::placement::{Departure, Liveness};
use starling_protocol::quantity::{Millicores, format_duration_ms};
use starling_protocol::spec::RuntimeKind;
use starling_protocol::status::{ReplicaState, ReplicaStatus};
use starling_protocol::wire::ApiResponse;

use super::{Table, rollout};

/// One answer, both ways.
struct Listing {
    table: Table,
    json: Value,
}

/// The table of a listing answer; `None` for answers that are not one (writes, leases, logs,
/// errors: see `output::text`).
pub(super) fn table(response: &ApiResponse) -> Option<Table> {
    listing(response).map(|l| l.table)
}

/// The JSON of a listing answer (`null` for answers that are not one).
pub(super) fn json(response: &ApiResponse) -> Value {
    listing(response).map_or(Value::Null, |l| l.json)
}

fn listing(response: &ApiResponse) -> Option<Listing> {
    Some(match response {
        ApiResponse::Workloads(rows) => workloads(rows),
        ApiResponse::Replicas(rows) => replicas(rows),
        ApiResponse::Nodes(rows) => nodes(rows),
        ApiResponse::Endpoints(rows) => endpoints(rows),
        ApiResponse::Services {
            answered_by,
            services,
        } => {
            let (table, json) = super::services::services(answered_by, services);
            Listing { table, json }
        }
        ApiResponse::Leases(rows) => leases(rows),
        ApiResponse::Events(page) => {
            let (table, json) = super::events::listing(page);
            Listing { table, json }
        }
        ApiResponse::Described(description) => describe(description),
        ApiResponse::Voters { voters: v, version } => voters(v, *version),
        ApiResponse::Token(token) => single("TOKEN", token, json!({ "token": token })),
        ApiResponse::Revoked(name) => single("REVOKED", name.as_str(), json!({ "revoked": name })),
        ApiResponse::KeyRotated {
            key,
            installed,
            asked,
        } => {
            let mut table = Table::new(&["KEY", "INSTALLED ON"]);
            table.row(vec![
                key.to_string(),
                format!("{installed}/{asked} live peers"),
            ]);
            let json = json!({ "key": key, "installed": installed, "asked": asked });
            Listing { table, json }
        }
        ApiResponse::Objects(rows) => objects(rows),
        ApiResponse::Recipients(nodes) => {
            let mut table = Table::new(&["NODE", "PUBLIC KEY"]);
            for (node, key) in nodes {
                table.row(vec![
                    node.to_string(),
                    starling_protocol::objects::seal::hex(key),
                ]);
            }
            let json = json!(nodes
                .iter()
                .map(|(n, k)| json!({"node": n, "public_key": starling_protocol::objects::seal::hex(k)}))
                .collect::<Vec<_>>());
            Listing { table, json }
        }
        ApiResponse::Pending(rows) => pending(rows),
        ApiResponse::Admitted(rows) => admitted(rows),
        ApiResponse::Written { .. }
        | ApiResponse::ObjectWritten { .. }
        | ApiResponse::Rollout(_)
        | ApiResponse::LogChunk { .. }
        | ApiResponse::Lease(_)
        | ApiResponse::Error(_) => return None,
    })
}

fn pending(rows: &[PendingRow]) -> Listing {
    let mut table = Table::new(&["NAME", "ADDRESS", "WAITING", "PEER"]);
    for row in rows {
        table.row(vec![
            row.node.to_string(),
            row.address.clone(),
            format_duration_ms(row.waiting_ms),
            // The tail tells two devices of one name apart; JSON has the whole id.
            starling_node::lan::short_peer(&row.peer).to_string(),
        ]);
    }
    let json = json!(
        rows.iter()
            .map(|r| json!({
                "node": r.node,
                "address": r.address,
                "waiting_ms": r.waiting_ms,
                "peer": r.peer,
            }))
            .collect::<Vec<_>>()
    );
    Listing { table, json }
}

fn admitted(rows: &[AdmitRow]) -> Listing {
    let mut table = Table::new(&["NODE", "ADMITTED"]);
    for row in rows {
        table.row(vec![
            row.node.to_string(),
            match &row.error {
                None => "yes: took a join token, joining".to_string(),
                Some(why) => format!("no: {why}"),
            },
        ]);
    }
    let json = json!(
        rows.iter()
            .map(|r| json!({ "node": r.node, "admitted": r.error.is_none(), "error": r.error }))
            .collect::<Vec<_>>()
    );
    Listing { table, json }
}

fn single(column: &str, value: &str, json: Value) -> Listing {
    let mut table = Table::new(&[column]);
    table.row(vec![value.to_string()]);
    Listing { table, json }
}

fn runtime_name(kind: RuntimeKind) -> String {
    format!("{kind:?}").to_lowercase()
}

fn workloads(rows: &[WorkloadRow]) -> Listing {
    let mut table = Table::new(&["NAME", "REVISION", "AVAILABLE", "RUNTIME", "COMMAND/IMAGE"]);
    let mut items = Vec::new();
    for w in rows {
        let runtime = runtime_name(w.runtime);
        table.row(vec![
            w.name.to_string(),
            w.revision.to_string(),
            format!("{}/{}", w.available, w.replicas),
            runtime.clone(),
            w.command
                .clone()
                .or_else(|| w.image.clone())
                .unwrap_or_default(),
        ]);
        items.push(json!({
            "name": w.name, "revision": w.revision, "available": w.available,
            "replicas": w.replicas, "runtime": runtime,
        }));
    }
    Listing {
        table,
        json: json!(items),
    }
}

/// `healthy`, `unhealthy` (running, failing its check) or `-`.
fn health(r: &ReplicaStatus) -> &'static str {
    match (r.is_available(), r.state) {
        (true, _) => "healthy",
        (false, ReplicaState::Running) => "unhealthy",
        _ => "-",
    }
}

/// A replica row as it reads: state, health column, `healthy` for scripts, and reason.
/// `top` reads replicas the same way.
pub(crate) struct ReplicaReading {
    pub node: Option<String>,
    pub state: String,
    pub health: &'static str,
    pub healthy: bool,
    pub restarts: u32,
    pub revision: u64,
    pub last_exit_code: Option<i32>,
    pub reason: Option<String>,
}

pub(crate) fn read_replica(place: &ReplicaPlace) -> ReplicaReading {
    match place {
        ReplicaPlace::On {
            node,
            liveness,
            status: r,
        } => {
            // A down node's last status is history, not a running replica: say so.
            let (state, health, healthy, reason) = match liveness {
                Some(Liveness::Down) | None => (
                    "Unknown".to_string(),
                    "-",
                    false,
                    Some(format!("node {node} is down (last seen {})", r.state)),
                ),
                Some(Liveness::Suspect) => (
                    r.state.to_string(),
                    "-",
                    r.is_available(),
                    Some(format!("node {node} is suspected; left in place")),
                ),
                Some(Liveness::Alive) => (
                    r.state.to_string(),
                    health(r),
                    r.is_available(),
                    r.reason.clone(),
                ),
            };
            ReplicaReading {
                node: Some(node.to_string()),
                state,
                health,
                healthy,
                restarts: r.restarts,
                revision: r.revision,
                last_exit_code: r.last_exit_code,
                reason,
            }
        }
        ReplicaPlace::Unplaced { revision, why } => ReplicaReading {
            node: None,
            state: "Pending".into(),
            health: "-",
            healthy: false,
            restarts: 0,
            revision: *revision,
            last_exit_code: None,
            reason: Some(format!("unplaceable: {why}")),
        },
    }
}

fn replicas(rows: &[ReplicaRow]) -> Listing {
    let mut table = Table::new(&[
        "WORKLOAD", "REPLICA", "NODE", "STATE", "HEALTH", "RESTARTS", "REVISION", "EXIT", "REASON",
    ]);
    let mut items = Vec::new();
    for row in rows {
        let r = read_replica(&row.place);
        let id = &row.replica;
        table.row(vec![
            id.workload.to_string(),
            id.index.to_string(),
            r.node.clone().unwrap_or_else(|| "-".into()),
            r.state.clone(),
            r.health.to_string(),
            r.restarts.to_string(),
            r.revision.to_string(),
            r.last_exit_code.map_or("-".into(), |c| c.to_string()),
            r.reason.clone().unwrap_or_default(),
        ]);
        items.push(json!({
            "workload": id.workload, "replica": id.index, "node": r.node, "state": r.state,
            "healthy": r.healthy, "restarts": r.restarts, "revision": r.revision,
            "last_exit_code": r.last_exit_code, "reason": r.reason,
        }));
    }
    Listing {
        table,
        json: json!(items),
    }
}

fn endpoints(rows: &[EndpointRow]) -> Listing {
    let mut table = Table::new(&["WORKLOAD", "REPLICA", "PORT", "ADDRESS", "NODE", "STATE"]);
    let mut items = Vec::new();
    for e in rows {
        table.row(vec![
            e.replica.workload.to_string(),
            e.replica.index.to_string(),
            e.port.clone(),
            e.address.clone(),
            e.node.to_string(),
            e.state.to_string(),
        ]);
        items.push(json!({
            "workload": e.replica.workload, "replica": e.replica.index, "port": e.port,
            "address": e.address, "node": e.node, "state": e.state,
        }));
    }
    Listing {
        table,
        json: json!(items),
    }
}

/// Bytes rounded for people: `64Mi`, `23.5Gi`.
pub(crate) fn human_bytes(bytes: u64) -> String {
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

fn nodes(rows: &[NodeRow]) -> Listing {
    let mut table = Table::new(&[
        "NODE", "STATE", "ARCH", "CPU", "MEMORY", "REPLICAS", "IN USE", "LABELS",
    ]);
    let mut items = Vec::new();
    for n in rows {
        let v = &n.view;
        let liveness = format!("{:?}", v.liveness).to_lowercase();
        let departure = match n.departure {
            Departure::Staying => None,
            Departure::Restarting { .. } => Some("restarting"),
            Departure::Draining => Some("draining"),
        };
        let mut state = departure.map_or_else(|| liveness.clone(), |d| format!("{liveness}, {d}"));
        if n.store_error.is_some() {
            state.push_str(", store failing");
        }
        table.row(vec![
            v.id.to_string(),
            state,
            v.arch.clone(),
            format!("{}/{}", n.reserved.cpu, v.capacity.cpu),
            format!(
                "{}/{}",
                human_bytes(n.reserved.memory.0),
                human_bytes(v.capacity.memory.0)
            ),
            n.replicas.to_string(),
            n.usage.map_or("-".into(), |u| {
                format!("{}/{}", Millicores(u.cpu.0), human_bytes(u.memory.0))
            }),
            v.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        ]);
        items.push(json!({
            "node": v.id, "state": liveness, "departure": departure, "arch": v.arch,
            "replicas": n.replicas,
            "cpu_reserved_millicores": n.reserved.cpu.0, "cpu_millicores": v.capacity.cpu.0,
            "memory_reserved_bytes": n.reserved.memory.0, "memory_bytes": v.capacity.memory.0,
            "labels": v.labels,
            "cpu_used_millicores": n.usage.map(|u| u.cpu.0),
            "memory_used_bytes": n.usage.map(|u| u.memory.0),
            "runtimes": v.runtimes.iter().map(|r| runtime_name(*r)).collect::<Vec<_>>(),
            "store_error": n.store_error,
            "generation": n.generation,
        }));
    }
    Listing {
        table,
        json: json!(items),
    }
}

fn leases(rows: &[LeaseRow]) -> Listing {
    let mut table = Table::new(&[
        "LEASE",
        "HOLDER",
        "EPOCH",
        "TOKEN",
        "EXPIRES IN",
        "THIS NODE",
    ]);
    let mut items = Vec::new();
    for l in rows {
        let holder = l.holder.as_ref().map_or("-", |h| h.as_str());
        let here = match &l.here {
            LeaseHere::Holder => "holder".to_string(),
            LeaseHere::Candidate { waiting_for } => format!("candidate: {waiting_for}"),
            LeaseHere::Bystander => "-".to_string(),
        };
        table.row(vec![
            l.name.to_string(),
            holder.to_string(),
            l.epoch.to_string(),
            l.fencing_token.to_string(),
            if l.expires_in_ms > 0 {
                format!("{:.1}s", l.expires_in_ms as f64 / 1000.0)
            } else {
                "expired".into()
            },
            here.clone(),
        ]);
        items.push(json!({
            "name": l.name.as_str(), "holder": holder, "epoch": l.epoch,
            "token": l.fencing_token, "expires_in_ms": l.expires_in_ms, "here": here,
        }));
    }
    Listing {
        table,
        json: json!(items),
    }
}

fn voters(voters: &[Voter], version: u64) -> Listing {
    let mut table = Table::new(&["VOTER", "LIVENESS"]);
    for v in voters {
        table.row(vec![
            v.node.to_string(),
            v.liveness
                .map_or_else(|| "unknown".to_string(), |l| format!("{l:?}")),
        ]);
    }
    let nodes: Vec<&str> = voters.iter().map(|v| v.node.as_str()).collect();
    Listing {
        table,
        json: json!({ "voters": nodes, "version": version }),
    }
}

/// Most of a workload's recent events a description shows for people (scripts get all).
const EVENTS_SHOWN: usize = 20;

fn describe(d: &Description) -> Listing {
    let name = &d.spec.name;
    // Ages by the answering node's clock, to the second.
    let ago = |at_ms: u64| format_duration_ms(d.now_ms.saturating_sub(at_ms) / 1000 * 1000);
    let written = |at: &starling_protocol::hlc::Timestamp, by: &str| {
        let by = if by.is_empty() {
            String::new()
        } else {
            format!(", by {by}")
        };
        format!("at peer {} {} ago{by}", at.node, ago(at.physical_ms))
    };
    let mut table = Table::new(&["FIELD", "VALUE"]);
    let mut row = |field: String, value: String| table.row(vec![field, value]);
    let id = d.id.as_ref();
    row("name".into(), name.to_string());
    row(
        "revision".into(),
        id.map_or_else(|| d.revision.to_string(), |id| id.to_string()),
    );
    row(
        "written".into(),
        id.map_or_else(|| "-".into(), |id| written(&id.at, &d.by)),
    );
    row(
        "previous revision".into(),
        d.previous_revision.map_or("-".into(), |n| n.to_string()),
    );
    let (rollout_rows, rollout_keys) = rollout::description(d);
    for (label, text) in rollout_rows {
        row(label, text);
    }
    for w in &d.overwritten {
        let what = if w.number == 0 {
            format!("delete {}", w.at.physical_ms)
        } else {
            format!("revision {}", w.id())
        };
        row(
            "overwritten".into(),
            format!("{what} {} (a concurrent write won)", written(&w.at, &w.by)),
        );
    }
    for r in &d.replicas {
        if let ReplicaPlace::On { node, status, .. } = &r.place {
            row(
                format!("replica {}", r.replica.index),
                format!(
                    "{} on {node}, {}, restarts {}",
                    status.state,
                    health(status),
                    status.restarts
                ),
            );
        }
    }
    let shown = d.events.len().saturating_sub(EVENTS_SHOWN);
    for e in &d.events[shown..] {
        row(format!("event {} ago", ago(e.at_ms)), e.text.clone());
    }
    let spec = d.spec.to_toml();
    // One row per line, so the table stays aligned.
    for (i, line) in spec.lines().enumerate() {
        row(
            if i == 0 { "spec".into() } else { String::new() },
            line.to_string(),
        );
    }
    let mut json = json!({
        "name": name, "revision": d.revision,
        "revision_id": id.map(|id| id.to_string()),
        "written_at_ms": id.map(|id| id.at.physical_ms),
        "written_at_peer": id.map(|id| id.at.node.to_string()),
        "written_by": d.by,
        "overwritten": d.overwritten.iter().map(|w| json!({
            "revision": w.number,
            "revision_id": w.id().to_string(),
            "at_ms": w.at.physical_ms,
            "peer": w.at.node.to_string(),
            "by": w.by,
        })).collect::<Vec<_>>(),
        "previous_revision": d.previous_revision,
        "events": d.events.iter().map(|e| json!({"at_ms": e.at_ms, "event": e.text})).collect::<Vec<_>>(),
        "spec": spec,
    });
    if let Value::Object(keys) = &mut json {
        keys.extend(rollout_keys);
    }
    Listing { table, json }
}

/// Secrets or configs: metadata only (the answer carries no value).
fn objects(rows: &[starling_protocol::api::ObjectRow]) -> Listing {
    let mut table = Table::new(&[
        "NAME",
        "VERSION",
        "SIZE",
        "KEYS",
        "WRITTEN BY",
        "SEALED TO",
        "USED BY",
    ]);
    let mut items = Vec::new();
    for r in rows {
        let used: Vec<&str> = r.used_by.iter().map(|w| w.as_str()).collect();
        let sealed: Vec<&str> = r.sealed_to.iter().map(|n| n.as_str()).collect();
        table.row(vec![
            r.key.name.to_string(),
            r.at.physical_ms.to_string(),
            format!("{} B", r.size),
            r.keys.join(","),
            r.by.clone(),
            if r.key.kind == starling_protocol::objects::ObjectKind::Config {
                "(clear)".into()
            } else {
                format!("{} node(s)", sealed.len())
            },
            if used.is_empty() {
                "-".into()
            } else {
                used.join(",")
            },
        ]);
        items.push(json!({
            "kind": r.key.kind.as_str(), "name": r.key.name.as_str(), "version": r.at.physical_ms,
            "written_at_ms": r.at.physical_ms, "taken_by": r.at.node.as_str(), "by": r.by, "size": r.size, "keys": r.keys,
            "sealed_to": sealed, "used_by": used,
        }));
    }
    Listing {
        table,
        json: Value::Array(items),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_protocol::NodeId;
    use starling_protocol::placement::ReplicaId;

    fn running(healthy: bool) -> ReplicaStatus {
        ReplicaStatus {
            revision: 2,
            state: ReplicaState::Running,
            healthy,
            restarts: 1,
            last_exit_code: None,
            reason: None,
            settled: healthy,
            outgoing: None,
        }
    }

    fn on(liveness: Option<Liveness>, status: ReplicaStatus) -> ReplicaRow {
        ReplicaRow {
            replica: ReplicaId {
                workload: starling_protocol::WorkloadName::new("web").expect("valid"),
                index: 0,
            },
            place: ReplicaPlace::On {
                node: NodeId::new("n1").expect("valid"),
                liveness,
                status,
            },
        }
    }

    #[test]
    fn a_down_nodes_replica_reads_unknown_and_unhealthy() {
        let listing = replicas(&[on(Some(Liveness::Down), running(true))]);
        assert_eq!(listing.json[0]["state"], "Unknown");
        assert_eq!(listing.json[0]["healthy"], false);
        assert_eq!(
            listing.json[0]["reason"],
            "node n1 is down (last seen Running)"
        );
        assert!(listing.table.render().contains("Unknown  -"));
    }

    #[test]
    fn a_suspect_nodes_replica_keeps_its_state_without_a_health_column() {
        let listing = replicas(&[on(Some(Liveness::Suspect), running(true))]);
        assert_eq!(listing.json[0]["state"], "Running");
        assert_eq!(listing.json[0]["healthy"], true);
        let alive = replicas(&[on(Some(Liveness::Alive), running(false))]);
        assert!(alive.table.render().contains("Running  unhealthy"));
    }

    #[test]
    fn human_bytes_round_for_people() {
        assert_eq!(human_bytes(64 << 20), "64Mi");
        assert_eq!(human_bytes(3 << 29), "1.5Gi");
        assert_eq!(human_bytes(512), "512");
    }
}
