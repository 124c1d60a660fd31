//! The record store and its FHIR reads end to end: a realistic transaction
//! Bundle (an admission with lab results, all `urn:uuid:` references) is
//! applied, the `/fhir` router is served on a real TCP port, every endpoint
//! is read over real HTTP, and every answer is checked here and then by the
//! independent validator (Python `fhir.resources`, R4B models).
//!
//! Needs the test venv: `bash tests/python/setup-venv.sh` (or `JUNCTION_VENV`
//! pointing at one). Without it the test fails, naming the script.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use junction::api::fhir::PatientsRead;
use junction::store::{EntryResult, RecordStore, RecordStoreConfig, SyncPolicy};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const NHS_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
const NHS_NUMBER: &str = "9434765919";
const MRN_SYSTEM: &str = "https://fhir.rvl.example.nhs.uk/Id/mrn";

/// Deterministic ids, as the mappings make them (UUIDv5 over system and value).
fn id(system: &str, value: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("{system}|{value}").as_bytes(),
    )
    .to_string()
}

struct Ids {
    patient: String,
    encounter: String,
    hb: String,
    wcc: String,
    report: String,
    practice: String,
}

fn ids() -> Ids {
    Ids {
        patient: id(NHS_SYSTEM, NHS_NUMBER),
        encounter: id("https://fhir.rvl.example.nhs.uk/Id/visit", "V0012345"),
        hb: id("https://fhir.rvl.example.nhs.uk/Id/obx", "LAB123-1"),
        wcc: id("https://fhir.rvl.example.nhs.uk/Id/obx", "LAB123-2"),
        report: id("https://fhir.rvl.example.nhs.uk/Id/order", "LAB123"),
        practice: id("https://fhir.nhs.uk/Id/ods-organization-code", "E82011"),
    }
}

fn entry(resource: Value) -> Value {
    let rtype = resource["resourceType"].as_str().unwrap().to_string();
    let rid = resource["id"].as_str().unwrap().to_string();
    json!({
        "fullUrl": format!("urn:uuid:{rid}"),
        "resource": resource,
        "request": {"method": "PUT", "url": format!("{rtype}/{rid}")}
    })
}

/// An ADT A01 with an FBC, as a mapping would turn it into a document.
fn document(ids: &Ids, family: &str) -> Value {
    let patient_ref = json!({"reference": format!("urn:uuid:{}", ids.patient)});
    let encounter_ref = json!({"reference": format!("urn:uuid:{}", ids.encounter)});
    let observation = |oid: &str, code: &str, display: &str, value: f64, unit: &str| {
        json!({
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "category": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "laboratory"
            }]}],
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]},
            "subject": patient_ref,
            "encounter": encounter_ref,
            "effectiveDateTime": "2026-03-01T09:12:00+00:00",
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
        })
    };
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "timestamp": "2026-03-01T09:30:00+00:00",
        "entry": [
            entry(json!({
                "resourceType": "Patient",
                "id": ids.patient,
                "identifier": [
                    {
                        "extension": [{
                            "url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus",
                            "valueCodeableConcept": {"coding": [{
                                "system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland",
                                "code": "01",
                                "display": "Number present and verified"
                            }]}
                        }],
                        "system": NHS_SYSTEM,
                        "value": NHS_NUMBER
                    },
                    {"system": MRN_SYSTEM, "value": "RVL1234567"}
                ],
                "name": [{"use": "official", "family": family, "given": ["Jane", "Anne"], "prefix": ["Mrs"]}],
                "telecom": [{"system": "phone", "value": "01632 960123", "use": "home"}],
                "gender": "female",
                "birthDate": "1958-07-14",
                "address": [{"use": "home", "line": ["1 High Street"], "city": "Luton", "postalCode": "LU1 1AA"}],
                "generalPractitioner": [{"reference": format!("urn:uuid:{}", ids.practice)}]
            })),
            entry(json!({
                "resourceType": "Organization",
                "id": ids.practice,
                "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "E82011"}],
                "name": "High Street Surgery"
            })),
            entry(json!({
                "resourceType": "Encounter",
                "id": ids.encounter,
                "identifier": [{"system": "https://fhir.rvl.example.nhs.uk/Id/visit", "value": "V0012345"}],
                "status": "in-progress",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP", "display": "inpatient encounter"},
                "subject": patient_ref,
                "period": {"start": "2026-03-01T08:45:00+00:00"}
            })),
            entry(observation(&ids.hb, "1022431000000105", "Haemoglobin estimation", 131.0, "g/L")),
            entry(observation(&ids.wcc, "1022541000000102", "Total white blood count", 7.2, "10*9/L")),
            entry(json!({
                "resourceType": "DiagnosticReport",
                "id": ids.report,
                "status": "final",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "26604007", "display": "Full blood count"}]},
                "subject": patient_ref,
                "encounter": encounter_ref,
                "issued": "2026-03-01T09:25:00+00:00",
                "result": [
                    {"reference": format!("urn:uuid:{}", ids.hb)},
                    {"reference": format!("urn:uuid:{}", ids.wcc)}
                ]
            }))
        ]
    })
}

