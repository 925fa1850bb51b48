//! `starling agent`: run this machine's agent in the foreground.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use starling_node::agent::{AgentConfig, OnStop, run};
use starling_node::core::membership::profile::NetworkProfile;
use starling_protocol::NodeId;
use starling_protocol::spec::RuntimeKind;

/// `starling agent`.
#[derive(clap::Args)]
pub struct AgentArgs {
    /// Node id to create the data dir with [default: the host's short name and a random
    /// suffix, e.g. gw-3f9a, stored in the data dir].
    #[arg(long)]
    node_id: Option<String>,
    /// A label of this node, KEY=VALUE (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Milliseconds between SIGTERM and SIGKILL when stopping a replica.
    #[arg(long, default_value_t = 10_000)]
    stop_grace_ms: u64,
    /// What to do with this node's workloads when the agent is asked to stop (SIGTERM,
    /// SIGINT): `leave` announces a planned restart (peers hold its replicas for
    /// --restart-window-ms; leases and singleton instances move now; the rest keeps
    /// running for the next agent to adopt), `drain` moves every replica to other nodes
    /// first (make before break), `stop` stops everything.
    #[arg(long, value_enum, default_value_t = OnStopArg::Leave)]
    on_stop: OnStopArg,
    /// Same as --on-stop stop (kept for scripts written before --on-stop).
    #[arg(long, hide = true)]
    stop_on_exit: bool,
    #[command(flatten)]
    discovery: DiscoveryArgs,
    #[command(flatten)]
    fleet: FleetArgs,
}

/// Service discovery and load balancing flags of `starling agent`.
#[derive(clap::Args, Debug, Clone)]
struct DiscoveryArgs {
    /// Where the DNS server answers `*.svc.starling` for processes on this host (UDP and
    /// TCP), or `off`. Another agent on the same host may hold it: this one then runs
    /// without (a warning says so).
    #[arg(long, default_value = "127.0.0.153:53")]
    dns: String,
    /// Do not answer containers on the container bridge's gateway address (DNS on port 53,
    /// and the proxy at each service's port there).
    #[arg(long)]
    no_container_dns: bool,
    /// Do not run the load-balancing proxy (service addresses then answer nothing).
    #[arg(long)]
    no_proxy: bool,
    /// DNS queries per second allowed per client address; more are dropped and counted.
    #[arg(long, default_value_t = 500)]
    dns_qps: u32,
}

/// `--on-stop`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum OnStopArg {
    /// A planned restart (upgrade, reboot): replicas keep running for the next agent.
    Leave,
    /// Move every replica to other nodes, then stop.
    Drain,
    /// Stop every replica.
    Stop,
}

