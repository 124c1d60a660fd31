//! End to end: the real `junction serve` (through tests/harness), messages
//! sent with [`MllpClient`] and the `send`/`load` subcommands, then checked
//! through the HTTP API: `/health`, `/ready`, `/metrics`, `/api/messages`.

mod harness;

use std::process::{Command, Output};
use std::time::Duration;

use harness::{repo_root, Engine};
use junction::mllp::client::{read_ack, MllpClient};

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The value of `junction_messages_received_total{listener="pas"}` (0 when absent).
fn received_total(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("junction_messages_received_total{listener=\"pas\"} "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

fn junction(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_junction"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run the junction binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn health_ready_metrics_and_message_api() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir.path(), "normal");

    let (status, body) = engine.get("/health");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body), serde_json::json!({"status": "ok"}));
    let (status, body) = engine.get("/ready");
    assert_eq!(status, 200, "{body}");

    let (status, metrics) = engine.get("/metrics");
    assert_eq!(status, 200);
    // the Prometheus text format (OpenMetrics only when asked for)
    assert!(
        metrics.contains("# TYPE junction_messages_received_total counter\n"),
        "{metrics}"
    );
    assert!(!metrics.contains("# EOF"), "{metrics}");
    let before = received_total(&metrics);
    // the room left for the journal, to alert on before a full disk
    let free: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("junction_journal_disk_free_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no disk free gauge: {metrics}"));
    assert!(free > 0);

    let control_id = format!("APITEST{}", std::process::id());
    let message = format!(
        "MSH|^~\\&|PAS|RAL|JUNCTION|NCRS|20260315093000||ADT^A01^ADT_A01|{control_id}|P|2.4\r\
         EVN|A01|20260315093000\r\
         PID|1||9434765919^^^NHS^NH||TESTPATIENT^ALEX||19800101|M\r\
         PV1|1|I|RAL-WARD7\r"
    );
    let mut client = MllpClient::connect(&engine.mllp.to_string(), Duration::from_secs(10))
        .await
        .unwrap();
    let ack = client.send(message.as_bytes()).await.unwrap();
    let info = read_ack(&ack).unwrap();
    assert_eq!(info.code, "AA", "{}", text(&ack));
    assert_eq!(info.control_id, control_id);

    let (_, metrics) = engine.get("/metrics");
    assert_eq!(received_total(&metrics), before + 1, "{metrics}");

    let rows = engine.messages_with_control_id(&control_id);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["listener"], "pas");
    assert_eq!(row["type"], "ADT^A01");
    assert_eq!(row["ack_code"], "AA");
    assert_eq!(row["status"], "accepted");
    assert!(
        row["received_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{row}"
    );

    let id = row["id"].as_i64().unwrap();
    let (status, body) = engine.get(&format!("/api/messages/{id}"));
    assert_eq!(status, 200, "{body}");
    let detail = json(&body);
    assert_eq!(detail["raw"].as_str(), Some(message.as_str()));
    assert_eq!(detail["control_id"].as_str(), Some(control_id.as_str()));
    assert_eq!(detail["ack"].as_str(), Some(text(&ack).as_str()));

    let (status, body) = engine.get("/api/messages/987654321");
    assert_eq!(status, 404, "{body}");
    assert!(json(&body)["error"].is_string());
    let (status, body) = engine.get("/api/messages?status=lost");
    assert_eq!(status, 400, "{body}");
    assert!(json(&body)["error"].as_str().unwrap().contains("lost"));
}

