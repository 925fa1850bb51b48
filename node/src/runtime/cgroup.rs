//! CPU and memory limits for process replicas through Linux control groups.
//!
//! cgroup v2 (the unified hierarchy) is preferred; hosts still on v1 (separate `cpu` and
//! `memory` hierarchies, common on older edge images) get the same limits through v1 files.
//! Groups live under a `starling` group; one per replica instance, created only when its spec
//! sets a limit. A process is moved into its group right after it is spawned, so for the first
//! microseconds of its life it runs unlimited: acceptable for limits meant to contain a
//! misbehaving workload, and it avoids a pre-exec hook.

use std::fs;
use std::path::{Path, PathBuf};

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

impl Cgroups {
    /// Finds a writable hierarchy under `/sys/fs/cgroup`, or says why there is none.
    pub fn detect() -> Result<Cgroups, String> {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    fn detect_at(base: &Path) -> Result<Cgroups, String> {
        let controllers = fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "cpu")
            && controllers.split_whitespace().any(|c| c == "memory")
        {
            let root = base.join("starling");
            fs::create_dir_all(&root)
                .map_err(|e| format!("cgroup v2 at {} is not writable: {e}", base.display()))?;
            // Children of `starling` need the controllers enabled on the way down.
            for dir in [base, root.as_path()] {
                fs::write(dir.join("cgroup.subtree_control"), "+cpu +memory").map_err(|e| {
                    format!(
                        "cannot enable cpu and memory controllers in {}: {e}",
                        dir.display()
                    )
                })?;
            }
            return Ok(Cgroups::V2 { root });
        }
        let (cpu, memory) = (base.join("cpu"), base.join("memory"));
        if cpu.join("cpu.cfs_quota_us").exists() && memory.join("memory.limit_in_bytes").exists() {
            let (cpu, memory) = (cpu.join("starling"), memory.join("starling"));
            for dir in [&cpu, &memory] {
                fs::create_dir_all(dir)
                    .map_err(|e| format!("cgroup v1 at {} is not writable: {e}", dir.display()))?;
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
        match self {
            Cgroups::V2 { root } => {
                let dir = root.join(name);
                fs::create_dir_all(&dir)?;
                groups.dirs.push(dir.clone());
                if let Some(cpu) = cpu {
                    fs::write(
                        dir.join("cpu.max"),
                        format!("{} 100000", u64::from(cpu.0) * 100),
                    )?;
                }
                if let Some(memory) = memory {
                    fs::write(dir.join("memory.max"), memory.0.to_string())?;
                    // Without swap accounting a limited process would swap instead of being stopped.
                    let _ = fs::write(dir.join("memory.swap.max"), "0");
                }
            }
            Cgroups::V1 {
                cpu: cpu_root,
                memory: memory_root,
            } => {
                if let Some(cpu) = cpu {
                    let dir = cpu_root.join(name);
                    fs::create_dir_all(&dir)?;
                    groups.dirs.push(dir.clone());
                    fs::write(dir.join("cpu.cfs_period_us"), "100000")?;
                    fs::write(
                        dir.join("cpu.cfs_quota_us"),
                        (u64::from(cpu.0) * 100).to_string(),
                    )?;
                }
                if let Some(memory) = memory {
                    let dir = memory_root.join(name);
                    fs::create_dir_all(&dir)?;
                    groups.dirs.push(dir.clone());
                    fs::write(dir.join("memory.limit_in_bytes"), memory.0.to_string())?;
                    let _ = fs::write(
                        dir.join("memory.memsw.limit_in_bytes"),
                        memory.0.to_string(),
                    );
                }
            }
        }
        Ok(groups)
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

impl InstanceGroups {
    /// Moves `pid` into every group of the instance.
    pub fn attach(&self, pid: u32) -> std::io::Result<()> {
        for dir in &self.dirs {
            fs::write(dir.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }

    /// Removes the groups (they must be empty: call after the process is gone).
    pub fn remove(&self) {
        for dir in &self.dirs {
            let _ = fs::remove_dir(dir);
        }
    }

    /// True when the instance has limits.
    pub fn is_limited(&self) -> bool {
        !self.dirs.is_empty()
    }
}
