//! The ops dashboard at `/`, in a real browser: the real `junction serve`
//! binary with a file destination and a FHIR destination that is down (its
//! port has no server), samples sent over MLLP, and Debian's Chromium
//! (headless) driven through ChromeDriver's WebDriver API.
//!
//! - On loopback (operations open): the rendered page shows each
//!   destination's pending and delivered counts, the routes, the unrouted
//!   message, and a message sent after the page opened arrives in the live
//!   event feed; no patient name, NHS number or address from the samples is
//!   anywhere in the DOM.
//! - Off loopback (operations need a token): the page itself loads without
//!   a token, asks for one, and once an ops token is typed in shows the data
//!   and the live feed; the token is kept in sessionStorage, not localStorage.
//!
//! Chromium and ChromeDriver must be installed (`apt-get install chromium
//! chromium-driver`; `.ci/run` does it): without them these tests fail.
//! Every wait is a poll with a generous deadline.

mod harness;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use harness::{free_port, Engine};
use junction::mllp::client::MllpClient;

const DEADLINE: Duration = Duration::from_secs(90);
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// What must never reach the page: the A01 sample's patient identifiers.
const PATIENT_DATA: &[&str] = &[
    "9990000018",
    "SMITH",
    "MARGARET",
    "ACACIA",
    "NW3 2QG",
    "RAL1234567",
    "19480312",
    "07700 900123",
];

