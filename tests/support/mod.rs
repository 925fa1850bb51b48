//! Shared harness of the end-to-end tests: real agent processes on loopback, the CLI, and
//! careful process handling (signals through the system call, never the `kill` program).

#![allow(dead_code)]

pub mod netns;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_starling");

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// Three free consecutive UDP ports (gossip, QUIC, probes) whose TCP twin (metrics) is free.
pub fn free_base() -> String {
    let _ = NEXT_PORT.compare_exchange(
        0,
        21_000 + (std::process::id() % 1_000) as u16 * 30,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT_PORT.fetch_add(3, Ordering::SeqCst);
        assert!(port < 60_000, "ran out of ports");
        let free = (0..3).all(|i| UdpSocket::bind(("127.0.0.1", port + i)).is_ok())
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free {
            return format!("127.0.0.1:{port}");
        }
    }
}

pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub base: String,
    pub child: Option<Child>,
    /// What the agent's command line starts with (`ip netns exec NS` for a host of a
    /// [`netns::NetLab`]).
    pub prefix: Vec<String>,
    /// `starling agent` flags of this node only.
    pub args: Vec<String>,
}

/// A fleet in a temp dir; every agent and replica is killed when it drops.
pub struct Fleet {
    pub tmp: tempfile::TempDir,
    pub client: PathBuf,
    pub nodes: Vec<Node>,
    /// The agent binary `spawn` runs (an upgrade test swaps it).
    pub bin: PathBuf,
    /// Extra `starling agent` flags for every spawn.
    pub agent_args: Vec<String>,
}

impl Fleet {
    pub fn start(n: usize) -> Fleet {
        Self::start_with(n, PathBuf::from(BIN), &[])
    }

    /// A fleet whose agents run `bin` with `agent_args` added.
    pub fn start_with(n: usize, bin: PathBuf, agent_args: &[&str]) -> Fleet {
        // Agents of tests running side by side on one host would fight over the host-wide
        // DNS addresses: loopback fleets go without (the netns tests cover them).
        let mut args = vec!["--dns", "off", "--no-container-dns"];
        args.extend(agent_args);
        Self::start_hosts(n, bin, &args, |_| (free_base(), Vec::new(), Vec::new()))
    }

    /// A fleet with one agent per host of `lab` (its own address, loopback and DNS);
    /// `node_args(i)` adds flags to node `i` only.
    pub fn start_in(
        lab: &netns::NetLab,
        agent_args: &[&str],
        node_args: impl Fn(usize) -> Vec<String>,
    ) -> Fleet {
        Self::start_hosts(lab.hosts, PathBuf::from(BIN), agent_args, |i| {
            let base = format!("{}:7946", lab.addr(i));
            // DNS and metrics on the host's own address, so the test can reach both.
            let mut args = vec![
                "--dns".to_string(),
                format!("{}:53", lab.addr(i)),
                "--metrics".to_string(),
                format!("{}:7946", lab.addr(i)),
            ];
            args.extend(node_args(i));
            (base, lab.exec(i), args)
        })
    }

    fn start_hosts(
        n: usize,
        bin: PathBuf,
        agent_args: &[&str],
        host: impl Fn(usize) -> (String, Vec<String>, Vec<String>),
    ) -> Fleet {
        let tmp = tempfile::tempdir().expect("tempdir");
        let client = tmp.path().join("client");
        let mut fleet = Fleet {
            client,
            nodes: Vec::new(),
            tmp,
            bin,
            agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
        };
        for i in 1..=n {
            let name = format!("node-{i}");
            let (base, prefix, args) = host(i - 1);
            fleet.nodes.push(Node {
                dir: fleet.tmp.path().join(&name),
                name,
                base,
                child: None,
                prefix,
                args,
            });
        }
        let first = &fleet.nodes[0];
        let out = Command::new(BIN)
            .arg("init")
            .arg("--data-dir")
            .arg(&first.dir)
            .arg("--cluster-dir")
            .arg(&fleet.client)
            .args(["--node-id", &first.name, "--advertise", &first.base])
            .output()
            .expect("init runs");
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for i in 0..n {
            fleet.spawn(i);
            if i == 0 {
                let socket = fleet.nodes[0].dir.join("api.sock");
                wait_for("the first agent", Duration::from_secs(20), || {
                    socket.exists().then_some(())
                });
            }
        }
        fleet.wait_members(n);
        fleet
    }

    pub fn spawn(&mut self, i: usize) {
        self.spawn_env(i, &[]);
    }

