//! `starling bench proxy`: requests per second and latency of small HTTP/1.1 requests sent
//! straight to a backend, through the agent's proxy (`starling_node::proxy`, in process), and
//! through HAProxy in TCP mode, with keep-alive and with a new connection per request.
//!
//! Everything shares one machine, so each case gets the same CPUs: the client side (the load
//! generator and three backends, one tokio thread) on one CPU, the proxy under test (Starling
//! with `--proxy-threads` tokio workers, or HAProxy with as many threads) pinned to another.
//! Direct requests use the client side's CPU only; a proxy's cost shows as the requests and
//! latency it adds on a CPU of its own, and as its own CPU time per request (read from
//! `/proc/PID/task/*/schedstat`), which background load disturbs least.
//!
//! With one proxy thread Starling runs on a current-thread runtime: the shape of HAProxy's one
//! event loop. Cases run in interleaved rounds and the table shows medians, so both proxies
//! meet the same background load; on a machine busy with other work, run it under `chrt -f 1`
//! so that work does not preempt the measured threads.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use starling_node::proxy::{self, ProxyConfig, ProxyCounters};
use starling_protocol::placement::ReplicaId;
use starling_protocol::service::{EndpointState, Instance, Service, ServicePort, ServiceTable};
use starling_protocol::spec::PortProtocol;
use starling_protocol::{NodeId, WorkloadName};
use tokio::net::TcpStream;

// A file of its own, declared by path: `bench_proxy` is itself declared by path in `bench`.
#[path = "bench_proxy/traffic.rs"]
mod traffic;

use traffic::{CpuProbe, Mode, Outcome, backend};

/// What `starling bench proxy` was asked.
#[derive(Debug, Clone)]
pub struct ProxyBench {
    /// Connections the load generator keeps busy at once.
    pub connections: usize,
    /// Seconds measured per case (after a warm-up of half a second).
    pub seconds: u64,
    /// Threads the proxy under test may use (tokio workers for Starling, `nbthread` for
    /// HAProxy).
    pub proxy_threads: usize,
    /// The HAProxy binary.
    pub haproxy: String,
    /// Pin the client side and the proxy to CPUs of their own (when there are two).
    pub pin: bool,
    /// Times every case runs, interleaved (so each sees the same background load); the table
    /// shows medians.
    pub rounds: usize,
}

/// The service address the Starling proxy listens at (what `bench` would get in the fleet).
const SERVICE_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 64, 0, 80);

/// Runs every case `rounds` times and prints a markdown table of the medians.
pub fn proxy(bench: ProxyBench) -> anyhow::Result<ExitCode> {
    if bench.connections == 0 || bench.seconds == 0 || bench.proxy_threads == 0 || bench.rounds == 0
    {
        bail!("--connections, --seconds, --proxy-threads and --rounds must be at least 1");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (client_cpu, proxy_cpu) = if bench.pin && cpus >= 2 {
        (Some(0), Some(1))
    } else {
        (None, None)
    };
    let where_ = |cpu: Option<usize>| cpu.map_or("any CPU".to_string(), |c| format!("CPU {c}"));
    let setup = format!(
        "{} connections, {} s per case, median of {} interleaved rounds; client side (load generator and 3 backends, one thread) on {}; proxy ({} thread(s)) on {}.",
        bench.connections,
        bench.seconds,
        bench.rounds,
        where_(client_cpu),
        bench.proxy_threads,
        where_(proxy_cpu),
    );
    let client = std::thread::Builder::new()
        .name("bench-client".into())
        .spawn(move || -> anyhow::Result<Vec<Row>> {
            pin(client_cpu)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let backends = [backend().await?, backend().await?, backend().await?];
                let mut rounds = Vec::new();
                for round in 1..=bench.rounds {
                    eprintln!("round {round} of {}", bench.rounds);
                    rounds.push(cases(&bench, &backends, proxy_cpu).await?);
                }
                Ok(medians(rounds))
            })
        })?;
    let rows = client
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))??;
    println!("\n{setup}\n");
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

/// One measured case (or one that could not run, with why).
struct Row {
    target: &'static str,
    mode: Mode,
    outcome: Result<Outcome, String>,
}

