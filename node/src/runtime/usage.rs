//! CPU used per replica, for autoscaling: each replica's own CPU time, not the host's, so a
//! busy neighbour does not scale a quiet workload.
//!
//! A [`Meter`] says where a replica's CPU-time counter is read: the instance's cgroup when
//! the process runtime made one (`cpu.stat` `usage_usec` on v2, `cpuacct.usage` on v1), else
//! the `/proc/<pid>/stat` times of every member of its process group (children included once
//! reaped), else its container's one-shot stats through the engine. [`CpuMeter`] keeps the
//! previous counter per replica and turns two reads into millicores; the first read of a
//! replica, or of a new instance of it, yields nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::Docker;
use futures_util::StreamExt as _;
use starling_protocol::placement::ReplicaId;
use starling_protocol::quantity::Millicores;

use super::Runtimes;

/// Where one replica's CPU-time counter is read.
#[derive(Debug, Clone)]
pub enum Meter {
    /// The instance's cgroup directories (a v1 instance may have a cpu and a memory one).
    Cgroup(Vec<PathBuf>),
    /// The process group led by this pid.
    ProcessGroup(u32),
    /// A container, asked through its engine.
    Container {
        /// The engine's client.
        docker: Docker,
        /// The container's id or name.
        container: String,
    },
}

impl Meter {
    /// What the counter belongs to: a new one (a restarted instance) starts a new count.
    fn source(&self) -> String {
        match self {
            Meter::Cgroup(dirs) => format!("cgroup {dirs:?}"),
            Meter::ProcessGroup(pid) => format!("pgrp {pid}"),
            Meter::Container { container, .. } => format!("container {container}"),
        }
    }
}

/// Where each of `replicas` is metered, for those running here now: a container runtime's
/// replicas through their engine, process replicas through their cgroup or process group.
pub fn meters(runtimes: &Runtimes, replicas: &[ReplicaId]) -> Vec<(ReplicaId, Meter)> {
    let mut out = Vec::new();
    for replica in replicas {
        let meter = match runtimes.container_of(replica) {
            Some(engine) => engine
                .stats_target(replica)
                .map(|(docker, container)| Meter::Container { docker, container }),
            None => {
                let dirs = runtimes.process.cgroup_dirs(replica);
                if dirs.iter().any(|d| cgroup_cpu_ns(d).is_some()) {
                    Some(Meter::Cgroup(dirs))
                } else {
                    runtimes
                        .process
                        .newest_pid(replica)
                        .map(Meter::ProcessGroup)
                }
            }
        };
        if let Some(meter) = meter {
            out.push((replica.clone(), meter));
        }
    }
    out
}

/// How long one container's stats may take; past it the replica has no value this round.
pub const CONTAINER_STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// The kernel reports process times in USER_HZ ticks, 100 per second on every architecture
/// Linux runs userspace on today (the ABI fixed it; `getconf CLK_TCK`).
const USER_HZ: u64 = 100;

/// Previous counters per replica, turning reads into CPU used between them.
#[derive(Debug, Default)]
pub struct CpuMeter {
    last: BTreeMap<ReplicaId, Reading>,
}

#[derive(Debug, Clone)]
struct Reading {
    source: String,
    cpu_ns: u64,
    at: Instant,
}

impl CpuMeter {
    /// Reads each replica's counter and returns the CPU it used since the previous call
    /// that read the same source. Replicas not passed are forgotten (stopped, or moved
    /// elsewhere); a counter that went backwards (a process group lost a member it never
    /// reaped) counts as a fresh start.
    pub async fn measure(
        &mut self,
        meters: Vec<(ReplicaId, Meter)>,
    ) -> BTreeMap<ReplicaId, Millicores> {
        let counters = read_counters(meters).await;
        let mut used = BTreeMap::new();
        let mut last = BTreeMap::new();
        for (replica, reading) in counters {
            if let Some(before) = self.last.get(&replica)
                && before.source == reading.source
                && let Some(spent_ns) = reading.cpu_ns.checked_sub(before.cpu_ns)
            {
                let elapsed_ns = reading.at.duration_since(before.at).as_nanos();
                if let Some(millicores) = (u128::from(spent_ns) * 1_000).checked_div(elapsed_ns) {
                    let millicores = u32::try_from(millicores).unwrap_or(u32::MAX);
                    used.insert(replica.clone(), Millicores(millicores));
                }
            }
            last.insert(replica, reading);
        }
        self.last = last;
        used
    }
}

