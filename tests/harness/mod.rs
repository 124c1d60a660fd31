//! Test harness shared by the end-to-end tests: runs the real `junction serve`
//! binary on free loopback ports with a config written into a temp folder,
//! waits for `GET /ready`, and talks plain HTTP/1.0 to its API.
//!
//! It does not mock anything: the engine under test is the binary cargo built
//! (`CARGO_BIN_EXE_junction`). It does not decide what a test asserts.
//!
//! # Invariants
//! - The engine's working directory is a folder next to (not containing) the
//!   config, so a relative `[store] path` that is resolved against the working
//!   directory instead of the config's folder is caught by tests that open
//!   `<config folder>/data/junction.db`.
//! - An [`Engine`] is killed (SIGKILL) when dropped: no engine outlives its test.
//! - Every wait is bounded; on a timeout the panic message includes the
//!   engine's log.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod mesh;
pub mod pki;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the engine may take to answer `GET /ready` with 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The repository root (where Cargo.toml, samples/ and .venv/ are): cargo's
/// run-time `CARGO_MANIFEST_DIR` (right even when the test binary was built
/// from another checkout sharing the target dir), else the compile-time one.
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The venv's python with python-hl7 and hl7apy (the independent senders).
pub fn venv_python() -> PathBuf {
    venv_python_with("import hl7, hl7.client, hl7apy.parser")
}

/// The venv's python: `$JUNCTION_VENV` if set (as `tests/python/setup-venv.sh`
/// honours it), else `.venv` at the repository root; checked to run `imports`.
pub fn venv_python_with(imports: &str) -> PathBuf {
    let venv = std::env::var_os("JUNCTION_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv"));
    let python = venv.join("bin").join("python");
    assert!(
        python.exists(),
        "{} is missing: run `tests/python/setup-venv.sh` from the repository root first \
         (it creates .venv with python-hl7, hl7apy and fhir.resources; .ci/run does this)",
        python.display()
    );
    let probe = Command::new(&python)
        .args(["-c", imports])
        .output()
        .expect("run the venv's python");
    assert!(
        probe.status.success(),
        "{} cannot `{imports}`: re-run `tests/python/setup-venv.sh`\n{}",
        python.display(),
        String::from_utf8_lossy(&probe.stderr)
    );
    python
}

/// A loopback port that refuses connections for as long as the socket
/// returned is kept: bound, never listening, so no other process on a shared
/// machine can take the port and answer in the meantime (as a port that was
/// merely free a moment ago can). Call inside a tokio runtime.
pub fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("bind 127.0.0.1:0");
    let port = socket.local_addr().expect("local addr").port();
    (socket, port)
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A `junction serve` process under test.
pub struct Engine {
    child: Option<Child>,
    /// The folder holding `junction.toml` (and, by the config, `data/`).
    pub dir: PathBuf,
    pub config: PathBuf,
    pub mllp: SocketAddr,
    pub api: SocketAddr,
    pub log: PathBuf,
    pub sync: String,
}

impl Engine {
    /// Writes a config into `dir` (fresh ports, `sync` = "full" or "normal",
    /// store at `data/junction.db` relative to it), starts the engine and waits
    /// until it is ready. Data already in `dir/data` is kept: restarting on the
    /// same folder reopens the same journal.
    pub fn start(dir: &Path, sync: &str) -> Engine {
        Engine::start_with(dir, sync, "")
    }

    /// Like [`Engine::start`], with `extra` TOML appended to the config
    /// (destinations, sources, `[engine]`). Routes and mappings are read from
    /// `dir/routes` and `dir/mappings` when the test puts them there.
    pub fn start_with(dir: &Path, sync: &str, extra: &str) -> Engine {
        Engine::start_custom(dir, &[], |mllp, api| default_config(mllp, api, sync, extra))
    }

    /// Like [`Engine::start`] with the test's own config, written by
    /// `config(mllp, api)` for fresh ports, and extra environment variables.
    pub fn start_custom(
        dir: &Path,
        env: &[(&str, &str)],
        config: impl Fn(SocketAddr, SocketAddr) -> String,
    ) -> Engine {
        Engine::start_prepared(dir, env, config, |_| {})
    }

