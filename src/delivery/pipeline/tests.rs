//! The pipeline over real mappings, real route files and a real journal.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::delivery::queue::DeliveryQueue;
use crate::delivery::testing::*;
use crate::journal::{DeliveryFilter, DeliveryStatus, RoutingOutcome};
use crate::telemetry::events::EventBus;
use crate::telemetry::metrics::Metrics;

const ADT_TO_TWO: &str = r#"
[routes.adt_store]
messages = ["ADT^A01"]
mapping = "adt"
destinations = ["sink", "other"]

[routes.adt_copy]
messages = ["ADT^*"]
mapping = "adt"
destinations = ["sink"]
"#;

/// Knows every key asked about (or those holding `only`) as registered at
/// `practice`, learned with NHS number `nhs`.
struct Fixed {
    practice: &'static str,
    nhs: String,
    only: &'static str,
}

impl KnownPatients for Fixed {
    fn registrations(&mut self, keys: &[String]) -> Result<Vec<Known>, String> {
        Ok(keys
            .iter()
            .filter(|k| k.contains(self.only))
            .map(|key| Known {
                key: key.clone(),
                identifiers: vec![serde_json::json!({
                    "system": crate::route::ODS_SYSTEM, "value": self.practice
                })],
                nhs_number: self.nhs.clone(),
                recorded_at: 0,
                message_id: 1,
            })
            .collect())
    }
}

fn message(id: i64, listener: &str, raw: &str) -> PendingMessage {
    PendingMessage {
        id,
        listener: listener.to_string(),
        sender: "PAS^RAL01".to_string(),
        control_id: format!("C{id}"),
        message_type: "ADT^A01".to_string(),
        raw: Bytes::from(raw.to_string()),
    }
}

#[test]
fn a_message_is_mapped_once_and_queued_once_per_destination() {
    let router = router(ADT_TO_TWO, &[], &["sink", "other"]);
    let routed = router.route(&message(7, "pas", &a01("C7", 1)), false, 1_000);
    assert_eq!(routed.routing.outcome, RoutingOutcome::Routed);
    assert_eq!(routed.routing.routes, vec!["adt_store", "adt_copy"]);
    let d = &routed.routing.deliveries;
    assert_eq!(
        d.iter().map(|d| d.destination.as_str()).collect::<Vec<_>>(),
        vec!["sink", "other"]
    );
    // `sink` is chosen by both routes, but gets the document once.
    assert_eq!(d[0].routes, vec!["adt_store", "adt_copy"]);
    let doc: Json = serde_json::from_slice(&d[0].document).unwrap();
    assert_eq!(doc["resourceType"], "Bundle");
    assert_eq!(Some(d[0].patient_key.clone()), patient_key(&doc));
    assert!(!d[0].patient_key.starts_with("message:"));
    assert_eq!(d[0].nhs_numbers, vec![nhs_number(1)]);
    assert_eq!(d[0].last_error, None);
    match &routed.event {
        Event::MessageRouted(e) => {
            assert_eq!(e.destinations, vec!["sink", "other"]);
            assert_eq!(e.journal_id, 7);
        }
        other => panic!("expected MessageRouted, got {other:?}"),
    }
    // The event names no patient data.
    let json = serde_json::to_string(&routed.event).unwrap();
    assert!(
        !json.contains("SMITH") && !json.contains(&nhs_number(1)),
        "{json}"
    );
}

#[test]
fn unrouted_and_failed_messages_are_recorded_with_the_reason() {
    let router = router(
        "[routes.lab]\nmessages = [\"ORU^R01\"]\nmapping = \"oru_r01\"\ndestinations = [\"sink\"]\n",
        &[],
        &["sink"],
    );
    let unrouted = router.route(&message(1, "pas", &a01("C1", 1)), false, 0);
    assert_eq!(unrouted.routing.outcome, RoutingOutcome::Unrouted);
    assert!(unrouted.routing.deliveries.is_empty());
    assert!(matches!(unrouted.event, Event::MessageUnrouted(_)));

    let failed = router.route(&message(2, "pas", "this is not HL7"), false, 0);
    assert_eq!(failed.routing.outcome, RoutingOutcome::Failed);
    assert!(failed
        .routing
        .error
        .as_deref()
        .unwrap()
        .contains("does not parse"));
    match &failed.event {
        Event::RoutingFailed(e) => assert_eq!(e.stage.as_deref(), Some("parse")),
        other => panic!("expected RoutingFailed, got {other:?}"),
    }
}

#[test]
fn a_route_naming_an_unknown_mapping_fails_the_whole_message() {
    let router = router(
        "[routes.a]\nmessages = [\"ADT^A01\"]\nmapping = \"adt\"\ndestinations = [\"sink\"]\n\
         [routes.b]\nmessages = [\"ADT^A01\"]\nmapping = \"nope\"\ndestinations = [\"other\"]\n",
        &[],
        &["sink", "other"],
    );
    let routed = router.route(&message(3, "pas", &a01("C3", 1)), false, 0);
    assert_eq!(routed.routing.outcome, RoutingOutcome::Failed);
    assert!(routed.routing.deliveries.is_empty(), "nothing half-routed");
    assert!(routed.routing.error.unwrap().contains("`nope`"));
}

#[test]
fn rows_for_unavailable_or_unknown_destinations_say_why_they_wait() {
    let mut router = router(ADT_TO_TWO, &[], &["sink"]);
    router.set_unavailable("sink", "secret JUNCTION_X is not set".to_string());
    let routed = router.route(&message(4, "pas", &a01("C4", 1)), false, 0);
    let errors: Vec<_> = routed
        .routing
        .deliveries
        .iter()
        .map(|d| d.last_error.clone().unwrap())
        .collect();
    assert_eq!(errors[0], "secret JUNCTION_X is not set");
    assert!(
        errors[1].contains("`other` is not configured"),
        "{errors:?}"
    );
}

