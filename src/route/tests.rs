//! Route loading, selection and document conditions, written as data through
//! `check_*` helpers.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::*;

const TABLES: &str = r#"
[tables.practice_ics]
F84003 = "NEL"
E82061 = "HWE"
E81002 = "BLMK"
"#;

/// Loads `files` (`name`, `text`); `expected` is either the route ids in order
/// (`ok: a, b`) or every error, one per line, as `file:line:col: message`.
fn check_load(files: &[(&str, &str)], expected: &str) {
    let files: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(n, t)| (PathBuf::from(format!("routes/{n}")), t.to_string()))
        .collect();
    let got = match RouteSet::from_sources(&files) {
        Ok(set) => format!(
            "ok: {}",
            set.routes()
                .iter()
                .map(Route::id)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(errors) => errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
    };
    assert_eq!(got, expected.trim());
}

fn set(text: &str) -> RouteSet {
    let files = vec![
        (PathBuf::from("routes/main.toml"), text.to_string()),
        (PathBuf::from("routes/tables.toml"), TABLES.to_string()),
    ];
    match RouteSet::from_sources(&files) {
        Ok(s) => s,
        Err(e) => panic!("{e:?}"),
    }
}

fn input<'a>(origin: Origin<'a>, kind: &'a str, facility: &'a str) -> RouteInput<'a> {
    let (code, trigger) = kind.split_once('^').unwrap_or((kind, ""));
    RouteInput {
        origin,
        message_code: code,
        trigger,
        sending_application: "PAS",
        sending_facility: facility,
    }
}

