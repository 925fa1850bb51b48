//! The agent: the I/O shell around the node core.
//!
//! One task owns the core, the store and the clock; everything else talks to it through
//! channels: the runtime's events, API requests from the socket server, and a timer set to the
//! core's next deadline. That keeps every decision in the deterministic core and every effect
//! here, in the order the core asked for it.

mod admission;
mod containers;
mod depart;
mod dispatch;
mod effects;
mod fleet;
mod fleet_loop;
mod handlers;
mod host;
pub mod http;
mod leases;
mod listings;
mod load;
mod logs;
pub mod metrics;
mod objects;
mod quic_api;
mod report;
mod rollouts;
mod secrets;
mod services;
mod settings;
mod web;

pub use depart::{DepartureSettings, OnStop};
pub use fleet::{ExchangeTimeouts, FleetSettings, GossipTimings};
pub use services::DiscoverySettings;
pub use settings::{HostSettings, LocalSettings};

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use starling_protocol::events::{Event, EventKind};
use starling_protocol::hlc::Hlc;
use starling_protocol::placement::{Capacity, FleetView, Liveness, NodeView, ReplicaId};
use starling_protocol::service::Endpoint;
use starling_protocol::spec::RuntimeKind;
use starling_protocol::{NodeId, WorkloadName};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::clock::now_ms;
use crate::events::{EventLog, EventSource};
use crate::runtime::process::{ProcessConfig, ProcessRuntime};
use crate::runtime::{Runtime, Runtimes};
use crate::store::{Identity, Store, StoreError};
use starling_core::node::{CoreConfig, NodeCore, Restored, RuntimeEvent};

/// How an agent runs. Defaults suit a LAN.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The data dir (identity, state, logs, the API socket).
    pub data_dir: PathBuf,
    /// The node id to create the data dir with (default: the host's short name and a random
    /// suffix, see `identity::default_node_id`). Ignored when the data dir already has an
    /// identity: ids never change.
    pub node_id: Option<NodeId>,
    /// Labels of this node.
    pub labels: BTreeMap<String, String>,
    /// Resources offered (default: all CPUs and memory of the host).
    pub capacity: Option<Capacity>,
    /// Grace between SIGTERM and SIGKILL when stopping a replica.
    pub stop_grace: Duration,
    /// Grace between SIGTERM and SIGKILL when a singleton's lease was lost (default 100 ms,
    /// and never more than `stop_grace`): the instance must be gone well inside the lease's
    /// drift margin, before another node's instance may act. `starling fence` uses the same
    /// grace by default.
    pub lease_lost_grace: Duration,
    /// What happens to the workloads when the agent is asked to stop (see `depart`).
    pub departure: DepartureSettings,
    /// After a restart in a fleet, how long to wait to hear every peer before acting (a node
    /// that hears nobody then restarts its last assignment). Default 5 s.
    pub rejoin_wait: Duration,
    /// Largest clock difference accepted from a peer's timestamp.
    pub max_drift_ms: u64,
    /// How long a claim waits for competing claims before starting (see `core`).
    pub settle_ms: u64,
    /// The autoscaler's windows (see `starling_core::scale`).
    pub scale: starling_core::scale::ScaleConfig,
    /// Fleet networking, used when the data dir belongs to a cluster (`starling init`/`join`).
    pub fleet: FleetSettings,
    /// Where to serve Prometheus metrics over HTTP (default in a fleet: 127.0.0.1 at the
    /// listen port, TCP).
    pub metrics: Option<std::net::SocketAddr>,
    /// Container engines to offer when their sockets answer (default: Docker's and Podman's
    /// default sockets).
    pub container_engines: Vec<(RuntimeKind, PathBuf)>,
    /// How far clocks may drift apart over one lease duration: a lease holder stops acting
    /// this long before its grant ends (see `election`).
    pub lease_max_drift_ms: u64,
    /// The `starling` binary that runs singleton process instances under `starling fence`
    /// (default: this executable; none runs them unfenced). See `runtime::fence`.
    pub fence_program: Option<PathBuf>,
    /// How often the agent looks at its host and how long it waits for container engines.
    pub host: HostSettings,
    /// How long the local doors (API socket, HTTP port, log streams) wait.
    pub local: LocalSettings,
    /// Service discovery (DNS) and the load-balancing proxy.
    pub discovery: DiscoverySettings,
    /// Size of one segment of the event log in `DATA_DIR/events/` (default 256 KiB; the log
    /// keeps two, see `crate::events`).
    pub events_segment_bytes: u64,
}

