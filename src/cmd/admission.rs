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
    admit_ca: Option<&str>,
) -> anyhow::Result<()> {
    let pin = admit_ca.map(ca_pin).transpose()?;
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
        let pin = pin.clone();
        let check = move |text: &str| {
            let token = JoinToken::parse(text).map_err(|e| e.to_string())?;
            let ca = starling_protocol::objects::seal::hex(&token.ca_fingerprint);
            match &pin {
                Some(pin) if !ca.starts_with(pin.as_str()) => Err(format!(
                    "the token is for the cluster whose CA is {}…, and this device takes only \
                     {pin}… (--admit-ca)",
                    &ca[..16]
                )),
                _ => Ok(()),
            }
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

/// `--admit-ca`: at least 16 hex digits of a CA certificate's SHA-256, lowercased.
fn ca_pin(text: &str) -> anyhow::Result<String> {
    let pin = text.trim().to_ascii_lowercase();
    if pin.len() < 16 || pin.len() > 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!(
            "--admit-ca {text:?}: expected 16 to 64 hex digits of the cluster CA's SHA-256 (the \
             second field of one of its join tokens)"
        );
    }
    Ok(pin)
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
