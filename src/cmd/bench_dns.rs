//! `starling bench dns`: the agent's DNS server in this process, on 127.0.0.1, answering a
//! table of 50 services with 3 ready instances each to concurrent UDP clients.
//!
//! Each client sends one query, waits for its answer, and sends the next (alternately A of
//! `svcN.svc.starling` and SRV of `_http._tcp.svcN.svc.starling`, N cycling), so the figures
//! are answers per second at that concurrency and the latency of each exchange. Every client
//! binds its own loopback address (127.0.1.1, 127.0.1.2, ...), so each has a rate-limit bucket of
//! its own, as programs on different hosts would; the limit is set far above what they can send,
//! so the limiter's cost is measured but it drops nothing (the summary says if it did).
//! Clients and server share the machine's cores: the figures are a floor for the server alone.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hickory_proto::op::{Header, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use starling_node::dns::{self, DnsConfig, DnsCounters, Listener, ServiceAnswer};
use starling_protocol::names::NodeId;
use starling_protocol::placement::{Liveness, ReplicaId};
use starling_protocol::service::{Endpoint, EndpointState, ServiceTable};
use starling_protocol::spec::WorkloadSpec;
use tokio::net::UdpSocket;
use tokio::sync::watch;

const SERVICES: u32 = 50;
const INSTANCES: u32 = 3;
/// A query unanswered this long counts as lost and the client moves on.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(500);
/// The per-client limit: far above what one closed-loop client can send.
const PER_CLIENT_QPS: u32 = 10_000_000;

/// What one client saw.
#[derive(Default)]
struct ClientTally {
    latencies_us: Vec<u32>,
    /// Answers that were not NOERROR with records.
    wrong: u64,
    lost: u64,
}

/// Runs `clients` closed-loop UDP clients against the server for `seconds`.
pub fn dns(seconds: u64, clients: usize) -> anyhow::Result<ExitCode> {
    if !(1..=3600).contains(&seconds) || !(1..=1000).contains(&clients) {
        bail!("--seconds must be 1..=3600 and --clients 1..=1000");
    }
    let rt = crate::cmd::bench_fleet::runtime()?;
    rt.block_on(measure(seconds, clients))
}

async fn measure(seconds: u64, clients: usize) -> anyhow::Result<ExitCode> {
    let (_tables, table) = watch::channel(Arc::new(table()?));
    let counters = Arc::new(DnsCounters::default());
    let config = DnsConfig {
        listen: vec![Listener {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            answer: ServiceAnswer::ServiceAddress,
        }],
        per_client_qps: PER_CLIENT_QPS,
    };
    let server = dns::serve(config, table, counters.clone()).await?;
    let addr = server.local_addrs()[0];
    let queries = Arc::new(queries()?);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let octets = [127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8];
        let socket = UdpSocket::bind(SocketAddr::from((Ipv4Addr::from(octets), 0)))
            .await
            .with_context(|| format!("bind client {i} on {}", Ipv4Addr::from(octets)))?;
        socket.connect(addr).await.context("connect client")?;
        tasks.push(tokio::spawn(client(socket, queries.clone(), i, deadline)));
    }
    let mut tally = ClientTally::default();
    for task in tasks {
        let one = task.await.context("a client task failed")??;
        tally.latencies_us.extend(one.latencies_us);
        tally.wrong += one.wrong;
        tally.lost += one.lost;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    server.shutdown().await;
    report(&tally, &counters, seconds, clients, elapsed_s)
}

fn report(
    tally: &ClientTally,
    counters: &DnsCounters,
    seconds: u64,
    clients: usize,
    elapsed_s: f64,
) -> anyhow::Result<ExitCode> {
    let mut latencies = tally.latencies_us.clone();
    if latencies.is_empty() {
        bail!("no answer at all in {seconds} s");
    }
    latencies.sort_unstable();
    let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "dns: {SERVICES} services x {INSTANCES} instances, {clients} UDP clients, {seconds} s (A and SRV alternating): \
         {:.0} answers/s, latency p50 {} us / p99 {} us / max {} us; {} lost, {} wrong, {} rate limited",
        latencies.len() as f64 / elapsed_s,
        p(0.5),
        p(0.99),
        latencies[latencies.len() - 1],
        tally.lost,
        tally.wrong,
        counters.rate_limited.load(Ordering::Relaxed),
    );
    if tally.wrong > 0 {
        bail!("{} answers were not NOERROR with records", tally.wrong);
    }
    Ok(ExitCode::SUCCESS)
}