impl AgentConfig {
    /// Defaults for a data dir.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        AgentConfig {
            data_dir: data_dir.into(),
            node_id: None,
            labels: BTreeMap::new(),
            capacity: None,
            stop_grace: Duration::from_secs(10),
            lease_lost_grace: Duration::from_millis(100),
            departure: DepartureSettings::default(),
            rejoin_wait: Duration::from_secs(5),
            max_drift_ms: 5_000,
            settle_ms: 250,
            scale: starling_core::scale::ScaleConfig::default(),
            fleet: FleetSettings::default(),
            metrics: None,
            container_engines: [RuntimeKind::Docker, RuntimeKind::Podman]
                .into_iter()
                .filter_map(|k| crate::runtime::docker::default_socket(k).map(|s| (k, s)))
                .collect(),
            lease_max_drift_ms: 300,
            fence_program: std::env::current_exe().ok(),
            host: HostSettings::default(),
            local: LocalSettings::default(),
            discovery: DiscoverySettings::default(),
            events_segment_bytes: crate::events::SEGMENT_BYTES_DEFAULT,
        }
    }
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The data dir could not be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another agent holds the data dir.
    #[error("another agent is running on {0} (only one agent per data dir)")]
    Locked(PathBuf),
    /// The API socket could not be opened.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No usable node id.
    #[error("{0}")]
    Identity(String),
    /// Fleet networking could not start.
    #[error("{0}")]
    Net(String),
    /// The local HTTP port (metrics, and the lease endpoint singletons are told to poll)
    /// could not be opened.
    #[error("cannot serve metrics and leases on http://{addr}: {why}")]
    Http {
        /// The address.
        addr: std::net::SocketAddr,
        /// What went wrong and what to do.
        why: String,
    },
    /// Another live agent runs under this node's id.
    #[error("{0}")]
    IdentityClash(String),
    /// A key in the data dir is readable or writable by others.
    #[error(transparent)]
    ExposedKeys(#[from] crate::cluster::ExposedKeys),
}