/// Selects for `input` and renders `mapping: route, route; mapping: …` or `unrouted`.
fn check_select(set: &RouteSet, input: RouteInput<'_>, expected: &str) {
    let sel = set.select(&input);
    let got = if sel.is_unrouted() {
        "unrouted".to_string()
    } else {
        sel.groups()
            .map(|g| {
                format!(
                    "{}: {}",
                    g.mapping(),
                    g.routes().map(Route::id).collect::<Vec<_>>().join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    assert_eq!(got, expected, "{input:?}");
    assert_eq!(
        set.mapping_for(&input),
        sel.groups()
            .find(|g| !g.is_passthrough())
            .map(|g| g.mapping()),
        "mapping_for agrees with the first group that maps"
    );
}

/// Destinations (`id<-route+route`) for a document, through every group.
fn check_destinations(set: &RouteSet, input: RouteInput<'_>, document: &Json, expected: &str) {
    let sel = set.select(&input);
    let got: Vec<String> = sel
        .groups()
        .flat_map(|g| g.destinations_for(document))
        .map(|d| format!("{}<-{}", d.id, d.routes.join("+")))
        .collect();
    let got = if got.is_empty() {
        "unrouted".to_string()
    } else {
        got.join(" ")
    };
    assert_eq!(got, expected);
}

const SAMPLE: &str = r#"
[routes.adt_store]
messages = ["ADT^*"]
mapping = "adt"
destinations = ["store"]

[routes.adt_hwe]
messages = ["ADT^*"]
when = "patient.gp_practice | lookup(practice_ics) = 'HWE'"
mapping = "adt"
destinations = ["store", "mesh_hwe"]

[routes.adt_blmk]
listeners = ["pas"]
messages = ["ADT^A01", "ADT^A08"]
when = "patient.gp_practice | lookup(practice_ics) = 'BLMK' and not empty(patient.nhs_number)"
mapping = "adt"
destinations = ["mesh_blmk"]

[routes.lab]
sources = ["mesh_inbox"]
listeners = ["lab"]
messages = ["ORU^R01"]
sending_facilities = ["RAL"]
mapping = "oru_r01"
destinations = ["store", "fhir_lab"]

[routes.audit_everything]
messages = ["*^*"]
sending_applications = ["PAS", "WINPATH"]
mapping = "provenance"
destinations = ["file_audit"]
"#;

#[test]
fn loads_routes_in_file_order() {
    check_load(
        &[("a.toml", SAMPLE), ("tables.toml", TABLES)],
        "ok: adt_store, adt_hwe, adt_blmk, lab, audit_everything",
    );
}

#[test]
fn selection_by_origin_type_trigger_wildcard_and_facility() {
    let s = set(SAMPLE);
    let pas = Origin::Listener("pas");
    check_select(
        &s,
        input(pas, "ADT^A01", "RAL01"),
        "adt: adt_store, adt_hwe, adt_blmk; provenance: audit_everything",
    );
    // A02 is not in adt_blmk's list; the wildcard routes still match.
    check_select(
        &s,
        input(pas, "ADT^A02", "RAL01"),
        "adt: adt_store, adt_hwe; provenance: audit_everything",
    );
    // adt_blmk is restricted to listener `pas`.
    check_select(
        &s,
        input(Origin::Listener("other"), "ADT^A01", "RAL01"),
        "adt: adt_store, adt_hwe; provenance: audit_everything",
    );
    // A dry run does not know the origin: origin criteria are not applied.
    check_select(
        &s,
        input(Origin::Unknown, "adt^a08", "RAL01"),
        "adt: adt_store, adt_hwe, adt_blmk; provenance: audit_everything",
    );
    // MSH-4 as a full HD: its first component is compared too.
    check_select(
        &s,
        input(Origin::Listener("lab"), "ORU^R01", "RAL^RAL^ODS"),
        "oru_r01: lab; provenance: audit_everything",
    );
    // A source's messages go only where a route names it (not audit_everything).
    check_select(
        &s,
        input(Origin::Source("mesh_inbox"), "ORU^R01", " ral "),
        "oru_r01: lab",
    );
    // Wrong facility, wrong origin kind (a listener named like the source).
    check_select(
        &s,
        input(Origin::Listener("lab"), "ORU^R01", "RRV"),
        "provenance: audit_everything",
    );
    check_select(
        &s,
        input(Origin::Listener("mesh_inbox"), "ORU^R01", "RAL"),
        "provenance: audit_everything",
    );
    // No trigger: only `*` triggers match.
    check_select(
        &s,
        input(pas, "ADT", "RAL01"),
        "adt: adt_store, adt_hwe; provenance: audit_everything",
    );
}

#[test]
fn unrouted_when_nothing_matches() {
    let s = set(SAMPLE);
    let mut i = input(Origin::Listener("pas"), "MDM^T02", "RAL01");
    i.sending_application = "EPR";
    check_select(&s, i, "unrouted");
    assert_eq!(s.mapping_for(&i), None);
    // Criteria matched but every condition false: no destination is unrouted too.
    let only_hwe = set(r#"
[routes.hwe]
messages = ["ADT^*"]
when = "patient.gp_practice | lookup(practice_ics) = 'HWE'"
mapping = "adt"
destinations = ["mesh_hwe"]
"#);
    check_destinations(
        &only_hwe,
        input(Origin::Listener("pas"), "ADT^A01", "RAL01"),
        &bundle("F84003", Some("9990000018")),
        "unrouted",
    );
}

/// A transaction Bundle with one Patient registered at `practice`.
fn bundle(practice: &str, nhs: Option<&str>) -> Json {
    let mut identifiers = vec![json!({"system": "urn:junction:local-id:ral:mr", "value": "RAL1"})];
    if let Some(n) = nhs {
        identifiers.push(json!({"system": NHS_NUMBER_SYSTEM, "value": n}));
    }
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:1", "resource": {
                "resourceType": "Patient",
                "id": "1",
                "identifier": identifiers,
                "address": [{"postalCode": "AL1 3JH"}],
                "generalPractitioner": [
                    {"identifier": {"system": ODS_SYSTEM, "value": practice}},
                    {"identifier": {"system": GP_SYSTEMS[0], "value": "G8234567"}}
                ]
            }},
            {"fullUrl": "urn:uuid:2", "resource": {"resourceType": "Encounter", "id": "2"}}
        ]
    })
}

