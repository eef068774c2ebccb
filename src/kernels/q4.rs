//! The Q4 lm_head (formats/bnet.md §4.3) against int8 activations in blocks of 32: decode
//! reads the whole head every token, and at 4.5 bits per weight it is a quarter of a bf16
//! head's bytes. The activation (the final hidden state) is quantized per block of 32 with its
//! own scale, so one outlier costs precision in its block only.
//!
//! Per block the integer dot `Σ (nibble − 8)·q` is exact in every path; the paths differ only in
//! the order the f32 products `d_w · d_a · dot` are summed (tests/kernels.rs bounds it).

use crate::quant::{q4_nibble, round_half_even_small};

/// A vector quantized to int8 in blocks of 32: `x ≈ d[b] · q[32b + j]`, |q| ≤ 127 (never −128,
/// which the AVX2 sign trick relies on). Zero-padded to whole blocks.
pub struct Q8Blocks {
    pub q: Vec<i8>,
    pub d: Vec<f32>,
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
        Q8Blocks { q, d }
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

/// AVX2: unpack 16 bytes into 32 signed nibbles, multiply by the int8 block with `maddubs`
/// (|nibble| as unsigned times the activation with the nibble's sign: pairs ≤ 2·8·127, no
/// saturation), widen with `madd`, and fuse-multiply-add the block scale in f32.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `a` covers every block of `row`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_q8_avx2(row: &[u8], a: &Q8Blocks) -> f32 {
    use std::arch::x86_64::*;
    debug_assert!(a.d.len() * 18 >= row.len());
    let mask = _mm_set1_epi8(15);
    let eight = _mm256_set1_epi8(8);
    let ones = _mm256_set1_epi16(1);
    // block b's scaled dot as 8 f32 lanes
    let block = |b: usize, blk: &[u8]| {
        super::x86::prefetch_ahead(blk.as_ptr());
        let p = blk.as_ptr();
        let qs = _mm_loadu_si128(p.add(2) as *const __m128i);
        let lo = _mm_and_si128(qs, mask);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(qs), mask);
        let w = _mm256_sub_epi8(_mm256_set_m128i(hi, lo), eight);
        let x = _mm256_loadu_si256(a.q.as_ptr().add(32 * b) as *const __m256i);
        let prod = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
        let dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, ones));
        let dw = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            u16::from_le_bytes([blk[0], blk[1]]) as i32,
        )));
        (dot, _mm256_set1_ps(dw * a.d[b]))
    };
    // two accumulators in registers, two blocks per step: consecutive FMAs do not wait on
    // each other
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut pairs = row.chunks_exact(36);
    let mut b = 0;
    for pair in &mut pairs {
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
