//! Tracing setup and Prometheus metrics (not yet written).

pub mod metrics;

use serde::Deserialize;

/// `[log]`: how the engine logs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default, readable) or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `junction=debug`; `RUST_LOG` overrides it.
    #[serde(default)]
    pub level: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}
