//! The operator's side of rolling updates against a real agent, over QUIC with an operator's
//! certificate: `rollout status`, `rollout pause|resume|promote`, `apply --force` and
//! `--wait`, and the revision history of `describe`.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use starling_node::api::read_frame;
use starling_node::store::Store;
use starling_protocol::WorkloadName;
use starling_protocol::hlc::Timestamp;
use starling_protocol::wire::{ApiRequest, ApiResponse, Request, RolloutAction};
use support::{Fleet, spec};

/// `web` with `args = [arg]`, two replicas, and a `min_healthy` no test waits out, so its
/// rollouts stay under way whatever the fleet does with them.
fn web(arg: &str, extra: &str) -> String {
    format!(
        "name = \"web\"\ncommand = \"sleep\"\nargs = [\"{arg}\"]\nreplicas = 2\n\
         [update]\nmin_healthy = \"1h\"\n{extra}"
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

fn json(fleet: &Fleet, args: &[&str]) -> Value {
    fleet.json(0, args).unwrap_or_else(|| {
        let out = fleet.cli(0, args);
        panic!("{args:?} failed: {}", text(&out))
    })
}

#[test]
fn pause_resume_and_promote_write_the_same_revision_or_refuse() {
    let fleet = Fleet::start(1);
    let dir = fleet.tmp.path().to_path_buf();
    let v1 = spec(&dir, "v1", &web("100", ""));
    ok(fleet.cli(0, &["apply", "-f", &v1]));

    let first = fleet.cli(0, &["rollout", "pause", "web"]);
    assert_eq!(first.status.code(), Some(1), "{}", text(&first));
    assert!(
        text(&first).contains("revision 1 is the first one, so there is no rollout to pause"),
        "{}",
        text(&first)
    );

    let v2 = spec(&dir, "v2", &web("200", ""));
    ok(fleet.cli(0, &["apply", "-f", &v2]));
    let paused = ok(fleet.cli(0, &["rollout", "pause", "web"]));
    assert!(paused.contains("web: rollout paused"), "{paused}");
    let status = json(&fleet, &["rollout", "status", "web"]);
    assert_eq!(status["revision"], 2, "{status}");
    assert_eq!(status["paused"], true, "{status}");
    assert_eq!(status["previous_revision"], 1, "{status}");
    let line = ok(fleet.cli(0, &["rollout", "status", "web"]));
    assert!(
        line.starts_with("web: revision 2 (from 1): ") && line.contains("paused"),
        "{line}"
    );
    let again = ok(fleet.cli(0, &["rollout", "pause", "web"]));
    assert!(again.contains("already paused"), "{again}");

    ok(fleet.cli(0, &["rollout", "resume", "web"]));
    let status = json(&fleet, &["rollout", "status", "web"]);
    assert_eq!(
        (status["revision"].as_u64(), &status["paused"]),
        (Some(2), &Value::Bool(false))
    );

    let promote = fleet.cli(0, &["rollout", "promote", "web"]);
    assert_eq!(promote.status.code(), Some(1));
    assert!(
        text(&promote).contains("not a canary rollout"),
        "{}",
        text(&promote)
    );

    let v3 = spec(
        &dir,
        "v3",
        &web("300", "strategy = \"canary\"\ncanary = 1\n"),
    );
    ok(fleet.cli(0, &["apply", "-f", &v3]));
    ok(fleet.cli(0, &["rollout", "promote", "web"]));
    let status = json(&fleet, &["rollout", "status", "web"]);
    assert_eq!(status["revision"], 3, "{status}");
    assert_eq!(status["canary"]["promoted"], true, "{status}");

    // The history tells who wrote what: every write was this test's operator.
    let described = json(&fleet, &["describe", "web"]);
    let history = described["history"].as_array().expect("a history");
    let ended: Vec<&str> = history.iter().filter_map(|h| h["ended"].as_str()).collect();
    assert_eq!(ended, ["replaced", "replaced", "current"], "{described}");
    assert_eq!(
        history[1]["later_writes"], 2,
        "pause and resume: {described}"
    );
    assert_eq!(history[2]["written_by"], "operator admin", "{described}");
}

/// Writes over `web`'s current revision what the fleet writes when its rollout fails: the
/// rollback with a reason. The agent must be stopped.
fn roll_back_as_the_fleet_would(data_dir: &Path, why: &str) {
    let store = Store::open(data_dir).expect("data dir");
    let mut desired = store.desired().expect("desired state");
    let name = WorkloadName::new("web").expect("valid");
    let current = desired.get(&name).expect("web exists").clone();
    let marker = desired.register(&name).expect("web exists").marker.clone();
    let rollback = current
        .rollback(Some(why.into()))
        .expect("a previous revision");
    let at = Timestamp {
        physical_ms: marker.physical_ms + 1,
        ..marker
    };
    assert!(desired.write_by(name, Some(rollback), at, "node node-1"));
    store.write_desired(&desired).expect("stored");
}

#[test]
fn an_automatic_rollback_is_reported_and_its_template_needs_force() {
    let mut fleet = Fleet::start(1);
    let dir = fleet.tmp.path().to_path_buf();
    let v1 = spec(&dir, "v1", &web("100", ""));
    let v2 = spec(&dir, "v2", &web("200", ""));
    ok(fleet.cli(0, &["apply", "-f", &v1]));
    ok(fleet.cli(0, &["apply", "-f", &v2]));
    fleet.stop(0, Duration::from_secs(20));
    roll_back_as_the_fleet_would(&fleet.nodes[0].dir, "replica 0 crash loops");
    fleet.spawn(0);
    fleet.wait_members(1);

    let status = fleet.cli(0, &["rollout", "status", "web"]);
    assert_eq!(status.status.code(), Some(2), "{}", text(&status));
    assert!(
        text(&status).contains(
            "web: revision 3 (rollback of 2, whose rollout failed: replica 0 crash loops)"
        ),
        "{}",
        text(&status)
    );
    let watch = fleet.cli(0, &["rollout", "status", "web", "--watch"]);
    assert_eq!(watch.status.code(), Some(2), "{}", text(&watch));
    assert!(
        String::from_utf8_lossy(&watch.stderr).contains(
            "automatic rollback of revision 2, whose rollout failed: replica 0 crash loops"
        ),
        "{}",
        text(&watch)
    );
    let described = json(&fleet, &["describe", "web"]);
    assert_eq!(
        described["history"][1]["ended"], "rolled_back",
        "{described}"
    );
    assert_eq!(
        described["history"][1]["ended_by"], "node node-1",
        "{described}"
    );
    assert_eq!(described["history"][1]["failure"], "replica 0 crash loops");

    let refused = fleet.cli(0, &["apply", "-f", &v2]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    for words in [
        "revision 2",
        "replica 0 crash loops",
        "--force",
        "nothing was changed",
    ] {
        assert!(
            text(&refused).contains(words),
            "{words:?} in {}",
            text(&refused)
        );
    }
    assert_eq!(json(&fleet, &["describe", "web"])["revision"], 3);

    let forced = json(&fleet, &["apply", "-f", &v2, "--force"]);
    assert_eq!(forced["revision"], 4, "{forced}");
    assert_eq!(forced["changed"], true, "{forced}");
}

#[test]
fn apply_wait_ends_with_code_1_when_a_revision_crash_loops_and_nothing_rolls_it_back() {
    let fleet = Fleet::start(1);
    let dir = fleet.tmp.path().to_path_buf();
    ok(fleet.cli(0, &["apply", "-f", &spec(&dir, "v1", &web("100", ""))]));
    let broken = spec(
        &dir,
        "broken",
        "name = \"web\"\ncommand = \"false\"\nreplicas = 2\n\
         [restart]\nbackoff_initial = \"10ms\"\nbackoff_max = \"20ms\"\n\
         [update]\nauto_rollback = false\n",
    );
    let out = fleet.cli(0, &["apply", "-f", &broken, "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("web written (revision 2@"), "{stdout}");
    assert!(stdout.contains("web: revision 2 (from 1): "), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("web: revision 2 fails: ")
            && stderr.contains("crash loop on it and [update] auto_rollback is off"),
        "{}",
        text(&out)
    );
}

/// One request over QUIC with node-1's own certificate, as another machine of the fleet would.
fn as_node(fleet: &Fleet, request: ApiRequest) -> Option<ApiResponse> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let membership =
            starling_node::cluster::Membership::load(&fleet.nodes[0].dir).expect("membership");
        let tls = membership.tls().expect("node certificate");
        let config = starling_node::net::tls::client_config(&tls).expect("tls");
        let quic = starling_node::net::quic::Quic::dialer(config).expect("dialer");
        let base = starling_node::cluster::resolve(&fleet.nodes[0].base).expect("address");
        let addr = starling_node::cluster::quic_addr(base);
        let (mut send, mut recv) = quic
            .open(addr, &Request::Api(request))
            .await
            .expect("stream");
        send.finish().expect("finish");
        read_frame::<ApiResponse, _>(&mut recv).await.ok().flatten()
    })
}

#[test]
fn a_node_certificate_may_read_a_rollout_but_not_steer_it() {
    let fleet = Fleet::start(1);
    let dir = fleet.tmp.path().to_path_buf();
    ok(fleet.cli(0, &["apply", "-f", &spec(&dir, "v1", &web("100", ""))]));
    ok(fleet.cli(0, &["apply", "-f", &spec(&dir, "v2", &web("200", ""))]));
    let web = || WorkloadName::new("web").expect("valid");
    for action in [
        RolloutAction::Pause,
        RolloutAction::Resume,
        RolloutAction::Promote,
    ] {
        let answer = as_node(
            &fleet,
            ApiRequest::Rollout {
                name: web(),
                action,
            },
        );
        let Some(ApiResponse::Error(error)) = answer else {
            panic!("a node may {action}: {answer:?}");
        };
        assert!(error.message.contains("only operators"), "{error:?}");
    }
    let answer = as_node(&fleet, ApiRequest::RolloutStatus { name: web() });
    assert!(
        matches!(&answer, Some(ApiResponse::Rollout(r)) if r.revision == 2 && !r.paused),
        "{answer:?}"
    );
}

#[test]
fn apply_wait_follows_a_good_revision_until_every_replica_settles() {
    let fleet = Fleet::start(1);
    let dir = fleet.tmp.path().to_path_buf();
    let quick = |arg: &str| {
        format!(
            "name = \"web\"\ncommand = \"sleep\"\nargs = [\"{arg}\"]\nreplicas = 2\n\
             [update]\nmin_healthy = \"300ms\"\n"
        )
    };
    ok(fleet.cli(0, &["apply", "-f", &spec(&dir, "v1", &quick("100"))]));
    let out = fleet.cli(
        0,
        &["apply", "-f", &spec(&dir, "v2", &quick("200")), "--wait"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("web: revision 2 (from 1): 2/2 updated"),
        "{stdout}"
    );
    assert!(
        stdout.trim_end().ends_with("web: revision 2 rolled out"),
        "{stdout}"
    );
    // Progress went to stderr, as a log gets it (not a terminal here): a line per change of
    // the rollout, then the summary; no control
    // characters a log or CI would show as noise.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let waiting: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(" replicas updated and healthy, "))
        .collect();
    assert!(
        waiting.first().is_some_and(|l| l.starts_with("web: ")
            && l.contains("/2 replicas updated")
            && l.contains("revision 2 (from 1)")),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("web: revision 2 rolled out after ")),
        "{stderr}"
    );
    assert!(
        !stderr.chars().any(|c| c.is_control() && c != '\n'),
        "{stderr:?}"
    );
    assert!(
        !stdout.contains("replicas updated and healthy"),
        "progress leaked onto stdout: {stdout}"
    );

    // With -o json, stdout holds only answers: the write, where the rollout ended, the
    // verdict, each a JSON object on a line of its own.
    let out = fleet.cli(
        0,
        &[
            "apply",
            "-f",
            &spec(&dir, "v3", &quick("300")),
            "--wait",
            "-o",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let answers: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect();
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert_eq!(answers[0]["revision"], 3, "{answers:?}");
    assert_eq!(answers[1]["complete"], true, "{answers:?}");
    assert_eq!(answers[2]["verdict"], "complete", "{answers:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("web: revision 3 rolled out after "),
        "{}",
        text(&out)
    );
    let status = json(&fleet, &["rollout", "status", "web"]);
    assert_eq!(status["complete"], true, "{status}");
    // Nothing is left to pause.
    let pause = fleet.cli(0, &["rollout", "pause", "web"]);
    assert_eq!(pause.status.code(), Some(1), "{}", text(&pause));
    assert!(
        text(&pause).contains("is complete: nothing to pause"),
        "{}",
        text(&pause)
    );
}

#[test]
fn a_crashing_revision_is_rolled_back_and_apply_wait_says_why() {
    let fleet = Fleet::start(1);
    let dir = fleet.tmp.path().to_path_buf();
    ok(fleet.cli(0, &["apply", "-f", &spec(&dir, "v1", &web("100", ""))]));
    let broken = spec(
        &dir,
        "broken",
        "name = \"web\"\ncommand = \"false\"\nreplicas = 2\n\
         [restart]\nbackoff_initial = \"10ms\"\nbackoff_max = \"20ms\"\n",
    );
    let out = fleet.cli(0, &["apply", "-f", &broken, "--wait"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("web: revision 2 was rolled back by revision 3: replica web/"),
        "{}",
        text(&out)
    );
    let status = fleet.cli(0, &["rollout", "status", "web"]);
    assert_eq!(status.status.code(), Some(2), "{}", text(&status));

    let again = fleet.cli(0, &["apply", "-f", &broken]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("--force"), "{}", text(&again));
    let described = json(&fleet, &["describe", "web"]);
    assert_eq!(described["revision"], 3, "{described}");
    assert_eq!(
        described["history"][1]["ended"], "rolled_back",
        "{described}"
    );
    assert_eq!(
        described["history"][1]["ended_by"], "node-1 (auto-rollback)",
        "{described}"
    );
}

#[test]
fn a_scale_down_during_a_rollout_is_refused_and_changes_nothing() {
    let fleet = Fleet::start(1);
    let dir = fleet.tmp.path().to_path_buf();
    ok(fleet.cli(0, &["apply", "-f", &spec(&dir, "v1", &web("100", ""))]));
    ok(fleet.cli(0, &["apply", "-f", &spec(&dir, "v2", &web("200", ""))]));
    let out = fleet.cli(0, &["scale", "web=1"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("web is rolling out revision 2")
            && text(&out).contains("Nothing was changed"),
        "{}",
        text(&out)
    );
    let status = json(&fleet, &["rollout", "status", "web"]);
    assert_eq!(status["replicas"], 2, "{status}");
    // Scaling up is allowed: the new replicas start on the new revision.
    ok(fleet.cli(0, &["scale", "web=3"]));
}
