//! `starling bench`: figures that matter, measured, for docs/BENCHMARKS.md.

use std::process::ExitCode;

use anyhow::bail;
use starling_sim::epidemic::disseminate;

/// Rounds for one desired-state write to reach every node, over `seeds` seeds.
pub fn dissemination(nodes: usize, fanout: usize, seeds: u64) -> anyhow::Result<ExitCode> {
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
