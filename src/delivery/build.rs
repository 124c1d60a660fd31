//! Builds a destination ([`Deliver`]) from its `[destinations.<id>]` table.
//!
//! [`build`] is the one place that knows every destination kind. It checks
//! what `config/` cannot (the record store is open, the mailbox exists) and
//! does no I/O that could fail because a remote system is down: clients that
//! need secrets or connections (MESH, FHIR tokens, MLLP sockets) make them on
//! first delivery, so a missing secret or a peer that is down gives retryable
//! delivery errors instead of stopping the engine.
//!
//! To add a destination kind: a variant in [`super::DestinationKind`], its
//! keys in [`super::DestinationConfig`] and their check in `config/`, a
//! module here implementing [`Deliver`], and an arm in [`build`].
//!
//! # Invariants
//! - A [`BuildError`] means the configuration is wrong (a required key is
//!   missing, a reference does not resolve); never that a peer is down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Deliver, DestinationConfig, DestinationKind};
use crate::mesh::MeshMailboxConfig;
use crate::store::RecordStore;

/// What destinations may need besides their own table.
#[derive(Debug, Clone, Copy)]
pub struct BuildContext<'a> {
    /// The open record store (`[store] records`); `None` when the engine has
    /// none, which makes a `kind = "store"` destination a build error.
    pub records: Option<&'a RecordStore>,
    /// `[mesh.mailboxes.<id>]`, for `kind = "mesh"`.
    pub mailboxes: &'a BTreeMap<String, MeshMailboxConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("destination `{id}` (kind = \"{kind}\") needs `{key}`")]
    MissingKey {
        id: String,
        kind: &'static str,
        key: &'static str,
    },
    #[error("destination `{id}`: kind = \"store\" but no record store is open")]
    NoRecordStore { id: String },
    #[error("destination `{id}`: unknown mailbox `{mailbox}`, expected one of the `[mesh.mailboxes.<id>]` tables")]
    UnknownMailbox { id: String, mailbox: String },
    #[error("destination `{id}`: `{key}` = `{value}` is not valid: {problem}")]
    InvalidValue {
        id: String,
        key: &'static str,
        value: String,
        problem: String,
    },
    #[error("destination `{id}`: timeout_secs is 0, expected at least 1")]
    ZeroTimeout { id: String },
    #[error("destination `{id}`: cannot build the http client: {source}")]
    HttpClient {
        id: String,
        #[source]
        source: reqwest::Error,
    },
}

/// Builds destination `id` from its configuration.
pub fn build(
    id: &str,
    cfg: &DestinationConfig,
    ctx: &BuildContext<'_>,
) -> Result<Arc<dyn Deliver>, BuildError> {
    if cfg.timeout_secs == 0 {
        return Err(BuildError::ZeroTimeout { id: id.to_string() });
    }
    let timeout = Duration::from_secs(cfg.timeout_secs);
    let need = |key: &'static str, value: bool| {
        if value {
            Ok(())
        } else {
            Err(BuildError::MissingKey {
                id: id.to_string(),
                kind: cfg.kind.as_str(),
                key,
            })
        }
    };
    Ok(match cfg.kind {
        DestinationKind::File => {
            let dir = cfg.dir.clone();
            need("dir", dir.is_some())?;
            let dir = dir.unwrap_or_default();
            Arc::new(super::file::FileDestination::new(id, dir, timeout).with_payload(cfg.payload))
        }
        DestinationKind::Store => {
            let records = ctx
                .records
                .ok_or_else(|| BuildError::NoRecordStore { id: id.to_string() })?;
            Arc::new(super::store::StoreDestination::new(
                id,
                records.clone(),
                timeout,
            ))
        }
        DestinationKind::Fhir => {
            need("url", cfg.url.is_some())?;
            let url = cfg.url.as_deref().unwrap_or_default();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(BuildError::InvalidValue {
                    id: id.to_string(),
                    key: "url",
                    value: url.to_string(),
                    problem: "expected an http:// or https:// URL".into(),
                });
            }
            let token = match (&cfg.token_env, &cfg.token_file) {
                (Some(_), Some(file)) => {
                    return Err(BuildError::InvalidValue {
                        id: id.to_string(),
                        key: "token_file",
                        value: file.display().to_string(),
                        problem: "`token_env` is set too, expected one of them".into(),
                    })
                }
                (Some(var), None) => Some(super::fhir::TokenSource::Env(var.clone())),
                (None, Some(file)) => Some(super::fhir::TokenSource::File(file.clone())),
                (None, None) => None,
            };
            let destination =
                super::fhir::FhirDestination::new(id, url, token, timeout).map_err(|source| {
                    BuildError::HttpClient {
                        id: id.to_string(),
                        source,
                    }
                })?;
            Arc::new(destination)
        }
        DestinationKind::Mllp => {
            need("address", cfg.address.is_some())?;
            let address = cfg.address.as_deref().unwrap_or_default();
            let tls = cfg.tls_ca_file.as_ref().map(|ca| super::mllp::TlsFiles {
                ca_file: ca.clone(),
                cert_file: cfg.tls_cert_file.clone(),
                key_file: cfg.tls_key_file.clone(),
                server_name: cfg.tls_server_name.clone(),
            });
            Arc::new(
                super::mllp::MllpDestination::new(
                    id,
                    address,
                    timeout,
                    usize::try_from(cfg.concurrency).unwrap_or(1),
                )
                .with_tls(tls),
            )
        }
        DestinationKind::Mesh => {
            need("mailbox", cfg.mailbox.is_some())?;
            need("to", cfg.to.is_some())?;
            need("workflow_id", cfg.workflow_id.is_some())?;
            let mailbox_id = cfg.mailbox.as_deref().unwrap_or_default();
            let mailbox =
                ctx.mailboxes
                    .get(mailbox_id)
                    .ok_or_else(|| BuildError::UnknownMailbox {
                        id: id.to_string(),
                        mailbox: mailbox_id.to_string(),
                    })?;
            Arc::new(
                super::mesh::MeshDestination::new(
                    id,
                    mailbox_id,
                    mailbox.clone(),
                    cfg.to.as_deref().unwrap_or_default(),
                    cfg.workflow_id.as_deref().unwrap_or_default(),
                    cfg.subject.clone(),
                    timeout,
                )
                .with_payload(cfg.payload),
            )
        }
    })
}
