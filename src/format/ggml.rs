//! ggml tensor types as GGUF files store them (formats/gguf.md §4): the size table, and the
//! three ternary layouts we read and write: TQ1_0 and TQ2_0 (mainline ggml, an fp16 scale in
//! every 256-weight block) and I2_S (bitnet.cpp, one f32 scale per tensor in a 32-byte tail).

/// Which ggml a file was written for: the ids 36–39 mean different types in each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// ggml-org/ggml and llama.cpp: 36–38 retired, 39 MXFP4.
    Mainline,
    /// microsoft/BitNet's fork: 36 I2_S, 37 I8_S, 38 TL1, 39 TL2.
    BitnetCpp,
}

/// A ggml tensor type. Only the types with a size rule are listed; any other id is an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlType {
    pub id: u32,
    pub name: &'static str,
    /// Elements per block; ne0 must be a multiple.
    pub block: u64,
    /// Bytes per block (I2_S: see [`GgmlType::data_len`]).
    pub block_bytes: u64,
}

pub const F32: u32 = 0;
pub const F16: u32 = 1;
/// Byte-identical to the .bnet Q4 dtype (formats/bnet.md §4.3).
pub const Q4_0: u32 = 2;
pub const Q8_0: u32 = 8;
pub const BF16: u32 = 30;
pub const TQ1_0: u32 = 34;
pub const TQ2_0: u32 = 35;
/// bitnet.cpp only.
pub const I2_S: u32 = 36;

/// Bytes of an I2_S tensor after its codes: the f32 scale, then zeros.
pub const I2S_TAIL: u64 = 32;
/// Weights per I2_S block (32 bytes).
pub const I2S_BLOCK: usize = 128;
/// Bytes of one TQ1_0 / TQ2_0 block of 256 weights.
pub const TQ1_BYTES: usize = 54;
pub const TQ2_BYTES: usize = 66;

const fn t(id: u32, name: &'static str, block: u64, block_bytes: u64) -> GgmlType {
    GgmlType {
        id,
        name,
        block,
        block_bytes,
    }
}

/// Mainline ggml's table (`ggml.c` type traits; gguf-py 0.19 agrees except Q8_1, where ggml's
/// `sizeof(block_q8_1)` is 36), ids 0–41 where a size rule exists.
const MAINLINE: &[GgmlType] = &[
    t(0, "F32", 1, 4),
    t(1, "F16", 1, 2),
    t(2, "Q4_0", 32, 18),
    t(3, "Q4_1", 32, 20),
    t(6, "Q5_0", 32, 22),
    t(7, "Q5_1", 32, 24),
    t(8, "Q8_0", 32, 34),
    t(9, "Q8_1", 32, 36),
    t(10, "Q2_K", 256, 84),
    t(11, "Q3_K", 256, 110),
    t(12, "Q4_K", 256, 144),
    t(13, "Q5_K", 256, 176),
    t(14, "Q6_K", 256, 210),
    t(15, "Q8_K", 256, 292),
    t(16, "IQ2_XXS", 256, 66),
    t(17, "IQ2_XS", 256, 74),
    t(18, "IQ3_XXS", 256, 98),
    t(19, "IQ1_S", 256, 50),
    t(20, "IQ4_NL", 32, 18),
    t(21, "IQ3_S", 256, 110),
    t(22, "IQ2_S", 256, 82),
    t(23, "IQ4_XS", 256, 136),
    t(24, "I8", 1, 1),
    t(25, "I16", 1, 2),
    t(26, "I32", 1, 4),
    t(27, "I64", 1, 8),
    t(28, "F64", 1, 8),
    t(29, "IQ1_M", 256, 56),
    t(30, "BF16", 1, 2),
    t(34, "TQ1_0", 256, 54),
    t(35, "TQ2_0", 256, 66),
    t(39, "MXFP4", 32, 17),
    t(40, "NVFP4", 64, 36),
    t(41, "Q1_0", 128, 18),
];

const I2S_TYPE: GgmlType = t(I2_S, "I2_S", 1, 1);

