//! What the proxy counts, per service port and per instance, and its Prometheus rendering.
//!
//! Counters are atomics bumped where things happen; the maps that hold them are locked only to
//! find or add an entry (once per connection or flow, not per byte). The per-instance open
//! count doubles as the load [`starling_protocol::service::pick`] balances on.
//!
//! The label set is bounded by the table: at each table change, ports and instances no longer
//! in it are *retired*, and a retired entry is forgotten once nothing is open through it (at
//! the next change or rendering), so a fleet that churns instances does not grow the metrics.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use starling_protocol::WorkloadName;
use starling_protocol::service::{Service, ServiceTable, pick};
use starling_protocol::spec::PortProtocol;

use super::Route;

/// The proxy's counters: shared between [`super::run`] (which writes them) and the agent's
/// `/metrics` (which calls [`ProxyCounters::render`]).
#[derive(Debug, Default)]
pub struct ProxyCounters {
    ports: Mutex<BTreeMap<PortKey, Arc<PortStats>>>,
    /// Listeners open now.
    listeners: AtomicUsize,
    /// Binds that failed (each is retried at the next table change).
    bind_failures: AtomicU64,
    /// Failed accepts (out of descriptors, mostly): each is followed by a pause.
    accept_errors: AtomicU64,
    /// TCP clients closed at once because `connections_max` connections were open.
    refused_full: AtomicU64,
}

impl ProxyCounters {
    /// Empty counters, to hand to [`super::run`] and render later.
    pub fn new() -> ProxyCounters {
        ProxyCounters::default()
    }

    /// Appends the counters in the Prometheus text format (names `starling_proxy_*`; labels
    /// `service`, `port`, and `instance` where per instance). Forgets retired entries with
    /// nothing open.
    pub fn render(&self, out: &mut String) {
        let ports = self.snapshot();
        let tcp = |p: &&PortView| p.stats.protocol == PortProtocol::Tcp;
        let udp = |p: &&PortView| p.stats.protocol == PortProtocol::Udp;
        let mut family = Family { out };
        family.single(
            "starling_proxy_listeners",
            "gauge",
            "Proxy listeners open now (one per service port and address).",
            self.listeners.load(Ordering::Relaxed) as u64,
        );
        family.single(
            "starling_proxy_bind_failures_total",
            "counter",
            "Proxy listener binds that failed (logged with the address; retried at the next service table change).",
            load(&self.bind_failures),
        );
        family.single(
            "starling_proxy_accept_errors_total",
            "counter",
            "Failed accepts on proxy listeners (each followed by a pause).",
            load(&self.accept_errors),
        );
        family.single(
            "starling_proxy_refused_total",
            "counter",
            "TCP clients closed at once because the proxy's connection cap was reached.",
            load(&self.refused_full),
        );
        family.instances(
            ("starling_proxy_connections_total", "counter"),
            "TCP connections forwarded to each instance.",
            ports.iter().filter(tcp),
            &[("", |i| load(&i.opened))],
        );
        family.instances(
            ("starling_proxy_connections_active", "gauge"),
            "TCP connections open (or connecting) to each instance.",
            ports.iter().filter(tcp),
            &[("", |i| load(&i.active))],
        );
        family.instances(
            ("starling_proxy_bytes_total", "counter"),
            "Bytes forwarded, by direction (to or from the instance).",
            ports.iter(),
            &[
                (",direction=\"to_instance\"", |i| load(&i.bytes_to_instance)),
                (",direction=\"from_instance\"", |i| {
                    load(&i.bytes_from_instance)
                }),
            ],
        );
        family.instances(
            ("starling_proxy_connect_failures_total", "counter"),
            "TCP connects to each instance that were refused, failed or timed out (each is retried on another instance while attempts remain).",
            ports.iter().filter(tcp),
            &[("", |i| load(&i.connect_failures))],
        );
        family.instances(
            ("starling_proxy_retried_connections_total", "counter"),
            "TCP connections that reached each instance after a connect to another failed.",
            ports.iter().filter(tcp),
            &[("", |i| load(&i.retries))],
        );
        family.ports(
            "starling_proxy_retries_total",
            "TCP connect attempts made after an earlier attempt of the same client connection failed.",
            ports.iter().filter(tcp),
            &[("", |p| load(&p.retries))],
        );
        family.ports(
            "starling_proxy_unserved_total",
            "TCP client connections closed without reaching an instance: none was ready, or every attempt failed.",
            ports.iter().filter(tcp),
            &[
                (",reason=\"no_instance\"", |p| load(&p.no_instance)),
                (",reason=\"connect_failed\"", |p| load(&p.gave_up)),
            ],
        );
        family.instances(
            ("starling_proxy_udp_flows_total", "counter"),
            "UDP flows (client addresses) sent to each instance.",
            ports.iter().filter(udp),
            &[("", |i| load(&i.opened))],
        );
        family.instances(
            ("starling_proxy_udp_flows_active", "gauge"),
            "UDP flows to each instance not yet expired.",
            ports.iter().filter(udp),
            &[("", |i| load(&i.active))],
        );
        family.instances(
            ("starling_proxy_udp_datagrams_total", "counter"),
            "UDP datagrams forwarded, by direction (to or from the instance).",
            ports.iter().filter(udp),
            &[
                (",direction=\"to_instance\"", |i| {
                    load(&i.datagrams_to_instance)
                }),
                (",direction=\"from_instance\"", |i| {
                    load(&i.datagrams_from_instance)
                }),
            ],
        );
        family.ports(
            "starling_proxy_udp_dropped_total",
            "UDP datagrams from clients dropped: no ready instance, the listener's flow cap reached, or the send failed.",
            ports.iter().filter(udp),
            &[
                (",reason=\"no_instance\"", |p| load(&p.no_instance)),
                (",reason=\"flows_full\"", |p| load(&p.flows_full)),
                (",reason=\"send_failed\"", |p| load(&p.send_failed)),
            ],
        );
    }