/// Each case's median over the rounds (each figure's own median); a case that failed in any
/// round shows that round's reason.
fn medians(rounds: Vec<Vec<Row>>) -> Vec<Row> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|i| {
            let runs: Vec<&Row> = rounds.iter().filter_map(|r| r.get(i)).collect();
            let outcomes: Result<Vec<&Outcome>, String> = runs
                .iter()
                .map(|r| r.outcome.as_ref().map_err(Clone::clone))
                .collect();
            Row {
                target: first[i].target,
                mode: first[i].mode,
                outcome: outcomes.map(|o| Outcome {
                    requests_per_s: median(o.iter().map(|x| x.requests_per_s)),
                    p50_us: median(o.iter().map(|x| f64::from(x.p50_us))) as u32,
                    p99_us: median(o.iter().map(|x| f64::from(x.p99_us))) as u32,
                    errors: o.iter().map(|x| x.errors).sum(),
                    proxy_cpu_us_per_request: o
                        .iter()
                        .map(|x| x.proxy_cpu_us_per_request)
                        .collect::<Option<Vec<f64>>>()
                        .map(|v| median(v.into_iter())),
                }),
            }
        })
        .collect()
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Direct, Starling, HAProxy; each in both modes.
async fn cases(
    bench: &ProxyBench,
    backends: &[SocketAddr],
    proxy_cpu: Option<usize>,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut run_both =
        async |target: &'static str, address: Result<SocketAddr, String>, cpu: Option<CpuProbe>| {
            for mode in [Mode::KeepAlive, Mode::NewConnection] {
                eprintln!("measuring {target}, {} ...", mode.label());
                let outcome = match &address {
                    Ok(address) => Ok(traffic::load(*address, mode, bench, cpu.as_ref()).await),
                    Err(why) => Err(why.clone()),
                };
                rows.push(Row {
                    target,
                    mode,
                    outcome,
                });
            }
        };
    run_both("direct (one backend)", Ok(backends[0]), None).await;

    let starling = StarlingProxy::start(backends, bench.proxy_threads, proxy_cpu)?;
    wait_listening(starling.address).await?;
    let threads = CpuProbe {
        pid: std::process::id(),
        name_prefix: Some(PROXY_THREADS),
    };
    run_both("Starling proxy", Ok(starling.address), Some(threads)).await;
    starling.stop();

    match Haproxy::start(bench, backends, proxy_cpu) {
        Ok(haproxy) => {
            let ready = wait_listening(haproxy.address)
                .await
                .map(|()| haproxy.address)
                .map_err(|e| e.to_string());
            let process = CpuProbe {
                pid: haproxy.child.id(),
                name_prefix: None,
            };
            run_both("HAProxy (mode tcp, leastconn)", ready, Some(process)).await;
            haproxy.stop();
        }
        Err(why) => run_both("HAProxy (mode tcp, leastconn)", Err(why), None).await,
    }
    Ok(rows)
}

/// The name the Starling proxy's threads start with, so their CPU time can be read.
const PROXY_THREADS: &str = "proxy-";

/// Waits until `address` accepts connections (a proxy just started).
async fn wait_listening(address: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..500 {
        if TcpStream::connect(address).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("{address} never accepted a connection")
}

/// Pins the calling thread (and the threads and processes it starts later) to `cpu`.
fn pin(cpu: Option<usize>) -> anyhow::Result<()> {
    let Some(cpu) = cpu else {
        return Ok(());
    };
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).context("CPU number")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("cannot pin a thread to CPU {cpu}"))
}

/// The agent's proxy in a runtime of its own, pinned to the proxy's CPU.
struct StarlingProxy {
    address: SocketAddr,
    table: tokio::sync::watch::Sender<Arc<ServiceTable>>,
    thread: std::thread::JoinHandle<()>,
}

impl StarlingProxy {
    fn start(
        backends: &[SocketAddr],
        threads: usize,
        cpu: Option<usize>,
    ) -> anyhow::Result<StarlingProxy> {
        let port = free_port(SERVICE_ADDRESS)?;
        let table = Arc::new(bench_table(backends, port)?);
        let (sender, receiver) = tokio::sync::watch::channel(table);
        let thread = std::thread::Builder::new()
            .name(format!("{PROXY_THREADS}main"))
            .spawn(move || {
                if let Err(e) = pin(cpu) {
                    eprintln!("{e:#}");
                }
                // One thread: a current-thread runtime, the shape of HAProxy's one event loop
                // (a one-worker multi-thread runtime adds a second thread and cross-thread
                // wake-ups for nothing).
                let mut builder = if threads == 1 {
                    tokio::runtime::Builder::new_current_thread()
                } else {
                    let mut b = tokio::runtime::Builder::new_multi_thread();
                    b.worker_threads(threads);
                    b
                };
                let runtime = builder
                    .thread_name(format!("{PROXY_THREADS}worker"))
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(proxy::run(
                        ProxyConfig::default(),
                        receiver,
                        Arc::new(ProxyCounters::new()),
                    )),
                    Err(e) => eprintln!("cannot start the proxy's runtime: {e}"),
                }
            })?;
        Ok(StarlingProxy {
            address: SocketAddr::new(SERVICE_ADDRESS.into(), port),
            table: sender,
            thread,
        })
    }

    /// Dropping the table's sender ends `proxy::run`; the runtime then drops its connections.
    fn stop(self) {
        drop(self.table);
        let _ = self.thread.join();
    }
}

