//! Parse and parse+map throughput for an ADT^A01 and an ORU^R01 with 20 OBX
//! (samples/adt_a01_admission.hl7, samples/oru_r01_fbc_ue.hl7), one message per
//! iteration on one core: criterion's "elem/s" is messages (documents) per second.
//!
//!     cargo bench --bench map            # full run
//!     cargo bench --bench map -- --quick # a quick look
//!
//! Instruction counts (stable on a loaded machine): with `JUNCTION_BENCH_ONCE=N`
//! the binary skips criterion and runs every case N times, so running it under
//! `valgrind --tool=callgrind` with N = 1 and N = 101 and subtracting gives the
//! instructions of 100 messages per case (see BENCHMARKS.md):
//!
//!     JUNCTION_BENCH_ONCE=101 JUNCTION_BENCH_CASE=adt_a01/parse+map \
//!         valgrind --tool=callgrind target/release/deps/map-<hash>

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput};
use junction::hl7;
use junction::mapping::{MappingSet, Plan};

/// The same allocator as the `junction` binary (src/main.rs), so the figures
/// match what the engine does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn sample(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(name);
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    hl7::decode(&raw).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const SAMPLES: [(&str, &str); 2] = [
    ("adt_a01", "adt_a01_admission.hl7"),
    ("oru_r01_20obx", "oru_r01_fbc_ue.hl7"),
];

type Case = fn(&str, &Plan);

const CASES: [(&str, Case); 5] = [
    ("parse", |text, _| {
        let message = hl7::Message::parse(black_box(text)).expect("parses");
        black_box(message.header().expect("header"));
    }),
    // what the engine does per message (`Plan::document`: no unread report)
    ("parse+map", |text, plan| {
        let message = hl7::Message::parse(black_box(text)).expect("parses");
        black_box(plan.document(&message).expect("maps"));
    }),
    // what `junction map` does: the same, with the report of the fields no rule read
    ("parse+map+unread", |text, plan| {
        let message = hl7::Message::parse(black_box(text)).expect("parses");
        black_box(plan.apply(&message).expect("maps"));
    }),
    ("decode+parse+map+json", |text, plan| {
        let decoded = hl7::decode(black_box(text.as_bytes())).expect("decodes");
        let message = hl7::Message::parse(&decoded).expect("parses");
        let output = plan.document(&message).expect("maps");
        black_box(output.document.into_bytes());
    }),
    // what the delivery pipeline does per mapped document: the routing view of
    // the text (patient key, NHS numbers, route conditions) beside the text itself
    ("decode+parse+map+json+route-view", |text, plan| {
        let decoded = hl7::decode(black_box(text.as_bytes())).expect("decodes");
        let message = hl7::Message::parse(&decoded).expect("parses");
        let output = plan.document(&message).expect("maps");
        black_box(junction::route::routing_view_of(&output));
        black_box(output.document.into_bytes());
    }),
];

/// The samples with the shipped plan their routes would pick.
fn setup() -> (MappingSet, Vec<(&'static str, String)>) {
    // `JUNCTION_BENCH_MAPPINGS=DIR` measures another set of mappings (a copy
    // with one member left out, to see what that member costs)
    let dir = std::env::var_os("JUNCTION_BENCH_MAPPINGS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mappings"),
        PathBuf::from,
    );
    let set = MappingSet::load_dir(&dir).unwrap_or_else(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        panic!("mappings do not load:\n{}", lines.join("\n"))
    });
    let samples = SAMPLES
        .iter()
        .map(|(label, file)| (*label, sample(file)))
        .collect();
    (set, samples)
}

fn plan_for<'s>(set: &'s MappingSet, text: &str) -> &'s Plan {
    let message = hl7::Message::parse(text).expect("sample parses");
    set.select_for(&message)
        .expect("a shipped mapping for the sample")
}

fn document_of(text: &str, plan: &Plan) -> serde_json::Value {
    let message = hl7::Message::parse(text).expect("sample parses");
    plan.apply(&message).expect("maps").value()
}

/// The store's check of every entry's resource's values.
fn value_check(document: &serde_json::Value) {
    for entry in document["entry"].as_array().into_iter().flatten() {
        assert!(black_box(junction::store::invalid_value(&entry["resource"])).is_none());
    }
}

fn main() {
    let (set, samples) = setup();
    if let Ok(n) = std::env::var("JUNCTION_BENCH_ONCE") {
        let n: usize = n.parse().expect("JUNCTION_BENCH_ONCE is a number");
        let only = std::env::var("JUNCTION_BENCH_CASE").ok();
        for (label, text) in &samples {
            let plan = plan_for(&set, text);
            for (name, case) in CASES {
                let id = format!("{label}/{name}");
                if only.as_deref().is_some_and(|o| o != id) {
                    continue;
                }
                for _ in 0..n {
                    case(text, plan);
                }
            }
            let id = format!("{label}/document-clone");
            if only.as_deref().is_none_or(|o| o == id) {
                let document = document_of(text, plan);
                for _ in 0..n {
                    black_box(black_box(&document).clone());
                }
            }
            let id = format!("{label}/value-check");
            if only.as_deref().is_none_or(|o| o == id) {
                let document = document_of(text, plan);
                for _ in 0..n {
                    value_check(&document);
                }
            }
        }
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    for (label, text) in &samples {
        let plan = plan_for(&set, text);
        let mut group = c.benchmark_group(*label);
        group.throughput(Throughput::Elements(1));
        for (name, case) in CASES {
            group.bench_function(name, |b| b.iter(|| case(text, plan)));
        }
        // The floor of any mapping that returns a `serde_json::Value`: allocating,
        // filling and freeing a document of this shape, with no evaluation.
        let document = document_of(text, plan);
        group.bench_function("document-clone", |b| {
            b.iter(|| black_box(black_box(&document).clone()))
        });
        // What the record store asks of every resource it is given before it
        // writes any (`store::invalid_value`), on the document parsed already.
        group.bench_function("value-check", |b| b.iter(|| value_check(&document)));
        group.finish();
    }
    c.final_summary();
}
