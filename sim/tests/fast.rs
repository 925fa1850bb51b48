//! The fast gossip model: real cores at fleet scale. The 10,000-node scenario itself runs in
//! `scenarios.rs`; these use smaller fleets so they can run many seeds.

use starling_sim::{RunOptions, Scenario, report, run};

/// The shipped 10k churn scenario scaled down to `nodes` (replicas and timings kept in
/// proportion to the fleet's tenth).
fn churn(nodes: usize) -> Scenario {
    let text = include_str!("../scenarios/churn-10k.toml")
        .replace("nodes = 10000", &format!("nodes = {nodes}"))
        .replace("replicas = 300", "replicas = 30")
        .replace("replicas = 400", "replicas = 40")
        .replace("replicas = 100", "replicas = 10")
        .replace("duration = \"60m\"", "duration = \"12m\"")
        .replace("duration = \"40m\"", "duration = \"4m\"")
        .replace("at = \"10m\"", "at = \"6m\"");
    Scenario::from_toml(&text).expect("scenario")
}

/// A fleet that loses 60% of its nodes for two minutes, then gets them back.
fn majority_lost() -> Scenario {
    Scenario::from_toml(
        r#"
name = "majority lost"
duration = "6m"
[fleet]
nodes = 300
[gossip]
model = "fast"
interval = "1s"
suspect_after = "3s"
down_after = "6s"
[[workloads]]
name = "web"
command = "web"
replicas = 60
[[faults]]
at = "1m"
kind = "crash"
nodes = ["random:60%"]
[[faults]]
at = "3m"
kind = "restart"
nodes = ["all"]
[check]
converge_within = "90s"
"#,
    )
    .expect("scenario")
}

#[test]
fn a_churning_fleet_holds_every_invariant_and_converges() {
    let scenario = churn(1_000);
    for seed in 1..=3 {
        let r = run(&scenario, seed, RunOptions::default());
        let summary = report::summary(&r, "churn-1k");
        assert!(r.violation.is_none(), "{summary}");
        assert!(r.converged_at_ms.is_some(), "{summary}");
        assert!(r.counters.moved > 0, "churn moves replicas: {summary}");
        // Three exchanges of two messages per node per round.
        let per_node_per_s =
            r.counters.messages as f64 / r.nodes as f64 / (r.duration_ms as f64 / 1000.0);
        assert!((5.0..=6.5).contains(&per_node_per_s), "{per_node_per_s}");
    }
}

#[test]
fn the_fast_model_replays_a_seed_byte_for_byte() {
    let scenario = churn(500);
    let a = run(&scenario, 7, RunOptions::default());
    let b = run(&scenario, 7, RunOptions::default());
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(report::summary(&a, "x"), report::summary(&b, "x"));
    assert_eq!(report::svg(&a), report::svg(&b));
    let c = run(&scenario, 8, RunOptions::default());
    assert_ne!(a.trace_hash, c.trace_hash, "another seed is another run");
    // Other instance numbers: the same moments, other decisions (see `scenarios.rs`).
    let shifted = run(
        &scenario,
        7,
        RunOptions {
            instance_offset: 1_000,
            ..RunOptions::default()
        },
    );
    assert_eq!(a.schedule_hash, shifted.schedule_hash, "the same moments");
    assert_ne!(a.trace_hash, shifted.trace_hash, "other decisions");
}

#[test]
fn a_minority_keeps_its_own_and_the_fleet_recovers_when_the_majority_returns() {
    let scenario = majority_lost();
    for seed in 1..=3 {
        let r = run(&scenario, seed, RunOptions::default());
        let summary = report::summary(&r, "majority-lost");
        assert!(r.violation.is_none(), "{summary}");
        assert!(r.converged_at_ms.is_some(), "{summary}");
        let during = r
            .samples
            .iter()
            .find(|s| s.at_ms == 150_000)
            .expect("a sample at 150 s");
        assert!(
            during.node_states.iter().filter(|s| **s == 4).count() >= 100,
            "the survivors know they are a minority"
        );
        assert!(
            during.running < 60,
            "replicas of crashed nodes are not replaced"
        );
    }
}

#[test]
fn an_injected_bug_is_caught_in_the_fast_model() {
    let scenario = majority_lost();
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
        .find(|r| r.violation.is_some())
        .expect("a minority replacing replicas is caught within five seeds");
    let v = caught.violation.as_ref().expect("violation");
    assert_eq!(v.invariant, "minority-replacement");
    assert!(!v.trace.is_empty(), "the events before it are reported");
}

#[test]
fn the_fast_model_names_what_it_cannot_simulate() {
    let base = "name = \"x\"\nduration = \"1m\"\n[gossip]\nmodel = \"fast\"\n";
    let partition = format!(
        "{base}[[faults]]\nat = \"10s\"\nkind = \"partition\"\ngroups = [[\"random:1\"]]\n"
    );
    let e = Scenario::from_toml(&partition).expect_err("partition refused");
    assert!(e.to_string().contains("faults[0].kind: partition"), "{e}");
    assert!(e.to_string().contains("mesh"), "{e}");
    let singleton =
        format!("{base}[[workloads]]\nname = \"db\"\ncommand = \"db\"\nsingleton = true\n");
    let e = Scenario::from_toml(&singleton).expect_err("lease refused");
    assert!(e.to_string().contains("workloads[0].singleton"), "{e}");
    let e = Scenario::from_toml(&format!("{base}[gossip]\nfanout = 0\n"));
    assert!(e.is_err());
    let mesh_fanout = "name = \"x\"\nduration = \"1m\"\n[gossip]\nfanout = 3\n";
    let e = Scenario::from_toml(mesh_fanout).expect_err("fanout needs the fast model");
    assert!(e.to_string().contains("gossip.fanout"), "{e}");
}

#[test]
fn a_write_reaches_every_node_in_logarithmic_rounds_and_the_cores_act_on_it() {
    let text = include_str!("../scenarios/churn-10k.toml")
        .replace("nodes = 10000", "nodes = 2000")
        .replace("replicas = 300", "replicas = 20")
        .replace("replicas = 400", "replicas = 20")
        .replace("replicas = 100", "replicas = 10")
        .replace("duration = \"60m\"", "duration = \"4m\"");
    let text = text[..text.find("[[faults]]").expect("faults")].to_string()
        + r#"
[[faults]]
at = "1m"
kind = "write"
nodes = ["random:1"]
[faults.spec]
name = "worker"
command = "work"
args = ["--v2"]
replicas = 20
[faults.spec.update]
batch_size = 20
max_surge = 20
min_healthy = "0s"
"#;
    let scenario = Scenario::from_toml(&text).expect("scenario");
    let r = run(&scenario, 3, RunOptions::default());
    let summary = report::summary(&r, "write-2k");
    assert!(r.violation.is_none(), "{summary}");
    let rounds = r.counters.write_rounds.expect("the write spread");
    assert!((3..=15).contains(&rounds), "{summary}");
    // 50 first starts, then the 20 workers restart with the new revision.
    assert_eq!(r.counters.starts, 70, "{summary}");
    assert!(summary.contains(&format!("reached every up node in {rounds} rounds")));
}
