//! Container workloads against the real Docker Engine: the test image is built locally from
//! the host's shell and coreutils and the workspace's own applets (`starling_testkit::docker`,
//! no registry), agents run as real processes, and the `docker` CLI is used only to look and
//! to break things.
//!
//! With `STARLING_REQUIRE_DOCKER=1` (CI) a missing engine fails these tests; without it they
//! skip with a printed reason.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use support::{BIN, free_base, signal, wait_for};

mod support;

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI")
}

/// Container ids labelled for `workload` (running only).
fn containers(workload: &str) -> Vec<String> {
    let out = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=starling.workload={workload}"),
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn remove_labelled(key: &str, value: &str) {
    let out = docker(&["ps", "-aq", "--filter", &format!("label={key}={value}")]);
    for id in String::from_utf8_lossy(&out.stdout).lines() {
        let _ = docker(&["rm", "-f", id]);
    }
}

/// A single agent on its own data dir (no cluster).
struct Agent {
    node: String,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Agent {
    fn start(dir: &Path, node: &str) -> Agent {
        Agent::start_with(dir, node, &[])
    }

    fn start_with(dir: &Path, node: &str, extra: &[&str]) -> Agent {
        let mut agent = Agent {
            node: node.to_string(),
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.dir.join("api.sock"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .expect("log");
        self.child = Some(
            Command::new(BIN)
                .args([
                    "agent",
                    "--node-id",
                    &self.node,
                    "--stop-grace-ms",
                    "1000",
                    "--data-dir",
                ])
                .arg(&self.dir)
                // Tests run side by side: only the one that tests container DNS takes the
                // bridge gateway's port 53 and the service ports there.
                .args(if self.extra.iter().any(|a| a == "--dns") {
                    &[][..]
                } else {
                    &["--dns", "off", "--no-container-dns"][..]
                })
                .args(&self.extra)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("agent"),
        );
        let socket = self.dir.join("api.sock");
        wait_for("the agent's socket", Duration::from_secs(20), || {
            socket.exists().then_some(())
        });
    }

    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(i64::from(child.id()), Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(args)
            .output()
            .expect("cli")
    }

    fn replica(&self, workload: &str, index: u64) -> Option<Value> {
        let out = self.cli(&["status", "-o", "json"]);
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()?
            .as_array()?
            .iter()
            .find(|r| r["workload"] == workload && r["replica"] == index)
            .cloned()
    }

    fn apply(&self, dir: &Path, name: &str, body: &str) {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, body).expect("spec");
        let out = self.cli(&["apply", "-f", path.to_str().expect("utf-8")]);
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        remove_labelled("starling.node", &self.node);
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

fn state(r: &Option<Value>) -> String {
    r.as_ref()
        .and_then(|r| r["state"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_container_restarts_after_docker_kill_and_is_adopted_by_a_restarted_agent() {
    let Some(image) = starling_testkit::docker::test_image() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = unique("dk1");
    let name = unique("naps");
    let mut agent = Agent::start(&tmp.path().join("data"), &node);
    agent.apply(
        tmp.path(),
        &name,
        &format!(
            "name = \"{name}\"\nruntime = \"docker\"\nimage = \"{image}\"\nimage_pull_policy = \"never\"\n\
             command = \"sh\"\nargs = [\"-c\", \"echo hello from the container; while true; do echo tick; sleep 1; done\"]\n\
             [resources]\nmemory = \"16Mi\"\nmemory_limit = \"32Mi\"\n\
             [restart]\nbackoff_initial = \"100ms\"\n"
        ),
    );
    let first = wait_for("the container running", Duration::from_secs(60), || {
        let ids = containers(&name);
        (state(&agent.replica(&name, 0)) == "Running" && ids.len() == 1).then(|| ids[0].clone())
    });
    // The limits and labels reached the engine.
    let inspect = docker(&["inspect", &first]);
    let v: Value = serde_json::from_slice(&inspect.stdout).expect("inspect json");
    assert_eq!(v[0]["HostConfig"]["Memory"], 32 * 1024 * 1024);
    assert_eq!(v[0]["HostConfig"]["RestartPolicy"]["Name"], "no");
    assert_eq!(v[0]["Config"]["Labels"]["starling.node"], node.as_str());

    let _ = docker(&["kill", &first]);
    let second = wait_for(
        "a new container after docker kill",
        Duration::from_secs(60),
        || {
            let r = agent.replica(&name, 0)?;
            let ids = containers(&name);
            (r["state"] == "Running"
                && r["restarts"].as_u64() >= Some(1)
                && ids.len() == 1
                && ids[0] != first)
                .then(|| ids[0].clone())
        },
    );

    // The agent restarts; the container keeps running and is adopted, not duplicated.
    agent.terminate();
    assert_eq!(
        containers(&name),
        vec![second.clone()],
        "the container outlives the agent"
    );
    agent.spawn();
    wait_for(
        "the adopted container reported running",
        Duration::from_secs(30),
        || (state(&agent.replica(&name, 0)) == "Running").then_some(()),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        containers(&name),
        vec![second],
        "adopted: the same container, and only it"
    );

    // Logs come from the engine; -f streams new lines.
    let out = agent.cli(&["logs", &name, "--tail", "50"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello from the container"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut follow = Command::new(BIN)
        .arg("--data-dir")
        .arg(&agent.dir)
        .args(["logs", &name, "--tail", "0", "-f"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("logs -f");
    let stdout = follow.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let ticks = (0..3)
        .filter_map(|_| rx.recv_timeout(Duration::from_secs(10)).ok())
        .filter(|l| l == "tick")
        .count();
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(ticks >= 2, "new lines stream with -f (saw {ticks} ticks)");
}

#[test]
fn strays_are_removed_missing_images_are_named_and_failing_checks_restart() {
    let Some(image) = starling_testkit::docker::test_image() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = unique("dk2");
    // A labelled container this node's plan does not hold (left by some earlier life).
    let ghost = unique("ghost");
    let out = docker(&[
        "run",
        "-d",
        "--label",
        &format!("starling.node={node}"),
        "--label",
        &format!("starling.workload={ghost}"),
        "--label",
        "starling.replica=0",
        "--label",
        "starling.instance=1",
        "--label",
        "starling.revision=1",
        image,
        "sleep",
        "600",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = Agent::start(&tmp.path().join("data"), &node);
    wait_for(
        "the stray container removed",
        Duration::from_secs(60),
        || containers(&ghost).is_empty().then_some(()),
    );

    let missing = unique("missing");
    agent.apply(
        tmp.path(),
        &missing,
        &format!(
            "name = \"{missing}\"\nruntime = \"docker\"\nimage = \"nowhere/none:1\"\n\
             image_pull_policy = \"never\"\ncommand = \"sleep\"\nargs = [\"600\"]\n"
        ),
    );
    let reason = wait_for(
        "a clear missing-image status",
        Duration::from_secs(30),
        || {
            let r = agent.replica(&missing, 0)?;
            let reason = r["reason"].as_str()?.to_string();
            reason.contains("ImageNotFound").then_some(reason)
        },
    );
    assert!(
        reason.contains(&format!("ImageNotFound: nowhere/none:1 on node {node}")),
        "{reason}"
    );

    let sick = unique("sick");
    agent.apply(
        tmp.path(),
        &sick,
        &format!(
            "name = \"{sick}\"\nruntime = \"docker\"\nimage = \"{image}\"\nimage_pull_policy = \"never\"\n\
             command = \"sleep\"\nargs = [\"600\"]\n[health]\nexec = [\"false\"]\ninterval = \"200ms\"\n\
             timeout = \"200ms\"\nfailure_threshold = 2\n[restart]\nbackoff_initial = \"100ms\"\n"
        ),
    );
    wait_for(
        "the unhealthy container restarted",
        Duration::from_secs(60),
        || {
            let r = agent.replica(&sick, 0)?;
            (r["restarts"].as_u64()? >= 1).then_some(())
        },
    );
}

#[test]
fn a_container_workload_fails_over_when_its_agent_dies() {
    let Some(image) = starling_testkit::docker::test_image() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    // Three nodes: after one dies, the other two are a majority and may replace its work.
    let nodes = [unique("dka"), unique("dkb"), unique("dkc")];
    let client = tmp.path().join("client");
    let bases: Vec<String> = (0..3).map(|_| free_base()).collect();
    let dirs: Vec<PathBuf> = nodes.iter().map(|n| tmp.path().join(n)).collect();
    let out = Command::new(BIN)
        .arg("init")
        .arg("--data-dir")
        .arg(&dirs[0])
        .arg("--cluster-dir")
        .arg(&client)
        .args(["--node-id", &nodes[0], "--advertise", &bases[0]])
        .output()
        .expect("init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Killed (agents and their containers) when the test ends, also when it fails.
    let mut children = Agents {
        children: Vec::new(),
        nodes: nodes.to_vec(),
    };
    for i in 0..3 {
        let mut command = Command::new(BIN);
        command.arg("agent").arg("--data-dir").arg(&dirs[i]).args([
            "--node-id",
            &nodes[i],
            "--listen",
            &bases[i],
            "--stop-grace-ms",
            "1000",
            "--dns",
            "off",
            "--no-container-dns",
        ]);
        if i > 0 {
            let token = Command::new(BIN)
                .args(["token", "create", "--data-dir"])
                .arg(&dirs[0])
                .output()
                .expect("token");
            command.args(["--join", String::from_utf8_lossy(&token.stdout).trim()]);
        }
        let log = std::fs::File::create(dirs[i].with_extension("log")).expect("log");
        children.children.push(Some(
            command
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("agent"),
        ));
        if i == 0 {
            wait_for("the first agent", Duration::from_secs(20), || {
                dirs[0].join("api.sock").exists().then_some(())
            });
        }
    }
    let cli = |i: usize, args: &[&str]| {
        Command::new(BIN)
            .arg("--cluster-dir")
            .arg(&client)
            .args(["--peer", &bases[i]])
            .args(args)
            .output()
            .expect("cli")
    };
    let name = unique("boxes");
    let spec = tmp.path().join("boxes.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"{name}\"\nruntime = \"docker\"\nimage = \"{image}\"\nimage_pull_policy = \"never\"\n\
             command = \"sleep\"\nargs = [\"600\"]\n"
        ),
    )
    .expect("spec");
    // Every node must know the other two before one dies: a member that joined through the
    // node that dies and has not heard of the third would see itself in a minority.
    wait_for(
        "three nodes alive, seen by each",
        Duration::from_secs(30),
        || {
            (0..3)
                .all(|i| {
                    let out = cli(i, &["get", "nodes", "-o", "json"]);
                    serde_json::from_slice::<Value>(&out.stdout)
                        .ok()
                        .and_then(|v| {
                            let alive = v
                                .as_array()?
                                .iter()
                                .filter(|n| n["state"] == "alive")
                                .count();
                            Some(alive == 3)
                        })
                        .unwrap_or(false)
                })
                .then_some(())
        },
    );
    let out = cli(2, &["apply", "-f", spec.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let holder = wait_for("the container running", Duration::from_secs(60), || {
        let ids = containers(&name);
        if ids.len() != 1 {
            return None;
        }
        let v: Value = serde_json::from_slice(&docker(&["inspect", &ids[0]]).stdout).ok()?;
        v[0]["Config"]["Labels"]["starling.node"]
            .as_str()
            .map(str::to_string)
    });
    let victim = nodes
        .iter()
        .position(|n| *n == holder)
        .expect("a node of ours");
    // The holder dies with its containers (a power cut).
    if let Some(mut child) = children.children[victim].take() {
        signal(i64::from(child.id()), Signal::SIGKILL);
        let _ = child.wait();
    }
    remove_labelled("starling.node", &holder);
    wait_for(
        "the container running on another node",
        Duration::from_secs(60),
        || {
            let ids = containers(&name);
            if ids.len() != 1 {
                return None;
            }
            let v: Value = serde_json::from_slice(&docker(&["inspect", &ids[0]]).stdout).ok()?;
            let on = v[0]["Config"]["Labels"]["starling.node"]
                .as_str()?
                .to_string();
            (on != holder && nodes.contains(&on)).then_some(())
        },
    );
}

/// Bytes as the CLI rounds them for people (`64Mi`, `1.5Gi`).
fn human_bytes(bytes: u64) -> String {
    for (unit, size) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes >= size {
            let value = bytes as f64 / size as f64;
            return if bytes.is_multiple_of(size) || value >= 100.0 {
                format!("{value:.0}{unit}")
            } else {
                format!("{value:.1}{unit}")
            };
        }
    }
    bytes.to_string()
}

/// Agent processes of a cluster test, with their node ids.
struct Agents {
    children: Vec<Option<Child>>,
    nodes: Vec<String>,
}

impl Drop for Agents {
    fn drop(&mut self) {
        for child in &mut self.children {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for node in &self.nodes {
            remove_labelled("starling.node", node);
        }
    }
}

#[test]
fn images_load_from_an_archive_and_a_node_without_an_engine_takes_no_containers() {
    let Some(image) = starling_testkit::docker::test_image() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    // `docker save` on one machine, `starling image load` on another (here: after removal).
    let tag = format!("starling-test/loaded:{}", std::process::id());
    assert!(docker(&["tag", image, &tag]).status.success());
    let archive = tmp.path().join("image.tar");
    let archive_text = archive.to_str().expect("utf-8");
    assert!(docker(&["save", "-o", archive_text, &tag]).status.success());
    assert!(docker(&["rmi", &tag]).status.success());
    let out = Command::new(BIN)
        .args(["image", "load", archive_text])
        .output()
        .expect("image load");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        docker(&["image", "inspect", &tag]).status.success(),
        "the image is on the engine after the load: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Progress went to stderr (not a terminal here: lines, no control characters), ending
    // with the archive's size loaded.
    let progress = String::from_utf8_lossy(&out.stderr);
    let size = std::fs::metadata(&archive).expect("archive").len();
    let last = format!("{archive_text}: {} loaded in ", human_bytes(size));
    assert!(
        progress
            .lines()
            .last()
            .is_some_and(|l| l.starts_with(&last)),
        "{last:?} at the end of {progress}"
    );
    assert!(
        !progress.chars().any(|c| c.is_control() && c != '\n'),
        "{progress:?}"
    );
    let _ = docker(&["rmi", &tag]);

    // An agent whose engine does not answer does not offer docker: the workload is Pending
    // with the reason, instead of failing on the node. The engine's socket appears later (a
    // daemon that starts after the agent): the node offers docker and the container runs.
    let node = unique("dk3");
    let late = tmp.path().join("late-docker.sock");
    let agent = Agent::start_with(
        &tmp.path().join("data"),
        &node,
        &["--docker-socket", late.to_str().expect("utf-8")],
    );
    let name = unique("nowhere");
    agent.apply(
        tmp.path(),
        &name,
        &format!(
            "name = \"{name}\"\nruntime = \"docker\"\nimage = \"{image}\"\ncommand = \"sleep\"\nargs = [\"600\"]\n"
        ),
    );
    let reason = wait_for("a Pending replica", Duration::from_secs(20), || {
        let r = agent.replica(&name, 0)?;
        (r["state"] == "Pending").then(|| r["reason"].as_str().unwrap_or_default().to_string())
    });
    assert!(
        reason.to_lowercase().contains("docker"),
        "the reason names the runtime: {reason}"
    );
    assert!(containers(&name).is_empty());
    std::os::unix::fs::symlink("/var/run/docker.sock", &late).expect("socket link");
    wait_for(
        "the container running once the engine answers",
        Duration::from_secs(60),
        || {
            (state(&agent.replica(&name, 0)) == "Running" && containers(&name).len() == 1)
                .then_some(())
        },
    );
}

/// An HTTP server on the port its agent picked, on loopback only: containers reach it through
/// the proxy, never directly.
const ECHO: &str = r#"
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"hello from a process")
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["STARLING_PORT_HTTP"])), H).serve_forever()
"#;

/// A container finds a service by name through the agent's DNS on the bridge gateway, and
/// reaches its instances (processes on the host) through the proxy there.
#[test]
fn a_container_resolves_a_service_by_name_and_connects() {
    let Some(image) = starling_testkit::docker::test_image() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = unique("dkdns");
    let agent = Agent::start_with(&tmp.path().join(&node), &node, &["--dns", "off"]);
    let echo = unique("echo");
    agent.apply(
        tmp.path(),
        &echo,
        &format!(
            "name = \"{echo}\"\ncommand = \"python3\"\nreplicas = 2\nargs = [\"-c\", '''{ECHO}''']\n\
             [[ports]]\nname = \"http\"\nport = 8080\n\
             [health]\ntcp = \"http\"\ninterval = \"500ms\"\ntimeout = \"500ms\"\n"
        ),
    );
    wait_for("the service's instances", Duration::from_secs(30), || {
        let r0 = agent.replica(&echo, 0)?;
        let r1 = agent.replica(&echo, 1)?;
        (r0["state"] == "Running" && r1["state"] == "Running").then_some(())
    });
    let client = unique("dnsclient");
    let env = echo.to_ascii_uppercase().replace('-', "_");
    // nslookup asks the server the engine wrote into resolv.conf from the agent's `dns`
    // option; the answer is the gateway, where the proxy listens at the service's port.
    let script = format!(
        "while true; do ip=$(nslookup {echo}.svc.starling | sed -n 's/^Address: *//p' | tail -n 1); \
         echo resolved=$ip env=$STARLING_SVC_{env}_HTTP; wget -q -O - http://$ip:8080/ && echo; \
         sleep 0.5; done"
    );
    agent.apply(
        tmp.path(),
        &client,
        &format!(
            "name = \"{client}\"\nruntime = \"docker\"\nimage = \"{image}\"\n\
             image_pull_policy = \"never\"\nuses = [\"{echo}\"]\ncommand = \"sh\"\n\
             args = [\"-c\", \"{script}\"]\n"
        ),
    );
    let logs = wait_for(
        "the container reached the service by name",
        Duration::from_secs(60),
        || {
            let out = agent.cli(&["logs", &client, "--tail", "50"]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            text.contains("hello from a process").then_some(text)
        },
    );
    let gateway = logs
        .lines()
        .find_map(|l| l.strip_prefix("resolved="))
        .and_then(|l| l.split_whitespace().next())
        .expect("a resolved address")
        .to_string();
    assert!(
        logs.contains(&format!("env={gateway}:8080")),
        "STARLING_SVC_ names the same gateway address and port: {logs}"
    );
    let container = containers(&client)
        .into_iter()
        .next()
        .expect("the client's container");
    let out = docker(&["exec", &container, "nslookup", "nothing-here.svc.starling"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("NXDOMAIN"),
        "an unknown name is NXDOMAIN: {text}"
    );
}
