//! MLLP listener (not yet written).

use std::net::SocketAddr;

use serde::Deserialize;

/// `[listeners.<id>]`: one MLLP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

fn default_max_connections() -> usize {
    256
}
fn default_idle_timeout_secs() -> u64 {
    300
}
fn default_max_message_bytes() -> usize {
    4 * 1024 * 1024
}
