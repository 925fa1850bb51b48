//! Spec parsing and validation rules, through the public API.

use proptest::prelude::*;
use starling_protocol::spec::{RestartMode, SpecDoc, WorkloadSpec};

fn errors(toml: &str) -> Vec<String> {
    match WorkloadSpec::from_toml(toml) {
        Ok(spec) => panic!("expected errors, got a valid spec: {spec:?}"),
        Err(e) => e.errors().iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn every_example_spec_validates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/specs");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/specs") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).expect("read");
            WorkloadSpec::from_toml(&text).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
            count += 1;
        }
    }
    assert!(count >= 4);
}

#[test]
fn unknown_fields_are_reported_with_their_path_alongside_other_errors() {
    let e = errors(
        "name = \"web\"\ncommand = \"x\"\nreplica = 3\nreplicas = -2\n[health]\nexec = [\"true\"]\nintervall = \"5s\"\n",
    );
    assert!(
        e.contains(&"replica: unknown field (check its spelling and its section)".to_string()),
        "{e:?}"
    );
    assert!(
        e.contains(
            &"health.intervall: unknown field (check its spelling and its section)".to_string()
        ),
        "{e:?}"
    );
    assert!(
        e.contains(&"replicas: must be between 0 and 10000, got -2".to_string()),
        "{e:?}"
    );
}

#[test]
fn json_and_toml_give_the_same_spec() {
    let toml = "name = \"api\"\ncommand = \"srv\"\nargs = [\"-p\", \"80\"]\nreplicas = 2\n[resources]\ncpu = \"0.5\"\nmemory = \"128Mi\"\n[[ports]]\nname = \"http\"\nport = 80\n[health]\nhttp = { port = \"http\", path = \"/ok\" }\n";
    let json = r#"{"name":"api","command":"srv","args":["-p","80"],"replicas":2,"resources":{"cpu":"500m","memory":134217728},"ports":[{"name":"http","port":80}],"health":{"http":{"port":"http","path":"/ok"}}}"#;
    assert_eq!(
        WorkloadSpec::from_toml(toml).expect("toml"),
        WorkloadSpec::from_json(json).expect("json")
    );
}

#[test]
fn a_syntax_error_names_the_line() {
    let e = errors("name = \"web\"\ncommand = \n");
    assert_eq!(e.len(), 1);
    assert!(e[0].contains("line 2"), "{e:?}");
}

#[test]
fn defaults_are_spelled_out() {
    let spec = WorkloadSpec::from_toml("name = \"s\"\ncommand = \"sleep\"").expect("valid");
    assert_eq!(spec.replicas, 1);
    assert_eq!(spec.resources.cpu_request.0, 100);
    assert_eq!(spec.resources.memory_request.0, 64 << 20);
    assert_eq!(spec.restart.mode, RestartMode::Always);
    assert_eq!(
        (spec.restart.backoff_initial_ms, spec.restart.backoff_max_ms),
        (100, 30_000)
    );
}

#[test]
fn runtime_image_and_command_rules() {
    assert_eq!(
        errors("name = \"a\"\nruntime = \"docker\""),
        vec!["image: is required for runtime docker"]
    );
    assert_eq!(
        errors("name = \"a\"\ncommand = \"x\"\nimage = \"busybox\""),
        vec![
            "image: only container runtimes (docker, podman) use an image; the process runtime runs `command`"
        ]
    );
    assert_eq!(
        errors("name = \"a\"\nargs = [\"1\"]"),
        vec![
            "command: is required for the process runtime",
            "args: needs a command to pass them to"
        ]
    );
    assert_eq!(
        errors("name = \"a\"\nruntime = \"lxc\""),
        vec!["runtime: must be one of process, docker, podman, got \"lxc\""]
    );
    assert!(
        WorkloadSpec::from_toml("name = \"a\"\nruntime = \"podman\"\nimage = \"busybox\"").is_ok()
    );
}

