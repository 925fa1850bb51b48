//! Node eligibility and the reasons a replica cannot be placed.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Capacity, Departure, NodeView};
use crate::quantity::{Bytes, Millicores};
use crate::spec::{RuntimeKind, WorkloadSpec};

/// Why no node can take a replica; the first constraint that rules out every node is named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unplaceable {
    /// No node is up.
    NoNodes,
    /// No live node offers the runtime.
    NoRuntime(RuntimeKind),
    /// No live node with the runtime has an allowed architecture.
    NoArch(Vec<String>),
    /// No otherwise eligible node carries this label with this value.
    NoLabel {
        /// Label key.
        key: String,
        /// Required value.
        value: String,
    },
    /// Nodes with room exist, but each already has a replica binding a host port this one needs.
    PortsTaken {
        /// The ports, as `8080/tcp`.
        ports: Vec<String>,
        /// How many nodes were eligible.
        eligible_nodes: usize,
    },
    /// Eligible nodes exist but none has room left.
    NoCapacity {
        /// What one replica requests.
        needs: Capacity,
        /// The most CPU free on any eligible node.
        most_cpu_free: Millicores,
        /// The most memory free on any eligible node.
        most_memory_free: Bytes,
        /// How many nodes were eligible.
        eligible_nodes: usize,
    },
}

impl fmt::Display for Unplaceable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unplaceable::NoNodes => write!(f, "no live nodes"),
            Unplaceable::NoRuntime(r) => {
                write!(f, "no live node offers the {} runtime", runtime_name(*r))
            }
            Unplaceable::NoArch(a) => write!(
                f,
                "no live node with the runtime has architecture {}",
                a.join(" or ")
            ),
            Unplaceable::NoLabel { key, value } => {
                write!(f, "no eligible node has label {key}={value}")
            }
            Unplaceable::PortsTaken {
                ports,
                eligible_nodes,
            } => write!(
                f,
                "host port {} already taken on every eligible node ({eligible_nodes}) with room",
                ports.join(", ")
            ),
            Unplaceable::NoCapacity {
                needs,
                most_cpu_free,
                most_memory_free,
                eligible_nodes,
            } => write!(
                f,
                "not enough capacity: needs cpu {} and memory {}; most free on {eligible_nodes} eligible node(s): cpu {most_cpu_free}, memory {most_memory_free}",
                needs.cpu, needs.memory
            ),
        }
    }
}

fn runtime_name(r: RuntimeKind) -> &'static str {
    match r {
        RuntimeKind::Process => "process",
        RuntimeKind::Docker => "docker",
        RuntimeKind::Podman => "podman",
    }
}

/// Whether `node` satisfies `spec`'s static constraints (runtime, arch, labels): it may be
/// placed a replica of `spec` when it has room.
pub fn may_run(node: &NodeView, spec: &WorkloadSpec) -> bool {
    eligible_nodes(&[node], spec).is_ok_and(|set| !set.is_empty())
}

/// Indices of the nodes that satisfy `spec`'s static constraints (runtime, arch, labels), or
/// the first constraint that leaves none.
pub(super) fn eligible_nodes(
    nodes: &[&NodeView],
    spec: &WorkloadSpec,
) -> Result<Vec<u32>, Unplaceable> {
    let mut set: Vec<u32> = (0..nodes.len() as u32).collect();
    if spec.singleton {
        // A node on its way to a restart would take the lease only to drop it.
        set.retain(|&n| !matches!(nodes[n as usize].departure, Departure::Restarting { .. }));
    }
    if set.is_empty() {
        return Err(Unplaceable::NoNodes);
    }
    set.retain(|&n| nodes[n as usize].runtimes.contains(&spec.runtime));
    if set.is_empty() {
        return Err(Unplaceable::NoRuntime(spec.runtime));
    }
    let arch = &spec.constraints.arch;
    if !arch.is_empty() {
        set.retain(|&n| arch.contains(&nodes[n as usize].arch));
        if set.is_empty() {
            return Err(Unplaceable::NoArch(arch.iter().cloned().collect()));
        }
    }
    for (key, value) in &spec.constraints.labels {
        set.retain(|&n| nodes[n as usize].labels.get(key) == Some(value));
        if set.is_empty() {
            return Err(Unplaceable::NoLabel {
                key: key.clone(),
                value: value.clone(),
            });
        }
    }
    Ok(set)
}

pub(super) fn no_capacity(
    spec: &WorkloadSpec,
    eligible: &[u32],
    free: &[Capacity],
    ports_free: impl Fn(usize) -> bool,
) -> Unplaceable {
    let has_room = |n: usize| {
        free[n].cpu >= spec.resources.cpu_request && free[n].memory >= spec.resources.memory_request
    };
    if eligible
        .iter()
        .any(|&n| has_room(n as usize) && !ports_free(n as usize))
    {
        let ports = spec
            .host_ports()
            .iter()
            .map(|(p, proto)| {
                format!(
                    "{p}/{}",
                    if *proto == crate::spec::PortProtocol::Udp {
                        "udp"
                    } else {
                        "tcp"
                    }
                )
            })
            .collect();
        return Unplaceable::PortsTaken {
            ports,
            eligible_nodes: eligible.len(),
        };
    }
    Unplaceable::NoCapacity {
        needs: Capacity {
            cpu: spec.resources.cpu_request,
            memory: spec.resources.memory_request,
        },
        most_cpu_free: eligible
            .iter()
            .map(|&n| free[n as usize].cpu)
            .max()
            .unwrap_or_default(),
        most_memory_free: eligible
            .iter()
            .map(|&n| free[n as usize].memory)
            .max()
            .unwrap_or_default(),
        eligible_nodes: eligible.len(),
    }
}
