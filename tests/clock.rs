//! Agents whose wall clock is wrong (`STARLING_FAULT_CLOCK_OFFSET_MS`): a device without a
//! real-time clock boots with an old time until NTP steps it.

mod support;

use std::time::Duration;

use support::{Fleet, wait_for};

#[test]
fn a_restart_with_the_clock_set_back_is_heard_by_its_peers() {
    let mut fleet = Fleet::start(3);
    let name = fleet.nodes[2].name.clone();
    fleet.crash(2);
    wait_for("the peers miss it", Duration::from_secs(30), || {
        (fleet.state_of(0, &name).as_deref() != Some("alive")).then_some(())
    });
    // Ten minutes back: its start-up time is now older than its previous start's, which its
    // peers remember as its generation (packets from older generations are replays).
    fleet.spawn_env(2, &[("STARLING_FAULT_CLOCK_OFFSET_MS", "-600000")]);
    wait_for(
        "both peers hear the node again, and it hears them",
        Duration::from_secs(30),
        || {
            let peers_hear = (0..2).all(|i| fleet.state_of(i, &name).as_deref() == Some("alive"));
            let it_hears = fleet.nodes[..2]
                .iter()
                .all(|peer| fleet.state_of(2, &peer.name).as_deref() == Some("alive"));
            (peers_hear && it_hears).then_some(())
        },
    );
    let log = std::fs::read_to_string(fleet.nodes[2].dir.with_extension("log")).unwrap_or_default();
    assert!(
        log.contains("STARLING_FAULT_CLOCK_OFFSET_MS=-600000"),
        "the agent says its clock is shifted:\n{log}"
    );
}