#[test]
fn singleton_health_and_secret_rules() {
    assert!(
        errors("name = \"a\"\ncommand = \"x\"\nsingleton = true\nreplicas = 3")[0]
            .starts_with("replicas: a singleton runs one active instance")
    );
    let e = errors("name = \"a\"\ncommand = \"x\"\n[health]\nexec = [\"t\"]\ntcp = \"p\"");
    assert_eq!(e[0], "health: set exactly one of exec, tcp, http (found 2)");
    assert_eq!(
        errors(
            "name = \"a\"\ncommand = \"x\"\n[health]\nexec = [\"t\"]\ninterval = \"1s\"\ntimeout = \"2s\""
        ),
        vec!["health.timeout: must not exceed the interval (1s), got 2s"]
    );
    assert_eq!(
        errors("name = \"a\"\ncommand = \"x\"\n[[secrets]]\nname = \"db\"\npath = \"run/db\""),
        vec!["secrets[0].path: must be an absolute path without '..', got \"run/db\""]
    );
}

#[test]
fn ports_arch_and_labels_rules() {
    let e = errors(
        "name = \"a\"\nruntime = \"docker\"\nimage = \"x\"\n[[ports]]\nname = \"h\"\nport = 80\nhost_port = 8080\n[[ports]]\nname = \"h\"\nport = 81\nhost_port = 8080\n",
    );
    assert_eq!(
        e,
        vec![
            "ports[1].name: \"h\" is used by an earlier port",
            "ports[1].host_port: 8080 is used by an earlier port"
        ]
    );
    let spec = WorkloadSpec::from_toml(
        "name = \"a\"\ncommand = \"x\"\n[constraints]\narch = [\"amd64\", \"arm64\"]",
    )
    .expect("valid");
    assert_eq!(
        spec.constraints.arch.iter().cloned().collect::<Vec<_>>(),
        vec!["aarch64".to_string(), "x86_64".to_string()]
    );
    assert_eq!(
        errors("name = \"a\"\ncommand = \"x\"\n[constraints]\narch = [\"sparc\"]"),
        vec![
            "constraints.arch[0]: unknown architecture \"sparc\"; use x86_64, aarch64, arm, riscv64 or x86"
        ]
    );
}

fn doc_strategy() -> impl Strategy<Value = String> {
    (
        "[a-z][a-z0-9-]{0,10}[a-z0-9]",
        0i64..20,
        1u32..4000,
        1u64..2048,
        proptest::option::of((1u16..60000, proptest::bool::ANY)),
        0usize..3,
        proptest::bool::ANY,
    )
        .prop_map(|(name, replicas, cpu, mem, port, restart, spread)| {
            let mut t = format!("name = \"{name}\"\ncommand = \"run\"\nreplicas = {replicas}\nplacement = \"{}\"\n[resources]\ncpu = \"{cpu}m\"\nmemory = \"{mem}Mi\"\n", if spread { "spread" } else { "bin-pack" });
            if let Some((p, health)) = port {
                t.push_str(&format!("[[ports]]\nname = \"p\"\nport = {p}\n"));
                if health {
                    t.push_str("[health]\ntcp = \"p\"\ninterval = \"3s\"\n");
                }
            }
            t.push_str(["", "[restart]\npolicy = \"never\"\n", "[restart]\npolicy = \"on-failure\"\nmax_retries = 3\n"][restart]);
            t
        })
}

proptest! {
    /// A validated spec survives every representation: its canonical document, TOML text,
    /// and postcard on the wire, and passes `check()`.
    #[test]
    fn valid_specs_round_trip_through_every_form(text in doc_strategy()) {
        let spec = WorkloadSpec::from_toml(&text).map_err(|e| TestCaseError::fail(format!("{text}\n{e}")))?;
        prop_assert_eq!(spec.to_doc().validate(), Ok(spec.clone()));
        prop_assert!(spec.check().is_ok());
        prop_assert_eq!(WorkloadSpec::from_toml(&spec.to_toml()), Ok(spec.clone()));
        let bytes = postcard::to_allocvec(&spec).expect("encode");
        prop_assert_eq!(postcard::from_bytes::<WorkloadSpec>(&bytes).expect("decode"), spec.clone());
        let json = serde_json::to_string(&spec.to_doc()).expect("json");
        prop_assert_eq!(SpecDoc::from_json(&json).and_then(|d| d.validate()), Ok(spec));
    }
}

#[test]
fn unknown_fields_in_lists_use_index_paths() {
    let e = errors(
        "name = \"a\"\ncommand = \"x\"\n[[ports]]\nname = \"h\"\nport = 80\n[[ports]]\nname = \"g\"\nport = 81\nprotocl = \"udp\"\n",
    );
    assert_eq!(
        e,
        vec!["ports[1].protocl: unknown field (check its spelling and its section)"]
    );
}
