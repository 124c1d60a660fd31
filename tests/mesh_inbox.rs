//! The MESH inbox source against NHS England's real MESH sandbox
//! (`AUTH_MODE=full`, `STORE_MODE=file`), with NHS's own Python client
//! (`mesh_client`) as the neighbour sending to Junction's mailbox, and a real
//! journal (SQLite) in a temp folder.
//!
//! Each test starts its own sandbox on a free port. Needs the venv made by
//! `bash tests/python/setup-venv.sh` (`.venv`, or `$JUNCTION_VENV`).

mod harness;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use harness::mesh::{self, Sandbox, PASSWORD, SHARED_KEY};
use junction::journal::{Incoming, Journal, MessageQuery, Status, StoreConfig, SyncPolicy};
use junction::mesh::{MeshClient, MeshMailboxConfig, Secret};
use junction::source::{MeshInbox, MeshInboxError, PollSummary};
use junction::telemetry::events::{Event, EventBus};
use junction::telemetry::metrics::Metrics;
use tokio_util::sync::CancellationToken;

const JUNCTION: &str = "X26ABC1";
const NEIGHBOUR: &str = "X26ABC2";
const SOURCE: &str = "mesh_inbox";

fn journal(dir: &Path) -> Journal {
    Journal::open(&StoreConfig {
        path: dir.join("junction.db"),
        sync: SyncPolicy::Normal,
        records: dir.join("records.db"),
        retain_days: None,
        ..Default::default()
    })
    .expect("open journal")
}

fn mailbox(sandbox: &Sandbox) -> MeshMailboxConfig {
    let mut config = MeshMailboxConfig::new(&sandbox.url, JUNCTION);
    config.timeout_secs = 60;
    config.max_retries = 1;
    config.retry_backoff_ms = 20;
    config
}

fn inbox_with(
    sandbox: &Sandbox,
    journal: &Journal,
    password: &str,
    events: &EventBus,
) -> MeshInbox {
    let client = MeshClient::with_secrets(
        &mailbox(sandbox),
        Secret::new(password.into()),
        Secret::new(SHARED_KEY.into()),
    )
    .expect("mesh client");
    MeshInbox::with_client(
        SOURCE,
        Duration::from_secs(60),
        Arc::new(client),
        journal.clone(),
        events.clone(),
        Arc::new(Metrics::new()),
    )
}

/// A synthetic transaction Bundle of about `size` bytes (no real person).
fn bundle(n: usize, size: usize) -> Vec<u8> {
    let note = "x".repeat(size.saturating_sub(400));
    serde_json::to_vec(&serde_json::json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{
            "fullUrl": format!("urn:uuid:00000000-0000-5000-8000-{n:012}"),
            "resource": {
                "resourceType": "Patient",
                "id": format!("00000000-0000-5000-8000-{n:012}"),
                "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990002002"}],
                "text": {"status": "generated", "div": format!("<div>{note}</div>")}
            },
            "request": {"method": "PUT", "url": format!("Patient/00000000-0000-5000-8000-{n:012}")}
        }]
    }))
    .expect("bundle json")
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write file");
    path
}

/// The one journal row with `control_id`, with its raw bytes.
async fn row(
    journal: &Journal,
    control_id: &str,
) -> (junction::journal::MessageSummary, Vec<u8>, Option<String>) {
    let rows = journal
        .search(MessageQuery {
            control_id: Some(control_id.to_string()),
            ..MessageQuery::default()
        })
        .await
        .expect("search");
    assert_eq!(rows.len(), 1, "exactly one row for {control_id}: {rows:?}");
    let raw = journal.raw(rows[0].id).await.expect("raw").expect("row");
    let detail = journal.get(rows[0].id).await.expect("get").expect("row");
    (rows[0].clone(), raw, detail.error)
}

