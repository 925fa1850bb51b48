//! Fleet benchmarks on real agent processes over loopback: failover, apply, gossip cost.
//!
//! Times are taken from the outside: a replica counts as running once a live process for it
//! exists in some node's runtime dir (what the machine runs, not what gossip says), and as
//! healthy once the node running it reports it so over QUIC.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;
use starling_protocol::api::ReplicaPlace;
use starling_protocol::placement::Liveness;
use starling_protocol::spec::WorkloadSpec;
use starling_protocol::wire::{ApiRequest, ApiResponse, ObjectKind};

use super::up::LocalFleet;

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

pub(super) fn summary(label: &str, mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    format!(
        "{label}: n={} min {:.0} ms / p50 {:.0} ms / p99 {:.0} ms / max {:.0} ms",
        values.len(),
        values[0],
        percentile(&values, 0.5),
        percentile(&values, 0.99),
        values[values.len() - 1]
    )
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Live pids of `workload`'s replicas under a node's data dir, by replica index.
pub(super) fn live_replicas(dir: &Path, workload: &str) -> Vec<(u32, i64)> {
    let Ok(entries) = std::fs::read_dir(dir.join("runtime/replicas")) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let index = name.strip_prefix(&format!("{workload}-"))?.parse().ok()?;
            let text = std::fs::read_to_string(e.path().join("instance.json")).ok()?;
            let pid = serde_json::from_str::<Value>(&text).ok()?["pid"].as_i64()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            (!stat.contains(") Z ")).then_some((index, pid))
        })
        .collect()
}

/// Which node directories hold a live process for each replica index.
fn placement(fleet: &LocalFleet, workload: &str, skip: Option<usize>) -> Vec<(u32, usize)> {
    let mut out = Vec::new();
    for (i, agent) in fleet.agents.iter().enumerate() {
        if Some(i) == skip || agent.child.is_none() {
            continue;
        }
        for (index, _) in live_replicas(&agent.data_dir, workload) {
            out.push((index, i));
        }
    }
    out
}

