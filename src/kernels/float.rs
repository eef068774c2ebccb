//! Float dot products of a stored row (f32, f16, bf16 or int8 with a row scale) with an f32
//! vector: the lm_head, which a decode step reads in full. Eight independent accumulators let
//! the compiler vectorize; the AVX2 build of the same code uses 256-bit registers. The sum
//! order differs from a sequential dot product, so results agree with the reference to float
//! rounding (~1e-6 relative), not bit for bit.

use crate::format::bnet::DType;

#[inline(always)]
fn dot8(n: usize, get: impl Fn(usize) -> f32, h: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let full = n / 8 * 8;
    let mut i = 0;
    while i < full {
        for l in 0..8 {
            acc[l] += get(i + l) * h[i + l];
        }
        i += 8;
    }
    for j in full..n {
        acc[j % 8] += get(j) * h[j];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

#[inline(always)]
fn dot_row_generic(dtype: DType, row: &[u8], h: &[f32]) -> f32 {
    let n = h.len();
    match dtype {
        DType::BF16 => dot8(
            n,
            |i| f32::from_bits((u16::from_le_bytes([row[2 * i], row[2 * i + 1]]) as u32) << 16),
            h,
        ),
        DType::F16 => dot8(
            n,
            |i| half::f16::from_le_bytes([row[2 * i], row[2 * i + 1]]).to_f32(),
            h,
        ),
        DType::F32 => dot8(
            n,
            |i| f32::from_le_bytes([row[4 * i], row[4 * i + 1], row[4 * i + 2], row[4 * i + 3]]),
            h,
        ),
        DType::I8 => dot8(n, |i| row[i] as i8 as f32, h),
        d => unreachable!("dot_row on {d:?}"),
    }
}

/// AVX2 + FMA + F16C: widen 8 stored values to f32 and fuse-multiply-add into 4 accumulators
/// per row of `rows` and vector of `hs`. The dtype is matched once, outside the loop: each arm
/// is its own monomorphized loop. Each (row, vector) pair's accumulators see the same
/// operations in the same order whatever `R` and `P` are, so `R` rows and `P` vectors at once
/// give the bits of `R·P` calls with one of each.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; every row holds `n` values of `dtype` and every
/// `hs[p]` has length `n`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_grid_avx2<const R: usize, const P: usize>(
    dtype: DType,
    rows: [&[u8]; R],
    hs: [&[f32]; P],
) -> [[f32; P]; R] {
    use std::arch::x86_64::*;
    let ps = rows.map(|r| r.as_ptr());
    let mut main = match dtype {
        DType::BF16 => dot_avx2_with::<2, R, P>(hs, ps, |p, i| {
            let v = _mm_loadu_si128(p.add(2 * i) as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)))
        }),
        DType::F16 => dot_avx2_with::<2, R, P>(hs, ps, |p, i| {
            _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i) as *const __m128i))
        }),
        DType::F32 => {
            dot_avx2_with::<4, R, P>(hs, ps, |p, i| _mm256_loadu_ps(p.add(4 * i) as *const f32))
        }
        _ => dot_avx2_with::<1, R, P>(hs, ps, |p, i| {
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                p.add(i) as *const __m128i
            )))
        }),
    };
    let size = dtype.row_bytes(1).unwrap_or(1) as usize;
    for (ms, row) in main.iter_mut().zip(rows) {
        for (m, h) in ms.iter_mut().zip(hs) {
            let full = h.len() / 32 * 32;
            *m += dot_row_generic(dtype, &row[full * size..], &h[full..]);
        }
    }
    main
}

