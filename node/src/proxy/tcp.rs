//! TCP: accept a client, connect to an instance (retrying others), copy bytes both ways.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use starling_protocol::service::ServiceTable;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::counters::Active;
use super::{ListenerContext, Rng, Shared};

/// Pause after a failed accept: it is mostly a lack of descriptors, which a busy loop would
/// not cure.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Buffer per direction of a connection: 16 KiB per connection in all, so the default 4,096
/// connections hold at most 64 MiB, which an edge device can spare. Requests and answers
/// through a service proxy are mostly small; a bulk transfer moves 8 KiB per syscall pair.
const COPY_BUFFER_BYTES: usize = 8 * 1024;

/// Accepts clients until the task is aborted; each client runs in a task of its own, so
/// closing the listener leaves it be.
pub(super) async fn serve(listener: TcpListener, context: ListenerContext, mut rng: Rng) {
    let context = Arc::new(context);
    let mut warned = false;
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                context.shared.counters.count_accept_error();
                // One line per burst: the metric counts the rest.
                if !warned {
                    tracing::warn!(
                        "proxy: accept failed on {}/{}, pausing between retries: {e}",
                        context.route.service,
                        context.route.port
                    );
                    warned = true;
                }
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        warned = false;
        let Some(slot) = Slot::take(&context.shared) else {
            context.shared.counters.count_refused_full();
            continue;
        };
        // The table as it is now: a choice never works from a listener-time copy.
        let table = context.shared.table.borrow().clone();
        let rng = Rng::new(rng.next_u64());
        let context = context.clone();
        tokio::spawn(async move {
            let _slot = slot;
            proxy(client, peer, &table, &context, rng).await;
        });
    }
}

/// One client connection: connect, then forward until both sides are done.
async fn proxy(
    client: TcpStream,
    peer: SocketAddr,
    table: &ServiceTable,
    context: &ListenerContext,
    rng: Rng,
) {
    let Some((upstream, active)) = connect(table, context, rng).await else {
        tracing::debug!(
            "proxy: no instance of {}/{} took {peer}'s connection",
            context.route.service,
            context.route.port
        );
        return;
    };
    // Both legs carry small writes (requests, answers) that must not wait for Nagle.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let stats = &active.stats;
    let mut client = Counted::new(client, &stats.bytes_to_instance);
    let mut upstream = Counted::new(upstream, &stats.bytes_from_instance);
    // A half-close travels as is: EOF from one side shuts down writing to the other, and the
    // other direction keeps flowing until it ends too.
    if let Err(e) = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut upstream,
        COPY_BUFFER_BYTES,
        COPY_BUFFER_BYTES,
    )
    .await
    {
        tracing::debug!(
            "proxy: {peer} <-> {} ({}/{}) ended: {e}",
            active.address,
            context.route.service,
            context.route.port
        );
    }
}

/// Connects to an instance: picks one, and on a refusal, error or timeout picks another not yet
/// tried, up to `attempts` in all. Once every instance was tried, one that only timed out may
/// be tried again: on a lossy link a lost SYN alone costs the kernel's one-second retransmit,
/// and the instance behind it is most likely alive (one that refused is not). `None` (counted)
/// when none could be reached.
async fn connect(
    table: &ServiceTable,
    context: &ListenerContext,
    mut rng: Rng,
) -> Option<(TcpStream, Active)> {
    let stats = &context.stats;
    let route = &context.route;
    let config = &context.shared.config;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut refused: Vec<SocketAddr> = Vec::new();
    if let Some(service) = table.services.get(&route.service) {
        for attempt in 0..config.attempts.max(1) {
            let chosen = stats
                .choose(service, &route.port, &tried, rng.draw())
                .or_else(|| stats.choose(service, &route.port, &refused, rng.draw()));
            let Some(active) = chosen else {
                break;
            };
            if attempt > 0 {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                active.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            let error = match tokio::time::timeout(
                config.connect_timeout,
                TcpStream::connect(active.address),
            )
            .await
            {
                Ok(Ok(stream)) => {
                    active.stats.opened.fetch_add(1, Ordering::Relaxed);
                    return Some((stream, active));
                }
                Ok(Err(e)) => {
                    refused.push(active.address);
                    e.to_string()
                }
                Err(_) => format!("no answer within {:?}", config.connect_timeout),
            };
            active
                .stats
                .connect_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                "proxy: connect to {} ({}/{}) failed: {error}",
                active.address,
                route.service,
                route.port
            );
            tried.push(active.address);
        }
    }
    if tried.is_empty() {
        stats.no_instance.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.gave_up.fetch_add(1, Ordering::Relaxed);
    }
    None
}

/// One of the proxy's `connections_max` connection slots, given back on drop.
struct Slot {
    shared: Arc<Shared>,
}

impl Slot {
    fn take(shared: &Arc<Shared>) -> Option<Slot> {
        let open = &shared.connections;
        if open.fetch_add(1, Ordering::Relaxed) >= shared.config.connections_max {
            open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot {
            shared: shared.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that counts the bytes read from it into a counter as they pass (so a long
/// connection shows its traffic before it ends).
struct Counted<'a, S> {
    inner: S,
    read_bytes: &'a AtomicU64,
}

impl<'a, S> Counted<'a, S> {
    fn new(inner: S, read_bytes: &'a AtomicU64) -> Self {
        Counted { inner, read_bytes }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = (buf.filled().len() - before) as u64;
            self.read_bytes.fetch_add(read, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
