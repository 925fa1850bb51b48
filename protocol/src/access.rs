//! Who may ask what: the operator roles and the action each API request takes.
//!
//! An operator's certificate carries one [`OperatorRole`]; every request is one [`Action`]
//! ([`asked`]); [`OperatorRole::allows`] decides. Every node applies this table at the door
//! where a request enters the fleet, before anything runs or is forwarded, so one table
//! holds everywhere and the sides agree without talking.
//!
//! The table:
//!
//! | action | what | admin | deployer | viewer |
//! |---|---|---|---|---|
//! | [`Action::View`] | get, describe, status, logs, rollout status, list voters | yes | yes | yes |
//! | [`Action::Deploy`] | apply, delete, scale, rollback, rollout pause/resume/promote, leases | yes | yes | no |
//! | [`Action::WriteConfig`] | write a config | yes | yes | no |
//! | [`Action::WriteSecret`] | write a secret | yes | no | no |
//! | [`Action::Admin`] | join tokens, revoke a node or user, rotate the gossip key, change voters | yes | no | no |
//!
//! [`asked`] matches every [`ApiRequest`] variant by name, with no catch-all arm: a new
//! request does not compile until someone decides which action it is. When unsure, pick the
//! stricter action: a role can be widened later, a leak cannot be taken back.
//!
//! Pure: no clock, no I/O. Node certificates and the local socket are not operators and do
//! not pass through here (see `node::agent::dispatch`).

use std::fmt;
use std::str::FromStr;

use crate::wire::{ApiRequest, RolloutAction};

/// What an operator's certificate lets its holder do, from most to least.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OperatorRole {
    /// Everything, including letting machines and people into the cluster and out of it.
    /// Certificates issued before roles existed carry no role and are admins.
    Admin,
    /// Changes what runs (and its configs) and reads everything; no secrets, no membership.
    Deployer,
    /// Reads only.
    Viewer,
}

/// What a request does, as far as permission goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Read state: workloads, replicas, nodes, rollouts, logs, events, voters.
    View,
    /// Change what runs: apply, delete, scale, roll back, steer a rollout; take and give up
    /// leases (a script's own election, which decides which instance acts).
    Deploy,
    /// Write a config: admin and deployer.
    WriteConfig,
    /// Write a secret: admin only.
    WriteSecret,
    /// Run the cluster itself: join tokens, revocations, gossip keys, lease voters.
    Admin,
}

/// A request's action, and what it asks in words an operator recognises ("apply
/// workloads"), for the refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked {
    /// The action decided on.
    pub action: Action,
    /// The request in a few words, a verb phrase that completes "may not ...".
    pub what: &'static str,
}

/// An operator refused: its text names the operator, the role, what was asked and which
/// certificate would allow it. Shown to the operator as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The certificate's name.
    pub operator: String,
    /// Its role.
    pub role: OperatorRole,
    /// What the request asked.
    pub asked: Asked,
}

/// The action of `request` (see the table in the module doc).
pub fn action_of(request: &ApiRequest) -> Action {
    asked(request).action
}

/// Whether operator `operator` holding `role` may make `request`: the action it takes when
/// allowed, else the refusal to answer.
pub fn authorize(
    operator: &str,
    role: OperatorRole,
    request: &ApiRequest,
) -> Result<Action, Refusal> {
    let asked = asked(request);
    if role.allows(asked.action) {
        Ok(asked.action)
    } else {
        Err(Refusal {
            operator: operator.to_string(),
            role,
            asked,
        })
    }
}