    /// The counters of one service port (created on first use). A port back in the table is no
    /// longer retired.
    pub(super) fn port(&self, route: &Route, protocol: PortProtocol) -> Arc<PortStats> {
        let key = PortKey {
            service: route.service.clone(),
            port: route.port.clone(),
            protocol,
        };
        let stats = lock(&self.ports)
            .entry(key)
            .or_insert_with(|| Arc::new(PortStats::new(protocol)))
            .clone();
        stats.retired.store(false, Ordering::Relaxed);
        stats
    }

    /// Retires the ports and instances `table` no longer has (and un-retires those it has
    /// again), then forgets the retired ones with nothing open. Called at each table change.
    pub(super) fn retain(&self, table: &ServiceTable) {
        let mut ports = lock(&self.ports);
        for (key, stats) in ports.iter() {
            let service = table.services.get(&key.service).filter(|s| {
                s.port(&key.port)
                    .is_some_and(|p| p.protocol == key.protocol)
            });
            stats.retired.store(service.is_none(), Ordering::Relaxed);
            let live: BTreeSet<SocketAddr> = service
                .map(|s| {
                    s.instances
                        .iter()
                        .filter(|i| i.port == key.port)
                        .map(|i| i.address)
                        .collect()
                })
                .unwrap_or_default();
            stats.retire_instances(&live);
        }
        ports.retain(|_, stats| !stats.forgettable());
    }

    pub(super) fn set_listeners(&self, open: usize) {
        self.listeners.store(open, Ordering::Relaxed);
    }

    pub(super) fn count_bind_failure(&self) {
        self.bind_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_accept_error(&self) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_refused_full(&self) {
        self.refused_full.fetch_add(1, Ordering::Relaxed);
    }

    /// Each port's counters and its live instances, sorted; forgets what is retired and idle.
    fn snapshot(&self) -> Vec<PortView> {
        let mut ports = lock(&self.ports);
        ports.retain(|_, stats| {
            stats.forget_idle_retired();
            !stats.forgettable()
        });
        ports
            .iter()
            .map(|(key, stats)| PortView {
                key: key.clone(),
                instances: lock(&stats.instances)
                    .iter()
                    .map(|(a, s)| (*a, s.clone()))
                    .collect(),
                stats: stats.clone(),
            })
            .collect()
    }
}

/// One service port, as counters know it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PortKey {
    service: WorkloadName,
    port: String,
    protocol: PortProtocol,
}

/// The counters of one service port (all its listeners together) and of its instances.
#[derive(Debug)]
pub(super) struct PortStats {
    protocol: PortProtocol,
    /// Not in the table any more: forgotten once no instance has anything open.
    retired: AtomicBool,
    instances: Mutex<BTreeMap<SocketAddr, Arc<InstanceStats>>>,
    /// Connects after a failed one (TCP).
    pub(super) retries: AtomicU64,
    /// Clients (TCP) or datagrams (UDP) that found no ready instance.
    pub(super) no_instance: AtomicU64,
    /// Clients closed after every attempt failed (TCP).
    pub(super) gave_up: AtomicU64,
    /// Datagrams dropped because the listener had all the flows it may (UDP).
    pub(super) flows_full: AtomicU64,
    /// Datagrams whose send failed (UDP).
    pub(super) send_failed: AtomicU64,
}

/// The counters of one instance of one service port.
#[derive(Debug, Default)]
pub(super) struct InstanceStats {
    /// Left the table: forgotten once `active` is zero.
    retired: AtomicBool,
    /// Connections (TCP) or flows (UDP) it took.
    pub(super) opened: AtomicU64,
    /// Connections (connecting or forwarding) or flows open now: the load `pick` sees.
    pub(super) active: AtomicU64,
    pub(super) bytes_to_instance: AtomicU64,
    pub(super) bytes_from_instance: AtomicU64,
    pub(super) datagrams_to_instance: AtomicU64,
    pub(super) datagrams_from_instance: AtomicU64,
    /// Connects to it that failed.
    pub(super) connect_failures: AtomicU64,
    /// Connections it took after a connect to another instance failed.
    pub(super) retries: AtomicU64,
}

