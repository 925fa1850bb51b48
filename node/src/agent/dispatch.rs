//! The agent's API: the one place that routes every [`ApiRequest`] to its handler and decides
//! who may ask what, for both doors (the data dir's Unix socket and QUIC).
//!
//! A door decodes a request, names its [`Caller`] and hands both to [`ApiDoor::serve`]. Logs
//! stream from the door's own task, so a large log never blocks the agent loop; a refused
//! request is answered there too. Everything else becomes a [`LoopCall`] that runs in the
//! agent loop, which owns the core and the store, and answers through its reply channel.
//!
//! Who may ask what:
//! - the socket (the data dir's owner) and operators' certificates: everything;
//! - nodes' certificates: everything but join tokens (letting a machine into the fleet is an
//!   operator's decision) and the operator's hand on rollouts: `rollout pause|resume|promote`
//!   and `apply --force` (`ApplyWith`), which override what health gates decided.

use std::fmt;

use starling_protocol::wire::{ApiRequest, ApiResponse, ObjectKind};
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, oneshot};

use super::Agent;
use super::handlers::{WriteOutcome, error};
use super::logs::LogSource;
use crate::api::write_frame;

/// Who made a request: what the role checks look at, and what a write records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// The data dir's socket, with the caller's user id when the kernel tells it.
    Socket {
        /// The caller's user id.
        uid: Option<u32>,
    },
    /// An operator's certificate over QUIC, by its name.
    Operator(String),
    /// A node's certificate over QUIC, by its node id.
    Node(String),
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Socket { uid: Some(uid) } => write!(f, "local socket (uid {uid})"),
            Caller::Socket { uid: None } => f.write_str("local socket"),
            Caller::Operator(name) => write!(f, "operator {name}"),
            Caller::Node(name) => write!(f, "node {name}"),
        }
    }
}

/// Where an answer goes back to its door.
pub(crate) type Reply = oneshot::Sender<ApiResponse>;

/// A request's work for the agent loop, run there with the agent and its reply.
pub(crate) struct LoopCall {
    work: Work,
    reply: Reply,
}

type Work = Box<dyn FnOnce(&mut Agent, Reply) + Send>;

impl LoopCall {
    /// Runs the request in the agent loop; it answers now or later (a lease, a key rotation,
    /// a write waiting for its acks) through the reply.
    pub(super) fn run(self, agent: &mut Agent) {
        (self.work)(agent, self.reply);
    }
}

/// What both doors need to serve API requests.
#[derive(Clone)]
pub(crate) struct ApiDoor {
    /// The agent loop's queue of calls.
    pub calls: mpsc::Sender<LoopCall>,
    /// Where logs come from.
    pub logs: LogSource,
}

impl ApiDoor {
    /// Serves one request from `caller`, writing its answer frames to `out`. Returns false
    /// once the caller is gone or the agent loop has ended: the door then closes.
    pub(crate) async fn serve<W: AsyncWrite + Unpin>(
        &self,
        request: ApiRequest,
        caller: &Caller,
        out: &mut W,
    ) -> bool {
        let work = match route(request, caller) {
            Route::Logs(logs) => {
                return super::logs::serve(
                    out,
                    &self.logs,
                    logs.name,
                    logs.replica,
                    logs.follow,
                    logs.tail_lines,
                )
                .await;
            }
            Route::Refused(message) => return write_frame(out, &error(message)).await.is_ok(),
            Route::Loop(work) => work,
        };
        let (reply, answer) = oneshot::channel();
        if self.calls.send(LoopCall { work, reply }).await.is_err() {
            return false;
        }
        match answer.await {
            Ok(response) => write_frame(out, &response).await.is_ok(),
            Err(_) => false,
        }
    }
}

/// Where a request goes.
enum Route {
    /// Streamed by the door.
    Logs(LogRequest),
    /// Refused at the door, with the reason.
    Refused(String),
    /// Run by the agent loop.
    Loop(Work),
}

/// The fields of [`ApiRequest::Logs`].
struct LogRequest {
    name: starling_protocol::WorkloadName,
    replica: Option<u32>,
    follow: bool,
    tail_lines: u32,
}

