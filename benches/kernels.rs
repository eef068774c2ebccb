//! Matrix-vector kernels at the BitNet b1.58 2B-4T shapes, per kernel path and ternary layout,
//! as GB/s of packed weights, beside this machine's memory read bandwidth (`memory/read_*`), so the kernels can
//! be judged against what the memory can deliver.
//!
//! cargo bench --bench kernels

use bitnet::format::bnet::{DType, Scale, ScaleOp};
use bitnet::kernels::{q4::Q8Blocks, Kernel};
use bitnet::runner::fast::{matmul, QuantizedBatch};
use bitnet::runner::weights::Linear;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rayon::prelude::*;
use std::hint::black_box;

fn memory(c: &mut Criterion) {
    // 1 GiB, far larger than any cache
    let buf: Vec<u64> = (0..(1u64 << 27)).collect();
    let mut g = c.benchmark_group("memory");
    g.throughput(Throughput::Bytes(8 << 27));
    g.sample_size(10);
    g.bench_function("read_all_threads", |b| {
        b.iter(|| {
            buf.par_chunks(1 << 16)
                .map(|c| c.iter().fold(0u64, |a, &v| a ^ v))
                .reduce(|| 0, |a, b| a ^ b)
        })
    });
    g.bench_function("read_one_thread", |b| {
        b.iter(|| buf.iter().fold(0u64, |a, &v| a ^ v))
    });
    // as `bitnet-run --bench` also reads to find its limit: each line prefetched as decode's
    // kernels prefetch, alone and as two far-apart streams (on Zen 5 both beat a plain read)
    // SAFETY: the bytes of a live Vec<u64>, read as u8
    let bytes: &[u8] = unsafe {
        std::slice::from_raw_parts(buf.as_ptr() as *const u8, std::mem::size_of_val(&buf[..]))
    };
    g.bench_function("read_one_thread_prefetched", |b| {
        b.iter(|| bitnet::runner::bench::fold(bytes, &[], true))
    });
    g.bench_function("read_one_thread_two_streams", |b| {
        let (x, y) = bytes.split_at(bytes.len() / 2);
        b.iter(|| bitnet::runner::bench::fold(x, y, true))
    });
    g.finish();
}

/// `n` bytes starting on a cache line, as the container places every tensor: a large `Vec<u8>`
/// starts 16 bytes past a page, so each 64-byte load would straddle two lines (on Zen 5 that
/// held the streaming AVX-512 T2 kernel at 10 GiB/s against 28 for AVX2's 32-byte loads).
struct Aligned(Vec<u8>, usize);

impl Aligned {
    fn new(n: usize, f: impl Fn(usize) -> u8) -> Self {
        let mut v = vec![0u8; n + 64];
        let off = v.as_ptr().align_offset(64);
        for (i, b) in v[off..off + n].iter_mut().enumerate() {
            *b = f(i);
        }
        Aligned(v, off)
    }
    fn copy_of(v: &[u8]) -> Self {
        Aligned::new(v.len(), |i| v[i])
    }
    fn bytes(&self) -> &[u8] {
        &self.0[self.1..self.0.len() - 64 + self.1]
    }
}

/// A 2B-4T-shaped projection in `dtype` (T2 or TL) with a fixed pattern of all three weights.
fn projection(rows: usize, k: usize, dtype: DType) -> Aligned {
    let row_bytes = k.div_ceil(256) * 64;
    let t2: Vec<u8> = (0..rows * row_bytes)
        .map(|i| [0x55u8, 0x96, 0x29, 0x64][i % 4])
        .collect();
    Aligned::copy_of(&match dtype {
        DType::TL => bitnet::quant::pack_tl(rows, k, |r, out| {
            bitnet::quant::unpack_t2_row(&t2[r * row_bytes..(r + 1) * row_bytes], out)
        }),
        _ => t2,
    })
}

/// The 2B-4T projection shapes (rows × k): q and o, k and v, gate and up, down.
const SHAPES: [(usize, usize); 4] = [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)];

/// `data` (from [`projection`]) as a projection with a divide scale.
fn linear(data: &[u8], dtype: DType, rows: usize, k: usize) -> Linear<'_> {
    Linear {
        data,
        dtype,
        rows,
        k,
        unit_bytes: data.len() / rows.div_ceil(if dtype == DType::TL { 32 } else { 1 }),
        scale: Scale {
            value: 2.0,
            op: ScaleOp::Divide,
            source_dtype: DType::F32,
        },
    }
}

