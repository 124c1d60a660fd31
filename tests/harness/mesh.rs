//! The MESH sandbox for tests: NHS England's `mesh-sandbox` (PyPI) started with
//! `AUTH_MODE=full` (the HMAC header is checked for real) and `STORE_MODE=file`
//! in a temporary folder, on a free port; and NHS's own Python client
//! (`mesh-client`, via tests/python/mesh_download.py) as an independent reader.
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
        let log = std::fs::File::create(dir.path().join("sandbox.log")).unwrap();
        // Working directory: the temp dir, so nothing named `mesh_sandbox` shadows the package.
        let child = Command::new(venv.join("bin/uvicorn"))
            .args([
                "mesh_sandbox.api:app",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .args(["--workers", "1", "--log-level", "warning"])
            .args(extra_args)
            .current_dir(dir.path())
            .env("AUTH_MODE", "full")
            .env("STORE_MODE", "file")
            .env("SHARED_KEY", "TestKey")
            .env("MAILBOXES_DATA_DIR", &store)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut sandbox = Sandbox {
            child: Some(child),
            url: format!("{scheme}://127.0.0.1:{port}"),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        sandbox.wait_ready(scheme == "http")?;
        Ok(sandbox)
    }

    fn wait_ready(&mut self, check_health: bool) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
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

/// Downloads with NHS's `mesh_client` (tests/python/mesh_download.py); returns the
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
        .arg(repo_root().join("tests/python/mesh_download.py"))
        .args([
            "--url",
            &sandbox.url,
            "--mailbox",
            mailbox,
            "--password",
            "password",
        ])
        .args(["--shared-key", "TestKey", "--message-id", id.as_str()])
        .arg("--out")
        .arg(&out)
        .args(tls);
    if !ack {
        command.arg("--no-ack");
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "mesh_download.py failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        sandbox.log()
    );
    let headers: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    (std::fs::read(out).unwrap(), headers)
}
