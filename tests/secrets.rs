//! Secrets and configs end to end on real agents: sealed by the CLI, replicated as ciphertext,
//! opened only on the nodes that run a replica, delivered on tmpfs, rotated by a rolling
//! update or rewritten in place with a signal; and never found in clear on disk or in logs.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::{BIN, Fleet, spec, wait_for};

const MARKER: &str = "MARKER-7f3a9c-first";
const ROTATED: &str = "MARKER-7f3a9c-second";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed: {}", text(&out));
    text(&out)
}

/// Every line the replicas wrote to `dir`, by file.
fn outputs(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read_to_string(e.path()).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Files under `dir` (recursively) whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file()
                && std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                found.push(path);
            }
        }
    }
    found
}

/// Every frame on every interface while it runs, as someone on the wire would see them (root
/// only: CI requires it with STARLING_REQUIRE_NETNS, elsewhere the capture is skipped).
struct Capture {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<u8>>,
}

impl Capture {
    fn start() -> Option<Capture> {
        use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};
        use std::os::fd::AsRawFd;
        let fd = match nix::sys::socket::socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK,
            SockProtocol::EthAll,
        ) {
            Ok(fd) => fd,
            Err(e) if std::env::var_os("STARLING_REQUIRE_NETNS").is_some() => {
                panic!("a packet capture needs root (CAP_NET_RAW): {e}")
            }
            Err(e) => {
                eprintln!("not capturing the wire (needs root): {e}");
                return None;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 65_536];
            while !flag.load(Ordering::Relaxed) && seen.len() < 512 << 20 {
                match nix::sys::socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            seen
        });
        Some(Capture { stop, handle })
    }

    fn finish(self) -> Vec<u8> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("capture thread")
    }
}

