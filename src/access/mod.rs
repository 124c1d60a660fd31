//! Who may use the HTTP API, and the record of who read what: API tokens,
//! the authentication layer around every route, the audit trail of FHIR
//! reads, and the objections register (DESIGN.md §1, §5).
//!
//! - [`tokens`]: making tokens (`jct_` + 32 random bytes from the OS, base64url),
//!   hashing them (SHA-256), checking a bearer token against the stored
//!   hashes in constant time, with a short cache.
//! - [`layer`]: the axum middleware in front of every route. `/health`,
//!   `/ready`, `/metrics` are open; `/fhir/...` needs a `clinical` token and
//!   every request (allowed or refused) is audited; `/api/audit` always needs
//!   an `ops` token; the rest of `/api/...` (and any other path) needs an
//!   `ops` token unless the server is bound to loopback.
//! - [`http`]: `GET /api/audit` and `GET/POST/DELETE /api/objections`.
//! - [`objections`]: NHS number checks for the register and
//!   `impl delivery::Objections for RecordStore`.
//!
//! The tables live in the record store (`store/access.rs`); this module
//! decides, the store keeps.
//!
//! It does not do TLS: tokens travel in clear over plain HTTP, so an API
//! reachable beyond the host belongs behind a TLS-terminating proxy.
//!
//! # Invariants
//! - A token is shown once, when made; only its SHA-256 hash is stored, and
//!   no token, hash or `Authorization` header is ever logged.
//! - A revoked token stops working within [`tokens::CACHE_TTL`] (seconds).
//! - Every `/fhir` answer is backed by a committed audit row, or it is a 500:
//!   a read whose audit row cannot be written is not served.
//! - The audit trail keeps the query string (it may hold an NHS number): it
//!   is clinical data, listed only to `ops` tokens, never written to logs.

pub mod http;
pub mod layer;
pub mod objections;
pub mod tokens;

use crate::store::StoreError;

pub use layer::guard;
pub use objections::NhsNumber;
pub use tokens::{Access, Caller};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Operations endpoints (`/api/...`, including the audit trail), no FHIR reads.
    Ops,
    /// FHIR reads of the record store (`/fhir/...`), nothing else.
    Clinical,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ops => "ops",
            Role::Clinical => "clinical",
        }
    }

    /// `ops` or `clinical`.
    pub fn parse(text: &str) -> Result<Role, AccessError> {
        match text {
            "ops" => Ok(Role::Ops),
            "clinical" => Ok(Role::Clinical),
            _ => Err(AccessError::InvalidRole {
                role: text.to_string(),
            }),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("invalid token name `{name}`, expected 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit")]
    InvalidName { name: String },
    #[error("invalid role `{role}`, expected `ops` or `clinical`")]
    InvalidRole { role: String },
    #[error("a token named `{name}` already exists; revoke it first or choose another name")]
    TokenExists { name: String },
    #[error("no token named `{name}`")]
    NoSuchToken { name: String },
    #[error(
        "`{value}` is not a valid NHS number, expected 10 digits passing the modulus 11 check"
    )]
    InvalidNhsNumber { value: String },
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a record store task did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Runs a blocking record store call on a blocking thread.
async fn blocking<T, F>(f: F) -> Result<T, AccessError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    Ok(tokio::task::spawn_blocking(f).await??)
}
