//! Power loss during an apply storm: the agent is SIGKILLed at a random point while clients
//! apply specs as fast as they can, then started again on the same data dir. Every write it
//! acknowledged must be there, and every store file must still read (the agent starts).
//!
//! SIGKILL loses what the process held, not what the kernel's page cache held: it tests that
//! every write is atomic (write, fsync, rename, fsync the dir) and that an answer is sent only
//! after it, not that the fsyncs reach the platter.

mod support;

use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{Fleet, signal, spec, wait_for};

/// Applies `w-<client>-<k>` for k = 0, 1, ... at node 0 until `stop`, recording the
/// acknowledged names.
fn storm(
    fleet: &Fleet,
    client: usize,
    until: Instant,
    acked: &Arc<Mutex<BTreeSet<String>>>,
    round: usize,
) {
    let mut k = 0;
    while Instant::now() < until {
        let name = format!("w-{round}-{client}-{k}");
        let file = spec(
            fleet.tmp.path(),
            &name,
            &format!("name = \"{name}\"\ncommand = \"sleep\"\nargs = [\"600\"]\nreplicas = 0\n"),
        );
        let out = fleet.cli(0, &["apply", "-f", &file]);
        if out.status.success() {
            acked.lock().expect("lock").insert(name);
        }
        k += 1;
    }
}

#[test]
fn every_acknowledged_write_survives_a_kill_during_an_apply_storm() {
    let mut fleet = Fleet::start(1);
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let rounds = 4;
    let mut answered_after = Vec::new();
    for round in 0..rounds {
        // Somewhere in the first 1.5 s of the storm; printed so a failure can be told apart.
        let kill_after_ms =
            300 + std::collections::hash_map::RandomState::new().hash_one(round) % 1_200;
        let until = Instant::now() + Duration::from_millis(kill_after_ms + 1_000);
        let agent = i64::from(fleet.nodes[0].child.as_ref().expect("running").id());
        std::thread::scope(|scope| {
            for client in 0..4 {
                let (fleet, acked) = (&fleet, &acked);
                scope.spawn(move || storm(fleet, client, until, acked, round));
            }
            std::thread::sleep(Duration::from_millis(kill_after_ms));
            signal(agent, Signal::SIGKILL);
        });
        fleet.crash(0);
        let before = acked.lock().expect("lock").len();
        fleet.spawn(0);
        let started = Instant::now();
        let listed: BTreeSet<String> =
            wait_for("the agent answers again", Duration::from_secs(30), || {
                fleet
                    .workload_names(0)
                    .map(|names| names.into_iter().collect())
            });
        answered_after.push(started.elapsed());
        let acked = acked.lock().expect("lock").clone();
        let lost: Vec<&String> = acked.difference(&listed).collect();
        println!(
            "round {round}: killed {kill_after_ms} ms into the storm; {before} writes acknowledged so far, {} listed after the restart ({:.1} s to answer)",
            listed.len(),
            started.elapsed().as_secs_f64()
        );
        assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    }
    let log = std::fs::read_to_string(fleet.nodes[0].dir.with_extension("log")).unwrap_or_default();
    for bad in ["corrupt", "cannot read", "ignoring the stored"] {
        assert!(
            !log.contains(bad),
            "a store file did not read after a kill ({bad:?} in the agent's log)"
        );
    }
    assert!(
        acked.lock().expect("lock").len() > 10,
        "the storm wrote something"
    );
}
