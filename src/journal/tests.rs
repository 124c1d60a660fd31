//! Journal tests against a real SQLite file in a temporary folder.

use super::*;

fn config(dir: &tempfile::TempDir) -> StoreConfig {
    StoreConfig {
        path: dir.path().join("nested/data/journal.db"),
        sync: SyncPolicy::Full,
        ..StoreConfig::default()
    }
}

fn accepted(sender: &str, control_id: &str, message_type: &str, ack: &str) -> Incoming {
    Incoming {
        listener: "pas".into(),
        peer: "127.0.0.1:5000".into(),
        received_at: jiff::Timestamp::now(),
        sender: sender.into(),
        control_id: control_id.into(),
        message_type: message_type.into(),
        version: "2.4".into(),
        status: Status::Accepted,
        ack_code: Some("AA".into()),
        ack: Some(ack.into()),
        error: None,
        raw: Bytes::from(format!(
            "MSH|^~\\&|{sender}|||20260101||{message_type}|{control_id}|P|2.4\r"
        )),
    }
}

fn with_status(mut item: Incoming, status: Status, code: Option<&str>) -> Incoming {
    item.status = status;
    item.ack_code = code.map(str::to_string);
    item
}

fn query(f: impl FnOnce(&mut MessageQuery)) -> MessageQuery {
    let mut q = MessageQuery::default();
    f(&mut q);
    q
}

fn control_ids(rows: &[MessageSummary]) -> Vec<&str> {
    rows.iter().map(|r| r.control_id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_share_transactions_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let journal = Journal::open_with_metrics(&config(&dir), Arc::clone(&metrics)).unwrap();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let journal = journal.clone();
        tasks.push(tokio::spawn(async move {
            journal
                .commit(vec![accepted(
                    "PAS^RAL",
                    &format!("C{i}"),
                    "ADT^A01",
                    "ack",
                )])
                .await
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        let committed = task.await.unwrap().unwrap();
        assert_eq!(committed.len(), 1);
        assert!(matches!(committed[0], Committed::Stored { .. }));
        ids.push(committed[0].id());
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 300, "every commit got its own row id");
    let rows = journal
        .search(query(|q| q.limit = Some(1000)))
        .await
        .unwrap();
    assert_eq!(rows.len(), 300);
    // Every message went through exactly one group commit.
    let text = metrics.encode();
    assert!(
        text.contains("junction_journal_commit_batch_size_sum 300.0"),
        "{text}"
    );
    assert!(journal.is_healthy());
}

#[tokio::test]
async fn duplicates_get_the_stored_ack_and_are_not_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(&dir)).unwrap();
    let first = journal
        .commit(vec![accepted("PAS^RAL", "MSG1", "ADT^A01", "first ack")])
        .await
        .unwrap();
    let Committed::Stored { id } = first[0] else {
        panic!("first copy must be stored, got {first:?}");
    };
    let again = journal
        .commit(vec![accepted("PAS^RAL", "MSG1", "ADT^A01", "second ack")])
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![Committed::Duplicate {
            id,
            ack_code: Some("AA".into()),
            ack: Some("first ack".into()),
            differing: None,
        }]
    );
    // Same control id from another sender is a different message.
    let other = journal
        .commit(vec![accepted("LAB^RAL", "MSG1", "ORU^R01", "x")])
        .await
        .unwrap();
    assert!(matches!(other[0], Committed::Stored { .. }));
    // Rejected copies are kept but take no part in duplicate detection.
    let rejected = journal
        .commit(vec![
            with_status(
                accepted("PAS^RAL", "MSG1", "ADT^A01", "nak"),
                Status::Rejected,
                Some("AE"),
            ),
            with_status(
                accepted("PAS^RAL", "MSG2", "ADT^A01", "nak"),
                Status::Rejected,
                Some("AE"),
            ),
        ])
        .await
        .unwrap();
    assert!(rejected
        .iter()
        .all(|c| matches!(c, Committed::Stored { .. })));
    // A rejected MSG2 does not stop a corrected MSG2 from being accepted.
    let corrected = journal
        .commit(vec![accepted("PAS^RAL", "MSG2", "ADT^A01", "ok")])
        .await
        .unwrap();
    assert!(matches!(corrected[0], Committed::Stored { .. }));
    // Two copies inside one batch: the second is a duplicate of the first.
    let batch = journal
        .commit(vec![
            accepted("PAS^RAL", "MSG3", "ADT^A01", "a3"),
            accepted("PAS^RAL", "MSG3", "ADT^A01", "b3"),
        ])
        .await
        .unwrap();
    let stored_id = batch[0].id();
    assert_eq!(
        batch[1],
        Committed::Duplicate {
            id: stored_id,
            ack_code: Some("AA".into()),
            ack: Some("a3".into()),
            differing: None,
        }
    );
    // Messages without a control id cannot be told apart: both are stored.
    let blank = journal
        .commit(vec![
            accepted("PAS^RAL", "", "ADT^A01", "x"),
            accepted("PAS^RAL", "", "ADT^A01", "y"),
        ])
        .await
        .unwrap();
    assert!(blank.iter().all(|c| matches!(c, Committed::Stored { .. })));
    let msg1 = journal
        .search(query(|q| {
            q.control_id = Some("MSG1".into());
            q.sender = Some("PAS^RAL".into());
            q.status = Some("accepted".into());
        }))
        .await
        .unwrap();
    assert_eq!(msg1.len(), 1);
}

