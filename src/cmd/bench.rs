//! `starling bench`: figures that matter, measured, for docs/BENCHMARKS.md.

use std::process::ExitCode;

#[cfg(feature = "sim")]
use anyhow::bail;
#[cfg(feature = "sim")]
use starling_sim::epidemic::disseminate;

// `bench_dns.rs` sits beside this file; only `bench` uses it.
#[path = "bench_dns.rs"]
mod bench_dns;
// Declared here rather than in `cmd/mod.rs`: only `bench` uses it.
#[path = "bench_proxy.rs"]
mod bench_proxy;

/// `starling bench`.
#[derive(clap::Subcommand)]
pub enum BenchKind {
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
    #[cfg(feature = "sim")]
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
    /// The agent's DNS server in process: answers per second and latency for concurrent UDP
    /// clients asking A and SRV of 50 services with 3 instances each.
    Dns {
        /// Seconds to measure.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent clients, each waiting for its answer before the next query.
        #[arg(long, default_value_t = 16)]
        clients: usize,
    },
    /// Requests per second and p50/p99 latency of small HTTP/1.1 requests: straight to a
    /// backend, through the agent's proxy, and through HAProxy (`mode tcp`) if installed;
    /// keep-alive and a new connection per request.
    Proxy {
        /// Concurrent client connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Seconds to measure each case.
        #[arg(long, default_value_t = 4)]
        seconds: u64,
        /// Threads the proxy under test may use (tokio workers; HAProxy's `nbthread`).
        #[arg(long, default_value_t = 1)]
        proxy_threads: usize,
        /// The HAProxy binary.
        #[arg(long, default_value = "haproxy")]
        haproxy: String,
        /// Leave threads unpinned (by default the client side runs on CPU 0, the proxy on CPU 1).
        #[arg(long)]
        no_pin: bool,
        /// Times every case runs, interleaved; the table shows medians. On a busy machine,
        /// run under `chrt -f 1` too, so other processes do not preempt the measured ones.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
}

/// Runs one benchmark.
pub fn run(what: BenchKind) -> anyhow::Result<ExitCode> {
    match what {
        BenchKind::Failover {
            nodes,
            runs,
            agent_flags,
        } => super::bench_fleet::failover(nodes, runs, agent_flags),
        BenchKind::Apply {
            nodes,
            runs,
            agent_flags,
        } => super::bench_fleet::apply_latency(nodes, runs, agent_flags),
        BenchKind::Lease {
            nodes,
            runs,
            ttl,
            agent_flags,
        } => super::bench_lease::lease(nodes, runs, &ttl, agent_flags),
        BenchKind::Gossip {
            nodes,
            seconds,
            agent_flags,
        } => super::bench_fleet::gossip(&nodes, seconds, agent_flags),
        #[cfg(feature = "sim")]
        BenchKind::Dissemination {
            nodes,
            fanout,
            seeds,
        } => dissemination(nodes, fanout, seeds),
        BenchKind::Dns { seconds, clients } => bench_dns::dns(seconds, clients),
        BenchKind::Proxy {
            connections,
            seconds,
            proxy_threads,
            haproxy,
            no_pin,
            rounds,
        } => bench_proxy::proxy(bench_proxy::ProxyBench {
            connections,
            seconds,
            proxy_threads,
            haproxy,
            pin: !no_pin,
            rounds,
        }),
    }
}

/// Rounds for one desired-state write to reach every node, over `seeds` seeds.
#[cfg(feature = "sim")]
fn dissemination(nodes: usize, fanout: usize, seeds: u64) -> anyhow::Result<ExitCode> {
    if nodes == 0 || nodes > 1_000_000 || seeds == 0 {
        bail!("--nodes must be 1..=1000000 and --seeds at least 1");
    }
    let started = std::time::Instant::now();
    let mut rounds = Vec::new();
    for seed in 1..=seeds {
        match disseminate(nodes, fanout, seed) {
            Some(d) => rounds.push(d.rounds),
            None => bail!(
                "seed {seed}: the write did not reach every node within 1000 rounds (fanout {fanout})"
            ),
        }
    }
    rounds.sort_unstable();
    let p = |q: f64| rounds[((rounds.len() - 1) as f64 * q).round() as usize];
    println!(
        "dissemination of one write: {nodes} nodes, fanout {fanout}, {seeds} seeds: rounds min {} / p50 {} / p99 {} / max {}  ({:.1} s)",
        rounds[0],
        p(0.5),
        p(0.99),
        rounds[rounds.len() - 1],
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
