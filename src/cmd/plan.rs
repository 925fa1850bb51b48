//! `starling plan`: place specs on a simulated fleet and show who runs what.
//!
//! The fleet is generated, not discovered: `node-01..node-NN` across zones a/b/c, one node in
//! four an aarch64 board, docker on every other node, in three sizes. It is deterministic, so
//! the same command always prints the same plan, as every node of a real fleet would compute it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use serde::Serialize;
use starling_protocol::placement::{Capacity, FleetView, Liveness, NodeView, plan_specs};
use starling_protocol::quantity::{Bytes, Millicores};
use starling_protocol::spec::{RuntimeKind, WorkloadSpec};
use starling_protocol::{NodeId, hash};

use crate::output::{Format, Table};

/// The example specs, built in so `starling plan` works from any directory.
pub const EXAMPLES: [(&str, &str); 5] = [
    ("web.toml", include_str!("../../examples/specs/web.toml")),
    (
        "worker.toml",
        include_str!("../../examples/specs/worker.toml"),
    ),
    (
        "singleton.toml",
        include_str!("../../examples/specs/singleton.toml"),
    ),
    (
        "process.toml",
        include_str!("../../examples/specs/process.toml"),
    ),
    (
        "container.toml",
        include_str!("../../examples/specs/container.toml"),
    ),
];

/// Largest simulated fleet: plenty for a table, and bounded.
const NODES_MAX: usize = 10_000;

#[derive(Serialize)]
struct PlacedRow {
    workload: String,
    replica: u32,
    node: Option<String>,
    moved_from: Option<String>,
    reason: Option<String>,
}

/// `starling plan`.
#[derive(clap::Args)]
pub struct PlanArgs {
    /// Spec files; without any, the example specs built into this binary.
    files: Vec<PathBuf>,
    /// Size of the simulated fleet.
    #[arg(long, default_value_t = 12)]
    nodes: usize,
    /// Nodes to mark as down (e.g. `--down node-03`), to see what moves where.
    #[arg(long)]
    down: Vec<String>,
}

/// `starling plan [FILE...]`.
pub fn run(args: PlanArgs, format: Format) -> anyhow::Result<ExitCode> {
    let PlanArgs { files, nodes, down } = args;
    if nodes == 0 || nodes > NODES_MAX {
        bail!("--nodes must be between 1 and {NODES_MAX}, got {nodes}");
    }
    let specs = load_specs(&files)?;
    let healthy = demo_fleet(nodes);
    let mut view = healthy.clone();
    for id in &down {
        let node = NodeId::new(id.clone())
            .ok()
            .and_then(|id| view.nodes.get_mut(&id));
        match node {
            Some(n) => n.liveness = Liveness::Down,
            None => {
                bail!("--down {id}: no such node in the simulated fleet (node-01..node-{nodes:02})")
            }
        }
    }
    let before = plan_specs(&healthy, &specs);
    let after = plan_specs(&view, &specs);
    let mut rows = Vec::new();
    for spec in &specs {
        for index in 0..spec.replicas_to_place() {
            let replica = starling_protocol::placement::ReplicaId {
                workload: spec.name.clone(),
                index,
            };
            let node = after.placed.get(&replica);
            let was = before.placed.get(&replica);
            rows.push(PlacedRow {
                workload: spec.name.to_string(),
                replica: index,
                node: node.map(|n| n.to_string()),
                moved_from: was.filter(|w| Some(*w) != node).map(|w| w.to_string()),
                reason: after.unplaced.get(&replica).map(|r| r.to_string()),
            });
        }
    }
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "nodes": view.nodes.values().collect::<Vec<_>>(),
                "replicas": rows,
            }))?
        ),
        Format::Table => print_tables(&view, &after, &rows, !down.is_empty()),
    }
    Ok(ExitCode::SUCCESS)
}