/// One closed-loop client: query, wait, next, until `deadline`.
async fn client(
    socket: UdpSocket,
    queries: Arc<Vec<Vec<u8>>>,
    offset: usize,
    deadline: Instant,
) -> anyhow::Result<ClientTally> {
    let mut tally = ClientTally::default();
    let mut buffer = vec![0u8; 4096];
    let mut n = offset;
    while Instant::now() < deadline {
        let mut query = queries[n % queries.len()].clone();
        let id = n as u16;
        query[..2].copy_from_slice(&id.to_be_bytes());
        n += 1;
        let sent = Instant::now();
        socket.send(&query).await.context("send")?;
        // Skip late answers to earlier, timed-out queries.
        let header = loop {
            match tokio::time::timeout(ANSWER_TIMEOUT, socket.recv(&mut buffer)).await {
                Err(_) => break None,
                Ok(received) => {
                    let len = received.context("receive")?;
                    let header = Header::read(&mut BinDecoder::new(&buffer[..len]))
                        .context("the server's answer does not decode")?;
                    if header.metadata.id == id {
                        break Some(header);
                    }
                }
            }
        };
        let Some(header) = header else {
            tally.lost += 1;
            continue;
        };
        let micros = sent.elapsed().as_micros();
        tally
            .latencies_us
            .push(u32::try_from(micros).unwrap_or(u32::MAX));
        if header.metadata.response_code != ResponseCode::NoError || header.counts.answers == 0 {
            tally.wrong += 1;
        }
    }
    Ok(tally)
}

/// The encoded queries the clients cycle through (their ids are overwritten per send).
fn queries() -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for s in 0..SERVICES {
        for (name, rtype) in [
            (format!("svc{s}.svc.starling."), RecordType::A),
            (format!("_http._tcp.svc{s}.svc.starling."), RecordType::SRV),
        ] {
            let mut message = Message::query();
            message.add_query(Query::query(Name::from_ascii(&name)?, rtype));
            out.push(message.to_vec()?);
        }
    }
    Ok(out)
}

/// `SERVICES` services, each with `INSTANCES` ready instances of `http` on as many nodes.
fn table() -> anyhow::Result<ServiceTable> {
    let mut specs = Vec::new();
    let mut published: Vec<(NodeId, Vec<String>)> = (0..INSTANCES)
        .map(|n| Ok((NodeId::new(format!("node{n}"))?, Vec::new())))
        .collect::<anyhow::Result<_>>()?;
    for s in 0..SERVICES {
        let spec = WorkloadSpec::from_toml(&format!(
            "name = \"svc{s}\"\ncommand = \"sleep\"\nreplicas = {INSTANCES}\n\
             [[ports]]\nname = \"http\"\nport = 8080\n"
        ))
        .map_err(|e| anyhow::anyhow!("bench spec svc{s}: {e}"))?;
        for (n, (_, entries)) in published.iter_mut().enumerate() {
            let endpoint = Endpoint {
                replica: ReplicaId {
                    workload: spec.name.clone(),
                    index: n as u32,
                },
                port: "http".into(),
                address: SocketAddr::from(([10, 0, 0, 1 + n as u8], 30_000 + s as u16)),
                state: EndpointState::Ready,
            };
            entries.push(endpoint.entry());
        }
        specs.push(spec);
    }
    let me = published[0].0.clone();
    Ok(ServiceTable::build(
        &specs,
        &me,
        published
            .iter()
            .map(|(node, entries)| (node, Liveness::Alive, &entries[..])),
    ))
}
