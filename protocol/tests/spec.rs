//! Workload specs through the public API: the example specs, the broken example's complete
//! error list, unknown fields, JSON and TOML agreeing, defaults, the per-field rules, and random
//! specs surviving every form they take (canonical document, TOML text, JSON, postcard).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use starling_protocol::quantity::{Bytes, Millicores};
use starling_protocol::spec::{
    PartitionPolicy, PlacementStrategy, PortProtocol, Probe, PullPolicy, RestartMode,
    RestartPolicy, RuntimeKind, ScalingMetric, SpecDoc, UpdateStrategy, WorkloadSpec,
};

mod spec_gen;

use spec_gen::spec_doc;

// ---------------------------------------------------------------------------------------------
// Helpers

fn specs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/specs")
}

/// The good examples, `examples/specs/*.toml`, sorted by file name.
fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(specs_dir())
        .expect("examples/specs exists")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn example(file: &str) -> WorkloadSpec {
    let path = specs_dir().join(file);
    WorkloadSpec::from_toml(&read(&path)).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()))
}

fn valid(toml: &str) -> WorkloadSpec {
    WorkloadSpec::from_toml(toml).unwrap_or_else(|e| panic!("expected a valid spec:\n{toml}\n{e}"))
}

/// Every error of an invalid spec, as printed (`path: reason`).
fn errors(toml: &str) -> Vec<String> {
    match WorkloadSpec::from_toml(toml) {
        Ok(spec) => panic!("expected errors, got a valid spec: {spec:?}"),
        Err(e) => e.errors().iter().map(ToString::to_string).collect(),
    }
}

fn paths(toml: &str) -> BTreeSet<String> {
    match WorkloadSpec::from_toml(toml) {
        Ok(spec) => panic!("expected errors, got a valid spec: {spec:?}"),
        Err(e) => e.errors().iter().map(|e| e.path.clone()).collect(),
    }
}

/// A minimal valid process spec followed by `rest`.
fn process(rest: &str) -> String {
    format!("name = \"app\"\ncommand = \"run\"\n{rest}")
}

/// A minimal valid docker spec followed by `rest`.
fn docker(rest: &str) -> String {
    format!("name = \"app\"\nruntime = \"docker\"\nimage = \"busybox:1.36\"\n{rest}")
}

// ---------------------------------------------------------------------------------------------
// The examples

#[test]
fn every_example_spec_validates_and_is_canonical() {
    let files = example_files();
    let names: BTreeSet<String> = files
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect();
    for expected in [
        "web.toml",
        "worker.toml",
        "singleton.toml",
        "process.toml",
        "container.toml",
    ] {
        assert!(names.contains(expected), "missing {expected} in {names:?}");
    }
    for path in &files {
        let text = read(path);
        assert!(
            text.starts_with("# "),
            "{} starts with a comment saying what it shows",
            path.display()
        );
        let spec =
            WorkloadSpec::from_toml(&text).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        assert_eq!(spec.check(), Ok(()), "{}", path.display());
        assert_eq!(
            WorkloadSpec::from_toml(&spec.to_toml()).as_ref(),
            Ok(&spec),
            "{}",
            path.display()
        );
    }
}

#[test]
fn example_specs_fit_the_demo_fleet() {
    // The demo fleet: zones a/b/c, x86_64 and aarch64 nodes, the process runtime everywhere
    // and docker on some nodes. Every good example must be placeable on it.
    let zones = ["a", "b", "c"];
    let fleet_arch = ["x86_64", "aarch64"];
    for path in example_files() {
        let spec = WorkloadSpec::from_toml(&read(&path)).expect("validated above");
        let at = path.display();
        for (key, value) in &spec.constraints.labels {
            assert!(
                key == "zone" && zones.contains(&value.as_str()),
                "{at}: label {key}={value}"
            );
        }
        assert!(
            spec.constraints.arch.is_empty()
                || fleet_arch
                    .iter()
                    .any(|a| spec.constraints.arch.contains(*a)),
            "{at}: arch {:?}",
            spec.constraints.arch
        );
        assert!(
            matches!(spec.runtime, RuntimeKind::Process | RuntimeKind::Docker),
            "{at}: runtime {:?}",
            spec.runtime
        );
    }
}

