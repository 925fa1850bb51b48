//! Two instances of one replica side by side (a start-first update), their records and
//! adoption, and the ports each instance is given.

use std::time::Duration;

use std::os::unix::process::CommandExt as _;

use nix::sys::signal::Signal;
use starling_protocol::spec::{HealthCheck, PortProtocol, Probe};

use super::super::instances::{InstanceFile, SUMMARY_FILE, read_record, record_file};
use super::super::*;
use super::{alive, next, reaped, replica, request, runtime};

fn summary_instance(rt: &ProcessRuntime, name: &str) -> Option<u64> {
    read_record(&rt.replica_dir(&replica(name)).join(SUMMARY_FILE)).map(|(_, r)| r.instance)
}

async fn started(
    rt: &ProcessRuntime,
    rx: &mut tokio::sync::mpsc::Receiver<RuntimeEvent>,
    req: StartRequest,
) {
    let (id, instance) = (req.replica.clone(), req.instance);
    rt.start(req).await;
    assert_eq!(
        next(rx).await,
        RuntimeEvent::Started {
            replica: id,
            instance
        }
    );
}

#[tokio::test]
async fn two_instances_of_a_replica_run_side_by_side_and_stop_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, mut rx) = runtime(dir.path(), ProcessConfig::default());
    started(&rt, &mut rx, request("pair", 1, "sleep", &["30"], "")).await;
    started(&rt, &mut rx, request("pair", 2, "sleep", &["30"], "")).await;
    let id = replica("pair");
    let (one, two) = (
        rt.pid(&id, 1).expect("instance 1"),
        rt.pid(&id, 2).expect("instance 2"),
    );
    assert_ne!(one, two);
    assert!(alive(one) && alive(two));
    let replica_dir = rt.replica_dir(&id);
    assert!(record_file(&replica_dir, 1).exists() && record_file(&replica_dir, 2).exists());
    assert_eq!(summary_instance(&rt, "pair"), Some(2));

    rt.stop(&id, 1, Duration::from_secs(5)).await;
    assert!(matches!(
        next(&mut rx).await,
        RuntimeEvent::Exited { instance: 1, .. }
    ));
    assert!(reaped(one), "instance 1 stopped and reaped");
    assert!(alive(two), "instance 2 keeps running");
    assert_eq!(rt.pid(&id, 1), None);
    assert!(!record_file(&replica_dir, 1).exists());
    assert_eq!(summary_instance(&rt, "pair"), Some(2));

    // Instance 2 dies on its own: its exit carries its own number.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(two as i32), Signal::SIGKILL).expect("kill");
    match next(&mut rx).await {
        RuntimeEvent::Exited {
            replica: r,
            instance,
            code,
            ..
        } => assert_eq!((r, instance, code), (id.clone(), 2, None)),
        other => panic!("expected the exit of instance 2, got {other:?}"),
    }
    assert!(!record_file(&replica_dir, 2).exists());
    assert_eq!(summary_instance(&rt, "pair"), None, "no instance left");
}

#[tokio::test]
async fn the_older_of_two_instances_exiting_leaves_the_newer_in_the_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, mut rx) = runtime(dir.path(), ProcessConfig::default());
    started(&rt, &mut rx, request("pair", 4, "sleep", &["30"], "")).await;
    started(&rt, &mut rx, request("pair", 5, "sleep", &["30"], "")).await;
    let id = replica("pair");
    // The newer one goes first (a failed start-first update): the summary falls back.
    rt.stop(&id, 5, Duration::from_secs(5)).await;
    assert!(matches!(
        next(&mut rx).await,
        RuntimeEvent::Exited { instance: 5, .. }
    ));
    assert_eq!(summary_instance(&rt, "pair"), Some(4));
    assert!(rt.pid(&id, 4).is_some_and(alive));
    rt.stop(&id, 4, Duration::from_secs(5)).await;
    assert!(matches!(
        next(&mut rx).await,
        RuntimeEvent::Exited { instance: 4, .. }
    ));
}

#[tokio::test]
async fn a_replica_runs_at_most_its_limit_of_instances() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, mut rx) = runtime(dir.path(), ProcessConfig::default());
    let limit = INSTANCES_PER_REPLICA_MAX as u64;
    for instance in 1..=limit {
        started(
            &rt,
            &mut rx,
            request("many", instance, "sleep", &["30"], ""),
        )
        .await;
    }
    rt.start(request("many", limit + 1, "sleep", &["30"], ""))
        .await;
    match next(&mut rx).await {
        RuntimeEvent::StartFailed {
            instance, reason, ..
        } => {
            assert_eq!(instance, limit + 1);
            assert!(reason.contains("the most there may be"), "{reason}");
        }
        other => panic!("expected a refused start, got {other:?}"),
    }
    for instance in 1..=limit {
        rt.stop(&replica("many"), instance, Duration::from_secs(5))
            .await;
        assert!(matches!(next(&mut rx).await, RuntimeEvent::Exited { .. }));
    }
}