pub(super) fn kill_replicas(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir.join("runtime/replicas")) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let Ok(text) = std::fs::read_to_string(e.path().join("instance.json")) else {
            continue;
        };
        if let Some(pid) = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["pid"].as_i64())
            .and_then(|p| i32::try_from(p).ok())
            && pid > 1
        {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn spec(name: &str, replicas: usize, health: bool) -> anyhow::Result<WorkloadSpec> {
    let mut text = format!(
        "name = \"{name}\"\ncommand = \"sleep\"\nargs = [\"3600\"]\nreplicas = {replicas}\n\
         [resources]\ncpu = \"10m\"\nmemory = \"1Mi\"\n"
    );
    if health {
        text.push_str("[health]\nexec = [\"true\"]\ninterval = \"200ms\"\ntimeout = \"200ms\"\n");
    }
    WorkloadSpec::from_toml(&text).map_err(|e| anyhow::anyhow!("the benchmark's spec: {e}"))
}

async fn healthy_on(fleet: &LocalFleet, node: usize, workload: &str, index: u32) -> bool {
    let Ok(mut client) = fleet.client(node).await else {
        return false;
    };
    let Ok(ApiResponse::Replicas(rows)) = client.call(&ApiRequest::Status).await else {
        return false;
    };
    let name = &fleet.agents[node].name;
    rows.iter().any(|r| {
        r.replica.workload.as_str() == workload
            && r.replica.index == index
            && matches!(&r.place, ReplicaPlace::On { node, liveness: Some(Liveness::Alive | Liveness::Suspect), status }
                if node.as_str() == name.as_str() && status.is_available())
    })
}

pub(super) async fn wait_members(
    fleet: &LocalFleet,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut all = true;
        for i in 0..fleet.agents.len() {
            if fleet.agents[i].child.is_none() {
                continue;
            }
            let alive = match fleet.client(i).await {
                Ok(mut c) => match c
                    .call(&ApiRequest::Get {
                        kind: ObjectKind::Nodes,
                    })
                    .await
                {
                    Ok(ApiResponse::Nodes(rows)) => rows
                        .iter()
                        .filter(|n| n.view.liveness == Liveness::Alive)
                        .count(),
                    _ => 0,
                },
                Err(_) => 0,
            };
            if alive != n {
                all = false;
                break;
            }
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the fleet did not see {n} alive members within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(super) async fn apply(fleet: &LocalFleet, at: usize, spec: WorkloadSpec) -> anyhow::Result<()> {
    let mut client = fleet.client(at).await?;
    match client
        .call(&ApiRequest::Apply {
            spec: Box::new(spec),
            ack_replicas: 0,
        })
        .await?
    {
        ApiResponse::Written { .. } => Ok(()),
        other => bail!("apply refused: {other:?}"),
    }
}

/// Kill a node (agent and replicas), time until its replicas run elsewhere and pass their
/// health checks; restart it; repeat.
pub fn failover(nodes: usize, runs: usize, extra: Vec<String>) -> anyhow::Result<ExitCode> {
    if nodes < 3 {
        bail!("--nodes must be at least 3");
    }
    let dir = std::env::temp_dir().join(format!("starling-bench-failover-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut fleet = LocalFleet::start(&dir, nodes, extra)?;
    let rt = runtime()?;
    let workload = "victims";
    // Enough replicas that most nodes run some, few enough that health probes stay cheap.
    let replicas = (nodes * 2).min(20);
    rt.block_on(async {
        wait_members(&fleet, nodes, Duration::from_secs(60)).await?;
        apply(&fleet, 0, spec(workload, replicas, true)?).await
    })?;
    let mut running = Vec::new();
    let mut healthy = Vec::new();
    for run in 0..runs {
        // Settle: every replica runs exactly once.
        let settle = Instant::now();
        loop {
            let placed = placement(&fleet, workload, None);
            let distinct: BTreeSet<u32> = placed.iter().map(|(r, _)| *r).collect();
            if placed.len() == replicas && distinct.len() == replicas {
                break;
            }
            if settle.elapsed() > Duration::from_secs(60) {
                let by_node: Vec<String> = placed
                    .iter()
                    .map(|(r, n)| format!("{r}@{}", fleet.agents[*n].name))
                    .collect();
                bail!(
                    "run {run}: the fleet did not settle ({} processes: {}); logs in {}",
                    placed.len(),
                    by_node.join(" "),
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // A victim other than node-1 (the apply target) with replicas, rotating.
        let placed = placement(&fleet, workload, None);
        let victim = (1..nodes)
            .map(|k| 1 + (run + k) % (nodes - 1))
            .find(|v| placed.iter().any(|(_, n)| n == v))
            .context("no node besides node-1 runs a replica")?;
        let lost: BTreeSet<u32> = placed
            .iter()
            .filter(|(_, n)| *n == victim)
            .map(|(r, _)| *r)
            .collect();
        let started = Instant::now();
        fleet.signal(victim, nix::sys::signal::Signal::SIGKILL);
        kill_replicas(&fleet.agents[victim].data_dir);
        let where_now = loop {
            let found = placement(&fleet, workload, Some(victim))
                .into_iter()
                .filter(|(r, _)| lost.contains(r))
                .collect::<Vec<_>>();
            let covered: BTreeSet<u32> = found.iter().map(|(r, _)| *r).collect();
            if covered == lost {
                break found;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "run {run}: {} was not replaced within 60 s",
                    fleet.agents[victim].name
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let t_running = started.elapsed().as_secs_f64() * 1e3;
        rt.block_on(async {
            for (index, node) in &where_now {
                while !healthy_on(&fleet, *node, workload, *index).await {
                    if started.elapsed() > Duration::from_secs(60) {
                        bail!("run {run}: replica {index} never became healthy");
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            anyhow::Ok(())
        })?;
        let t_healthy = started.elapsed().as_secs_f64() * 1e3;
        println!(
            "run {:2}: killed {} ({} replicas): running elsewhere after {t_running:.0} ms, healthy after {t_healthy:.0} ms",
            run + 1,
            fleet.agents[victim].name,
            lost.len()
        );
        running.push(t_running);
        healthy.push(t_healthy);
        fleet.spawn(victim)?;
        rt.block_on(wait_members(&fleet, nodes, Duration::from_secs(60)))?;
    }
    println!(
        "{}",
        summary(
            &format!("failover, {nodes} agents: replicas running elsewhere"),
            running
        )
    );
    println!(
        "{}",
        summary("                     replicas healthy", healthy)
    );
    fleet.stop();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}

/// Apply a new workload with one replica per node at one node; time until every replica
/// runs; delete it; repeat.
pub fn apply_latency(nodes: usize, runs: usize, extra: Vec<String>) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("starling-bench-apply-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut fleet = LocalFleet::start(&dir, nodes, extra)?;
    let rt = runtime()?;
    rt.block_on(wait_members(&fleet, nodes, Duration::from_secs(60)))?;
    let mut times = Vec::new();
    for run in 0..runs {
        let name = format!("bench-{run}");
        let at = run % nodes;
        let started = Instant::now();
        rt.block_on(apply(&fleet, at, spec(&name, nodes, false)?))?;
        loop {
            let placed = placement(&fleet, &name, None);
            let distinct: BTreeSet<u32> = placed.iter().map(|(r, _)| *r).collect();
            if distinct.len() == nodes {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("run {run}: {name} did not start everywhere within 60 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let t = started.elapsed().as_secs_f64() * 1e3;
        println!(
            "run {:2}: applied at {}, {nodes} replicas running after {t:.0} ms",
            run + 1,
            fleet.agents[at].name
        );
        times.push(t);
        rt.block_on(async {
            let mut client = fleet.client(at).await?;
            client
                .call(&ApiRequest::Delete {
                    name: starling_protocol::WorkloadName::new(&name)?,
                })
                .await?;
            anyhow::Ok(())
        })?;
        let gone = Instant::now();
        while !placement(&fleet, &name, None).is_empty() && gone.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!(
        "{}",
        summary(&format!("apply -> all running, {nodes} agents"), times)
    );
    fleet.stop();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}

/// Steady-state gossip and probe bytes per node per second, from every agent's metrics.
pub fn gossip(sizes: &[usize], seconds: u64, extra: Vec<String>) -> anyhow::Result<ExitCode> {
    for &nodes in sizes {
        let dir = std::env::temp_dir().join(format!(
            "starling-bench-gossip-{}-{nodes}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut fleet = LocalFleet::start(&dir, nodes, extra.clone())?;
        let rt = runtime()?;
        // Slow profiles spread 100 joins in minutes (metered: one peer per 25 s round).
        let joined = Instant::now();
        let wait = Duration::from_secs((nodes as u64 * 6).max(180));
        rt.block_on(wait_members(&fleet, nodes, wait))?;
        println!(
            "{nodes} agents started together all saw each other alive after {:.0} s",
            joined.elapsed().as_secs_f64()
        );
        // Let joins and first syncs pass.
        std::thread::sleep(Duration::from_secs(5));
        let read = |fleet: &LocalFleet| -> (u64, u64, BTreeMap<String, u64>) {
            let mut out = (0, 0, BTreeMap::new());
            for agent in &fleet.agents {
                let Some(text) = http_get(agent.base.port(), "/metrics") else {
                    continue;
                };
                for line in text.lines() {
                    let value = || {
                        line.split_whitespace()
                            .last()
                            .and_then(|v| v.parse::<u64>().ok())
                            .unwrap_or(0)
                    };
                    if line.starts_with("starling_gossip_bytes_total{direction=\"out\"}") {
                        out.0 += value();
                    } else if line.starts_with("starling_gossip_bytes_total{direction=\"in\"}") {
                        out.1 += value();
                    } else if let Some(rest) =
                        line.strip_prefix("starling_gossip_sent_bytes_total{kind=\"")
                        && let Some((kind, _)) = rest.split_once('"')
                    {
                        *out.2.entry(kind.to_string()).or_insert(0) += value();
                    }
                }
            }
            out
        };
        let (out0, in0, kinds0) = read(&fleet);
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(seconds));
        let (out1, in1, kinds1) = read(&fleet);
        let secs = t0.elapsed().as_secs_f64();
        let per_node = |bytes: u64| bytes as f64 / secs / nodes as f64;
        let per_node_out = per_node(out1 - out0);
        let per_node_in = per_node(in1 - in0);
        // 30 days of it, in decimal gigabytes as data plans count them.
        let month_gb = per_node_out * 30.0 * 86_400.0 / 1e9;
        println!(
            "gossip + probes, {nodes} agents, {seconds} s steady state: {per_node_out:.0} B/s sent ({month_gb:.2} GB a month) and {per_node_in:.0} B/s received per node"
        );
        let split: Vec<String> = kinds1
            .iter()
            .map(|(kind, after)| {
                let before = kinds0.get(kind).copied().unwrap_or(0);
                format!("{kind} {:.0}", per_node(after.saturating_sub(before)))
            })
            .collect();
        println!("  sent per node by kind, B/s: {}", split.join(", "));
        fleet.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(ExitCode::SUCCESS)
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}
