//! Two operators writing one workload at two peers at once: the revision ids tell the writes
//! apart, the overwritten one stays on record at every node, and `--if-revision` lets a script
//! fail instead of racing.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Fleet, spec, wait_for};

fn racer(arg: &str) -> String {
    format!("name = \"racer\"\ncommand = \"sleep\"\nargs = [\"{arg}\"]\nreplicas = 0\n")
}

/// Applies and returns the revision id the answering peer gave.
fn apply(fleet: &Fleet, i: usize, file: &str, extra: &[&str]) -> Result<String, String> {
    let mut args = vec!["apply", "-f", file, "-o", "json"];
    args.extend(extra);
    let out = fleet.cli(i, &args);
    if !out.status.success() {
        return Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    v["revision_id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no revision_id in {v}"))
}

fn describe(fleet: &Fleet, i: usize) -> Option<Value> {
    fleet.json(i, &["describe", "racer"])
}

#[test]
fn concurrent_writes_are_told_apart_and_the_loser_is_on_record() {
    let mut fleet = Fleet::start(3);
    let dir = fleet.tmp.path().to_path_buf();
    let first = apply(&fleet, 0, &spec(&dir, "v1", &racer("1")), &[]).expect("first write");
    assert!(first.starts_with("1@"), "{first}");
    wait_for(
        "every node holds revision 1",
        Duration::from_secs(20),
        || {
            (0..3)
                .all(|i| describe(&fleet, i).is_some_and(|d| d["revision_id"] == first.as_str()))
                .then_some(())
        },
    );

    // Node 1 is down while node 0 takes a write; then nodes 0 and 2 are down while node 1
    // takes another: neither writer saw the other's write, both made theirs from revision 1.
    // (Crashes, not pauses: a paused agent still finds the push in its socket when it wakes.)
    fleet.crash(1);
    let a = apply(&fleet, 0, &spec(&dir, "v2a", &racer("2")), &[]).expect("write at node 0");
    wait_for(
        "node 2 holds node 0's write",
        Duration::from_secs(20),
        || {
            describe(&fleet, 2)
                .is_some_and(|d| d["revision_id"] == a.as_str())
                .then_some(())
        },
    );
    fleet.crash(0);
    fleet.crash(2);
    fleet.spawn(1);
    let v2b = spec(&dir, "v2b", &racer("3"));
    let b = wait_for("node 1 takes a write", Duration::from_secs(20), || {
        apply(&fleet, 1, &v2b, &[]).ok()
    });
    fleet.spawn(0);
    fleet.spawn(2);

    // Both writers were told revision 2; the ids differ.
    assert!(a.starts_with("2@") && b.starts_with("2@"), "{a} {b}");
    assert_ne!(a, b);
    // Node 1's write is stamped later by its clock: it wins everywhere, and every node says
    // node 0's write was overwritten, by whom and where.
    let node0 = fleet.nodes[0].name.clone();
    let settled = wait_for(
        "every node holds node 1's write and the record of node 0's",
        Duration::from_secs(30),
        || {
            let all: Vec<Value> = (0..3).filter_map(|i| describe(&fleet, i)).collect();
            (all.len() == 3
                && all.iter().all(|d| {
                    d["revision_id"] == b.as_str()
                        && d["overwritten"]
                            .as_array()
                            .is_some_and(|o| o.len() == 1 && o[0]["revision_id"] == a.as_str())
                }))
            .then_some(all)
        },
    );
    let lost = &settled[2]["overwritten"][0];
    assert_eq!(lost["peer"], node0.as_str());
    assert!(
        lost["by"]
            .as_str()
            .is_some_and(|by| by.starts_with("operator ")),
        "{lost}"
    );
    let table = fleet.cli(2, &["describe", "racer"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("overwritten") && text.contains(&a),
        "describe shows the overwritten write:\n{text}"
    );

    // Compare-and-set: a script that last saw node 0's write fails, and changes nothing.
    let v3 = spec(&dir, "v3", &racer("4"));
    let refused = apply(&fleet, 0, &v3, &["--if-revision", &a]).expect_err("stale revision");
    assert!(
        refused.contains(&format!("is at revision {b}")) && refused.contains("nothing was changed"),
        "{refused}"
    );
    assert!(apply(&fleet, 0, &v3, &["--if-revision", "1"]).is_err());
    assert_eq!(
        describe(&fleet, 0).map(|d| d["revision_id"].clone()),
        Some(Value::from(b.as_str()))
    );
    // The current one, by id or by number, goes through.
    let c = apply(&fleet, 0, &v3, &["--if-revision", &b]).expect("current revision");
    assert!(c.starts_with("3@"), "{c}");
    let d = apply(
        &fleet,
        0,
        &spec(&dir, "v4", &racer("5")),
        &["--if-revision", "3"],
    )
    .expect("current number");
    assert!(d.starts_with("4@"), "{d}");
    // 0 means "must not exist yet".
    assert!(apply(&fleet, 0, &v3, &["--if-revision", "0"]).is_err());
    let fresh = "name = \"fresh\"\ncommand = \"sleep\"\nargs = [\"1\"]\nreplicas = 0\n";
    let e = apply(
        &fleet,
        0,
        &spec(&dir, "fresh", fresh),
        &["--if-revision", "0"],
    )
    .expect("a new workload");
    assert!(e.starts_with("1@"), "{e}");
    // A malformed revision is refused before anything is sent.
    let bad = apply(&fleet, 0, &v3, &["--if-revision", "two"]).expect_err("malformed");
    assert!(bad.contains("not a revision"), "{bad}");
}
