//! Process runtime tests with real processes.

use std::path::Path;
use std::time::Duration;

use starling_protocol::NodeId;
use starling_protocol::spec::WorkloadSpec;
use tokio::sync::mpsc;

use super::instances::{SUMMARY_FILE, read_record, record_file};
use super::*;
use starling_protocol::WorkloadName;

fn replica(w: &str) -> ReplicaId {
    ReplicaId {
        workload: WorkloadName::new(w).expect("valid"),
        index: 0,
    }
}

fn request(w: &str, instance: u64, command: &str, args: &[&str], extra: &str) -> StartRequest {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    let spec = WorkloadSpec::from_toml(&format!(
        "name = \"{w}\"\ncommand = {command:?}\nargs = [{}]\n{extra}",
        args.join(", ")
    ))
    .expect("valid spec");
    StartRequest {
        replica: replica(w),
        instance,
        revision: 3,
        spec,
        node: NodeId::new("n1").expect("valid"),
        env: Vec::new(),
        dns: Vec::new(),
        files: Vec::new(),
    }
}

async fn next(rx: &mut mpsc::Receiver<RuntimeEvent>) -> RuntimeEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .expect("channel open")
}

fn runtime(dir: &Path, config: ProcessConfig) -> (ProcessRuntime, mpsc::Receiver<RuntimeEvent>) {
    let (tx, rx) = crate::channel::bounded(64, std::sync::Arc::default());
    (ProcessRuntime::new(dir.to_path_buf(), tx, config), rx)
}

fn alive(pid: u32) -> bool {
    start_time(pid).is_some()
}

/// Neither running nor a zombie: the runtime reaped it.
fn reaped(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn start_and_stop_a_process_in_its_own_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, mut rx) = runtime(dir.path(), ProcessConfig::default());
    rt.start(request("sleeper", 1, "sleep", &["30"], "")).await;
    assert_eq!(
        next(&mut rx).await,
        RuntimeEvent::Started {
            replica: replica("sleeper"),
            instance: 1
        }
    );
    let pid = rt.pid(&replica("sleeper"), 1).expect("running");
    let pgid = nix::unistd::getpgid(Some(Pid::from_raw(pid as i32))).expect("pgid");
    assert_eq!(pgid.as_raw(), pid as i32, "leader of its own process group");
    let dir = rt.replica_dir(&replica("sleeper"));
    let record = read_record(&record_file(&dir, 1)).expect("its record").1;
    assert_eq!((record.pid, record.instance, record.revision), (pid, 1, 3));
    assert_eq!(Some(record.start_time), start_time(pid));
    let summary = read_record(&dir.join(SUMMARY_FILE))
        .expect("instance.json")
        .1;
    assert_eq!(summary, record, "instance.json repeats the newest instance");
    rt.stop(&replica("sleeper"), 1, Duration::from_secs(5))
        .await;
    assert!(matches!(
        next(&mut rx).await,
        RuntimeEvent::Exited {
            instance: 1,
            code: None,
            ..
        }
    ));
    assert!(reaped(pid), "stopped and reaped, no zombie");
    assert!(!record_file(&dir, 1).exists());
    assert!(!dir.join(SUMMARY_FILE).exists());
}

#[tokio::test]
async fn a_process_ignoring_sigterm_is_killed_after_the_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, mut rx) = runtime(dir.path(), ProcessConfig::default());
    rt.start(request(
        "stubborn",
        1,
        "sh",
        &[
            "-c",
            "trap '' TERM; echo ready; while true; do sleep 1; done",
        ],
        "",
    ))
    .await;
    assert!(matches!(next(&mut rx).await, RuntimeEvent::Started { .. }));
    let log = rt.replica_dir(&replica("stubborn")).join("output.log");
    for _ in 0..100 {
        if fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ready")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = rt.pid(&replica("stubborn"), 1).expect("running");
    let begun = crate::clock::monotonic();
    rt.stop(&replica("stubborn"), 1, Duration::from_millis(300))
        .await;
    assert!(matches!(
        next(&mut rx).await,
        RuntimeEvent::Exited { code: None, .. }
    ));
    assert!(
        begun.elapsed() >= Duration::from_millis(300),
        "it got its grace"
    );
    assert!(reaped(pid), "killed and reaped, no zombie");
}

