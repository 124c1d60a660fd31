//! The API over a real socket and a real journal in a temporary folder.

use super::*;
use crate::journal::{Incoming, Status, StoreConfig, SyncPolicy};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Server {
    addr: SocketAddr,
    state: ApiState,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), std::io::Error>>,
    _dir: tempfile::TempDir,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let journal = Journal::open_with_metrics(
        &StoreConfig {
            path: dir.path().join("j.db"),
            sync: SyncPolicy::Normal,
            ..StoreConfig::default()
        },
        Arc::clone(&metrics),
    )
    .unwrap();
    let state = ApiState {
        journal,
        metrics,
        ready: Arc::new(AtomicBool::new(false)),
        events: crate::telemetry::events::EventBus::default(),
        access: crate::access::Access::new(
            crate::store::RecordStore::open(&crate::store::RecordStoreConfig {
                path: dir.path().join("records.db"),
                sync: SyncPolicy::Normal,
                postgres: None,
            })
            .unwrap(),
            true,
        ),
        delivery: None,
        origins: Arc::new(vec!["pas".to_string()]),
        public_url: None,
    };
    let listener = bind(&ApiConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        public_url: None,
    })
    .await
    .unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve_on(listener, state.clone(), shutdown.clone()));
    Server {
        addr,
        state,
        shutdown,
        task,
        _dir: dir,
    }
}

/// A plain HTTP/1.1 GET: (status, content type, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_string();
    (status, content_type, body.to_string())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn incoming(control_id: &str, message_type: &str, status: Status, code: &str) -> Incoming {
    Incoming {
        listener: "pas".into(),
        peer: "127.0.0.1:5000".into(),
        received_at: jiff::Timestamp::now(),
        sender: "PAS^RAL".into(),
        control_id: control_id.into(),
        message_type: message_type.into(),
        version: "2.4".into(),
        status,
        ack_code: Some(code.into()),
        ack: Some(format!(
            "MSH|^~\\&|||||||ACK|A{control_id}|P|2.4\rMSA|{code}|{control_id}\r"
        )),
        error: None,
        raw: Bytes::from(format!(
            "MSH|^~\\&|PAS|RAL|||20260101||{message_type}|{control_id}|P|2.4\rPID|||123\r"
        )),
    }
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let server = start().await;
    let (status, content_type, body) = get(server.addr, "/health").await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    assert_eq!(json(&body), serde_json::json!({"status": "ok"}));

    let (status, _, body) = get(server.addr, "/ready").await;
    assert_eq!(status, 503);
    assert_eq!(json(&body)["status"], "not ready");

    server.state.ready.store(true, Ordering::Release);
    let (status, _, body) = get(server.addr, "/ready").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body), serde_json::json!({"status": "ready"}));

    server
        .state
        .metrics
        .received
        .get_or_create(&Metrics::listener("pas"))
        .inc();
    let (status, content_type, body) = get(server.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, PROMETHEUS_CONTENT_TYPE);
    assert!(
        body.contains("junction_messages_received_total{listener=\"pas\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE junction_messages_received_total counter\n"),
        "{body}"
    );
    assert!(!body.contains("# EOF"), "{body}");

    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn search_and_get_messages() {
    let server = start().await;
    let committed = server
        .state
        .journal
        .commit(vec![
            incoming("C1", "ADT^A01", Status::Accepted, "AA"),
            incoming("C2", "ORU^R01", Status::Accepted, "AA"),
            incoming("C3", "ADT^A08", Status::Rejected, "AR"),
        ])
        .await
        .unwrap();

    let (status, _, body) = get(server.addr, "/api/messages").await;
    assert_eq!(status, 200);
    let ids: Vec<_> = json(&body)["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["control_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["C3", "C2", "C1"]);

    let (_, _, body) = get(server.addr, "/api/messages?control_id=C2").await;
    let body = json(&body);
    let row = &body["messages"][0];
    assert_eq!(body["messages"].as_array().unwrap().len(), 1);
    for key in [
        "id",
        "listener",
        "sender",
        "control_id",
        "type",
        "received_at",
        "ack_code",
        "status",
    ] {
        assert!(row.get(key).is_some(), "{key} missing from {row}");
    }
    assert_eq!(row["type"], "ORU^R01");
    assert_eq!(row["id"], committed[1].id());

    let (_, _, body) = get(
        server.addr,
        "/api/messages?type=ADT&status=rejected&limit=5",
    )
    .await;
    let body = json(&body);
    assert_eq!(body["messages"].as_array().unwrap().len(), 1);
    assert_eq!(body["messages"][0]["control_id"], "C3");

    let (status, _, body) = get(server.addr, &format!("/api/messages/{}", committed[0].id())).await;
    assert_eq!(status, 200);
    let detail = json(&body);
    assert_eq!(
        detail["raw"],
        "MSH|^~\\&|PAS|RAL|||20260101||ADT^A01|C1|P|2.4\rPID|||123\r"
    );
    assert_eq!(detail["control_id"], "C1");
    assert!(detail["ack"].as_str().unwrap().contains("MSA|AA|C1"));
    // one `routing` key (the trail), as strict JSON parsers require
    assert_eq!(body.matches("\"routing\":").count(), 1, "{body}");
    assert_eq!(detail["routing"], serde_json::json!([]));
    assert_eq!(detail["deliveries"], serde_json::json!([]));
}

