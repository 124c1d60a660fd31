//! The HTTP server (not yet written).

use std::net::SocketAddr;

use serde::Deserialize;

/// `[api]`: the HTTP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "default_bind")]
    pub bind: SocketAddr,
}

fn default_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            bind: default_bind(),
        }
    }
}
