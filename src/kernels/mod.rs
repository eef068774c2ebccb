//! Integer dot products of int8 activations with packed weights (T2 ternary, B1 binary), in
//! scalar, AVX2 and AVX-512 VNNI versions. Every path computes the same exact i32 as the scalar
//! one (tests/kernels.rs). The path is chosen once per process from the CPU's features, or
//! forced with `BITNET_KERNEL=scalar|avx2|avx512` so CI can test each path on one machine.
//!
//! Activations are padded with zeros to a multiple of 256 so kernels run whole blocks; the
//! packed padding codes are zero weights (formats/bnet.md §4), so padding contributes nothing.

pub mod float;
pub mod q4;
pub mod scalar;
pub mod tl;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use std::sync::OnceLock;

/// A kernel path this CPU can run. The path is private: a `Kernel` only comes from
/// [`Kernel::scalar`], [`Kernel::selected`] or [`Kernel::all_available`], which check the CPU, so
/// the safe dispatch methods below never reach an instruction the CPU lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel(Path, Extras);

/// What the CPU adds to a path that some of its kernels use, detected once when the `Kernel`
/// is made (the dispatch methods run per block of rows, tens of thousands of times a token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extras {
    /// AVX-512 VL and VBMI on the avx512 path ([`Kernel::vbmi`]).
    vbmi: bool,
    /// FMA and F16C on a SIMD path ([`Kernel::float_simd`]).
    float: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Scalar,
    Avx2,
    Avx512,
}

/// Every path, best last, with its name for `BITNET_KERNEL`.
const PATHS: [(Path, &str); 3] = [
    (Path::Scalar, "scalar"),
    (Path::Avx2, "avx2"),
    (Path::Avx512, "avx512"),
];