fn load_specs(files: &[PathBuf]) -> anyhow::Result<Vec<WorkloadSpec>> {
    let sources: Vec<(String, String)> = if files.is_empty() {
        EXAMPLES
            .iter()
            .map(|(n, t)| (format!("examples/specs/{n}"), t.to_string()))
            .collect()
    } else {
        files
            .iter()
            .map(|p| {
                Ok((
                    p.display().to_string(),
                    std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read {}", p.display()))?,
                ))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut specs: Vec<WorkloadSpec> = Vec::new();
    for (name, text) in sources {
        let spec = super::parse_spec(Path::new(&name), &text).map_err(|errors| {
            anyhow::anyhow!("{name} is invalid (run `starling validate {name}`):\n{errors}")
        })?;
        if specs.iter().any(|s| s.name == spec.name) {
            bail!("{name}: workload {} is defined twice", spec.name);
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// A deterministic fleet of `n` nodes with a realistic mix of zones, boards and runtimes.
pub fn demo_fleet(n: usize) -> FleetView {
    const SIZES: [(u32, u64); 3] = [(1_000, 1 << 30), (2_000, 4 << 30), (4_000, 8 << 30)];
    let width = n.to_string().len().max(2);
    let nodes = (1..=n).map(|i| {
        let id = NodeId::new(format!("node-{i:0width$}")).expect("generated ids are valid");
        let (cpu, memory) = SIZES[(hash::hash64(id.as_str().as_bytes()) % 3) as usize];
        let mut runtimes = vec![RuntimeKind::Process];
        if i % 2 == 0 {
            runtimes.push(RuntimeKind::Docker);
        }
        let view = NodeView {
            labels: BTreeMap::from([("zone".to_string(), ["a", "b", "c"][i % 3].to_string())]),
            arch: if i % 4 == 0 {
                "aarch64".into()
            } else {
                "x86_64".into()
            },
            runtimes: runtimes.into_iter().collect(),
            capacity: Capacity {
                cpu: Millicores(cpu),
                memory: Bytes(memory),
            },
            weight: 1,
            liveness: Liveness::Alive,
            departure: Default::default(),
            id: id.clone(),
        };
        (id, view)
    });
    FleetView {
        nodes: nodes.collect(),
    }
}

fn print_tables(
    view: &FleetView,
    plan: &starling_protocol::placement::Assignment,
    rows: &[PlacedRow],
    show_moves: bool,
) {
    let mut placed = Table::new(&["WORKLOAD", "REPLICA", "NODE", "ZONE", "ARCH", "MOVED FROM"]);
    for r in rows {
        let node = r
            .node
            .as_ref()
            .and_then(|n| NodeId::new(n.clone()).ok())
            .and_then(|id| view.nodes.get(&id));
        placed.row(vec![
            r.workload.clone(),
            r.replica.to_string(),
            r.node.clone().unwrap_or_else(|| "-".into()),
            node.and_then(|n| n.labels.get("zone").cloned())
                .unwrap_or_else(|| "-".into()),
            node.map(|n| n.arch.clone()).unwrap_or_else(|| "-".into()),
            r.moved_from
                .clone()
                .unwrap_or_else(|| if show_moves { "".into() } else { "-".into() }),
        ]);
    }
    println!("{}", placed.render());
    let mut nodes = Table::new(&[
        "NODE", "STATE", "ZONE", "ARCH", "RUNTIMES", "CPU", "MEMORY", "REPLICAS",
    ]);
    for n in view.nodes.values() {
        let reserved = plan.reserved.get(&n.id).copied().unwrap_or_default();
        let runtimes: Vec<&str> = n
            .runtimes
            .iter()
            .map(|r| match r {
                RuntimeKind::Process => "process",
                RuntimeKind::Docker => "docker",
                RuntimeKind::Podman => "podman",
            })
            .collect();
        nodes.row(vec![
            n.id.to_string(),
            format!("{:?}", n.liveness).to_lowercase(),
            n.labels.get("zone").cloned().unwrap_or_default(),
            n.arch.clone(),
            runtimes.join(","),
            format!("{}/{}", reserved.cpu, n.capacity.cpu),
            format!("{}/{}", reserved.memory, n.capacity.memory),
            plan.for_node(&n.id).count().to_string(),
        ]);
    }
    println!("{}", nodes.render());
    let unplaced: Vec<&PlacedRow> = rows.iter().filter(|r| r.reason.is_some()).collect();
    if unplaced.is_empty() {
        println!(
            "{} replicas placed on {} nodes; none unplaceable.",
            plan.placed.len(),
            view.nodes.len()
        );
    } else {
        println!(
            "{} replicas placed; {} unplaceable:",
            plan.placed.len(),
            unplaced.len()
        );
        for r in unplaced {
            println!(
                "  {}/{}: {}",
                r.workload,
                r.replica,
                r.reason.as_deref().unwrap_or_default()
            );
        }
    }
}
