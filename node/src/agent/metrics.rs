//! The agent's local HTTP endpoint: Prometheus metrics at `/metrics`, and each lease as this
//! node sees it at `/v1/leases/NAME` (JSON; `?wait=SECONDS` long-polls until it changes), so a
//! singleton's instance can learn whether it is active and its fencing token.
//!
//! Counters are atomics bumped where things happen, read at each scrape by a
//! prometheus-client collector; gauges (members and replicas by state) are rendered by the
//! agent loop at each gossip read, and the lease board is written by the loop, so the server
//! (`http`) never touches the core.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use hyper::StatusCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::http::HttpCounters;
use crate::channel::ChannelCounts;
use crate::gossip::GossipCounters;
use crate::store::StoreHealth;

/// The content type of [`Metrics::render`].
pub(super) const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

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
    /// Anti-entropy pulls that failed (peer unreachable, timed out, or answered wrongly).
    pub pull_failures: AtomicU64,
    /// Desired-state entries merged from peers.
    pub merged_entries: AtomicU64,
    /// The local HTTP server's connections, long polls and refusals.
    pub http: Arc<HttpCounters>,
    /// The QUIC server's connections and refusals.
    pub quic: Arc<super::quic_api::QuicCounters>,
    /// Failed writes of the node's state (shared with the store).
    pub store: Arc<StoreHealth>,
    /// The bounded channels into the agent loop: how often they were full.
    pub channels: ChannelMetrics,
    /// Gauges rendered by the loop.
    pub gauges: RwLock<String>,
    /// The DNS server's queries and answers.
    pub dns: Arc<crate::dns::DnsCounters>,
    /// The proxy's connections, bytes and retries per service and instance.
    pub proxy: Arc<crate::proxy::ProxyCounters>,
}

/// The bounded channels into the agent loop, each with its counts (see [`crate::channel`]).
#[derive(Debug, Default)]
pub struct ChannelMetrics {
    /// Runtime and health-probe events (senders wait when full).
    pub runtime_events: Arc<ChannelCounts>,
    /// Answers of sync requests, keyrings, rival checks, departures and key installs (tasks
    /// wait when full; the loop's own sends drop and count, and the sync machine's timeout
    /// recovers them).
    pub sync: Arc<ChannelCounts>,
    /// Replies to this node's lease grant requests (senders wait when full).
    pub lease_replies: Arc<ChannelCounts>,
}

impl ChannelMetrics {
    /// Each channel with its metric label.
    fn labelled(&self) -> [(&'static str, &ChannelCounts); 3] {
        [
            ("runtime_events", &self.runtime_events),
            ("sync", &self.sync),
            ("lease_replies", &self.lease_replies),
        ]
    }
}

impl Metrics {
    /// The Prometheus text exposition (format 0.0.4): this module's families encoded by
    /// prometheus-client, then the DNS server's, the proxy's and the loop's gauges, which
    /// their owners render in the same format.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Families(self.clone())));
        let mut out = String::new();
        // Writing to a String does not fail; an encoder error would lose only its family.
        if let Err(e) = prometheus_text::encode(&mut out, &registry) {
            tracing::debug!("metrics encoding stopped: {e}");
        }
        self.dns.render(&mut out);
        self.proxy.render(&mut out);
        out.push_str(&self.gauges.read().unwrap_or_else(|e| e.into_inner()));
        out
    }
}

/// The families of [`Metrics`], read from its atomics at each scrape.
#[derive(Debug)]
struct Families(Arc<Metrics>);

impl Collector for Families {
    fn encode(&self, mut out: DescriptorEncoder) -> Result<(), fmt::Error> {
        let m = &self.0;
        let g = &m.gossip;
        let e = &mut out;
        labelled(
            e,
            Counter("starling_gossip_packets"),
            "Gossip and probe packets, by direction.",
            "direction",
            &[("in", load(&g.packets_in)), ("out", load(&g.packets_out))],
        )?;
        labelled(
            e,
            Counter("starling_gossip_bytes"),
            "Gossip and probe bytes, by direction.",
            "direction",
            &[("in", load(&g.bytes_in)), ("out", load(&g.bytes_out))],
        )?;
        labelled(
            e,
            Counter("starling_gossip_dropped"),
            "Gossip packets dropped unanswered: failed authentication, unknown key id, replayed (from any address), or malformed.",
            "reason",
            &[
                ("auth", load(&g.dropped_forged)),
                ("unknown_key", load(&g.dropped_unknown_key)),
                ("replay", load(&g.dropped_replay)),
                ("malformed", load(&g.dropped_malformed)),
            ],
        )?;
        labelled(
            e,
            Counter("starling_probe_dropped"),
            "Failure-detector packets dropped unanswered, by the same reasons as gossip, and from another life of a node id than the one followed (a second process under that id).",
            "reason",
            &[
                ("auth", load(&g.probe_dropped_forged)),
                ("unknown_key", load(&g.probe_dropped_unknown_key)),
                ("replay", load(&g.probe_dropped_replay)),
                ("malformed", load(&g.probe_dropped_malformed)),
                ("other_life", load(&g.probe_dropped_other_life)),
                ("overload", load(&g.probe_dropped_overload)),
            ],
        )?;
        let seconds = load(&m.reconcile_micros) as f64 / 1e6;
        ConstCounter::new(seconds).encode(e.encode_descriptor(
            "starling_reconcile_seconds",
            "Time spent deciding in the node core.",
            None,
            MetricType::Counter,
        )?)?;
        for (name, help, value) in [
            (
                "starling_reconciles",
                "Inputs handled by the node core.",
                &m.reconciles,
            ),
            (
                "starling_failover_events",
                "Nodes this agent saw declared down.",
                &m.failovers,
            ),
            (
                "starling_sync_pulls",
                "Anti-entropy pulls that brought entries.",
                &m.pulls,
            ),
            (
                "starling_sync_pull_failures",
                "Anti-entropy pulls that failed (the peer is named in a warning).",
                &m.pull_failures,
            ),
            (
                "starling_sync_merged_entries",
                "Desired-state entries merged from peers.",
                &m.merged_entries,
            ),
        ] {
            single(e, Counter(name), help, load(value))?;
        }
        m.encode_local(e)?;
        m.encode_channels(e)?;
        labelled(
            e,
            Counter("starling_gossip_sent_bytes"),
            "Gossip and probe bytes sent, by kind: chitchat syn, syn_ack, ack and bad_cluster; probe (pings, acks, indirect pings) and verdict.",
            "kind",
            &g.sent.labelled(),
        )?;
        m.encode_rejects(e)
    }
}

