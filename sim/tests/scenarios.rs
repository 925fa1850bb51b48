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

/// Fleets this large run one fixed seed in CI (about a minute each); `starling sim` runs more.
const LARGE_FLEET: usize = 1_000;

#[test]
fn every_scenario_holds_its_invariants_for_fixed_and_fresh_seeds() {
    let all = scenarios();
    assert!(all.len() >= 8, "the eight required scenarios ship");
    let fresh = fresh_seeds(2);
    println!("fresh seeds this run: {fresh:?}");
    for (path, scenario) in &all {
        let seeds: Vec<u64> = if scenario.fleet.nodes > LARGE_FLEET {
            vec![1]
        } else {
            [1, 2, 3].into_iter().chain(fresh.iter().copied()).collect()
        };
        for seed in seeds {
            let r = run(scenario, seed, RunOptions::default());
            // A scenario built to break an invariant must break exactly that one.
            assert!(
                r.as_expected(),
                "{}",
                report::summary(&r, &path.display().to_string())
            );
            if r.expected_violation.is_some() {
                continue;
            }
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
    for (path, scenario) in scenarios().iter().filter(|(p, _)| {
        p.ends_with("site-partition.toml")
            || p.ends_with("churn.toml")
            || p.ends_with("lease-skew-within-bound.toml")
            || p.ends_with("planned-restart.toml")
    }) {
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
fn the_trace_hash_sees_decisions_not_only_the_schedule() {
    // Shifting every instance number changes what the cores decide (the instances they start
    // and stop, as the runtime then reports them) and nothing of when anything happens: the
    // schedule hash stays, the trace hash moves. A hash of times, kinds and nodes alone would
    // call the two runs equal.
    for file in [
        "site-partition.toml",
        "planned-restart.toml",
        "lease-holder-crash.toml",
    ] {
        let (path, s) = scenario(file);
        let a = run(&s, 7, RunOptions::default());
        let b = run(&s, 7, RunOptions::default());
        assert_eq!(
            (a.trace_hash, a.schedule_hash),
            (b.trace_hash, b.schedule_hash),
            "{path}"
        );
        let shifted = RunOptions {
            instance_offset: 1_000,
            ..RunOptions::default()
        };
        let c = run(&s, 7, shifted);
        assert_eq!(a.schedule_hash, c.schedule_hash, "{path}: the same moments");
        assert_eq!(a.counters.starts, c.counters.starts, "{path}");
        assert_ne!(a.trace_hash, c.trace_hash, "{path}: other decisions");
    }
}

#[test]
fn a_rollout_past_its_budget_is_caught_and_the_real_gate_holds() {
    let (path, scenario) = scenarios()
        .into_iter()
        .find(|(p, _)| p.ends_with("rollout.toml"))
        .expect("scenario");
    let buggy = run(
        &scenario,
        1,
        RunOptions {
            bug_rollout_ignores_budget: true,
            ..RunOptions::default()
        },
    );
    let v = buggy
        .violation
        .as_ref()
        .expect("every replica moving at once breaks the budget");
    assert_eq!(
        v.invariant,
        "rollout-budget",
        "{}",
        report::summary(&buggy, &path.display().to_string())
    );
    for seed in 1..=3 {
        let r = run(&scenario, seed, RunOptions::default());
        assert!(
            r.violation.is_none(),
            "{}",
            report::summary(&r, &path.display().to_string())
        );
        assert_eq!(
            r.counters.rollbacks, 1,
            "the bad revision is rolled back once"
        );
    }
}

#[test]
fn the_lease_holder_alone_scales_an_autoscaled_workload_to_its_bound() {
    let (path, scenario) = scenarios()
        .into_iter()
        .find(|(p, _)| p.ends_with("autoscale.toml"))
        .expect("scenario");
    for seed in 1..=3 {
        let r = run(&scenario, seed, RunOptions::default());
        let summary = report::summary(&r, &path.display().to_string());
        assert!(r.violation.is_none(), "{summary}");
        assert!(
            r.counters.scales >= 2,
            "2 -> 4 -> 6 by its scaler: {summary}"
        );
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
                    ..RunOptions::default()
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

fn scenario(file: &str) -> (String, Scenario) {
    let (path, s) = scenarios()
        .into_iter()
        .find(|(p, _)| p.ends_with(file))
        .unwrap_or_else(|| panic!("{file} ships"));
    (path.display().to_string(), s)
}

fn seeds() -> Vec<u64> {
    let fresh = fresh_seeds(2);
    println!("fresh seeds this run: {fresh:?}");
    [1, 2, 3].into_iter().chain(fresh).collect()
}

#[test]
fn clocks_jumping_beyond_the_drift_bound_are_caught_as_two_lease_holders() {
    let (path, scenario) = scenario("lease-skew-beyond-bound.toml");
    assert_eq!(scenario.expect_violation.as_deref(), Some("lease-holders"));
    for seed in (1..=20).chain(fresh_seeds(2)) {
        let r = run(&scenario, seed, RunOptions::default());
        let summary = report::summary(&r, &path);
        let v = r.violation.as_ref().unwrap_or_else(|| panic!("{summary}"));
        assert_eq!(v.invariant, "lease-holders", "{summary}");
        assert!(v.detail.contains("two valid holders"), "{summary}");
        assert!(!v.trace.is_empty(), "{summary}");
        assert!(summary.contains("detected as it should be"), "{summary}");
        assert!(
            summary.contains(&format!(
                "reproduce with: starling sim {path} --seed {seed}"
            )),
            "{summary}"
        );
    }
}

#[test]
fn the_within_bound_scenario_uses_the_whole_margin() {
    // The same clock jumps against a bound 100 ms smaller than they are: two holders. So the
    // scenario that holds with the true bound exercises it to the last 100 ms.
    let (path, mut scenario) = scenario("lease-skew-within-bound.toml");
    scenario.leases.max_drift_ms = 400;
    for seed in 1..=5 {
        let r = run(&scenario, seed, RunOptions::default());
        let invariant = r.violation.as_ref().map(|v| v.invariant.as_str());
        assert_eq!(
            invariant,
            Some("lease-holders"),
            "{}",
            report::summary(&r, &path)
        );
    }
}

/// Spans of holders that overlap `[from, to)` (simulator ms).
fn held_between(lease: &starling_sim::LeaseFacts, from: u64, to: u64) -> Vec<(usize, u64, u64)> {
    lease
        .spans
        .iter()
        .filter(|s| s.from_ms < to && s.until_ms > from && s.until_ms > s.from_ms)
        .map(|s| (s.node, s.from_ms, s.until_ms))
        .collect()
}

#[test]
fn lease_scenarios_tell_their_story() {
    for seed in seeds() {
        // A crashed holder is replaced within detection plus a TTL, twice, with larger tokens.
        let (path, s) = scenario("lease-holder-crash.toml");
        let r = run(&s, seed, RunOptions::default());
        let summary = report::summary(&r, &path);
        let db = r.leases.first().unwrap_or_else(|| panic!("{summary}"));
        assert!(r.violation.is_none() && db.quorum, "{summary}");
        assert!(db.holder_changes >= 2 && db.max_token >= 3, "{summary}");
        assert!(db.longest_gap_ms < 6_000, "{summary}");
        assert!(db.holder_at_end.is_some(), "{summary}");
        assert!(summary.contains("lease      db (quorum)"), "{summary}");
        assert!(
            report::svg(&r).contains("lease db"),
            "the picture has a lease row"
        );

        // A holder cut into a minority steps down; the majority elects within seconds.
        let (path, s) = scenario("lease-minority-holder.toml");
        let r = run(&s, seed, RunOptions::default());
        let summary = report::summary(&r, &path);
        let db = r.leases.first().unwrap_or_else(|| panic!("{summary}"));
        let before = held_between(db, 29_000, 30_000);
        let during = held_between(db, 40_000, 90_000);
        assert!(r.violation.is_none() && before.len() == 1, "{summary}");
        assert!(
            !during.is_empty() && during.iter().all(|d| d.0 != before[0].0),
            "{summary}"
        );
        assert!(db.holder_at_end.is_some(), "{summary}");

        // An even split elects nobody while it lasts, and somebody after the heal.
        let (path, s) = scenario("lease-even-split.toml");
        let r = run(&s, seed, RunOptions::default());
        let summary = report::summary(&r, &path);
        let db = r.leases.first().unwrap_or_else(|| panic!("{summary}"));
        assert!(r.violation.is_none(), "{summary}");
        assert_eq!(held_between(db, 32_000, 90_000), vec![], "{summary}");
        assert!(db.holder_at_end.is_some(), "{summary}");
        // Stopped during the split, the report says why nobody holds it.
        let mut split = s.clone();
        split.duration_ms = 60_000;
        let r = run(&split, seed, RunOptions::default());
        let summary = report::summary(&r, &path);
        assert!(
            summary.contains(
                "no holder at the end: no side has a majority of the 4 voters: largest side sees 2"
            ),
            "{summary}"
        );

        // Skew within the bound: never two holders, and the handovers come close to the
        // margin.
        let (path, s) = scenario("lease-skew-within-bound.toml");
        let r = run(&s, seed, RunOptions::default());
        let summary = report::summary(&r, &path);
        let db = r.leases.first().unwrap_or_else(|| panic!("{summary}"));
        assert!(r.violation.is_none() && db.holder_changes >= 3, "{summary}");
        assert!(
            db.tightest_handover_ms.is_some_and(|t| t < 200),
            "{summary}"
        );
    }
}

#[test]
fn quorum_lease_scenarios_hold_for_a_thousand_seeds() {
    // 250 seeds of each of the four quorum scenarios that must hold, on every core. The long
    // run (5000 seeds each) is in docs/BENCHMARKS.md.
    let files = [
        "lease-holder-crash.toml",
        "lease-minority-holder.toml",
        "lease-even-split.toml",
        "lease-skew-within-bound.toml",
    ];
    let jobs: Vec<(String, Scenario, u64)> = files
        .iter()
        .flat_map(|f| {
            let (path, s) = scenario(f);
            (1..=250).map(move |seed| (path.clone(), s.clone(), seed))
        })
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while let Some((path, s, seed)) =
                    jobs.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                {
                    let r = run(s, *seed, RunOptions::default());
                    if !r.as_expected() {
                        let mut f = failures.lock().unwrap_or_else(|e| e.into_inner());
                        f.push(report::summary(&r, path));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn nodes_back_from_a_restart_run_nothing_twice_beyond_one_handover() {
    let (path, s) = scenario("restart-with-peers.toml");
    for seed in seeds() {
        let r = run(&s, seed, RunOptions::default());
        let summary = report::summary(&r, &path);
        assert!(r.violation.is_none(), "{summary}");
        // node-01 restarts from its disk, node-02's and node-03's agents restart.
        assert_eq!(r.returns.returns, 3, "{summary}");
        assert!(
            r.returns.duplicate_ms_max > 0,
            "node-01 takes its replicas back make before break: {summary}"
        );
        assert!(
            r.returns.duplicate_ms_max <= r.returns.bound_ms,
            "{summary}"
        );
        assert!(r.converged_at_ms.is_some(), "{summary}");
        assert!(
            summary.contains("returns    3 nodes back from a restart"),
            "{summary}"
        );
    }
}

#[test]
fn a_planned_restart_replaces_nothing_and_runs_nothing_twice() {
    let (path, s) = scenario("planned-restart.toml");
    for seed in seeds() {
        let r = run(&s, seed, RunOptions::default());
        let summary = report::summary(&r, &path);
        assert!(
            r.violation.is_none() && r.converged_at_ms.is_some(),
            "{summary}"
        );
        assert_eq!(r.returns.returns, 5, "{summary}");
        assert_eq!(
            r.returns.duplicate_ms_max, 0,
            "not one copy twice: {summary}"
        );
        // 11 first starts; afterwards only the singleton starts again: on another node while
        // its holder restarts, and back home after it (the other replicas are adopted).
        let db = r.leases.first().unwrap_or_else(|| panic!("{summary}"));
        assert!(
            db.holder_changes >= 2,
            "the singleton moved and came back: {summary}"
        );
        assert_eq!(
            r.counters.starts,
            11 + db.holder_changes as u64,
            "only the singleton moves: {summary}"
        );
        assert!(db.holder_at_end.is_some(), "{summary}");
        assert!(
            r.samples.iter().any(|p| p.node_states.contains(&5)),
            "the timeline shows agents away: {summary}"
        );
    }
}

#[test]
fn the_restart_checks_catch_what_they_are_built_for_and_nothing_else() {
    // Without the rejoin wait, a restarted node takes its replicas back before it heard where
    // they went; a planned restart that outlasts its window has its replicas replaced while
    // they still run. With the wait, and with an honest window, the same runs are clean.
    let cases = [
        ("restart-without-rejoin-wait.toml", "moved-back-early"),
        ("planned-restart-beyond-window.toml", "returning-duplicates"),
    ];
    for (file, invariant) in cases {
        let (path, s) = scenario(file);
        assert_eq!(s.expect_violation.as_deref(), Some(invariant));
        for seed in (1..=20).chain(fresh_seeds(2)) {
            let r = run(&s, seed, RunOptions::default());
            let summary = report::summary(&r, &path);
            let v = r.violation.as_ref().unwrap_or_else(|| panic!("{summary}"));
            assert_eq!(v.invariant, invariant, "{summary}");
            assert!(summary.contains("detected as it should be"), "{summary}");
        }
        let mut fixed = s.clone();
        fixed.expect_violation = None;
        fixed.gossip.rejoin_wait_ms = 5_000;
        fixed.gossip.restart_window_ms = 60_000;
        for seed in 1..=5 {
            let r = run(&fixed, seed, RunOptions::default());
            assert!(r.violation.is_none(), "{}", report::summary(&r, &path));
        }
    }
}

#[test]
fn an_exact_majority_on_lossy_links_keeps_its_lease_holder() {
    // Before renewals were re-sent within a round, this run elected 10-11 times in 3 minutes
    // (the same holder, losing and re-taking the lease, 5-9 s without a holder each run).
    let (path, s) = scenario("lease-lossy-majority.toml");
    for seed in [1, 2, 3] {
        let r = run(&s, seed, RunOptions::default());
        let lease = r.leases.first().expect("the singleton's lease");
        println!(
            "seed {seed}: {} elections, {} holder changes, {} ms without a holder",
            lease.elections, lease.holder_changes, lease.without_holder_ms
        );
        assert!(
            lease.elections <= 2 && lease.holder_changes == 0,
            "{path} seed {seed}: the holder lost the lease on lossy links\n{}",
            report::summary(&r, &path)
        );
    }
}

#[test]
fn on_lossy_links_the_detectors_rarely_doubt_a_live_node_and_never_for_long() {
    // 11 nodes, 8% loss, 5-120 ms latency, 10 minutes: with fixed 100/250 ms ack waits the
    // detectors held live nodes suspect for 5,030-5,593 observer-seconds (seeds 1-3); with
    // waits that follow each link's round trip, 591-641.
    let (path, s) = scenario("watchers-lossy.toml");
    for seed in [1, 2] {
        let r = run(&s, seed, RunOptions::default());
        let c = &r.counters;
        println!(
            "seed {seed}: doubts {} ms ({} ms down), longest {} ms",
            c.doubt_ms, c.doubt_down_ms, c.doubt_longest_ms
        );
        let summary = report::summary(&r, &path);
        assert!(
            c.doubt_ms < 1_500_000,
            "{path} seed {seed}: too many doubts\n{summary}"
        );
        assert_eq!(
            c.doubt_down_ms, 0,
            "{path} seed {seed}: a live node held down\n{summary}"
        );
        assert!(
            c.doubt_longest_ms < 5_000,
            "{path} seed {seed}: a doubt lasted\n{summary}"
        );
        assert_eq!(
            c.moved, 0,
            "{path} seed {seed}: a replica moved on doubt\n{summary}"
        );
    }
}
