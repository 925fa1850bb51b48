//! End-to-end tests of a single agent with the process runtime: real agent process, real
//! workload processes, the CLI over the local socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

mod support;

use support::{BIN, alive, signal, wait_for};

/// A running agent; killed (SIGKILL) when dropped, so a failing test leaves nothing behind
/// but its workloads, which `Drop` also stops.
struct Agent {
    dir: PathBuf,
    child: Option<Child>,
}

impl Agent {
    fn start(dir: &Path) -> Agent {
        let log = std::fs::File::create(dir.with_extension("agent.log")).expect("agent log");
        let child = Command::new(BIN)
            .args([
                "agent",
                "--node-id",
                "n1",
                "--stop-grace-ms",
                "500",
                "--data-dir",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent starts");
        let agent = Agent {
            dir: dir.to_path_buf(),
            child: Some(child),
        };
        wait_for("the agent's API socket", Duration::from_secs(20), || {
            dir.join("api.sock").exists().then_some(())
        });
        agent
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(args)
            .output()
            .expect("cli runs")
    }

    fn replicas(&self) -> Vec<Value> {
        let out = self.cli(&["status", "-o", "json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout)
            .expect("JSON")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Replicas in state Running.
    fn running(&self) -> usize {
        self.replicas()
            .iter()
            .filter(|r| r["state"] == "Running")
            .count()
    }

    /// Applies spec files and asserts the agent accepted them.
    fn apply(&self, specs: &[&Path]) {
        let mut args = vec!["apply"];
        for spec in specs {
            args.extend(["-f", spec.to_str().expect("utf-8 path")]);
        }
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn replica(&self, workload: &str, index: u64) -> Option<Value> {
        self.replicas()
            .into_iter()
            .find(|r| r["workload"] == workload && r["replica"] == index)
    }

    /// Stops the agent with SIGTERM (workloads keep running) and waits for it.
    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(i64::from(child.id()), Signal::SIGTERM);
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in all_pids(&self.dir) {
            // Each workload leads its own process group: end the whole group.
            if let Ok(pid) = i32::try_from(pid)
                && pid > 1
            {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

fn spec_file(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, body).expect("write spec");
    path
}

/// The pid recorded for a replica by the process runtime.
fn pid_of(dir: &Path, workload: &str, index: u32) -> Option<i64> {
    let file = dir.join(format!("runtime/replicas/{workload}-{index}/instance.json"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()?;
    v["pid"].as_i64()
}

/// The pids of every live instance's record (`instance-<N>.json`, and `instance.json`, which
/// repeats the newest), for the cleanup.
fn all_pids(dir: &Path) -> Vec<i64> {
    let Ok(entries) = std::fs::read_dir(dir.join("runtime/replicas")) else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_dir(e.path()).ok())
        .flatten()
        .filter_map(|f| f.ok())
        .filter(|f| {
            let name = f.file_name().to_string_lossy().into_owned();
            name.starts_with("instance") && name.ends_with(".json")
        })
        .filter_map(|f| std::fs::read_to_string(f.path()).ok())
        .filter_map(|t| serde_json::from_str::<Value>(&t).ok())
        .filter_map(|v| v["pid"].as_i64())
        .collect()
}

fn state(r: &Option<Value>) -> String {
    r.as_ref()
        .map(|r| r["state"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

#[test]
fn an_applied_workload_runs_and_a_killed_process_comes_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let agent = Agent::start(&dir);
    let spec = spec_file(
        tmp.path(),
        "sleeper",
        "name = \"sleeper\"\ncommand = \"sleep\"\nargs = [\"300\"]\nreplicas = 2\n[restart]\nbackoff_initial = \"100ms\"\n",
    );
    let out = agent.cli(&["apply", "-f", spec.to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sleeper written (revision 1@"));
    for index in 0..2 {
        wait_for("both replicas running", Duration::from_secs(15), || {
            (state(&agent.replica("sleeper", index)) == "Running").then_some(())
        });
    }
    let pid = wait_for("a pid file", Duration::from_secs(5), || {
        pid_of(&dir, "sleeper", 0)
    });
    assert!(alive(pid));
    signal(pid, Signal::SIGKILL);
    let new_pid = wait_for("the replica to come back", Duration::from_secs(15), || {
        let r = agent.replica("sleeper", 0)?;
        let p = pid_of(&dir, "sleeper", 0)?;
        (r["state"] == "Running" && r["restarts"].as_u64() >= Some(1) && p != pid && alive(p))
            .then_some(p)
    });
    assert_ne!(new_pid, pid);
    assert!(
        !alive(pid),
        "the killed process was reaped, not left a zombie"
    );
}

#[test]
fn scale_and_delete_stop_the_processes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let agent = Agent::start(&dir);
    let spec = spec_file(
        tmp.path(),
        "w",
        "name = \"w\"\ncommand = \"sleep\"\nargs = [\"300\"]\nreplicas = 3\n",
    );
    agent.apply(&[&spec]);
    wait_for("3 running", Duration::from_secs(15), || {
        (agent.running() == 3).then_some(())
    });
    let pid2 = pid_of(&dir, "w", 2).expect("pid of replica 2");
    assert!(agent.cli(&["scale", "w=1"]).status.success());
    wait_for("scaled to 1", Duration::from_secs(15), || {
        (agent.replicas().len() == 1 && !alive(pid2)).then_some(())
    });
    let pid0 = pid_of(&dir, "w", 0).expect("pid of replica 0");
    assert!(agent.cli(&["delete", "w"]).status.success());
    wait_for("deleted", Duration::from_secs(15), || {
        (agent.replicas().is_empty() && !alive(pid0)).then_some(())
    });
    let out = agent.cli(&["delete", "w"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no workload named w"));
}

#[test]
fn a_failing_health_check_restarts_the_replica() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let agent = Agent::start(&dir);
    // Healthy while the marker file exists; removing it makes the probe fail.
    let marker = tmp.path().join("healthy");
    std::fs::write(&marker, "").expect("marker");
    let spec = spec_file(
        tmp.path(),
        "checked",
        &format!(
            "name = \"checked\"\ncommand = \"sleep\"\nargs = [\"300\"]\n[health]\nexec = [\"test\", \"-e\", \"{}\"]\ninterval = \"200ms\"\ntimeout = \"200ms\"\nfailure_threshold = 2\n[restart]\nbackoff_initial = \"100ms\"\n",
            marker.display()
        ),
    );
    agent.apply(&[&spec]);
    wait_for("healthy", Duration::from_secs(15), || {
        agent
            .replica("checked", 0)
            .filter(|r| r["healthy"] == true)
            .map(|_| ())
    });
    let pid = pid_of(&dir, "checked", 0).expect("pid");
    std::fs::remove_file(&marker).expect("remove marker");
    wait_for(
        "a restart after failed probes",
        Duration::from_secs(15),
        || {
            agent
                .replica("checked", 0)
                .filter(|r| r["restarts"].as_u64() >= Some(1))
                .map(|_| ())
        },
    );
    assert!(!alive(pid), "the unhealthy instance was stopped");
    let r = agent.replica("checked", 0).expect("still tracked");
    assert_ne!(
        r["healthy"], true,
        "not counted as available while the probe fails"
    );
}

#[test]
fn an_agent_restart_adopts_its_processes_without_duplicates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut agent = Agent::start(&dir);
    let spec = spec_file(
        tmp.path(),
        "keeper",
        "name = \"keeper\"\ncommand = \"sleep\"\nargs = [\"300\"]\nreplicas = 2\n",
    );
    agent.apply(&[&spec]);
    wait_for("running", Duration::from_secs(15), || {
        (agent.running() == 2).then_some(())
    });
    let before = [
        pid_of(&dir, "keeper", 0).expect("pid"),
        pid_of(&dir, "keeper", 1).expect("pid"),
    ];
    agent.terminate();
    assert!(
        before.iter().all(|p| alive(*p)),
        "workloads outlive the agent"
    );
    let agent = Agent::start(&dir);
    wait_for("adopted", Duration::from_secs(15), || {
        (agent.running() == 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let after = [
        pid_of(&dir, "keeper", 0).expect("pid"),
        pid_of(&dir, "keeper", 1).expect("pid"),
    ];
    assert_eq!(before, after, "the same processes, not new ones");
    assert!(agent.replicas().iter().all(|r| r["restarts"] == 0));
    let sleepers = Command::new("pgrep")
        .args(["-f", "^sleep 300$"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0);
    assert!(sleepers >= 2);
    for p in before {
        assert!(alive(p));
    }
}

#[test]
fn a_bad_command_gets_a_clear_status_and_other_replicas_are_unaffected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let agent = Agent::start(&dir);
    let bad = spec_file(
        tmp.path(),
        "bad",
        "name = \"bad\"\ncommand = \"/no/such/binary\"\n[restart]\nbackoff_initial = \"100ms\"\nbackoff_max = \"400ms\"\n",
    );
    let good = spec_file(
        tmp.path(),
        "good",
        "name = \"good\"\ncommand = \"sleep\"\nargs = [\"300\"]\n",
    );
    agent.apply(&[&bad, &good]);
    let r = wait_for("a crash loop", Duration::from_secs(20), || {
        agent
            .replica("bad", 0)
            .filter(|r| r["state"] == "CrashLoop")
    });
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("/no/such/binary"),
        "reason names the command: {reason}"
    );
    assert_eq!(state(&agent.replica("good", 0)), "Running");
}

#[test]
fn a_malformed_spec_is_refused_with_every_field_error_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let agent = Agent::start(&dir);
    let out = agent.cli(&[
        "apply",
        "-f",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/specs/invalid/broken.toml"
        ),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("replicas: must be between 0 and 10000, got -1"),
        "{text}"
    );
    let workloads = agent.cli(&["get", "workloads", "-o", "json"]);
    assert_eq!(String::from_utf8_lossy(&workloads.stdout).trim(), "[]");
}

#[test]
fn a_port_already_taken_shows_as_a_crash_loop_with_the_workload_s_own_words() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let agent = Agent::start(&dir);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let spec = spec_file(
        tmp.path(),
        "web",
        &format!(
            "name = \"web\"\ncommand = \"python3\"\nargs = [\"-m\", \"http.server\", \"--bind\", \"127.0.0.1\", \"{port}\"]\n[restart]\nbackoff_initial = \"100ms\"\nbackoff_max = \"400ms\"\n"
        ),
    );
    agent.apply(&[&spec]);
    let r = wait_for("a crash loop", Duration::from_secs(30), || {
        agent
            .replica("web", 0)
            .filter(|r| r["state"] == "CrashLoop")
    });
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("exited with code 1") && reason.contains("Address already in use"),
        "{reason}"
    );
    assert_eq!(r["last_exit_code"], 1);
    let logs = agent.cli(&["logs", "web", "--tail", "5"]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("Address already in use"));
    drop(taken);
}

/// Two replicas of a process workload without a fixed host port share one node: each listens on
/// its own picked port (`${port.http}`), passes its HTTP check there and is published there,
/// and after an agent restart the adopted instances are checked there again.
#[test]
fn replicas_without_a_fixed_port_share_a_node_each_checked_on_its_own_port() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut agent = Agent::start(&dir);
    let spec = spec_file(
        tmp.path(),
        "site",
        "name = \"site\"\ncommand = \"python3\"\n\
         args = [\"-m\", \"http.server\", \"--bind\", \"127.0.0.1\", \"${port.http}\"]\nreplicas = 2\n\
         [[ports]]\nname = \"http\"\nport = 8080\n\
         [health]\nhttp = { port = \"http\", path = \"/\" }\ninterval = \"200ms\"\ntimeout = \"200ms\"\n\
         initial_delay = \"1s\"\nfailure_threshold = 10\n",
    );
    agent.apply(&[&spec]);
    let healthy = |agent: &Agent| {
        (0..2).all(|i| {
            agent
                .replica("site", i)
                .is_some_and(|r| r["state"] == "Running" && r["healthy"] == true)
        })
    };
    wait_for("both replicas healthy", Duration::from_secs(30), || {
        healthy(&agent).then_some(())
    });
    let addresses = |agent: &Agent| {
        let out = agent.cli(&["get", "endpoints", "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let mut found: Vec<String> = v
            .as_array()?
            .iter()
            .filter(|e| e["workload"] == "site" && e["port"] == "http")
            .filter_map(|e| e["address"].as_str().map(str::to_string))
            .collect();
        found.sort();
        (found.len() == 2).then_some(found)
    };
    let published = wait_for("two endpoints", Duration::from_secs(10), || {
        addresses(&agent)
    });
    assert_ne!(published[0], published[1], "each replica has its own port");
    for address in &published {
        assert!(
            !address.ends_with(":8080"),
            "a picked port, not the spec's: {address}"
        );
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(address).expect("the replica listens there");
        stream
            .write_all(b"GET / HTTP/1.0\r\n\r\n")
            .expect("request");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.0 200"), "{address}: {answer}");
    }
    let before = [0, 1].map(|i| pid_of(&dir, "site", i).expect("pid"));
    agent.terminate();
    let agent = Agent::start(&dir);
    wait_for(
        "both adopted replicas healthy again",
        Duration::from_secs(30),
        || healthy(&agent).then_some(()),
    );
    assert_eq!(
        before,
        [0, 1].map(|i| pid_of(&dir, "site", i).expect("pid"))
    );
    assert_eq!(
        addresses(&agent),
        Some(published),
        "adopted on the same ports"
    );
    assert!(agent.replicas().iter().all(|r| r["restarts"] == 0));
}