/// Runs an agent until `shutdown` completes.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let store = Store::open(&config.data_dir)?;
    crate::cluster::check_key_permissions(store.dir())?;
    let _lock = host::lock_data_dir(store.dir())
        .map_err(|_| AgentError::Locked(store.dir().to_path_buf()))?;
    let identity = host::load_identity(&store, &config)?;
    let http_limits = http::HttpLimits::for_fd_limit(host::raise_fd_limit());
    // Bound before anything starts, so a taken port stops the agent before it joins.
    let http_addr = config.metrics.or_else(|| {
        crate::cluster::Membership::exists(store.dir())
            .then(|| std::net::SocketAddr::from(([127, 0, 0, 1], config.fleet.listen.port())))
    });
    let http_listener = match http_addr {
        Some(addr) => Some((addr, http::bind(addr, config.metrics.is_some()).await?)),
        None => None,
    };
    let channels = metrics::ChannelMetrics::default();
    let (events_tx, mut events_rx) =
        crate::channel::bounded(RUNTIME_EVENTS_QUEUE, channels.runtime_events.clone());
    let process = ProcessRuntime::new(
        store.dir().join("runtime"),
        events_tx.clone(),
        ProcessConfig {
            fence_program: config.fence_program.clone(),
            ..ProcessConfig::default()
        },
    );
    tracing::info!(node = %identity.node, data_dir = %store.dir().display(), "agent starting; {}", process.limits_status());
    let runtime = Arc::new(
        Runtimes::new(
            process,
            &config.container_engines,
            config.host.engine,
            identity.node.clone(),
            events_tx.clone(),
        )
        .await,
    );
    let runtimes_now = runtime.available().await;
    let (api_tx, api_rx) = mpsc::channel::<dispatch::LoopCall>(64);
    let mut agent = Agent::new(
        config,
        store,
        identity,
        runtime.clone(),
        events_tx,
        channels,
    )?;
    agent.set_runtimes(runtimes_now);
    let mut inbox = None;
    let mut quic_server = None;
    if crate::cluster::Membership::exists(agent.store.dir()) {
        let membership = crate::cluster::Membership::load(agent.store.dir())
            .map_err(|e| AgentError::Net(e.to_string()))?;

        agent
            .revoked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(crate::cluster::Membership::read_revoked(agent.store.dir()));
        let generation = agent.generation;
        let (fleet, fleet_inbox) = fleet::Fleet::start(
            &agent.config.fleet,
            membership,
            agent.node.clone(),
            agent.core.view(),
            generation,
            &agent.metrics,
            agent.revoked.clone(),
        )
        .await?;
        let (peer_tx, peer_rx) = mpsc::channel(256);
        let (join_tx, join_rx) = mpsc::channel(16);
        quic_server = Some(quic_api::serve(
            fleet.quic.endpoint().clone(),
            quic_api::Routes {
                api: dispatch::ApiDoor {
                    calls: api_tx.clone(),
                    logs: logs::LogSource {
                        runtime: runtime.clone(),
                        locator: agent.locator.clone(),
                        quic: Some(fleet.quic.clone()),
                        follow_interval: agent.config.local.log_follow_interval,
                    },
                    events: agent.event_source(Some(fleet.quic.clone())),
                },
                peers: peer_tx,
                joins: join_tx,
                revoked: agent.revoked.clone(),
            },
            quic_api::Limiter::new(&agent.config.fleet.quic, agent.metrics.quic.clone()),
            agent.config.fleet.quic.request_timeout,
        ));
        tracing::info!(
            cluster = %fleet.membership.cluster,
            gossip = %agent.config.fleet.listen,
            quic = %crate::cluster::quic_addr(agent.config.fleet.listen),
            "joined the fleet's gossip"
        );
        fleet.publish_seal_key(&agent.seal_keys.public()).await;
        agent.fleet = Some(fleet);
        inbox = Some(fleet_loop::Inbox {
            fleet: fleet_inbox,
            peers: peer_rx,
            joins: join_rx,
        });
    }
    let socket_door = dispatch::ApiDoor {
        calls: api_tx.clone(),
        logs: logs::LogSource {
            runtime: runtime.clone(),
            locator: agent.locator.clone(),
            quic: agent.fleet.as_ref().map(|f| f.quic.clone()),
            follow_interval: agent.config.local.log_follow_interval,
        },
        events: agent.event_source(agent.fleet.as_ref().map(|f| f.quic.clone())),
    };
    let server = host::serve_api(
        agent.store.dir(),
        socket_door,
        agent.config.local.accept_backoff,
        agent.metrics.quic.bad_requests.clone(),
    )
    .await?;
    let web_token = match &http_listener {
        Some((addr, _)) => web::token_for(agent.store.dir(), *addr)
            .map_err(|why| AgentError::Http { addr: *addr, why })?,
        None => None,
    };
    let metrics_server = http_listener.map(|(addr, listener)| {
        let limiter = http::Limiter::new(http_limits, agent.metrics.http.clone());
        tracing::info!(%addr, ?http_limits, "metrics at http://{addr}/metrics");
        if web_token.is_some() {
            tracing::info!(%addr, "web view at http://{addr}/?token=TOKEN (the token is in the data dir's {})", web::TOKEN_FILE);
        } else {
            tracing::info!(%addr, "web view at http://{addr}/");
        }
        agent.leases.url = Some(format!("http://{addr}"));
        agent.report_url = Some(format!("http://{addr}/v1/report"));
        let web = web::WebDoor::new(api_tx.clone(), web_token.clone());
        let sources = http::Sources {
            metrics: agent.metrics.clone(),
            leases: agent.leases.board.clone(),
            reports: agent.reports.clone(),
            web: Some(Arc::new(web)),
        };
        http::serve(listener, limiter, agent.config.local, sources)
    });
    let _discovery = services::start(&mut agent).await;
    let (adopted, adoption_events) =
        crate::runtime::adopt_draining(runtime.as_ref(), &mut events_rx).await;
    if adopted > 0 {
        tracing::info!(
            adopted,
            "adopted replicas left running by the previous agent"
        );
    }
    let result = agent
        .run_loop(adoption_events, events_rx, api_rx, inbox, shutdown)
        .await;
    server.abort();
    if let Some(server) = metrics_server {
        server.abort();
    }
    if let Some(server) = quic_server {
        server.abort();
    }
    if let Some(fleet) = &agent.fleet {
        fleet.leave().await;
    }
    let _ = std::fs::remove_file(crate::api::socket_path(agent.store.dir()));
    // An agent that gives way to another under its id touches nothing: what it adopted may
    // be the other agent's (a copied data dir on the same host names the same processes).
    if result.is_ok() && agent.stops_everything_on_exit() {
        agent.stop_everything().await;
    } else {
        tracing::info!("agent stopped; replicas keep running and are adopted at the next start");
    }
    result
}