#[tokio::test]
async fn search_filters_and_orders_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(&dir)).unwrap();
    journal
        .commit(vec![
            accepted("PAS^RAL", "1", "ADT^A01", "a"),
            accepted("PAS^RAL", "2", "ADT^A08", "a"),
            accepted("LIMS^RAL", "3", "ORU^R01", "a"),
            accepted("PAS^BARNET", "4", "ADTX^Z01", "a"),
            with_status(accepted("", "", "", "a"), Status::Garbage, None),
            with_status(
                accepted("PAS^RAL", "6", "ADT^A01", "a"),
                Status::Rejected,
                Some("AR"),
            ),
        ])
        .await
        .unwrap();
    let all = journal.search(MessageQuery::default()).await.unwrap();
    assert_eq!(control_ids(&all), vec!["6", "", "4", "3", "2", "1"]);
    let adt = journal
        .search(query(|q| q.message_type = Some("ADT".into())))
        .await
        .unwrap();
    assert_eq!(control_ids(&adt), vec!["6", "2", "1"]);
    let a01 = journal
        .search(query(|q| q.message_type = Some("ADT^A01".into())))
        .await
        .unwrap();
    assert_eq!(control_ids(&a01), vec!["6", "1"]);
    let pas = journal
        .search(query(|q| q.sender = Some("PAS".into())))
        .await
        .unwrap();
    assert_eq!(control_ids(&pas), vec!["6", "4", "2", "1"]);
    let pas_ral = journal
        .search(query(|q| q.sender = Some("PAS^RAL".into())))
        .await
        .unwrap();
    assert_eq!(control_ids(&pas_ral), vec!["6", "2", "1"]);
    let garbage = journal
        .search(query(|q| q.status = Some("garbage".into())))
        .await
        .unwrap();
    assert_eq!(garbage.len(), 1);
    assert_eq!(garbage[0].ack_code, "");
    let rejected_a01 = journal
        .search(query(|q| {
            q.status = Some("rejected".into());
            q.message_type = Some("ADT^A01".into());
        }))
        .await
        .unwrap();
    assert_eq!(control_ids(&rejected_a01), vec!["6"]);
    assert_eq!(rejected_a01[0].ack_code, "AR");
    let by_id = journal
        .search(query(|q| {
            q.control_id = Some("3".into());
            q.sender = Some(String::new());
        }))
        .await
        .unwrap();
    assert_eq!(by_id[0].message_type, "ORU^R01");
    let two = journal.search(query(|q| q.limit = Some(2))).await.unwrap();
    assert_eq!(control_ids(&two), vec!["6", ""]);
    // the next page: older than the last id of this one, none skipped
    let next = journal
        .search(query(|q| {
            q.limit = Some(2);
            q.before = Some(two[1].id);
        }))
        .await
        .unwrap();
    assert_eq!(next[0].id, two[1].id - 1);
    assert!(next.iter().all(|m| m.id < two[1].id));
    assert!(all[0].received_at.ends_with('Z'));
}

#[tokio::test]
async fn limit_defaults_to_100_and_is_capped_at_1000() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(&dir)).unwrap();
    let items: Vec<_> = (0..1001)
        .map(|i| accepted("PAS^RAL", &i.to_string(), "ADT^A01", "a"))
        .collect();
    journal.commit(items).await.unwrap();
    assert_eq!(
        journal.search(MessageQuery::default()).await.unwrap().len(),
        100
    );
    let capped = journal
        .search(query(|q| q.limit = Some(5000)))
        .await
        .unwrap();
    assert_eq!(capped.len(), 1000);
}

