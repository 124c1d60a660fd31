//! Scheduling: the retry policy as data, then schedulers over a real journal
//! with recording destinations.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::delivery::queue::{DeliveryHandle, DeliveryQueue};
use crate::delivery::testing::*;
use crate::delivery::Delivered;
use crate::journal::{
    DeliveryFilter, DeliveryRow, DeliveryStatus, Journal, NewDelivery, NewRouting, QueueOutcome,
    RetryPlan, RetryWhat, RoutingOutcome,
};
use crate::telemetry::events::EventBus;
use crate::telemetry::metrics::Metrics;

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        max_age_ms: 60_000,
        backoff_initial_ms: 1_000,
        backoff_max_ms: 10_000,
    }
}

#[test]
fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
    let p = policy();
    // (attempts, uncapped-or-capped base)
    for (attempts, base) in [
        (1, 1_000),
        (2, 2_000),
        (3, 4_000),
        (4, 8_000),
        (5, 10_000),
        (40, 10_000),
        (u32::MAX, 10_000),
    ] {
        assert_eq!(p.backoff_ms(attempts, 0.0), base / 2, "attempt {attempts}");
        assert_eq!(p.backoff_ms(attempts, 1.0), base, "attempt {attempts}");
        for _ in 0..200 {
            let wait = p.backoff_ms(attempts, fastrand::f64());
            assert!(
                (base / 2..=base).contains(&wait),
                "attempt {attempts}: {wait}"
            );
        }
    }
    // Jitter actually spreads the waits.
    let waits: BTreeSet<u64> = (0..50).map(|_| p.backoff_ms(3, fastrand::f64())).collect();
    assert!(waits.len() > 10, "{waits:?}");
}

/// By default a destination that is down keeps its rows for `max_age_secs`
/// (7 days) however many attempts that takes: an outage of hours or days
/// dead-letters nothing, and the queue drains in order when it comes back.
#[test]
fn by_default_an_outage_dead_letters_nothing_until_max_age() {
    let p = RetryPolicy::from_config(&crate::delivery::DestinationConfig::new(
        crate::delivery::DestinationKind::Mesh,
    ));
    let down = DeliveryError::retry("mesh unavailable during handshake");
    let day = 24 * 3600 * 1000;
    // ~2,900 attempts at the 300 s cap over 6 days: still retried
    for attempts in [20, 100, 2_900] {
        assert!(
            matches!(
                p.after_failure(attempts, 0, 6 * day, &down, 0.5),
                Decision::Retry { .. }
            ),
            "attempt {attempts}"
        );
    }
    assert!(matches!(
        p.after_failure(3_000, 0, 7 * day, &down, 0.5),
        Decision::Dead(reason) if reason.contains("max_age_secs 604800")
    ));
    // a set limit still applies
    let mut config =
        crate::delivery::DestinationConfig::new(crate::delivery::DestinationKind::Mesh);
    config.max_attempts = Some(20);
    let p = RetryPolicy::from_config(&config);
    assert!(matches!(
        p.after_failure(20, 0, 1_000, &down, 0.5),
        Decision::Dead(_)
    ));
}

#[test]
fn failures_retry_until_attempts_or_age_run_out_and_permanent_errors_die_at_once() {
    let p = policy();
    let retry = DeliveryError::retry("HTTP 503");
    let check =
        |attempts, age_ms, err: &DeliveryError| p.after_failure(attempts, 0, age_ms, err, 0.0);
    assert_eq!(check(1, 10, &retry), Decision::Retry { at_ms: 10 + 500 });
    assert_eq!(check(4, 10, &retry), Decision::Retry { at_ms: 10 + 4_000 });
    match check(5, 10, &retry) {
        Decision::Dead(why) => assert_eq!(why, "gave up after 5 attempt(s): HTTP 503"),
        other => panic!("{other:?}"),
    }
    match check(1, 60_000, &retry) {
        Decision::Dead(why) => assert!(why.starts_with("gave up after 60s queued"), "{why}"),
        other => panic!("{other:?}"),
    }
    match check(1, 10, &DeliveryError::permanent("HTTP 400")) {
        Decision::Dead(why) => assert_eq!(why, "permanent error: HTTP 400"),
        other => panic!("{other:?}"),
    }
}

