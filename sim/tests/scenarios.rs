//! Every shipped scenario, for a fixed set of seeds plus a few fresh ones (printed, so a
//! failure can be replayed with `starling sim <file> --seed N`).

use std::hash::BuildHasher;
use std::path::PathBuf;

use starling_sim::{RunOptions, Scenario, report, run};

fn scenarios() -> Vec<(PathBuf, Scenario)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("sim/scenarios")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read scenario");
            let s = Scenario::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, s)
        })
        .collect()
}

/// Seeds that differ from run to run, drawn from the standard library's random hasher keys.
fn fresh_seeds(n: usize) -> Vec<u64> {
    (0..n)
        .map(|i| std::collections::hash_map::RandomState::new().hash_one(i) % 1_000_000)
        .collect()
}

#[test]
fn every_scenario_holds_its_invariants_for_fixed_and_fresh_seeds() {
    let all = scenarios();
    assert!(all.len() >= 8, "the eight required scenarios ship");
    let fresh = fresh_seeds(2);
    println!("fresh seeds this run: {fresh:?}");
    for (path, scenario) in &all {
        for seed in [1, 2, 3].into_iter().chain(fresh.iter().copied()) {
            let r = run(scenario, seed, RunOptions::default());
            assert!(
                r.violation.is_none(),
                "{}",
                report::summary(&r, &path.display().to_string())
            );
            let end = r.last_fault_end_ms;
            if end + 1 < r.duration_ms {
                assert!(
                    r.converged_at_ms.is_some(),
                    "{} seed {seed} did not converge",
                    scenario.name
                );
            }
        }
    }
}

#[test]
fn the_same_seed_replays_the_same_run() {
    for (path, scenario) in scenarios()
        .iter()
        .filter(|(p, _)| p.ends_with("site-partition.toml") || p.ends_with("churn.toml"))
    {
        let a = run(scenario, 7, RunOptions::default());
        let b = run(scenario, 7, RunOptions::default());
        assert_eq!(a.trace_hash, b.trace_hash, "{}", path.display());
        assert_eq!(report::summary(&a, "x"), report::summary(&b, "x"));
        assert_eq!(report::svg(&a), report::svg(&b));
        let c = run(scenario, 8, RunOptions::default());
        assert_ne!(a.trace_hash, c.trace_hash, "another seed is another run");
    }
}

#[test]
fn an_injected_bug_is_caught_by_the_invariants() {
    let (path, scenario) = scenarios()
        .into_iter()
        .find(|(p, _)| p.ends_with("site-partition.toml"))
        .expect("scenario");
    let caught = (1..=5)
        .map(|seed| {
            run(
                &scenario,
                seed,
                RunOptions {
                    bug_minority_takes_over: true,
                },
            )
        })
        .find(|r| r.violation.is_some());
    let r = caught.expect("a minority side replacing replicas is caught within five seeds");
    let v = r.violation.as_ref().expect("violation");
    assert_eq!(
        v.invariant,
        "minority-replacement",
        "{}",
        report::summary(&r, &path.display().to_string())
    );
    assert!(
        !v.trace.is_empty(),
        "the report carries the events before the violation"
    );
    let summary = report::summary(&r, "sim/scenarios/site-partition.toml");
    assert!(summary.contains(&format!(
        "reproduce with: starling sim sim/scenarios/site-partition.toml --seed {}",
        r.seed
    )));
}
