//! Operator roles end to end: certificates made by `starling user add --role`, held to their
//! role by every node of a real fleet, over QUIC as an operator would use them.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{BIN, Fleet, spec};

/// Writes operator `name`'s certificate with `role` into its own cluster dir.
fn user_add(fleet: &Fleet, name: &str, role: &str) -> (PathBuf, Output) {
    let dir = fleet.tmp.path().join(format!("op-{name}"));
    let out = Command::new(BIN)
        .args(["user", "add", name, "--role", role, "--data-dir"])
        .arg(&fleet.nodes[0].dir)
        .arg("--cluster-dir")
        .arg(&dir)
        .output()
        .expect("user add runs");
    (dir, out)
}

/// The CLI as the operator of `cluster_dir`, against node `i`.
fn as_operator(fleet: &Fleet, cluster_dir: &Path, i: usize, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--cluster-dir")
        .arg(cluster_dir)
        .args(["--peer", &fleet.nodes[i].base])
        .args(args)
        .output()
        .expect("cli runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed: {}", text(out));
}

#[track_caller]
fn assert_refused(out: &Output, what: &str, message: &str) {
    assert!(
        !out.status.success(),
        "{what} must be refused: {}",
        text(out)
    );
    assert!(
        text(out).contains(message),
        "{what}: the refusal says {message:?}: {}",
        text(out)
    );
}

#[test]
fn every_node_holds_operators_to_their_certificates_role() {
    let fleet = Fleet::start(2);
    let (viewer, out) = user_add(&fleet, "vera", "viewer");
    assert_ok(&out, "user add --role viewer");
    assert!(text(&out).contains("role viewer"), "{}", text(&out));
    let (deployer, out) = user_add(&fleet, "dev", "deployer");
    assert_ok(&out, "user add --role deployer");

    let (_, out) = user_add(&fleet, "root", "superuser");
    assert_refused(
        &out,
        "an unknown role",
        "unknown role \"superuser\": the roles are admin, deployer and viewer",
    );

    let file = spec(
        fleet.tmp.path(),
        "web",
        "name = \"web\"\ncommand = \"sleep\"\nargs = [\"600\"]\nreplicas = 1\n",
    );
    // A viewer reads, at every node, and may not write at any.
    for i in 0..2 {
        assert_ok(
            &as_operator(&fleet, &viewer, i, &["get", "nodes"]),
            "a viewer's get",
        );
        assert_refused(
            &as_operator(&fleet, &viewer, i, &["apply", "-f", &file]),
            &format!("a viewer's apply at node {i}"),
            "operator vera (viewer) may not apply workloads; ask an admin for a deployer certificate",
        );
    }
    assert!(
        !text(&fleet.cli(0, &["get", "workloads"])).contains("web"),
        "a refused apply wrote nothing"
    );

    // A deployer changes what runs, at any node...
    assert_ok(
        &as_operator(&fleet, &deployer, 1, &["apply", "-f", &file]),
        "a deployer's apply",
    );
    assert_ok(
        &as_operator(&fleet, &deployer, 0, &["scale", "web=2"]),
        "a deployer's scale",
    );
    // ...but does not decide who belongs to the cluster.
    for (args, what) in [
        (&["token", "create"][..], "create join tokens"),
        (&["key", "rotate"][..], "rotate the gossip key"),
        (&["user", "remove", "vera"][..], "remove nodes or users"),
    ] {
        for i in 0..2 {
            assert_refused(
                &as_operator(&fleet, &deployer, i, args),
                &format!("a deployer's {args:?} at node {i}"),
                &format!(
                    "operator dev (deployer) may not {what}; ask an admin for an admin certificate"
                ),
            );
        }
    }

    // The admin `init` wrote may do all of it.
    let out = fleet.cli(1, &["token", "create"]);
    assert_ok(&out, "an admin's token create");
    assert!(text(&out).trim().starts_with("stl1."), "{}", text(&out));
    assert_ok(&fleet.cli(0, &["key", "rotate"]), "an admin's key rotate");
    assert_ok(&fleet.cli(0, &["delete", "web"]), "an admin's delete");

    // Refusals are counted per role at the node that refused them.
    let metrics = support::http_get(
        fleet.nodes[0].base.parse().expect("base address"),
        "/metrics",
    )
    .expect("metrics");
    for (caller, at_least) in [("viewer", 1), ("deployer", 3)] {
        let line = format!("starling_api_refused_total{{caller=\"{caller}\"}} ");
        let count: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in the metrics"));
        assert!(count >= at_least, "{line}{count}");
    }
}
