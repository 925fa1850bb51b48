//! One node id, one node: a join under a member's id is refused, a refused join leaves nothing
//! behind, the default id is unique per device and stable, and a clone of a member's data dir
//! started next to it neither takes the member's place nor its replicas.

mod support;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{BIN, Fleet, free_base, signal, spec, wait_for};

const SLEEPERS: &str = "name = \"sleepers\"\ncommand = \"sleep\"\nargs = [\"600\"]\nreplicas = 4\n\
     [resources]\ncpu = \"10m\"\nmemory = \"1Mi\"\n";

fn token(fleet: &Fleet) -> String {
    let out = Command::new(BIN)
        .args(["token", "create", "--data-dir"])
        .arg(&fleet.nodes[0].dir)
        .output()
        .expect("token create runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn join(dir: &Path, token: &str, node_id: Option<&str>) -> Output {
    let mut command = Command::new(BIN);
    command.arg("join").arg("--data-dir").arg(dir).arg(token);
    if let Some(id) = node_id {
        command.args(["--node-id", id]);
    }
    command.output().expect("join runs")
}

/// Where each running replica of the fleet is, as node `i` reports it, sorted.
fn placement(fleet: &Fleet, i: usize) -> Option<Vec<(String, u64, String)>> {
    let mut running = fleet.running(i)?;
    running.sort();
    Some(running)
}

fn agent(dir: &Path, base: &str, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log");
    Command::new(BIN)
        .arg("agent")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", base, "--stop-grace-ms", "500"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("agent starts")
}

fn stop(child: &mut Child) {
    signal(i64::from(child.id()), Signal::SIGTERM);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(i64::from(child.id()), Signal::SIGKILL);
    let _ = child.wait();
    panic!("the agent did not stop within 15 s of SIGTERM");
}

fn alive_ids(fleet: &Fleet, i: usize) -> Vec<String> {
    let nodes = fleet.json(i, &["get", "nodes"]).unwrap_or_default();
    let mut ids: Vec<String> = nodes
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|n| n["state"] == "alive")
                .filter_map(|n| n["node"].as_str())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

#[test]
fn a_join_under_a_members_id_is_refused_and_a_retry_under_a_new_default_id_works() {
    let fleet = Fleet::start(3);
    let file = spec(fleet.tmp.path(), "sleepers", SLEEPERS);
    let out = fleet.cli(0, &["apply", "-f", &file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = wait_for(
        "4 replicas running, seen alike by every node",
        Duration::from_secs(30),
        || {
            let first = placement(&fleet, 0).filter(|r| r.len() == 4)?;
            (1..3)
                .all(|i| placement(&fleet, i).as_ref() == Some(&first))
                .then_some(first)
        },
    );
    let token = token(&fleet);

    // The clash: a new device that asks for node-3's id, which is alive.
    let dir = fleet.tmp.path().join("newcomer");
    let out = join(&dir, &token, Some("node-3"));
    assert!(!out.status.success(), "a second node-3 must be refused");
    let err = text(&out.stderr);
    assert!(
        err.contains("node id node-3 is already a member"),
        "the error names the id: {err}"
    );
    assert!(
        err.contains("--node-id") && err.contains("starling node remove node-3"),
        "the error says what to do: {err}"
    );
    assert!(
        !dir.join("identity.bin").exists() && !dir.join("cluster/node.pem").exists(),
        "a refused join leaves no identity behind"
    );
    // The agent's --join path refuses it the same way, and never runs.
    let out = Command::new(BIN)
        .arg("agent")
        .arg("--data-dir")
        .arg(&dir)
        .args([
            "--node-id",
            "node-2",
            "--listen",
            &free_base(),
            "--join",
            &token,
        ])
        .output()
        .expect("agent runs");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("node id node-2 is already a member"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.join("identity.bin").exists());

    // The fleet did not notice: the same members, the same placement.
    for i in 0..3 {
        assert_eq!(alive_ids(&fleet, i), ["node-1", "node-2", "node-3"]);
        assert_eq!(placement(&fleet, i).as_ref(), Some(&before));
    }

    // The retry, same data dir and same token (a refused join does not spend it), no id:
    // the default id, host name plus a suffix, printed.
    let out = join(&dir, &token, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    let id = said
        .split("joined as node ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .expect("the join prints the node id")
        .to_string();
    let (_, suffix) = id.rsplit_once('-').expect("a suffix");
    assert!(
        suffix.len() == 4 && suffix.chars().all(|c| c.is_ascii_hexdigit()),
        "the default id ends in four hex digits: {id}"
    );
    assert!(!id.starts_with("node-3") && !id.starts_with("node-2"));
    // Each step was said on stderr as it happened, in order, as lines a log can keep.
    let steps = text(&out.stderr);
    let order = [
        format!("join: token for 1 seed(s), cluster CA pinned; joining as node {id}"),
        "join: contacting ".to_string(),
        format!("accepted node {id}: certificate and cluster keys received after "),
        format!(
            "join: certificate and cluster keys stored in {}",
            dir.display()
        ),
    ];
    let mut from = 0;
    for step in &order {
        let at = steps[from..]
            .find(step.as_str())
            .unwrap_or_else(|| panic!("{step:?} after byte {from} of {steps}"));
        from += at + step.len();
    }
    assert!(
        !steps.chars().any(|c| c.is_control() && c != '\n'),
        "{steps:?}"
    );

    // The id is the data dir's for good: a restart keeps it.
    let base = free_base();
    let mut child = agent(&dir, &base, &dir.with_extension("log"));
    wait_for("4 members", Duration::from_secs(30), || {
        alive_ids(&fleet, 0).contains(&id).then_some(())
    });
    stop(&mut child);
    let mut child = agent(&dir, &base, &dir.with_extension("2.log"));
    wait_for(
        "the restarted newcomer, asked through its own socket, under the same id",
        Duration::from_secs(30),
        || {
            let out = Command::new(BIN)
                .arg("--data-dir")
                .arg(&dir)
                .args(["get", "nodes", "-o", "json"])
                .output()
                .ok()?;
            let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let alive = nodes
                .as_array()?
                .iter()
                .filter(|n| n["state"] == "alive")
                .count();
            (alive == 4 && nodes.to_string().contains(&id)).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let ids = alive_ids(&fleet, 1);
    assert!(
        ids.len() == 4 && ids.contains(&id),
        "no fifth member: {ids:?}"
    );
    stop(&mut child);
}

#[test]
fn a_clone_of_a_members_data_dir_gives_way_and_the_member_keeps_its_place() {
    let mut fleet = Fleet::start(3);
    let file = spec(fleet.tmp.path(), "sleepers", SLEEPERS);
    let out = fleet.cli(0, &["apply", "-f", &file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for("4 replicas running", Duration::from_secs(30), || {
        placement(&fleet, 0).filter(|r| r.len() == 4)
    });
    // The disk of node-3 is copied while its agent is stopped (an image made from a device
    // that already joined), then node-3 runs again from its own.
    fleet.stop(2, Duration::from_secs(15));
    let copy = fleet.tmp.path().join("clone");
    let out = Command::new("cp")
        .arg("-a")
        .arg(&fleet.nodes[2].dir)
        .arg(&copy)
        .output()
        .expect("cp runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    fleet.spawn(2);
    fleet.wait_members(3);
    let before = wait_for(
        "4 replicas, seen alike by every node",
        Duration::from_secs(30),
        || {
            let first = placement(&fleet, 0).filter(|r| r.len() == 4)?;
            (1..3)
                .all(|i| placement(&fleet, i).as_ref() == Some(&first))
                .then_some(first)
        },
    );
    let original_pids = support::pids(&fleet.nodes[2].dir, "sleepers");

    // The clone starts on another address while node-3 runs.
    let log = fleet.tmp.path().join("clone.log");
    let mut clone = agent(&copy, &free_base(), &log);
    let started = Instant::now();
    let mut exit = None;
    while started.elapsed() < Duration::from_secs(12) {
        for i in 0..2 {
            let state = fleet.state_of(i, "node-3");
            assert_ne!(
                state.as_deref(),
                Some("down"),
                "node-{} saw node-3 down {:?} after the clone started",
                i + 1,
                started.elapsed()
            );
            if let Some(now) = placement(&fleet, i) {
                assert_eq!(now, before, "node-{} saw replicas move", i + 1);
            }
        }
        if exit.is_none()
            && let Ok(Some(status)) = clone.try_wait()
        {
            exit = Some((status, started.elapsed()));
        }
    }
    let Some((status, after)) = exit else {
        stop(&mut clone);
        panic!("the clone still runs 12 s after it started");
    };
    assert!(!status.success(), "the clone exits with an error");
    let said = std::fs::read_to_string(&log).expect("clone log");
    assert!(
        said.contains("another live agent runs as node node-3")
            && said.contains(&fleet.nodes[2].base),
        "the clone names the id and the other address: {said}"
    );
    eprintln!("the clone gave way after {after:?}");
    // It started nothing of its own, and left node-3's replicas alone.
    let own: Vec<i64> = support::pids(&copy, "sleepers")
        .into_iter()
        .filter(|p| support::alive(*p) && !original_pids.contains(p))
        .collect();
    assert!(own.is_empty(), "the clone started replicas: {own:?}");
    assert_eq!(fleet.live_processes("sleepers"), 4);
    for i in 0..3 {
        assert_eq!(fleet.state_of(i, "node-3").as_deref(), Some("alive"));
        assert_eq!(placement(&fleet, i).as_ref(), Some(&before));
    }
}
