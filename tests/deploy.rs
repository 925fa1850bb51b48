//! examples/deploy/ for real, systemd aside: the rolling upgrade script drives real agents
//! on loopback while this test plays systemd (it starts an agent again when it exits, as
//! `systemctl restart` does after the graceful stop), `starling node wait` times out on a node
//! that never comes back, and install.sh stages a device under a temp root and joins it.

mod support;

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{BIN, Fleet, spec, wait_for};

/// Every test here runs agents and measures what they do: one fleet at a time.
static ONE_FLEET_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_FLEET_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const WEB: usize = 6;
/// The node the script's CLI asks (`--peer`), whose view `node wait` judges by.
const ASKED: usize = 0;
/// How long the other nodes may take to see what the asked node saw: a few gossip rounds.
const AGREE_MAX: Duration = Duration::from_secs(10);

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/deploy")
        .join(name)
}

/// `node`'s generation as node `i` lists it.
fn generation(fleet: &Fleet, i: usize, node: &str) -> Option<u64> {
    fleet
        .json(i, &["get", "nodes"])?
        .as_array()?
        .iter()
        .find(|n| n["node"] == node)?["generation"]
        .as_u64()
}

/// Replicas of web running healthy as node `i` lists them.
fn web_healthy(fleet: &Fleet, i: usize) -> Option<usize> {
    let rows = fleet.json(i, &["status"])?;
    Some(
        rows.as_array()?
            .iter()
            .filter(|r| r["workload"] == "web" && r["state"] == "Running" && r["healthy"] == true)
            .count(),
    )
}

fn write_pid(dir: &Path, fleet: &Fleet, i: usize) {
    let pid = fleet.nodes[i].child.as_ref().expect("agent running").id();
    std::fs::write(dir.join(&fleet.nodes[i].name), pid.to_string()).expect("pid file");
}

/// The inode of the program a process runs.
fn exe_inode(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/exe"))
        .ok()
        .map(|m| m.ino())
}

/// Three agents running `bin`, with web's replicas running healthy.
fn fleet_running_web(bin: PathBuf) -> Fleet {
    let fleet = Fleet::start_with(3, bin, &[]);
    let web = spec(
        fleet.tmp.path(),
        "web",
        &format!(
            "name = \"web\"\ncommand = \"sleep\"\nargs = [\"1000\"]\nreplicas = {WEB}\n\
             [health]\nexec = [\"true\"]\ninterval = \"1s\"\ntimeout = \"1s\"\n\
             [resources]\ncpu = \"10m\"\nmemory = \"1Mi\"\n"
        ),
    );
    let out = fleet.cli(0, &["apply", "-f", &web]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("6 web replicas healthy", Duration::from_secs(60), || {
        (web_healthy(&fleet, 0) == Some(WEB) && fleet.live_processes("web") == WEB).then_some(())
    });
    fleet
}

/// Every line `child` writes, stderr's marked, as they come.
/// The next line, if one is there; once the writer is `done`, waits for each until the pipes
/// close (at most 5 s for one).
fn next_line(lines: &mpsc::Receiver<String>, done: bool) -> Option<String> {
    if done {
        lines.recv_timeout(Duration::from_secs(5)).ok()
    } else {
        lines.try_recv().ok()
    }
}

fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let (tx, lines) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let err_tx = tx.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = err_tx.send(format!("stderr: {line}"));
        }
    });
    lines
}

