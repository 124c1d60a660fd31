//! The MESH sandbox for tests: NHS England's `mesh-sandbox` (PyPI) started with
//! `AUTH_MODE=full` (the HMAC header is checked for real) and `STORE_MODE=file`
//! in a temporary folder, on a free port; it can be stopped and started again on
//! the same port and store (messages survive). NHS's own Python client
//! (`mesh-client`, via tests/python/mesh_tool.py) is the
//! independent peer: it lists, sends and downloads.
//!
//! It does not mock anything and does not decide what a test asserts. Needs the
//! venv made by `bash tests/python/setup-venv.sh` (`.venv`, or `$JUNCTION_VENV`).
//!
//! # Invariants
//! - A [`Sandbox`] is killed when dropped: no sandbox outlives its test.
//! - Every wait is bounded; a timeout panics with the sandbox's log.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use junction::mesh::MessageId;

use super::repo_root;

/// The mailboxes' shared HMAC key the sandbox is started with.
pub const SHARED_KEY: &str = "TestKey";
/// The password of every sandbox mailbox.
pub const PASSWORD: &str = "password";
/// The workflow every sandbox mailbox may use.
pub const WORKFLOW: &str = "TEST_WORKFLOW";

pub fn venv() -> PathBuf {
    let venv = std::env::var_os("JUNCTION_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv"));
    assert!(
        venv.join("bin/uvicorn").is_file() && venv.join("bin/python").is_file(),
        "no Python venv with mesh-sandbox at {}: run `bash tests/python/setup-venv.sh` first \
         (or set JUNCTION_VENV)",
        venv.display()
    );
    venv
}

/// A running MESH sandbox; killed on drop.
pub struct Sandbox {
    child: Option<Child>,
    pub url: String,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    /// The extra uvicorn arguments it was started with (for [`Sandbox::restart`]).
    extra_args: Vec<String>,
}

impl Sandbox {
    pub fn start() -> Self {
        Self::start_with("http", &[])
    }

    /// Starts uvicorn with extra arguments (TLS flags); `scheme` is the URL scheme.
    pub fn start_with(scheme: &str, extra_args: &[String]) -> Self {
        // The free port is found by binding and releasing it; another process may
        // take it before uvicorn binds, so try a few ports.
        let mut last_log = String::new();
        for _ in 0..3 {
            match Self::try_start(scheme, extra_args) {
                Ok(sandbox) => return sandbox,
                Err(log) if log.contains("address already in use") => last_log = log,
                Err(log) => panic!("mesh sandbox did not start: {log}"),
            }
        }
        panic!("mesh sandbox did not start on three ports: {last_log}");
    }

    /// Starts uvicorn once; `Err` carries its log if it exited before being ready.
    fn try_start(scheme: &str, extra_args: &[String]) -> Result<Self, String> {
        let venv = venv();
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = spawn_uvicorn(&venv, dir.path(), port, extra_args);
        let mut sandbox = Sandbox {
            child: Some(child),
            url: format!("{scheme}://127.0.0.1:{port}"),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            extra_args: extra_args.to_vec(),
        };
        sandbox.wait_ready(scheme == "http")?;
        Ok(sandbox)
    }

    /// Stops it (if running) and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let child = spawn_uvicorn(&venv(), self.dir.path(), self.addr.port(), &self.extra_args);
            self.child = Some(child);
            match self.wait_ready(self.url.starts_with("http:")) {
                Ok(()) => return,
                // The port may linger for a moment after the kill.
                Err(log) if Instant::now() < deadline && log.contains("address already in use") => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(log) => panic!("mesh sandbox did not restart: {log}"),
            }
        }
    }

    /// Puts a REPORT into `mailbox`'s inbox (the sandbox's test-only admin
    /// call) about `linked_message_id` with error `code`; returns its id.
    pub fn add_report(&self, mailbox: &str, linked_message_id: &str, code: &str) -> String {
        let body = serde_json::json!({
            "mailbox_id": mailbox,
            "code": code,
            "description": "Message not collected by recipient after 5 days",
            "workflow_id": WORKFLOW,
            "linked_message_id": linked_message_id,
            "local_id": "junction-7",
        })
        .to_string();
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            stream,
            "POST /messageexchange/admin/report HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "admin/report: {answer}");
        let json = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let json: serde_json::Value = serde_json::from_str(json).expect("report answer is JSON");
        json["message_id"].as_str().expect("message_id").to_string()
    }
}

