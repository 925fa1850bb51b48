//! The web view: one self-contained page at `/` (HTML, CSS and JS embedded in the binary, no
//! CDN) that polls `/v1/view`, a JSON snapshot of what this node knows of the fleet: nodes,
//! workloads, where each replica runs, leases and voters, and recent events.
//!
//! The snapshot is built in the agent loop from the same functions that answer the API's
//! listings (`get nodes|workloads|replicas|leases`, `voters`, `rollout status`), so the page
//! and the CLI cannot disagree. It goes in through [`LoopCall::inspect`], never through the
//! API's routing, so the page can only read.
//!
//! Exposure: on a loopback address the view is open to local users like `/metrics`, and a
//! request must name the host by an IP address or `localhost` (a page of another site that
//! renamed itself to 127.0.0.1 by DNS cannot read it). On any other address the page and
//! the JSON need the token in `DATA_DIR/web-token` (made at the first such start), as
//! `Authorization: Bearer TOKEN` or `?token=TOKEN`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use starling_protocol::api::{LeaseHere, NodeRow, ReplicaPlace, ReplicaRow, WorkloadRow};
use starling_protocol::placement::{Departure, Liveness};
use starling_protocol::status::ReplicaState;
use starling_protocol::wire::{ApiResponse, ObjectKind};
use tokio::sync::{mpsc, oneshot};

use super::Agent;
use super::dispatch::LoopCall;
use super::http::{Body, answer};

/// The page, its style and its script, put together once.
static PAGE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    include_str!("web/page.html")
        .replace("/*STYLE*/", include_str!("web/page.css"))
        .replace("/*SCRIPT*/", include_str!("web/page.js"))
});

/// The file in the data dir holding the web view's token.
pub const TOKEN_FILE: &str = "web-token";

/// How long a snapshot is reused: many open pages cost the loop one build per period.
const VIEW_REUSE: Duration = Duration::from_millis(500);

/// How long the loop may take to build a snapshot before the page is told to retry.
const VIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// The web view's routes on the HTTP server.
pub(crate) struct WebDoor {
    calls: mpsc::Sender<LoopCall>,
    token: Option<String>,
    last: Mutex<Option<(Instant, Bytes)>>,
}

impl WebDoor {
    /// A door reading through the loop's queue; `token` is required when set.
    pub(super) fn new(calls: mpsc::Sender<LoopCall>, token: Option<String>) -> Self {
        WebDoor {
            calls,
            token,
            last: Mutex::new(None),
        }
    }