/// Fleet flags of `starling agent` (used once the data dir belongs to a cluster).
#[derive(clap::Args, Debug, Clone)]
struct FleetArgs {
    /// Enrol with this token first, unless the data dir already belongs to a cluster.
    #[arg(long)]
    join: Option<String>,
    /// Base address to listen on: gossip on its port (UDP), QUIC on port + 1, probes on
    /// port + 2.
    #[arg(long, default_value = "0.0.0.0:7946")]
    listen: std::net::SocketAddr,
    /// Base address peers reach this node at [default: --listen, or the one recorded at
    /// init/join when --listen is 0.0.0.0].
    #[arg(long)]
    advertise: Option<std::net::SocketAddr>,
    /// A peer's base address to gossip with at start (repeatable).
    #[arg(long = "seed")]
    seeds: Vec<String>,
    /// Find the fleet on the LAN with mDNS (libp2p), on port + 3 (TCP): `mdns` or `off`.
    /// A member hands the members of its cluster it finds to gossip as seeds and lists the
    /// devices waiting to join (`starling nodes --pending`). A device with no cluster and no
    /// --join waits to be admitted (`starling node admit NAME` on any member) instead of
    /// running alone [default: mdns for a member given no --seed or --join that does not
    /// listen on loopback; off for a device with no cluster].
    #[arg(long, value_parser = ["mdns", "off"])]
    discover: Option<String>,
    /// While waiting to be admitted, take only tokens of the cluster whose CA certificate's
    /// SHA-256 starts with these hex digits (at least 16; the second field of any of its join
    /// tokens): on a LAN shared with others, no other cluster can enrol this device.
    #[arg(long, value_name = "HEX")]
    admit_ca: Option<String>,
    /// Timings of gossip and failure detection for the kind of link: lan (one switch; down
    /// after 400 ms), wan (lossy, jittery links between sites; down after 4 s) or metered
    /// (data plans; fewest bytes, one gossip peer per round, down after 3 s of failed probes).
    /// The flags below override single values.
    #[arg(long, default_value = "lan")]
    network_profile: String,
    /// Shortest time between gossip rounds, in ms (state only; liveness comes from probes)
    /// [default: the profile's; lan 1000].
    #[arg(long)]
    gossip_interval_ms: Option<u64>,
    /// Gossip round interval per member, in ms: rounds slow down as the fleet grows so that
    /// gossip costs about the same per node at any size [default: the profile's; lan 50].
    #[arg(long)]
    gossip_ms_per_member: Option<u64>,
    /// Longest time between gossip rounds, in ms [default: the profile's; lan 30000].
    #[arg(long)]
    gossip_interval_max_ms: Option<u64>,
    /// Peers to gossip with per round: each exchange sends both sides' digests, so fewer
    /// peers cost fewer bytes and a change a few more rounds [default: the profile's; lan 3,
    /// metered 1].
    #[arg(long)]
    gossip_fanout: Option<usize>,
    /// Milliseconds between chitchat's own rounds (three random peers each), a floor beside
    /// the agent's rounds, never below --gossip-interval-max-ms [default: the profile's; lan
    /// 30000, metered 600000].
    #[arg(long)]
    gossip_floor_interval_ms: Option<u64>,
    /// Milliseconds between probes of each watched node [default: the profile's; lan 200].
    #[arg(long)]
    probe_interval_ms: Option<u64>,
    /// Milliseconds to wait for a direct ack before asking two helpers to probe [default:
    /// the profile's; lan 100].
    #[arg(long)]
    probe_timeout_ms: Option<u64>,
    /// Milliseconds to wait for the helpers' acks before the probe counts as failed
    /// [default: the profile's; lan 150].
    #[arg(long)]
    indirect_timeout_ms: Option<u64>,
    /// Milliseconds a watched node may stay unreachable (from its first failed probe) before
    /// it is declared down [default: the profile's; lan 400, two failed probe rounds].
    #[arg(long)]
    down_after_ms: Option<u64>,
    /// Where to serve Prometheus metrics (HTTP) [default: 127.0.0.1 at the --listen port, TCP].
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    /// Docker's API socket ("none": do not offer Docker) [default: $DOCKER_HOST or
    /// /var/run/docker.sock].
    #[arg(long)]
    docker_socket: Option<std::path::PathBuf>,
    /// Podman's API socket ("none": do not offer Podman) [default: /run/podman/podman.sock].
    #[arg(long)]
    podman_socket: Option<std::path::PathBuf>,
    /// Milliseconds a claim waits for competing claims before starting a replica.
    #[arg(long, default_value_t = 100)]
    settle_ms: u64,
    /// The autoscaler's cool-down in ms: a scale-down goes to the highest need seen over this
    /// window and never follows a scale-up closer than this.
    #[arg(long, default_value_t = 120_000)]
    scale_down_window_ms: u64,
    /// How long in ms a need for more replicas must last before the autoscaler scales up.
    #[arg(long, default_value_t = 10_000)]
    scale_up_window_ms: u64,
    /// After the replica count changes, how long in ms the autoscaler waits before it reads
    /// the load against the new count.
    #[arg(long, default_value_t = 20_000)]
    scale_settle_ms: u64,
    /// How far clocks may drift apart over one lease duration: a lease holder stops acting
    /// this many milliseconds before its grant ends.
    #[arg(long, default_value_t = 300)]
    lease_max_drift_ms: u64,
    /// With --on-stop leave: how long peers keep this node's replicas for its next start
    /// before they replace them, in ms.
    #[arg(long, default_value_t = 60_000)]
    restart_window_ms: u64,
    /// With --on-stop drain: longest wait for every replica to run healthy elsewhere, in ms;
    /// what is left then is stopped.
    #[arg(long, default_value_t = 120_000)]
    drain_timeout_ms: u64,
    /// After a restart: how long to wait to hear the fleet (where its replicas went) before
    /// acting, in ms. A node that hears nobody then restarts what it ran before.
    #[arg(long, default_value_t = 5_000)]
    rejoin_wait_ms: u64,
    /// How long a delete's tombstone is kept (e.g. 168h, 30m): the time every write has to
    /// reach every node. Keep it longer than the longest outage or partition a node may come
    /// back from (a write that cannot reach the fleet within it is dropped when they meet).
    #[arg(long, default_value = "168h")]
    tombstone_grace: String,
}