impl GgmlType {
    /// The type of `id` in `dialect`, or an error message naming the problem.
    pub fn from_id(id: u32, dialect: Dialect) -> Result<GgmlType, String> {
        if let (Dialect::BitnetCpp, 36..=39) = (dialect, id) {
            return match id {
                I2_S => Ok(I2S_TYPE),
                37 => Err("type I8_S (bitnet.cpp id 37) is an activation type and never stored in model files".into()),
                _ => Err(format!(
                    "type {} (bitnet.cpp id {id}) is a lookup-table layout tiled for one kernel build and shape; convert the model to I2_S with bitnet.cpp, or export TQ2_0 from the original checkpoint",
                    if id == 38 { "TL1" } else { "TL2" }
                )),
            };
        }
        if (36..=38).contains(&id) {
            return Err(format!(
                "ggml type id {id} is a retired type in mainline ggml but I2_S/I8_S/TL1 in bitnet.cpp, and this file does not say it comes from bitnet.cpp; if it does, pass --bitnet-cpp"
            ));
        }
        MAINLINE
            .iter()
            .find(|t| t.id == id)
            .copied()
            .ok_or_else(|| format!("unknown ggml type id {id}"))
    }

    /// Bytes of a tensor with these dims (ne0 first), or an error message.
    pub fn data_len(&self, dims: &[u64]) -> Result<u64, String> {
        let n = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or("element count overflows")?;
        if self.id == I2_S {
            if n % I2S_BLOCK as u64 != 0 {
                return Err(format!(
                    "I2_S needs a multiple of {I2S_BLOCK} elements, got {n}"
                ));
            }
            return Ok(n / 4 + I2S_TAIL);
        }
        let ne0 = dims.first().copied().unwrap_or(1);
        if ne0 % self.block != 0 {
            return Err(format!(
                "{} needs rows (ne0) that are a multiple of {}, got {ne0}",
                self.name, self.block
            ));
        }
        (n / self.block)
            .checked_mul(self.block_bytes)
            .ok_or_else(|| "byte size overflows".into())
    }
}

/// A block scale as ggml stores it (fp16, little-endian).
fn f16_bits(d: f32) -> [u8; 2] {
    half::f16::from_f32(d).to_le_bytes()
}

/// Encodes one row of ternary values (`-1, 0, +1`, a multiple of 256) as TQ2_0 blocks whose
/// scale is `d`: qs[32h + m] holds elements 128h + m + 32n at bits 2n.
pub fn encode_tq2_0(t: &[i8], d: f32, out: &mut [u8]) {
    debug_assert_eq!(out.len(), t.len() / 256 * TQ2_BYTES);
    for (x, y) in t.chunks_exact(256).zip(out.chunks_exact_mut(TQ2_BYTES)) {
        for h in 0..2 {
            for m in 0..32 {
                let mut q = 0u8;
                for n in 0..4 {
                    q |= ((x[128 * h + m + 32 * n] + 1) as u8) << (2 * n);
                }
                y[32 * h + m] = q;
            }
        }
        y[64..66].copy_from_slice(&f16_bits(d));
    }
}

/// Decodes a TQ2_0 row into values `code - 1` and returns the block scales; `Err(block)` when
/// a block holds the unused code 3.
pub fn decode_tq2_0(row: &[u8], t: &mut [i8], d: &mut Vec<f32>) -> Result<(), usize> {
    for (b, (y, x)) in row
        .chunks_exact(TQ2_BYTES)
        .zip(t.chunks_exact_mut(256))
        .enumerate()
    {
        for h in 0..2 {
            for m in 0..32 {
                let q = y[32 * h + m];
                for n in 0..4 {
                    let c = (q >> (2 * n)) & 3;
                    if c == 3 {
                        return Err(b);
                    }
                    x[128 * h + m + 32 * n] = c as i8 - 1;
                }
            }
        }
        d.push(half::f16::from_le_bytes([y[64], y[65]]).to_f32());
    }
    Ok(())
}

/// Five (or four, then ×3) trits, most significant first, as ggml's fixed-point byte.
fn tq1_byte(trits: impl Iterator<Item = i8>) -> u8 {
    let v = trits.fold(0u16, |v, x| v * 3 + (x + 1) as u16);
    (v * 256).div_ceil(243) as u8
}