/// Every event already published (the source publishes before it returns).
async fn events_of(sub: &mut junction::telemetry::events::Subscription) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(200), sub.recv()).await {
        out.push(event);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_journaled_then_acknowledged() {
    let sandbox = Sandbox::start();
    let dir = tempfile::tempdir().unwrap();
    let sample =
        std::fs::read(harness::repo_root().join("samples/mesh_bundle_from_hwe.json")).unwrap();
    let first = mesh::send(
        &sandbox.url,
        NEIGHBOUR,
        JUNCTION,
        &write(dir.path(), "a.json", &sample),
    );
    let second_body = bundle(2, 2_000);
    let second = mesh::send(
        &sandbox.url,
        NEIGHBOUR,
        JUNCTION,
        &write(dir.path(), "b.json", &second_body),
    );
    // neither a Bundle nor HL7 v2 (a CDA document)
    let cda =
        b"<ClinicalDocument xmlns=\"urn:hl7-org:v3\"><title>Discharge</title></ClinicalDocument>"
            .to_vec();
    let not_a_bundle = mesh::send(
        &sandbox.url,
        NEIGHBOUR,
        JUNCTION,
        &write(dir.path(), "c.xml", &cda),
    );
    let report = sandbox.add_report(JUNCTION, "20261120093000000000_ABCDEF", "14");
    assert_eq!(mesh::inbox(&sandbox.url, JUNCTION).len(), 4);

    let journal = journal(dir.path());
    let events = EventBus::default();
    let mut sub = events.subscribe();
    let mut inbox = inbox_with(&sandbox, &journal, PASSWORD, &events);
    let summary = inbox.poll_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(
        summary,
        PollSummary {
            listed: 4,
            accepted: 2,
            rejected: 1,
            reports: 1,
            acknowledged: 4,
            ..PollSummary::default()
        }
    );
    // Acknowledged: NHS's client sees an empty inbox.
    assert!(
        mesh::inbox(&sandbox.url, JUNCTION).is_empty(),
        "{}",
        sandbox.log()
    );

    // Bundles: accepted rows, byte for byte, under the source id.
    for (id, body) in [(&first, &sample), (&second, &second_body)] {
        let (summary, raw, error) = row(&journal, id).await;
        assert_eq!(summary.listener, SOURCE);
        assert_eq!(summary.sender, NEIGHBOUR);
        assert_eq!(summary.message_type, "MESH^TEST_WORKFLOW");
        assert_eq!(summary.status, "accepted");
        assert_eq!(&raw, body, "journaled byte-identical");
        assert_eq!(error, None);
    }
    // Not a Bundle: kept, rejected, with the reason (and no content in it).
    let (summary, raw, error) = row(&journal, &not_a_bundle).await;
    assert_eq!(summary.status, "rejected");
    assert_eq!(raw, cda);
    let error = error.unwrap();
    assert!(
        error.contains("is neither HL7 v2 nor a FHIR Bundle: not JSON"),
        "{error}"
    );
    assert!(!error.contains("Discharge"), "{error}");
    // The report: journaled as such, with its MESH metadata.
    let (summary, raw, error) = row(&journal, &report).await;
    assert_eq!(summary.message_type, "MESH^REPORT");
    assert_eq!(summary.status, "rejected");
    assert!(raw.is_empty());
    let error = error.unwrap();
    assert!(
        error.starts_with("mesh report (not a document) on message `20261120093000000000_ABCDEF` (local id `junction-7`): status code 14"),
        "{error}"
    );

    // Events: one received and one acknowledged per message, ids only.
    let got = events_of(&mut sub).await;
    let received: Vec<(String, String)> = got
        .iter()
        .filter_map(|e| match e {
            Event::MeshReceived(m) => Some((m.message_id.clone(), m.outcome.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(received.len(), 4, "{got:?}");
    assert!(received.contains(&(first.clone(), "accepted".into())));
    assert!(received.contains(&(not_a_bundle.clone(), "rejected".into())));
    assert!(received.contains(&(report.clone(), "report".into())));
    let acked = got
        .iter()
        .filter(|e| matches!(e, Event::MeshAcknowledged(_)))
        .count();
    assert_eq!(acked, 4);

    // Nothing left: the next poll finds nothing and journals nothing.
    let again = inbox.poll_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(again, PollSummary::default());
    let all = journal.search(MessageQuery::default()).await.unwrap();
    assert_eq!(all.len(), 4);
}

/// A message whose content cannot be used as sent (here a checksum that does
/// not match the body) is kept, rejected with the reason, and acknowledged:
/// downloading it again would give the same bytes, so it must not stay in the
/// inbox to be downloaded at every poll until MESH expires it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_fails_its_checksum_is_kept_rejected_and_acknowledged() {
    let sandbox = Sandbox::start();
    let dir = tempfile::tempdir().unwrap();
    let body = bundle(1, 500);
    let id = mesh::send_with_checksum(
        &sandbox.url,
        NEIGHBOUR,
        JUNCTION,
        &write(dir.path(), "a.json", &body),
        &format!("sha256:{}", "0".repeat(64)),
    );
    let journal = journal(dir.path());
    let events = EventBus::default();
    let mut inbox = inbox_with(&sandbox, &journal, PASSWORD, &events);
    let summary = inbox.poll_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(
        (summary.rejected, summary.acknowledged, summary.failed),
        (1, 1, 0),
        "{summary:?}"
    );
    assert!(
        mesh::inbox(&sandbox.url, JUNCTION).is_empty(),
        "{}",
        sandbox.log()
    );
    let (row, raw, error) = row(&journal, &id).await;
    assert_eq!(row.status, "rejected");
    assert_eq!(raw, body, "the bytes are kept");
    let error = error.unwrap();
    assert!(
        error.contains("cannot be used as sent") && error.contains("checksum mismatch"),
        "{error}"
    );
    // the next poll finds nothing
    let again = inbox.poll_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(again, PollSummary::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hl7_v2_arrives_as_its_messages_and_a_resend_is_a_duplicate() {
    let sandbox = Sandbox::start();
    let dir = tempfile::tempdir().unwrap();
    let oru = std::fs::read(harness::repo_root().join("samples/oru_r01_fbc_ue.hl7")).unwrap();
    let single = mesh::send(
        &sandbox.url,
        NEIGHBOUR,
        JUNCTION,
        &write(dir.path(), "oru.hl7", &oru),
    );
    // a batch of two results and one message with no MSH-9, LF line endings
    let batch = "FHS|^~\\&|LIMS|RRV|JUNCTION|LCR|20261123101500\n\
                 BHS|^~\\&|LIMS|RRV|JUNCTION|LCR|20261123101500\n\
                 MSH|^~\\&|LIMS|RRV|JUNCTION|LCR|20261123101500||ORU^R01^ORU_R01|RRV-B1|P|2.5.1\n\
                 PID|1||9990000018^^^NHS^NH||SMITH^MARGARET\n\
                 OBR|1||F1|26604007^FBC^SCT\n\
                 OBX|1|NM|HB^Haemoglobin^L||131|g/L|||||F\n\
                 MSH|^~\\&|LIMS|RRV|JUNCTION|LCR|20261123101500|||RRV-B2|P|2.5.1\n\
                 PID|1||9990000018^^^NHS^NH||SMITH^MARGARET\n\
                 MSH|^~\\&|LIMS|RRV|JUNCTION|LCR|20261123101500||ORU^R01^ORU_R01|RRV-B3|P|2.5.1\n\
                 PID|1||9990000018^^^NHS^NH||SMITH^MARGARET\n\
                 MSH|^~\\&|LIMS|RRV|JUNCTION|LCR|20261123101500||ORU^R01^ORU_R01|RRV-B4|P|2.5.1\n\
                 OBR|1||F4|26604007^FBC^SCT\n\
                 BTS|4\nFTS|1\n";
    let batched = mesh::send(
        &sandbox.url,
        NEIGHBOUR,
        JUNCTION,
        &write(dir.path(), "batch.hl7", batch.as_bytes()),
    );
    // the lab sends the first message again, in a new MESH message
    let again = mesh::send(
        &sandbox.url,
        NEIGHBOUR,
        JUNCTION,
        &write(dir.path(), "oru-again.hl7", &oru),
    );
    let journal = journal(dir.path());
    let events = EventBus::default();
    let mut sub = events.subscribe();
    let mut inbox = inbox_with(&sandbox, &journal, PASSWORD, &events);
    let summary = inbox.poll_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(
        summary,
        PollSummary {
            listed: 3,
            accepted: 2,
            duplicates: 1,
            acknowledged: 3,
            ..PollSummary::default()
        }
    );
    assert!(mesh::inbox(&sandbox.url, JUNCTION).is_empty());

    // The message: a row as an MLLP listener makes it, under the source id.
    let (summary, raw, error) = row(&journal, "WP26112016254400123").await;
    assert_eq!(summary.listener, SOURCE);
    assert_eq!(summary.sender, "WINPATH^RAL^RAL^ODS");
    assert_eq!(summary.message_type, "ORU^R01");
    assert_eq!(summary.status, "accepted");
    assert_eq!(raw, oru, "journaled byte for byte");
    assert_eq!(error, None);
    // The batch: a row per message; the one without a type rejected, kept,
    // and named by the MESH message id and its place.
    for control_id in ["RRV-B1", "RRV-B3"] {
        let (summary, raw, _) = row(&journal, control_id).await;
        assert_eq!(
            (summary.sender.as_str(), summary.status.as_str()),
            ("LIMS^RRV", "accepted")
        );
        assert!(raw.starts_with(b"MSH|") && !raw.windows(3).any(|w| w == b"BTS"));
    }
    let (summary, raw, error) = row(&journal, &format!("{batched}/2")).await;
    assert_eq!(summary.status, "rejected");
    assert_eq!(summary.sender, NEIGHBOUR);
    assert!(
        raw.ends_with(b"SMITH^MARGARET\n"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    let error = error.unwrap();
    assert!(
        error.contains("message 2 of the batch") && error.contains("MSH-9"),
        "{error}"
    );
    assert!(!error.contains("SMITH"), "{error}");
    // a result about no patient: refused as a listener refuses it (AE there)
    let (summary, _, error) = row(&journal, &format!("{batched}/4")).await;
    assert_eq!(summary.status, "rejected");
    assert!(error.unwrap().contains("no PID segment"));
    // Five rows in all: the resend added none.
    let all = journal.search(MessageQuery::default()).await.unwrap();
    assert_eq!(all.len(), 5, "{all:?}");
    let outcomes: Vec<(String, String)> = events_of(&mut sub)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::MeshReceived(m) => Some((m.message_id, m.outcome)),
            _ => None,
        })
        .collect();
    assert!(
        outcomes.contains(&(single, "accepted".into())),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&(batched, "accepted".into())),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&(again, "duplicate".into())),
        "{outcomes:?}"
    );
}

/// A lab that corrects a result and sends it again under the same control id:
/// kept as a rejected row and said so (counted rejected, the event names the
/// kept row), not passed off as a re-download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_whose_content_differs_is_rejected_not_a_duplicate() {
    let sandbox = Sandbox::start();
    let dir = tempfile::tempdir().unwrap();
    let oru = std::fs::read(harness::repo_root().join("samples/oru_r01_fbc_ue.hl7")).unwrap();
    let text = String::from_utf8(oru.clone()).unwrap();
    let corrected = text.replacen("|128|", "|99|", 1);
    assert_ne!(corrected, text, "the sample's Hb is 128");
    mesh::send(
        &sandbox.url,
        NEIGHBOUR,
        JUNCTION,
        &write(dir.path(), "oru.hl7", &oru),
    );
    let journal = journal(dir.path());
    let events = EventBus::default();
    let mut sub = events.subscribe();
    let mut inbox = inbox_with(&sandbox, &journal, PASSWORD, &events);
    inbox.poll_once(&CancellationToken::new()).await.unwrap();
    let again = mesh::send(
        &sandbox.url,
        NEIGHBOUR,
        JUNCTION,
        &write(dir.path(), "oru-corrected.hl7", corrected.as_bytes()),
    );
    let summary = inbox.poll_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(
        summary,
        PollSummary {
            listed: 1,
            rejected: 1,
            acknowledged: 1,
            ..PollSummary::default()
        }
    );
    let all = journal.search(MessageQuery::default()).await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    let kept = all
        .iter()
        .find(|r| r.status == "rejected")
        .expect("kept row");
    let events: Vec<(String, String, i64)> = events_of(&mut sub)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::MeshReceived(m) => Some((m.message_id, m.outcome, m.journal_id)),
            _ => None,
        })
        .collect();
    assert!(
        events.contains(&(again, "rejected".into(), kept.id)),
        "{events:?}"
    );
}

/// A sender that writes to MESH what it would have sent over TCP: HL7 in its
/// MLLP frames. Its messages are journaled as unframed HL7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hl7_in_mllp_frames_arrives_as_its_messages() {
    let sandbox = Sandbox::start();
    let dir = tempfile::tempdir().unwrap();
    let message = |id: &str| {
        format!(
            "MSH|^~\\&|LIMS|RRV|JUNCTION|LCR|20261123101500||ORU^R01^ORU_R01|{id}|P|2.4\r\
             PID|1||9990000018^^^NHS^NH||SMITH^MARGARET\r\
             OBR|1||F1|26604007^FBC^SCT\r\
             OBX|1|NM|HB^Haemoglobin^L||131|g/L|||||F\r"
        )
    };
    let mut framed = Vec::new();
    for id in ["FRAMED-1", "FRAMED-2"] {
        framed.push(0x0B);
        framed.extend_from_slice(message(id).as_bytes());
        framed.extend_from_slice(&[0x1C, 0x0D]);
    }
    mesh::send(
        &sandbox.url,
        NEIGHBOUR,
        JUNCTION,
        &write(dir.path(), "framed.hl7", &framed),
    );
    let journal = journal(dir.path());
    let events = EventBus::default();
    let mut inbox = inbox_with(&sandbox, &journal, PASSWORD, &events);
    let summary = inbox.poll_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(
        (summary.accepted, summary.acknowledged),
        (1, 1),
        "{summary:?}"
    );
    for id in ["FRAMED-1", "FRAMED-2"] {
        let (summary, raw, error) = row(&journal, id).await;
        assert_eq!(summary.status, "accepted", "{id}: {error:?}");
        assert_eq!(summary.message_type, "ORU^R01");
        assert_eq!(raw, message(id).as_bytes(), "{id} unframed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_bundle_arrives_whole() {
    let sandbox = Sandbox::start();
    let dir = tempfile::tempdir().unwrap();
    let body = bundle(3, 3_000_000);
    let id = mesh::send_in_chunks(
        &sandbox.url,
        NEIGHBOUR,
        JUNCTION,
        &write(dir.path(), "big.json", &body),
        Some(1_000_000),
    );
    let journal = journal(dir.path());
    let mut inbox = inbox_with(&sandbox, &journal, PASSWORD, &EventBus::default());
    let summary = inbox.poll_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(
        (summary.accepted, summary.acknowledged),
        (1, 1),
        "{summary:?}"
    );
    let (_, raw, _) = row(&journal, &id).await;
    assert!(
        raw == body,
        "reassembled byte-identical ({} vs {} bytes)",
        raw.len(),
        body.len()
    );
}

/// A message larger than the source's `max_message_bytes` (as received, or
/// once decompressed: a gzip of a few hundred KB can hold gigabytes) is not
/// read further: kept as rejected with what arrived of it (at most the
/// limit), and acknowledged, never a document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_is_kept_rejected_not_inflated() {
    let sandbox = Sandbox::start();
    let dir = tempfile::tempdir().unwrap();
    // 3 MB of a repeated note: tens of KB once gzipped, chunked or whole
    let body = bundle(5, 3_000_000);
    let chunked = mesh::send_in_chunks(
        &sandbox.url,
        NEIGHBOUR,
        JUNCTION,
        &write(dir.path(), "big.json", &body),
        Some(1_000_000),
    );
    let whole = mesh::send_in_chunks(
        &sandbox.url,
        NEIGHBOUR,
        JUNCTION,
        &write(dir.path(), "big2.json", &body),
        None,
    );
    let journal = journal(dir.path());
    let mut inbox = inbox_with(&sandbox, &journal, PASSWORD, &EventBus::default())
        .with_max_message_bytes(1_500_000);
    let summary = inbox.poll_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(
        (summary.rejected, summary.acknowledged, summary.failed),
        (2, 2, 0),
        "{summary:?}"
    );
    for id in [&chunked, &whole] {
        let (row, raw, error) = row(&journal, id).await;
        assert_eq!(row.status, "rejected");
        assert!(raw.len() <= 1_500_000, "{} bytes kept", raw.len());
        let error = error.unwrap();
        assert!(
            error.contains("larger than the source's max_message_bytes (1500000)"),
            "{error}"
        );
    }
    assert!(
        mesh::inbox(&sandbox.url, JUNCTION).is_empty(),
        "{}",
        sandbox.log()
    );
}

/// A source that names its senders and workflows takes only those: a message
/// from another mailbox, or under another workflow, is kept as rejected and
/// acknowledged, whatever it holds (HL7 over MESH too, whose MSH-3 no route
/// could check against the mailbox).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_or_workflow_the_source_does_not_name_is_kept_rejected() {
    let sandbox = Sandbox::start();
    let dir = tempfile::tempdir().unwrap();
    let hl7 = std::fs::read(harness::repo_root().join("samples/oru_r01_fbc_ue.hl7")).unwrap();
    let bundle_id = mesh::send(
        &sandbox.url,
        NEIGHBOUR,
        JUNCTION,
        &write(dir.path(), "a.json", &bundle(6, 500)),
    );
    let hl7_id = mesh::send(
        &sandbox.url,
        NEIGHBOUR,
        JUNCTION,
        &write(dir.path(), "r.hl7", &hl7),
    );
    // a REPORT comes from MESH, not from a sender: never refused as one
    let report = sandbox.add_report(JUNCTION, "20261120093000000000_ABCDEF", "08");
    let journal = journal(dir.path());
    let mut inbox = inbox_with(&sandbox, &journal, PASSWORD, &EventBus::default())
        .with_allowed(vec!["X26ABC3".into()], Vec::new());
    let summary = inbox.poll_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(
        (
            summary.accepted,
            summary.rejected,
            summary.reports,
            summary.acknowledged
        ),
        (0, 2, 1, 3),
        "{summary:?}"
    );
    let (row_of_report, _, _) = row(&journal, &report).await;
    assert_eq!(row_of_report.message_type, "MESH^REPORT");
    for id in [&bundle_id, &hl7_id] {
        let (row, _, error) = row(&journal, id).await;
        assert_eq!(row.status, "rejected");
        let error = error.unwrap();
        assert!(
            error.contains("mailbox `X26ABC2`, which is not among the source's senders (X26ABC3)"),
            "{error}"
        );
    }
    // the right mailbox under another workflow than the one named
    let id = mesh::send(
        &sandbox.url,
        NEIGHBOUR,
        JUNCTION,
        &write(dir.path(), "b.json", &bundle(7, 500)),
    );
    let mut inbox = inbox_with(&sandbox, &journal, PASSWORD, &EventBus::default()).with_allowed(
        vec!["X26ABC2".into(), "X26ABC3".into()],
        vec!["PATH_RESULTS".into()],
    );
    let summary = inbox.poll_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(
        (summary.rejected, summary.acknowledged),
        (1, 1),
        "{summary:?}"
    );
    let (_, _, error) = row(&journal, &id).await;
    assert!(error.unwrap().contains(
        "workflow `TEST_WORKFLOW`, which is not among the source's workflows (PATH_RESULTS)"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redownload_after_a_crash_adds_nothing_and_is_acknowledged() {
    let sandbox = Sandbox::start();
    let dir = tempfile::tempdir().unwrap();
    let body = bundle(4, 1_000);
    let id = mesh::send(
        &sandbox.url,
        NEIGHBOUR,
        JUNCTION,
        &write(dir.path(), "a.json", &body),
    );
    let hl7 = b"MSH|^~\\&|not a bundle".to_vec();
    let bad = mesh::send(
        &sandbox.url,
        NEIGHBOUR,
        JUNCTION,
        &write(dir.path(), "b.txt", &hl7),
    );
    let journal = journal(dir.path());
    // What a crash after the commit and before the acknowledgement leaves:
    // the rows in the journal, the messages still in the inbox.
    for (control_id, raw, status) in [
        (&id, &body, Status::Accepted),
        (&bad, &hl7, Status::Rejected),
    ] {
        journal
            .commit(vec![Incoming {
                listener: SOURCE.into(),
                peer: format!("mesh:{NEIGHBOUR}"),
                received_at: jiff::Timestamp::now(),
                sender: NEIGHBOUR.into(),
                control_id: control_id.clone(),
                message_type: "MESH^TEST_WORKFLOW".into(),
                version: String::new(),
                status,
                ack_code: None,
                ack: None,
                error: None,
                raw: raw.clone().into(),
            }])
            .await
            .unwrap();
    }
    let mut inbox = inbox_with(&sandbox, &journal, PASSWORD, &EventBus::default());
    let summary = inbox.poll_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(
        (summary.duplicates, summary.acknowledged, summary.accepted),
        (2, 2, 0),
        "{summary:?}"
    );
    assert!(mesh::inbox(&sandbox.url, JUNCTION).is_empty());
    // Still one row each.
    row(&journal, &id).await;
    row(&journal, &bad).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_or_mesh_down_keep_messages_until_fixed() {
    let mut sandbox = Sandbox::start();
    let dir = tempfile::tempdir().unwrap();
    let body = bundle(5, 1_000);
    let id = mesh::send(
        &sandbox.url,
        NEIGHBOUR,
        JUNCTION,
        &write(dir.path(), "a.json", &body),
    );
    let journal = journal(dir.path());

    // Secrets from files, as the config names them; the password is wrong.
    let password_file = write(dir.path(), "password", b"wrong-password\n");
    let key_file = write(dir.path(), "key", SHARED_KEY.as_bytes());
    let mut config = mailbox(&sandbox);
    config.password_file = Some(password_file.clone());
    config.shared_key_file = Some(key_file);
    let source = junction::delivery::SourceConfig {
        kind: junction::delivery::SourceKind::MeshInbox,
        mailbox: "junction".into(),
        poll_interval_secs: 60,
        max_message_bytes: junction::delivery::SourceConfig::DEFAULT_MAX_MESSAGE_BYTES,
        senders: Vec::new(),
        workflows: Vec::new(),
    };
    let metrics = Arc::new(Metrics::new());
    let mut inbox = MeshInbox::new(
        SOURCE,
        &source,
        config,
        journal.clone(),
        EventBus::default(),
        metrics.clone(),
    );
    // exported before any poll, so an alert on them fires for an inbox that
    // never succeeds after a start
    assert!(
        metrics
            .encode()
            .contains("junction_source_last_success_timestamp_seconds{source=\"mesh_inbox\"} 0"),
        "{}",
        metrics.encode()
    );
    let err = inbox
        .poll_once(&CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, MeshInboxError::List { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("mesh inbox `mesh_inbox`: cannot list the inbox: mesh refused the credentials of mailbox `X26ABC1`"),
        "{text}"
    );
    assert!(
        !text.contains("wrong-password"),
        "never shows the secret: {text}"
    );
    assert_eq!(
        mesh::inbox(&sandbox.url, JUNCTION),
        vec![id.clone()],
        "nothing lost"
    );
    assert!(journal
        .search(MessageQuery::default())
        .await
        .unwrap()
        .is_empty());

    // The password is fixed in its file: the next poll reads it again.
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    // But MESH is down now: a clear, retryable error; still nothing lost.
    sandbox.stop();
    let err = inbox
        .poll_once(&CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("mesh unavailable during inbox"),
        "{err}"
    );
    sandbox.restart();
    assert_eq!(
        mesh::inbox(&sandbox.url, JUNCTION),
        vec![id.clone()],
        "nothing lost"
    );

    let summary = inbox.poll_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(
        (summary.accepted, summary.acknowledged),
        (1, 1),
        "{summary:?}"
    );
    let (_, raw, _) = row(&journal, &id).await;
    assert_eq!(raw, body);
    assert!(mesh::inbox(&sandbox.url, JUNCTION).is_empty());
    // the failing polls are seen in the metrics, not only in the log
    let text = metrics.encode();
    assert!(
        text.contains("junction_source_polls_total{source=\"mesh_inbox\",outcome=\"failed\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("junction_source_polls_total{source=\"mesh_inbox\",outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("junction_source_last_success_timestamp_seconds{source=\"mesh_inbox\"}"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_source_stops_between_messages() {
    let sandbox = Sandbox::start();
    let dir = tempfile::tempdir().unwrap();
    let id = mesh::send(
        &sandbox.url,
        NEIGHBOUR,
        JUNCTION,
        &write(dir.path(), "a.json", &bundle(6, 500)),
    );
    let journal = journal(dir.path());
    let inbox = inbox_with(&sandbox, &journal, PASSWORD, &EventBus::default());
    let stop = CancellationToken::new();
    stop.cancel();
    // Cancelled before it starts: it lists, takes nothing, and returns.
    tokio::time::timeout(Duration::from_secs(90), inbox.run(stop))
        .await
        .expect("run returns once stopped");
    assert_eq!(mesh::inbox(&sandbox.url, JUNCTION), vec![id]);
    assert!(journal
        .search(MessageQuery::default())
        .await
        .unwrap()
        .is_empty());
}

/// Two nodes' handles on one PostgreSQL store (each opens its own).
fn two_nodes_stores(
    schema: &junction::store::testing::TestSchema,
    dir: &Path,
) -> (junction::store::RecordStore, junction::store::RecordStore) {
    let open = || {
        junction::store::RecordStore::open(&junction::store::RecordStoreConfig {
            path: dir.join("unused.db"),
            sync: SyncPolicy::Normal,
            postgres: Some(schema.target.clone()),
        })
        .unwrap()
    };
    (open(), open())
}

/// Two engine nodes sharing one PostgreSQL store, configured alike, poll one
/// mailbox: each poll holds the store's lease on it, so one node takes each
/// message, never both; a node finding the lease held skips that poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sharing_a_postgres_store_take_each_message_once() {
    use junction::store::testing::TestSchema;
    use junction::store::RecordStore;
    let sandbox = Sandbox::start();
    let dir = tempfile::tempdir().unwrap();
    let schema = TestSchema::create("mesh_lease");
    let (store_a, store_b) = two_nodes_stores(&schema, dir.path());
    // a key of this test's own: advisory locks span the database's schemas
    let key = format!("lease-test-{}", std::process::id());
    let node = |name: &str, store: &RecordStore| {
        let journal = journal(&dir.path().join(name));
        let inbox = inbox_with(&sandbox, &journal, PASSWORD, &EventBus::default())
            .with_lease(store.clone())
            .with_lease_key(&key);
        (journal, inbox)
    };
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    let (journal_a, mut inbox_a) = node("a", &store_a);
    let (journal_b, mut inbox_b) = node("b", &store_b);
    let mut sent = Vec::new();
    for i in 0..6 {
        sent.push(mesh::send(
            &sandbox.url,
            NEIGHBOUR,
            JUNCTION,
            &write(dir.path(), &format!("{i}.json"), &bundle(i + 1, 500)),
        ));
    }

    // node A's lease held (by hand here): node B does not poll at all
    let held = {
        let store = store_a.clone();
        let key = format!("mesh-inbox:{key}");
        tokio::task::spawn_blocking(move || store.try_lease(&key).unwrap())
            .await
            .unwrap()
            .expect("the lease is free")
    };
    let skipped = inbox_b.poll_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(skipped, PollSummary::default());
    assert_eq!(mesh::inbox(&sandbox.url, JUNCTION).len(), 6);
    // its session ended by the server (a restart, a terminated backend): the
    // lease is lost, and says so (a poll holding it stops before its next
    // message), and the other node can take it
    let ended: i64 = schema.with_client(|client| {
        client
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_locks \
                 WHERE locktype = 'advisory' AND classid = 7265 \
                 AND objid = (hashtext($1)::bigint & 4294967295)::oid",
                &[&format!("junction:lease:mesh-inbox:{key}")],
            )
            .unwrap()
            .len() as i64
    });
    assert_eq!(ended, 1);
    let held = tokio::task::spawn_blocking(move || {
        let alive = held.still_held();
        (held, alive)
    })
    .await
    .unwrap();
    assert!(!held.1, "a lease whose session ended is not held");
    drop(held);

    // both at once: each message journaled by one node alone
    let stop = CancellationToken::new();
    let (a, b) = tokio::join!(inbox_a.poll_once(&stop), inbox_b.poll_once(&stop));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.accepted + b.accepted, 6, "{a:?} {b:?}");
    assert!(mesh::inbox(&sandbox.url, JUNCTION).is_empty());
    let ids = |rows: Vec<junction::journal::MessageSummary>| -> Vec<String> {
        rows.into_iter().map(|r| r.control_id).collect()
    };
    let in_a = ids(journal_a.search(MessageQuery::default()).await.unwrap());
    let in_b = ids(journal_b.search(MessageQuery::default()).await.unwrap());
    assert_eq!(in_a.len() + in_b.len(), 6, "{in_a:?} {in_b:?}");
    for id in &sent {
        assert!(
            in_a.contains(id) != in_b.contains(id),
            "{id} journaled by exactly one node: {in_a:?} {in_b:?}"
        );
    }
}

/// A node that dies between journaling a message and acknowledging it (or
/// between claiming and journaling it) leaves the message in the inbox. Its
/// claim in the shared store keeps every other node from journaling it a
/// second time; the node itself, polling again after its restart, reads its
/// own journal: a message it journaled is acknowledged (not journaled again),
/// one it did not is journaled now. A message it had said it journaled is
/// acknowledged by whichever node polls first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dying_before_its_acknowledgement_leaves_its_messages_to_no_other_node() {
    use junction::store::testing::TestSchema;
    use junction::store::{MeshClaim, RecordStore};
    let sandbox = Sandbox::start();
    let dir = tempfile::tempdir().unwrap();
    let schema = TestSchema::create("mesh_claims");
    let (store_a, store_b) = two_nodes_stores(&schema, dir.path());
    let key = format!("claims-test-{}", std::process::id());
    let claims_key = format!("mesh-inbox:{key}");
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    let journal_a = journal(&dir.path().join("a"));
    let journal_b = journal(&dir.path().join("b"));
    assert_ne!(journal_a.node_id(), journal_b.node_id());
    let bodies: Vec<Vec<u8>> = (0..3).map(|i| bundle(i + 10, 600)).collect();
    let sent: Vec<String> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            mesh::send(
                &sandbox.url,
                NEIGHBOUR,
                JUNCTION,
                &write(dir.path(), &format!("{i}.json"), b),
            )
        })
        .collect();
    let (journaled, claimed_only, said_journaled) = (&sent[0], &sent[1], &sent[2]);

    // What node A left when it was killed: all three claimed; the first and
    // the third journaled (the third also said to be); none acknowledged.
    let claim = |store: &RecordStore, id: &str, node: &str| {
        let (store, key, id, node) = (
            store.clone(),
            claims_key.clone(),
            id.to_string(),
            node.to_string(),
        );
        async move {
            tokio::task::spawn_blocking(move || store.claim_mesh_message(&key, &id, &node).unwrap())
                .await
                .unwrap()
        }
    };
    for id in &sent {
        assert_eq!(
            claim(&store_a, id, journal_a.node_id()).await,
            MeshClaim::Fresh
        );
    }
    for (id, body) in [(journaled, &bodies[0]), (said_journaled, &bodies[2])] {
        journal_a
            .commit(vec![Incoming {
                listener: SOURCE.into(),
                peer: format!("mesh:{NEIGHBOUR}/{id}"),
                received_at: jiff::Timestamp::now(),
                sender: NEIGHBOUR.into(),
                control_id: id.clone(),
                message_type: "MESH^TEST_WORKFLOW".into(),
                version: String::new(),
                status: Status::Accepted,
                ack_code: None,
                ack: None,
                error: None,
                raw: body.clone().into(),
            }])
            .await
            .unwrap();
    }
    {
        let (store, key, id) = (store_a.clone(), claims_key.clone(), said_journaled.clone());
        tokio::task::spawn_blocking(move || store.mesh_message_taken(&key, &id).unwrap())
            .await
            .unwrap();
    }
    // Another node asking sees who has each.
    assert_eq!(
        claim(&store_b, journaled, journal_b.node_id()).await,
        MeshClaim::Taking {
            node: journal_a.node_id().to_string()
        }
    );
    assert_eq!(
        claim(&store_b, said_journaled, journal_b.node_id()).await,
        MeshClaim::Taken
    );

    // Node B polls while A is down: it journals none of them; it
    // acknowledges the one A said it journaled, and leaves the other two.
    let mut inbox_b = inbox_with(&sandbox, &journal_b, PASSWORD, &EventBus::default())
        .with_lease(store_b.clone())
        .with_lease_key(&key);
    let b = inbox_b.poll_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(
        (b.accepted, b.duplicates, b.failed, b.acknowledged),
        (0, 1, 2, 1),
        "{b:?}"
    );
    assert!(journal_b
        .search(MessageQuery::default())
        .await
        .unwrap()
        .is_empty());
    let mut left = mesh::inbox(&sandbox.url, JUNCTION);
    left.sort();
    let mut expected = vec![journaled.clone(), claimed_only.clone()];
    expected.sort();
    assert_eq!(left, expected);

    // Claims whose messages MESH expired long ago are forgotten at a poll
    // (one left by a node that never came back); a recent one is not.
    schema.with_client(|client| {
        client
            .execute(
                "INSERT INTO mesh_claims (source, message_id, node, state, claimed_at) VALUES \
                 ($1, 'EXPIRED-LONG-AGO', 'gone', 'taking', now() - interval '40 days'), \
                 ($1, 'NOT-LISTED-NOW', 'elsewhere', 'taking', now())",
                &[&claims_key],
            )
            .unwrap()
    });
    // Node A starts again (a new inbox on its journal): the message it had
    // journaled is acknowledged, the one it had only claimed is journaled now.
    let mut inbox_a = inbox_with(&sandbox, &journal_a, PASSWORD, &EventBus::default())
        .with_lease(store_a.clone())
        .with_lease_key(&key);
    let a = inbox_a.poll_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(
        (a.accepted, a.duplicates, a.failed, a.acknowledged),
        (1, 1, 0, 2),
        "{a:?}"
    );
    assert!(mesh::inbox(&sandbox.url, JUNCTION).is_empty());
    // each message journaled once, all by node A
    let in_a: Vec<String> = journal_a
        .search(MessageQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.control_id)
        .collect();
    assert_eq!(in_a.len(), 3, "{in_a:?}");
    for id in &sent {
        assert!(in_a.contains(id), "{id} in {in_a:?}");
    }
    // and no claim is left once every message is acknowledged, but the
    // recent one of a message this poll did not list
    let claims: Vec<String> = schema.with_client(|client| {
        client
            .query("SELECT message_id FROM mesh_claims", &[])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    });
    assert_eq!(claims, ["NOT-LISTED-NOW"]);
}
