//! Leader election end to end: real agents on loopback elect one holder of a singleton's
//! lease, the active instance gets the fencing token (environment, file, local HTTP), and when
//! the holder's machine dies another node's instance becomes active with a larger token.
//! Scripts use the same election through `starling lease acquire/release`.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Fleet, http_get, spec, wait_for};

/// Live `leader` processes: (node name, token its environment carried), from the file each
/// instance writes at start.
fn instances(fleet: &Fleet) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for node in &fleet.nodes {
        for pid in support::pids(&node.dir, "leader") {
            if !support::alive(pid) {
                continue;
            }
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let token = env
                .split(|b| *b == 0)
                .filter_map(|kv| std::str::from_utf8(kv).ok())
                .find_map(|kv| kv.strip_prefix("STARLING_LEASE_TOKEN="))
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            out.push((node.name.clone(), token));
        }
    }
    out
}

/// Applies the `leader` singleton (TTL 2 s, plus `extra` lines) at node `at`.
fn apply_leader(fleet: &Fleet, at: usize, extra: &str) {
    let file = spec(
        fleet.tmp.path(),
        "leader",
        &format!(
            "name = \"leader\"\nsingleton = true\nlease_ttl = \"2s\"\n{extra}\n\
             command = \"sleep\"\nargs = [\"1000\"]\n[resources]\ncpu = \"10m\"\nmemory = \"8Mi\"\n"
        ),
    );
    let out = fleet.cli(at, &["apply", "-f", &file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn lease_json(fleet: &Fleet, node: &str) -> Option<Value> {
    let base: std::net::SocketAddr = fleet
        .nodes
        .iter()
        .find(|n| n.name == node)?
        .base
        .parse()
        .ok()?;
    let body = http_get(base, "/v1/leases/leader")?;
    let json = body.split("\r\n\r\n").nth(1)?;
    serde_json::from_str(json).ok()
}

#[test]
fn the_holders_instance_is_the_only_one_and_a_new_holder_takes_over_with_a_larger_token() {
    let mut fleet = Fleet::start(3);
    apply_leader(&fleet, 1, "");
    let (holder, token) = wait_for("one active instance", Duration::from_secs(30), || {
        let live = instances(&fleet);
        (live.len() == 1 && live[0].1 > 0).then(|| live[0].clone())
    });
    // The holder's agent says so on its local HTTP endpoint, and the others agree on who.
    let info = wait_for("the lease endpoint", Duration::from_secs(10), || {
        lease_json(&fleet, &holder).filter(|v| v["active"] == true)
    });
    assert_eq!(info["token"].as_u64(), Some(token), "{info}");
    let file_text = std::fs::read_to_string(
        fleet
            .node_dir(&holder)
            .join("runtime/replicas/leader-0/lease"),
    )
    .expect("the lease file in the replica's directory");
    assert!(file_text.contains(&format!("token={token}")), "{file_text}");
    let leases = wait_for(
        "every node sees the holder",
        Duration::from_secs(10),
        || {
            let all: Vec<Value> = (0..3)
                .filter_map(|i| fleet.json(i, &["get", "leases"]))
                .collect();
            (all.len() == 3
                && all
                    .iter()
                    .all(|v| v[0]["holder"] == holder.as_str() && v[0]["token"] == token))
            .then_some(all)
        },
    );
    assert_eq!(leases.len(), 3);

    // The holder's machine dies: after its grants lapse another node holds a larger token, and
    // only its instance runs.
    let victim = fleet
        .nodes
        .iter()
        .position(|n| n.name == holder)
        .expect("holder");
    fleet.crash(victim);
    let (next, next_token) = wait_for("a new active instance", Duration::from_secs(30), || {
        let live = instances(&fleet);
        (live.len() == 1 && live[0].0 != holder).then(|| live[0].clone())
    });
    assert!(next_token > token, "token {next_token} after {token}");
    let info = wait_for("the new holder's endpoint", Duration::from_secs(10), || {
        lease_json(&fleet, &next).filter(|v| v["active"] == true)
    });
    assert_eq!(info["token"].as_u64(), Some(next_token));
    let survivor = (0..3)
        .find(|i| *i != victim && fleet.nodes[*i].name != next)
        .expect("third");
    let other = lease_json(&fleet, &fleet.nodes[survivor].name);
    assert!(
        other.as_ref().is_none_or(|v| v["active"] == false),
        "the third node is not active: {other:?}"
    );
    // Stays that way.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(instances(&fleet), vec![(next, next_token)]);
}

#[test]
fn scripts_acquire_and_release_leases_through_any_node() {
    let fleet = Fleet::start(3);
    let first = fleet.json(
        0,
        &["lease", "acquire", "jobs", "--ttl", "2s", "--wait", "20s"],
    );
    let first = first.expect("node-1 acquires the lease");
    assert_eq!(first["holder"], "node-1");
    let token = first["token"].as_u64().expect("token");
    // Held by node-1 and renewed: node-2 cannot have it.
    let out = fleet.cli(
        1,
        &["lease", "acquire", "jobs", "--ttl", "2s", "--wait", "3s"],
    );
    assert!(!out.status.success(), "node-2 must not get a held lease");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not held yet"), "{err}");
    // node-1 releases; node-2 (still campaigning) gets it with a larger token.
    let out = fleet.cli(0, &["lease", "release", "jobs"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = wait_for("node-2 holds it", Duration::from_secs(20), || {
        fleet
            .json(
                1,
                &["lease", "acquire", "jobs", "--ttl", "2s", "--wait", "1s"],
            )
            .filter(|v| v["holder"] == "node-2")
    });
    assert!(second["token"].as_u64().expect("token") > token);
    // Bad input is refused with the field named.
    let out = fleet.cli(
        0,
        &["lease", "acquire", "jobs", "--ttl", "10ms", "--wait", "0s"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ttl"));
    let voters = fleet.json(2, &["voters"]).expect("voters");
    assert_eq!(
        voters["voters"].as_array().map(Vec::len),
        Some(3),
        "{voters}"
    );
}

#[test]
fn a_warm_standby_becomes_active_without_a_restart_when_the_holder_dies() {
    let mut fleet = Fleet::start(3);
    apply_leader(&fleet, 0, "standbys = 1");
    // Two instances on two nodes; exactly one of them is active.
    let (active, standby) = wait_for(
        "an active instance and a standby",
        Duration::from_secs(30),
        || {
            let live = instances(&fleet);
            if live.len() != 2 || live[0].0 == live[1].0 {
                return None;
            }
            let states: Vec<(String, bool)> = live
                .iter()
                .map(|(node, _)| {
                    let active = lease_json(&fleet, node).is_some_and(|v| v["active"] == true);
                    (node.clone(), active)
                })
                .collect();
            let actives: Vec<&(String, bool)> = states.iter().filter(|s| s.1).collect();
            (actives.len() == 1 && states.iter().filter(|s| !s.1).count() == 1).then(|| {
                let a = actives[0].0.clone();
                let b = states
                    .iter()
                    .find(|s| !s.1)
                    .map(|s| s.0.clone())
                    .unwrap_or_default();
                (a, b)
            })
        },
    );
    let token = lease_json(&fleet, &active)
        .and_then(|v| v["token"].as_u64())
        .expect("token");
    let standby_pid = support::pids(fleet.node_dir(&standby), "leader")
        .into_iter()
        .find(|p| support::alive(*p))
        .expect("the standby runs");
    let victim = fleet
        .nodes
        .iter()
        .position(|n| n.name == active)
        .expect("active node");
    fleet.crash(victim);
    let info = wait_for("the standby active", Duration::from_secs(30), || {
        lease_json(&fleet, &standby).filter(|v| v["active"] == true)
    });
    assert!(info["token"].as_u64().expect("token") > token, "{info}");
    assert!(
        support::alive(standby_pid),
        "the standby took over in place, without a restart"
    );
}
