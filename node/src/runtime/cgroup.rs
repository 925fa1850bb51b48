//! CPU and memory limits for process replicas through Linux control groups.
//!
//! This module owns the `starling` groups: finding where the host lets the agent create them,
//! one group per limited replica instance, and removing it once the instance is gone.
//!
//! cgroup v2 (the unified hierarchy) is preferred; hosts still on v1 (separate `cpu` and
//! `memory` hierarchies, common on older edge images and hybrid systemd set-ups) get the same
//! limits through v1 files. On v2 the `starling` group sits at the top of the hierarchy when the
//! agent may enable controllers there, or else next to the agent's own group (from
//! `/proc/self/cgroup`), whose parent already hands cpu and memory down.
//!
//! A process is moved into its group right after it is spawned, so for the first microseconds
//! of its life it runs unlimited: acceptable for limits meant to contain a misbehaving
//! workload, and it avoids a pre-exec hook (which would need unsafe code).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use starling_protocol::quantity::{Bytes, Millicores};

/// Where limits can be written on this host.
#[derive(Debug, Clone)]
pub enum Cgroups {
    /// Unified hierarchy: `<root>/<name>/{cpu.max,memory.max,cgroup.procs}`.
    V2 {
        /// The `starling` group.
        root: PathBuf,
    },
    /// Legacy hierarchies: `cpu` and `memory` mounted separately.
    V1 {
        /// `starling` group in the cpu hierarchy.
        cpu: PathBuf,
        /// `starling` group in the memory hierarchy.
        memory: PathBuf,
    },
}

/// The groups made for one instance, to attach its pid to and remove afterwards.
#[derive(Debug, Clone, Default)]
pub struct InstanceGroups {
    dirs: Vec<PathBuf>,
}

/// The CFS period written with every quota, in microseconds (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses quotas under 1 ms per period: a smaller limit is raised to this.
const CPU_QUOTA_US_MIN: u64 = 1_000;
/// How long removal waits for killed members to leave a group before giving up.
const REMOVE_ATTEMPTS_MAX: u32 = 40;
const REMOVE_RETRY_INTERVAL: Duration = Duration::from_millis(25);

impl Cgroups {
    /// Finds a writable hierarchy under `/sys/fs/cgroup`, or says why there is none. Call once
    /// at start-up; it creates the `starling` group(s) and enables controllers on the way.
    pub fn detect() -> Result<Cgroups, String> {
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Self::detect_at(Path::new("/sys/fs/cgroup"), &own)
    }

    /// `detect` on a hierarchy mounted at `base`, the agent's `/proc/self/cgroup` being `own`.
    fn detect_at(base: &Path, own: &str) -> Result<Cgroups, String> {
        if base.join("cgroup.controllers").exists() {
            return detect_v2(base, own);
        }
        let (cpu, memory) = (base.join("cpu"), base.join("memory"));
        if cpu.join("cpu.cfs_quota_us").exists() && memory.join("memory.limit_in_bytes").exists() {
            let (cpu, memory) = (cpu.join("starling"), memory.join("starling"));
            for dir in [&cpu, &memory] {
                fs::create_dir_all(dir)
                    .map_err(|e| format!("cgroup v1 not writable at {}: {e}", dir.display()))?;
            }
            return Ok(Cgroups::V1 { cpu, memory });
        }
        Err(format!(
            "no cgroup hierarchy with cpu and memory controllers under {}",
            base.display()
        ))
    }