#[tokio::test]
async fn a_restarted_runtime_adopts_both_instances_of_a_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pids = {
        let (rt, mut rx) = runtime(dir.path(), ProcessConfig::default());
        started(&rt, &mut rx, request("pair", 7, "sleep", &["30"], "")).await;
        started(&rt, &mut rx, request("pair", 8, "sleep", &["30"], "")).await;
        [7, 8].map(|i| rt.pid(&replica("pair"), i).expect("running"))
    };
    let (rt, mut rx) = runtime(
        dir.path(),
        ProcessConfig {
            poll_interval: Duration::from_millis(50),
            ..ProcessConfig::default()
        },
    );
    assert_eq!(rt.adopt().await, 2);
    for instance in [7, 8] {
        assert_eq!(
            next(&mut rx).await,
            RuntimeEvent::Adopted {
                replica: replica("pair"),
                instance,
                revision: 3
            }
        );
    }
    assert_eq!(rt.pid(&replica("pair"), 7), Some(pids[0]));
    assert_eq!(rt.pid(&replica("pair"), 8), Some(pids[1]));
    assert_eq!(rt.adopt().await, 0, "adopting again takes nothing twice");
    // An adopted instance is watched on its own: the other one's end does not touch it.
    rt.stop(&replica("pair"), 7, Duration::from_secs(5)).await;
    assert!(matches!(
        next(&mut rx).await,
        RuntimeEvent::Exited { instance: 7, .. }
    ));
    assert!(alive(pids[1]));
    assert_eq!(summary_instance(&rt, "pair"), Some(8));
    rt.stop(&replica("pair"), 8, Duration::from_secs(5)).await;
    assert!(matches!(
        next(&mut rx).await,
        RuntimeEvent::Exited { instance: 8, .. }
    ));
}

/// An older build wrote `instance.json` alone, without ports. Its instance is adopted, keeps
/// the ports its spec gave, and keeps a record of its own when a newer instance starts beside
/// it, so a second restart still finds both.
#[tokio::test]
async fn an_instance_an_older_build_recorded_is_adopted_and_survives_a_newer_sibling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut old = std::process::Command::new("sleep")
        .arg("30")
        .process_group(0)
        .spawn()
        .expect("sleep");
    let replica_dir = dir.path().join("replicas/legacy-0");
    fs::create_dir_all(&replica_dir).expect("dir");
    // The exact shape an older build wrote: no `ports`.
    let text = format!(
        r#"{{"pid":{pid},"start_time":{start},"instance":4,"revision":1,"workload":"legacy","index":0,"fenced":false}}"#,
        pid = old.id(),
        start = start_time(old.id()).expect("start time"),
    );
    fs::write(replica_dir.join(SUMMARY_FILE), text).expect("write");
    let config = ProcessConfig {
        poll_interval: Duration::from_millis(50),
        ..ProcessConfig::default()
    };
    let id = replica("legacy");
    {
        let (rt, mut rx) = runtime(dir.path(), config.clone());
        assert_eq!(rt.adopt().await, 1);
        assert!(matches!(
            next(&mut rx).await,
            RuntimeEvent::Adopted { instance: 4, .. }
        ));
        let port = PortSpec {
            name: "http".into(),
            container_port: 8080,
            host_port: None,
            protocol: PortProtocol::Tcp,
        };
        assert_eq!(
            rt.host_port(&id, 4, &port),
            Some(8080),
            "where its spec said"
        );
        assert!(record_file(&replica_dir, 4).exists());
        started(&rt, &mut rx, request("legacy", 5, "sleep", &["30"], "")).await;
        assert_eq!(summary_instance(&rt, "legacy"), Some(5));
    }
    let (rt, mut rx) = runtime(dir.path(), config);
    assert_eq!(rt.adopt().await, 2, "both found after another restart");
    for instance in [4, 5] {
        assert!(matches!(
            next(&mut rx).await,
            RuntimeEvent::Adopted { instance: i, .. } if i == instance
        ));
    }
    for instance in [4, 5] {
        rt.stop(&id, instance, Duration::from_secs(5)).await;
        assert!(matches!(next(&mut rx).await, RuntimeEvent::Exited { .. }));
    }
    let _ = old.wait();
}