/// Starts uvicorn with the sandbox's settings; its log is appended to `dir/sandbox.log`.
fn spawn_uvicorn(
    venv: &std::path::Path,
    dir: &std::path::Path,
    port: u16,
    extra_args: &[String],
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("sandbox.log"))
        .unwrap();
    // Working directory: the temp dir, so nothing named `mesh_sandbox` shadows the package.
    Command::new(venv.join("bin/uvicorn"))
        .args([
            "mesh_sandbox.api:app",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .args(["--workers", "1", "--log-level", "warning"])
        .args(extra_args)
        .current_dir(dir)
        .env("AUTH_MODE", "full")
        .env("STORE_MODE", "file")
        .env("SHARED_KEY", SHARED_KEY)
        .env("MAILBOXES_DATA_DIR", dir.join("store"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

impl Sandbox {
    fn wait_ready(&mut self, check_health: bool) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!("exited with {status}: {}", self.log()));
            }
            let ready = match TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)) {
                Ok(_) if !check_health => true,
                Ok(mut stream) => {
                    let request = format!(
                        "GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                        self.addr
                    );
                    let mut answer = String::new();
                    stream.write_all(request.as_bytes()).is_ok()
                        && stream.read_to_string(&mut answer).is_ok()
                        && answer.starts_with("HTTP/1.1 200")
                }
                Err(_) => false,
            };
            if ready {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "mesh sandbox not ready after 60 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sandbox.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Downloads with NHS's `mesh_client` (tests/python/mesh_tool.py); returns the
/// body and the headers it saw. Acknowledges unless `ack` is false.
pub fn python_download(
    sandbox: &Sandbox,
    mailbox: &str,
    id: &MessageId,
    ack: bool,
    tls: &[String],
) -> (Vec<u8>, serde_json::Value) {
    let out = sandbox.dir.path().join(format!("python-{id}.bin"));
    let mut command = Command::new(venv().join("bin/python"));
    command
        .arg(repo_root().join("tests/python/mesh_tool.py"))
        .args([
            "--url",
            &sandbox.url,
            "--mailbox",
            mailbox,
            "--password",
            PASSWORD,
        ])
        .args(["--shared-key", SHARED_KEY])
        .args(tls)
        .args(["download", "--message-id", id.as_str()])
        .arg("--out")
        .arg(&out);
    if !ack {
        command.arg("--no-ack");
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "mesh_tool.py download failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        sandbox.log()
    );
    let headers: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    (std::fs::read(out).unwrap(), headers)
}

/// Runs `tests/python/mesh_tool.py` (NHS's `mesh_client`) against `url` as
/// `mailbox` with the sandbox's credentials and `args`; returns its stdout.
/// Panics with its stderr when it fails.
pub fn mesh_client(url: &str, mailbox: &str, args: &[&str]) -> String {
    let out = Command::new(venv().join("bin/python"))
        .arg(repo_root().join("tests/python/mesh_tool.py"))
        .args(["--url", url, "--mailbox", mailbox])
        .args(["--password", PASSWORD, "--shared-key", SHARED_KEY])
        .args(args)
        .output()
        .expect("run mesh_tool.py");
    assert!(
        out.status.success(),
        "mesh_tool.py {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("mesh_tool.py output is UTF-8")
}

/// Message ids in `mailbox`'s inbox, as NHS's client lists them.
pub fn inbox(url: &str, mailbox: &str) -> Vec<String> {
    let out = mesh_client(url, mailbox, &["list"]);
    serde_json::from_str(out.trim()).expect("list output is a JSON array")
}

/// Sends `file` from `mailbox` to `to` with NHS's client; returns the message id.
pub fn send(url: &str, mailbox: &str, to: &str, file: &std::path::Path) -> String {
    send_in_chunks(url, mailbox, to, file, None)
}

/// Like [`send`], with `mex-Content-Checksum` set to `checksum` (which need
/// not be the body's).
#[allow(dead_code)]
pub fn send_with_checksum(
    url: &str,
    mailbox: &str,
    to: &str,
    file: &std::path::Path,
    checksum: &str,
) -> String {
    send_with(url, mailbox, to, file, &["--checksum", checksum])
}

/// Like [`send`], in chunks of at most `chunk_size` bytes when given.
pub fn send_in_chunks(
    url: &str,
    mailbox: &str,
    to: &str,
    file: &std::path::Path,
    chunk_size: Option<usize>,
) -> String {
    let size = chunk_size.map(|n| n.to_string());
    let extra: Vec<&str> = match &size {
        Some(size) => vec!["--chunk-size", size.as_str()],
        None => Vec::new(),
    };
    send_with(url, mailbox, to, file, &extra)
}

/// `mesh_tool.py send` of `file` with `extra` arguments; the message id.
fn send_with(url: &str, mailbox: &str, to: &str, file: &std::path::Path, extra: &[&str]) -> String {
    let file = file.to_str().expect("utf-8 path");
    let mut args = vec![
        "send",
        "--to",
        to,
        "--workflow-id",
        WORKFLOW,
        "--file",
        file,
    ];
    args.extend_from_slice(extra);
    mesh_client(url, mailbox, &args).trim().to_string()
}

/// Downloads `message_id` from `mailbox` with NHS's client into `out`
/// (acknowledging it); returns the headers it saw as JSON.
pub fn download(
    url: &str,
    mailbox: &str,
    message_id: &str,
    out: &std::path::Path,
) -> serde_json::Value {
    let text = mesh_client(
        url,
        mailbox,
        &[
            "download",
            "--message-id",
            message_id,
            "--out",
            out.to_str().expect("utf-8 path"),
        ],
    );
    serde_json::from_str(text.trim()).expect("download output is JSON")
}

/// Settings of an engine started by [`start_engine`].
pub struct EngineSetup<'a> {
    /// The MESH sandbox the `junction` mailbox points at.
    pub sandbox_url: &'a str,
    /// `JUNCTION_MESH_PASSWORD` for the engine; empty: not set at all.
    pub password: &'a str,
    /// `[listeners.pas] max_message_bytes`.
    pub max_message_bytes: usize,
    /// `[mesh.mailboxes.junction] chunk_size_bytes`.
    pub chunk_size_bytes: usize,
    /// Route files added to a copy of the shipped `routes/` (name, text).
    pub extra_routes: &'a [(&'a str, &'a str)],
}

impl Default for EngineSetup<'_> {
    fn default() -> Self {
        EngineSetup {
            sandbox_url: "http://127.0.0.1:9",
            password: PASSWORD,
            max_message_bytes: 4 * 1024 * 1024,
            chunk_size_bytes: 75 * 1024 * 1024,
            extra_routes: &[],
        }
    }
}

/// Starts `junction serve` in `dir` with the shipped routes and mappings and a
/// config like the sample `junction.toml`: `store`, `mesh_hwe` (X26ABC2) and
/// `mesh_blmk` (X26ABC3) sent from mailbox `junction` (X26ABC1, secrets from
/// `JUNCTION_MESH_PASSWORD` / `JUNCTION_MESH_SHARED_KEY`), `fhir_lab` as a
/// file destination, a `copy` file destination (`dir/out/copy`) for extra
/// routes, and source `mesh_inbox` polling every second. Short retry delays;
/// data in `dir/data` is kept across restarts.
pub fn start_engine(dir: &std::path::Path, setup: &EngineSetup<'_>) -> super::Engine {
    let routes = dir.join("routes");
    let _ = std::fs::remove_dir_all(&routes);
    std::fs::create_dir_all(&routes).unwrap();
    for entry in std::fs::read_dir(repo_root().join("routes")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            std::fs::copy(&path, routes.join(path.file_name().unwrap())).unwrap();
        }
    }
    for (name, text) in setup.extra_routes {
        std::fs::write(routes.join(name), text).unwrap();
    }
    let mappings = dir.join("mappings");
    if !mappings.exists() {
        std::os::unix::fs::symlink(repo_root().join("mappings"), &mappings).unwrap();
    }
    let retry = "timeout_secs = 60\nbackoff_initial_ms = 200\nbackoff_max_ms = 2000\nmax_attempts = 10000\n";
    let config = |mllp: SocketAddr, api: SocketAddr| {
        format!(
            r#"# written by tests/harness/mesh.rs
[listeners.pas]
bind = "{mllp}"
max_message_bytes = {max}

[store]
path = "data/junction.db"
records = "data/records.db"
sync = "normal"

[api]
bind = "{api}"

[log]
format = "text"

[destinations.store]
kind = "store"

[destinations.mesh_hwe]
kind = "mesh"
external = true
mailbox = "junction"
to = "X26ABC2"
workflow_id = "{WORKFLOW}"
subject = "care record update"
{retry}
[destinations.mesh_blmk]
kind = "mesh"
external = true
mailbox = "junction"
to = "X26ABC3"
workflow_id = "{WORKFLOW}"
{retry}
[destinations.fhir_lab]
kind = "file"
dir = "out/fhir_lab"

[destinations.copy]
kind = "file"
dir = "out/copy"

[mesh.mailboxes.junction]
url = "{url}"
mailbox = "X26ABC1"
password_env = "JUNCTION_MESH_PASSWORD"
shared_key_env = "JUNCTION_MESH_SHARED_KEY"
timeout_secs = 60
max_retries = 1
retry_backoff_ms = 100
chunk_size_bytes = {chunk}

[sources.mesh_inbox]
kind = "mesh_inbox"
mailbox = "junction"
poll_interval_secs = 1
"#,
            max = setup.max_message_bytes,
            url = setup.sandbox_url,
            chunk = setup.chunk_size_bytes,
        )
    };
    let mut env = vec![("JUNCTION_MESH_SHARED_KEY", SHARED_KEY)];
    if !setup.password.is_empty() {
        env.push(("JUNCTION_MESH_PASSWORD", setup.password));
    }
    super::Engine::start_custom(dir, &env, config)
}