    /// Starts node `i` with extra environment variables.
    pub fn spawn_env(&mut self, i: usize, env: &[(&str, &str)]) {
        let joined = self.nodes[i].dir.join("cluster/node.pem").exists();
        let token = if joined {
            None
        } else {
            let out = Command::new(BIN)
                .args(["token", "create", "--data-dir"])
                .arg(&self.nodes[0].dir)
                .output()
                .expect("token create runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let node = &mut self.nodes[i];
        std::fs::create_dir_all(&node.dir).expect("data dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.with_extension("log"))
            .expect("log");
        let mut command = match node.prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        command.arg("agent").arg("--data-dir").arg(&node.dir).args([
            "--node-id",
            &node.name,
            "--listen",
            &node.base,
            "--stop-grace-ms",
            "500",
        ]);
        command.args(&self.agent_args);
        command.args(&node.args);
        command.envs(env.iter().copied());
        if let Some(token) = token {
            command.args(["--join", &token]);
        }
        node.child = Some(
            command
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("agent starts"),
        );
    }

    /// The CLI against node `i` over QUIC.
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--cluster-dir")
            .arg(&self.client)
            .args(["--peer", &self.nodes[i].base])
            .args(args)
            .output()
            .expect("cli runs")
    }

    /// The workloads node `i` lists, by name; `None` while it does not answer.
    pub fn workload_names(&self, i: usize) -> Option<Vec<String>> {
        let rows = self.json(i, &["get", "workloads"])?;
        Some(
            rows.as_array()?
                .iter()
                .filter_map(|w| w.get("name")?.as_str().map(str::to_string))
                .collect(),
        )
    }

    pub fn json(&self, i: usize, args: &[&str]) -> Option<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.cli(i, &all);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn wait_members(&self, n: usize) {
        wait_for(
            &format!("{n} alive members seen by every node"),
            Duration::from_secs(30),
            || {
                (0..self.nodes.len())
                    .filter(|i| self.nodes[*i].child.is_some())
                    .all(|i| {
                        self.json(i, &["get", "nodes"]).is_some_and(|v| {
                            v.as_array().is_some_and(|a| {
                                a.iter().filter(|n| n["state"] == "alive").count() == n
                            })
                        })
                    })
                    .then_some(())
            },
        );
    }

    /// Node `i`'s view of `node`'s state (`alive`, `suspect`, `down`).
    pub fn state_of(&self, i: usize, node: &str) -> Option<String> {
        let nodes = self.json(i, &["get", "nodes"])?;
        nodes
            .as_array()?
            .iter()
            .find(|n| n["node"] == node)
            .and_then(|n| n["state"].as_str().map(str::to_string))
    }

    /// Running replicas as node `i` reports them: (workload, index, node).
    pub fn running(&self, i: usize) -> Option<Vec<(String, u64, String)>> {
        let v = self.json(i, &["status"])?;
        Some(
            v.as_array()?
                .iter()
                .filter(|r| r["state"] == "Running")
                .map(|r| {
                    (
                        r["workload"].as_str().unwrap_or_default().to_string(),
                        r["replica"].as_u64().unwrap_or_default(),
                        r["node"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
        )
    }

    pub fn node_dir(&self, name: &str) -> &Path {
        &self
            .nodes
            .iter()
            .find(|n| n.name == name)
            .expect("node")
            .dir
    }

    /// Live replica processes of `workload` over the whole machine, from each node's runtime.
    pub fn live_processes(&self, workload: &str) -> usize {
        self.nodes
            .iter()
            .flat_map(|n| pids(&n.dir, workload))
            .filter(|pid| alive(*pid))
            .count()
    }

    /// Asks node `i`'s agent to stop (SIGTERM, as systemd does) and waits for it to exit;
    /// its replicas are left to whatever its `--on-stop` mode does. Returns how long it took.
    pub fn stop(&mut self, i: usize, timeout: Duration) -> Duration {
        let started = Instant::now();
        let Some(mut child) = self.nodes[i].child.take() else {
            return Duration::ZERO;
        };
        signal(i64::from(child.id()), Signal::SIGTERM);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return started.elapsed();
            }
            if started.elapsed() > timeout {
                signal(i64::from(child.id()), Signal::SIGKILL);
                let _ = child.wait();
                panic!(
                    "agent {} did not exit within {timeout:?} of SIGTERM",
                    self.nodes[i].name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills node `i` as a power cut would: the agent and every replica it started.
    pub fn crash(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            signal(i64::from(child.id()), Signal::SIGKILL);
            let _ = child.wait();
        }
        for pid in pids(&self.nodes[i].dir, "") {
            killpg(pid);
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.crash(i);
        }
    }
}

pub fn pids(dir: &Path, workload: &str) -> Vec<i64> {
    let Ok(entries) = std::fs::read_dir(dir.join("runtime/replicas")) else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(workload))
        .filter_map(|e| std::fs::read_to_string(e.path().join("instance.json")).ok())
        .filter_map(|t| serde_json::from_str::<Value>(&t).ok())
        .filter_map(|v| v["pid"].as_i64())
        .collect()
}

pub fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Signals one process through the system call (never the `kill` program: see tests/agent.rs).
pub fn signal(pid: i64, sig: Signal) {
    if let Ok(pid) = i32::try_from(pid)
        && pid > 1
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

pub fn killpg(pid: i64) {
    if let Ok(pid) = i32::try_from(pid)
        && pid > 1
    {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
}

pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn spec(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, body).expect("write spec");
    path.to_string_lossy().into_owned()
}

/// A minimal HTTP GET on loopback.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}