/// Both ternary layouts (T2 rows; TL 32-row blocks, 17% fewer bytes) at every shape and path,
/// one token at a time as in decode, as GB/s of the bytes each stores.
fn matvec(c: &mut Criterion) {
    projections(c, "matvec", 1, None);
}

/// A 128-token prompt through one projection on one thread (`matmul` in a 1-thread pool: the
/// 4-token kernel, the per-output scaling and, for TL, the re-layout to T2 rows), as int8
/// multiply-adds per second (`elem/s`), at every 2B-4T shape and both layouts. The scalar path
/// is left out: seconds per iteration, and no one prompts with it.
fn prompt(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a 1-thread pool");
    projections(c, "prompt128_1thread", 128, Some(&pool));
}

/// `matmul` of `tokens` tokens through every 2B-4T shape in both layouts: in the global pool
/// as GB/s of stored bytes, or in `pool` as multiply-adds per second (without the scalar path).
fn projections(c: &mut Criterion, group: &str, tokens: usize, pool: Option<&rayon::ThreadPool>) {
    let mut g = c.benchmark_group(group);
    g.sample_size(if pool.is_some() { 10 } else { 20 });
    for (rows, k) in SHAPES {
        for dtype in [DType::T2, DType::TL] {
            let buf = projection(rows, k, dtype);
            let data = buf.bytes();
            let l = linear(data, dtype, rows, k);
            let x: Vec<f32> = (0..tokens * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            g.throughput(match pool {
                Some(_) => Throughput::Elements((rows * k * tokens) as u64),
                None => Throughput::Bytes(data.len() as u64),
            });
            let paths = Kernel::all_available().into_iter();
            for kern in paths.filter(|k| pool.is_none() || k.name() != "scalar") {
                let a = QuantizedBatch::for_layers(&x, k, kern, &[&l]);
                let name = format!("{}_{}_{rows}x{k}", dtype.name(), kern.name());
                g.bench_function(name, |b| match pool {
                    Some(pool) => b.iter(|| pool.install(|| matmul(kern, &l, black_box(&a)))),
                    None => b.iter(|| matmul(kern, &l, black_box(&a))),
                });
            }
        }
    }
    g.finish();
}

/// The TL block kernel alone on one thread, blocks L2-resident (640 rows of 2560: 334 KiB),
/// tables built: the counterpart of `t2_rows_1thread`.
fn tl_blocks(c: &mut Criterion) {
    use bitnet::kernels::tl;
    let mut g = c.benchmark_group("tl_blocks_1thread");
    // k = 6912 (the down projection): its tables (74 KiB) no longer fit L1 beside the weights;
    // k = 768 (no projection of 2B-4T): tables of 16 KiB that do, for comparison
    for (rows, k) in [(640usize, 2560usize), (224, 6912), (1024, 768)] {
        let buf = projection(rows, k, DType::TL);
        let data = buf.bytes();
        let chunks = k.div_ceil(tl::CHUNK_COLS);
        let act: Vec<i8> = (0..k)
            .map(|i| ((i * 37 % 255) as i32 - 127) as i8)
            .collect();
        g.throughput(Throughput::Bytes(data.len() as u64));
        for kern in Kernel::all_available() {
            let mut lut = vec![0u8; chunks * kern.tl_lut_layout().chunk_bytes()];
            kern.tl_lut(&act, chunks, &mut lut);
            g.bench_function(format!("{}_{rows}x{k}", kern.name()), |b| {
                b.iter(|| {
                    data.chunks_exact(chunks * tl::CHUNK_BYTES)
                        .map(|block| kern.dot_tl(block, black_box(&lut))[0])
                        .fold(0i32, i32::wrapping_add)
                })
            });
        }
    }
    g.finish();
}

/// Building one token's TL tables, which every decode thread does per projection input: its
/// cost against the projection's own stream says whether to share the work out.
fn tl_tables(c: &mut Criterion) {
    use bitnet::kernels::tl;
    let mut g = c.benchmark_group("tl_tables");
    for k in [2560usize, 6912] {
        let chunks = k.div_ceil(tl::CHUNK_COLS);
        let act: Vec<i8> = (0..chunks * tl::CHUNK_COLS)
            .map(|i| ((i * 37 % 255) as i32 - 127) as i8)
            .collect();
        g.throughput(Throughput::Elements(k as u64));
        for kern in Kernel::all_available() {
            let mut lut = vec![0u8; chunks * kern.tl_lut_layout().chunk_bytes()];
            g.bench_function(format!("{}_k{k}", kern.name()), |b| {
                b.iter(|| kern.tl_lut(black_box(&act), chunks, &mut lut))
            });
        }
    }
    g.finish();
}

/// The TL block kernel (alone, and in pairs of two streams as decode's gate and up) and the T2
/// row kernel on one thread over 512 MiB of weights, far past every cache, as decode streams
/// them: against `memory/read_one_thread` this says whether one core's decode is bound by the
/// memory or by the kernel's handling of the stream (arbitrary bytes: the kernels' speed does
/// not depend on the values).
fn stream(c: &mut Criterion) {
    use bitnet::kernels::tl;
    let k = 2560usize;
    let bytes = 512usize << 20;
    let buf = Aligned::new(bytes, |i| ((i * 2654435761) >> 9) as u8);
    let data = buf.bytes();
    let act: Vec<i8> = (0..k)
        .map(|i| ((i * 37 % 255) as i32 - 127) as i8)
        .collect();
    let mut g = c.benchmark_group("stream_1thread");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes as u64));
    let chunks = k.div_ceil(tl::CHUNK_COLS);
    // the SIMD paths (scalar would take minutes per sample here)
    for kern in Kernel::all_available()
        .into_iter()
        .filter(|k| *k != Kernel::scalar())
    {
        let mut lut = vec![0u8; chunks * kern.tl_lut_layout().chunk_bytes()];
        kern.tl_lut(&act, chunks, &mut lut);
        g.bench_function(format!("tl_{}_k{k}", kern.name()), |b| {
            b.iter(|| {
                data.chunks_exact(chunks * tl::CHUNK_BYTES)
                    .map(|block| kern.dot_tl(block, black_box(&lut))[0])
                    .fold(0i32, i32::wrapping_add)
            })
        });
        // two streams through one call per pair of blocks, as decode's gate and up: the first
        // and second halves of the data; and the same with 768 columns, whose tables (16 KiB)
        // stay in L1 where 2560 columns' (54 KiB) come from L2 for every chunk
        for k in [k, 768] {
            let chunks = k.div_ceil(tl::CHUNK_COLS);
            let mut lut = vec![0u8; chunks * kern.tl_lut_layout().chunk_bytes()];
            kern.tl_lut(&act[..k], chunks, &mut lut);
            g.bench_function(format!("tl_pair_{}_k{k}", kern.name()), |b| {
                b.iter(|| {
                    let (x, y) = data.split_at(data.len() / 2);
                    let bl = chunks * tl::CHUNK_BYTES;
                    x.chunks_exact(bl)
                        .zip(y.chunks_exact(bl))
                        .map(|(u, v)| kern.dot_tl_pair(u, v, black_box(&lut))[0][0])
                        .fold(0i32, i32::wrapping_add)
                })
            });
        }
        // pairs of blocks of one stream `d` blocks apart, as decode pairs a claim's halves
        // (adjacent blocks stream as slowly as one alone)
        for d in [1usize, 16] {
            g.bench_function(format!("tl_apart{d}_{}_k{k}", kern.name()), |b| {
                b.iter(|| {
                    let bl = chunks * tl::CHUNK_BYTES;
                    data.chunks_exact(2 * d * bl)
                        .flat_map(|span| {
                            let (x, y) = span.split_at(d * bl);
                            x.chunks_exact(bl).zip(y.chunks_exact(bl))
                        })
                        .map(|(u, v)| kern.dot_tl_pair(u, v, black_box(&lut))[0][0])
                        .fold(0i32, i32::wrapping_add)
                })
            });
        }
        g.bench_function(format!("t2_{}_k{k}", kern.name()), |b| {
            b.iter(|| {
                data.chunks_exact(k / 4)
                    .map(|row| kern.dot_t2_offset(row, black_box(&act)))
                    .fold(0i32, i32::wrapping_add)
            })
        });
    }
    g.finish();
}

