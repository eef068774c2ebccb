//! Quantization and bit packing: absmean ternary and sign binary quantizers (transformers'
//! float32 arithmetic), the T2 / B1 layouts of formats/bnet.md §4, Hugging Face's uint8
//! packing, and per-row int8.

use crate::format::bnet::{DType, Entry, BLOCK};
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
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
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

/// The absmean ternary scale as transformers' `WeightQuant` computes it in float32:
/// `s = 1 / max(mean|W|, 1e-5)`. The mean is accumulated in f64 and rounded once, so it is the
/// correctly rounded f32 mean; torch's own f32 reduction may differ from it by one ulp.
pub fn absmean_scale(abs_sum: f64, n: u64) -> f32 {
    let mean = (abs_sum / n as f64) as f32;
    1.0f32 / mean.max(1e-5)
}

/// Ternary code of one weight: `clamp(round_half_even(w * s), -1, 1)`.
#[inline]
pub fn ternary(w: f32, s: f32) -> i8 {
    (w * s).round_ties_even().clamp(-1.0, 1.0) as i8
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
pub fn pack_t2_row(codes: &[i8], out: &mut [u8]) {
    let blocks = codes.len().div_ceil(BLOCK as usize);
    debug_assert_eq!(out.len(), blocks * 64);
    out.fill(0x55); // every field code 1: a zero weight, the required padding
    for (i, &v) in codes.iter().enumerate() {
        let (b, j) = (i / 256, i % 256);
        let byte = b * 64 + j % 64;
        let shift = 2 * (j / 64);
        out[byte] = (out[byte] & !(3 << shift)) | (((v + 1) as u8) << shift);
    }
}

/// Unpacks one T2 row of `k` weights into ternary values.
pub fn unpack_t2_row(row: &[u8], out: &mut [i8]) {
    for (i, o) in out.iter_mut().enumerate() {
        let (b, j) = (i / 256, i % 256);
        *o = ((row[b * 64 + j % 64] >> (2 * (j / 64))) & 3) as i8 - 1;
    }
}

/// Packs one row of binary values (-1, +1) into B1 blocks (formats/bnet.md §4.2).
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

/// True when packed data holds no code 3 (T2) and all padding is canonical (formats/bnet.md §4).
pub fn packed_is_canonical(e: &Entry, data: &[u8]) -> bool {
    let (_, k) = e.rows_cols();
    let row_bytes = e.dtype.row_bytes(k).unwrap_or(0) as usize;
    if row_bytes == 0 {
        return false;
    }
    let k = k as usize;
    let mut expect = vec![0u8; row_bytes];
    let mut codes = vec![0i8; k];
    data.chunks_exact(row_bytes).all(|row| {
        if e.dtype == DType::T2 && row.iter().any(|&b| (b & (b >> 1) & 0x55) != 0) {
            return false; // a field with both bits set is code 3
        }
        unpack_row(e.dtype, row, &mut codes);
        match e.dtype {
            DType::T2 => pack_t2_row(&codes, &mut expect),
            _ => pack_b1_row(&codes, &mut expect),
        }
        row == expect.as_slice()
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
        *o = (v / scale).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    scale
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