/// The repository: cargo's run-time `CARGO_MANIFEST_DIR` first (checkouts
/// that share a target dir may run a binary built in another checkout).
fn repo() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The Python of the test venv: `JUNCTION_VENV`, else `.venv` in the repository.
fn venv_python() -> PathBuf {
    let root = repo();
    let venv = std::env::var_os("JUNCTION_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv"));
    let python = venv.join("bin").join("python");
    assert!(
        python.exists(),
        "{} not found: create the test venv with `bash tests/python/setup-venv.sh` \
         (or set JUNCTION_VENV); it holds fhir.resources, the independent FHIR validator",
        python.display()
    );
    python
}

/// Runs `python args…` and fails the test with its output unless it exits 0.
fn run_python(args: &[&std::ffi::OsStr], what: &str) {
    let output = Command::new(venv_python())
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run the venv python for {what}: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    eprintln!("{what}:\n{stdout}");
}

/// Validates the transaction Bundles in `dir` with tests/python/validate_fhir.py.
fn validate_documents(dir: &Path) {
    let script = repo().join("tests/python/validate_fhir.py");
    assert!(
        script.exists(),
        "{} not found: it is the independent validator of documents (FHIR transaction Bundles)",
        script.display()
    );
    run_python(
        &[script.as_os_str(), dir.as_os_str()],
        "tests/python/validate_fhir.py",
    );
}

/// Validates every FHIR JSON answer in `dir` (searchset and history Bundles,
/// single resources, OperationOutcomes) against the fhir.resources R4B model
/// of its resourceType. (validate_fhir.py checks transaction Bundles only.)
const VALIDATE_ANSWERS: &str = r#"
import json, os, sys
from fhir.resources.R4B import get_fhir_model_class
failed = 0
names = sorted(n for n in os.listdir(sys.argv[1]) if n.endswith(".json"))
for name in names:
    with open(os.path.join(sys.argv[1], name), "rb") as f:
        raw = f.read()
    rtype = json.loads(raw)["resourceType"]
    try:
        get_fhir_model_class(rtype).model_validate_json(raw)
        print(f"{name}: ok ({rtype})")
    except Exception as err:
        failed += 1
        print(f"{name}: {rtype}: {err}")
print(f"{len(names) - failed} passed, {failed} failed")
sys.exit(1 if failed or not names else 0)
"#;

/// (request path, Patient ids read) as the audit layer would record it.
type Audited = (String, Vec<String>);

struct Answer {
    status: u16,
    content_type: String,
    etag: Option<String>,
    body: Value,
}

/// GETs `path` and keeps the body in `out/<name>.json` for the validator.
async fn get(client: &reqwest::Client, base: &str, path: &str, out: &Path, name: &str) -> Answer {
    let response = client
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap_or_else(|err| panic!("GET {path}: {err}"));
    let status = response.status().as_u16();
    let header = |name: reqwest::header::HeaderName| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let content_type = header(reqwest::header::CONTENT_TYPE).unwrap_or_default();
    let etag = header(reqwest::header::ETAG);
    let text = response.text().await.unwrap();
    std::fs::write(out.join(format!("{name}.json")), &text).unwrap();
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("GET {path}: not JSON ({err}): {text}"));
    Answer {
        status,
        content_type,
        etag,
        body,
    }
}