#[test]
fn document_conditions_with_the_practice_table() {
    let s = set(SAMPLE);
    let a01 = input(Origin::Listener("pas"), "ADT^A01", "RAL01");
    check_destinations(
        &s,
        a01,
        &bundle("F84003", Some("9990000018")),
        "store<-adt_store file_audit<-audit_everything",
    );
    // Case and spaces in the document do not matter; `store` appears once with
    // both routes that chose it.
    check_destinations(
        &s,
        a01,
        &bundle(" e82061", Some("9990000018")),
        "store<-adt_store+adt_hwe mesh_hwe<-adt_hwe file_audit<-audit_everything",
    );
    check_destinations(
        &s,
        a01,
        &bundle("E81002", Some("9990000018")),
        "store<-adt_store mesh_blmk<-adt_blmk file_audit<-audit_everything",
    );
    // adt_blmk needs an NHS number.
    check_destinations(
        &s,
        a01,
        &bundle("E81002", None),
        "store<-adt_store file_audit<-audit_everything",
    );
    // A practice the table does not list goes nowhere else.
    check_destinations(
        &s,
        a01,
        &bundle("Y99999", None),
        "store<-adt_store file_audit<-audit_everything",
    );
}

#[test]
fn fields_read_references_postcodes_and_resource_types() {
    let s = set(r#"
[routes.by_reference]
messages = ["*^*"]
when = "patient.gp_practice = 'E82061' and patient.gp = 'G1234567'"
mapping = "m"
destinations = ["a"]

[routes.by_postcode]
messages = ["*^*"]
when = "patient.postcode in ('AL1 3JH', 'LU1 1AA')"
mapping = "m"
destinations = ["b"]

[routes.reports_only]
messages = ["*^*"]
when = "document.resource_types = 'DiagnosticReport' and message.type = 'ORU^R01' and message.origin = 'lab'"
mapping = "m"
destinations = ["c"]

[routes.header]
messages = ["*^*"]
when = "message.sending_facility = 'RAL' and message.sending_application != 'EPR' and message.code = 'oru' and message.trigger = 'R01'"
mapping = "m"
destinations = ["d"]
"#);
    let doc = json!({
        "resourceType": "Bundle",
        "entry": [
            {"fullUrl": "urn:uuid:p", "resource": {
                "resourceType": "Patient", "id": "p",
                "address": [{"postalCode": "LU1 1AA"}],
                "generalPractitioner": [{"reference": "Organization/o"}, {"reference": "urn:uuid:gp"}]
            }},
            {"fullUrl": "urn:uuid:o", "resource": {"resourceType": "Organization", "id": "o",
                "identifier": [{"system": ODS_SYSTEM, "value": "E82061"}]}},
            {"fullUrl": "urn:uuid:gp", "resource": {"resourceType": "Practitioner", "id": "x",
                "identifier": [{"system": GP_SYSTEMS[1], "value": "G1234567"}]}},
            {"resource": {"resourceType": "DiagnosticReport"}},
            "not an entry",
            {"resource": 42}
        ]
    });
    let oru = input(Origin::Listener("lab"), "ORU^R01", "RAL");
    check_destinations(
        &s,
        oru,
        &doc,
        "a<-by_reference b<-by_postcode c<-reports_only d<-header",
    );
    // Nothing matches on a document of the wrong shape; nothing panics.
    for junk in [
        json!(null),
        json!([1, 2]),
        json!({"entry": {"resource": 1}}),
        json!("x"),
    ] {
        check_destinations(&s, oru, &junk, "d<-header");
    }
}

#[test]
fn errors_carry_exact_line_and_column() {
    // Unknown key (with its likely meaning, and without a second error for the
    // field it misspells), wrong type, and a field really missing: all reported.
    check_load(
        &[(
            "a.toml",
            r#"[routes.adt]
messages = ["ADT^A01"]
mapping = "adt"
destinatons = ["store"]
sending_facilities = "RAL"

  [routes.lab]
  messages = ["ORU^R01"]
  destinations = ["store"]
"#,
        )],
        "
routes/a.toml:4:1: unknown field `destinatons`, expected one of `description`, `listeners`, `sources`, `messages`, `sending_applications`, `sending_facilities`, `when`, `mapping`, `destinations` (did you mean `destinations`?)
routes/a.toml:5:22: invalid type: string \"RAL\", expected a sequence
routes/a.toml:7:11: route `lab` has no `mapping`, expected the name of a mapping in mappings/ (a route without `sources` maps HL7 messages; only a route whose origin is `sources` alone may omit it and pass the received document through)",
    );
}

#[test]
fn semantic_errors_point_at_the_value() {
    check_load(
        &[(
            "a.toml",
            r#"[routes.adt]
messages = ["ADT^A01", "ADT", "ADT^A01^ADT_A01"]
listeners = ["p a s"]
mapping = "adt"
destinations = []
when = "patient.gp_practice | lookup(practice_ics) == 'HWE'"

[route.x]
"#,
        )],
        "
routes/a.toml:2:24: invalid message pattern `ADT`, expected `CODE^TRIGGER` such as `ADT^A01`, `ADT^*` or `ORU^R01`
routes/a.toml:2:31: invalid message pattern `ADT^A01^ADT_A01`, expected `CODE^TRIGGER` such as `ADT^A01`, `ADT^*` or `ORU^R01`
routes/a.toml:3:14: invalid listener id `p a s`, expected letters, digits, `-` or `_`
routes/a.toml:5:16: route `adt` has an empty `destinations` list, expected at least one destination id
routes/a.toml:6:53: in `when` of route `adt`: unexpected `=`, expected a field such as `patient.gp_practice` or a 'literal'
routes/a.toml:8:2: unknown field `route` (a route is a table named by its id: `[routes.<id>]`), expected `routes`, `tables` or `test`",
    );
}

#[test]
fn cross_file_errors() {
    check_load(
        &[
            (
                "a.toml",
                "[routes.adt]\nmessages = [\"ADT^*\"]\nmapping = \"adt\"\ndestinations = [\"store\"]\nwhen = '''\nnot empty(patient.gp_practice | lookup(practice_icb))'''\n\n[tables.practice_ics]\nF84003 = \"NEL\"\nf84003 = \"NCL\"\nE82061 = 3\n",
            ),
            (
                "b.toml",
                "[routes.adt]\nmessages = [\"ADT^*\"]\nmapping = \"adt\"\ndestinations = [\"store\"]\n\n[tables.practice_ics]\n",
            ),
            ("c.toml", "[routes.x\nmapping = 1\n[[routes]]\n"),
        ],
        "
routes/a.toml:6:40: route `adt` looks up unknown table `practice_icb`, expected `practice_ics`
routes/a.toml:10:1: key `f84003` repeats `F84003` in table `practice_ics` (keys are compared ignoring case and spaces), expected unique keys
routes/a.toml:11:10: invalid type: integer, expected a string value in table `practice_ics`
routes/b.toml:1:9: route id `adt` is already defined at routes/a.toml:1, expected unique route ids across route files
routes/b.toml:6:9: table `practice_ics` is already defined at routes/a.toml:8, expected unique table names across route files
routes/c.toml:1:10: unclosed table, expected `]`",
    );
}

#[test]
fn references_to_unknown_mappings_and_destinations() {
    let files = vec![(
        PathBuf::from("routes/a.toml"),
        "[routes.adt]\nmessages = [\"ADT^*\"]\nmapping = \"atd\"\ndestinations = [\"store\", \"stroe\", \"mesh_hwe\"]\n".to_string(),
    )];
    let s = RouteSet::from_sources(&files).unwrap();
    let got: Vec<String> = s
        .check_references(&["adt", "oru_r01"], &["store", "mesh_hwe", "mesh_blmk"])
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        got,
        [
            "routes/a.toml:3:11: route `adt` uses unknown mapping `atd`, expected one of `adt`, `oru_r01` (did you mean `adt`?)",
            "routes/a.toml:4:26: route `adt` sends to unknown destination `stroe`, expected one of `mesh_blmk`, `mesh_hwe`, `store` (did you mean `store`?)",
        ]
    );
    assert_eq!(
        s.check_references(&[], &["store", "stroe", "mesh_hwe"])[0].to_string(),
        "routes/a.toml:3:11: route `adt` uses unknown mapping `atd`, and there is none in mappings/"
    );
    // The error carries its span and the file text, to show the line it points at.
    let e = &s.check_destinations(&["store"])[0];
    assert_eq!(&e.source().unwrap()[e.span()], "\"stroe\"");
}

