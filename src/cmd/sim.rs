//! `starling sim`: run a scenario on the deterministic simulator, for one seed or many.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use starling_sim::{RunOptions, RunReport, Scenario, report, run};

/// `starling sim`.
#[derive(clap::Args)]
pub struct SimArgs {
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
    /// Turn on the core's deliberate rollout bug (every replica moves to a new revision at
    /// once) to show the rollout-budget invariant catches it.
    #[arg(long, hide = true)]
    bug_rollout_ignores_budget: bool,
}

pub fn main(args: SimArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.scenario)
        .with_context(|| format!("cannot read {}", args.scenario.display()))?;
    let scenario = Scenario::from_toml(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.scenario.display()))?;
    let options = RunOptions {
        bug_minority_takes_over: args.bug_minority_takes_over,
        bug_rollout_ignores_budget: args.bug_rollout_ignores_budget,
        ..RunOptions::default()
    };
    let path = args.scenario.display().to_string();
    match (&args.seeds, args.seed) {
        (Some(range), _) => many(&scenario, &path, range, options),
        (None, seed) => {
            let seed = seed.unwrap_or(1);
            let r = run(&scenario, seed, options);
            print!("{}", report::summary(&r, &path));
            if let Some(out) = &args.report {
                write_report(out, &r)?;
                println!("picture    {}", out.display());
            }
            Ok(if r.as_expected() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn write_report(out: &Path, r: &RunReport) -> anyhow::Result<()> {
    std::fs::write(out, report::svg(r)).with_context(|| format!("cannot write {}", out.display()))
}

/// Runs seeds `a..b` (end exclusive) on every core and lists the failing ones.
fn many(
    scenario: &Scenario,
    path: &str,
    range: &str,
    options: RunOptions,
) -> anyhow::Result<ExitCode> {
    let (a, b) = range
        .split_once("..")
        .with_context(|| format!("--seeds expects A..B, got {range:?}"))?;
    let (a, b): (u64, u64) = (
        a.parse().context("--seeds start")?,
        b.parse().context("--seeds end")?,
    );
    if b <= a {
        bail!("--seeds {range}: the range is empty");
    }
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min((b - a) as usize);
    let next = std::sync::atomic::AtomicU64::new(a);
    let failures = std::sync::Mutex::new(Vec::<RunReport>::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= b {
                        return;
                    }
                    let r = run(scenario, seed, options);
                    if !r.as_expected() {
                        failures.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    failures.sort_by_key(|r| r.seed);
    println!(
        "scenario {}: {} seeds ({a}..{b}), {} failed",
        scenario.name,
        b - a,
        failures.len()
    );
    if let Some(expected) = &scenario.expect_violation {
        println!("  (built to fail: a failed seed is one where {expected} was NOT detected)");
    }
    for r in &failures {
        if r.violation.is_none() {
            println!(
                "  seed {}: the expected violation was not detected  (reproduce: starling sim {path} --seed {})",
                r.seed, r.seed
            );
        }
        if let Some(v) = &r.violation {
            println!(
                "  seed {}: {} at {:.3} s: {}  (reproduce: starling sim {path} --seed {})",
                r.seed,
                v.invariant,
                v.at_ms as f64 / 1000.0,
                v.detail,
                r.seed
            );
        }
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
