//! Desired-state sync between real agents beyond what one message carries.

mod support;

use std::time::Duration;

use support::{Fleet, spec, wait_for};

/// A spec of about `kib` KiB of text (a large env map), with no replicas to run.
fn large_spec(name: &str, kib: usize) -> String {
    let mut text =
        format!("name = \"{name}\"\ncommand = \"sleep\"\nargs = [\"60\"]\nreplicas = 0\n[env]\n");
    for i in 0..kib {
        text.push_str(&format!("VAR_{i} = \"{}\"\n", "x".repeat(1_000)));
    }
    text
}

fn workloads(fleet: &Fleet, i: usize) -> Vec<String> {
    fleet
        .json(i, &["get", "workloads"])
        .and_then(|v| {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(|w| w["name"].as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[test]
fn a_node_that_missed_more_than_one_message_catches_up() {
    let mut fleet = Fleet::start(3);
    fleet.crash(2);
    // Five specs of ~0.98 MiB: 4.9 MiB missed, over the 4 MiB one message may carry.
    let mut names = Vec::new();
    for i in 0..5 {
        let name = format!("big-{i}");
        let file = spec(fleet.tmp.path(), &name, &large_spec(&name, 1_000));
        let out = fleet.cli(0, &["apply", "-f", &file]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        names.push(name);
    }
    fleet.spawn(2);
    // A small write after the backlog arrives too (it used to wait behind the failing pull).
    let small = spec(
        fleet.tmp.path(),
        "small",
        "name = \"small\"\ncommand = \"sleep\"\nargs = [\"60\"]\nreplicas = 0\n",
    );
    let out = fleet.cli(1, &["apply", "-f", &small]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    names.push("small".into());
    names.sort();
    wait_for(
        "the returning node holds all six workloads",
        Duration::from_secs(60),
        || {
            let mut held = workloads(&fleet, 2);
            held.sort();
            (held == names).then_some(())
        },
    );
    // It got them by pulling pages, not by one message over the limit.
    let log = std::fs::read_to_string(fleet.nodes[2].dir.with_extension("log")).unwrap_or_default();
    assert!(
        !log.contains("anti-entropy pull failed"),
        "no pull should fail on loopback:\n{log}"
    );
}