/// `Type/id` of every entry of a searchset, in order.
fn entry_names(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    let r = &e["resource"];
                    format!(
                        "{}/{}",
                        r["resourceType"].as_str().unwrap(),
                        r["id"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn assert_searchset(answer: &Answer, base: &str, expected: &[String]) {
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.content_type, "application/fhir+json");
    let bundle = &answer.body;
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "searchset");
    assert_eq!(bundle["total"], expected.len());
    assert_eq!(entry_names(bundle), expected);
    for entry in bundle["entry"].as_array().into_iter().flatten() {
        let r = &entry["resource"];
        assert_eq!(
            entry["fullUrl"],
            format!(
                "{base}/fhir/{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            )
        );
        assert_eq!(entry["search"]["mode"], "match");
    }
}

fn assert_outcome(answer: &Answer, status: u16, code: &str, diagnostics: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.content_type, "application/fhir+json");
    assert_eq!(answer.body["resourceType"], "OperationOutcome");
    let issue = &answer.body["issue"][0];
    assert_eq!(issue["severity"], "error");
    assert_eq!(issue["code"], code);
    assert_eq!(issue["diagnostics"], diagnostics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_reads_over_http_return_what_was_stored_and_validate() {
    let dir = tempfile::tempdir().unwrap();
    let documents = dir.path().join("documents");
    let answers = dir.path().join("answers");
    std::fs::create_dir_all(&documents).unwrap();
    std::fs::create_dir_all(&answers).unwrap();
    let ids = ids();

    // The document itself passes the independent document validator.
    let doc = document(&ids, "Smith");
    std::fs::write(
        documents.join("a01_fbc.json"),
        serde_json::to_vec_pretty(&doc).unwrap(),
    )
    .unwrap();
    validate_documents(&documents);

    let store = RecordStore::open(&RecordStoreConfig {
        path: dir.path().join("data/records.db"),
        sync: SyncPolicy::Full,
        postgres: None,
    })
    .unwrap();
    let event_time = "2026-03-01T09:30:00Z".parse().unwrap();
    let outcome = store.apply_bundle(&doc, Some(event_time)).unwrap();
    assert_eq!(outcome.written(), 6, "{outcome:?}");
    // Delivered twice (at-least-once): nothing changes.
    let again = store.apply_bundle(&doc, Some(event_time)).unwrap();
    assert_eq!(again.unchanged(), 6, "{again:?}");
    // A08 with a new surname, one hour later: Patient version 2.
    let a08 = document(&ids, "Smith-Jones");
    let update = store
        .apply_bundle(&a08, Some("2026-03-01T10:30:00Z".parse().unwrap()))
        .unwrap();
    assert_eq!(update.written(), 1, "{update:?}");
    assert_eq!(update.unchanged(), 5, "{update:?}");
    // The first document resent late is older than the A08: skipped.
    let late = store.apply_bundle(&doc, Some(event_time)).unwrap();
    assert_eq!(
        late.entries[0].result,
        EntryResult::Stale { version: 2 },
        "{late:?}"
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    // Stands in for the audit layer of issue 4: what it learns from each answer.
    let audited: Arc<Mutex<Vec<Audited>>> = Arc::default();
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        let audited = Arc::clone(&audited);
        // Merged as the main server will: its router has a fallback of its own.
        let app = axum::Router::new()
            .route("/health", axum::routing::get(|| async { "ok" }))
            .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "no such route") })
            .merge(junction::api::fhir::router(store.clone(), None))
            .layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    let audited = Arc::clone(&audited);
                    async move {
                        let path = request.uri().path().to_string();
                        let response = next.run(request).await;
                        if let Some(PatientsRead(ids)) = response.extensions().get::<PatientsRead>()
                        {
                            audited.lock().unwrap().push((path, ids.clone()));
                        }
                        response
                    }
                },
            ));
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
    });
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let patient = format!("Patient/{}", ids.patient);

    // Patient?identifier=system|value
    let found = get(
        &client,
        &base,
        &format!("/fhir/Patient?identifier={NHS_SYSTEM}%7C{NHS_NUMBER}"),
        &answers,
        "01-patient-by-nhs-number",
    )
    .await;
    assert_searchset(&found, &base, std::slice::from_ref(&patient));
    let p = &found.body["entry"][0]["resource"];
    assert_eq!(p["name"][0]["family"], "Smith-Jones");
    assert_eq!(p["meta"]["versionId"], "2");
    assert_eq!(
        p["generalPractitioner"][0]["reference"],
        format!("Organization/{}", ids.practice)
    );
    assert_eq!(
        found.body["link"][0]["url"],
        format!("{base}/fhir/Patient?identifier={NHS_SYSTEM}%7C{NHS_NUMBER}")
    );
    // The MRN finds her too; an unknown number finds nobody (200, total 0).
    let by_mrn = get(
        &client,
        &base,
        &format!("/fhir/Patient?identifier={MRN_SYSTEM}|RVL1234567"),
        &answers,
        "02-patient-by-mrn",
    )
    .await;
    assert_searchset(&by_mrn, &base, std::slice::from_ref(&patient));
    let nobody = get(
        &client,
        &base,
        &format!("/fhir/Patient?identifier={NHS_SYSTEM}|9999999999"),
        &answers,
        "03-patient-unknown-nhs-number",
    )
    .await;
    assert_searchset(&nobody, &base, &[]);

    // Patient/{id}: the current version, with its ETag.
    let read = get(
        &client,
        &base,
        &format!("/fhir/{patient}"),
        &answers,
        "04-patient-read",
    )
    .await;
    assert_eq!(read.status, 200);
    assert_eq!(read.content_type, "application/fhir+json");
    assert_eq!(read.etag.as_deref(), Some("W/\"2\""));
    assert_eq!(read.body["id"], ids.patient.as_str());
    assert_eq!(read.body["identifier"][0]["value"], NHS_NUMBER);
    assert_eq!(read.body["meta"]["versionId"], "2");

    // Patient/{id}/$everything
    let everything = get(
        &client,
        &base,
        &format!("/fhir/{patient}/$everything"),
        &answers,
        "05-patient-everything",
    )
    .await;
    let mut expected = vec![
        patient.clone(),
        format!("DiagnosticReport/{}", ids.report),
        format!("Encounter/{}", ids.encounter),
    ];
    let mut observations = vec![
        format!("Observation/{}", ids.hb),
        format!("Observation/{}", ids.wcc),
    ];
    observations.sort();
    expected.extend(observations.iter().cloned());
    assert_searchset(&everything, &base, &expected);

    // {Type}?patient={id}
    let obs = get(
        &client,
        &base,
        &format!("/fhir/Observation?patient={}", ids.patient),
        &answers,
        "06-observations-of-patient",
    )
    .await;
    assert_searchset(&obs, &base, &observations);
    for entry in obs.body["entry"].as_array().unwrap() {
        assert_eq!(entry["resource"]["subject"]["reference"], patient);
        assert_eq!(
            entry["resource"]["encounter"]["reference"],
            format!("Encounter/{}", ids.encounter)
        );
    }
    // the same by `subject`, one page at a time: `next` then `previous` links
    let first = get(
        &client,
        &base,
        &format!("/fhir/Observation?subject=Patient/{}&_count=1", ids.patient),
        &answers,
        "06b-observations-first-page",
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["total"], 2);
    assert_eq!(first.body["entry"].as_array().map(Vec::len), Some(1));
    let link = |answer: &Answer, relation: &str| {
        answer.body["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == relation)
            .map(|l| l["url"].as_str().unwrap().to_string())
    };
    assert_eq!(link(&first, "previous"), None);
    let next = link(&first, "next").expect("a next link");
    assert!(next.ends_with("&_count=1&_offset=1"), "{next}");
    let second = get(
        &client,
        &base,
        next.strip_prefix(base.as_str())
            .expect("a link to this server"),
        &answers,
        "06c-observations-second-page",
    )
    .await;
    assert_eq!(second.body["total"], 2);
    assert_eq!(link(&second, "next"), None);
    assert!(link(&second, "previous").is_some_and(|p| p.ends_with("&_offset=0")));
    let mut paged: Vec<String> = [&first, &second]
        .iter()
        .flat_map(|a| entry_names(&a.body))
        .collect();
    paged.sort();
    assert_eq!(paged, observations);
    // narrowed by code, category, status and date (R4 date ranges: the
    // results were taken at 09:12 UTC on 1 March)
    let narrowed = [
        ("code=1022431000000105", vec![ids.hb.as_str()]),
        (
            "code=http://snomed.info/sct%7C1022541000000102",
            vec![&ids.wcc],
        ),
        ("code=http://loinc.org%7C1022541000000102", vec![]),
        (
            "code=1022431000000105,1022541000000102",
            vec![&ids.hb, &ids.wcc],
        ),
        ("category=laboratory&status=final", vec![&ids.hb, &ids.wcc]),
        ("status=preliminary", vec![]),
        ("date=2026-03-01", vec![&ids.hb, &ids.wcc]),
        ("date=ge2026-02-01&date=lt2026-04", vec![&ids.hb, &ids.wcc]),
        ("date=gt2026-03-01T09:12Z", vec![]),
        (
            "date=2026-03-01T09:12:00%2B00:00&code=1022431000000105",
            vec![&ids.hb],
        ),
        ("_sort=-date&category=laboratory", vec![&ids.hb, &ids.wcc]),
    ];
    for (i, (query, expected)) in narrowed.iter().enumerate() {
        let answer = get(
            &client,
            &base,
            &format!("/fhir/Observation?patient={}&{query}", ids.patient),
            &answers,
            &format!("06d-observations-narrowed-{i}"),
        )
        .await;
        let mut expected: Vec<String> = expected
            .iter()
            .map(|id| format!("Observation/{id}"))
            .collect();
        expected.sort();
        let mut got = entry_names(&answer.body);
        got.sort();
        assert_eq!(answer.status, 200, "{query}: {}", answer.body);
        assert_eq!(got, expected, "{query}");
        assert_eq!(answer.body["total"], expected.len(), "{query}");
    }
    // `_summary=count`: the total only; `_pretty=true`: the same, indented
    let counted = get(
        &client,
        &base,
        &format!(
            "/fhir/Observation?patient={}&category=laboratory&_summary=count&_pretty=true",
            ids.patient
        ),
        &answers,
        "06g-observations-counted",
    )
    .await;
    assert_eq!(counted.status, 200, "{}", counted.body);
    assert_eq!(counted.body["total"], 2);
    assert!(counted.body.get("entry").is_none(), "{}", counted.body);
    let pretty = client
        .get(format!("{base}/fhir/{patient}?_pretty=true"))
        .header("Accept", "application/json+fhir")
        .send()
        .await
        .unwrap();
    assert_eq!(pretty.status().as_u16(), 200);
    let text = pretty.text().await.unwrap();
    assert!(text.starts_with("{\n  \""), "{text}");
    let read_back: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(read_back["id"], ids.patient.as_str());
    let encounters = get(
        &client,
        &base,
        &format!(
            "/fhir/Encounter?patient={}&date=ge2026-06-01&class=IMP",
            ids.patient
        ),
        &answers,
        "06e-encounters-still-open",
    )
    .await;
    assert_searchset(
        &encounters,
        &base,
        &[format!("Encounter/{}", ids.encounter)],
    );
    let bad = get(
        &client,
        &base,
        &format!("/fhir/Observation?patient={}&date=ap2026", ids.patient),
        &answers,
        "06f-approximately",
    )
    .await;
    assert_outcome(
        &bad,
        400,
        "invalid",
        "date prefix `ap` (approximately) is not supported, expected eq, ne, gt, lt, ge, le, \
         sa or eb",
    );
    let reports = get(
        &client,
        &base,
        &format!("/fhir/DiagnosticReport?patient=Patient/{}", ids.patient),
        &answers,
        "07-reports-of-patient",
    )
    .await;
    assert_searchset(
        &reports,
        &base,
        &[format!("DiagnosticReport/{}", ids.report)],
    );
    let results: Vec<&str> = reports.body["entry"][0]["resource"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reference"].as_str().unwrap())
        .collect();
    assert_eq!(
        results,
        vec![
            format!("Observation/{}", ids.hb),
            format!("Observation/{}", ids.wcc)
        ]
    );
    let conditions = get(
        &client,
        &base,
        &format!("/fhir/Condition?patient={}", ids.patient),
        &answers,
        "08-no-conditions",
    )
    .await;
    assert_searchset(&conditions, &base, &[]);

    // {Type}/{id} for the rest.
    for (i, name) in expected.iter().skip(1).enumerate() {
        let one = get(
            &client,
            &base,
            &format!("/fhir/{name}"),
            &answers,
            &format!("09-read-{i}"),
        )
        .await;
        assert_eq!(one.status, 200, "{name}: {}", one.body);
        assert_eq!(
            format!(
                "{}/{}",
                one.body["resourceType"].as_str().unwrap(),
                one.body["id"].as_str().unwrap()
            ),
            *name
        );
        assert_eq!(one.body["meta"]["versionId"], "1");
    }

    // History of the Patient: versions 2 and 1.
    let history = get(
        &client,
        &base,
        &format!("/fhir/{patient}/_history"),
        &answers,
        "10-patient-history",
    )
    .await;
    assert_eq!(history.status, 200);
    assert_eq!(history.body["type"], "history");
    let families: Vec<&str> = history.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["name"][0]["family"].as_str().unwrap())
        .collect();
    assert_eq!(families, vec!["Smith-Jones", "Smith"]);

    // The CapabilityStatement.
    let metadata = get(&client, &base, "/fhir/metadata", &answers, "10-metadata").await;
    assert_eq!(metadata.status, 200);
    assert_eq!(metadata.body["resourceType"], "CapabilityStatement");
    assert_eq!(metadata.body["fhirVersion"], "4.0.1");
    assert_eq!(metadata.body["rest"][0]["resource"][0]["type"], "Patient");

    // Unknown ids: 404; bad parameters: 400; each an OperationOutcome.
    let missing = get(
        &client,
        &base,
        "/fhir/Patient/0f0e0d0c-0000-5000-8000-000000000000",
        &answers,
        "11-unknown-patient",
    )
    .await;
    assert_outcome(
        &missing,
        404,
        "not-found",
        "no Patient/0f0e0d0c-0000-5000-8000-000000000000 in the record store",
    );
    let missing = get(
        &client,
        &base,
        "/fhir/Patient/nobody/$everything",
        &answers,
        "12-unknown-everything",
    )
    .await;
    assert_outcome(
        &missing,
        404,
        "not-found",
        "no Patient/nobody in the record store",
    );
    let bad = get(
        &client,
        &base,
        "/fhir/Patient?name=Smith",
        &answers,
        "13-bad-parameter",
    )
    .await;
    assert_outcome(
        &bad,
        400,
        "invalid",
        "unsupported search parameter `name` for Patient, expected `identifier`",
    );
    let bad = get(
        &client,
        &base,
        "/fhir/Observation",
        &answers,
        "14-no-criteria",
    )
    .await;
    assert_outcome(
        &bad,
        400,
        "invalid",
        "a search of Observation needs `patient={id}`",
    );
    let bad = get(
        &client,
        &base,
        "/fhir/Observation?patient=Group/1",
        &answers,
        "15-bad-patient",
    )
    .await;
    assert_outcome(
        &bad,
        400,
        "invalid",
        "patient `Group/1` is not a Patient id, expected `id` or `Patient/id`",
    );
    let bad = get(&client, &base, "/fhir/patient/abc", &answers, "16-bad-type").await;
    assert_outcome(
        &bad,
        400,
        "invalid",
        "`patient` is not a resource type, expected a name like Patient or Observation",
    );
    let bad = get(&client, &base, "/fhir/Patient/a%20b", &answers, "17-bad-id").await;
    assert_outcome(
        &bad,
        400,
        "invalid",
        "`a b` is not a FHIR id, expected 1-64 of A-Z a-z 0-9 - .",
    );
    let bad = get(
        &client,
        &base,
        &format!("/fhir/Encounter/{}/$everything", ids.encounter),
        &answers,
        "18-unknown-operation",
    )
    .await;
    assert_outcome(
        &bad,
        404,
        "not-found",
        "unknown operation `$everything` on Encounter, expected $everything (Patient) or _history",
    );
    let bad = get(
        &client,
        &base,
        "/fhir/Patient/a/b/c/d",
        &answers,
        "19-unknown-route",
    )
    .await;
    assert_eq!(bad.status, 404);
    assert_eq!(bad.body["resourceType"], "OperationOutcome");

    // A cancelled admission (A11 → DELETE): 410 Gone, and gone from searches.
    let cancel = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": format!("Encounter/{}", ids.encounter)}}
    ]});
    let deleted = store
        .apply_bundle(&cancel, Some("2026-03-01T11:00:00Z".parse().unwrap()))
        .unwrap();
    assert_eq!(deleted.deleted(), 1);
    let gone = get(
        &client,
        &base,
        &format!("/fhir/Encounter/{}", ids.encounter),
        &answers,
        "20-deleted-encounter",
    )
    .await;
    assert_outcome(
        &gone,
        410,
        "deleted",
        &format!("Encounter/{} was deleted (version 2)", ids.encounter),
    );
    let encounters = get(
        &client,
        &base,
        &format!("/fhir/Encounter?patient={}", ids.patient),
        &answers,
        "21-no-encounters",
    )
    .await;
    assert_searchset(&encounters, &base, &[]);

    // A client that accepts XML only is told so (406), in the JSON it did not ask for.
    let xml_only = client
        .get(format!("{base}/fhir/metadata"))
        .header("Accept", "application/fhir+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(xml_only.status().as_u16(), 406);
    let outcome: Value = xml_only.json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], "not-supported");
    std::fs::write(answers.join("21-xml-only.json"), outcome.to_string()).unwrap();

    // Commas in `identifier` are OR (each patient once); a type no mapping
    // writes, or a typo, is a 404 rather than "none"; `$everything` takes
    // `_type` and refuses what it does not know; `_history` pages.
    let either = get(
        &client,
        &base,
        &format!(
            "/fhir/Patient?identifier={NHS_SYSTEM}|9999999999,{MRN_SYSTEM}|RVL1234567,{NHS_SYSTEM}|{NHS_NUMBER}"
        ),
        &answers,
        "22-patient-by-either-identifier",
    )
    .await;
    assert_searchset(&either, &base, std::slice::from_ref(&patient));
    let typo = get(
        &client,
        &base,
        &format!("/fhir/AllergyIntolerances?patient={}", ids.patient),
        &answers,
        "23-unknown-type",
    )
    .await;
    assert_eq!(typo.status, 404, "{}", typo.body);
    assert_eq!(typo.body["resourceType"], "OperationOutcome");
    assert!(
        typo.body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .starts_with("`AllergyIntolerances` is not searched here, expected Patient or one of AllergyIntolerance,"),
        "{}",
        typo.body
    );
    let only_patient = get(
        &client,
        &base,
        &format!("/fhir/{patient}/$everything?_type=Patient,Condition"),
        &answers,
        "24-everything-of-types",
    )
    .await;
    assert_searchset(&only_patient, &base, std::slice::from_ref(&patient));
    let unknown = get(
        &client,
        &base,
        &format!("/fhir/{patient}/$everything?start=2030-01-01"),
        &answers,
        "25-everything-unknown-parameter",
    )
    .await;
    assert_outcome(
        &unknown,
        400,
        "invalid",
        "unsupported parameter `start` for $everything, expected _type, _count, _offset, _summary=count",
    );
    let first = get(
        &client,
        &base,
        &format!("/fhir/{patient}/_history?_count=1"),
        &answers,
        "26-history-paged",
    )
    .await;
    assert_eq!(first.body["total"], 2, "{}", first.body);
    assert_eq!(first.body["entry"].as_array().unwrap().len(), 1);
    assert_eq!(first.body["link"][1]["relation"], "next", "{}", first.body);

    // A version of the history read on its own (vread); a read takes
    // `_format` (JSON) and `_pretty` only, and `$everything`'s `_type` only
    // FHIR types: what it cannot honour is refused, never ignored.
    let v1 = get(
        &client,
        &base,
        &format!("/fhir/{patient}/_history/1"),
        &answers,
        "27-vread",
    )
    .await;
    assert_eq!(v1.status, 200, "{}", v1.body);
    assert_eq!(v1.body["meta"]["versionId"], "1", "{}", v1.body);
    assert_eq!(v1.etag.as_deref(), Some("W/\"1\""));
    let none = get(
        &client,
        &base,
        &format!("/fhir/{patient}/_history/99"),
        &answers,
        "28-vread-none",
    )
    .await;
    assert_eq!(none.status, 404, "{}", none.body);
    for (query, says) in [
        (
            "_summary=true",
            "unsupported parameter `_summary` for a read",
        ),
        (
            "_elements=id",
            "unsupported parameter `_elements` for a read",
        ),
        ("_format=xml", "unsupported _format `xml`"),
    ] {
        let refused = get(
            &client,
            &base,
            &format!("/fhir/{patient}?{query}"),
            &answers,
            "29-read-refused",
        )
        .await;
        assert_eq!(refused.status, 400, "{query}: {}", refused.body);
        let said = refused.body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default();
        assert!(said.starts_with(says), "{query}: {said}");
    }
    let typo = get(
        &client,
        &base,
        &format!("/fhir/{patient}/$everything?_type=Observation,Observatoin"),
        &answers,
        "30-everything-type-typo",
    )
    .await;
    assert_eq!(typo.status, 400, "{}", typo.body);
    // a conditional read of the version the client has: 304, no body; the
    // version and its time in the headers either way
    let current = client
        .get(format!("{base}/fhir/{patient}"))
        .send()
        .await
        .unwrap();
    let etag = current.headers()["etag"].to_str().unwrap().to_string();
    assert!(
        current.headers().contains_key("last-modified"),
        "{:?}",
        current.headers()
    );
    let again = client
        .get(format!("{base}/fhir/{patient}"))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 304);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
    assert!(again.text().await.unwrap().is_empty());

    shutdown.cancel();
    server.await.unwrap().unwrap();

    // Every successful read told the audit layer whose data it returned;
    // refusals and errors told it nothing.
    let audited = audited.lock().unwrap().clone();
    let of = |path: &str| -> Vec<Vec<String>> {
        audited
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, ids)| ids.clone())
            .collect()
    };
    let her = vec![ids.patient.clone()];
    let nobody: Vec<String> = Vec::new();
    assert_eq!(
        of("/fhir/Patient"),
        vec![her.clone(), her.clone(), nobody.clone(), her.clone()]
    );
    // (two reads, then the one with the ETag and the conditional one: 304)
    assert_eq!(
        of(&format!("/fhir/{patient}")),
        vec![her.clone(), her.clone(), her.clone(), her.clone()]
    );
    assert_eq!(
        of(&format!("/fhir/{patient}/_history/1")),
        vec![her.clone()]
    );
    assert_eq!(
        of(&format!("/fhir/{patient}/$everything")),
        vec![her.clone(), her.clone()]
    );
    assert_eq!(
        of(&format!("/fhir/{patient}/_history")),
        vec![her.clone(), her.clone()]
    );
    // (the search, its two pages by `subject`, then the narrowed searches,
    // which name her also when nothing matched: "no such result" is an
    // answer about her record too)
    let narrowed_read: Vec<Vec<String>> = narrowed.iter().map(|_| her.clone()).collect();
    assert_eq!(
        of("/fhir/Observation"),
        [
            vec![her.clone(), her.clone(), her.clone()],
            narrowed_read,
            vec![her.clone()]
        ]
        .concat()
    );
    assert_eq!(of("/fhir/Condition"), vec![her.clone()]);
    assert_eq!(
        of(&format!("/fhir/Observation/{}", ids.hb)),
        vec![her.clone()]
    );
    assert_eq!(
        of(&format!("/fhir/Encounter/{}", ids.encounter)),
        vec![her.clone()]
    );
    assert_eq!(of("/fhir/Encounter"), vec![her.clone(), her.clone()]);
    assert!(of("/fhir/Patient/nobody/$everything").is_empty());
    assert_eq!(audited.len(), 16 + narrowed.len() + 6 + 3, "{audited:?}");

    // Every answer validates with fhir.resources (R4B models).
    run_python(
        &[
            std::ffi::OsStr::new("-c"),
            std::ffi::OsStr::new(VALIDATE_ANSWERS),
            answers.as_os_str(),
        ],
        "fhir.resources validation of the answers",
    );
}