/// One open connection or flow to an instance: counted in its `active` while held.
#[derive(Debug)]
pub(super) struct Active {
    pub(super) address: SocketAddr,
    pub(super) stats: Arc<InstanceStats>,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PortStats {
    fn new(protocol: PortProtocol) -> PortStats {
        PortStats {
            protocol,
            retired: AtomicBool::new(false),
            instances: Mutex::new(BTreeMap::new()),
            retries: AtomicU64::new(0),
            no_instance: AtomicU64::new(0),
            gave_up: AtomicU64::new(0),
            flows_full: AtomicU64::new(0),
            send_failed: AtomicU64::new(0),
        }
    }

    /// Picks an instance of `port` of `service` for a new connection or flow with
    /// [`pick`] (balancing on this proxy's open counts) and counts it open. `None` when no
    /// ready instance is left untried.
    pub(super) fn choose(
        &self,
        service: &Service,
        port: &str,
        tried: &[SocketAddr],
        draw: (u64, u64),
    ) -> Option<Active> {
        let mut instances = lock(&self.instances);
        let active = |a: &SocketAddr| {
            instances
                .get(a)
                .map_or(0, |s| s.active.load(Ordering::Relaxed))
        };
        let address = pick(service, port, tried, active, draw)?.address;
        let stats = instances.entry(address).or_default().clone();
        // It is in the table the caller just read, so it is live whatever the last retain said.
        stats.retired.store(false, Ordering::Relaxed);
        stats.active.fetch_add(1, Ordering::Relaxed);
        Some(Active { address, stats })
    }

    /// Marks the instances not in `live` retired (and those in it not), and forgets the
    /// retired ones with nothing open.
    fn retire_instances(&self, live: &BTreeSet<SocketAddr>) {
        let mut instances = lock(&self.instances);
        for (address, stats) in instances.iter() {
            stats
                .retired
                .store(!live.contains(address), Ordering::Relaxed);
        }
        instances.retain(|_, s| !idle_retired(s));
    }

    fn forget_idle_retired(&self) {
        lock(&self.instances).retain(|_, s| !idle_retired(s));
    }

    /// Retired with no instance left: nothing to show.
    fn forgettable(&self) -> bool {
        self.retired.load(Ordering::Relaxed) && lock(&self.instances).is_empty()
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn idle_retired(stats: &InstanceStats) -> bool {
    stats.retired.load(Ordering::Relaxed) && stats.active.load(Ordering::Relaxed) == 0
}

/// A poisoned lock still holds sound counters (each update is one atomic or one map insert),
/// so carry on with it rather than lose the metrics.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One port with its instances, taken under the lock and rendered without it.
struct PortView {
    key: PortKey,
    stats: Arc<PortStats>,
    instances: Vec<(SocketAddr, Arc<InstanceStats>)>,
}

/// Writes metric families: the `# HELP` and `# TYPE` lines, then every series.
struct Family<'a> {
    out: &'a mut String,
}

/// A series within a family: extra labels (starting with a comma, or empty) and the value.
type Series<T> = (&'static str, fn(&T) -> u64);

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.head(name, kind, help);
        let _ = writeln!(self.out, "{name} {value}");
    }

    /// A counter per service port.
    fn ports<'p>(
        &mut self,
        name: &str,
        help: &str,
        ports: impl Iterator<Item = &'p PortView>,
        series: &[Series<PortStats>],
    ) {
        self.head(name, "counter", help);
        for port in ports {
            for (extra, value) in series {
                let _ = writeln!(
                    self.out,
                    "{name}{{service=\"{}\",port=\"{}\"{extra}}} {}",
                    port.key.service,
                    escape(&port.key.port),
                    value(&port.stats)
                );
            }
        }
    }

    /// A metric per instance of each service port.
    fn instances<'p>(
        &mut self,
        (name, kind): (&str, &str),
        help: &str,
        ports: impl Iterator<Item = &'p PortView>,
        series: &[Series<InstanceStats>],
    ) {
        self.head(name, kind, help);
        for port in ports {
            for (address, stats) in &port.instances {
                for (extra, value) in series {
                    let _ = writeln!(
                        self.out,
                        "{name}{{service=\"{}\",port=\"{}\",instance=\"{address}\"{extra}}} {}",
                        port.key.service,
                        escape(&port.key.port),
                        value(stats)
                    );
                }
            }
        }
    }
}

/// A label value in the text format: backslash, quote and newline escaped. Service names are
/// DNS labels and instances are socket addresses; port names come from a spec, so escape them.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
