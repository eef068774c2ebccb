//! Quantization and bit packing: absmean ternary and sign binary quantizers (transformers'
//! float32 arithmetic), the T2 / B1 layouts of formats/bnet.md §4, Hugging Face's uint8
//! packing, and per-row int8.

use crate::format::bnet::{DType, Entry, BLOCK, Q4_BLOCK_BYTES};
use crate::kernels::tl;
use half::{bf16, f16};

/// Source element types we decode (safetensors dtypes of float checkpoints).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Float {
    F32,
    F16,
    BF16,
}

impl Float {
    pub fn size(self) -> usize {
        match self {
            Float::F32 => 4,
            Float::F16 | Float::BF16 => 2,
        }
    }
    pub fn dtype(self) -> DType {
        match self {
            Float::F32 => DType::F32,
            Float::F16 => DType::F16,
            Float::BF16 => DType::BF16,
        }
    }
    pub fn from_dtype(d: DType) -> Option<Float> {
        match d {
            DType::F32 => Some(Float::F32),
            DType::F16 => Some(Float::F16),
            DType::BF16 => Some(Float::BF16),
            _ => None,
        }
    }
}

/// Decodes little-endian floats into f32 (exact for every source type). `bytes` need not be
/// aligned: foreign safetensors files often are not.
#[inline(always)]
pub fn decode(src: Float, bytes: &[u8], out: &mut [f32]) {
    debug_assert_eq!(bytes.len(), out.len() * src.size());
    match src {
        Float::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Float::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        Float::BF16 => {
            // bf16 is the top half of an f32: a shift, which the compiler vectorizes.
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
        }
    }
}

/// Index of the first NaN or infinity in raw little-endian floats, without decoding.
pub fn first_non_finite(src: Float, bytes: &[u8]) -> Option<usize> {
    match src {
        Float::F32 => bytes.chunks_exact(4).position(|b| {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000
        }),
        Float::F16 => bytes
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00),
        Float::BF16 => bytes
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80),
    }
}

/// `(Σ|x|, Σx)` in f64 (Σx only when `SIGNED`, else 0), with eight independent accumulators
/// so the loop vectorizes; the order is fixed, so the result is deterministic.
#[inline(always)]
pub fn sums_f64<const SIGNED: bool>(x: &[f32]) -> (f64, f64) {
    let mut a = [0f64; 8];
    let mut s = [0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            a[i] += c[i].abs() as f64;
            if SIGNED {
                s[i] += c[i] as f64;
            }
        }
    }
    for (i, &v) in chunks.remainder().iter().enumerate() {
        a[i] += v.abs() as f64;
        if SIGNED {
            s[i] += v as f64;
        }
    }
    (a.iter().sum(), s.iter().sum())
}

/// The absmean ternary scale as transformers' `WeightQuant` computes it in float32:
/// `s = 1 / max(mean|W|, 1e-5)`. The mean is accumulated in f64 and rounded once, so it is the
/// correctly rounded f32 mean; torch's own f32 reduction may differ from it by one ulp.
pub fn absmean_scale(abs_sum: f64, n: u64) -> f32 {
    let mean = (abs_sum / n as f64) as f32;
    1.0f32 / mean.max(1e-5)
}

/// Rounds half to even without a libm call (`rintf` is not inlined on baseline x86-64):
/// adding and subtracting 1.5·2^23 leaves the nearest integer under IEEE round-to-nearest-even,
/// exact for |x| ≤ 2^22. Callers clamp first.
#[inline(always)]
pub(crate) fn round_half_even_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (x + MAGIC) - MAGIC
}

/// Ternary code of one weight: `clamp(round_half_even(w * s), -1, 1)`. With `x = w·s`, that is
/// +1 for `x > 0.5`, −1 for `x < −0.5` and 0 otherwise (the ties ±0.5 round to even, 0, and
/// everything from ±1.5 on clamps to ±1), written as two compares so it vectorizes.
#[inline(always)]
pub fn ternary(w: f32, s: f32) -> i8 {
    let x = w * s;
    (x > 0.5) as i8 - (x < -0.5) as i8
}

/// Binary code of one weight (arXiv 2310.11453): +1 if `w - mean > 0`, else -1.
#[inline]
pub fn binary(w: f32, mean: f32) -> i8 {
    if w - mean > 0.0 {
        1
    } else {
        -1
    }
}

