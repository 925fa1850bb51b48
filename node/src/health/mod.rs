//! Health probes: exec, TCP and HTTP, run by the shell on a replica's schedule.
//!
//! A prober only reports each result as a [`RuntimeEvent::Health`]; counting failures against
//! the threshold and deciding to restart is the core's job, so it stays deterministic.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use starling_protocol::placement::ReplicaId;
use starling_protocol::quantity::format_duration_ms;
use starling_protocol::spec::{HealthCheck, PortSpec, Probe};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use starling_core::node::RuntimeEvent;

use crate::runtime::ports::env_name;

/// Shortest interval between probes of one instance, whatever its spec says: a probe costs a
/// process or a connection, and the spec's own check allows no less.
const PROBE_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// Shortest probe timeout: a zero timeout would fail every probe before it started.
const PROBE_TIMEOUT_MIN: Duration = Duration::from_millis(1);

/// Most bytes read from an HTTP answer (hyper's smallest buffer): its head, which holds the
/// status, is all a probe needs.
const HTTP_READ_BYTES_MAX: usize = 8 << 10;

/// One probe's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// Passed.
    pub ok: bool,
    /// What was seen (`HTTP 200`, `connection refused`, `exit 1`, `timed out after 1s`).
    pub detail: String,
}

/// Runs one probe, giving up after `timeout`. TCP and HTTP probes connect to 127.0.0.1 at
/// the named port's `container_port`, so `ports` must say where the instance is reachable from
/// the host (the agent passes them through `Runtimes::reachable_ports`: a process's picked or
/// fixed port, a container's bound host port). `cwd` and `env` apply to exec probes (the
/// replica's directory and environment, so the check sees what the workload sees). Never
/// panics and never leaves a process behind: an exec probe runs in its own process group,
/// which is killed when the probe ends or times out.
pub async fn probe(
    probe: &Probe,
    ports: &[PortSpec],
    timeout: Duration,
    cwd: Option<&Path>,
    env: &[(String, String)],
) -> ProbeResult {
    match probe {
        Probe::Exec { command } => exec(command, cwd, env, timeout).await,
        Probe::Tcp { port } => match port_number(ports, port) {
            Err(r) => r,
            Ok(p) => within(timeout, tcp(p)).await,
        },
        Probe::Http { port, path } => match port_number(ports, port) {
            Err(r) => r,
            Ok(p) => within(timeout, http(p, path)).await,
        },
    }
}

/// Probes an instance on its schedule until aborted (the agent aborts it when the instance
/// stops). Each result goes to `events`. `ports` as [`probe`] takes them; an exec check also
/// gets them as `STARLING_PORT_<NAME>`, as the instance does, since a port picked for the
/// instance cannot be written into the spec's check.
pub fn spawn_prober(
    replica: ReplicaId,
    instance: u64,
    check: HealthCheck,
    ports: Vec<PortSpec>,
    events: crate::runtime::EventSender,
) -> JoinHandle<()> {
    let probe_spec = check.probe.clone();
    let env: Vec<(String, String)> = ports
        .iter()
        .map(|p| (env_name(&p.name), p.container_port.to_string()))
        .collect();
    spawn_prober_with(replica, instance, check, events, move |timeout| {
        let (probe_spec, ports, env) = (probe_spec.clone(), ports.clone(), env.clone());
        async move { probe(&probe_spec, &ports, timeout, None, &env).await }
    })
}

/// The probing schedule (initial delay, interval, timeout) around any way of probing: the
/// process runtime probes on the host, the container runtime inside the container.
pub fn spawn_prober_with<F, Fut>(
    replica: ReplicaId,
    instance: u64,
    check: HealthCheck,
    events: crate::runtime::EventSender,
    run_probe: F,
) -> JoinHandle<()>
where
    F: Fn(Duration) -> Fut + Send + 'static,
    Fut: Future<Output = ProbeResult> + Send,
{
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(check.initial_delay_ms)).await;
        let interval = Duration::from_millis(check.interval_ms).max(PROBE_INTERVAL_MIN);
        let timeout = Duration::from_millis(check.timeout_ms).max(PROBE_TIMEOUT_MIN);
        loop {
            let started = crate::clock::monotonic();
            let result = run_probe(timeout).await;
            let event = RuntimeEvent::Health {
                replica: replica.clone(),
                instance,
                ok: result.ok,
                detail: result.detail,
            };
            if !events.send(event).await {
                return;
            }
            tokio::time::sleep(interval.saturating_sub(started.elapsed())).await;
        }
    })
}

fn port_number(ports: &[PortSpec], name: &str) -> Result<u16, ProbeResult> {
    ports
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.container_port)
        .ok_or_else(|| ProbeResult {
            ok: false,
            detail: format!("no port named {name:?}"),
        })
}

