//! Secrets and configs of process instances: named by the environment, ready before the
//! process starts, rewritten in place with a signal, wiped when the instance is gone.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use zeroize::Zeroizing;

use super::super::*;
use super::{next, replica, request, runtime};
use crate::runtime::FileKind;
use crate::secrets::files::FileArea;

fn secret(name: &str, key: &str, value: &str) -> FileSet {
    FileSet {
        kind: FileKind::Secret,
        name: name.into(),
        entries: vec![(key.into(), Zeroizing::new(value.as_bytes().to_vec()))],
        target: None,
    }
}

/// A runtime whose files go to a fresh directory on tmpfs (kept alive by the returned guard).
fn runtime_with_files(
    state: &Path,
) -> (
    ProcessRuntime,
    tokio::sync::mpsc::Receiver<RuntimeEvent>,
    FileArea,
    tempfile::TempDir,
) {
    let tmpfs = tempfile::tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm");
    let area = FileArea::at(&tmpfs.path().join("root"));
    let config = ProcessConfig {
        files_area: Some(area.clone()),
        ..ProcessConfig::default()
    };
    let (rt, rx) = runtime(state, config);
    (rt, rx, area, tmpfs)
}

/// Waits until the replica's file `name` holds `want`.
async fn wait_for(rt: &ProcessRuntime, workload: &str, name: &str, want: &str) {
    let file = rt.replica_dir(&replica(workload)).join(name);
    let mut seen = String::new();
    for _ in 0..200 {
        seen = fs::read_to_string(&file).unwrap_or_default();
        if seen == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} holds {seen:?}, not {want:?}", file.display());
}

#[tokio::test]
async fn a_process_reads_its_secret_from_its_directory_and_the_files_go_with_it() {
    let state = tempfile::tempdir().expect("tempdir");
    let (rt, mut rx, area, _tmpfs) = runtime_with_files(state.path());
    let mut req = request(
        "reader",
        1,
        "sh",
        &[
            "-c",
            "cat $STARLING_SECRETS_DIR/db/password > out; echo -n ${STARLING_CONFIGS_DIR-unset} > configs; sleep 30",
        ],
        "",
    );
    req.files = vec![secret("db", "password", "hunter2")];
    rt.start(req).await;
    assert!(matches!(next(&mut rx).await, RuntimeEvent::Started { .. }));
    wait_for(&rt, "reader", "out", "hunter2").await;
    wait_for(&rt, "reader", "configs", "unset").await;
    let dir = area
        .instance_dir(&replica("reader"), 1)
        .expect("the instance's files");
    assert!(dir.starts_with(area.root().expect("root")));
    rt.stop(&replica("reader"), 1, Duration::from_secs(5)).await;
    assert!(matches!(next(&mut rx).await, RuntimeEvent::Exited { .. }));
    assert!(!dir.exists(), "wiped when the instance is gone");
}

#[tokio::test]
async fn a_refresh_rewrites_the_file_and_signals_the_same_process() {
    let state = tempfile::tempdir().expect("tempdir");
    let (rt, mut rx, _area, _tmpfs) = runtime_with_files(state.path());
    let script = "read_it() { cat $STARLING_SECRETS_DIR/db/password > seen; }; \
                  trap read_it HUP; read_it; while true; do sleep 0.1; done";
    let mut req = request("reloader", 1, "sh", &["-c", script], "");
    req.files = vec![secret("db", "password", "old")];
    rt.start(req).await;
    assert!(matches!(next(&mut rx).await, RuntimeEvent::Started { .. }));
    wait_for(&rt, "reloader", "seen", "old").await;
    let pid = rt.pid(&replica("reloader"), 1).expect("running");
    rt.refresh_files(
        &replica("reloader"),
        1,
        vec![secret("db", "password", "new")],
        Some(Signal::SIGHUP as i32),
    )
    .await
    .expect("refreshed");
    wait_for(&rt, "reloader", "seen", "new").await;
    assert_eq!(rt.pid(&replica("reloader"), 1), Some(pid), "not restarted");
    assert!(
        rx.try_recv().is_err(),
        "no exit, no start: {:?}",
        rx.try_recv()
    );
    let err = rt
        .refresh_files(&replica("reloader"), 2, Vec::new(), None)
        .await
        .expect_err("no such instance");
    assert!(matches!(err, RuntimeError::NotRunning(_)), "{err}");
    rt.stop(&replica("reloader"), 1, Duration::from_secs(5))
        .await;
    assert!(matches!(next(&mut rx).await, RuntimeEvent::Exited { .. }));
}

