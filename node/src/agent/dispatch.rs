//! The agent's API: the one place that routes every [`ApiRequest`] to its handler and decides
//! who may ask what, for both doors (the data dir's Unix socket and QUIC).
//!
//! A door decodes a request, names its [`Caller`] and hands both to [`ApiDoor::serve`]. Logs
//! stream from the door's own task (and events are gathered from the peers there), so a large log never blocks the agent loop; a refused
//! request is answered there too. Everything else becomes a [`LoopCall`] that runs in the
//! agent loop, which owns the core and the store, and answers through its reply channel.
//!
//! Who may ask what:
//! - the socket (the data dir's owner): everything;
//! - operators' certificates: what their role allows ([`starling_protocol::access`]: admins
//!   everything, deployers what runs, viewers reads). A refusal names the operator, the role
//!   and the request, is logged and counted (`starling_api_refused_total`);
//! - nodes' certificates: everything but join tokens (letting a machine into the fleet is an
//!   operator's decision) and the operator's hand on rollouts: `rollout pause|resume|promote`
//!   and `apply --force` (`ApplyWith`), which override what health gates decided.
//!
//! Every node runs this door, and the node where a request enters decides with the operator's
//! role before anything runs. What a node then asks of another (a log it relays, pushed
//! writes) goes out under the node's own certificate, so a role must be checked here and
//! never left to the node that does the work.

use std::fmt;

use starling_protocol::access::{self, OperatorRole};
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
    /// An operator's certificate over QUIC.
    Operator {
        /// The certificate's name.
        name: String,
        /// What the certificate allows.
        role: OperatorRole,
    },
    /// A node's certificate over QUIC, by its node id.
    Node(String),
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Socket { uid: Some(uid) } => write!(f, "local socket (uid {uid})"),
            Caller::Socket { uid: None } => f.write_str("local socket"),
            Caller::Operator { name, .. } => write!(f, "operator {name}"),
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

    /// A read for a door of the agent's own that answers in its own type through its own
    /// channel (the web view): it never goes through [`route`], so it can only read.
    pub(super) fn inspect(read: impl FnOnce(&mut Agent) + Send + 'static) -> Self {
        let (reply, _) = oneshot::channel();
        LoopCall {
            work: Box::new(move |agent, _| read(agent)),
            reply,
        }
    }
}

/// What both doors need to serve API requests.
#[derive(Clone)]
pub(crate) struct ApiDoor {
    /// The agent loop's queue of calls.
    pub calls: mpsc::Sender<LoopCall>,
    /// Where logs come from.
    pub logs: LogSource,
    /// Where events come from.
    pub events: crate::events::EventSource,
}

impl ApiDoor {
    /// Serves one request from `caller`, writing its answer frames to `out`: what the door
    /// counts, and whether it may go on (see [`Served`]).
    pub(crate) async fn serve<W: AsyncWrite + Unpin>(
        &self,
        request: ApiRequest,
        caller: &Caller,
        out: &mut W,
    ) -> Served {
        let work = match route(request, caller) {
            Route::Logs(logs) => {
                let open = super::logs::serve(
                    out,
                    &self.logs,
                    logs.name,
                    logs.replica,
                    logs.follow,
                    logs.tail_lines,
                )
                .await;
                return Served::answered(open);
            }
            Route::Events(query) => {
                let answer = self.events.answer(query).await;
                return Served::answered(write_frame(out, &answer).await.is_ok());
            }
            Route::Refused(message) => {
                return Served {
                    open: write_frame(out, &error(message)).await.is_ok(),
                    refused: true,
                };
            }
            Route::Loop(work) => work,
        };
        let (reply, answer) = oneshot::channel();
        if self.calls.send(LoopCall { work, reply }).await.is_err() {
            return Served::answered(false);
        }
        Served::answered(match answer.await {
            Ok(response) => write_frame(out, &response).await.is_ok(),
            Err(_) => false,
        })
    }
}

/// How [`ApiDoor::serve`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Served {
    /// The door may take the caller's next request: false once the caller is gone or the
    /// agent loop has ended.
    pub open: bool,
    /// The request was refused for who asked it.
    pub refused: bool,
}

impl Served {
    fn answered(open: bool) -> Self {
        Served {
            open,
            refused: false,
        }
    }
}

