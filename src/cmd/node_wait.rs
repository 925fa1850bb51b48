//! `starling node wait` and `starling node generation`: the waiting half of a rolling agent
//! upgrade (examples/deploy/rolling-upgrade.sh). An operator records a node's generation,
//! restarts its agent, then waits until the node is back in a newer life and the fleet runs
//! every workload at its desired count again, before the next node goes.
//!
//! The decision (is this node "rejoined healthy", given one node's listings) is the pure
//! [`rejoined`]; the loop around it only fetches listings, prints progress and bounds the wait.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use starling_protocol::NodeId;
use starling_protocol::api::{NodeRow, ReplicaPlace, ReplicaRow, WorkloadRow};
use starling_protocol::placement::{Departure, Liveness};
use starling_protocol::status::ReplicaState;
use starling_protocol::wire::{ApiRequest, ApiResponse, ObjectKind};

use super::client::{Target, runtime};

/// `starling node wait`.
#[derive(clap::Args)]
pub struct WaitArgs {
    /// The node's id.
    name: String,
    /// Wait for a life of the node newer than this generation (print it with `starling node
    /// generation NAME` before restarting the agent).
    #[arg(long, value_name = "GENERATION")]
    restarted_after: Option<u64>,
    /// Also wait until every workload has its desired count of replicas running healthy on
    /// nodes that are not down (none pending, none unplaced).
    #[arg(long)]
    healthy: bool,
    /// Give up after this long (e.g. 90s, 5m); the exit code is then 1.
    #[arg(long, default_value = "120s")]
    timeout: String,
    /// Time between two looks at the fleet (e.g. 500ms, 2s).
    #[arg(long, default_value = "500ms")]
    interval: String,
}

/// What one answering node lists: the input of [`rejoined`].
#[derive(Debug, Clone, Default)]
pub struct Listings {
    pub nodes: Vec<NodeRow>,
    pub workloads: Vec<WorkloadRow>,
    pub replicas: Vec<ReplicaRow>,
}

/// What a wait asks of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    /// The generation the node must have left behind (`None`: any life will do).
    pub restarted_after: Option<u64>,
    /// Every workload at its desired count of healthy replicas.
    pub healthy: bool,
}

/// `Ok(generation)` once `node` is alive, staying (no departure announced), in a life newer
/// than `want.restarted_after`, and, with `want.healthy`, every workload has each of its
/// desired replica indices running healthy (or finished by its restart policy) on a node not
/// known to be down. `Err` says what is still missing, naming the node or the workload.
pub fn rejoined(node: &NodeId, want: Want, listings: &Listings) -> Result<u64, String> {
    let Some(row) = listings.nodes.iter().find(|n| &n.view.id == node) else {
        return Err(format!("{node} is not a member the answering node knows"));
    };
    if row.generation == 0 {
        return Err(format!("{node} has not been heard from yet"));
    }
    if let Some(before) = want.restarted_after
        && row.generation <= before
    {
        return Err(format!(
            "{node} still runs generation {} (waiting for one newer than {before})",
            row.generation
        ));
    }
    if row.view.liveness != Liveness::Alive {
        return Err(format!(
            "{node} is {} (generation {})",
            format!("{:?}", row.view.liveness).to_lowercase(),
            row.generation
        ));
    }
    match row.departure {
        Departure::Staying => {}
        Departure::Restarting { .. } => return Err(format!("{node} announced a restart")),
        Departure::Draining => return Err(format!("{node} is draining")),
    }
    if want.healthy {
        fleet_healthy(listings)?;
    }
    Ok(row.generation)
}

/// Every workload has each index `0..replicas` covered by a healthy instance on a node that is
/// not down (counted once per index, so two copies of one replica during a move do not hide a
/// missing one). A replica that exited for good (`Exited`: its restart policy is done with it)
/// counts as covered: it is where its spec wants it.
fn fleet_healthy(listings: &Listings) -> Result<(), String> {
    let mut covered: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
    let mut unplaced: BTreeMap<&str, u32> = BTreeMap::new();
    for row in &listings.replicas {
        let workload = row.replica.workload.as_str();
        match &row.place {
            ReplicaPlace::On {
                liveness, status, ..
            } => {
                let node_up = liveness.is_some_and(|l| l != Liveness::Down);
                let done = status.state == ReplicaState::Exited;
                if node_up && (status.is_available() || done) {
                    covered
                        .entry(workload)
                        .or_default()
                        .insert(row.replica.index);
                }
            }
            ReplicaPlace::Unplaced { .. } => *unplaced.entry(workload).or_default() += 1,
        }
    }
    let mut lagging = Vec::new();
    for w in &listings.workloads {
        let want = w.replicas;
        let have = covered
            .get(w.name.as_str())
            .map_or(0, |set| set.range(..want).count());
        let have = u32::try_from(have).unwrap_or(u32::MAX);
        if have < want {
            let mut text = format!("{}: {have}/{want} replicas running healthy", w.name);
            if let Some(n) = unplaced.get(w.name.as_str()) {
                text.push_str(&format!(", {n} unplaced"));
            }
            lagging.push(text);
        }
    }
    if lagging.is_empty() {
        Ok(())
    } else {
        Err(lagging.join("; "))
    }
}