#[test]
fn load_dir_reads_toml_files_only_and_reports_unreadable_folders() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.toml"), TABLES).unwrap();
    std::fs::write(
        dir.path().join("a.toml"),
        "[routes.x]\nmessages = [\"*^*\"]\nmapping = \"m\"\ndestinations = [\"d\"]\nwhen = \"patient.gp_practice | lookup(practice_ics) = 'NEL'\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("README.md"), "not a route").unwrap();
    std::fs::write(dir.path().join("latin1.toml.bak"), [0xff]).unwrap();
    let s = RouteSet::load_dir(dir.path()).unwrap();
    assert_eq!(s.routes().len(), 1);
    assert_eq!(s.table_names().collect::<Vec<_>>(), ["practice_ics"]);

    std::fs::write(dir.path().join("c.toml"), [b'#', 0xff, b'\n']).unwrap();
    let errors = RouteSet::load_dir(dir.path()).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(errors[0]
        .to_string()
        .ends_with("c.toml:1:2: invalid UTF-8 in route file (TOML files must be UTF-8)"));

    let missing = dir.path().join("absent");
    let errors = RouteSet::load_dir(&missing).unwrap_err();
    assert!(errors[0].message.starts_with("cannot read route folder"));
    assert!(
        check_dir(&missing, &Known::default()).is_empty(),
        "no folder, no routes, no problem"
    );
}