/// The agent's state, owned by its one loop.
pub(crate) struct Agent {
    config: AgentConfig,
    /// This life of the node: its start time in ms, growing across restarts even when the
    /// clock stepped back (`Store::next_generation`). Its gossip identity, the failure
    /// detector's first incarnation, and (× 1,000) the core's first instance number all derive
    /// from it, so each is newer than anything the previous life published or started.
    generation: u64,
    store: Store,
    node: NodeId,
    core: NodeCore,
    hlc: Hlc,
    runtime: Arc<Runtimes>,
    /// Health probers of running instances.
    probers: BTreeMap<(ReplicaId, u64), JoinHandle<()>>,
    /// Specs of instances asked to start, for their probers.
    starting: BTreeMap<(ReplicaId, u64), starling_protocol::spec::WorkloadSpec>,
    /// This node's events, on disk and bounded; shared with the API doors that answer
    /// `get events`.
    events: Arc<Mutex<EventLog>>,
    /// The other members and where to ask them for their events, for the doors.
    members: Arc<RwLock<Vec<crate::events::Member>>>,
    /// Where health probers send their results.
    probe_tx: crate::runtime::EventSender,
    /// The fleet side, when the data dir belongs to a cluster.
    fleet: Option<fleet::Fleet>,
    /// Certificate names refused by the QUIC server.
    revoked: Arc<std::sync::RwLock<std::collections::BTreeSet<String>>>,
    /// Counters and gauges for `/metrics`.
    metrics: Arc<metrics::Metrics>,
    /// Where peers run replicas, for log requests.
    locator: logs::Locator,
    /// The last runtime operation per replica, so operations on one replica run in order.
    operations: BTreeMap<ReplicaId, JoinHandle<()>>,
    /// Host CPU and memory in use, measured every few seconds.
    usage_sampler: host::UsageSampler,
    usage: Option<(u32, u64)>,
    /// Rollbacks the core asked for, written once its actions are carried out.
    rollbacks_due: Vec<(starling_protocol::WorkloadName, u64, String)>,
    /// Scales the core's autoscaler decided, written like the rollbacks.
    scales_due: Vec<(starling_protocol::WorkloadName, u32, u32, String)>,
    /// Custom metrics replicas reported on the HTTP port (`report`).
    reports: Arc<report::Reports>,
    /// Where replicas report them (`STARLING_METRICS_URL`), when the HTTP port is served.
    report_url: Option<String>,
    /// The load of this node's autoscaled replicas (`load`).
    load: load::LoadState,
    /// Leader election.
    leases: leases::Leases,
    lease_replies: Option<mpsc::Receiver<(NodeId, starling_protocol::lease::LeaseMessage)>>,
    /// The departure under way once the agent was asked to stop.
    departing: Option<depart::Departing>,
    /// Set when another live agent holds this node's id and this one must give way: the loop
    /// ends with this error, touching nothing.
    identity_clash: Option<String>,
    /// The service table handed to the DNS server and the proxy.
    services: services::Services,
    /// This node's key pair for secrets (`secrets::keys`).
    seal_keys: Arc<starling_protocol::objects::seal::NodeKeys>,
    /// Versions of the secrets and configs each live instance was given, for file reloads.
    delivered: BTreeMap<(ReplicaId, u64), secrets::Delivered>,
}

