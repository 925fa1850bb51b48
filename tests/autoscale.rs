//! The autoscaler on real agents: replicas that burn CPU (measured per replica) make the
//! holder of the workload's lease scale it up to its bound; once they go idle it scales down
//! to the minimum after the cool-down; when the scaler's node dies, another node scales. Every
//! count is written by one node at a time (the lease), and the write names it.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{BIN, Fleet, spec, wait_for};

/// Each replica burns a core for 60 s from its start, then idles: long enough that the
/// scaler is crashed while the load lasts even on a slow machine (with 25 s, a CI run saw the
/// first scaler scale down before its crash, leaving nothing for its successor to do).
const BURN: &str = "name = \"burn\"\ncommand = \"sh\"\n\
    args = [\"-c\", \"end=$(( $(date +%s) + 60 )); while [ $(date +%s) -lt $end ]; do :; done; exec sleep 3600\"]\n\
    replicas = 1\n\
    [resources]\ncpu = \"100m\"\nmemory = \"8Mi\"\n\
    [scaling]\nmin = 1\nmax = 3\nmetric = \"cpu\"\ntarget = 50\n";

fn count(fleet: &Fleet, i: usize) -> Option<u64> {
    let v = fleet.json(i, &["get", "workloads"])?;
    v.as_array()?
        .iter()
        .find(|w| w["name"] == "burn")
        .and_then(|w| w["replicas"].as_u64())
}

fn describe(fleet: &Fleet, i: usize) -> Option<Value> {
    fleet.json(i, &["describe", "burn"])
}

#[test]
fn burning_replicas_scale_up_to_the_bound_then_down_after_the_cool_down_by_one_scaler() {
    let mut fleet = Fleet::start_with(
        3,
        BIN.into(),
        &[
            "--scale-up-window-ms",
            "3000",
            "--scale-down-window-ms",
            "15000",
            "--scale-settle-ms",
            "5000",
        ],
    );
    fleet.wait_members(3);
    let file = spec(fleet.tmp.path(), "burn", BURN);
    let out = fleet.cli(0, &["apply", "-f", &file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    wait_for("burn scaled up to 3", Duration::from_secs(90), || {
        (count(&fleet, 0)? == 3).then_some(())
    });
    let d = describe(&fleet, 0).expect("describe");
    let by = d["written_by"].as_str().unwrap_or_default().to_string();
    assert!(by.ends_with("(autoscaler)"), "{d}");
    let scaler = d["autoscaler"]["scaler"]
        .as_str()
        .expect("a scaler is elected")
        .to_string();
    assert!(
        by.starts_with(&scaler),
        "the scaler wrote it: {by} vs {scaler}"
    );
    eprintln!("scaled up to 3 by {scaler}");

    // The scaler's node dies; another node takes the lease and scales the (now idle, once
    // the replacements have burnt out) workload down to its minimum.
    let victim = ["node-1", "node-2", "node-3"]
        .iter()
        .position(|n| *n == scaler)
        .expect("a fleet node");
    fleet.crash(victim);
    let asker = (victim + 1) % 3;
    let d = wait_for("burn scaled down to 1", Duration::from_secs(180), || {
        let d = describe(&fleet, asker)?;
        (count(&fleet, asker)? == 1).then_some(d)
    });
    let by = d["written_by"].as_str().unwrap_or_default().to_string();
    assert!(by.ends_with("(autoscaler)"), "{d}");
    assert!(
        !by.starts_with(&scaler),
        "a new scaler wrote the scale-down: {by}\n{d:#}"
    );
    let decisions = d["autoscaler"]["decisions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    eprintln!("scaled down to 1 by {by}; decisions at the answering node: {decisions:?}");
}
