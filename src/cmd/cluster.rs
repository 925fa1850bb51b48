//! Cluster membership commands: `init`, `join`, `token create`, `user add|remove`,
//! `node remove`, `key rotate` (`node wait` and `node generation`: `node_wait`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, bail};
use starling_node::cluster::{self, ClientDir, Membership};
use starling_node::identity::JoinToken;
use starling_node::store::{Identity, Store, create_private_dir};
use starling_protocol::NodeId;
use starling_protocol::access::{self, OperatorRole};
use starling_protocol::wire::ApiRequest;

use super::client::{Target, call};
use crate::output::Format;
use crate::output::progress::{self, Progress};

/// `starling init`.
#[derive(clap::Args)]
pub struct InitArgs {
    /// The cluster's name.
    #[arg(long, default_value = "starling")]
    cluster: String,
    /// The first node's id [default: the host's short name and a random suffix].
    #[arg(long)]
    node_id: Option<String>,
    /// Base address peers reach this node at (gossip; QUIC is port + 1, probes port + 2).
    #[arg(long, default_value = "127.0.0.1:7946")]
    advertise: SocketAddr,
}

/// `starling join`.
#[derive(clap::Args)]
pub struct JoinArgs {
    /// The token (from `starling init` or `starling token create`).
    token: String,
    /// The node's id [default: the host's short name and a random suffix]; it must not be
    /// the id of a member of the fleet.
    #[arg(long)]
    node_id: Option<String>,
    /// Base address peers reach this node at.
    #[arg(long)]
    advertise: Option<SocketAddr>,
}

/// `starling token`.
#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Print a new one-time join token: from a member's --data-dir, or with --peer from that
    /// peer over QUIC (operator certificates only; the token names the peer as the seed).
    Create,
}

/// `starling user`.
#[derive(clap::Subcommand)]
pub enum UserCommand {
    /// Write a client certificate for operator NAME into the cluster dir.
    Add {
        /// The operator's name.
        name: String,
        /// What the certificate may do: admin (everything), deployer (read, and change what
        /// runs: apply, delete, scale, rollback, rollouts, leases; no join tokens, removals,
        /// key rotation or voter changes) or viewer (read only).
        #[arg(long, default_value = "admin", value_parser = parse_role)]
        role: OperatorRole,
    },
    /// Revoke operator NAME's certificate, fleet-wide.
    Remove {
        /// The operator's name.
        name: String,
    },
}

/// `starling node`.
#[derive(clap::Subcommand)]
pub enum NodeCommand {
    /// Remove node NAME from the fleet: its certificate is refused everywhere and its
    /// replicas move.
    Remove {
        /// The node's id.
        name: String,
    },
    /// Print node NAME's generation (its agent's start time in ms, larger at every start), for
    /// `node wait --restarted-after`.
    Generation {
        /// The node's id.
        name: String,
    },
    /// Wait until node NAME is back alive (in a newer life with --restarted-after) and, with
    /// --healthy, every workload runs its desired count of healthy replicas; exit 1 on timeout.
    Wait(super::node_wait::WaitArgs),
    /// Admit devices waiting to join on the answering node's LAN (`starling nodes --pending`):
    /// each is handed a one-time join token over the channel it was discovered on and joins
    /// with it (TLS pinned to the cluster CA).
    Admit {
        /// The devices, by the name they announce.
        names: Vec<String>,
        /// Every device waiting (those whose name is announced once).
        #[arg(long)]
        all: bool,
    },
}

/// `starling key`.
#[derive(clap::Subcommand)]
pub enum KeyCommand {
    /// Install a new gossip key on every live node, then seal with it (old keys still open).
    Rotate,
}

/// `starling token create`: from the peer with `--peer`, else from the local data dir.
pub fn token(target: &Target, what: TokenCommand) -> anyhow::Result<ExitCode> {
    match what {
        TokenCommand::Create if target.peer.is_some() => super::client::token_create(target),
        TokenCommand::Create => token_create(&target.data_dir),
    }
}

/// `starling user add|remove NAME`.
pub fn user(target: &Target, what: UserCommand, format: Format) -> anyhow::Result<ExitCode> {
    match what {
        UserCommand::Add { name, role } => {
            user_add(&target.data_dir, &target.cluster_dir, &name, role)
        }
        UserCommand::Remove { name } => call(target, ApiRequest::Revoke { name }, format),
    }
}