#[tokio::test]
async fn exit_code_and_log_tail_are_reported_with_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, mut rx) = runtime(dir.path(), ProcessConfig::default());
    rt.start(request("job", 4, "sh", &["-c", "echo hello $STARLING_WORKLOAD/$STARLING_REPLICA rev $STARLING_REVISION on $STARLING_NODE; echo $GREETING >&2; exit 3"], "[env]\nGREETING = \"hi there\"")).await;
    assert!(matches!(next(&mut rx).await, RuntimeEvent::Started { .. }));
    match next(&mut rx).await {
        RuntimeEvent::Exited {
            instance,
            code,
            log_tail,
            ..
        } => {
            assert_eq!((instance, code), (4, Some(3)));
            assert_eq!(
                log_tail,
                vec![
                    "hello job/0 rev 3 on n1".to_string(),
                    "hi there".to_string()
                ]
            );
        }
        other => panic!("expected an exit, got {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_command_fails_to_start_with_a_clear_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, mut rx) = runtime(dir.path(), ProcessConfig::default());
    rt.start(request("ghost", 1, "/no/such/program", &[], ""))
        .await;
    assert_eq!(
        next(&mut rx).await,
        RuntimeEvent::StartFailed {
            replica: replica("ghost"),
            instance: 1,
            reason: "command not found: /no/such/program".into()
        }
    );
}

#[tokio::test]
async fn logs_are_rotated_past_their_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ProcessConfig {
        log_bytes_max: 4096,
        log_files_kept: 2,
        poll_interval: Duration::from_millis(100),
        ..ProcessConfig::default()
    };
    let (rt, mut rx) = runtime(dir.path(), config);
    rt.start(request("chatty", 1, "sh", &["-c", "i=0; while [ $i -lt 400 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done; sleep 30"], "")).await;
    assert!(matches!(next(&mut rx).await, RuntimeEvent::Started { .. }));
    let log = rt.replica_dir(&replica("chatty")).join("output.log");
    let rotated = PathBuf::from(format!("{}.1", log.display()));
    for _ in 0..100 {
        if rotated.exists() && fs::metadata(&log).map(|m| m.len()).unwrap_or(u64::MAX) <= 4096 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rotated.exists(), "a rotated file exists");
    assert!(
        fs::metadata(&log).expect("log").len() <= 4096,
        "the live log is within its limit"
    );
    rt.stop(&replica("chatty"), 1, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_new_runtime_adopts_processes_and_ignores_stale_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid = {
        let (rt, mut rx) = runtime(dir.path(), ProcessConfig::default());
        rt.start(request("keeper", 9, "sleep", &["30"], "")).await;
        assert!(matches!(next(&mut rx).await, RuntimeEvent::Started { .. }));
        rt.pid(&replica("keeper"), 9).expect("running")
    };
    // The first runtime is gone (an agent restart); its child must still run.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(alive(pid));
    // A record of a dead process and one whose pid has another start time.
    for (name, record) in [
        (
            "dead-0",
            InstanceFile {
                pid: 999_999_999,
                start_time: 1,
                instance: 1,
                revision: 1,
                workload: "dead".into(),
                index: 0,
                fenced: false,
                ports: None,
            },
        ),
        (
            "reused-0",
            InstanceFile {
                pid: std::process::id(),
                start_time: 1,
                instance: 1,
                revision: 1,
                workload: "reused".into(),
                index: 0,
                fenced: false,
                ports: None,
            },
        ),
    ] {
        let d = dir.path().join("replicas").join(name);
        fs::create_dir_all(&d).expect("dir");
        fs::write(
            d.join("instance.json"),
            serde_json::to_vec(&record).expect("json"),
        )
        .expect("write");
    }
    let (rt, mut rx) = runtime(
        dir.path(),
        ProcessConfig {
            poll_interval: Duration::from_millis(100),
            ..ProcessConfig::default()
        },
    );
    assert_eq!(rt.adopt().await, 1);
    assert_eq!(
        next(&mut rx).await,
        RuntimeEvent::Adopted {
            replica: replica("keeper"),
            instance: 9,
            revision: 3
        }
    );
    assert!(!dir.path().join("replicas/dead-0/instance.json").exists());
    assert!(!dir.path().join("replicas/reused-0/instance.json").exists());
    assert_eq!(rt.adopt().await, 0, "adopting again takes nothing twice");
    assert_eq!(rt.pid(&replica("keeper"), 9), Some(pid));
    rt.stop(&replica("keeper"), 9, Duration::from_secs(5)).await;
    assert!(matches!(
        next(&mut rx).await,
        RuntimeEvent::Exited {
            instance: 9,
            code: None,
            ..
        }
    ));
    for _ in 0..50 {
        if !alive(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(pid));
}

/// With cgroups available (required in CI via STARLING_REQUIRE_CGROUPS=1), a memory hog is
/// stopped by its limit.
#[tokio::test]
async fn a_memory_limit_is_enforced_when_cgroups_are_writable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, mut rx) = runtime(dir.path(), ProcessConfig::default());
    if !rt.limits_enforced() {
        assert!(
            std::env::var_os("STARLING_REQUIRE_CGROUPS").is_none(),
            "cgroups are required here: {}",
            rt.limits_status()
        );
        eprintln!("skipped: {}", rt.limits_status());
        return;
    }
    // Holds ~64 MiB in a shell variable; the limit is 16 MiB.
    let hog = "x=$(head -c 67108864 /dev/zero | tr '\\0' 'x'); echo survived ${#x}; sleep 5";
    rt.start(request(
        "hog",
        1,
        "sh",
        &["-c", hog],
        "[resources]\nmemory = \"8Mi\"\nmemory_limit = \"16Mi\"",
    ))
    .await;
    assert!(matches!(next(&mut rx).await, RuntimeEvent::Started { .. }));
    match next(&mut rx).await {
        RuntimeEvent::Exited { log_tail, .. } => assert!(
            !log_tail.iter().any(|l| l.starts_with("survived")),
            "{log_tail:?}"
        ),
        other => panic!("expected an exit, got {other:?}"),
    }
}

