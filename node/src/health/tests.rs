use starling_protocol::spec::PortProtocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

fn port(name: &str, p: u16) -> PortSpec {
    PortSpec {
        name: name.into(),
        container_port: p,
        host_port: None,
        protocol: PortProtocol::Tcp,
    }
}

async fn server(answer: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let p = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(answer.as_bytes()).await;
        }
    });
    p
}

#[tokio::test]
async fn http_probe_passes_on_2xx_and_fails_on_5xx() {
    let ok = server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let bad = server("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
    let second = Duration::from_secs(1);
    let probe_ok = Probe::Http {
        port: "web".into(),
        path: "/healthz".into(),
    };
    assert_eq!(
        probe(&probe_ok, &[port("web", ok)], second, None, &[]).await,
        ProbeResult {
            ok: true,
            detail: "HTTP 200".into()
        }
    );
    assert_eq!(
        probe(&probe_ok, &[port("web", bad)], second, None, &[]).await,
        ProbeResult {
            ok: false,
            detail: "HTTP 503".into()
        }
    );
}

#[tokio::test]
async fn tcp_probe_fails_on_a_closed_port() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let p = listener.local_addr().expect("addr").port();
    let r = probe(
        &Probe::Tcp { port: "db".into() },
        &[port("db", p)],
        Duration::from_secs(1),
        None,
        &[],
    )
    .await;
    assert!(r.ok);
    // Bound but not listening: refused, and no other test can take the port meanwhile.
    let closed = tokio::net::TcpSocket::new_v4().expect("socket");
    closed
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let p = closed.local_addr().expect("addr").port();
    let r = probe(
        &Probe::Tcp { port: "db".into() },
        &[port("db", p)],
        Duration::from_secs(1),
        None,
        &[],
    )
    .await;
    assert_eq!(
        r,
        ProbeResult {
            ok: false,
            detail: format!("port {p}: connection refused")
        }
    );
}

#[tokio::test]
async fn exec_probe_follows_the_exit_code_and_times_out() {
    let second = Duration::from_secs(2);
    assert!(
        probe(
            &Probe::Exec {
                command: vec!["true".into()]
            },
            &[],
            second,
            None,
            &[]
        )
        .await
        .ok
    );
    let r = probe(
        &Probe::Exec {
            command: vec!["false".into()],
        },
        &[],
        second,
        None,
        &[],
    )
    .await;
    assert_eq!(r.detail, "exit 1");
    let r = probe(
        &Probe::Exec {
            command: vec!["sleep".into(), "5".into()],
        },
        &[],
        Duration::from_millis(200),
        None,
        &[],
    )
    .await;
    assert_eq!(
        r,
        ProbeResult {
            ok: false,
            detail: "timed out after 200ms".into()
        }
    );
    let r = probe(
        &Probe::Exec {
            command: vec!["/no/such/check".into()],
        },
        &[],
        second,
        None,
        &[],
    )
    .await;
    assert_eq!(r.detail, "command not found: /no/such/check");
}

#[tokio::test]
async fn a_probe_naming_an_unknown_port_fails_clearly() {
    let r = probe(
        &Probe::Tcp {
            port: "nope".into(),
        },
        &[],
        Duration::from_secs(1),
        None,
        &[],
    )
    .await;
    assert_eq!(r.detail, "no port named \"nope\"");
}

#[tokio::test]
async fn http_probe_times_out_on_silence_and_rejects_non_http_answers() {
    // Accepts and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent = listener.local_addr().expect("addr").port();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let web = Probe::Http {
        port: "web".into(),
        path: "/".into(),
    };
    let r = probe(
        &web,
        &[port("web", silent)],
        Duration::from_millis(200),
        None,
        &[],
    )
    .await;
    assert_eq!(r.detail, "timed out after 200ms");
    let garbage = server("SSH-2.0-OpenSSH\r\n").await;
    let r = probe(
        &web,
        &[port("web", garbage)],
        Duration::from_secs(1),
        None,
        &[],
    )
    .await;
    assert_eq!((r.ok, r.detail.as_str()), (false, "not an HTTP answer"));
    let smuggle = Probe::Http {
        port: "web".into(),
        path: "/ HTTP/1.1\r\nX: y".into(),
    };
    let r = probe(
        &smuggle,
        &[port("web", garbage)],
        Duration::from_secs(1),
        None,
        &[],
    )
    .await;
    assert!(!r.ok && r.detail.starts_with("invalid HTTP path"), "{r:?}");
}

#[tokio::test]
async fn http_probe_reads_the_head_only() {
    // A healthy answer with an endless body: the probe passes without reading it.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endless = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let head = b"HTTP/1.1 204 No Content\r\nX-Pad: 1\r\n\r\n";
                let _ = s.write_all(head).await;
                let chunk = [b'x'; 4096];
                while s.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    let web = Probe::Http {
        port: "web".into(),
        path: "/".into(),
    };
    let second = Duration::from_secs(1);
    let r = probe(&web, &[port("web", endless)], second, None, &[]).await;
    assert_eq!((r.ok, r.detail.as_str()), (true, "HTTP 204"));
    // A head over the limit is not an answer a probe reads to its end.
    let header = format!("X-Pad: {}\r\n", "y".repeat(200));
    let huge: &'static str = format!("HTTP/1.1 200 OK\r\n{}\r\n", header.repeat(60)).leak();
    let big = server(huge).await;
    let r = probe(&web, &[port("web", big)], second, None, &[]).await;
    assert_eq!((r.ok, r.detail.as_str()), (false, "not an HTTP answer"));
}