    /// Like [`Engine::start_custom`], with `prepare` called on the command
    /// before it is spawned (resource limits, signal dispositions).
    pub fn start_prepared(
        dir: &Path,
        env: &[(&str, &str)],
        config: impl Fn(SocketAddr, SocketAddr) -> String,
        prepare: impl Fn(&mut Command),
    ) -> Engine {
        let mut last_log = String::new();
        // A port picked by free_port() can be taken by a parallel test before
        // the engine binds it: retry with new ports a few times.
        for _attempt in 0..3 {
            let mut engine = Engine::spawn(dir, env, &config, &prepare);
            match engine.wait_ready(READY_TIMEOUT) {
                Ok(()) => return engine,
                Err(ReadyError::Exited(status)) => {
                    last_log = engine.log_text();
                    eprintln!("engine exited before ready ({status}); retrying with new ports");
                }
                Err(ReadyError::Timeout) => {
                    engine.kill();
                    panic!(
                        "engine was not ready within {READY_TIMEOUT:?} (GET http://{}/ready)\n--- engine log ---\n{}",
                        engine.api,
                        engine.log_text()
                    );
                }
            }
        }
        panic!("engine did not start after 3 attempts\n--- engine log ---\n{last_log}");
    }

    fn spawn(
        dir: &Path,
        env: &[(&str, &str)],
        config_text: &impl Fn(SocketAddr, SocketAddr) -> String,
        prepare: &impl Fn(&mut Command),
    ) -> Engine {
        fs::create_dir_all(dir).expect("create engine folder");
        let mllp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let text = config_text(mllp, api);
        let sync = text
            .lines()
            .find_map(|l| l.strip_prefix("sync = \""))
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or("full")
            .to_string();
        let config = dir.join("junction.toml");
        fs::write(&config, text).expect("write config");
        let cwd = dir.join("cwd");
        fs::create_dir_all(&cwd).expect("create engine cwd");
        let log = dir.join("engine.log");
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open engine log");
        let err = out.try_clone().expect("clone log handle");
        let mut command = Command::new(env!("CARGO_BIN_EXE_junction"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .current_dir(&cwd)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        prepare(&mut command);
        let child = command.spawn().expect("spawn junction serve");
        Engine {
            child: Some(child),
            dir: dir.to_path_buf(),
            config,
            mllp,
            api,
            log,
            sync,
        }
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), ReadyError> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(ReadyError::Exited(status.to_string()));
                }
            }
            if let Ok((200, _)) = http_get(self.api, "/ready") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(ReadyError::Timeout)
    }

    /// The OS process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL (on unix `Child::kill` sends SIGKILL) and reap. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Everything the engine wrote to stdout/stderr so far (all runs in this folder).
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// The journal's SQLite file, per the config written by [`Engine::start`].
    pub fn journal_path(&self) -> PathBuf {
        self.dir.join("data").join("junction.db")
    }

    /// `GET path` on the engine's HTTP API.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.api, path)
            .unwrap_or_else(|e| panic!("GET http://{}{path} failed: {e}", self.api))
    }

    /// `GET /api/messages?control_id=...&limit=...` parsed as JSON: the `messages` array.
    pub fn messages_with_control_id(&self, control_id: &str) -> Vec<serde_json::Value> {
        let (status, body) = self.get(&format!(
            "/api/messages?control_id={}&limit=100",
            url_encode(control_id)
        ));
        assert_eq!(
            status, 200,
            "GET /api/messages?control_id={control_id}: {body}"
        );
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/api/messages is not JSON ({e}): {body}"));
        json["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("/api/messages has no `messages` array: {body}"))
            .clone()
    }
}

/// The config [`Engine::start`] writes.
fn default_config(mllp: SocketAddr, api: SocketAddr, sync: &str, extra: &str) -> String {
    format!(
        r#"# written by tests/harness
[listeners.pas]
bind = "{mllp}"
max_connections = 256
idle_timeout_secs = 300
max_message_bytes = 4194304

[store]
path = "data/junction.db"
sync = "{sync}"

[api]
bind = "{api}"

[log]
format = "text"

{extra}
"#
    )
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug)]
enum ReadyError {
    Exited(String),
    Timeout,
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
pub fn url_encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A minimal HTTP/1.0 GET (no client crate is a dependency): returns the
/// status code and the body (de-chunked if the server chunked it).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path)
}

/// `POST path` with an empty body: (status, body).
pub fn http_post(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "POST", path)
}

fn http_request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    let body = if chunked {
        dechunk(body).ok_or_else(bad)?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size_line, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size + 2..)?;
    }
}
