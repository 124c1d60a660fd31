//! `MeshMailboxConfig`: one MESH mailbox we send from and read, and its secrets.
//!
//! `config/` will assemble it as `[mesh.mailboxes.<id>]`; this module owns the type
//! and its checks. Secrets are never written in the file itself: the file names an
//! environment variable (`password_env`, `shared_key_env`) or a file
//! (`password_file`, `shared_key_file`) and they are read when the client is built.
//! An error names the variable or file, never the secret.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::MeshError;

/// Default uncompressed chunk size: 75 MiB, as NHS's Python client uses (each
/// chunk is gzipped on its own and MESH takes at most 100 MB per request).
pub const DEFAULT_CHUNK_SIZE_BYTES: u64 = 75 * 1024 * 1024;

/// One MESH mailbox: where MESH is, who we are, how we prove it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshMailboxConfig {
    /// Base URL of the MESH server, without `/messageexchange`, e.g.
    /// `https://msg.intspineservices.nhs.uk` (integration) or
    /// `https://mesh-sync.spineservices.nhs.uk` (live).
    pub url: String,
    /// Our mailbox id, e.g. `X26ABC1` (upper-cased before use).
    pub mailbox: String,
    /// Environment variable holding the mailbox password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the mailbox password (one trailing newline is ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the MESH environment's shared HMAC key.
    #[serde(default)]
    pub shared_key_env: Option<String>,
    /// File holding the MESH environment's shared HMAC key.
    #[serde(default)]
    pub shared_key_file: Option<PathBuf>,
    /// PEM client certificate issued by NHS for this mailbox's endpoint (live MESH).
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// PEM CA bundle to trust instead of the public web roots (the NHS CA bundle).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate. For a local sandbox only; logged as a warning.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Timeout of one HTTP request, in seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Largest uncompressed chunk sent in one request.
    #[serde(default = "default_chunk_size_bytes")]
    pub chunk_size_bytes: u64,
    /// Retries of a retryable request (425, 429, 502, 503, 504, timeouts,
    /// connection failures) after the first attempt.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// First retry delay in milliseconds; doubled on every retry, with jitter.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// Message ids asked for per inbox page (MESH allows 10 to 5000).
    #[serde(default = "default_inbox_page_size")]
    pub inbox_page_size: u32,
}

fn default_timeout_secs() -> u64 {
    300
}
fn default_chunk_size_bytes() -> u64 {
    DEFAULT_CHUNK_SIZE_BYTES
}
fn default_max_retries() -> u32 {
    3
}
fn default_retry_backoff_ms() -> u64 {
    500
}
fn default_inbox_page_size() -> u32 {
    500
}

impl MeshMailboxConfig {
    /// A configuration with every optional field at its default.
    pub fn new(url: impl Into<String>, mailbox: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            mailbox: mailbox.into(),
            password_env: None,
            password_file: None,
            shared_key_env: None,
            shared_key_file: None,
            client_cert_file: None,
            client_key_file: None,
            ca_file: None,
            insecure_skip_verify: false,
            timeout_secs: default_timeout_secs(),
            chunk_size_bytes: default_chunk_size_bytes(),
            max_retries: default_max_retries(),
            retry_backoff_ms: default_retry_backoff_ms(),
            inbox_page_size: default_inbox_page_size(),
        }
    }

    /// Checks the values that do not need the outside world.
    pub fn validate(&self) -> Result<(), MeshError> {
        let bad = |field: &'static str, problem: String| MeshError::InvalidConfig {
            mailbox: self.mailbox.clone(),
            field,
            problem,
        };
        if self.mailbox.is_empty() || !self.mailbox.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad(
                "mailbox",
                format!(
                    "`{}` is not a mailbox id, expected letters and digits such as `X26ABC1`",
                    self.mailbox
                ),
            ));
        }
        let url = self.url.trim_end_matches('/');
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || url.contains(char::is_whitespace)
        {
            return Err(bad("url", format!("`{}` is not an http(s) URL", self.url)));
        }
        if self.timeout_secs == 0 {
            return Err(bad(
                "timeout_secs",
                "0 is not allowed, expected at least 1".into(),
            ));
        }
        if self.chunk_size_bytes == 0 || self.chunk_size_bytes > 100_000_000 {
            return Err(bad(
                "chunk_size_bytes",
                format!(
                    "{} is out of range, expected 1 to 100000000 (MESH's request limit)",
                    self.chunk_size_bytes
                ),
            ));
        }
        if !(10..=5000).contains(&self.inbox_page_size) {
            return Err(bad(
                "inbox_page_size",
                format!(
                    "{} is out of range, expected 10 to 5000",
                    self.inbox_page_size
                ),
            ));
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(bad(
                "client_cert_file",
                "`client_cert_file` and `client_key_file` must be given together".into(),
            ));
        }
        Ok(())
    }

    /// Reads the password and the shared key from where the configuration says.
    pub fn load_secrets(&self) -> Result<(Secret, Secret), MeshError> {
        self.load_secrets_with(&|name| std::env::var(name))
    }

    /// [`Self::load_secrets`] with environment variables looked up by `env` (tests
    /// pass a map instead of changing the process environment).
    pub fn load_secrets_with(&self, env: &EnvLookup<'_>) -> Result<(Secret, Secret), MeshError> {
        let password = load_secret(
            &self.mailbox,
            "password",
            self.password_env.as_deref(),
            self.password_file.as_deref(),
            env,
        )?;
        let shared_key = load_secret(
            &self.mailbox,
            "shared_key",
            self.shared_key_env.as_deref(),
            self.shared_key_file.as_deref(),
            env,
        )?;
        Ok((password, shared_key))
    }
}

