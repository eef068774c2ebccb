//! The Q4 lm_head (formats/bnet.md §4.3) against int8 activations in blocks of 32: decode
//! reads the whole head every token, and at 4.5 bits per weight it is a quarter of a bf16
//! head's bytes. The activation (the final hidden state) is quantized per block of 32 with its
//! own scale, so one outlier costs precision in its block only.
//!
//! Per block the integer dot `Σ (nibble − 8)·q` is exact in every path; the paths differ only in
//! the order the f32 products `d_w · d_a · dot` are summed (tests/kernels.rs bounds it).

use crate::quant::{q4_nibble, round_half_even_small};

/// A vector quantized to int8 in blocks of 32: `x ≈ d[b] · q[32b + j]`, |q| ≤ 127. Zero-padded
/// to whole blocks.
pub struct Q8Blocks {
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    /// `8 · Σ q` per block: the AVX2 kernel multiplies the unsigned nibbles (0..=15) and
    /// subtracts this once per block instead of re-centring every weight by −8, which would
    /// cost three vector operations per block on every row of the head.
    pub offset: Vec<i32>,
    /// The AVX-512 kernel's copy, per group of four whole blocks: the first 16 values of each
    /// of the four blocks, then their last 16 (the order in which it unpacks the nibbles).
    pub q_split: Vec<i8>,
    /// Per group of four blocks, 16 lanes: `offset` of block i in lane 4i, zeros elsewhere.
    pub offset_lanes: Vec<i32>,
    /// Per group of four blocks, 16 lanes: `d` of block i in lanes 4i … 4i + 3.
    pub d_lanes: Vec<f32>,
}

impl Q8Blocks {
    /// `d = max|x| / 127` per block, `q = round_half_even(x / d)`.
    pub fn new(x: &[f32]) -> Self {
        let blocks = x.len().div_ceil(32);
        let mut q = vec![0i8; blocks * 32];
        let mut d = vec![0f32; blocks];
        for ((xs, qs), db) in x.chunks(32).zip(q.chunks_mut(32)).zip(&mut d) {
            let max = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            if max == 0.0 {
                continue;
            }
            *db = max / 127.0;
            for (o, &v) in qs.iter_mut().zip(xs) {
                *o = round_half_even_small((v / *db).clamp(-127.0, 127.0)) as i8;
            }
        }
        let offset = q
            .chunks_exact(32)
            .map(|b| 8 * b.iter().map(|&v| v as i32).sum::<i32>())
            .collect::<Vec<i32>>();
        let groups = blocks / 4;
        let mut q_split = Vec::with_capacity(groups * 128);
        let (mut offset_lanes, mut d_lanes) = (vec![0i32; groups * 16], vec![0f32; groups * 16]);
        for g in 0..groups {
            for half in 0..2 {
                for i in 0..4 {
                    let b = 4 * g + i;
                    q_split.extend_from_slice(&q[32 * b + 16 * half..][..16]);
                }
            }
            for i in 0..4 {
                offset_lanes[16 * g + 4 * i] = offset[4 * g + i];
                d_lanes[16 * g + 4 * i..][..4].fill(d[4 * g + i]);
            }
        }
        Q8Blocks {
            q,
            d,
            offset,
            q_split,
            offset_lanes,
            d_lanes,
        }
    }
}

/// The oracle: block by block, the exact integer dot times `d_w · d_a`, summed in order.
pub fn dot_q4_q8_scalar(row: &[u8], a: &Q8Blocks) -> f32 {
    dot_blocks_scalar(row, a, 0)
}

/// `dot_q4_q8_scalar` of the blocks of `row`, which begin at block `first` of the row.
fn dot_blocks_scalar(row: &[u8], a: &Q8Blocks, first: usize) -> f32 {
    let mut acc = 0f32;
    for (i, blk) in row.chunks_exact(18).enumerate() {
        let b = first + i;
        let dot: i32 = (0..32)
            .map(|j| (q4_nibble(blk, j) as i32 - 8) * a.q[32 * b + j] as i32)
            .sum();
        let dw = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        acc += (dw * a.d[b]) * dot as f32;
    }
    acc
}

