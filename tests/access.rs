//! Authenticated, audited FHIR reads, API tokens and the objections register,
//! end to end: the real `junction serve` binary on real sockets, tokens made
//! and revoked with the real `junction token` CLI while the engine runs,
//! documents mapped by the real `junction map` and applied to the engine's
//! own record store file (SQLite WAL), reads over real HTTP, and every FHIR
//! answer (including refusals) validated by PyPI `fhir.resources` through
//! `tests/python/validate_fhir.py --answers`.
//!
//! Needs the test venv: `bash tests/python/setup-venv.sh` (or `JUNCTION_VENV`).

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use harness::{free_port, repo_root, venv_python_with};
use junction::mllp::client::{read_ack, MllpClient};
use junction::store::{RecordStore, RecordStoreConfig, SyncPolicy};
use serde_json::Value;

const NHS_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
/// Generous: the machine running the tests is shared and loaded.
const DEADLINE: Duration = Duration::from_secs(60);

/// A `junction serve` with its API on `api_host` (killed when dropped).
struct Server {
    child: Child,
    config: PathBuf,
    base: String,
    log: PathBuf,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Writes a config into `dir` and starts the engine, retrying with new
    /// ports if one was taken meanwhile; waits for `/ready`.
    async fn start(dir: &Path, api_host: &str) -> Server {
        Server::start_with(dir, api_host, "").await
    }

