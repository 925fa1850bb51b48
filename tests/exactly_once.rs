//! Exactly once, seen from outside: real agents on loopback, a replicated workload and a
//! singleton, and a sampler that counts the OS processes of every replica index every 100 ms
//! while agents crash and come back, stop for a restart, drain, or are upgraded one by one.
//!
//! The bound on a replica index held twice: one make-before-break handover, 2 s. A move starts
//! the new copy after the claim settle (100 ms), the process starts at once (no health check
//! here), and the old holder stops its copy when gossip brings it the new copy's status: one
//! or two gossip rounds at 1 s each in a 5-node fleet. Anything longer is a second copy that
//! nobody is handing over.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{Fleet, alive, spec, wait_for};

/// The tests of this file start five agents each and sample processes every 100 ms: one at a
/// time, so a loaded CI machine does not stretch the handovers they measure.
static ONE_FLEET_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_FLEET_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Longest time one replica index may run on two nodes at once (see the module docs).
const HANDOVER_MAX: Duration = Duration::from_secs(2);
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const WEB: u32 = 7;

/// Which nodes run a live process of each replica index of `workload`.
fn copies(dirs: &[(String, PathBuf)], workload: &str) -> BTreeMap<u32, Vec<String>> {
    let mut out: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let prefix = format!("{workload}-");
    for (name, dir) in dirs {
        let Ok(entries) = std::fs::read_dir(dir.join("runtime/replicas")) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let Some(index) = file_name
                .strip_prefix(&prefix)
                .and_then(|i| i.parse::<u32>().ok())
            else {
                continue;
            };
            let pid = std::fs::read_to_string(entry.path().join("instance.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["pid"].as_i64());
            if pid.is_some_and(alive) {
                out.entry(index).or_default().push(name.clone());
            }
        }
    }
    out
}

/// What the sampler saw.
#[derive(Debug, Default)]
struct Report {
    samples: usize,
    /// The longest time one index ran on two or more nodes at once, with the index.
    longest_twice: (Duration, u32),
    /// The first few samples with an index on two nodes: when, which, where.
    twice: Vec<(Duration, u32, Vec<String>)>,
    /// Samples in which some index ran twice.
    samples_twice: usize,
    /// Most copies of one index in one sample.
    most_copies: usize,
    /// Samples in which some index ran nowhere.
    samples_gap: usize,
    /// The first few gaps: when (since the sampler started), which index, where it ran before.
    gaps: Vec<(Duration, u32, Vec<String>)>,
    /// Most singleton instances alive in one sample, and in how many samples two or more ran.
    most_leaders: usize,
    samples_two_leaders: usize,
    /// The singleton's node in each sample where exactly one ran.
    leader_nodes: Vec<String>,
}

struct Sampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Report>,
}

impl Sampler {
    fn start(fleet: &Fleet) -> Sampler {
        let dirs: Vec<(String, PathBuf)> = fleet
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.dir.clone()))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut report = Report::default();
            let mut twice_since: BTreeMap<u32, Instant> = BTreeMap::new();
            let started = Instant::now();
            let mut last: BTreeMap<u32, Vec<String>> = BTreeMap::new();
            while !flag.load(Ordering::Relaxed) {
                let now = Instant::now();
                let web = copies(&dirs, "web");
                report.samples += 1;
                if let Some(missing) = (0..WEB).find(|i| !web.contains_key(i)) {
                    report.samples_gap += 1;
                    if report.gaps.len() < 5 {
                        let before = last.get(&missing).cloned().unwrap_or_default();
                        report.gaps.push((now - started, missing, before));
                    }
                }
                last = web.clone();
                let mut any_twice = false;
                for index in 0..WEB {
                    let n = web.get(&index).map_or(0, Vec::len);
                    report.most_copies = report.most_copies.max(n);
                    if n >= 2 {
                        any_twice = true;
                        if report.twice.len() < 5 {
                            report
                                .twice
                                .push((now - started, index, web[&index].clone()));
                        }
                        let since = *twice_since.entry(index).or_insert(now);
                        let held = now - since;
                        if held > report.longest_twice.0 {
                            report.longest_twice = (held, index);
                        }
                    } else {
                        twice_since.remove(&index);
                    }
                }
                report.samples_twice += usize::from(any_twice);
                let leaders = copies(&dirs, "leader").remove(&0).unwrap_or_default();
                report.most_leaders = report.most_leaders.max(leaders.len());
                report.samples_two_leaders += usize::from(leaders.len() >= 2);
                if let [one] = &leaders[..]
                    && report.leader_nodes.last() != Some(one)
                {
                    report.leader_nodes.push(one.clone());
                }
                std::thread::sleep(SAMPLE_EVERY.saturating_sub(now.elapsed()));
            }
            report
        });
        Sampler { stop, handle }
    }

    fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("sampler")
    }
}

