//! The MESH client against NHS England's real MESH sandbox (PyPI `mesh-sandbox`),
//! with NHS's own Python client (PyPI `mesh-client`) as the independent reader.
//!
//! Each test starts its own sandbox (`uvicorn mesh_sandbox.api:app`, `AUTH_MODE=full`,
//! so the HMAC header is checked for real; `STORE_MODE=file` in a temporary folder)
//! on a free port, and a guard kills it when the test ends. Needs the venv made by
//! `bash tests/python/setup-venv.sh` (`.venv`, or `$JUNCTION_VENV`).

mod harness;

use std::net::SocketAddr;
use std::process::Command;

use bytes::Bytes;
use junction::mesh::{
    MeshClient, MeshError, MeshMailboxConfig, MessageId, MessageType, Secret, SendRequest,
};

use harness::mesh::{python_download, venv, Sandbox};

const WORKFLOW: &str = "TEST_WORKFLOW";

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
async fn secrets_from_files_and_a_missing_variable_named() {
    let sandbox = Sandbox::start();
    let password_file = sandbox.dir.path().join("password");
    let key_file = sandbox.dir.path().join("shared-key");
    std::fs::write(&password_file, "password\n").unwrap();
    std::fs::write(&key_file, "TestKey\n").unwrap();
    let mut config = config(&sandbox, "X26ABC1");
    config.password_file = Some(password_file);
    config.shared_key_file = Some(key_file);
    let client = MeshClient::new(&config).unwrap();
    client.handshake().await.unwrap();

    // (Reading the environment only: setting variables would race with other threads.)
    config.password_file = None;
    config.password_env = Some("JUNCTION_SANDBOX_TEST_UNSET".into());
    let error = MeshClient::new(&config).unwrap_err();
    assert!(
        error.to_string().contains("JUNCTION_SANDBOX_TEST_UNSET"),
        "{error}"
    );
}