/// The loop of `dot_grid_avx2` over whole groups of 32 values of `SIZE` bytes each;
/// `load(p, i)` widens values `i..i + 8` of the row at `p` to f32 (once for all `P` vectors,
/// and each vector's values loaded once for all `R` rows).
///
/// # Safety
/// As `dot_grid_avx2`; each of `ps` points at a row that holds `hs[0].len()` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2_with<const SIZE: usize, const R: usize, const P: usize>(
    hs: [&[f32]; P],
    ps: [*const u8; R],
    load: impl Fn(*const u8, usize) -> std::arch::x86_64::__m256,
) -> [[f32; P]; R] {
    use std::arch::x86_64::*;
    let full = hs[0].len() / 32 * 32;
    let mut acc = [[[_mm256_setzero_ps(); 4]; P]; R];
    let mut i = 0;
    while i < full {
        for &p in &ps {
            // one 64-byte line per 32 values of at most 2 bytes, two for f32
            super::x86::prefetch_ahead(p.wrapping_add(i * SIZE));
            if SIZE == 4 {
                super::x86::prefetch_ahead(p.wrapping_add(i * SIZE + 64));
            }
        }
        for a in 0..4 {
            let mut w = [_mm256_setzero_ps(); R];
            for (w, &row) in w.iter_mut().zip(&ps) {
                *w = load(row, i + 8 * a);
            }
            for (p, h) in hs.iter().enumerate() {
                let x = _mm256_loadu_ps(h.as_ptr().add(i + 8 * a));
                for (acc, w) in acc.iter_mut().zip(w) {
                    acc[p][a] = _mm256_fmadd_ps(w, x, acc[p][a]);
                }
            }
        }
        i += 32;
    }
    let mut out = [[0f32; P]; R];
    for (o, acc) in out.iter_mut().zip(&acc) {
        for (o, acc) in o.iter_mut().zip(acc) {
            let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), s);
            *o = lanes.iter().sum::<f32>();
        }
    }
    out
}

/// `row · h` for a stored float row (I8 rows: the caller multiplies by the row scale).
pub fn dot_row(kern: super::Kernel, dtype: DType, row: &[u8], h: &[f32]) -> f32 {
    let [y] = dot_row_many(kern, dtype, row, [h]);
    y
}

/// `row · hs[p]` for `P` vectors of one length, each with the bits of [`dot_row`]: the row is
/// read and widened once for all of them (a float lm_head read once per `P` positions instead
/// of once per position, when every position's logits are wanted).
pub fn dot_row_many<const P: usize>(
    kern: super::Kernel,
    dtype: DType,
    row: &[u8],
    hs: [&[f32]; P],
) -> [f32; P] {
    assert!(
        hs.iter().all(|h| h.len() == hs[0].len()),
        "vectors of one length"
    );
    #[cfg(target_arch = "x86_64")]
    if kern.float_simd() {
        assert_row_holds(dtype, [row], hs[0].len());
        // SAFETY: float_simd() checked AVX2 (at selection), F16C and FMA; the lengths are
        // checked above.
        return unsafe { dot_grid_avx2(dtype, [row], hs)[0] };
    }
    let _ = kern;
    hs.map(|h| dot_row_generic(dtype, row, h))
}

/// Panics unless every row holds `n` values of `dtype`: the SIMD loop reads them before the
/// scalar tail's slicing would notice a short row.
#[cfg(target_arch = "x86_64")]
fn assert_row_holds<const R: usize>(dtype: DType, rows: [&[u8]; R], n: usize) {
    let size = dtype.row_bytes(1).unwrap_or(1) as usize;
    assert!(
        rows.iter().all(|r| r.len() >= n * size),
        "a row shorter than its vector"
    );
}

/// `rows[r] · h` for `R` rows of one length, each with the bits of [`dot_row`]: each value of
/// `h` is loaded once for all of them, and the rows are read side by side (decode reads a
/// float or int8 head's rows as two far-apart streams).
pub fn dot_rows<const R: usize>(
    kern: super::Kernel,
    dtype: DType,
    rows: [&[u8]; R],
    h: &[f32],
) -> [f32; R] {
    #[cfg(target_arch = "x86_64")]
    if kern.float_simd() {
        assert_row_holds(dtype, rows, h.len());
        // SAFETY: as in dot_row_many.
        return unsafe { dot_grid_avx2(dtype, rows, [h]) }.map(|[y]| y);
    }
    let _ = kern;
    rows.map(|row| dot_row_generic(dtype, row, h))
}
