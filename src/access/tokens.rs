//! API tokens: made from 32 random bytes of the OS RNG, shown once, stored
//! as SHA-256 hashes; checked against the stored hashes in constant time.
//!
//! [`Access`] is the engine's view: the record store, whether operations
//! endpoints are open (loopback), and a short cache of the live tokens so a
//! request does not cost a database read. The cache is reloaded every
//! [`CACHE_TTL`], and at once when an unknown token is presented, so a new
//! token works at once and a revoked one stops within seconds. (A refused
//! token thus costs one small read of the token table; every `/fhir`
//! request costs an audit write anyway.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{blocking, AccessError, Role};
use crate::store::{RecordStore, StoredToken, TokenInfo};

/// How long the cached token list is trusted: a revoked token may work for
/// this long after `junction token revoke`.
pub const CACHE_TTL: Duration = Duration::from_secs(2);

/// `last_used_at` is written at most this often per token.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// The prefix of every token Junction makes (lets secret scanners find them).
pub const TOKEN_PREFIX: &str = "jct_";

/// The longest bearer token looked at (ours are 47 characters).
const MAX_TOKEN_LEN: usize = 512;

/// SHA-256 of a token, as stored.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random token: `jct_` + base64url (no padding) of 32 bytes from the
/// operating system's RNG.
pub fn generate() -> Result<String, AccessError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(AccessError::Random)?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Checks a token name: 1-64 of `A-Z a-z 0-9 . _ -`, starting with a letter
/// or digit (names appear in the audit trail and in `token list`).
pub fn check_name(name: &str) -> Result<(), AccessError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AccessError::InvalidName {
            name: name.to_string(),
        })
    }
}

/// Makes a token named `name` with `role`, stores its hash and returns the
/// token (the only time it exists outside the caller's hands).
pub fn create(store: &RecordStore, name: &str, role: Role) -> Result<String, AccessError> {
    check_name(name)?;
    let token = generate()?;
    if !store.add_token(name, role.as_str(), &hash(&token))? {
        return Err(AccessError::TokenExists {
            name: name.to_string(),
        });
    }
    Ok(token)
}

/// Revokes (deletes) the token `name`.
pub fn revoke(store: &RecordStore, name: &str) -> Result<(), AccessError> {
    if store.revoke_token(name)? {
        Ok(())
    } else {
        Err(AccessError::NoSuchToken {
            name: name.to_string(),
        })
    }
}

/// Every token, without hashes.
pub fn list(store: &RecordStore) -> Result<Vec<TokenInfo>, AccessError> {
    Ok(store.list_tokens()?)
}

/// Who made a request: the name and role of a live token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// Why a request was not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthFailure {
    #[error("no bearer token: send `Authorization: Bearer <token>` (make one with `junction token add`)")]
    Missing,
    #[error("the bearer token is not valid (unknown, revoked or malformed)")]
    Invalid,
    #[error("the token store could not be read")]
    Store(#[source] AccessError),
}

/// The token from an `Authorization: Bearer <token>` header value.
pub fn bearer(header: Option<&[u8]>) -> Result<&str, AuthFailure> {
    let Some(header) = header else {
        return Err(AuthFailure::Missing);
    };
    let text = std::str::from_utf8(header).map_err(|_| AuthFailure::Invalid)?;
    let (scheme, token) = text.trim().split_once(' ').ok_or(AuthFailure::Invalid)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::Invalid);
    }
    let token = token.trim();
    if token.is_empty()
        || token.len() > MAX_TOKEN_LEN
        || !token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(AuthFailure::Invalid);
    }
    Ok(token)
}

/// The engine's access state (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Access {
    inner: Arc<Inner>,
}

struct Inner {
    store: RecordStore,
    open_operations: bool,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    loaded: Option<(Instant, Arc<Vec<StoredToken>>)>,
    /// When each token's `last_used_at` was last written.
    touched: HashMap<String, Instant>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("store", &self.inner.store)
            .field("open_operations", &self.inner.open_operations)
            .finish_non_exhaustive()
    }
}

impl Access {
    /// `open_operations`: `/api/...` (except `/api/audit`) needs no token —
    /// for a server bound to loopback.
    pub fn new(store: RecordStore, open_operations: bool) -> Access {
        Access {
            inner: Arc::new(Inner {
                store,
                open_operations,
                cache: Mutex::new(Cache::default()),
            }),
        }
    }

    pub fn store(&self) -> &RecordStore {
        &self.inner.store
    }

