//! Leases for scripts and the fleet's lease voters: `lease acquire|release|get`, `voters`.

use std::process::ExitCode;

use starling_protocol::lease::LeaseName;
use starling_protocol::quantity::parse_duration_ms;
use starling_protocol::wire::{ApiRequest, ObjectKind};
use starling_protocol::{NodeId, WorkloadName};

use super::client::{Target, call};
use crate::output::Format;

/// `starling lease`.
#[derive(clap::Subcommand)]
pub enum LeaseCommand {
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

/// `starling voters`.
#[derive(clap::Subcommand)]
pub enum VotersCommand {
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

/// `starling lease acquire|release|get`.
pub fn lease(target: &Target, what: LeaseCommand, format: Format) -> anyhow::Result<ExitCode> {
    let request = match what {
        LeaseCommand::Acquire { name, ttl, wait } => acquire(name, &ttl, &wait)?,
        LeaseCommand::Release { name } => ApiRequest::LeaseRelease { name },
        LeaseCommand::Get => ApiRequest::Get {
            kind: ObjectKind::Leases,
        },
    };
    call(target, request, format)
}

fn acquire(name: LeaseName, ttl: &str, wait: &str) -> anyhow::Result<ApiRequest> {
    let ttl = parse_duration_ms(ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
    let wait = parse_duration_ms(wait).map_err(|e| anyhow::anyhow!("--wait: {e}"))?;
    Ok(ApiRequest::LeaseAcquire {
        name,
        duration_ms: ttl,
        wait_ms: wait,
    })
}

/// `starling voters [set NODE... [--force]]`.
pub fn voters(
    target: &Target,
    what: Option<VotersCommand>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let (set, force) = match what {
        Some(VotersCommand::Set { nodes, force }) => {
            let ids = nodes
                .iter()
                .map(|n| NodeId::new(n).map_err(|e| anyhow::anyhow!("{n:?}: {e}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            (Some(ids), force)
        }
        None => (None, false),
    };
    call(target, ApiRequest::Voters { set, force }, format)
}