impl Path {
    /// Whether this CPU can run the path. AVX-512 also needs AVX2: the B1 and float dots run
    /// their AVX2 code under it.
    fn available(self) -> bool {
        match self {
            Path::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

impl Kernel {
    /// The portable path, on every CPU.
    pub fn scalar() -> Kernel {
        Kernel::of(Path::Scalar)
    }

    pub fn name(self) -> &'static str {
        PATHS
            .iter()
            .find(|(p, _)| *p == self.0)
            .expect("every path")
            .1
    }

    /// Every path name, available here or not, best last.
    pub fn names() -> [&'static str; 3] {
        PATHS.map(|(_, n)| n)
    }

    /// The path called `name`, if it exists and this CPU can run it.
    pub fn named(name: &str) -> Option<Kernel> {
        PATHS
            .iter()
            .find(|(p, n)| *n == name && p.available())
            .map(|(p, _)| Kernel::of(*p))
    }

    /// Every path this CPU can run, best last.
    pub fn all_available() -> Vec<Kernel> {
        PATHS
            .iter()
            .filter(|(p, _)| p.available())
            .map(|(p, _)| Kernel::of(*p))
            .collect()
    }

    /// The kernel of path `p` (available on this CPU); settles the process's prefetch mode
    /// first, so the kernels read it as a plain flag.
    fn of(p: Path) -> Kernel {
        #[cfg(target_arch = "x86_64")]
        let _ = x86::prefetch_mode();
        #[cfg(target_arch = "x86_64")]
        let extras = Extras {
            vbmi: p == Path::Avx512
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512vbmi"),
            float: p != Path::Scalar
                && std::arch::is_x86_feature_detected!("f16c")
                && std::arch::is_x86_feature_detected!("fma"),
        };
        #[cfg(not(target_arch = "x86_64"))]
        let extras = Extras {
            vbmi: false,
            float: false,
        };
        Kernel(p, extras)
    }

    /// The path for this process: `BITNET_KERNEL` if set (an unknown or unavailable value is
    /// an error, never a silent fallback), else the best the CPU supports.
    pub fn selected() -> Result<Kernel, String> {
        // the prefetch mode's variable is checked here too, so a bad value is reported
        #[cfg(target_arch = "x86_64")]
        x86::Prefetch::selected()?;
        static SEL: OnceLock<Result<Kernel, String>> = OnceLock::new();
        // set but empty counts as unset, as for most variables of this kind
        SEL.get_or_init(
            || match std::env::var_os("BITNET_KERNEL").filter(|v| !v.is_empty()) {
                Some(v) => {
                    let v = v.to_string_lossy();
                    if !Kernel::names().contains(&v.as_ref()) {
                        return Err(format!(
                            "BITNET_KERNEL={v:?} is not a kernel path; use scalar, avx2 or avx512"
                        ));
                    }
                    Kernel::named(&v).ok_or_else(|| {
                        format!("BITNET_KERNEL={v}: this CPU cannot run the {v} path")
                    })
                }
                None => Ok(*Kernel::all_available().last().expect("scalar always")),
            },
        )
        .clone()
    }

    /// How the decode kernels prefetch their weight streams (`BITNET_PREFETCH`, see
    /// `x86::Prefetch`): `l2` or `nta` (the process's mode, whatever the path), `none` off
    /// x86-64.
    pub fn prefetch_name(self) -> &'static str {
        #[cfg(target_arch = "x86_64")]
        return x86::Prefetch::selected().map_or("l2", |p| p.name());
        #[cfg(not(target_arch = "x86_64"))]
        "none"
    }

    /// Σ code·a over a T2 row, where code ∈ {0, 1, 2} (weight + 1); the caller subtracts Σa.
    /// `row` holds `n` blocks of 64 bytes and `act` `256·n` int8 values.
    #[inline]
    pub fn dot_t2_offset(self, row: &[u8], act: &[i8]) -> i32 {
        debug_assert_eq!(row.len() * 4, act.len());
        match self.0 {
            Path::Scalar => scalar::dot_t2_offset(row, act),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a `Kernel` holding this path exists only if the CPU has it.
            Path::Avx2 => unsafe { x86::dot_t2_offset_avx2(row, act) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Path::Avx512 => unsafe { x86::dot_t2_offset_avx512(row, act) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => scalar::dot_t2_offset(row, act),
        }
    }

    /// [`Kernel::dot_t2_offset`] of the consecutive rows (`row_bytes` each) of `R` streams, read
    /// side by side, into `out[s]`, one per row (decode reads two far-apart runs of rows per
    /// call on AVX-512; elsewhere a call per row).
    #[inline]
    pub fn dot_t2_offset_rows<const R: usize>(
        self,
        streams: [&[u8]; R],
        row_bytes: usize,
        act: &[i8],
        out: [&mut [i32]; R],
    ) {
        if let Path::Avx512 = self.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a `Kernel` holding this path exists only if the CPU has it; the function
            // checks the lengths it relies on.
            return unsafe { x86::dot_t2_offset_rows_avx512(streams, row_bytes, act, out) };
        }
        each_row(streams, row_bytes, out, |row| self.dot_t2_offset(row, act));
    }

    /// `dot_t2_offset` of one row against four activation vectors at once.
    #[inline]
    pub fn dot_t2_offset_x4(self, row: &[u8], act: [&[i8]; 4]) -> [i32; 4] {
        // the SIMD versions index `act` by `row`'s blocks: a short vector would be read past
        // its end (one check per row, not per block)
        assert!(act.iter().all(|a| a.len() == row.len() * 4));
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a `Kernel` holding this path exists only if the CPU has it.
            Path::Avx2 => unsafe { x86::dot_t2_offset_x4_avx2(row, act) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Path::Avx512 => unsafe { x86::dot_t2_offset_x4_avx512(row, act) },
            _ => act.map(|a| scalar::dot_t2_offset(row, a)),
        }
    }

    /// Whether this path runs the kernels that also need AVX-512 VL and VBMI (`vpermb`,
    /// `vpermt2b`): TL over [`tl::LutLayout::Signed`] tables and the Q4 head. AVX-512 CPUs
    /// without VBMI (Skylake-X, Cascade Lake) run the AVX2 code of those under the avx512 path.
    #[inline]
    fn vbmi(self) -> bool {
        self.1.vbmi
    }

    /// The layout of the TL tables this path builds and reads.
    #[inline]
    pub fn tl_lut_layout(self) -> tl::LutLayout {
        if self.vbmi() {
            tl::LutLayout::Signed
        } else {
            tl::LutLayout::Pairs
        }
    }

    /// `dot_t2_offset` of four equal-length rows against four activation vectors:
    /// `[row][token]` (a kernel of its own on AVX-512; elsewhere four `dot_t2_offset_x4`).
    #[inline]
    pub fn dot_t2_offset_4x4(self, rows: [&[u8]; 4], act: [&[i8]; 4]) -> [[i32; 4]; 4] {
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a `Kernel` holding this path exists only if the CPU has it; the function
            // checks the lengths it relies on.
            Path::Avx512 => unsafe { x86::dot_t2_offset_4x4_avx512(rows, act) },
            _ => {
                // a loop, not `rows.map`: that left a closure call per row out of line (~4% of
                // an AVX2 prompt in perf)
                let mut out = [[0; 4]; 4];
                for (o, r) in out.iter_mut().zip(rows) {
                    *o = self.dot_t2_offset_x4(r, act);
                }
                out
            }
        }
    }

    /// The 32 row sums `Σ w·a` of one TL block ([`tl`]) against the tables of `a`, built by
    /// [`Kernel::tl_lut`] of the same path.
    #[inline]
    pub fn dot_tl(self, block: &[u8], lut: &[u8]) -> [i32; tl::ROWS] {
        // a short table would end the scalar sum early (the SIMD paths assert it too)
        assert!(lut.len() / self.tl_lut_layout().chunk_bytes() >= block.len() / tl::CHUNK_BYTES);
        #[cfg(target_arch = "x86_64")]
        if self.vbmi() {
            // SAFETY: vbmi() checked AVX-512 F, BW (the path), VL and VBMI; the function
            // checks the lengths it relies on.
            return unsafe { tl::x86::dot_vbmi(block, lut) };
        }
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a `Kernel` holding this path exists only if the CPU has it (AVX-512
            // implies AVX2); the function checks the lengths it relies on.
            Path::Avx2 | Path::Avx512 => unsafe { tl::x86::dot_avx2(block, lut) },
            _ => tl::dot_scalar(block, lut),
        }
    }

    /// [`Kernel::dot_tl`] of two blocks of one length against the same tables (decode takes
    /// every TL block in such pairs): with VBMI each table line is loaded once for both, and
    /// the two weight streams are read side by side. The tables of a 2560-wide input (54 KiB)
    /// do not fit L1; one Zen 5 core streamed one block at a time at 19 GiB/s, two adjacent
    /// blocks at 19 and two far-apart ones at 28–30, and far-apart pairs 768 columns wide,
    /// whose tables (16 KiB) stay in L1, at 38 (`cargo bench --bench kernels --
    /// stream_1thread`).
    #[inline]
    pub fn dot_tl_pair(self, a: &[u8], b: &[u8], lut: &[u8]) -> [[i32; tl::ROWS]; 2] {
        // one length on every path (the VBMI kernel walks both blocks by the first's chunks)
        assert_eq!(a.len(), b.len(), "a pair of TL blocks of one length");
        #[cfg(target_arch = "x86_64")]
        if self.vbmi() {
            // SAFETY: as in dot_tl; the function checks the table length it relies on.
            return unsafe { tl::x86::dot_vbmi_n([a, b], lut) };
        }
        [self.dot_tl(a, lut), self.dot_tl(b, lut)]
    }

    /// The TL tables of activations `a` for `chunks` chunks into `out`
    /// (`chunks · tl_lut_layout().chunk_bytes()` bytes).
    #[inline]
    pub fn tl_lut(self, a: &[i8], chunks: usize, out: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if self.vbmi() {
            // SAFETY: as in dot_tl; the function checks the output length.
            return unsafe { tl::x86::build_signed_lut_avx512(a, chunks, out) };
        }
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Path::Avx2 | Path::Avx512 => unsafe { tl::x86::build_lut_avx2(a, chunks, out) },
            _ => tl::build_lut_scalar(a, chunks, out),
        }
    }