/// Where a request goes.
enum Route {
    /// Streamed by the door.
    Logs(LogRequest),
    /// Answered by the door, which asks the peers (see `crate::events`): the agent loop
    /// never waits for them.
    Events(starling_protocol::events::EventQuery),
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

/// Every request, routed once; an operator's role is checked first, before anything runs
/// or is forwarded.
fn route(request: ApiRequest, caller: &Caller) -> Route {
    if let Caller::Operator { name, role } = caller
        && let Err(refusal) = access::authorize(name, *role, &request)
    {
        tracing::warn!(
            operator = %name,
            %role,
            action = %refusal.asked.action,
            what = refusal.asked.what,
            "refused a request the operator's role does not allow"
        );
        return Route::Refused(refusal.to_string());
    }
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
            Caller::Socket { .. } | Caller::Operator { .. } => answer(|a| a.token_create()),
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
        // A node's certificate writes no secret or config: that is an operator's decision.
        ApiRequest::ObjectSet {
            key,
            version,
            seals,
        } => operators_only(caller, &format!("write {}s", key.kind), || {
            write(move |a| a.object_set(key, *version, seals, &by))
        }),
        ApiRequest::ObjectDelete { key } => {
            operators_only(caller, &format!("delete {}s", key.kind), || {
                write(move |a| a.object_delete(key, &by))
            })
        }
        ApiRequest::ObjectList { kind } => answer(move |a| a.object_list(kind)),
        ApiRequest::SecretRecipients { name } => answer(move |a| a.secret_recipients(name)),
        ApiRequest::Events(query) => Route::Events(query),
        ApiRequest::Pending => answer(|a| a.pending()),
        // As a join token: letting a machine into the fleet is an operator's decision.
        ApiRequest::Admit { nodes, all } => operators_only(caller, "admit devices", move || {
            Route::Loop(Box::new(move |agent, reply| agent.admit(nodes, all, reply)))
        }),
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
        Caller::Socket { .. } | Caller::Operator { .. } => route(),
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

    fn operator(name: &str, role: OperatorRole) -> Caller {
        Caller::Operator {
            name: name.into(),
            role,
        }
    }

    fn apply_web() -> ApiRequest {
        ApiRequest::Apply {
            spec: Box::new(
                starling_protocol::spec::WorkloadSpec::from_toml(
                    "name = \"web\"\ncommand = \"sleep\"",
                )
                .expect("valid"),
            ),
            ack_replicas: 0,
        }
    }

    #[test]
    fn operators_are_refused_what_their_role_does_not_allow_with_the_reason() {
        let refusal = |request: ApiRequest, caller: &Caller| match route(request, caller) {
            Route::Refused(why) => Some(why),
            Route::Logs(_) | Route::Events(_) | Route::Loop(_) => None,
        };
        let viewer = operator("alice", OperatorRole::Viewer);
        assert_eq!(
            refusal(apply_web(), &viewer).as_deref(),
            Some(
                "operator alice (viewer) may not apply workloads; ask an admin for a deployer certificate"
            )
        );
        assert_eq!(refusal(ApiRequest::Status, &viewer), None);
        let logs = ApiRequest::Logs {
            name: starling_protocol::WorkloadName::new("web").expect("valid"),
            replica: None,
            follow: false,
            tail_lines: 10,
        };
        assert!(matches!(route(logs, &viewer), Route::Logs(_)));
        let deployer = operator("bob", OperatorRole::Deployer);
        assert_eq!(refusal(apply_web(), &deployer), None);
        for admin_only in [
            ApiRequest::TokenCreate,
            ApiRequest::Admit {
                nodes: vec![],
                all: true,
            },
            ApiRequest::RotateGossipKey,
            ApiRequest::Revoke { name: "n2".into() },
        ] {
            let why = refusal(admin_only, &deployer).expect("refused");
            assert!(why.starts_with("operator bob (deployer) may not "), "{why}");
        }
        // The local socket and admins are never asked for a role.
        for caller in [
            operator("ada", OperatorRole::Admin),
            Caller::Socket { uid: None },
        ] {
            assert_eq!(refusal(ApiRequest::RotateGossipKey, &caller), None);
            assert_eq!(refusal(apply_web(), &caller), None);
        }
    }

    #[test]
    fn writes_record_the_caller_as_before() {
        assert_eq!(
            Caller::Socket { uid: Some(1000) }.to_string(),
            "local socket (uid 1000)"
        );
        assert_eq!(Caller::Socket { uid: None }.to_string(), "local socket");
        assert_eq!(
            operator("ada", OperatorRole::Viewer).to_string(),
            "operator ada"
        );
        assert_eq!(Caller::Node("n1".into()).to_string(), "node n1");
    }

    #[test]
    fn only_nodes_are_refused_join_tokens() {
        let refused =
            |caller: Caller| matches!(route(ApiRequest::TokenCreate, &caller), Route::Refused(_));
        assert!(refused(Caller::Node("n1".into())));
        assert!(!refused(operator("ada", OperatorRole::Admin)));
        assert!(!refused(Caller::Socket { uid: None }));
        // Admitting a device hands it a token: the same rule.
        let admit = || ApiRequest::Admit {
            nodes: vec![],
            all: true,
        };
        assert!(matches!(
            route(admit(), &Caller::Node("n1".into())),
            Route::Refused(_)
        ));
        assert!(matches!(
            route(admit(), &operator("ada", OperatorRole::Admin)),
            Route::Loop(_)
        ));
        // Listing the waiting devices is a read.
        assert!(matches!(
            route(ApiRequest::Pending, &operator("v", OperatorRole::Viewer)),
            Route::Loop(_)
        ));
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
        for caller in [
            operator("ada", OperatorRole::Admin),
            operator("dee", OperatorRole::Deployer),
            Caller::Socket { uid: None },
        ] {
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