/// `CHROMIUM` or `CHROMEDRIVER`, or a failure saying how to install them.
fn require(path: &str) -> PathBuf {
    let path = PathBuf::from(path);
    assert!(
        path.exists(),
        "{} is not installed: the dashboard test needs Debian's Chromium and ChromeDriver; \
         install them with `DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
         chromium-driver` (as root; .ci/run does this)",
        path.display()
    );
    path
}

/// A headless Chromium session through ChromeDriver (W3C WebDriver over HTTP).
struct Browser {
    driver: Child,
    base: String,
    session: String,
    client: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let chromium = require(CHROMIUM);
        let chromedriver = require(CHROMEDRIVER);
        let profile = tempfile::tempdir().unwrap();
        let client = reqwest::Client::new();
        for _attempt in 0..3 {
            let port = free_port();
            let mut driver = Command::new(&chromedriver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn chromedriver");
            let base = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + DEADLINE;
            let mut up = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = driver.try_wait() {
                    break; // port taken: try another
                }
                let ready = match client.get(format!("{base}/status")).send().await {
                    Ok(r) => r
                        .json::<Value>()
                        .await
                        .is_ok_and(|v| v["value"]["ready"] == true),
                    Err(_) => false,
                };
                if ready {
                    up = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if !up {
                let _ = driver.kill();
                let _ = driver.wait();
                continue;
            }
            let args = vec![
                "--headless".to_string(),
                "--no-sandbox".to_string(),
                "--disable-gpu".to_string(),
                "--disable-quic".to_string(),
                "--no-first-run".to_string(),
                "--disable-background-networking".to_string(),
                "--disable-component-update".to_string(),
                "--disable-sync".to_string(),
                "--disable-dev-shm-usage".to_string(),
                format!("--user-data-dir={}", profile.path().display()),
            ];
            let capabilities = json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": args}
            }}});
            let answer: Value = client
                .post(format!("{base}/session"))
                .json(&capabilities)
                .send()
                .await
                .expect("POST /session to chromedriver")
                .json()
                .await
                .expect("chromedriver answers JSON");
            let Some(session) = answer["value"]["sessionId"].as_str() else {
                let _ = driver.kill();
                let _ = driver.wait();
                panic!("chromedriver could not start chromium: {answer}");
            };
            return Browser {
                driver,
                base,
                session: session.to_string(),
                client,
                _profile: profile,
            };
        }
        panic!("chromedriver did not start after 3 attempts");
    }

    /// One WebDriver command; panics on a WebDriver error.
    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let answer: Value = self
            .client
            .request(method, &url)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("{url}: not JSON: {e}"));
        if answer["value"]["error"].is_string() {
            panic!("WebDriver {path}: {answer}");
        }
        answer["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    /// Runs `script` (a function body) in the page; its return value as JSON.
    async fn eval(&self, script: &str) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// Polls `script` until `done` holds for its value; returns that value.
    async fn wait_for(&self, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let value = self.eval(script).await;
            if done(&value) {
                return value;
            }
            if Instant::now() > deadline {
                let text = self.eval("return document.body.innerText").await;
                panic!(
                    "timed out waiting for the page to show {what}\nlast value: {value}\n\
                     --- page text ---\n{}",
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The element matching `css` (a WebDriver element reference).
    async fn element(&self, css: &str) -> String {
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    async fn close(mut self) {
        let _ = self
            .client
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A failed test ends here without `close`: end the session over a
        // plain socket (no runtime in drop), then stop chromedriver.
        if let Ok(addr) = self
            .base
            .trim_start_matches("http://")
            .parse::<SocketAddr>()
        {
            if let Ok(mut stream) =
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            {
                use std::io::{Read, Write};
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = write!(
                    stream,
                    "DELETE /session/{} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n",
                    self.session
                );
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The A01 sample with control id `control`.
fn a01(control: &str) -> String {
    std::fs::read_to_string(harness::repo_root().join("samples/adt_a01_admission.hl7"))
        .unwrap()
        .replace("RAL20261120143512001", control)
}

/// The A28 sample (no route takes it here) with control id `control`.
fn a28(control: &str) -> String {
    let text = std::fs::read_to_string(harness::repo_root().join("samples/adt_a28_add_person.hl7"))
        .unwrap();
    let msh = text.split(['\r', '\n']).next().unwrap();
    let old = msh.split('|').nth(9).unwrap().to_string();
    text.replacen(&old, control, 1)
}

async fn send(mllp: SocketAddr, messages: &[String]) {
    let mut client = MllpClient::connect(&mllp.to_string(), Duration::from_secs(10))
        .await
        .unwrap()
        .with_ack_timeout(Duration::from_secs(30));
    for m in messages {
        let ack = client.send(m.as_bytes()).await.unwrap();
        let ack = String::from_utf8_lossy(&ack);
        assert!(ack.contains("MSA|AA"), "not acknowledged: {ack}");
    }
}

/// Routes, the shipped mappings, and the destinations: `files` (a folder),
/// `lab_fhir` (a FHIR endpoint on a port nothing listens on, retried) and
/// `archive` (the same, given up after one attempt: dead letters). The
/// sockets returned hold those two ports, refusing, for as long as they are
/// kept (another process on the machine once answered 404 on one).
fn setup(dir: &Path, out: &Path) -> (String, [tokio::net::TcpSocket; 2]) {
    let (lab, lab_port) = harness::refusing_port();
    let (archive, archive_port) = harness::refusing_port();
    std::fs::create_dir_all(dir.join("routes")).unwrap();
    std::fs::write(
        dir.join("routes/test.toml"),
        r#"
[routes.admissions]
description = "admissions to the file drop and the FHIR endpoint"
messages = ["ADT^A01"]
mapping = "adt"
destinations = ["files", "lab_fhir", "archive"]
"#,
    )
    .unwrap();
    std::os::unix::fs::symlink(harness::repo_root().join("mappings"), dir.join("mappings"))
        .unwrap();
    let config = format!(
        r#"
[destinations.files]
kind = "file"
dir = "{}"

[destinations.lab_fhir]
kind = "fhir"
url = "http://127.0.0.1:{}/fhir"
timeout_secs = 5
max_attempts = 1000
backoff_initial_ms = 200
backoff_max_ms = 2000

[destinations.archive]
kind = "fhir"
url = "http://127.0.0.1:{}/fhir"
timeout_secs = 5
max_attempts = 1
"#,
        out.display(),
        lab_port,
        archive_port
    );
    (config, [lab, archive])
}

/// `GET /api/queues` (on loopback, no token) as destination → (pending, delivered).
fn queue_counts(engine: &Engine, destination: &str) -> (u64, u64) {
    let (status, body) = engine.get("/api/queues");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["destination"] == destination)
        .map(|q| {
            (
                q["pending"].as_u64().unwrap(),
                q["delivered"].as_u64().unwrap(),
            )
        })
        .unwrap_or((0, 0))
}

/// `GET /api/queues` (on loopback): the dead count of `destination`.
fn dead_count(engine: &Engine, destination: &str) -> u64 {
    let (status, body) = engine.get("/api/queues");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["destination"] == destination)
        .and_then(|q| q["dead"].as_u64())
        .unwrap_or(0)
}

/// The queue table as rendered: one object per row, `data-field` → text.
const QUEUE_ROWS: &str =
    "return Array.from(document.querySelectorAll('#queues tbody tr')).map(tr => {\
     const o = {row_class: tr.className};\
     tr.querySelectorAll('td').forEach(td => { o[td.dataset.field] = td.textContent; });\
     return o; });";

fn row<'a>(rows: &'a Value, destination: &str) -> Option<&'a Value> {
    rows.as_array()?
        .iter()
        .find(|r| r["destination"] == destination)
}

fn assert_no_patient_data(html: &str) {
    for needle in PATIENT_DATA {
        assert!(
            !html.contains(needle),
            "patient data `{needle}` is in the dashboard's DOM:\n{html}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_queues_routes_problems_and_live_events_without_patient_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("engine");
    let out = tmp.path().join("out");
    let (extra, _refusing) = setup(&dir, &out);
    let engine = Engine::start_with(&dir, "normal", &extra);

    // The page itself: HTML, never cached, scripts only from itself.
    let page = reqwest::get(format!("http://{}/", engine.api))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let header = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert_eq!(header("cache-control"), "no-store");
    let csp = header("content-security-policy");
    assert!(
        csp.contains("default-src 'self'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");

    // The route list the page shows, as the engine loaded it.
    let (status, body) = engine.get("/api/routes");
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        listed,
        json!({"routes": [{
            "id": "admissions",
            "description": "admissions to the file drop and the FHIR endpoint",
            "messages": ["ADT^A01"],
            "sources": [],
            "mapping": "adt",
            "destinations": ["files", "lab_fhir", "archive"]
        }]})
    );

    let admissions: Vec<String> = (1..=3).map(|i| a01(&format!("DASH-00{i}"))).collect();
    send(engine.mllp, &admissions).await;
    send(engine.mllp, &[a28("DASH-NOROUTE")]).await;
    let deadline = Instant::now() + DEADLINE;
    while queue_counts(&engine, "files") != (0, 3)
        || queue_counts(&engine, "lab_fhir").0 != 3
        || dead_count(&engine, "archive") != 3
    {
        assert!(
            Instant::now() < deadline,
            "documents not queued: files {:?}, lab_fhir {:?}\n{}",
            queue_counts(&engine, "files"),
            queue_counts(&engine, "lab_fhir"),
            engine.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let browser = Browser::start().await;
    // Stuck after 1 s (60 s by default), so the test need not wait a minute.
    browser
        .goto(&format!("http://{}/?stuck_after_secs=1", engine.api))
        .await;

    let rows = browser
        .wait_for("the two destinations' counts", QUEUE_ROWS, |rows| {
            row(rows, "files").is_some_and(|r| r["delivered"] == "3" && r["pending"] == "0")
                && row(rows, "lab_fhir")
                    .is_some_and(|r| r["pending"] == "3" && r["delivered"] == "0")
        })
        .await;
    let fhir = row(&rows, "lab_fhir").unwrap();
    assert_eq!(fhir["dead"], "0", "{rows}");
    assert!(fhir["kind"].as_str().unwrap().starts_with("fhir"), "{rows}");
    let files = row(&rows, "files").unwrap();
    assert_eq!(files["state"], "running", "{rows}");
    assert_eq!(files["row_class"], "", "{rows}");
    // Waiting documents make lab_fhir stuck; archive's dead letters show in red.
    browser
        .wait_for("lab_fhir highlighted as stuck", QUEUE_ROWS, |rows| {
            row(rows, "lab_fhir")
                .is_some_and(|r| r["state"] == "stuck" && r["row_class"] == "stuck")
                && row(rows, "archive")
                    .is_some_and(|r| r["dead"] == "3" && r["row_class"] == "has-dead")
        })
        .await;
    let dead = browser
        .wait_for(
            "the dead letters",
            "return Array.from(document.querySelectorAll('#dead-letters tbody tr')).map(tr => {\
                 const o = {};\
                 tr.querySelectorAll('td').forEach(td => { o[td.dataset.field] = td.textContent; });\
                 return o; })",
            |v| v.as_array().is_some_and(|a| a.len() == 3),
        )
        .await;
    let mut controls: Vec<&str> = dead
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["destination"], "archive", "{dead}");
            assert_eq!(d["type"], "ADT^A01", "{dead}");
            assert_eq!(d["attempts"], "1", "{dead}");
            assert!(!d["last_error"].as_str().unwrap().is_empty(), "{dead}");
            d["control_id"].as_str().unwrap()
        })
        .collect();
    controls.sort();
    assert_eq!(controls, ["DASH-001", "DASH-002", "DASH-003"], "{dead}");

    let routes = browser
        .wait_for(
            "the route",
            "return Array.from(document.querySelectorAll('#routes tbody tr')).map(tr => tr.innerText)",
            |v| v.as_array().is_some_and(|a| !a.is_empty()),
        )
        .await;
    let route = routes[0].as_str().unwrap();
    assert!(route.contains("admissions"), "{routes}");
    assert!(route.contains("ADT^A01"), "{routes}");
    assert!(route.contains("files, lab_fhir, archive"), "{routes}");

    let problems = browser
        .wait_for(
            "the unrouted message",
            "return Array.from(document.querySelectorAll('#problems tbody tr')).map(tr => tr.innerText)",
            |v| v.as_array().is_some_and(|a| !a.is_empty()),
        )
        .await;
    let problem = problems[0].as_str().unwrap();
    assert!(
        problem.contains("DASH-NOROUTE")
            && problem.contains("ADT^A28")
            && problem.contains("unrouted"),
        "{problems}"
    );

    let intake = browser
        .wait_for(
            "the intake counts",
            "const r = document.querySelector('#intake tr[data-listener=\"pas\"]');\
             return r ? {received: r.querySelector('[data-field=received]').textContent,\
                         accepted: r.querySelector('[data-field=accepted]').textContent,\
                         rejected: r.querySelector('[data-field=rejected]').textContent} : null",
            |v| v["received"] == "4",
        )
        .await;
    assert_eq!(intake["accepted"], "4", "{intake}");
    assert_eq!(intake["rejected"], "0", "{intake}");

    // The live feed: connected, then a message sent now shows up in it.
    browser
        .wait_for(
            "the live feed connected",
            "return document.getElementById('live-state').dataset.state || ''",
            |v| v == "connected",
        )
        .await;
    send(engine.mllp, &[a01("DASH-LIVE")]).await;
    let events = browser
        .wait_for(
            "the live events of DASH-LIVE",
            "return Array.from(document.querySelectorAll('#events li[data-control-id=\"DASH-LIVE\"]'))\
                 .map(li => li.dataset.event)",
            |v| {
                v.as_array().is_some_and(|a| {
                    a.contains(&json!("MessageAcked")) && a.contains(&json!("MessageRouted"))
                })
            },
        )
        .await;
    assert!(events.as_array().unwrap().len() >= 2, "{events}");
    browser
        .wait_for("the new document pending", QUEUE_ROWS, |rows| {
            row(rows, "lab_fhir").is_some_and(|r| r["pending"] == "4")
                && row(rows, "files").is_some_and(|r| r["delivered"] == "4")
                && row(rows, "archive").is_some_and(|r| r["dead"] == "4")
        })
        .await;

    let html = browser
        .eval("return document.documentElement.outerHTML")
        .await;
    let html = html.as_str().unwrap();
    assert!(
        html.contains("DASH-LIVE"),
        "the events name the control ids"
    );
    assert_no_patient_data(html);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_page_loads_then_asks_for_an_ops_token_kept_in_session_storage() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("engine");
    let out = tmp.path().join("out");
    let (extra, _refusing) = setup(&dir, &out);
    let engine = Engine::start_custom(&dir, &[], |mllp, api| {
        format!(
            "[listeners.pas]\nbind = \"{mllp}\"\n\n\
             [store]\npath = \"data/junction.db\"\nsync = \"normal\"\n\n\
             [api]\nbind = \"0.0.0.0:{}\"\n\n[log]\nformat = \"text\"\n{extra}",
            api.port()
        )
    });
    // Operations need a token here; the page does not.
    assert_eq!(engine.get("/api/queues").0, 401);
    assert_eq!(engine.get("/").0, 200);
    assert_eq!(engine.get("/dashboard.js").0, 200);
    let out = Command::new(env!("CARGO_BIN_EXE_junction"))
        .args(["token", "add", "night-shift", "--role", "ops", "--config"])
        .arg(&engine.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    send(engine.mllp, &[a01("DASH-TOKEN")]).await;

    let browser = Browser::start().await;
    browser.goto(&format!("http://{}/", engine.api)).await;
    browser
        .wait_for(
            "the token prompt",
            "return !document.getElementById('token-form').hidden",
            |v| v == true,
        )
        .await;
    let rows = browser.eval(QUEUE_ROWS).await;
    assert_eq!(rows, json!([]), "no data before a token");

    let input = browser.element("#token-input").await;
    browser
        .command(
            reqwest::Method::POST,
            &format!("/element/{input}/value"),
            json!({ "text": token }),
        )
        .await;
    let submit = browser.element("#token-form button[type=submit]").await;
    browser
        .command(
            reqwest::Method::POST,
            &format!("/element/{submit}/click"),
            json!({}),
        )
        .await;

    browser
        .wait_for("the queues with the token", QUEUE_ROWS, |rows| {
            row(rows, "files").is_some_and(|r| r["delivered"] == "1")
                && row(rows, "lab_fhir").is_some_and(|r| r["pending"] == "1")
        })
        .await;
    browser
        .wait_for(
            "the live feed connected with the token",
            "return document.getElementById('live-state').dataset.state || ''",
            |v| v == "connected",
        )
        .await;
    let stored = browser
        .eval(
            "return {session: sessionStorage.getItem('junction.ops_token'),\
                     local: localStorage.length, cookies: document.cookie}",
        )
        .await;
    assert_eq!(stored["session"], token.as_str(), "{stored}");
    assert_eq!(stored["local"], 0, "{stored}");
    assert_eq!(stored["cookies"], "", "{stored}");
    assert!(browser
        .eval("return document.getElementById('token-form').hidden")
        .await
        .as_bool()
        .unwrap());
    let html = browser
        .eval("return document.documentElement.outerHTML")
        .await;
    assert!(
        !html.as_str().unwrap().contains(&token),
        "the token is not in the DOM"
    );
    assert_no_patient_data(html.as_str().unwrap());
    browser.close().await;
}