/// AVX-512 VNNI and VBMI, four blocks (72 bytes) per step in 512-bit registers, one block per
/// 128-bit lane: one `vpermt2b` gathers the four blocks' nibble bytes into their lanes and
/// another their four f16 scales (each repeated over its lane), two `vpdpbusd` multiply the
/// unsigned nibbles by the block's first and last 16 values (`q_split`), and the −8 centring,
/// the conversion and the scale FMA run per lane, with no horizontal adds. The last 0–3
/// blocks run the scalar code. The integer part of each block is exact; the f32 sum order is
/// this kernel's own (tests/kernels.rs bounds it).
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VNNI and VBMI; `a` covers every block of `row`
/// (checked).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
pub unsafe fn dot_q4_q8_avx512(row: &[u8], a: &Q8Blocks) -> f32 {
    dot_q4_q8_avx512_many(row, [a])[0]
}

/// [`dot_q4_q8_avx512`] of one row against `P` vectors: each group of the row is loaded and
/// unpacked once for all of them (a head read once per `P` positions, for perplexity and logit
/// dumps). Each vector's accumulator sees the operations of the one-vector kernel in the same
/// order, so every result has the bits of a call with that vector alone.
///
/// # Safety
/// As [`dot_q4_q8_avx512`], for every vector.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
pub unsafe fn dot_q4_q8_avx512_many<const P: usize>(row: &[u8], a: [&Q8Blocks; P]) -> [f32; P] {
    let mut out = [0f32; P];
    dot_q4_q8_avx512_rows([row], row.len(), a, [&mut out]);
    out
}

/// [`dot_q4_q8_avx512_many`] of the consecutive rows (`row_bytes` each) of `R` streams read
/// side by side: row `i` of stream `s` into `out[s][P·i ..][.. P]`, each with the bits of a
/// call with that row alone. The checks and constants are paid once per call instead of once
/// per row (decode's head has 128 256 rows of 1440 bytes), and each activation load serves
/// every stream: decode reads its head as two far-apart streams, which one Zen 5 core read
/// at 36–39 GB/s against 32–33 as one run (timed inside a decode step).
///
/// # Safety
/// As [`dot_q4_q8_avx512`], for every vector; every stream holds the rows `out` asks of it
/// (checked).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
pub unsafe fn dot_q4_q8_avx512_rows<const R: usize, const P: usize>(
    streams: [&[u8]; R],
    row_bytes: usize,
    a: [&Q8Blocks; P],
    out: [&mut [f32]; R],
) {
    use std::arch::x86_64::*;
    let groups = row_bytes / 72;
    for a in a {
        assert!(a.d.len() * 18 >= row_bytes && a.q_split.len() >= groups * 128);
        assert!(a.offset_lanes.len() >= groups * 16 && a.d_lanes.len() >= groups * 16);
    }
    let n = out[0].len() / P.max(1);
    assert!(P > 0 && out.iter().all(|o| o.len() == n * P));
    assert!(streams.iter().all(|s| s.len() >= n * row_bytes));
    // lane i, byte j: nibble byte j of block i (byte 2 + 18i + j of the group; ≥ 64 is the
    // second register)
    let nib_idx = _mm512_loadu_si512(
        std::array::from_fn::<u8, 64, _>(|e| (2 + 18 * (e / 16) + e % 16) as u8).as_ptr()
            as *const _,
    );
    // f16 word w (of 16): block w / 4's scale, bytes 18·(w / 4) and the next
    let scale_idx = _mm512_loadu_si512(
        std::array::from_fn::<u8, 64, _>(|e| (18 * ((e / 2) % 16 / 4) + e % 2) as u8).as_ptr()
            as *const _,
    );
    let m15 = _mm512_set1_epi8(15);
    let zero = _mm512_setzero_si512();
    for i in 0..n {
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        for g in 0..groups {
            // plain loops, no closures: see x86::dot_t2_offset_4x4_avx512
            let (mut lo, mut hi, mut dw) = ([zero; R], [zero; R], [_mm512_setzero_ps(); R]);
            for s in 0..R {
                let p = streams[s].as_ptr().add(row_bytes * i + 72 * g);
                super::x86::prefetch_ahead(p);
                super::x86::prefetch_ahead(p.add(64));
                let v0 = super::x86::load_512_as_halves(p);
                // the group's last 8 bytes; the masked load never touches what lies past them
                let v1 = _mm512_maskz_loadu_epi8(0xFF, p.add(64) as *const _);
                let v = _mm512_permutex2var_epi8(v0, nib_idx, v1);
                lo[s] = _mm512_and_si512(v, m15);
                hi[s] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m15);
                dw[s] = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutex2var_epi8(
                    v0, scale_idx, v1,
                )));
            }
            for j in 0..P {
                let x = a[j].q_split.as_ptr().add(128 * g);
                let (x0, x1) = (
                    _mm512_loadu_si512(x as *const _),
                    _mm512_loadu_si512(x.add(64) as *const _),
                );
                let off = _mm512_loadu_si512(a[j].offset_lanes.as_ptr().add(16 * g) as *const _);
                let d = _mm512_loadu_ps(a[j].d_lanes.as_ptr().add(16 * g));
                for s in 0..R {
                    let dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, lo[s], x0), hi[s], x1);
                    let dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(dot, off));
                    acc[s][j] = _mm512_fmadd_ps(dot, _mm512_mul_ps(dw[s], d), acc[s][j]);
                }
            }
        }
        // the last 0-3 blocks (none at 2560 wide, where the empty call had 1.2% of a decode's
        // perf samples)
        for s in 0..R {
            let tail = &streams[s][row_bytes * i + 72 * groups..row_bytes * (i + 1)];
            for j in 0..P {
                let rest = if tail.is_empty() {
                    0.0
                } else {
                    dot_blocks_scalar(tail, a[j], 4 * groups)
                };
                out[s][P * i + j] = _mm512_reduce_add_ps(acc[s][j]) + rest;
            }
        }
    }
}