    /// Whether `/api/...` (except `/api/audit`) is open without a token.
    pub fn open_operations(&self) -> bool {
        self.inner.open_operations
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // The cache is plain data; a panic elsewhere cannot leave it inconsistent.
        self.inner
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached live tokens, reloaded when older than `max_age`.
    async fn tokens(&self, max_age: Duration) -> Result<Arc<Vec<StoredToken>>, AccessError> {
        if let Some((at, tokens)) = &self.cache().loaded {
            if at.elapsed() < max_age {
                return Ok(Arc::clone(tokens));
            }
        }
        let store = self.inner.store.clone();
        let tokens = Arc::new(blocking(move || store.live_tokens()).await?);
        self.cache().loaded = Some((Instant::now(), Arc::clone(&tokens)));
        Ok(tokens)
    }

    /// Checks the `Authorization` header value of a request.
    pub async fn authenticate(&self, header: Option<&[u8]>) -> Result<Caller, AuthFailure> {
        let presented = hash(bearer(header)?);
        let tokens = self.tokens(CACHE_TTL).await.map_err(AuthFailure::Store)?;
        let found = match find(&tokens, &presented) {
            Some(found) => Some(found),
            // Perhaps made a moment ago: look again in the table itself.
            None => find(
                &self
                    .tokens(Duration::ZERO)
                    .await
                    .map_err(AuthFailure::Store)?,
                &presented,
            ),
        };
        let Some(token) = found else {
            return Err(AuthFailure::Invalid);
        };
        // A role this build does not know grants nothing.
        let role = Role::parse(&token.role).map_err(|_| AuthFailure::Invalid)?;
        self.touch(&token.name);
        Ok(Caller {
            name: token.name,
            role,
        })
    }

    /// Writes `last_used_at` in the background, at most every [`TOUCH_EVERY`].
    fn touch(&self, name: &str) {
        {
            let mut cache = self.cache();
            if cache
                .touched
                .get(name)
                .is_some_and(|at| at.elapsed() < TOUCH_EVERY)
            {
                return;
            }
            cache.touched.insert(name.to_string(), Instant::now());
        }
        let store = self.inner.store.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            if let Err(err) = store.touch_token(&name) {
                tracing::warn!(token = %name, error = %err, "cannot record a token's last use");
            }
        });
    }
}

/// The token whose hash equals `presented`. Every stored hash is compared,
/// each in constant time, so timing tells nothing about how close a guess was.
fn find(tokens: &[StoredToken], presented: &[u8; 32]) -> Option<StoredToken> {
    let mut found = None;
    for token in tokens {
        if bool::from(token.hash.ct_eq(presented)) {
            found = Some(token.clone());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_long_random_and_prefixed() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX), "{a}");
        // 32 bytes in base64url without padding: 43 characters.
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43, "{a}");
        let body = &a[TOKEN_PREFIX.len()..];
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .unwrap();
        assert_eq!(decoded.len(), 32);
        assert_ne!(hash(&a), hash(&b));
    }

    fn check_bearer(header: Option<&str>, expected: &str) {
        let got = match bearer(header.map(str::as_bytes)) {
            Ok(token) => format!("token {token}"),
            Err(AuthFailure::Missing) => "missing".to_string(),
            Err(AuthFailure::Invalid) => "invalid".to_string(),
            Err(AuthFailure::Store(err)) => format!("store {err}"),
        };
        assert_eq!(got, expected, "{header:?}");
    }

    #[test]
    fn bearer_headers() {
        check_bearer(None, "missing");
        check_bearer(Some("Bearer jct_abc"), "token jct_abc");
        check_bearer(Some("bearer  jct_abc "), "token jct_abc");
        check_bearer(Some("Basic dXNlcjpwYXNz"), "invalid");
        check_bearer(Some("Bearer"), "invalid");
        check_bearer(Some("Bearer "), "invalid");
        check_bearer(Some("Bearer a b"), "invalid");
        check_bearer(Some(&format!("Bearer {}", "x".repeat(600))), "invalid");
    }

    #[test]
    fn token_names() {
        for good in ["gp-viewer", "ops.night_shift", "a", "A1"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "has space", "é", &"x".repeat(65)] {
            let err = check_name(bad).unwrap_err();
            assert!(err.to_string().contains("invalid token name"), "{err}");
        }
    }

    #[test]
    fn find_compares_every_hash() {
        let token = |name: &str, secret: &str| StoredToken {
            name: name.to_string(),
            role: "ops".to_string(),
            hash: hash(secret),
        };
        let tokens = vec![token("a", "jct_a"), token("b", "jct_b")];
        assert_eq!(find(&tokens, &hash("jct_b")).unwrap().name, "b");
        assert!(find(&tokens, &hash("jct_c")).is_none());
    }

    #[tokio::test]
    async fn create_authenticate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(&crate::store::RecordStoreConfig {
            path: dir.path().join("records.db"),
            sync: crate::store::SyncPolicy::Normal,
            postgres: None,
        })
        .unwrap();
        let access = Access::new(store.clone(), false);
        let token = create(&store, "viewer", Role::Clinical).unwrap();
        let header = format!("Bearer {token}");
        let caller = access.authenticate(Some(header.as_bytes())).await.unwrap();
        assert_eq!(
            caller,
            Caller {
                name: "viewer".to_string(),
                role: Role::Clinical
            }
        );
        // A token made after the cache was loaded works at once.
        let late = create(&store, "late", Role::Ops).unwrap();
        let late_header = format!("Bearer {late}");
        let caller = access
            .authenticate(Some(late_header.as_bytes()))
            .await
            .unwrap();
        assert_eq!(caller.role, Role::Ops);
        revoke(&store, "late").unwrap();
        let again = create(&store, "viewer", Role::Ops).unwrap_err();
        assert_eq!(
            again.to_string(),
            "a token named `viewer` already exists; revoke it first or choose another name"
        );
        let listed = list(&store).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].role, "clinical");

        revoke(&store, "viewer").unwrap();
        // The cache may still hold it for up to CACHE_TTL; a fresh Access does not.
        let fresh = Access::new(store.clone(), false);
        assert!(matches!(
            fresh.authenticate(Some(header.as_bytes())).await,
            Err(AuthFailure::Invalid)
        ));
        assert_eq!(
            revoke(&store, "viewer").unwrap_err().to_string(),
            "no token named `viewer`"
        );
    }
}
