//! Turning a [`SpecDoc`] into a [`WorkloadSpec`], collecting every problem with its path.

use std::collections::{BTreeMap, BTreeSet};

use super::doc::{
    ConstraintsDoc, HealthDoc, PortDoc, ResourcesDoc, RestartDoc, ScalingDoc, SpecDoc, UpdateDoc,
};
use super::error::{Collector, SpecErrors};
use super::{
    Canary, ConfigRef, Constraints, DEFAULT_LEASE_TTL_MS, HealthCheck, LeaseMode, LeaseSettings,
    PartitionPolicy, PlacementStrategy, PortProtocol, PortSpec, Probe, PullPolicy, REPLICAS_MAX,
    Reload, ReloadSignal, Resources, RestartMode, RestartPolicy, RuntimeKind, ScalingMetric,
    ScalingPolicy, SecretRef, UpdateOrder, UpdateStrategy, WorkloadSpec,
};
use crate::names::WorkloadName;
use crate::quantity::{
    Bytes, Millicores, QuantityText, parse_cpu, parse_duration_ms, parse_memory,
};

/// CPU reserved when a spec gives none, so placement never treats a replica as free.
pub const DEFAULT_CPU: Millicores = Millicores(100);
/// Memory reserved when a spec gives none.
pub const DEFAULT_MEMORY: Bytes = Bytes(64 << 20);

/// Architectures a constraint may name, with the aliases operators use for them.
const ARCH_ALIASES: [(&str, &str); 9] = [
    ("x86_64", "x86_64"),
    ("amd64", "x86_64"),
    ("aarch64", "aarch64"),
    ("arm64", "aarch64"),
    ("arm", "arm"),
    ("armv7", "arm"),
    ("riscv64", "riscv64"),
    ("x86", "x86"),
    ("i386", "x86"),
];

impl SpecDoc {
    /// Checks the whole document and builds the typed spec. On failure every problem is
    /// returned, each with its field path, e.g. `replicas: must be between 0 and 10000, got -1`.
    pub fn validate(&self) -> Result<WorkloadSpec, SpecErrors> {
        let mut c = Collector::default();
        for path in &self.unknown_fields {
            c.push(
                path.clone(),
                "unknown field (check its spelling and its section)",
            );
        }
        let name = match &self.name {
            None => {
                c.push("name", "is required");
                None
            }
            Some(n) => c.take(
                "name",
                WorkloadName::new(n.clone()).map_err(|e| e.to_string()),
            ),
        };
        let runtime = c.take("runtime", parse_runtime(self.runtime.as_deref()));
        let image_pull_policy = c.take(
            "image_pull_policy",
            parse_pull_policy(self.image_pull_policy.as_deref()),
        );
        let replicas = count_in(&mut c, "replicas", self.replicas, 1, 0, REPLICAS_MAX.into());
        let priority = int_in(&mut c, "priority", self.priority, 0, -1000, 1000);
        let singleton = self.singleton.unwrap_or(false);
        let lease = lease_settings(&mut c, self, singleton);
        let placement = c.take("placement", parse_placement(self.placement.as_deref()));
        let partition = c.take("partition", parse_partition(self.partition.as_deref()));
        let resources = resources(&mut c, self.resources.as_ref());
        let constraints = constraints(&mut c, self.constraints.as_ref());
        let ports = ports(&mut c, self.ports.as_deref().unwrap_or_default(), runtime);
        let env = env(&mut c, self.env.as_ref());
        let uses = uses(&mut c, self.uses.as_deref());
        let (configs, secrets) =
            configs_and_secrets(&mut c, self, runtime == Some(RuntimeKind::Process));
        let port_names: Vec<&str> = self
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.name.as_deref())
            .collect();
        let health = self.health.as_ref().map(|h| health(&mut c, h, &port_names));
        port_references(&mut c, self, &port_names);
        let restart = restart(&mut c, self.restart.as_ref());
        let scaling = self.scaling.as_ref().map(|s| scaling(&mut c, s));
        if let Some(runtime) = runtime {
            command_and_image(&mut c, self, runtime);
        }
        if singleton {
            if replicas.is_some_and(|r| r > 1) {
                c.push(
                    "replicas",
                    "a singleton runs one active instance; set replicas = 1 (or 0 to stop it)",
                );
            }
            if self.scaling.is_some() {
                c.push(
                    "scaling",
                    "a singleton cannot be scaled; remove [scaling] or singleton = true",
                );
            }
        }
        if let (Some(Ok(s)), Some(r)) = (&scaling, replicas)
            && (r < s.min || r > s.max)
        {
            c.push(
                "replicas",
                format!(
                    "must be within scaling bounds {}..={}, got {r}",
                    s.min, s.max
                ),
            );
        }
        let fixed_port = ports.as_ref().and_then(|ports| {
            ports
                .iter()
                .find(|p| p.host_port.is_some())
                .map(|p| p.name.clone())
        });
        let update = update(
            &mut c,
            self.update.as_ref(),
            singleton,
            fixed_port.as_deref(),
        );
        let spec = (|| {
            Some(WorkloadSpec {
                name: name?,
                runtime: runtime?,
                image: self.image.clone(),
                image_pull_policy: image_pull_policy?,
                command: self.command.clone(),
                args: self.args.clone().unwrap_or_default(),
                replicas: replicas?,
                priority: i32::try_from(priority?).ok()?,
                resources: resources?,
                constraints: constraints?,
                placement: placement?,
                partition: partition?,
                ports: ports?,
                env: env?,
                uses: uses?,
                configs: configs?,
                secrets: secrets?,
                health: health.transpose().ok()?,
                restart: restart?,
                update: update?,
                scaling: scaling.transpose().ok()?,
                singleton,
                lease: lease?,
            })
        })();
        c.finish(spec)
    }
}

