//! The fleet-wide answer to `starling get events`: the node asked answers with its own events
//! and those of every live peer, asked at once over QUIC, merged by HLC. Runs in the API
//! door's task, never in the agent loop, so slow peers delay only the caller.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use starling_protocol::NodeId;
use starling_protocol::events::{self, EventPage, EventQuery, EventScope, TEXT_BYTES_MAX};
use starling_protocol::wire::{ApiRequest, ApiResponse, Request};

use super::EventLog;
use crate::net::quic::Quic;

/// A member of the fleet as the event query sees it: where to ask it (`None`: down, not
/// asked). Rebuilt by the agent loop at every gossip round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    /// The member.
    pub node: NodeId,
    /// Its QUIC address, when it is not down.
    pub quic: Option<SocketAddr>,
}

/// What an event query needs besides the query.
#[derive(Clone)]
pub(crate) struct EventSource {
    /// This node.
    pub node: NodeId,
    /// This node's log, shared with the agent loop that appends to it.
    pub log: Arc<Mutex<EventLog>>,
    /// The other members.
    pub members: Arc<RwLock<Vec<Member>>>,
    /// The fleet's QUIC endpoint (`None`: a node alone).
    pub quic: Option<Arc<Quic>>,
    /// How long a peer has to answer.
    pub peer_timeout: Duration,
}

impl EventSource {
    /// The answer to `query`: this node's events, and with [`EventScope::Fleet`] every live
    /// member's, merged. Members that are down or did not answer in time are named in the
    /// page's `missing`.
    pub(crate) async fn answer(&self, query: EventQuery) -> ApiResponse {
        let own = self.own(&query);
        if query.scope == EventScope::ThisNode {
            return ApiResponse::Events(Box::new(own));
        }
        let members = self
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let peer_query = EventQuery {
            scope: EventScope::ThisNode,
            ..query.clone()
        };
        let mut missing = Vec::new();
        let mut asks = Vec::new();
        for member in members.into_iter().filter(|m| m.node != self.node) {
            match (member.quic, &self.quic) {
                (Some(addr), Some(quic)) => {
                    asks.push(self.ask(quic.clone(), member.node, addr, peer_query.clone()))
                }
                _ => missing.push((member.node, "down: not asked".to_string())),
            }
        }
        let mut pages = vec![own];
        for result in futures_util::future::join_all(asks).await {
            match result {
                Ok(page) => pages.push(page),
                Err(why) => missing.push(why),
            }
        }
        pages.push(EventPage {
            missing,
            ..EventPage::default()
        });
        ApiResponse::Events(Box::new(events::merge(&query, pages)))
    }

    fn own(&self, query: &EventQuery) -> EventPage {
        let (events, truncated) = self
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .query(query);
        EventPage {
            events,
            answered: vec![self.node.clone()],
            missing: Vec::new(),
            truncated,
        }
    }

    /// One peer's page; `Err` names the peer and why its events are missing.
    async fn ask(
        &self,
        quic: Arc<Quic>,
        node: NodeId,
        addr: SocketAddr,
        query: EventQuery,
    ) -> Result<EventPage, (NodeId, String)> {
        let request = Request::Api(ApiRequest::Events(query));
        let why = match quic
            .call::<ApiResponse>(addr, &request, self.peer_timeout)
            .await
        {
            Ok(ApiResponse::Events(page)) => {
                // A peer answers for itself only; anything else in its page is not believed.
                let foreign = page.events.iter().any(|e| e.node() != &node);
                if !foreign {
                    return Ok(EventPage {
                        answered: vec![node],
                        missing: Vec::new(),
                        ..*page
                    });
                }
                "answered with events of other nodes".to_string()
            }
            Ok(ApiResponse::Error(e)) => e.message,
            Ok(_) => "answered with something other than events".to_string(),
            Err(e) => {
                if matches!(e, crate::net::quic::QuicError::Timeout { .. }) {
                    // Perhaps a connection to the peer's previous life: dial afresh next time.
                    quic.forget(addr).await;
                }
                e.to_string()
            }
        };
        let mut why = why;
        if why.len() > TEXT_BYTES_MAX {
            let mut end = TEXT_BYTES_MAX;
            while !why.is_char_boundary(end) {
                end -= 1;
            }
            why.truncate(end);
        }
        Err((node, why))
    }
}
