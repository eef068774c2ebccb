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
    /// How decode prefetched its weights (`BITNET_PREFETCH`: `l2` or `nta`; `none` off x86-64).
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
    /// Best of 18 parallel reads of the weight bytes, nine right before decoding and nine right
    /// after, three each of three ways of reading (`Read`): this VM's bandwidth moves within
    /// a run, and reads before decoding alone, or plain sequential reads alone, were in some
    /// runs below what decode itself then read.
    pub read_bandwidth_gb_per_s: f64,
    /// `decode_gb_per_s / read_bandwidth_gb_per_s`.
    pub decode_share_of_bandwidth: f64,
    /// The KV cache held for the prompt and every decode step.
    pub kv_cache_bytes: u64,
    /// This process's memory right after the last decode step, session alive (Linux only):
    /// the weights count as mapped file pages, read in place, not as heap.
    pub resident_after_decode: Option<crate::memory::Resident>,
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

/// How one timed pass reads the bytes: the limit is the best of them, so that no way decode
/// reads its weights can beat it by reading differently. On Zen 5 decode's non-temporal
/// prefetches had read faster than plain sequential reads (shares of 101–112%).
#[derive(Clone, Copy)]
enum Read {
    /// Each 1 MiB chunk front to back, left to the hardware prefetchers.
    Plain,
    /// The same, each line prefetched as decode's kernels do (`kernels::x86::Prefetch`).
    Prefetched,
    /// Chunk i beside chunk i + n/2, line by line, both prefetched: two far-apart streams per
    /// core, as decode reads its weights.
    Paired,
}

/// XOR of the u64s of `c` (and of `d`, line by line beside it), prefetching each line when
/// `prefetch`: a read of every byte that the compiler cannot drop, eight lanes wide so that
/// the arithmetic never limits it (also `cargo bench --bench kernels -- memory`).
pub fn fold(c: &[u8], d: &[u8], prefetch: bool) -> u64 {
    // the prefetch mode settled (as making a Kernel does), so the lines are prefetched as
    // decode prefetches them even when no Kernel was made yet
    #[cfg(target_arch = "x86_64")]
    let _ = crate::kernels::x86::prefetch_mode();
    #[cfg(not(target_arch = "x86_64"))]
    let _ = prefetch;
    let ((ec, mc), (ed, md)) = (words(c), words(d));
    let mut acc = [0u64; 8];
    let mut eat = |line: &[u64]| {
        #[cfg(target_arch = "x86_64")]
        if prefetch {
            crate::kernels::x86::prefetch_ahead(line.as_ptr() as *const u8);
        }
        for (a, v) in acc.iter_mut().zip(line) {
            *a ^= v;
        }
    };
    let (mut lc, mut ld) = (mc.chunks_exact(8), md.chunks_exact(8));
    loop {
        match (lc.next(), ld.next()) {
            (None, None) => break,
            (a, b) => {
                a.into_iter().chain(b).for_each(&mut eat);
            }
        }
    }
    let rest = lc.remainder().iter().chain(ld.remainder());
    rest.chain(&acc).fold(ec ^ ed, |x, &v| x ^ v)
}

/// The XOR of `s`'s unaligned edge bytes, and its aligned middle as u64s.
fn words(s: &[u8]) -> (u64, &[u64]) {
    // SAFETY: every bit pattern is a valid u64; align_to only splits the slice.
    let (head, mid, tail) = unsafe { s.align_to::<u64>() };
    (head.iter().chain(tail).fold(0, |a, &b| a ^ b as u64), mid)
}

/// GB/s of reading every byte of `slices` once with the current rayon pool: the best of
/// `passes` rounds of every `Read`.
pub fn read_bandwidth(slices: &[&[u8]], passes: usize) -> f64 {
    const CHUNK: usize = 1 << 20;
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let chunks: Vec<&[u8]> = slices.iter().flat_map(|s| s.chunks(CHUNK)).collect();
    let (first, second) = chunks.split_at(chunks.len() / 2);
    let mut best = f64::INFINITY;
    for _ in 0..passes.max(1) {
        for how in [Read::Plain, Read::Prefetched, Read::Paired] {
            let t = Instant::now();
            let x = match how {
                Read::Plain | Read::Prefetched => chunks
                    .par_iter()
                    .map(|c| fold(c, &[], matches!(how, Read::Prefetched)))
                    .reduce(|| 0, |a, b| a ^ b),
                // an odd chunk out goes beside nothing
                Read::Paired => second
                    .par_iter()
                    .enumerate()
                    .map(|(i, d)| fold(first.get(i).copied().unwrap_or(&[]), d, true))
                    .reduce(|| 0, |a, b| a ^ b),
            };
            std::hint::black_box(x);
            best = best.min(t.elapsed().as_secs_f64());
        }
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
    // as bitnet-run does for a generation of known length
    s.reserve(prompt + decode);
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
    let resident = crate::memory::resident();
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
        kv_cache_bytes: s.kv_bytes(),
        resident_after_decode: resident,
    })
}