    /// Like [`Server::start`], with `extra` TOML (destinations) appended.
    async fn start_with(dir: &Path, api_host: &str, extra: &str) -> Server {
        for _attempt in 0..3 {
            let (mllp, api) = (free_port(), free_port());
            let config = dir.join("junction.toml");
            std::fs::write(
                &config,
                format!(
                    "[listeners.pas]\nbind = \"127.0.0.1:{mllp}\"\n\n\
                     [store]\npath = \"data/junction.db\"\nrecords = \"data/records.db\"\nsync = \"normal\"\n\n\
                     [api]\nbind = \"{api_host}:{api}\"\n\n[log]\nformat = \"text\"\n{extra}"
                ),
            )
            .unwrap();
            let log = dir.join("engine.log");
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_junction"))
                .args(["serve", "--config"])
                .arg(&config)
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .expect("spawn junction serve");
            let mut server = Server {
                child,
                config,
                base: format!("http://127.0.0.1:{api}"),
                log,
                dir: dir.to_path_buf(),
            };
            let client = reqwest::Client::new();
            let deadline = Instant::now() + DEADLINE;
            loop {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break; // exited (port taken?): try again with new ports
                }
                let ready = client
                    .get(format!("{}/ready", server.base))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if ready {
                    return server;
                }
                assert!(
                    Instant::now() < deadline,
                    "engine not ready within {DEADLINE:?}:\n{}",
                    server.log_text()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!(
            "engine did not start after 3 attempts:\n{}",
            std::fs::read_to_string(dir.join("engine.log")).unwrap_or_default()
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The MLLP listener's address, from the config written by [`Server::start_with`].
    fn mllp(&self) -> String {
        let config = std::fs::read_to_string(&self.config).unwrap();
        let bind = config
            .lines()
            .find_map(|l| l.strip_prefix("bind = \"127.0.0.1:"))
            .unwrap();
        format!("127.0.0.1:{}", bind.trim_end_matches('"'))
    }

    /// `junction ARGS --config <this engine's config>`.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_junction"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .current_dir(&self.dir)
            .output()
            .expect("run the junction binary")
    }

    fn records_path(&self) -> PathBuf {
        self.dir.join("data").join("records.db")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// On loopback, the open operations API refuses a request naming another
/// host (DNS rebinding) unless it brings a token, which is then checked as
/// off loopback: an ops token through a proxy at `public_url` is answered
/// (s24b tester, I1).
async fn operations_through_a_proxy_answer_to_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1").await;
    let ops = add_token(&server, "proxy-ops", "ops");
    let clinical = add_token(&server, "proxy-ward", "clinical");
    let through_proxy = |token: Option<&str>| {
        let mut request = reqwest::Client::new()
            .get(format!("{}/api/messages", server.base))
            .header("Host", "shcr.example.nhs.uk");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(through_proxy(None).await.unwrap().status(), 403);
    assert_eq!(through_proxy(Some(&clinical)).await.unwrap().status(), 403);
    assert_eq!(
        through_proxy(Some("jct_not_a_token"))
            .await
            .unwrap()
            .status(),
        401
    );
    let answered = through_proxy(Some(&ops)).await.unwrap();
    assert_eq!(answered.status(), 200);
    drop(server);
}

/// `junction token add NAME --role ROLE`: the token printed on stdout.
fn add_token(server: &Server, name: &str, role: &str) -> String {
    let out = server.cli(&["token", "add", name, "--role", role]);
    assert!(
        out.status.success(),
        "token add {name}: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let token = text(&out.stdout).trim().to_string();
    assert!(
        token.starts_with("jct_") && token.len() == 47,
        "token add printed {token:?}"
    );
    assert!(
        text(&out.stderr).contains("shown only now"),
        "{}",
        text(&out.stderr)
    );
    token
}

struct Answer {
    status: u16,
    www_authenticate: Option<String>,
    body: Value,
}

/// GETs `path` with an optional bearer token and purpose of use; keeps
/// `/fhir` answers in `answers/<name>.json` for the validator.
async fn get(
    server: &Server,
    path: &str,
    token: Option<&str>,
    purpose: Option<&str>,
    save_as: Option<&str>,
) -> Answer {
    let mut request = reqwest::Client::new().get(format!("{}{path}", server.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(purpose) = purpose {
        request = request.header("X-Purpose-Of-Use", purpose);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    let www_authenticate = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body = response.text().await.unwrap();
    if let Some(name) = save_as {
        let dir = server.dir.join("answers");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.json")), &body).unwrap();
    }
    let body = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {path} ({status}): not JSON ({e}): {body}"));
    Answer {
        status,
        www_authenticate,
        body,
    }
}

fn assert_outcome(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(
        answer.body["resourceType"], "OperationOutcome",
        "{}",
        answer.body
    );
    assert_eq!(answer.body["issue"][0]["code"], code, "{}", answer.body);
}

/// The sample messages mapped by the real `junction map`, applied to the
/// engine's record store file while it runs. Returns (Patient id, NHS number).
fn store_samples(server: &Server) -> (String, String) {
    let store = RecordStore::open(&RecordStoreConfig {
        path: server.records_path(),
        sync: SyncPolicy::Normal,
        postgres: None,
    })
    .unwrap();
    let mut patient = None;
    for sample in ["adt_a01_admission.hl7", "oru_r01_fbc_ue.hl7"] {
        let out = Command::new(env!("CARGO_BIN_EXE_junction"))
            .arg("map")
            .arg(repo_root().join("samples").join(sample))
            .current_dir(repo_root())
            .output()
            .unwrap();
        assert!(out.status.success(), "map {sample}: {}", text(&out.stderr));
        let document: Value = serde_json::from_slice(&out.stdout).unwrap();
        let outcome = store.apply_bundle(&document, None).unwrap();
        assert!(outcome.written() > 0, "{sample}: {outcome:?}");
        for entry in document["entry"].as_array().unwrap() {
            let resource = &entry["resource"];
            if resource["resourceType"] == "Patient" {
                let nhs = resource["identifier"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|i| i["system"] == NHS_SYSTEM)
                    .map(|i| i["value"].as_str().unwrap().to_string())
                    .unwrap();
                patient = Some((resource["id"].as_str().unwrap().to_string(), nhs));
            }
        }
    }
    patient.expect("the samples hold a Patient")
}

/// Runs `validate_fhir.py --answers` over the saved `/fhir` answers.
fn validate_answers(server: &Server) {
    // fhir.resources: the independent FHIR validator
    let python = venv_python_with("import fhir.resources.R4B");
    let out = Command::new(python)
        .arg(repo_root().join("tests/python/validate_fhir.py"))
        .arg("--answers")
        .arg(server.dir.join("answers"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fhir.resources rejected answers:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    eprintln!("{}", text(&out.stdout));
}

/// Polls `GET path` with `token` until it answers `status` (bounded by DEADLINE).
async fn wait_for_status(server: &Server, path: &str, token: &str, status: u16) -> Answer {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let answer = get(server, path, Some(token), None, None).await;
        if answer.status == status {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} still answers {} after {DEADLINE:?}, expected {status}: {}",
            answer.status,
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_reads_need_a_clinical_token_and_every_request_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1").await;
    let (patient, nhs) = store_samples(&server);
    let clinical = add_token(&server, "gp-viewer", "clinical");
    let ops = add_token(&server, "night-ops", "ops");
    let search = format!("/fhir/Patient?identifier={NHS_SYSTEM}%7C{nhs}");

    // No token, a made-up token, an ops token: refused, with FHIR outcomes.
    let none = get(&server, &search, None, None, Some("01-no-token")).await;
    assert_outcome(&none, 401, "login");
    assert_eq!(
        none.www_authenticate.as_deref(),
        Some("Bearer realm=\"junction\"")
    );
    let forged = get(
        &server,
        &search,
        Some("jct_forged"),
        None,
        Some("02-bad-token"),
    )
    .await;
    assert_outcome(&forged, 401, "login");
    assert!(forged
        .www_authenticate
        .as_deref()
        .is_some_and(|h| h.starts_with("Bearer") && h.contains("invalid_token")));
    let wrong_role = get(&server, &search, Some(&ops), None, Some("03-ops-token")).await;
    assert_outcome(&wrong_role, 403, "forbidden");

    // The clinical token reads what was stored.
    let found = get(
        &server,
        &search,
        Some(&clinical),
        Some("DIRECT-CARE"),
        Some("04-patient-search"),
    )
    .await;
    assert_eq!(found.status, 200, "{}", found.body);
    assert_eq!(found.body["type"], "searchset");
    assert_eq!(found.body["total"], 1);
    assert_eq!(found.body["entry"][0]["resource"]["id"], patient.as_str());
    let everything = get(
        &server,
        &format!("/fhir/Patient/{patient}/$everything"),
        Some(&clinical),
        None,
        Some("05-everything"),
    )
    .await;
    assert_eq!(everything.status, 200, "{}", everything.body);
    let kinds: Vec<&str> = everything.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"Encounter") && kinds.contains(&"Observation"),
        "{kinds:?}"
    );
    let observations = get(
        &server,
        &format!("/fhir/Observation?patient={patient}"),
        Some(&clinical),
        None,
        Some("06-observations"),
    )
    .await;
    assert_eq!(observations.status, 200, "{}", observations.body);
    assert!(observations.body["total"].as_u64().unwrap() > 0);
    let unknown = get(
        &server,
        "/fhir/Patient/no-such-patient",
        Some(&clinical),
        None,
        Some("07-unknown"),
    )
    .await;
    assert_outcome(&unknown, 404, "not-found");

    // The audit trail: ops only, always (even on loopback), newest first.
    let audit = "/api/audit?limit=100";
    let refused = get(&server, audit, None, None, None).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused
        .www_authenticate
        .is_some_and(|h| h.starts_with("Bearer")));
    let refused = get(&server, audit, Some(&clinical), None, None).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let listed = get(&server, audit, Some(&ops), None, None).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let rows = listed.body["audit"].as_array().unwrap();
    let summary: Vec<(u64, Value, Value)> = rows
        .iter()
        .map(|r| {
            (
                r["status"].as_u64().unwrap(),
                r["token"].clone(),
                r["role"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (404, "gp-viewer".into(), "clinical".into()),
            (200, "gp-viewer".into(), "clinical".into()),
            (200, "gp-viewer".into(), "clinical".into()),
            (200, "gp-viewer".into(), "clinical".into()),
            (403, "night-ops".into(), "ops".into()),
            (401, Value::Null, Value::Null),
            (401, Value::Null, Value::Null),
        ],
        "{rows:#?}"
    );
    let read = &rows[3];
    assert_eq!(read["method"], "GET");
    assert_eq!(read["path"], "/fhir/Patient");
    assert_eq!(
        read["query"],
        format!("identifier={NHS_SYSTEM}%7C{nhs}"),
        "the query is kept in the audit trail"
    );
    assert_eq!(read["patients"], serde_json::json!([patient]));
    assert_eq!(read["purpose"], "DIRECT-CARE");
    assert_eq!(rows[2]["purpose"], "unspecified");
    // a read that found nothing is on the trail of the patient it asked for
    assert_eq!(rows[0]["patients"], serde_json::json!(["no-such-patient"]));
    // the refused searches by identifier name the patient whose NHS number
    // they asked for, so that patient's trail shows the attempts too
    for row in &rows[4..] {
        assert_eq!(row["patients"], serde_json::json!([patient]), "{row}");
    }

    // Filtered by patient and by token.
    let by_patient = get(
        &server,
        &format!("/api/audit?patient={patient}"),
        Some(&ops),
        None,
        None,
    )
    .await;
    // the three reads and the three refused searches
    assert_eq!(by_patient.body["audit"].as_array().unwrap().len(), 6);
    let by_token = get(
        &server,
        "/api/audit?token=night-ops",
        Some(&ops),
        None,
        None,
    )
    .await;
    assert_eq!(by_token.body["audit"].as_array().unwrap().len(), 1);
    let typo = get(&server, "/api/audit?patinet=x", Some(&ops), None, None).await;
    assert_eq!(typo.status, 400, "{}", typo.body);

    // The rest of /api stays open on loopback; health and metrics are open.
    assert_eq!(
        get(&server, "/api/messages", None, None, None).await.status,
        200
    );
    assert_eq!(get(&server, "/health", None, None, None).await.status, 200);

    // `token list`: names and roles, never the tokens or their hashes.
    let out = server.cli(&["token", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list = text(&out.stdout);
    assert!(
        list.contains("gp-viewer") && list.contains("clinical"),
        "{list}"
    );
    assert!(list.contains("night-ops") && list.contains("ops"), "{list}");
    assert!(
        !list.contains(&clinical[4..]) && !list.contains(&ops[4..]),
        "{list}"
    );
    let out = server.cli(&["token", "add", "gp-viewer", "--role", "ops"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("already exists"));
    let out = server.cli(&["token", "add", "bad name", "--role", "ops"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("invalid token name"));

    // An audit row that cannot be written refuses the read. (A trigger in
    // the real database makes every audit insert fail.)
    {
        let conn = rusqlite::Connection::open(server.records_path()).unwrap();
        conn.busy_timeout(Duration::from_secs(30)).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER audit_broken BEFORE INSERT ON audit
             BEGIN SELECT RAISE(ABORT, 'audit disk gone'); END;",
        )
        .unwrap();
    }
    let unaudited = get(
        &server,
        &format!("/fhir/Patient/{patient}"),
        Some(&clinical),
        None,
        Some("08-unaudited"),
    )
    .await;
    assert_outcome(&unaudited, 500, "exception");
    assert!(
        !unaudited.body.to_string().contains(&nhs),
        "{}",
        unaudited.body
    );
    {
        let conn = rusqlite::Connection::open(server.records_path()).unwrap();
        conn.busy_timeout(Duration::from_secs(30)).unwrap();
        conn.execute_batch("DROP TRIGGER audit_broken;").unwrap();
    }
    let served = get(
        &server,
        &format!("/fhir/Patient/{patient}"),
        Some(&clinical),
        None,
        Some("09-patient"),
    )
    .await;
    assert_eq!(served.status, 200, "{}", served.body);

    // A path no FHIR route takes (an empty segment: a trailing `/`) is
    // answered as FHIR answers, an OperationOutcome (s24b tester, L4)
    for path in [
        format!("/fhir/Patient/{patient}/"),
        "/fhir/Observation/".to_string(),
        format!("/fhir/Patient/{patient}/$everything/"),
        format!("/fhir/Patient/{patient}/_history/"),
    ] {
        let answer = get(&server, &path, Some(&clinical), None, None).await;
        assert_outcome(&answer, 404, "not-found");
        assert!(
            answer.body["issue"][0]["diagnostics"]
                .as_str()
                .is_some_and(|d| d.starts_with("no FHIR route for this path")),
            "{path}: {}",
            answer.body
        );
    }

    // Revoked while the engine runs: refused within seconds.
    let out = server.cli(&["token", "revoke", "gp-viewer"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let revoked =
        wait_for_status(&server, &format!("/fhir/Patient/{patient}"), &clinical, 401).await;
    assert_outcome(&revoked, 401, "login");
    let out = server.cli(&["token", "revoke", "gp-viewer"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no token named `gp-viewer`"));

    // Nothing sensitive reached the log.
    let log = server.log_text();
    for secret in [
        clinical.as_str(),
        ops.as_str(),
        nhs.as_str(),
        patient.as_str(),
    ] {
        assert!(
            !log.contains(secret),
            "the engine log contains {secret}:\n{log}"
        );
    }

    validate_answers(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_need_an_ops_token_off_loopback() {
    operations_through_a_proxy_answer_to_a_token().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "0.0.0.0").await;
    let ops = add_token(&server, "ops-desk", "ops");
    let clinical = add_token(&server, "ward", "clinical");

    for path in ["/health", "/ready", "/metrics"] {
        let response = reqwest::get(format!("{}{path}", server.base))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path} stays open");
    }
    let none = get(&server, "/api/messages", None, None, None).await;
    assert_eq!(none.status, 401, "{}", none.body);
    assert!(none
        .www_authenticate
        .is_some_and(|h| h.starts_with("Bearer")));
    assert!(none.body["error"]
        .as_str()
        .unwrap()
        .contains("no bearer token"));
    let wrong = get(&server, "/api/messages", Some(&clinical), None, None).await;
    assert_eq!(wrong.status, 403, "{}", wrong.body);
    let ok = get(&server, "/api/messages", Some(&ops), None, None).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body["messages"].is_array());
    // The operations subcommands send the token from JUNCTION_API_TOKEN.
    let queues = |token: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_junction"));
        command.args(["queues", "--api", &server.base]);
        command.env_remove("JUNCTION_API_TOKEN");
        if let Some(token) = token {
            command.env("JUNCTION_API_TOKEN", token);
        }
        command.output().unwrap()
    };
    // refused for want of a token: the command could not run (exit 2, as `tail`)
    let refused = queues(None);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("no bearer token"),
        "{}",
        text(&refused.stderr)
    );
    let allowed = queues(Some(&ops));
    assert!(allowed.status.success(), "{}", text(&allowed.stderr));
    // A change to the objections register is recorded as the token's.
    let client = reqwest::Client::new();
    let added = client
        .post(format!("{}/api/objections", server.base))
        .bearer_auth(&ops)
        .json(&serde_json::json!({"nhs_number": "9434765919", "note": "form"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    let changes = get(&server, "/api/objections/changes", Some(&ops), None, None).await;
    assert_eq!(changes.status, 200, "{}", changes.body);
    assert_eq!(changes.body["changes"][0]["changed_by"], "token ops-desk");
    assert_eq!(changes.body["changes"][0]["action"], "added");
    let refused = get(
        &server,
        "/api/objections/changes",
        Some(&clinical),
        None,
        None,
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    // An unknown path is refused before it is found missing.
    assert_eq!(
        get(&server, "/api/nothing", None, None, None).await.status,
        401
    );
    assert_eq!(
        get(&server, "/api/nothing", Some(&ops), None, None)
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objections_register_by_cli_and_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1").await;

    let out = server.cli(&[
        "objections",
        "add",
        "943 476 5919",
        "--note",
        "letter 12/03",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = server.cli(&["objections", "add", "9434765918"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(
            "`9434765918` is not a valid NHS number, expected 10 digits passing the modulus 11 check"
        ),
        "{}",
        text(&out.stderr)
    );
    let out = server.cli(&["objections", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list = text(&out.stdout);
    assert!(
        list.contains("9434765919") && list.contains("letter 12/03"),
        "{list}"
    );
    assert!(!list.contains("9434765918"), "{list}");

    // The same register over HTTP (open on loopback).
    let client = reqwest::Client::new();
    let listed: Value = get_json(&server, "/api/objections").await;
    assert_eq!(listed["objections"][0]["nhs_number"], "9434765919");
    let added = client
        .post(format!("{}/api/objections", server.base))
        .json(&serde_json::json!({"nhs_number": "999-000-0018"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    let bad = client
        .post(format!("{}/api/objections", server.base))
        .json(&serde_json::json!({"nhs_number": "1234567890"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // a body over the server's limit: 413, not 400
    let huge = format!(
        "{{\"nhs_number\": \"9990000018\", \"note\": \"{}\"}}",
        "x".repeat(3 << 20)
    );
    let too_large = client
        .post(format!("{}/api/objections", server.base))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(too_large.status(), 413);
    assert_eq!(
        too_large.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "the connection is not reused after a body left unread"
    );
    let removed = client
        .delete(format!("{}/api/objections/9990000018", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);

    let out = server.cli(&["objections", "remove", "9434765919"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = server.cli(&["objections", "remove", "9434765919"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = server.cli(&["objections", "list"]);
    assert!(text(&out.stdout).trim().is_empty(), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("empty"), "{}", text(&out.stderr));

    // Every change is on record, newest first, with who made it: the CLI as
    // `cli <user>`, the API open on loopback as such. A refused add and a
    // removal of what was not there changed nothing, so left no row.
    let changes: Value = get_json(&server, "/api/objections/changes").await;
    let rows: Vec<(String, String, String)> = changes["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["nhs_number"].as_str().unwrap().to_string(),
                c["action"].as_str().unwrap().to_string(),
                c["changed_by"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let who: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(rows.len(), 4, "{changes}");
    assert_eq!(
        rows.iter()
            .map(|r| (r.0.as_str(), r.1.as_str()))
            .collect::<Vec<_>>(),
        [
            ("9434765919", "removed"),
            ("9990000018", "removed"),
            ("9990000018", "added"),
            ("9434765919", "added"),
        ]
    );
    assert!(
        who[0].starts_with("cli ") && who[3].starts_with("cli "),
        "{who:?}"
    );
    assert_eq!(who[1], "loopback API (no token)");
    assert_eq!(who[2], "loopback API (no token)");
    assert_eq!(changes["changes"][3]["note"], "letter 12/03");
    let one: Value = get_json(
        &server,
        "/api/objections/changes?nhs_number=999%20000%200018",
    )
    .await;
    assert_eq!(one["changes"].as_array().map(Vec::len), Some(2), "{one}");
    let bad = client
        .get(format!(
            "{}/api/objections/changes?nhs_number=1234567890",
            server.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // On loopback no token is asked; one given is checked all the same: a
    // clinical token may not change the register, and an ops token's change
    // names it.
    let clinical = add_token(&server, "ward-viewer", "clinical");
    let ops = add_token(&server, "duty-ops", "ops");
    let as_clinical = client
        .post(format!("{}/api/objections", server.base))
        .bearer_auth(&clinical)
        .json(&serde_json::json!({"nhs_number": "9990000026"}))
        .send()
        .await
        .unwrap();
    assert_eq!(as_clinical.status(), 403);
    let garbage = client
        .post(format!("{}/api/objections", server.base))
        .bearer_auth("not-a-token")
        .json(&serde_json::json!({"nhs_number": "9990000026"}))
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 401);
    let as_ops = client
        .post(format!("{}/api/objections", server.base))
        .bearer_auth(&ops)
        .json(&serde_json::json!({"nhs_number": "9990000026"}))
        .send()
        .await
        .unwrap();
    assert_eq!(as_ops.status(), 201);
    let changes: Value = get_json(&server, "/api/objections/changes?nhs_number=9990000026").await;
    assert_eq!(
        changes["changes"][0]["changed_by"], "token duty-ops",
        "{changes}"
    );
    let out = server.cli(&["objections", "history", "9434765919"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let history = text(&out.stdout);
    assert!(
        history.contains("removed")
            && history.contains("added")
            && history.contains("letter 12/03")
            && !history.contains("9990000018"),
        "{history}"
    );
}

/// `GET path` (open on loopback) as JSON.
async fn get_json(server: &Server, path: &str) -> Value {
    reqwest::get(format!("{}{path}", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The A01 sample as patient `nhs` (a valid NHS number) with `control` as MSH-10.
fn a01(control: &str, nhs: &str, mrn: &str) -> String {
    std::fs::read_to_string(repo_root().join("samples/adt_a01_admission.hl7"))
        .unwrap()
        .replace("RAL20261120143512001", control)
        .replace("9990000018", nhs)
        .replace("RAL1234567", mrn)
}

/// Polls `GET path` (open on loopback) until `done` says yes.
async fn wait_until(
    server: &Server,
    path: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let answer = get(server, path, None, None, None).await;
        if answer.status == 200 && done(&answer.body) {
            return answer.body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still not so after 90 s; last GET {path}: {} {}\n{}",
            answer.status,
            answer.body,
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_objecting_patient_is_stored_and_readable_but_withheld_from_external_destinations() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("engine");
    let outbox = tmp.path().join("outbox");
    std::fs::create_dir_all(dir.join("routes")).unwrap();
    std::fs::write(
        dir.join("routes/test.toml"),
        "[routes.a01]\nmessages = [\"ADT^A01\"]\nmapping = \"adt\"\ndestinations = [\"store\", \"neighbour\"]\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(repo_root().join("mappings"), dir.join("mappings")).unwrap();
    let extra = format!(
        "\n[destinations.store]\nkind = \"store\"\n\n\
         [destinations.neighbour]\nkind = \"file\"\ndir = \"{}\"\nexternal = true\n",
        outbox.display()
    );
    let server = Server::start_with(&dir, "127.0.0.1", &extra).await;

    // Registered while the engine runs, before the messages arrive.
    let (objecting, sharing) = ("9990000018", "9434765919");
    let out = server.cli(&["objections", "add", objecting, "--note", "opt-out form"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let mut client = MllpClient::connect(&server.mllp(), Duration::from_secs(30))
        .await
        .unwrap();
    for (control, nhs, mrn) in [
        ("OBJ0001", objecting, "RAL0000001"),
        ("OBJ0002", sharing, "RAL0000002"),
    ] {
        let ack = client
            .send(a01(control, nhs, mrn).as_bytes())
            .await
            .unwrap();
        assert_eq!(read_ack(&ack).unwrap().code, "AA", "{}", text(&ack));
    }

    // The external destination: one withheld, one delivered; the store: both.
    let withheld = wait_until(
        &server,
        "/api/deliveries?destination=neighbour&status=withheld",
        "the objecting patient's document withheld",
        |b| b["deliveries"].as_array().is_some_and(|d| d.len() == 1),
    )
    .await;
    assert!(withheld.to_string().contains("objects"), "{withheld}");
    wait_until(
        &server,
        "/api/deliveries?destination=neighbour&status=delivered",
        "the other patient's document delivered",
        |b| b["deliveries"].as_array().is_some_and(|d| d.len() == 1),
    )
    .await;
    wait_until(
        &server,
        "/api/deliveries?destination=store&status=delivered",
        "both documents in the record store",
        |b| b["deliveries"].as_array().is_some_and(|d| d.len() == 2),
    )
    .await;
    let sent: Vec<String> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].contains(sharing) && !sent[0].contains(objecting));

    // Inside the organisation the record is readable (and the read audited).
    let clinical = add_token(&server, "ward-7", "clinical");
    let found = get(
        &server,
        &format!("/fhir/Patient?identifier={NHS_SYSTEM}%7C{objecting}"),
        Some(&clinical),
        Some("DIRECT-CARE"),
        Some("10-objecting-patient"),
    )
    .await;
    assert_eq!(found.status, 200, "{}", found.body);
    assert_eq!(found.body["total"], 1, "{}", found.body);
    let patient = found.body["entry"][0]["resource"]["id"].as_str().unwrap();
    let ops = add_token(&server, "ops", "ops");
    let audit = get(
        &server,
        &format!("/api/audit?patient={patient}"),
        Some(&ops),
        None,
        None,
    )
    .await;
    assert_eq!(audit.body["audit"][0]["token"], "ward-7", "{}", audit.body);
    validate_answers(&server);
}