#[test]
fn the_examples_show_what_their_comments_say() {
    let web = example("web.toml");
    assert_eq!(
        (web.runtime, web.command.as_deref(), web.replicas),
        (RuntimeKind::Process, Some("python3"), 3)
    );
    assert_eq!(web.args, ["-m", "http.server", "${port.http}"]);
    assert_eq!(
        (web.ports[0].name.as_str(), web.ports[0].host_port),
        ("http", None)
    );
    assert!(web.host_ports().is_empty(), "replicas can share a node");
    assert_eq!(
        web.health.as_ref().map(|h| &h.probe),
        Some(&Probe::Http {
            port: "http".into(),
            path: "/".into()
        })
    );
    let scaling = web.scaling.expect("web scales");
    assert_eq!(
        (scaling.min, scaling.max, scaling.metric, scaling.target),
        (2, 6, ScalingMetric::Cpu, 70)
    );

    let worker = example("worker.toml");
    assert_eq!(worker.replicas, 4);
    assert!(matches!(worker.restart.mode, RestartMode::OnFailure { .. }));
    assert_eq!(
        worker.constraints.arch,
        BTreeSet::from(["aarch64".to_string(), "x86_64".to_string()])
    );

    let singleton = example("singleton.toml");
    assert!(singleton.singleton);
    assert_eq!(singleton.replicas, 1);
    assert!(matches!(
        singleton.health.map(|h| h.probe),
        Some(Probe::Exec { .. })
    ));

    let sleeper = example("process.toml");
    assert_eq!(
        (sleeper.command.as_deref(), sleeper.args.as_slice()),
        (Some("sleep"), ["3600".to_string()].as_slice())
    );

    let container = example("container.toml");
    assert_eq!(container.runtime, RuntimeKind::Docker);
    assert!(container.image.is_some());
    assert!(!container.ports.is_empty() && !container.env.is_empty());
    assert!(!container.secrets.is_empty());
}

// ---------------------------------------------------------------------------------------------
// The broken example

#[test]
fn broken_spec_reports_every_error_with_its_path() {
    let text = read(&specs_dir().join("invalid/broken.toml"));
    let errors = match WorkloadSpec::from_toml(&text) {
        Ok(spec) => panic!("broken.toml validated: {spec:?}"),
        Err(e) => e.errors().to_vec(),
    };
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    let expected = BTreeSet::from([
        "colour",
        "name",
        "replicas",
        "resources.cpu",
        "resources.memory",
        "ports[0].port",
        "env.STARLING_X",
        "secrets[0].key",
        "health.http.port",
        "restart.max_retries",
        "update.max_surge",
        "scaling.max",
    ]);
    assert_eq!(paths.iter().copied().collect::<BTreeSet<_>>(), expected);
    assert_eq!(
        paths.len(),
        expected.len(),
        "each mistake is reported once: {paths:?}"
    );
    let printed: Vec<String> = errors.iter().map(ToString::to_string).collect();
    for message in [
        "colour: unknown field (check its spelling and its section)",
        "name: may hold only lowercase letters, digits and '-', found 'W' in \"Web Server\"",
        "replicas: must be between 0 and 10000, got -1",
        "resources.cpu: must be cores (0.5, 2) or millicores (250m), got \"lots\"",
        "resources.memory: must be bytes with an optional unit such as 256Mi, 1Gi or 512M, got \"12XB\"",
        "ports[0].port: must be between 1 and 65535, got 70000",
        "env.STARLING_X: \"STARLING_X\" is reserved: STARLING_* variables are set by the agent",
        "secrets[0].key: picks the entry `env` receives: set `env` too",
        "health.http.port: no port named \"admin\" in [[ports]]",
        "restart.max_retries: only applies to policy = \"on-failure\"",
        "update.max_surge: must be at least 1 for order = \"start-first\" (the new instance runs beside the old one); or use order = \"stop-first\" with max_unavailable >= 1",
        "scaling.max: must be at least scaling.min (5), got 2",
    ] {
        assert!(
            printed.iter().any(|p| p == message),
            "missing {message:?} in:\n{}",
            printed.join("\n")
        );
    }
}

#[test]
fn broken_spec_errors_print_one_per_line() {
    let text = read(&specs_dir().join("invalid/broken.toml"));
    let e = WorkloadSpec::from_toml(&text).expect_err("broken");
    let shown = e.to_string();
    assert_eq!(shown.lines().count(), e.errors().len());
    assert!(shown.lines().all(|l| l.contains(": ")), "{shown}");
}

// ---------------------------------------------------------------------------------------------
// Unknown fields

#[test]
fn unknown_fields_are_reported_with_their_path_at_every_level() {
    let toml = process(
        "replica = 3\nreplicas = -2\n\
         [resources]\ncpus = \"1\"\n\
         [constraints]\nlables = { zone = \"a\" }\n\
         [[ports]]\nname = \"http\"\nport = 80\n\
         [[ports]]\nname = \"dns\"\nport = 53\nprotocl = \"udp\"\n\
         [health]\nintervall = \"5s\"\n[health.http]\nport = \"http\"\npth = \"/\"\n\
         [restart]\npolcy = \"never\"\n\
         [healthcheck]\ntcp = \"http\"\n",
    );
    let e = errors(&toml);
    for path in [
        "replica",
        "resources.cpus",
        "constraints.lables",
        "ports[1].protocl",
        "health.intervall",
        "health.http.pth",
        "restart.polcy",
        "healthcheck",
    ] {
        let message = format!("{path}: unknown field (check its spelling and its section)");
        assert!(e.contains(&message), "missing {message:?} in {e:#?}");
    }
    assert!(
        e.contains(&"replicas: must be between 0 and 10000, got -2".to_string()),
        "unknown fields do not hide other errors: {e:#?}"
    );
    assert_eq!(e.len(), 9, "{e:#?}");
}

