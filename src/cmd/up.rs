//! `starling up`: a real local fleet on loopback. Every agent is its own process with its own
//! data dir and ports; the first one creates the cluster, the others join it with one-time
//! tokens; the specs go in over QUIC with an operator certificate; a live view follows until
//! Ctrl-C stops everything. A fleet in a temporary dir (no `--dir`) is removed once it stopped
//! cleanly; one in `--dir`, or one that failed, is kept and its place printed.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use starling_node::api::Client;
use starling_node::cluster::{ClientDir, Membership, quic_addr};
use starling_protocol::placement::Liveness;
use starling_protocol::spec::{RuntimeKind, SpecErrors, WorkloadSpec};
use starling_protocol::wire::{ApiRequest, ApiResponse, ObjectKind};

use crate::output;

/// `starling up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// Agents to start.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Spec files or a directory of them [default: the built-in examples].
    #[arg(long)]
    specs: Option<PathBuf>,
    /// Where the fleet's data dirs go, kept after the fleet stops [default: a new temporary
    /// dir, removed after a clean stop].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the status this many times and exit (0: until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    rounds: u32,
}

/// One agent process of the fleet.
pub struct Agent {
    pub name: String,
    pub data_dir: PathBuf,
    pub base: SocketAddr,
    pub child: Option<Child>,
}

/// A local fleet; stops its agents when dropped.
pub struct LocalFleet {
    pub client_dir: PathBuf,
    pub agents: Vec<Agent>,
    exe: PathBuf,
    extra: Vec<String>,
}

