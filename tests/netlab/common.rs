//! What the scenarios of tests/netlab.rs share: one lab at a time on the machine, the report
//! every scenario adds its section to, and the census of replica processes by host, read
//! from `/proc` (the OS's word, not the agents').

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::support::netns::NetLab;
use crate::support::{BIN, Fleet, alive, http_get, spec};

/// Held for a whole scenario: scenarios in one binary (`cargo test`) or in separate processes
/// (nextest) never overlap, because two 5-host fleets on 2 cores would make each other's
/// timings (and the lossy run's calm) meaningless.
pub struct Serial(#[allow(dead_code)] std::fs::File);

pub fn serial() -> Serial {
    let path = std::env::temp_dir().join("starling-netlab.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("the netlab lock file");
    file.lock().expect("the netlab lock");
    Serial(file)
}

/// The report: `$STARLING_NETLAB_REPORT`, or `netlab-report.md` in cargo's target dir.
pub fn report_path() -> PathBuf {
    if let Some(path) = std::env::var_os("STARLING_NETLAB_REPORT") {
        return PathBuf::from(path);
    }
    // BIN is TARGET/debug/starling (or another profile's dir).
    PathBuf::from(BIN)
        .parent()
        .and_then(|p| p.parent())
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("netlab-report.md")
}

/// Prints `body` and puts it in the report as section `title`, replacing that scenario's
/// section from an earlier run (callers hold [`serial`], so writers never race).
pub fn report(title: &str, body: &str) {
    eprintln!("== {title}\n{body}");
    let path = report_path();
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mut sections: Vec<String> = old
        .split("\n## ")
        .skip(1)
        .map(|s| format!("## {}", s.trim_end()))
        .filter(|s| !s.starts_with(&format!("## {title}\n")))
        .collect();
    sections.push(format!(
        "## {title}\n\n_{}_\n\n{}",
        utc_now(),
        body.trim_end()
    ));
    sections.sort();
    let text = format!(
        "# Starling reliability suite (network namespaces)\n\n\
         `cargo nextest run -p starling --test netlab --no-capture`; each scenario replaces its \
         own section. Links can lose packets and be cut (nftables); this kernel has no `tc \
         netem`, so there is no delay or jitter.\n\n{}\n",
        sections.join("\n\n")
    );
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&path, text).expect("write the netlab report");
    eprintln!("report: {}", path.display());
}

fn utc_now() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A marker no other test's processes carry: a `sleep` argument (seconds) unique to this run
/// and scenario.
pub fn marker(scenario: u32) -> String {
    format!("{}.{}", 900_000 + scenario, std::process::id())
}

/// A `sleep MARKER` workload of `replicas` replicas.
pub fn sleeper(name: &str, replicas: u32, marker: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nreplicas = {replicas}\n{extra}\ncommand = \"sleep\"\n\
         args = [\"{marker}\"]\n[resources]\ncpu = \"10m\"\nmemory = \"8Mi\"\n"
    )
}

/// Applies `body` as spec `name` through node `at`.
pub fn apply(fleet: &Fleet, at: usize, name: &str, body: &str) {
    let file = spec(fleet.tmp.path(), name, body);
    let out = fleet.cli(at, &["apply", "-f", &file]);
    assert!(
        out.status.success(),
        "apply {name} at node {at}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One replica process the OS runs: its host, pid, workload and replica index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub host: usize,
    pub pid: i32,
    pub workload: String,
    pub index: u64,
}

/// Live processes whose command line is `PROGRAM ... MARKER` (program's name ending with
/// `program`, the marker last), by host namespace, with the replica they say they are
/// (`STARLING_WORKLOAD`, `STARLING_REPLICA` in their environment).
pub fn census(lab: &NetLab, program: &str, marker: &str) -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for pid in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .collect();
        let ours = args
            .first()
            .is_some_and(|a| a.ends_with(program.as_bytes()))
            && args.last().is_some_and(|a| *a == marker.as_bytes());
        if !ours || !alive(i64::from(pid)) {
            continue;
        }
        let Some(host) = lab.host_of(pid) else {
            continue;
        };
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let var = |name: &str| {
            env.split(|b| *b == 0)
                .filter_map(|kv| std::str::from_utf8(kv).ok())
                .find_map(|kv| kv.strip_prefix(name).map(str::to_string))
        };
        out.push(Proc {
            host,
            pid,
            workload: var("STARLING_WORKLOAD=").unwrap_or_default(),
            index: var("STARLING_REPLICA=")
                .and_then(|v| v.parse().ok())
                .unwrap_or(u64::MAX),
        });
    }
    out
}

