//! `starling logs`: served from whichever node runs the replica. A node that does not run it
//! forwards the request over QUIC to the node that does (as gossip reports it) and relays
//! the chunks; with `follow`, new lines stream until the client goes away.

use std::collections::BTreeMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use starling_protocol::WorkloadName;
use starling_protocol::placement::ReplicaId;
use starling_protocol::wire::{ApiError, ApiRequest, ApiResponse, Request};
use tokio::io::AsyncWrite;

use crate::api::{read_frame, write_frame};
use crate::net::quic::Quic;
use crate::runtime::Runtime;
use crate::runtime::Runtimes;

/// Where each replica runs on a peer: its QUIC address. Rebuilt by the agent loop.
pub(crate) type Locator = Arc<RwLock<BTreeMap<ReplicaId, SocketAddr>>>;

/// Lines per chunk.
const CHUNK_LINES: usize = 500;
/// Largest read per follow step.
const FOLLOW_BYTES_MAX: u64 = 1 << 20;

/// What a log request needs besides the request.
#[derive(Clone)]
pub(crate) struct LogSource {
    pub runtime: Arc<Runtimes>,
    pub locator: Locator,
    pub quic: Option<Arc<Quic>>,
    /// How often a followed process log is checked for new lines.
    pub follow_interval: Duration,
}

/// Answers a `Logs` request on `stream`. Returns false when the client is gone.
pub(crate) async fn serve<W: AsyncWrite + Unpin>(
    stream: &mut W,
    source: &LogSource,
    name: WorkloadName,
    replica: Option<u32>,
    follow: bool,
    tail_lines: u32,
) -> bool {
    let id = ReplicaId {
        workload: name.clone(),
        index: replica.unwrap_or(0),
    };
    let remote = source
        .locator
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
        .copied();
    if let (Some(addr), Some(quic)) = (remote, &source.quic) {
        return forward(stream, quic, addr, name, replica, follow, tail_lines).await;
    }
    if let Some(engine) = source.runtime.container_of(&id) {
        // Container logs come from the engine.
        let lines = engine.log_tail(&id, tail_lines.min(100_000) as usize).await;
        let follow_stream = if follow { engine.follow(&id) } else { None };
        if !send(stream, lines, follow_stream.is_none()).await {
            return false;
        }
        let Some(new_lines) = follow_stream else {
            return true;
        };
        let mut new_lines = std::pin::pin!(new_lines);
        while let Some(text) = futures_util::StreamExt::next(&mut new_lines).await {
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            if !send(stream, lines, false).await {
                return false;
            }
        }
        // The container ended: end the stream.
        return send(stream, Vec::new(), true).await;
    }
    let path = source.runtime.process.replica_dir(&id).join("output.log");
    if !path.exists() {
        let answer = ApiResponse::Error(ApiError {
            message: format!(
                "no log for {}/{}: no node this node knows of runs it",
                id.workload, id.index
            ),
            fields: Vec::new(),
        });
        return write_frame(stream, &answer).await.is_ok();
    }
    let lines = source
        .runtime
        .log_tail(&id, tail_lines.min(100_000) as usize)
        .await;
    let start = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if !send(stream, lines, !follow).await {
        return false;
    }
    if follow {
        follow_file(stream, &path, start, source.follow_interval).await
    } else {
        true
    }
}

async fn send<W: AsyncWrite + Unpin>(stream: &mut W, lines: Vec<String>, last: bool) -> bool {
    let mut chunks: Vec<Vec<String>> = lines.chunks(CHUNK_LINES).map(<[String]>::to_vec).collect();
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    let n = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let end = last && i + 1 == n;
        if write_frame(stream, &ApiResponse::LogChunk { lines: chunk, end })
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

/// Streams lines appended to `path` after byte `offset`; a shrinking file (copy-truncate
/// rotation) restarts from its beginning.
async fn follow_file<W: AsyncWrite + Unpin>(
    stream: &mut W,
    path: &Path,
    mut offset: u64,
    interval: Duration,
) -> bool {
    let mut partial = String::new();
    loop {
        tokio::time::sleep(interval).await;
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len < offset {
            offset = 0;
            partial.clear();
        }
        let mut lines = Vec::new();
        if len > offset {
            let want = (len - offset).min(FOLLOW_BYTES_MAX);
            let mut bytes = Vec::with_capacity(want as usize);
            let read = std::fs::File::open(path).and_then(|mut f| {
                f.seek(SeekFrom::Start(offset))?;
                f.take(want).read_to_end(&mut bytes)
            });
            if let Ok(n) = read {
                offset += n as u64;
                partial.push_str(&String::from_utf8_lossy(&bytes));
                while let Some(at) = partial.find('\n') {
                    lines.push(partial[..at].to_string());
                    partial.drain(..=at);
                }
            }
        }
        // An empty chunk doubles as a keep-alive: a client that left makes the write fail.
        if !send(stream, lines, false).await {
            return false;
        }
    }
}

async fn forward<W: AsyncWrite + Unpin>(
    stream: &mut W,
    quic: &Quic,
    addr: SocketAddr,
    name: WorkloadName,
    replica: Option<u32>,
    follow: bool,
    tail_lines: u32,
) -> bool {
    let request = Request::Api(ApiRequest::Logs {
        name,
        replica,
        follow,
        tail_lines,
    });
    let (_send, mut recv) = match quic.open(addr, &request).await {
        Ok(s) => s,
        Err(e) => {
            let answer = ApiResponse::Error(ApiError {
                message: format!("the node running it did not answer: {e}"),
                fields: Vec::new(),
            });
            return write_frame(stream, &answer).await.is_ok();
        }
    };
    loop {
        match read_frame::<ApiResponse, _>(&mut recv).await {
            Ok(Some(answer)) => {
                let end = !matches!(answer, ApiResponse::LogChunk { end: false, .. });
                if write_frame(stream, &answer).await.is_err() {
                    return false;
                }
                if end {
                    return true;
                }
            }
            Ok(None) | Err(_) => {
                let answer = ApiResponse::LogChunk {
                    lines: vec!["(the node running it closed the log stream)".into()],
                    end: true,
                };
                return write_frame(stream, &answer).await.is_ok();
            }
        }
    }
}