/// The action and description of `request`. One arm per variant, no wildcard: a new
/// variant must be placed here before the crate compiles.
pub fn asked(request: &ApiRequest) -> Asked {
    use crate::objects::ObjectKind;
    use Action::{Admin, Deploy, View};
    let (action, what) = match request {
        ApiRequest::Get { .. } => (View, "list objects"),
        ApiRequest::Describe { .. } => (View, "describe workloads"),
        ApiRequest::Status => (View, "read the fleet's status"),
        ApiRequest::Logs { .. } => (View, "read logs"),
        ApiRequest::RolloutStatus { .. } => (View, "read rollouts"),
        ApiRequest::Events(_) => (View, "read events"),
        ApiRequest::Voters { set: None, .. } => (View, "list the lease voters"),
        ApiRequest::Apply { .. } | ApiRequest::ApplyIf { .. } => (Deploy, "apply workloads"),
        // `--force` overrides a rolled-back template, a deploy decision like any other.
        ApiRequest::ApplyWith { .. } => (Deploy, "apply workloads"),
        ApiRequest::Delete { .. } => (Deploy, "delete workloads"),
        ApiRequest::Scale { .. } => (Deploy, "scale workloads"),
        ApiRequest::Rollback { .. } => (Deploy, "roll back workloads"),
        ApiRequest::Rollout { action, .. } => (
            Deploy,
            match action {
                RolloutAction::Pause => "pause rollouts",
                RolloutAction::Resume => "resume rollouts",
                RolloutAction::Promote => "promote rollouts",
            },
        ),
        ApiRequest::LeaseAcquire { .. } => (Deploy, "acquire leases"),
        ApiRequest::LeaseRelease { .. } => (Deploy, "release leases"),
        ApiRequest::TokenCreate => (Admin, "create join tokens"),
        // Admitting hands a device the cluster's keys, as a join token does.
        ApiRequest::Admit { .. } => (Admin, "admit devices"),
        ApiRequest::Pending => (View, "list devices waiting to join"),
        // Revoking takes a node out of the fleet or locks an operator out.
        ApiRequest::Revoke { .. } => (Admin, "remove nodes or users"),
        ApiRequest::RotateGossipKey => (Admin, "rotate the gossip key"),
        // Voters decide every lease's holder; a bad set stalls or splits them.
        ApiRequest::Voters { set: Some(_), .. } => (Admin, "change the lease voters"),
        ApiRequest::ObjectList { .. } => (View, "list secrets and configs"),
        ApiRequest::SecretRecipients { .. } => (Action::WriteSecret, "write secrets"),
        ApiRequest::ObjectSet { key, .. } | ApiRequest::ObjectDelete { key } => match key.kind {
            ObjectKind::Secret => (Action::WriteSecret, "write secrets"),
            ObjectKind::Config => (Action::WriteConfig, "write configs"),
        },
    };
    Asked { action, what }
}

impl OperatorRole {
    /// Every role, most powerful first.
    pub const ALL: [OperatorRole; 3] = [
        OperatorRole::Admin,
        OperatorRole::Deployer,
        OperatorRole::Viewer,
    ];

    /// Whether this role may take `action`.
    pub fn allows(self, action: Action) -> bool {
        match self {
            OperatorRole::Admin => true,
            OperatorRole::Deployer => {
                matches!(action, Action::View | Action::Deploy | Action::WriteConfig)
            }
            OperatorRole::Viewer => matches!(action, Action::View),
        }
    }

    /// The role's name, as on the command line and in certificates.
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Admin => "admin",
            OperatorRole::Deployer => "deployer",
            OperatorRole::Viewer => "viewer",
        }
    }
}

impl Action {
    /// The least powerful role that may take this action: what a refused operator should
    /// ask for.
    pub fn least_role(self) -> OperatorRole {
        match self {
            Action::View => OperatorRole::Viewer,
            Action::Deploy | Action::WriteConfig => OperatorRole::Deployer,
            Action::WriteSecret | Action::Admin => OperatorRole::Admin,
        }
    }
}