/// Runs the agent of `data_dir` until SIGINT or SIGTERM.
pub fn main(data_dir: &Path, mut args: AgentArgs) -> anyhow::Result<ExitCode> {
    let mut config = AgentConfig::new(data_dir);
    if let Some(id) = args.node_id {
        config.node_id =
            Some(NodeId::new(id.clone()).map_err(|e| anyhow::anyhow!("--node-id {id:?}: {e}"))?);
    }
    config.labels = parse_labels(&args.labels)?;
    config.stop_grace = Duration::from_millis(args.stop_grace_ms);
    config.departure.on_stop = match args.on_stop {
        _ if args.stop_on_exit => OnStop::Stop,
        OnStopArg::Leave => OnStop::Leave,
        OnStopArg::Drain => OnStop::Drain,
        OnStopArg::Stop => OnStop::Stop,
    };
    config.departure.restart_window = Duration::from_millis(args.fleet.restart_window_ms);
    config.departure.drain_timeout = Duration::from_millis(args.fleet.drain_timeout_ms);
    config.rejoin_wait = Duration::from_millis(args.fleet.rejoin_wait_ms);
    config.discovery.dns =
        match args.discovery.dns.as_str() {
            "off" => None,
            text => Some(text.parse().map_err(|e| {
                anyhow::anyhow!("--dns {text:?}: expected ADDRESS:PORT or off ({e})")
            })?),
        };
    config.discovery.container_dns = !args.discovery.no_container_dns;
    config.discovery.proxy = !args.discovery.no_proxy;
    config.discovery.dns_qps = args.discovery.dns_qps.max(1);
    // An empty --join is no join: systemd passes `--join ""` when the unit's token variable
    // is empty (a device installed to wait for admission, examples/deploy/install.sh).
    args.fleet.join = args.fleet.join.take().filter(|t| !t.trim().is_empty());
    let fleet = &args.fleet;
    let member = starling_node::cluster::Membership::exists(data_dir);
    let on_loopback = fleet.advertise.unwrap_or(fleet.listen).ip().is_loopback();
    let discover = match fleet.discover.as_deref() {
        Some("mdns") if !starling_node::lan::BUILT => {
            bail!(
                "--discover mdns: {}",
                starling_node::lan::LanError::NotBuilt
            )
        }
        Some(choice) => choice == "mdns",
        None => {
            starling_node::lan::BUILT
                && member
                && fleet.seeds.is_empty()
                && fleet.join.is_none()
                && !on_loopback
        }
    };
    if discover && !member && fleet.join.is_none() {
        super::admission::wait_then_join(
            data_dir,
            config.node_id.as_ref().map(|n| n.to_string()),
            fleet.listen,
            fleet.advertise,
            fleet.admit_ca.as_deref(),
        )?;
    } else if fleet.admit_ca.is_some() && !member {
        // A member ignores it: the unit that made the device wait keeps the flag after the
        // admission, and the agent must still start.
        bail!(
            "--admit-ca applies only to a device waiting to be admitted (--discover mdns, no cluster, no --join)"
        );
    }
    config.fleet.discover = discover;
    if let Some(token) = &fleet.join {
        let advertise = fleet
            .advertise
            .or((!fleet.listen.ip().is_unspecified()).then_some(fleet.listen));
        if let Some(node) = super::cluster::join_if_needed(
            data_dir,
            token,
            config.node_id.as_ref().map(|n| n.to_string()),
            advertise,
        )? {
            eprintln!("joined the cluster as node {node}");
        }
    }
    let advertise = fleet
        .advertise
        .or_else(|| (!fleet.listen.ip().is_unspecified()).then_some(fleet.listen))
        .or_else(|| starling_node::cluster::Membership::read_advertise(data_dir))
        .map(|a| {
            if a.port() == fleet.listen.port() {
                a
            } else {
                std::net::SocketAddr::new(a.ip(), fleet.listen.port())
            }
        });
    if starling_node::cluster::Membership::exists(data_dir)
        && let Some(addr) = advertise
    {
        starling_node::cluster::Membership::write_advertise(data_dir, addr)?;
    }
    for (kind, socket) in [
        (RuntimeKind::Docker, &fleet.docker_socket),
        (RuntimeKind::Podman, &fleet.podman_socket),
    ] {
        if let Some(path) = socket {
            config.container_engines.retain(|(k, _)| *k != kind);
            if path.as_os_str() != "none" {
                config.container_engines.push((kind, path.clone()));
            }
        }
    }
    config.settle_ms = fleet.settle_ms;
    config.scale.down_window_ms = fleet.scale_down_window_ms;
    config.scale.up_window_ms = fleet.scale_up_window_ms;
    config.scale.settle_ms = fleet.scale_settle_ms;
    config.lease_max_drift_ms = fleet.lease_max_drift_ms;
    config.metrics = fleet.metrics;
    config.fleet.listen = fleet.listen;
    config.fleet.advertise = advertise;
    config.fleet.seeds = fleet.seeds.clone();
    config.fleet.tombstone_grace = Duration::from_millis(
        starling_protocol::quantity::parse_duration_ms(&fleet.tombstone_grace)
            .map_err(|e| anyhow::anyhow!("--tombstone-grace: {e}"))?
            .max(1_000),
    );
    let profile = NetworkProfile::from_name(&fleet.network_profile)
        .map_err(|e| anyhow::anyhow!("--network-profile: {e}"))?;
    let timings = profile.timings();
    let gossip_interval_ms = fleet
        .gossip_interval_ms
        .unwrap_or(timings.gossip_interval_ms)
        .max(10);
    config.fleet.gossip_interval = Duration::from_millis(gossip_interval_ms);
    config.fleet.gossip_ms_per_member = fleet
        .gossip_ms_per_member
        .unwrap_or(timings.gossip_ms_per_member);
    config.fleet.gossip_interval_max = Duration::from_millis(
        fleet
            .gossip_interval_max_ms
            .unwrap_or(timings.gossip_interval_max_ms)
            .max(gossip_interval_ms),
    );
    config.fleet.gossip_fanout = fleet.gossip_fanout.unwrap_or(timings.gossip_fanout).max(1);
    config.fleet.gossip_floor_interval = Duration::from_millis(
        fleet
            .gossip_floor_interval_ms
            .unwrap_or(timings.gossip_floor_interval_ms),
    )
    .max(config.fleet.gossip_interval_max);
    config.fleet.gossip_timing.usage_publish_interval_min =
        Duration::from_millis(timings.usage_publish_interval_min_ms);
    let detector = &mut config.fleet.detector;
    *detector = timings.detector.clone();
    detector.probe_interval_ms = fleet
        .probe_interval_ms
        .unwrap_or(detector.probe_interval_ms)
        .max(10);
    detector.probe_timeout_ms = fleet
        .probe_timeout_ms
        .unwrap_or(detector.probe_timeout_ms)
        .max(1);
    detector.indirect_timeout_ms = fleet
        .indirect_timeout_ms
        .unwrap_or(detector.indirect_timeout_ms)
        .max(1);
    detector.down_after_ms = fleet.down_after_ms.unwrap_or(detector.down_after_ms);
    // Nodes nobody here watches count as down after this much silence (no gossip heartbeat,
    // no verdict): the backstop for a partition side no verdict reaches. A heartbeat needs
    // about log2(N) rounds to cross the fleet, so the agent keeps it at 20 rounds as the
    // round interval grows with the fleet.
    detector.stale_after_ms = (gossip_interval_ms * 20).max(10_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        run(config, shutdown_signal())
            .await
            .map_err(anyhow::Error::from)
    })?;
    Ok(ExitCode::SUCCESS)
}

fn parse_labels(labels: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for label in labels {
        let Some((k, v)) = label.split_once('=') else {
            bail!("--label {label:?}: expected KEY=VALUE")
        };
        out.insert(k.to_string(), v.to_string());
    }
    // Peers refuse a description whose labels break these bounds: refuse them here instead.
    starling_protocol::gossip::check_labels(out.iter()).map_err(|e| anyhow::anyhow!("--{e}"))?;
    Ok(out)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers the agent runs until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}
