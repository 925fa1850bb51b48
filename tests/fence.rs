//! `starling fence`, the supervisor singleton instances run under: as a program on its own
//! (hand-written lease files, a `sleep` as the command), and in a fleet whose lease holder's
//! agent is killed outright while its instance keeps running.

mod support;

use std::fs::File;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use starling_node::runtime::fence::{FENCED_EXIT_CODE, LeaseFile, children_of};
use support::{BIN, Fleet, spec, wait_for};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Replaces the lease file as the agent does (complete file renamed over the old one).
fn write_lease(path: &Path, active: bool, act_until_unix_ms: u64) {
    let text = LeaseFile {
        active,
        token: u64::from(active) * 4,
        epoch: 4,
        holder: Some("node-1".into()),
        act_until_unix_ms,
    }
    .render();
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, text).expect("write the lease");
    std::fs::rename(&temp, path).expect("rename the lease");
}

/// A fence started as the runtime starts it (its own process group, stderr to a file), with
/// its command's pid once the command runs.
struct Fenced {
    fence: Child,
    command: i64,
    started: Instant,
    stderr: PathBuf,
}

impl Fenced {
    fn start(dir: &Path, extra: &[&str], command: &[&str]) -> Fenced {
        let stderr = dir.join("fence.err");
        let started = Instant::now();
        let fence = Command::new(BIN)
            .arg("fence")
            .arg("--lease-file")
            .arg(dir.join("lease"))
            .args(extra)
            .arg("--")
            .args(command)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("stderr file"))
            .process_group(0)
            .spawn()
            .expect("the fence starts");
        let pid = fence.id();
        // Polled closely: some commands are meant to end within a fraction of a second.
        let mut command = None;
        while command.is_none() && started.elapsed() < Duration::from_secs(5) {
            command = children_of(pid).first().copied();
            std::thread::sleep(Duration::from_millis(2));
        }
        let command = command.expect("the fenced command runs");
        Fenced {
            fence,
            command: i64::from(command),
            started,
            stderr,
        }
    }

    /// Waits for the fence's exit; panics if it takes longer than `limit`.
    fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        wait_for("the fence to exit", limit, || {
            self.fence.try_wait().expect("try_wait")
        })
    }

    /// When the command was gone (not even a zombie), measured from the fence's start.
    fn command_gone_within(&self, limit: Duration) -> Duration {
        let deadline = Instant::now() + limit;
        while support::alive(self.command) {
            assert!(
                Instant::now() < deadline,
                "the command still runs {limit:?} later"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.started.elapsed()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Fenced {
    fn drop(&mut self) {
        support::killpg(i64::from(self.fence.id()));
        let _ = self.fence.wait();
    }
}

#[test]
fn a_lease_that_runs_out_unrenewed_stops_the_command_and_the_fence_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let deadline = now_ms() + 1_500;
    write_lease(&dir.path().join("lease"), true, deadline);
    let mut fenced = Fenced::start(dir.path(), &[], &["sleep", "60"]);
    let gone = fenced.command_gone_within(Duration::from_secs(4));
    let late_ms = now_ms().saturating_sub(deadline);
    assert!(gone < Duration::from_millis(2_500), "gone after {gone:?}");
    assert!(
        gone >= Duration::from_millis(1_400),
        "not before its deadline: {gone:?}"
    );
    let status = fenced.exit_within(Duration::from_secs(2));
    assert_eq!(status.code(), Some(i32::from(FENCED_EXIT_CODE)), "{status}");
    let said = fenced.stderr();
    assert_eq!(said.lines().count(), 1, "one line: {said}");
    assert!(said.contains("without a renewal"), "{said}");
    eprintln!("the command was gone {late_ms} ms after the lease deadline");
}

#[test]
fn a_renewed_lease_keeps_the_command_running_until_renewals_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lease = dir.path().join("lease");
    write_lease(&lease, true, now_ms() + 1_000);
    let renewing = Arc::new(AtomicBool::new(true));
    let renewer = {
        let (lease, renewing) = (lease.clone(), renewing.clone());
        std::thread::spawn(move || {
            while renewing.load(Ordering::SeqCst) {
                write_lease(&lease, true, now_ms() + 1_000);
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let mut fenced = Fenced::start(dir.path(), &[], &["sleep", "60"]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(support::alive(fenced.command), "renewed: still running");
    renewing.store(false, Ordering::SeqCst);
    renewer.join().expect("renewer");
    let stopped_renewing = Instant::now();
    fenced.command_gone_within(Duration::from_secs(3));
    assert!(
        stopped_renewing.elapsed() < Duration::from_millis(1_500),
        "gone within the last deadline (+ slack): {:?}",
        stopped_renewing.elapsed()
    );
    let status = fenced.exit_within(Duration::from_secs(2));
    assert_eq!(status.code(), Some(i32::from(FENCED_EXIT_CODE)));
}

#[test]
fn a_standby_is_never_stopped_and_sigterm_to_the_fence_stops_the_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_lease(&dir.path().join("lease"), false, 0);
    let mut fenced = Fenced::start(dir.path(), &[], &["sleep", "60"]);
    std::thread::sleep(Duration::from_millis(2_500));
    assert!(support::alive(fenced.command), "a standby keeps running");
    // The runtime stops a fenced instance by signalling the fence alone.
    support::signal(i64::from(fenced.fence.id()), Signal::SIGTERM);
    fenced.command_gone_within(Duration::from_secs(2));
    let status = fenced.exit_within(Duration::from_secs(2));
    assert_eq!(
        status.signal(),
        Some(Signal::SIGTERM as i32),
        "ends as its command did: {status}"
    );
    assert_eq!(fenced.stderr(), "", "nothing to say: not fenced");
}

#[test]
fn sigterm_reaches_the_command_once_and_its_exit_code_comes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_lease(&dir.path().join("lease"), true, now_ms() + 60_000);
    // Counts the SIGTERMs it gets, then exits 7 half a second after the first.
    let script = "n=0; trap 'n=$((n+1)); echo $n > terms' TERM; echo up > ready; \
                  i=0; while [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); \
                  if [ $n -gt 0 ]; then sleep 0.5; exit 7; fi; done; exit 9";
    let mut fenced = Fenced::start(dir.path(), &[], &["sh", "-c", script]);
    wait_for("the script's trap", Duration::from_secs(5), || {
        dir.path().join("ready").exists().then_some(())
    });
    support::signal(i64::from(fenced.fence.id()), Signal::SIGTERM);
    let status = fenced.exit_within(Duration::from_secs(5));
    assert_eq!(status.code(), Some(7), "{status}");
    let terms = std::fs::read_to_string(dir.path().join("terms")).unwrap_or_default();
    assert_eq!(
        terms.trim(),
        "1",
        "one SIGTERM, not one from the fence and its echo"
    );
}

#[test]
fn exit_codes_and_signals_of_the_command_are_the_fences() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_lease(&dir.path().join("lease"), false, 0);
    let mut coded = Fenced::start(dir.path(), &[], &["sh", "-c", "sleep 0.2; exit 3"]);
    assert_eq!(coded.exit_within(Duration::from_secs(5)).code(), Some(3));
    let mut killed = Fenced::start(dir.path(), &[], &["sh", "-c", "sleep 0.2; kill -KILL $$"]);
    let status = killed.exit_within(Duration::from_secs(5));
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status}");
    let out = Command::new(BIN)
        .args(["fence", "--lease-file"])
        .arg(dir.path().join("lease"))
        .args(["--", "/no/such/program"])
        .output()
        .expect("fence runs");
    assert_eq!(out.status.code(), Some(127));
}

#[test]
fn a_lease_file_that_never_appears_stops_the_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fenced = Fenced::start(dir.path(), &["--lease-wait-ms", "500"], &["sleep", "60"]);
    let gone = fenced.command_gone_within(Duration::from_secs(3));
    assert!(gone >= Duration::from_millis(450), "waited: {gone:?}");
    let status = fenced.exit_within(Duration::from_secs(2));
    assert_eq!(status.code(), Some(i32::from(FENCED_EXIT_CODE)));
    assert!(fenced.stderr().contains("no readable lease file"));
}

#[test]
fn a_deadline_once_seen_holds_after_the_file_turns_inactive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lease = dir.path().join("lease");
    write_lease(&lease, true, now_ms() + 800);
    let fenced = Fenced::start(dir.path(), &[], &["sleep", "60"]);
    std::thread::sleep(Duration::from_millis(300));
    // A live agent writes this when it loses the lease, and then stops the instance: if it
    // died in between, the instance must still go at its deadline.
    write_lease(&lease, false, 0);
    fenced.command_gone_within(Duration::from_secs(2));
}

