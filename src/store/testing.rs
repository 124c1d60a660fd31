//! For tests only (unit and end-to-end): a throwaway schema in the test
//! PostgreSQL that `tests/postgres/setup.sh` prepares, so each test starts
//! from an empty record store and tests can run at the same time.
//!
//! Where the database is: `JUNCTION_TEST_POSTGRES_URL` and
//! `JUNCTION_TEST_POSTGRES_PASSWORD_FILE`, else the files the setup script
//! writes (`target/postgres-test/url` and `.../password`). Nothing here is
//! used by the engine.

use std::path::PathBuf;

use super::PostgresTarget;

/// A schema of its own in the test database, dropped (with everything in
/// it) when this is dropped.
pub struct TestSchema {
    /// The store's target: the test database with `search_path` set to the schema.
    pub target: PostgresTarget,
    /// The URL of that target (what a config file's `[store] url` would say).
    pub url: String,
    /// The password file of the test role.
    pub password_file: PathBuf,
    name: String,
    base: postgres::Config,
}

impl TestSchema {
    /// Creates a fresh schema. Panics, saying how to set the database up, when
    /// there is none: a test that needs PostgreSQL must not pass without it.
    pub fn create(label: &str) -> TestSchema {
        super::postgres::off_runtime(|| TestSchema::create_here(label))
    }

    fn create_here(label: &str) -> TestSchema {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/postgres-test");
        let url = std::env::var("JUNCTION_TEST_POSTGRES_URL")
            .ok()
            .or_else(|| std::fs::read_to_string(dir.join("url")).ok())
            .map(|u| u.trim().to_string())
            .unwrap_or_else(|| {
                panic!(
                    "no test PostgreSQL: run `bash tests/postgres/setup.sh` first \
                     (or set JUNCTION_TEST_POSTGRES_URL and JUNCTION_TEST_POSTGRES_PASSWORD_FILE)"
                )
            });
        let password_file = std::env::var_os("JUNCTION_TEST_POSTGRES_PASSWORD_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.join("password"));
        let password = std::fs::read_to_string(&password_file)
            .unwrap_or_else(|e| panic!("{}: {e}", password_file.display()));
        let mut base: postgres::Config = url.parse().expect("test PostgreSQL URL");
        base.password(password.trim());
        let name = format!(
            "t_{}_{}",
            label
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(20)
                .collect::<String>()
                .to_ascii_lowercase(),
            uuid::Uuid::new_v4().simple()
        );
        let mut admin = base
            .connect(postgres::NoTls)
            .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL at {url}: {e}"));
        admin
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .expect("create the test schema");
        let joiner = if url.contains('?') { '&' } else { '?' };
        let schema_url = format!("{url}{joiner}options=-csearch_path%3D{name}");
        TestSchema {
            target: PostgresTarget {
                url: schema_url.clone(),
                password_env: None,
                password_file: Some(password_file.clone()),
                tls_ca_file: None,
            },
            url: schema_url,
            password_file,
            name,
            base,
        }
    }

    /// This schema's target over TLS, trusting the CA file `ca` (the test CA
    /// is [`test_ca`]), with `application_name` so the test can find its
    /// connections in `pg_stat_activity`.
    pub fn tls_target(&self, ca: &std::path::Path, application_name: &str) -> PostgresTarget {
        PostgresTarget {
            url: format!("{}&application_name={application_name}", self.url),
            tls_ca_file: Some(ca.to_path_buf()),
            ..self.target.clone()
        }
    }

    /// Runs `f` on a connection to the test database with `search_path` at
    /// this schema, for a test that looks at the tables directly (off the
    /// async runtime, as the `postgres` client must be used and dropped).
    pub fn with_client<T: Send>(&self, f: impl FnOnce(&mut postgres::Client) -> T + Send) -> T {
        super::postgres::off_runtime(|| {
            let mut client = self
                .base
                .connect(postgres::NoTls)
                .expect("connect to the test PostgreSQL");
            client
                .batch_execute(&format!("SET search_path = {}", self.name))
                .expect("set search_path");
            f(&mut client)
        })
    }
}

/// The CA the test cluster's certificate comes from, and another CA it does
/// not come from (made by `tests/postgres/setup.sh`).
pub fn test_ca() -> (PathBuf, PathBuf) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/postgres-test");
    (dir.join("ca.pem"), dir.join("other-ca.pem"))
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let (base, name) = (&self.base, &self.name);
        super::postgres::off_runtime(|| {
            if let Ok(mut admin) = base.connect(postgres::NoTls) {
                let _ = admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"));
            }
        });
    }
}
