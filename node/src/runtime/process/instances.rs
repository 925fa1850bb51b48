//! What the process runtime records about each live instance on disk, and adopting the
//! instances a previous agent left running.
//!
//! Each instance has its record, `instance-<instance>.json` in its replica's directory: pid and
//! kernel start time (so a reused pid is never taken for ours), revision, whether a fence runs
//! it, and the ports it listens on. Two instances of one replica (a start-first update) have
//! two records, and a restarted agent adopts both. `instance.json` beside them repeats the
//! record of the replica's newest live instance for people and scripts that want "the pid of
//! this replica"; it is also the only record an older build wrote, so adoption still reads it
//! (and writes the per-instance record of what it adopts from it).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use starling_protocol::WorkloadName;
use starling_protocol::placement::ReplicaId;

use super::{Inner, Instances, Key, Running, group_name};
use crate::runtime::RuntimeEvent;
use crate::runtime::cgroup::InstanceGroups;
use crate::runtime::ports::PortMap;
use crate::store::write_atomic;

/// The newest live instance's record, under the name older builds gave the only one.
pub(super) const SUMMARY_FILE: &str = "instance.json";

/// What an instance's record holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct InstanceFile {
    pub pid: u32,
    pub start_time: u64,
    pub instance: u64,
    pub revision: u64,
    pub workload: String,
    pub index: u32,
    /// The pid is a fence's; absent in records written before fences existed.
    #[serde(default)]
    pub fenced: bool,
    /// Where each port listens; absent in records written before ports were assigned per
    /// instance (such an instance listens where its spec says, see `ProcessRuntime::host_port`).
    #[serde(default)]
    pub ports: Option<PortMap>,
}

/// The file holding one instance's record.
pub(super) fn record_file(dir: &Path, instance: u64) -> PathBuf {
    dir.join(format!("instance-{instance}.json"))
}

impl Inner {
    /// Writes a new instance's record. A failure is only logged: the instance runs, but a
    /// restarted agent will not find it.
    pub(super) fn write_record(&self, replica: &ReplicaId, record: &InstanceFile) {
        let file = record_file(&self.replica_dir(replica), record.instance);
        let written = serde_json::to_vec(record)
            .map_err(|e| e.to_string())
            .and_then(|bytes| write_atomic(&file, &bytes).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::warn!(
                "{}/{}: cannot record instance {}, it will not be adopted after an agent restart: {e}",
                replica.workload,
                replica.index,
                record.instance
            );
        }
    }

    /// Makes `instance.json` repeat the newest of `replica`'s live instances, or removes it
    /// when none is left. Called with the instances locked, so a start and an exit of two
    /// instances of one replica cannot leave it naming the wrong one.
    pub(super) fn refresh_summary(&self, replica: &ReplicaId, running: &Instances) {
        let file = self.replica_dir(replica).join(SUMMARY_FILE);
        let newest = running
            .live
            .range((replica.clone(), 0)..=(replica.clone(), u64::MAX))
            .next_back()
            .map(|(_, r)| &r.record);
        let result = match newest {
            Some(record) => serde_json::to_vec(record)
                .map_err(|e| e.to_string())
                .and_then(|bytes| write_atomic(&file, &bytes).map_err(|e| e.to_string())),
            None => match fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(()),
            },
        };
        if let Err(e) = result {
            tracing::warn!("cannot update {}: {e}", file.display());
        }
    }

    /// Takes over the live instances recorded under `replicas/` (see
    /// [`super::ProcessRuntime`]'s `adopt`). Records of gone processes are removed.
    pub(super) async fn adopt(self: &std::sync::Arc<Self>) -> usize {
        let Ok(entries) = fs::read_dir(self.state_dir.join("replicas")) else {
            return 0;
        };
        let mut adopted = 0;
        for entry in entries.flatten() {
            let dir = entry.path();
            let mut touched = None;
            for (replica, record, from_summary) in records_in(&dir) {
                let key = (replica.clone(), record.instance);
                touched = Some(replica.clone());
                if self.lock().live.contains_key(&key) {
                    // Started or adopted by this agent process already.
                    continue;
                }
                if start_time(record.pid) != Some(record.start_time) {
                    // Gone, or the pid now belongs to someone else: never adopt a stranger.
                    let _ = fs::remove_file(record_file(&dir, record.instance));
                    continue;
                }
                if from_summary {
                    // Written by an older build: give it the record a newer instance's
                    // summary will not overwrite.
                    self.write_record(&replica, &record);
                }
                self.take_over(key, record).await;
                adopted += 1;
            }
            if let Some(replica) = touched {
                let running = self.lock();
                self.refresh_summary(&replica, &running);
            }
        }
        adopted
    }

    async fn take_over(self: &std::sync::Arc<Self>, key: Key, record: InstanceFile) {
        let groups = match &self.cgroups {
            Ok(cgroups) => cgroups.existing(&group_name(&key.0, record.instance)),
            Err(_) => InstanceGroups::default(),
        };
        let (instance, revision) = (record.instance, record.revision);
        self.lock().live.insert(
            key.clone(),
            Running {
                record: record.clone(),
                groups,
            },
        );
        let _ = self
            .events
            .send(RuntimeEvent::Adopted {
                replica: key.0.clone(),
                instance,
                revision,
            })
            .await;
        tokio::spawn(self.clone().watch_adopted(key, record));
    }
}

/// The instance records in one replica's directory, oldest instance first, each once: the
/// per-instance files, and `instance.json` when no per-instance file names its instance
/// (then marked `true`: an older build wrote it).
fn records_in(dir: &Path) -> Vec<(ReplicaId, InstanceFile, bool)> {
    let mut found: std::collections::BTreeMap<u64, (ReplicaId, InstanceFile, bool)> =
        std::collections::BTreeMap::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(number) = name
            .strip_prefix("instance-")
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        if let Some((replica, record)) = read_record(&entry.path())
            && number == record.instance.to_string()
        {
            found.insert(record.instance, (replica, record, false));
        }
    }
    if let Some((replica, record)) = read_record(&dir.join(SUMMARY_FILE)) {
        found
            .entry(record.instance)
            .or_insert((replica, record, true));
    }
    found.into_values().collect()
}

/// Reads an instance record and checks it names the replica whose directory holds it.
pub(super) fn read_record(file: &Path) -> Option<(ReplicaId, InstanceFile)> {
    let text = fs::read_to_string(file).ok()?;
    let parsed = serde_json::from_str::<InstanceFile>(&text)
        .map_err(|e| e.to_string())
        .and_then(|record| {
            let workload = WorkloadName::new(record.workload.clone()).map_err(|e| e.to_string())?;
            let replica = ReplicaId {
                workload,
                index: record.index,
            };
            // A record copied into another replica's directory would mix up logs and groups.
            let dir = file.parent().and_then(Path::file_name);
            let expected = format!("{}-{}", replica.workload, replica.index);
            if dir.and_then(|d| d.to_str()) == Some(expected.as_str()) {
                Ok((replica, record))
            } else {
                Err(format!("it names replica {expected}, not its directory"))
            }
        });
    match parsed {
        Ok(found) => Some(found),
        Err(why) => {
            tracing::warn!("ignoring {}: {why}", file.display());
            None
        }
    }
}

/// The kernel start time of a live, non-zombie process (field 22 of `/proc/<pid>/stat`).
pub(super) fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}
