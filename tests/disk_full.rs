//! A full disk (issue 19's "small tmpfs data dir"): the agent's data dir on a 4 MiB tmpfs,
//! filled to the last byte. A write is then refused with an error that says so, the agent
//! keeps running and serving what it stored, and once space is freed writes work again.
//! Mounting needs root: STARLING_REQUIRE_NETNS (set in CI, as root) makes it fail instead of
//! skipping without it.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Fleet, spec, wait_for};

fn apply(fleet: &Fleet, name: &str) -> std::process::Output {
    let file = spec(
        fleet.tmp.path(),
        name,
        &format!("name = \"{name}\"\ncommand = \"sleep\"\nargs = [\"600\"]\nreplicas = 0\n"),
    );
    fleet.cli(0, &["apply", "-f", &file])
}

fn listed(fleet: &Fleet) -> Vec<String> {
    wait_for("the agent answers", Duration::from_secs(20), || {
        fleet.workload_names(0)
    })
}

/// Unmounts the tmpfs when the test ends, however it ends.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_refuses_writes_clearly_and_the_agent_keeps_serving() {
    let mut fleet = Fleet::start(1);
    let small = fleet.tmp.path().join("small");
    std::fs::create_dir_all(&small).expect("mount point");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var_os("STARLING_REQUIRE_NETNS").is_none(),
            "mounting a tmpfs failed, and STARLING_REQUIRE_NETNS says root is required"
        );
        eprintln!("skipping: mounting a tmpfs needs root");
        return;
    }
    let _mount = Mount(small.clone());

    // The agent moves onto the small disk with its data.
    fleet.crash(0);
    let data = small.join("node-1");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&fleet.nodes[0].dir)
        .arg(&data)
        .status()
        .is_ok_and(|s| s.success());
    assert!(copied, "copy the data dir onto the tmpfs");
    fleet.nodes[0].dir = data;
    fleet.spawn(0);
    let out = apply(&fleet, "before");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Fill every byte left.
    let filler = small.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .output();
    let refused = apply(&fleet, "when-full");
    let stderr = String::from_utf8_lossy(&refused.stderr).to_string();
    println!(
        "apply on a full disk: {:?}; {}",
        refused.status.code(),
        stderr.trim()
    );
    assert!(
        !refused.status.success(),
        "a write on a full disk was acknowledged"
    );
    assert!(
        stderr.to_lowercase().contains("space") || stderr.contains("ENOSPC"),
        "the error does not say the disk is full: {stderr}"
    );
    let names = listed(&fleet);
    assert!(names.contains(&"before".to_string()), "{names:?}");
    assert!(!names.contains(&"when-full".to_string()), "{names:?}");

    // Space comes back: writes work again, nothing was lost, the agent never restarted.
    std::fs::remove_file(&filler).expect("free the disk");
    let out = apply(&fleet, "after");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = listed(&fleet);
    assert!(
        names.contains(&"before".to_string()) && names.contains(&"after".to_string()),
        "{names:?}"
    );
    assert!(
        fleet.nodes[0]
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().is_ok_and(|s| s.is_none())),
        "the agent exited"
    );
    // A restart on the small disk reads everything back.
    fleet.crash(0);
    fleet.spawn(0);
    let names = listed(&fleet);
    assert!(
        names.contains(&"before".to_string()) && names.contains(&"after".to_string()),
        "after a restart: {names:?}"
    );
}