/// Three consecutive free UDP ports on loopback (gossip, QUIC, probes), from `from` upwards.
fn free_base(from: &mut u16) -> anyhow::Result<SocketAddr> {
    while *from < 60_000 {
        let port = *from;
        *from += 3;
        // UDP for gossip, QUIC and probes; TCP on the first for metrics.
        let free = (0..3).all(|i| UdpSocket::bind(("127.0.0.1", port + i)).is_ok())
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free {
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    bail!("no free UDP ports on 127.0.0.1")
}

impl LocalFleet {
    /// Creates the cluster in `dir` and starts `nodes` agents. `extra` flags go to every agent.
    pub fn start(dir: &Path, nodes: usize, extra: Vec<String>) -> anyhow::Result<Self> {
        if nodes == 0 {
            bail!("--nodes must be at least 1");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let exe = std::env::current_exe().context("cannot find the starling binary")?;
        let client_dir = dir.join("client");
        // Spread by pid so that two `up`s started together (consecutive pids) look for ports
        // far apart: a free port is only checked, not held, until its agent binds it.
        let spread = (u64::from(std::process::id()).wrapping_mul(7_919) % 2_000) as u16;
        let mut port = 17_946 + spread * 3;
        let mut fleet = LocalFleet {
            client_dir,
            agents: Vec::new(),
            exe,
            extra,
        };
        for i in 1..=nodes {
            let name = format!("node-{i}");
            let data_dir = dir.join(&name);
            let base = free_base(&mut port)?;
            fleet.agents.push(Agent {
                name,
                data_dir,
                base,
                child: None,
            });
        }
        let first = &fleet.agents[0];
        super::cluster::init_quiet(
            &first.data_dir,
            &fleet.client_dir,
            "local",
            &first.name,
            first.base,
        )?;
        for i in 0..nodes {
            fleet.spawn(i)?;
            if i == 0 {
                fleet.wait_for_socket(0)?;
            }
        }
        Ok(fleet)
    }

    /// Starts agent `i` (joining through the first one when it is new).
    pub fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let agent = &self.agents[i];
        std::fs::create_dir_all(&agent.data_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(agent.data_dir.join("agent.log"))
            .with_context(|| format!("cannot open {}/agent.log", agent.data_dir.display()))?;
        let mut command = Command::new(&self.exe);
        command
            .arg("agent")
            .arg("--data-dir")
            .arg(&agent.data_dir)
            .arg("--node-id")
            .arg(&agent.name)
            .arg("--listen")
            .arg(agent.base.to_string())
            .arg("--label")
            .arg(format!("zone={}", ["a", "b", "c"][i % 3]))
            .args(["--on-stop", "stop"])
            .arg("--stop-grace-ms")
            .arg("2000")
            .args(&self.extra);
        // All agents share this host's loopback: the first answers DNS and runs the proxy at
        // each service's address (as every agent does on its own device); the others would
        // only find those addresses taken.
        if i > 0 {
            command.args(["--dns", "off", "--no-proxy", "--no-container-dns"]);
        }
        if !Membership::exists(&agent.data_dir) {
            let token = Membership::load(&self.agents[0].data_dir)?
                .token(vec![self.agents[0].base.to_string()])?;
            command.arg("--join").arg(token.encode());
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start an agent")?;
        self.agents[i].child = Some(child);
        Ok(())
    }

    fn wait_for_socket(&mut self, i: usize) -> anyhow::Result<()> {
        let socket = starling_node::api::socket_path(&self.agents[i].data_dir);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            if let Some(child) = self.agents[i].child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "{} exited at start ({status}); see {}/agent.log",
                    self.agents[i].name,
                    self.agents[i].data_dir.display()
                );
            }
            if Instant::now() > deadline {
                bail!("{} did not start within 20 s", self.agents[i].name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Sends `signal` to agent `i` and waits for it to exit (`starling bench` kills agents).
    #[cfg(feature = "bench")]
    pub fn signal(&mut self, i: usize, signal: nix::sys::signal::Signal) {
        if let Some(mut child) = self.agents[i].child.take() {
            let pid = child.id() as i32;
            if pid > 1 {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
            }
            let _ = child.wait();
        }
    }

    /// Stops every agent gracefully (they stop their replicas).
    pub fn stop(&mut self) {
        for i in 0..self.agents.len() {
            if let Some(child) = self.agents[i].child.as_ref() {
                let pid = child.id() as i32;
                if pid > 1 {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
            }
        }
        for agent in &mut self.agents {
            if let Some(mut child) = agent.child.take() {
                let _ = child.wait();
            }
        }
    }

    /// An API client over QUIC to agent `i`, with the fleet's operator certificate.
    pub async fn client(&self, i: usize) -> anyhow::Result<Client> {
        let tls = ClientDir {
            dir: self.client_dir.clone(),
        }
        .tls()?;
        Ok(Client::connect_quic(quic_addr(self.agents[i].base), &tls).await?)
    }
}

impl Drop for LocalFleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A spec file `up` applies, parsed and validated: its name, and the spec or its problems.
type SpecFile = (String, Result<WorkloadSpec, SpecErrors>);

/// Specs `up` applies: the files given, or the built-in examples that run on one machine.
fn specs(path: Option<&Path>) -> anyhow::Result<Vec<SpecFile>> {
    let Some(path) = path else {
        let mut out = Vec::new();
        for (name, text) in super::plan::EXAMPLES {
            let Ok(spec) = super::parse_spec(Path::new(name), text) else {
                continue;
            };
            // All agents share this machine: a fixed host port could be bound only once, and
            // containers need an engine; those examples are left to real fleets. Ports without
            // a fixed host port are picked per instance, so those examples run here.
            if spec.runtime != RuntimeKind::Process || !spec.host_ports().is_empty() {
                println!("(skipping {name}: it needs a container engine or a fixed host port)");
                continue;
            }
            if let Some(program) = spec.command.as_deref().filter(|p| !on_path(p)) {
                println!("(skipping {name}: {program} is not installed here)");
                continue;
            }
            out.push((name.to_string(), Ok(spec)));
        }
        return Ok(out);
    };
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml" || e == "json"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    files
        .into_iter()
        .map(|f| Ok((f.display().to_string(), super::load_spec(&f)?)))
        .collect()
}

pub fn main(args: UpArgs) -> anyhow::Result<ExitCode> {
    let temporary = args.dir.is_none();
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("starling-up-{}", std::process::id()))
    });
    let specs = specs(args.specs.as_deref())?;
    println!(
        "starting {} agents in {} (logs: <node>/agent.log)",
        args.nodes,
        dir.display()
    );
    let result = run(&args, &dir, specs);
    // The fleet is stopped by now (run's LocalFleet is dropped): nothing writes under `dir`.
    match (&result, temporary) {
        (Ok(()), true) => match std::fs::remove_dir_all(&dir) {
            Ok(()) => println!(
                "stopped; removed {} (--dir DIR keeps a fleet)",
                dir.display()
            ),
            Err(e) => println!(
                "stopped; could not remove {}: {e} (remove it with: rm -rf {})",
                dir.display(),
                dir.display()
            ),
        },
        (Err(_), true) => println!(
            "stopped; the fleet's data and logs are kept in {} (remove with: rm -rf {})",
            dir.display(),
            dir.display()
        ),
        (_, false) => println!(
            "stopped; data kept in {} (--dir); remove it with: rm -rf {}",
            dir.display(),
            dir.display()
        ),
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Starts the fleet in `dir`, applies `specs` and draws the view until Ctrl-C or the last
/// round; stops every agent before it returns.
fn run(args: &UpArgs, dir: &Path, specs: Vec<SpecFile>) -> anyhow::Result<()> {
    let mut fleet = LocalFleet::start(dir, args.nodes, Vec::new())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        // Apply through the middle of the fleet, over QUIC: any peer takes writes.
        let entry = (args.nodes / 2).min(args.nodes - 1);
        let mut answering = entry;
        let mut client = connect_retrying(&fleet, entry).await?;
        // Services as node-1 sees them: its proxy is the one listening on this host.
        let mut services = connect_retrying(&fleet, 0).await?;
        for (name, spec) in specs {
            let spec = match spec {
                Ok(spec) => Box::new(spec),
                Err(errors) => {
                    let n = errors.errors().len();
                    println!("{name}: the spec has {n} problem(s); nothing was sent");
                    continue;
                }
            };
            let answer = client
                .call(&ApiRequest::Apply {
                    spec,
                    ack_replicas: 0,
                })
                .await?;
            match answer {
                ApiResponse::Written { name, revision, .. } => {
                    println!(
                        "applied {name} (revision {revision}) at {}",
                        fleet.agents[entry].name
                    )
                }
                ApiResponse::Error(e) => println!("{name}: {}", e.message),
                _ => {}
            }
        }
        let mut round = 0;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            round += 1;
            let nodes = client
                .call(&ApiRequest::Get {
                    kind: ObjectKind::Nodes,
                })
                .await;
            let replicas = client.call(&ApiRequest::Status).await;
            let (Ok(mut nodes), Ok(replicas)) = (nodes, replicas) else {
                answering = (entry + round as usize) % args.nodes;
                client = connect_retrying(&fleet, answering).await?;
                continue;
            };
            one_host(&mut nodes, &fleet.agents[answering].name);
            if args.rounds == 0 {
                // Clear the screen and draw the view again.
                print!("\x1b[2J\x1b[H");
            }
            println!(
                "Starling local fleet: {} agents, data in {} (Ctrl-C stops everything)\n",
                args.nodes,
                dir.display()
            );
            print!("{}", output::text(&nodes));
            println!(
                "(IN USE: this machine's CPU and memory in use by all its processes; the {} \
                 agents share it)",
                args.nodes
            );
            println!();
            print!("{}", output::text(&replicas));
            if let Ok(leases) = client
                .call(&ApiRequest::Get {
                    kind: ObjectKind::Leases,
                })
                .await
            {
                println!();
                print!("{}", output::text(&leases));
            }
            if let Ok(services) = services
                .call(&ApiRequest::Get {
                    kind: ObjectKind::Services,
                })
                .await
            {
                println!(
                    "\nServices, through node-1's proxy (e.g. curl http://ADDRESS:PORT/; DNS: \
                     dig @127.0.0.153 NAME.svc.starling):"
                );
                print!("{}", output::text(&services));
            }
            if args.rounds > 0 && round >= args.rounds {
                break;
            }
        }
        anyhow::Ok(())
    });
    println!("stopping the fleet...");
    fleet.stop();
    result
}

/// IN USE is what a node measures on its host: every process there, not only its replicas.
/// `up`'s agents all share this host, so every row would show the same machine, the
/// answering agent's own row exactly and the others as gossiped (rounded to 250 millicores
/// and 64 MiB, so an idle machine reads `0`). Each live row gets the answering agent's exact
/// figure instead; a row of a node that is not alive gets none (its last report is old).
fn one_host(nodes: &mut ApiResponse, answering: &str) {
    let ApiResponse::Nodes(rows) = nodes else {
        return;
    };
    let here = rows
        .iter()
        .find(|r| r.view.id.as_str() == answering)
        .and_then(|r| r.usage);
    for row in rows {
        row.usage = here.filter(|_| row.view.liveness == Liveness::Alive);
    }
}

async fn connect_retrying(fleet: &LocalFleet, i: usize) -> anyhow::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match fleet.client(i).await {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("cannot reach {}", fleet.agents[i].name)));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Whether `program` can be run: a path that exists, or a name found in `PATH`.
fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