/// One counter per metered replica; a replica whose counter cannot be read is left out.
async fn read_counters(meters: Vec<(ReplicaId, Meter)>) -> Vec<(ReplicaId, Reading)> {
    let mut local = Vec::new();
    let mut containers = Vec::new();
    for (replica, meter) in meters {
        match meter {
            Meter::Container { docker, container } => {
                containers.push((replica, docker, container));
            }
            other => local.push((replica, other)),
        }
    }
    // File reads under /proc and /sys are quick but blocking; a process-group scan reads
    // every process's stat once for all replicas.
    let mut out = tokio::task::spawn_blocking(move || read_local(local))
        .await
        .unwrap_or_default();
    let asks = containers
        .into_iter()
        .map(|(replica, docker, container)| async move {
            let cpu_ns = container_cpu_ns(&docker, &container).await?;
            Some((
                replica,
                Reading {
                    source: format!("container {container}"),
                    cpu_ns,
                    at: crate::clock::monotonic(),
                },
            ))
        });
    out.extend(
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten(),
    );
    out
}

fn read_local(meters: Vec<(ReplicaId, Meter)>) -> Vec<(ReplicaId, Reading)> {
    let groups: BTreeSet<u32> = meters
        .iter()
        .filter_map(|(_, m)| match m {
            Meter::ProcessGroup(pid) => Some(*pid),
            _ => None,
        })
        .collect();
    let at = crate::clock::monotonic();
    let group_ticks = if groups.is_empty() {
        BTreeMap::new()
    } else {
        process_group_ticks(Path::new("/proc"), &groups)
    };
    let mut out = Vec::new();
    for (replica, meter) in meters {
        let cpu_ns = match &meter {
            Meter::Cgroup(dirs) => dirs.iter().find_map(|d| cgroup_cpu_ns(d)),
            Meter::ProcessGroup(pid) => group_ticks
                .get(pid)
                .map(|ticks| ticks.saturating_mul(1_000_000_000 / USER_HZ)),
            Meter::Container { .. } => None,
        };
        if let Some(cpu_ns) = cpu_ns {
            let source = meter.source();
            out.push((replica, Reading { source, cpu_ns, at }));
        }
    }
    out
}