/// One service, `bench`, port `http`, with the three backends as ready remote instances.
fn bench_table(backends: &[SocketAddr], port: u16) -> anyhow::Result<ServiceTable> {
    let name = WorkloadName::new("bench")?;
    let node = NodeId::new("bench-node")?;
    let instances = backends
        .iter()
        .zip(0..)
        .map(|(address, index)| Instance {
            node: node.clone(),
            replica: ReplicaId {
                workload: name.clone(),
                index,
            },
            port: "http".to_string(),
            address: *address,
            state: EndpointState::Ready,
            local: false,
        })
        .collect();
    let service = Service {
        name: name.clone(),
        address: SERVICE_ADDRESS,
        ports: vec![ServicePort {
            name: "http".to_string(),
            port,
            protocol: PortProtocol::Tcp,
        }],
        instances,
    };
    Ok(ServiceTable {
        services: [(name, service)].into_iter().collect(),
    })
}

fn free_port(ip: Ipv4Addr) -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind((ip, 0))
        .with_context(|| format!("cannot bind {ip} (is 127.0.0.0/8 routed to lo?)"))?;
    Ok(listener.local_addr()?.port())
}

/// HAProxy in TCP mode, least connections over the three backends, as a child process.
struct Haproxy {
    address: SocketAddr,
    child: Child,
    config: std::path::PathBuf,
}

impl Haproxy {
    /// Starts it from a thread pinned to the proxy's CPU (the child inherits the pinning).
    /// `Err` says why it could not run, for the table.
    fn start(
        bench: &ProxyBench,
        backends: &[SocketAddr],
        cpu: Option<usize>,
    ) -> Result<Haproxy, String> {
        let port = free_port(Ipv4Addr::LOCALHOST).map_err(|e| e.to_string())?;
        let address = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        let mut text = format!(
            "global\n  nbthread {}\n  maxconn 4096\n\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n\nlisten bench\n  bind {address}\n  balance leastconn\n",
            bench.proxy_threads
        );
        for (i, backend) in backends.iter().enumerate() {
            text.push_str(&format!("  server b{i} {backend}\n"));
        }
        let config =
            std::env::temp_dir().join(format!("starling-bench-{}.cfg", std::process::id()));
        std::fs::write(&config, text)
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let (binary, path) = (bench.haproxy.clone(), config.clone());
        let spawned = std::thread::spawn(move || {
            pin(cpu).map_err(|e| format!("{e:#}"))?;
            Command::new(&binary)
                .arg("-q")
                .arg("-db")
                .arg("-f")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => "haproxy not installed".to_string(),
                    _ => format!("cannot start {binary}: {e}"),
                })
        })
        .join()
        .map_err(|_| "the thread starting haproxy panicked".to_string())?;
        match spawned {
            Ok(child) => Ok(Haproxy {
                address,
                child,
                config,
            }),
            Err(why) => {
                let _ = std::fs::remove_file(&config);
                Err(why)
            }
        }
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

fn print_table(rows: &[Row]) {
    let direct = |mode: Mode| {
        rows.iter()
            .find(|r| r.target.starts_with("direct") && r.mode == mode)
            .and_then(|r| r.outcome.as_ref().ok())
            .map(|o| o.requests_per_s)
    };
    println!("| path | mode | req/s | p50 ms | p99 ms | errors | vs direct | proxy CPU µs/req |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        match &row.outcome {
            Ok(o) => println!(
                "| {} | {} | {:.0} | {:.3} | {:.3} | {} | {} | {} |",
                row.target,
                row.mode.label(),
                o.requests_per_s,
                f64::from(o.p50_us) / 1000.0,
                f64::from(o.p99_us) / 1000.0,
                o.errors,
                direct(row.mode)
                    .map_or("-".to_string(), |d| format!("{:.2}x", o.requests_per_s / d)),
                o.proxy_cpu_us_per_request
                    .map_or("-".to_string(), |us| format!("{us:.1}")),
            ),
            Err(why) => println!(
                "| {} | {} | {why} | | | | | |",
                row.target,
                row.mode.label()
            ),
        }
    }
}
