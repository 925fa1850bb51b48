//! Zero-config joins on a LAN: a device with no cluster waits to be admitted
//! (`starling agent --discover mdns`), and operators list and admit the waiting devices
//! (`starling nodes --pending`, `starling node admit`). Discovery itself is `starling_node::lan`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use starling_node::identity::JoinToken;
use starling_node::lan::{Announcement, Role, discovery_addr, wait_for_admission};
use starling_protocol::NodeId;
use starling_protocol::wire::ApiRequest;

use super::client::{Target, call};
use crate::output::Format;

/// Announces this device on the LAN as waiting to join, until a member hands it a join token
/// (`starling node admit NAME`), then joins with it. A join that fails (a spent token, a
/// member that went away) goes back to waiting.
pub fn wait_then_join(
    data_dir: &Path,
    asked: Option<String>,
    listen: SocketAddr,
    advertise: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let node = super::cluster::waiting_node_id(data_dir, asked)?;
    let me = Announcement {
        node: node.clone(),
        base: advertise.unwrap_or(listen),
        role: Role::Pending,
    };
    loop {
        eprintln!(
            "waiting to join: announced on the LAN as {node} (mDNS, discovery on {}); on any \
             member run `starling node admit {node}`",
            discovery_addr(listen)
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let check = |text: &str| {
            JoinToken::parse(text)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let token = runtime.block_on(wait_for_admission(listen, &me, check))?;
        // The swarm's task and sockets go with the runtime before the join binds its own.
        drop(runtime);
        match super::cluster::join_if_needed(data_dir, &token, Some(node.to_string()), advertise) {
            Ok(_) => {
                eprintln!("admitted: joined the cluster as node {node}");
                return Ok(());
            }
            Err(e) => eprintln!("the join with the token this device was given failed: {e:#}"),
        }
    }
}

/// `starling nodes --pending`.
pub fn pending(target: &Target, format: Format) -> anyhow::Result<ExitCode> {
    call(target, ApiRequest::Pending, format)
}

/// `starling node admit NAME... | --all`.
pub fn admit(
    target: &Target,
    names: Vec<String>,
    all: bool,
    format: Format,
) -> anyhow::Result<ExitCode> {
    if all != names.is_empty() {
        anyhow::bail!("name the devices to admit, or give --all (not both)");
    }
    let nodes = names
        .iter()
        .map(|n| NodeId::new(n.clone()).map_err(|e| anyhow::anyhow!("{n:?}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    call(target, ApiRequest::Admit { nodes, all }, format)
}