    /// One TL block (`k` columns) as 32 T2 rows in `out` (`cols`: scratch).
    #[inline]
    pub fn tl_block_to_t2(self, block: &[u8], k: usize, cols: &mut Vec<u8>, out: &mut [u8]) {
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above; the function checks the output length.
            Path::Avx2 | Path::Avx512 => unsafe { tl::x86::block_to_t2_avx2(block, k, cols, out) },
            _ => tl::block_to_t2_scalar(block, k, out),
        }
    }

    /// Whether this is a SIMD path (AVX2 at least), for float code that needs nothing more
    /// (attention, norms, exponentials, activation quantization).
    #[inline]
    pub fn simd(self) -> bool {
        self.0 != Path::Scalar
    }

    /// Whether this is the AVX-512 path (AVX-512 F and AVX2 at least).
    #[inline]
    pub fn avx512(self) -> bool {
        self.0 == Path::Avx512
    }

    /// Whether the float-side SIMD code (the lm_head dots) may run: a SIMD path was selected
    /// (so AVX2 is there) and the CPU also has FMA and F16C.
    #[inline]
    pub fn float_simd(self) -> bool {
        self.1.float
    }

    /// [`quantize_act`] on this path: the SIMD paths run it in AVX2, with the same bits
    /// (tests/kernels.rs).
    #[inline]
    pub fn quantize_act(self, x: &[f32], out: &mut [i8]) -> (f32, i32) {
        #[cfg(target_arch = "x86_64")]
        if self.simd() {
            // SAFETY: a SIMD path exists only on a CPU with AVX2.
            return unsafe { quantize_act_avx2(x, out) };
        }
        quantize_act(x, out)
    }

    /// A Q4 row (formats/bnet.md §4.3) times a block-quantized int8 vector.
    #[inline]
    pub fn dot_q4(self, row: &[u8], a: &q4::Q8Blocks) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if self.vbmi() {
            // SAFETY: vbmi() checked AVX-512 F, BW, VNNI (the path) and VBMI.
            return unsafe { q4::dot_q4_q8_avx512(row, a) };
        }
        #[cfg(target_arch = "x86_64")]
        if self.float_simd() {
            // SAFETY: float_simd() checked AVX2 (at selection), F16C and FMA.
            return unsafe { q4::dot_q4_q8_avx2(row, a) };
        }
        q4::dot_q4_q8_scalar(row, a)
    }

    /// [`Kernel::dot_q4`] of the consecutive rows (`row_bytes` each) of `R` streams, read side
    /// by side, into `out[s]`, one per row, each with the bits of a call with that row alone
    /// (decode's head: 128 256 rows a token, as two far-apart streams).
    #[inline]
    pub fn dot_q4_rows<const R: usize>(
        self,
        streams: [&[u8]; R],
        row_bytes: usize,
        a: &q4::Q8Blocks,
        out: [&mut [f32]; R],
    ) {
        #[cfg(target_arch = "x86_64")]
        if self.vbmi() {
            // SAFETY: vbmi() checked AVX-512 F, BW, VNNI (the path) and VBMI; the function
            // checks the lengths it relies on.
            return unsafe { q4::dot_q4_q8_avx512_rows(streams, row_bytes, [a], out) };
        }
        each_row(streams, row_bytes, out, |row| self.dot_q4(row, a));
    }

    /// [`Kernel::dot_q4`] of one row against `P` vectors, each result with the bits of a call
    /// with that vector alone (the AVX-512 kernel unpacks the row once for all of them).
    #[inline]
    pub fn dot_q4_many<const P: usize>(self, row: &[u8], a: [&q4::Q8Blocks; P]) -> [f32; P] {
        #[cfg(target_arch = "x86_64")]
        if self.vbmi() {
            // SAFETY: vbmi() checked AVX-512 F, BW, VNNI (the path) and VBMI.
            return unsafe { q4::dot_q4_q8_avx512_many(row, a) };
        }
        a.map(|a| self.dot_q4(row, a))
    }

    /// Σ a over the positions whose B1 bit is 1; the caller forms `2·that − Σa`.
    #[inline]
    pub fn dot_b1_ones(self, row: &[u8], act: &[i8]) -> i32 {
        debug_assert_eq!(row.len() * 8, act.len());
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a `Kernel` holding this path exists only if the CPU has it.
            Path::Avx2 | Path::Avx512 => unsafe { x86::dot_b1_ones_avx2(row, act) },
            _ => scalar::dot_b1_ones(row, act),
        }
    }
}