/// Processes per host.
pub fn per_host(lab: &NetLab, procs: &[Proc]) -> Vec<usize> {
    (0..lab.hosts)
        .map(|h| procs.iter().filter(|p| p.host == h).count())
        .collect()
}

/// Copies beyond the first of every replica: 0 when each runs once.
pub fn duplicates(procs: &[Proc]) -> usize {
    let mut by: BTreeMap<(&str, u64), usize> = BTreeMap::new();
    for p in procs {
        *by.entry((&p.workload, p.index)).or_default() += 1;
    }
    by.values().map(|n| n - 1).sum()
}

/// Whether the processes are exactly replicas `0..n` of each workload in `want`, once each.
pub fn exactly(procs: &[Proc], want: &BTreeMap<String, u64>) -> bool {
    let mut seen: Vec<(String, u64)> = procs
        .iter()
        .map(|p| (p.workload.clone(), p.index))
        .collect();
    seen.sort();
    let mut expected: Vec<(String, u64)> = want
        .iter()
        .flat_map(|(w, n)| (0..*n).map(move |i| (w.clone(), i)))
        .collect();
    expected.sort();
    seen == expected
}

/// Samples the census every 200 ms until `done` says so (or `limit` passes: `None`), adding
/// up duplicate replica-seconds. Returns how long it took and the last census.
pub struct Watch {
    pub duplicate_seconds: f64,
    pub most: usize,
}

impl Watch {
    pub fn new() -> Watch {
        Watch {
            duplicate_seconds: 0.0,
            most: 0,
        }
    }

    pub fn until(
        &mut self,
        lab: &NetLab,
        program: &str,
        marker: &str,
        limit: Duration,
        mut done: impl FnMut(&[Proc]) -> bool,
    ) -> Option<(Duration, Vec<Proc>)> {
        let started = Instant::now();
        let mut last = Instant::now();
        loop {
            let procs = census(lab, program, marker);
            let dt = last.elapsed().as_secs_f64();
            last = Instant::now();
            self.duplicate_seconds += duplicates(&procs) as f64 * dt;
            self.most = self.most.max(procs.len());
            if done(&procs) {
                return Some((started.elapsed(), procs));
            }
            if started.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Node `i`'s desired state as it lists it: (workload, revision, replicas), sorted.
pub fn desired(fleet: &Fleet, i: usize) -> Option<Vec<(String, u64, u64)>> {
    let v = fleet.json(i, &["get", "workloads"])?;
    let mut rows: Vec<(String, u64, u64)> = v
        .as_array()?
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap_or_default().to_string(),
                w["revision"].as_u64().unwrap_or_default(),
                w["replicas"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    rows.sort();
    Some(rows)
}

/// Node `i`'s view of every member's state: node -> state.
pub fn views(fleet: &Fleet, i: usize) -> Option<BTreeMap<String, String>> {
    let v = fleet.json(i, &["get", "nodes"])?;
    Some(
        v.as_array()?
            .iter()
            .map(|n| {
                (
                    n["node"].as_str().unwrap_or_default().to_string(),
                    n["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
    )
}

/// The lease `name` as node `i` lists it: (holder, token).
pub fn lease(fleet: &Fleet, i: usize, name: &str) -> Option<(String, u64)> {
    let v = fleet.json(i, &["get", "leases"])?;
    v.as_array()?
        .iter()
        .find(|l| l["name"] == name)
        .and_then(|l| Some((l["holder"].as_str()?.to_string(), l["token"].as_u64()?)))
}

/// One series of host `i`'s agent's metrics (the first line starting with `series`).
pub fn metric(lab: &NetLab, i: usize, series: &str) -> Option<f64> {
    let text = http_get(std::net::SocketAddr::from((lab.addr(i), 7946)), "/metrics")?;
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Events of `kind` the fleet recorded in the last `since` (as node `at` gathers them), and
/// the peers that did not answer.
pub fn events(fleet: &Fleet, at: usize, kind: &str, since: Duration) -> (Vec<Value>, usize) {
    let since = format!("{}s", since.as_secs().max(1));
    let Some(v) = fleet.json(at, &["get", "events", "--since", &since, "--limit", "2000"]) else {
        return (Vec::new(), usize::MAX);
    };
    let found = v["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect();
    let missing = v["missing"].as_array().map_or(0, Vec::len);
    (found, missing)
}

/// Kills host `i` as a power cut: the link first, then every process in its namespace
/// (agent, fences, replicas); the agent's handle is reaped.
pub fn power_off(lab: &NetLab, fleet: &mut Fleet, i: usize) -> Instant {
    lab.power_off(i);
    let at = Instant::now();
    if let Some(mut child) = fleet.nodes[i].child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    at
}

/// Seconds with one decimal.
pub fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}
