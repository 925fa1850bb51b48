//! Random spec documents for the round-trip proptests in `spec.rs`.
//!
//! Documents are built as `SpecDoc` values, mostly valid: the runtime decides between image
//! and command, limits sit above requests, probes name declared ports, replicas sit within the
//! scaling bounds. One document in a few still breaks a rule (a bad name, a stray host port, a
//! timeout longer than its interval), so the "every error has a reason" property is exercised.

use proptest::prelude::*;
use proptest::sample::subsequence;
use starling_protocol::quantity::{QuantityText, format_duration_ms};
use starling_protocol::spec::{
    ConfigDoc, ConstraintsDoc, HealthDoc, HttpProbeDoc, PortDoc, ResourcesDoc, RestartDoc,
    ScalingDoc, SecretDoc, SpecDoc, UpdateDoc,
};

/// A duration written in one of the three ways operators do: `1500ms`, `90s`, `1m30s`.
pub fn duration_text(ms: u64, style: u8) -> QuantityText {
    let text = match style {
        0 => format!("{ms}ms"),
        1 => format_duration_ms(ms),
        _ => {
            let parts = [
                (ms / 3_600_000, "h"),
                (ms / 60_000 % 60, "m"),
                (ms / 1_000 % 60, "s"),
                (ms % 1_000, "ms"),
            ];
            let text: String = parts
                .iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, unit)| format!("{n}{unit}"))
                .collect();
            if text.is_empty() { "0s".into() } else { text }
        }
    };
    QuantityText(text)
}

fn duration(ms: std::ops::Range<u64>) -> impl Strategy<Value = QuantityText> {
    (ms, 0u8..3).prop_map(|(ms, style)| duration_text(ms, style))
}

fn cpu_text(millicores: u32, style: u8) -> QuantityText {
    QuantityText(match style {
        0 => format!("{millicores}m"),
        1 => format!("{}.{:03}", millicores / 1000, millicores % 1000),
        _ if millicores.is_multiple_of(1000) => format!("{}", millicores / 1000),
        _ => format!("{millicores}m"),
    })
}

/// `mebi` MiB in a binary spelling, or `mebi` MB in a decimal one.
fn memory_text(mebi: u64, style: u8) -> QuantityText {
    QuantityText(match style {
        0 => format!("{mebi}Mi"),
        1 => format!("{}Ki", mebi * 1024),
        2 => format!("{}", mebi << 20),
        3 => format!("{mebi}M"),
        _ => format!("{}k", mebi * 1000),
    })
}

/// Requests with limits at or above them (in the same spelling), each part optional.
fn resources() -> impl Strategy<Value = ResourcesDoc> {
    (
        (
            1u32..4_000,
            0u8..3,
            any::<bool>(),
            proptest::option::of(0u32..1_000),
        ),
        (
            5u64..4_096,
            0u8..5,
            any::<bool>(),
            proptest::option::of(0u64..512),
        ),
    )
        .prop_map(
            |((m, cpu_style, cpu_given, cpu_extra), (mi, mem_style, mem_given, mem_extra))| {
                ResourcesDoc {
                    cpu: cpu_given.then(|| cpu_text(m, cpu_style)),
                    cpu_limit: cpu_extra
                        .filter(|_| cpu_given)
                        .map(|extra| cpu_text(m + extra, cpu_style)),
                    memory: mem_given.then(|| memory_text(mi, mem_style)),
                    memory_limit: mem_extra
                        .filter(|_| mem_given)
                        .map(|extra| memory_text(mi + extra, mem_style)),
                }
            },
        )
}

fn constraints() -> impl Strategy<Value = ConstraintsDoc> {
    let key =
        prop_oneof![Just("zone"), Just("rack"), Just("site.example/role")].prop_map(str::to_owned);
    let arch = prop_oneof![
        Just("x86_64"),
        Just("amd64"),
        Just("aarch64"),
        Just("arm64"),
        Just("armv7"),
        Just("riscv64"),
    ]
    .prop_map(str::to_owned);
    (
        proptest::option::of(proptest::collection::btree_map(key, "[a-z0-9]{0,8}", 0..3)),
        proptest::option::of(proptest::collection::vec(arch, 0..3)),
    )
        .prop_map(|(labels, arch)| ConstraintsDoc { labels, arch })
}