/// AVX2, four blocks per step. Per block: broadcast the 16 nibble bytes to both lanes and
/// shift the upper lane by 4 (one variable shift and one mask give all 32 nibbles in element
/// order), multiply the unsigned nibbles by the int8 block with `maddubs` (pairs ≤ 2·15·127, no
/// saturation) and widen with `madd`. Two levels of `hadd` then fold the four blocks into one
/// vector, lanes `[A B C D | A B C D]` (each a partial sum of its block), so the −8 centring
/// (`offset`), the int→float conversion and the scale FMA are paid once per four blocks. Per
/// block conversion and scaling made this kernel compute-bound at 8.4 GB/s on one Zen 3 core
/// (L2-resident), below a single core's DRAM bandwidth; four at a time it runs at 13.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `a` covers every block of `row`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_q8_avx2(row: &[u8], a: &Q8Blocks) -> f32 {
    use std::arch::x86_64::*;
    assert!(a.d.len() * 18 >= row.len() && a.offset.len() == a.d.len());
    let mask = _mm256_set1_epi8(15);
    let shifts = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
    let ones = _mm256_set1_epi16(1);
    // Σ nibble·q of block `b` (at `p`), as 8 i32 partial sums
    let block = |b: usize, p: *const u8| {
        let qs = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(2) as *const __m128i));
        let w = _mm256_and_si256(_mm256_srlv_epi32(qs, shifts), mask);
        let x = _mm256_loadu_si256(a.q.as_ptr().add(32 * b) as *const __m256i);
        _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones)
    };
    let scale = |p: *const u8| i16::from_le_bytes([*p, *p.add(1)]);
    let mut acc = _mm256_setzero_ps();
    let mut groups = row.chunks_exact(72);
    let mut b = 0;
    for g in &mut groups {
        let p = g.as_ptr();
        // 72 bytes span two cache lines at most; prefetch both
        super::x86::prefetch_ahead(p);
        super::x86::prefetch_ahead(p.add(64));
        let h = _mm256_hadd_epi32(
            _mm256_hadd_epi32(block(b, p), block(b + 1, p.add(18))),
            _mm256_hadd_epi32(block(b + 2, p.add(36)), block(b + 3, p.add(54))),
        );
        // the 128-bit load zero-extends: the offsets go to the lower lanes only
        let off =
            _mm256_zextsi128_si256(_mm_loadu_si128(a.offset.as_ptr().add(b) as *const __m128i));
        let dot = _mm256_cvtepi32_ps(_mm256_sub_epi32(h, off));
        let dw = _mm_cvtph_ps(_mm_setr_epi16(
            scale(p),
            scale(p.add(18)),
            scale(p.add(36)),
            scale(p.add(54)),
            0,
            0,
            0,
            0,
        ));
        let s = _mm_mul_ps(dw, _mm_loadu_ps(a.d.as_ptr().add(b)));
        acc = _mm256_fmadd_ps(dot, _mm256_set_m128(s, s), acc);
        b += 4;
    }
    let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let mut sum = _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s)));
    // the last 0–3 blocks one at a time
    for blk in groups.remainder().chunks_exact(18) {
        let dot = super::x86::hsum_epi32_avx2(block(b, blk.as_ptr())) - a.offset[b];
        let dw = half::f16::from_bits(scale(blk.as_ptr()) as u16).to_f32();
        sum += (dw * a.d[b]) * dot as f32;
        b += 1;
    }
    sum
}