#[tokio::test]
async fn a_directory_that_cannot_be_made_fails_the_start_with_the_io_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The state dir is a regular file: nothing can be created under it, like a full disk.
    let blocker = dir.path().join("not-a-dir");
    fs::write(&blocker, "x").expect("write");
    let (rt, mut rx) = runtime(&blocker, ProcessConfig::default());
    rt.start(request("web", 1, "sleep", &["30"], "")).await;
    match next(&mut rx).await {
        RuntimeEvent::StartFailed { reason, .. } => {
            assert!(reason.starts_with("cannot create"), "{reason}");
            assert!(reason.contains("Not a directory"), "{reason}");
        }
        other => panic!("expected a failed start, got {other:?}"),
    }
}

#[tokio::test]
async fn an_instance_is_not_started_twice_and_others_are_unaffected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, mut rx) = runtime(dir.path(), ProcessConfig::default());
    rt.start(request("solo", 1, "sleep", &["30"], "")).await;
    assert!(matches!(next(&mut rx).await, RuntimeEvent::Started { .. }));
    rt.start(request("solo", 1, "sleep", &["30"], "")).await;
    match next(&mut rx).await {
        RuntimeEvent::StartFailed {
            instance, reason, ..
        } => {
            assert_eq!(instance, 1);
            assert!(
                reason.contains("instance 1 of this replica already runs"),
                "{reason}"
            );
        }
        other => panic!("expected a refused start, got {other:?}"),
    }
    rt.start(request("ghost", 1, "no-such-program-here", &[], ""))
        .await;
    assert!(matches!(
        next(&mut rx).await,
        RuntimeEvent::StartFailed { .. }
    ));
    let pid = rt.pid(&replica("solo"), 1).expect("still running");
    assert!(alive(pid));
    // Stopping an unknown instance of it is a no-op.
    rt.stop(&replica("solo"), 2, Duration::from_millis(100))
        .await;
    assert!(alive(pid));
    rt.stop(&replica("solo"), 1, Duration::from_secs(2)).await;
    assert!(matches!(
        next(&mut rx).await,
        RuntimeEvent::Exited { instance: 1, .. }
    ));
}

#[tokio::test]
async fn log_tail_returns_the_last_lines_of_the_current_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, mut rx) = runtime(dir.path(), ProcessConfig::default());
    rt.start(request("counter", 1, "seq", &["1", "5000"], ""))
        .await;
    assert!(matches!(next(&mut rx).await, RuntimeEvent::Started { .. }));
    match next(&mut rx).await {
        RuntimeEvent::Exited { code, log_tail, .. } => {
            assert_eq!(code, Some(0));
            let expected: Vec<String> = (4981..=5000).map(|i| i.to_string()).collect();
            assert_eq!(log_tail, expected);
        }
        other => panic!("expected an exit, got {other:?}"),
    }
    let expected: Vec<String> = (2001..=5000).map(|i| i.to_string()).collect();
    assert_eq!(rt.log_tail(&replica("counter"), 3000).await, expected);
    assert!(rt.log_tail(&replica("nobody"), 10).await.is_empty());
}

