//! Services: what the fleet's published endpoints mean to discovery and load balancing.
//!
//! Every workload with ports is a service named after it. Each node publishes the instances it
//! runs ([`Endpoint`], one gossip entry per instance and port) with whether they may take new
//! connections; every node folds what it hears into the same [`ServiceTable`], which its DNS
//! server answers from and its proxy balances over. Deciding here, in pure code, keeps the DNS
//! server and the proxy thin and lets the simulator and property tests drive the rules.
//!
//! Each service also gets a stable loopback address ([`service_addresses`]): the same on every
//! node, derived from the name, so `NAME.svc.starling` resolves to the local proxy everywhere,
//! like a cluster IP with no kernel rules (Linux routes all of 127.0.0.0/8 to `lo`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::hash::hash64;
use crate::names::{NodeId, WorkloadName};
use crate::placement::{Liveness, ReplicaId};
use crate::spec::{PortProtocol, WorkloadSpec};

/// The DNS zone every agent answers for.
pub const DOMAIN: &str = "svc.starling";

/// Whether an instance may take new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    /// Running and passing its health check (or it has none).
    Ready,
    /// Starting, or running and failing its health check: no new connections.
    Unhealthy,
    /// Being stopped (a rollout, a scale-down, a move): no new connections; the open ones
    /// drain until its stop grace ends.
    Draining,
}

impl EndpointState {
    fn suffix(self) -> &'static str {
        match self {
            EndpointState::Ready => "",
            EndpointState::Unhealthy => ";unhealthy",
            EndpointState::Draining => ";draining",
        }
    }
}

impl fmt::Display for EndpointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointState::Ready => "Ready",
            EndpointState::Unhealthy => "Unhealthy",
            EndpointState::Draining => "Draining",
        })
    }
}

/// One instance's port as its node publishes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// The replica the instance belongs to.
    pub replica: ReplicaId,
    /// The port's name in the spec.
    pub port: String,
    /// Where peers reach it: the node's address and the port the instance listens on (picked
    /// per instance for a process, published by the engine for a container).
    pub address: SocketAddr,
    /// Whether it takes new connections.
    pub state: EndpointState,
}

impl Endpoint {
    /// The gossip entry: `workload/index/port=host:port`, then `;unhealthy` or `;draining`
    /// unless ready (so a ready entry reads as it did before states were published).
    pub fn entry(&self) -> String {
        format!(
            "{}/{}/{}={}{}",
            self.replica.workload,
            self.replica.index,
            self.port,
            self.address,
            self.state.suffix()
        )
    }

    /// Reads a gossip entry; `None` when it does not read so (a peer's bytes are not trusted).
    pub fn parse(entry: &str) -> Option<Endpoint> {
        let (key, rest) = entry.split_once('=')?;
        let (address, state) = match rest.split_once(';') {
            None => (rest, EndpointState::Ready),
            Some((address, "unhealthy")) => (address, EndpointState::Unhealthy),
            Some((address, "draining")) => (address, EndpointState::Draining),
            Some(_) => return None,
        };
        let mut parts = key.splitn(3, '/');
        let (workload, index, port) = (parts.next()?, parts.next()?, parts.next()?);
        if port.is_empty() || port.contains(['/', '=', ';']) {
            return None;
        }
        Some(Endpoint {
            replica: ReplicaId {
                workload: WorkloadName::new(workload).ok()?,
                index: index.parse().ok()?,
            },
            port: port.to_string(),
            address: address.parse().ok()?,
            state,
        })
    }
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServicePort {
    /// Its name in the spec (the SRV label `_NAME._tcp`).
    pub name: String,
    /// The port clients dial at the service address (the spec's `port`).
    pub port: u16,
    /// TCP or UDP.
    pub protocol: PortProtocol,
}

/// One instance of a service's port, as one node sees the fleet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Instance {
    /// The node that runs it.
    pub node: NodeId,
    /// Its replica.
    pub replica: ReplicaId,
    /// The port's name.
    pub port: String,
    /// Where to reach it.
    pub address: SocketAddr,
    /// Whether it takes new connections.
    pub state: EndpointState,
    /// It runs on the node that built the table.
    pub local: bool,
}

/// A workload seen as a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// The workload.
    pub name: WorkloadName,
    /// Its stable loopback address (the same on every node).
    pub address: Ipv4Addr,
    /// Its ports.
    pub ports: Vec<ServicePort>,
    /// Every published instance of its ports on nodes not known to be down, sorted.
    pub instances: Vec<Instance>,
}

