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

/// AVX2 + FMA + F16C: widen 8 stored values to f32 and fuse-multiply-add into 4 accumulators.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `row` holds `h.len()` values of `dtype`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_row_avx2(dtype: DType, row: &[u8], h: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = h.len();
    let full = n / 32 * 32;
    let load = |i: usize| -> __m256 {
        match dtype {
            DType::BF16 => {
                let v = _mm_loadu_si128(row.as_ptr().add(2 * i) as *const __m128i);
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)))
            }
            DType::F16 => {
                _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(2 * i) as *const __m128i))
            }
            DType::F32 => _mm256_loadu_ps(row.as_ptr().add(4 * i) as *const f32),
            _ => _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                row.as_ptr().add(i) as *const __m128i
            ))),
        }
    };
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i < full {
        for (a, acc) in acc.iter_mut().enumerate() {
            let x = _mm256_loadu_ps(h.as_ptr().add(i + 8 * a));
            *acc = _mm256_fmadd_ps(load(i + 8 * a), x, *acc);
        }
        i += 32;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), s);
    let mut total = lanes.iter().sum::<f32>();
    let tail = &h[full..];
    if !tail.is_empty() {
        let size = match dtype {
            DType::F32 => 4,
            DType::I8 => 1,
            _ => 2,
        };
        total += dot_row_generic(dtype, &row[full * size..], tail);
    }
    total
}

/// `row · h` for a stored float row (I8 rows: the caller multiplies by the row scale).
pub fn dot_row(kern: super::Kernel, dtype: DType, row: &[u8], h: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if kern != super::Kernel::Scalar
        && std::arch::is_x86_feature_detected!("f16c")
        && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: AVX2 was checked when `kern` was selected, F16C and FMA just above.
        return unsafe { dot_row_avx2(dtype, row, h) };
    }
    let _ = kern;
    dot_row_generic(dtype, row, h)
}
