//! `starling`: the command-line interface to a Starling fleet.
//!
//! Each subcommand lives in `cmd/`, with its arguments; this file holds the global flags and
//! the dispatch.

mod cmd;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use starling_protocol::wire::{ApiRequest, ObjectKind};

use crate::cmd::client::{Target, call};
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
    Agent(Box<cmd::agent::AgentArgs>),
    /// Create a cluster with this data dir's node as its first member.
    Init(cmd::cluster::InitArgs),
    /// Enrol this data dir's node into a cluster with a join token.
    Join(cmd::cluster::JoinArgs),
    /// Join tokens.
    Token {
        #[command(subcommand)]
        what: cmd::cluster::TokenCommand,
    },
    /// Operator certificates.
    User {
        #[command(subcommand)]
        what: cmd::cluster::UserCommand,
    },
    /// Start a local fleet of agents on loopback, apply the example specs, show live status.
    Up(cmd::up::UpArgs),
    /// Secrets: sealed on this machine to the nodes that may run their workloads, opened only
    /// where a replica uses them. Values are never shown.
    Secret {
        #[command(subcommand)]
        what: cmd::objects::ObjectCommand,
    },
    /// Configs: like secrets, in clear.
    Config {
        #[command(subcommand)]
        what: cmd::objects::ObjectCommand,
    },
    /// Create or update workloads from spec files.
    Apply(cmd::workloads::ApplyArgs),
    /// Delete a workload.
    Delete(cmd::workloads::WorkloadArg),
    /// Set a workload's replica count: `starling scale web=5`.
    Scale(cmd::workloads::ScaleArgs),
    /// Go back to a workload's previous revision.
    Rollback(cmd::workloads::WorkloadArg),
    /// Rolling updates: follow, pause, resume or promote the current revision's rollout.
    Rollout {
        #[command(subcommand)]
        what: cmd::rollout::RolloutCommand,
    },
    /// List workloads, replicas, nodes, endpoints, leases, services, or the fleet's events.
    Get(cmd::workloads::GetArgs),
    /// Show one workload: revision history, rollout, update strategy, replicas, events, spec.
    Describe(cmd::workloads::WorkloadArg),
    /// Every replica with its state, health and restarts.
    Status,
    /// A live full-screen view of the fleet: nodes, workloads, replicas, leases, events.
    #[cfg(feature = "top")]
    Top(cmd::top::TopArgs),
    /// Print the end of a replica's log, from whichever node runs it.
    Logs(cmd::workloads::LogsArgs),
    /// List the nodes of the fleet (same as `get nodes`).
    Nodes {
        /// Instead, the devices this node found on its LAN waiting to join (admit them with
        /// `starling node admit`).
        #[arg(long)]
        pending: bool,
    },
    /// Leases for scripts that run their own election (the answering node campaigns).
    Lease {
        #[command(subcommand)]
        what: cmd::lease::LeaseCommand,
    },
    /// The fleet's lease voters (a majority of them elects each quorum lease).
    Voters {
        #[command(subcommand)]
        what: Option<cmd::lease::VotersCommand>,
    },
    /// Container images on this node.
    Image {
        #[command(subcommand)]
        what: cmd::image::ImageCommand,
    },
    /// The fleet's gossip key.
    Key {
        #[command(subcommand)]
        what: cmd::cluster::KeyCommand,
    },
    /// Fleet membership.
    Node {
        #[command(subcommand)]
        what: cmd::cluster::NodeCommand,
    },
    /// Check workload specs (TOML or JSON) and list every problem with its field path.
    Validate(cmd::validate::ValidateArgs),
    /// Run a fault scenario on the deterministic simulator (real node cores, simulated world).
    #[cfg(feature = "sim")]
    Sim(cmd::sim::SimArgs),
    /// Measure a figure (see docs/BENCHMARKS.md).
    #[cfg(feature = "bench")]
    Bench {
        #[command(subcommand)]
        what: cmd::bench::BenchKind,
    },
    /// Run COMMAND and stop it once the lease in a lease file runs out without renewal (the
    /// process runtime starts singleton instances this way; see docs/OPERATIONS.md).
    #[command(hide = true)]
    Fence(cmd::fence::FenceArgs),
    /// Show where a simulated fleet would place workloads (the built-in examples by default).
    Plan(cmd::plan::PlanArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let target = Target {
        data_dir: cli.data_dir.unwrap_or_else(cmd::client::default_data_dir),
        peer: cli.peer,
        cluster_dir: cli
            .cluster_dir
            .unwrap_or_else(cmd::cluster::default_cluster_dir),
    };
    let format = cli.output;
    let t = &target;
    let result = match cli.command {
        Command::Agent(args) => cmd::agent::main(&t.data_dir, *args),
        Command::Init(args) => cmd::cluster::init(t, args),
        Command::Join(args) => cmd::cluster::join(t, args),
        Command::Token { what } => cmd::cluster::token(t, what),
        Command::User { what } => cmd::cluster::user(t, what, format),
        Command::Node { what } => cmd::cluster::node(t, what, format),
        Command::Key { what } => cmd::cluster::key(t, what, format),
        Command::Up(args) => cmd::up::main(args),
        Command::Secret { what } => cmd::objects::main(
            t,
            starling_protocol::objects::ObjectKind::Secret,
            what,
            format,
        ),
        Command::Config { what } => cmd::objects::main(
            t,
            starling_protocol::objects::ObjectKind::Config,
            what,
            format,
        ),
        Command::Apply(args) => cmd::workloads::apply(t, args, format),
        Command::Delete(w) => call(t, ApiRequest::Delete { name: w.name }, format),
        Command::Scale(args) => cmd::workloads::scale(t, args, format),
        Command::Rollback(w) => call(t, ApiRequest::Rollback { name: w.name }, format),
        Command::Rollout { what } => cmd::rollout::run(t, what, format),
        Command::Get(args) => match args.kind.object_kind() {
            Some(kind) => cmd::events::refuse_with_other_kinds(&args.events)
                .and_then(|()| call(t, ApiRequest::Get { kind }, format)),
            None => cmd::events::run(t, args.events, format),
        },
        Command::Describe(w) => call(t, ApiRequest::Describe { name: w.name }, format),
        Command::Status => call(t, ApiRequest::Status, format),
        #[cfg(feature = "top")]
        Command::Top(args) => cmd::top::run(t, args),
        Command::Logs(args) => cmd::workloads::logs(t, args),
        Command::Nodes { pending: true } => cmd::admission::pending(t, format),
        Command::Nodes { pending: false } => call(
            t,
            ApiRequest::Get {
                kind: ObjectKind::Nodes,
            },
            format,
        ),
        Command::Lease { what } => cmd::lease::lease(t, what, format),
        Command::Voters { what } => cmd::lease::voters(t, what, format),
        Command::Image { what } => cmd::image::run(what),
        Command::Validate(args) => cmd::validate::run(args, format),
        #[cfg(feature = "sim")]
        Command::Sim(args) => cmd::sim::main(args),
        #[cfg(feature = "bench")]
        Command::Bench { what } => cmd::bench::run(what),
        Command::Fence(args) => cmd::fence::run(args),
        Command::Plan(args) => cmd::plan::run(args, format),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `RUST_LOG` when unset: info for Starling, warn for the rest.
const DEFAULT_LOG: &str = "warn,starling=info,starling_node=info";

/// Logs to stderr, filtered by `RUST_LOG`: a list of `target=level` directives and an optional
/// bare default level (`filter::Targets`, not `EnvFilter`: no regex engine in the binary, so no
/// span or field filters either).
fn init_logging() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = match std::env::var("RUST_LOG") {
        Ok(text) if !text.trim().is_empty() => text.parse::<Targets>().unwrap_or_else(|e| {
            eprintln!("warning: RUST_LOG={text:?} is not a list of target=level ({e}); using {DEFAULT_LOG:?}");
            default_log_filter()
        }),
        _ => default_log_filter(),
    };
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .try_init();
}

/// [`DEFAULT_LOG`], built rather than parsed.
fn default_log_filter() -> tracing_subscriber::filter::Targets {
    use tracing::Level;
    tracing_subscriber::filter::Targets::new()
        .with_default(Level::WARN)
        .with_target("starling", Level::INFO)
        .with_target("starling_node", Level::INFO)
}
