//! The agent's local HTTP endpoint: Prometheus metrics at `/metrics`, and each lease as this
//! node sees it at `/v1/leases/NAME` (JSON; `?wait=SECONDS` long-polls until it changes), so a
//! singleton's instance can learn whether it is active and its fencing token.
//!
//! Counters are atomics bumped where things happen; gauges (members and replicas by state)
//! are rendered by the agent loop at each gossip read, and the lease board is written by the
//! loop, so the server never touches the core. A tiny HTTP/1.1 responder is enough for these
//! and keeps the agent small.

use std::collections::BTreeMap;
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
            "Gossip packets dropped unanswered: failed authentication, unknown key id, replayed (from any address), or malformed.",
            &[
                ("{reason=\"auth\"}", load(&g.dropped_forged)),
                ("{reason=\"unknown_key\"}", load(&g.dropped_unknown_key)),
                ("{reason=\"replay\"}", load(&g.dropped_replay)),
                ("{reason=\"malformed\"}", load(&g.dropped_malformed)),
            ],
        );
        counter(
            "starling_probe_dropped_total",
            "Failure-detector packets dropped unanswered, by the same reasons as gossip, and from another life of a node id than the one followed (a second process under that id).",
            &[
                ("{reason=\"auth\"}", load(&g.probe_dropped_forged)),
                (
                    "{reason=\"unknown_key\"}",
                    load(&g.probe_dropped_unknown_key),
                ),
                ("{reason=\"replay\"}", load(&g.probe_dropped_replay)),
                ("{reason=\"malformed\"}", load(&g.probe_dropped_malformed)),
                ("{reason=\"other_life\"}", load(&g.probe_dropped_other_life)),
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

/// A lease as this node sees it, for the workloads it runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaseInfo {
    /// The lease.
    pub name: String,
    /// This node.
    pub node: String,
    /// This node holds it and may act now: the instance here is the active one.
    pub active: bool,
    /// The holder in the newest record known here.
    pub holder: Option<String>,
    /// That record's epoch.
    pub epoch: u64,
    /// The fencing token while active here (0 otherwise).
    pub token: u64,
    /// Until when (Unix ms) this node may act without renewing; 0 when not active.
    pub act_until_unix_ms: u64,
}

/// The leases the loop last showed, with a change counter for long polls.
#[derive(Debug)]
pub struct LeaseBoard {
    leases: RwLock<BTreeMap<String, LeaseInfo>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for LeaseBoard {
    fn default() -> Self {
        LeaseBoard {
            leases: RwLock::default(),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl LeaseBoard {
    /// Records a lease's state; wakes long polls when it changed.
    pub fn set(&self, info: LeaseInfo) {
        let mut leases = self.leases.write().unwrap_or_else(|e| e.into_inner());
        // Renewals move act_until without changing who is active: not a change for pollers.
        let same = leases.get(&info.name).is_some_and(|old| {
            old.active == info.active && old.token == info.token && old.holder == info.holder
        });
        leases.insert(info.name.clone(), info);
        drop(leases);
        if !same {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// The lease's state here.
    pub fn get(&self, name: &str) -> Option<LeaseInfo> {
        self.leases
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Answers `/v1/leases/NAME[?wait=SECONDS]`.
    async fn answer(&self, name: &str, wait_s: u64) -> (&'static str, String) {
        let mut changes = self.changed.subscribe();
        let first = self.get(name);
        if wait_s > 0 {
            let key =
                |i: &Option<LeaseInfo>| i.as_ref().map(|i| (i.active, i.token, i.holder.clone()));
            let deadline = tokio::time::Instant::from_std(crate::clock::monotonic())
                + std::time::Duration::from_secs(wait_s);
            while tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_ok_and(|r| r.is_ok())
            {
                if key(&self.get(name)) != key(&first) {
                    break;
                }
            }
        }
        match self.get(name) {
            Some(info) => (
                "200 OK",
                serde_json::to_string(&info).unwrap_or_default() + "\n",
            ),
            None => (
                "404 Not Found",
                format!("{{\"error\":\"no lease {name:?} on this node\"}}\n"),
            ),
        }
    }
}

/// Longest long poll.
const WAIT_MAX_S: u64 = 300;

/// Serves `/metrics` and `/v1/leases/NAME` on `addr`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    leases: Arc<LeaseBoard>,
) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let (metrics, leases) = (metrics.clone(), leases.clone());
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
                let (path, query) = path.split_once('?').unwrap_or((path, ""));
                let (status, body, kind) = if path == "/metrics" {
                    ("200 OK", metrics.render(), "text/plain; version=0.0.4")
                } else if let Some(name) = path.strip_prefix("/v1/leases/") {
                    let wait = query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("wait="))
                        .and_then(|w| w.parse::<u64>().ok())
                        .unwrap_or(0)
                        .min(WAIT_MAX_S);
                    let (status, body) = leases.answer(name, wait).await;
                    (status, body, "application/json")
                } else {
                    (
                        "404 Not Found",
                        "try /metrics or /v1/leases/NAME\n".to_string(),
                        "text/plain",
                    )
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_rendered_by_socket_and_reason() {
        let metrics = Metrics::default();
        let g = &metrics.gossip;
        g.dropped_replay.store(2, Ordering::Relaxed);
        g.dropped_unknown_key.store(5, Ordering::Relaxed);
        g.probe_dropped_replay.store(3, Ordering::Relaxed);
        g.probe_dropped_forged.store(7, Ordering::Relaxed);
        let text = metrics.render();
        for line in [
            "starling_gossip_dropped_total{reason=\"replay\"} 2",
            "starling_gossip_dropped_total{reason=\"unknown_key\"} 5",
            "starling_probe_dropped_total{reason=\"replay\"} 3",
            "starling_probe_dropped_total{reason=\"auth\"} 7",
            "starling_probe_dropped_total{reason=\"malformed\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