/// `starling node remove|generation|wait NAME`.
pub fn node(target: &Target, what: NodeCommand, format: Format) -> anyhow::Result<ExitCode> {
    match what {
        NodeCommand::Remove { name } => call(target, ApiRequest::Revoke { name }, format),
        NodeCommand::Generation { name } => super::node_wait::generation(target, &name),
        NodeCommand::Wait(args) => super::node_wait::wait(target, args),
        NodeCommand::Admit { names, all } => super::admission::admit(target, names, all, format),
    }
}

/// `starling key rotate`.
pub fn key(target: &Target, what: KeyCommand, format: Format) -> anyhow::Result<ExitCode> {
    let KeyCommand::Rotate = what;
    call(target, ApiRequest::RotateGossipKey, format)
}

/// The operator's client dir: `--cluster-dir`, else `$STARLING_CLUSTER_DIR`, else
/// `~/.config/starling`. An empty `$STARLING_CLUSTER_DIR` counts as unset: an empty path
/// names no dir, and errors about it would print a blank where the path belongs.
pub fn default_cluster_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STARLING_CLUSTER_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".config/starling")
}

/// The node id of `data_dir`: the stored one, else `asked`, else a new default (host name and
/// a random suffix). Nothing is written: the caller stores a new id with [`keep_node_id`] only
/// once the data dir really belongs to a cluster, so a failed join leaves nothing that a retry
/// would inherit.
fn node_id(data_dir: &Path, asked: Option<String>) -> anyhow::Result<(NodeId, bool)> {
    let store = Store::open(data_dir)?;
    if let Some(identity) = store.identity()? {
        if let Some(asked) = asked
            && asked != identity.node.as_str()
        {
            bail!(
                "{} belongs to node {}; a node id never changes (asked for {asked})",
                data_dir.display(),
                identity.node
            );
        }
        return Ok((identity.node, false));
    }
    let id = match asked {
        Some(id) => {
            NodeId::new(id.clone()).map_err(|e| anyhow::anyhow!("--node-id {id:?}: {e}"))?
        }
        None => starling_node::identity::host_node_id(),
    };
    Ok((id, true))
}