/// The ternary row kernel alone on one thread, rows L2-resident (640 rows of 2560: 400 KiB):
/// its compute ceiling, to hold against `memory/read_one_thread` (decode at one thread is
/// memory-bound only while this is well above it).
fn t2_rows(c: &mut Criterion) {
    let (rows, k) = (640usize, 2560usize);
    let rb = k / 4;
    let buf = Aligned::new(rows * rb, |i| ((i * 2654435761) >> 7) as u8);
    let data = buf.bytes();
    let act: Vec<i8> = (0..k)
        .map(|i| ((i * 37 % 255) as i32 - 127) as i8)
        .collect();
    let mut g = c.benchmark_group("t2_rows_1thread");
    g.throughput(Throughput::Bytes(data.len() as u64));
    for kern in Kernel::all_available() {
        g.bench_function(format!("{}_{rows}x{k}", kern.name()), |b| {
            b.iter(|| {
                data.chunks_exact(rb)
                    .map(|row| kern.dot_t2_offset(row, black_box(&act)))
                    .fold(0i32, i32::wrapping_add)
            })
        });
    }
    g.finish();
}

/// The Q4 lm_head's inner loop on one thread (the head is a quarter of a 2B-4T token's bytes
/// with a Q4 head). It was compute-bound below one core's DRAM bandwidth (8.4 GB/s when
/// L2-resident) until it folded four blocks per conversion; compare with `memory/read_one_thread`.
fn head_q4(c: &mut Criterion) {
    let (rows, k) = (32768usize, 2560usize);
    let rb = DType::Q4.row_bytes(k as u64).expect("row bytes") as usize;
    let x: Vec<f32> = (0..k)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let mut data = vec![0u8; rows * rb];
    for (r, row) in data.chunks_exact_mut(rb).enumerate() {
        let w: Vec<f32> = x.iter().map(|v| v * ((r % 7) as f32 - 3.0)).collect();
        bitnet::quant::quantize_q4_row(&w, row).expect("quantize");
    }
    let buf = Aligned::copy_of(&data);
    let data = buf.bytes();
    let a = Q8Blocks::new(&x);
    let mut g = c.benchmark_group("head_q4");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(data.len() as u64));
    for kern in Kernel::all_available() {
        g.bench_function(format!("{}_{rows}x{k}_1thread", kern.name()), |b| {
            b.iter(|| {
                data.chunks_exact(rb)
                    .map(|row| kern.dot_q4(row, black_box(&a)))
                    .sum::<f32>()
            })
        });
    }
    g.finish();
}

