//! `bitnet-run --bench`: prompt and decode speed, and the memory-bandwidth limit for the same
//! bytes. The limit is measured in the same process, on the same mapped weights and with the
//! same threads, right before and right after decoding: on a shared machine the bandwidth moves
//! by ±15% from minute to minute (and at 2 threads on this project's VM, from 41 to 68 GB/s
//! within ten minutes), so a figure measured elsewhere would make the "share of bandwidth" noise.

use super::fast::Session;
use super::weights::Weights;
use crate::error::Result;
use crate::kernels::Kernel;
use rayon::prelude::*;
use std::time::Instant;

/// What one benchmark run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    pub kernel: &'static str,
    /// How decode prefetched its weights (`BITNET_PREFETCH`: `l2` or `nta`).
    pub prefetch: &'static str,
    pub threads: usize,
    pub prompt_tokens: usize,
    pub prompt_tokens_per_s: f64,
    pub decode_tokens: usize,
    pub decode_tokens_per_s: f64,
    /// Packed projections plus the lm_head: what every decoded token streams from memory.
    pub weight_bytes_per_decode_token: u64,
    /// The f32 keys and values attention reads, averaged over the decode steps (they grow by
    /// one position a step).
    pub kv_cache_bytes_per_decode_token: u64,
    pub decode_weight_gb_per_s: f64,
    /// Weights and KV cache: every byte a decode step must read.
    pub decode_gb_per_s: f64,
    /// Best of six parallel reads of the weight bytes, three right before decoding and three
    /// right after: this VM's bandwidth moves within a run, and three reads before decoding
    /// alone were, in some runs, below what decode itself then read.
    pub read_bandwidth_gb_per_s: f64,
    /// `decode_gb_per_s / read_bandwidth_gb_per_s`.
    pub decode_share_of_bandwidth: f64,
}

/// The weight slices one decode step reads in full.
fn decode_slices<'a>(w: &Weights<'a>) -> Vec<&'a [u8]> {
    let mut v: Vec<&[u8]> = w
        .layers
        .iter()
        .flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down])
        .map(|l| l.data)
        .collect();
    v.push(w.lm_head.data);
    v
}

/// GB/s of reading every byte of `slices` once with the current rayon pool, best of `passes`.
pub fn read_bandwidth(slices: &[&[u8]], passes: usize) -> f64 {
    const CHUNK: usize = 1 << 20;
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let chunks: Vec<&[u8]> = slices.iter().flat_map(|s| s.chunks(CHUNK)).collect();
    let mut best = f64::INFINITY;
    for _ in 0..passes.max(1) {
        let t = Instant::now();
        let x = chunks
            .par_iter()
            .map(|c| {
                // SAFETY: every bit pattern is a valid u64; align_to only splits the slice.
                let (head, mid, tail) = unsafe { c.align_to::<u64>() };
                let edge = head.iter().chain(tail).fold(0u64, |a, &b| a ^ b as u64);
                mid.iter().fold(edge, |a, &b| a ^ b)
            })
            .reduce(|| 0, |a, b| a ^ b);
        std::hint::black_box(x);
        best = best.min(t.elapsed().as_secs_f64());
    }
    total as f64 / best / 1e9
}

/// Times a prompt of `prompt` synthetic tokens as one batch, then `decode` greedy steps.
pub fn run(w: &Weights, kern: Kernel, prompt: usize, decode: usize) -> Result<BenchReport> {
    let v = w.cfg.vocab_size as u32;
    let ids: Vec<u32> = (0..prompt as u32).map(|i| (i * 7919 + 13) % v).collect();
    let ctx = w.cfg.max_position_embeddings as usize;
    if prompt == 0 || decode == 0 || prompt + decode > ctx {
        return Err(crate::Error::Usage(format!(
            "--bench-prompt ({prompt}) and --bench-decode ({decode}) must be at least 1 and \
             together fit the model's context of {ctx}"
        )));
    }
    let slices = decode_slices(w);
    let per_token: u64 = slices.iter().map(|s| s.len() as u64).sum();
    let mut s = Session::new(w, kern);
    let t0 = Instant::now();
    let mut last = s.forward(&ids, false)?.pop().expect("one position");
    let pp = t0.elapsed().as_secs_f64();
    // after the prompt, so the weights are in the page cache either way
    let bw = read_bandwidth(&slices, 3);
    // step i reads the cache as it was plus its own position: prompt + i + 1 positions
    let kv_pos = s.kv_bytes() / prompt as u64;
    let kv: u64 = (1..=decode as u64)
        .map(|i| (prompt as u64 + i) * kv_pos)
        .sum();
    let t1 = Instant::now();
    for _ in 0..decode {
        let next = super::compare::top_k(&last, 1)[0] as u32;
        last = s.forward(&[next], false)?.pop().expect("one position");
    }
    let tg = t1.elapsed().as_secs_f64();
    let bw = bw.max(read_bandwidth(&slices, 3));
    debug_assert_eq!(s.kv_bytes(), (prompt + decode) as u64 * kv_pos);
    let gbps = per_token as f64 * decode as f64 / tg / 1e9;
    let all = (per_token * decode as u64 + kv) as f64 / tg / 1e9;
    Ok(BenchReport {
        kernel: kern.name(),
        prefetch: kern.prefetch_name(),
        threads: rayon::current_num_threads(),
        prompt_tokens: prompt,
        prompt_tokens_per_s: prompt as f64 / pp,
        decode_tokens: decode,
        decode_tokens_per_s: decode as f64 / tg,
        weight_bytes_per_decode_token: per_token,
        kv_cache_bytes_per_decode_token: kv / decode as u64,
        decode_weight_gb_per_s: gbps,
        decode_gb_per_s: all,
        read_bandwidth_gb_per_s: bw,
        decode_share_of_bandwidth: all / bw,
    })
}
