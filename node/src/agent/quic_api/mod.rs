//! The agent's QUIC server: who may ask what, decided by the dialer's certificate.
//!
//! - operators (user certificates) and nodes: API requests, served by `dispatch` (which keeps
//!   join tokens for operators, and holds each operator to its certificate's role);
//! - nodes only: peer messages (anti-entropy, pushed entries, verdicts);
//! - no certificate (a joiner): only the join exchange, checked against the token secret.
//!
//! Certificates from another CA never get this far: the TLS handshake refuses them. Revoked
//! names are refused after the handshake. Failed handshakes and unreadable requests are
//! counted by why (`rejects`).
//!
//! Anyone who can reach the port may start a handshake, so what a dialer can hold is capped
//! ([`crate::net::quic::QuicSettings`], counted in `limits`): connections in total and per IP address (refused before the handshake,
//! which costs the server nothing but one packet), connections without a certificate (closed
//! right after theirs), streams per connection (the transport's flow control), and the time
//! a stream may take to say what it wants. A connection proven by a certificate of the
//! cluster (a node's or an operator's) leaves its address's count: the per-address cap is
//! against hosts that hold handshakes or joins open, and must not mistake a fleet behind one
//! NAT address, or an operator's script, for a flood.
//!
//! A handshake from a spoofed address never completes but holds its slot until it times out.
//! So once a cap is half taken, a new dialer must first prove its address (a stateless retry,
//! one round trip, which QUIC clients follow by themselves): spoofed handshakes can then take
//! at most half of a cap, and dialers that can prove their address keep the other half.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use starling_protocol::NodeId;
use starling_protocol::access::OperatorRole;
use starling_protocol::wire::{JoinReply, JoinRequest, PeerMessage, Request};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::dispatch::{ApiDoor, Caller};
use super::fleet::PeerCall;
use super::handlers::error as refused;
use crate::api::{read_frame, write_frame};
use crate::identity::Role;
use crate::net::tls::peer_of;

/// A join request with the way back.
pub(crate) type JoinCall = (JoinRequest, oneshot::Sender<JoinReply>);

/// Where the server sends what it accepted.
#[derive(Clone)]
pub(crate) struct Routes {
    pub api: ApiDoor,
    pub peers: mpsc::Sender<PeerCall>,
    pub joins: mpsc::Sender<JoinCall>,
    pub revoked: Arc<RwLock<BTreeSet<String>>>,
}

mod limits;
mod rejects;
#[cfg(test)]
mod tests;

pub(crate) use limits::Limiter;
pub use limits::QuicCounters;
pub use rejects::{BadRequests, HandshakeFailures};

/// Accepts connections on `endpoint` until it closes, within `limiter`'s caps; a stream's
/// request must arrive within `request_timeout`.
pub(crate) fn serve(
    endpoint: quinn::Endpoint,
    routes: Routes,
    limiter: Arc<Limiter>,
    request_timeout: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let remote = incoming.remote_address();
            if incoming.may_retry() && limiter.wants_validation(remote) {
                limiter.counters.validations.fetch_add(1, Ordering::Relaxed);
                // Cannot fail: `may_retry` said the address is not validated yet.
                let _ = incoming.retry();
                continue;
            }
            // Refused before the handshake: a flood costs one packet each, no task, no crypto.
            let Ok(mut slot) = limiter.admit(remote) else {
                incoming.refuse();
                continue;
            };
            let routes = routes.clone();
            let counters = limiter.counters.clone();
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(conn) => conn,
                    Err(e) => {
                        let reason = counters.handshake_failures.count(&e);
                        tracing::debug!(%remote, reason, "QUIC handshake failed: {e}");
                        return;
                    }
                };
                let who = peer_of(&conn);
                match &who {
                    Some(_) => slot.proven(),
                    None => {
                        if slot.anonymous(conn.remote_address()).is_err() {
                            conn.close(2u32.into(), b"too many joiners at once; retry in a moment");
                            return;
                        }
                    }
                }
                if let Some((_, name)) = &who {
                    let revoked = routes
                        .revoked
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(name);
                    if revoked {
                        tracing::warn!(%name, "refused a revoked certificate");
                        conn.close(1u32.into(), b"certificate revoked");
                        return;
                    }
                }
                while let Ok((send, recv)) = conn.accept_bi().await {
                    // A revocation applies to open connections too, from their next request.
                    if let Some((_, name)) = &who
                        && routes
                            .revoked
                            .read()
                            .unwrap_or_else(|e| e.into_inner())
                            .contains(name)
                    {
                        conn.close(1u32.into(), b"certificate revoked");
                        return;
                    }
                    let (routes, who) = (routes.clone(), who.clone());
                    let counters = counters.clone();
                    tokio::spawn(async move {
                        stream(send, recv, who, routes, &counters, request_timeout).await;
                    });
                }
                // The slot goes with this task: the connection is over.
                drop(slot);
            });
        }
    })
}