#[tokio::test]
async fn data_survives_dropping_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let raw =
        Bytes::from_static(b"MSH|^~\\&|PAS|RAL|||20260101||ADT^A01|X1|P|2.4\rPID|||\xe9\xff\r");
    let id = {
        let journal = Journal::open(&cfg).unwrap();
        let mut item = accepted("PAS^RAL", "X1", "ADT^A01", "the ack");
        item.raw = raw.clone();
        journal.commit(vec![item]).await.unwrap()[0].id()
    };
    let journal = Journal::open(&cfg).unwrap();
    let detail = journal.get(id).await.unwrap().expect("row survives");
    assert_eq!(detail.summary.control_id, "X1");
    assert_eq!(detail.summary.status, "accepted");
    assert_eq!(detail.ack.as_deref(), Some("the ack"));
    assert_eq!(detail.size_bytes, raw.len());
    assert_eq!(detail.version, "2.4");
    assert_eq!(journal.raw(id).await.unwrap().as_deref(), Some(&raw[..]));
    // And duplicate detection still knows it.
    let again = journal
        .commit(vec![accepted("PAS^RAL", "X1", "ADT^A01", "new ack")])
        .await
        .unwrap();
    assert!(matches!(again[0], Committed::Duplicate { id: d, .. } if d == id));
    assert_eq!(journal.get(id + 1000).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_normal_commits_and_reads_back_too() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        sync: SyncPolicy::Normal,
        ..config(&dir)
    };
    let journal = Journal::open(&cfg).unwrap();
    assert_eq!(journal.sync_policy(), SyncPolicy::Normal);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let journal = journal.clone();
        tasks.push(tokio::spawn(async move {
            journal
                .commit(vec![accepted("PAS^RAL", &format!("N{i}"), "ADT^A01", "a")])
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        assert!(matches!(task.await.unwrap()[0], Committed::Stored { .. }));
    }
    let rows = journal
        .search(query(|q| q.limit = Some(1000)))
        .await
        .unwrap();
    assert_eq!(rows.len(), 50);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    drop(Journal::open(&cfg).unwrap());
    let conn = rusqlite::Connection::open(&cfg.path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = Journal::open(&cfg).unwrap_err();
    assert!(
        matches!(err, JournalError::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_version_1_journal_is_upgraded_in_place_and_keeps_its_messages() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    {
        // A journal as the previous build left it: schema version 1 only.
        std::fs::create_dir_all(cfg.path.parent().unwrap()).unwrap();
        let conn = crate::db::open_writer(&cfg.path, cfg.sync, 1, sqlite::SCHEMA_V1).unwrap();
        conn.execute(
            "INSERT INTO messages (listener, peer, received_at, sender, control_id, message_type,
             version, status, ack_code, ack, error, raw, size)
             VALUES ('pas', 'p', '2026-01-01T00:00:00.000000Z', 'PAS^RAL', 'OLD1', 'ADT^A01',
             '2.4', 'accepted', 'AA', 'MSA|AA', NULL, X'4D5348', 3)",
            [],
        )
        .unwrap();
    }
    let journal = Journal::open(&cfg).unwrap();
    let conn = rusqlite::Connection::open(&cfg.path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, sqlite::SCHEMA_VERSION);
    // The old message is there, not yet routed: the pipeline will take it.
    assert_eq!(journal.routing_cursor().await.unwrap(), 0);
    let pending = journal.accepted_after(0, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].control_id, "OLD1");
    assert_eq!(&pending[0].raw[..], b"MSH");
    // Reopening an upgraded file changes nothing.
    // An upgraded file gets a node id; reopening it changes nothing, the id
    // neither.
    let node = journal.node_id().to_string();
    assert_eq!(node.len(), 32, "{node}");
    assert!(node.bytes().all(|b| b.is_ascii_hexdigit()), "{node}");
    drop(journal);
    let journal = Journal::open(&cfg).unwrap();
    assert_eq!(journal.accepted_after(0, 10).await.unwrap().len(), 1);
    assert!(journal.queue_depths().await.unwrap().is_empty());
    assert_eq!(journal.node_id(), node);
    // another journal is another node
    let other = tempfile::tempdir().unwrap();
    assert_ne!(Journal::open(&config(&other)).unwrap().node_id(), node);
}

#[tokio::test]
async fn a_version_2_queue_gets_sizes_and_drops_delivered_documents_on_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    std::fs::create_dir_all(cfg.path.parent().unwrap()).unwrap();
    {
        let conn = crate::db::open_writer_migrating(
            &cfg.path,
            cfg.sync,
            &[sqlite::SCHEMA_V1, queue::SCHEMA_V2],
        )
        .unwrap();
        conn.execute_batch(
            "INSERT INTO messages (id, listener, peer, received_at, sender, control_id,
             message_type, version, status, raw, size)
             VALUES (1, 'pas', 'p', 't', 'S', 'C1', 'ADT^A01', '2.4', 'accepted', X'00', 1);
             INSERT INTO routings (message_id, outcome, routes, routed_at)
             VALUES (1, 'routed', '[]', 0);
             INSERT INTO deliveries (id, message_id, routing_id, destination, mapping, routes,
               patient_key, nhs_numbers, document, status, next_attempt_at, created_at, age_from)
             VALUES (1, 1, 1, 'a', 'm', '[]', 'p', '', X'0102030405', 'delivered', 0, 0, 0),
                    (2, 1, 1, 'b', 'm', '[]', 'p', '', X'010203', 'pending', 0, 0, 0);",
        )
        .unwrap();
    }
    let journal = Journal::open(&cfg).unwrap();
    let delivered = journal.delivery(1).await.unwrap().unwrap();
    let pending = journal.delivery(2).await.unwrap().unwrap();
    assert_eq!((delivered.size_bytes, pending.size_bytes), (5, 3));
    let conn = rusqlite::Connection::open(&cfg.path).unwrap();
    let lengths: Vec<i64> = conn
        .prepare("SELECT length(document) FROM deliveries ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(lengths, vec![0, 3]);
}

/// Commits `item` received `days_ago`, routes it (when `delivery` is given:
/// one delivery that then ends in that status; `Some(None)`: routed, nothing
/// queued), and returns its id.
async fn old_message(
    journal: &Journal,
    control_id: &str,
    status: Status,
    days_ago: i64,
    delivery: Option<Option<&str>>,
) -> i64 {
    let mut item = with_status(
        accepted("PAS^RAL", control_id, "ADT^A01", "ack"),
        status,
        Some("AA"),
    );
    item.received_at = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * days_ago);
    let id = journal.commit(vec![item]).await.unwrap()[0].id();
    let Some(delivery) = delivery else {
        return id;
    };
    let deliveries = match delivery {
        Some(_) => vec![new_delivery(
            "store",
            &format!("p-{control_id}"),
            Vec::new(),
        )],
        None => Vec::new(),
    };
    let out = journal
        .queue_write(vec![QueueOp::Route(NewRouting {
            message_id: id,
            replay: false,
            outcome: if deliveries.is_empty() {
                RoutingOutcome::Unrouted
            } else {
                RoutingOutcome::Routed
            },
            routes: Vec::new(),
            error: None,
            at_ms: 0,
            deliveries,
            registrations: Vec::new(),
        })])
        .await
        .unwrap();
    let delivery_id = match &out[0] {
        QueueOutcome::Routed { deliveries, .. } => deliveries.first().copied(),
        other => panic!("{other:?}"),
    };
    let op = match (delivery, delivery_id) {
        (Some("delivered"), Some(d)) => Some(QueueOp::Delivered {
            id: d,
            attempts: 1,
            remote_ref: Some(format!("REF-{control_id}")),
            at_ms: 0,
        }),
        (Some("dead"), Some(d)) => Some(QueueOp::Dead {
            id: d,
            attempts: 1,
            error: "gone".into(),
            at_ms: 0,
        }),
        (Some("withheld"), Some(d)) => Some(QueueOp::Withheld {
            id: d,
            reason: "objection".into(),
            at_ms: 0,
        }),
        _ => None,
    };
    if let Some(op) = op {
        assert_eq!(
            journal.queue_write(vec![op]).await.unwrap()[0],
            QueueOutcome::Updated(1)
        );
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_only_old_messages_whose_story_is_over() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(&dir)).unwrap();
    let delivered = old_message(
        &journal,
        "DELIVERED",
        Status::Accepted,
        10,
        Some(Some("delivered")),
    )
    .await;
    let pending = old_message(
        &journal,
        "PENDING",
        Status::Accepted,
        10,
        Some(Some("pending")),
    )
    .await;
    let dead = old_message(&journal, "DEAD", Status::Accepted, 10, Some(Some("dead"))).await;
    let withheld = old_message(
        &journal,
        "WITHHELD",
        Status::Accepted,
        10,
        Some(Some("withheld")),
    )
    .await;
    let unrouted_outcome =
        old_message(&journal, "UNROUTED", Status::Accepted, 10, Some(None)).await;
    let not_routed = old_message(&journal, "NOTYET", Status::Accepted, 10, None).await;
    let rejected = old_message(&journal, "REJECTED", Status::Rejected, 10, None).await;
    // a kept differing resend, replayed, whose delivery is still pending
    let replayed_resend = old_message(
        &journal,
        "RESENT",
        Status::Rejected,
        10,
        Some(Some("pending")),
    )
    .await;
    let recent = old_message(&journal, "RECENT", Status::Rejected, 1, None).await;
    let newest_routed = old_message(
        &journal,
        "NEWEST",
        Status::Accepted,
        10,
        Some(Some("delivered")),
    )
    .await;
    let cursor = journal.routing_cursor().await.unwrap();
    assert_eq!(cursor, newest_routed);

    let before = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * 5);
    assert_eq!(journal.prune(before).await.unwrap(), 4);
    for id in [delivered, withheld, unrouted_outcome, rejected] {
        assert!(journal.get(id).await.unwrap().is_none(), "{id} was pruned");
        assert!(journal.routings(id).await.unwrap().is_empty());
    }
    for id in [
        pending,
        dead,
        not_routed,
        recent,
        newest_routed,
        replayed_resend,
    ] {
        assert!(journal.get(id).await.unwrap().is_some(), "{id} was kept");
    }
    assert!(!journal.routings(dead).await.unwrap().is_empty());
    // the pipeline's cursor did not move back, and a second pass finds nothing
    assert_eq!(journal.routing_cursor().await.unwrap(), cursor);
    assert_eq!(journal.prune(before).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_works_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(&dir)).unwrap();
    let n = PRUNE_BATCH * 2 + 7;
    let mut items = Vec::with_capacity(n);
    for i in 0..n {
        let mut item = with_status(
            accepted("PAS^RAL", &format!("G{i}"), "", "ack"),
            Status::Garbage,
            None,
        );
        item.received_at = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(48);
        items.push(item);
    }
    journal.commit(items).await.unwrap();
    let before = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24);
    assert_eq!(journal.prune(before).await.unwrap(), n);
    assert!(journal
        .search(query(|q| q.status = Some("garbage".into())))
        .await
        .unwrap()
        .is_empty());
}

