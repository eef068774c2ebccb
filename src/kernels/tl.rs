//! TL ternary weights (formats/bnet.md §4.4) multiplied by table lookup. Three weights form one
//! of 27 patterns; a pattern and its negation share an index (0 … 13) and a sign bit, so a
//! weight costs 5/3 bits instead of T2's 2. For each activation vector the kernel first builds,
//! per group of three activations, the 14 sums `d0·x0 + d1·x1 + d2·x2` a pattern can give;
//! a 32-row block then adds one table entry per row and group with `pshufb`, negating it
//! (`!t + 1`) where the sign bit is set. With AVX-512 VBMI the tables also hold the negated
//! sums and one `vpermb` looks up the signed value ([`LutLayout`]).
//!
//! The sums need 10 bits, so each table is kept as a low-byte and a high-byte half and the two
//! lookups are interleaved back into i16. i16 lanes hold 64 groups of at most 3·128 = 384
//! (24 576 < 32 767) before they are widened to i32, so every path is exact for any int8 input.
//!
//! That is the decode kernel (one token). A prompt instead re-lays each block out as T2 rows
//! (`block_to_t2_*`) and runs T2's four-token `maddubs` kernel over them: per multiply, the
//! lookups cost more instructions than `maddubs`, and the re-layout is paid once per block for
//! all the prompt's tokens.

/// Rows per block: one byte lane of a 256-bit register per row.
pub const ROWS: usize = 32;
/// Columns per chunk: eight groups of three.
pub const CHUNK_COLS: usize = 24;
/// Bytes of one 32-row chunk: 32 sign bytes, then 4 × 32 bytes of index nibbles.
pub const CHUNK_BYTES: usize = 160;
/// Table bytes per chunk in the [`LutLayout::Pairs`] layout: 8 groups × (16 low bytes + 16
/// high bytes); [`LutLayout::chunk_bytes`] gives each layout's.
pub const LUT_CHUNK_BYTES: usize = 256;
/// Chunks whose i16 sums fit before widening (8 chunks = 64 groups).
const WIDEN_EVERY: usize = 8;

/// Pattern `i` (0 … 13) as balanced-ternary digits: `i = 9·d0 + 3·d1 + d2`.
pub const DIGITS: [[i8; 3]; 14] = [
    [0, 0, 0],
    [0, 0, 1],
    [0, 1, -1],
    [0, 1, 0],
    [0, 1, 1],
    [1, -1, -1],
    [1, -1, 0],
    [1, -1, 1],
    [1, 0, -1],
    [1, 0, 0],
    [1, 0, 1],
    [1, 1, -1],
    [1, 1, 0],
    [1, 1, 1],
];

/// The index and sign of weights `(w0, w1, w2)`: `v = 9·w0 + 3·w1 + w2`, index `|v|`, sign
/// `v < 0`. Zero is index 0 with the sign clear.
#[inline]
pub fn encode(w: [i8; 3]) -> (u8, bool) {
    let v = 9 * w[0] as i32 + 3 * w[1] as i32 + w[2] as i32;
    (v.unsigned_abs() as u8, v < 0)
}

/// The weights of index `i` (≤ 13) and sign `neg`.
#[inline]
pub fn decode(i: u8, neg: bool) -> [i8; 3] {
    let d = DIGITS[i as usize];
    if neg {
        d.map(|x| -x)
    } else {
        d
    }
}

/// The stored index and sign of group `g` of row `p` in chunk `ch` (its 160 bytes).
#[inline]
pub fn code_at(ch: &[u8], p: usize, g: usize) -> (u8, bool) {
    let i = (ch[32 + 32 * (g / 2) + p] >> (4 * (g % 2))) & 15;
    (i, (ch[p] >> g) & 1 == 1)
}

/// The weights of group `g` of row `p` in chunk `ch`; an invalid index (14, 15: refused when a
/// file is opened) reads as 13.
#[inline]
pub fn weights_at(ch: &[u8], p: usize, g: usize) -> [i8; 3] {
    let (i, neg) = code_at(ch, p, g);
    decode(i.min(13), neg)
}

/// Column of weight `t` (0 … 2) of group `g` (0 … 7) in chunk `c`.
#[inline]
pub fn column(c: usize, g: usize, t: usize) -> usize {
    CHUNK_COLS * c + 8 * t + g
}

