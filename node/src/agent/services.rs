//! Wiring of service discovery and load balancing: the agent folds the desired state, its own
//! instances and what peers publish into a [`ServiceTable`] after every turn of its loop and
//! hands it, when it changed, to the DNS server (`crate::dns`) and the proxy (`crate::proxy`)
//! through a watch channel. The rules (which instances serve, what a name means, which
//! instance gets a connection) live in `starling_protocol::service`; nothing is decided here.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use starling_protocol::placement::Liveness;
use starling_protocol::service::{ServiceTable, env_name};
use starling_protocol::spec::WorkloadSpec;
use tokio::sync::watch;

use super::Agent;

/// Where discovery listens. Defaults suit one agent per host.
#[derive(Debug, Clone)]
pub struct DiscoverySettings {
    /// Where the DNS server answers host processes (`NAME.svc.starling` -> the service's
    /// loopback address); `None`: no DNS for them.
    pub dns: Option<SocketAddr>,
    /// Also answer containers (and listen with the proxy) on the container bridge's gateway
    /// address, port 53, when a container engine runs; containers get it as their DNS server.
    pub container_dns: bool,
    /// Run the proxy in front of every service.
    pub proxy: bool,
    /// DNS queries per second allowed per client address.
    pub dns_qps: u32,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        DiscoverySettings {
            dns: Some(SocketAddr::from(([127, 0, 0, 153], 53))),
            container_dns: true,
            proxy: true,
            dns_qps: 500,
        }
    }
}

/// The table as last handed out, and where the DNS server and proxy listen.
pub(crate) struct Services {
    pub tx: watch::Sender<Arc<ServiceTable>>,
    /// The DNS address host processes are told (`STARLING_DNS`), once bound.
    pub dns: Option<SocketAddr>,
    /// The address containers reach this host's proxy at (the bridge gateway), when it
    /// listens there.
    pub container_gateway: Option<IpAddr>,
    /// The DNS servers containers get: this agent's on the gateway, then the host's own
    /// (those containers can reach), which answer the names outside `svc.starling` that
    /// this one refuses.
    pub container_dns: Vec<IpAddr>,
}

impl Services {
    pub fn new() -> Self {
        Services {
            tx: watch::channel(Arc::new(ServiceTable::default())).0,
            dns: None,
            container_gateway: None,
            container_dns: Vec::new(),
        }
    }
}

/// What discovery runs: dropping it stops the DNS servers; the proxy ends with the agent's
/// runtime.
pub(crate) struct Running {
    _dns: Vec<crate::dns::DnsServer>,
}

/// Starts the DNS servers and the proxy as the settings say. A listener that cannot bind is
/// named in a warning and left out, never fatal: on a host running several agents (a
/// development fleet) the first one holds the host-wide addresses.
pub(super) async fn start(agent: &mut Agent) -> Running {
    let settings = agent.config.discovery.clone();
    let mut gateway = None;
    if settings.container_dns {
        for engine in &agent.runtime.containers {
            if let Some(ip) = engine.bridge_gateway().await {
                gateway = Some(ip);
                break;
            }
        }
    }
    agent.services.container_gateway = gateway.filter(|_| settings.proxy);
    let mut gateway_dns = false;
    let mut dns = Vec::new();
    let mut listeners = Vec::new();
    if let Some(addr) = settings.dns {
        listeners.push(crate::dns::Listener {
            addr,
            answer: crate::dns::ServiceAnswer::ServiceAddress,
        });
    }
    if let Some(ip) = gateway {
        listeners.push(crate::dns::Listener {
            addr: SocketAddr::new(ip, 53),
            answer: crate::dns::ServiceAnswer::Fixed(ip),
        });
    }
    for listener in listeners {
        let addr = listener.addr;
        let config = crate::dns::DnsConfig {
            listen: vec![listener],
            per_client_qps: settings.dns_qps,
        };
        match crate::dns::serve(
            config,
            agent.services.tx.subscribe(),
            agent.metrics.dns.clone(),
        )
        .await
        {
            Ok(server) => {
                tracing::info!(%addr, "DNS for {} answers here", starling_protocol::service::DOMAIN);
                if Some(addr.ip()) == gateway {
                    gateway_dns = true;
                } else {
                    agent.services.dns = server.local_addrs().first().copied();
                }
                dns.push(server);
            }
            Err(e) => tracing::warn!(%addr, "no DNS here: {e}"),
        }
    }
    if let Some(ip) = gateway.filter(|_| gateway_dns) {
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        agent.services.container_dns = std::iter::once(ip)
            .chain(host_nameservers(&resolv))
            .collect();
    }
    if settings.proxy {
        let config = crate::proxy::ProxyConfig {
            extra_addresses: gateway.into_iter().collect(),
            ..crate::proxy::ProxyConfig::default()
        };
        tokio::spawn(crate::proxy::run(
            config,
            agent.services.tx.subscribe(),
            agent.metrics.proxy.clone(),
        ));
    }
    Running { _dns: dns }
}

