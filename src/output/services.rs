//! `starling get services`: every service, its address and ports, and each instance with its
//! node, address and whether it takes new connections, as the answering node sees the fleet.

use serde_json::{Value, json};
use starling_protocol::NodeId;
use starling_protocol::service::Service;

use super::Table;

/// The table and JSON of a services answer.
pub(super) fn services(answered_by: &NodeId, services: &[Service]) -> (Table, Value) {
    let mut table = Table::new(&[
        "SERVICE", "ADDRESS", "PORT", "REPLICA", "NODE", "INSTANCE", "STATE",
    ]);
    let mut items = Vec::new();
    for service in services {
        for port in &service.ports {
            let cell = format!("{}/{}", port.port, port.name);
            let instances: Vec<_> = service
                .instances
                .iter()
                .filter(|i| i.port == port.name)
                .collect();
            if instances.is_empty() {
                table.row(vec![
                    service.name.to_string(),
                    service.address.to_string(),
                    cell.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "no instances".into(),
                ]);
            }
            for i in instances {
                table.row(vec![
                    service.name.to_string(),
                    service.address.to_string(),
                    cell.clone(),
                    i.replica.index.to_string(),
                    i.node.to_string(),
                    i.address.to_string(),
                    i.state.to_string(),
                ]);
            }
        }
        items.push(json!({
            "service": service.name,
            "address": service.address.to_string(),
            "dns": format!("{}.{}", service.name, starling_protocol::service::DOMAIN),
            "ports": service.ports.iter().map(|p| json!({
                "name": p.name, "port": p.port, "protocol": p.protocol,
            })).collect::<Vec<_>>(),
            "instances": service.instances.iter().map(|i| json!({
                "replica": i.replica.index, "port": i.port, "node": i.node,
                "address": i.address.to_string(), "state": i.state, "local": i.local,
            })).collect::<Vec<_>>(),
        }));
    }
    let json = json!({ "answered_by": answered_by, "services": items });
    (table, json)
}
