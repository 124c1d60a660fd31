//! The record store in the real PostgreSQL (`[store] url`), shared by two
//! engine nodes: the real `junction serve` binary twice, each with its own
//! journal (SQLite, `[store] path`) and ports, both naming one database (a
//! schema of its own per test, see `junction::store::testing`).
//!
//! - A patient admitted through node A is read through node B's FHIR API with
//!   a token made by node B's CLI, and through node A's with the same token;
//!   node A's audit trail lists node B's read; an objection registered on
//!   node A is in node B's register.
//! - Both nodes take load at once; node A is killed (SIGKILL) mid-load and
//!   started again: every message either node acknowledged has its document
//!   in the database, once.
//!
//! Needs `bash tests/postgres/setup.sh` (the README's test command runs it).

mod harness;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{repo_root, url_encode, Engine};
use junction::mllp::client::{read_ack, MllpClient};
use junction::store::testing::{test_ca, TestSchema};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(120);
const NHS: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// A node: routes every ADT to the `store` destination, records in `schema`.
fn node(dir: &Path, schema: &TestSchema) -> Engine {
    node_with(dir, schema, "junction", "")
}

/// [`node`] with its database connections named `application_name` (to find
/// them in `pg_stat_activity`) and more `[store]` keys.
fn node_with(dir: &Path, schema: &TestSchema, application_name: &str, store_extra: &str) -> Engine {
    std::fs::create_dir_all(dir.join("routes")).unwrap();
    std::fs::write(
        dir.join("routes/all.toml"),
        "[routes.adt]\nmessages = [\"ADT^*\"]\nmapping = \"adt\"\ndestinations = [\"store\"]\n",
    )
    .unwrap();
    if !dir.join("mappings").exists() {
        std::os::unix::fs::symlink(repo_root().join("mappings"), dir.join("mappings")).unwrap();
    }
    let url = format!("{}&application_name={application_name}", schema.url);
    let password_file = schema.password_file.clone();
    let store_extra = store_extra.to_string();
    Engine::start_custom(dir, &[], move |mllp, api| {
        format!(
            "[listeners.pas]\nbind = \"{mllp}\"\nmax_connections = 64\n\n\
             [store]\npath = \"data/junction.db\"\nsync = \"full\"\n\
             url = \"{url}\"\npassword_file = \"{}\"\n{store_extra}\n\n\
             [api]\nbind = \"{api}\"\n\n[log]\nformat = \"text\"\n\n\
             [destinations.store]\nkind = \"store\"\n",
            password_file.display()
        )
    })
}