#[test]
fn documents_from_a_source_must_be_bundles() {
    let router = router(
        "[routes.inbox]\nsources = [\"inbox\"]\nmessages = [\"*^*\"]\nmapping = \"adt\"\ndestinations = [\"sink\"]\n",
        &["inbox"],
        &["sink"],
    );
    let not_json = router.route(&message(5, "inbox", "<ClinicalDocument/>"), false, 0);
    assert_eq!(not_json.routing.outcome, RoutingOutcome::Failed);
    assert!(not_json.routing.error.unwrap().contains("not JSON"));
    let not_bundle = router.route(
        &message(6, "inbox", r#"{"resourceType":"Patient"}"#),
        false,
        0,
    );
    assert!(not_bundle
        .routing
        .error
        .unwrap()
        .contains("not a FHIR Bundle"));
    // A route for a source that names an HL7 mapping cannot apply it.
    let bundle = r#"{"resourceType":"Bundle","type":"transaction","entry":[]}"#;
    let mapped = router.route(&message(7, "inbox", bundle), false, 0);
    assert_eq!(mapped.routing.outcome, RoutingOutcome::Failed);
    assert!(mapped.routing.error.unwrap().contains("already FHIR"));
}

#[test]
fn a_document_from_a_source_that_deletes_is_refused_whole() {
    let router = router(
        "[routes.inbox]\nsources = [\"inbox\"]\nmessages = [\"*^*\"]\ndestinations = [\"sink\"]\n",
        &["inbox"],
        &["sink"],
    );
    let deletes = r#"{"resourceType":"Bundle","type":"transaction","entry":[
        {"request":{"method":"PUT","url":"Observation/o1"},"resource":{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"}}},
        {"request":{"method":"DELETE","url":"Patient/p1"}}]}"#;
    let routed = router.route(&message(8, "inbox", deletes), false, 0);
    assert_eq!(routed.routing.outcome, RoutingOutcome::Failed);
    assert!(routed.routing.deliveries.is_empty());
    let error = routed.routing.error.unwrap();
    assert!(error.contains("never deletes"), "{error}");
    // one that only writes is passed through
    let writes = r#"{"resourceType":"Bundle","type":"transaction","entry":[
        {"request":{"method":"PUT","url":"Observation/o1"},"resource":{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"}}}]}"#;
    let routed = router.route(&message(9, "inbox", writes), false, 0);
    assert_eq!(routed.routing.deliveries.len(), 1);
    // its Patients are create-only: a neighbour makes the record of someone we
    // do not know yet, and never replaces ours
    let patient = r#"{"resourceType":"Bundle","type":"transaction","entry":[
        {"request":{"method":"PUT","url":"Patient/p1"},"resource":{"resourceType":"Patient","id":"p1"}},
        {"request":{"method":"PUT","url":"Observation/o1"},"resource":{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"}}}]}"#;
    let routed = router.route(&message(10, "inbox", patient), false, 0);
    let sent: Json = serde_json::from_slice(&routed.routing.deliveries[0].document).unwrap();
    assert_eq!(sent["entry"][0]["request"]["ifNoneMatch"], "*");
    assert_eq!(sent["entry"][1]["request"].get("ifNoneMatch"), None);
}

#[test]
fn hl7_from_a_source_is_mapped_by_the_routes_for_that_source() {
    let router = router(
        "[routes.mesh_adt]\nsources = [\"inbox\"]\nmessages = [\"ADT^A01\"]\nmapping = \"adt\"\ndestinations = [\"sink\"]\n\
         [routes.pas_adt]\nlisteners = [\"pas\"]\nmessages = [\"ADT^A01\"]\nmapping = \"adt\"\ndestinations = [\"other\"]\n\
         [routes.mesh_docs]\nsources = [\"inbox\"]\nmessages = [\"MESH^*\"]\ndestinations = [\"other\"]\n",
        &["inbox"],
        &["sink", "other"],
    );
    // (as the MESH inbox journals it: with a byte order mark, say)
    let raw = format!("\u{feff}{}", a01("M1", 2));
    let routed = router.route(&message(9, "inbox", &raw), false, 0);
    assert_eq!(
        routed.routing.outcome,
        RoutingOutcome::Routed,
        "{:?}",
        routed.routing.error
    );
    assert_eq!(routed.routing.routes, vec!["mesh_adt"]);
    let d = &routed.routing.deliveries;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].destination, "sink");
    let doc: Json = serde_json::from_slice(&d[0].document).unwrap();
    assert_eq!(doc["resourceType"], "Bundle");
    assert_eq!(d[0].nhs_numbers, vec![nhs_number(2)]);
    // The same message from the listener takes the listener's route.
    let routed = router.route(&message(10, "pas", &a01("M1", 2)), false, 0);
    assert_eq!(routed.routing.routes, vec!["pas_adt"]);
}

#[test]
fn documents_from_a_source_pass_through_with_their_patients_create_only() {
    let router = router(
        "[routes.inbox]\nsources = [\"inbox\"]\nmessages = [\"MESH^TEST_WORKFLOW\"]\ndestinations = [\"sink\"]\n",
        &["inbox"],
        &["sink"],
    );
    let raw = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/mesh_bundle_from_hwe.json"),
    )
    .unwrap();
    let mut msg = message(8, "inbox", &raw);
    msg.message_type = "MESH^TEST_WORKFLOW".to_string();
    msg.sender = "X26ABC2".to_string();
    let routed = router.route(&msg, false, 0);
    assert_eq!(
        routed.routing.outcome,
        RoutingOutcome::Routed,
        "{:?}",
        routed.routing.error
    );
    let d = &routed.routing.deliveries[0];
    assert_eq!(d.mapping, "");
    // as received, but for its Patients, made create-only: a neighbour never
    // replaces the demographics our PAS keeps
    let mut expected: Json = serde_json::from_str(&raw).unwrap();
    for entry in expected["entry"].as_array_mut().unwrap() {
        if entry["resource"]["resourceType"] == "Patient" {
            entry["request"]["ifNoneMatch"] = Json::String("*".into());
        }
    }
    let sent: Json = serde_json::from_slice(&d.document).unwrap();
    assert_eq!(sent, expected);
    let doc: Json = serde_json::from_str(&raw).unwrap();
    assert_eq!(Some(d.patient_key.clone()), patient_key(&doc));
    // Another workflow is not taken by the route: unrouted, kept.
    msg.message_type = "MESH^OTHER".to_string();
    let other = router.route(&msg, false, 0);
    assert_eq!(other.routing.outcome, RoutingOutcome::Unrouted);
}

#[test]
fn patient_key_and_nhs_numbers_come_from_patient_resources_only() {
    let doc: Json = serde_json::json!({
        "resourceType": "Bundle",
        "entry": [
            {"resource": {"resourceType": "Encounter", "id": "e1",
                "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "1"}]}},
            {"resource": {"resourceType": "Patient", "id": "p1", "identifier": [
                {"system": NHS_NUMBER_SYSTEM, "value": "999 000 0018"},
                {"system": "https://example.org/mrn", "value": "X"}]}},
            {"resource": {"resourceType": "Patient", "id": "p2", "identifier": [
                {"system": NHS_NUMBER_SYSTEM, "value": "9990000018"},
                {"system": NHS_NUMBER_SYSTEM, "value": "9990000026"},
                // a second NHS number a sender gave (PID-2), kept as a local
                // identifier typed NH: asked about too; one failing modulus 11 not
                {"system": "urn:junction:local-id:nhs:nh", "value": "9990000042",
                 "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NH"}]}},
                {"system": "urn:junction:local-id:nhs:nh", "value": "9990000043",
                 "type": {"coding": [{"code": "NH"}]}}]}}
        ]
    });
    assert_eq!(patient_key(&doc).as_deref(), Some("p1"));
    assert_eq!(
        nhs_numbers(&doc),
        vec!["9990000018", "9990000026", "9990000042"]
    );
    assert_eq!(patient_key(&serde_json::json!({"entry": []})), None);
}

/// The pipeline task over a real journal: rows committed while it runs are
/// routed; after a restart it resumes after the last routed row, routing
/// nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_resumes_after_a_restart_and_routes_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(dir.path());
    let sink = Recorder::accepting();
    let start = |journal: &crate::journal::Journal| {
        DeliveryQueue::start(
            journal.clone(),
            EventBus::default(),
            Arc::new(Metrics::new()),
            router(ADT_TO_TWO, &[], &["sink", "other"]),
            vec![(destination("sink", sink.clone()), "test".to_string())],
            Vec::new(),
        )
    };
    for n in 0..3 {
        commit(&journal, "pas", &format!("A{n}"), &a01(&format!("A{n}"), n)).await;
    }
    let queue = start(&journal);
    for n in 3..6 {
        commit(&journal, "pas", &format!("A{n}"), &a01(&format!("A{n}"), n)).await;
    }
    let j = journal.clone();
    eventually("six messages routed", || {
        let j = j.clone();
        async move { j.routing_cursor().await.unwrap() == 6 }
    })
    .await;
    queue.stop(Duration::from_secs(10)).await;

    // Committed while stopped: routed after the restart.
    commit(&journal, "pas", "A6", &a01("A6", 6)).await;
    let unrouted_id = commit(&journal, "pas", "BAD", "not HL7 at all").await;
    let queue = start(&journal);
    let j = journal.clone();
    eventually("eight messages routed", || {
        let j = j.clone();
        async move { j.routing_cursor().await.unwrap() == unrouted_id }
    })
    .await;
    let s = sink.clone();
    eventually("seven documents delivered to sink", || {
        let s = s.clone();
        async move { s.delivered_ids().len() == 7 }
    })
    .await;
    queue.stop(Duration::from_secs(10)).await;

    for id in 1..=unrouted_id {
        let routings = journal.routings(id).await.unwrap();
        assert_eq!(routings.len(), 1, "message {id} routed exactly once");
    }
    assert_eq!(
        journal.routings(unrouted_id).await.unwrap()[0].outcome,
        RoutingOutcome::Failed
    );
    // One row per (message, destination): 7 for sink, 7 for other (no scheduler: pending).
    let all = journal
        .deliveries(DeliveryFilter {
            limit: Some(100),
            ..DeliveryFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 14);
    let pending_other = all
        .iter()
        .filter(|d| d.destination == "other" && d.status == DeliveryStatus::Pending)
        .count();
    assert_eq!(pending_other, 7);
    // Each delivered exactly once (no crash here, so no repeats).
    let mut ids = sink.delivered_ids();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 7);
}