#[tokio::test]
async fn unfixed_ports_are_picked_per_instance_and_given_as_variable_and_argument() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, mut rx) = runtime(dir.path(), ProcessConfig::default());
    let fixed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let http_only = "[[ports]]\nname = \"http\"\nport = 8080\n";
    let both = format!(
        "{http_only}[[ports]]\nname = \"admin-api\"\nport = {fixed}\nhost_port = {fixed}\n"
    );
    // `sh -c SCRIPT NAME ARG`: the script prints its argument and the variables.
    let script = "echo \"$1 $STARLING_PORT_HTTP $STARLING_PORT_ADMIN_API\"; sleep 30";
    let args = ["-c", script, "sh", "--port=${port.http}"];
    let id = replica("ported");
    // Instance 2 is a revision without the fixed port: one fixed port serves one instance.
    started(&rt, &mut rx, request("ported", 1, "sh", &args, &both)).await;
    started(&rt, &mut rx, request("ported", 2, "sh", &args, http_only)).await;
    let spec = request("ported", 1, "sh", &[], &both).spec;
    let (http, admin) = (&spec.ports[0], &spec.ports[1]);
    let picked = [1, 2].map(|i| rt.host_port(&id, i, http).expect("picked"));
    assert_ne!(picked[0], picked[1], "each instance gets its own port");
    assert!(picked.iter().all(|p| *p != 8080));
    assert_eq!(
        rt.host_port(&id, 1, admin),
        Some(fixed),
        "a fixed port stays"
    );
    assert_eq!(
        rt.host_port(&id, 2, admin),
        None,
        "not a port of its revision"
    );
    let log = rt.replica_dir(&id).join("output.log");
    let (one, two) = (picked[0], picked[1]);
    let expected = [
        format!("--port={one} {one} {fixed}"),
        format!("--port={two} {two} "),
    ];
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>();
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lines.sort();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(lines, expected_sorted);
    let record: InstanceFile = read_record(&record_file(&rt.replica_dir(&id), 1))
        .expect("record")
        .1;
    assert_eq!(
        record.ports.as_ref().map(|p| p["http"].port),
        Some(picked[0]),
        "the record keeps the port for adoption"
    );
    for instance in [1, 2] {
        rt.stop(&id, instance, Duration::from_secs(5)).await;
        assert!(matches!(next(&mut rx).await, RuntimeEvent::Exited { .. }));
    }
}

#[tokio::test]
async fn a_fixed_port_another_instance_holds_fails_the_start_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, mut rx) = runtime(dir.path(), ProcessConfig::default());
    let ports = "[[ports]]\nname = \"web\"\nport = 18089\nhost_port = 18089\n";
    started(&rt, &mut rx, request("fixed", 1, "sleep", &["30"], ports)).await;
    rt.start(request("fixed", 2, "sleep", &["30"], ports)).await;
    match next(&mut rx).await {
        RuntimeEvent::StartFailed {
            instance, reason, ..
        } => {
            assert_eq!(instance, 2);
            assert!(reason.contains("port web (18089/tcp) is held"), "{reason}");
        }
        other => panic!("expected a refused start, got {other:?}"),
    }
    rt.stop(&replica("fixed"), 1, Duration::from_secs(5)).await;
    assert!(matches!(next(&mut rx).await, RuntimeEvent::Exited { .. }));
}

/// Two replicas of one workload on one node, neither with a fixed port: each listens on its
/// own picked port and passes an HTTP check there.
#[tokio::test]
async fn two_replicas_with_picked_ports_both_pass_an_http_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, mut rx) = runtime(dir.path(), ProcessConfig::default());
    let ports = "[[ports]]\nname = \"http\"\nport = 8080\n";
    let mut ids = Vec::new();
    for index in [0, 1] {
        let mut req = request(
            "web",
            1,
            "python3",
            &["-m", "http.server", "--bind", "127.0.0.1", "${port.http}"],
            ports,
        );
        req.replica.index = index;
        ids.push(req.replica.clone());
        started(&rt, &mut rx, req).await;
    }
    let spec = request("web", 1, "python3", &[], ports).spec;
    let check = HealthCheck {
        probe: Probe::Http {
            port: "http".into(),
            path: "/".into(),
        },
        interval_ms: 100,
        timeout_ms: 1_000,
        failure_threshold: 1,
        initial_delay_ms: 0,
    };
    let mut seen = Vec::new();
    for id in &ids {
        let port = rt.host_port(id, 1, &spec.ports[0]).expect("picked");
        let mut resolved = spec.ports.clone();
        resolved[0].container_port = port;
        let mut result = None;
        for _ in 0..100 {
            let r =
                crate::health::probe(&check.probe, &resolved, Duration::from_secs(1), None, &[])
                    .await;
            if r.ok {
                result = Some(r);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let result = result.expect("an HTTP check passes on the picked port");
        assert_eq!(result.detail, "HTTP 200");
        seen.push(port);
    }
    assert_ne!(seen[0], seen[1]);
    for id in &ids {
        rt.stop(id, 1, Duration::from_secs(5)).await;
        assert!(matches!(next(&mut rx).await, RuntimeEvent::Exited { .. }));
    }
}
