//! LAN discovery inside the fleet: started with it when `--discover mdns` is on, and the
//! members of this cluster that it finds taken as gossip seeds (see [`crate::lan`]).

use std::net::SocketAddr;

use starling_protocol::NodeId;
use tokio::sync::mpsc;

use super::{Fleet, FleetSettings};
use crate::agent::AgentError;
use crate::cluster::Membership;
use crate::lan::{Announcement, Lan, Role, cluster_tag};

/// Most seeds discovery adds: past it the oldest found goes (a LAN cannot grow the list
/// without bound by announcing addresses).
const FOUND_SEEDS_MAX: usize = 256;

/// Members found on the LAN, for the agent loop.
pub(crate) type Found = mpsc::Receiver<(NodeId, SocketAddr)>;

/// Starts discovery when `settings` ask for it: the handle, and where found members arrive
/// (a closed channel when it is off).
pub(super) fn start(
    settings: &FleetSettings,
    membership: &Membership,
    me: &NodeId,
    base: SocketAddr,
) -> Result<(Option<Lan>, Found), AgentError> {
    let (found_tx, found) = mpsc::channel(64);
    if !settings.discover {
        return Ok((None, found));
    }
    let ca = membership
        .ca()
        .map_err(|e| AgentError::Net(format!("LAN discovery: {e}")))?;
    let me = Announcement {
        node: me.clone(),
        base,
        role: Role::Member {
            cluster: cluster_tag(&ca.fingerprint()),
        },
    };
    let lan =
        Lan::start(settings.listen, &me, found_tx).map_err(|e| AgentError::Net(e.to_string()))?;
    tracing::info!(
        discovery = %crate::lan::discovery_addr(settings.listen),
        "LAN discovery on: members found by mDNS become gossip seeds; devices waiting to join are listed by `starling nodes --pending`"
    );
    Ok((Some(lan), found))
}

impl Fleet {
    /// Discovery found member `node` at `base`: knock at it in gossip rounds until gossip
    /// knows it.
    pub fn add_found_seed(&mut self, node: &NodeId, base: SocketAddr) {
        let known = base == self.base
            || self.seed_addrs.contains(&base)
            || self.peers.get(node).is_some_and(|p| p.base == base);
        if known {
            return;
        }
        if self.found_seeds >= FOUND_SEEDS_MAX {
            return;
        }
        self.found_seeds += 1;
        tracing::debug!(%node, %base, "gossip seed from LAN discovery");
        self.seed_addrs.push(base);
    }

    /// This node's LAN discovery, when on.
    pub fn lan(&self) -> Option<&Lan> {
        self.lan.as_ref()
    }
}
