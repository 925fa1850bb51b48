//! The container runtime against the real Docker Engine: two instances of one replica side by
//! side. The test image is the one `tests/docker.rs` uses too: built locally from the host's
//! shell and coreutils and the workspace's own applets (`starling_testkit::docker`), no
//! registry.
//!
//! With `STARLING_REQUIRE_DOCKER=1` (CI) a missing engine fails these tests; without it they
//! skip with a printed reason.

use std::process::{Command, Output};

use tokio::sync::mpsc;

use super::*;

fn docker_cli(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI")
}

/// Running containers labelled with `node`.
fn running_on(node: &NodeId) -> Vec<String> {
    let filter = format!("label={LABEL_NODE}={node}");
    let out = docker_cli(&["ps", "-q", "--filter", &filter]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Removes every container of `node` when the test ends, also when it fails.
struct Cleanup(NodeId);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label={LABEL_NODE}={}", self.0);
        let out = docker_cli(&["ps", "-aq", "--filter", &filter]);
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = docker_cli(&["rm", "-f", id]);
        }
    }
}

async fn engine(node: &NodeId) -> (ContainerRuntime, mpsc::Receiver<RuntimeEvent>) {
    let (tx, rx) = crate::channel::bounded(64, std::sync::Arc::default());
    let socket = default_socket(RuntimeKind::Docker).expect("docker has a socket");
    let runtime = ContainerRuntime::connect(
        RuntimeKind::Docker,
        &socket,
        node.clone(),
        tx,
        EngineSettings::default(),
    )
    .await
    .expect("a usable socket path");
    assert!(runtime.available().await, "the engine answers");
    (runtime, rx)
}

async fn next(rx: &mut mpsc::Receiver<RuntimeEvent>) -> RuntimeEvent {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("an event within 60 s")
        .expect("channel open")
}

fn request(image: &str, node: &NodeId, instance: u64) -> StartRequest {
    let spec = WorkloadSpec::from_toml(&format!(
        "name = \"pair\"\nruntime = \"docker\"\nimage = \"{image}\"\nimage_pull_policy = \"never\"\n\
         command = \"sh\"\nargs = [\"-c\", \"echo instance {instance} port ${{port.http}} $STARLING_PORT_HTTP; sleep 600\"]\n\
         [[ports]]\nname = \"http\"\nport = 8080\n"
    ))
    .expect("valid spec");
    StartRequest {
        replica: ReplicaId {
            workload: WorkloadName::new("pair").expect("valid"),
            index: 0,
        },
        instance,
        revision: 1,
        spec,
        node: node.clone(),
        env: Vec::new(),
        dns: Vec::new(),
        files: Vec::new(),
    }
}