/// The listings of `kinds` from whichever node `target` reaches.
fn fetch(
    target: &Target,
    rt: &tokio::runtime::Runtime,
    kinds: &[ObjectKind],
) -> anyhow::Result<Listings> {
    rt.block_on(async {
        let mut client = target.connect().await?;
        let mut listings = Listings::default();
        let mut failure = None;
        for &kind in kinds {
            match client.call(&ApiRequest::Get { kind }).await {
                Ok(ApiResponse::Nodes(rows)) => listings.nodes = rows,
                Ok(ApiResponse::Workloads(rows)) => listings.workloads = rows,
                Ok(ApiResponse::Replicas(rows)) => listings.replicas = rows,
                Ok(ApiResponse::Error(e)) => failure = Some(anyhow::anyhow!("{}", e.message)),
                Ok(_) => failure = Some(anyhow::anyhow!("unexpected answer to get {kind:?}")),
                Err(e) => failure = Some(anyhow::Error::from(e)),
            }
            if failure.is_some() {
                break;
            }
        }
        client.close().await;
        match failure {
            Some(e) => Err(e),
            None => Ok(listings),
        }
    })
}

fn duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    let ms = starling_protocol::quantity::parse_duration_ms(text)
        .map_err(|e| anyhow::anyhow!("{flag} {text:?}: {e}"))?;
    Ok(Duration::from_millis(ms))
}

fn node_id(name: &str) -> anyhow::Result<NodeId> {
    NodeId::new(name).map_err(|e| anyhow::anyhow!("node name {name:?}: {e}"))
}

/// `starling node wait NAME`: polls until [`rejoined`] holds or the timeout passes. A peer
/// that does not answer (the node asked may be the one restarting) is retried, not fatal.
pub fn wait(target: &Target, args: WaitArgs) -> anyhow::Result<ExitCode> {
    let node = node_id(&args.name)?;
    let timeout = duration("--timeout", &args.timeout)?;
    let interval = duration("--interval", &args.interval)?.max(Duration::from_millis(50));
    let want = Want {
        restarted_after: args.restarted_after,
        healthy: args.healthy,
    };
    let kinds: &[ObjectKind] = if want.healthy {
        &[
            ObjectKind::Nodes,
            ObjectKind::Workloads,
            ObjectKind::Replicas,
        ]
    } else {
        &[ObjectKind::Nodes]
    };
    let rt = runtime()?;
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let verdict = match fetch(target, &rt, kinds) {
            Ok(listings) => rejoined(&node, want, &listings),
            Err(e) => Err(format!("no answer: {e:#}")),
        };
        match verdict {
            Ok(generation) => {
                println!(
                    "node {node} is back: generation {generation}{} ({:.1}s)",
                    if want.healthy {
                        ", every workload at its desired count"
                    } else {
                        ""
                    },
                    started.elapsed().as_secs_f64()
                );
                return Ok(ExitCode::SUCCESS);
            }
            Err(why) => {
                if why != last {
                    eprintln!(
                        "waiting for {node} ({:.1}s): {why}",
                        started.elapsed().as_secs_f64()
                    );
                    last = why;
                }
            }
        }
        if started.elapsed() >= timeout {
            bail!(
                "node {node} did not rejoin{} within {}: {last}",
                if want.healthy { " healthy" } else { "" },
                args.timeout
            );
        }
        std::thread::sleep(interval.min(timeout.saturating_sub(started.elapsed())));
    }
}

/// `starling node generation NAME`: the node's life as the answering node heard it last, bare,
/// for scripts to pass to `node wait --restarted-after`.
pub fn generation(target: &Target, name: &str) -> anyhow::Result<ExitCode> {
    let node = node_id(name)?;
    let rt = runtime()?;
    let listings =
        fetch(target, &rt, &[ObjectKind::Nodes]).context("cannot list the fleet's nodes")?;
    let Some(row) = listings.nodes.iter().find(|n| n.view.id == node) else {
        bail!("{node} is not a member the answering node knows");
    };
    if row.generation == 0 {
        bail!("{node} has not been heard from yet");
    }
    println!("{}", row.generation);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[path = "node_wait/tests.rs"]
mod tests;