/// `out[s][i] = f(row i of stream s)` (rows of `row_bytes`): the one-row-per-call fallback of
/// the multi-stream row kernels, with the lengths their SIMD versions check.
fn each_row<T, const R: usize>(
    streams: [&[u8]; R],
    row_bytes: usize,
    out: [&mut [T]; R],
    f: impl Fn(&[u8]) -> T,
) {
    for (rows, out) in streams.into_iter().zip(out) {
        assert!(
            rows.len() >= out.len() * row_bytes,
            "a stream of too few rows"
        );
        for (i, o) in out.iter_mut().enumerate() {
            *o = f(&rows[i * row_bytes..(i + 1) * row_bytes]);
        }
    }
}

/// Per-token absmax int8 quantization, as transformers computes it in float32:
/// `s = 127 / max(max|x|, 1e-5)`, `q = clamp(round_half_even(x·s), −128, 127)`.
/// Writes `q` (zero-padding the rest of `out`) and returns `(s, Σq)`. This is the formula as
/// written, the reference's and the scalar path's; [`Kernel::quantize_act`] is the runner's.
#[inline(always)]
pub fn quantize_act(x: &[f32], out: &mut [i8]) -> (f32, i32) {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let s = 127.0f32 / max.max(1e-5);
    (s, quantize_with(x, s, out))
}