#[test]
fn a_failed_commit_holds_until_messages_are_stored_again_or_the_hold_passes() {
    let state = WriterState::new();
    assert!(state.healthy(), "healthy before any commit");
    state.record(true, true);
    assert!(state.healthy());
    // a full disk: the commit of messages fails
    state.record(false, false);
    assert!(!state.healthy());
    // the pipeline's small routing write still fits: not a sign of room
    state.record(true, false);
    assert!(
        !state.healthy(),
        "a write without messages does not end the hold"
    );
    // messages are stored again
    state.record(true, true);
    assert!(state.healthy());

    // no messages since the failure, but the hold has passed
    let long_ago = std::time::Instant::now()
        .checked_sub(UNHEALTHY_HOLD + std::time::Duration::from_secs(1))
        .expect("the clock is past the hold");
    let state = WriterState {
        started: long_ago,
        ..WriterState::new()
    };
    state.last_failure.store(1, Ordering::Release);
    state.last_failure_ms.store(1, Ordering::Release);
    state.commits.store(1, Ordering::Release);
    assert!(state.healthy(), "a failure older than the hold");
    state.record(false, false);
    assert!(!state.healthy(), "a new failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_with_other_content_is_answered_as_a_resend_and_kept_as_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(&dir)).unwrap();
    let mut first = accepted("PAS^RAL", "C1", "ADT^A01", "the ack");
    first.raw = Bytes::from_static(
        b"MSH|^~\\&|PAS|RAL|JUNCTION|LCR|20260101120000||ADT^A01|C1|P|2.4\rPID|1||123\r",
    );
    let id = journal.commit(vec![first.clone()]).await.unwrap()[0].id();
    // the same message sent again, MSH-7 set anew and LF line ends: a resend
    let mut resend = first.clone();
    resend.raw = Bytes::from(
        String::from_utf8(first.raw.to_vec())
            .unwrap()
            .replace("20260101120000", "20260101120501")
            .replace('\r', "\n"),
    );
    let again = journal.commit(vec![resend]).await.unwrap();
    assert!(
        matches!(again[0], Committed::Duplicate { id: d, differing: None, .. } if d == id),
        "{again:?}"
    );
    // another message under the same control id (the sender's counter started again)
    let mut other = first.clone();
    other.raw = Bytes::from(format!(
        "{}PID|1||OTHER\r",
        String::from_utf8(first.raw.to_vec()).unwrap()
    ));
    let answered = journal.commit(vec![other.clone()]).await.unwrap();
    let Committed::Duplicate {
        id: d,
        ack,
        differing: Some(kept),
        ..
    } = &answered[0]
    else {
        panic!("a duplicate with its bytes kept, got {answered:?}");
    };
    assert_eq!((*d, ack.as_deref()), (id, Some("the ack")));
    let detail = journal.get(*kept).await.unwrap().expect("kept");
    assert_eq!(detail.summary.status, "rejected");
    assert_eq!(detail.summary.control_id, "C1");
    let error = detail.error.unwrap();
    assert!(error.contains(&format!("message {id}")), "{error}");
    assert!(error.contains("content differs"), "{error}");
    assert_eq!(
        journal.raw(*kept).await.unwrap().as_deref(),
        Some(&other.raw[..])
    );
    // that copy sent again (its ACK lost; a MESH message downloaded again
    // after a crash before its acknowledge): the row it has, no other
    let again = journal.commit(vec![other.clone()]).await.unwrap();
    assert!(
        matches!(&again[0], Committed::Duplicate { id: d, differing: Some(k), .. } if *d == id && k == kept),
        "{again:?}"
    );
    let rows = journal
        .search(MessageQuery {
            control_id: Some("C1".into()),
            ..MessageQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    // it can be replayed (routed as a new message once someone has looked);
    // other rejected rows cannot
    let replayable = journal
        .accepted_message(*kept)
        .await
        .unwrap()
        .expect("replayable");
    assert_eq!(replayable.raw, other.raw);
    let nak = journal
        .commit(vec![with_status(
            accepted("PAS^RAL", "C2", "ADT^A01", "nak"),
            Status::Rejected,
            Some("AR"),
        )])
        .await
        .unwrap()[0]
        .id();
    assert!(journal.accepted_message(nak).await.unwrap().is_none());
    // and the original is still the one accepted row
    let accepted_rows = journal
        .search(MessageQuery {
            control_id: Some("C1".into()),
            status: Some("accepted".into()),
            ..MessageQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(accepted_rows.len(), 1);
    assert_eq!(accepted_rows[0].id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_reference_finds_the_message_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(&dir)).unwrap();
    // sent: a delivery the destination called REF-SENT (a MESH message id)
    let sent = old_message(
        &journal,
        "SENT",
        Status::Accepted,
        0,
        Some(Some("delivered")),
    )
    .await;
    // received over MESH: the peer names the mailbox and the MESH message
    let mesh_row = |control_id: &str, peer: &str| Incoming {
        peer: peer.into(),
        ..accepted("WINPATH^RAL", control_id, "ORU^R01", "")
    };
    let committed = journal
        .commit(vec![
            mesh_row("LAB1", "mesh:X26ABC2/20261123101500_AAAAAA"),
            // a Bundle journaled before peers named the MESH message: its
            // control id is the MESH message id
            mesh_row("20261101090000_BBBBBB", "mesh:X26ABC2"),
            // a listener's message whose control id looks like one
            mesh_row("20261101090000_CCCCCC", "127.0.0.1:50000"),
        ])
        .await
        .unwrap();
    let ids: Vec<i64> = committed.iter().map(Committed::id).collect();
    let found = |reference: &str| {
        let journal = journal.clone();
        let reference = reference.to_string();
        async move {
            journal
                .search(MessageQuery {
                    remote_ref: Some(reference),
                    ..MessageQuery::default()
                })
                .await
                .unwrap()
                .iter()
                .map(|m| m.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(found("REF-SENT").await, vec![sent]);
    assert_eq!(found("20261123101500_AAAAAA").await, vec![ids[0]]);
    assert_eq!(found("20261101090000_BBBBBB").await, vec![ids[1]]);
    assert!(found("20261101090000_CCCCCC").await.is_empty());
    assert!(found("X26ABC2").await.is_empty());
    assert!(found("REF").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_reported_undelivered_is_dead_and_is_replayed_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(&dir)).unwrap();
    let message = old_message(
        &journal,
        "SENT",
        Status::Accepted,
        0,
        Some(Some("delivered")),
    )
    .await;
    let delivered = journal
        .deliveries(DeliveryFilter {
            remote_ref: Some("REF-SENT".into()),
            ..DeliveryFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].message_id, message);
    let id = delivered[0].id;
    let not_delivered = |id| QueueOp::NotDelivered {
        id,
        error: "mesh report: status code 14".into(),
        at_ms: 5,
    };
    assert_eq!(
        journal.queue_write(vec![not_delivered(id)]).await.unwrap()[0],
        QueueOutcome::Updated(1)
    );
    let row = journal.delivery(id).await.unwrap().unwrap();
    assert_eq!(row.status, DeliveryStatus::Dead);
    assert_eq!(
        row.last_error.as_deref(),
        Some("mesh report: status code 14")
    );
    // the same report read again changes nothing
    assert_eq!(
        journal.queue_write(vec![not_delivered(id)]).await.unwrap()[0],
        QueueOutcome::Updated(0)
    );
    // its document was dropped when it was delivered: no retry sends an
    // empty body (it is replayed instead), by id or with every dead letter
    assert_eq!(
        journal
            .queue_write(vec![QueueOp::Retry { id, now_ms: 6 }])
            .await
            .unwrap(),
        vec![QueueOutcome::Updated(0)]
    );
    for what in [RetryWhat::Ids(vec![id]), RetryWhat::Dead(None)] {
        assert!(journal.retry_plan(what).await.unwrap().retryable.is_empty());
    }
    assert_eq!(
        journal.delivery(id).await.unwrap().unwrap().status,
        DeliveryStatus::Dead
    );
    // replayed to that destination and delivered: the dead letter is settled
    // (no alarm left that nobody could clear), its reason kept
    let again = replay_to_store(&journal, message, "p-SENT").await;
    journal
        .queue_write(vec![QueueOp::Delivered {
            id: again,
            attempts: 1,
            remote_ref: Some("REF-AGAIN".into()),
            at_ms: 8,
        }])
        .await
        .unwrap();
    let row = journal.delivery(id).await.unwrap().unwrap();
    assert_eq!(row.status, DeliveryStatus::Delivered);
    assert_eq!(
        row.last_error.as_deref(),
        Some(
            format!("mesh report: status code 14; settled: delivered again as delivery {again}")
                .as_str()
        )
    );
    assert_eq!(row.remote_ref.as_deref(), Some("REF-SENT"));
    // a pending delivery is not "not delivered"
    let pending = old_message(&journal, "WAIT", Status::Accepted, 0, Some(Some("pending"))).await;
    let row = &journal
        .deliveries(DeliveryFilter {
            message_id: Some(pending),
            ..DeliveryFilter::default()
        })
        .await
        .unwrap()[0];
    assert_eq!(
        journal
            .queue_write(vec![not_delivered(row.id)])
            .await
            .unwrap()[0],
        QueueOutcome::Updated(0)
    );
}

/// A dead letter a MESH report made, replayed once the patient objects: the
/// replay is withheld, and the dead letter settled so (the answer for that
/// document there is final), not left dead for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withheld_replay_settles_the_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(&dir)).unwrap();
    let message = old_message(
        &journal,
        "OBJ",
        Status::Accepted,
        0,
        Some(Some("delivered")),
    )
    .await;
    let id = journal
        .deliveries(DeliveryFilter {
            message_id: Some(message),
            ..DeliveryFilter::default()
        })
        .await
        .unwrap()[0]
        .id;
    journal
        .queue_write(vec![QueueOp::NotDelivered {
            id,
            error: "mesh report: status code 14".into(),
            at_ms: 5,
        }])
        .await
        .unwrap();
    let again = replay_to_store(&journal, message, "p-OBJ").await;
    journal
        .queue_write(vec![QueueOp::Withheld {
            id: again,
            reason: "the patient objects".into(),
            at_ms: 8,
        }])
        .await
        .unwrap();
    let row = journal.delivery(id).await.unwrap().unwrap();
    assert_eq!(row.status, DeliveryStatus::Withheld);
    assert_eq!(
        row.last_error.as_deref(),
        Some(
            format!("mesh report: status code 14; settled: withheld as delivery {again}").as_str()
        )
    );
}

/// A document of mapping `adt` (route `r`) for `destination`, under patient
/// key `key`, its patient known by `identities`.
fn new_delivery(destination: &str, key: &str, identities: Vec<String>) -> NewDelivery {
    NewDelivery {
        destination: destination.into(),
        mapping: "adt".into(),
        routes: vec!["r".into()],
        patient_key: key.into(),
        identities,
        nhs_numbers: Vec::new(),
        document: Bytes::from_static(b"{}"),
        last_error: None,
    }
}

/// A replay of `message` to `store` (one delivery row, patient key `key`): its row.
async fn replay_to_store(journal: &Journal, message: i64, key: &str) -> i64 {
    let replayed = journal
        .queue_write(vec![QueueOp::Route(NewRouting {
            message_id: message,
            replay: true,
            outcome: RoutingOutcome::Routed,
            routes: Vec::new(),
            error: None,
            at_ms: 7,
            deliveries: vec![new_delivery("store", key, Vec::new())],
            registrations: Vec::new(),
        })])
        .await
        .unwrap();
    match &replayed[0] {
        QueueOutcome::Routed { deliveries, .. } => deliveries[0],
        other => panic!("{other:?}"),
    }
}

/// A patient sent with an MRN alone and then traced has a new key (their
/// Patient id moves to the NHS number): a document under the new key waits
/// behind their documents still queued under the old one, found by the
/// identifiers they share, and goes once those are settled; a document of
/// another patient does not wait.
#[tokio::test]
async fn a_traced_patients_document_waits_behind_their_documents_under_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(&dir)).unwrap();
    let mrn = "identifier|urn:junction:local-id:ral:mr|RAL123";
    let route = |control_id: &'static str, key: &'static str, identities: Vec<&str>| {
        let identities: Vec<String> = identities.into_iter().map(str::to_string).collect();
        let journal = journal.clone();
        async move {
            let id = journal
                .commit(vec![accepted("PAS^RAL", control_id, "ADT^A08", "ack")])
                .await
                .unwrap()[0]
                .id();
            let out = journal
                .queue_write(vec![QueueOp::Route(NewRouting {
                    message_id: id,
                    replay: false,
                    outcome: RoutingOutcome::Routed,
                    routes: vec!["r".into()],
                    error: None,
                    at_ms: 1,
                    deliveries: vec![new_delivery("mesh", key, identities)],
                    registrations: Vec::new(),
                })])
                .await
                .unwrap();
            match &out[0] {
                QueueOutcome::Routed { deliveries, .. } => deliveries[0],
                other => panic!("{other:?}"),
            }
        }
    };
    let before = route("C1", "key-mrn", vec![mrn]).await;
    let traced = route(
        "C2",
        "key-nhs",
        vec![
            mrn,
            "identifier|https://fhir.nhs.uk/Id/nhs-number|9434765919",
        ],
    )
    .await;
    let other = route(
        "C3",
        "key-other",
        vec!["identifier|urn:junction:local-id:ral:mr|RAL999"],
    )
    .await;
    let due = |journal: Journal| async move {
        let mut ids: Vec<i64> = journal
            .due_deliveries("mesh".into(), i64::MAX, 10)
            .await
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        due(journal.clone()).await,
        vec![before, other],
        "the traced one waits"
    );
    journal
        .queue_write(vec![QueueOp::Delivered {
            id: before,
            attempts: 1,
            remote_ref: None,
            at_ms: 2,
        }])
        .await
        .unwrap();
    assert_eq!(due(journal.clone()).await, vec![traced, other]);
    // once the old key's line is empty, the new key is a line of its own again
    journal
        .queue_write(vec![QueueOp::Delivered {
            id: traced,
            attempts: 1,
            remote_ref: None,
            at_ms: 3,
        }])
        .await
        .unwrap();
    let later = route("C4", "key-nhs", vec![mrn]).await;
    assert!(due(journal.clone()).await.contains(&later));
}

/// The newer messages a replay's answer names are counted, and only the
/// newest few listed: a patient's line can hold thousands.
#[tokio::test]
async fn newer_messages_there_are_counted_and_the_newest_listed() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(&dir)).unwrap();
    let mut rows = Vec::new();
    let mut messages = Vec::new();
    for n in 0..15 {
        let control_id = format!("N{n}");
        let id = journal
            .commit(vec![accepted("PAS^RAL", &control_id, "ADT^A08", "ack")])
            .await
            .unwrap()[0]
            .id();
        messages.push(id);
        rows.push(replay_to_store(&journal, id, "one-patient").await);
    }
    let newer = journal.newer_there(vec![rows[0]]).await.unwrap();
    assert_eq!(newer.len(), 1);
    assert_eq!(newer[0].count, 14);
    assert_eq!(newer[0].messages, messages[5..].to_vec());
    assert!(journal
        .newer_there(vec![rows[14]])
        .await
        .unwrap()
        .is_empty());
}
