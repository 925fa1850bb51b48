//! Autoscaling's inputs end to end: a replica started by a real agent finds
//! `STARLING_METRICS_URL` in its environment and reports a custom metric that the agent takes
//! (and refuses a report for a replica it does not run); the workload's scaler then scales it
//! to its bound.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod support;

use support::{BIN, wait_for};

/// The agent and its replicas' process groups, killed when dropped.
struct Running {
    agent: Child,
    dir: std::path::PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
        // Every replica the scaler started.
        for pid in support::pids(&self.dir, "") {
            support::killpg(pid);
        }
    }
}

fn free_tcp_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Posts `argv[2]` to the URL `argv[1]` and prints the answer's body, also of a 4xx. Python's
/// standard library, not curl: python3 is on every machine the tests run on, curl is not.
const POST: &str = "import sys, urllib.error, urllib.request
def post(url, body):
    try:
        return urllib.request.urlopen(url, data=body.encode(), timeout=10).read()
    except urllib.error.HTTPError as e:
        return e.read()
";

fn post(url: &str, body: &str) -> String {
    let script = format!("{POST}sys.stdout.write(post(sys.argv[1], sys.argv[2]).decode())");
    let out = Command::new("python3")
        .args(["-c", &script, url, body])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_replica_reports_a_custom_metric_to_its_own_agent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("n1");
    std::fs::create_dir_all(&dir).expect("data dir");
    let metrics = format!("127.0.0.1:{}", free_tcp_port());
    let log = std::fs::File::create(tmp.path().join("agent.log")).expect("agent log");
    let agent = Command::new(BIN)
        .args(["agent", "--node-id", "n1", "--stop-grace-ms", "500"])
        .args(["--metrics", &metrics, "--data-dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("agent starts");
    let _running = Running {
        agent,
        dir: dir.clone(),
    };
    wait_for("the agent's API socket", Duration::from_secs(20), || {
        dir.join("api.sock").exists().then_some(())
    });
    // The replica reports every second; it is known to the report door from the agent's
    // next load tick on (5 s), so the first reports may be refused as not running here.
    let script = format!(
        "{POST}import os, time
url = os.environ['STARLING_METRICS_URL']
print('url=' + url, flush=True)
replica = os.environ['STARLING_WORKLOAD'] + '/' + os.environ['STARLING_REPLICA']
while True:
    try:
        answer = post(url, '{{\"replica\":\"%s\",\"metrics\":{{\"queue\":12}}}}' % replica)
    except OSError as e:
        answer = str(e).encode()
    print(answer.decode(), flush=True)
    time.sleep(1)
"
    );
    let spec = format!(
        "name = \"web\"\ncommand = \"python3\"\nargs = [\"-c\", {script:?}]\n\
         [scaling]\nmin = 1\nmax = 3\nmetric = \"queue\"\ntarget = 5\n"
    );
    let spec_path = tmp.path().join("web.toml");
    std::fs::write(&spec_path, spec).expect("spec");
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(&dir)
        .args(["apply", "--file"])
        .arg(&spec_path)
        .output()
        .expect("cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let output = Path::new(&dir).join("runtime/replicas/web-0/output.log");
    let url = format!("http://{metrics}/v1/report");
    let text = wait_for("a report kept", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&output).ok()?;
        text.contains("kept 1 metric(s) of web/0").then_some(text)
    });
    assert!(text.contains(&format!("url={url}")), "{text}");
    let refused = post(&url, r#"{"replica":"web/7","metrics":{"queue":1}}"#);
    assert!(
        refused.starts_with("replica web/7 does not run on this node"),
        "{refused}"
    );
    let refused = post(&url, r#"{"replica":"web/0","metrics":{"queue":"many"}}"#);
    assert!(refused.starts_with("body: invalid type"), "{refused}");
    // Queue 12 per replica against a target of 5: the scaler (this node holds the workload's
    // lease) asks for ceil(1 * 12 / 5) = 3 replicas, the bound, once the need has lasted its
    // up window, and the third replica starts.
    let third = Path::new(&dir).join("runtime/replicas/web-2/output.log");
    wait_for(
        "web scaled to 3 by its autoscaler",
        Duration::from_secs(90),
        || third.exists().then_some(()),
    );
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(&dir)
        .args(["describe", "web"])
        .output()
        .expect("cli");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("(autoscaler)"),
        "the write names its author:\n{text}"
    );
}
