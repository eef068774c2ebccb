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
    /// `8 · (q[2i] + q[2i+1])` per adjacent pair: the AVX2 kernel multiplies the unsigned
    /// nibbles (0..=15) and subtracts this instead of re-centring every weight by −8, which
    /// costs three vector operations per block and is paid on every row of the head.
    pub offset: Vec<i16>,
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
            .chunks_exact(2)
            .map(|p| 8 * (p[0] as i16 + p[1] as i16))
            .collect();
        Q8Blocks { q, d, offset }
    }
}

/// The oracle: block by block, the exact integer dot times `d_w · d_a`, summed in order.
pub fn dot_q4_q8_scalar(row: &[u8], a: &Q8Blocks) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in row.chunks_exact(18).enumerate() {
        let dot: i32 = (0..32)
            .map(|j| (q4_nibble(blk, j) as i32 - 8) * a.q[32 * b + j] as i32)
            .sum();
        let dw = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        acc += (dw * a.d[b]) * dot as f32;
    }
    acc
}

/// AVX2: broadcast the 16 nibble bytes to both lanes and shift the upper lane by 4 (one
/// variable shift and one mask give all 32 nibbles in element order), multiply the unsigned
/// nibbles by the int8 block with `maddubs` (pairs ≤ 2·15·127, no saturation), subtract the
/// precomputed `8·Σq` pairs (the −8 centring), widen with `madd` and fuse-multiply-add the block
/// scale in f32.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `a` covers every block of `row`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_q8_avx2(row: &[u8], a: &Q8Blocks) -> f32 {
    use std::arch::x86_64::*;
    debug_assert!(a.d.len() * 18 >= row.len());
    debug_assert_eq!(a.offset.len() * 2, a.q.len());
    let mask = _mm256_set1_epi8(15);
    let shifts = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
    let ones = _mm256_set1_epi16(1);
    // block b's scaled dot as 8 f32 lanes
    let block = |b: usize, blk: &[u8]| {
        let p = blk.as_ptr();
        let qs = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(2) as *const __m128i));
        let w = _mm256_and_si256(_mm256_srlv_epi32(qs, shifts), mask);
        let x = _mm256_loadu_si256(a.q.as_ptr().add(32 * b) as *const __m256i);
        let off = _mm256_loadu_si256(a.offset.as_ptr().add(16 * b) as *const __m256i);
        let prod = _mm256_sub_epi16(_mm256_maddubs_epi16(w, x), off);
        let dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, ones));
        // the scale broadcast before converting: a scalar `cvtsi32` + `cvtph_ps` compiled to a
        // `vpinsrw` that merged into an accumulator register, chaining every block to the
        // previous one's FMA (measured: 8 cycles per block instead of ~3)
        let dw = _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes([blk[0], blk[1]])));
        (dot, _mm256_mul_ps(dw, _mm256_set1_ps(a.d[b])))
    };
    // two accumulators in registers, two blocks per step: consecutive FMAs do not wait on
    // each other
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut pairs = row.chunks_exact(36);
    let mut b = 0;
    for pair in &mut pairs {
        // one prefetch per 36 bytes is at least one per cache line
        super::x86::prefetch_ahead(pair.as_ptr());
        let (d0, s0) = block(b, &pair[..18]);
        let (d1, s1) = block(b + 1, &pair[18..]);
        acc0 = _mm256_fmadd_ps(d0, s0, acc0);
        acc1 = _mm256_fmadd_ps(d1, s1, acc1);
        b += 2;
    }
    if pairs.remainder().len() == 18 {
        let (d0, s0) = block(b, pairs.remainder());
        acc0 = _mm256_fmadd_ps(d0, s0, acc0);
    }
    let s = _mm256_add_ps(acc0, acc1);
    let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s)))
}