#[tokio::test]
async fn a_start_whose_files_cannot_be_delivered_fails_and_leaves_nothing() {
    let state = tempfile::tempdir().expect("tempdir");
    let (rt, mut rx, area, _tmpfs) = runtime_with_files(state.path());
    let mut req = request("targeted", 1, "sleep", &["30"], "");
    let mut set = secret("db", "password", "p");
    set.target = Some("/etc/db".into());
    req.files = vec![secret("api", "token", "t"), set];
    rt.start(req).await;
    match next(&mut rx).await {
        RuntimeEvent::StartFailed { reason, .. } => {
            assert!(
                reason.contains("target \"/etc/db\" is for containers"),
                "{reason}"
            );
        }
        other => panic!("expected a failed start, got {other:?}"),
    }
    assert!(area.instance_dir(&replica("targeted"), 1).is_none());

    // No tmpfs: the start fails rather than put the secret on a disk.
    let disk = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("tempdir on a disk");
    let config = ProcessConfig {
        files_area: Some(FileArea::at(&disk.path().join("root"))),
        ..ProcessConfig::default()
    };
    let (rt, mut rx) = runtime(state.path(), config);
    let mut req = request("nowhere", 1, "sleep", &["30"], "");
    req.files = vec![secret("db", "password", "p")];
    rt.start(req).await;
    match next(&mut rx).await {
        RuntimeEvent::StartFailed { reason, .. } => {
            assert!(reason.starts_with("no tmpfs for secrets: "), "{reason}");
        }
        other => panic!("expected a failed start, got {other:?}"),
    }
    assert!(!disk.path().join("root").exists());
}

#[tokio::test]
async fn a_restarted_agent_finds_the_files_of_what_it_adopts_and_wipes_the_rest() {
    let state = tempfile::tempdir().expect("tempdir");
    let tmpfs = tempfile::tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm");
    let config = || ProcessConfig {
        files_area: Some(FileArea::at(&tmpfs.path().join("root"))),
        ..ProcessConfig::default()
    };
    let script = "trap 'cat $STARLING_SECRETS_DIR/db/password > seen' HUP; \
                  while true; do sleep 0.1; done";
    let dir = {
        let (rt, mut rx) = runtime(state.path(), config());
        let mut req = request("kept", 1, "sh", &["-c", script], "");
        req.files = vec![secret("db", "password", "old")];
        rt.start(req).await;
        assert!(matches!(next(&mut rx).await, RuntimeEvent::Started { .. }));
        rt.files_area()
            .instance_dir(&replica("kept"), 1)
            .expect("its files")
    };
    // An instance that died with the previous agent left its secret behind.
    let gone = FileArea::at(&tmpfs.path().join("root"))
        .write(
            &replica("gone"),
            4,
            &[secret("db", "password", "p")],
            crate::secrets::files::Targets::Refused,
        )
        .expect("written");
    let (tx, mut rx) = crate::channel::bounded(64, std::sync::Arc::default());
    let process = ProcessRuntime::new(state.path().to_path_buf(), tx.clone(), config());
    let node = starling_protocol::NodeId::new("n1").expect("valid");
    let runtimes = crate::runtime::Runtimes::new(process, &[], Default::default(), node, tx).await;
    let (adopted, _) = crate::runtime::adopt_draining(&runtimes, &mut rx).await;
    assert_eq!(adopted, 1);
    assert!(dir.exists(), "the adopted instance keeps its files");
    assert!(!gone.exists(), "files of what was not adopted are wiped");
    runtimes
        .refresh_files(
            &replica("kept"),
            1,
            vec![secret("db", "password", "new")],
            Some(Signal::SIGHUP as i32),
        )
        .await
        .expect("an adopted instance is refreshed");
    wait_for(&runtimes.process, "kept", "seen", "new").await;
    runtimes
        .stop(&replica("kept"), 1, Duration::from_secs(5))
        .await;
    assert!(matches!(next(&mut rx).await, RuntimeEvent::Exited { .. }));
    assert!(!dir.exists(), "wiped when the adopted instance is gone");
}