/// CPU time of a cgroup in ns: v2 `cpu.stat` `usage_usec`, else v1 `cpuacct.usage`.
fn cgroup_cpu_ns(dir: &Path) -> Option<u64> {
    if let Ok(stat) = std::fs::read_to_string(dir.join("cpu.stat")) {
        let usec = stat.lines().find_map(|l| {
            l.strip_prefix("usage_usec ")
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        if let Some(usec) = usec {
            return Some(usec.saturating_mul(1_000));
        }
    }
    std::fs::read_to_string(dir.join("cpuacct.usage"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// CPU ticks (user + system, with reaped children's) of every process in each of `groups`,
/// from one pass over `proc`.
fn process_group_ticks(proc: &Path, groups: &BTreeSet<u32>) -> BTreeMap<u32, u64> {
    let mut ticks = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(proc) else {
        return ticks;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // A process may end between the listing and the read: it is simply not counted.
        let Ok(stat) = std::fs::read_to_string(proc.join(pid.to_string()).join("stat")) else {
            continue;
        };
        if let Some((group, used)) = parse_stat(&stat)
            && groups.contains(&group)
        {
            *ticks.entry(group).or_insert(0u64) += used;
        }
    }
    ticks
}

/// The process group and the CPU ticks (utime + stime + cutime + cstime) of one
/// `/proc/<pid>/stat` line. The command name may hold spaces and parentheses, so fields are
/// counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
    // cmajflt utime stime cutime cstime ...
    let group = fields.get(2)?.parse().ok()?;
    let mut used = 0u64;
    for field in fields.get(11..15)? {
        // cutime and cstime are signed in the kernel's format; never negative in practice.
        used = used.saturating_add(field.parse::<i64>().ok()?.max(0) as u64);
    }
    Some((group, used))
}

/// A container's total CPU time in ns from one one-shot stats call.
async fn container_cpu_ns(docker: &Docker, container: &str) -> Option<u64> {
    let options = bollard::query_parameters::StatsOptionsBuilder::default()
        .stream(false)
        .one_shot(true)
        .build();
    let mut stream = docker.stats(container, Some(options));
    let first = tokio::time::timeout(CONTAINER_STATS_TIMEOUT, stream.next()).await;
    let stats = first.ok()??.ok()?;
    stats.cpu_stats?.cpu_usage?.total_usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read_past_odd_command_names() {
        let line = "4242 (my (odd) cmd) S 1 4240 4240 0 -1 4194560 100 0 0 0 \
                    250 50 7 3 20 0 1 0 12345 1000 10 18446744073709551615";
        assert_eq!(parse_stat(line), Some((4240, 310)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[test]
    fn cgroup_counters_are_read_from_v2_then_v1() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v2 = dir.path().join("v2");
        let v1 = dir.path().join("v1");
        std::fs::create_dir_all(&v2).expect("mkdir");
        std::fs::create_dir_all(&v1).expect("mkdir");
        std::fs::write(v2.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").expect("write");
        std::fs::write(v1.join("cpuacct.usage"), "2000000\n").expect("write");
        assert_eq!(cgroup_cpu_ns(&v2), Some(1_500_000));
        assert_eq!(cgroup_cpu_ns(&v1), Some(2_000_000));
        assert_eq!(cgroup_cpu_ns(dir.path()), None);
    }

    fn replica(name: &str) -> ReplicaId {
        ReplicaId {
            workload: starling_protocol::WorkloadName::new(name).expect("name"),
            index: 0,
        }
    }

    /// A child in its own process group, as the process runtime starts replicas.
    fn spawn_group(script: &str) -> std::process::Child {
        use std::os::unix::process::CommandExt as _;
        std::process::Command::new("sh")
            .args(["-c", script])
            .process_group(0)
            .spawn()
            .expect("sh")
    }

    #[tokio::test]
    async fn a_busy_loop_measures_well_above_an_idle_sleep() {
        // The busy group spins in a child of its leader: reaped or not, it is counted.
        let mut busy = spawn_group("while :; do :; done & wait");
        let mut idle = spawn_group("sleep 30");
        let meters = || {
            vec![
                (replica("busy"), Meter::ProcessGroup(busy.id())),
                (replica("idle"), Meter::ProcessGroup(idle.id())),
            ]
        };
        let mut meter = CpuMeter::default();
        assert!(
            meter.measure(meters()).await.is_empty(),
            "one read is no rate"
        );
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let used = meter.measure(meters()).await;
        for child in [&mut busy, &mut idle] {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
        }
        let busy_mc = used.get(&replica("busy")).expect("busy measured").0;
        let idle_mc = used.get(&replica("idle")).expect("idle measured").0;
        // One spinning thread is about 1,000 millicores alone; on a host busy with other
        // work (CI, parallel builds) it gets its share, still far above a sleeper's.
        assert!(busy_mc >= 100, "busy loop: {busy_mc} millicores");
        assert!(idle_mc <= 50, "sleep: {idle_mc} millicores");
    }

    /// Through the process runtime: a limited replica is metered by its cgroup where the
    /// host lets the agent make one, else by its process group; a spinning one reads busy.
    #[tokio::test]
    async fn a_process_replica_is_metered_by_its_cgroup_or_its_process_group() {
        use crate::runtime::Runtime as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, _rx) = crate::channel::bounded(64, std::sync::Arc::default());
        let process = crate::runtime::process::ProcessRuntime::new(
            dir.path().to_path_buf(),
            tx.clone(),
            crate::runtime::process::ProcessConfig::default(),
        );
        let limited = process.limits_enforced();
        let node = starling_protocol::NodeId::new("n1").expect("id");
        let settings = crate::runtime::docker::EngineSettings::default();
        let runtimes = Runtimes::new(process, &[], settings, node.clone(), tx).await;
        let spec = starling_protocol::spec::WorkloadSpec::from_toml(
            "name = \"spin\"\ncommand = \"sh\"\nargs = [\"-c\", \"while :; do :; done\"]\n\
             [resources]\ncpu_limit = \"500m\"\n",
        )
        .expect("spec");
        let spin = replica("spin");
        let request = crate::runtime::StartRequest {
            replica: spin.clone(),
            instance: 1,
            revision: 1,
            spec,
            node,
            env: Vec::new(),
            dns: Vec::new(),
            files: Vec::new(),
        };
        runtimes.start(request).await;
        let dirs = runtimes.process.cgroup_dirs(&spin);
        assert_eq!(!dirs.is_empty(), limited, "{dirs:?}");
        // A v1 cpu group counts no usage unless cpuacct is mounted with it: then the
        // process group it is.
        let counted = dirs.iter().any(|d| cgroup_cpu_ns(d).is_some());
        let found = meters(&runtimes, std::slice::from_ref(&spin));
        let kind = found.first().map(|(_, m)| m.source());
        let expected = if counted { "cgroup" } else { "pgrp" };
        assert!(
            kind.as_deref().is_some_and(|k| k.starts_with(expected)),
            "{kind:?}"
        );
        let mut meter = CpuMeter::default();
        meter.measure(found.clone()).await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let used = meter.measure(found).await;
        runtimes.stop(&spin, 1, Duration::from_secs(2)).await;
        let mc = used.get(&spin).expect("measured").0;
        // Held under its 500m limit by the cgroup, and busy even on a crowded host.
        assert!(mc >= 100, "{mc} millicores");
        if counted {
            assert!(mc <= 600, "{mc} millicores under a 500m limit");
        }
    }

    #[tokio::test]
    async fn a_busy_container_measures_well_above_an_idle_one() {
        // Skips with the reason printed when no engine answers (fails under
        // STARLING_REQUIRE_DOCKER); the image is the container tests' shared one.
        let Some(image) = starling_testkit::docker::test_image() else {
            return;
        };
        let docker = Docker::connect_with_unix_defaults().expect("the engine's socket");
        let docker = docker
            .negotiate_version()
            .await
            .expect("the engine answers the API");
        let run = |script: &str| {
            let out = std::process::Command::new("docker")
                .args(["run", "-d", "--rm", image, "sh", "-c", script])
                .output()
                .expect("docker CLI");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let (busy, idle) = (run("while :; do :; done"), run("sleep 60"));
        let meters = || {
            [("busy", &busy), ("idle", &idle)].map(|(name, container)| {
                let meter = Meter::Container {
                    docker: docker.clone(),
                    container: container.clone(),
                };
                (replica(name), meter)
            })
        };
        let mut meter = CpuMeter::default();
        meter.measure(meters().to_vec()).await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let used = meter.measure(meters().to_vec()).await;
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &busy, &idle])
            .output();
        let busy_mc = used.get(&replica("busy")).expect("busy measured").0;
        let idle_mc = used.get(&replica("idle")).expect("idle measured").0;
        assert!(busy_mc >= 100, "busy container: {busy_mc} millicores");
        assert!(idle_mc <= 50, "idle container: {idle_mc} millicores");
    }

    #[tokio::test]
    async fn a_new_source_starts_a_new_count() {
        let mut meter = CpuMeter::default();
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for (d, usec) in [(&a, 5_000_000u64), (&b, 10)] {
            std::fs::create_dir_all(d).expect("mkdir");
            std::fs::write(d.join("cpu.stat"), format!("usage_usec {usec}\n")).expect("write");
        }
        let web = replica("web");
        assert!(
            meter
                .measure(vec![(web.clone(), Meter::Cgroup(vec![a.clone()]))])
                .await
                .is_empty()
        );
        // A restarted instance (another group) has a smaller counter: not a negative rate.
        let used = meter
            .measure(vec![(web.clone(), Meter::Cgroup(vec![b.clone()]))])
            .await;
        assert!(used.is_empty(), "{used:?}");
        std::fs::write(b.join("cpu.stat"), "usage_usec 200010\n").expect("write");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let used = meter
            .measure(vec![(web.clone(), Meter::Cgroup(vec![b]))])
            .await;
        let mc = used.get(&web).expect("measured").0;
        // 200 ms of CPU over about 200 ms.
        assert!((1..=1_100).contains(&mc), "{mc}");
    }
}
