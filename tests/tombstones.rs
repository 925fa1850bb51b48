//! Tombstone collection on real agents: a node away longer than the tombstone grace comes
//! back with its old desired state on disk; what was deleted meanwhile must not come back, on
//! it or anywhere, and what was created meanwhile must reach it.

mod support;

use std::time::{Duration, Instant};

use support::{BIN, Fleet, spec, wait_for};

fn workloads(fleet: &Fleet, i: usize) -> Option<Vec<String>> {
    let rows = fleet.json(i, &["get", "workloads"])?;
    Some(
        rows.as_array()?
            .iter()
            .filter_map(|w| w.get("name")?.as_str().map(str::to_string))
            .collect(),
    )
}

fn log_of(fleet: &Fleet, i: usize) -> String {
    std::fs::read_to_string(fleet.nodes[i].dir.with_extension("log")).unwrap_or_default()
}

#[test]
fn a_node_back_after_the_grace_does_not_bring_a_deleted_workload_back() {
    let grace = Duration::from_secs(4);
    let mut fleet = Fleet::start_with(3, BIN.into(), &["--tombstone-grace", "4s"]);
    let tmp = fleet.tmp.path().to_path_buf();
    let sleeper = |name: &str, replicas: u32| {
        spec(
            &tmp,
            name,
            &format!(
                "name = \"{name}\"\ncommand = \"sleep\"\nargs = [\"600\"]\nreplicas = {replicas}\n\
                 [resources]\ncpu = \"10m\"\nmemory = \"1Mi\"\n"
            ),
        )
    };
    let (doomed, keep, fresh) = (
        sleeper("doomed", 3),
        sleeper("keep", 1),
        sleeper("fresh", 2),
    );
    for file in [&doomed, &keep] {
        let out = fleet.cli(0, &["apply", "-f", file]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_for("doomed on every node", Duration::from_secs(30), || {
        (fleet.live_processes("doomed") == 3).then_some(())
    });
    // node-3 goes away with doomed in its desired state; doomed is deleted, fresh created.
    fleet.crash(2);
    let out = fleet.cli(0, &["delete", "doomed"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = fleet.cli(1, &["apply", "-f", &fresh]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("doomed stopped", Duration::from_secs(20), || {
        (fleet.live_processes("doomed") == 0).then_some(())
    });
    // The tombstone goes once it is older than the grace (checked every grace / 4, 1 s here).
    wait_for(
        "the tombstone of doomed collected on node-1 and node-2",
        grace * 4,
        || {
            (log_of(&fleet, 0).contains("collected tombstones")
                && log_of(&fleet, 1).contains("collected tombstones"))
            .then_some(())
        },
    );
    // node-3 returns past the grace, with doomed still live in its desired.bin.
    let back = Instant::now();
    fleet.spawn(2);
    let mut most = 0;
    let settled = wait_for(
        "node-3 holds keep and fresh",
        Duration::from_secs(30),
        || {
            most = most.max(fleet.live_processes("doomed"));
            let mine = workloads(&fleet, 2)?;
            (mine.contains(&"keep".to_string()) && mine.contains(&"fresh".to_string()))
                .then_some(mine)
        },
    );
    // Watch a while longer: doomed must not start anywhere, nor reappear in any listing.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        most = most.max(fleet.live_processes("doomed"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let listings: Vec<Vec<String>> = (0..3).filter_map(|i| workloads(&fleet, i)).collect();
    println!(
        "node-3 settled {:.1} s after its return: {settled:?}; doomed processes seen at most: {most}",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(listings.len(), 3, "every node answers");
    for (i, names) in listings.iter().enumerate() {
        assert!(
            !names.contains(&"doomed".to_string()),
            "node-{} lists the deleted workload again: {names:?}\n--- node-3's log:\n{}",
            i + 1,
            log_of(&fleet, 2)
        );
    }
    assert_eq!(
        most, 0,
        "a deleted workload ran again after node-3 returned"
    );
    assert!(
        log_of(&fleet, 2).contains("dropped desired-state entries deleted elsewhere"),
        "node-3 says it forgot what was deleted while it was away"
    );
}
