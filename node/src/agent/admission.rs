//! `starling nodes --pending` and `starling node admit`: the devices LAN discovery found
//! waiting, and handing each a one-time join token (see [`crate::lan`]).

use starling_protocol::NodeId;
use starling_protocol::api::AdmitRow;
use starling_protocol::wire::ApiResponse;

use super::Agent;
use super::dispatch::Reply;
use super::handlers::error;

impl Agent {
    /// This node's fleet and LAN discovery, or why it cannot list or admit waiting devices.
    fn lan(&self) -> Result<(&super::fleet::Fleet, &crate::lan::Lan), String> {
        let fleet = self
            .fleet
            .as_ref()
            .ok_or("this node is not in a cluster: it cannot admit anyone")?;
        let lan = fleet.lan().ok_or_else(|| {
            if crate::lan::BUILT {
                "LAN discovery is off on this node (it was started with --seed, --join or \
                 --discover off, or listens on loopback); ask a node started with \
                 --discover mdns"
                    .into()
            } else {
                crate::lan::LanError::NotBuilt.to_string()
            }
        })?;
        Ok((fleet, lan))
    }

    /// The devices waiting to join that this node found on its LAN.
    pub(super) fn pending(&self) -> ApiResponse {
        match self.lan() {
            Ok((_, lan)) => ApiResponse::Pending(lan.pending()),
            Err(why) => error(why),
        }
    }

    /// Hands each named waiting device (every one with `all`) its own one-time join token and
    /// answers once every device answered or timed out. Who may ask was decided in
    /// `dispatch` (admins and the local socket, as for join tokens).
    pub(super) fn admit(&mut self, nodes: Vec<NodeId>, all: bool, reply: Reply) {
        let (fleet, lan) = match self.lan() {
            Ok(found) => found,
            Err(why) => {
                let _ = reply.send(error(why));
                return;
            }
        };
        let picked = lan.pick(&nodes, all);
        if picked.is_empty() {
            let _ = reply.send(error(
                "no device is waiting to join on this node's LAN (see `starling nodes --pending`)"
                    .into(),
            ));
            return;
        }
        let mut rows: Vec<AdmitRow> = Vec::new();
        let mut sends = Vec::new();
        for (node, outcome) in picked {
            match outcome.and_then(|peer| {
                // Seeds: this node first (the device found it), then every member it knows.
                let token = fleet
                    .membership
                    .token(fleet.seeds())
                    .map_err(|e| format!("cannot make a join token: {e}"))?;
                Ok(lan.admit(&peer, token.encode(), &self.node))
            }) {
                Ok(send) => sends.push((node, send)),
                Err(why) => rows.push(AdmitRow {
                    node,
                    error: Some(why),
                }),
            }
        }
        tokio::spawn(async move {
            let outcomes = futures_util::future::join_all(
                sends
                    .into_iter()
                    .map(|(node, send)| async move { (node, send.await) }),
            )
            .await;
            for (node, outcome) in outcomes {
                match &outcome {
                    Ok(()) => tracing::info!(%node, "admitted: the device took a join token"),
                    Err(why) => tracing::warn!(%node, "not admitted: {why}"),
                }
                rows.push(AdmitRow {
                    node,
                    error: outcome.err(),
                });
            }
            rows.sort_by(|a, b| a.node.cmp(&b.node));
            let _ = reply.send(ApiResponse::Admitted(rows));
        });
    }
}