/// `raw` with MSH-15 and MSH-16 set (enhanced mode when either is valued).
fn with_ack_types(raw: &str, msh15: &str, msh16: &str) -> String {
    let (msh, rest) = raw.split_once('\r').expect("a message of several segments");
    let mut fields: Vec<&str> = msh.split('|').collect();
    fields.resize(fields.len().max(16), "");
    fields[14] = msh15;
    fields[15] = msh16;
    format!("{}\r{rest}", fields.join("|"))
}

/// The application acknowledgement among a routing's deliveries, if any.
fn application_ack(routed: &Routed) -> Option<&NewDelivery> {
    let acks: Vec<&NewDelivery> = routed
        .routing
        .deliveries
        .iter()
        .filter(|d| d.mapping == APPLICATION_ACK)
        .collect();
    assert!(acks.len() <= 1, "{acks:?}");
    acks.first().copied()
}

#[test]
fn an_application_ack_is_queued_when_msh_16_asks_for_it() {
    let router = router(ADT_TO_TWO, &[], &["sink", "other", "acks"])
        .with_application_acks([("pas".to_string(), "acks".to_string())]);
    let raw = with_ack_types(&a01("C7", 1), "AL", "AL");
    let routed = router.route(&message(7, "pas", &raw), false, 1_000);
    assert_eq!(routed.routing.outcome, RoutingOutcome::Routed);
    let ack = application_ack(&routed).expect("an application ack");
    assert_eq!(ack.destination, "acks");
    assert!(ack.routes.is_empty() && ack.nhs_numbers.is_empty());
    assert_eq!(ack.patient_key, "application-ack:7");
    assert_eq!(ack.last_error, None);
    let text = std::str::from_utf8(&ack.document).unwrap();
    let segments: Vec<&str> = text.split_terminator('\r').collect();
    assert_eq!(segments.len(), 2, "{text}");
    assert!(text.ends_with('\r'), "every segment ends with CR: {text}");
    // addressed back to the sender, asking for an accept ack only
    let msh: Vec<&str> = segments[0].split('|').collect();
    assert_eq!(&msh[2..6], ["JUNCTION", "LCR", "PAS", "RAL01"]);
    assert_eq!(msh[8], "ACK^A01^ACK");
    assert_eq!((msh[14], msh[15]), ("AL", "NE"));
    assert_eq!(segments[1], "MSA|AA|C7");
    // the documents are queued as without it
    assert_eq!(routed.routing.deliveries.len(), 3);
    // no patient data in it
    assert!(
        !text.contains(&nhs_number(1)) && !text.contains("SMITH"),
        "{text}"
    );
}

