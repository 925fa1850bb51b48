//! The agent's L4 load-balancing proxy: every service port reachable at the service's stable
//! loopback address (and at a few extra addresses, such as the container bridge's gateway), on
//! every node, forwarded to one of its instances anywhere in the fleet.
//!
//! This module owns the listeners, the connections and UDP flows through them, and their
//! counters. It decides nothing about *which* instance takes a connection: every choice is
//! [`starling_protocol::service::pick`] (ready instances only, not yet tried, local ones first,
//! power of two choices by open connections), fed the table as it is at that moment, this
//! proxy's open-connection counts and two random numbers.
//!
//! What it promises:
//!
//! - **Listeners follow the table.** For each service and port there is a TCP or UDP listener at
//!   `service.address:port` and at each [`ProxyConfig::extra_addresses`]`:port`. On each table
//!   change new ones open and removed ones close; closing a listener never cuts a TCP
//!   connection it accepted. A bind that fails is logged and retried at the next change.
//! - **TCP connects are retried.** A connect that is refused, fails or times out is tried on
//!   another instance (up to [`ProxyConfig::attempts`] in all); the client is closed only when
//!   none is left. Past the connect, bytes are copied both ways, half-closes included.
//! - **Draining is the instance's business.** An instance that turns draining or unhealthy, or
//!   leaves the table, gets no new connections; its open ones are left alone to end when the
//!   instance closes them (at the end of its stop grace).
//! - **UDP has flows.** Each client address gets a connected socket to one instance; replies go
//!   back from the listener's socket. Idle flows are forgotten after [`ProxyConfig::udp_idle`],
//!   and a flow whose instance refuses is replaced at the client's next datagram. Closing a UDP
//!   listener ends its flows (their replies could only leave from its socket).
//! - **Everything is bounded:** open TCP connections ([`ProxyConfig::connections_max`]), UDP
//!   flows per listener ([`ProxyConfig::udp_flows_max`]), connect attempts, and the metric label
//!   set (instances that left the table are forgotten once their connections have closed).
//!
//! The agent spawns [`run`] with the receiving end of the table it rebuilds from gossip, and
//! renders [`ProxyCounters`] into its `/metrics`.

mod counters;
mod tcp;
mod udp;

#[cfg(test)]
mod tests;

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use starling_protocol::WorkloadName;
use starling_protocol::service::ServiceTable;
use starling_protocol::spec::PortProtocol;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use counters::PortStats;
pub use counters::ProxyCounters;

/// How the proxy listens, connects and forgets. Defaults: no extra addresses, 1 s connect
/// timeout, 3 attempts, 30 s UDP idle, 4,096 TCP connections, 4,096 UDP flows per listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Extra addresses to listen on besides each service's own loopback address (e.g. the
    /// container bridge's gateway, so containers reach services at `GATEWAY:PORT`). A port
    /// already taken there by another service is logged and skipped (the first service by name
    /// wins).
    pub extra_addresses: Vec<IpAddr>,
    /// How long one connect attempt may take before the next instance is tried.
    pub connect_timeout: Duration,
    /// Instances tried per client connection before giving up (closing the client). Zero is
    /// taken as one.
    pub attempts: u32,
    /// UDP flows idle this long are forgotten.
    pub udp_idle: Duration,
    /// TCP connections open through the proxy at once, all listeners together (each holds two
    /// descriptors). A client beyond it is closed at once and counted.
    pub connections_max: usize,
    /// UDP flows (client addresses) per listener. A datagram that would start one more is
    /// dropped and counted.
    pub udp_flows_max: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            extra_addresses: Vec::new(),
            connect_timeout: Duration::from_secs(1),
            attempts: 3,
            udp_idle: Duration::from_secs(30),
            connections_max: 4096,
            udp_flows_max: 4096,
        }
    }
}