/// Attention of four decode steps of a 2B-4T-shaped model at position 192 (the middle of
/// `bitnet-run --bench`'s decode): 4 × 30 layers of 5 kv heads, each shared by 4 query heads.
/// Four steps' caches (118 MiB) so that they come from memory, as in decode, where the weight
/// stream evicts the cache between steps (one step's 29 MiB would stay in a 32 MiB L3);
/// compare with `memory/read_one_thread`.
fn attention(c: &mut Criterion) {
    // 120 layers' caches (118 MB) are read from memory; 1 layer's (1 MB) from the caches, which
    // tells the arithmetic's own speed apart from the memory's
    for layers in [4 * 30usize, 1] {
        attention_over(c, layers);
    }
}

fn attention_over(c: &mut Criterion, layers: usize) {
    use bitnet::runner::ops::{attend_group, KvCache, KvHead};
    let (nkv, group, hd, n) = (5usize, 4usize, 128usize, 192usize);
    let value = |i: usize| ((i * 7919 % 1009) as f32 - 504.0) / 300.0;
    let (mut k, mut v) = (KvCache::new(layers, nkv, hd), KvCache::new(layers, nkv, hd));
    for l in 0..layers {
        let rows: Vec<f32> = (0..n * nkv * hd).map(|i| value(i + l)).collect();
        k.push(l, &rows);
        v.push(l, &rows.iter().rev().copied().collect::<Vec<_>>());
    }
    let qs: Vec<f32> = (0..group * hd).map(|i| value(3 * i) / 4.0).collect();
    let mut out = vec![0f32; group * hd];
    let mut g = c.benchmark_group("attention");
    g.sample_size(20);
    g.throughput(Throughput::Bytes((layers * nkv * 2 * n * hd * 4) as u64));
    for kern in Kernel::all_available() {
        let name = format!(
            "{}_4steps_{layers}x{nkv}x{group}_hd{hd}_pos{n}",
            kern.name()
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                for l in 0..layers {
                    for kv in 0..nkv {
                        out.fill(0.0);
                        let kv = KvHead::of(&k, &v, l, kv);
                        attend_group(kern, &qs, hd, kv, n, 0.088, &mut out);
                        black_box(&out);
                    }
                }
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches, memory, matvec, prompt, t2_rows, tl_blocks, tl_tables, stream, head_q4, attention
);
criterion_main!(benches);