#[test]
fn application_acks_follow_msh_16_the_outcome_and_the_listener() {
    let router = router(
        "[routes.a]\nmessages = [\"ADT^A01\"]\nmapping = \"adt\"\ndestinations = [\"sink\"]\n\
         [routes.b]\nmessages = [\"ADT^A08\"]\nmapping = \"nope\"\ndestinations = [\"sink\"]\n",
        &[],
        &["sink"],
    )
    .with_application_acks([("pas".to_string(), "acks".to_string())]);
    let a01 = a01("C1", 1);
    let a08 = a01.replace("ADT^A01^ADT_A01", "ADT^A08^ADT_A01");
    let a05 = a01.replace("ADT^A01^ADT_A01", "ADT^A05^ADT_A05");
    let ack_of = |raw: &str, listener: &str, replay: bool| {
        let routed = router.route(&message(3, listener, raw), replay, 0);
        application_ack(&routed).map(|d| {
            let text = String::from_utf8(d.document.to_vec()).unwrap();
            let msa = text.split('\r').nth(1).unwrap_or_default().to_string();
            (d.last_error.clone(), msa, text)
        })
    };
    let msa = |raw: &str| ack_of(raw, "pas", false).map(|(_, msa, _)| msa);

    // success: AL and SU answer AA, ER and NE do not
    for (msh16, expected) in [("AL", true), ("SU", true), ("ER", false), ("NE", false)] {
        let got = msa(&with_ack_types(&a01, "AL", msh16));
        assert_eq!(got.is_some(), expected, "{msh16}: {got:?}");
        if let Some(msa) = got {
            assert!(msa.starts_with("MSA|AA|C1"), "{msa}");
        }
    }
    // a mapping failure: AL and ER answer AE naming the stage and the journal
    // id, not the error (which may quote the message); SU does not
    for (msh16, expected) in [("AL", true), ("ER", true), ("SU", false)] {
        let got = ack_of(&with_ack_types(&a08, "NE", msh16), "pas", false);
        assert_eq!(got.is_some(), expected, "{msh16}: {got:?}");
        if let Some((last_error, msa, text)) = got {
            // v2.4: MSA-3 and ERR-1 (before v2.5)
            assert_eq!(
                msa,
                "MSA|AE|C1|not processed: the map stage failed (Junction message 3)"
            );
            assert!(
                text.ends_with(
                    "\rERR|^^^207&not processed: the map stage failed (Junction message 3)&HL70357\r"
                ),
                "{text}"
            );
            assert!(!text.contains("nope"), "{text}");
            // the destination is not among the configured ones
            assert!(last_error.is_some_and(|e| e.contains("acks")));
        }
    }
    // unrouted: it was accepted, no route wanted it
    assert!(msa(&with_ack_types(&a05, "AL", "AL")).is_some_and(|m| m.starts_with("MSA|AA|")));
    // original mode (neither MSH-15 nor MSH-16), another listener, a replay: none
    assert_eq!(msa(&a01), None);
    assert!(ack_of(&with_ack_types(&a01, "AL", "AL"), "lab", false).is_none());
    assert!(ack_of(&with_ack_types(&a01, "AL", "AL"), "pas", true).is_none());
}