/// Runs the proxy: listeners follow `table` until its sender is dropped, then close (the
/// connections they accepted run on to their end). Never fails: bind errors are logged and
/// retried at the next table change; connection errors are counted in `counters`.
pub async fn run(
    config: ProxyConfig,
    mut table: watch::Receiver<Arc<ServiceTable>>,
    counters: Arc<ProxyCounters>,
) {
    let mut listeners = Listeners {
        shared: Arc::new(Shared {
            config,
            table: table.clone(),
            counters,
            connections: AtomicUsize::new(0),
        }),
        open: BTreeMap::new(),
        failing: BTreeSet::new(),
        skipped: BTreeSet::new(),
        rng: Rng::from_os(),
    };
    loop {
        let current = table.borrow_and_update().clone();
        listeners.follow(&current).await;
        if table.changed().await.is_err() {
            break;
        }
    }
    listeners.close_all().await;
}

/// Where a listener listens: what clients dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct ListenKey {
    protocol: PortProtocol,
    address: SocketAddr,
}

/// What a listener forwards to: one port of one service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Route {
    service: WorkloadName,
    /// The port's name in the spec (instances are published per port name).
    port: String,
}

/// What every listener and connection task reads.
#[derive(Debug)]
struct Shared {
    config: ProxyConfig,
    /// Read at each accept and each new UDP flow, so a choice always sees the latest table.
    table: watch::Receiver<Arc<ServiceTable>>,
    counters: Arc<ProxyCounters>,
    /// TCP connections open now (bounded by `config.connections_max`).
    connections: AtomicUsize,
}

/// What a listener task needs: its route and counters, and everything shared.
#[derive(Debug)]
struct ListenerContext {
    route: Route,
    stats: Arc<PortStats>,
    shared: Arc<Shared>,
}

/// The listeners the table asks for, each with its route; and the extra-address listens left
/// out because an earlier service holds that port there.
#[derive(Debug, Default, PartialEq, Eq)]
struct Wanted {
    routes: BTreeMap<ListenKey, Route>,
    /// Each skipped listen, with the service it wanted and the one that holds it.
    skipped: Vec<(ListenKey, Route, Route)>,
}

/// The listeners `table` asks for. Services are visited in name order, so on a port clash at an
/// extra address the first by name wins on every node and at every change. Port 0 (nothing to
/// dial) is left out.
fn wanted(table: &ServiceTable, extra_addresses: &[IpAddr]) -> Wanted {
    let mut out = Wanted::default();
    for service in table.services.values() {
        for port in service.ports.iter().filter(|p| p.port != 0) {
            let route = Route {
                service: service.name.clone(),
                port: port.name.clone(),
            };
            let own = IpAddr::V4(service.address);
            for ip in std::iter::once(&own).chain(extra_addresses) {
                let key = ListenKey {
                    protocol: port.protocol,
                    address: SocketAddr::new(*ip, port.port),
                };
                match out.routes.get(&key) {
                    Some(holder) => out.skipped.push((key, route.clone(), holder.clone())),
                    None => {
                        out.routes.insert(key, route.clone());
                    }
                }
            }
        }
    }
    out
}

/// The open listeners and what was said about the ones that could not open.
struct Listeners {
    shared: Arc<Shared>,
    open: BTreeMap<ListenKey, OpenListener>,
    /// Listens whose bind failed (warned once; retried quietly at each change).
    failing: BTreeSet<ListenKey>,
    /// Listens skipped for a clash (warned once).
    skipped: BTreeSet<(ListenKey, Route)>,
    /// Seeds each listener's own generator.
    rng: Rng,
}

struct OpenListener {
    route: Route,
    task: JoinHandle<()>,
}

