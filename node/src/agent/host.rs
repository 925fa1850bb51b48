//! What the agent needs from its host: a lock on the data dir, the machine's capacity, and
//! the API socket's door.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use nix::fcntl::{Flock, FlockArg};
use starling_protocol::placement::Capacity;
use starling_protocol::quantity::{Bytes, Millicores};
use starling_protocol::wire::ApiRequest;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

use super::dispatch::{ApiDoor, Caller};
use super::{AgentConfig, AgentError};
use crate::api::{read_frame, socket_path, write_frame};
use crate::clock::now_ms;
use crate::store::{Identity, Store};

/// Holds an exclusive lock on `<data dir>/agent.lock` for as long as it lives, so two agents
/// never share a data dir.
pub(super) fn lock_data_dir(dir: &Path) -> Result<Flock<File>, std::io::Error> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(crate::store::FILE_MODE)
        .open(dir.join("agent.lock"))?;
    let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, errno)| std::io::Error::from(errno))?;
    lock.set_len(0)?;
    writeln!(lock, "{}", std::process::id())?;
    Ok(lock)
}

/// The data dir's identity, or a new one (the asked id, else the host name with a random
/// suffix) stored in it.
pub(super) fn load_identity(store: &Store, config: &AgentConfig) -> Result<Identity, AgentError> {
    if let Some(identity) = store.identity()? {
        if let Some(asked) = &config.node_id
            && *asked != identity.node
        {
            return Err(AgentError::Identity(format!(
                "{} belongs to node {}; a node id never changes (asked for {asked})",
                store.dir().display(),
                identity.node
            )));
        }
        return Ok(identity);
    }
    let node = match &config.node_id {
        Some(id) => id.clone(),
        None => crate::identity::host_node_id(),
    };
    let identity = Identity {
        node,
        created_ms: now_ms(),
    };
    store.write_identity(&identity)?;
    Ok(identity)
}

/// All CPUs and memory of the host (CPUs from the scheduler's view, memory from /proc).
pub(super) fn capacity() -> Capacity {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(1 << 20);
    Capacity {
        cpu: Millicores(cpus * 1000),
        memory: Bytes(mem_kib * 1024),
    }
}

/// Raises the soft limit on open descriptors to the hard limit and returns the limit in
/// force. The default soft limit (often 1,024) is what a flood of local HTTP clients or many
/// replicas' logs exhausts; the hard limit is what the administrator allows, so take it all
/// and say so. On failure the current soft limit stays and is returned.
pub(super) fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        tracing::warn!("cannot read the open-file limit; assuming 1024");
        return 1024;
    };
    // An unlimited hard limit is still bounded by the kernel's nr_open (2^20 by default).
    let target = hard.min(1 << 20);
    if soft >= target {
        tracing::info!(limit = soft, "open-file limit");
        return rlim_u64(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => {
            tracing::info!(
                from = soft,
                to = target,
                "raised the open-file limit to the hard limit"
            );
            rlim_u64(target)
        }
        Err(e) => {
            tracing::warn!(limit = soft, hard, "cannot raise the open-file limit: {e}");
            rlim_u64(soft)
        }
    }
}

/// `rlim_t` is `u64` on 64-bit Linux but `c_ulong` (`u32`) on 32-bit ARM glibc, so the limits
/// widen here instead of the function's type following the target.
#[allow(clippy::useless_conversion)]
fn rlim_u64(limit: nix::sys::resource::rlim_t) -> u64 {
    limit.into()
}

/// Most API connections served at once.
const CONNECTIONS_MAX: usize = 64;

/// Listens on the data dir's socket and serves each request through `door`, pausing
/// `accept_backoff` after a failed accept (see [`super::LocalSettings::accept_backoff`]).
pub(super) async fn serve_api(
    dir: &Path,
    door: ApiDoor,
    accept_backoff: std::time::Duration,
    bad_requests: Arc<super::quic_api::BadRequests>,
) -> Result<JoinHandle<()>, AgentError> {
    let path = socket_path(dir);
    // A socket file left by a crashed agent would make bind fail; the lock proves it is stale.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|source| AgentError::Listen {
        path: path.clone(),
        source,
    })?;
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    Ok(tokio::spawn(async move {
        loop {
            let mut stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!("API socket accept failed: {e}");
                    tokio::time::sleep(accept_backoff).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (door, bad_requests) = (door.clone(), bad_requests.clone());
            let caller = Caller::Socket {
                uid: stream.peer_cred().ok().map(|cred| cred.uid()),
            };
            tokio::spawn(async move {
                let _permit = permit;
                loop {
                    let request = match read_frame::<ApiRequest, _>(&mut stream).await {
                        Ok(Some(request)) => request,
                        Ok(None) => return,
                        Err(e) => {
                            // A malformed request gets a clear answer (as over QUIC), changes
                            // nothing, and ends the connection: its framing is lost.
                            bad_requests.count(&e);
                            let answer = super::handlers::error(format!("bad request: {e}"));
                            let _ = write_frame(&mut stream, &answer).await;
                            return;
                        }
                    };
                    if !door.serve(request, &caller, &mut stream).await.open {
                        return;
                    }
                }
            });
        }
    }))
}

/// Measures the host's CPU and memory in use, for the node's published usage (what runs
/// here, Starling's replicas and everything else).
#[derive(Debug, Default)]
pub(super) struct UsageSampler {
    last: Option<(u64, u64)>,
}

impl UsageSampler {
    /// CPU in use (millicores, over the time since the previous sample) and memory in use
    /// (bytes: total minus available). `None` until two samples exist or when /proc is odd.
    pub(super) fn sample(&mut self) -> Option<(u32, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
        let total: u64 = fields.iter().take(8).sum();
        let previous = self.last.replace((total - idle, total));
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let field = |name: &str| {
            meminfo
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let used = field("MemTotal:")?.saturating_sub(field("MemAvailable:")?) * 1024;
        let (busy0, total0) = previous?;
        let (busy, total) = (total - idle, total);
        let spent = total.checked_sub(total0).filter(|d| *d > 0)?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let millicores = busy.saturating_sub(busy0) * cpus * 1_000 / spent;
        Some((u32::try_from(millicores).unwrap_or(u32::MAX), used))
    }
}