#[test]
fn a_secret_set_at_one_node_reaches_replicas_elsewhere_and_nowhere_else_in_clear() {
    let fleet = Fleet::start(3);
    fleet.wait_members(3);
    let capture = Capture::start();
    let out_dir = tempfile::tempdir().expect("output dir");
    let outs = out_dir.path().display().to_string();

    // Written at node-1 before any workload uses it: sealed to every member.
    let value = fleet.tmp.path().join("db-password");
    std::fs::write(&value, MARKER).expect("value file");
    let set = ok(
        fleet.cli(
            0,
            &[
                "secret",
                "set",
                "db",
                "--from-file",
                &format!("password={}", value.display()),
            ],
        ),
        "secret set",
    );
    assert!(set.contains("secret/db written"), "{set}");
    std::fs::remove_file(&value).expect("the operator's copy goes");

    // Each replica writes where it runs, what it read from its tmpfs file and variable, and
    // the filesystem type of its secrets dir.
    let reader = spec(
        fleet.tmp.path(),
        "reader",
        &format!(
            r#"name = "reader"
command = "sh"
args = ["-c", "f={outs}/reader-$STARLING_REPLICA-$STARLING_REVISION; echo node=$STARLING_NODE > $f.tmp; echo file=$(cat $STARLING_SECRETS_DIR/db/password) >> $f.tmp; echo env=$DB_PASSWORD >> $f.tmp; echo fs=$(stat -f -c %T $STARLING_SECRETS_DIR) >> $f.tmp; mv $f.tmp $f; exec sleep 600"]
replicas = 3
[[secrets]]
name = "db"
env = "DB_PASSWORD"
"#
        ),
    );
    ok(fleet.cli(1, &["apply", "-f", &reader]), "apply reader");
    let first = wait_for(
        "3 replicas reading the secret",
        Duration::from_secs(40),
        || {
            let o = outputs(out_dir.path());
            (o.iter().filter(|(n, _)| n.ends_with("-1")).count() == 3).then_some(o)
        },
    );
    let mut nodes = std::collections::BTreeSet::new();
    for (name, body) in &first {
        assert!(body.contains(&format!("file={MARKER}")), "{name}: {body}");
        assert!(body.contains(&format!("env={MARKER}")), "{name}: {body}");
        assert!(
            body.contains("fs=tmpfs"),
            "{name}: secrets must sit on tmpfs: {body}"
        );
        nodes.extend(
            body.lines()
                .find_map(|l| l.strip_prefix("node=").map(str::to_string)),
        );
    }
    println!("first version read on nodes {nodes:?}");
    assert!(
        nodes.iter().any(|n| n != &fleet.nodes[0].name),
        "a node other than the writer's peer opened it: {nodes:?}"
    );

    // Metadata only: no value in any listing.
    let list = ok(
        fleet.cli(2, &["secret", "get", "db", "-o", "json"]),
        "secret get",
    );
    assert!(!list.contains(MARKER), "{list}");
    assert!(list.contains("\"used_by\":[\"reader\"]"), "{list}");

    // A new version rolls the workload (revision 2) and every replica reads it.
    let value = fleet.tmp.path().join("db-password-2");
    std::fs::write(&value, ROTATED).expect("value file");
    let set = ok(
        fleet.cli(
            2,
            &[
                "secret",
                "set",
                "db",
                "--from-file",
                &format!("password={}", value.display()),
            ],
        ),
        "secret set again",
    );
    std::fs::remove_file(&value).expect("the operator's copy goes");
    assert!(set.contains("rolling out to reader"), "{set}");
    let second = wait_for(
        "3 replicas on the new version",
        Duration::from_secs(60),
        || {
            let o = outputs(out_dir.path());
            let done: Vec<_> = o
                .iter()
                .filter(|(n, b)| n.ends_with("-2") && b.contains(&format!("file={ROTATED}")))
                .collect();
            (done.len() == 3).then_some(o)
        },
    );
    assert!(
        second
            .iter()
            .all(|(n, b)| n.ends_with("-1") || b.contains(&format!("env={ROTATED}")))
    );
    wait_for(
        "one instance per replica after the rollout",
        Duration::from_secs(30),
        || (fleet.live_processes("reader") == 3).then_some(()),
    );

    // Nothing in clear on the wire: gossip is sealed, QUIC (the CLI's write, anti-entropy)
    // is TLS, and what either carries of a secret is ciphertext.
    if let Some(capture) = capture {
        // The capture itself sees what crosses loopback in clear.
        let canary = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let to = canary.local_addr().expect("addr");
        canary.send_to(b"CAPTURE-CANARY-51f2", to).expect("send");
        std::thread::sleep(Duration::from_millis(100));
        let wire = capture.finish();
        assert!(
            wire.windows(19).any(|w| w == b"CAPTURE-CANARY-51f2"),
            "the capture sees a clear packet on loopback"
        );
        println!("captured {} bytes of traffic", wire.len());
        assert!(wire.len() > 10_000, "the capture saw the fleet's traffic");
        for marker in [MARKER, ROTATED] {
            assert!(
                !wire.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "{marker} crossed the wire in clear"
            );
        }
    }
    // Nothing in clear in any data dir, desired.bin (the decrypted sync entries) included, nor
    // in any agent log. (The scan itself finds a planted copy.)
    let planted = fleet.tmp.path().join("planted");
    std::fs::write(&planted, format!("x{MARKER}x")).expect("plant");
    assert_eq!(
        files_holding(fleet.tmp.path(), MARKER.as_bytes()),
        vec![planted.clone()]
    );
    std::fs::remove_file(&planted).expect("unplant");
    for marker in [MARKER, ROTATED] {
        let found = files_holding(fleet.tmp.path(), marker.as_bytes());
        assert!(found.is_empty(), "{marker} found in clear in {found:?}");
    }
}