/// A 5-agent fleet running `web` (7 replicas) and the `leader` singleton, settled.
fn fleet_with_workloads(fleet: Fleet, web_extra: &str) -> Fleet {
    let web = spec(
        fleet.tmp.path(),
        "web",
        &format!(
            "name = \"web\"\ncommand = \"sleep\"\nargs = [\"1000\"]\nreplicas = {WEB}\n{web_extra}\n\
             [resources]\ncpu = \"10m\"\nmemory = \"1Mi\"\n"
        ),
    );
    let leader = spec(
        fleet.tmp.path(),
        "leader",
        "name = \"leader\"\nsingleton = true\nlease_ttl = \"2s\"\ncommand = \"sleep\"\n\
         args = [\"1000\"]\n[resources]\ncpu = \"10m\"\nmemory = \"1Mi\"\n",
    );
    for file in [&web, &leader] {
        let out = fleet.cli(0, &["apply", "-f", file]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    settled(&fleet, "every replica once and one leader");
    fleet
}

fn dirs(fleet: &Fleet) -> Vec<(String, PathBuf)> {
    fleet
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.dir.clone()))
        .collect()
}

/// Waits until every web index runs exactly once and one leader runs.
fn settled(fleet: &Fleet, what: &str) {
    wait_for(what, Duration::from_secs(60), || {
        let web = copies(&dirs(fleet), "web");
        let leaders = copies(&dirs(fleet), "leader");
        ((0..WEB).all(|i| web.get(&i).is_some_and(|n| n.len() == 1))
            && web.len() == WEB as usize
            && leaders.get(&0).is_some_and(|n| n.len() == 1))
        .then_some(())
    });
}

/// Nodes (by index in the fleet) that run at least one web replica, excluding `except`.
fn nodes_running_web(fleet: &Fleet, except: &[usize]) -> Vec<usize> {
    let web = copies(&dirs(fleet), "web");
    (0..fleet.nodes.len())
        .filter(|i| !except.contains(i))
        .filter(|i| web.values().any(|n| n.contains(&fleet.nodes[*i].name)))
        .collect()
}

fn leader_node(fleet: &Fleet) -> usize {
    let leaders = copies(&dirs(fleet), "leader");
    let name = &leaders[&0][0];
    fleet
        .nodes
        .iter()
        .position(|n| n.name == *name)
        .expect("leader node")
}

fn assert_at_most_one_handover(report: &Report, what: &str) {
    eprintln!("{what}: {report:?}");
    assert!(
        report.longest_twice.0 <= HANDOVER_MAX,
        "{what}: web/{} ran on two nodes for {:?} (bound {HANDOVER_MAX:?}); {report:?}",
        report.longest_twice.1,
        report.longest_twice.0
    );
    assert!(report.most_copies <= 2, "{what}: {report:?}");
    assert!(
        report.most_leaders <= 1,
        "{what}: two active singleton instances in {} samples; {report:?}",
        report.samples_two_leaders
    );
}

#[test]
fn agents_restarted_after_a_crash_take_nothing_back_twice() {
    let _serial = one_at_a_time();
    let mut fleet = fleet_with_workloads(Fleet::start(5), "");
    // Two machines that run web replicas lose power in turn (agent and replicas).
    let first = nodes_running_web(&fleet, &[0])[0];
    fleet.crash(first);
    settled(&fleet, "replaced after the first crash");
    let second = nodes_running_web(&fleet, &[0, first])[0];
    fleet.crash(second);
    settled(&fleet, "replaced after the second crash");
    // Both come back on their data dirs.
    let sampler = Sampler::start(&fleet);
    fleet.spawn(first);
    fleet.spawn(second);
    std::thread::sleep(Duration::from_secs(25));
    let report = sampler.finish();
    assert_at_most_one_handover(&report, "restart after crash");
    settled(&fleet, "every replica once after the restarts");
}