/// Ports with distinct names; `host_port` is left for `spec_doc` to fit to the runtime.
fn ports() -> impl Strategy<Value = Vec<PortDoc>> {
    let names = subsequence(vec!["http", "admin", "metrics", "dns"], 0..=3);
    let numbers = proptest::collection::vec(
        (
            1i64..65_536,
            proptest::option::of(1i64..65_536),
            proptest::option::of(prop_oneof![Just("tcp"), Just("udp")]),
        ),
        3,
    );
    (names, numbers).prop_map(|(names, numbers)| {
        names
            .into_iter()
            .zip(numbers)
            .map(|(name, (port, host_port, protocol))| PortDoc {
                name: Some(name.to_owned()),
                port: Some(port),
                host_port,
                protocol: protocol.map(str::to_owned),
            })
            .collect()
    })
}

/// A probe names its port by index into the declared ports (`spec_doc` resolves it).
fn health() -> impl Strategy<Value = (HealthDoc, usize)> {
    let probe = prop_oneof![
        proptest::collection::vec("[a-z/-][a-z/ -]{0,5}", 1..3).prop_map(|cmd| (
            Some(cmd),
            None,
            None
        )),
        Just((None, Some(String::new()), None)),
        proptest::option::of("/[a-z0-9/?=&.-]{0,10}").prop_map(|path| {
            let http = HttpProbeDoc { port: None, path };
            (None, None, Some(http))
        }),
    ];
    (
        probe,
        0usize..4,
        proptest::option::of(duration(2_000..600_000)),
        // One timeout in a few exceeds a short interval.
        proptest::option::of(prop_oneof![9 => duration(1..2_000), 1 => duration(1..9_000_000)]),
        proptest::option::of(1i64..10),
        proptest::option::of(duration(0..60_000)),
    )
        .prop_map(
            |((exec, tcp, http), port, interval, timeout, threshold, delay)| {
                let doc = HealthDoc {
                    exec,
                    tcp,
                    http,
                    interval,
                    timeout,
                    failure_threshold: threshold,
                    initial_delay: delay,
                };
                (doc, port)
            },
        )
}

fn restart() -> impl Strategy<Value = RestartDoc> {
    let policy = prop_oneof![Just("always"), Just("on-failure"), Just("never")];
    (
        proptest::option::of(policy),
        proptest::option::of(0i64..20),
        proptest::option::of(duration(10..1_000)),
        proptest::option::of(duration(1_000..600_000)),
        proptest::option::of(duration(1_000..3_600_000)),
    )
        .prop_map(|(policy, retries, initial, max, reset)| RestartDoc {
            // Retries only where they belong.
            max_retries: retries.filter(|_| policy == Some("on-failure")),
            policy: policy.map(str::to_owned),
            backoff_initial: initial,
            backoff_max: max,
            reset_after: reset,
        })
}

fn update() -> impl Strategy<Value = UpdateDoc> {
    // Both budgets at least 1, so either order (the default depends on ports and singleton)
    // is valid.
    (
        proptest::option::of(1i64..5),
        proptest::option::of(1i64..3),
        proptest::option::of(1i64..3),
        proptest::option::of(duration(1_000..3_600_000)),
        proptest::option::of(any::<bool>()),
        proptest::option::of(duration(0..60_000)),
        proptest::option::of((1i64..4, proptest::option::of(duration(1_000..600_000)))),
    )
        .prop_map(
            |(batch, unavailable, surge, deadline, rollback, min_healthy, canary)| UpdateDoc {
                strategy: canary.as_ref().map(|_| "canary".to_owned()),
                batch_size: batch,
                max_unavailable: unavailable.or(Some(1)),
                max_surge: surge.or(Some(1)),
                min_healthy,
                health_deadline: deadline,
                auto_rollback: rollback,
                order: None,
                canary: canary.as_ref().map(|(count, _)| *count),
                auto_promote_after: canary.and_then(|(_, after)| after),
            },
        )
}