/// The 14 sums of one group's activations, as i16 (entries 14 and 15 are zero).
#[inline]
fn group_sums(x: [i8; 3]) -> [i16; 16] {
    let mut t = [0i16; 16];
    for (e, d) in t.iter_mut().zip(DIGITS) {
        *e = (0..3).map(|i| d[i] as i16 * x[i] as i16).sum();
    }
    t
}

/// How a kernel path lays out the tables of one activation vector. Tables live in memory only
/// (built per input, never stored), so each path may use the layout its instructions want.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LutLayout {
    /// 16 entries per group (`pshufb` range); the kernel applies the sign bit itself. Group
    /// `g` of chunk `c` at `256·c + 32·g`: the low bytes of its 16 entries, then the high bytes.
    Pairs,
    /// 64 entries per pair of groups (`2p`, `2p + 1`), index `i + 16·half + 32·sign`: the
    /// sums of group `2p + half`, negated where the sign is set, so one 512-bit `vpermb`
    /// (6-bit index) looks up the signed values of both groups, one per 256-bit half. Pair `p`
    /// of chunk `c` at `512·c + 128·p`: the low bytes of its 64 entries, then the high bytes.
    Signed,
}

impl LutLayout {
    /// Table bytes per chunk.
    pub fn chunk_bytes(self) -> usize {
        match self {
            LutLayout::Pairs => LUT_CHUNK_BYTES,
            LutLayout::Signed => 2 * LUT_CHUNK_BYTES,
        }
    }

    /// The oracle tables of this layout for `chunks` chunks of `a` (zero past its end).
    pub fn build_scalar(self, a: &[i8], chunks: usize, out: &mut [u8]) {
        match self {
            LutLayout::Pairs => build_lut_scalar(a, chunks, out),
            LutLayout::Signed => build_signed_range(a, 0..chunks, out),
        }
    }
}

/// [`LutLayout::Signed`] tables of `chunks` (`out` indexed from chunk 0).
fn build_signed_range(a: &[i8], chunks: std::ops::Range<usize>, out: &mut [u8]) {
    for_each_group(a, chunks, |c, g, t| {
        let o = &mut out[2 * LUT_CHUNK_BYTES * c + 128 * (g / 2)..][..128];
        for (i, &v) in t.iter().enumerate() {
            for (e, v) in [(i, v), (i + 32, -v)] {
                let e = e + 16 * (g % 2);
                o[e] = v as u8;
                o[64 + e] = (v >> 8) as u8;
            }
        }
    })
}

/// Tables for `chunks` chunks of activations `a` (zero past its end) into `out`
/// (`chunks · LUT_CHUNK_BYTES` bytes) in the [`LutLayout::Pairs`] layout.
pub fn build_lut_scalar(a: &[i8], chunks: usize, out: &mut [u8]) {
    build_lut_range(a, 0..chunks, out)
}

fn build_lut_range(a: &[i8], chunks: std::ops::Range<usize>, out: &mut [u8]) {
    for_each_group(a, chunks, |c, g, t| {
        let o = &mut out[LUT_CHUNK_BYTES * c + 32 * g..][..32];
        for (i, v) in t.iter().enumerate() {
            o[i] = *v as u8;
            o[16 + i] = (*v >> 8) as u8;
        }
    })
}

/// `f(chunk, group, sums)` for every group of `chunks`, `a` read as zero past its end.
fn for_each_group(
    a: &[i8],
    chunks: std::ops::Range<usize>,
    mut f: impl FnMut(usize, usize, [i16; 16]),
) {
    let at = |i: usize| a.get(i).copied().unwrap_or(0);
    for c in chunks {
        for g in 0..8 {
            let t = group_sums([
                at(column(c, g, 0)),
                at(column(c, g, 1)),
                at(column(c, g, 2)),
            ]);
            f(c, g, t);
        }
    }
}