#[tokio::test]
async fn messages_sent_by_nhs_client_download_with_ours() {
    let sandbox = Sandbox::start();
    let ours = client(&sandbox, "X26ABC1");
    // 3 MiB sent by mesh_client in 1 MiB chunks with its transparent gzip, and a
    // small one uncompressed.
    let big: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let small = bundle(9);
    let big_path = sandbox.dir.path().join("big.bin");
    let small_path = sandbox.dir.path().join("small.json");
    std::fs::write(&big_path, &big).unwrap();
    std::fs::write(&small_path, &small).unwrap();
    let script = r#"
import sys
from mesh_client import MeshClient
url, big, small = sys.argv[1:4]
with MeshClient(url, "X26ABC2", "password", shared_key=b"TestKey", verify=False, max_retries=0) as client:
    with open(big, "rb") as f:
        print(client.send_message("X26ABC1", f.read(), workflow_id="TEST_WORKFLOW", local_id="py-big",
                                  filename="big.bin", max_chunk_size=1024 * 1024, compress=True))
    with open(small, "rb") as f:
        print(client.send_message("X26ABC1", f.read(), workflow_id="TEST_WORKFLOW", local_id="py-small",
                                  subject="plain", content_type="application/fhir+json", compress=False))
"#;
    let output = Command::new(venv().join("bin/python"))
        .args(["-c", script, &sandbox.url])
        .arg(&big_path)
        .arg(&small_path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ids: Vec<MessageId> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(MessageId::new)
        .collect();
    assert_eq!(ids.len(), 2);

    let mut inbox = ours.inbox().await.unwrap();
    inbox.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(inbox, expected);

    let received = ours.download(&ids[0]).await.unwrap();
    assert_eq!(received.headers.chunk_count, 3);
    assert_eq!(received.headers.from, "X26ABC2");
    assert_eq!(received.headers.local_id.as_deref(), Some("py-big"));
    assert!(
        received.body == big,
        "3 gzipped chunks from mesh_client reassemble byte-identical"
    );

    let received = ours.download(&ids[1]).await.unwrap();
    assert_eq!(received.body, small);
    assert_eq!(received.headers.subject.as_deref(), Some("plain"));
    assert_eq!(
        received.headers.content_type.as_deref(),
        Some("application/fhir+json")
    );
    for id in &ids {
        ours.acknowledge(id).await.unwrap();
    }
    assert!(ours.inbox().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_error_report_downloads_as_report() {
    let sandbox = Sandbox::start();
    let sender = client(&sandbox, "X26ABC1");
    let sent = sender
        .send(&request("X26ABC2", "delivery-report", bundle(6)))
        .await
        .unwrap();
    // The sandbox's test-only endpoint puts a non-delivery report in our inbox.
    let answer = reqwest::Client::new()
        .post(format!("{}/messageexchange/admin/report", sandbox.url))
        .json(&serde_json::json!({
            "mailbox_id": "X26ABC1",
            "code": "14",
            "description": "Message not collected by recipient after 5 days",
            "workflow_id": WORKFLOW,
            "local_id": "delivery-report",
            "linked_message_id": sent.as_str(),
        }))
        .send()
        .await
        .unwrap();
    assert!(
        answer.status().is_success(),
        "{}",
        answer.text().await.unwrap()
    );

    let inbox = sender.inbox().await.unwrap();
    assert_eq!(inbox.len(), 1);
    let report = sender.download(&inbox[0]).await.unwrap();
    assert_eq!(report.headers.message_type, MessageType::Report);
    assert_eq!(report.headers.status_code.as_deref(), Some("14"));
    assert_eq!(
        report.headers.linked_message_id.as_deref(),
        Some(sent.as_str())
    );
    assert_eq!(report.headers.local_id.as_deref(), Some("delivery-report"));
    assert!(report.body.is_empty());
    sender.acknowledge(&inbox[0]).await.unwrap();
}

/// A proxy in front of the sandbox that forwards the first connection's request
/// and then hangs up instead of passing MESH's answer on; later connections pass
/// through untouched. Models an answer lost after MESH took the message.
async fn proxy_losing_first_answer(upstream: SocketAddr) -> String {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut inbound, _)) = listener.accept().await {
            let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            if std::mem::take(&mut first) {
                tokio::spawn(async move {
                    let (mut client_read, client_write) = inbound.into_split();
                    let (mut server_read, mut server_write) = outbound.into_split();
                    let forward = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    });
                    let mut answer = [0u8; 4096];
                    let _ = server_read.read(&mut answer).await; // MESH answered: it has the message
                    forward.abort();
                    drop(client_write);
                });
            } else {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_lost_answer_to_the_first_post_is_resolved_by_tracking_not_by_reposting() {
    let sandbox = Sandbox::start();
    let proxy_url = proxy_losing_first_answer(sandbox.addr).await;
    let mut sender_config = config(&sandbox, "X26ABC1");
    sender_config.url = proxy_url;
    let sender = client_with(&sender_config, "password", "TestKey");
    let receiver = client(&sandbox, "X26ABC2");

    let body = bundle(7);
    let id = sender
        .send(&request("X26ABC2", "delivery-lost-answer", body.clone()))
        .await
        .unwrap();
    assert_eq!(
        sender.requests_sent(),
        2,
        "one POST, then tracking by local id; no second POST"
    );
    assert_eq!(
        receiver.inbox().await.unwrap(),
        vec![id.clone()],
        "exactly one message"
    );
    assert_eq!(receiver.download(&id).await.unwrap().body, body);
}

#[tokio::test]
async fn mutual_tls_with_client_certificate_and_private_ca() {
    let pki = harness::pki::Pki::new();
    let file = |name: &str| pki.path(name);
    let args: Vec<String> = [
        "--ssl-certfile",
        "server.pem",
        "--ssl-keyfile",
        "server.key",
        "--ssl-ca-certs",
        "ca.pem",
        "--ssl-cert-reqs",
        "2",
    ]
    .iter()
    .map(|a| match *a {
        "server.pem" | "server.key" | "ca.pem" => file(a).display().to_string(),
        other => other.to_owned(),
    })
    .collect();
    let sandbox = Sandbox::start_with("https", &args);

    let mut tls = config(&sandbox, "X26ABC1");
    tls.ca_file = Some(file("ca.pem"));
    tls.client_cert_file = Some(file("client.pem"));
    tls.client_key_file = Some(file("client.key"));
    let sender = client_with(&tls, "password", "TestKey");
    sender.handshake().await.unwrap();
    let body = bundle(8);
    let id = sender
        .send(&request("X26ABC2", "delivery-mtls", body.clone()))
        .await
        .unwrap();

    // NHS's client over the same mutual TLS reads it byte-identical.
    let python_tls = vec![
        "--ca-file".to_owned(),
        file("ca.pem").display().to_string(),
        "--cert".to_owned(),
        file("client.pem").display().to_string(),
        file("client.key").display().to_string(),
    ];
    let (python_body, _) = python_download(&sandbox, "X26ABC2", &id, true, &python_tls);
    assert_eq!(python_body, body.to_vec());

    // Without the private CA the server is not trusted (public roots only).
    let mut untrusted = tls.clone();
    untrusted.ca_file = None;
    let error = client_with(&untrusted, "password", "TestKey")
        .handshake()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("certificate"), "{error}");

    // Without a client certificate the server refuses the connection.
    let mut anonymous = tls.clone();
    anonymous.client_cert_file = None;
    anonymous.client_key_file = None;
    anonymous.max_retries = 0;
    let error = client_with(&anonymous, "password", "TestKey")
        .handshake()
        .await
        .unwrap_err();
    assert!(matches!(error, MeshError::Unavailable { .. }), "{error:?}");

    // A key file that is not PEM is a configuration error naming the file.
    std::fs::write(file("broken.pem"), "not a certificate").unwrap();
    let mut broken = tls.clone();
    broken.client_cert_file = Some(file("broken.pem"));
    let error = MeshClient::with_secrets(
        &broken,
        Secret::new("password".into()),
        Secret::new("TestKey".into()),
    )
    .unwrap_err();
    assert!(error.to_string().contains("broken.pem"), "{error}");
}

/// What the fault proxy does to a request that matches a rule.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Answer this status without passing the request on (MESH never sees it).
    Refuse(u16),
    /// Pass the request on, then answer this status instead of MESH's answer.
    ForwardThenFail(u16),
}

