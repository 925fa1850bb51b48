//! Rolling updates of a real HTTP service on real agents: a 6-replica service on 3 agents
//! moves to a new revision without ever having fewer than `replicas - max_unavailable`
//! replicas answering HTTP (sampled every 50 ms from the instances' own ports), ends with all
//! 6 on the new revision; then a revision that cannot start is rolled back by the fleet on its
//! own, with `rollout status` exiting 2, and the service stays up throughout.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Fleet, spec, wait_for};

const REPLICAS: usize = 6;
const MAX_UNAVAILABLE: usize = 1;

fn web(version: &str, port_arg: &str) -> String {
    format!(
        "name = \"web\"\ncommand = \"python3\"\n\
         args = [\"-m\", \"http.server\", \"--bind\", \"127.0.0.1\", \"{port_arg}\"]\n\
         replicas = {REPLICAS}\n\
         [env]\nVERSION = \"{version}\"\n\
         [resources]\ncpu = \"50m\"\nmemory = \"16Mi\"\n\
         [[ports]]\nname = \"http\"\nport = 8080\n\
         [health]\nhttp = {{ port = \"http\", path = \"/\" }}\ninterval = \"500ms\"\ntimeout = \"400ms\"\nfailure_threshold = 2\n\
         [restart]\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n\
         [update]\nbatch_size = 2\nmax_surge = 1\nmax_unavailable = {MAX_UNAVAILABLE}\n\
         min_healthy = \"1s\"\nhealth_deadline = \"15s\"\n"
    )
}

/// The ports every live instance of `web` listens on, from each agent's instance records.
fn instance_ports(fleet: &Fleet) -> Vec<(u32, u16)> {
    let mut out = Vec::new();
    for node in ["node-1", "node-2", "node-3"] {
        let dir = fleet.node_dir(node).join("runtime/replicas");
        let replicas = std::fs::read_dir(&dir).into_iter().flatten().flatten();
        for replica in replicas {
            let records = std::fs::read_dir(replica.path())
                .into_iter()
                .flatten()
                .flatten();
            for record in records {
                let name = record.file_name().to_string_lossy().into_owned();
                if !name.starts_with("instance-") {
                    continue;
                }
                let Some(v) = std::fs::read_to_string(record.path())
                    .ok()
                    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                else {
                    continue;
                };
                if v["workload"] != "web" {
                    continue;
                }
                let index = v["index"].as_u64().unwrap_or(u64::MAX) as u32;
                if let Some(port) = v["ports"]["http"]["port"].as_u64() {
                    out.push((index, port as u16));
                }
            }
        }
    }
    out
}

/// Replicas (by index) with at least one instance answering `GET /` with 200 now.
fn serving(fleet: &Fleet) -> BTreeSet<u32> {
    let mut up = BTreeSet::new();
    for (index, port) in instance_ports(fleet) {
        if up.contains(&index) || index as usize >= REPLICAS {
            continue;
        }
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
            continue;
        }
        let mut head = [0u8; 12];
        if s.read_exact(&mut head).is_ok() && head.ends_with(b"200") {
            up.insert(index);
        }
    }
    up
}

/// `rollout status` as JSON, whatever its exit code (2 once the revision is a rollback).
fn status(fleet: &Fleet) -> Option<Value> {
    let out = fleet.cli(0, &["rollout", "status", "web", "-o", "json"]);
    serde_json::from_slice(&out.stdout).ok()
}

/// Samples every 50 ms until `done` says so (or the deadline), returning the fewest replicas
/// seen serving.
fn watch(fleet: &Fleet, what: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> usize {
    let started = Instant::now();
    let mut fewest = REPLICAS;
    let mut last_check = Instant::now() - Duration::from_secs(1);
    loop {
        fewest = fewest.min(serving(fleet).len());
        if last_check.elapsed() >= Duration::from_millis(500) {
            last_check = Instant::now();
            if status(fleet).is_some_and(|s| done(&s)) {
                return fewest;
            }
        }
        assert!(
            started.elapsed() < limit,
            "{what} within {limit:?}; last status {:?}",
            status(fleet)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_rollout_keeps_the_service_up_and_a_bad_revision_rolls_back_on_its_own() {
    let fleet = Fleet::start(3);
    fleet.wait_members(3);
    let dir = fleet.tmp.path().to_path_buf();
    let apply = |name: &str, body: &str| {
        let file = spec(&dir, name, body);
        let out = fleet.cli(0, &["apply", "-f", &file]);
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    apply("v1", &web("1", "${port.http}"));
    wait_for("6 replicas serving", Duration::from_secs(60), || {
        (serving(&fleet).len() == REPLICAS).then_some(())
    });

    let started = Instant::now();
    apply("v2", &web("2", "${port.http}"));
    let fewest = watch(
        &fleet,
        "the rollout to revision 2",
        Duration::from_secs(120),
        |s| s["revision"] == 2 && s["complete"] == true,
    );
    let took = started.elapsed();
    eprintln!(
        "rollout of {REPLICAS} replicas: {:.1} s, fewest serving {fewest}",
        took.as_secs_f64()
    );
    assert!(
        fewest >= REPLICAS - MAX_UNAVAILABLE,
        "{fewest} serving at the worst, budget {}",
        REPLICAS - MAX_UNAVAILABLE
    );
    let ports = instance_ports(&fleet);
    assert_eq!(
        ports.len(),
        REPLICAS,
        "one instance each at the end: {ports:?}"
    );

    // A revision that cannot start: python refuses the port argument.
    let bad = Instant::now();
    apply("v3", &web("3", "not-a-port"));
    let fewest = watch(
        &fleet,
        "the automatic rollback",
        Duration::from_secs(120),
        |s| s["revision"] == 4 && s["rollback_of"]["revision"] == 3 && s["complete"] == true,
    );
    eprintln!(
        "bad revision back on the old template everywhere: {:.1} s, fewest serving {fewest}",
        bad.elapsed().as_secs_f64()
    );
    assert!(
        fewest >= REPLICAS - MAX_UNAVAILABLE,
        "{fewest} serving at the worst"
    );
    let out = fleet.cli(0, &["rollout", "status", "web"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an automatic rollback exits 2: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let refused = fleet.cli(
        0,
        &["apply", "-f", &dir.join("v3.toml").display().to_string()],
    );
    assert!(
        !refused.status.success(),
        "the failed template needs --force"
    );

    // A canary rollout: one replica moves, then the rollout waits for a promote.
    let canary = web("5", "${port.http}").replace(
        "[update]\nbatch_size = 2",
        "[update]\nstrategy = \"canary\"\ncanary = 1\nbatch_size = 2",
    );
    apply("v5", &canary);
    watch(&fleet, "the canary settled", Duration::from_secs(60), |s| {
        s["revision"] == 5 && s["updated"] == 1 && s["waiting_for_promote"] == true
    });
    std::thread::sleep(Duration::from_secs(3));
    let s = status(&fleet).expect("status");
    assert_eq!(
        s["updated"], 1,
        "nothing moves past the canary before a promote: {s}"
    );
    let out = fleet.cli(0, &["rollout", "promote", "web"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fewest = watch(
        &fleet,
        "the promoted rollout",
        Duration::from_secs(120),
        |s| s["revision"] == 5 && s["complete"] == true,
    );
    assert!(
        fewest >= REPLICAS - MAX_UNAVAILABLE,
        "{fewest} serving at the worst"
    );
}