/// The node id a device waiting to be admitted announces: chosen as for a join and stored at
/// once, so the name an operator reads in `nodes --pending` survives the device's restarts.
pub fn waiting_node_id(data_dir: &Path, asked: Option<String>) -> anyhow::Result<NodeId> {
    create_private_dir(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let (node, new) = node_id(data_dir, asked)?;
    keep_node_id(data_dir, &node, new)?;
    Ok(node)
}

/// Stores a node id chosen by [`node_id`] (`new` says whether it is new to the data dir).
fn keep_node_id(data_dir: &Path, node: &NodeId, new: bool) -> anyhow::Result<()> {
    if new {
        Store::open(data_dir)?.write_identity(&Identity {
            node: node.clone(),
            created_ms: starling_node::clock::now_ms(),
        })?;
    }
    Ok(())
}

/// `starling init`: a new cluster with this data dir's node as its first member, plus an
/// `admin` user in the cluster dir.
pub fn init(target: &Target, args: InitArgs) -> anyhow::Result<ExitCode> {
    let (data_dir, cluster_dir) = (target.data_dir.as_path(), target.cluster_dir.as_path());
    let InitArgs {
        cluster: name,
        node_id: node,
        advertise,
    } = args;
    if Membership::exists(data_dir) {
        bail!(cluster::ClusterError::Exists(data_dir.to_path_buf()));
    }
    create_private_dir(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let (node, new) = node_id(data_dir, node)?;
    let membership = Membership::init(&name, &node)?;
    keep_node_id(data_dir, &node, new)?;
    membership.save(data_dir)?;
    Membership::write_advertise(data_dir, advertise)?;
    let client = ClientDir {
        dir: cluster_dir.to_path_buf(),
    };
    if !client.exists() {
        client.write(
            &membership,
            &NodeId::new("admin")?,
            OperatorRole::Admin,
            &[advertise.to_string()],
        )?;
        println!(
            "operator certificate for `admin` written to {}",
            cluster_dir.display()
        );
    }
    let token = membership.token(vec![advertise.to_string()])?;
    println!("cluster {name} created; node {node} is its first member");
    println!(
        "start it:  starling agent --data-dir {} --listen {advertise}",
        data_dir.display()
    );
    println!(
        "join more: starling agent --data-dir DIR --listen HOST:PORT --join {}",
        token.encode()
    );
    Ok(ExitCode::SUCCESS)
}

/// `starling join`: enrols this data dir's node through any peer of the token.
pub fn join(target: &Target, args: JoinArgs) -> anyhow::Result<ExitCode> {
    let data_dir = &target.data_dir;
    match join_if_needed(data_dir, &args.token, args.node_id, args.advertise)? {
        Some(node) => println!(
            "joined as node {node}; start the agent with `starling agent --data-dir {}`",
            data_dir.display()
        ),
        None => println!(
            "{} already belongs to a cluster; start the agent with `starling agent --data-dir {0}`",
            data_dir.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Joins unless the data dir already belongs to a cluster; returns the node id it joined as.
/// A refused or failed join writes nothing into the data dir.
pub fn join_if_needed(
    data_dir: &Path,
    token: &str,
    node: Option<String>,
    advertise: Option<SocketAddr>,
) -> anyhow::Result<Option<NodeId>> {
    if Membership::exists(data_dir) {
        return Ok(None);
    }
    let token = JoinToken::parse(token)?;
    create_private_dir(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let (node, new) = node_id(data_dir, node)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Steps go to stderr as they happen: a seed that does not answer takes JOIN_TIMEOUT.
    let mut progress = Progress::stderr();
    let started = Instant::now();
    progress.say(&format!(
        "join: token for {} seed(s), cluster CA pinned; joining as node {node}",
        token.seeds.len()
    ));
    let membership = runtime.block_on(cluster::join_with_steps(&token, &node, &mut |step| {
        progress.say(&progress::join_step(&step, &node, started.elapsed()));
    }))?;
    keep_node_id(data_dir, &node, new)?;
    membership.save(data_dir)?;
    if let Some(addr) = advertise {
        Membership::write_advertise(data_dir, addr)?;
    }
    progress.say(&format!(
        "join: certificate and cluster keys stored in {}",
        data_dir.display()
    ));
    Ok(Some(node))
}

fn advertised(data_dir: &Path) -> anyhow::Result<SocketAddr> {
    Membership::read_advertise(data_dir).with_context(|| {
        format!(
            "{} has no recorded address; start its agent once with --listen/--advertise",
            data_dir.display()
        )
    })
}

/// `starling token create`: a new one-time join token from a member's data dir (with
/// `--peer`, see `client::token_create`).
fn token_create(data_dir: &Path) -> anyhow::Result<ExitCode> {
    let membership = Membership::load(data_dir)?;
    let token = membership.token(vec![advertised(data_dir)?.to_string()])?;
    println!("{}", token.encode());
    Ok(ExitCode::SUCCESS)
}

/// `--role`: clap shows the error, which lists the roles.
fn parse_role(text: &str) -> Result<OperatorRole, String> {
    text.parse().map_err(|e: access::UnknownRole| e.to_string())
}

/// `starling user add NAME --role ROLE`: a client certificate for an operator, written to the
/// cluster dir.
fn user_add(
    data_dir: &Path,
    cluster_dir: &Path,
    name: &str,
    role: OperatorRole,
) -> anyhow::Result<ExitCode> {
    let membership = Membership::load(data_dir)?;
    let user = NodeId::new(name).map_err(|e| anyhow::anyhow!("user name {name:?}: {e}"))?;
    let client = ClientDir {
        dir: cluster_dir.to_path_buf(),
    };
    client.write(
        &membership,
        &user,
        role,
        &[advertised(data_dir)?.to_string()],
    )?;
    println!(
        "certificate for user {name} (role {role}) written to {} (use it with --cluster-dir {0})",
        cluster_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `init` without the printed instructions (for `starling up`).
pub fn init_quiet(
    data_dir: &Path,
    cluster_dir: &Path,
    name: &str,
    node: &str,
    advertise: SocketAddr,
) -> anyhow::Result<()> {
    if Membership::exists(data_dir) {
        return Ok(());
    }
    create_private_dir(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let (node, new) = node_id(data_dir, Some(node.to_string()))?;
    let membership = Membership::init(name, &node)?;
    keep_node_id(data_dir, &node, new)?;
    membership.save(data_dir)?;
    Membership::write_advertise(data_dir, advertise)?;
    ClientDir {
        dir: cluster_dir.to_path_buf(),
    }
    .write(
        &membership,
        &NodeId::new("admin")?,
        OperatorRole::Admin,
        &[advertise.to_string()],
    )?;
    Ok(())
}