/// Trit `n` (0 = most significant) of a TQ1_0 byte, as a value `-1, 0, +1`.
fn tq1_trit(q: u8, n: u32) -> i8 {
    let p = q.wrapping_mul(3u8.pow(n));
    ((p as u16 * 3) >> 8) as i8 - 1
}

/// Encodes one row of ternary values (a multiple of 256) as TQ1_0 blocks with scale `d`:
/// qs[m] holds elements m + 32n (n < 5), qs[32 + m] elements 160 + m + 16n, qh[j] elements
/// 240 + j + 4n (n < 4), each byte a base-3 number stored as ceil(v·256/243).
pub fn encode_tq1_0(t: &[i8], d: f32, out: &mut [u8]) {
    debug_assert_eq!(out.len(), t.len() / 256 * TQ1_BYTES);
    for (x, y) in t.chunks_exact(256).zip(out.chunks_exact_mut(TQ1_BYTES)) {
        for m in 0..32 {
            y[m] = tq1_byte((0..5).map(|n| x[m + 32 * n]));
        }
        for m in 0..16 {
            y[32 + m] = tq1_byte((0..5).map(|n| x[160 + m + 16 * n]));
        }
        for j in 0..4 {
            // four trits then a zero trit, so the first lands in the most significant place
            y[48 + j] = tq1_byte((0..4).map(|n| x[240 + j + 4 * n]).chain([-1]));
        }
        y[52..54].copy_from_slice(&f16_bits(d));
    }
}

/// Decodes a TQ1_0 row into values and pushes the block scales (every byte decodes).
pub fn decode_tq1_0(row: &[u8], t: &mut [i8], d: &mut Vec<f32>) {
    for (y, x) in row.chunks_exact(TQ1_BYTES).zip(t.chunks_exact_mut(256)) {
        for m in 0..32 {
            for n in 0..5 {
                x[m + 32 * n] = tq1_trit(y[m], n as u32);
            }
        }
        for m in 0..16 {
            for n in 0..5 {
                x[160 + m + 16 * n] = tq1_trit(y[32 + m], n as u32);
            }
        }
        for j in 0..4 {
            for n in 0..4 {
                x[240 + j + 4 * n] = tq1_trit(y[48 + j], n as u32);
            }
        }
        d.push(half::f16::from_le_bytes([y[52], y[53]]).to_f32());
    }
}

/// Encodes ternary values (a run of whole 128-blocks of the flattened tensor) as I2_S codes:
/// element j of a block goes to byte j % 32 at shift 6 − 2·(j / 32), value + 1 as the code.
pub fn encode_i2_s(t: &[i8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), t.len() / 4);
    for (x, y) in t.chunks_exact(I2S_BLOCK).zip(out.chunks_exact_mut(32)) {
        for (m, byte) in y.iter_mut().enumerate() {
            *byte = (0..4).fold(0u8, |b, g| b | ((x[m + 32 * g] + 1) as u8) << (6 - 2 * g));
        }
    }
}

/// Decodes I2_S codes into values; `Err(element)` at the first unused code 3.
pub fn decode_i2_s(codes: &[u8], t: &mut [i8]) -> Result<(), usize> {
    for (b, (y, x)) in codes
        .chunks_exact(32)
        .zip(t.chunks_exact_mut(I2S_BLOCK))
        .enumerate()
    {
        for (m, &byte) in y.iter().enumerate() {
            for g in 0..4 {
                let c = (byte >> (6 - 2 * g)) & 3;
                if c == 3 {
                    return Err(b * I2S_BLOCK + m + 32 * g);
                }
                x[m + 32 * g] = c as i8 - 1;
            }
        }
    }
    Ok(())
}

/// The 32-byte I2_S tail: the per-tensor f32 scale, then zeros.
pub fn i2_s_tail(scale: f32) -> [u8; 32] {
    let mut tail = [0u8; 32];
    tail[..4].copy_from_slice(&scale.to_le_bytes());
    tail
}

/// Decodes a Q8_0 row (32-element blocks: fp16 d, then 32 int8) to f32.
pub fn decode_q8_0(row: &[u8], out: &mut [f32]) {
    for (y, x) in row.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = half::f16::from_le_bytes([y[0], y[1]]).to_f32();
        for (o, &q) in x.iter_mut().zip(&y[2..]) {
            *o = q as i8 as f32 * d;
        }
    }
}