#[test]
fn send_reports_every_ack_and_fails_on_a_nak() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir.path(), "normal");
    let to = engine.mllp.to_string();

    let out = junction(&[
        "send", "--to", &to,
        // The whole folder, as the README's walk-through does: every sample is
        // accepted (the enhanced-mode A04 with CA).
        "samples/",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let summary = lines.last().unwrap();
    let sent: usize = summary.split(' ').next().unwrap().parse().unwrap();
    assert!(sent >= 19, "every sample (batch split) is sent: {stdout}");
    assert_eq!(
        *summary,
        format!("{sent} sent: {sent} AA/CA, 0 AE/CE, 0 AR/CR, 0 errors")
    );
    assert_eq!(lines.len(), sent + 1, "{stdout}");
    for line in &lines[..sent] {
        let fields: Vec<&str> = line.split("  ").collect();
        assert_eq!(fields.len(), 3, "{line}");
        assert!(fields[0].starts_with("samples/"), "{line}");
        assert!(fields[2] == "AA" || fields[2] == "CA", "{line}");
        // The journal has each control id the ACK named.
        assert_eq!(
            engine.messages_with_control_id(fields[1]).len(),
            1,
            "{line}"
        );
    }

    let out = junction(&["send", "--to", &to, "tests/bad-input/empty_msh9.hl7"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let first = stdout.lines().next().unwrap();
    assert!(
        first.contains("  AR") || first.contains("  AE"),
        "a message with an empty MSH-9 is rejected: {stdout}"
    );
    assert!(stdout.contains("1 sent: 0 AA/CA"), "{stdout}");
}

#[test]
fn load_measures_and_every_message_is_journaled() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir.path(), "normal");
    let out = junction(&[
        "load",
        "--to",
        &engine.mllp.to_string(),
        "--connections",
        "4",
        "--messages",
        "200",
        "--warmup",
        "20",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let report = json(stdout.lines().last().unwrap());
    assert_eq!(report["connections"], 4);
    assert_eq!(report["messages"], 200);
    assert_eq!(report["accepted"], 200);
    assert_eq!(report["not_accepted"], 0);
    assert_eq!(report["errors"], 0);
    let (p50, p99, max) = (
        report["p50_ms"].as_f64().unwrap(),
        report["p99_ms"].as_f64().unwrap(),
        report["max_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{report}");
    assert!(report["msgs_per_sec"].as_f64().unwrap() > 0.0);

    // Warm-up and measured messages are all in the journal, each once.
    let (status, body) = engine.get("/api/messages?type=ADT%5EA01&limit=1000");
    assert_eq!(status, 200, "{body}");
    let rows = json(&body)["messages"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 220, "{body}");
    let mut ids: Vec<&str> = rows
        .iter()
        .map(|r| r["control_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 220);
}

/// One raw HTTP/1.0 request with the given headers: (status, headers, body).
fn raw_request(addr: std::net::SocketAddr, request: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// The open loopback API answers only requests addressed to a loopback name
/// and not sent by a page of another origin (DNS rebinding, cross-site posts);
/// a wrong method is a 405 with a body saying so (JSON here; an
/// OperationOutcome under /fhir, once the token is checked).
#[test]
fn the_open_api_refuses_rebinding_and_cross_site_requests_and_explains_405() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir.path(), "normal");
    let api = engine.api;
    let get = |host: &str, extra: &str| {
        raw_request(
            api,
            &format!(
                "GET /api/messages HTTP/1.0\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
            ),
        )
    };
    assert_eq!(get(&api.to_string(), "").0, 200);
    assert_eq!(get(&format!("localhost:{}", api.port()), "").0, 200);
    let (status, _, body) = get(&format!("rebound.example:{}", api.port()), "");
    assert_eq!(status, 403, "{body}");
    assert!(
        json(&body)["error"].as_str().unwrap().contains("loopback"),
        "{body}"
    );
    let (status, _, body) = get(&api.to_string(), "Origin: https://evil.example\r\n");
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        get(&api.to_string(), &format!("Origin: http://{api}\r\n")).0,
        200
    );
    // /health and /metrics stay open to any Host (probes address nodes by name)
    let (status, _, _) = raw_request(
        api,
        "GET /health HTTP/1.0\r\nHost: node1.trust.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);

    // a body is refused, not ignored (ignored, the replay would go everywhere)
    let (status, _, body) = raw_request(
        api,
        &format!(
            "POST /api/messages/1/replay HTTP/1.0\r\nHost: {api}\r\nContent-Type: application/json\r\nContent-Length: 27\r\nConnection: close\r\n\r\n{{\"destination\": \"mesh_hwe\"}}"
        ),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("query string"),
        "{body}"
    );
    let (status, head, body) = raw_request(
        api,
        &format!("DELETE /api/messages HTTP/1.0\r\nHost: {api}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 405, "{body}");
    assert!(head.contains("allow: get"), "{head}");
    assert!(
        json(&body)["error"].as_str().unwrap().contains("DELETE"),
        "{body}"
    );
}
