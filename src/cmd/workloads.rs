//! Commands on workloads: `apply`, `delete`, `scale`, `rollback`, `get`, `describe`, `logs`
//! (`rollout` has its own module).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use starling_protocol::WorkloadName;
use starling_protocol::desired::RevisionMatch;
use starling_protocol::spec::WorkloadSpec;
use starling_protocol::wire::{ApiRequest, ApiResponse, ObjectKind};

use super::client::{Target, ask, call};
use crate::output::{self, Format};

/// `starling apply`.
#[derive(clap::Args)]
pub struct ApplyArgs {
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
    /// After the write, follow the rollout as `rollout status --watch` does, with its exit
    /// codes: 0 rolled out, 2 rolled back, 1 failed.
    #[arg(long)]
    wait: bool,
    /// Write even a spec whose template's rollout failed and was rolled back (refused
    /// otherwise, naming the failed revision).
    #[arg(long)]
    force: bool,
}

/// A command on one workload (`delete`, `rollback`, `describe`, `rollout pause`, ...).
#[derive(clap::Args)]
pub struct WorkloadArg {
    /// The workload.
    pub name: WorkloadName,
}

/// `starling scale`.
#[derive(clap::Args)]
pub struct ScaleArgs {
    /// NAME=REPLICAS.
    assignment: String,
}

/// `starling get`.
#[derive(clap::Args)]
pub struct GetArgs {
    /// What to list.
    #[arg(value_enum, default_value_t = Kind::Workloads)]
    pub kind: Kind,
    /// `get events` only.
    #[command(flatten)]
    pub events: super::events::EventArgs,
}

/// What `starling get` lists.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Workloads,
    Replicas,
    Nodes,
    Endpoints,
    Leases,
    Services,
    /// The fleet's events, merged by HLC (see `--workload`, `--follow`, `--since`).
    Events,
}

impl Kind {
    /// What `Get` asks for; `None` for events, which have a request of their own.
    pub fn object_kind(self) -> Option<ObjectKind> {
        Some(match self {
            Kind::Workloads => ObjectKind::Workloads,
            Kind::Replicas => ObjectKind::Replicas,
            Kind::Nodes => ObjectKind::Nodes,
            Kind::Endpoints => ObjectKind::Endpoints,
            Kind::Leases => ObjectKind::Leases,
            Kind::Services => ObjectKind::Services,
            Kind::Events => return None,
        })
    }
}

/// `starling logs`.
#[derive(clap::Args)]
pub struct LogsArgs {
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
}

/// `starling apply -f FILE...`: each file is parsed and validated here, so mistakes are
/// listed without a round trip, and sent as a typed spec (the node checks it again).
pub fn apply(target: &Target, args: ApplyArgs, format: Format) -> anyhow::Result<ExitCode> {
    if let Some(wanted) = &args.if_revision {
        if args.files.len() != 1 {
            anyhow::bail!(
                "--if-revision {wanted}: give exactly one spec file (got {})",
                args.files.len()
            );
        }
        wanted
            .parse::<RevisionMatch>()
            .map_err(|e| anyhow::anyhow!("--if-revision: {e}"))?;
    }
    let mut code = ExitCode::SUCCESS;
    let mut written = Vec::new();
    for path in &args.files {
        let spec = match super::load_spec(path)? {
            Ok(spec) => Box::new(spec),
            Err(errors) => {
                println!(
                    "{}: the spec has {} problem(s); nothing was sent",
                    path.display(),
                    errors.errors().len()
                );
                for e in errors.errors() {
                    println!("  {e}");
                }
                code = ExitCode::FAILURE;
                continue;
            }
        };
        let answer = ask(target, &apply_request(&args, spec))?;
        if output::print(&answer, format) != ExitCode::SUCCESS {
            code = ExitCode::FAILURE;
        } else if let ApiResponse::Written { name, revision, .. } = answer {
            written.push((name, revision));
        }
    }
    if !args.wait {
        return Ok(code);
    }
    // Rollouts of several workloads go on side by side; following them one after the other
    // only delays the answer, never misses an end: a verdict is read from the current state.
    let mut worst = 0u8;
    for (name, revision) in written {
        let followed = super::rollout::follow(
            target,
            &name,
            Some(revision),
            format,
            super::rollout::Shown::Wait,
        )?;
        if followed != ExitCode::SUCCESS {
            worst = worst.max(if followed == ExitCode::from(2) { 2 } else { 1 });
        }
    }
    Ok(match worst {
        0 => code,
        worst => ExitCode::from(worst),
    })
}

/// The request of one spec: the oldest variant that says what was asked, so a plain apply
/// still reaches an agent of the previous build.
fn apply_request(args: &ApplyArgs, spec: Box<WorkloadSpec>) -> ApiRequest {
    let ack_replicas = args.ack_replicas;
    match (&args.if_revision, args.force) {
        (if_revision, true) => ApiRequest::ApplyWith {
            spec,
            ack_replicas,
            if_revision: if_revision.clone(),
            force: true,
        },
        (Some(wanted), false) => ApiRequest::ApplyIf {
            spec,
            ack_replicas,
            if_revision: wanted.clone(),
        },
        (None, false) => ApiRequest::Apply { spec, ack_replicas },
    }
}

/// `starling scale NAME=REPLICAS`.
pub fn scale(target: &Target, args: ScaleArgs, format: Format) -> anyhow::Result<ExitCode> {
    let assignment = &args.assignment;
    let (name, count) = assignment
        .split_once('=')
        .with_context(|| format!("expected NAME=REPLICAS (e.g. web=5), got {assignment:?}"))?;
    let name = WorkloadName::new(name)
        .map_err(|e| anyhow::anyhow!("{name:?} is not a workload name: {e}"))?;
    let replicas: u32 = count
        .parse()
        .with_context(|| format!("replicas must be a whole number, got {count:?}"))?;
    call(target, ApiRequest::Scale { name, replicas }, format)
}

/// `starling logs NAME`: printed as the chunks arrive.
pub fn logs(target: &Target, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let request = ApiRequest::Logs {
        name: args.name,
        replica: Some(args.replica),
        follow: args.follow,
        tail_lines: args.tail,
    };
    super::client::stream_logs(target, &request)
}