/// Every request, routed once.
fn route(request: ApiRequest, caller: &Caller) -> Route {
    let by = caller.to_string();
    match request {
        ApiRequest::Logs {
            name,
            replica,
            follow,
            tail_lines,
        } => Route::Logs(LogRequest {
            name,
            replica,
            follow,
            tail_lines,
        }),
        ApiRequest::TokenCreate => match caller {
            Caller::Node(name) => {
                tracing::warn!(%name, "refused a join token to a node certificate");
                Route::Refused(format!(
                    "{name} is a node, not an operator: only operators may create join tokens"
                ))
            }
            Caller::Socket { .. } | Caller::Operator(_) => answer(|a| a.token_create()),
        },
        ApiRequest::Apply { spec, ack_replicas } => {
            write(move |a| a.apply(*spec, ack_replicas, None, false, &by))
        }
        ApiRequest::ApplyIf {
            spec,
            ack_replicas,
            if_revision,
        } => write(move |a| a.apply(*spec, ack_replicas, Some(&if_revision), false, &by)),
        ApiRequest::ApplyWith {
            spec,
            ack_replicas,
            if_revision,
            force,
        } => operators_only(caller, "apply with every option (--force)", || {
            write(move |a| a.apply(*spec, ack_replicas, if_revision.as_deref(), force, &by))
        }),
        ApiRequest::RolloutStatus { name } => answer(move |a| a.rollout_status(&name)),
        ApiRequest::Rollout { name, action } => {
            operators_only(caller, &format!("{action} a rollout"), || {
                write(move |a| a.rollout_control(name, action, &by))
            })
        }
        ApiRequest::Delete { name } => write(move |a| a.delete(name, &by)),
        ApiRequest::Scale { name, replicas } => write(move |a| a.scale(name, replicas, &by)),
        ApiRequest::Rollback { name } => write(move |a| a.rollback(name, &by)),
        ApiRequest::Get { kind } => answer(move |a| a.get(kind)),
        ApiRequest::Status => answer(|a| a.get(ObjectKind::Replicas)),
        ApiRequest::Describe { name } => answer(move |a| a.describe(&name)),
        ApiRequest::Revoke { name } => answer(move |a| a.revoke(name)),
        ApiRequest::RotateGossipKey => Route::Loop(Box::new(|a, reply| a.rotate_key(reply))),
        ApiRequest::LeaseAcquire {
            name,
            duration_ms,
            wait_ms,
        } => Route::Loop(Box::new(move |a, reply| {
            a.acquire(name, duration_ms, wait_ms, reply)
        })),
        ApiRequest::LeaseRelease { name } => answer(move |a| a.release(&name)),
        ApiRequest::Voters { set, force } => answer(move |a| a.voters_api(set, force)),
    }
}

/// `route` for operators and the local socket; a node's certificate is refused: a machine
/// of the fleet has no business overriding what its operators and health gates decided.
fn operators_only(caller: &Caller, what: &str, route: impl FnOnce() -> Route) -> Route {
    match caller {
        Caller::Node(name) => {
            tracing::warn!(%name, what, "refused an operator's request to a node certificate");
            Route::Refused(format!(
                "{name} is a node, not an operator: only operators may {what}"
            ))
        }
        Caller::Socket { .. } | Caller::Operator(_) => route(),
    }
}

/// A request the loop answers at once.
fn answer(handle: impl FnOnce(&mut Agent) -> ApiResponse + Send + 'static) -> Route {
    Route::Loop(Box::new(move |agent, reply| {
        let _ = reply.send(handle(agent));
    }))
}

/// A write: answered once pushed to peers as it asks (see `Agent::answer`).
fn write(handle: impl FnOnce(&mut Agent) -> WriteOutcome + Send + 'static) -> Route {
    Route::Loop(Box::new(move |agent, reply| {
        let outcome = handle(agent);
        agent.answer(outcome, reply);
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_protocol::wire::RolloutAction;

    #[test]
    fn writes_record_the_caller_as_before() {
        assert_eq!(
            Caller::Socket { uid: Some(1000) }.to_string(),
            "local socket (uid 1000)"
        );
        assert_eq!(Caller::Socket { uid: None }.to_string(), "local socket");
        assert_eq!(Caller::Operator("ada".into()).to_string(), "operator ada");
        assert_eq!(Caller::Node("n1".into()).to_string(), "node n1");
    }

    #[test]
    fn only_nodes_are_refused_join_tokens() {
        let refused =
            |caller: Caller| matches!(route(ApiRequest::TokenCreate, &caller), Route::Refused(_));
        assert!(refused(Caller::Node("n1".into())));
        assert!(!refused(Caller::Operator("ada".into())));
        assert!(!refused(Caller::Socket { uid: None }));
        // Anything else a node may ask.
        assert!(matches!(
            route(ApiRequest::Status, &Caller::Node("n1".into())),
            Route::Loop(_)
        ));
    }

    #[test]
    fn only_operators_may_pause_resume_promote_or_force_an_apply() {
        let web = || starling_protocol::WorkloadName::new("web").expect("valid");
        let spec = || {
            Box::new(
                starling_protocol::spec::WorkloadSpec::from_toml(
                    "name = \"web\"\ncommand = \"sleep\"",
                )
                .expect("valid"),
            )
        };
        let writes = || {
            [
                RolloutAction::Pause,
                RolloutAction::Resume,
                RolloutAction::Promote,
            ]
            .map(|action| ApiRequest::Rollout {
                name: web(),
                action,
            })
            .into_iter()
            .chain([ApiRequest::ApplyWith {
                spec: spec(),
                ack_replicas: 0,
                if_revision: None,
                force: true,
            }])
        };
        for request in writes() {
            match route(request, &Caller::Node("n1".into())) {
                Route::Refused(why) => assert!(why.contains("only operators"), "{why}"),
                _ => panic!("a node certificate was let through"),
            }
        }
        for caller in [Caller::Operator("ada".into()), Caller::Socket { uid: None }] {
            assert!(writes().all(|r| matches!(route(r, &caller), Route::Loop(_))));
        }
        // Reading a rollout is a read like any other.
        assert!(matches!(
            route(
                ApiRequest::RolloutStatus { name: web() },
                &Caller::Node("n1".into())
            ),
            Route::Loop(_)
        ));
    }
}