    /// Answers `/` and `/v1/view`; `None` for other paths.
    pub(super) async fn route<B>(
        &self,
        request: &Request<B>,
        client: SocketAddr,
    ) -> Option<Response<Body>> {
        let path = request.uri().path();
        if path != "/" && path != "/v1/view" {
            return None;
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return Some(text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into()));
        }
        if let Err(refused) = self.admit(request, client) {
            return Some(refused);
        }
        if path == "/" {
            let mut page = answer(
                StatusCode::OK,
                "text/html; charset=utf-8",
                PAGE.as_str().to_owned(),
            );
            let headers = page.headers_mut();
            // The page loads nothing from elsewhere, and no other page may frame it.
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'",
                ),
            );
            headers.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            return Some(page);
        }
        Some(match self.snapshot().await {
            Some(json) => {
                let mut ok = answer(StatusCode::OK, "application/json", json);
                ok.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                ok
            }
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the agent loop did not answer in time; retry\n".into(),
            ),
        })
    }

    /// Refuses a request without the token (when one is required), or naming this host
    /// by a name (when served on loopback without a token).
    #[allow(clippy::result_large_err)] // the refusal is the answer, built once
    fn admit<B>(&self, request: &Request<B>, client: SocketAddr) -> Result<(), Response<Body>> {
        let Some(token) = &self.token else {
            let host = request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            if host_is_an_address(host) {
                return Ok(());
            }
            tracing::debug!(%client, host, "refused a web view request naming this host by a name");
            return Err(text(
                StatusCode::FORBIDDEN,
                format!(
                    "Host: {host:?}: open the web view at an IP address or localhost, not a name\n"
                ),
            ));
        };
        let bearer = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim);
        let query = request.uri().query().unwrap_or("");
        let in_query = query.split('&').find_map(|kv| kv.strip_prefix("token="));
        let given = bearer.or(in_query).unwrap_or("");
        if same(given.as_bytes(), token.as_bytes()) {
            return Ok(());
        }
        tracing::debug!(%client, "refused a web view request without the token");
        Err(text(
            StatusCode::UNAUTHORIZED,
            format!(
                "the web view on this address needs the token in the agent's data dir ({TOKEN_FILE}): open /?token=TOKEN, or send Authorization: Bearer TOKEN\n"
            ),
        ))
    }

    /// The view as JSON: the last one if recent, else a new one from the loop.
    async fn snapshot(&self) -> Option<Bytes> {
        let recent = |last: &Option<(Instant, Bytes)>| {
            last.as_ref()
                .filter(|(at, _)| at.elapsed() < VIEW_REUSE)
                .map(|(_, json)| json.clone())
        };
        if let Some(json) = recent(&self.lock()) {
            return Some(json);
        }
        let (tx, rx) = oneshot::channel();
        let call = LoopCall::inspect(move |agent| {
            let _ = tx.send(view(agent));
        });
        let built = tokio::time::timeout(VIEW_TIMEOUT, async {
            self.calls.send(call).await.ok()?;
            rx.await.ok()
        })
        .await
        .ok()
        .flatten()?;
        let json = Bytes::from(serde_json::to_vec(&built).ok()?);
        *self.lock() = Some((crate::clock::monotonic(), json.clone()));
        Some(json)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Bytes)>> {
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    answer(status, "text/plain; charset=utf-8", body)
}

/// Whether a `Host` header names an IP address or `localhost` (with or without a port).
fn host_is_an_address(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(address, _)| address),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