async fn stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    who: Option<(Role, String)>,
    routes: Routes,
    counters: &QuicCounters,
    request_timeout: Duration,
) {
    let refused_requests = &counters.refused_requests;
    let read = tokio::time::timeout(request_timeout, read_frame::<Request, _>(&mut recv)).await;
    let request = match read {
        Ok(Ok(Some(request))) => request,
        Ok(Ok(None)) => return,
        Err(_) => {
            let _ = write_frame(
                &mut send,
                &refused(format!(
                    "no request within {} ms; closing the stream",
                    request_timeout.as_millis()
                )),
            )
            .await;
            let _ = send.finish();
            return;
        }
        Ok(Err(e)) => {
            // A malformed request gets a clear answer and changes nothing.
            counters.bad_requests.count(&e);
            let _ = write_frame(&mut send, &refused(format!("bad request: {e}"))).await;
            let _ = send.finish();
            return;
        }
    };
    match (request, who) {
        (Request::Api(request), Some((role, name))) => {
            let (caller, refusals) = match role {
                Role::Node => (Caller::Node(name), &refused_requests.node),
                Role::User(role) => {
                    let refusals = match role {
                        OperatorRole::Admin => &refused_requests.admin,
                        OperatorRole::Deployer => &refused_requests.deployer,
                        OperatorRole::Viewer => &refused_requests.viewer,
                    };
                    (Caller::Operator { name, role }, refusals)
                }
            };
            if routes.api.serve(request, &caller, &mut send).await.refused {
                refusals.fetch_add(1, Ordering::Relaxed);
            }
        }
        (Request::Peer(message), Some((Role::Node, name))) => {
            let Ok(from) = NodeId::new(name) else {
                return;
            };
            let (tx, rx) = oneshot::channel();
            let call = PeerCall {
                from,
                message,
                reply: tx,
            };
            if routes.peers.send(call).await.is_err() {
                return;
            }
            if let Ok(answer) = rx.await {
                let _ = write_frame::<PeerMessage, _>(&mut send, &answer).await;
            }
        }
        (Request::Join(request), None) => {
            let (tx, rx) = oneshot::channel();
            if routes.joins.send((request, tx)).await.is_err() {
                return;
            }
            if let Ok(answer) = rx.await {
                let _ = write_frame(&mut send, &answer).await;
            }
        }
        (Request::Join(_), Some(_)) => {
            let _ = write_frame(
                &mut send,
                &JoinReply::Refused("this certificate already belongs to the cluster".into()),
            )
            .await;
        }
        (Request::Peer(_), Some((Role::User(_), name))) => {
            tracing::warn!(%name, "refused a peer message from a user certificate");
            let _ = write_frame(
                &mut send,
                &refused(format!(
                    "{name} is a user, not a node: peer messages refused"
                )),
            )
            .await;
        }
        (_, None) => {
            let _ = write_frame(
                &mut send,
                &refused("refused: no client certificate from this cluster".into()),
            )
            .await;
        }
    }
    let _ = send.finish();
}
