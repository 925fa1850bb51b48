//! `starling bench lease`: holder loss to a new active singleton instance, on real agents.
//!
//! A local fleet runs one singleton (`sleep`, lease TTL from `--ttl`). Each run kills the
//! machine of the holder (its agent and the instance) and times until a live instance runs on
//! another node; it checks that instance's fencing token (from its environment) is larger and
//! that no two instances ever ran at once, then restarts the victim and lets placement settle.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use starling_protocol::spec::WorkloadSpec;

use super::bench_fleet::{apply, kill_replicas, live_replicas, runtime, summary, wait_members};
use super::up::LocalFleet;

const WORKLOAD: &str = "leader";

/// The token in a live instance's environment.
fn token_of(pid: i64) -> u64 {
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    env.split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix("STARLING_LEASE_TOKEN="))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// Live instances: (node index, pid).
fn instances(fleet: &LocalFleet) -> Vec<(usize, i64)> {
    let mut out = Vec::new();
    for (i, agent) in fleet.agents.iter().enumerate() {
        if agent.child.is_some() {
            out.extend(
                live_replicas(&agent.data_dir, WORKLOAD)
                    .into_iter()
                    .map(|(_, pid)| (i, pid)),
            );
        }
    }
    out
}

fn wait_single(fleet: &LocalFleet, dir: &Path, run: usize) -> anyhow::Result<(usize, i64)> {
    let started = Instant::now();
    let mut stable_since: Option<(Instant, (usize, i64))> = None;
    loop {
        let live = instances(fleet);
        match (live.as_slice(), stable_since) {
            ([one], Some((since, seen))) if seen == *one => {
                if since.elapsed() > Duration::from_secs(1) {
                    return Ok(*one);
                }
            }
            ([one], _) => stable_since = Some((Instant::now(), *one)),
            _ => stable_since = None,
        }
        if started.elapsed() > Duration::from_secs(90) {
            bail!(
                "run {run}: no single stable instance ({live:?}); logs in {}",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kill the holder's machine `runs` times; time until another node's instance runs.
pub fn lease(nodes: usize, runs: usize, ttl: &str, extra: Vec<String>) -> anyhow::Result<ExitCode> {
    if nodes < 3 {
        bail!("--nodes must be at least 3 (a majority must survive the holder)");
    }
    starling_protocol::quantity::parse_duration_ms(ttl)
        .map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
    let dir = std::env::temp_dir().join(format!("starling-bench-lease-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut fleet = LocalFleet::start(&dir, nodes, extra)?;
    let rt = runtime()?;
    let spec = WorkloadSpec::from_toml(&format!(
        "name = \"{WORKLOAD}\"\nsingleton = true\nlease_ttl = \"{ttl}\"\ncommand = \"sleep\"\n\
         args = [\"3600\"]\n[resources]\ncpu = \"10m\"\nmemory = \"1Mi\"\n"
    ))
    .map_err(|e| anyhow::anyhow!("--ttl {ttl}: {e}"))?;
    rt.block_on(async {
        wait_members(&fleet, nodes, Duration::from_secs(60)).await?;
        apply(&fleet, 0, spec).await
    })?;
    let mut times = Vec::new();
    for run in 0..runs {
        let (holder, pid) = wait_single(&fleet, &dir, run)?;
        let token = token_of(pid);
        let started = Instant::now();
        fleet.signal(holder, nix::sys::signal::Signal::SIGKILL);
        kill_replicas(&fleet.agents[holder].data_dir);
        let (next, next_pid) = loop {
            let live: Vec<(usize, i64)> = instances(&fleet)
                .into_iter()
                .filter(|(n, _)| *n != holder)
                .collect();
            if live.len() > 1 {
                bail!("run {run}: two instances at once: {live:?}");
            }
            if let Some(one) = live.first() {
                break *one;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "run {run}: no new instance within 60 s; logs in {}",
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let t = started.elapsed().as_secs_f64() * 1e3;
        let next_token = token_of(next_pid);
        if next_token <= token {
            bail!("run {run}: token {next_token} after {token}: fencing tokens must grow");
        }
        println!(
            "run {:2}: killed holder {} (token {token}): {} active after {t:.0} ms (token {next_token})",
            run + 1,
            fleet.agents[holder].name,
            fleet.agents[next].name
        );
        times.push(t);
        fleet.spawn(holder).context("restart the victim")?;
        rt.block_on(wait_members(&fleet, nodes, Duration::from_secs(60)))?;
        // Placement may hand the singleton back to the restarted node after its move hold.
        std::thread::sleep(Duration::from_secs(12));
    }
    println!(
        "{}",
        summary(
            &format!("lease failover, {nodes} agents, ttl {ttl}: new active instance"),
            times
        )
    );
    fleet.stop();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}