fn scaling() -> impl Strategy<Value = ScalingDoc> {
    let metric = prop_oneof![Just("cpu"), Just("queue-depth")].prop_map(str::to_owned);
    (0i64..4, 4i64..12, proptest::option::of(metric), 1i64..200).prop_map(
        |(min, max, metric, target)| ScalingDoc {
            min: Some(min),
            max: Some(max),
            metric,
            target: Some(target),
        },
    )
}

fn configs() -> impl Strategy<Value = Vec<ConfigDoc>> {
    let config =
        ("[a-z]{1,6}", "/etc/[a-z]{1,4}", any::<bool>()).prop_map(|(name, path, file)| ConfigDoc {
            name: Some(name),
            path: Some(path),
            reload: file.then(|| "file".into()),
            reload_signal: None,
        });
    proptest::collection::vec(config, 0..2)
}

/// Secrets delivered as a variable, a file or both.
fn secrets() -> impl Strategy<Value = Vec<SecretDoc>> {
    let secret = (
        "[a-z]{1,6}",
        "SECRET_[A-Z0-9]{1,4}",
        "/run/secrets/[a-z]{1,4}",
        0u8..3,
    )
        .prop_map(|(name, env, path, delivery)| SecretDoc {
            name: Some(name),
            env: (delivery != 1).then_some(env),
            key: None,
            path: (delivery != 0).then_some(path),
            reload: (delivery == 1).then(|| "file".into()),
            reload_signal: (delivery == 1).then(|| "SIGUSR1".into()),
        });
    proptest::collection::vec(secret, 0..3)
}

/// The top-level fields, before they are fitted together.
#[derive(Debug)]
struct Identity {
    name: String,
    runtime: &'static str,
    pull: Option<&'static str>,
    command: Option<String>,
    args: Vec<String>,
    replicas: Option<i64>,
    priority: Option<i64>,
    singleton: bool,
    placement: Option<&'static str>,
    partition: Option<&'static str>,
    /// Leave a rule broken that the fitting would otherwise repair.
    stray: bool,
}

fn identity() -> impl Strategy<Value = Identity> {
    (
        (
            prop_oneof![9 => "[a-z]([a-z0-9-]{0,10}[a-z0-9])?", 1 => "[A-Za-z0-9 _-]{0,6}"],
            prop_oneof![3 => Just("process"), 1 => Just("docker"), 1 => Just("podman")],
            proptest::option::of(prop_oneof![
                Just("never"),
                Just("if-not-present"),
                Just("always")
            ]),
            proptest::option::of("[a-z]{1,8}"),
            proptest::collection::vec("[ -~]{0,8}", 0..3),
        ),
        (
            proptest::option::of(0i64..30),
            proptest::option::of(-1000i64..=1000),
            prop_oneof![6 => Just(false), 1 => Just(true)],
            proptest::option::of(prop_oneof![Just("spread"), Just("bin-pack")]),
            proptest::option::of(prop_oneof![Just("consistency"), Just("availability")]),
            prop_oneof![19 => Just(false), 1 => Just(true)],
        ),
    )
        .prop_map(
            |(
                (name, runtime, pull, command, args),
                (replicas, priority, singleton, placement, partition, stray),
            )| Identity {
                name,
                runtime,
                pull,
                command,
                args,
                replicas,
                priority,
                singleton,
                placement,
                partition,
                stray,
            },
        )
}

/// Mostly valid documents (see the module comment).
pub fn spec_doc() -> impl Strategy<Value = SpecDoc> {
    let env =
        proptest::collection::btree_map("[A-Z_][A-Z0-9_]{0,6}", "[ -~\n\t\u{e9}]{0,10}", 0..3);
    let sections = (
        proptest::option::of(resources()),
        proptest::option::of(constraints()),
        ports(),
        proptest::option::of(env),
        configs(),
        secrets(),
        proptest::option::of(health()),
        proptest::option::of(restart()),
        proptest::option::of(update()),
        prop_oneof![3 => Just(None), 1 => scaling().prop_map(Some)],
    );
    (identity(), sections).prop_map(|(id, sections)| {
        let (
            resources,
            constraints,
            ports,
            env,
            configs,
            secrets,
            health,
            restart,
            update,
            scaling,
        ) = sections;
        fit(
            id,
            SpecDoc {
                resources,
                constraints,
                ports: Some(ports),
                env,
                configs: Some(configs),
                secrets: Some(secrets),
                restart,
                update,
                scaling,
                ..SpecDoc::default()
            },
            health,
        )
    })
}