/// Routes sending HWE-registered patients' admissions and results to `hwe`
/// as well as the store (`practice_ics`: E82061 is HWE, F84003 NEL).
const HWE_ROUTES: &str = r#"
[routes.adt]
messages = ["ADT^A01"]
mapping = "adt"
destinations = ["store"]

[routes.adt_hwe]
messages = ["ADT^A01"]
when = "patient.gp_practice | lookup(practice_ics) = 'HWE'"
mapping = "adt"
destinations = ["hwe"]

[routes.lab]
messages = ["ORU^R01"]
mapping = "oru_r01"
destinations = ["store"]

[routes.lab_hwe]
messages = ["ORU^R01"]
when = "patient.gp_practice | lookup(practice_ics) = 'HWE'"
mapping = "oru_r01"
destinations = ["hwe"]

[tables.practice_ics]
E82061 = "HWE"
F84003 = "NEL"
"#;

/// Lab results rarely carry PD1, and a PAS often sends A08/A11 without it: a
/// patient's later messages are routed by the GP registration an earlier
/// message stated, until a later one states another. What was learned is
/// kept in the journal (a restart keeps it); a replay of an older message
/// does not overwrite what a newer one said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patients_later_messages_follow_the_gp_registration_an_earlier_one_stated() {
    let oru = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/oru_r01_fbc_ue.hl7"),
    )
    .unwrap();
    assert!(!oru.contains("\rPD1|"));
    let oru = |control_id: &str, patient: u32| {
        oru.replace("WP26112016254400123", control_id)
            .replace("9990000018", &nhs_number(patient))
            .replace("RAL1234567", &format!("RAL{patient:07}"))
    };
    let a01_at = |control_id: &str, patient: u32, practice: &str| {
        a01(control_id, patient).replace("^^F84003|", &format!("^^{practice}|"))
    };
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(dir.path());
    let start = |journal: &crate::journal::Journal| {
        DeliveryQueue::start(
            journal.clone(),
            EventBus::default(),
            Arc::new(Metrics::new()),
            router(HWE_ROUTES, &[], &["store", "hwe"]),
            Vec::new(),
            Vec::new(),
        )
    };
    let destinations = |journal: crate::journal::Journal, id: i64| async move {
        let mut out: Vec<String> = journal
            .deliveries(DeliveryFilter {
                limit: Some(100),
                ..DeliveryFilter::default()
            })
            .await
            .unwrap()
            .into_iter()
            .filter(|d| d.message_id == id)
            .map(|d| d.destination)
            .collect();
        out.sort();
        out
    };
    let routed = |journal: crate::journal::Journal, last: i64| async move {
        eventually("routed", || {
            let j = journal.clone();
            async move { j.routing_cursor().await.unwrap() == last }
        })
        .await;
    };

    // registered in Hertfordshire: the admission, and the results after it in
    // the same batch, go to HWE; another patient's results, never seen, do not
    let admitted = commit(&journal, "pas", "A1", &a01_at("A1", 1, "E82061")).await;
    let results = commit(&journal, "lab", "R1", &oru("R1", 1)).await;
    let stranger = commit(&journal, "lab", "R2", &oru("R2", 2)).await;
    let queue = start(&journal);
    routed(journal.clone(), stranger).await;
    queue.stop(Duration::from_secs(10)).await;
    assert_eq!(
        destinations(journal.clone(), admitted).await,
        ["hwe", "store"]
    );
    assert_eq!(
        destinations(journal.clone(), results).await,
        ["hwe", "store"]
    );
    assert_eq!(destinations(journal.clone(), stranger).await, ["store"]);

    // after a restart, from the journal: still known
    let later = commit(&journal, "lab", "R3", &oru("R3", 1)).await;
    let queue = start(&journal);
    routed(journal.clone(), later).await;
    assert_eq!(destinations(journal.clone(), later).await, ["hwe", "store"]);

    // moved to a London practice: from then on the results stay local
    let moved = commit(&journal, "pas", "A2", &a01_at("A2", 1, "F84003")).await;
    let after = commit(&journal, "lab", "R4", &oru("R4", 1)).await;
    routed(journal.clone(), after).await;
    assert_eq!(destinations(journal.clone(), moved).await, ["store"]);
    assert_eq!(destinations(journal.clone(), after).await, ["store"]);

    // the first admission replayed goes where its own PD1 says, and does not
    // take the patient back to Hertfordshire
    let replayed = queue.handle().replay(admitted, None).await.unwrap();
    assert!(
        replayed.routes.contains(&"adt_hwe".to_string()),
        "{:?}",
        replayed.routes
    );
    // the results that went to HWE, replayed after the move: routed as the
    // patient is registered now, but resent to HWE when asked to (what a
    // neighbour never collected is resent where it went)
    let replayed = queue.handle().replay(results, None).await.unwrap();
    assert_eq!(replayed.routes, ["lab"]);
    let replayed = queue
        .handle()
        .replay(results, Some("hwe".to_string()))
        .await
        .unwrap();
    assert_eq!(replayed.deliveries.len(), 1, "{:?}", replayed.error);
    let patient = router(HWE_ROUTES, &[], &["store", "hwe"])
        .route(&message(after, "lab", &oru("R4", 1)), false, 0)
        .routing
        .deliveries[0]
        .patient_key
        .clone();
    let known = journal.registrations_blocking(&[patient]).unwrap();
    assert_eq!(known.len(), 1);
    assert!(
        known[0].identifiers.contains("F84003") && !known[0].identifiers.contains("E82061"),
        "{known:?}"
    );

    // first sent with the MRN only, then the lab's results carrying the NHS
    // number too (another Patient id): known by the MRN; and then by the NHS
    // number alone, learned from the results that carried both
    let mrn_only = a01_at("A3", 3, "E82061").replace(&format!("{}^^^NHS^NH~", nhs_number(3)), "");
    assert!(!mrn_only.contains(&nhs_number(3)));
    let oru_of_3 =
        |control_id: &str| oru(control_id, 3).replace("RAL1234567", &format!("RAL{:07}", 3));
    let first = commit(&journal, "pas", "A3", &mrn_only).await;
    let both = commit(&journal, "lab", "R5", &oru_of_3("R5")).await;
    let nhs_alone = commit(
        &journal,
        "lab",
        "R6",
        &oru_of_3("R6").replace(&format!("~RAL{:07}^^^RAL^MR", 3), ""),
    )
    .await;
    routed(journal.clone(), nhs_alone).await;
    for id in [first, both, nhs_alone] {
        assert_eq!(
            destinations(journal.clone(), id).await,
            ["hwe", "store"],
            "message {id}"
        );
    }

    // an update naming the GP alone (PD1-4, no practice) keeps the practice
    let gp_only = a01("A4", 3)
        .replace("PRIMROSE HILL SURGERY^^F84003", "")
        .replace("RAL0000003", &format!("RAL{:07}", 3));
    let update = commit(&journal, "pas", "A4", &gp_only).await;
    let results = commit(&journal, "lab", "R7", &oru_of_3("R7")).await;
    routed(journal.clone(), results).await;
    assert_eq!(
        destinations(journal.clone(), update).await,
        ["hwe", "store"]
    );
    assert_eq!(
        destinations(journal.clone(), results).await,
        ["hwe", "store"]
    );

    // the memory cannot be read (a journal hiccup): the message is not
    // failed, and is routed once it can be
    let raw = rusqlite::Connection::open(dir.path().join("journal.db")).unwrap();
    raw.execute_batch("ALTER TABLE registrations RENAME TO registrations_away")
        .unwrap();
    let held = commit(&journal, "lab", "R8", &oru_of_3("R8")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        journal.routings(held).await.unwrap().is_empty(),
        "not routed, not failed"
    );
    raw.execute_batch("ALTER TABLE registrations_away RENAME TO registrations")
        .unwrap();
    routed(journal.clone(), held).await;
    assert_eq!(destinations(journal.clone(), held).await, ["hwe", "store"]);

    // the PAS deletes the registration (PD1-3 `""`: the patient left the
    // practice): the results after it stay local, and an older update
    // arriving late does not bring the region back
    let deleted = a01("A5", 3)
        .replace("PRIMROSE HILL SURGERY^^F84003", "\"\"")
        .replace("RAL0000003", &format!("RAL{:07}", 3));
    let left = commit(&journal, "pas", "A5", &deleted).await;
    let results = commit(&journal, "lab", "R9", &oru_of_3("R9")).await;
    routed(journal.clone(), results).await;
    assert_eq!(destinations(journal.clone(), left).await, ["store"]);
    assert_eq!(destinations(journal.clone(), results).await, ["store"]);
    let late = a01_at("A6", 3, "E82061").replace("20261120", "20261101");
    let late = commit(&journal, "pas", "A6", &late).await;
    let results = commit(&journal, "lab", "R10", &oru_of_3("R10")).await;
    routed(journal.clone(), results).await;
    assert_eq!(
        destinations(journal.clone(), results).await,
        ["store"],
        "after the late A01 {late}"
    );

    // registered again (practice and GP), then the GP alone deleted (PD1-4
    // `""`, no practice sent): the practice is still known, the GP not
    commit(&journal, "pas", "A7", &a01_at("A7", 3, "E82061")).await;
    let gp_gone = a01("A8", 3).replace(
        "PD1|||PRIMROSE HILL SURGERY^^F84003|G8234567^OKAFOR^CHIDI^^^DR",
        "PD1||||\"\"",
    );
    assert!(gp_gone.contains("PD1||||\"\""));
    commit(&journal, "pas", "A8", &gp_gone).await;
    let results = commit(&journal, "lab", "R11", &oru_of_3("R11")).await;
    routed(journal.clone(), results).await;
    assert_eq!(
        destinations(journal.clone(), results).await,
        ["hwe", "store"]
    );
    let patient = router(HWE_ROUTES, &[], &["store", "hwe"])
        .route(&message(results, "lab", &oru_of_3("R11")), false, 0)
        .routing
        .deliveries[0]
        .patient_key
        .clone();
    let known = journal.registrations_blocking(&[patient]).unwrap();
    assert!(
        !known.is_empty()
            && known
                .iter()
                .all(|k| k.identifiers.contains("E82061") && !k.identifiers.contains("G8234567")),
        "{known:?}"
    );
    queue.stop(Duration::from_secs(10)).await;
}