/// Packs one row of ternary values (-1, 0, +1) into T2 blocks (formats/bnet.md §4.1).
#[inline(always)]
pub fn pack_t2_row(codes: &[i8], out: &mut [u8]) {
    let blocks = codes.len().div_ceil(BLOCK as usize);
    debug_assert_eq!(out.len(), blocks * 64);
    for (b, block) in out.chunks_exact_mut(64).enumerate() {
        let base = b * 256;
        if base + 256 <= codes.len() {
            let c = &codes[base..base + 256];
            for (m, byte) in block.iter_mut().enumerate() {
                *byte = (c[m] + 1) as u8
                    | ((c[m + 64] + 1) as u8) << 2
                    | ((c[m + 128] + 1) as u8) << 4
                    | ((c[m + 192] + 1) as u8) << 6;
            }
        } else {
            // the last, partial block: missing elements get code 1 (a zero weight)
            let code = |i: usize| codes.get(base + i).map_or(1u8, |&v| (v + 1) as u8);
            for (m, byte) in block.iter_mut().enumerate() {
                *byte = code(m) | code(m + 64) << 2 | code(m + 128) << 4 | code(m + 192) << 6;
            }
        }
    }
}

/// Scratch buffers for quantizing one row.
pub struct RowScratch {
    x: Vec<f32>,
    codes: Vec<i8>,
}

impl RowScratch {
    pub fn new(k: usize) -> Self {
        RowScratch {
            x: vec![0.0; k],
            codes: vec![0; k],
        }
    }
}

/// What to do with one latent row.
#[derive(Clone, Copy, Debug)]
pub enum RowQuant {
    /// Absmean ternary with scale `s` (codes = clamp(round(w·s))).
    Ternary(f32),
    /// Sign binary around `mean`.
    Binary(f32),
}

#[inline(always)]
fn row_sums_generic(f: Float, src: &[u8], sc: &mut RowScratch, signed: bool) -> (f64, f64) {
    decode(f, src, &mut sc.x);
    if signed {
        sums_f64::<true>(&sc.x)
    } else {
        sums_f64::<false>(&sc.x)
    }
}

#[inline(always)]
fn quantize_row_generic(f: Float, src: &[u8], q: RowQuant, sc: &mut RowScratch, out: &mut [u8]) {
    decode(f, src, &mut sc.x);
    match q {
        RowQuant::Ternary(s) => {
            sc.codes
                .iter_mut()
                .zip(&sc.x)
                .for_each(|(c, &v)| *c = ternary(v, s));
            pack_t2_row(&sc.codes, out)
        }
        RowQuant::Binary(mean) => {
            sc.codes
                .iter_mut()
                .zip(&sc.x)
                .for_each(|(c, &v)| *c = binary(v, mean));
            pack_b1_row(&sc.codes, out)
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn row_sums_avx2(f: Float, src: &[u8], sc: &mut RowScratch, signed: bool) -> (f64, f64) {
    row_sums_generic(f, src, sc, signed)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quantize_row_avx2(f: Float, src: &[u8], q: RowQuant, sc: &mut RowScratch, out: &mut [u8]) {
    quantize_row_generic(f, src, q, sc, out)
}

/// `(Σ|w|, Σw)` of one latent row (Σw only when `signed`), compiled for AVX2 when the CPU has
/// it (the same arithmetic in the same order, so the result does not depend on the path).
pub fn row_sums(f: Float, src: &[u8], sc: &mut RowScratch, signed: bool) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { row_sums_avx2(f, src, sc, signed) };
    }
    row_sums_generic(f, src, sc, signed)
}

/// Quantizes and packs one latent row (T2 or B1), compiled for AVX2 when available.
pub fn quantize_row(f: Float, src: &[u8], q: RowQuant, sc: &mut RowScratch, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { quantize_row_avx2(f, src, q, sc, out) };
    }
    quantize_row_generic(f, src, q, sc, out)
}

/// Unpacks one T2 row of `k` weights into ternary values.
pub fn unpack_t2_row(row: &[u8], out: &mut [i8]) {
    for (i, o) in out.iter_mut().enumerate() {
        let (b, j) = (i / 256, i % 256);
        *o = ((row[b * 64 + j % 64] >> (2 * (j / 64))) & 3) as i8 - 1;
    }
}

/// Packs one row of binary values (-1, +1) into B1 blocks (formats/bnet.md §4.2).
#[inline(always)]
pub fn pack_b1_row(signs: &[i8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), signs.len().div_ceil(BLOCK as usize) * 32);
    out.fill(0);
    for (i, &v) in signs.iter().enumerate() {
        if v > 0 {
            let (b, j) = (i / 256, i % 256);
            out[b * 32 + j % 32] |= 1 << (j / 32);
        }
    }
}