/// Queues one synthetic document per (control id, patient) directly.
async fn enqueue(journal: &Journal, rows: &[(&str, &str)], destination: &str) -> Vec<i64> {
    let mut ids = Vec::new();
    for (control_id, patient) in rows {
        let message_id = commit(journal, "pas", control_id, &format!("MSH|{control_id}")).await;
        let document = Bytes::from(format!("{{\"doc\":\"{control_id}\"}}"));
        ids.push(route_row(journal, message_id, false, patient, destination, document).await);
    }
    ids
}

/// A replay of `message_id` to `destination`: its new (pending) row.
async fn replay_row(journal: &Journal, message_id: i64, patient: &str, destination: &str) -> i64 {
    route_row(
        journal,
        message_id,
        true,
        patient,
        destination,
        Bytes::from_static(b"{}"),
    )
    .await
}

/// Routes `message_id` to `destination` with `document`: its new row.
async fn route_row(
    journal: &Journal,
    message_id: i64,
    replay: bool,
    patient: &str,
    destination: &str,
    document: Bytes,
) -> i64 {
    let out = journal
        .queue_write(vec![crate::journal::QueueOp::Route(NewRouting {
            message_id,
            replay,
            outcome: RoutingOutcome::Routed,
            routes: vec!["r".to_string()],
            error: None,
            at_ms: now_ms(),
            deliveries: vec![NewDelivery {
                destination: destination.to_string(),
                mapping: "m".to_string(),
                routes: vec!["r".to_string()],
                patient_key: patient.to_string(),
                identities: Vec::new(),
                nhs_numbers: vec![format!("nhs-{patient}")],
                document,
                last_error: None,
            }],
            registrations: Vec::new(),
        })])
        .await
        .unwrap();
    match &out[0] {
        QueueOutcome::Routed { deliveries, .. } => deliveries[0],
        other => panic!("{other:?}"),
    }
}

fn start(journal: &Journal, dests: Vec<Destination>) -> DeliveryQueue {
    start_with_events(journal, dests, EventBus::default())
}

fn start_with_events(
    journal: &Journal,
    dests: Vec<Destination>,
    events: EventBus,
) -> DeliveryQueue {
    DeliveryQueue::start(
        journal.clone(),
        events,
        Arc::new(Metrics::new()),
        router("", &[], &[]),
        dests.into_iter().map(|d| (d, "test".to_string())).collect(),
        Vec::new(),
    )
}

async fn row(handle: &DeliveryHandle, journal: &Journal, id: i64) -> DeliveryRow {
    let _ = handle;
    journal.delivery(id).await.unwrap().unwrap()
}

async fn wait_status(journal: &Journal, id: i64, status: DeliveryStatus) {
    let j = journal.clone();
    eventually(&format!("delivery {id} {}", status.as_str()), || {
        let j = j.clone();
        async move { j.delivery(id).await.unwrap().unwrap().status == status }
    })
    .await;
}