/// The shipped `routes/` folder against the shipped mappings and real samples.
fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn shipped_routes_load() {
    let s = RouteSet::load_dir(&repo().join("routes")).unwrap_or_else(|e| {
        panic!(
            "{}",
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert!(s.routes().len() >= 4);
    let practice = s.table_names().any(|t| t == "practice_ics");
    assert!(practice);
}

#[test]
fn shipped_routes_pass_their_tests_through_the_shipped_mappings() {
    let routes = RouteSet::load_dir(&repo().join("routes")).unwrap();
    let mappings = crate::mapping::MappingSet::load_dir(&repo().join("mappings")).unwrap();
    let errors: Vec<String> = routes
        .check_against_mappings(&mappings)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let outcomes = run_tests(&routes, &mappings);
    assert!(outcomes.len() >= 7, "{outcomes:#?}");
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(ToString::to_string)
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    let hwe = outcomes.iter().find(|o| o.name.contains("E82061")).unwrap();
    assert_eq!(
        hwe.got,
        Ok(vec!["mesh_hwe".to_string(), "store".to_string()])
    );
}

#[test]
fn test_cases_report_what_differs() {
    let dir = tempfile::tempdir().unwrap();
    let sample = repo().join("samples/adt_a01_admission.hl7");
    std::fs::write(
        dir.path().join("r.toml"),
        format!(
            r#"[routes.adt]
messages = ["ADT^A01"]
mapping = "adt"
destinations = ["store"]

[[test]]
name = "wrong expectation"
message = '{0}'
source = "mesh_inbox"
expect = ["store", "mesh_hwe"]

[[test]]
name = "missing file"
message = "absent.hl7"
expect = []

[[test]]
name = "right"
message = '{0}'
expect = ["store", "store"]
"#,
            sample.display()
        ),
    )
    .unwrap();
    let routes = RouteSet::load_dir(dir.path()).unwrap();
    let mappings = crate::mapping::MappingSet::load_dir(&repo().join("mappings")).unwrap();
    let got: Vec<String> = run_tests(&routes, &mappings)
        .iter()
        .map(|o| {
            o.to_string()
                .replace(&dir.path().display().to_string(), "DIR")
        })
        .collect();
    assert_eq!(
        got[0],
        "DIR/r.toml / wrong expectation: FAILED: expected `mesh_hwe`, `store`, got nothing \
         (unrouted)"
    );
    assert!(
        got[1].starts_with("DIR/r.toml / missing file: FAILED: cannot read DIR/absent.hl7: "),
        "{}",
        got[1]
    );
    assert_eq!(got[2], "DIR/r.toml / right: ok");
    // `junction check` points at the missing message file.
    let errors = check_dir(dir.path(), &Known::default());
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].line, errors[0].col), (14, 11));
    assert!(errors[0]
        .message
        .starts_with("test `missing file`: message file"));
}