/// Dead or a zombie waiting for init: either way, no longer running.
fn running(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    matches!(state, Some(s) if s != "Z" && s != "X")
}

#[tokio::test]
async fn a_timed_out_exec_probe_kills_the_helpers_it_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check = Probe::Exec {
        command: ["sh", "-c", "sleep 30 & echo $! > helper.pid; wait"]
            .map(String::from)
            .to_vec(),
    };
    let env = [("GREETING".to_string(), "hi".to_string())];
    let r = probe(
        &check,
        &[],
        Duration::from_millis(300),
        Some(dir.path()),
        &env,
    )
    .await;
    assert_eq!(r.detail, "timed out after 300ms");
    let helper: i32 = std::fs::read_to_string(dir.path().join("helper.pid"))
        .expect("the probe ran in its cwd")
        .trim()
        .parse()
        .expect("pid");
    let deadline = crate::clock::monotonic() + Duration::from_secs(3);
    while running(helper) && crate::clock::monotonic() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !running(helper),
        "the helper of a timed-out probe was killed"
    );
}

#[tokio::test]
async fn a_prober_reports_every_interval_until_aborted() {
    let counts = std::sync::Arc::default();
    let (tx, mut rx) = crate::channel::bounded(16, counts);
    let replica = ReplicaId {
        workload: starling_protocol::WorkloadName::new("web").expect("name"),
        index: 2,
    };
    let check = HealthCheck {
        probe: Probe::Exec {
            command: vec!["false".into()],
        },
        interval_ms: 100,
        timeout_ms: 1000,
        failure_threshold: 3,
        initial_delay_ms: 0,
    };
    let handle = spawn_prober(replica.clone(), 7, check, Vec::new(), tx);
    for _ in 0..2 {
        let event = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a result within 5 s");
        assert_eq!(
            event,
            Some(RuntimeEvent::Health {
                replica: replica.clone(),
                instance: 7,
                ok: false,
                detail: "exit 1".into()
            })
        );
    }
    handle.abort();
    assert!(handle.await.expect_err("aborted").is_cancelled());
}

#[tokio::test]
async fn an_exec_check_gets_the_instance_s_ports_as_variables() {
    let (tx, mut rx) = crate::channel::bounded(4, std::sync::Arc::default());
    let replica = ReplicaId {
        workload: starling_protocol::WorkloadName::new("web").expect("name"),
        index: 0,
    };
    let check = HealthCheck {
        probe: Probe::Exec {
            command: vec![
                "sh".into(),
                "-c".into(),
                "test \"$STARLING_PORT_ADMIN_API\" = 41234".into(),
            ],
        },
        interval_ms: 100,
        timeout_ms: 1000,
        failure_threshold: 3,
        initial_delay_ms: 0,
    };
    let handle = spawn_prober(replica, 1, check, vec![port("admin-api", 41_234)], tx);
    let event = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a result within 5 s");
    assert!(
        matches!(event, Some(RuntimeEvent::Health { ok: true, .. })),
        "{event:?}"
    );
    handle.abort();
}

#[tokio::test]
async fn a_prober_waits_for_a_full_loop_and_loses_no_result() {
    use std::sync::atomic::Ordering;
    let counts: std::sync::Arc<crate::channel::ChannelCounts> = std::sync::Arc::default();
    let (tx, mut rx) = crate::channel::bounded(1, counts.clone());
    let replica = ReplicaId {
        workload: starling_protocol::WorkloadName::new("web").expect("name"),
        index: 0,
    };
    let check = HealthCheck {
        probe: Probe::Exec {
            command: vec!["true".into()],
        },
        interval_ms: 100,
        timeout_ms: 1000,
        failure_threshold: 3,
        initial_delay_ms: 0,
    };
    let handle = spawn_prober(replica, 1, check, Vec::new(), tx);
    // Nobody reads: the first result fills the queue, the second waits for room.
    let deadline = crate::clock::monotonic() + Duration::from_secs(5);
    while counts.full_waits.load(Ordering::Relaxed) == 0 {
        assert!(
            crate::clock::monotonic() < deadline,
            "the prober met the full queue within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        counts.full_waits.load(Ordering::Relaxed),
        1,
        "a waiting prober probes no further"
    );
    for _ in 0..3 {
        let event = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("results flow again once the loop reads");
        assert!(matches!(event, Some(RuntimeEvent::Health { ok: true, .. })));
    }
    assert_eq!(counts.dropped.load(Ordering::Relaxed), 0, "nothing dropped");
    handle.abort();
}
