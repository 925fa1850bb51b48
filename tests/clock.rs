//! Agents whose wall clock is wrong (`STARLING_FAULT_CLOCK_OFFSET_MS`): a device without a
//! real-time clock boots with an old time until NTP steps it.

mod support;

use std::time::Duration;

use support::{Fleet, wait_for};

fn state_of(fleet: &Fleet, asker: usize, node: &str) -> Option<String> {
    let nodes = fleet.json(asker, &["get", "nodes"])?;
    nodes
        .as_array()?
        .iter()
        .find(|n| n["node"] == node)
        .and_then(|n| n["state"].as_str().map(str::to_string))
}

#[test]
fn a_restart_with_the_clock_set_back_is_heard_by_its_peers() {
    let mut fleet = Fleet::start(3);
    let name = fleet.nodes[2].name.clone();
    fleet.crash(2);
    wait_for("the peers miss it", Duration::from_secs(30), || {
        (state_of(&fleet, 0, &name).as_deref() != Some("alive")).then_some(())
    });
    // Ten minutes back: its start-up time is now older than its previous start's, which its
    // peers remember as its generation (packets from older generations are replays).
    fleet.spawn_env(2, &[("STARLING_FAULT_CLOCK_OFFSET_MS", "-600000")]);
    wait_for(
        "both peers hear the node again, and it hears them",
        Duration::from_secs(30),
        || {
            let peers_hear = (0..2).all(|i| state_of(&fleet, i, &name).as_deref() == Some("alive"));
            let it_hears = fleet.nodes[..2]
                .iter()
                .all(|peer| state_of(&fleet, 2, &peer.name).as_deref() == Some("alive"));
            (peers_hear && it_hears).then_some(())
        },
    );
    let log = std::fs::read_to_string(fleet.nodes[2].dir.with_extension("log")).unwrap_or_default();
    assert!(
        log.contains("STARLING_FAULT_CLOCK_OFFSET_MS=-600000"),
        "the agent says its clock is shifted:\n{log}"
    );
}