#[test]
fn a_rolling_upgrade_restarts_one_agent_at_a_time_and_waits_for_each_to_rejoin_healthy() {
    let _serial = one_at_a_time();
    let tmp = tempfile::tempdir().expect("tempdir");
    // The installed binary, as install.sh lays it out; the upgrade renames a new copy over it.
    let bin_dir = tmp.path().join("usr-local-bin");
    std::fs::create_dir_all(&bin_dir).expect("bin dir");
    let installed = bin_dir.join("starling");
    std::fs::copy(BIN, &installed).expect("install the binary");
    let old_inode = std::fs::metadata(&installed).expect("installed").ino();
    let new_build = tmp.path().join("starling-new");
    std::fs::copy(BIN, &new_build).expect("the new build");
    let pid_dir = tmp.path().join("pids");
    std::fs::create_dir_all(&pid_dir).expect("pid dir");

    let mut fleet = fleet_running_web(installed.clone());
    let names: Vec<String> = fleet.nodes.iter().map(|n| n.name.clone()).collect();
    let before: BTreeMap<String, u64> = names
        .iter()
        .map(|n| (n.clone(), generation(&fleet, 0, n).expect("a generation")))
        .collect();
    for i in 0..names.len() {
        write_pid(&pid_dir, &fleet, i);
    }

    // What systemctl restart does on a device, minus systemd: the new binary renamed over the
    // installed one, then SIGTERM to the agent; this test starts it again (below).
    let restart = "cp \"$3\" \"$BIN_DIR/.starling.new\" && mv -f \"$BIN_DIR/.starling.new\" \
                   \"$BIN_DIR/starling\" && kill -TERM \"$(cat \"$PID_DIR/$1\")\"";
    let cli = format!(
        "{BIN} --cluster-dir {} --peer {}",
        fleet.client.display(),
        fleet.nodes[ASKED].base
    );
    let mut script = Command::new("sh")
        .arg(example("rolling-upgrade.sh"))
        .args(["--binary", &new_build.to_string_lossy()])
        .args(["--timeout", "90s", "--restart-cmd", restart])
        .args(names.iter().map(|n| format!("{n}={n}.local")))
        .env("STARLING", &cli)
        .env("BIN_DIR", &bin_dir)
        .env("PID_DIR", &pid_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the script runs");
    let lines = lines_of(&mut script);

    let started = Instant::now();
    let mut transcript = Vec::new();
    // When each agent exited (the script's SIGTERM) and when the script said it was upgraded.
    let mut exited: BTreeMap<String, (Duration, Option<i32>)> = BTreeMap::new();
    let mut upgraded: BTreeMap<String, Duration> = BTreeMap::new();
    let mut checked: Vec<String> = Vec::new();
    // Upgraded nodes whose new life the other nodes have not all confirmed yet.
    let mut agreeing: Vec<(String, u64, Instant)> = Vec::new();
    let mut slowest_agreement = Duration::ZERO;
    let (mut fewest_live, mut fewest_listed) = (usize::MAX, usize::MAX);
    let status = loop {
        for (i, name) in names.iter().enumerate() {
            let gone = fleet.nodes[i]
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = gone {
                assert!(
                    !exited.contains_key(name),
                    "{name} exited a second time: {transcript:#?}"
                );
                exited.insert(name.clone(), (started.elapsed(), status.code()));
                fleet.nodes[i].child = None;
                fleet.spawn(i);
                write_pid(&pid_dir, &fleet, i);
            }
        }
        fewest_live = fewest_live.min(fleet.live_processes("web"));
        if let Some(n) = web_healthy(&fleet, 2) {
            fewest_listed = fewest_listed.min(n);
        }
        // Once the script has exited, every line it wrote is read (to the pipes' end) before
        // the loop ends: its last "upgraded" may still be on its way.
        let script_done = matches!(script.try_wait(), Ok(Some(_)));
        while let Some(line) = next_line(&lines, script_done) {
            eprintln!("{:>6.1}s  {line}", started.elapsed().as_secs_f64());
            if let Some(node) = line
                .strip_suffix(": upgraded")
                .and_then(|l| l.split_once("] "))
                .map(|(_, n)| n.to_string())
            {
                // The wait just returned. Its verdict is the view of the node it asked
                // (node-1, `--peer`): there the node must be back in a newer life with every
                // web replica running healthy, now.
                upgraded.insert(node.clone(), started.elapsed());
                let now = generation(&fleet, ASKED, &node).unwrap_or_else(|| {
                    panic!(
                        "{node} reported upgraded, but the node asked lists no generation for it"
                    )
                });
                assert!(
                    now > before[&node],
                    "{node} reported upgraded in generation {now}, not newer than {}",
                    before[&node]
                );
                let healthy = web_healthy(&fleet, ASKED);
                assert_eq!(
                    healthy,
                    Some(WEB),
                    "{node} upgraded with web short: {transcript:#?}"
                );
                // The other nodes hear the same within a gossip round or two.
                agreeing.push((node.clone(), before[&node], Instant::now()));
                checked.push(node);
            }
            transcript.push(line);
        }
        agreeing.retain(|(node, old, since)| {
            let agree = (0..names.len()).filter(|j| *j != ASKED).all(|j| {
                generation(&fleet, j, node).is_some_and(|g| g > *old)
                    && web_healthy(&fleet, j) == Some(WEB)
            });
            if agree {
                slowest_agreement = slowest_agreement.max(since.elapsed());
            }
            assert!(
                agree || since.elapsed() < AGREE_MAX,
                "the other nodes did not see {node} back with web whole within {AGREE_MAX:?}"
            );
            !agree
        });
        if script_done
            && agreeing.is_empty()
            && let Ok(status) = script.wait()
        {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the rolling upgrade did not finish in 240 s: {transcript:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(300));
    while let Ok(line) = lines.try_recv() {
        transcript.push(line);
    }
    eprintln!(
        "rolling upgrade of 3 agents: {:.1} s; web ({WEB} desired) fewest live processes {fewest_live}, \
         fewest listed running healthy {fewest_listed}; the other nodes agreed within \
         {slowest_agreement:?}; exits {exited:?}; upgraded {upgraded:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(status.success(), "the script failed: {transcript:#?}");
    assert_eq!(checked, names, "each node upgraded once, in order");
    assert!(transcript.iter().any(|l| l == "all 3 devices upgraded"));
    // One device at a time: the next agent is asked to stop only after the previous one was
    // reported back healthy.
    for pair in names.windows(2) {
        assert!(
            exited[&pair[1]].0 > upgraded[&pair[0]],
            "{} was restarted before {} was back: exits {exited:?}, upgraded {upgraded:?}",
            pair[1],
            pair[0]
        );
    }
    for (name, (_, code)) in &exited {
        assert_eq!(*code, Some(0), "{name} did not stop gracefully on SIGTERM");
    }
    // Every agent now runs the binary the upgrade put in place, not the one it started on.
    for node in &fleet.nodes {
        let pid = node.child.as_ref().expect("agent running").id();
        let inode = exe_inode(pid).expect("the agent's program");
        assert_ne!(inode, old_inode, "{} still runs the old binary", node.name);
    }
    assert!(
        fewest_live + 1 >= WEB,
        "web fell to {fewest_live} live processes of {WEB} during the upgrade"
    );
}

#[test]
fn waiting_for_a_node_that_never_comes_back_times_out_naming_it() {
    let _serial = one_at_a_time();
    let mut fleet = Fleet::start(2);
    let gone = generation(&fleet, 0, "node-2").expect("a generation");
    fleet.stop(1, Duration::from_secs(10));
    let started = Instant::now();
    let out = fleet.cli(
        0,
        &[
            "node",
            "wait",
            "node-2",
            "--restarted-after",
            &gone.to_string(),
            "--healthy",
            "--timeout",
            "3s",
        ],
    );
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "node wait on a stopped node: {took:?}, {:?}\n{stderr}",
        out.status
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: node node-2 did not rejoin healthy within 3s"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("generation {gone}")), "{stderr}");
    assert!(took >= Duration::from_secs(3), "gave up early: {took:?}");
    assert!(
        took < Duration::from_secs(15),
        "overran its timeout: {took:?}"
    );
    // The same wait on a node that does not exist says so by name.
    let out = fleet.cli(0, &["node", "wait", "node-9", "--timeout", "1s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("node-9 is not a member"), "{stderr}");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn run_sh(script: &str, args: &[&str]) -> std::process::Output {
    Command::new("sh")
        .arg(example(script))
        .args(args)
        .output()
        .expect("sh runs")
}

#[test]
fn install_stages_a_device_joins_it_and_its_unit_line_starts_a_member() {
    let _serial = one_at_a_time();
    let fleet = Fleet::start(1);
    let root = fleet.tmp.path().join("device-root");

    // Clear errors for what is missing.
    let out = run_sh("install.sh", &["--root", &root.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing --binary PATH"));
    let out = run_sh(
        "install.sh",
        &["--binary", BIN, "--root", &root.to_string_lossy()],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing --token TOKEN"));
    let out = run_sh("install.sh", &["--binary", BIN, "--token"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token needs a value"));
    let out = run_sh("rolling-upgrade.sh", &["--binary", BIN]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no devices given"));

    let token = Command::new(BIN)
        .args(["token", "create", "--data-dir"])
        .arg(&fleet.nodes[0].dir)
        .output()
        .expect("token create");
    let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
    let base = support::free_base();
    let out = run_sh(
        "install.sh",
        &[
            "--binary",
            BIN,
            "--token",
            &token,
            "--root",
            &root.to_string_lossy(),
            "--no-start",
            "--node-id",
            "device-1",
            "--listen",
            &base,
            "--advertise",
            &base,
            "--seed",
            &fleet.nodes[0].base,
            "--label",
            "site=lab",
            "--agent-args",
            "--dns off --no-container-dns --stop-grace-ms 500",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("joined as node device-1"), "{stdout}");
    assert!(stdout.contains("not started (--no-start)"), "{stdout}");

    let bin = root.join("usr/local/bin/starling");
    let unit = root.join("etc/systemd/system/starling.service");
    let env = root.join("etc/starling/agent.env");
    let data = root.join("var/lib/starling");
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(mode(&unit), 0o644);
    assert_eq!(mode(&root.join("etc/starling")), 0o700);
    assert_eq!(mode(&env), 0o600, "the env file holds the token");
    assert_eq!(mode(&data), 0o700);
    assert_eq!(
        std::fs::read(&bin).expect("binary"),
        std::fs::read(BIN).expect("built binary")
    );
    let unit_text = std::fs::read_to_string(&unit).expect("unit");
    assert_eq!(
        unit_text,
        std::fs::read_to_string(example("starling.service")).expect("example unit")
    );
    let exec = unit_text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    assert!(unit_text.contains("EnvironmentFile=/etc/starling/agent.env"));
    assert!(unit_text.contains("StateDirectory=starling"));
    assert!(data.join("cluster/node.pem").exists(), "the device joined");
    let env_text = std::fs::read_to_string(&env).expect("env file");
    assert!(
        env_text.contains(&format!("STARLING_JOIN_TOKEN={token}\n")),
        "{env_text}"
    );
    let opts = env_text
        .lines()
        .find_map(|l| l.strip_prefix("STARLING_OPTS=\""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("STARLING_OPTS");
    assert!(
        opts.contains(&format!("--seed {}", fleet.nodes[0].base)),
        "{opts}"
    );
    assert!(opts.contains("--label site=lab"), "{opts}");

    // Start the agent the way the unit's ExecStart does (paths under the staging root,
    // ${STARLING_JOIN_TOKEN} and $STARLING_OPTS expanded as systemd expands them): it must
    // come up as a member the fleet sees.
    let mut words: Vec<String> = Vec::new();
    for word in exec.split_whitespace() {
        match word {
            "${STARLING_JOIN_TOKEN}" => words.push(token.clone()),
            "$STARLING_OPTS" => words.extend(opts.split_whitespace().map(str::to_string)),
            "/usr/local/bin/starling" => words.push(bin.to_string_lossy().into_owned()),
            "/var/lib/starling" => words.push(data.to_string_lossy().into_owned()),
            other => words.push(other.to_string()),
        }
    }
    let log = std::fs::File::create(fleet.tmp.path().join("device-1.log")).expect("log");
    let mut agent = Command::new(&words[0])
        .args(&words[1..])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the unit's command starts");
    let seen = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(
            "device-1 alive in node-1's view",
            Duration::from_secs(30),
            || (fleet.state_of(0, "device-1").as_deref() == Some("alive")).then_some(()),
        )
    }));
    support::signal(i64::from(agent.id()), nix::sys::signal::Signal::SIGTERM);
    let _ = agent.wait();
    if seen.is_err() {
        let log =
            std::fs::read_to_string(fleet.tmp.path().join("device-1.log")).unwrap_or_default();
        panic!("the staged device never showed up alive; its log:\n{log}\ncommand: {words:?}");
    }
}

#[test]
fn install_over_ssh_copies_the_files_and_passes_the_token_on_stdin() {
    // ssh and scp stand-ins that do the same here: the far side is this machine, so the
    // script's quoting, its copy to a temp dir there, the token on stdin and the clean-up
    // all run for real; only the transport is local.
    let tmp = tempfile::tempdir().expect("tempdir");
    let ssh = tmp.path().join("ssh");
    let scp = tmp.path().join("scp");
    std::fs::write(&ssh, "#!/bin/sh\nshift\nexec sh -c \"$*\"\n").expect("ssh");
    std::fs::write(
        &scp,
        "#!/bin/sh\n[ \"$1\" = -q ] && shift\nexec cp \"$1\" \"${2#*:}\"\n",
    )
    .expect("scp");
    for f in [&ssh, &scp] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    // A root with a quote in its name: every word crosses ssh as one word.
    let root = tmp.path().join("device's root");
    let token = "starling1.aa.bb.10.0.0.2:7946.cc";
    let mut child = Command::new("sh")
        .arg(example("install.sh"))
        .args(["--binary", BIN, "--token", "-", "--no-join", "--no-start"])
        .args(["--root", &root.to_string_lossy(), "--label", "site=far"])
        .arg("pi@device-7")
        .env("STARLING_SSH", &ssh)
        .env("STARLING_SCP", &scp)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("install.sh runs");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{token}").expect("token on stdin");
    }
    let out = child.wait_with_output().expect("install.sh ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copied_to = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pi@device-7: files copied to "))
        .and_then(|l| l.strip_suffix("; installing there"))
        .expect("the remote temp dir");
    assert!(
        !Path::new(copied_to).exists(),
        "{copied_to} was left behind"
    );
    let env = root.join("etc/starling/agent.env");
    assert_eq!(mode(&env), 0o600);
    let env_text = std::fs::read_to_string(&env).expect("env file");
    assert!(
        env_text.contains(&format!("STARLING_JOIN_TOKEN={token}\n")),
        "{env_text}"
    );
    assert!(env_text.contains("--label site=far"), "{env_text}");
    assert_eq!(mode(&root.join("usr/local/bin/starling")), 0o755);
    assert_eq!(
        mode(&root.join("etc/systemd/system/starling.service")),
        0o644
    );
}

#[test]
fn install_with_discover_stages_a_device_that_waits_to_be_admitted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("device-root");
    let root_arg = root.to_string_lossy().to_string();
    let out = run_sh(
        "install.sh",
        &[
            "--binary",
            BIN,
            "--discover",
            "--token",
            "stl1.x",
            "--root",
            &root_arg,
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--discover and --token: pick one"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_sh(
        "install.sh",
        &[
            "--binary",
            BIN,
            "--discover",
            "--root",
            &root_arg,
            "--no-start",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = std::fs::read_to_string(root.join("etc/starling/agent.env")).expect("env file");
    // No token (the unit then passes `--join ""`, which the agent reads as no join), and the
    // agent told to wait on its LAN.
    assert!(env.contains("STARLING_JOIN_TOKEN=\n"), "{env}");
    assert!(env.contains("--discover mdns"), "{env}");
    assert!(
        !root.join("var/lib/starling/cluster").exists(),
        "nothing joined at install"
    );
}
