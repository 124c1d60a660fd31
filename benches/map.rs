//! Parse and parse+map throughput for an ADT^A01 and an ORU^R01 with 20 OBX
//! (samples/adt_a01_admission.hl7, samples/oru_r01_fbc_ue.hl7), one message per
//! iteration on one core: criterion's "elem/s" is messages (documents) per second.
//!
//!     cargo bench --bench map            # full run
//!     cargo bench --bench map -- --quick # a quick look

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use junction::hl7;
use junction::mapping::MappingSet;

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

fn benches(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let set = MappingSet::load_dir(&dir).unwrap_or_else(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        panic!("mappings do not load:\n{}", lines.join("\n"))
    });

    for (label, file) in [
        ("adt_a01", "adt_a01_admission.hl7"),
        ("oru_r01_20obx", "oru_r01_fbc_ue.hl7"),
    ] {
        let text = sample(file);
        let message = hl7::Message::parse(&text).expect("sample parses");
        let header = message.header().expect("sample header");
        let plan = set
            .select(&header.message_code, &header.trigger_event)
            .expect("a shipped mapping for the sample");
        drop(message);

        let mut group = c.benchmark_group(label);
        group.throughput(Throughput::Elements(1));
        group.bench_function("parse", |b| {
            b.iter(|| {
                let message = hl7::Message::parse(black_box(&text)).expect("parses");
                black_box(message.header().expect("header"));
            })
        });
        group.bench_function("parse+map", |b| {
            b.iter(|| {
                let message = hl7::Message::parse(black_box(&text)).expect("parses");
                black_box(plan.apply(&message).expect("maps"));
            })
        });
        group.bench_function("decode+parse+map+json", |b| {
            let raw = text.as_bytes();
            b.iter(|| {
                let decoded = hl7::decode(black_box(raw)).expect("decodes");
                let message = hl7::Message::parse(&decoded).expect("parses");
                let output = plan.apply(&message).expect("maps");
                black_box(serde_json::to_vec(&output.document).expect("serializes"));
            })
        });
        group.finish();
    }
}

criterion_group!(map, benches);
criterion_main!(map);