/// How long the loop sleeps when nothing has a deadline: it wakes for every input anyway, so
/// this bounds nothing but the sleep's own length.
const IDLE_WAKE: Duration = Duration::from_secs(3600);

/// Runtime and health-probe events queued for the loop. A burst of one event per replica (an
/// adoption after a restart, an engine restart that ends every container) fits for a node
/// running a few hundred replicas; past it runtimes and probers wait for the loop
/// (back-pressure), which loses nothing: a lost `Exited` would leave the core believing the
/// replica still runs. An `Exited` carries at most 16 KiB of log, so a full queue holds at
/// most 4 MiB.
const RUNTIME_EVENTS_QUEUE: usize = 256;

impl Agent {
    fn new(
        config: AgentConfig,
        store: Store,
        identity: Identity,
        runtime: Arc<Runtimes>,
        probe_tx: crate::runtime::EventSender,
        channels: metrics::ChannelMetrics,
    ) -> Result<Self, AgentError> {
        let seal_keys = Arc::new(
            crate::secrets::keys::load_or_create(store.dir()).map_err(AgentError::Identity)?,
        );
        let desired = store.desired()?;
        let last_assignment = store.assignment()?;
        let now = now_ms();
        let events = EventLog::open(store.dir().join("events"), config.events_segment_bytes);
        // After the newest write and the newest event: this node's events stay in order even
        // when its clock stepped back across the restart.
        let hlc = match desired.newest_timestamp().max(events.newest()) {
            Some(last) => Hlc::resume(
                starling_protocol::hlc::Timestamp {
                    node: identity.node.clone(),
                    ..last.clone()
                },
                config.max_drift_ms,
            ),
            None => Hlc::new(identity.node.clone(), config.max_drift_ms),
        };
        // A member restarts with the fleet it last saw (not a fleet of one, which would plan
        // every replica onto itself for the moment before gossip arrives).
        let mut view = single_node_view(&identity.node, &config);
        let in_fleet = crate::cluster::Membership::exists(store.dir());
        // The stored view is a cache of what gossip will tell again: one this build cannot
        // read (written by another version) is dropped, not fatal.
        let stored_view = if in_fleet {
            store.view().unwrap_or_else(|e| {
                tracing::warn!("ignoring the stored fleet view: {e}");
                None
            })
        } else {
            None
        };
        if let Some(mut last) = stored_view {
            last.nodes.extend(view.nodes);
            view = last;
        }
        // A member that restarts first listens for where the fleet put its replicas.
        let rejoin_until_ms = in_fleet.then(|| now + config.rejoin_wait.as_millis() as u64);
        let generation = store.next_generation(now)?;
        let mut core_config =
            CoreConfig::new(identity.node.clone(), generation.saturating_mul(1_000));
        core_config.settle_ms = config.settle_ms;
        core_config.scale = config.scale.clone();
        let (leases, lease_replies) = leases::Leases::new(
            identity.node.clone(),
            config.lease_max_drift_ms,
            // Absent (a new node, or a lost one): the voter stays quiet for one lease duration.
            store.read_value("election.bin")?,
            store.read_value("voters.bin")?,
            channels.lease_replies.clone(),
        );
        let core = NodeCore::new(
            core_config,
            Restored {
                desired,
                last_assignment,
                view,
                rejoin_until_ms,
            },
        );
        let metrics = Arc::new(metrics::Metrics {
            store: store.health(),
            channels,
            ..Default::default()
        });
        Ok(Agent {
            config,
            generation,
            store,
            node: identity.node,
            core,
            hlc,
            runtime,
            probers: BTreeMap::new(),
            starting: BTreeMap::new(),
            events: Arc::new(Mutex::new(events)),
            members: Arc::default(),
            probe_tx,
            fleet: None,
            revoked: Arc::default(),
            metrics,
            locator: Arc::default(),
            operations: BTreeMap::new(),
            usage_sampler: host::UsageSampler::default(),
            usage: None,
            rollbacks_due: Vec::new(),
            scales_due: Vec::new(),
            reports: Arc::default(),
            report_url: None,
            load: load::LoadState::default(),
            leases,
            lease_replies: Some(lease_replies),
            departing: None,
            identity_clash: None,
            services: services::Services::new(),
            seal_keys,
            delivered: BTreeMap::new(),
        })
    }

