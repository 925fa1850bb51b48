//! The web view in a real headless browser (Debian's chromium): a fleet of three agents, a
//! workload and a singleton; the page lists the nodes, the workload and the lease holder with
//! its fencing token; a node killed with SIGKILL shows as down at the next load. A screenshot
//! is saved and its path printed.
//!
//! Needs chromium: without it the test skips, saying so, unless `STARLING_REQUIRE_BROWSER` is
//! set (CI sets it), when it fails.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{Fleet, http_get, spec, wait_for};

/// The chromium on this machine, or why the test cannot run.
fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        let why = "no chromium on PATH (apt-get install chromium)";
        assert!(
            std::env::var_os("STARLING_REQUIRE_BROWSER").is_none(),
            "STARLING_REQUIRE_BROWSER is set and {why}"
        );
        eprintln!("skipping the web view test: {why}");
    }
    found
}

/// Runs headless chromium on `url` with `args` (its own profile under `profile`), within a
/// minute; its stdout.
fn browse(browser: &Path, profile: &Path, url: &str, args: &[&str]) -> String {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            // Enough virtual time for the first poll of /v1/view and its redraw, not for
            // the page to stay in the state an earlier load saw.
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .env("HOME", profile)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium {args:?} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `data-state` of the card of `node` in a dumped DOM.
fn card_state<'a>(dom: &'a str, node: &str) -> Option<&'a str> {
    let at = dom.find(&format!(
        "class=\"node\" data-node=\"{node}\" data-state=\""
    ))?;
    let rest = &dom[at..];
    let value = &rest[rest.find("data-state=\"")? + "data-state=\"".len()..];
    value.split('"').next()
}

#[test]
fn the_page_lists_the_fleet_and_shows_a_killed_node_down() {
    let Some(browser) = chromium() else {
        return;
    };
    let mut fleet = Fleet::start(3);
    let sleepers = spec(
        fleet.tmp.path(),
        "sleepers",
        "name = \"sleepers\"\ncommand = \"sleep\"\nargs = [\"600\"]\nreplicas = 3\n\
         [resources]\ncpu = \"100m\"\nmemory = \"64Mi\"\n",
    );
    let leader = spec(
        fleet.tmp.path(),
        "leader",
        "name = \"leader\"\nsingleton = true\nlease_ttl = \"2s\"\ncommand = \"sleep\"\n\
         args = [\"600\"]\n[resources]\ncpu = \"50m\"\nmemory = \"8Mi\"\n",
    );
    for file in [&sleepers, &leader] {
        let out = fleet.cli(0, &["apply", "-f", file]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_for(
        "3 sleepers and the leader running",
        Duration::from_secs(30),
        || {
            let running = fleet.running(0)?;
            let of = |w: &str| running.iter().filter(|(name, ..)| name == w).count();
            (of("sleepers") == 3 && of("leader") == 1).then_some(())
        },
    );
    let http: SocketAddr = fleet.nodes[0].base.parse().expect("address");
    // The lease is granted a moment after the leader starts; the page shows the holder.
    let holder = wait_for(
        "the leader's lease granted",
        Duration::from_secs(20),
        || {
            let view = http_get(http, "/v1/view")?;
            let json: serde_json::Value =
                serde_json::from_str(view.split("\r\n\r\n").nth(1)?).ok()?;
            let lease = json["leases"]
                .as_array()?
                .iter()
                .find(|l| l["name"] == "leader")?
                .clone();
            (lease["fencing_token"].as_u64()? > 0).then_some(lease)
        },
    );

    let profile = tempfile::tempdir().expect("profile dir");
    let url = format!("http://{http}/");
    let dom = browse(&browser, profile.path(), &url, &["--dump-dom"]);
    for node in ["node-1", "node-2", "node-3"] {
        assert_eq!(
            card_state(&dom, node),
            Some("alive"),
            "{node} listed alive in\n{dom}"
        );
    }
    assert!(dom.contains("data-workload=\"sleepers\""), "{dom}");
    assert!(dom.contains("data-workload=\"leader\""), "{dom}");
    assert!(dom.contains("data-replica=\"sleepers/2\""), "{dom}");
    let holder_name = holder["holder"].as_str().expect("a holder");
    assert!(
        dom.contains(&format!(
            "data-lease=\"leader\"><td>leader</td><td>{holder_name}"
        )),
        "the lease row names its holder {holder_name}: {dom}"
    );

    fleet.crash(2);
    wait_for("node-3 declared down", Duration::from_secs(30), || {
        (fleet.state_of(0, "node-3").as_deref() == Some("down")).then_some(())
    });
    let dom = browse(&browser, profile.path(), &url, &["--dump-dom"]);
    assert_eq!(card_state(&dom, "node-3"), Some("down"), "{dom}");
    assert_eq!(card_state(&dom, "node-1"), Some("alive"), "{dom}");

    // Moved replicas settle before the picture is taken, so it shows a fleet at rest.
    wait_for("3 sleepers running again", Duration::from_secs(30), || {
        let running = fleet.running(0)?;
        (running
            .iter()
            .filter(|(name, ..)| name == "sleepers")
            .count()
            == 3)
            .then_some(())
    });
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-view.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &browser,
        profile.path(),
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,900",
        ],
    );
    let size = std::fs::metadata(&shot).map_or(0, |m| m.len());
    assert!(
        size > 10_000,
        "a screenshot at {} ({size} bytes)",
        shot.display()
    );
    println!("web view screenshot: {}", shot.display());
}

/// Off loopback, neither the page nor its JSON answer without the data dir's token.
#[test]
fn an_exposed_agent_serves_the_view_only_with_its_token() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let fleet = Fleet::start_with(
        1,
        PathBuf::from(support::BIN),
        &["--metrics", &format!("0.0.0.0:{port}")],
    );
    let http: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let token = std::fs::read_to_string(fleet.nodes[0].dir.join("web-token"))
        .expect("the agent made its token");
    let token = token.trim();
    for path in ["/", "/v1/view", "/v1/view?token=guess"] {
        let answer = http_get(http, path).expect("an answer");
        assert!(answer.starts_with("HTTP/1.1 401"), "{path}: {answer}");
        assert!(answer.contains("web-token"), "{path}: {answer}");
    }
    let answer = http_get(http, &format!("/v1/view?token={token}")).expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"node\":\"node-1\""), "{answer}");
    // What was open stays open: Prometheus and singletons carry no token.
    let metrics = http_get(http, "/metrics").expect("an answer");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
}