/// HL7 TS (EVN-2, MSH-7) to an instant: `YYYYMMDDHHMM[SS[.S…]][+/-ZZZZ]`,
/// local time in Europe/London when no offset is given.
fn hl7_instant(ts: &str) -> Option<jiff::Timestamp> {
    let ts = ts.split('^').next()?.trim();
    let digits = ts.bytes().take_while(u8::is_ascii_digit).count();
    if !(12..=14).contains(&digits) {
        return None;
    }
    let rest = &ts[digits..];
    let rest = match rest.strip_prefix('.') {
        Some(r) => r.trim_start_matches(|c: char| c.is_ascii_digit()),
        None => rest,
    };
    let civil =
        jiff::civil::DateTime::strptime("%Y%m%d%H%M%S", format!("{:0<14}", &ts[..digits])).ok()?;
    if rest.is_empty() {
        return civil.in_tz("Europe/London").ok().map(|z| z.timestamp());
    }
    let sign = match rest.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let hours: i32 = rest.get(1..3)?.parse().ok()?;
    let minutes: i32 = rest.get(3..5)?.parse().ok()?;
    let offset = jiff::tz::Offset::from_seconds(sign * (hours * 3600 + minutes * 60)).ok()?;
    offset.to_timestamp(civil).ok()
}