#[tokio::test]
async fn bad_requests_and_missing_messages_get_json_errors() {
    let server = start().await;
    let cases = [
        ("/api/messages/999", 404, "no message with id 999"),
        ("/api/messages/abc", 400, "invalid message id"),
        ("/api/messages?limit=abc", 400, "invalid query"),
        (
            "/api/messages?limit=0",
            400,
            "invalid limit 0, expected 1 to 1000",
        ),
        ("/api/messages?limit=5000", 400, "invalid limit 5000"),
        ("/api/messages?status=lost", 400, "invalid status `lost`"),
        (
            "/api/messages?controlid=C1",
            400,
            "unknown field `controlid`",
        ),
        ("/nowhere", 404, "no such route"),
        // an endpoint that takes no parameters refuses one, as the others refuse
        // an unknown one: `?raw=true` must not look as if it meant something
        ("/api/messages/1?raw=true", 400, "unknown field `raw`"),
        ("/api/routes?verbose=1", 400, "unknown field `verbose`"),
        // an empty value is refused, not read as "no filter": a script's
        // `?control_id=$X` with `$X` empty must not list the whole journal
        (
            "/api/messages?control_id=",
            400,
            "`control_id` is empty: give it a value",
        ),
        ("/api/messages?type=%20&limit=5", 400, "`type` is empty"),
        ("/api/messages?status", 400, "`status` is empty"),
        ("/api/events?listener=", 400, "`listener` is empty"),
        // a listener the engine does not have: said, not a stream that stays quiet
        (
            "/api/events?listener=psa",
            400,
            "unknown listener `psa`, expected one of `pas`",
        ),
    ];
    for (path, want_status, want_error) in cases {
        let (status, content_type, body) = get(server.addr, path).await;
        assert_eq!(status, want_status, "{path}: {body}");
        assert_eq!(content_type, "application/json", "{path}");
        let error = json(&body)["error"].as_str().unwrap().to_string();
        assert!(error.contains(want_error), "{path}: {error}");
    }
}

#[test]
fn openmetrics_becomes_the_prometheus_text_format() {
    let om = "# HELP junction_x Messages.\n# TYPE junction_x counter\njunction_x_total{a=\"b\"} 3\n\
              # HELP junction_y_bytes Free.\n# TYPE junction_y_bytes gauge\n# UNIT junction_y_bytes bytes\njunction_y_bytes 5\n\
              # TYPE junction_z unknown\njunction_z 1\n# EOF\n";
    assert_eq!(
        super::prometheus_text(om),
        "# HELP junction_x_total Messages.\n# TYPE junction_x_total counter\njunction_x_total{a=\"b\"} 3\n\
         # HELP junction_y_bytes Free.\n# TYPE junction_y_bytes gauge\njunction_y_bytes 5\n\
         # TYPE junction_z untyped\njunction_z 1\n"
    );
}

#[test]
fn search_times_keep_their_time_of_day() {
    let t = |v: &str| search_time("since", Some(v)).map(|t| t.map(|t| t.to_string()));
    assert_eq!(
        t("2026-11-24T01:37").unwrap().as_deref(),
        Some("2026-11-24T01:37:00Z")
    );
    assert_eq!(
        t("2026-11-24T01:37:05").unwrap().as_deref(),
        Some("2026-11-24T01:37:05Z")
    );
    assert_eq!(
        t("2026-11-24T01:37:00+01:00").unwrap().as_deref(),
        Some("2026-11-24T00:37:00Z")
    );
    assert_eq!(
        t("2026-11-24").unwrap().as_deref(),
        Some("2026-11-24T00:00:00Z")
    );
    assert_eq!(t("").unwrap(), None);
    for bad in ["2026-11-24 junk", "yesterday", "2026-13-01"] {
        assert!(t(bad).is_err(), "{bad}");
    }
}