#[test]
fn unknown_fields_in_json_use_the_same_paths() {
    let json = r#"{"name":"app","command":"run","colour":"blue",
        "health":{"exec":["true"],"intervall":"5s"},
        "ports":[{"name":"a","port":1},{"name":"b","port":2,"nme":"c"}]}"#;
    let e = WorkloadSpec::from_json(json).expect_err("unknown fields");
    let paths: BTreeSet<&str> = e.errors().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        BTreeSet::from(["colour", "health.intervall", "ports[1].nme"])
    );
}

// ---------------------------------------------------------------------------------------------
// JSON and TOML

#[test]
fn json_parses_to_the_same_spec_as_equivalent_toml() {
    let toml = process(
        "args = [\"-p\", \"80\"]\nreplicas = 2\n\
         [resources]\ncpu = \"0.5\"\nmemory = \"128Mi\"\n\
         [constraints]\nlabels = { zone = \"b\" }\narch = [\"amd64\"]\n\
         [[ports]]\nname = \"http\"\nport = 80\n\
         [health]\nhttp = { port = \"http\", path = \"/ok\" }\ninterval = \"5s\"\n\
         [restart]\npolicy = \"on-failure\"\nmax_retries = 2\n",
    );
    // Other spellings of the same quantities: 500m is 0.5 cores, 134217728 bytes is 128Mi.
    let json = r#"{"name":"app","command":"run","args":["-p","80"],"replicas":2,
        "resources":{"cpu":"500m","memory":134217728},
        "constraints":{"labels":{"zone":"b"},"arch":["x86_64"]},
        "ports":[{"name":"http","port":80}],
        "health":{"http":{"port":"http","path":"/ok"},"interval":"5000ms"},
        "restart":{"policy":"on-failure","max_retries":2}}"#;
    assert_eq!(WorkloadSpec::from_json(json).expect("json"), valid(&toml));
}