/// Unpacks one B1 row of `k` weights into -1 / +1.
pub fn unpack_b1_row(row: &[u8], out: &mut [i8]) {
    for (i, o) in out.iter_mut().enumerate() {
        let (b, j) = (i / 256, i % 256);
        *o = if (row[b * 32 + j % 32] >> (j / 32)) & 1 == 1 {
            1
        } else {
            -1
        };
    }
}

/// Unpacks values of row `r` of a packed tensor (T2 or B1) with `k` columns.
pub fn unpack_row(dtype: DType, row: &[u8], out: &mut [i8]) {
    match dtype {
        DType::T2 => unpack_t2_row(row, out),
        DType::B1 => unpack_b1_row(row, out),
        _ => unreachable!("unpack_row on a plain tensor"),
    }
}

/// Bytes of a TL tensor `[rows, k]` (formats/bnet.md §4.4).
pub fn tl_len(rows: usize, k: usize) -> usize {
    rows.div_ceil(tl::ROWS) * k.div_ceil(tl::CHUNK_COLS) * tl::CHUNK_BYTES
}

/// Packs a ternary tensor into TL, taking its rows from `row(r, out)` (values −1, 0, +1;
/// rows past `rows` and columns past `k` are zero weights). Blocks of 32 rows in parallel.
pub fn pack_tl(rows: usize, k: usize, row: impl Fn(usize, &mut [i8]) + Sync) -> Vec<u8> {
    use rayon::prelude::*;
    let chunks = k.div_ceil(tl::CHUNK_COLS);
    let mut out = vec![0u8; tl_len(rows, k)];
    out.par_chunks_mut(chunks * tl::CHUNK_BYTES)
        .enumerate()
        .for_each(|(b, block)| {
            let mut w = vec![0i8; tl::ROWS * chunks * tl::CHUNK_COLS];
            for (p, wr) in w.chunks_exact_mut(chunks * tl::CHUNK_COLS).enumerate() {
                if tl::ROWS * b + p < rows {
                    row(tl::ROWS * b + p, &mut wr[..k]);
                }
            }
            for (c, ch) in block.chunks_exact_mut(tl::CHUNK_BYTES).enumerate() {
                for p in 0..tl::ROWS {
                    let wr = &w[p * chunks * tl::CHUNK_COLS..];
                    for g in 0..8 {
                        let (i, neg) = tl::encode([0, 1, 2].map(|t| wr[tl::column(c, g, t)]));
                        ch[p] |= (neg as u8) << g;
                        ch[32 + 32 * (g / 2) + p] |= i << (4 * (g % 2));
                    }
                }
            }
        });
    out
}

/// Unpacks row `r` of a TL tensor with `k` columns into ternary values.
pub fn unpack_tl_row(data: &[u8], k: usize, r: usize, out: &mut [i8]) {
    let chunks = k.div_ceil(tl::CHUNK_COLS);
    let (b, p) = (r / tl::ROWS, r % tl::ROWS);
    let block = &data[b * chunks * tl::CHUNK_BYTES..][..chunks * tl::CHUNK_BYTES];
    for (c, ch) in block.chunks_exact(tl::CHUNK_BYTES).enumerate() {
        for g in 0..8 {
            for (t, &v) in tl::weights_at(ch, p, g).iter().enumerate() {
                if let Some(o) = out.get_mut(tl::column(c, g, t)) {
                    *o = v;
                }
            }
        }
    }
}

/// Unpacks row `r` of a packed tensor (T2, B1 or TL) with `k` columns into `out` (`k` values).
pub fn unpack_tensor_row(dtype: DType, data: &[u8], k: usize, r: usize, out: &mut [i8]) {
    match dtype {
        DType::TL => unpack_tl_row(data, k, r, out),
        _ => {
            let n = dtype.row_bytes(k as u64).expect("a packed row type") as usize;
            unpack_row(dtype, &data[r * n..(r + 1) * n], out)
        }
    }
}

