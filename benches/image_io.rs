//! Image-layer throughput: reading framed entries into typed structs, and crit's JSON
//! decode, over the CRIU 4.2 fixture images.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use criu_images::crit::{self, DecodeOptions};
use criu_images::{pb, ImageReader};
use criu_rs_suite::{fixture_dumps, fixture_images};

fn bench_images(c: &mut Criterion) {
    let files: Vec<(String, Vec<u8>)> = fixture_dumps()
        .iter()
        .flat_map(|d| fixture_images(d))
        .map(|(path, base)| (base, std::fs::read(path).unwrap()))
        .collect();
    let total: usize = files.iter().map(|(_, b)| b.len()).sum();

    let mut group = c.benchmark_group("fixtures");
    group.throughput(Throughput::Bytes(total as u64));
    group.bench_function("crit_decode_pretty", |b| {
        b.iter(|| {
            for (name, bytes) in &files {
                let mut r = ImageReader::new(bytes.as_slice(), name.as_str()).unwrap();
                let doc = crit::decode(
                    &mut r,
                    DecodeOptions {
                        pretty: true,
                        no_payload: false,
                    },
                )
                .unwrap();
                criterion::black_box(crit::to_python_json(&doc, true));
            }
        })
    });
    group.finish();

    let mm: Vec<&Vec<u8>> = files
        .iter()
        .filter(|(n, _)| n.starts_with("mm-"))
        .map(|(_, b)| b)
        .collect();
    let mm_total: usize = mm.iter().map(|b| b.len()).sum();
    let mut group = c.benchmark_group("typed");
    group.throughput(Throughput::Bytes(mm_total as u64));
    group.bench_function("read_mm_entries", |b| {
        b.iter(|| {
            for bytes in &mm {
                let mut r = ImageReader::new(bytes.as_slice(), "mm.img").unwrap();
                while let Some(e) = r.next_entry::<pb::MmEntry>().unwrap() {
                    criterion::black_box(e.vmas.len());
                }
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_images);
criterion_main!(benches);