/// What routing remembers comes from the local PAS (a listener), never from
/// a neighbour's document or HL7 a source brought; and a remembered
/// registration is given to a document's patient only when it is the
/// document's one live patient (not to an A40 of two merges, which would take
/// one patient's record to the other's region).
#[test]
fn remembered_registrations_come_from_the_pas_and_go_to_a_documents_one_patient() {
    let hwe = || Fixed {
        practice: "E82061",
        nhs: String::new(),
        only: "",
    };
    let router = router(
        "[routes.pas]\nlisteners = [\"pas\"]\nmessages = [\"ADT^*\"]\nmapping = \"adt_merge\"\ndestinations = [\"sink\"]\n\
         [routes.pas_hwe]\nlisteners = [\"pas\"]\nmessages = [\"ADT^*\"]\nmapping = \"adt_merge\"\ndestinations = [\"hwe\"]\nwhen = \"patient.gp_practice = 'E82061'\"\n\
         [routes.mesh_adt]\nsources = [\"inbox\"]\nmessages = [\"ADT^*\"]\nmapping = \"adt\"\ndestinations = [\"sink\"]\n\
         [routes.mesh_docs]\nsources = [\"inbox\"]\nmessages = [\"MESH^*\"]\ndestinations = [\"sink\"]\n",
        &["inbox"],
        &["sink", "hwe"],
    );
    let sample = |name: &str| {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("samples")
                .join(name),
        )
        .unwrap()
    };
    // an A40 of one merge: its survivor is the document's one live patient
    let one: Vec<String> = sample("adt_a40_merge.hl7")
        .split('\r')
        .filter(|s| !s.starts_with("PD1|"))
        .map(str::to_string)
        .collect();
    let one = one.join("\r");
    let routed = router.route_knowing(&message(1, "pas", &one), false, 0, &mut hwe());
    let to: Vec<&str> = routed
        .routing
        .deliveries
        .iter()
        .map(|d| d.destination.as_str())
        .collect();
    assert_eq!(to, ["sink", "hwe"], "{:?}", routed.routing.error);
    // an A40 of two merges (its first survivor states no practice, the second
    // a London one): not given the remembered one, not sent to HWE
    let two = sample("adt_a40_two_merges.hl7");
    let routed = router.route_knowing(&message(2, "pas", &two), false, 0, &mut hwe());
    let to: Vec<&str> = routed
        .routing
        .deliveries
        .iter()
        .map(|d| d.destination.as_str())
        .collect();
    assert_eq!(to, ["sink"], "{:?}", routed.routing.error);
    // and when its second survivor states an HWE practice, the first (London)
    // patient's record does not go to HWE with it: a destination is chosen
    // for a document of several live patients only when it is for each
    let hwe_second = two.replace("^^F84003^^^^^^^F84003", "^^E82061^^^^^^^E82061");
    assert_ne!(hwe_second, two);
    let routed2 = router.route_knowing(&message(5, "pas", &hwe_second), false, 0, &mut NoneKnown);
    let to: Vec<&str> = routed2
        .routing
        .deliveries
        .iter()
        .map(|d| d.destination.as_str())
        .collect();
    assert_eq!(to, ["sink"], "{:?}", routed2.routing.error);
    // learned from the PAS: what its second survivor states, under its keys
    assert!(routed
        .routing
        .registrations
        .iter()
        .any(|r| r.identifiers.contains("F84003") && r.patient_key.starts_with("identifier|")));
    // nothing learned from a neighbour's document, nor from HL7 a source brought
    let mut doc = message(3, "inbox", &sample("mesh_bundle_from_hwe.json"));
    doc.message_type = "MESH^TEST_WORKFLOW".to_string();
    let routed = router.route_knowing(&doc, false, 0, &mut NoneKnown);
    assert_eq!(
        routed.routing.outcome,
        RoutingOutcome::Routed,
        "{:?}",
        routed.routing.error
    );
    assert!(routed.routing.registrations.is_empty());
    let routed = router.route_knowing(
        &message(4, "inbox", &a01("S1", 4)),
        false,
        0,
        &mut NoneKnown,
    );
    assert_eq!(
        routed.routing.outcome,
        RoutingOutcome::Routed,
        "{:?}",
        routed.routing.error
    );
    assert!(routed.routing.registrations.is_empty());
}

