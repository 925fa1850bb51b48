//! End-to-end tests of the `starling` binary's offline commands.

use std::path::PathBuf;
use std::process::{Command, Output};

fn starling(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the starling binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn example_specs() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/specs");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("examples/specs exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "the examples include a web service, a worker, a singleton and a process workload"
    );
    files
}

#[test]
fn validate_accepts_every_example_spec() {
    let files = example_specs();
    let mut args = vec!["validate"];
    args.extend(files.iter().map(String::as_str));
    let out = starling(&args);
    assert!(out.status.success(), "{}", stdout(&out));
    assert_eq!(
        stdout(&out)
            .lines()
            .filter(|l| l.starts_with("OK "))
            .count(),
        files.len()
    );
}

#[test]
fn validate_lists_every_error_of_the_broken_example_and_fails() {
    let out = starling(&["validate", "examples/specs/invalid/broken.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    for expected in [
        "colour: unknown field",
        "name: may hold only lowercase letters",
        "replicas: must be between 0 and 10000, got -1",
        "resources.cpu: must be cores",
        "resources.memory: must be bytes",
        "ports[0].port: must be between 1 and 65535, got 70000",
        "env.STARLING_X:",
        "secrets[0].key: picks the entry `env` receives",
        "health.http.port: no port named \"admin\"",
        "restart.max_retries: only applies to policy = \"on-failure\"",
        "update.max_surge: must be at least 1 for order = \"start-first\"",
        "scaling.max: must be at least scaling.min (5), got 2",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn validate_reports_json_for_scripts() {
    let out = starling(&[
        "validate",
        "-o",
        "json",
        "examples/specs/invalid/broken.toml",
        "examples/specs/web.toml",
    ]);
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(reports[0]["ok"], false);
    assert_eq!(reports[1]["ok"], true);
    assert_eq!(reports[1]["name"], "web");
}

#[test]
fn validate_names_a_missing_file() {
    let out = starling(&["validate", "no/such/spec.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("cannot read no/such/spec.toml"));
}

#[test]
fn plan_places_every_replica_of_the_examples_on_fifty_nodes() {
    let files = example_specs();
    let mut args = vec!["plan", "--nodes", "50", "-o", "json"];
    args.extend(files.iter().map(String::as_str));
    let out = starling(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let replicas = plan["replicas"].as_array().expect("a replica list");
    assert!(replicas.len() >= 10);
    assert!(
        replicas.iter().all(|r| r["node"].is_string()),
        "every example replica is placeable: {replicas:?}"
    );
    assert_eq!(plan["nodes"].as_array().map(Vec::len), Some(50));
}

#[test]
fn plan_with_a_node_down_moves_only_its_replicas() {
    let healthy = starling(&["plan", "-o", "json"]);
    let plan: serde_json::Value = serde_json::from_slice(&healthy.stdout).expect("valid JSON");
    let victim = plan["replicas"][0]["node"]
        .as_str()
        .expect("placed")
        .to_string();
    let out = starling(&["plan", "-o", "json", "--down", &victim]);
    let after: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let (before, after) = (
        plan["replicas"].as_array().expect("list"),
        after["replicas"].as_array().expect("list"),
    );
    // Workloads with a replica on the victim may reshuffle among their own replicas (spread).
    let affected: Vec<&serde_json::Value> = before
        .iter()
        .filter(|b| b["node"] == victim.as_str())
        .map(|b| &b["workload"])
        .collect();
    for (b, a) in before.iter().zip(after) {
        if b["node"] == victim.as_str() {
            assert_ne!(a["node"], victim.as_str());
            assert_eq!(a["moved_from"], victim.as_str());
        } else if !affected.contains(&&b["workload"]) {
            assert_eq!(
                a["node"], b["node"],
                "{} moved although its node stayed up",
                b["workload"]
            );
        }
    }
}

#[test]
fn plan_refuses_an_unknown_down_node() {
    let out = starling(&["plan", "--down", "node-99"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--down node-99: no such node"));
}
