//! `starling`: the command-line interface to a Starling fleet.
//!
//! Each subcommand lives in `cmd/`; this file holds the argument definitions and dispatch.

mod cmd;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use starling_protocol::WorkloadName;
use starling_protocol::wire::{ApiRequest, ObjectKind};

use crate::output::Format;

#[derive(Parser)]
#[command(
    name = "starling",
    version,
    about = "Masterless container scheduler for edge fleets"
)]
struct Cli {
    /// Data dir of the local agent [default: $STARLING_DATA_DIR or ~/.local/share/starling].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Talk to this peer (HOST:PORT, its base address) over QUIC instead of the local agent.
    #[arg(long, global = true)]
    peer: Option<String>,
    /// Operator certificate dir [default: $STARLING_CLUSTER_DIR or ~/.config/starling].
    #[arg(long, global = true)]
    cluster_dir: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, global = true, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run this machine's agent in the foreground (the process runtime is built in).
    Agent {
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
        #[arg(long, value_enum, default_value_t = cmd::agent::OnStopArg::Leave)]
        on_stop: cmd::agent::OnStopArg,
        /// Same as --on-stop stop (kept for scripts written before --on-stop).
        #[arg(long, hide = true)]
        stop_on_exit: bool,
        #[command(flatten)]
        fleet: Box<cmd::agent::FleetArgs>,
    },
    /// Create a cluster with this data dir's node as its first member.
    Init {
        /// The cluster's name.
        #[arg(long, default_value = "starling")]
        cluster: String,
        /// The first node's id [default: the host's short name and a random suffix].
        #[arg(long)]
        node_id: Option<String>,
        /// Base address peers reach this node at (gossip; QUIC is port + 1, probes port + 2).
        #[arg(long, default_value = "127.0.0.1:7946")]
        advertise: std::net::SocketAddr,
    },
    /// Enrol this data dir's node into a cluster with a join token.
    Join {
        /// The token (from `starling init` or `starling token create`).
        token: String,
        /// The node's id [default: the host's short name and a random suffix]; it must not be
        /// the id of a member of the fleet.
        #[arg(long)]
        node_id: Option<String>,
        /// Base address peers reach this node at.
        #[arg(long)]
        advertise: Option<std::net::SocketAddr>,
    },
    /// Join tokens.
    Token {
        #[command(subcommand)]
        what: TokenCommand,
    },
    /// Operator certificates.
    User {
        #[command(subcommand)]
        what: UserCommand,
    },
    /// Start a local fleet of agents on loopback, apply the example specs, show live status.
    Up {
        /// Agents to start.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Spec files or a directory of them [default: the built-in examples].
        #[arg(long)]
        specs: Option<PathBuf>,
        /// Where the fleet's data dirs go [default: a new temporary dir].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print the status this many times and exit (0: until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        rounds: u32,
    },
    /// Create or update workloads from spec files.
    Apply {
        /// Spec files (`.toml` or `.json`).
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
        /// Answer only once this many other peers hold the write too.
        #[arg(long, default_value_t = 0)]
        ack_replicas: u32,
        /// Write only if the workload is at this revision on the answering peer: a number
        /// (0: it must not exist yet) or a revision id as apply and describe print it
        /// (2@node-1:1764867785123.0). One spec file only.
        #[arg(long, value_name = "REVISION")]
        if_revision: Option<String>,
    },
    /// Delete a workload.
    Delete {
        /// The workload.
        name: WorkloadName,
    },
    /// Set a workload's replica count: `starling scale web=5`.
    Scale {
        /// NAME=REPLICAS.
        assignment: String,
    },
    /// Go back to a workload's previous revision.
    Rollback {
        /// The workload.
        name: WorkloadName,
    },
    /// List workloads, replicas or nodes.
    Get {
        /// What to list.
        #[arg(value_enum, default_value_t = Kind::Workloads)]
        kind: Kind,
    },
    /// Show one workload: revisions, replicas, recent events, spec.
    Describe {
        /// The workload.
        name: WorkloadName,
    },
    /// Every replica with its state, health and restarts.
    Status,
    /// Print the end of a replica's log, from whichever node runs it.
    Logs {
        /// The workload.
        name: WorkloadName,
        /// Which replica.
        #[arg(long, default_value_t = 0)]
        replica: u32,
        /// Lines from the end.
        #[arg(long, default_value_t = 100)]
        tail: u32,
        /// Keep streaming new lines (from whichever node runs the replica) until Ctrl-C.
        #[arg(short, long)]
        follow: bool,
    },
    /// List the nodes of the fleet (same as `get nodes`).
    Nodes,
    /// Leases for scripts that run their own election (the answering node campaigns).
    Lease {
        #[command(subcommand)]
        what: LeaseCommand,
    },
    /// The fleet's lease voters (a majority of them elects each quorum lease).
    Voters {
        #[command(subcommand)]
        what: Option<VotersCommand>,
    },
    /// Container images on this node.
    Image {
        #[command(subcommand)]
        what: ImageCommand,
    },
    /// The fleet's gossip key.
    Key {
        #[command(subcommand)]
        what: KeyCommand,
    },
    /// Fleet membership.
    Node {
        #[command(subcommand)]
        what: NodeCommand,
    },
    /// Check workload specs (TOML or JSON) and list every problem with its field path.
    Validate {
        /// Spec files (`.toml` or `.json`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run a fault scenario on the deterministic simulator (real node cores, simulated world).
    Sim {
        /// Scenario file (see sim/scenarios/).
        scenario: PathBuf,
        /// The seed (default 1); the same seed replays the same run.
        #[arg(long, conflicts_with = "seeds")]
        seed: Option<u64>,
        /// Many seeds, A..B (end exclusive), run on every core; lists failing seeds.
        #[arg(long)]
        seeds: Option<String>,
        /// Write the run's timeline picture (SVG) here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Turn on a deliberate core bug (a minority side replaces replicas) to see the
        /// invariants catch it.
        #[arg(long, hide = true)]
        bug_minority_takes_over: bool,
    },
    /// Measure a figure (see docs/BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        what: BenchKind,
    },
    /// Run COMMAND and stop it once the lease in a lease file runs out without renewal (the
    /// process runtime starts singleton instances this way; see docs/OPERATIONS.md).
    #[command(hide = true)]
    Fence {
        /// The lease file the agent keeps in the replica's directory.
        #[arg(long)]
        lease_file: PathBuf,
        /// Milliseconds between SIGTERM and SIGKILL when the lease ran out.
        #[arg(long, default_value_t = starling_node::runtime::fence::GRACE_MS_DEFAULT)]
        grace_ms: u64,
        /// Milliseconds a missing or unreadable lease file is tolerated after the start.
        #[arg(long, default_value_t = starling_node::runtime::fence::LEASE_WAIT_MS_DEFAULT)]
        lease_wait_ms: u64,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Show where a simulated fleet would place workloads (the built-in examples by default).
    Plan {
        /// Spec files; without any, the example specs built into this binary.
        files: Vec<PathBuf>,
        /// Size of the simulated fleet.
        #[arg(long, default_value_t = 12)]
        nodes: usize,
        /// Nodes to mark as down (e.g. `--down node-03`), to see what moves where.
        #[arg(long)]
        down: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new one-time join token: from a member's --data-dir, or with --peer from that
    /// peer over QUIC (operator certificates only; the token names the peer as the seed).
    Create,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Write a client certificate for operator NAME into the cluster dir.
    Add {
        /// The operator's name.
        name: String,
    },
    /// Revoke operator NAME's certificate, fleet-wide.
    Remove {
        /// The operator's name.
        name: String,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Load images from a `docker save` archive into this node's engine (no registry needed).
    Load {
        /// The archive (`docker save -o FILE.tar IMAGE`).
        file: PathBuf,
        /// Which engine: docker or podman.
        #[arg(long, default_value = "docker")]
        runtime: String,
        /// The engine's socket [default: the engine's usual one].
        #[arg(long)]
        socket: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum LeaseCommand {
    /// Campaign for lease NAME on the answering node and keep it until released; prints the
    /// fencing token once held (exit 1 if not held within --wait).
    Acquire {
        /// The lease.
        name: WorkloadName,
        /// Duration of each grant (renewed every third of it).
        #[arg(long, default_value = "10s")]
        ttl: String,
        /// How long to wait for it.
        #[arg(long, default_value = "30s")]
        wait: String,
    },
    /// Give up a lease acquired through the answering node.
    Release {
        /// The lease.
        name: WorkloadName,
    },
    /// List leases: holder, epoch, fencing token, time left.
    Get,
}

#[derive(Subcommand)]
enum VotersCommand {
    /// Set the voters (one change at a time unless --force).
    Set {
        /// Node ids.
        #[arg(required = true)]
        nodes: Vec<String>,
        /// Change several voters at once (majorities of the old and new sets may not overlap
        /// while the change spreads).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Install a new gossip key on every live node, then seal with it (old keys still open).
    Rotate,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Remove node NAME from the fleet: its certificate is refused everywhere and its
    /// replicas move.
    Remove {
        /// The node's id.
        name: String,
    },
}

#[derive(Subcommand)]
enum BenchKind {
    /// Kill an agent (and its replicas) in a local fleet; time until its replicas run
    /// elsewhere and pass their health checks.
    Failover {
        /// Agents in the fleet.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Kills to time.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// An extra flag for every agent, e.g. `--agent-flag=--down-after-ms=700` (repeatable).
        #[arg(long = "agent-flag", allow_hyphen_values = true)]
        agent_flags: Vec<String>,
    },
    /// Apply a workload at one agent of a local fleet; time until every replica runs.
    Apply {
        /// Agents in the fleet.
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        /// Applies to time.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// An extra flag for every agent (repeatable).
        #[arg(long = "agent-flag", allow_hyphen_values = true)]
        agent_flags: Vec<String>,
    },
    /// Kill the machine of a singleton's lease holder; time until another node's instance
    /// runs (with a larger fencing token).
    Lease {
        /// Agents in the fleet.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Kills to time.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// The singleton's lease TTL.
        #[arg(long, default_value = "2s")]
        ttl: String,
        /// An extra flag for every agent (repeatable).
        #[arg(long = "agent-flag", allow_hyphen_values = true)]
        agent_flags: Vec<String>,
    },
    /// Steady-state gossip and probe bytes per node per second in local fleets.
    Gossip {
        /// Fleet sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [5, 20, 100])]
        nodes: Vec<usize>,
        /// Seconds to measure each size.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// An extra flag for every agent (repeatable).
        #[arg(long = "agent-flag", allow_hyphen_values = true)]
        agent_flags: Vec<String>,
    },
    /// Gossip rounds for one desired-state write to reach every node (real CRDT, push-pull).
    Dissemination {
        /// Fleet size.
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        /// Peers each node contacts per round.
        #[arg(long, default_value_t = 1)]
        fanout: usize,
        /// Seeds to run (1..=N).
        #[arg(long, default_value_t = 20)]
        seeds: u64,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Kind {
    Workloads,
    Replicas,
    Nodes,
    Endpoints,
    Leases,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(cmd::client::default_data_dir);
    let format = cli.output;
    let cluster_dir = cli
        .cluster_dir
        .clone()
        .unwrap_or_else(cmd::cluster::default_cluster_dir);
    let target = cmd::client::Target {
        data_dir: data_dir.clone(),
        peer: cli.peer.clone(),
        cluster_dir: cluster_dir.clone(),
    };
    let result = match cli.command {
        Command::Agent {
            node_id,
            labels,
            stop_grace_ms,
            on_stop,
            stop_on_exit,
            fleet,
        } => cmd::agent::main(cmd::agent::AgentArgs {
            data_dir,
            node_id,
            labels,
            stop_grace_ms,
            on_stop: if stop_on_exit {
                cmd::agent::OnStopArg::Stop
            } else {
                on_stop
            },
            fleet: *fleet,
        }),
        Command::Init {
            cluster,
            node_id,
            advertise,
        } => cmd::cluster::init(&data_dir, &cluster_dir, &cluster, node_id, advertise),
        Command::Join {
            token,
            node_id,
            advertise,
        } => cmd::cluster::join(&data_dir, &token, node_id, advertise),
        Command::Token {
            what: TokenCommand::Create,
        } => match &target.peer {
            Some(_) => cmd::client::token_create(&target),
            None => cmd::cluster::token_create(&data_dir),
        },
        Command::User {
            what: UserCommand::Add { name },
        } => cmd::cluster::user_add(&data_dir, &cluster_dir, &name),
        Command::User {
            what: UserCommand::Remove { name },
        }
        | Command::Node {
            what: NodeCommand::Remove { name },
        } => cmd::client::call(&target, ApiRequest::Revoke { name }, format),
        Command::Up {
            nodes,
            specs,
            dir,
            rounds,
        } => cmd::up::main(cmd::up::UpArgs {
            nodes,
            specs,
            dir,
            rounds,
        }),
        Command::Apply {
            files,
            ack_replicas,
            if_revision,
        } => cmd::client::apply(&target, &files, ack_replicas, if_revision, format),
        Command::Delete { name } => cmd::client::call(&target, ApiRequest::Delete { name }, format),
        Command::Scale { assignment } => cmd::client::scale(&target, &assignment, format),
        Command::Rollback { name } => {
            cmd::client::call(&target, ApiRequest::Rollback { name }, format)
        }
        Command::Get { kind } => {
            let kind = match kind {
                Kind::Workloads => ObjectKind::Workloads,
                Kind::Replicas => ObjectKind::Replicas,
                Kind::Nodes => ObjectKind::Nodes,
                Kind::Endpoints => ObjectKind::Endpoints,
                Kind::Leases => ObjectKind::Leases,
            };
            cmd::client::call(&target, ApiRequest::Get { kind }, format)
        }
        Command::Describe { name } => {
            cmd::client::call(&target, ApiRequest::Describe { name }, format)
        }
        Command::Status => cmd::client::call(&target, ApiRequest::Status, format),
        Command::Logs {
            name,
            replica,
            tail,
            follow,
        } => cmd::client::logs(&target, name, replica, tail, follow),
        Command::Image {
            what:
                ImageCommand::Load {
                    file,
                    runtime,
                    socket,
                },
        } => cmd::image::load(&file, &runtime, socket),
        Command::Lease {
            what: LeaseCommand::Acquire { name, ttl, wait },
        } => cmd::client::lease_acquire(&target, name, &ttl, &wait, format),
        Command::Lease {
            what: LeaseCommand::Release { name },
        } => cmd::client::call(&target, ApiRequest::LeaseRelease { name }, format),
        Command::Lease {
            what: LeaseCommand::Get,
        } => cmd::client::call(
            &target,
            ApiRequest::Get {
                kind: ObjectKind::Leases,
            },
            format,
        ),
        Command::Voters { what } => {
            let (set, force) = match what {
                Some(VotersCommand::Set { nodes, force }) => (Some(nodes), force),
                None => (None, false),
            };
            cmd::client::voters(&target, set, force, format)
        }
        Command::Key {
            what: KeyCommand::Rotate,
        } => cmd::client::call(&target, ApiRequest::RotateGossipKey, format),
        Command::Nodes => cmd::client::call(
            &target,
            ApiRequest::Get {
                kind: ObjectKind::Nodes,
            },
            format,
        ),
        Command::Sim {
            scenario,
            seed,
            seeds,
            report,
            bug_minority_takes_over,
        } => cmd::sim::main(cmd::sim::SimArgs {
            scenario,
            seed,
            seeds,
            report,
            bug_minority_takes_over,
        }),
        Command::Bench {
            what:
                BenchKind::Dissemination {
                    nodes,
                    fanout,
                    seeds,
                },
        } => cmd::bench::dissemination(nodes, fanout, seeds),
        Command::Bench {
            what:
                BenchKind::Failover {
                    nodes,
                    runs,
                    agent_flags,
                },
        } => cmd::bench_fleet::failover(nodes, runs, agent_flags),
        Command::Bench {
            what:
                BenchKind::Lease {
                    nodes,
                    runs,
                    ttl,
                    agent_flags,
                },
        } => cmd::bench_lease::lease(nodes, runs, &ttl, agent_flags),
        Command::Bench {
            what:
                BenchKind::Apply {
                    nodes,
                    runs,
                    agent_flags,
                },
        } => cmd::bench_fleet::apply_latency(nodes, runs, agent_flags),
        Command::Bench {
            what:
                BenchKind::Gossip {
                    nodes,
                    seconds,
                    agent_flags,
                },
        } => cmd::bench_fleet::gossip(&nodes, seconds, agent_flags),
        Command::Validate { files } => cmd::validate::run(&files, format),
        Command::Plan { files, nodes, down } => cmd::plan::run(&files, nodes, &down, format),
        Command::Fence {
            lease_file,
            grace_ms,
            lease_wait_ms,
            command,
        } => cmd::fence::run(cmd::fence::FenceArgs {
            lease_file,
            grace: std::time::Duration::from_millis(grace_ms),
            lease_wait: std::time::Duration::from_millis(lease_wait_ms),
            command,
        }),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default: info for Starling, warn for the rest).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,starling=info,starling_node=info")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