type Rule = (fn(&str, &str) -> bool, Fault);

/// An HTTP/1.1 proxy in front of the sandbox that applies each rule once, to the
/// first request (method, path) it matches, and passes everything else through.
async fn fault_proxy(upstream: SocketAddr, rules: Vec<Rule>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rules = std::sync::Arc::new(std::sync::Mutex::new(rules));
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            tokio::spawn(proxy_connection(inbound, upstream, rules.clone()));
        }
    });
    format!("http://{addr}")
}

async fn proxy_connection(
    mut inbound: tokio::net::TcpStream,
    upstream: SocketAddr,
    rules: std::sync::Arc<std::sync::Mutex<Vec<Rule>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match inbound.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut request_line = head.lines().next().unwrap_or("").split(' ');
        let (method, path) = (
            request_line.next().unwrap_or("").to_owned(),
            request_line.next().unwrap_or("").to_owned(),
        );
        let length: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            match inbound.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let request: Vec<u8> = buf.drain(..head_end + length).collect();
        let fault = {
            let mut rules = rules.lock().unwrap();
            let hit = rules
                .iter()
                .position(|(matches, _)| matches(&method, &path));
            hit.map(|i| rules.remove(i).1)
        };
        let canned = |code: u16| {
            format!("HTTP/1.1 {code} Injected Fault\r\ncontent-length: 0\r\n\r\n").into_bytes()
        };
        let answer = match fault {
            Some(Fault::Refuse(code)) => canned(code),
            other => {
                // One upstream connection per request, closed by MESH after answering.
                let mut head_lines: Vec<&str> = head[..head_end - 4]
                    .split("\r\n")
                    .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                    .collect();
                head_lines.push("Connection: close");
                let mut forwarded = head_lines.join("\r\n").into_bytes();
                forwarded.extend_from_slice(b"\r\n\r\n");
                forwarded.extend_from_slice(&request[head_end..]);
                let mut up = tokio::net::TcpStream::connect(upstream).await.unwrap();
                up.write_all(&forwarded).await.unwrap();
                let mut response = Vec::new();
                up.read_to_end(&mut response).await.unwrap();
                match other {
                    Some(Fault::ForwardThenFail(code)) => canned(code),
                    _ => response,
                }
            }
        };
        if inbound.write_all(&answer).await.is_err() {
            return;
        }
    }
}