#[test]
fn helpers_left_in_the_group_are_killed_with_the_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_lease(&dir.path().join("lease"), true, now_ms() + 500);
    // Both ignore SIGTERM: the command after the grace, its helper after the command.
    let mut fenced = Fenced::start(
        dir.path(),
        &[],
        &["sh", "-c", "trap '' TERM; sleep 61 & exec sleep 60"],
    );
    let helper = wait_for("the helper", Duration::from_secs(5), || {
        children_of(u32::try_from(fenced.command).expect("pid"))
            .first()
            .copied()
    });
    fenced.command_gone_within(Duration::from_secs(3));
    let status = fenced.exit_within(Duration::from_secs(3));
    assert!(!status.success(), "{status}");
    wait_for("the helper gone", Duration::from_secs(2), || {
        (!support::alive(i64::from(helper))).then_some(())
    });
}

/// Processes running `sleep MARKER` on this machine: a singleton's instances, never its fences
/// (whose command line holds the marker too, after `starling fence ... --`).
fn instances_by_marker(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"sleep"))
                && args.get(1).is_some_and(|a| *a == marker.as_bytes())
                && support::alive(i64::from(*pid))
        })
        .collect()
}

/// Starts the `fenced` singleton (TTL `ttl_ms`, `sleep MARKER`) on a 3-node fleet; returns
/// the fleet, the holder's index and the instance's pid.
fn fleet_with_singleton(marker: &str, ttl_ms: u64) -> (Fleet, usize, u32) {
    let fleet = Fleet::start(3);
    let file = spec(
        fleet.tmp.path(),
        "fenced",
        &format!(
            "name = \"fenced\"\nsingleton = true\nlease_ttl = \"{ttl_ms}ms\"\n\
             command = \"sleep\"\nargs = [\"{marker}\"]\n[resources]\ncpu = \"10m\"\nmemory = \"8Mi\"\n"
        ),
    );
    let out = fleet.cli(0, &["apply", "-f", &file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The runtime records the fence a moment after the fence started the command.
    let (holder, instance) = wait_for("one active instance", Duration::from_secs(30), || {
        let live = instances_by_marker(marker);
        let [instance] = live[..] else {
            return None;
        };
        (0..fleet.nodes.len())
            .find(|&i| fence_of(&fleet, i).is_some_and(|f| runs(f, instance)))
            .map(|holder| (holder, instance))
    });
    (fleet, holder, instance)
}

/// Whether the pid `recorded` in `instance.json` is `instance` or the fence around it.
fn runs(recorded: u32, instance: u32) -> bool {
    recorded == instance || children_of(recorded).contains(&instance)
}

/// The pid in node `i`'s `instance.json` of `fenced`: a fence.
fn fence_of(fleet: &Fleet, i: usize) -> Option<u32> {
    let pid = support::pids(&fleet.nodes[i].dir, "fenced")
        .first()
        .copied()?;
    u32::try_from(pid).ok()
}

/// Kills node `i`'s agent alone, as SIGKILL or the OOM killer would; its replicas keep running.
fn kill_agent(fleet: &mut Fleet, i: usize) -> Instant {
    let mut agent = fleet.nodes[i].child.take().expect("the agent runs");
    support::signal(i64::from(agent.id()), Signal::SIGKILL);
    let killed = Instant::now();
    let _ = agent.wait();
    killed
}

#[test]
fn a_singleton_stops_when_its_holders_agent_is_killed_and_never_runs_twice() {
    // Unique per run: other tests on the machine may run their own sleeps.
    let marker = format!("1000.{}", std::process::id());
    let ttl_ms = 2_000;
    let (mut fleet, holder, instance) = fleet_with_singleton(&marker, ttl_ms);
    let lease_file = fleet.nodes[holder]
        .dir
        .join("runtime/replicas/fenced-0/lease");
    let shown = std::fs::read_to_string(&lease_file).expect("the lease file");
    assert!(shown.contains("active=true"), "{shown}");
    let fence = fence_of(&fleet, holder).expect("recorded");
    assert_ne!(fence, instance, "the instance runs under a fence");

    // Only the agent dies; its instance (and fence) keep running.
    let killed = kill_agent(&mut fleet, holder);
    let deadline_ms = std::fs::read_to_string(&lease_file)
        .ok()
        .and_then(|t| LeaseFile::parse(&t).ok())
        .map(|l| l.act_until_unix_ms)
        .expect("the last deadline the agent wrote");

    let mut gone_after = None;
    let mut gone_late_ms = 0;
    let mut most = 0;
    let started = Instant::now();
    let successor = loop {
        let live = instances_by_marker(&marker);
        most = most.max(live.len());
        assert!(live.len() <= 1, "two active instances at once: {live:?}");
        if gone_after.is_none() && !live.contains(&instance) {
            gone_after = Some(killed.elapsed());
            gone_late_ms = now_ms() as i64 - deadline_ms as i64;
        }
        if gone_after.is_some() && live.len() == 1 {
            break live[0];
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "no new active instance after 40 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let gone_after = gone_after.expect("gone");
    assert!(
        gone_after <= Duration::from_millis(ttl_ms + 1_000),
        "the old instance ran {gone_after:?} past its agent's death"
    );
    assert_ne!(successor, instance);
    assert_eq!(most, 1);
    eprintln!(
        "old instance gone {} ms after the agent's death, {gone_late_ms} ms after the lease \
         deadline it last saw (sampled every 100 ms); a new one took over {} ms after the death",
        gone_after.as_millis(),
        killed.elapsed().as_millis()
    );
}

#[test]
fn a_restarted_agent_adopts_its_fenced_singleton_and_stops_it_through_the_fence() {
    let marker = format!("1001.{}", std::process::id());
    let (mut fleet, holder, instance) = fleet_with_singleton(&marker, 2_000);
    let old_fence = fence_of(&fleet, holder).expect("fence");
    kill_agent(&mut fleet, holder);
    fleet.spawn(holder);
    // The new agent adopts the fence; holding no lease yet, the core stops the instance
    // (through the fence) and starts a new one once the lease is held again.
    let started = Instant::now();
    let successor = loop {
        let live = instances_by_marker(&marker);
        assert!(live.len() <= 1, "two active instances at once: {live:?}");
        if !live.contains(&instance) && live.len() == 1 {
            break live[0];
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no new instance after 30 s: {live:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        !support::alive(i64::from(old_fence)),
        "the old fence is gone"
    );
    let record = std::fs::read_to_string(
        fleet.nodes[holder]
            .dir
            .join("runtime/replicas/fenced-0/instance.json"),
    )
    .unwrap_or_default();
    let runs_fenced = (0..fleet.nodes.len())
        .filter_map(|i| fence_of(&fleet, i))
        .any(|f| children_of(f).contains(&successor));
    assert!(runs_fenced, "the new instance runs under a fence: {record}");
}