impl Service {
    /// The instances of `port` that take new connections.
    pub fn ready<'a>(&'a self, port: &'a str) -> impl Iterator<Item = &'a Instance> + 'a {
        self.instances
            .iter()
            .filter(move |i| i.port == port && i.state == EndpointState::Ready)
    }

    /// The port named `name`.
    pub fn port(&self, name: &str) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.name == name)
    }
}

/// What a name under [`DOMAIN`] refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// `NAME.svc.starling`: the service (its address).
    Service(&'a Service),
    /// `_PORT._tcp.NAME.svc.starling` (or `_udp`): the ready instances of one port.
    Port(&'a Service, &'a ServicePort),
    /// `rINDEX.NAME.svc.starling`: one replica (the SRV answers' targets), its ready
    /// instances' node addresses.
    Replica(&'a Service, u32),
    /// A name in the zone that names nothing: NXDOMAIN.
    Unknown,
    /// A name outside the zone.
    Outside,
}

/// Every service as one node sees the fleet: what its DNS answers and its proxy balances over.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceTable {
    /// Services by name.
    pub services: BTreeMap<WorkloadName, Service>,
}

impl ServiceTable {
    /// Builds the table from the desired workloads and what each node publishes (`me`'s
    /// instances are marked local). Endpoints of nodes known to be down are left out: their
    /// instances may well be gone. Endpoints of a workload or port the desired state does not
    /// have (a stale or hostile entry) are left out too.
    pub fn build<'a>(
        workloads: impl IntoIterator<Item = &'a WorkloadSpec>,
        me: &NodeId,
        published: impl IntoIterator<Item = (&'a NodeId, Liveness, &'a [String])>,
    ) -> ServiceTable {
        let specs: Vec<&WorkloadSpec> = workloads.into_iter().collect();
        let names: BTreeSet<WorkloadName> = specs.iter().map(|s| s.name.clone()).collect();
        let addresses = service_addresses(&names);
        let mut services: BTreeMap<WorkloadName, Service> = BTreeMap::new();
        // A workload without ports has nothing to dial: not a service.
        for spec in specs.into_iter().filter(|s| !s.ports.is_empty()) {
            let Some(&address) = addresses.get(&spec.name) else {
                continue;
            };
            let ports = spec
                .ports
                .iter()
                .map(|p| ServicePort {
                    name: p.name.clone(),
                    port: p.container_port,
                    protocol: p.protocol,
                })
                .collect();
            services.insert(
                spec.name.clone(),
                Service {
                    name: spec.name.clone(),
                    address,
                    ports,
                    instances: Vec::new(),
                },
            );
        }
        for (node, liveness, entries) in published {
            if liveness == Liveness::Down {
                continue;
            }
            for endpoint in entries.iter().filter_map(|e| Endpoint::parse(e)) {
                let Some(service) = services.get_mut(&endpoint.replica.workload) else {
                    continue;
                };
                if service.port(&endpoint.port).is_none() {
                    continue;
                }
                service.instances.push(Instance {
                    node: node.clone(),
                    replica: endpoint.replica,
                    port: endpoint.port,
                    address: endpoint.address,
                    state: endpoint.state,
                    local: node == me,
                });
            }
        }
        for service in services.values_mut() {
            service.instances.sort();
            service.instances.dedup();
        }
        ServiceTable { services }
    }

    /// What `name` (a DNS name, any case, with or without the final dot) refers to.
    pub fn lookup(&self, name: &str) -> Lookup<'_> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let Some(head) = name.strip_suffix(DOMAIN).and_then(|h| {
            if h.is_empty() {
                Some(h)
            } else {
                h.strip_suffix('.')
            }
        }) else {
            return Lookup::Outside;
        };
        let labels: Vec<&str> = if head.is_empty() {
            Vec::new()
        } else {
            head.split('.').collect()
        };
        let service = |label: &str| {
            WorkloadName::new(label)
                .ok()
                .and_then(|n| self.services.get(&n))
        };
        match labels.as_slice() {
            [name] => service(name).map_or(Lookup::Unknown, Lookup::Service),
            [port, proto, name] => {
                let (Some(port), Some(service)) = (port.strip_prefix('_'), service(name)) else {
                    return Lookup::Unknown;
                };
                let protocol = match *proto {
                    "_tcp" => PortProtocol::Tcp,
                    "_udp" => PortProtocol::Udp,
                    _ => return Lookup::Unknown,
                };
                match service.port(port).filter(|p| p.protocol == protocol) {
                    Some(p) => Lookup::Port(service, p),
                    None => Lookup::Unknown,
                }
            }
            [replica, name] => {
                let index = replica
                    .strip_prefix('r')
                    .and_then(|i| i.parse::<u32>().ok());
                match (index, service(name)) {
                    (Some(index), Some(service))
                        if service.instances.iter().any(|i| i.replica.index == index) =>
                    {
                        Lookup::Replica(service, index)
                    }
                    _ => Lookup::Unknown,
                }
            }
            _ => Lookup::Unknown,
        }
    }
}