/// Most services one workload may name in `uses` (each adds an env var per port).
const USES_MAX: usize = 64;

/// `uses`: workload names, each once. A name that does not exist (yet) is allowed: services
/// come and go independently, and the proxy answers for it once it runs.
fn uses(c: &mut Collector, doc: Option<&[String]>) -> Option<Vec<WorkloadName>> {
    let doc = doc.unwrap_or_default();
    let mut ok = true;
    if doc.len() > USES_MAX {
        c.push(
            "uses",
            format!("at most {USES_MAX} services, got {}", doc.len()),
        );
        ok = false;
    }
    let mut out: Vec<WorkloadName> = Vec::new();
    for (i, name) in doc.iter().enumerate() {
        match WorkloadName::new(name.as_str()) {
            Ok(n) if out.contains(&n) => {
                c.push(format!("uses[{i}]"), format!("{name:?} is named twice"));
                ok = false;
            }
            Ok(n) => out.push(n),
            Err(e) => {
                c.push(
                    format!("uses[{i}]"),
                    format!("must be a workload name: {e}"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// An optional integer with a default, checked against an inclusive range.
fn int_in(
    c: &mut Collector,
    path: &str,
    value: Option<i64>,
    default: i64,
    min: i64,
    max: i64,
) -> Option<i64> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        c.push(path, format!("must be between {min} and {max}, got {v}"));
        return None;
    }
    Some(v)
}

/// Like `int_in` for counts, whose ranges start at zero or above.
fn count_in(
    c: &mut Collector,
    path: &str,
    value: Option<i64>,
    default: i64,
    min: i64,
    max: i64,
) -> Option<u32> {
    debug_assert!(min >= 0 && max <= i64::from(u32::MAX));
    int_in(c, path, value, default, min, max).and_then(|v| u32::try_from(v).ok())
}

fn parse_runtime(text: Option<&str>) -> Result<RuntimeKind, String> {
    match text.unwrap_or("process") {
        "process" => Ok(RuntimeKind::Process),
        "docker" => Ok(RuntimeKind::Docker),
        "podman" => Ok(RuntimeKind::Podman),
        other => Err(format!(
            "must be one of process, docker, podman, got {other:?}"
        )),
    }
}

fn parse_pull_policy(text: Option<&str>) -> Result<PullPolicy, String> {
    match text.unwrap_or("if-not-present") {
        "never" => Ok(PullPolicy::Never),
        "if-not-present" => Ok(PullPolicy::IfNotPresent),
        "always" => Ok(PullPolicy::Always),
        other => Err(format!(
            "must be one of never, if-not-present, always, got {other:?}"
        )),
    }
}

fn parse_placement(text: Option<&str>) -> Result<PlacementStrategy, String> {
    match text.unwrap_or("spread") {
        "spread" => Ok(PlacementStrategy::Spread),
        "bin-pack" => Ok(PlacementStrategy::BinPack),
        other => Err(format!("must be spread or bin-pack, got {other:?}")),
    }
}

/// Most warm standbys a singleton may ask for.
pub const STANDBYS_MAX: i64 = 8;

fn lease_settings(c: &mut Collector, doc: &SpecDoc, singleton: bool) -> Option<LeaseSettings> {
    if !singleton {
        for (set, path) in [
            (doc.standbys.is_some_and(|s| s != 0), "standbys"),
            (doc.lease_mode.is_some(), "lease_mode"),
            (doc.lease_ttl.is_some(), "lease_ttl"),
        ] {
            if set {
                c.push(path, "only a singleton has a lease; set singleton = true");
            }
        }
    }
    let standbys = count_in(c, "standbys", doc.standbys, 0, 0, STANDBYS_MAX);
    let mode = c.take(
        "lease_mode",
        match doc.lease_mode.as_deref().unwrap_or("quorum") {
            "quorum" => Ok(LeaseMode::Quorum),
            "local" => Ok(LeaseMode::Local),
            other => Err(format!("must be quorum or local, got {other:?}")),
        },
    );
    let ttl_ms = duration(
        c,
        "lease_ttl",
        doc.lease_ttl.as_ref(),
        DEFAULT_LEASE_TTL_MS,
        LEASE_TTL_MIN_MS,
    );
    if let Some(ttl) = ttl_ms
        && ttl > LEASE_TTL_MAX_MS
    {
        c.push(
            "lease_ttl",
            format!(
                "must be at most {}",
                crate::quantity::format_duration_ms(LEASE_TTL_MAX_MS)
            ),
        );
        return None;
    }
    Some(LeaseSettings {
        mode: mode?,
        ttl_ms: ttl_ms?,
        standbys: standbys?,
    })
}

/// Shortest lease TTL: renewals every third of it must fit in a LAN round trip and a timer.
pub const LEASE_TTL_MIN_MS: u64 = 1_000;
/// Longest lease TTL: a voter that restarts waits this long before it grants anything.
pub const LEASE_TTL_MAX_MS: u64 = 300_000;

fn parse_partition(text: Option<&str>) -> Result<PartitionPolicy, String> {
    match text.unwrap_or("consistency") {
        "consistency" => Ok(PartitionPolicy::Consistency),
        "availability" => Ok(PartitionPolicy::Availability),
        other => Err(format!(
            "must be consistency or availability, got {other:?}"
        )),
    }
}

fn command_and_image(c: &mut Collector, doc: &SpecDoc, runtime: RuntimeKind) {
    let is_container = runtime != RuntimeKind::Process;
    match (&doc.image, is_container) {
        (None, true) => c.push("image", format!("is required for runtime {}", super::doc::runtime_text(runtime))),
        (Some(_), false) => c.push("image", "only container runtimes (docker, podman) use an image; the process runtime runs `command`"),
        (Some(i), true) if i.trim().is_empty() || i.chars().any(char::is_whitespace) => {
            c.push("image", format!("must be an image reference without spaces, got {i:?}"))
        }
        _ => {}
    }
    match &doc.command {
        None if !is_container => c.push("command", "is required for the process runtime"),
        Some(cmd) if cmd.trim().is_empty() => c.push("command", "must not be empty"),
        _ => {}
    }
    if doc.command.is_none() && !is_container && doc.args.as_ref().is_some_and(|a| !a.is_empty()) {
        c.push("args", "needs a command to pass them to");
    }
}

/// `${port.NAME}` in `command` and `args` is replaced by the runtime with the port the instance
/// listens on, so NAME must be a port declared in `[[ports]]`.
fn port_references(c: &mut Collector, doc: &SpecDoc, port_names: &[&str]) {
    const OPEN: &str = "${port.";
    let fields = doc.command.iter().map(|t| ("command".to_string(), t));
    let args = doc.args.iter().flatten().enumerate();
    for (path, text) in fields.chain(args.map(|(i, t)| (format!("args[{i}]"), t))) {
        let mut rest = text.as_str();
        while let Some(at) = rest.find(OPEN) {
            rest = &rest[at + OPEN.len()..];
            let Some(end) = rest.find('}') else {
                c.push(
                    path.as_str(),
                    "has \"${port.\" without a closing \"}\": write ${port.NAME}",
                );
                break;
            };
            let name = &rest[..end];
            if !port_names.contains(&name) {
                c.push(
                    path.as_str(),
                    format!("${{port.{name}}}: no port named {name:?} in [[ports]]"),
                );
            }
            rest = &rest[end + 1..];
        }
    }
}

fn quantity<T>(
    c: &mut Collector,
    path: &str,
    text: Option<&QuantityText>,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Option<T>, ()> {
    match text {
        None => Ok(None),
        Some(q) => c.take(path, parse(&q.0)).map(Some).ok_or(()),
    }
}

fn resources(c: &mut Collector, doc: Option<&ResourcesDoc>) -> Option<Resources> {
    let empty = ResourcesDoc::default();
    let doc = doc.unwrap_or(&empty);
    let cpu = quantity(c, "resources.cpu", doc.cpu.as_ref(), parse_cpu);
    let memory = quantity(c, "resources.memory", doc.memory.as_ref(), parse_memory);
    let cpu_limit = quantity(c, "resources.cpu_limit", doc.cpu_limit.as_ref(), parse_cpu);
    let memory_limit = quantity(
        c,
        "resources.memory_limit",
        doc.memory_limit.as_ref(),
        parse_memory,
    );
    let (cpu, memory, cpu_limit, memory_limit) =
        (cpu.ok()?, memory.ok()?, cpu_limit.ok()?, memory_limit.ok()?);
    let r = Resources {
        cpu_request: cpu.unwrap_or(DEFAULT_CPU),
        memory_request: memory.unwrap_or(DEFAULT_MEMORY),
        cpu_limit,
        memory_limit,
    };
    let mut ok = true;
    if let Some(limit) = r.cpu_limit
        && (limit < r.cpu_request || limit.0 == 0)
    {
        c.push(
            "resources.cpu_limit",
            format!(
                "must be at least the request ({}), got {limit}",
                r.cpu_request
            ),
        );
        ok = false;
    }
    if let Some(limit) = r.memory_limit
        && (limit < r.memory_request || limit.0 < (4 << 20))
    {
        c.push(
            "resources.memory_limit",
            format!(
                "must be at least the request ({}) and 4Mi, got {limit}",
                r.memory_request
            ),
        );
        ok = false;
    }
    ok.then_some(r)
}

fn constraints(c: &mut Collector, doc: Option<&ConstraintsDoc>) -> Option<Constraints> {
    let mut ok = true;
    let mut labels = BTreeMap::new();
    for (key, value) in doc.and_then(|d| d.labels.as_ref()).into_iter().flatten() {
        if let Err(reason) = check_label_key(key) {
            c.push(format!("constraints.labels.{key}"), reason);
            ok = false;
        }
        if value.len() > 63
            || value
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control())
        {
            c.push(
                format!("constraints.labels.{key}"),
                format!("value must be at most 63 characters without spaces, got {value:?}"),
            );
            ok = false;
        }
        labels.insert(key.clone(), value.clone());
    }
    let mut arch = BTreeSet::new();
    for (i, a) in doc
        .and_then(|d| d.arch.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        match ARCH_ALIASES.iter().find(|(alias, _)| alias == a) {
            Some((_, canonical)) => {
                arch.insert((*canonical).to_owned());
            }
            None => {
                c.push(
                    format!("constraints.arch[{i}]"),
                    format!("unknown architecture {a:?}; use x86_64, aarch64, arm, riscv64 or x86"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(Constraints { labels, arch })
}

/// Label keys: 1 to 63 characters of letters, digits, `.`, `_`, `/` and `-`.
pub(crate) fn check_label_key(key: &str) -> Result<(), String> {
    let valid = !key.is_empty()
        && key.len() <= 63
        && key
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "._/-".contains(ch));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "label key must be 1 to 63 letters, digits, '.', '_', '/' or '-', got {key:?}"
        ))
    }
}

/// `runtime` is `None` when it is itself invalid; the ports are then checked as a container's.
fn ports(
    c: &mut Collector,
    docs: &[PortDoc],
    runtime: Option<RuntimeKind>,
) -> Option<Vec<PortSpec>> {
    let is_process = runtime == Some(RuntimeKind::Process);
    let mut out = Vec::new();
    let mut ok = true;
    let mut names = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    for (i, p) in docs.iter().enumerate() {
        let path = format!("ports[{i}]");
        let name = match &p.name {
            None => {
                c.push(format!("{path}.name"), "is required");
                ok = false;
                None
            }
            Some(n) => match WorkloadName::new(n.clone()) {
                Err(e) => {
                    c.push(format!("{path}.name"), e.to_string());
                    ok = false;
                    None
                }
                Ok(_) if !names.insert(n.clone()) => {
                    c.push(
                        format!("{path}.name"),
                        format!("{n:?} is used by an earlier port"),
                    );
                    ok = false;
                    None
                }
                Ok(_) => Some(n.clone()),
            },
        };
        let port = match p.port {
            None => {
                c.push(format!("{path}.port"), "is required");
                ok = false;
                None
            }
            Some(v) => port_number(c, &format!("{path}.port"), v),
        };
        let host_port = p
            .host_port
            .and_then(|v| port_number(c, &format!("{path}.host_port"), v));
        if p.host_port.is_some() && host_port.is_none() {
            ok = false;
        }
        let protocol = match p.protocol.as_deref().unwrap_or("tcp") {
            "tcp" => Some(PortProtocol::Tcp),
            "udp" => Some(PortProtocol::Udp),
            other => {
                c.push(
                    format!("{path}.protocol"),
                    format!("must be tcp or udp, got {other:?}"),
                );
                None
            }
        };
        // Nothing maps a process's ports: with a `host_port` it listens on that number itself,
        // so `port` may only repeat it (without one the agent picks a port per instance).
        if is_process
            && let (Some(hp), Some(p)) = (host_port, port)
            && hp != p
        {
            c.push(
                format!("{path}.host_port"),
                format!(
                    "must equal port ({p}) or be left out: a process listens on its port directly, got {hp}"
                ),
            );
            ok = false;
        }
        let bound = if is_process {
            host_port.or(port)
        } else {
            host_port
        };
        if let (Some(hp), Some(proto)) = (bound, protocol)
            && !host_ports.insert((hp, proto))
        {
            let field = if host_port.is_some() {
                "host_port"
            } else {
                "port"
            };
            c.push(
                format!("{path}.{field}"),
                format!("{hp} is used by an earlier port"),
            );
            ok = false;
        }
        match (name, port, protocol) {
            (Some(name), Some(container_port), Some(protocol)) => out.push(PortSpec {
                name,
                container_port,
                host_port,
                protocol,
            }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

fn port_number(c: &mut Collector, path: &str, v: i64) -> Option<u16> {
    match u16::try_from(v) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            c.push(path, format!("must be between 1 and 65535, got {v}"));
            None
        }
    }
}

fn env(
    c: &mut Collector,
    doc: Option<&BTreeMap<String, String>>,
) -> Option<BTreeMap<String, String>> {
    let mut ok = true;
    for key in doc.into_iter().flat_map(|m| m.keys()) {
        if let Err(reason) = check_env_name(key) {
            c.push(format!("env.{key}"), reason);
            ok = false;
        }
    }
    ok.then(|| doc.cloned().unwrap_or_default())
}

fn check_env_name(key: &str) -> Result<(), String> {
    let mut chars = key.chars();
    let valid = chars
        .next()
        .is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
        && chars.all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
    if !valid {
        return Err(format!(
            "must be a variable name (letters, digits, '_', not starting with a digit), got {key:?}"
        ));
    }
    if key.starts_with("STARLING_") {
        return Err(format!(
            "{key:?} is reserved: STARLING_* variables are set by the agent"
        ));
    }
    Ok(())
}

/// Also checks that no two of them use the same directory, and that a secret's variable is
/// not also set in `[env]` or by another secret: either would leave the workload with one
/// value and no way to tell which. Processes have no private filesystem, so `path` is for
/// containers only.
fn configs_and_secrets(
    c: &mut Collector,
    doc: &SpecDoc,
    is_process: bool,
) -> (Option<Vec<ConfigRef>>, Option<Vec<SecretRef>>) {
    let mut files = BTreeSet::new();
    let mut names = BTreeSet::new();
    let mut configs = Some(Vec::new());
    for (i, cfg) in doc.configs.iter().flatten().enumerate() {
        let prefix = format!("configs[{i}]");
        let name = object_name(c, &format!("{prefix}.name"), cfg.name.as_ref())
            .filter(|n| unique_ref(c, &prefix, "config", n, &mut names));
        let path = ref_path(c, &prefix, cfg.path.as_ref(), is_process, &mut files);
        let reload = reload(
            c,
            &prefix,
            cfg.reload.as_deref(),
            cfg.reload_signal.as_deref(),
        );
        match (name, path, reload, configs.as_mut()) {
            (Some(name), Some(path), Some(reload), Some(list)) => {
                list.push(ConfigRef { name, path, reload })
            }
            _ => configs = None,
        }
    }
    let mut vars = BTreeSet::new();
    let mut secrets = Some(Vec::new());
    for (i, s) in doc.secrets.iter().flatten().enumerate() {
        let prefix = format!("secrets[{i}]");
        let name = object_name(c, &format!("{prefix}.name"), s.name.as_ref())
            .filter(|n| unique_ref(c, &prefix, "secret", n, &mut names));
        let path = ref_path(c, &prefix, s.path.as_ref(), is_process, &mut files);
        let reload = reload(c, &prefix, s.reload.as_deref(), s.reload_signal.as_deref());
        let env_ok = match &s.env {
            Some(e) => {
                let reason = match check_env_name(e) {
                    Err(reason) => Some(reason),
                    Ok(()) if doc.env.as_ref().is_some_and(|m| m.contains_key(e)) => Some(format!(
                        "{e:?} is also set in [env]; a variable can take only one value"
                    )),
                    Ok(()) if !vars.insert(e.as_str()) => {
                        Some(format!("{e:?} is used by an earlier secret"))
                    }
                    Ok(()) if matches!(reload, Some(Reload::File(_))) => Some(
                        "a variable cannot change inside a running process: with reload = \"file\" the secret arrives as files only".into(),
                    ),
                    Ok(()) => None,
                };
                reason.map(|r| c.push(format!("{prefix}.env"), r)).is_none()
            }
            None => true,
        };
        let key_ok = match (&s.key, &s.env) {
            (Some(_), None) => {
                c.push(
                    format!("{prefix}.key"),
                    "picks the entry `env` receives: set `env` too",
                );
                false
            }
            (Some(k), Some(_)) => match crate::objects::check_entry_name(k) {
                Err(e) => {
                    c.push(format!("{prefix}.key"), e);
                    false
                }
                Ok(()) => true,
            },
            (None, _) => true,
        };
        match (name, path, reload, secrets.as_mut()) {
            (Some(name), Some(path), Some(reload), Some(list)) if env_ok && key_ok => {
                list.push(SecretRef {
                    name,
                    env: s.env.clone(),
                    key: s.key.clone(),
                    path,
                    reload,
                })
            }
            _ => secrets = None,
        }
    }
    (configs, secrets)
}

/// A workload references each object once (two references would deliver one object twice).
fn unique_ref(
    c: &mut Collector,
    prefix: &str,
    kind: &str,
    name: &str,
    seen: &mut BTreeSet<String>,
) -> bool {
    if seen.insert(format!("{kind}/{name}")) {
        return true;
    }
    c.push(
        format!("{prefix}.name"),
        format!("{kind} {name:?} is referenced twice"),
    );
    false
}

/// `Some(None)`: no path (the default directory); `None`: an error already recorded.
fn ref_path<'a>(
    c: &mut Collector,
    prefix: &str,
    path: Option<&'a String>,
    is_process: bool,
    files: &mut BTreeSet<&'a str>,
) -> Option<Option<String>> {
    let field = format!("{prefix}.path");
    if is_process && path.is_some() {
        c.push(
            field,
            "a process has no private filesystem: it reads $STARLING_SECRETS_DIR/NAME or $STARLING_CONFIGS_DIR/NAME; `path` is for containers",
        );
        return None;
    }
    abs_path(c, &field, path, false)
        .filter(|_| unique_file(c, &field, path.map(String::as_str), files))
}

fn reload(
    c: &mut Collector,
    prefix: &str,
    mode: Option<&str>,
    signal: Option<&str>,
) -> Option<Reload> {
    match (mode.unwrap_or("restart"), signal) {
        ("restart", None) => Some(Reload::Restart),
        ("restart", Some(_)) => {
            c.push(
                format!("{prefix}.reload_signal"),
                "applies to reload = \"file\" only",
            );
            None
        }
        ("file", signal) => match ReloadSignal::parse(signal.unwrap_or("SIGHUP")) {
            Ok(signal) => Some(Reload::File(signal)),
            Err(e) => {
                c.push(format!("{prefix}.reload_signal"), e);
                None
            }
        },
        (other, _) => {
            c.push(
                format!("{prefix}.reload"),
                format!("unknown mode {other:?}: use \"restart\" (a rolling update) or \"file\" (rewrite the files and signal)"),
            );
            None
        }
    }
}

/// Records `path` (an optional file a config or secret is written to), refusing a repeat.
fn unique_file<'a>(
    c: &mut Collector,
    field: &str,
    path: Option<&'a str>,
    files: &mut BTreeSet<&'a str>,
) -> bool {
    match path {
        Some(p) if !files.insert(p) => {
            c.push(
                field,
                format!("{p:?} is used by an earlier config or secret"),
            );
            false
        }
        _ => true,
    }
}

fn object_name(c: &mut Collector, path: &str, name: Option<&String>) -> Option<String> {
    match name {
        None => {
            c.push(path, "is required");
            None
        }
        Some(n) => c.take(
            path,
            WorkloadName::new(n.clone())
                .map(|_| n.clone())
                .map_err(|e| e.to_string()),
        ),
    }
}

/// `Some(None)` is an absent optional path; `None` is an error already recorded.
fn abs_path(
    c: &mut Collector,
    path: &str,
    value: Option<&String>,
    required: bool,
) -> Option<Option<String>> {
    match value {
        None if required => {
            c.push(path, "is required");
            None
        }
        None => Some(None),
        Some(p)
            if !p.starts_with('/') || p.contains('\0') || p.split('/').any(|seg| seg == "..") =>
        {
            c.push(
                path,
                format!("must be an absolute path without '..', got {p:?}"),
            );
            None
        }
        Some(p) => Some(Some(p.clone())),
    }
}

fn duration(
    c: &mut Collector,
    path: &str,
    text: Option<&QuantityText>,
    default_ms: u64,
    min_ms: u64,
) -> Option<u64> {
    let ms = match text {
        None => default_ms,
        Some(t) => c.take(path, parse_duration_ms(&t.0))?,
    };
    if ms < min_ms {
        c.push(
            path,
            format!(
                "must be at least {}, got {}",
                crate::quantity::format_duration_ms(min_ms),
                t_or(text, ms)
            ),
        );
        return None;
    }
    Some(ms)
}

fn t_or(text: Option<&QuantityText>, ms: u64) -> String {
    text.map(|t| t.0.clone())
        .unwrap_or_else(|| crate::quantity::format_duration_ms(ms))
}

/// `port_names` are the names declared in `[[ports]]`, valid or not, so a probe naming a port
/// that does not exist is reported even when another port has an error of its own.
fn health(c: &mut Collector, h: &HealthDoc, port_names: &[&str]) -> Result<HealthCheck, ()> {
    let set = [h.exec.is_some(), h.tcp.is_some(), h.http.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if set != 1 {
        c.push(
            "health",
            format!("set exactly one of exec, tcp, http (found {set})"),
        );
    }
    let port_known = |c: &mut Collector, path: &str, name: &str| {
        let known = port_names.contains(&name);
        if !known {
            c.push(path, format!("no port named {name:?} in [[ports]]"));
        }
        known
    };
    let probe = if let Some(cmd) = &h.exec {
        if cmd.is_empty() || cmd[0].trim().is_empty() {
            c.push("health.exec", "must name a program to run");
            None
        } else {
            Some(Probe::Exec {
                command: cmd.clone(),
            })
        }
    } else if let Some(port) = &h.tcp {
        port_known(c, "health.tcp", port).then(|| Probe::Tcp { port: port.clone() })
    } else if let Some(http) = &h.http {
        let port = http.port.clone();
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        match port {
            None => {
                c.push("health.http.port", "is required");
                None
            }
            Some(port) => {
                let known = port_known(c, "health.http.port", &port);
                let path_ok = path.starts_with('/') && !path.chars().any(char::is_whitespace);
                if !path_ok {
                    c.push(
                        "health.http.path",
                        format!("must start with '/' and hold no spaces, got {path:?}"),
                    );
                }
                (known && path_ok).then_some(Probe::Http { port, path })
            }
        }
    } else {
        None
    };
    let interval_ms = duration(c, "health.interval", h.interval.as_ref(), 10_000, 100);
    let timeout_ms = duration(c, "health.timeout", h.timeout.as_ref(), 2_000, 1);
    let initial_delay_ms = duration(c, "health.initial_delay", h.initial_delay.as_ref(), 0, 0);
    let failure_threshold = count_in(
        c,
        "health.failure_threshold",
        h.failure_threshold,
        3,
        1,
        100,
    );
    if let (Some(i), Some(t)) = (interval_ms, timeout_ms)
        && t > i
    {
        c.push(
            "health.timeout",
            format!(
                "must not exceed the interval ({}), got {}",
                t_or(h.interval.as_ref(), i),
                t_or(h.timeout.as_ref(), t)
            ),
        );
        return Err(());
    }
    Ok(HealthCheck {
        probe: probe.filter(|_| set == 1).ok_or(())?,
        interval_ms: interval_ms.ok_or(())?,
        timeout_ms: timeout_ms.ok_or(())?,
        failure_threshold: failure_threshold.ok_or(())?,
        initial_delay_ms: initial_delay_ms.ok_or(())?,
    })
}

fn restart(c: &mut Collector, doc: Option<&RestartDoc>) -> Option<RestartPolicy> {
    let d = RestartPolicy::DEFAULT;
    let Some(doc) = doc else { return Some(d) };
    let mode = match doc.policy.as_deref().unwrap_or("always") {
        "always" | "never" if doc.max_retries.is_some() => {
            c.push(
                "restart.max_retries",
                "only applies to policy = \"on-failure\"",
            );
            None
        }
        "always" => Some(RestartMode::Always),
        "never" => Some(RestartMode::Never),
        "on-failure" => count_in(c, "restart.max_retries", doc.max_retries, 5, 0, 1000)
            .map(|max_retries| RestartMode::OnFailure { max_retries }),
        other => {
            c.push(
                "restart.policy",
                format!("must be always, on-failure or never, got {other:?}"),
            );
            None
        }
    };
    let initial = duration(
        c,
        "restart.backoff_initial",
        doc.backoff_initial.as_ref(),
        d.backoff_initial_ms,
        10,
    );
    let max = duration(
        c,
        "restart.backoff_max",
        doc.backoff_max.as_ref(),
        d.backoff_max_ms,
        10,
    );
    let reset = duration(
        c,
        "restart.reset_after",
        doc.reset_after.as_ref(),
        d.reset_after_ms,
        1_000,
    );
    if let (Some(i), Some(m)) = (initial, max)
        && m < i
    {
        c.push(
            "restart.backoff_max",
            format!(
                "must be at least backoff_initial ({}), got {}",
                t_or(doc.backoff_initial.as_ref(), i),
                t_or(doc.backoff_max.as_ref(), m)
            ),
        );
        return None;
    }
    Some(RestartPolicy {
        mode: mode?,
        backoff_initial_ms: initial?,
        backoff_max_ms: max?,
        reset_after_ms: reset?,
    })
}

/// `side_by_side_forbidden`: why two instances of one replica cannot run at once on a node
/// (a singleton, or the name of a port with a fixed host port), which makes stop-first the
/// default and start-first an error.
fn update(
    c: &mut Collector,
    doc: Option<&UpdateDoc>,
    singleton: bool,
    fixed_port: Option<&str>,
) -> Option<UpdateStrategy> {
    let stop_first_only = singleton || fixed_port.is_some();
    let d = if stop_first_only {
        UpdateStrategy::STOP_FIRST
    } else {
        UpdateStrategy::DEFAULT
    };
    let Some(doc) = doc else { return Some(d) };
    let batch_size = count_in(
        c,
        "update.batch_size",
        doc.batch_size,
        d.batch_size.into(),
        1,
        REPLICAS_MAX.into(),
    );
    let order = match doc.order.as_deref() {
        None => Some(d.order),
        Some("start-first") => Some(UpdateOrder::StartFirst),
        Some("stop-first") => Some(UpdateOrder::StopFirst),
        Some(other) => {
            c.push(
                "update.order",
                format!("must be \"start-first\" or \"stop-first\", got {other:?}"),
            );
            None
        }
    };
    // An order given by hand brings its own budget default, so `order = "stop-first"` alone
    // is a valid spec.
    let (unavailable_default, surge_default) = match order {
        Some(UpdateOrder::StopFirst) if doc.order.is_some() => (1, 0),
        Some(UpdateOrder::StartFirst) if doc.order.is_some() => (0, 1),
        _ => (d.max_unavailable, d.max_surge),
    };
    let max_unavailable = count_in(
        c,
        "update.max_unavailable",
        doc.max_unavailable,
        unavailable_default.into(),
        0,
        REPLICAS_MAX.into(),
    );
    let max_surge = count_in(
        c,
        "update.max_surge",
        doc.max_surge,
        surge_default.into(),
        0,
        REPLICAS_MAX.into(),
    );
    let min_healthy_ms = duration(
        c,
        "update.min_healthy",
        doc.min_healthy.as_ref(),
        d.min_healthy_ms,
        0,
    );
    let health_deadline_ms = duration(
        c,
        "update.health_deadline",
        doc.health_deadline.as_ref(),
        d.health_deadline_ms,
        1_000,
    );
    match (order, max_unavailable, max_surge) {
        (Some(UpdateOrder::StartFirst), _, _) if stop_first_only => {
            let why = match fixed_port {
                Some(port) if !singleton => format!("port {port:?} has a fixed host_port, which two instances cannot both bind"),
                _ => "a singleton never runs two instances at once".to_owned(),
            };
            c.push("update.order", format!("start-first runs a replica's new instance beside its old one on the same node, but {why}: use order = \"stop-first\""));
        }
        (Some(UpdateOrder::StartFirst), _, Some(0)) => c.push(
            "update.max_surge",
            "must be at least 1 for order = \"start-first\" (the new instance runs beside the old one); or use order = \"stop-first\" with max_unavailable >= 1",
        ),
        (Some(UpdateOrder::StopFirst), Some(0), _) => c.push(
            "update.max_unavailable",
            "must be at least 1 for order = \"stop-first\" (a replica is down while it restarts); or use order = \"start-first\" with max_surge >= 1",
        ),
        _ => {}
    }
    let canary = match doc.strategy.as_deref().unwrap_or("rolling") {
        "rolling" => {
            if doc.canary.is_some() || doc.auto_promote_after.is_some() {
                c.push("update.canary", "is only for strategy = \"canary\"");
            }
            Some(None)
        }
        "canary" => {
            let count = match doc.canary {
                None => {
                    c.push("update.canary", "is required for strategy = \"canary\" (replicas on the new revision before it waits for a promote)");
                    None
                }
                some => count_in(c, "update.canary", some, 1, 1, REPLICAS_MAX.into()),
            };
            let after = match &doc.auto_promote_after {
                None => Some(None),
                Some(text) => {
                    duration(c, "update.auto_promote_after", Some(text), 0, 1_000).map(Some)
                }
            };
            match (count, after) {
                (Some(count), Some(auto_promote_after_ms)) => Some(Some(Canary {
                    count,
                    auto_promote_after_ms,
                })),
                _ => None,
            }
        }
        other => {
            c.push(
                "update.strategy",
                format!("must be \"rolling\" or \"canary\", got {other:?}"),
            );
            None
        }
    };
    Some(UpdateStrategy {
        batch_size: batch_size?,
        max_unavailable: max_unavailable?,
        max_surge: max_surge?,
        min_healthy_ms: min_healthy_ms?,
        health_deadline_ms: health_deadline_ms?,
        auto_rollback: doc.auto_rollback.unwrap_or(d.auto_rollback),
        order: order?,
        canary: canary?,
    })
}

fn scaling(c: &mut Collector, doc: &ScalingDoc) -> Result<ScalingPolicy, ()> {
    let min = match doc.min {
        None => {
            c.push("scaling.min", "is required");
            None
        }
        some => count_in(c, "scaling.min", some, 0, 0, REPLICAS_MAX.into()),
    };
    let max = match doc.max {
        None => {
            c.push("scaling.max", "is required");
            None
        }
        some => count_in(c, "scaling.max", some, 0, 1, REPLICAS_MAX.into()),
    };
    if let (Some(lo), Some(hi)) = (min, max)
        && lo > hi
    {
        c.push(
            "scaling.max",
            format!("must be at least scaling.min ({lo}), got {hi}"),
        );
        return Err(());
    }
    let metric = match doc.metric.as_deref().unwrap_or("cpu") {
        "cpu" => Some(ScalingMetric::Cpu),
        name if WorkloadName::new(name).is_ok() => Some(ScalingMetric::Custom(name.to_owned())),
        name => {
            c.push("scaling.metric", format!("must be \"cpu\" or a metric name (lowercase letters, digits, '-'), got {name:?}"));
            None
        }
    };
    let target = match doc.target {
        None => {
            c.push(
                "scaling.target",
                "is required (percent of the CPU request for cpu)",
            );
            None
        }
        some => count_in(c, "scaling.target", some, 0, 1, 1_000_000),
    };
    Ok(ScalingPolicy {
        min: min.ok_or(())?,
        max: max.ok_or(())?,
        metric: metric.ok_or(())?,
        target: target.ok_or(())?.into(),
    })
}