/// A document mapped from a sample, with its event time.
struct Mapped {
    label: String,
    document: Value,
    event_time: jiff::Timestamp,
}

/// Every message of samples/*.hl7 mapped by the shipped mappings.
fn mapped_samples() -> Vec<Mapped> {
    let root = repo();
    let set = junction::mapping::MappingSet::load_dir(&root.join("mappings"))
        .unwrap_or_else(|errors| panic!("mappings/ does not load: {errors:?}"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hl7"))
        .collect();
    files.sort();
    let mut mapped = Vec::new();
    for file in files {
        let raw = std::fs::read(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let text = junction::hl7::decode(&raw).unwrap_or_else(|e| panic!("{name}: {e}"));
        let messages = junction::hl7::split_batch(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (i, text) in messages.iter().enumerate() {
            let message =
                junction::hl7::Message::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let header = message.header().unwrap();
            let plan = set
                .select(&header.message_code, &header.trigger_event)
                .unwrap_or_else(|| {
                    panic!(
                        "{name}: no mapping for {}^{}",
                        header.message_code, header.trigger_event
                    )
                });
            let output = plan
                .apply(&message)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let evn2 = message.get("EVN-2").unwrap().filter(|s| !s.is_empty());
            let ts = evn2.or(message.get("MSH-7").unwrap()).unwrap_or_default();
            let event_time =
                hl7_instant(&ts).unwrap_or_else(|| panic!("{name}: no event time in {ts:?}"));
            mapped.push(Mapped {
                label: format!("{name}#{i}"),
                document: output.value(),
                event_time,
            });
        }
    }
    mapped
}

/// Every `Type/id` the documents write.
fn urls(mapped: &[Mapped]) -> Vec<(String, String)> {
    let mut urls: Vec<(String, String)> = mapped
        .iter()
        .flat_map(|m| m.document["entry"].as_array().unwrap().iter())
        .map(|e| {
            let r = &e["resource"];
            (
                r["resourceType"].as_str().unwrap().to_string(),
                r["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    urls.sort();
    urls.dedup();
    urls
}

fn without_meta(mut resource: Value) -> Value {
    resource.as_object_mut().unwrap().remove("meta");
    resource
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_samples_converge_whatever_the_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let mapped = mapped_samples();
    assert!(
        mapped.len() >= 15,
        "only {} sample messages mapped",
        mapped.len()
    );
    let documents = dir.path().join("documents");
    std::fs::create_dir_all(&documents).unwrap();
    for (i, m) in mapped.iter().enumerate() {
        std::fs::write(
            documents.join(format!("{i:02}.json")),
            m.document.to_string(),
        )
        .unwrap();
    }
    validate_documents(&documents);

    let open = |name: &str| {
        RecordStore::open(&RecordStoreConfig {
            path: dir.path().join(name),
            sync: SyncPolicy::Normal,
            postgres: None,
        })
        .unwrap()
    };
    // In file order, then everything again (a redelivery of every document).
    let forward = open("forward.db");
    for m in &mapped {
        forward
            .apply_bundle(&m.document, Some(m.event_time))
            .unwrap_or_else(|e| panic!("{}: {e}", m.label));
    }
    for m in &mapped {
        let again = forward
            .apply_bundle(&m.document, Some(m.event_time))
            .unwrap();
        assert_eq!(
            again.written() + again.deleted(),
            0,
            "{}: {again:?}",
            m.label
        );
    }
    // In reverse order: older events arrive after newer ones.
    let backward = open("backward.db");
    let mut stale = 0;
    for m in mapped.iter().rev() {
        stale += backward
            .apply_bundle(&m.document, Some(m.event_time))
            .unwrap()
            .stale();
    }
    assert!(stale > 0, "reverse order should have skipped older events");
    // Both stores hold the same current records.
    for (rtype, id) in urls(&mapped) {
        let a = forward
            .read(&rtype, &id)
            .unwrap()
            .and_then(|r| r.resource)
            .map(without_meta);
        let b = backward
            .read(&rtype, &id)
            .unwrap()
            .and_then(|r| r.resource)
            .map(without_meta);
        assert!(a.is_some(), "{rtype}/{id} not stored");
        assert_eq!(a, b, "{rtype}/{id} differs with the arrival order");
    }

    // The FHIR reads over the forward store find Margaret Smith's record.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        // (as behind a TLS-terminating proxy: `[api] public_url`)
        let app = junction::api::fhir::router(
            forward.clone(),
            Some("https://shcr.example.nhs.uk".into()),
        );
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
    });
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let answers = dir.path().join("answers");
    std::fs::create_dir_all(&answers).unwrap();
    let found = get(
        &client,
        &base,
        &format!("/fhir/Patient?identifier={NHS_SYSTEM}|9990000018"),
        &answers,
        "01-smith",
    )
    .await;
    assert_eq!(found.body["total"], 1, "{}", found.body);
    let patient_id = found.body["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // the addresses in the answer are the public ones, not the Host's
    assert_eq!(
        found.body["entry"][0]["fullUrl"],
        format!("https://shcr.example.nhs.uk/fhir/Patient/{patient_id}")
    );
    assert!(
        found.body["link"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with("https://shcr.example.nhs.uk/fhir/Patient?"),
        "{}",
        found.body["link"]
    );
    let everything = get(
        &client,
        &base,
        &format!("/fhir/Patient/{patient_id}/$everything"),
        &answers,
        "02-smith-everything",
    )
    .await;
    let names = entry_names(&everything.body);
    for kind in [
        "Encounter/",
        "DiagnosticReport/",
        "Observation/",
        "Provenance/",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(kind)),
            "no {kind} in {names:?}"
        );
    }
    let reports = get(
        &client,
        &base,
        &format!("/fhir/DiagnosticReport?patient={patient_id}"),
        &answers,
        "03-smith-reports",
    )
    .await;
    assert!(
        reports.body["total"].as_u64().unwrap() >= 1,
        "{}",
        reports.body
    );
    for entry in reports.body["entry"].as_array().unwrap() {
        for result in entry["resource"]["result"].as_array().into_iter().flatten() {
            let reference = result["reference"].as_str().unwrap();
            let (rtype, id) = reference.split_once('/').unwrap();
            assert_eq!(rtype, "Observation");
            assert!(
                forward.read(rtype, id).unwrap().is_some(),
                "dangling {reference}"
            );
        }
    }
    shutdown.cancel();
    server.await.unwrap().unwrap();
    run_python(
        &[
            std::ffi::OsStr::new("-c"),
            std::ffi::OsStr::new(VALIDATE_ANSWERS),
            answers.as_os_str(),
        ],
        "fhir.resources validation of the answers",
    );
}