/// What was learned for another NHS number (an MRN given to someone else
/// since) is not taken; taken from memory for a result sent with an MRN
/// alone, the NHS number it was learned with is the delivery's too, so the
/// patient's objection is asked about.
#[test]
fn a_remembered_registration_is_the_patients_own_and_carries_its_nhs_number() {
    // the MRN (a local id) learned at an HWE practice, with this NHS number
    let learned = |nhs: &str| Fixed {
        practice: "E82061",
        nhs: nhs.to_string(),
        only: "local-id",
    };
    let router = router(
        "[routes.lab]\nmessages = [\"ORU^R01\"]\nmapping = \"oru_r01\"\ndestinations = [\"store\"]\n\
         [routes.lab_hwe]\nmessages = [\"ORU^R01\"]\nmapping = \"oru_r01\"\ndestinations = [\"hwe\"]\nwhen = \"patient.gp_practice = 'E82061'\"\n",
        &[],
        &["store", "hwe"],
    );
    let oru = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/oru_r01_fbc_ue.hl7"),
    )
    .unwrap();
    // the MRN was learned for this NHS number: taken
    let routed = router.route_knowing(
        &message(1, "lab", &oru),
        false,
        0,
        &mut learned("9990000018"),
    );
    let to: Vec<&str> = routed
        .routing
        .deliveries
        .iter()
        .map(|d| d.destination.as_str())
        .collect();
    assert_eq!(to, ["store", "hwe"], "{:?}", routed.routing.error);
    // learned for another person's NHS number: not taken
    let routed = router.route_knowing(
        &message(2, "lab", &oru),
        false,
        0,
        &mut learned(&nhs_number(7)),
    );
    let to: Vec<&str> = routed
        .routing
        .deliveries
        .iter()
        .map(|d| d.destination.as_str())
        .collect();
    assert_eq!(to, ["store"]);
    // the result sent with the MRN alone: the NHS number learned with it is
    // asked about for objections
    let mrn_only = oru.replace("9990000018^^^NHS^NH~", "");
    let routed = router.route_knowing(
        &message(3, "lab", &mrn_only),
        false,
        0,
        &mut learned(&nhs_number(7)),
    );
    let hwe = routed
        .routing
        .deliveries
        .iter()
        .find(|d| d.destination == "hwe")
        .expect("to HWE");
    assert_eq!(hwe.nhs_numbers, [nhs_number(7)]);
}