/// Compares in time that depends on the lengths only, so answers do not tell how much of a
/// guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token the view needs when served on `addr`: none on loopback; otherwise the one in
/// `DATA_DIR/web-token`, made (32 random bytes, hex, mode 0600) when missing.
pub(super) fn token_for(dir: &Path, addr: SocketAddr) -> Result<Option<String>, String> {
    if addr.ip().is_loopback() {
        return Ok(None);
    }
    let path = dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(kept) if !kept.trim().is_empty() => return Ok(Some(kept.trim().to_string())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    let mut raw = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
        .map_err(|_| "no randomness for the web view's token".to_string())?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    crate::store::write_atomic(&path, format!("{token}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(Some(token))
}

/// Everything the page shows, as this node knows it.
#[derive(Debug, Serialize)]
struct View {
    /// The node that answered.
    node: String,
    now_ms: u64,
    nodes: Vec<NodeCard>,
    workloads: Vec<WorkloadCard>,
    replicas: Vec<ReplicaLine>,
    leases: Vec<LeaseLine>,
    voters: Vec<(String, &'static str)>,
    events: Vec<EventLine>,
}

#[derive(Debug, Serialize)]
struct NodeCard {
    id: String,
    /// `alive`, `suspect` or `down`, as `get nodes` says.
    state: &'static str,
    /// `restarting` or `draining` when the node announced it.
    departure: Option<&'static str>,
    site: Option<String>,
    labels: BTreeMap<String, String>,
    arch: String,
    replicas: u32,
    cpu_m: Triple,
    memory_bytes: Triple,
    store_error: Option<String>,
}

/// Offered, reserved by replicas, and in use on the host (when measured).
#[derive(Debug, Serialize)]
struct Triple {
    capacity: u64,
    reserved: u64,
    used: Option<u64>,
}

#[derive(Debug, Serialize)]
struct WorkloadCard {
    name: String,
    revision: u64,
    desired: u32,
    running: u32,
    healthy: u32,
    runtime: String,
    rollout: Option<RolloutCard>,
}

#[derive(Debug, Serialize)]
struct RolloutCard {
    updated: u32,
    pending: u32,
    failing: u32,
    paused: bool,
    canary: Option<u32>,
}

#[derive(Debug, Serialize)]
struct ReplicaLine {
    workload: String,
    index: u32,
    /// `None`: no node can take it (`reason` says why).
    node: Option<String>,
    node_state: Option<&'static str>,
    state: String,
    healthy: bool,
    restarts: u32,
    revision: u64,
    reason: Option<String>,
}

#[derive(Debug, Serialize)]
struct LeaseLine {
    name: String,
    holder: Option<String>,
    epoch: u64,
    fencing_token: u64,
    expires_in_ms: u64,
    /// `holder`, `candidate` or `bystander`: what the answering node does about it.
    here: &'static str,
}

/// One event of the feed.
#[derive(Debug, Serialize)]
struct EventLine {
    at_ms: u64,
    /// The node that recorded it.
    node: String,
    text: String,
}

fn liveness(l: Liveness) -> &'static str {
    match l {
        Liveness::Alive => "alive",
        Liveness::Suspect => "suspect",
        Liveness::Down => "down",
    }
}

/// Builds the view in the loop from the API's own listings.
fn view(agent: &mut Agent) -> View {
    let nodes = match agent.get(ObjectKind::Nodes) {
        ApiResponse::Nodes(rows) => rows,
        _ => Vec::new(),
    };
    let workloads = match agent.get(ObjectKind::Workloads) {
        ApiResponse::Workloads(rows) => rows,
        _ => Vec::new(),
    };
    let replicas = match agent.get(ObjectKind::Replicas) {
        ApiResponse::Replicas(rows) => rows,
        _ => Vec::new(),
    };
    let voters = match agent.voters_api(None, false) {
        ApiResponse::Voters { voters, .. } => voters
            .into_iter()
            .map(|v| {
                let state = v.liveness.map_or("unknown", liveness);
                (v.node.to_string(), state)
            })
            .collect(),
        _ => Vec::new(),
    };
    View {
        node: agent.node.to_string(),
        now_ms: crate::clock::now_ms(),
        nodes: nodes.into_iter().map(node_card).collect(),
        workloads: workloads
            .into_iter()
            .map(|w| workload_card(agent, w, &replicas))
            .collect(),
        replicas: replicas.into_iter().map(replica_line).collect(),
        leases: agent.lease_rows().into_iter().map(lease_line).collect(),
        voters,
        events: events(agent),
    }
}

/// The page's event feed, newest first: the last [`FEED_MAX`] events of this node's durable
/// log (node downs, failovers, starts, restarts, elections). `starling get events` gathers the
/// fleet's; the page shows what the node it is served by recorded.
fn events(agent: &Agent) -> Vec<EventLine> {
    let Ok(log) = agent.events.lock() else {
        return Vec::new();
    };
    log.iter()
        .rev()
        .take(FEED_MAX)
        .map(|event| EventLine {
            at_ms: event.at.physical_ms,
            node: event.at.node.to_string(),
            text: event.text.clone(),
        })
        .collect()
}

/// Events the page shows.
const FEED_MAX: usize = 100;

fn node_card(row: NodeRow) -> NodeCard {
    let view = row.view;
    NodeCard {
        id: view.id.to_string(),
        state: liveness(view.liveness),
        departure: match row.departure {
            Departure::Staying => None,
            Departure::Restarting { .. } => Some("restarting"),
            Departure::Draining => Some("draining"),
        },
        site: view.labels.get("site").cloned(),
        arch: view.arch,
        replicas: row.replicas,
        cpu_m: Triple {
            capacity: u64::from(view.capacity.cpu.0),
            reserved: u64::from(row.reserved.cpu.0),
            used: row.usage.map(|u| u64::from(u.cpu.0)),
        },
        memory_bytes: Triple {
            capacity: view.capacity.memory.0,
            reserved: row.reserved.memory.0,
            used: row.usage.map(|u| u.memory.0),
        },
        labels: view.labels,
        store_error: row.store_error,
    }
}

fn workload_card(agent: &Agent, row: WorkloadRow, replicas: &[ReplicaRow]) -> WorkloadCard {
    // Running as `get workloads` counts available: on nodes not known to be down.
    let running = replicas
        .iter()
        .filter(|r| r.replica.workload == row.name)
        .filter(|r| {
            matches!(&r.place, ReplicaPlace::On { liveness, status, .. }
                if *liveness != Some(Liveness::Down) && status.state == ReplicaState::Running)
        })
        .count();
    WorkloadCard {
        rollout: agent.rollout_report(&row.name).map(|r| RolloutCard {
            updated: r.progress.updated,
            pending: r.progress.pending,
            failing: r.progress.failing,
            paused: r.paused,
            canary: r.canary.map(|c| c.count),
        }),
        name: row.name.to_string(),
        revision: row.revision,
        desired: row.replicas,
        running: u32::try_from(running).unwrap_or(u32::MAX),
        healthy: row.available,
        runtime: format!("{:?}", row.runtime).to_lowercase(),
    }
}

fn replica_line(row: ReplicaRow) -> ReplicaLine {
    let (workload, index) = (row.replica.workload.to_string(), row.replica.index);
    match row.place {
        ReplicaPlace::On {
            node,
            liveness: seen,
            status,
        } => ReplicaLine {
            workload,
            index,
            node: Some(node.to_string()),
            node_state: seen.map(liveness),
            state: status.state.to_string(),
            healthy: status.healthy,
            restarts: status.restarts,
            revision: status.revision,
            reason: status.reason,
        },
        ReplicaPlace::Unplaced { revision, why } => ReplicaLine {
            workload,
            index,
            node: None,
            node_state: None,
            state: "Unplaced".into(),
            healthy: false,
            restarts: 0,
            revision,
            reason: Some(why.to_string()),
        },
    }
}

fn lease_line(row: starling_protocol::api::LeaseRow) -> LeaseLine {
    LeaseLine {
        name: row.name.to_string(),
        holder: row.holder.map(|h| h.to_string()),
        epoch: row.epoch,
        fencing_token: row.fencing_token,
        expires_in_ms: row.expires_in_ms,
        here: match row.here {
            LeaseHere::Holder => "holder",
            LeaseHere::Candidate { .. } => "candidate",
            LeaseHere::Bystander => "bystander",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_named_by_address_or_localhost_pass_and_names_do_not() {
        for ok in [
            "127.0.0.1:7946",
            "localhost:7946",
            "LOCALHOST",
            "[::1]:7946",
            "10.0.0.2",
        ] {
            assert!(host_is_an_address(ok), "{ok}");
        }
        for refused in ["evil.example:7946", "", "localhost.evil.example", "[::1"] {
            assert!(!host_is_an_address(refused), "{refused}");
        }
    }

    #[test]
    fn the_token_is_required_off_loopback_and_kept_across_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let local: SocketAddr = "127.0.0.1:7946".parse().expect("address");
        assert_eq!(token_for(dir.path(), local), Ok(None));
        assert!(!dir.path().join(TOKEN_FILE).exists());
        let exposed: SocketAddr = "0.0.0.0:7946".parse().expect("address");
        let token = token_for(dir.path(), exposed)
            .expect("made")
            .expect("required");
        assert_eq!(token.len(), 64);
        assert_eq!(token_for(dir.path(), exposed), Ok(Some(token.clone())));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "only the owner reads it");
    }

    #[tokio::test]
    async fn off_loopback_the_view_needs_the_token() {
        let (calls, _rx) = mpsc::channel(1);
        let door = WebDoor::new(calls, Some("s3cret".into()));
        let client: SocketAddr = "10.0.0.9:5000".parse().expect("address");
        let ask = |uri: &str, bearer: Option<&str>| {
            let mut request = Request::builder().uri(uri).header(header::HOST, "10.0.0.2");
            if let Some(b) = bearer {
                request = request.header(header::AUTHORIZATION, format!("Bearer {b}"));
            }
            request.body(()).expect("request")
        };
        let status = |r: Option<Response<Body>>| r.expect("routed").status();
        assert_eq!(
            status(door.route(&ask("/", None), client).await),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(door.route(&ask("/?token=wrong", None), client).await),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(door.route(&ask("/?token=s3cret", None), client).await),
            StatusCode::OK
        );
        assert_eq!(
            status(door.route(&ask("/", Some("s3cret")), client).await),
            StatusCode::OK
        );
        assert!(door.route(&ask("/metrics", None), client).await.is_none());
    }
}