fn first_post(method: &str, path: &str) -> bool {
    method == "POST" && path == "/messageexchange/X26ABC1/outbox"
}
fn chunk_3(method: &str, path: &str) -> bool {
    method == "POST" && path.contains("/outbox/") && path.ends_with("/3")
}
fn chunk_4(method: &str, path: &str) -> bool {
    method == "POST" && path.contains("/outbox/") && path.ends_with("/4")
}
fn inbox_list(method: &str, path: &str) -> bool {
    method == "GET" && path.starts_with("/messageexchange/X26ABC1/inbox?")
}

#[tokio::test]
async fn transient_answers_are_retried_where_safe_and_tracked_where_not() {
    let sandbox = Sandbox::start();
    let receiver = client(&sandbox, "X26ABC2");
    let mut delivered = 0;
    let scenarios: Vec<(&str, Vec<Rule>, u64)> = vec![
        // 429 on the first POST: refused before processing, posted again.
        ("429 first post", vec![(first_post, Fault::Refuse(429))], 2),
        // 503 on the first POST: ambiguous; tracking by local id finds nothing; posted again.
        ("503 first post", vec![(first_post, Fault::Refuse(503))], 3),
        // 504 after MESH took it: ambiguous; tracking finds it; NOT posted again.
        (
            "504 after accept",
            vec![(first_post, Fault::ForwardThenFail(504))],
            2,
        ),
        // 503 on chunk 3 of 4: the chunk is posted again.
        ("503 chunk 3", vec![(chunk_3, Fault::Refuse(503))], 5),
        // 502 after MESH took the last chunk: the retry meets 423 Locked, which means done.
        (
            "502 after last chunk",
            vec![(chunk_4, Fault::ForwardThenFail(502))],
            5,
        ),
    ];
    for (n, (name, rules, expected_requests)) in scenarios.into_iter().enumerate() {
        let mut sender_config = config(&sandbox, "X26ABC1");
        sender_config.url = fault_proxy(sandbox.addr, rules).await;
        let chunked = name.contains("chunk");
        if chunked {
            sender_config.chunk_size_bytes = 1000;
        }
        let sender = client_with(&sender_config, "password", "TestKey");
        let body = if chunked {
            Bytes::from(
                (0..3500u32)
                    .map(|i| b'a' + (i % 26) as u8)
                    .collect::<Vec<_>>(),
            )
        } else {
            bundle(100 + n)
        };
        let id = sender
            .send(&request(
                "X26ABC2",
                &format!("delivery-fault-{n}"),
                body.clone(),
            ))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            sender.requests_sent(),
            expected_requests,
            "{name}: requests made"
        );
        delivered += 1;
        let inbox = receiver.inbox().await.unwrap();
        assert_eq!(
            inbox.len(),
            delivered,
            "{name}: exactly one message per send"
        );
        let received = receiver.download(&id).await.unwrap();
        assert_eq!(received.body, body, "{name}");
        assert_eq!(
            received.headers.chunk_count,
            if chunked { 4 } else { 1 },
            "{name}"
        );
    }

    // A 503 that outlasts the retries: Unavailable with the status, after 1 + 2 tries.
    let mut listing = config(&sandbox, "X26ABC1");
    let refuse: Rule = (inbox_list, Fault::Refuse(503));
    listing.url = fault_proxy(sandbox.addr, vec![refuse, refuse, refuse]).await;
    let error = client_with(&listing, "password", "TestKey")
        .inbox()
        .await
        .unwrap_err();
    match error {
        MeshError::Unavailable {
            attempts, status, ..
        } => assert_eq!((attempts, status), (3, Some(503))),
        other => panic!("expected Unavailable, got {other:?}"),
    }

    // A 404 where MESH names no message (something in between answered): not
    // "message `` not found", and worth trying again, not a permanent failure.
    let mut listing = config(&sandbox, "X26ABC1");
    listing.url = fault_proxy(sandbox.addr, vec![(inbox_list, Fault::Refuse(404))]).await;
    let error = client_with(&listing, "password", "TestKey")
        .inbox()
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(error.to_string().contains("http 404"), "{error}");
}