#[tokio::test]
async fn two_containers_of_a_replica_run_side_by_side_stop_alone_and_are_both_adopted() {
    let Some(image) = starling_testkit::docker::test_image() else {
        return;
    };
    let node = NodeId::new(format!("dkrt-{}", std::process::id())).expect("valid");
    let _cleanup = Cleanup(node.clone());
    let replica = request(image, &node, 1).replica;
    {
        let (runtime, mut rx) = engine(&node).await;
        for instance in [1, 2] {
            runtime.start(request(image, &node, instance)).await;
            assert_eq!(
                next(&mut rx).await,
                RuntimeEvent::Started {
                    replica: replica.clone(),
                    instance
                }
            );
        }
        assert_eq!(running_on(&node).len(), 2, "both containers run");
        let port = &request(image, &node, 1).spec.ports[0];
        let bound = [1, 2].map(|i| runtime.host_port(&replica, i, port).expect("bound"));
        assert_ne!(bound[0], bound[1], "each has its own host port");
        // The newest instance's log; its command saw its container port both ways.
        let mut lines = Vec::new();
        for _ in 0..100 {
            lines = runtime.log_tail(&replica, 5).await;
            if !lines.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(lines, ["instance 2 port 8080 8080"]);
    }
    // A restarted agent: both are found and taken over.
    let (runtime, mut rx) = engine(&node).await;
    assert_eq!(runtime.adopt().await, 2);
    let mut adopted = Vec::new();
    for _ in 0..2 {
        match next(&mut rx).await {
            RuntimeEvent::Adopted {
                replica: r,
                instance,
                revision,
            } => {
                assert_eq!((&r, revision), (&replica, 1));
                adopted.push(instance);
            }
            other => panic!("expected an adoption, got {other:?}"),
        }
    }
    adopted.sort();
    assert_eq!(adopted, [1, 2]);
    // Stopping instance 1 ends it alone; its exit carries its own number.
    runtime.stop(&replica, 1, Duration::from_secs(1)).await;
    assert!(matches!(
        next(&mut rx).await,
        RuntimeEvent::Exited { instance: 1, .. }
    ));
    assert!(!runtime.holds_instance(&replica, 1));
    assert!(runtime.holds_instance(&replica, 2));
    assert_eq!(running_on(&node).len(), 1, "instance 2 keeps running");
    assert_eq!(
        runtime.exec(&replica, 2, &["true".to_string()]).await,
        Ok(0),
        "an exec check reaches instance 2's container"
    );
    runtime.stop(&replica, 2, Duration::from_secs(1)).await;
    assert!(matches!(
        next(&mut rx).await,
        RuntimeEvent::Exited { instance: 2, .. }
    ));
    assert!(running_on(&node).is_empty());
}

#[tokio::test]
async fn a_container_reads_its_secret_from_a_read_only_mount_and_the_files_go_with_it() {
    let Some(image) = starling_testkit::docker::test_image() else {
        return;
    };
    let node = NodeId::new(format!("dkfiles-{}", std::process::id())).expect("valid");
    let _cleanup = Cleanup(node.clone());
    let tmpfs = tempfile::tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm");
    let area = crate::secrets::files::FileArea::at(&tmpfs.path().join("root"));
    let (runtime, mut rx) = engine(&node).await;
    let runtime = runtime.with_files(area.clone());
    let script = "show() { cat /run/secrets/db/password; echo; }; trap show HUP; show; \
                  if (echo x > /run/secrets/db/x) 2>/dev/null; then echo writable; else echo read-only; fi; \
                  cat /etc/app/app.toml; echo; while true; do sleep 1; done";
    let spec = WorkloadSpec::from_toml(&format!(
        "name = \"vault\"\nruntime = \"docker\"\nimage = \"{image}\"\nimage_pull_policy = \"never\"\n\
         command = \"sh\"\nargs = [\"-c\", {script:?}]\n"
    ))
    .expect("valid spec");
    let secret = |value: &str| crate::runtime::FileSet {
        kind: crate::runtime::FileKind::Secret,
        name: "db".into(),
        entries: vec![(
            "password".into(),
            zeroize::Zeroizing::new(value.as_bytes().to_vec()),
        )],
        target: None,
    };
    let config = crate::runtime::FileSet {
        kind: crate::runtime::FileKind::Config,
        name: "app".into(),
        entries: vec![(
            "app.toml".into(),
            zeroize::Zeroizing::new(b"x = 1".to_vec()),
        )],
        target: Some("/etc/app".into()),
    };
    let mut request = request(image, &node, 1);
    request.replica.workload = WorkloadName::new("vault").expect("valid");
    request.spec = spec;
    request.files = vec![secret("hunter2"), config.clone()];
    let replica = request.replica.clone();
    runtime.start(request).await;
    assert!(matches!(next(&mut rx).await, RuntimeEvent::Started { .. }));
    let host_dir = area.instance_dir(&replica, 1).expect("files on the host");
    let logs_become = async |want: &[&str]| {
        let mut lines = Vec::new();
        for _ in 0..200 {
            lines = runtime.log_tail(&replica, 10).await;
            if lines == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the container said {lines:?}, not {want:?}");
    };
    logs_become(&["hunter2", "read-only", "x = 1"]).await;
    runtime
        .refresh_files(
            &replica,
            1,
            vec![secret("rotated"), config],
            Some(nix::sys::signal::Signal::SIGHUP as i32),
        )
        .await
        .expect("refreshed");
    logs_become(&["hunter2", "read-only", "x = 1", "rotated"]).await;
    runtime.stop(&replica, 1, Duration::from_secs(1)).await;
    assert!(matches!(
        next(&mut rx).await,
        RuntimeEvent::Exited { instance: 1, .. }
    ));
    assert!(!host_dir.exists(), "wiped when the container is removed");
}
