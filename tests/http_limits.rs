//! The agent's local HTTP port (metrics and the lease endpoint) under a flood of
//! unauthenticated long polls, and an agent whose HTTP address is taken.
//!
//! The flooded agent runs with 1,024 descriptors (soft and hard), as on a default host:
//! before the caps, 1,100 long polls took every one of them and API writes failed with
//! `desired.tmp: Too many open files` until the waits ran out.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{BIN, Fleet, http_get, spec, wait_for};

const FLOOD: usize = 1_100;

/// A script that runs the agent with at most 1,024 open descriptors.
fn agent_with_1024_descriptors(dir: &Path) -> PathBuf {
    let path = dir.join("agent-1024.sh");
    std::fs::write(
        &path,
        format!("#!/bin/sh\nulimit -n 1024 || exit 97\nexec '{BIN}' \"$@\"\n"),
    )
    .expect("write wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// The test process itself holds the flood's 1,100 sockets.
fn raise_own_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(
        soft > FLOOD as u64 + 200,
        "this test needs {FLOOD} + 200 descriptors, has {soft}"
    );
}

/// A value of an unlabelled metric (or one series, `name{labels}`).
fn metric(addr: SocketAddr, series: &str) -> Option<u64> {
    let text = http_get(addr, "/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn a_flood_of_long_polls_leaves_api_writes_and_metrics_working_and_frees_its_slots() {
    raise_own_fd_limit();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut fleet = Fleet::start_with(1, agent_with_1024_descriptors(tmp.path()), &[]);
    let addr: SocketAddr = fleet.nodes[0].base.parse().expect("address");
    let pid = fleet.nodes[0].child.as_ref().expect("running").id();

    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let Ok(mut stream) = TcpStream::connect(addr) else {
            continue;
        };
        let _ = stream.write_all(b"GET /v1/leases/x?wait=25 HTTP/1.1\r\nHost: l\r\n\r\n");
        flood.push(stream);
    }
    assert!(flood.len() > 1_000, "{} of {FLOOD} connected", flood.len());
    let waiting = wait_for(
        "the flood's long polls to be held",
        Duration::from_secs(10),
        || metric(addr, "starling_http_long_polls").filter(|n| *n > 0),
    );
    assert!(waiting <= 128, "{waiting} long polls held, over the cap");
    let refused = metric(addr, "starling_http_refused_total{reason=\"long_polls\"}").unwrap_or(0)
        + metric(addr, "starling_http_refused_total{reason=\"connections\"}").unwrap_or(0);
    assert!(refused > 0, "nothing of the flood was refused");
    let descriptors = open_descriptors(pid);
    assert!(
        descriptors < 600,
        "the agent holds {descriptors} descriptors"
    );

    // During the flood, a write needs descriptors for the store: it still gets them.
    let file = spec(
        fleet.tmp.path(),
        "during",
        "name = \"during\"\ncommand = \"sleep\"\nargs = [\"600\"]\nreplicas = 0\n\
         [resources]\ncpu = \"10m\"\nmemory = \"1Mi\"\n",
    );
    let out = fleet.cli(0, &["apply", "-f", &file]);
    assert!(
        out.status.success(),
        "apply during the flood: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(metric(addr, "starling_store_errors_total"), Some(0));

    // Clients that go away give their long polls back at once, not when their waits end.
    let closed_at = Instant::now();
    drop(flood);
    wait_for(
        "the long polls of closed clients to end",
        Duration::from_secs(5),
        || (metric(addr, "starling_http_long_polls") == Some(0)).then_some(()),
    );
    assert!(closed_at.elapsed() < Duration::from_secs(10));

    // A new long poll is admitted (a refusal is answered at once with 503) and waits.
    let asked = Instant::now();
    let answer = http_get(addr, "/v1/leases/x?wait=1").expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("no lease"), "{answer}");
    assert!(asked.elapsed() >= Duration::from_millis(900), "it waited");
    fleet.stop(0, Duration::from_secs(20));
}

/// Runs `agent` until it exits (within 20 s) and returns its stderr.
fn exits_with_error(mut agent: Command) -> String {
    let mut child = agent
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent kept running without its HTTP port");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(!status.success(), "exit status {status}; {stderr}");
    stderr
}

#[test]
fn an_agent_whose_metrics_address_is_taken_fails_naming_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("address");
    let mut agent = Command::new(BIN);
    agent
        .arg("agent")
        .arg("--data-dir")
        .arg(tmp.path().join("alone"))
        .args(["--node-id", "alone", "--metrics", &addr.to_string()]);
    let stderr = exits_with_error(agent);
    assert!(stderr.contains(&format!("http://{addr}")), "{stderr}");
    assert!(stderr.contains("--metrics"), "{stderr}");
}

#[test]
fn a_fleet_agent_whose_default_http_port_is_taken_fails_naming_it() {
    let mut fleet = Fleet::start(1);
    fleet.stop(0, Duration::from_secs(20));
    let addr: SocketAddr = fleet.nodes[0].base.parse().expect("address");
    let _taken = TcpListener::bind(addr).expect("the agent's HTTP port is free again");
    let node = &fleet.nodes[0];
    let mut agent = Command::new(BIN);
    agent
        .arg("agent")
        .arg("--data-dir")
        .arg(&node.dir)
        .args(["--listen", &node.base]);
    let stderr = exits_with_error(agent);
    assert!(stderr.contains(&format!("http://{addr}")), "{stderr}");
    assert!(stderr.contains("--listen port"), "{stderr}");
    assert!(stderr.contains("--metrics"), "{stderr}");
}

/// The CLI closes its QUIC connection when its call ends: the agent's slot (out of 1,024, see
/// `QuicSettings`) frees at once, not at the 30 s idle timeout, so a script calling in a
/// loop cannot fill the server.
#[test]
fn cli_calls_over_quic_leave_no_connection_held() {
    let fleet = Fleet::start(1);
    let addr: SocketAddr = fleet.nodes[0].base.parse().expect("address");
    for _ in 0..10 {
        let out = fleet.cli(0, &["get", "nodes"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let held = wait_for(
        "the CLI's connections to close",
        Duration::from_secs(3),
        || metric(addr, "starling_quic_connections").filter(|n| *n == 0),
    );
    assert_eq!(held, 0);
}
