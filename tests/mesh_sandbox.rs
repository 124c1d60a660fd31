//! The MESH client against NHS England's real MESH sandbox (PyPI `mesh-sandbox`),
//! with NHS's own Python client (PyPI `mesh-client`) as the independent reader.
//!
//! Each test starts its own sandbox (`uvicorn mesh_sandbox.api:app`, `AUTH_MODE=full`,
//! so the HMAC header is checked for real; `STORE_MODE=file` in a temporary folder)
//! on a free port, and a guard kills it when the test ends. Needs the venv made by
//! `bash tests/python/setup-venv.sh` (`.venv`, or `$JUNCTION_VENV`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use junction::mesh::{
    MeshClient, MeshError, MeshMailboxConfig, MessageId, MessageType, Secret, SendRequest,
};

const WORKFLOW: &str = "TEST_WORKFLOW";

fn venv() -> PathBuf {
    let venv = std::env::var_os("JUNCTION_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    assert!(
        venv.join("bin/uvicorn").is_file() && venv.join("bin/python").is_file(),
        "no Python venv with mesh-sandbox at {}: run `bash tests/python/setup-venv.sh` first \
         (or set JUNCTION_VENV)",
        venv.display()
    );
    venv
}

/// A running MESH sandbox; killed on drop.
struct Sandbox {
    child: Option<Child>,
    url: String,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn start() -> Self {
        Self::start_with("http", &[])
    }

    /// Starts uvicorn with extra arguments (TLS flags); `scheme` is the URL scheme.
    fn start_with(scheme: &str, extra_args: &[String]) -> Self {
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
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut sandbox = Sandbox {
            child: Some(child),
            url: format!("{scheme}://127.0.0.1:{port}"),
            addr,
            dir,
        };
        sandbox.wait_ready(scheme == "http");
        sandbox
    }

    fn wait_ready(&mut self, check_health: bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("mesh sandbox exited with {status}: {}", self.log());
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
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mesh sandbox not ready after 60 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sandbox.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
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

fn config(sandbox: &Sandbox, mailbox: &str) -> MeshMailboxConfig {
    let mut config = MeshMailboxConfig::new(&sandbox.url, mailbox);
    config.timeout_secs = 60;
    config.max_retries = 2;
    config.retry_backoff_ms = 20;
    config
}

fn client_with(config: &MeshMailboxConfig, password: &str, key: &str) -> MeshClient {
    MeshClient::with_secrets(
        config,
        Secret::new(password.into()),
        Secret::new(key.into()),
    )
    .unwrap()
}

fn client(sandbox: &Sandbox, mailbox: &str) -> MeshClient {
    client_with(&config(sandbox, mailbox), "password", "TestKey")
}

fn request(to: &str, local_id: &str, body: Bytes) -> SendRequest {
    SendRequest {
        to: to.into(),
        workflow_id: WORKFLOW.into(),
        local_id: local_id.into(),
        subject: Some("junction test document".into()),
        file_name: Some(format!("{local_id}.json")),
        content_type: Some("application/fhir+json".into()),
        body,
        earlier_attempt: false,
    }
}

/// A FHIR transaction Bundle as Junction would send it (synthetic, no real person).
fn bundle(n: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"resourceType":"Bundle","type":"transaction","entry":[{{"fullUrl":"urn:uuid:{}","resource":{{"resourceType":"Patient","identifier":[{{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"999000{n:04}"}}],"name":[{{"family":"TESTPATIENT","given":["Zoë"]}}]}},"request":{{"method":"PUT","url":"Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|999000{n:04}"}}}}]}}"#,
        uuid::Uuid::new_v4()
    ))
}

