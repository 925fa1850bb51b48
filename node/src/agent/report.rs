//! Custom metrics a replica reports to its own agent, for `[scaling] metric = "<name>"`.
//!
//! A replica finds the URL in `STARLING_METRICS_URL` and posts
//! `{"replica":"web/0","metrics":{"queue":12}}` to it (`POST /v1/report` with a
//! `Content-Length`, at most [`REPORT_BYTES_MAX`] bytes, at most [`METRICS_PER_REPORT_MAX`]
//! metrics, names as in the spec: lowercase letters, digits and '-'), e.g.
//! `curl -d '{"replica":"web/0","metrics":{"queue":12}}' "$STARLING_METRICS_URL"`. Values are non-negative numbers, rounded to whole
//! units (report milliseconds, not seconds, when fractions matter). Only replicas running on
//! this node may report; anything else is refused with a 4xx naming the problem. Each value is
//! kept with the time it arrived and read only while younger than
//! [`super::HostSettings::report_max_age`], so a replica that stops reporting stops counting.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode, header};
use serde::Deserialize;
use starling_protocol::WorkloadName;
use starling_protocol::placement::ReplicaId;

/// Largest report body.
pub const REPORT_BYTES_MAX: usize = 4_096;
/// Most metrics in one report, and kept per replica.
pub const METRICS_PER_REPORT_MAX: usize = 16;
/// Largest value accepted (beyond it a value is a bug, not a load).
pub const REPORT_VALUE_MAX: f64 = 1e15;

/// Why a report was refused, as the HTTP answer says it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The body is not a report: 400, naming the field.
    #[error("{0}")]
    Bad(String),
    /// The replica does not run here: 404.
    #[error("{0}")]
    NotHere(String),
    /// The request has no `Content-Length` (a chunked body is not taken): 411.
    #[error("Content-Length is required (at most {REPORT_BYTES_MAX} bytes)")]
    NoLength,
    /// The body is over [`REPORT_BYTES_MAX`]: 413.
    #[error("body: at most {REPORT_BYTES_MAX} bytes, got {0}")]
    TooLarge(usize),
}

