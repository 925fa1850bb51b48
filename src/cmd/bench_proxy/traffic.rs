//! The load generator and the backends of `starling bench proxy`: small HTTP/1.1 requests
//! over many connections, kept alive or one per request, against a tiny server that gives the
//! same short answer to everything.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::ProxyBench;

/// The backends' one answer.
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";
const RESPONSE_CLOSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nok";
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: starling-bench\r\n\r\n";
const REQUEST_CLOSE: &[u8] =
    b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: starling-bench\r\nConnection: close\r\n\r\n";
const WARMUP: Duration = Duration::from_millis(500);

/// How a client sends its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    KeepAlive,
    NewConnection,
}

impl Mode {
    pub(super) fn label(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep-alive",
            Mode::NewConnection => "new connection per request",
        }
    }
}

/// What a load run saw.
pub(super) struct Outcome {
    pub(super) requests_per_s: f64,
    pub(super) p50_us: u32,
    pub(super) p99_us: u32,
    pub(super) errors: u64,
    /// CPU time the proxy spent per request (on-CPU time of its threads while measuring).
    pub(super) proxy_cpu_us_per_request: Option<f64>,
}

/// Keeps `bench.connections` clients busy for the warm-up and `bench.seconds`, counting the
/// requests started after the warm-up.
pub(super) async fn load(
    target: SocketAddr,
    mode: Mode,
    bench: &ProxyBench,
    cpu: Option<&CpuProbe>,
) -> Outcome {
    let phase = Arc::new(AtomicU8::new(WARMING));
    let workers: Vec<_> = (0..bench.connections)
        .map(|_| tokio::spawn(client(target, mode, phase.clone())))
        .collect();
    tokio::time::sleep(WARMUP).await;
    phase.store(MEASURING, Ordering::Relaxed);
    let cpu_before_ns = cpu.and_then(CpuProbe::on_cpu_ns);
    let measured = Duration::from_secs(bench.seconds);
    tokio::time::sleep(measured).await;
    let cpu_after_ns = cpu.and_then(CpuProbe::on_cpu_ns);
    phase.store(STOPPED, Ordering::Relaxed);
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for worker in workers {
        if let Ok((l, e)) = worker.await {
            latencies_us.extend(l);
            errors += e;
        }
    }
    latencies_us.sort_unstable();
    let quantile = |q: f64| {
        latencies_us
            .get(((latencies_us.len().saturating_sub(1)) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    Outcome {
        requests_per_s: latencies_us.len() as f64 / measured.as_secs_f64(),
        p50_us: quantile(0.5),
        p99_us: quantile(0.99),
        errors,
        proxy_cpu_us_per_request: cpu_before_ns.zip(cpu_after_ns).map(|(before, after)| {
            after.saturating_sub(before) as f64 / 1000.0 / latencies_us.len().max(1) as f64
        }),
    }
}

/// Whose CPU time a case reads: the threads of process `pid` (those whose name starts with
/// `name_prefix`, if given).
pub(super) struct CpuProbe {
    pub(super) pid: u32,
    pub(super) name_prefix: Option<&'static str>,
}

impl CpuProbe {
    /// Their time on a CPU so far, in ns (`/proc/PID/task/TID/schedstat`, first field).
    pub(super) fn on_cpu_ns(&self) -> Option<u64> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid)).ok()?;
        let mut total = 0;
        for task in tasks.flatten() {
            let path = task.path();
            if let Some(prefix) = self.name_prefix {
                let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
                if !comm.starts_with(prefix) {
                    continue;
                }
            }
            let stat = std::fs::read_to_string(path.join("schedstat")).ok()?;
            total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(total)
    }
}

const WARMING: u8 = 0;
const MEASURING: u8 = 1;
const STOPPED: u8 = 2;

/// One client connection's loop: request, read the answer, repeat (reconnecting for each
/// request in [`Mode::NewConnection`]). Returns the latencies of requests started while
/// measuring, and the errors.
async fn client(target: SocketAddr, mode: Mode, phase: Arc<AtomicU8>) -> (Vec<u32>, u64) {
    let mut latencies_us = Vec::with_capacity(64 * 1024);
    let mut errors = 0;
    let mut buf = vec![0u8; 4096];
    let mut open: Option<TcpStream> = None;
    loop {
        let measuring = match phase.load(Ordering::Relaxed) {
            STOPPED => break,
            p => p == MEASURING,
        };
        let started = Instant::now();
        match request(target, mode, open.take(), &mut buf).await {
            Ok(stream) => {
                if mode == Mode::KeepAlive {
                    open = Some(stream);
                }
                if measuring {
                    let us = started.elapsed().as_micros();
                    latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                }
            }
            Err(_) => {
                errors += u64::from(measuring);
                // Out of ports or refused: do not spin.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    (latencies_us, errors)
}

/// One request on `open` (or a new connection) and its whole answer.
async fn request(
    target: SocketAddr,
    mode: Mode,
    open: Option<TcpStream>,
    buf: &mut [u8],
) -> std::io::Result<TcpStream> {
    let mut stream = match open {
        Some(stream) => stream,
        None => {
            let stream = TcpStream::connect(target).await?;
            stream.set_nodelay(true)?;
            stream
        }
    };
    let request = match mode {
        Mode::KeepAlive => REQUEST,
        Mode::NewConnection => REQUEST_CLOSE,
    };
    stream.write_all(request).await?;
    read_answer(&mut stream, buf).await?;
    Ok(stream)
}

/// Reads one answer: the head, then `Content-Length` bytes of body.
async fn read_answer(stream: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            return Err(std::io::Error::other("answer head too large"));
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        if let Some(head_end) = find(&buf[..filled], b"\r\n\r\n") {
            let body = content_length(&buf[..head_end]);
            let want = head_end + 4 + body;
            while filled < want.min(buf.len()) {
                let n = stream.read(&mut buf[filled..]).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                filled += n;
            }
            return Ok(());
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

/// A tiny HTTP/1.1 server on 127.0.0.1: the same short answer to every request, keeping the
/// connection unless asked to close it.
pub(super) async fn backend() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_http(stream));
        }
    });
    Ok(address)
}

async fn serve_http(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 4096];
    let mut filled = 0;
    loop {
        match stream.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
        while let Some(head_end) = find(&buf[..filled], b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let close = head.contains("connection: close");
            let answer = if close { RESPONSE_CLOSE } else { RESPONSE };
            if stream.write_all(answer).await.is_err() {
                return;
            }
            if close {
                let _ = stream.shutdown().await;
                return;
            }
            buf.copy_within(head_end + 4..filled, 0);
            filled -= head_end + 4;
        }
        if filled == buf.len() {
            return;
        }
    }
}