/// Downloads with NHS's `mesh_client` (tests/python/mesh_download.py); returns the
/// body and the headers it saw. Acknowledges unless `ack` is false.
fn python_download(
    sandbox: &Sandbox,
    mailbox: &str,
    id: &MessageId,
    ack: bool,
    tls: &[String],
) -> (Vec<u8>, serde_json::Value) {
    let out = sandbox.dir.path().join(format!("python-{id}.bin"));
    let mut command = Command::new(venv().join("bin/python"));
    command
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/mesh_download.py"))
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

#[tokio::test]
async fn handshake_send_and_download_byte_identical_with_nhs_client() {
    let sandbox = Sandbox::start();
    let sender = client(&sandbox, "X26ABC1");
    let receiver = client(&sandbox, "x26abc2");
    sender.handshake().await.unwrap();
    receiver.handshake().await.unwrap();

    let body = bundle(1);
    let id = sender
        .send(&request("X26ABC2", "delivery-0001", body.clone()))
        .await
        .unwrap();
    let tracking = sender.tracking(&id).await.unwrap();
    assert_eq!(tracking.message_id, id);
    assert_eq!(tracking.local_id.as_deref(), Some("delivery-0001"));
    assert_eq!(tracking.status.as_deref(), Some("accepted"));
    assert_eq!(tracking.recipient.as_deref(), Some("X26ABC2"));

    assert_eq!(receiver.inbox().await.unwrap(), vec![id.clone()]);
    let received = receiver.download(&id).await.unwrap();
    assert_eq!(received.body, body, "our download is byte-identical");
    let h = &received.headers;
    assert_eq!(h.message_id, id);
    assert_eq!(
        (h.from.as_str(), h.to.as_str(), h.workflow_id.as_str()),
        ("X26ABC1", "X26ABC2", WORKFLOW)
    );
    assert_eq!(h.message_type, MessageType::Data);
    assert_eq!(h.local_id.as_deref(), Some("delivery-0001"));
    assert_eq!(h.subject.as_deref(), Some("junction test document"));
    assert_eq!(h.file_name.as_deref(), Some("delivery-0001.json"));
    assert_eq!(h.content_type.as_deref(), Some("application/fhir+json"));
    assert_eq!(h.checksum, Some(junction::mesh::payload::checksum(&body)));
    assert_eq!(h.status_code.as_deref(), Some("00"));
    assert_eq!(h.chunk_count, 1);

    // NHS's client reads the same bytes, then acknowledges.
    let (python_body, headers) = python_download(&sandbox, "X26ABC2", &id, true, &[]);
    assert_eq!(
        python_body,
        body.to_vec(),
        "mesh_client download is byte-identical"
    );
    assert_eq!(headers["workflow_id"], WORKFLOW);
    assert_eq!(headers["local_id"], "delivery-0001");
    assert_eq!(headers["filename"], "delivery-0001.json");
    assert_eq!(headers["message_type"], "DATA");

    assert!(
        receiver.inbox().await.unwrap().is_empty(),
        "acknowledged by mesh_client"
    );
    assert_eq!(
        sender.tracking(&id).await.unwrap().status.as_deref(),
        Some("acknowledged")
    );
}

#[tokio::test]
async fn twenty_megabytes_go_in_chunks_and_reassemble() {
    let sandbox = Sandbox::start();
    let mut sender_config = config(&sandbox, "X26ABC1");
    sender_config.chunk_size_bytes = 5 * 1024 * 1024;
    let sender = client_with(&sender_config, "password", "TestKey");
    let receiver = client(&sandbox, "X26ABC2");

    // 20 MiB: repeated Bundle text with a pseudo-random tail per line, so it is
    // neither trivially compressible nor incompressible.
    let mut rng = fastrand::Rng::with_seed(7);
    let mut body = Vec::with_capacity(20 * 1024 * 1024 + 200);
    while body.len() < 20 * 1024 * 1024 {
        body.extend_from_slice(br#"{"resourceType":"Observation","valueQuantity":{"value":"#);
        body.extend((0..24).map(|_| rng.alphanumeric() as u8));
        body.extend_from_slice(b"}}\n");
    }
    body.truncate(20 * 1024 * 1024);
    let body = Bytes::from(body);

    let requests_before = sender.requests_sent();
    let id = sender
        .send(&request("X26ABC2", "delivery-big-1", body.clone()))
        .await
        .unwrap();
    assert_eq!(
        sender.requests_sent() - requests_before,
        4,
        "one POST per 5 MiB chunk"
    );
    let tracking = sender.tracking(&id).await.unwrap();
    assert_eq!(tracking.status.as_deref(), Some("accepted"));

    let received = receiver.download(&id).await.unwrap();
    assert_eq!(received.headers.chunk_count, 4, "arrived as 4 chunks");
    assert_eq!(received.body.len(), body.len());
    assert!(received.body == body, "reassembled byte-identical");

    let (python_body, headers) = python_download(&sandbox, "X26ABC2", &id, true, &[]);
    assert!(
        python_body == body.to_vec(),
        "mesh_client reassembles the same 20 MiB"
    );
    assert_eq!(headers["bytes"], 20 * 1024 * 1024);
    assert!(receiver.inbox().await.unwrap().is_empty());
}

#[tokio::test]
async fn wrong_credentials_give_the_auth_error_without_retrying() {
    let sandbox = Sandbox::start();
    for (password, key) in [("wrong-password", "TestKey"), ("password", "WrongKey")] {
        let client = client_with(&config(&sandbox, "X26ABC1"), password, key);
        let error = client.handshake().await.unwrap_err();
        assert!(matches!(error, MeshError::Auth { .. }), "{error:?}");
        assert!(error.is_auth() && !error.is_retryable());
        let text = error.to_string();
        assert!(text.contains("X26ABC1") && text.contains("403"), "{text}");
        let wrong = if password == "password" {
            key
        } else {
            password
        };
        assert!(!text.contains(wrong), "no secret in {text}");

        let error = client
            .send(&request("X26ABC2", "delivery-auth", bundle(2)))
            .await
            .unwrap_err();
        assert!(error.is_auth(), "{error:?}");
        assert_eq!(
            client.requests_sent(),
            2,
            "one request each, no retry storm"
        );
    }
    // Nothing was sent by the failed attempts.
    assert!(client(&sandbox, "X26ABC2")
        .inbox()
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn inbox_pages_and_acknowledge_removes_messages() {
    let sandbox = Sandbox::start();
    let sender = client(&sandbox, "X26ABC1");
    let mut receiver_config = config(&sandbox, "X26ABC3");
    receiver_config.inbox_page_size = 10;
    let receiver = client_with(&receiver_config, "password", "TestKey");

    let mut sent = Vec::new();
    for n in 0..23 {
        sent.push(
            sender
                .send(&request(
                    "X26ABC3",
                    &format!("delivery-page-{n}"),
                    bundle(n),
                ))
                .await
                .unwrap(),
        );
    }
    let first = receiver.inbox_page(None).await.unwrap();
    assert_eq!(first.messages.len(), 10);
    assert!(first.next.is_some(), "a full page links to the next");

    let mut listed = receiver.inbox().await.unwrap();
    listed.sort();
    let mut expected = sent.clone();
    expected.sort();
    assert_eq!(listed, expected, "three pages, every message once");

    for id in &sent[..5] {
        let received = receiver.download(id).await.unwrap();
        assert_eq!(received.headers.to, "X26ABC3");
        receiver.acknowledge(id).await.unwrap();
    }
    let left = receiver.inbox().await.unwrap();
    assert_eq!(left.len(), 18);
    assert!(sent[..5].iter().all(|id| !left.contains(id)));
    // An acknowledged message can no longer be downloaded as new; tracking agrees.
    assert_eq!(
        sender.tracking(&sent[0]).await.unwrap().status.as_deref(),
        Some("acknowledged")
    );
}

#[tokio::test]
async fn a_retried_send_finds_the_earlier_message_instead_of_duplicating() {
    let sandbox = Sandbox::start();
    let sender = client(&sandbox, "X26ABC1");
    let receiver = client(&sandbox, "X26ABC2");
    let body = bundle(3);
    let first = sender
        .send(&request("X26ABC2", "delivery-retry-1", body.clone()))
        .await
        .unwrap();

    // Delivery lost the answer (say, a kill -9) and tries again with the same local id.
    let mut again = request("X26ABC2", "delivery-retry-1", body.clone());
    again.earlier_attempt = true;
    let second = sender.send(&again).await.unwrap();
    assert_eq!(
        second, first,
        "tracking by local id found the message MESH already has"
    );
    assert_eq!(
        receiver.inbox().await.unwrap(),
        vec![first.clone()],
        "no duplicate"
    );

    // A retry of a send that never reached MESH posts it.
    let mut fresh = request("X26ABC2", "delivery-retry-2", body.clone());
    fresh.earlier_attempt = true;
    let third = sender.send(&fresh).await.unwrap();
    assert_ne!(third, first);
    assert_eq!(receiver.inbox().await.unwrap().len(), 2);
    let tracked = sender
        .tracking_by_local_id("delivery-retry-2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tracked.message_id, third);
    assert!(sender
        .tracking_by_local_id("delivery-never-sent")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn refusals_are_typed_and_permanent() {
    let sandbox = Sandbox::start();
    let sender = client(&sandbox, "X26ABC1");
    let error = sender
        .send(&request("X26NOPE9", "delivery-417", bundle(4)))
        .await
        .unwrap_err();
    match &error {
        MeshError::Rejected { status, code, .. } => {
            assert_eq!(*status, 417);
            assert_eq!(code.as_deref(), Some("12"), "unregistered recipient");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(!error.is_retryable() && !error.is_auth());
    assert_eq!(sender.requests_sent(), 1);

    let receiver = client(&sandbox, "X26ABC2");
    let missing = MessageId::new("0123456789ABCDEF0123456789ABCDEF");
    let error = receiver.download(&missing).await.unwrap_err();
    assert!(matches!(error, MeshError::NotFound { .. }), "{error:?}");
    let error = sender.tracking(&missing).await.unwrap_err();
    assert!(matches!(error, MeshError::NotFound { .. }), "{error:?}");
}

#[tokio::test]
async fn a_stopped_sandbox_gives_a_retryable_error() {
    let mut sandbox = Sandbox::start();
    let sender = client(&sandbox, "X26ABC1");
    sender.handshake().await.unwrap();
    sandbox.stop();

    // A fresh client: every attempt is refused at connect, so the first POST is
    // retried (it surely never arrived) max_retries times.
    let fresh = client(&sandbox, "X26ABC1");
    let error = fresh
        .send(&request("X26ABC2", "delivery-down", bundle(5)))
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    match &error {
        MeshError::Unavailable {
            attempts,
            operation,
            ..
        } => {
            assert_eq!(*attempts, 3, "first try and max_retries = 2");
            assert_eq!(*operation, "send");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(fresh.requests_sent(), 3);

    // The client that held a pooled connection: that connection dies mid-request,
    // which is ambiguous, so tracking is asked (and is down too): still retryable.
    let error = sender
        .send(&request("X26ABC2", "delivery-down", bundle(5)))
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    assert!(
        matches!(
            error,
            MeshError::Unavailable {
                operation: "send",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(sender.handshake().await.unwrap_err().is_retryable());
    assert!(sender.inbox().await.unwrap_err().is_retryable());
    assert!(sender
        .download(&MessageId::new("X"))
        .await
        .unwrap_err()
        .is_retryable());
}

#[tokio::test]
async fn secrets_from_environment_and_file() {
    let sandbox = Sandbox::start();
    let key_file = sandbox.dir.path().join("shared-key");
    std::fs::write(&key_file, "TestKey\n").unwrap();
    std::env::set_var("JUNCTION_SANDBOX_TEST_MESH_PASSWORD", "password");
    let mut config = config(&sandbox, "X26ABC1");
    config.password_env = Some("JUNCTION_SANDBOX_TEST_MESH_PASSWORD".into());
    config.shared_key_file = Some(key_file);
    let client = MeshClient::new(&config).unwrap();
    client.handshake().await.unwrap();

    config.password_env = Some("JUNCTION_SANDBOX_TEST_UNSET".into());
    let error = MeshClient::new(&config).unwrap_err();
    assert!(
        error.to_string().contains("JUNCTION_SANDBOX_TEST_UNSET"),
        "{error}"
    );
}