/// `junction ARGS --config <node's config>`: stdout, after checking it succeeded.
fn cli(engine: &Engine, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_junction"))
        .args(args)
        .arg("--config")
        .arg(&engine.config)
        .output()
        .expect("run the junction binary");
    assert!(
        out.status.success(),
        "junction {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn a01(control: &str, nhs: &str, mrn: &str) -> String {
    format!(
        "MSH|^~\\&|PGPAS|RAL01|JUNCTION|SCR|20260301101500||ADT^A01^ADT_A01|{control}|P|2.4\r\
         EVN|A01|20260301101500\r\
         PID|1||{nhs}^^^NHS^NH~{mrn}^^^RAL01^MR||SHARED^PATIENT||19800101|F\r\
         PV1|1|I|WARD1^BED2^^RAL01||||C1234567^CONSULTANT^TEST|||MED||||19|||||V{control}\r"
    )
}

/// `GET path` with an optional bearer token: status and body.
async fn get(api: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().get(format!("http://{api}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("GET");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// The NHS numbers of the Patients a search found.
fn patients_found(body: &str) -> Vec<String> {
    let bundle: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| {
            e["resource"]["identifier"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|i| i["system"] == NHS)
        .filter_map(|i| i["value"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_records_tokens_audit_and_objections() {
    let schema = TestSchema::create("twonodes");
    let tmp = tempfile::tempdir().unwrap();
    let app = format!("junction-twonodes-{}", std::process::id());
    let a = node_with(&tmp.path().join("a"), &schema, &app, "");
    // node B talks to the database over TLS, trusting the test CA (a path
    // relative to its config)
    let (ca, _) = test_ca();
    std::fs::create_dir_all(tmp.path().join("b/tls")).unwrap();
    std::fs::copy(&ca, tmp.path().join("b/tls/db-ca.pem")).unwrap();
    let b = node_with(
        &tmp.path().join("b"),
        &schema,
        &app,
        "tls_ca_file = \"tls/db-ca.pem\"",
    );
    assert!(
        a.log_text().contains("record store open")
            && a.log_text().contains("postgres junction_test@"),
        "{}",
        a.log_text()
    );
    assert!(b.log_text().contains("(TLS)"), "{}", b.log_text());

    // a token made on node B ...
    let token = cli(&b, &["token", "add", "ward-7", "--role", "clinical"]);
    let token = token.trim();

    // ... a patient admitted through node A ...
    let mut client = MllpClient::connect(&a.mllp.to_string(), Duration::from_secs(10))
        .await
        .unwrap();
    let ack = client
        .send(a01("PG0001", "9434765919", "RAL0000001").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_ack(&ack).unwrap().code, "AA");
    // ... is read through node B, with B's token
    let search = wait_for_patient(&a, &b, token, "9434765919").await;

    // The server closes every connection of both nodes (as a restart or a
    // failover would): the next calls reconnect, and nothing fails.
    let terminated: i64 = schema.with_client(|client| {
        client
            .query_one(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
                 FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .unwrap()
            .get(0)
    });
    assert!(terminated >= 2, "{terminated} connections closed");
    let ack = client
        .send(a01("PG0002", "9990000018", "RAL0000002").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_ack(&ack).unwrap().code, "AA");
    // every read answers 200, the first after the connections died too
    wait_for_patient(&a, &b, token, "9990000018").await;

    // the same token works on node A (one token table)
    let (status, body) = get(a.api, &search, Some(token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(patients_found(&body), ["9434765919"]);

    // node A's audit trail lists both reads that found the patient, node B's
    // among them, and node B's polling before it was there (read with
    // an ops token made on node A; enough rows for however long the polling
    // took on a loaded machine: CI run 135 had 8 polls push a read out of 10)
    let ops = cli(&a, &["token", "add", "ops-a", "--role", "ops"]);
    let (status, body) = get(a.api, "/api/audit?limit=500", Some(ops.trim())).await;
    assert_eq!(status, 200, "{body}");
    let audit: Value = serde_json::from_str(&body).unwrap();
    let reads = audit["audit"]
        .as_array()
        .unwrap_or_else(|| panic!("no audit rows: {body}"))
        .iter()
        .filter(|e| {
            e["token"] == "ward-7"
                && e["query"]
                    .as_str()
                    .is_some_and(|q| q.contains("9434765919"))
                && e["patients"].as_array().is_some_and(|p| p.len() == 1)
        })
        .count();
    assert_eq!(reads, 2, "{body}");

    // an objection registered on node A is in node B's register
    cli(&a, &["objections", "add", "9434765919", "--note", "letter"]);
    let listed = cli(&b, &["objections", "list"]);
    assert!(listed.contains("9434765919"), "{listed}");
    let history = cli(&b, &["objections", "history", "9434765919"]);
    assert!(history.contains("added"), "{history}");

    // the record store's tables live in PostgreSQL, not in the nodes' folders
    assert!(!tmp.path().join("a/data/records.db").exists());
    assert!(!tmp.path().join("b/data/records.db").exists());
}

/// Searches node `b` for the patient with NHS number `nhs` (sent to node
/// `a`) until it is found; every answer must be 200. Returns the search path.
async fn wait_for_patient(a: &Engine, b: &Engine, token: &str, nhs: &str) -> String {
    let search = format!(
        "/fhir/Patient?identifier={}",
        url_encode(&format!("{NHS}|{nhs}"))
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = get(b.api, &search, Some(token)).await;
        assert_eq!(status, 200, "{body}\n--- B ---\n{}", b.log_text());
        if patients_found(&body) == [nhs] {
            return search;
        }
        assert!(
            Instant::now() < deadline,
            "node B never saw patient {nhs} stored through node A: {body}\n--- A ---\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `count` A01s (control ids `<prefix>-<n>`, one patient each) on two
/// connections, recording each acknowledged control id, until done or the
/// engine dies.
async fn send_load(addr: String, prefix: String, count: usize, acked: Arc<Mutex<Vec<String>>>) {
    let mut tasks = Vec::new();
    for c in 0..2 {
        let (addr, prefix, acked) = (addr.clone(), prefix.clone(), Arc::clone(&acked));
        tasks.push(tokio::spawn(async move {
            let Ok(client) = MllpClient::connect(&addr, Duration::from_secs(5)).await else {
                return;
            };
            let mut client = client.with_ack_timeout(Duration::from_secs(20));
            for n in (c..count).step_by(2) {
                let control = format!("{prefix}-{n:05}");
                let message = a01(&control, "", &format!("M{prefix}{n:05}"));
                match client.send(message.as_bytes()).await {
                    Ok(ack) if String::from_utf8_lossy(&ack).contains("MSA|AA") => {
                        acked.lock().unwrap().push(control);
                    }
                    Ok(ack) => panic!("{control}: {}", String::from_utf8_lossy(&ack)),
                    Err(_) => return, // the engine was killed
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// The control ids of the Provenances in the database (one per document),
/// and how many Provenance versions were written in all.
fn stored_control_ids(schema: &TestSchema) -> (BTreeSet<String>, i64) {
    schema.with_client(|client| {
        let ids = client
            .query(
                "SELECT content::json->'entity'->0->'what'->'identifier'->>'value'
             FROM resources WHERE type = 'Provenance' AND NOT deleted",
                &[],
            )
            .unwrap()
            .iter()
            .filter_map(|row| row.get::<_, Option<String>>(0))
            .collect();
        let versions: i64 = client
            .query_one(
                "SELECT count(*) FROM history WHERE type = 'Provenance'",
                &[],
            )
            .unwrap()
            .get(0);
        (ids, versions)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_one_node_mid_load_loses_no_document_in_the_shared_store() {
    let schema = TestSchema::create("kill9");
    let tmp = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut a = node(&dir_a, &schema);
    let b = node(&dir_b, &schema);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));

    let load_a = tokio::spawn(send_load(
        a.mllp.to_string(),
        "A".into(),
        3_000,
        Arc::clone(&acked),
    ));
    let load_b = tokio::spawn(send_load(
        b.mllp.to_string(),
        "B".into(),
        400,
        Arc::clone(&acked),
    ));
    // kill node A after some hundreds of its ACKs
    let target = 200 + fastrand::usize(0..200);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let from_a = acked
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.starts_with('A'))
            .count();
        if from_a >= target {
            break;
        }
        assert!(
            Instant::now() < deadline && !load_a.is_finished(),
            "node A acknowledged only {from_a}\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.kill();
    let _ = load_a.await;
    let _ = load_b.await;
    let at_kill = acked.lock().unwrap().len();

    // node A again, on its own journal: it delivers what it had acknowledged
    let a = node(&dir_a, &schema);
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert_eq!(acked.len(), at_kill, "a control id acknowledged twice");
    let deadline = Instant::now() + DEADLINE;
    let (ids, versions) = loop {
        let (ids, versions) = stored_control_ids(&schema);
        if acked.is_subset(&ids) {
            break (ids, versions);
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged documents in PostgreSQL\n--- A ---\n{}\n--- B ---\n{}",
            acked.intersection(&ids).count(),
            acked.len(),
            a.log_text(),
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "{} acknowledged ({} by node A before the kill), {} documents stored, {versions} Provenance versions",
        acked.len(),
        acked.iter().filter(|c| c.starts_with('A')).count(),
        ids.len()
    );
    // every document once: a redelivery after the restart made no new version
    assert_eq!(versions as usize, ids.len(), "one version per document");
    assert!(ids
        .iter()
        .all(|id| id.starts_with('A') || id.starts_with('B')));
    assert!(
        acked.iter().any(|c| c.starts_with('B')),
        "node B took load too"
    );
}

#[test]
fn records_copy_to_postgres_moves_a_nodes_sqlite_store_once() {
    use junction::store::{RecordStore, RecordStoreConfig, SyncPolicy};
    let schema = TestSchema::create("copycli");
    let dir = tempfile::tempdir().unwrap();
    // what a single node left: its records file with an objection and a token
    let sqlite = RecordStore::open(&RecordStoreConfig {
        path: dir.path().join("data/records.db"),
        sync: SyncPolicy::Normal,
        postgres: None,
    })
    .unwrap();
    sqlite
        .add_objection("9990000018", Some("letter"), "cli test")
        .unwrap();
    sqlite.add_token("ward", "clinical", &[5; 32]).unwrap();
    drop(sqlite);
    let config = dir.path().join("junction.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"data/junction.db\"\nrecords = \"data/records.db\"\n\
             url = \"{}\"\npassword_file = \"{}\"\n",
            schema.url,
            schema.password_file.display()
        ),
    )
    .unwrap();
    let junction = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_junction"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run the junction binary")
    };
    // check says the file is left behind
    let check = junction(&["check"]);
    let said = String::from_utf8_lossy(&check.stderr).into_owned()
        + &String::from_utf8_lossy(&check.stdout);
    assert!(said.contains("junction records copy-to-postgres"), "{said}");

    let out = junction(&["records", "copy-to-postgres"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |table: &str, n: &str| stdout.lines().any(|l| l.split_whitespace().eq([table, n]));
    assert!(
        line("objections", "1") && line("api_tokens", "1"),
        "{stdout}"
    );
    // the register now answers from PostgreSQL
    let listed = junction(&["objections", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("9990000018"));
    // a second copy is refused: the database is no longer empty
    let again = junction(&["records", "copy-to-postgres"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("only copied into an empty one"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
