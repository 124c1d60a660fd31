//! Loads `junction.toml` into a [`Config`] and cross-checks it.
//!
//! Each component owns its config type (`mllp::listener::ListenerConfig`,
//! `journal::StoreConfig`, `api::ApiConfig`, `telemetry::LogConfig`); this
//! module only assembles them, reports every problem as a diagnostic with
//! file:line:col, and resolves relative paths against the config file's folder.
//! Only `config/` knows file paths.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::api::ApiConfig;
use crate::journal::StoreConfig;
use crate::mllp::listener::ListenerConfig;
use crate::telemetry::LogConfig;

/// The whole engine configuration (`junction.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[listeners.<id>]`: one MLLP listener each.
    #[serde(default)]
    pub listeners: BTreeMap<String, ListenerConfig>,
    /// `[store]`: where the journal (and later the record store) lives.
    #[serde(default)]
    pub store: StoreConfig,
    /// `[api]`: the HTTP server.
    #[serde(default)]
    pub api: ApiConfig,
    /// `[log]`: log format and level.
    #[serde(default)]
    pub log: LogConfig,
    /// `[engine]`: engine-wide settings.
    #[serde(default)]
    pub engine: EngineConfig,
}

/// `[engine]`: settings of the engine as a whole.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// How long a graceful shutdown may take before remaining work is abandoned
    /// (nothing acknowledged is lost either way: it is in the journal).
    #[serde(default = "default_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
}

fn default_shutdown_timeout_secs() -> u64 {
    10
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            shutdown_timeout_secs: default_shutdown_timeout_secs(),
        }
    }
}