#[test]
fn every_example_reads_the_same_from_json() {
    for path in example_files() {
        let text = read(&path);
        let value: toml::Value = toml::from_str(&text).expect("toml");
        let json = serde_json::to_string(&value).expect("json");
        assert_eq!(
            WorkloadSpec::from_json(&json),
            WorkloadSpec::from_toml(&text),
            "{}",
            path.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Syntax and type errors

#[test]
fn a_toml_syntax_error_is_one_error_naming_the_line() {
    let e = WorkloadSpec::from_toml("name = \"web\"\ncommand = \nreplicas = -1\n")
        .expect_err("syntax error");
    assert_eq!(e.errors().len(), 1, "{e}");
    let error = &e.errors()[0];
    assert_eq!(error.path, "");
    assert!(error.reason.starts_with("not valid TOML:"), "{error}");
    assert!(error.reason.contains("line 2"), "{error}");
}

#[test]
fn a_type_error_names_the_line_in_plain_words() {
    let e = errors(&process("replicas = \"three\""));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("line 3"), "{e:?}");
    assert!(e[0].contains("expected a whole number"), "{e:?}");
    assert!(!e[0].contains("i64"), "no Rust type names: {e:?}");
    let e = errors(&process("health = \"tcp\""));
    assert!(e[0].contains("expected a table"), "{e:?}");
    assert!(!e[0].contains("HealthDoc"), "no Rust type names: {e:?}");
    let e = WorkloadSpec::from_json(r#"{"name":"a","command":"x","health":3}"#)
        .expect_err("type error");
    assert!(
        e.to_string().contains("expected an object at line 1"),
        "{e}"
    );
}

#[test]
fn a_json_syntax_error_is_one_error_naming_the_line() {
    let e = WorkloadSpec::from_json("{\"name\": \"a\",\n\"command\": }").expect_err("syntax");
    assert_eq!(e.errors().len(), 1);
    assert!(e.to_string().starts_with("not valid JSON:"), "{e}");
    assert!(e.to_string().contains("line 2"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Defaults

#[test]
fn a_minimal_process_spec_gets_the_documented_defaults() {
    let spec = valid("name = \"s\"\ncommand = \"sleep\"");
    assert_eq!(spec.runtime, RuntimeKind::Process);
    assert_eq!(spec.replicas, 1);
    assert_eq!(spec.priority, 0);
    assert_eq!(spec.resources.cpu_request, Millicores(100));
    assert_eq!(spec.resources.memory_request, Bytes(64 << 20));
    assert_eq!(
        (spec.resources.cpu_limit, spec.resources.memory_limit),
        (None, None)
    );
    assert_eq!(spec.restart.mode, RestartMode::Always);
    assert_eq!(
        (spec.restart.backoff_initial_ms, spec.restart.backoff_max_ms),
        (100, 30_000)
    );
    assert_eq!(spec.restart, RestartPolicy::DEFAULT);
    assert_eq!(spec.update, UpdateStrategy::DEFAULT);
    assert_eq!(spec.image_pull_policy, PullPolicy::IfNotPresent);
    assert_eq!(spec.placement, PlacementStrategy::Spread);
    assert_eq!(spec.partition, PartitionPolicy::Consistency);
    assert!(spec.health.is_none() && spec.scaling.is_none() && !spec.singleton);
    assert!(spec.ports.is_empty() && spec.env.is_empty() && spec.args.is_empty());
}

#[test]
fn health_and_on_failure_defaults_fill_what_is_left_out() {
    let spec = valid(&process(
        "[[ports]]\nname = \"http\"\nport = 80\n[health]\nhttp = { port = \"http\" }\n\
         [restart]\npolicy = \"on-failure\"\n",
    ));
    let health = spec.health.expect("health");
    assert_eq!(
        health.probe,
        Probe::Http {
            port: "http".into(),
            path: "/".into()
        }
    );
    assert_eq!(
        (
            health.interval_ms,
            health.timeout_ms,
            health.failure_threshold,
            health.initial_delay_ms
        ),
        (10_000, 2_000, 3, 0)
    );
    assert_eq!(spec.restart.mode, RestartMode::OnFailure { max_retries: 5 });
}

// ---------------------------------------------------------------------------------------------
// Per-field rules

#[test]
fn docker_without_an_image_is_refused() {
    assert_eq!(
        errors("name = \"a\"\nruntime = \"docker\""),
        ["image: is required for runtime docker"]
    );
    assert_eq!(
        errors("name = \"a\"\nruntime = \"podman\"\nimage = \"bad image\""),
        ["image: must be an image reference without spaces, got \"bad image\""]
    );
}

#[test]
fn a_process_with_an_image_is_refused() {
    assert_eq!(
        errors(&process("image = \"busybox\"")),
        [
            "image: only container runtimes (docker, podman) use an image; the process runtime runs `command`"
        ]
    );
}

#[test]
fn args_without_a_command_are_refused_for_a_process_only() {
    assert_eq!(
        errors("name = \"a\"\nargs = [\"1\"]"),
        [
            "command: is required for the process runtime",
            "args: needs a command to pass them to"
        ]
    );
    // A container's args go to the image's own entrypoint.
    let spec = valid(&docker("args = [\"-v\"]"));
    assert_eq!((spec.command, spec.args), (None, vec!["-v".to_string()]));
    assert_eq!(
        errors(&docker("command = \"  \"")),
        ["command: must not be empty"]
    );
}

#[test]
fn an_unknown_runtime_is_refused_with_the_choices() {
    assert_eq!(
        errors("name = \"a\"\nruntime = \"lxc\""),
        ["runtime: must be one of process, docker, podman, got \"lxc\""]
    );
}

#[test]
fn a_singleton_runs_at_most_one_replica_and_does_not_scale() {
    assert_eq!(
        errors(&process("singleton = true\nreplicas = 3")),
        ["replicas: a singleton runs one active instance; set replicas = 1 (or 0 to stop it)"]
    );
    assert_eq!(
        valid(&process("singleton = true\nreplicas = 0")).replicas,
        0
    );
    assert_eq!(valid(&process("singleton = true")).replicas_to_place(), 1);
    assert_eq!(
        paths(&process(
            "singleton = true\n[scaling]\nmin = 1\nmax = 1\ntarget = 50"
        )),
        BTreeSet::from(["scaling".to_string()])
    );
}

#[test]
fn lease_settings_belong_to_singletons_and_are_checked() {
    let s = valid(&process(
        "singleton = true\nstandbys = 2\nlease_mode = \"local\"\nlease_ttl = \"2s\"",
    ));
    assert_eq!(s.lease.standbys, 2);
    assert_eq!(s.lease.ttl_ms, 2_000);
    assert_eq!(
        s.replicas_to_place(),
        3,
        "the active instance and two standbys"
    );
    assert_eq!(
        paths(&process("standbys = 1\nlease_ttl = \"2s\"")),
        BTreeSet::from(["standbys".to_string(), "lease_ttl".to_string()])
    );
    assert_eq!(
        paths(&process(
            "singleton = true\nstandbys = 9\nlease_mode = \"majority\"\nlease_ttl = \"10ms\""
        )),
        BTreeSet::from([
            "standbys".to_string(),
            "lease_mode".to_string(),
            "lease_ttl".to_string()
        ])
    );
    let round = valid(&process(
        "singleton = true\nstandbys = 1\nlease_ttl = \"3s\"",
    ));
    let again = WorkloadSpec::from_toml(&round.to_toml()).expect("round trip");
    assert_eq!(again, round);
}

#[test]
fn health_sets_exactly_one_probe() {
    let none = process("[health]\ninterval = \"5s\"");
    assert_eq!(
        errors(&none),
        ["health: set exactly one of exec, tcp, http (found 0)"]
    );
    let two = process("[[ports]]\nname = \"p\"\nport = 1\n[health]\nexec = [\"t\"]\ntcp = \"p\"");
    assert_eq!(
        errors(&two),
        ["health: set exactly one of exec, tcp, http (found 2)"]
    );
    let three = process(
        "[[ports]]\nname = \"p\"\nport = 1\n[health]\nexec = [\"t\"]\ntcp = \"p\"\nhttp = { port = \"p\" }",
    );
    assert_eq!(
        errors(&three),
        ["health: set exactly one of exec, tcp, http (found 3)"]
    );
    assert_eq!(
        errors(&process("[health]\nexec = []")),
        ["health.exec: must name a program to run"]
    );
}

#[test]
fn health_timeout_must_not_exceed_the_interval() {
    assert_eq!(
        errors(&process(
            "[health]\nexec = [\"t\"]\ninterval = \"1s\"\ntimeout = \"2s\""
        )),
        ["health.timeout: must not exceed the interval (1s), got 2s"]
    );
    // The default timeout (2s) against a short interval names the default.
    assert_eq!(
        errors(&process("[health]\nexec = [\"t\"]\ninterval = \"500ms\"")),
        ["health.timeout: must not exceed the interval (500ms), got 2s"]
    );
    assert_eq!(
        errors(&process("[health]\nexec = [\"t\"]\ninterval = \"50ms\"")),
        ["health.interval: must be at least 100ms, got 50ms"]
    );
}

#[test]
fn health_probes_name_a_declared_port() {
    assert_eq!(
        errors(&process("[health]\ntcp = \"db\"")),
        ["health.tcp: no port named \"db\" in [[ports]]"]
    );
    assert_eq!(
        errors(&process(
            "[[ports]]\nname = \"h\"\nport = 80\n[health]\nhttp = { port = \"h\", path = \"ok\" }"
        )),
        ["health.http.path: must start with '/' and hold no spaces, got \"ok\""]
    );
}

#[test]
fn secret_and_config_paths_must_be_absolute() {
    assert_eq!(
        errors(&docker("[[secrets]]\nname = \"db\"\npath = \"run/db\"")),
        ["secrets[0].path: must be an absolute path without '..', got \"run/db\""]
    );
    assert_eq!(
        errors(&docker(
            "[[secrets]]\nname = \"db\"\npath = \"/run/../etc/shadow\""
        )),
        ["secrets[0].path: must be an absolute path without '..', got \"/run/../etc/shadow\""]
    );
    // Without a path, a container gets the default directory /run/configs/NAME.
    let spec = valid(&docker("[[configs]]\nname = \"cfg\""));
    assert_eq!(spec.configs[0].path, None);
    let spec = valid(&docker(
        "[[secrets]]\nname = \"db\"\nenv = \"DB_PASSWORD\"\npath = \"/run/secrets/db\"",
    ));
    assert_eq!(spec.secrets[0].path.as_deref(), Some("/run/secrets/db"));
}

#[test]
fn a_secret_variable_is_set_in_one_place_only() {
    assert_eq!(
        errors(&process(
            "[env]\nDB = \"plain\"\n[[secrets]]\nname = \"db\"\nenv = \"DB\""
        )),
        ["secrets[0].env: \"DB\" is also set in [env]; a variable can take only one value"]
    );
    assert_eq!(
        errors(&process(
            "[[secrets]]\nname = \"a\"\nenv = \"DB\"\n[[secrets]]\nname = \"b\"\nenv = \"DB\""
        )),
        ["secrets[1].env: \"DB\" is used by an earlier secret"]
    );
    assert_eq!(
        errors(&process(
            "[[secrets]]\nname = \"a\"\nenv = \"STARLING_TOKEN\""
        )),
        [
            "secrets[0].env: \"STARLING_TOKEN\" is reserved: STARLING_* variables are set by the agent"
        ]
    );
}

#[test]
fn no_two_configs_or_secrets_write_one_file() {
    assert_eq!(
        errors(&docker(
            "[[configs]]\nname = \"a\"\npath = \"/etc/app.conf\"\n\
             [[secrets]]\nname = \"b\"\npath = \"/etc/app.conf\""
        )),
        ["secrets[0].path: \"/etc/app.conf\" is used by an earlier config or secret"]
    );
}

#[test]
fn secret_references_say_where_and_how_they_reload() {
    // A process has no private filesystem: its files are under $STARLING_SECRETS_DIR.
    let e = errors(&process(
        "[[secrets]]\nname = \"db\"\npath = \"/run/secrets/db\"",
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("secrets[0].path: a process has no private filesystem"),
        "{e:?}"
    );
    // A variable cannot follow a file reload.
    let e = errors(&process(
        "[[secrets]]\nname = \"db\"\nenv = \"DB\"\nreload = \"file\"",
    ));
    assert!(
        e[0].starts_with("secrets[0].env: a variable cannot change"),
        "{e:?}"
    );
    assert_eq!(
        errors(&process(
            "[[configs]]\nname = \"app\"\nreload = \"sometimes\""
        )),
        [
            "configs[0].reload: unknown mode \"sometimes\": use \"restart\" (a rolling update) or \"file\" (rewrite the files and signal)"
        ]
    );
    assert_eq!(
        errors(&process(
            "[[configs]]\nname = \"app\"\nreload = \"file\"\nreload_signal = \"SIGKILL\""
        )),
        [
            "configs[0].reload_signal: unknown signal \"SIGKILL\": use SIGHUP, SIGUSR1, SIGUSR2 or \"none\""
        ]
    );
    assert_eq!(
        errors(&process(
            "[[secrets]]\nname = \"a\"\n[[secrets]]\nname = \"a\""
        )),
        ["secrets[1].name: secret \"a\" is referenced twice"]
    );
    let spec = valid(&process(
        "[[secrets]]\nname = \"db\"\nenv = \"DB\"\nkey = \"password\"\n[[configs]]\nname = \"app\"\nreload = \"file\"",
    ));
    assert_eq!(spec.secrets[0].key.as_deref(), Some("password"));
    assert_eq!(
        spec.configs[0].reload,
        starling_protocol::spec::Reload::File(starling_protocol::spec::ReloadSignal::Hup)
    );
}

#[test]
fn arch_aliases_are_stored_by_their_canonical_name() {
    let spec = valid(&process(
        "[constraints]\narch = [\"amd64\", \"arm64\", \"armv7\", \"i386\", \"x86_64\"]",
    ));
    let arch: Vec<&str> = spec.constraints.arch.iter().map(String::as_str).collect();
    assert_eq!(arch, ["aarch64", "arm", "x86", "x86_64"]);
    assert_eq!(
        errors(&process("[constraints]\narch = [\"x86_64\", \"sparc\"]")),
        [
            "constraints.arch[1]: unknown architecture \"sparc\"; use x86_64, aarch64, arm, riscv64 or x86"
        ]
    );
}

#[test]
fn constraint_labels_are_checked_key_and_value() {
    assert_eq!(
        paths(&process(
            "[constraints]\nlabels = { \"bad key\" = \"a\", zone = \"x y\" }"
        )),
        BTreeSet::from([
            "constraints.labels.bad key".to_string(),
            "constraints.labels.zone".to_string()
        ])
    );
}

#[test]
fn port_names_must_be_unique() {
    assert_eq!(
        errors(&process(
            "[[ports]]\nname = \"h\"\nport = 80\n[[ports]]\nname = \"h\"\nport = 81"
        )),
        ["ports[1].name: \"h\" is used by an earlier port"]
    );
    assert_eq!(
        errors(&process("[[ports]]\nname = \"Web\"\nport = 80")),
        ["ports[0].name: may hold only lowercase letters, digits and '-', found 'W' in \"Web\""]
    );
}

#[test]
fn host_ports_must_be_unique_per_protocol() {
    assert_eq!(
        errors(&docker(
            "[[ports]]\nname = \"h\"\nport = 80\nhost_port = 8080\n\
             [[ports]]\nname = \"g\"\nport = 81\nhost_port = 8080"
        )),
        ["ports[1].host_port: 8080 is used by an earlier port"]
    );
    let spec = valid(&docker(
        "[[ports]]\nname = \"h\"\nport = 53\nhost_port = 5353\n\
         [[ports]]\nname = \"u\"\nport = 53\nhost_port = 5353\nprotocol = \"udp\"",
    ));
    assert_eq!(
        spec.host_ports(),
        [(5353, PortProtocol::Tcp), (5353, PortProtocol::Udp)]
    );
}

#[test]
fn a_process_binds_its_own_port_so_host_port_can_only_repeat_it() {
    assert_eq!(
        errors(&process(
            "[[ports]]\nname = \"h\"\nport = 80\nhost_port = 8080"
        )),
        [
            "ports[0].host_port: must equal port (80) or be left out: a process listens on its port directly, got 8080"
        ]
    );
    let spec = valid(&process(
        "[[ports]]\nname = \"h\"\nport = 80\nhost_port = 80",
    ));
    assert_eq!(spec.host_ports(), [(80, PortProtocol::Tcp)]);
    // Without a host port the agent picks one per instance: nothing fixed to keep apart.
    let spec = valid(&process(
        "[[ports]]\nname = \"h\"\nport = 80\n[[ports]]\nname = \"f\"\nport = 81\nhost_port = 81",
    ));
    assert_eq!(spec.host_ports(), [(81, PortProtocol::Tcp)]);
    let spec = valid(&docker("[[ports]]\nname = \"h\"\nport = 80"));
    assert!(spec.host_ports().is_empty());
    // Two entries on one number would make the process bind it twice.
    assert_eq!(
        errors(&process(
            "[[ports]]\nname = \"a\"\nport = 80\n[[ports]]\nname = \"b\"\nport = 80"
        )),
        ["ports[1].port: 80 is used by an earlier port"]
    );
    // A container may publish one container port on two host ports.
    assert!(
        WorkloadSpec::from_toml(&docker(
            "[[ports]]\nname = \"a\"\nport = 80\nhost_port = 8080\n\
             [[ports]]\nname = \"b\"\nport = 80\nhost_port = 8081"
        ))
        .is_ok()
    );
}

#[test]
fn port_references_in_command_and_args_name_declared_ports() {
    let spec = valid(&process(
        "args = [\"--listen=:${port.http}\", \"${port.admin-api}\", \"${#x} $HOME\"]\n\
         [[ports]]\nname = \"http\"\nport = 8080\n[[ports]]\nname = \"admin-api\"\nport = 9090",
    ));
    assert_eq!(
        spec.args[0], "--listen=:${port.http}",
        "kept for the runtime to replace"
    );
    assert_eq!(
        errors(&process(
            "args = [\"${port.http}\", \"a ${port.web} b ${port.http\"]\n\
             [[ports]]\nname = \"http\"\nport = 8080"
        )),
        [
            "args[1]: ${port.web}: no port named \"web\" in [[ports]]",
            "args[1]: has \"${port.\" without a closing \"}\": write ${port.NAME}",
        ]
    );
    assert_eq!(
        errors("name = \"app\"\ncommand = \"/srv/${port.x}/run\""),
        ["command: ${port.x}: no port named \"x\" in [[ports]]"]
    );
}

#[test]
fn ports_must_be_in_range() {
    assert_eq!(
        paths(&docker(
            "[[ports]]\nname = \"h\"\nport = 0\nhost_port = 65536"
        )),
        BTreeSet::from([
            "ports[0].port".to_string(),
            "ports[0].host_port".to_string()
        ])
    );
    assert_eq!(
        errors(&process(
            "[[ports]]\nname = \"h\"\nport = 80\nprotocol = \"sctp\""
        )),
        ["ports[0].protocol: must be tcp or udp, got \"sctp\""]
    );
}

#[test]
fn resource_limits_are_at_least_their_requests() {
    assert_eq!(
        errors(&process(
            "[resources]\ncpu = \"500m\"\ncpu_limit = \"250m\"\nmemory = \"128Mi\"\nmemory_limit = \"64Mi\""
        )),
        [
            "resources.cpu_limit: must be at least the request (500m), got 250m",
            "resources.memory_limit: must be at least the request (128Mi) and 4Mi, got 64Mi"
        ]
    );
    let spec = valid(&process(
        "[resources]\ncpu = 1.5\nmemory = \"1.5Gi\"\ncpu_limit = 2\nmemory_limit = \"2G\"",
    ));
    assert_eq!(spec.resources.cpu_request, Millicores(1500));
    assert_eq!(spec.resources.memory_request, Bytes(3 << 29));
    assert_eq!(spec.resources.cpu_limit, Some(Millicores(2000)));
    assert_eq!(spec.resources.memory_limit, Some(Bytes(2_000_000_000)));
}

#[test]
fn restart_back_off_grows_and_retries_belong_to_on_failure() {
    assert_eq!(
        errors(&process(
            "[restart]\nbackoff_initial = \"10s\"\nbackoff_max = \"1s\""
        )),
        ["restart.backoff_max: must be at least backoff_initial (10s), got 1s"]
    );
    assert_eq!(
        errors(&process("[restart]\npolicy = \"never\"\nmax_retries = 1")),
        ["restart.max_retries: only applies to policy = \"on-failure\""]
    );
    assert_eq!(
        errors(&process("[restart]\npolicy = \"sometimes\"")),
        ["restart.policy: must be always, on-failure or never, got \"sometimes\""]
    );
}

#[test]
fn replicas_stay_within_the_scaling_bounds() {
    assert_eq!(
        errors(&process(
            "replicas = 9\n[scaling]\nmin = 2\nmax = 6\ntarget = 70"
        )),
        ["replicas: must be within scaling bounds 2..=6, got 9"]
    );
    assert_eq!(
        paths(&process(
            "[scaling]\nmin = 1\nmax = 2\nmetric = \"Queue Depth\""
        )),
        BTreeSet::from(["scaling.metric".to_string(), "scaling.target".to_string()])
    );
    let spec = valid(&process(
        "[scaling]\nmin = 1\nmax = 2\nmetric = \"queue-depth\"\ntarget = 10",
    ));
    assert_eq!(
        spec.scaling.map(|s| s.metric),
        Some(ScalingMetric::Custom("queue-depth".into()))
    );
}

#[test]
fn check_refuses_a_spec_that_validation_would_change_or_refuse() {
    let spec = valid(&process("[constraints]\narch = [\"amd64\"]"));
    assert_eq!(spec.check(), Ok(()));
    let mut alias = spec.clone();
    alias.constraints.arch = BTreeSet::from(["amd64".to_string()]);
    let e = alias.check().expect_err("not canonical");
    assert_eq!(
        e.to_string(),
        "spec is not in canonical form (it changes when validated again)"
    );
    let mut too_many = spec;
    too_many.replicas = 20_000;
    assert_eq!(
        too_many.check().expect_err("out of range").to_string(),
        "replicas: must be between 0 and 10000, got 20000"
    );
}

// ---------------------------------------------------------------------------------------------
// Random specs survive every form

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A validated spec comes back unchanged from its canonical document, from TOML text, from
    /// JSON and from postcard bytes, and passes `check()`. An invalid one always says why.
    #[test]
    fn a_valid_spec_round_trips_through_every_form(doc in spec_doc()) {
        let spec = match doc.validate() {
            Ok(spec) => spec,
            Err(e) => {
                prop_assert!(!e.errors().is_empty());
                prop_assert!(
                    e.errors().iter().all(|f| !f.reason.is_empty() && !f.reason.contains("no further detail")),
                    "every error has a reason: {}", e
                );
                return Ok(());
            }
        };
        prop_assert_eq!(spec.to_doc().validate(), Ok(spec.clone()));
        prop_assert_eq!(spec.check(), Ok(()));

        let toml_text = toml::to_string(&spec.to_doc()).expect("the canonical doc prints as TOML");
        prop_assert_eq!(WorkloadSpec::from_toml(&toml_text), Ok(spec.clone()), "TOML:\n{}", toml_text);
        prop_assert_eq!(WorkloadSpec::from_toml(&spec.to_toml()), Ok(spec.clone()));

        let json = serde_json::to_string(&spec.to_doc()).expect("the canonical doc prints as JSON");
        prop_assert_eq!(WorkloadSpec::from_json(&json), Ok(spec.clone()));

        let bytes = postcard::to_allocvec(&spec).expect("postcard encodes a spec");
        let decoded: WorkloadSpec = postcard::from_bytes(&bytes).expect("postcard decodes it");
        prop_assert_eq!(&decoded, &spec);
        prop_assert_eq!(decoded.check(), Ok(()));
    }

    /// Printing a document as TOML and reading it back gives the same document, so what an
    /// operator sees from `to_toml` is what validation judged.
    #[test]
    fn a_spec_document_reads_back_from_its_toml(doc in spec_doc()) {
        let text = toml::to_string(&doc).expect("a document prints as TOML");
        let again = SpecDoc::from_toml(&text).map_err(|e| TestCaseError::fail(format!("{text}\n{e}")))?;
        prop_assert_eq!(&again, &doc, "TOML:\n{}", text);
        prop_assert_eq!(again.validate(), doc.validate());
    }

    /// Any printable text in an environment value is escaped and read back by TOML.
    #[test]
    fn env_values_of_any_text_survive_toml(value in "\\PC{0,12}", key in "[A-Z][A-Z0-9_]{0,6}") {
        let mut env = BTreeMap::new();
        env.insert(key, value);
        let doc = SpecDoc { name: Some("a".into()), command: Some("x".into()), env: Some(env), ..SpecDoc::default() };
        let spec = doc.validate().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(WorkloadSpec::from_toml(&spec.to_toml()), Ok(spec));
    }
}

/// Most generated documents are valid, so the round-trip property above is not vacuous.
#[test]
fn most_generated_spec_documents_are_valid() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    // A fixed seed: this measures the generator, it does not search for failures.
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = spec_doc();
    let total = 400;
    let valid = (0..total)
        .filter(|_| {
            let doc = strategy
                .new_tree(&mut runner)
                .expect("a document")
                .current();
            doc.validate().is_ok()
        })
        .count();
    assert!(
        valid * 2 >= total,
        "only {valid} of {total} generated documents are valid"
    );
}

#[test]
fn uses_names_workloads_once_each() {
    let spec = valid(&process("uses = [\"db\", \"cache-1\"]"));
    let names: Vec<&str> = spec.uses.iter().map(|u| u.as_str()).collect();
    assert_eq!(names, ["db", "cache-1"]);
    assert_eq!(
        WorkloadSpec::from_toml(&spec.to_toml()).expect("round trip"),
        spec
    );
    assert_eq!(
        paths(&process("uses = [\"db\", \"Bad_Name\", \"db\"]")),
        BTreeSet::from(["uses[1]".to_string(), "uses[2]".to_string()])
    );
    assert!(valid(&process("")).uses.is_empty());
}
