//! The agent's timing settings that are not about the fleet (those are in
//! [`super::FleetSettings`]) or a departure ([`super::DepartureSettings`]): how often it looks
//! at its host, and how long its local doors wait for a client. Defaults suit a LAN and are
//! what the agent always used; a network profile may set them.

use std::time::Duration;

use crate::runtime::docker::EngineSettings;

/// How often the agent looks at its host, and how long it waits for its container engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSettings {
    /// How often host CPU and memory in use, and the load of autoscaled replicas, are
    /// measured (default 5 s); gossip carries a change at most every
    /// [`super::GossipTimings::usage_publish_interval_min`] (the host's) and
    /// [`super::GossipTimings::load_publish_interval_min`] (the replicas').
    pub usage_sample_interval: Duration,
    /// How often the container engines are asked whether they still answer (default 5 s): an
    /// engine that went away or came back changes what the node offers within this.
    pub engine_check_interval: Duration,
    /// The container engines' timeouts.
    pub engine: EngineSettings,
    /// How long a custom metric a replica reported (`POST /v1/report`) counts (default
    /// 30 s): a replica that stops reporting stops counting, rather than holding its last
    /// value for good.
    pub report_max_age: Duration,
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            usage_sample_interval: Duration::from_secs(5),
            engine_check_interval: Duration::from_secs(5),
            engine: EngineSettings::default(),
            report_max_age: Duration::from_secs(30),
        }
    }
}

/// How long the agent's local doors (the data dir's API socket, the HTTP port, log streams)
/// wait, for clients and after errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalSettings {
    /// Pause after a failed accept on the API socket or the HTTP port (default 100 ms): the
    /// usual cause is no free descriptor, and retrying at once would spin a core until one
    /// frees (seen: 112-119 % CPU).
    pub accept_backoff: Duration,
    /// How long an HTTP client may take to send its whole request head (default 5 s); a
    /// client that trickles it in is closed then.
    pub http_head_timeout: Duration,
    /// How long writing an HTTP answer may take (default 5 s): a client that does not read
    /// its answer holds its connection no longer.
    pub http_write_timeout: Duration,
    /// How often a followed process log (`starling logs --follow`) is checked for new lines
    /// (default 250 ms).
    pub log_follow_interval: Duration,
}

impl Default for LocalSettings {
    fn default() -> Self {
        LocalSettings {
            accept_backoff: Duration::from_millis(100),
            http_head_timeout: Duration::from_secs(5),
            http_write_timeout: Duration::from_secs(5),
            log_follow_interval: Duration::from_millis(250),
        }
    }
}