impl ReportError {
    /// The HTTP status for it.
    pub fn status(&self) -> StatusCode {
        match self {
            ReportError::Bad(_) => StatusCode::BAD_REQUEST,
            ReportError::NotHere(_) => StatusCode::NOT_FOUND,
            ReportError::NoLength => StatusCode::LENGTH_REQUIRED,
            ReportError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

/// The values replicas reported, shared by the HTTP server (writes) and the agent loop
/// (reads, and says which replicas run here).
#[derive(Debug, Default)]
pub struct Reports {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    running: BTreeSet<ReplicaId>,
    values: BTreeMap<ReplicaId, BTreeMap<String, Reported>>,
}

#[derive(Debug, Clone, Copy)]
struct Reported {
    value: u64,
    at_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    replica: String,
    metrics: BTreeMap<String, f64>,
}

impl Reports {
    /// The replicas running here now: only they may report, and values of others go.
    pub fn set_running(&self, running: BTreeSet<ReplicaId>) {
        let mut state = self.lock();
        state.values.retain(|r, _| running.contains(r));
        state.running = running;
    }

    /// Takes one report body received at `now_ms`; returns the replica and how many values
    /// it set.
    pub fn handle_report(
        &self,
        now_ms: u64,
        body: &[u8],
    ) -> Result<(ReplicaId, usize), ReportError> {
        let (replica, metrics) = parse(body)?;
        let mut state = self.lock();
        if !state.running.contains(&replica) {
            return Err(ReportError::NotHere(format!(
                "replica {}/{} does not run on this node; report to the agent of the node that runs it (STARLING_METRICS_URL)",
                replica.workload, replica.index
            )));
        }
        let kept = state.values.entry(replica.clone()).or_default();
        let count = metrics.len();
        for (name, value) in metrics {
            kept.insert(
                name,
                Reported {
                    value,
                    at_ms: now_ms,
                },
            );
        }
        // Names a replica reported before stay until they are stale; the cap holds anyway.
        while kept.len() > METRICS_PER_REPORT_MAX {
            let oldest = kept
                .iter()
                .min_by_key(|(_, r)| r.at_ms)
                .map(|(n, _)| n.clone());
            match oldest {
                Some(name) => kept.remove(&name),
                None => break,
            };
        }
        Ok((replica, count))
    }

    /// The value of metric `name` of `replica`, if reported within `max_age_ms` of `now_ms`.
    pub fn value(
        &self,
        replica: &ReplicaId,
        name: &str,
        now_ms: u64,
        max_age_ms: u64,
    ) -> Option<u64> {
        let state = self.lock();
        let reported = state.values.get(replica)?.get(name)?;
        (now_ms.saturating_sub(reported.at_ms) <= max_age_ms).then_some(reported.value)
    }

    /// Drops values older than `max_age_ms`.
    pub fn prune(&self, now_ms: u64, max_age_ms: u64) {
        let mut state = self.lock();
        for kept in state.values.values_mut() {
            kept.retain(|_, r| now_ms.saturating_sub(r.at_ms) <= max_age_ms);
        }
        state.values.retain(|_, kept| !kept.is_empty());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Single inserts and removes: a panic elsewhere cannot leave it half-updated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A report body, checked: the replica as `WORKLOAD/INDEX` and every metric's name and value.
fn parse(body: &[u8]) -> Result<(ReplicaId, BTreeMap<String, u64>), ReportError> {
    let shape = r#"expected {"replica":"WORKLOAD/INDEX","metrics":{"NAME":NUMBER}}"#;
    let body: Body = serde_json::from_slice(body)
        .map_err(|e| ReportError::Bad(format!("body: {e}; {shape}")))?;
    let replica = body
        .replica
        .split_once('/')
        .and_then(|(w, i)| Some((WorkloadName::new(w).ok()?, i.parse::<u32>().ok()?)))
        .map(|(workload, index)| ReplicaId { workload, index })
        .ok_or_else(|| {
            ReportError::Bad(format!(
                "replica: {:?} is not WORKLOAD/INDEX (as in STARLING_WORKLOAD/STARLING_REPLICA)",
                body.replica
            ))
        })?;
    if body.metrics.is_empty() || body.metrics.len() > METRICS_PER_REPORT_MAX {
        return Err(ReportError::Bad(format!(
            "metrics: 1 to {METRICS_PER_REPORT_MAX} per report, got {}",
            body.metrics.len()
        )));
    }
    let mut metrics = BTreeMap::new();
    for (name, value) in body.metrics {
        if let Err(e) = WorkloadName::new(name.as_str()) {
            return Err(ReportError::Bad(format!(
                "metrics.{name}: a metric name {e}"
            )));
        }
        if !(0.0..=REPORT_VALUE_MAX).contains(&value) {
            return Err(ReportError::Bad(format!(
                "metrics.{name}: must be a number from 0 to {REPORT_VALUE_MAX:e}, got {value}"
            )));
        }
        // In range and finite (checked above), so the cast neither saturates nor wraps.
        metrics.insert(name, value.round() as u64);
    }
    Ok((replica, metrics))
}

/// Answers `POST /v1/report`: reads the body, bounded in bytes and by `timeout` (hyper
/// tells a client that waits for `100 Continue` to go on when the body is first read), and
/// hands it to `reports`. Returns the status and text.
pub(super) async fn answer(
    request: Request<Incoming>,
    timeout: Duration,
    reports: &Reports,
) -> (StatusCode, String) {
    if request.method() != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST /v1/report\n".into(),
        );
    }
    let outcome = match read_body(request, timeout).await {
        // Stamped when the whole body is in: a slow client does not make its values older.
        Ok(body) => reports.handle_report(crate::clock::now_ms(), &body),
        Err(e) => Err(e),
    };
    match outcome {
        Ok((replica, n)) => (
            StatusCode::OK,
            format!(
                "kept {n} metric(s) of {}/{}\n",
                replica.workload, replica.index
            ),
        ),
        Err(e) => (e.status(), format!("{e}\n")),
    }
}

async fn read_body(request: Request<Incoming>, timeout: Duration) -> Result<Bytes, ReportError> {
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .ok_or(ReportError::NoLength)?
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or_else(|| ReportError::Bad("Content-Length: not a number".into()))?;
    if length > REPORT_BYTES_MAX {
        return Err(ReportError::TooLarge(length));
    }
    // hyper holds the body to the announced length; the limit is a second guard.
    let body = Limited::new(request.into_body(), REPORT_BYTES_MAX);
    match tokio::time::timeout(timeout, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => Err(ReportError::Bad(format!(
            "body: {e} (of the {length} bytes Content-Length announced)"
        ))),
        Err(_) => Err(ReportError::Bad(format!(
            "body: the {length} bytes Content-Length announced did not arrive within {timeout:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    fn web(index: u32) -> ReplicaId {
        ReplicaId {
            workload: WorkloadName::new("web").expect("name"),
            index,
        }
    }

    fn refusal(reports: &Reports, body: &str) -> String {
        reports
            .handle_report(0, body.as_bytes())
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn a_report_of_a_running_replica_is_kept_until_stale() {
        let reports = Reports::default();
        reports.set_running([web(0)].into());
        let body = br#"{"replica":"web/0","metrics":{"queue":12.4,"lag-ms":3}}"#;
        assert_eq!(reports.handle_report(1_000, body), Ok((web(0), 2)));
        assert_eq!(reports.value(&web(0), "queue", 5_000, 30_000), Some(12));
        assert_eq!(
            reports.value(&web(0), "queue", 40_000, 30_000),
            None,
            "stale"
        );
        reports.prune(40_000, 30_000);
        assert_eq!(
            reports.value(&web(0), "lag-ms", 40_000, u64::MAX),
            None,
            "pruned"
        );
    }

    #[test]
    fn bad_reports_are_refused_naming_the_problem() {
        let reports = Reports::default();
        reports.set_running([web(0)].into());
        let e = refusal(&reports, "queue 12");
        assert!(
            e.starts_with("body: ") && e.contains(r#"{"replica":"#),
            "{e}"
        );
        let e = refusal(&reports, r#"{"replica":"web-0","metrics":{"q":1}}"#);
        assert!(
            e.starts_with(r#"replica: "web-0" is not WORKLOAD/INDEX"#),
            "{e}"
        );
        let e = refusal(&reports, r#"{"replica":"web/0","metrics":{"Queue":1}}"#);
        assert!(
            e.starts_with("metrics.Queue: a metric name may hold only"),
            "{e}"
        );
        let e = refusal(&reports, r#"{"replica":"web/0","metrics":{"q":-1}}"#);
        assert!(e.starts_with("metrics.q: must be a number from 0"), "{e}");
        let e = refusal(&reports, r#"{"replica":"web/0","metrics":{}}"#);
        assert!(e.starts_with("metrics: 1 to 16 per report, got 0"), "{e}");
        let e = refusal(&reports, r#"{"replica":"web/0","metrics":{"q":1},"x":2}"#);
        assert!(e.contains("unknown field `x`"), "{e}");
        let refused = reports.handle_report(0, br#"{"replica":"web/3","metrics":{"q":1}}"#);
        let e = refused.expect_err("not here");
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert!(
            e.to_string()
                .starts_with("replica web/3 does not run on this node"),
            "{e}"
        );
    }

    /// One request to a served HTTP port, written in `parts` with pauses; the answer.
    async fn post(addr: std::net::SocketAddr, parts: &[&str]) -> String {
        let mut client = TcpStream::connect(addr).await.expect("connect");
        for part in parts {
            client.write_all(part.as_bytes()).await.expect("write");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.expect("read");
        answer
    }

    #[tokio::test]
    async fn the_http_port_takes_reports_and_refuses_bad_ones_with_the_reason() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limits = super::super::http::HttpLimits::for_fd_limit(1_024);
        let limiter = super::super::http::Limiter::new(limits, std::sync::Arc::default());
        let reports = std::sync::Arc::new(Reports::default());
        reports.set_running([web(0)].into());
        let local = super::super::LocalSettings::default();
        let sources = super::super::http::Sources {
            reports: reports.clone(),
            ..Default::default()
        };
        let server = super::super::http::serve(listener, limiter, local, sources);
        let body = r#"{"replica":"web/0","metrics":{"queue":12}}"#;
        let head = format!(
            "POST /v1/report HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        // The body split over writes, after the head.
        let answer = post(addr, &[&head, &body[..10], &body[10..]]).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with("kept 1 metric(s) of web/0\n"), "{answer}");
        assert_eq!(
            reports.value(&web(0), "queue", crate::clock::now_ms(), 60_000),
            Some(12)
        );
        let bad = r#"{"replica":"web/0"}"#;
        let request = format!(
            "POST /v1/report HTTP/1.1\r\nContent-Length: {}\r\n\r\n{bad}",
            bad.len()
        );
        let answer = post(addr, &[&request]).await;
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request"), "{answer}");
        assert!(answer.contains("body: missing field `metrics`"), "{answer}");
        let huge = "POST /v1/report HTTP/1.1\r\nContent-Length: 100000\r\n\r\n";
        let answer = post(addr, &[huge]).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(
            answer.contains("at most 4096 bytes, got 100000"),
            "{answer}"
        );
        let answer = post(addr, &["POST /v1/report HTTP/1.1\r\n\r\n"]).await;
        assert!(answer.starts_with("HTTP/1.1 411"), "{answer}");
        // A client that waits for `100 Continue` is told to go on.
        let waiting = format!("{}Expect: 100-continue\r\n\r\n", &head[..head.len() - 2]);
        let answer = post(addr, &[&waiting, body]).await;
        assert!(
            answer.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK"),
            "{answer}"
        );
        let answer = post(addr, &["GET /v1/report HTTP/1.1\r\n\r\n"]).await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
        server.abort();
    }

    #[test]
    fn values_of_replicas_that_stopped_here_are_dropped_and_names_are_capped() {
        let reports = Reports::default();
        reports.set_running([web(0)].into());
        for i in 0..20u64 {
            let body = format!(r#"{{"replica":"web/0","metrics":{{"m{i}":{i}}}}}"#);
            reports.handle_report(i, body.as_bytes()).expect("kept");
        }
        assert_eq!(
            reports.value(&web(0), "m0", 20, 100),
            None,
            "oldest name dropped"
        );
        assert_eq!(reports.value(&web(0), "m19", 20, 100), Some(19));
        reports.set_running(BTreeSet::new());
        assert_eq!(reports.value(&web(0), "m19", 20, 100), None);
    }
}