fn control(item: &DeliveryItem) -> String {
    item.control_id.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_patients_failing_document_holds_up_only_that_patient_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(dir.path());
    let others_done = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&others_done);
    // A1 fails until every document of the other patients has been delivered.
    let sink = Recorder::new(move |item| {
        if item.control_id == "A1" && !flag.load(Ordering::SeqCst) {
            Err(DeliveryError::retry("HTTP 503"))
        } else {
            Ok(Delivered {
                remote_ref: Some(format!("ref-{}", item.control_id)),
            })
        }
    });
    let ids = enqueue(
        &journal,
        &[
            ("A1", "pa"),
            ("B1", "pb"),
            ("A2", "pa"),
            ("C1", "pc"),
            ("B2", "pb"),
            ("A3", "pa"),
        ],
        "sink",
    )
    .await;
    let queue = start(&journal, vec![destination("sink", sink.clone())]);
    let handle = queue.handle();
    for id in [ids[1], ids[3], ids[4]] {
        wait_status(&journal, id, DeliveryStatus::Delivered).await;
    }
    // Meanwhile A1 was tried and failed, and A2/A3 were never handed out.
    let j = journal.clone();
    let a1 = ids[0];
    eventually("A1 tried", || {
        let j = j.clone();
        async move { j.delivery(a1).await.unwrap().unwrap().attempts >= 1 }
    })
    .await;
    let calls: Vec<String> = sink.calls.lock().unwrap().iter().map(control).collect();
    assert!(
        !calls.contains(&"A2".to_string()) && !calls.contains(&"A3".to_string()),
        "{calls:?}"
    );
    others_done.store(true, Ordering::SeqCst);
    wait_status(&journal, ids[5], DeliveryStatus::Delivered).await;
    queue.stop(Duration::from_secs(10)).await;

    let delivered: Vec<String> = sink.delivered.lock().unwrap().iter().map(control).collect();
    let order = |c: &str| delivered.iter().position(|d| d == c).unwrap();
    assert!(
        order("A1") < order("A2") && order("A2") < order("A3"),
        "{delivered:?}"
    );
    assert!(order("B1") < order("B2"), "{delivered:?}");
    assert!(order("B2") < order("A1"), "{delivered:?}");
    let a1 = row(&handle, &journal, ids[0]).await;
    assert!(a1.attempts >= 2, "{a1:?}");
    assert_eq!(a1.remote_ref.as_deref(), Some("ref-A1"));
    assert!(a1.delivered_at.is_some());
    assert_eq!(a1.last_error, None);
    // Each delivered once.
    assert_eq!(delivered.len(), 6, "{delivered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_dead_letters_that_document_only_and_retry_delivers_it() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(dir.path());
    let fixed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&fixed);
    let sink = Recorder::new(move |item| {
        if item.control_id == "A1" && !flag.load(Ordering::SeqCst) {
            Err(DeliveryError::permanent("HTTP 400: bad Bundle"))
        } else {
            Ok(Delivered::default())
        }
    });
    let ids = enqueue(
        &journal,
        &[("A1", "pa"), ("A2", "pa"), ("B1", "pb")],
        "sink",
    )
    .await;
    let queue = start(&journal, vec![destination("sink", sink.clone())]);
    let handle = queue.handle();
    wait_status(&journal, ids[0], DeliveryStatus::Dead).await;
    // The line moves on past the dead letter.
    wait_status(&journal, ids[1], DeliveryStatus::Delivered).await;
    wait_status(&journal, ids[2], DeliveryStatus::Delivered).await;
    let dead = row(&handle, &journal, ids[0]).await;
    assert_eq!(dead.attempts, 1);
    assert_eq!(
        dead.last_error.as_deref(),
        Some("permanent error: HTTP 400: bad Bundle")
    );
    let listed = journal
        .deliveries(DeliveryFilter {
            status: Some(DeliveryStatus::Dead),
            ..DeliveryFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );

    // Not retryable while delivered; retried once dead.
    assert!(handle.retry(ids[1]).await.is_err());
    fixed.store(true, Ordering::SeqCst);
    let answer = handle.retry(ids[0]).await.unwrap();
    // A2, the patient's later document, had overtaken it: queued again after it
    // (its message is no HL7, so the replay says why nothing was queued)
    assert_eq!(answer.requeued.len(), 1, "{:?}", answer.requeued);
    assert_eq!(answer.requeued[0].was_delivery, ids[1]);
    assert_eq!(answer.requeued[0].after, ids[0]);
    let retried = answer.row;
    // Attempts start again from 0 (the scheduler may already have made one).
    assert!(retried.attempts <= 1, "{retried:?}");
    assert_ne!(retried.status, DeliveryStatus::Dead);
    wait_status(&journal, ids[0], DeliveryStatus::Delivered).await;
    queue.stop(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_run_out_into_the_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(dir.path());
    let sink = Recorder::new(|_| Err(DeliveryError::retry("connection refused")));
    let ids = enqueue(&journal, &[("A1", "pa")], "sink").await;
    let mut dest = destination("sink", sink.clone());
    dest.policy.max_attempts = 3;
    let queue = start(&journal, vec![dest]);
    wait_status(&journal, ids[0], DeliveryStatus::Dead).await;
    queue.stop(Duration::from_secs(10)).await;
    let dead = journal.delivery(ids[0]).await.unwrap().unwrap();
    assert_eq!(dead.attempts, 3);
    assert_eq!(sink.calls.lock().unwrap().len(), 3);
    assert_eq!(
        dead.last_error.as_deref(),
        Some("gave up after 3 attempt(s): connection refused")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objecting_patients_are_withheld_from_external_destinations() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(dir.path());
    let external = Recorder::accepting();
    let internal = Recorder::accepting();
    let unregistered = Recorder::accepting();
    let mut ids = enqueue(&journal, &[("A1", "pa"), ("B1", "pb")], "mesh").await;
    ids.extend(enqueue(&journal, &[("A2", "pa")], "store").await);
    ids.extend(enqueue(&journal, &[("A3", "pa")], "nowhere").await);
    let register: Arc<dyn Objections> = Arc::new(Register(["nhs-pa".to_string()].into()));
    let mut mesh = destination("mesh", external.clone());
    mesh.external = true;
    mesh.objections = Some(register);
    let mut nowhere = destination("nowhere", unregistered.clone());
    nowhere.external = true;
    let bus = EventBus::default();
    let mut sub = bus.subscribe();
    let queue = start_with_events(
        &journal,
        vec![mesh, destination("store", internal.clone()), nowhere],
        bus.clone(),
    );
    wait_status(&journal, ids[0], DeliveryStatus::Withheld).await;
    wait_status(&journal, ids[1], DeliveryStatus::Delivered).await;
    // Internal destinations are not affected by objections.
    wait_status(&journal, ids[2], DeliveryStatus::Delivered).await;
    // Without a register, an external destination sends nothing.
    let j = journal.clone();
    let id = ids[3];
    eventually("an attempt without a register fails", || {
        let j = j.clone();
        async move { j.delivery(id).await.unwrap().unwrap().attempts >= 1 }
    })
    .await;
    queue.stop(Duration::from_secs(10)).await;
    let sent: Vec<String> = external.calls.lock().unwrap().iter().map(control).collect();
    assert_eq!(sent, vec!["B1"]);
    assert!(unregistered.calls.lock().unwrap().is_empty());
    let withheld = journal.delivery(ids[0]).await.unwrap().unwrap();
    assert!(withheld.last_error.unwrap().contains("objects to sharing"));
    let waiting = journal.delivery(ids[3]).await.unwrap().unwrap();
    assert_eq!(waiting.status, DeliveryStatus::Pending);
    assert!(waiting
        .last_error
        .unwrap()
        .contains("objections register is not available"));

    // Each outcome was told as an event, naming ids and destinations only.
    // Every event was published before `stop` returned: drain what is buffered.
    let mut seen = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(500), sub.recv()).await {
        let json = serde_json::to_string(&event).unwrap();
        assert!(!json.contains("nhs-pa") && !json.contains("doc"), "{json}");
        seen.push(event);
    }
    let withheld = seen
        .iter()
        .find_map(|e| match e {
            crate::telemetry::events::Event::Withheld(d) => Some(d.clone()),
            _ => None,
        })
        .expect("a Withheld event");
    assert_eq!(withheld.delivery_id, ids[0]);
    assert_eq!(withheld.destination, "mesh");
    assert_eq!(withheld.control_id, "A1");
    let delivered: Vec<i64> = seen
        .iter()
        .filter_map(|e| match e {
            crate::telemetry::events::Event::Delivered(d) => Some(d.delivery_id),
            _ => None,
        })
        .collect();
    assert!(
        delivered.contains(&ids[1]) && delivered.contains(&ids[2]),
        "{seen:?}"
    );
    let failed = seen
        .iter()
        .find_map(|e| match e {
            crate::telemetry::events::Event::DeliveryFailed(d) => Some(d.clone()),
            _ => None,
        })
        .expect("a DeliveryFailed event");
    assert_eq!(failed.destination, "nowhere");
    assert_eq!(failed.attempt, 1);
    assert!(failed.retry_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_pending_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(dir.path());
    let ids = enqueue(
        &journal,
        &[("A1", "pa"), ("A2", "pa"), ("B1", "pb")],
        "sink",
    )
    .await;
    // First run: the destination is down; nothing is delivered.
    let down = Recorder::new(|_| Err(DeliveryError::retry("down")));
    let queue = start(&journal, vec![destination("sink", down.clone())]);
    let j = journal.clone();
    let first = ids[0];
    eventually("a failed attempt", || {
        let j = j.clone();
        async move { j.delivery(first).await.unwrap().unwrap().attempts >= 2 }
    })
    .await;
    queue.stop(Duration::from_secs(10)).await;
    drop(journal);

    let journal = crate::delivery::testing::journal(dir.path());
    let up = Recorder::accepting();
    let queue = start(&journal, vec![destination("sink", up.clone())]);
    for id in &ids {
        wait_status(&journal, *id, DeliveryStatus::Delivered).await;
    }
    queue.stop(Duration::from_secs(10)).await;
    let delivered: Vec<String> = up.delivered.lock().unwrap().iter().map(control).collect();
    let order = |c: &str| delivered.iter().position(|d| d == c).unwrap();
    assert!(order("A1") < order("A2"), "{delivered:?}");
    assert_eq!(delivered.len(), 3);
    // Delivered rows keep their size, not their document.
    let row = journal.delivery(ids[0]).await.unwrap().unwrap();
    assert_eq!(row.size_bytes, "{\"doc\":\"A1\"}".len());
    let conn = rusqlite::Connection::open(dir.path().join("journal.db")).unwrap();
    let kept: i64 = conn
        .query_row("SELECT SUM(length(document)) FROM deliveries", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(kept, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_queued_too_long_is_dead_lettered_at_its_next_failure() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(dir.path());
    let sink = Recorder::new(|_| Err(DeliveryError::retry("HTTP 503")));
    let ids = enqueue(&journal, &[("A1", "pa")], "sink").await;
    let mut dest = destination("sink", sink.clone());
    dest.policy.max_age_ms = 0;
    let queue = start(&journal, vec![dest]);
    wait_status(&journal, ids[0], DeliveryStatus::Dead).await;
    queue.stop(Duration::from_secs(10)).await;
    let dead = journal.delivery(ids[0]).await.unwrap().unwrap();
    assert_eq!(dead.attempts, 1);
    let why = dead.last_error.unwrap();
    assert!(
        why.starts_with("gave up after 0s queued (max_age_secs 0): HTTP 503"),
        "{why}"
    );
}

/// A destination that never answers (a crash mid-attempt, as far as the queue knows).
struct Hang;

impl Deliver for Hang {
    fn deliver<'a>(
        &'a self,
        _item: &'a DeliveryItem,
    ) -> futures_util::future::BoxFuture<'a, Result<Delivered, DeliveryError>> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_cut_short_is_counted_so_the_next_one_knows_it_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(dir.path());
    let ids = enqueue(&journal, &[("A1", "pa")], "sink").await;
    let queue = start(&journal, vec![destination("sink", Arc::new(Hang))]);
    let j = journal.clone();
    let id = ids[0];
    eventually("the attempt started", || {
        let j = j.clone();
        async move { j.delivery(id).await.unwrap().unwrap().attempts == 1 }
    })
    .await;
    // The shutdown timeout abandons the attempt in flight: the row stays pending.
    queue.stop(Duration::from_millis(200)).await;
    let row = journal.delivery(id).await.unwrap().unwrap();
    assert_eq!(row.status, DeliveryStatus::Pending);

    let sink = Recorder::accepting();
    let queue = start(&journal, vec![destination("sink", sink.clone())]);
    wait_status(&journal, id, DeliveryStatus::Delivered).await;
    queue.stop(Duration::from_secs(10)).await;
    let calls = sink.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].attempt, 2, "the repeat after a cut-short attempt");
    assert_eq!(journal.delivery(id).await.unwrap().unwrap().attempts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_deliveries_can_be_made_due_at_once_when_the_destination_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(dir.path());
    let up = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&up);
    let sink = Recorder::new(move |_| {
        if flag.load(Ordering::SeqCst) {
            Ok(Delivered::default())
        } else {
            Err(DeliveryError::retry("HTTP 503"))
        }
    });
    let ids = enqueue(
        &journal,
        &[("A1", "pa"), ("B1", "pb"), ("C1", "pc")],
        "sink",
    )
    .await;
    let mut dest = destination("sink", sink.clone());
    // A backoff far longer than this test may take.
    dest.policy.backoff_initial_ms = 3_600_000;
    dest.policy.backoff_max_ms = 3_600_000;
    let queue = start(&journal, vec![dest]);
    let handle = queue.handle();
    for id in &ids {
        let j = journal.clone();
        let id = *id;
        eventually("a first failed attempt", || {
            let j = j.clone();
            async move {
                let row = j.delivery(id).await.unwrap().unwrap();
                row.attempts == 1 && row.last_error.is_some()
            }
        })
        .await;
    }
    up.store(true, Ordering::SeqCst);
    // One row by id, the others by destination.
    let answer = handle.retry(ids[0]).await.unwrap();
    assert!(answer.requeued.is_empty());
    let (was, row) = (answer.was, answer.row);
    assert_eq!(was, DeliveryStatus::Pending, "a pending row, made due now");
    assert_ne!(row.status, DeliveryStatus::Dead);
    wait_status(&journal, ids[0], DeliveryStatus::Delivered).await;
    // Attempts were kept (not reset as for a dead letter): the failed one and this one.
    let row = journal.delivery(ids[0]).await.unwrap().unwrap();
    assert_eq!(row.attempts, 2, "{row:?}");
    assert_eq!(handle.retry_pending("sink".to_string()).await.unwrap(), 2);
    wait_status(&journal, ids[1], DeliveryStatus::Delivered).await;
    wait_status(&journal, ids[2], DeliveryStatus::Delivered).await;
    assert!(matches!(
        handle.retry(ids[0]).await,
        Err(crate::delivery::queue::QueueError::NotRetryable { .. })
    ));
    queue.stop(Duration::from_secs(10)).await;
}

fn dead_op(id: i64) -> crate::journal::QueueOp {
    crate::journal::QueueOp::Dead {
        id,
        attempts: 1,
        error: "permanent error: HTTP 400".to_string(),
        at_ms: now_ms(),
    }
}

fn delivered_op(id: i64) -> crate::journal::QueueOp {
    crate::journal::QueueOp::Delivered {
        id,
        attempts: 1,
        remote_ref: None,
        at_ms: now_ms(),
    }
}

/// A plan's follow-ups as (after, destination, row they stand for).
fn follow_ups(plan: &RetryPlan) -> Vec<(i64, &str, i64)> {
    plan.overtaken
        .iter()
        .map(|o| (o.retried, o.destination.as_str(), o.delivery_id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_plan_names_the_patients_later_messages_at_that_destination() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(dir.path());
    // pa: A1 (dead), A2, A3 delivered to d1; pb: B1 delivered to d1; pa: A4
    // delivered to d2; pa: A5 still pending at d1
    let mut ids = enqueue(&journal, &[("A1", "pa"), ("A2", "pa")], "d1").await;
    ids.extend(enqueue(&journal, &[("B1", "pb")], "d1").await);
    ids.extend(enqueue(&journal, &[("A4", "pa")], "d2").await);
    ids.extend(enqueue(&journal, &[("A3", "pa"), ("A5", "pa")], "d1").await);
    let (a1, a2, b1, a4, a3) = (ids[0], ids[1], ids[2], ids[3], ids[4]);
    journal
        .queue_write(vec![
            dead_op(a1),
            delivered_op(a2),
            delivered_op(b1),
            delivered_op(a4),
            delivered_op(a3),
        ])
        .await
        .unwrap();
    let a5 = ids[5];
    let plan = journal.retry_plan(RetryWhat::Ids(vec![a1])).await.unwrap();
    assert_eq!(plan.retryable, vec![a1]);
    let got = follow_ups(&plan);
    // the patient's later rows at that destination, in queue order, the one
    // still pending too (queued again, the newest ends up last); not the
    // other patient's, not another destination's
    assert_eq!(
        got,
        vec![(a1, "d1", a2), (a1, "d1", a3), (a1, "d1", a5)],
        "{plan:?}"
    );
    // every dead letter: the same
    let all = journal.retry_plan(RetryWhat::Dead(None)).await.unwrap();
    assert_eq!(all, plan);
    assert!(journal
        .retry_plan(RetryWhat::Dead(Some("d2".to_string())))
        .await
        .unwrap()
        .retryable
        .is_empty());
    // a delivered row is not retryable, and nothing follows it
    let none = journal.retry_plan(RetryWhat::Ids(vec![a3])).await.unwrap();
    assert!(
        none.retryable.is_empty() && none.overtaken.is_empty(),
        "{none:?}"
    );
    // a later row still pending may be in flight: queued again after it too
    let dir2 = tempfile::tempdir().unwrap();
    let journal2 = crate::delivery::testing::journal(dir2.path());
    let ids2 = enqueue(&journal2, &[("C1", "pc"), ("C2", "pc")], "d1").await;
    journal2.queue_write(vec![dead_op(ids2[0])]).await.unwrap();
    let plan2 = journal2
        .retry_plan(RetryWhat::Ids(vec![ids2[0]]))
        .await
        .unwrap();
    assert_eq!(plan2.retryable, vec![ids2[0]]);
    assert_eq!(follow_ups(&plan2), vec![(ids2[0], "d1", ids2[1])]);
    assert_eq!(plan2.lines, vec![("d1".to_string(), "pc".to_string())]);
}

/// Two dead letters of a line with a delivered message between: every later
/// message follows the oldest retried one, the other retried one too, by
/// message id; a newer row of an older message (a replay) is no later
/// message; a replay still pending behind the retried row brings the retried
/// message again after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_plan_follows_message_order_not_row_order() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(dir.path());
    let ids = enqueue(&journal, &[("M1", "p"), ("M2", "p"), ("M3", "p")], "d").await;
    let (m1, m2, m3) = (ids[0], ids[1], ids[2]);
    journal
        .queue_write(vec![dead_op(m1), delivered_op(m2), dead_op(m3)])
        .await
        .unwrap();
    let plan = journal.retry_plan(RetryWhat::Dead(None)).await.unwrap();
    assert_eq!(plan.retryable, vec![m1, m3]);
    assert_eq!(follow_ups(&plan), vec![(m1, "d", m2), (m1, "d", m3)]);
    // m1 alone: m2 follows (m3 stays dead, and is not sent)
    let plan = journal.retry_plan(RetryWhat::Ids(vec![m1])).await.unwrap();
    assert_eq!(follow_ups(&plan), vec![(m1, "d", m2)]);
    // m2's message replayed since (a newer row of an older message), and
    // delivered: m3 alone is retried, nothing follows it
    let message2 = journal.delivery(m2).await.unwrap().unwrap().message_id;
    let replay = replay_row(&journal, message2, "p", "d").await;
    journal
        .queue_write(vec![delivered_op(replay)])
        .await
        .unwrap();
    let plan = journal.retry_plan(RetryWhat::Ids(vec![m3])).await.unwrap();
    assert_eq!(follow_ups(&plan), vec![]);
    // another replay of m2 still pending behind m3's row: m3 again after it
    let replay = replay_row(&journal, message2, "p", "d").await;
    let plan = journal.retry_plan(RetryWhat::Ids(vec![m3])).await.unwrap();
    assert_eq!(follow_ups(&plan), vec![(m3, "d", m3)]);
    assert!(replay > m3);
}

/// The guard written first with a retry refuses the whole request when the
/// plan is out of date: a row added to the line since, or the row retried by
/// another call meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_written_from_an_old_plan_is_refused_whole() {
    use crate::journal::QueueOp;
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(dir.path());
    let ids = enqueue(&journal, &[("N1", "p"), ("O1", "q")], "d").await;
    journal
        .queue_write(vec![dead_op(ids[0]), dead_op(ids[1])])
        .await
        .unwrap();
    let plan = journal
        .retry_plan(RetryWhat::Ids(vec![ids[0]]))
        .await
        .unwrap();
    // another patient's new row changes nothing of this plan
    enqueue(&journal, &[("O2", "q")], "d").await;
    assert_eq!(
        journal.queue_write(vec![plan.guard()]).await.unwrap(),
        vec![QueueOutcome::Updated(1)]
    );
    // this patient's new message arrives before the retry is written
    let new = enqueue(&journal, &[("N2", "p")], "d").await;
    let retry = QueueOp::Retry {
        id: ids[0],
        now_ms: now_ms(),
    };
    assert_eq!(
        journal
            .queue_write(vec![plan.guard(), retry.clone()])
            .await
            .unwrap(),
        vec![QueueOutcome::Stale]
    );
    assert_eq!(
        journal.delivery(ids[0]).await.unwrap().unwrap().status,
        DeliveryStatus::Dead,
        "nothing of the request was written"
    );
    // planned again, it takes the new message along
    let plan = journal
        .retry_plan(RetryWhat::Ids(vec![ids[0]]))
        .await
        .unwrap();
    assert_eq!(follow_ups(&plan), vec![(ids[0], "d", new[0])]);
    let outcomes = journal
        .queue_write(vec![plan.guard(), retry.clone()])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![QueueOutcome::Updated(1), QueueOutcome::Updated(1)]
    );
    // a second call with the same plan finds the row taken
    assert_eq!(
        journal
            .queue_write(vec![plan.guard(), retry])
            .await
            .unwrap(),
        vec![QueueOutcome::Stale]
    );
    // two dead rows of one line: a plan for the first is out of date once
    // another call queued the second again (its follow-ups change)
    let more = enqueue(&journal, &[("R1", "r"), ("R2", "r")], "d").await;
    journal
        .queue_write(vec![dead_op(more[0]), dead_op(more[1])])
        .await
        .unwrap();
    let first = journal
        .retry_plan(RetryWhat::Ids(vec![more[0]]))
        .await
        .unwrap();
    journal
        .queue_write(vec![QueueOp::Retry {
            id: more[1],
            now_ms: now_ms(),
        }])
        .await
        .unwrap();
    assert_eq!(
        journal.queue_write(vec![first.guard()]).await.unwrap(),
        vec![QueueOutcome::Stale]
    );
    let first = journal
        .retry_plan(RetryWhat::Ids(vec![more[0]]))
        .await
        .unwrap();
    assert_eq!(follow_ups(&first), vec![(more[0], "d", more[1])]);
}