impl Listeners {
    /// Brings the listeners in line with `table`: closes the ones it no longer asks for (or asks
    /// for another route), then opens the missing ones.
    async fn follow(&mut self, table: &ServiceTable) {
        self.shared.counters.retain(table);
        let wanted = wanted(table, &self.shared.config.extra_addresses);
        self.note_skipped(&wanted.skipped);
        let stale: Vec<ListenKey> = self
            .open
            .iter()
            .filter(|(key, open)| wanted.routes.get(key) != Some(&open.route))
            .map(|(key, _)| *key)
            .collect();
        for key in stale {
            if let Some(open) = self.open.remove(&key) {
                tracing::info!(
                    "proxy: closing {:?} listener {} of {}/{}",
                    key.protocol,
                    key.address,
                    open.route.service,
                    open.route.port
                );
                close(open.task).await;
            }
        }
        self.failing.retain(|key| wanted.routes.contains_key(key));
        for (key, route) in wanted.routes {
            if !self.open.contains_key(&key) {
                self.open_one(key, route).await;
            }
        }
        self.shared.counters.set_listeners(self.open.len());
    }

    /// Warns once about each newly skipped listen.
    fn note_skipped(&mut self, skipped: &[(ListenKey, Route, Route)]) {
        let now: BTreeSet<(ListenKey, Route)> =
            skipped.iter().map(|(k, r, _)| (*k, r.clone())).collect();
        for (key, route, holder) in skipped {
            if !self.skipped.contains(&(*key, route.clone())) {
                tracing::warn!(
                    "proxy: {}/{} not listening at {} ({:?}): {}/{} holds that port there",
                    route.service,
                    route.port,
                    key.address,
                    key.protocol,
                    holder.service,
                    holder.port
                );
            }
        }
        self.skipped = now;
    }

    /// Binds one listener and spawns its task; a failure is logged (once while it lasts).
    async fn open_one(&mut self, key: ListenKey, route: Route) {
        let context = ListenerContext {
            stats: self.shared.counters.port(&route, key.protocol),
            route: route.clone(),
            shared: self.shared.clone(),
        };
        let seed = self.rng.next_u64();
        let task = match key.protocol {
            PortProtocol::Tcp => TcpListener::bind(key.address)
                .await
                .map(|l| tokio::spawn(tcp::serve(l, context, Rng::new(seed)))),
            PortProtocol::Udp => UdpSocket::bind(key.address)
                .await
                .map(|s| tokio::spawn(udp::serve(s, context, Rng::new(seed)))),
        };
        match task {
            Ok(task) => {
                self.failing.remove(&key);
                tracing::info!(
                    "proxy: {}/{} listening at {} ({:?})",
                    route.service,
                    route.port,
                    key.address,
                    key.protocol
                );
                self.open.insert(key, OpenListener { route, task });
            }
            Err(e) => {
                self.shared.counters.count_bind_failure();
                if self.failing.insert(key) {
                    tracing::warn!(
                        "proxy: cannot listen for {}/{} at {} ({:?}), retrying at the next service table change: {e}",
                        route.service,
                        route.port,
                        key.address,
                        key.protocol
                    );
                } else {
                    tracing::debug!(
                        "proxy: still cannot listen at {} ({:?}): {e}",
                        key.address,
                        key.protocol
                    );
                }
            }
        }
    }

    async fn close_all(&mut self) {
        for (_, open) in std::mem::take(&mut self.open) {
            close(open.task).await;
        }
        self.shared.counters.set_listeners(0);
    }
}

/// Stops a listener task and waits until its socket is dropped, so the address can be bound
/// again at once (a route that moves between services reopens on the same address). TCP
/// connections run in tasks of their own and live on.
async fn close(task: JoinHandle<()>) {
    task.abort();
    // The handle resolves once the task's future is dropped, sockets with it; its result is a
    // cancellation (or a panic, already reported by the runtime).
    let _ = task.await;
}

/// A small, fast generator for the two random numbers each choice needs (SplitMix64). Not for
/// secrets: it only spreads load.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    /// Seeded from the process's random hasher keys (drawn from the OS once per process), so
    /// proxies on different nodes draw differently without reading a clock.
    fn from_os() -> Rng {
        Rng(RandomState::new().hash_one(0x5eed_u64))
    }

    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The two random numbers [`starling_protocol::service::pick`] takes.
    fn draw(&mut self) -> (u64, u64) {
        (self.next_u64(), self.next_u64())
    }
}