impl fmt::Display for OperatorRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of [`OperatorRole::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: the roles are admin, deployer and viewer")]
pub struct UnknownRole(pub String);

impl FromStr for OperatorRole {
    type Err = UnknownRole;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        OperatorRole::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| UnknownRole(text.to_string()))
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::View => "view",
            Action::Deploy => "deploy",
            Action::WriteConfig => "write-config",
            Action::WriteSecret => "write-secret",
            Action::Admin => "admin",
        })
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let needed = self.asked.action.least_role();
        let article = if needed == OperatorRole::Admin {
            "an"
        } else {
            "a"
        };
        write!(
            f,
            "operator {} ({}) may not {}; ask an admin for {article} {needed} certificate",
            self.operator, self.role, self.asked.what
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{NodeId, WorkloadName};
    use crate::spec::WorkloadSpec;
    use crate::wire::ObjectKind;

    /// One request of every variant (a new variant fails `asked` first, then belongs here).
    fn every_request() -> Vec<ApiRequest> {
        let web = || WorkloadName::new("web").expect("valid");
        let spec = || {
            Box::new(WorkloadSpec::from_toml("name = \"web\"\ncommand = \"sleep\"").expect("valid"))
        };
        let lease = || crate::lease::LeaseName::new("leader").expect("valid");
        vec![
            ApiRequest::Get {
                kind: ObjectKind::Workloads,
            },
            ApiRequest::Describe { name: web() },
            ApiRequest::Status,
            ApiRequest::Logs {
                name: web(),
                replica: None,
                follow: false,
                tail_lines: 10,
            },
            ApiRequest::RolloutStatus { name: web() },
            ApiRequest::Events(crate::events::EventQuery {
                workload: Some(web()),
                since: None,
                limit: 10,
                scope: crate::events::EventScope::Fleet,
            }),
            ApiRequest::Voters {
                set: None,
                force: false,
            },
            ApiRequest::Apply {
                spec: spec(),
                ack_replicas: 0,
            },
            ApiRequest::ApplyIf {
                spec: spec(),
                ack_replicas: 0,
                if_revision: "0".into(),
            },
            ApiRequest::ApplyWith {
                spec: spec(),
                ack_replicas: 0,
                if_revision: None,
                force: true,
            },
            ApiRequest::Delete { name: web() },
            ApiRequest::Scale {
                name: web(),
                replicas: 3,
            },
            ApiRequest::Rollback { name: web() },
            ApiRequest::Rollout {
                name: web(),
                action: RolloutAction::Pause,
            },
            ApiRequest::LeaseAcquire {
                name: lease(),
                duration_ms: 1000,
                wait_ms: 0,
            },
            ApiRequest::LeaseRelease { name: lease() },
            ApiRequest::TokenCreate,
            ApiRequest::Revoke { name: "n2".into() },
            ApiRequest::RotateGossipKey,
            ApiRequest::Voters {
                set: Some(vec![NodeId::new("n1").expect("valid")]),
                force: false,
            },
        ]
    }

    #[test]
    fn admins_may_do_everything() {
        for request in every_request() {
            assert!(authorize("root", OperatorRole::Admin, &request).is_ok());
        }
        for action in [
            Action::View,
            Action::Deploy,
            Action::WriteConfig,
            Action::WriteSecret,
            Action::Admin,
        ] {
            assert!(OperatorRole::Admin.allows(action));
        }
    }

    #[test]
    fn viewers_may_only_read() {
        let allowed: Vec<&str> = every_request()
            .iter()
            .filter(|r| authorize("eve", OperatorRole::Viewer, r).is_ok())
            .map(|r| asked(r).what)
            .collect();
        assert_eq!(
            allowed,
            [
                "list objects",
                "describe workloads",
                "read the fleet's status",
                "read logs",
                "read rollouts",
                "read events",
                "list the lease voters"
            ]
        );
        for action in [
            Action::Deploy,
            Action::WriteConfig,
            Action::WriteSecret,
            Action::Admin,
        ] {
            assert!(!OperatorRole::Viewer.allows(action), "{action}");
        }
    }

    #[test]
    fn deployers_change_what_runs_but_not_who_belongs_or_secrets() {
        let refused: Vec<&str> = every_request()
            .iter()
            .filter(|r| authorize("dee", OperatorRole::Deployer, r).is_err())
            .map(|r| asked(r).what)
            .collect();
        assert_eq!(
            refused,
            [
                "create join tokens",
                "remove nodes or users",
                "rotate the gossip key",
                "change the lease voters"
            ]
        );
        assert!(OperatorRole::Deployer.allows(Action::WriteConfig));
        assert!(!OperatorRole::Deployer.allows(Action::WriteSecret));
    }

    #[test]
    fn the_least_role_of_an_action_is_the_weakest_that_allows_it() {
        for action in [
            Action::View,
            Action::Deploy,
            Action::WriteConfig,
            Action::WriteSecret,
            Action::Admin,
        ] {
            // Roles are ordered most powerful first, so a role allows exactly what the
            // weaker roles allow and more.
            for role in OperatorRole::ALL {
                assert_eq!(
                    role.allows(action),
                    role <= action.least_role(),
                    "{role} {action}"
                );
            }
        }
    }

    #[test]
    fn a_refusal_names_the_operator_the_role_the_request_and_the_fix() {
        let apply = ApiRequest::Apply {
            spec: Box::new(
                WorkloadSpec::from_toml("name = \"web\"\ncommand = \"sleep\"").expect("valid"),
            ),
            ack_replicas: 0,
        };
        let refusal = authorize("alice", OperatorRole::Viewer, &apply).expect_err("refused");
        assert_eq!(
            refusal.to_string(),
            "operator alice (viewer) may not apply workloads; ask an admin for a deployer certificate"
        );
        let refusal = authorize("bob", OperatorRole::Deployer, &ApiRequest::TokenCreate)
            .expect_err("refused");
        assert_eq!(
            refusal.to_string(),
            "operator bob (deployer) may not create join tokens; ask an admin for an admin certificate"
        );
    }

    #[test]
    fn roles_parse_from_their_names_and_unknown_ones_list_the_roles() {
        for role in OperatorRole::ALL {
            assert_eq!(role.to_string().parse::<OperatorRole>(), Ok(role));
        }
        let error = "root".parse::<OperatorRole>().expect_err("unknown");
        assert_eq!(
            error.to_string(),
            "unknown role \"root\": the roles are admin, deployer and viewer"
        );
        assert!("Admin".parse::<OperatorRole>().is_err());
    }
}