#[test]
fn a_mapped_neighbour_patient_reaches_each_ics_once() {
    // The A05 sample's Patient as mapped, re-registered with practices of each ICS.
    let routes = RouteSet::load_dir(&repo().join("routes")).unwrap();
    let mappings = crate::mapping::MappingSet::load_dir(&repo().join("mappings")).unwrap();
    let bytes = std::fs::read(repo().join("samples/adt_a05_preadmit_escapes.hl7")).unwrap();
    let text = crate::hl7::decode(&bytes).unwrap();
    for (practice, expected) in [
        ("E82061", "store mesh_hwe"),
        ("F81028", "store mesh_hwe"),
        ("K83002", "store mesh_blmk"),
        ("e81002", "store mesh_blmk"),
        ("F83004", "store"),
        ("Y00000", "store"),
    ] {
        let text = text.replace("E82061", practice);
        let message = crate::hl7::Message::parse(&text).unwrap();
        let header = message.header().unwrap();
        let input = RouteInput::from_header(&header, Origin::Listener("pas"));
        let selection = routes.select(&input);
        let groups: Vec<_> = selection.groups().collect();
        assert_eq!(groups.len(), 1, "one mapping for ADT^A05");
        let document = mappings
            .get(groups[0].mapping())
            .unwrap()
            .apply(&message)
            .unwrap()
            .value();
        let got: Vec<String> = groups[0]
            .destinations_for(&document)
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(got.join(" "), expected, "{practice}");
    }
}

#[test]
fn a_route_from_sources_alone_may_pass_documents_through() {
    let s = set(r#"
[routes.mesh_in]
sources = ["mesh_inbox"]
messages = ["MESH^*"]
destinations = ["store"]

[routes.adt]
messages = ["*^*"]
mapping = "adt"
destinations = ["store"]
"#);
    let passthrough = s.get("mesh_in").unwrap();
    assert!(passthrough.is_passthrough());
    assert_eq!(passthrough.mapping(), "");
    assert_eq!(passthrough.sources().collect::<Vec<_>>(), ["mesh_inbox"]);
    let from_mesh = RouteInput::for_document(
        Origin::Source("mesh_inbox"),
        "MESH^TOC_FHIR_DISCHARGE",
        "X26ABC2",
    );
    assert_eq!(
        (from_mesh.message_code, from_mesh.trigger),
        ("MESH", "TOC_FHIR_DISCHARGE")
    );
    // Only the route naming the source: the catch-all takes listeners' messages.
    check_select(&s, from_mesh, ": mesh_in");
    assert!(s
        .select(&from_mesh)
        .groups()
        .next()
        .unwrap()
        .is_passthrough());
    // A dry run or a listener never picks a passthrough route.
    check_select(&s, input(Origin::Unknown, "MESH^X", ""), "adt: adt");
    check_select(&s, input(Origin::Listener("pas"), "MESH^X", ""), "adt: adt");
    // `mapping_for` never answers "" (there is no mapping to run).
    let only = set(
        "[routes.m]\nsources = [\"mesh_inbox\"]\nmessages = [\"*^*\"]\ndestinations = [\"store\"]\n",
    );
    assert_eq!(only.mapping_for(&from_mesh), None);
    assert!(only.check_mappings(&[]).is_empty(), "no mapping to check");
    let mappings = crate::mapping::MappingSet::load_dir(&repo().join("mappings")).unwrap();
    assert!(only.check_against_mappings(&mappings).is_empty());
}

#[test]
fn only_a_route_from_sources_alone_may_omit_the_mapping() {
    check_load(
        &[(
            "a.toml",
            r#"[routes.adt]
messages = ["ADT^A01"]
destinations = ["store"]

[routes.both]
listeners = ["pas"]
sources = ["mesh_inbox"]
messages = ["*^*"]
destinations = ["store"]

[routes.ok]
sources = ["mesh_inbox"]
messages = ["MESH^TEST-WORKFLOW_2"]
destinations = ["store"]
"#,
        )],
        "
routes/a.toml:1:9: route `adt` has no `mapping`, expected the name of a mapping in mappings/ (a route without `sources` maps HL7 messages; only a route whose origin is `sources` alone may omit it and pass the received document through)
routes/a.toml:5:9: route `both` has no `mapping`, expected the name of a mapping in mappings/ (a route that also names `listeners` receives HL7 messages there; only a route whose origin is `sources` alone may omit it and pass the received document through)",
    );
}

#[test]
fn unknown_sources_are_reported_at_the_value() {
    let s = set(
        "[routes.m]\nsources = [\"mesh_inbx\"]\nmessages = [\"*^*\"]\ndestinations = [\"store\"]\n",
    );
    let errors: Vec<String> = s
        .check_sources(&["mesh_inbox"])
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        ["routes/main.toml:2:12: route `m` names unknown source `mesh_inbx`, expected `mesh_inbox`"]
    );
}