/// The same computation written in AVX2 (LLVM kept [`quantize_act`]'s max a scalar chain
/// and stored its bytes one `vpinsrb` at a time, ~5 cycles a value): the max of |x| in eight
/// lanes (exact in any order; NaN skipped, as `f32::max` does), then per 32 values the same
/// multiply, clamp and round to nearest even, packed to bytes, and an integer sum. NaN
/// products become 0, as the scalar `as i8` makes them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_act_avx2(x: &[f32], out: &mut [i8]) -> (f32, i32) {
    use std::arch::x86_64::*;
    assert!(out.len() >= x.len());
    let n = x.len();
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut m = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        // maxps returns its second operand when either is NaN: a NaN |x| leaves m
        m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x.as_ptr().add(i)), abs), m);
        i += 8;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), m);
    let max = x[i..]
        .iter()
        .chain(&lanes)
        .fold(0f32, |m, v| m.max(v.abs()));
    let s = 127.0f32 / max.max(1e-5);
    let (sv, lo, hi) = (
        _mm256_set1_ps(s),
        _mm256_set1_ps(-128.0),
        _mm256_set1_ps(127.0),
    );
    // packs interleave the 128-bit lanes; this puts the 32 bytes back in order
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let mut sum = _mm256_setzero_si256();
    let mut i = 0;
    while i + 32 <= n {
        let mut q = [_mm256_setzero_si256(); 4];
        for (j, q) in q.iter_mut().enumerate() {
            let y = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(i + 8 * j)), sv);
            let y = _mm256_and_ps(y, _mm256_cmp_ps::<_CMP_ORD_Q>(y, y));
            let y = _mm256_min_ps(_mm256_max_ps(y, lo), hi);
            *q = _mm256_cvtps_epi32(_mm256_round_ps::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(y));
            sum = _mm256_add_epi32(sum, *q);
        }
        let bytes = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let bytes = _mm256_permutevar8x32_epi32(bytes, order);
        _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, bytes);
        i += 32;
    }
    let mut sums = [0i32; 8];
    _mm256_storeu_si256(sums.as_mut_ptr() as *mut __m256i, sum);
    let sum = sums.iter().sum::<i32>() + quantize_with(&x[i..], s, &mut out[i..]);
    (s, sum)
}

/// `out[i] = clamp(round_half_even(x[i]·s), −128, 127)`, zeros after `x.len()`; returns Σ
/// out. Clamping to the integer bounds first gives the same result and keeps the rounding
/// inline (round_ties_even is a libm call on baseline x86-64).
#[inline(always)]
fn quantize_with(x: &[f32], s: f32, out: &mut [i8]) -> i32 {
    let mut sum = 0i32;
    for (o, &v) in out.iter_mut().zip(x) {
        let q = crate::quant::round_half_even_small((v * s).clamp(-128.0, 127.0)) as i8;
        *o = q;
        sum += q as i32;
    }
    out[x.len()..].fill(0);
    sum
}