/// The 32 row sums of one block (`block`: its chunks, `lut`: at least as many chunks).
pub fn dot_scalar(block: &[u8], lut: &[u8]) -> [i32; ROWS] {
    let mut acc = [0i32; ROWS];
    for (ch, t) in block
        .chunks_exact(CHUNK_BYTES)
        .zip(lut.chunks_exact(LUT_CHUNK_BYTES))
    {
        for (p, a) in acc.iter_mut().enumerate() {
            for g in 0..8 {
                let (i, neg) = code_at(ch, p, g);
                let e = &t[32 * g..];
                let v = i16::from_le_bytes([e[i as usize], e[16 + i as usize]]) as i32;
                *a += if neg { -v } else { v };
            }
        }
    }
    acc
}

/// Bytes of one T2 row of `k` weights (whole 256-weight blocks).
pub fn t2_row_bytes(k: usize) -> usize {
    k.div_ceil(256) * 64
}

/// Re-lays one TL block (`k` columns) out as its 32 rows in T2 (formats/bnet.md §4.1) into
/// `out` (`32 · t2_row_bytes(k)` bytes), so a prompt can run T2's batched kernel over it.
pub fn block_to_t2_scalar(block: &[u8], k: usize, out: &mut [u8]) {
    let rb = t2_row_bytes(k);
    let mut w = vec![0i8; k];
    for (p, row) in out.chunks_exact_mut(rb).take(ROWS).enumerate() {
        // the block alone is a one-block tensor whose row p is this block's row p
        crate::quant::unpack_tl_row(block, k, p, &mut w);
        crate::quant::pack_t2_row(&w, row);
    }
}