/// `fut`'s result, or a failure naming the timeout.
async fn within(timeout: Duration, fut: impl Future<Output = ProbeResult>) -> ProbeResult {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| timed_out(timeout))
}

fn timed_out(timeout: Duration) -> ProbeResult {
    let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    ProbeResult {
        ok: false,
        detail: format!("timed out after {}", format_duration_ms(ms)),
    }
}

async fn tcp(port: u16) -> ProbeResult {
    match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(_) => ProbeResult {
            ok: true,
            detail: format!("connected to port {port}"),
        },
        Err(e) => ProbeResult {
            ok: false,
            detail: format!("port {port}: {}", io_detail(&e)),
        },
    }
}

/// Kills a probe's whole process group when dropped: on every return path, and when the
/// prober task is aborted mid-probe, so helpers the check started (`sh -c '...'`) die with it.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // ESRCH when the group already ended: nothing to do.
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

async fn exec(
    command: &[String],
    cwd: Option<&Path>,
    env: &[(String, String)],
    timeout: Duration,
) -> ProbeResult {
    let Some((program, args)) = command.split_first() else {
        return ProbeResult {
            ok: false,
            detail: "empty command".into(),
        };
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return ProbeResult {
                ok: false,
                detail: format!("command not found: {program}"),
            };
        }
        Err(e) => {
            return ProbeResult {
                ok: false,
                detail: format!("cannot run {program}: {e}"),
            };
        }
    };
    let _group = GroupGuard(child.id().and_then(|pid| i32::try_from(pid).ok()));
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => ProbeResult {
            ok: true,
            detail: "exit 0".into(),
        },
        Ok(Ok(status)) => ProbeResult {
            ok: false,
            detail: status
                .code()
                .map_or("killed by a signal".into(), |c| format!("exit {c}")),
        },
        Ok(Err(e)) => ProbeResult {
            ok: false,
            detail: format!("cannot wait for {program}: {e}"),
        },
        Err(_) => {
            // Kill and reap the leader now (no zombie); the guard then ends the rest.
            let _ = child.kill().await;
            timed_out(timeout)
        }
    }
}

/// An HTTP probe: `GET path` with hyper's HTTP/1 client on a connection of its own. Only the
/// answer's head is read (at most [`HTTP_READ_BYTES_MAX`] bytes), never its body: the status
/// is all a probe needs, and a large or endless body costs nothing.
async fn http(port: u16, path: &str) -> ProbeResult {
    let fail = |detail: String| ProbeResult { ok: false, detail };
    // Validation refuses such paths, but a spec decoded from elsewhere may skip it, and a
    // space or line break would let the path rewrite the request.
    let uri = (path.starts_with('/') && !path.chars().any(|c| c.is_whitespace() || c.is_control()))
        .then(|| path.parse::<hyper::Uri>().ok())
        .flatten();
    let Some(uri) = uri else {
        return fail(format!("invalid HTTP path {path:?}"));
    };
    let stream = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => s,
        Err(e) => return fail(format!("port {port}: {}", io_detail(&e))),
    };
    let handshake = hyper::client::conn::http1::Builder::new()
        .max_buf_size(HTTP_READ_BYTES_MAX)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await;
    let (mut sender, connection) = match handshake {
        Ok(pair) => pair,
        Err(e) => return fail(format!("port {port}: {}", hyper_detail(&e))),
    };
    let request = hyper::Request::get(uri)
        .header(header::HOST, format!("127.0.0.1:{port}"))
        .header(header::USER_AGENT, "starling-probe")
        .header(header::CONNECTION, "close")
        .body(Empty::new());
    let request = match request {
        Ok(r) => r,
        Err(_) => return fail(format!("invalid HTTP path {path:?}")),
    };
    // The connection does the I/O while the sender waits for the answer's head; both end
    // (and the socket closes) when this returns.
    let send = sender.send_request(request);
    tokio::pin!(send);
    let answer = tokio::select! {
        biased;
        answer = &mut send => answer,
        // A connection may end cleanly right after handing over the answer (the server
        // closed): the answer is then waiting in the sender.
        ended = connection => match ended {
            Ok(()) => send.await,
            Err(e) => return fail(hyper_detail(&e)),
        },
    };
    match answer {
        Ok(response) => {
            let code = response.status().as_u16();
            ProbeResult {
                ok: (200..400).contains(&code),
                detail: format!("HTTP {code}"),
            }
        }
        Err(e) => fail(hyper_detail(&e)),
    }
}

/// What a failed HTTP exchange says: its I/O error as for TCP probes, or that the peer does
/// not speak HTTP (garbage, a head over the limit, or a close before any answer).
fn hyper_detail(e: &hyper::Error) -> String {
    let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
    match io {
        Some(io) => io_detail(io),
        None if e.is_parse() || e.is_incomplete_message() || e.is_parse_too_large() => {
            "not an HTTP answer".into()
        }
        None => e.to_string(),
    }
}

fn io_detail(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests;