#[test]
fn bad_secret_input_is_refused_and_a_missing_secret_leaves_replicas_pending() {
    let fleet = Fleet::start(2);
    fleet.wait_members(2);
    // A workload that references a secret nobody wrote: pending, no start, no crash loop.
    let app = spec(
        fleet.tmp.path(),
        "app",
        "name = \"app\"\ncommand = \"sleep\"\nargs = [\"600\"]\n[[secrets]]\nname = \"nope\"\n",
    );
    ok(fleet.cli(0, &["apply", "-f", &app]), "apply app");
    let reason = wait_for(
        "the replica waits for its secret",
        Duration::from_secs(20),
        || {
            let v = fleet.json(1, &["status"])?;
            let r = v
                .as_array()?
                .iter()
                .find(|r| r["workload"] == "app")?
                .clone();
            let waiting = r["reason"]
                .as_str()
                .is_some_and(|s| s.contains("SecretNotFound: nope"));
            waiting.then_some(r)
        },
    );
    assert_eq!(reason["restarts"], 0, "{reason}");
    assert_eq!(fleet.live_processes("app"), 0);
    // Written now, it starts.
    ok(
        fleet.cli(1, &["secret", "set", "nope", "--from-literal", "k=v"]),
        "secret set",
    );
    wait_for(
        "app runs once its secret exists",
        Duration::from_secs(30),
        || (fleet.live_processes("app") == 1).then_some(()),
    );

    // Over the size limit: a clear error before anything is sent.
    let big = fleet.tmp.path().join("big");
    std::fs::write(&big, vec![b'x'; (1 << 20) + 1]).expect("big file");
    let out = fleet.cli(
        0,
        &[
            "secret",
            "set",
            "big",
            "--from-file",
            &big.display().to_string(),
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("over the limit"), "{}", text(&out));

    // A deployer may apply and list, not write secrets; every node says so.
    let deployer = fleet.tmp.path().join("op-dev");
    let out = Command::new(BIN)
        .args(["user", "add", "dev", "--role", "deployer", "--data-dir"])
        .arg(&fleet.nodes[0].dir)
        .arg("--cluster-dir")
        .arg(&deployer)
        .output()
        .expect("user add");
    ok(out, "user add deployer");
    for i in 0..2 {
        let out = Command::new(BIN)
            .arg("--cluster-dir")
            .arg(&deployer)
            .args(["--peer", &fleet.nodes[i].base])
            .args(["secret", "set", "nope", "--from-literal", "k=stolen"])
            .output()
            .expect("cli");
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("may not write secrets"),
            "{}",
            text(&out)
        );
        let out = Command::new(BIN)
            .arg("--cluster-dir")
            .arg(&deployer)
            .args(["--peer", &fleet.nodes[i].base])
            .args(["secret", "list"])
            .output()
            .expect("cli");
        assert!(text(&out).contains("nope"), "{}", text(&out));
    }
}

#[test]
fn a_file_reload_rewrites_the_file_and_signals_without_a_restart() {
    let fleet = Fleet::start(1);
    let out_dir = tempfile::tempdir().expect("output dir");
    let outs = out_dir.path().display().to_string();
    ok(
        fleet.cli(0, &["config", "set", "app", "--from-literal", "mode=one"]),
        "config set",
    );
    let watcher = spec(
        fleet.tmp.path(),
        "watcher",
        &format!(
            r#"name = "watcher"
command = "sh"
args = ["-c", "f={outs}/seen; r() {{ echo \"$$ $(cat $STARLING_CONFIGS_DIR/app/mode)\" >> $f; }}; trap r HUP; r; while true; do sleep 0.1; done"]
[[configs]]
name = "app"
reload = "file"
"#
        ),
    );
    ok(fleet.cli(0, &["apply", "-f", &watcher]), "apply watcher");
    let seen = out_dir.path().join("seen");
    let first = wait_for("the first read", Duration::from_secs(30), || {
        std::fs::read_to_string(&seen)
            .ok()
            .filter(|s| s.contains(" one"))
    });
    let pid = first.split_whitespace().next().expect("pid").to_string();
    let set = ok(
        fleet.cli(0, &["config", "set", "app", "--from-literal", "mode=two"]),
        "config set again",
    );
    assert!(set.contains("files rewritten in watcher"), "{set}");
    let after = wait_for("the reload", Duration::from_secs(30), || {
        std::fs::read_to_string(&seen)
            .ok()
            .filter(|s| s.contains(" two"))
    });
    assert!(
        after.lines().all(|l| l.starts_with(&pid)),
        "the same process read both versions (no restart): {after}"
    );
    let workloads = fleet.json(0, &["get", "workloads"]).expect("workloads");
    assert_eq!(workloads[0]["revision"], 1, "no new revision: {workloads}");
}
