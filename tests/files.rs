//! End-to-end tests of what the `starling` binary leaves on disk: keys and state readable by
//! their owner only, and an agent that refuses to start while a key is open to others.

mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{BIN, free_base, signal, wait_for};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// Every dir under `root` (itself included) and every file, except what `skip` names, with
/// its mode. Sockets are skipped: their mode means nothing for reading.
fn modes(root: &Path, skip: &[&str]) -> Vec<(PathBuf, bool, u32)> {
    let mut found = vec![(root.to_path_buf(), true, mode(root))];
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("list") {
            let entry = entry.expect("entry");
            let path = entry.path();
            let kind = entry.file_type().expect("file type");
            let name = entry.file_name().to_string_lossy().into_owned();
            if skip.contains(&name.as_str()) || kind.is_socket() {
                continue;
            }
            found.push((path.clone(), kind.is_dir(), mode(&path)));
            if kind.is_dir() {
                dirs.push(path);
            }
        }
    }
    found
}

fn assert_private(root: &Path, skip: &[&str]) {
    let found = modes(root, skip);
    assert!(found.len() > 1, "{} holds files", root.display());
    for (path, is_dir, mode) in found {
        let want = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:04o}", path.display());
    }
}

fn init(data: &Path, client: &Path, base: &str) {
    let out = Command::new(BIN)
        .arg("init")
        .arg("--data-dir")
        .arg(data)
        .arg("--cluster-dir")
        .arg(client)
        .args(["--node-id", "n1", "--advertise", base])
        .output()
        .expect("init runs");
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn agent(data: &Path, base: &str) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("agent")
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", base]);
    command
}

/// Runs `command` to its end, killing it if it is still running after `timeout`.
fn output_within(mut command: Command, timeout: Duration) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let pid = i64::from(child.id());
    let start = Instant::now();
    let waiter = std::thread::spawn(move || child.wait_with_output().expect("wait"));
    while !waiter.is_finished() {
        if start.elapsed() > timeout {
            signal(pid, Signal::SIGKILL);
            let _ = waiter.join();
            panic!("still running after {timeout:?}: it did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    waiter.join().expect("waiter")
}

/// Kills the agent when the test ends, passed or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        signal(i64::from(self.0.id()), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

#[test]
fn keys_and_state_are_private_and_an_exposed_key_stops_the_agent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, client) = (tmp.path().join("data"), tmp.path().join("client"));
    let base = free_base();
    init(&data, &client, &base);
    assert_private(&data, &[]);
    assert_private(&client, &[]);

    let key = data.join("cluster/node.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = output_within(agent(&data, &base), Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent refused to start");
    assert!(
        stderr.contains(&key.display().to_string()) && stderr.contains("0644"),
        "the error names the file and its mode: {stderr}"
    );
    assert!(
        stderr.contains(&format!("chmod 600 {}", key.display())),
        "and the fix: {stderr}"
    );
    assert!(
        !data.join("api.sock").exists(),
        "nothing was served from the exposed dir"
    );

    // Fixed, the agent starts, and what it writes is private too.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let log = std::fs::File::create(tmp.path().join("agent.log")).expect("log");
    let running = Running(
        agent(&data, &base)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent starts"),
    );
    let socket = data.join("api.sock");
    wait_for("the agent's API socket", Duration::from_secs(20), || {
        socket.exists().then_some(())
    });
    // The process runtime's per-replica dirs are the workloads' own, not agent state.
    assert_private(&data, &["runtime"]);
    drop(running);
}