#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use super::*;
    use crate::kernels::x86::prefetch_stream;
    use std::arch::x86_64::*;

    /// `$m!(0); … $m!(7);`: a chunk's eight groups, each with its shift as a literal.
    macro_rules! each_group {
        ($m:ident) => {
            $m!(0);
            $m!(1);
            $m!(2);
            $m!(3);
            $m!(4);
            $m!(5);
            $m!(6);
            $m!(7);
        };
    }

    /// Group `$g` of the chunk at `$p` (`$signs`: its 32 sign bytes): the 32 rows' indices as
    /// bytes, and a mask of all ones where the sign bit is set (after the shift, the top bit of
    /// each byte is sign bit g).
    macro_rules! index_and_sign {
        ($p:expr, $signs:expr, $g:literal, $m4:expr, $zero:expr) => {{
            let nib = _mm256_loadu_si256($p.add(32 + 16 * ($g & !1)) as *const __m256i);
            let idx = if $g % 2 == 0 {
                _mm256_and_si256(nib, $m4)
            } else {
                _mm256_and_si256(_mm256_srli_epi16::<4>(nib), $m4)
            };
            let m = _mm256_cmpgt_epi8($zero, _mm256_slli_epi16::<{ 7 - $g }>($signs));
            (idx, m)
        }};
    }

    /// The 32 row sums of one block against the tables of one activation vector.
    ///
    /// # Safety
    /// The CPU must support AVX2. `block.len()` is a multiple of `CHUNK_BYTES`; every table
    /// holds at least as many chunks (checked).
    #[target_feature(enable = "avx2")]
    pub unsafe fn dot_avx2(block: &[u8], lut: &[u8]) -> [i32; ROWS] {
        let chunks = block.len() / CHUNK_BYTES;
        assert!(lut.len() >= chunks * LUT_CHUNK_BYTES);
        let m4 = _mm256_set1_epi8(0x0F);
        let zero = _mm256_setzero_si256();
        let mut wide = [zero; 4];
        let mut c = 0;
        while c < chunks {
            let end = (c + WIDEN_EVERY).min(chunks);
            let (mut a0, mut a1, mut negs) = (zero, zero, zero);
            for cc in c..end {
                let (p, signs) = chunk_at(block, cc);
                macro_rules! group {
                    ($g:literal) => {{
                        let (idx, m) = index_and_sign!(p, signs, $g, m4, zero);
                        negs = _mm256_sub_epi8(negs, m);
                        let tg = lut.as_ptr().add(cc * LUT_CHUNK_BYTES + 32 * $g);
                        let tlo = _mm256_broadcastsi128_si256(_mm_loadu_si128(tg as *const _));
                        let thi =
                            _mm256_broadcastsi128_si256(_mm_loadu_si128(tg.add(16) as *const _));
                        let lo = _mm256_xor_si256(_mm256_shuffle_epi8(tlo, idx), m);
                        let hi = _mm256_xor_si256(_mm256_shuffle_epi8(thi, idx), m);
                        a0 = _mm256_add_epi16(a0, _mm256_unpacklo_epi8(lo, hi));
                        a1 = _mm256_add_epi16(a1, _mm256_unpackhi_epi8(lo, hi));
                    }};
                }
                each_group!(group);
            }
            // the +1 of every negation (at most 64 per byte)
            let b0 = _mm256_add_epi16(a0, _mm256_unpacklo_epi8(negs, zero));
            let b1 = _mm256_add_epi16(a1, _mm256_unpackhi_epi8(negs, zero));
            widen_rows(&mut wide, b0, b1);
            c = end;
        }
        rows_of(wide)
    }

    /// `build_lut_scalar`, two chunks per 256-bit register (one per 128-bit lane): the 14
    /// sums of eight groups in i16 lanes, an 8 × 8 transpose to one group per register, then
    /// the low and high bytes packed apart. Integer arithmetic: identical to the scalar tables.
    ///
    /// # Safety
    /// The CPU must support AVX2. `out.len() ≥ chunks · LUT_CHUNK_BYTES`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn build_lut_avx2(a: &[i8], chunks: usize, out: &mut [u8]) {
        assert!(out.len() >= chunks * LUT_CHUNK_BYTES);
        // pairs of chunks that lie wholly inside `a`; the rest (and the zero tail) in scalar
        let pairs = (a.len() / CHUNK_COLS).min(chunks) / 2;
        for c in (0..2 * pairs).step_by(2) {
            let (lo8, hi8) = entries_avx2(a, c);
            let mask = _mm256_set1_epi16(0xFF);
            for g in 0..8 {
                let (p, q) = (lo8[g], hi8[g]);
                let lo = _mm256_packus_epi16(_mm256_and_si256(p, mask), _mm256_and_si256(q, mask));
                let hi = _mm256_packs_epi16(_mm256_srai_epi16::<8>(p), _mm256_srai_epi16::<8>(q));
                let o = out.as_mut_ptr().add(LUT_CHUNK_BYTES * c + 32 * g);
                _mm256_storeu_si256(o as *mut __m256i, _mm256_permute2x128_si256::<0x20>(lo, hi));
                let o1 = o.add(LUT_CHUNK_BYTES);
                _mm256_storeu_si256(
                    o1 as *mut __m256i,
                    _mm256_permute2x128_si256::<0x31>(lo, hi),
                );
            }
        }
        build_lut_range(a, 2 * pairs..chunks, out);
    }

    /// The 16 table entries (i16) of the eight groups of chunks `c` and `c + 1` (which lie
    /// wholly inside `a`): per group `g`, entries 0–7 in `.0[g]` and 8–15 in `.1[g]`, chunk `c`
    /// in the low 128-bit lane and `c + 1` in the high one.
    ///
    /// # Safety
    /// The CPU must support AVX2 (the callers are AVX2 functions).
    #[inline(always)]
    unsafe fn entries_avx2(a: &[i8], c: usize) -> ([__m256i; 8], [__m256i; 8]) {
        assert!(a.len() >= CHUNK_COLS * (c + 2));
        // weight t of the eight groups: chunk c in the low lane, c + 1 in the high, as i16
        macro_rules! load {
            ($t:literal) => {{
                let p = a.as_ptr().add(CHUNK_COLS * c + 8 * $t);
                let lo = _mm_loadl_epi64(p as *const __m128i);
                let hi = _mm_loadl_epi64(p.add(CHUNK_COLS) as *const __m128i);
                _mm256_set_m128i(_mm_cvtepi8_epi16(hi), _mm_cvtepi8_epi16(lo))
            }};
        }
        let (x0, x1, x2) = (load!(0), load!(1), load!(2));
        let z = _mm256_setzero_si256();
        let (e1, e3) = (x2, x1);
        let e2 = _mm256_sub_epi16(x1, x2);
        let e4 = _mm256_add_epi16(x1, x2);
        // entries 5 … 13 are x0 + (entries −4 … 4), entry −n being −(entry n)
        let e = [
            z,
            e1,
            e2,
            e3,
            e4,
            _mm256_sub_epi16(x0, e4),
            _mm256_sub_epi16(x0, e3),
            _mm256_sub_epi16(x0, e2),
            _mm256_sub_epi16(x0, e1),
            x0,
            _mm256_add_epi16(x0, e1),
            _mm256_add_epi16(x0, e2),
            _mm256_add_epi16(x0, e3),
            _mm256_add_epi16(x0, e4),
            z,
            z,
        ];
        (transpose8(&e[..8]), transpose8(&e[8..]))
    }

    /// `block_to_t2_scalar` in AVX2. Three passes: the T2 code of every column for the 32 rows
    /// (two `pshufb` and a blend per column, rows in byte lanes) into `cols`; four columns
    /// 64 apart or-ed into T2 bytes, still one row per byte lane; then 16 × 16 byte transposes
    /// (per 128-bit lane: rows 0–15 and 16–31) into the rows. `cols` is scratch, reused
    /// between calls.
    ///
    /// # Safety
    /// The CPU must support AVX2. `out.len() ≥ 32 · t2_row_bytes(k)`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn block_to_t2_avx2(block: &[u8], k: usize, cols: &mut Vec<u8>, out: &mut [u8]) {
        let rb = t2_row_bytes(k);
        let kp = rb * 4;
        assert!(out.len() >= ROWS * rb);
        // every column below 24·chunks is written below; the rest is T2 padding, code 1 (a zero
        // weight). The scratch is reused, so only those columns are (re)filled.
        let written = (CHUNK_COLS * (block.len() / CHUNK_BYTES)).min(kp);
        cols.resize(kp * ROWS, 1);
        cols[written * ROWS..kp * ROWS].fill(1);
        let m4 = _mm256_set1_epi8(0x0F);
        let zero = _mm256_setzero_si256();
        let table = |t: usize, neg: bool| {
            let mut v = [1i8; 16];
            for (i, d) in DIGITS.iter().enumerate() {
                v[i] = if neg { 1 - d[t] } else { 1 + d[t] };
            }
            _mm256_broadcastsi128_si256(_mm_loadu_si128(v.as_ptr() as *const __m128i))
        };
        let pos = [table(0, false), table(1, false), table(2, false)];
        let neg = [table(0, true), table(1, true), table(2, true)];
        for (c, ch) in block.chunks_exact(CHUNK_BYTES).enumerate() {
            let p = ch.as_ptr();
            let signs = _mm256_loadu_si256(p as *const __m256i);
            macro_rules! group {
                ($g:literal) => {{
                    let (idx, m) = index_and_sign!(p, signs, $g, m4, zero);
                    for t in 0..3 {
                        let col = column(c, $g, t);
                        if col < kp {
                            let code = _mm256_blendv_epi8(
                                _mm256_shuffle_epi8(pos[t], idx),
                                _mm256_shuffle_epi8(neg[t], idx),
                                m,
                            );
                            _mm256_storeu_si256(cols.as_mut_ptr().add(ROWS * col) as *mut _, code);
                        }
                    }
                }};
            }
            each_group!(group);
        }
        // inputs in bit-reversed order make the four unpack stages a plain transpose
        const BITREV: [usize; 16] = [0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15];
        let col = |i: usize| _mm256_loadu_si256(cols.as_ptr().add(ROWS * i) as *const __m256i);
        for n0 in (0..rb).step_by(16) {
            let mut x = [zero; 16];
            for (xi, &r) in x.iter_mut().zip(&BITREV) {
                // T2 byte n of every row: columns 256b + m + 64j in bits 2j
                let (b, m) = ((n0 + r) / 64, (n0 + r) % 64);
                let base = 256 * b + m;
                let v01 = _mm256_or_si256(col(base), _mm256_slli_epi16::<2>(col(base + 64)));
                let v23 = _mm256_or_si256(
                    _mm256_slli_epi16::<4>(col(base + 128)),
                    _mm256_slli_epi16::<6>(col(base + 192)),
                );
                *xi = _mm256_or_si256(v01, v23);
            }
            macro_rules! stage {
                ($lo:ident, $hi:ident) => {{
                    let y = x;
                    for i in 0..8 {
                        x[2 * i] = $lo(y[i], y[i + 8]);
                        x[2 * i + 1] = $hi(y[i], y[i + 8]);
                    }
                }};
            }
            stage!(_mm256_unpacklo_epi8, _mm256_unpackhi_epi8);
            stage!(_mm256_unpacklo_epi16, _mm256_unpackhi_epi16);
            stage!(_mm256_unpacklo_epi32, _mm256_unpackhi_epi32);
            stage!(_mm256_unpacklo_epi64, _mm256_unpackhi_epi64);
            for (j, v) in x.iter().enumerate() {
                let o = out.as_mut_ptr().add(n0);
                _mm_storeu_si128(o.add(j * rb) as *mut _, _mm256_castsi256_si128(*v));
                _mm_storeu_si128(
                    o.add((16 + j) * rb) as *mut _,
                    _mm256_extracti128_si256::<1>(*v),
                );
            }
        }
    }

    /// The 32 row sums of one block against [`LutLayout::Signed`] tables, with AVX-512 VBMI:
    /// two groups per 512-bit register (the lower half group `2p`, the upper `2p + 1`, both
    /// over the block's 32 rows). Per pair one variable shift takes each half's index nibble,
    /// another moves each half's sign bit to bit 5 (and the bit below it, forced per half
    /// once per chunk, to bit 4: the half), one `vpternlogd` merges them into a 6-bit index,
    /// and two `vpermb` look up the signed sums' low and high bytes: about 9 vector
    /// operations per two groups, where the same kernel on 256-bit registers took 8 per group.
    /// On one Zen 5 core (`tl_blocks_1thread`, weights in L2) 36.6 GiB/s against the 256-bit
    /// kernel's 29.2; streaming from memory a pair of far-apart blocks 30.3 against 27.8, but
    /// a block alone 18.7 against 24.4, so decode takes every block in pairs. Exact: i16 lanes
    /// hold 32 groups per half, 64 summed.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW, VL and VBMI. `block.len()` is a multiple of
    /// `CHUNK_BYTES`; the tables hold at least as many chunks (checked).
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vbmi")]
    pub unsafe fn dot_vbmi(block: &[u8], lut: &[u8]) -> [i32; ROWS] {
        dot_vbmi_n([block], lut)[0]
    }

    /// [`dot_vbmi`] of `N` blocks of one length against the same tables, each table line
    /// loaded once for all of them, each block's sums the bits of a call with it alone.
    ///
    /// # Safety
    /// As [`dot_vbmi`], for every block.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vbmi")]
    pub unsafe fn dot_vbmi_n<const N: usize>(blocks: [&[u8]; N], lut: &[u8]) -> [[i32; ROWS]; N] {
        let tb = LutLayout::Signed.chunk_bytes();
        let chunks = blocks[0].len() / CHUNK_BYTES;
        assert!(blocks.iter().all(|b| b.len() == blocks[0].len()));
        assert!(lut.len() >= chunks * tb);
        let z = _mm512_setzero_si512();
        // a 512-bit vector of `lo` in the lower half and `hi` in the upper
        let halves =
            |lo: __m256i, hi: __m256i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        let low4 = _mm512_set1_epi8(0x0F);
        let evens = _mm512_set1_epi8(0x55);
        let upper = halves(_mm256_setzero_si256(), _mm256_set1_epi8(-1));
        let nib_shift = halves(_mm256_setzero_si256(), _mm256_set1_epi16(4));
        // per pair, the shift that brings sign bit 2p (lower half) and 2p + 1 (upper) to bit 5
        let count = |lo: i16, hi: i16| halves(_mm256_set1_epi16(lo), _mm256_set1_epi16(hi));
        let (sh0, sh1, sh2, sh3) = (count(5, 4), count(3, 2), count(1, 0), count(1, 2));
        let mut wide = [[_mm256_setzero_si256(); 4]; N];
        let mut c = 0;
        while c < chunks {
            let end = (c + WIDEN_EVERY).min(chunks);
            let (mut a0, mut a1) = ([z; N], [z; N]);
            for cc in c..end {
                let mut p = [std::ptr::null::<u8>(); N];
                // the sign bytes in both halves; the lower keeps only the even groups' bits and
                // the upper sets them, so after each pair's shift bit 4 reads 0 in the lower
                // half and 1 in the upper (the shifts below never bring in another byte's bit
                // 4 or 5): majority(s, 0x55, upper)
                let mut sg = [z; N];
                for n in 0..N {
                    let (q, s) = chunk_at(blocks[n], cc);
                    p[n] = q;
                    sg[n] =
                        _mm512_ternarylogic_epi32::<0xE8>(_mm512_broadcast_i64x4(s), evens, upper);
                }
                macro_rules! pair {
                    ($p:literal, $shift:ident, $count:expr) => {{
                        let tp = lut.as_ptr().add(cc * tb + 128 * $p);
                        let tlo = _mm512_loadu_si512(tp as *const _);
                        let thi = _mm512_loadu_si512(tp.add(64) as *const _);
                        for n in 0..N {
                            let nib = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                                p[n].add(32 + 32 * $p) as *const __m256i,
                            ));
                            // bits 0-3: group 2p's index below, 2p + 1's above
                            let ix = _mm512_srlv_epi16(nib, nib_shift);
                            let s = $shift(sg[n], $count);
                            // low4 ? ix : s, bit by bit (vpermb reads bits 0-5)
                            let idx = _mm512_ternarylogic_epi32::<0xE4>(ix, s, low4);
                            let lo = _mm512_permutexvar_epi8(idx, tlo);
                            let hi = _mm512_permutexvar_epi8(idx, thi);
                            a0[n] = _mm512_add_epi16(a0[n], _mm512_unpacklo_epi8(lo, hi));
                            a1[n] = _mm512_add_epi16(a1[n], _mm512_unpackhi_epi8(lo, hi));
                        }
                    }};
                }
                pair!(0, _mm512_sllv_epi16, sh0);
                pair!(1, _mm512_sllv_epi16, sh1);
                pair!(2, _mm512_sllv_epi16, sh2);
                pair!(3, _mm512_srlv_epi16, sh3);
            }
            for n in 0..N {
                // the two groups of each pair: the same rows, summed (≤ 64 groups in i16)
                let fold = |v: __m512i| {
                    _mm256_add_epi16(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
                };
                widen_rows(&mut wide[n], fold(a0[n]), fold(a1[n]));
            }
            c = end;
        }
        let mut out = [[0; ROWS]; N];
        for n in 0..N {
            out[n] = rows_of(wide[n]);
        }
        out
    }

    /// [`LutLayout::Signed`] tables, from the same entries as [`build_lut_avx2`]: per pair of
    /// groups, their 32 sums and the negations as i16, whose low and high bytes two `vpermt2b`
    /// gather. Built as AVX2 tables and then widened in place, they took 1.09 µs for 2560
    /// columns and 3.0 for 6912 (`cargo bench --bench kernels -- tl_tables`).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VBMI. `out.len() ≥ chunks · 2 · LUT_CHUNK_BYTES`.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vbmi")]
    pub unsafe fn build_signed_lut_avx512(a: &[i8], chunks: usize, out: &mut [u8]) {
        let tb = LutLayout::Signed.chunk_bytes();
        assert!(out.len() >= chunks * tb);
        // pairs of chunks that lie wholly inside `a`; the rest (and the zero tail) in scalar
        let pairs = (a.len() / CHUNK_COLS).min(chunks) / 2;
        // byte i of the result: byte 2i of the words of `pos` then `neg` (their low bytes),
        // and byte 2i + 1 (their high bytes)
        const EVEN: [u8; 64] = {
            let mut b = [0u8; 64];
            let mut i = 0;
            while i < 64 {
                b[i] = 2 * i as u8;
                i += 1;
            }
            b
        };
        let low = _mm512_loadu_si512(EVEN.as_ptr() as *const _);
        let high = _mm512_add_epi8(low, _mm512_set1_epi8(1));
        for c in (0..2 * pairs).step_by(2) {
            let (lo8, hi8) = entries_avx2(a, c);
            // group g's 16 entries of chunk c (lane 0) or c + 1 (lane 1)
            let of = |lane: usize, g: usize| match lane {
                0 => _mm256_permute2x128_si256::<0x20>(lo8[g], hi8[g]),
                _ => _mm256_permute2x128_si256::<0x31>(lo8[g], hi8[g]),
            };
            for lane in 0..2 {
                for p in 0..4 {
                    // entries 0-31: the pair's sums; 32-63: their negations
                    let pos = _mm512_inserti64x4::<1>(
                        _mm512_castsi256_si512(of(lane, 2 * p)),
                        of(lane, 2 * p + 1),
                    );
                    let neg = _mm512_sub_epi16(_mm512_setzero_si512(), pos);
                    let o = out.as_mut_ptr().add((c + lane) * tb + 128 * p);
                    _mm512_storeu_si512(o as *mut _, _mm512_permutex2var_epi8(pos, low, neg));
                    let high = _mm512_permutex2var_epi8(pos, high, neg);
                    _mm512_storeu_si512(o.add(64) as *mut _, high);
                }
            }
        }
        build_signed_range(a, 2 * pairs..chunks, out);
    }

    /// Chunk `cc` of `block` (prefetching the weights ahead of it) and its 32 sign bytes.
    #[inline(always)]
    unsafe fn chunk_at(block: &[u8], cc: usize) -> (*const u8, __m256i) {
        let p = block.as_ptr().add(cc * CHUNK_BYTES);
        prefetch_stream(p, CHUNK_BYTES);
        (p, _mm256_loadu_si256(p as *const __m256i))
    }

    /// Adds a block's i16 row sums to the i32 ones: `lo` holds rows 0-7 | 16-23 and `hi` rows
    /// 8-15 | 24-31 (byte unpacks work per 128-bit lane).
    #[inline(always)]
    unsafe fn widen_rows(wide: &mut [__m256i; 4], lo: __m256i, hi: __m256i) {
        let halves = [
            _mm256_castsi256_si128(lo),
            _mm256_castsi256_si128(hi),
            _mm256_extracti128_si256::<1>(lo),
            _mm256_extracti128_si256::<1>(hi),
        ];
        for (w, h) in wide.iter_mut().zip(halves) {
            *w = _mm256_add_epi32(*w, _mm256_cvtepi16_epi32(h));
        }
    }

    /// The 32 row sums in row order.
    #[inline(always)]
    unsafe fn rows_of(wide: [__m256i; 4]) -> [i32; ROWS] {
        let mut out = [0i32; ROWS];
        for (i, v) in wide.iter().enumerate() {
            _mm256_storeu_si256(out.as_mut_ptr().add(8 * i) as *mut __m256i, *v);
        }
        out
    }

    /// 8 × 8 transpose of i16 in each 128-bit lane: `r[e]` lane `g` → result `g` lane `e`.
    #[inline(always)]
    unsafe fn transpose8(r: &[__m256i]) -> [__m256i; 8] {
        let t = [
            _mm256_unpacklo_epi16(r[0], r[1]),
            _mm256_unpackhi_epi16(r[0], r[1]),
            _mm256_unpacklo_epi16(r[2], r[3]),
            _mm256_unpackhi_epi16(r[2], r[3]),
            _mm256_unpacklo_epi16(r[4], r[5]),
            _mm256_unpackhi_epi16(r[4], r[5]),
            _mm256_unpacklo_epi16(r[6], r[7]),
            _mm256_unpackhi_epi16(r[6], r[7]),
        ];
        let u = [
            _mm256_unpacklo_epi32(t[0], t[2]),
            _mm256_unpackhi_epi32(t[0], t[2]),
            _mm256_unpacklo_epi32(t[1], t[3]),
            _mm256_unpackhi_epi32(t[1], t[3]),
            _mm256_unpacklo_epi32(t[4], t[6]),
            _mm256_unpackhi_epi32(t[4], t[6]),
            _mm256_unpacklo_epi32(t[5], t[7]),
            _mm256_unpackhi_epi32(t[5], t[7]),
        ];
        [
            _mm256_unpacklo_epi64(u[0], u[4]),
            _mm256_unpackhi_epi64(u[0], u[4]),
            _mm256_unpacklo_epi64(u[1], u[5]),
            _mm256_unpackhi_epi64(u[1], u[5]),
            _mm256_unpacklo_epi64(u[2], u[6]),
            _mm256_unpackhi_epi64(u[2], u[6]),
            _mm256_unpacklo_epi64(u[3], u[7]),
            _mm256_unpackhi_epi64(u[3], u[7]),
        ]
    }
}