    async fn run_loop(
        &mut self,
        adoption_events: Vec<RuntimeEvent>,
        mut events: mpsc::Receiver<RuntimeEvent>,
        mut api: mpsc::Receiver<dispatch::LoopCall>,
        mut inbox: Option<fleet_loop::Inbox>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        // Adopted instances were reported before the loop started; feed them first.
        for event in adoption_events {
            self.on_runtime_event(event);
        }
        while let Ok(event) = events.try_recv() {
            self.on_runtime_event(event);
        }
        let view = self.core.view().clone();
        self.core.handle_view(now_ms(), view);
        self.execute().await;
        self.refresh_services();
        let (mut engines, engine_watch) =
            containers::watch_engines(self.runtime.clone(), self.config.host.engine_check_interval);
        let mut usage_tick = tokio::time::interval(self.config.host.usage_sample_interval);
        let mut gossip_tick = tokio::time::interval(self.config.fleet.gossip_timing.read_interval);
        gossip_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let Some(mut lease_replies) = self.lease_replies.take() else {
            return Ok(());
        };
        loop {
            let deadline = [
                self.core.poll_timeout(),
                self.fleet.as_ref().and_then(|f| f.detector.poll_timeout()),
                self.lease_deadline(),
                self.departure_deadline(),
            ]
            .into_iter()
            .flatten()
            .min();
            let sleep = match deadline {
                Some(deadline) => Duration::from_millis(deadline.saturating_sub(now_ms())),
                None => IDLE_WAKE,
            };
            let fleet_on = inbox.is_some();
            tokio::select! {
                Some(event) = events.recv() => self.on_runtime_event(event),
                Some(call) = api.recv() => call.run(self),
                Some(input) = fleet_loop::next(&mut inbox) => self.on_fleet_input(input).await,
                Some(kinds) = engines.recv() => self.set_runtimes(kinds),
                Some((from, reply)) = lease_replies.recv() => self.on_lease_reply(from, reply),
                _ = usage_tick.tick() => {
                    if let Some(usage) = self.usage_sampler.sample() {
                        self.usage = Some(usage);
                        if let Some(fleet) = self.fleet.as_mut() {
                            fleet.publish_usage(now_ms(), usage).await;
                        }
                    }
                    self.sample_load(now_ms()).await;
                    self.feed_scalers(now_ms());
                }
                _ = gossip_tick.tick(), if fleet_on => self.on_gossip_tick().await,
                _ = tokio::time::sleep(sleep) => {
                    let now = now_ms();
                    self.decide(|core| core.handle_timeout(now));
                    self.leases.elector.handle_timeout(now);
                    self.drive_elector();
                    if let Some(fleet) = self.fleet.as_mut() {
                        fleet.detector.handle_timeout(now);
                        fleet.flush_detector().await;
                    }
                }
                _ = &mut shutdown, if self.departing.is_none() => {
                    self.begin_departure().await;
                }
            }
            if let Some(reason) = self.identity_clash.take() {
                engine_watch.abort();
                return Err(AgentError::IdentityClash(reason));
            }
            self.execute().await;
            self.refresh_services();
            self.reload_files();
            if self.departure_done() {
                engine_watch.abort();
                return Ok(());
            }
        }
    }