/// Retention keeps a delivered message newer (by message id) than a dead row
/// of its patient's line, as a retry of that row replays it, also when the
/// dead row is a replay of an older message made after it (a newer row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_what_a_retry_would_replay() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(dir.path());
    let ids = enqueue(
        &journal,
        &[("M1", "p"), ("M2", "p"), ("Q1", "q"), ("Q2", "q")],
        "d",
    )
    .await;
    journal
        .queue_write(ids.iter().map(|&id| delivered_op(id)).collect())
        .await
        .unwrap();
    let message = |id: i64| {
        let journal = journal.clone();
        async move { journal.delivery(id).await.unwrap().unwrap().message_id }
    };
    let (m1, m2, q1) = (
        message(ids[0]).await,
        message(ids[1]).await,
        message(ids[2]).await,
    );
    let replay = replay_row(&journal, m1, "p", "d").await;
    journal.queue_write(vec![dead_op(replay)]).await.unwrap();
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
    assert_eq!(journal.prune(later).await.unwrap(), 1);
    assert!(journal.get(q1).await.unwrap().is_none(), "Q1 was pruned");
    for id in [m1, m2] {
        assert!(journal.get(id).await.unwrap().is_some(), "{id} was kept");
    }
    let plan = journal
        .retry_plan(RetryWhat::Ids(vec![replay]))
        .await
        .unwrap();
    assert_eq!(follow_ups(&plan), vec![(replay, "d", ids[1])]);
}
