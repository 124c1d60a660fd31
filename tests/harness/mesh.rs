//! NHS England's MESH sandbox (PyPI `mesh-sandbox`) and NHS's Python client
//! (PyPI `mesh-client`) for end-to-end tests.
//!
//! [`Sandbox`] runs `uvicorn mesh_sandbox.api:app` with `AUTH_MODE=full` (the
//! HMAC header is checked for real) and `STORE_MODE=file` in its own temp
//! folder on a free port; it can be stopped and started again on the same port
//! and store (messages survive), and is killed on drop. [`mesh_client`] runs
//! `tests/python/mesh_tool.py`, which drives NHS's `mesh_client`.
//!
//! Needs the venv made by `bash tests/python/setup-venv.sh` (`.venv`, or
//! `$JUNCTION_VENV`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The sandbox's shared HMAC key and every built-in mailbox's password.
pub const SHARED_KEY: &str = "TestKey";
pub const PASSWORD: &str = "password";
pub const WORKFLOW: &str = "TEST_WORKFLOW";

/// The Python venv with mesh-sandbox and mesh-client.
pub fn venv() -> PathBuf {
    let venv = std::env::var_os("JUNCTION_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::repo_root().join(".venv"));
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
    dir: tempfile::TempDir,
}

impl Sandbox {
    /// Starts a sandbox on a free port with an empty store.
    pub fn start() -> Sandbox {
        // A free port can be taken by another process before uvicorn binds it.
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("sandbox temp dir");
            std::fs::create_dir(dir.path().join("store")).expect("sandbox store dir");
            let port = TcpListener::bind("127.0.0.1:0")
                .expect("bind")
                .local_addr()
                .expect("addr")
                .port();
            let mut sandbox = Sandbox {
                child: None,
                url: format!("http://127.0.0.1:{port}"),
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                dir,
            };
            match sandbox.spawn() {
                Ok(()) => return sandbox,
                Err(log) => last = log,
            }
        }
        panic!("mesh sandbox did not start on three ports: {last}");
    }

    /// Starts uvicorn on `self.addr`; `Err` carries its log when it exits first.
    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("sandbox.log"))
            .expect("sandbox log");
        // Working directory: the temp dir, so nothing named `mesh_sandbox` shadows the package.
        let child = Command::new(venv().join("bin/uvicorn"))
            .args(["mesh_sandbox.api:app", "--host", "127.0.0.1", "--port"])
            .arg(self.addr.port().to_string())
            .args(["--workers", "1", "--log-level", "warning"])
            .current_dir(self.dir.path())
            .env("AUTH_MODE", "full")
            .env("STORE_MODE", "file")
            .env("SHARED_KEY", SHARED_KEY)
            .env("MAILBOXES_DATA_DIR", self.dir.path().join("store"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn uvicorn");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("exited with {status}: {}", self.log()));
                }
            }
            if self.healthy() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!("not ready after 90 s: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn healthy(&self) -> bool {
        matches!(http(self.addr, "GET", "/health", None), Ok((200, _)))
    }

    /// The sandbox's own log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sandbox.log")).unwrap_or_default()
    }

    /// Kills it; the store folder (and the messages in it) stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.spawn() {
                Ok(()) => return,
                // The port may linger for a moment after the kill.
                Err(log) if Instant::now() < deadline && log.contains("address already in use") => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(log) => panic!("mesh sandbox did not restart: {log}"),
            }
        }
    }

    /// Puts a REPORT into `mailbox`'s inbox (the sandbox's test-only admin call)
    /// about `linked_message_id`, with error `code`; returns the report's id.
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
        let (status, answer) = http(
            self.addr,
            "POST",
            "/messageexchange/admin/report",
            Some(&body),
        )
        .expect("POST admin/report");
        assert_eq!(status, 200, "admin/report: {answer}");
        let json: serde_json::Value = serde_json::from_str(&answer).expect("report answer");
        json["message_id"].as_str().expect("message_id").to_string()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `tests/python/mesh_tool.py` (NHS's `mesh_client`) against `url` as
/// `mailbox` with the sandbox's credentials and `args`; returns its stdout.
/// Panics with its stderr when it fails.
pub fn mesh_client(url: &str, mailbox: &str, args: &[&str]) -> String {
    let out = Command::new(venv().join("bin/python"))
        .arg(super::repo_root().join("tests/python/mesh_tool.py"))
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
pub fn send(url: &str, mailbox: &str, to: &str, file: &Path) -> String {
    send_in_chunks(url, mailbox, to, file, None)
}

/// Like [`send`], in chunks of at most `chunk_size` bytes when given.
pub fn send_in_chunks(
    url: &str,
    mailbox: &str,
    to: &str,
    file: &Path,
    chunk_size: Option<usize>,
) -> String {
    let file = file.to_str().expect("utf-8 path");
    let size = chunk_size.map(|n| n.to_string());
    let mut args = vec![
        "send",
        "--to",
        to,
        "--workflow-id",
        WORKFLOW,
        "--file",
        file,
    ];
    if let Some(size) = &size {
        args.extend(["--chunk-size", size.as_str()]);
    }
    mesh_client(url, mailbox, &args).trim().to_string()
}

/// Downloads `message_id` from `mailbox` with NHS's client into `out`
/// (acknowledging it); returns its headers as JSON.
pub fn download(url: &str, mailbox: &str, message_id: &str, out: &Path) -> serde_json::Value {
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

/// A minimal HTTP/1.1 request with `Connection: close`; (status, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = json.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_string()))
}