    /// Where this node's live instances listen, as gossip entries ([`Endpoint::entry`]): the
    /// address peers reach this node at, the port the instance actually listens on (picked per
    /// instance for a process, published by the engine for a container), and whether it takes
    /// new connections (the core's [`NodeCore::endpoint_states`]). While a replica runs two
    /// instances (a start-first update) both are published.
    fn endpoints(&self) -> Vec<String> {
        let host = self
            .fleet
            .as_ref()
            .map_or(std::net::IpAddr::from([127, 0, 0, 1]), |f| f.base.ip());
        let mut out = Vec::new();
        for (id, instance, state) in self.core.endpoint_states() {
            // The old instance of a start-first move runs the previous revision's ports.
            let Some(spec) = self.core.instance_spec(&id, instance) else {
                continue;
            };
            for port in &spec.ports {
                if let Some(on_host) = self.runtime.host_port(&id, instance, port) {
                    let endpoint = Endpoint {
                        replica: id.clone(),
                        port: port.name.clone(),
                        address: std::net::SocketAddr::new(host, on_host),
                        state,
                    };
                    out.push(endpoint.entry());
                }
            }
        }
        out
    }

    /// The runtimes this node offers changed (a container engine went away or came back):
    /// the core re-plans, and gossip tells the fleet so placement moves container workloads.
    fn set_runtimes(&mut self, runtimes: std::collections::BTreeSet<RuntimeKind>) {
        let mut view = self.core.view().clone();
        let Some(me) = view.nodes.get_mut(&self.node) else {
            return;
        };
        if me.runtimes == runtimes {
            return;
        }
        tracing::info!(?runtimes, "runtimes offered by this node");
        me.runtimes = runtimes;
        let mine = me.clone();
        if let Some(fleet) = self.fleet.as_mut() {
            fleet.set_me_view(mine);
        }
        let now = now_ms();
        self.decide(|core| core.handle_view(now, view));
    }

    /// Runs one core decision, timing it for the metrics.
    fn decide(&mut self, f: impl FnOnce(&mut NodeCore)) {
        let started = crate::clock::monotonic();
        f(&mut self.core);
        let spent = started.elapsed().as_micros() as u64;
        self.metrics
            .reconcile_micros
            .fetch_add(spent, std::sync::atomic::Ordering::Relaxed);
        self.metrics
            .reconciles
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records an event: logged, and kept in this node's event log, stamped with its HLC.
    fn note(&mut self, kind: EventKind, about: About<'_>, text: String) {
        tracing::info!(kind = kind.name(), "{text}");
        let (workload, replica) = match about {
            About::Node => (None, None),
            About::Workload(w) => (Some(w.clone()), None),
            About::Replica(r) => (Some(r.workload.clone()), Some(r.index)),
        };
        let event = Event::new(self.hlc.tick(now_ms()), kind, workload, replica, text);
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(event);
    }

    /// What an API door needs to answer `get events`.
    fn event_source(&self, quic: Option<Arc<crate::net::quic::Quic>>) -> EventSource {
        EventSource {
            node: self.node.clone(),
            log: self.events.clone(),
            members: self.members.clone(),
            quic,
            peer_timeout: self.config.fleet.exchanges.events_timeout,
        }
    }
}

/// What an event is about, besides the node that records it.
#[derive(Debug, Clone, Copy)]
enum About<'a> {
    /// The node or the fleet.
    Node,
    /// A workload.
    Workload(&'a WorkloadName),
    /// One replica.
    Replica(&'a ReplicaId),
}

fn single_node_view(node: &NodeId, config: &AgentConfig) -> FleetView {
    let view = NodeView {
        id: node.clone(),
        labels: config.labels.clone(),
        arch: std::env::consts::ARCH.to_string(),
        runtimes: [RuntimeKind::Process].into(),
        capacity: config.capacity.unwrap_or_else(host::capacity),
        weight: 1,
        liveness: Liveness::Alive,
        departure: Default::default(),
    };
    FleetView {
        nodes: [(node.clone(), view)].into(),
    }
}