#[test]
fn a_stopping_agent_leaves_its_replicas_to_itself_and_its_singleton_to_another_node() {
    let _serial = one_at_a_time();
    let mut fleet = fleet_with_workloads(Fleet::start(5), "");
    let holder = leader_node(&fleet);
    let holder_name = fleet.nodes[holder].name.clone();
    let sampler = Sampler::start(&fleet);
    // `systemctl restart starling`: SIGTERM, default --on-stop leave.
    let took = fleet.stop(holder, Duration::from_secs(10));
    eprintln!("the agent exited {took:?} after SIGTERM");
    // Every peer shows it as restarting, not down.
    let others: Vec<usize> = (0..fleet.nodes.len()).filter(|i| *i != holder).collect();
    let asked = others[0];
    let nodes = fleet.json(asked, &["get", "nodes"]).expect("get nodes");
    let row = nodes
        .as_array()
        .and_then(|a| a.iter().find(|n| n["node"] == holder_name.as_str()))
        .cloned()
        .expect("the stopped node is listed");
    assert_eq!(row["departure"], "restarting", "{row}");
    wait_for(
        "the singleton active on another node",
        Duration::from_secs(15),
        || {
            let leaders = copies(&dirs(&fleet), "leader");
            leaders
                .get(&0)
                .is_some_and(|n| n.len() == 1 && n[0] != holder_name)
                .then_some(())
        },
    );
    // Nothing of the stopped node's is replaced while it restarts.
    std::thread::sleep(Duration::from_secs(5));
    let web = copies(&dirs(&fleet), "web");
    assert!(
        (0..WEB).all(|i| web.get(&i).is_some_and(|n| n.len() == 1)),
        "the stopped agent's replicas run, once each: {web:?}"
    );
    fleet.spawn(holder);
    std::thread::sleep(Duration::from_secs(15));
    let report = sampler.finish();
    // Before issue 14 one index was held twice in 33 of 40 samples while the agent was away.
    // Now none is replaced; one 100 ms sample right after the restart was seen once in CI
    // (docs/ARCHITECTURE.md), so the bound is the handover's, as for the crash test.
    assert_at_most_one_handover(&report, "leave and restart");
    assert_eq!(
        report.samples_gap, 0,
        "a replica stopped running: {report:?}"
    );
    settled(&fleet, "every replica once after the restart");
}

#[test]
fn a_draining_agent_hands_every_replica_over_before_it_exits() {
    let _serial = one_at_a_time();
    let mut fleet = fleet_with_workloads(
        Fleet::start_with(5, PathBuf::from(support::BIN), &["--on-stop", "drain"]),
        "",
    );
    let drained = nodes_running_web(&fleet, &[])[0];
    let name = fleet.nodes[drained].name.clone();
    let sampler = Sampler::start(&fleet);
    let took = fleet.stop(drained, Duration::from_secs(60));
    eprintln!("the draining agent exited {took:?} after SIGTERM");
    let report = sampler.finish();
    assert_at_most_one_handover(&report, "drain");
    assert_eq!(
        report.samples_gap, 0,
        "a replica stopped running: {report:?}"
    );
    let web = copies(&dirs(&fleet), "web");
    assert!(
        web.values().all(|n| !n.contains(&name)),
        "the drained node runs nothing: {web:?}"
    );
    settled(&fleet, "every replica once elsewhere");
}

#[test]
fn upgrading_the_fleet_agent_by_agent_runs_nothing_twice_and_leaves_no_gap() {
    let _serial = one_at_a_time();
    // The agents run from a copy of the binary, which the "upgrade" replaces under them.
    let tmp = tempfile::tempdir().expect("tempdir");
    let installed = tmp.path().join("starling");
    std::fs::copy(support::BIN, &installed).expect("install the binary");
    let mut fleet = fleet_with_workloads(
        Fleet::start_with(5, installed.clone(), &[]),
        "[health]\nexec = [\"true\"]\ninterval = \"1s\"\ntimeout = \"1s\"\n",
    );
    let sampler = Sampler::start(&fleet);
    for i in 0..fleet.nodes.len() {
        // The new version lands next to the running one and replaces it atomically.
        let next = tmp.path().join("starling.new");
        std::fs::copy(support::BIN, &next).expect("copy the new binary");
        std::fs::rename(&next, &installed).expect("replace the binary");
        fleet.stop(i, Duration::from_secs(10));
        fleet.spawn(i);
        fleet.wait_members(5);
    }
    std::thread::sleep(Duration::from_secs(5));
    let report = sampler.finish();
    eprintln!("upgrade: {report:?}");
    if report.samples_twice > 0 {
        for node in &fleet.nodes {
            let log = std::fs::read_to_string(node.dir.with_extension("log")).unwrap_or_default();
            eprintln!("--- {}\n{}", node.name, log);
        }
    }
    assert_eq!(report.samples_twice, 0, "a replica ran twice: {report:?}");
    assert_eq!(
        report.samples_gap, 0,
        "a replica stopped running: {report:?}"
    );
    assert_eq!(
        report.samples_two_leaders, 0,
        "two active singleton instances: {report:?}"
    );
    settled(&fleet, "every replica once after the upgrade");
}