/// The SRV target naming one replica: `rINDEX.NAME.svc.starling.`
pub fn replica_host(replica: &ReplicaId) -> String {
    format!("r{}.{}.{DOMAIN}.", replica.index, replica.workload)
}

/// Node addresses of a replica's ready instances (what `rINDEX.NAME` resolves to).
pub fn replica_addresses(service: &Service, index: u32) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = service
        .instances
        .iter()
        .filter(|i| i.replica.index == index && i.state == EndpointState::Ready)
        .map(|i| i.address.ip())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// First address of the block service addresses come from: 127.64.0.0/10, away from the
/// 127.0.0.0/16 that local services usually bind.
const BLOCK_BASE: u32 = u32::from_be_bytes([127, 64, 0, 0]);
/// Addresses in the block.
const BLOCK_SIZE: u32 = 1 << 22;

/// Each name's stable loopback address in 127.64.0.0/10: its hash picks a slot; names whose
/// slots collide take the next free slot in name order, so every node with the same set of
/// names derives the same addresses. Slots ending in .0 or .255 are skipped (some tools treat
/// them as network or broadcast addresses).
pub fn service_addresses(names: &BTreeSet<WorkloadName>) -> BTreeMap<WorkloadName, Ipv4Addr> {
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for name in names {
        let mut slot = (hash64(name.as_str().as_bytes()) % u64::from(BLOCK_SIZE)) as u32;
        loop {
            let address = Ipv4Addr::from(BLOCK_BASE + slot);
            let last = address.octets()[3];
            if last != 0 && last != 255 && taken.insert(slot) {
                out.insert(name.clone(), address);
                break;
            }
            slot = (slot + 1) % BLOCK_SIZE;
        }
    }
    out
}

/// The environment variable naming the address to dial for a used service's port:
/// `STARLING_SVC_<NAME>_<PORT>`, upper-cased, `-` as `_`.
pub fn env_name(service: &WorkloadName, port: &str) -> String {
    format!(
        "STARLING_SVC_{}_{}",
        service.as_str().to_ascii_uppercase().replace('-', "_"),
        port.to_ascii_uppercase().replace('-', "_")
    )
}

/// Picks the instance for a new connection to `port` of `service`: only ready instances not
/// in `tried` (a connect that failed is retried on another); those on this node first; among
/// the rest, the less busy of two picked at random (`draw` gives two random numbers; power of
/// two choices keeps load even without every proxy agreeing on counts). `active` is how many
/// connections this proxy has open to an address.
pub fn pick<'a>(
    service: &'a Service,
    port: &str,
    tried: &[SocketAddr],
    active: impl Fn(&SocketAddr) -> u64,
    draw: (u64, u64),
) -> Option<&'a Instance> {
    let open: Vec<&Instance> = service
        .instances
        .iter()
        .filter(|i| i.port == port && i.state == EndpointState::Ready)
        .filter(|i| !tried.contains(&i.address))
        .collect();
    let local: Vec<&Instance> = open.iter().copied().filter(|i| i.local).collect();
    let pool = if local.is_empty() { open } else { local };
    match pool.len() {
        0 => None,
        1 => Some(pool[0]),
        n => {
            let a = pool[(draw.0 % n as u64) as usize];
            // The second choice is drawn from the others, so the two always differ.
            let mut j = (draw.1 % (n as u64 - 1)) as usize;
            if j >= (draw.0 % n as u64) as usize {
                j += 1;
            }
            let b = pool[j];
            Some(if active(&b.address) < active(&a.address) {
                b
            } else {
                a
            })
        }
    }
}

#[cfg(test)]
mod tests;