impl Agent {
    /// The services as this node sees the fleet now.
    pub(super) fn service_table(&self) -> ServiceTable {
        let own = self.endpoints();
        let view = self.core.view();
        let liveness = |node| {
            view.nodes.get(node).map_or(
                Liveness::Down,
                |n: &starling_protocol::placement::NodeView| n.liveness,
            )
        };
        let mut published = vec![(&self.node, Liveness::Alive, own.as_slice())];
        if let Some(fleet) = &self.fleet {
            published.extend(
                fleet
                    .peers
                    .iter()
                    .map(|(id, p)| (id, liveness(id), p.endpoints.as_slice())),
            );
        }
        ServiceTable::build(
            self.core.desired().workloads().map(|(_, r)| &r.spec),
            &self.node,
            published,
        )
    }

    /// Hands the DNS server and the proxy the current table when it changed.
    pub(super) fn refresh_services(&mut self) {
        let table = self.service_table();
        self.services.tx.send_if_modified(|current| {
            if **current == table {
                return false;
            }
            *current = Arc::new(table);
            true
        });
    }

    /// What a replica is told about the services its spec `uses`: for each port, where to
    /// dial (`STARLING_SVC_<NAME>_<PORT>`: the service's loopback address for a process, the
    /// bridge gateway for a container), and the DNS server (`STARLING_DNS`). A used service
    /// that does not exist when the replica starts has no variable until its next start.
    pub(super) fn service_env(&self, spec: &WorkloadSpec) -> Vec<(String, String)> {
        let container = crate::runtime::docker::is_container(spec);
        let mut env = Vec::new();
        if !self.config.discovery.proxy {
            return env;
        }
        let table = self.services.tx.borrow();
        for used in &spec.uses {
            let Some(service) = table.services.get(used) else {
                continue;
            };
            let ip = match (container, self.services.container_gateway) {
                (false, _) => IpAddr::V4(service.address),
                (true, Some(gateway)) => gateway,
                (true, None) => continue,
            };
            for port in &service.ports {
                env.push((
                    env_name(used, &port.name),
                    SocketAddr::new(ip, port.port).to_string(),
                ));
            }
        }
        if let (false, Some(dns)) = (container, self.services.dns) {
            env.push(("STARLING_DNS".into(), dns.to_string()));
        }
        env
    }
}

/// The host's name servers that a container can reach too (not loopback ones: inside a
/// container those are its own), from resolv.conf text.
pub(super) fn host_nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|word| word.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_loopback())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_get_the_hosts_reachable_name_servers() {
        let text = "# generated\nnameserver 127.0.0.53\nnameserver 10.0.0.1\noptions edns0\nnameserver fe80::1\nnameserver ::1\nnameserver nonsense\n";
        let got = host_nameservers(text);
        let want: Vec<IpAddr> = vec![
            "10.0.0.1".parse().expect("ip"),
            "fe80::1".parse().expect("ip"),
        ];
        assert_eq!(got, want);
    }
}
