//! The agent's local HTTP endpoint: Prometheus metrics at `/metrics`.
//!
//! Counters are atomics bumped where things happen; gauges (members and replicas by state)
//! are rendered by the agent loop at each gossip read, so the server never touches the core.
//! A tiny HTTP/1.1 responder is enough for a scrape endpoint and keeps the agent small; later
//! endpoints (leases for workloads) live here too.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::gossip::GossipCounters;

/// Counters and the latest gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Gossip and probe traffic.
    pub gossip: Arc<GossipCounters>,
    /// Time spent in the core, in microseconds, and how many calls.
    pub reconcile_micros: AtomicU64,
    /// Calls measured in `reconcile_micros`.
    pub reconciles: AtomicU64,
    /// Nodes this agent saw declared down (each one is a failover).
    pub failovers: AtomicU64,
    /// Anti-entropy pulls that brought entries.
    pub pulls: AtomicU64,
    /// Desired-state entries merged from peers.
    pub merged_entries: AtomicU64,
    /// Gauges rendered by the loop.
    pub gauges: RwLock<String>,
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let g = &self.gossip;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, series: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, value) in series {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        counter(
            "starling_gossip_packets_total",
            "Gossip and probe packets, by direction.",
            &[
                ("{direction=\"in\"}", load(&g.packets_in)),
                ("{direction=\"out\"}", load(&g.packets_out)),
            ],
        );
        counter(
            "starling_gossip_bytes_total",
            "Gossip and probe bytes, by direction.",
            &[
                ("{direction=\"in\"}", load(&g.bytes_in)),
                ("{direction=\"out\"}", load(&g.bytes_out)),
            ],
        );
        counter(
            "starling_gossip_dropped_total",
            "Packets dropped: failed authentication, replayed, or malformed.",
            &[
                ("{reason=\"auth\"}", load(&g.dropped_auth)),
                ("{reason=\"replay\"}", load(&g.dropped_replay)),
                ("{reason=\"malformed\"}", load(&g.dropped_malformed)),
            ],
        );
        let _ = writeln!(
            out,
            "# HELP starling_reconcile_seconds_total Time spent deciding in the node core.\n# TYPE starling_reconcile_seconds_total counter\nstarling_reconcile_seconds_total {:.6}",
            load(&self.reconcile_micros) as f64 / 1e6
        );
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            "starling_reconciles_total",
            "Inputs handled by the node core.",
            load(&self.reconciles),
        );
        counter(
            "starling_failover_events_total",
            "Nodes this agent saw declared down.",
            load(&self.failovers),
        );
        counter(
            "starling_sync_pulls_total",
            "Anti-entropy pulls that brought entries.",
            load(&self.pulls),
        );
        counter(
            "starling_sync_merged_entries_total",
            "Desired-state entries merged from peers.",
            load(&self.merged_entries),
        );
        out.push_str(&self.gauges.read().unwrap_or_else(|e| e.into_inner()));
        out
    }
}

/// Serves `/metrics` on `addr`.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                let mut len = 0;
                // Read the request head (bounded); only the request line matters.
                while len < buf.len() {
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        stream.read(&mut buf[len..]),
                    )
                    .await
                    {
                        Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                        Ok(Ok(n)) => len += n,
                    }
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf[..len]);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = match path {
                    "/metrics" => ("200 OK", metrics.render()),
                    _ => ("404 Not Found", "try /metrics\n".to_string()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    }))
}