/// Looks up an environment variable the way `std::env::var` does.
pub type EnvLookup<'a> = dyn Fn(&str) -> Result<String, std::env::VarError> + 'a;

fn load_secret(
    mailbox: &str,
    what: &'static str,
    env: Option<&str>,
    file: Option<&Path>,
    lookup: &EnvLookup<'_>,
) -> Result<Secret, MeshError> {
    let value = match (env, file) {
        (Some(_), Some(_)) => {
            return Err(MeshError::SecretSource {
                mailbox: mailbox.to_owned(),
                what,
                problem: format!("both `{what}_env` and `{what}_file` are set, expected one"),
            })
        }
        (None, None) => {
            return Err(MeshError::SecretSource {
                mailbox: mailbox.to_owned(),
                what,
                problem: format!("neither `{what}_env` nor `{what}_file` is set, expected one"),
            })
        }
        (Some(var), None) => match lookup(var) {
            Ok(value) => value,
            Err(std::env::VarError::NotPresent) => {
                return Err(MeshError::SecretSource {
                    mailbox: mailbox.to_owned(),
                    what,
                    problem: format!("environment variable `{var}` (from `{what}_env`) is not set"),
                })
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(MeshError::SecretSource {
                    mailbox: mailbox.to_owned(),
                    what,
                    problem: format!(
                        "environment variable `{var}` (from `{what}_env`) is not valid UTF-8"
                    ),
                })
            }
        },
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| MeshError::ReadFile {
                mailbox: mailbox.to_owned(),
                field: if what == "password" {
                    "password_file"
                } else {
                    "shared_key_file"
                },
                path: path.to_owned(),
                source,
            })?;
            let trimmed = text.strip_suffix('\n').unwrap_or(&text);
            trimmed.strip_suffix('\r').unwrap_or(trimmed).to_owned()
        }
    };
    if value.is_empty() {
        let source = match (env, file) {
            (Some(var), _) => format!("environment variable `{var}`"),
            (_, Some(path)) => format!("file `{}`", path.display()),
            _ => String::new(),
        };
        return Err(MeshError::SecretSource {
            mailbox: mailbox.to_owned(),
            what,
            problem: format!("{source} is empty"),
        });
    }
    Ok(Secret::new(value))
}

/// A password or key: kept in memory, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself, for signing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<MeshMailboxConfig, toml::de::Error> {
        toml::from_str(toml_text)
    }

    #[test]
    fn defaults_fill_optional_fields() {
        let config = parse(
            "url = \"https://msg.intspineservices.nhs.uk\"\nmailbox = \"X26ABC1\"\npassword_env = \"P\"\nshared_key_env = \"K\"\n",
        )
        .unwrap();
        assert_eq!(config.chunk_size_bytes, 75 * 1024 * 1024);
        assert_eq!(config.max_retries, 3);
        assert_eq!(config.timeout_secs, 300);
        assert!(!config.insecure_skip_verify);
        config.validate().unwrap();
    }

    #[test]
    fn unknown_field_is_refused() {
        let err = parse("url = \"https://x\"\nmailbox = \"X26ABC1\"\npassword = \"secret\"\n")
            .unwrap_err();
        assert!(
            err.to_string().contains("unknown field `password`"),
            "{err}"
        );
    }

    #[test]
    fn validate_names_the_bad_field() {
        let mut config = MeshMailboxConfig::new("https://x", "X26ABC1");
        config.chunk_size_bytes = 0;
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("chunk_size_bytes"));
        let mut config = MeshMailboxConfig::new("ftp://x", "X26ABC1");
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("`ftp://x`"));
        config.url = "https://x".into();
        config.client_cert_file = Some("cert.pem".into());
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("client_key_file"));
        let config = MeshMailboxConfig::new("https://x", "X26 ABC");
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("`X26 ABC`"));
    }

    #[test]
    fn secrets_from_env_and_file_and_errors_name_the_source_not_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, "TestKey\n").unwrap();
        // A pretend environment: changing the real one races with other threads.
        let var = "JUNCTION_TEST_MESH_PASSWORD";
        let env = |name: &str| {
            if name == var {
                Ok("hunter2".to_owned())
            } else {
                Err(std::env::VarError::NotPresent)
            }
        };
        let mut config = MeshMailboxConfig::new("https://x", "X26ABC1");
        config.password_env = Some(var.into());
        config.shared_key_file = Some(key_file.clone());
        let (password, key) = config.load_secrets_with(&env).unwrap();
        assert_eq!(password.expose(), "hunter2");
        assert_eq!(key.expose(), "TestKey");
        assert_eq!(format!("{password:?}"), "Secret(***)");

        config.password_env = Some("JUNCTION_TEST_MESH_UNSET_VARIABLE".into());
        let err = config.load_secrets_with(&env).unwrap_err().to_string();
        assert!(err.contains("JUNCTION_TEST_MESH_UNSET_VARIABLE"), "{err}");
        assert!(err.contains("X26ABC1"), "{err}");

        config.password_env = None;
        let err = config.load_secrets_with(&env).unwrap_err().to_string();
        assert!(err.contains("password_env"), "{err}");

        config.password_file = Some(dir.path().join("missing"));
        let err = config.load_secrets_with(&env).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");

        config.password_file = Some(key_file.clone());
        config.password_env = Some(var.into());
        let err = config.load_secrets_with(&env).unwrap_err().to_string();
        assert!(err.contains("both"), "{err}");
        assert!(
            !err.contains("hunter2") && !err.contains("TestKey"),
            "{err}"
        );
    }
}