/// The two code rules of TL over whole chunks: no index above 13, no sign bit over index 0.
/// Written as byte loops over the 32 rows so they vectorize, and compiled for AVX2 where the CPU
/// has it (verification reads every byte of a model and must keep up with BLAKE3).
fn tl_codes_ok(data: &[u8]) -> bool {
    #[inline(always)]
    fn generic(data: &[u8]) -> bool {
        let mut bad = [0u8; tl::ROWS];
        for ch in data.chunks_exact(tl::CHUNK_BYTES) {
            let (signs, nib) = ch.split_at(tl::ROWS);
            let mut zero = [0u8; tl::ROWS];
            for (h, n) in nib.chunks_exact(tl::ROWS).enumerate() {
                for p in 0..tl::ROWS {
                    let (lo, hi) = (n[p] & 15, n[p] >> 4);
                    bad[p] |= (lo > 13) as u8 | (hi > 13) as u8;
                    zero[p] |= ((lo == 0) as u8) << (2 * h) | ((hi == 0) as u8) << (2 * h + 1);
                }
            }
            for p in 0..tl::ROWS {
                bad[p] |= signs[p] & zero[p];
            }
        }
        bad.iter().all(|&b| b == 0)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn avx2(data: &[u8]) -> bool {
        generic(data)
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { avx2(data) };
    }
    generic(data)
}

/// True when TL data holds only indices 0 … 13, no negated zero, and zero weights in the
/// padding rows and columns (formats/bnet.md §4.4). Every chunk gets the two code rules
/// ([`tl_codes_ok`]; a weight-by-weight scan took seconds on a 2B model at every open); padding
/// needs the weights only in the last chunk of each block and in the rows past `rows`.
fn tl_is_canonical(data: &[u8], rows: usize, k: usize) -> bool {
    use rayon::prelude::*;
    let chunks = k.div_ceil(tl::CHUNK_COLS);
    if chunks == 0 || data.len() != tl_len(rows, k) {
        return false;
    }
    let codes_ok = data.par_chunks(tl::CHUNK_BYTES * 256).all(tl_codes_ok);
    let block_bytes = chunks * tl::CHUNK_BYTES;
    let mut w = vec![0i8; k];
    let pad_rows_ok = (rows..rows.next_multiple_of(tl::ROWS)).all(|r| {
        unpack_tl_row(data, k, r, &mut w);
        w.iter().all(|&v| v == 0)
    });
    // the columns past k live in the last chunk of each block
    let pad_cols_ok = k.is_multiple_of(tl::CHUNK_COLS)
        || data.par_chunks(block_bytes).all(|block| {
            let ch = &block[block_bytes - tl::CHUNK_BYTES..];
            (0..tl::ROWS).all(|p| {
                (0..8).all(|g| {
                    let d = tl::weights_at(ch, p, g);
                    (0..3).all(|t| d[t] == 0 || tl::column(chunks - 1, g, t) < k)
                })
            })
        });
    codes_ok && pad_rows_ok && pad_cols_ok
}

/// [`packed_is_canonical`] as an error naming the tensor: a file can be self-consistent
/// (checksums included) and still hold T2 code 3, which a kernel would run as weight +2, so
/// every reader of packed weights refuses it rather than compute nonsense.
pub fn check_packed(e: &Entry, data: &[u8]) -> crate::Result<()> {
    if packed_is_canonical(e, data) {
        return Ok(());
    }
    Err(crate::Error::format(format!(
        "{} holds invalid packed codes (T2 code 3, TL index 14/15 or negated zero, or non-zero padding); the file is damaged or was not written by bitnet-pack",
        e.name
    )))
}

/// True when packed data holds no code 3 (T2) and all padding is canonical (formats/bnet.md §4).
/// A full scan of the data, so it runs in parallel and checks padding only where it can be.
pub fn packed_is_canonical(e: &Entry, data: &[u8]) -> bool {
    use rayon::prelude::*;
    let (rows, k) = e.rows_cols();
    if e.dtype == DType::TL {
        return tl_is_canonical(data, rows as usize, k as usize);
    }
    let Some(row_bytes) = e.dtype.row_bytes(k).map(|r| r as usize).filter(|&r| r > 0) else {
        return false;
    };
    if e.dtype == DType::T2 {
        // a field with both bits set is code 3
        let bad = data
            .par_chunks(1 << 20)
            .any(|c| c.iter().fold(0u8, |acc, &b| acc | (b & (b >> 1) & 0x55)) != 0);
        if bad {
            return false;
        }
    }
    let tail = (k % BLOCK) as usize;
    if tail == 0 {
        return true;
    }
    let block = if e.dtype == DType::T2 { 64 } else { 32 };
    data.par_chunks(row_bytes).all(|row| {
        let last = &row[row_bytes - block..];
        (tail..BLOCK as usize).all(|i| match e.dtype {
            DType::T2 => (last[i % 64] >> (2 * (i / 64))) & 3 == 1,
            _ => (last[i % 32] >> (i / 32)) & 1 == 0,
        })
    })
}

/// Code of output row `o`, column `c` of a Hugging Face uint8-packed weight `[out/4, in]`
/// (transformers `pack_weights`: four contiguous row blocks of `out/4` rows, low bits first).
/// Returns the raw 2-bit field: 0, 1, 2 mean -1, 0, +1; 3 is invalid.
#[inline]
pub fn hf_field(packed: &[u8], packed_rows: usize, cols: usize, o: usize, c: usize) -> u8 {
    let (i, r) = (o / packed_rows, o % packed_rows);
    (packed[r * cols + c] >> (2 * i)) & 3
}

/// Packs ternary rows `[out, in]` into Hugging Face's uint8 layout `[out/4, in]` (the inverse
/// of `hf_field`); `out` must be a multiple of 4.
pub fn hf_pack(codes: &[i8], out_features: usize, cols: usize) -> Vec<u8> {
    let r = out_features / 4;
    let mut packed = vec![0u8; r * cols];
    for o in 0..out_features {
        let (i, pr) = (o / r, o % r);
        for c in 0..cols {
            packed[pr * cols + c] |= ((codes[o * cols + c] + 1) as u8) << (2 * i);
        }
    }
    packed
}

/// Per-row symmetric int8: `scale = max|x| / 127`, `q = round_half_even(x / scale)`.
pub fn quantize_i8_row(x: &[f32], q: &mut [i8]) -> f32 {
    let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if max == 0.0 {
        q.fill(0);
        return 0.0;
    }
    let scale = max / 127.0;
    for (o, &v) in q.iter_mut().zip(x) {
        *o = round_half_even_small((v / scale).clamp(-127.0, 127.0)) as i8;
    }
    scale
}

/// Quantizes one row of `x` into Q4 blocks (formats/bnet.md §4.3); `out` holds
/// `ceil(len / 32)` blocks of 18 bytes. Per block, the scale `d` is the element of largest
/// magnitude divided by −8 (ggml's Q4_0 rule), rounded to f16 *before* the codes are chosen, so
/// codes are nearest for the scale a reader will use: `q = clamp(round_half_even(x / d), −8, 7)`
/// stored as `q + 8`. Padding past the end of `x` is code 8 (zero). Returns the index of the
/// first block whose scale does not fit in f16 (|x| beyond 5.2e5), if any.
pub fn quantize_q4_row(x: &[f32], out: &mut [u8]) -> Result<(), usize> {
    for (b, blk) in out.chunks_exact_mut(Q4_BLOCK_BYTES as usize).enumerate() {
        let xs = &x[(32 * b).min(x.len())..(32 * b + 32).min(x.len())];
        let m = xs
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = f16::from_f32(m / -8.0);
        if !d.is_finite() {
            return Err(b);
        }
        let df = d.to_f32();
        blk[..2].copy_from_slice(&d.to_le_bytes());
        let code = |i: usize| match xs.get(i) {
            Some(&v) if df != 0.0 => (round_half_even_small((v / df).clamp(-8.0, 7.0)) + 8.0) as u8,
            _ => 8,
        };
        for j in 0..16 {
            blk[2 + j] = code(j) | code(j + 16) << 4;
        }
    }
    Ok(())
}

/// The stored nibble (0 … 15, value + 8) of element `j` of one 18-byte Q4 block: the low
/// nibble of byte `j` for `j < 16`, the high nibble of byte `j − 16` otherwise.
#[inline(always)]
pub fn q4_nibble(blk: &[u8], j: usize) -> u8 {
    let byte = blk[2 + j % 16];
    if j < 16 {
        byte & 15
    } else {
        byte >> 4
    }
}

/// Decodes Q4 blocks to `out.len()` values: element `32b + j` is `d_b · (q4_nibble(j) − 8)`.
pub fn dequantize_q4_row(row: &[u8], out: &mut [f32]) {
    for (blk, o) in row
        .chunks_exact(Q4_BLOCK_BYTES as usize)
        .zip(out.chunks_mut(32))
    {
        let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        for (j, v) in o.iter_mut().enumerate() {
            *v = d * (q4_nibble(blk, j) as f32 - 8.0);
        }
    }
}

/// The MUST rules of a Q4 tensor's data beyond its size (formats/bnet.md §4.3): every scale is
/// finite and every padding element past `k` is code 8. `None` if it holds, else the row.
pub fn q4_first_bad_row(data: &[u8], k: u64) -> Option<usize> {
    let Some(row_bytes) = DType::Q4
        .row_bytes(k)
        .map(|r| r as usize)
        .filter(|&r| r > 0)
    else {
        return Some(0);
    };
    let tail = (k % 32) as usize;
    let block = Q4_BLOCK_BYTES as usize;
    data.chunks(row_bytes).position(|row| {
        let bad_scale = row
            .chunks_exact(block)
            .any(|b| !f16::from_le_bytes([b[0], b[1]]).is_finite());
        let last = &row[row.len() - block..];
        bad_scale || (tail != 0 && (tail..32).any(|j| q4_nibble(last, j) != 8))
    })
}

/// Converts f32 to the bytes of a float dtype (round to nearest even).
pub fn encode(dst: Float, x: &[f32], out: &mut Vec<u8>) {
    match dst {
        Float::F32 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        Float::F16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        Float::BF16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t2_worked_example_from_spec() {
        let mut out = vec![0u8; 64];
        pack_t2_row(&[1, -1, 0, 0, 1], &mut out);
        assert_eq!(&out[..5], &[0x56, 0x54, 0x55, 0x55, 0x56]);
        assert!(out[5..].iter().all(|&b| b == 0x55));
    }

    #[test]
    fn b1_worked_example_from_spec() {
        let mut out = vec![0xffu8; 32];
        pack_b1_row(&[1, -1, -1, 1], &mut out);
        let mut want = [0u8; 32];
        want[0] = 1;
        want[3] = 1;
        assert_eq!(out, want);
    }

    #[test]
    fn t2_element_positions() {
        // element 256*b + m + 64*j lives in byte 64*b + m at bits 2j..2j+1
        let mut codes = vec![0i8; 600];
        codes[1 + 64 * 3] = 1; // block 0, m=1, j=3
        codes[256 + 5 + 128] = -1; // block 1, m=5, j=2
        let mut out = vec![0u8; 3 * 64];
        pack_t2_row(&codes, &mut out);
        assert_eq!(out[1], 0b10_01_01_01);
        assert_eq!(out[64 + 5], 0b01_00_01_01);
        let mut back = vec![0i8; 600];
        unpack_t2_row(&out, &mut back);
        assert_eq!(back, codes);
    }

    #[test]
    fn rounding_is_half_to_even() {
        assert_eq!(ternary(0.5, 1.0), 0);
        assert_eq!(ternary(-0.5, 1.0), 0);
        assert_eq!(ternary(1.5, 1.0), 1);
        assert_eq!(ternary(0.51, 1.0), 1);
        assert_eq!(ternary(-7.0, 1.0), -1);
    }

    #[test]
    fn binary_sign_of_zero_is_minus_one() {
        assert_eq!(binary(0.25, 0.25), -1);
        assert_eq!(binary(0.26, 0.25), 1);
    }

    #[test]
    fn hf_pack_round_trip() {
        let (out, cols) = (8, 3);
        let codes: Vec<i8> = (0..out * cols).map(|i| (i % 3) as i8 - 1).collect();
        let packed = hf_pack(&codes, out, cols);
        for o in 0..out {
            for c in 0..cols {
                let f = hf_field(&packed, out / 4, cols, o, c);
                assert_eq!(f as i8 - 1, codes[o * cols + c]);
            }
        }
    }

    #[test]
    fn non_finite_detection() {
        let b = [0x00, 0x00, 0x80, 0x7f]; // +inf f32
        assert_eq!(first_non_finite(Float::F32, &b), Some(0));
        let b = [0x00, 0x3f, 0xc0, 0x7f]; // 0.5 bf16, NaN bf16
        assert_eq!(first_non_finite(Float::BF16, &b), Some(1));
        assert_eq!(first_non_finite(Float::F16, &[0x00, 0x3c]), None);
    }
}