#[test]
fn tail_lines_reads_backwards_within_its_byte_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("output.log");
    // Lines straddle the 8 KiB chunks; the last line has no newline yet.
    let mut text: String = (0..3000).map(|i| format!("line {i}\n")).collect();
    text.push_str("partial");
    fs::write(&path, &text).expect("write");
    assert_eq!(
        tail_lines(&path, 3, TAIL_BYTES_MAX),
        vec!["line 2998", "line 2999", "partial"]
    );
    assert_eq!(tail_lines(&path, 3000, TAIL_BYTES_MAX).len(), 3000);
    assert_eq!(tail_lines(&path, 3000, TAIL_BYTES_MAX)[0], "line 1");
    assert!(tail_lines(&path, 0, TAIL_BYTES_MAX).is_empty());
    // With a 20-byte bound only the end is read: a cut first line, then whole ones.
    assert_eq!(
        tail_lines(&path, 100, 20),
        vec!["98", "line 2999", "partial"]
    );
    assert!(tail_lines(&dir.path().join("missing"), 5, TAIL_BYTES_MAX).is_empty());
}

/// With cgroups available, the limits land in the instance's group and the group is removed
/// once the instance is gone.
#[tokio::test]
async fn limits_are_written_to_a_group_removed_after_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, mut rx) = runtime(dir.path(), ProcessConfig::default());
    let Ok(cgroups) = rt.inner.cgroups.clone() else {
        eprintln!("skipped: {}", rt.limits_status());
        return;
    };
    // A name no parallel test or earlier run shares, so the group is ours alone.
    let name = format!("limited{}", std::process::id());
    let limits = "[resources]\ncpu = \"100m\"\ncpu_limit = \"250m\"\nmemory_limit = \"64Mi\"";
    let mut req = request(&name, 1, "sleep", &["30"], limits);
    req.replica.workload = WorkloadName::new(name.clone()).expect("valid");
    let id = req.replica.clone();
    rt.start(req).await;
    assert!(matches!(next(&mut rx).await, RuntimeEvent::Started { .. }));
    let pid = rt.pid(&id, 1).expect("running");
    let groups = cgroups.existing(&group_name(&id, 1));
    assert!(groups.is_limited());
    for group in groups.dirs() {
        let members = fs::read_to_string(group.join("cgroup.procs")).expect("procs");
        assert!(members.lines().any(|l| l == pid.to_string()), "{members}");
        let cpu = match &cgroups {
            Cgroups::V2 { .. } => fs::read_to_string(group.join("cpu.max")).ok(),
            Cgroups::V1 { .. } => fs::read_to_string(group.join("cpu.cfs_quota_us")).ok(),
        };
        if let Some(cpu) = cpu {
            assert!(cpu.starts_with("25000"), "{cpu}");
        }
    }
    rt.stop(&id, 1, Duration::from_secs(2)).await;
    assert!(matches!(next(&mut rx).await, RuntimeEvent::Exited { .. }));
    let deadline = crate::clock::monotonic() + Duration::from_secs(3);
    while groups.dirs().iter().any(|d| d.exists()) && crate::clock::monotonic() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        groups.dirs().iter().all(|d| !d.exists()),
        "{:?}",
        groups.dirs()
    );
}