/// A family's name and kind: counters are named without `_total`, which the encoder adds.
#[derive(Clone, Copy)]
enum Kind {
    Counter(&'static str),
    Gauge(&'static str),
}
use Kind::{Counter, Gauge};

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// One family without labels.
fn single(e: &mut DescriptorEncoder, kind: Kind, help: &str, value: u64) -> fmt::Result {
    match kind {
        Counter(name) => ConstCounter::new(value).encode(e.encode_descriptor(
            name,
            help,
            None,
            MetricType::Counter,
        )?),
        Gauge(name) => ConstGauge::new(value).encode(e.encode_descriptor(
            name,
            help,
            None,
            MetricType::Gauge,
        )?),
    }
}

/// One family with one label, a series per value of it.
fn labelled(
    e: &mut DescriptorEncoder,
    kind: Kind,
    help: &str,
    label: &'static str,
    series: &[(&'static str, u64)],
) -> fmt::Result {
    let (name, metric_type) = match kind {
        Counter(name) => (name, MetricType::Counter),
        Gauge(name) => (name, MetricType::Gauge),
    };
    let mut family = e.encode_descriptor(name, help, None, metric_type)?;
    for (value_of_label, value) in series {
        let labels = [(label, *value_of_label)];
        let series = family.encode_family(&labels)?;
        match kind {
            Counter(_) => ConstCounter::new(*value).encode(series)?,
            Gauge(_) => ConstGauge::new(*value).encode(series)?,
        }
    }
    Ok(())
}

impl Metrics {
    /// How often the bounded channels into the loop were full.
    fn encode_channels(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let channels = self.channels.labelled();
        let full = channels.map(|(name, counts)| (name, load(&counts.full_waits)));
        labelled(
            e,
            Counter("starling_channel_full"),
            "Sends into the agent loop that found its queue full and waited (the loop is behind), by channel.",
            "channel",
            &full,
        )?;
        let dropped = channels.map(|(name, counts)| (name, load(&counts.dropped)));
        labelled(
            e,
            Counter("starling_channel_dropped"),
            "Messages into the agent loop dropped because its queue was full (only those whose loss is recovered, such as sync answers), by channel.",
            "channel",
            &dropped,
        )
    }

    /// The store's, the HTTP server's and the QUIC server's own health.
    fn encode_local(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let h = &self.http;
        let q = &self.quic;
        single(
            e,
            Counter("starling_store_errors"),
            "Failed writes of this node's state files (desired state, assignment, lease files); API writes are refused while they fail.",
            self.store.errors(),
        )?;
        single(
            e,
            Gauge("starling_store_healthy"),
            "1 when the last write of this node's state succeeded, 0 while writes fail.",
            u64::from(self.store.problem().is_none()),
        )?;
        single(
            e,
            Counter("starling_http_accept_errors"),
            "Failed accepts on the local HTTP port (mostly: out of descriptors); each pauses the server 100 ms.",
            load(&h.accept_errors),
        )?;
        labelled(
            e,
            Counter("starling_http_refused"),
            "HTTP connections and long polls answered 503 because a cap was reached.",
            "reason",
            &[
                ("connections", load(&h.refused_connections)),
                ("client", load(&h.refused_client)),
                ("long_polls", load(&h.refused_long_polls)),
            ],
        )?;
        labelled(
            e,
            Counter("starling_quic_refused"),
            "QUIC connections refused because a cap was reached: all connections taken, the dialer's address holding its share, or all joiner (no certificate) slots taken.",
            "reason",
            &[
                ("connections", load(&q.refused_connections)),
                ("address", load(&q.refused_address)),
                ("joiners", load(&q.refused_anonymous)),
            ],
        )?;
        let r = &q.refused_requests;
        labelled(
            e,
            Counter("starling_api_refused"),
            "API requests over QUIC refused for who asked them, by the caller: an operator's role (a viewer's write, a deployer's admin request) or a node's certificate (join tokens, the operator's hand on rollouts).",
            "caller",
            &[
                ("viewer", load(&r.viewer)),
                ("deployer", load(&r.deployer)),
                ("admin", load(&r.admin)),
                ("node", load(&r.node)),
            ],
        )?;
        single(
            e,
            Counter("starling_quic_address_validations"),
            "New QUIC dialers asked to prove their address first (a retry) because a cap was half taken.",
            load(&q.validations),
        )?;
        single(
            e,
            Gauge("starling_quic_connections"),
            "QUIC connections held by the server now, handshakes included.",
            load(&q.connections),
        )?;
        single(
            e,
            Gauge("starling_quic_joiner_connections"),
            "QUIC connections without a certificate (joiners) held by the server now.",
            load(&q.anonymous),
        )?;
        single(
            e,
            Gauge("starling_http_connections"),
            "HTTP connections open now.",
            load(&h.connections),
        )?;
        single(
            e,
            Gauge("starling_http_long_polls"),
            "Lease long polls (?wait=) waiting now.",
            load(&h.long_polls),
        )
    }
}

impl Metrics {
    /// What the API doors refused before any handler saw it (see `quic_api::rejects`).
    fn encode_rejects(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let h = &self.quic.handshake_failures;
        labelled(
            e,
            Counter("starling_quic_handshake_failures"),
            "QUIC handshakes that did not complete: TLS refused (a certificate of another CA), the QUIC protocol broken (a forged or damaged Initial), the dialer silent mid-handshake, or other.",
            "reason",
            &[
                ("tls", load(&h.tls)),
                ("protocol", load(&h.protocol)),
                ("timeout", load(&h.timeout)),
                ("other", load(&h.other)),
            ],
        )?;
        let b = &self.quic.bad_requests;
        labelled(
            e,
            Counter("starling_api_bad_requests"),
            "API requests refused unread, at the socket or over QUIC: a frame over the size limit, undecodable bytes, a decoded but invalid request (a bad name, a spec over its limit), or another protocol version.",
            "reason",
            &[
                ("too_large", load(&b.too_large)),
                ("malformed", load(&b.malformed)),
                ("invalid", load(&b.invalid)),
                ("version", load(&b.version)),
            ],
        )
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
    pub(super) async fn answer(&self, name: &str, wait_s: u64) -> (StatusCode, String) {
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
                StatusCode::OK,
                serde_json::to_string(&info).unwrap_or_default() + "\n",
            ),
            None => (
                StatusCode::NOT_FOUND,
                format!("{{\"error\":\"no lease {name:?} on this node\"}}\n"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_rendered_by_socket_and_reason() {
        let metrics = Arc::new(Metrics::default());
        let g = &metrics.gossip;
        g.dropped_replay.store(2, Ordering::Relaxed);
        g.dropped_unknown_key.store(5, Ordering::Relaxed);
        g.probe_dropped_replay.store(3, Ordering::Relaxed);
        g.probe_dropped_forged.store(7, Ordering::Relaxed);
        g.sent.count_probe(true, 90);
        g.sent.syn_ack.store(1_200, Ordering::Relaxed);
        metrics.channels.sync.dropped.store(4, Ordering::Relaxed);
        let q = &metrics.quic;
        q.handshake_failures.tls.store(8, Ordering::Relaxed);
        q.bad_requests.invalid.store(9, Ordering::Relaxed);
        metrics
            .channels
            .runtime_events
            .full_waits
            .store(6, Ordering::Relaxed);
        let text = metrics.render();
        for line in [
            "starling_channel_dropped_total{channel=\"sync\"} 4",
            "starling_channel_dropped_total{channel=\"runtime_events\"} 0",
            "starling_channel_full_total{channel=\"runtime_events\"} 6",
            "starling_gossip_dropped_total{reason=\"replay\"} 2",
            "starling_gossip_dropped_total{reason=\"unknown_key\"} 5",
            "starling_probe_dropped_total{reason=\"replay\"} 3",
            "starling_probe_dropped_total{reason=\"auth\"} 7",
            "starling_probe_dropped_total{reason=\"malformed\"} 0",
            "# TYPE starling_http_refused_total counter",
            "# TYPE starling_http_long_polls gauge",
            "starling_http_long_polls 0",
            "starling_store_healthy 1",
            "starling_reconciles_total 0",
            "starling_quic_handshake_failures_total{reason=\"tls\"} 8",
            "starling_quic_handshake_failures_total{reason=\"timeout\"} 0",
            "starling_api_bad_requests_total{reason=\"invalid\"} 9",
            "starling_api_bad_requests_total{reason=\"too_large\"} 0",
            "starling_gossip_sent_bytes_total{kind=\"syn_ack\"} 1200",
            "starling_gossip_sent_bytes_total{kind=\"verdict\"} 90",
            "starling_gossip_sent_bytes_total{kind=\"probe\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