/// The memory's keys follow the patient: an MRN first learned before the
/// patient was traced takes the NHS number on (so an MRN-only result asks
/// the objections register about it), and an MRN given to another person
/// forgets the first one's region.
#[test]
fn an_mrn_takes_its_patients_nhs_number_and_forgets_a_former_holder() {
    #[derive(Default)]
    struct Mem(BTreeMap<String, Known>);
    impl KnownPatients for Mem {
        fn registrations(&mut self, keys: &[String]) -> Result<Vec<Known>, String> {
            Ok(keys.iter().filter_map(|k| self.0.get(k).cloned()).collect())
        }
    }
    impl Mem {
        fn take(&mut self, routed: &Routed) {
            for r in &routed.routing.registrations {
                self.0.insert(
                    r.patient_key.clone(),
                    Known {
                        key: r.patient_key.clone(),
                        identifiers: serde_json::from_str(&r.identifiers).unwrap(),
                        nhs_number: r.nhs_number.clone(),
                        recorded_at: r.recorded_at,
                        message_id: routed.routing.message_id,
                    },
                );
            }
        }
    }
    let router = router(
        "[routes.adt]\nmessages = [\"ADT^*\"]\nmapping = \"adt\"\ndestinations = [\"store\"]\n\
         [routes.lab]\nmessages = [\"ORU^R01\"]\nmapping = \"oru_r01\"\ndestinations = [\"store\"]\n\
         [routes.lab_hwe]\nmessages = [\"ORU^R01\"]\nmapping = \"oru_r01\"\ndestinations = [\"hwe\"]\nwhen = \"patient.gp_practice = 'E82061'\"\n",
        &[],
        &["store", "hwe"],
    );
    let oru = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/oru_r01_fbc_ue.hl7"),
    )
    .unwrap()
    .replace("9990000018^^^NHS^NH~", "")
    .replace("RAL1234567", "RAL0000001");
    let to = |routed: &Routed| -> Vec<String> {
        routed
            .routing
            .deliveries
            .iter()
            .map(|d| d.destination.clone())
            .collect()
    };
    let mut mem = Mem::default();
    // admitted with the MRN only, registered in Hertfordshire
    let mrn_only = a01("A1", 1)
        .replace(&format!("{}^^^NHS^NH~", nhs_number(1)), "")
        .replace("^^F84003|", "^^E82061|");
    let r = router.route_knowing(&message(1, "pas", &mrn_only), false, 0, &mut mem);
    mem.take(&r);
    // traced: the update carries the NHS number and the MRN, no PD1
    let traced = a01("A2", 1).replace(
        "PD1|||PRIMROSE HILL SURGERY^^F84003|G8234567^OKAFOR^CHIDI^^^DR",
        "PD1|",
    );
    let r = router.route_knowing(&message(2, "pas", &traced), false, 0, &mut mem);
    mem.take(&r);
    // a result with the MRN alone: to HWE, asking about the NHS number
    let r = router.route_knowing(&message(3, "lab", &oru), false, 0, &mut mem);
    assert_eq!(to(&r), ["store", "hwe"], "{:?}", r.routing.error);
    let hwe = r
        .routing
        .deliveries
        .iter()
        .find(|d| d.destination == "hwe")
        .unwrap();
    assert_eq!(hwe.nhs_numbers, [nhs_number(1)]);
    // the MRN given to another person (another NHS number, no PD1): the
    // first holder's region is forgotten for it
    let other = a01("A3", 2).replace("RAL0000002", "RAL0000001").replace(
        "PD1|||PRIMROSE HILL SURGERY^^F84003|G8234567^OKAFOR^CHIDI^^^DR",
        "PD1|",
    );
    let r = router.route_knowing(&message(4, "pas", &other), false, 0, &mut mem);
    mem.take(&r);
    let r = router.route_knowing(&message(5, "lab", &oru), false, 0, &mut mem);
    assert_eq!(to(&r), ["store"]);
}

/// A practice the routes' table does not know (a new practice in a
/// neighbouring region) is reported by its table, so the operator can add
/// it; a known practice, or none, is not.
#[test]
fn a_practice_missing_from_a_routes_table_is_reported_by_the_table() {
    let router = router(HWE_ROUTES, &[], &["store", "hwe"]);
    let at = |practice: &str| a01("M1", 1).replace("^^F84003|", &format!("^^{practice}|"));
    let routed = router.route(&message(1, "pas", &at("E82999")), false, 0);
    assert_eq!(routed.lookup_misses, ["practice_ics"]);
    assert_eq!(routed.routing.deliveries.len(), 1, "the store only");
    let routed = router.route(&message(2, "pas", &at("E82061")), false, 0);
    assert!(routed.lookup_misses.is_empty());
    assert_eq!(routed.routing.deliveries.len(), 2);
    let none = a01("M3", 1).replace("PRIMROSE HILL SURGERY^^F84003", "");
    let routed = router.route(&message(3, "pas", &none), false, 0);
    assert!(
        routed.lookup_misses.is_empty(),
        "a document naming no practice"
    );
}
