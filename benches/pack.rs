//! Micro-benchmarks of the packing path: the latent row quantizer at the 2B-4T row lengths,
//! opening a container, and verifying one.

use bitnet::format::bnet::{self, DType, Index, Scale, ScaleOp, Writer};
use bitnet::quant::{self, Float, RowQuant, RowScratch};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::io::Cursor;

fn bf16_row(k: usize) -> Vec<u8> {
    (0..k)
        .flat_map(|i| half::bf16::from_f32(((i * 7919 % 1000) as f32 - 500.0) * 1e-4).to_le_bytes())
        .collect()
}

fn quantize(c: &mut Criterion) {
    let mut g = c.benchmark_group("quantize_row_t2");
    for k in [2560usize, 6912] {
        let src = bf16_row(k);
        let mut sc = RowScratch::new(k);
        let mut out = vec![0u8; k.div_ceil(256) * 64];
        g.throughput(Throughput::Bytes(src.len() as u64));
        g.bench_function(format!("bf16_k{k}"), |b| {
            b.iter(|| {
                quant::quantize_row(
                    Float::BF16,
                    black_box(&src),
                    RowQuant::Ternary(40.0),
                    &mut sc,
                    &mut out,
                )
            })
        });
    }
    g.finish();
}

/// A container with 64 MiB of ternary weights in 2560-wide tensors.
fn container() -> Vec<u8> {
    let mut w = Writer::new(Cursor::new(Vec::new()), "bench.bnet".as_ref()).unwrap();
    let scale = Scale {
        value: 1.0,
        op: ScaleOp::Multiply,
        source_dtype: DType::F32,
    };
    let data = vec![0x55u8; 6912 * 640];
    for i in 0..15 {
        w.tensor(&format!("t{i}"), DType::T2, &[6912, 2560], scale, &data)
            .unwrap();
    }
    w.tensor("file:config.json", DType::U8, &[2], Scale::NONE, b"{}")
        .unwrap();
    w.finish(&serde_json::json!({})).unwrap().0.into_inner()
}

fn open_verify(c: &mut Criterion) {
    let b = container();
    let mut g = c.benchmark_group("container");
    g.bench_function("open", |bn| {
        bn.iter(|| Index::parse(black_box(&b[..])).unwrap())
    });
    let idx = Index::parse(&b[..]).unwrap();
    g.throughput(Throughput::Bytes(b.len() as u64));
    g.sample_size(10);
    g.bench_function("verify", |bn| {
        bn.iter(|| assert!(bnet::verify(&idx, black_box(&b)).ok()))
    });
    g.finish();
}

criterion_group!(benches, quantize, open_verify);
criterion_main!(benches);
