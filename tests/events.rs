//! `starling get events` against real agents: each node keeps its own events on disk, and the
//! node asked merges the fleet's by HLC.

mod support;

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{BIN, Fleet, spec, wait_for};

/// The events of a `get events -o json` answer at node `i`.
fn events(fleet: &Fleet, i: usize, extra: &[&str]) -> Option<(Vec<Value>, Value)> {
    let mut args = vec!["get", "events", "--limit", "2000"];
    args.extend(extra);
    let page = fleet.json(i, &args)?;
    Some((page["events"].as_array()?.clone(), page))
}

/// (ms, logical, node) of an event's `hlc` (`MS.LOGICAL@NODE`).
fn hlc(event: &Value) -> (u64, u32, String) {
    let text = event["hlc"].as_str().expect("an hlc");
    let (time, node) = text.split_once('@').expect("MS.LOGICAL@NODE");
    let (ms, logical) = time.split_once('.').expect("MS.LOGICAL");
    (
        ms.parse().expect("ms"),
        logical.parse().expect("logical"),
        node.to_string(),
    )
}

fn sleepers(fleet: &Fleet, name: &str, replicas: u32) -> String {
    spec(
        fleet.tmp.path(),
        name,
        &format!(
            "name = \"{name}\"\ncommand = \"sleep\"\nargs = [\"600\"]\nreplicas = {replicas}\n\
             [resources]\ncpu = \"10m\"\nmemory = \"1Mi\"\n"
        ),
    )
}

fn apply(fleet: &Fleet, i: usize, file: &str) {
    let out = fleet.cli(i, &["apply", "-f", file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_fleets_events_survive_a_crash_and_read_in_hlc_order_from_any_node() {
    let mut fleet = Fleet::start(3);
    apply(&fleet, 0, &sleepers(&fleet, "web", 3));
    apply(&fleet, 0, &sleepers(&fleet, "other", 1));
    let placed = wait_for("4 replicas running", Duration::from_secs(30), || {
        let running = fleet.running(0)?;
        (running.len() == 4).then_some(running)
    });
    // The victim runs a replica of web and is not node-1, which the test asks.
    let victim_name = placed
        .iter()
        .find(|(w, _, n)| w == "web" && n != "node-1")
        .map(|(_, _, n)| n.clone())
        .expect("a web replica off node-1");
    let victim = fleet
        .nodes
        .iter()
        .position(|n| n.name == victim_name)
        .expect("victim");
    // What the victim recorded before it crashes: its starts of the replicas it runs.
    let before = wait_for("the victim's starts", Duration::from_secs(20), || {
        let (all, _) = events(&fleet, 0, &[])?;
        let theirs: Vec<Value> = all
            .into_iter()
            .filter(|e| e["node"] == victim_name.as_str() && e["kind"] == "started")
            .collect();
        (!theirs.is_empty()).then_some(theirs)
    });
    fleet.crash(victim);

    // Another node takes the victim's replica and records it as a failover.
    let (all, page) = wait_for("a failover event", Duration::from_secs(40), || {
        let (all, page) = events(&fleet, 0, &[])?;
        all.iter()
            .any(|e| e["kind"] == "failover" && e["workload"] == "web")
            .then_some((all, page))
    });
    let recorders: std::collections::BTreeSet<&str> =
        all.iter().filter_map(|e| e["node"].as_str()).collect();
    assert!(
        recorders.len() >= 2,
        "events of at least two nodes, got {recorders:?}"
    );
    assert!(
        all.iter()
            .any(|e| e["kind"] == "node-down"
                && e["text"].as_str().unwrap_or("").contains(&victim_name)),
        "the victim's loss is an event"
    );
    let order: Vec<(u64, u32, String)> = all.iter().map(hlc).collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "events in strict HLC order, each once: {order:?}"
    );
    let missing = page["missing"].as_array().expect("missing");
    assert!(
        missing.iter().any(|m| m["node"] == victim_name.as_str()),
        "the down node is named as missing: {page}"
    );

    // --workload keeps that workload's events only, the failover among them; asked at the
    // other survivor, which answers for the fleet as well.
    let other = (1..3).find(|i| *i != victim).expect("a second survivor");
    let (web, _) = events(&fleet, other, &["--workload", "web"]).expect("web's events");
    assert!(!web.is_empty());
    assert!(web.iter().all(|e| e["workload"] == "web"), "{web:?}");
    assert!(web.iter().any(|e| e["kind"] == "failover"));
    assert!(
        all.iter().any(|e| e["workload"] == "other"),
        "the unfiltered events hold the other workload's"
    );

    // The victim comes back: what it recorded before the crash is there again, fleet-wide.
    fleet.spawn(victim);
    fleet.wait_members(3);
    let hlcs: Vec<String> = before
        .iter()
        .map(|e| e["hlc"].as_str().expect("hlc").to_string())
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = events(&fleet, 0, &[]);
        let found = page.as_ref().is_some_and(|(all, _)| {
            hlcs.iter()
                .all(|h| all.iter().any(|e| e["hlc"] == h.as_str()))
        });
        if found {
            break;
        }
        if std::time::Instant::now() > deadline {
            let own = events(&fleet, victim, &[]).map(|(all, page)| {
                let theirs: Vec<String> = all
                    .iter()
                    .filter(|e| e["node"] == victim_name.as_str())
                    .map(|e| format!("{} {}", e["hlc"], e["text"]))
                    .collect();
                (theirs, page["missing"].clone())
            });
            panic!(
                "the victim's earlier events {hlcs:?} are not in node-1's answer (missing: {:?}); \
                 the victim's own events and missing peers: {own:?}",
                page.as_ref().map(|(_, p)| p["missing"].clone())
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn follow_prints_new_events_as_they_are_recorded() {
    let fleet = Fleet::start(2);
    let mut follower = Command::new(BIN)
        .arg("--cluster-dir")
        .arg(&fleet.client)
        .args(["--peer", &fleet.nodes[1].base])
        .args(["get", "events", "--follow", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("follower starts");
    let stdout = follower.stdout.take().expect("stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    // Written after the follow began: its events arrive as new lines.
    apply(&fleet, 0, &sleepers(&fleet, "late", 1));
    let mut seen = Vec::new();
    let found = wait_for("the new workload's start", Duration::from_secs(30), || {
        while let Ok(line) = lines.try_recv() {
            let event: Value = serde_json::from_str(&line).expect("one JSON event per line");
            seen.push(event);
        }
        seen.iter()
            .find(|e| e["workload"] == "late" && e["kind"] == "started")
            .cloned()
    });
    assert!(found["text"].as_str().unwrap_or("").contains("late/0"));
    let hlcs: Vec<&str> = seen.iter().filter_map(|e| e["hlc"].as_str()).collect();
    let unique: std::collections::BTreeSet<&&str> = hlcs.iter().collect();
    assert_eq!(unique.len(), hlcs.len(), "no event printed twice");
    let _ = follower.kill();
    let _ = follower.wait();
}