#[test]
fn document_test_cases_run_through_passthrough_routes() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = repo().join("samples/mesh_bundle_from_hwe.json");
    let hl7 = repo().join("samples/adt_a01_admission.hl7");
    std::fs::write(
        dir.path().join("r.toml"),
        format!(
            r#"[routes.mesh_in]
sources = ["mesh_inbox"]
messages = ["MESH^TEST_WORKFLOW"]
when = "patient.gp_practice | lookup(t) = 'HWE'"
destinations = ["store"]

[tables.t]
E82061 = "HWE"

[[test]]
name = "stored"
message = '{0}'
source = "mesh_inbox"
message_type = "MESH^TEST_WORKFLOW"
expect = ["store"]

[[test]]
name = "other workflow"
message = '{0}'
source = "mesh_inbox"
message_type = "MESH^OTHER"
expect = []

[[test]]
name = "no type"
message = '{0}'
source = "mesh_inbox"
expect = ["store"]

[[test]]
name = "hl7 from a source reaches no mapping"
message = '{1}'
source = "mesh_inbox"
expect = []
"#,
            bundle.display(),
            hl7.display()
        ),
    )
    .unwrap();
    let routes = RouteSet::load_dir(dir.path()).unwrap();
    let mappings = crate::mapping::MappingSet::load_dir(&repo().join("mappings")).unwrap();
    let got: Vec<String> = run_tests(&routes, &mappings)
        .iter()
        .map(ToString::to_string)
        .map(|o| o.replace(&dir.path().display().to_string(), "DIR"))
        .collect();
    assert_eq!(got[0], "DIR/r.toml / stored: ok");
    assert_eq!(got[1], "DIR/r.toml / other workflow: ok");
    assert!(
        got[2].ends_with("FAILED: a document test needs `message_type`, expected e.g. `message_type = \"MESH^TEST_WORKFLOW\"`"),
        "{}",
        got[2]
    );
    assert_eq!(
        got[3],
        "DIR/r.toml / hl7 from a source reaches no mapping: ok"
    );

    // `message_type` belongs to document tests from a source only.
    check_load(
        &[(
            "b.toml",
            "[[test]]\nname = \"x\"\nmessage = \"a.json\"\nmessage_type = \"MESH^W\"\nexpect = []\n\n[[test]]\nname = \"y\"\nmessage = \"a.json\"\nsource = \"s\"\nmessage_type = \"MESH^*\"\nexpect = []\n",
        )],
        "
routes/b.toml:4:16: test `x` gives a `message_type` without a `source`, expected `source = \"<id>\"` (only documents from a source carry one)
routes/b.toml:11:16: invalid message type `MESH^*`, expected `CODE^TRIGGER` without wildcards such as `MESH^TEST_WORKFLOW`",
    );
}