/// Fits the parts together: the rules that span sections hold unless `id.stray` is set.
fn fit(id: Identity, mut doc: SpecDoc, health: Option<(HealthDoc, usize)>) -> SpecDoc {
    let is_process = id.runtime == "process";
    doc.name = Some(id.name);
    doc.runtime = Some(id.runtime.to_owned());
    doc.image = (!is_process).then(|| "registry.local/app:1.2".to_owned());
    doc.image_pull_policy = id.pull.map(str::to_owned);
    doc.command = match id.command {
        None if is_process => Some("run".into()),
        command => command,
    };
    doc.args = Some(id.args);
    doc.priority = id.priority;
    doc.singleton = Some(id.singleton);
    doc.placement = id.placement.map(str::to_owned);
    doc.partition = id.partition.map(str::to_owned);
    doc.replicas = id.replicas;
    if id.stray {
        doc.health = health.map(|(h, _)| h);
        return doc;
    }
    // Processes have no private filesystem (no `path`); each object is referenced once.
    let mut referenced = std::collections::BTreeSet::new();
    if let Some(configs) = doc.configs.as_mut() {
        configs.retain(|c| referenced.insert(format!("config/{:?}", c.name)));
        for c in configs.iter_mut().filter(|_| is_process) {
            c.path = None;
        }
    }
    if let Some(secrets) = doc.secrets.as_mut() {
        secrets.retain(|s| referenced.insert(format!("secret/{:?}", s.name)));
        for s in secrets.iter_mut().filter(|_| is_process) {
            s.path = None;
        }
    }
    let ports = doc.ports.get_or_insert_with(Vec::new);
    let mut bound = std::collections::BTreeSet::new();
    for p in ports.iter_mut() {
        let protocol = p.protocol.clone().unwrap_or_else(|| "tcp".into());
        if is_process {
            // A process binds its own port: a host port can only repeat it.
            p.host_port = p.host_port.and(p.port);
        }
        let binds = if is_process { p.port } else { p.host_port };
        if binds.is_some_and(|b| !bound.insert((b, protocol))) {
            p.host_port = None;
        }
    }
    if is_process {
        // Two ports on one number would make the process bind it twice.
        let mut seen = std::collections::BTreeSet::new();
        ports.retain(|p| seen.insert((p.port, p.protocol.clone().unwrap_or_else(|| "tcp".into()))));
    }
    let names: Vec<String> = ports.iter().filter_map(|p| p.name.clone()).collect();
    doc.health = health.map(|(mut h, index)| {
        let port = names.get(index % names.len().max(1)).cloned();
        if let Some(http) = h.http.as_mut() {
            http.port = port.or(Some("http".into()));
        } else if h.tcp.is_some() {
            h.tcp = port.or(Some("http".into()));
        }
        h
    });
    if id.singleton {
        doc.replicas = doc.replicas.map(|r| r.min(1));
        doc.scaling = None;
        // Lease settings vary with fields already drawn, so the strategy's shape stays put.
        doc.standbys = doc.priority.map(|p| p.rem_euclid(3));
        doc.lease_mode = (doc.partition.as_deref() == Some("availability")).then(|| "local".into());
        doc.lease_ttl = doc.replicas.map(|r| format!("{}s", 1 + r).as_str().into());
    }
    if let Some(s) = &doc.scaling {
        let (lo, hi) = (s.min.unwrap_or(0), s.max.unwrap_or(0));
        doc.replicas = Some(doc.replicas.unwrap_or(1).clamp(lo, hi));
    }
    doc
}