    /// Creates the groups for one instance with its limits; nothing when it has none.
    pub fn create(
        &self,
        name: &str,
        cpu: Option<Millicores>,
        memory: Option<Bytes>,
    ) -> std::io::Result<InstanceGroups> {
        let mut groups = InstanceGroups::default();
        if cpu.is_none() && memory.is_none() {
            return Ok(groups);
        }
        let quota = cpu.map(|c| (u64::from(c.0) * 100).max(CPU_QUOTA_US_MIN));
        match self {
            Cgroups::V2 { root } => {
                let dir = root.join(name);
                fs::create_dir_all(&dir)?;
                groups.dirs.push(dir.clone());
                if let Some(quota) = quota {
                    fs::write(dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"))?;
                }
                if let Some(memory) = memory {
                    fs::write(dir.join("memory.max"), memory.0.to_string())?;
                    // Without this a limited process would swap instead of being stopped.
                    let _ = fs::write(dir.join("memory.swap.max"), "0");
                }
            }
            Cgroups::V1 {
                cpu: cpu_root,
                memory: memory_root,
            } => {
                if let Some(quota) = quota {
                    let dir = cpu_root.join(name);
                    fs::create_dir_all(&dir)?;
                    groups.dirs.push(dir.clone());
                    fs::write(dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                    fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())?;
                }
                if let Some(memory) = memory {
                    let dir = memory_root.join(name);
                    fs::create_dir_all(&dir)?;
                    groups.dirs.push(dir.clone());
                    fs::write(dir.join("memory.limit_in_bytes"), memory.0.to_string())?;
                    // Absent without swap accounting; then there is no swap to limit either.
                    let _ = fs::write(
                        dir.join("memory.memsw.limit_in_bytes"),
                        memory.0.to_string(),
                    );
                }
            }
        }
        Ok(groups)
    }

    /// The groups an earlier agent process made for instance `name`, so that an adopted
    /// instance's groups are removed when it exits like those of one started here.
    pub fn existing(&self, name: &str) -> InstanceGroups {
        let candidates = match self {
            Cgroups::V2 { root } => vec![root.join(name)],
            Cgroups::V1 { cpu, memory } => vec![cpu.join(name), memory.join(name)],
        };
        InstanceGroups {
            dirs: candidates.into_iter().filter(|d| d.is_dir()).collect(),
        }
    }

    /// One line for the agent's start-up log.
    pub fn describe(&self) -> String {
        match self {
            Cgroups::V2 { root } => format!(
                "cpu/memory limits enforced with cgroup v2 under {}",
                root.display()
            ),
            Cgroups::V1 { cpu, memory } => {
                format!(
                    "cpu/memory limits enforced with cgroup v1 under {} and {}",
                    cpu.display(),
                    memory.display()
                )
            }
        }
    }
}

/// Finds or makes a v2 `starling` group whose children get the cpu and memory controllers.
fn detect_v2(base: &Path, own: &str) -> Result<Cgroups, String> {
    let has_both = |dir: &Path| {
        let listed = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        let listed: Vec<&str> = listed.split_whitespace().collect();
        listed.contains(&"cpu") && listed.contains(&"memory")
    };
    if !has_both(base) {
        return Err(format!(
            "cgroup v2 at {} offers no cpu and memory controllers",
            base.display()
        ));
    }
    // The top first: it is exempt from the no-processes-in-inner-groups rule. Inside a cgroup
    // namespace (a container) the "top" is an inner group holding our own processes, enabling
    // controllers there fails with EBUSY, and a group next to ours is the way out.
    let mut parents = vec![base.to_path_buf()];
    if let Some(parent) = own_group(own).and_then(|g| g.parent().map(Path::to_path_buf))
        && parent.as_os_str() != "/"
        && let Ok(relative) = parent.strip_prefix("/")
    {
        parents.push(base.join(relative));
    }
    let mut problems = Vec::new();
    for parent in parents {
        match make_v2_root(&parent, has_both) {
            Ok(root) => return Ok(Cgroups::V2 { root }),
            Err(why) => problems.push(why),
        }
    }
    Err(format!(
        "cgroup v2 not writable at {}: {}",
        base.display(),
        problems.join("; ")
    ))
}

/// Creates `<parent>/starling` with cpu and memory enabled for its children.
fn make_v2_root(parent: &Path, has_both: impl Fn(&Path) -> bool) -> Result<PathBuf, String> {
    let enable = |dir: &Path| {
        fs::write(dir.join("cgroup.subtree_control"), "+cpu +memory")
            .map_err(|e| format!("cannot enable cpu and memory in {}: {e}", dir.display()))
    };
    enable(parent)?;
    let root = parent.join("starling");
    fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    if !has_both(&root) {
        return Err(format!("{} did not get cpu and memory", root.display()));
    }
    enable(&root)?;
    Ok(root)
}

/// The agent's own v2 group (the `0::<path>` line of `/proc/self/cgroup`).
fn own_group(proc_self_cgroup: &str) -> Option<PathBuf> {
    proc_self_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(|path| PathBuf::from(path.trim()))
}

impl InstanceGroups {
    /// Moves `pid` into every group of the instance.
    pub fn attach(&self, pid: u32) -> std::io::Result<()> {
        for dir in &self.dirs {
            fs::write(dir.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }

    /// Kills what is left in the groups (a member that left the process group with `setsid`
    /// escapes `killpg`, not its cgroup) and removes them. Call once the instance's leader is
    /// gone; killed members take a moment to leave, so removal is retried for about a second.
    pub async fn remove(self) {
        for dir in &self.dirs {
            kill_members(dir);
        }
        for attempt in 0..REMOVE_ATTEMPTS_MAX {
            let left: Vec<&PathBuf> = self
                .dirs
                .iter()
                .filter(|d| fs::remove_dir(d).is_err() && d.exists())
                .collect();
            if left.is_empty() {
                return;
            }
            if attempt + 1 == REMOVE_ATTEMPTS_MAX {
                tracing::warn!(
                    "cannot remove cgroup {}: it still has members",
                    left[0].display()
                );
                return;
            }
            tokio::time::sleep(REMOVE_RETRY_INTERVAL).await;
        }
    }

    /// True when the instance has limits.
    pub fn is_limited(&self) -> bool {
        !self.dirs.is_empty()
    }

    /// The group directories (for the runtime's tests and diagnostics).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

/// SIGKILLs every member of one group: `cgroup.kill` on v2 (Linux 5.14+), else each listed pid.
fn kill_members(dir: &Path) {
    if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // Only members of this instance's own group are listed; pid 0 or below never is.
        if pid > 0 {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, text) in files {
            let path = dir.path().join(path);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, text).expect("write");
        }
        dir
    }

    #[test]
    fn v2_limits_are_written_as_quota_over_period_and_bytes() {
        let base = tree(&[
            ("cgroup.controllers", "cpuset cpu io memory pids"),
            ("starling/cgroup.controllers", "cpu memory"),
        ]);
        let cgroups = Cgroups::detect_at(base.path(), "0::/\n").expect("v2");
        let root = base.path().join("starling");
        assert!(matches!(&cgroups, Cgroups::V2 { root: r } if *r == root));
        let subtree = fs::read_to_string(base.path().join("cgroup.subtree_control"));
        assert_eq!(subtree.expect("written"), "+cpu +memory");
        let groups = cgroups
            .create("web-0-7", Some(Millicores(500)), Some(Bytes(64 << 20)))
            .expect("created");
        let dir = root.join("web-0-7");
        assert_eq!(groups.dirs(), std::slice::from_ref(&dir));
        let read = |f: &str| fs::read_to_string(dir.join(f)).expect("file");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(cgroups.existing("web-0-7").dirs(), [dir]);
        assert!(!cgroups.existing("web-0-8").is_limited());
    }

    #[test]
    fn v2_falls_back_to_a_group_next_to_the_agents_own() {
        let base = tree(&[
            ("cgroup.controllers", "cpu memory"),
            ("system.slice/cgroup.subtree_control", "cpu memory"),
            ("system.slice/starling/cgroup.controllers", "cpu memory"),
        ]);
        // A directory where the top's control file should be: writing it fails like EBUSY.
        fs::create_dir(base.path().join("cgroup.subtree_control")).expect("mkdir");
        let own = "0::/system.slice/starling-agent.service\n";
        let cgroups = Cgroups::detect_at(base.path(), own).expect("v2 next to the agent");
        let expected = base.path().join("system.slice/starling");
        assert!(matches!(cgroups, Cgroups::V2 { root } if root == expected));
        // Without a usable parent the reason names both attempts.
        let why = Cgroups::detect_at(base.path(), "0::/\n").expect_err("top only");
        assert!(why.starts_with("cgroup v2 not writable at"), "{why}");
    }

    #[test]
    fn a_tiny_cpu_limit_is_raised_to_the_kernel_minimum() {
        let base = tree(&[
            ("cpu/cpu.cfs_quota_us", "-1"),
            ("memory/memory.limit_in_bytes", ""),
        ]);
        let cgroups = Cgroups::detect_at(base.path(), "").expect("v1");
        let groups = cgroups
            .create("job-1-1", Some(Millicores(1)), None)
            .expect("created");
        let dir = base.path().join("cpu/starling/job-1-1");
        assert_eq!(groups.dirs(), std::slice::from_ref(&dir));
        let quota = fs::read_to_string(dir.join("cpu.cfs_quota_us")).expect("quota");
        assert_eq!(quota, "1000");
    }

    #[test]
    fn no_limits_make_no_group() {
        let base = tree(&[
            ("cpu/cpu.cfs_quota_us", "-1"),
            ("memory/memory.limit_in_bytes", ""),
        ]);
        let cgroups = Cgroups::detect_at(base.path(), "").expect("v1");
        assert!(
            !cgroups
                .create("idle-0-1", None, None)
                .expect("ok")
                .is_limited()
        );
    }

    #[test]
    fn v2_without_controllers_or_any_hierarchy_is_reported() {
        let base = tree(&[("cgroup.controllers", "pids io")]);
        let why = Cgroups::detect_at(base.path(), "0::/\n").expect_err("no cpu");
        assert!(why.contains("offers no cpu and memory"), "{why}");
        let empty = tree(&[]);
        let why = Cgroups::detect_at(empty.path(), "").expect_err("nothing");
        assert!(why.starts_with("no cgroup hierarchy"), "{why}");
    }

    #[test]
    fn the_agents_own_group_is_read_from_the_unified_line() {
        let own = "12:memory:/x\n0::/system.slice/starling.service\n";
        assert_eq!(
            own_group(own),
            Some(PathBuf::from("/system.slice/starling.service"))
        );
        assert_eq!(own_group("4:memory:/x\n"), None);
    }
}