/// A stand-in for `starling fence`: records its arguments, runs the command as its child and
/// passes SIGTERM on, noting each hop in `signals`.
fn fake_fence(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-fence");
    fs::write(
        &path,
        "#!/bin/sh\necho \"$@\" > fence-args\nshift 4\n\"$@\" &\nchild=$!\n\
         trap 'echo fence >> signals; kill -TERM $child' TERM\nwait $child\nwait $child\n",
    )
    .expect("write the fake fence");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[tokio::test]
async fn singletons_run_under_the_fence_which_alone_gets_the_stop_signal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ProcessConfig {
        fence_program: Some(fake_fence(dir.path())),
        ..ProcessConfig::default()
    };
    let state = dir.path().join("state");
    let (rt, mut rx) = runtime(&state, config.clone());
    let script = "trap 'echo command >> signals; exit 0' TERM; while true; do sleep 0.05; done";
    rt.start(request(
        "solo",
        1,
        "sh",
        &["-c", script],
        "singleton = true",
    ))
    .await;
    assert!(matches!(next(&mut rx).await, RuntimeEvent::Started { .. }));
    let replica_dir = rt.replica_dir(&replica("solo"));
    let args = replica_dir.join("fence-args");
    for _ in 0..100 {
        if args.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lease_file = replica_dir.join("lease");
    assert_eq!(
        fs::read_to_string(&args).expect("the fence ran").trim(),
        format!(
            "fence --lease-file {} -- sh -c {script}",
            lease_file.display()
        )
    );
    let record = read_record(&record_file(&replica_dir, 1))
        .expect("record")
        .1;
    assert!(record.fenced);
    // A restarted agent adopts the fence and stops it the same way.
    drop(rt);
    let (rt, mut rx) = runtime(&state, config);
    assert_eq!(rt.adopt().await, 1);
    assert!(matches!(next(&mut rx).await, RuntimeEvent::Adopted { .. }));
    rt.stop(&replica("solo"), 1, Duration::from_secs(5)).await;
    assert!(matches!(next(&mut rx).await, RuntimeEvent::Exited { .. }));
    assert_eq!(
        fs::read_to_string(replica_dir.join("signals")).unwrap_or_default(),
        "fence\ncommand\n",
        "SIGTERM went to the fence, which passed it on: the command got it once"
    );
}

#[tokio::test]
async fn only_singletons_are_fenced_and_a_missing_command_still_fails_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ProcessConfig {
        fence_program: Some(fake_fence(dir.path())),
        ..ProcessConfig::default()
    };
    let (rt, mut rx) = runtime(&dir.path().join("state"), config);
    rt.start(request("plain", 1, "sleep", &["30"], "")).await;
    assert!(matches!(next(&mut rx).await, RuntimeEvent::Started { .. }));
    let record = read_record(&record_file(&rt.replica_dir(&replica("plain")), 1))
        .expect("record")
        .1;
    assert!(!record.fenced, "not a singleton: no fence");
    rt.stop(&replica("plain"), 1, Duration::from_secs(2)).await;
    assert!(matches!(next(&mut rx).await, RuntimeEvent::Exited { .. }));
    rt.start(request(
        "absent",
        1,
        "no-such-command-x",
        &[],
        "singleton = true",
    ))
    .await;
    assert_eq!(
        next(&mut rx).await,
        RuntimeEvent::StartFailed {
            replica: replica("absent"),
            instance: 1,
            reason: "command not found: no-such-command-x".into()
        }
    );
}

/// The agent adopts before its loop reads events: adoption must finish even when it reports
/// more replicas than the bounded event queue holds.
#[tokio::test]
async fn adopting_more_replicas_than_the_event_queue_holds_finishes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let names = ["one", "two", "three"];
    let (first, mut first_rx) = runtime(dir.path(), ProcessConfig::default());
    for name in names {
        first.start(request(name, 1, "sleep", &["30"], "")).await;
        assert!(matches!(
            next(&mut first_rx).await,
            RuntimeEvent::Started { .. }
        ));
    }
    // A second runtime on the same directory: a restarted agent, with a queue of one.
    let (tx, mut rx) = crate::channel::bounded(1, std::sync::Arc::default());
    let second = ProcessRuntime::new(dir.path().to_path_buf(), tx, ProcessConfig::default());
    let (adopted, events) = tokio::time::timeout(
        Duration::from_secs(10),
        crate::runtime::adopt_draining(&second, &mut rx),
    )
    .await
    .expect("adoption does not wait for a loop that is not running yet");
    assert_eq!(adopted, 3);
    let mut seen: Vec<String> = events
        .iter()
        .map(|e| match e {
            RuntimeEvent::Adopted { replica, .. } => replica.workload.to_string(),
            other => panic!("only adoptions: {other:?}"),
        })
        .collect();
    seen.sort();
    assert_eq!(seen, ["one", "three", "two"]);
    for name in names {
        second.stop(&replica(name), 1, Duration::from_secs(5)).await;
    }
}

mod files;
mod instances;
