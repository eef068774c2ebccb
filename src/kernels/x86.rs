//! x86-64 kernels. AVX2: `maddubs` multiplies the unsigned codes (0..=2) by signed int8
//! activations into i16 pairs (|pair| ≤ 2·2·128 = 512, no saturation); the eight products of
//! one 256-weight block add up in i16 (≤ 4096) and `madd` with ones widens them to i32 once
//! per block (the four-token prompt kernel: once per 7 blocks, ≤ 28672), so nothing can
//! overflow however long the row. AVX-512 VNNI: `vpdpbusd` does both in one
//! instruction into i32 lanes.

use std::arch::x86_64::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The 2-bit codes of field `j` of 32 packed bytes, as bytes 0..=2.
#[inline(always)]
unsafe fn field_avx2(v: __m256i, j: usize, mask: __m256i) -> __m256i {
    let shifted = match j {
        0 => v,
        1 => _mm256_srli_epi16::<2>(v),
        2 => _mm256_srli_epi16::<4>(v),
        _ => _mm256_srli_epi16::<6>(v),
    };
    _mm256_and_si256(shifted, mask)
}

/// # Safety
/// The CPU must support AVX2. `act.len() == 4 * row.len()`, `row.len()` a multiple of 64.
#[target_feature(enable = "avx2")]
pub unsafe fn dot_t2_offset_avx2(row: &[u8], act: &[i8]) -> i32 {
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_si256();
    for (block, a) in row.chunks_exact(64).zip(act.chunks_exact(256)) {
        prefetch_ahead(block.as_ptr());
        // i16 lanes add 8 pairs of at most 512 per block (≤ 4096): widen once per block
        let mut blk = _mm256_setzero_si256();
        for half in 0..2 {
            // bytes 32h..32h+31 hold elements 32h + m + 64j
            let v = _mm256_loadu_si256(block.as_ptr().add(32 * half) as *const __m256i);
            for j in 0..4 {
                let codes = field_avx2(v, j, mask);
                let x = _mm256_loadu_si256(a.as_ptr().add(64 * j + 32 * half) as *const __m256i);
                blk = _mm256_add_epi16(blk, _mm256_maddubs_epi16(codes, x));
            }
        }
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(blk, ones));
    }
    hsum_epi32_avx2(acc)
}

/// 256-weight blocks whose i16 sums may add up before widening: 7 · 8 pairs · 512 = 28672
/// ≤ 32767 (8 blocks could reach 32768). Widening every block made 128-token projections ~3%
/// slower (alternating runs of `matmul` on one thread).
pub const X4_BLOCKS_PER_WIDEN: usize = 7;

/// Four tokens against one row: each code vector is unpacked once and used four times, which
/// is what makes batched prompt processing cheaper per token than decoding.
///
/// # Safety
/// The CPU must support AVX2; every `act[t].len() == 4 * row.len()`.
#[target_feature(enable = "avx2")]
pub unsafe fn dot_t2_offset_x4_avx2(row: &[u8], act: [&[i8]; 4]) -> [i32; 4] {
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); 4];
    for (run, blocks) in row.chunks(64 * X4_BLOCKS_PER_WIDEN).enumerate() {
        // Each i16 lane adds 8 maddubs pairs of at most 2·2·128 = 512 per block, so
        // X4_BLOCKS_PER_WIDEN blocks stay within i16; widen to i32 once per run of them.
        let mut blk = [_mm256_setzero_si256(); 4];
        for (i, block) in blocks.chunks_exact(64).enumerate() {
            let b = run * X4_BLOCKS_PER_WIDEN + i;
            for half in 0..2 {
                let v = _mm256_loadu_si256(block.as_ptr().add(32 * half) as *const __m256i);
                for j in 0..4 {
                    let codes = field_avx2(v, j, mask);
                    let off = 256 * b + 64 * j + 32 * half;
                    for t in 0..4 {
                        let x = _mm256_loadu_si256(act[t].as_ptr().add(off) as *const __m256i);
                        blk[t] = _mm256_add_epi16(blk[t], _mm256_maddubs_epi16(codes, x));
                    }
                }
            }
        }
        for t in 0..4 {
            acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(blk[t], ones));
        }
    }
    [
        hsum_epi32_avx2(acc[0]),
        hsum_epi32_avx2(acc[1]),
        hsum_epi32_avx2(acc[2]),
        hsum_epi32_avx2(acc[3]),
    ]
}

/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI; every `act[t].len() == 4 * row.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn dot_t2_offset_x4_avx512(row: &[u8], act: [&[i8]; 4]) -> [i32; 4] {
    let mask = _mm512_set1_epi8(3);
    let mut acc = [_mm512_setzero_si512(); 4];
    for (b, block) in row.chunks_exact(64).enumerate() {
        let c = t2_fields(_mm512_loadu_si512(block.as_ptr() as *const _), mask);
        for t in 0..4 {
            let p = act[t].as_ptr().add(256 * b);
            for (j, cj) in c.iter().enumerate() {
                acc[t] =
                    _mm512_dpbusd_epi32(acc[t], *cj, _mm512_loadu_si512(p.add(64 * j) as *const _));
            }
        }
    }
    [
        _mm512_reduce_add_epi32(acc[0]),
        _mm512_reduce_add_epi32(acc[1]),
        _mm512_reduce_add_epi32(acc[2]),
        _mm512_reduce_add_epi32(acc[3]),
    ]
}

/// Four rows against four tokens (`rows` of equal length): each row's codes are unpacked once
/// for four tokens and each activation vector loaded once for four rows, so a block costs
/// 64 `vpdpbusd` and 20 loads instead of 64 and 68 in four calls of the one-row kernel.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI; every row has `rows[0].len()` bytes and every
/// `act[t].len() == 4 * rows[0].len()` (checked).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn dot_t2_offset_4x4_avx512(rows: [&[u8]; 4], act: [&[i8]; 4]) -> [[i32; 4]; 4] {
    let n = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == n) && act.iter().all(|a| a.len() == 4 * n));
    let mask = _mm512_set1_epi8(3);
    // Plain loops over pointers, no closures (`array::map`) in the loop: a build where LLVM
    // left those closures out of line ran 128-token prompts at half speed (72 against
    // 130 tokens/s on one Zen 5 core), each load a call.
    let (mut rp, mut ap) = ([std::ptr::null::<u8>(); 4], [std::ptr::null::<i8>(); 4]);
    for i in 0..4 {
        rp[i] = rows[i].as_ptr();
        ap[i] = act[i].as_ptr();
    }
    let mut acc = [[_mm512_setzero_si512(); 4]; 4];
    for b in 0..n / 64 {
        let mut v = [_mm512_setzero_si512(); 4];
        for r in 0..4 {
            v[r] = _mm512_loadu_si512(rp[r].add(64 * b) as *const _);
        }
        macro_rules! field {
            ($j:literal) => {{
                let mut x = [_mm512_setzero_si512(); 4];
                for t in 0..4 {
                    x[t] = _mm512_loadu_si512(ap[t].add(256 * b + 64 * $j) as *const _);
                }
                for r in 0..4 {
                    let c = _mm512_and_si512(_mm512_srli_epi16::<{ 2 * $j }>(v[r]), mask);
                    for t in 0..4 {
                        acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], c, x[t]);
                    }
                }
            }};
        }
        field!(0);
        field!(1);
        field!(2);
        field!(3);
    }
    let mut out = [[0i32; 4]; 4];
    for r in 0..4 {
        for t in 0..4 {
            out[r][t] = _mm512_reduce_add_epi32(acc[r][t]);
        }
    }
    out
}

/// How far ahead of the current weight byte to prefetch. Decode streams every weight once from
/// DRAM; the hardware prefetcher stops at 4 KiB page boundaries, so without this the kernels
/// stall on weight loads (measured with perf on Zen 3: ~40% of decode time on the first load).
/// On Zen 3, 6 KiB into L1 (`prefetcht0`) was best. On Zen 4 prefetching into L1 held one
/// core's streaming TL kernel at 8.7 GiB/s of the 27 GiB/s the core can read
/// (`cargo bench --bench kernels -- stream_1thread`): L1's few miss buffers limit how many
/// lines are in flight. Into L2 (`prefetcht1`) the same kernel streams at 17–19 GiB/s, T2 at
/// 18–21; 16 KiB ahead beat 6 KiB in decode at one thread (19.9–21.3 against 18.3–18.5
/// tokens/s, alternating) and tied at two.
pub const PREFETCH_BYTES: usize = 16384;

/// Prefetches the cache lines of `bytes` bytes from `p` into L2 (a hint: never faults, even
/// past the end of an allocation).
#[inline(always)]
pub fn prefetch(p: *const u8, bytes: usize) {
    prefetch_with::<_MM_HINT_T1>(p, bytes);
}

/// Prefetches the cache lines of `bytes` bytes from `p` with hint `H`.
#[inline(always)]
fn prefetch_with<const H: i32>(p: *const u8, bytes: usize) {
    for off in (0..bytes).step_by(64) {
        // SAFETY: prefetch is a hint and does not dereference; wrapping_add keeps the pointer
        // arithmetic defined outside the allocation.
        unsafe { _mm_prefetch::<H>(p.wrapping_add(off) as *const i8) }
    }
}

/// How far ahead of the weight stream [`Prefetch::Nta`] prefetches. On Zen 5 a weight line
/// prefetched into L2 and then loaded into L1 takes L1's space and, in the TL kernel, evicted
/// the tables before their next use (a 2560-wide input's 54 KiB of tables and a call's two
/// blocks, 34 KiB, overflow the 48 KiB L1 together); a non-temporal prefetch brings the line
/// into L1 as one to evict first. One Zen 5 core streamed far-apart TL pairs 2560 wide at
/// 35–36 GiB/s against 30 (6 KiB ahead; 4 KiB 33.4, 2 KiB 26.5, 8 KiB 33.9, 16 KiB 31.2;
/// `cargo bench --bench kernels -- stream_1thread/tl_pair`), and at one thread TL q4 decode
/// went from 46.1–47.8 to 53.2–54.5 tokens/s, T2 q4 (its rows and the Q4 head) from 41.9–42.7
/// to 45.1–48.3 (four alternating pairs); at two threads, memory-bound, within the noise.
pub const NTA_BYTES: usize = 6144;

/// How the decode kernels prefetch their weight streams, chosen once per process:
/// `BITNET_PREFETCH=l2|nta`, else [`Prefetch::Nta`] on AMD family 1Ah (Zen 5) and later,
/// where it was measured faster, and [`Prefetch::L2`] elsewhere (measured best on Zen 3 and
/// Zen 4, where prefetching into L1 with `prefetcht0` had capped a core's stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefetch {
    /// `prefetcht1`, [`PREFETCH_BYTES`] ahead.
    L2,
    /// `prefetchnta`, [`NTA_BYTES`] ahead.
    Nta,
}

impl Prefetch {
    /// The name `BITNET_PREFETCH` takes.
    pub fn name(self) -> &'static str {
        match self {
            Prefetch::L2 => "l2",
            Prefetch::Nta => "nta",
        }
    }

    /// This process's mode: `BITNET_PREFETCH` if set (anything but `l2` or `nta` is an
    /// error), else this CPU's default.
    pub fn selected() -> Result<Prefetch, String> {
        prefetch_mode().clone()
    }
}

/// Whether the kernels prefetch with `prefetchnta`: a plain flag, set once by
/// [`prefetch_mode`] when the first `Kernel` is made. The kernels read it per weight line, and
/// reading the `OnceLock` there instead (a call on its cold path, which keeps every vector
/// register spilled around it) had cost 7% of a TL q4 decode step.
static NTA: AtomicBool = AtomicBool::new(false);

/// [`Prefetch::selected`], read once; sets [`NTA`].
pub(crate) fn prefetch_mode() -> &'static Result<Prefetch, String> {
    static SEL: OnceLock<Result<Prefetch, String>> = OnceLock::new();
    SEL.get_or_init(|| {
        let mode = match std::env::var_os("BITNET_PREFETCH").filter(|v| !v.is_empty()) {
            Some(v) => match v.to_string_lossy().as_ref() {
                "l2" => Ok(Prefetch::L2),
                "nta" => Ok(Prefetch::Nta),
                v => Err(format!(
                    "BITNET_PREFETCH={v:?} is not a prefetch mode; use l2 or nta"
                )),
            },
            None if zen5_or_later() => Ok(Prefetch::Nta),
            None => Ok(Prefetch::L2),
        };
        NTA.store(mode == Ok(Prefetch::Nta), Ordering::Relaxed);
        mode
    })
}

/// Whether this is an AMD CPU of family 1Ah (Zen 5) or later.
// `__cpuid` is an unsafe fn before Rust 1.9x and safe after; the crate's rust-version is 1.89
#[allow(unused_unsafe)]
fn zen5_or_later() -> bool {
    // SAFETY: CPUID exists on every x86-64 CPU, leaves 0 and 1 on all of them.
    let v = unsafe { __cpuid(0) };
    // "AuthenticAMD" in ebx, edx, ecx
    let amd = (v.ebx, v.edx, v.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
    // SAFETY: as above.
    let eax = unsafe { __cpuid(1) }.eax;
    let base = (eax >> 8) & 0xF;
    let family = base + if base == 0xF { (eax >> 20) & 0xFF } else { 0 };
    amd && family >= 0x1A
}

/// Prefetches the `bytes` bytes of a weight stream that lie the chosen distance past `p`
/// ([`Prefetch`]; `l2` until the first `Kernel` is made, and for an invalid
/// `BITNET_PREFETCH`, which `Kernel::selected` reports).
#[inline(always)]
pub fn prefetch_stream(p: *const u8, bytes: usize) {
    if NTA.load(Ordering::Relaxed) {
        prefetch_with::<_MM_HINT_NTA>(p.wrapping_add(NTA_BYTES), bytes);
    } else {
        prefetch(p.wrapping_add(PREFETCH_BYTES), bytes);
    }
}

/// Prefetches row `s + d` of attention's key or value cache while row `s` (at `row`, rows
/// `stride` bytes apart, `bytes` long) is read: with [`Prefetch::Nta`] `d = 8` and
/// `prefetchnta`, else `d = 4` into L2. On Zen 5 the non-temporal rows 8 ahead read the cache
/// faster from memory than rows 4 ahead into L2 (criterion `attention`, 4 steps from memory,
/// shuffled rounds: faster in 5 of 5, medians 24.0 against 20.6 GiB/s, and in 8 of 10, 24.6
/// against 23.4; keys alone non-temporal, or 6 rows ahead, were in between), and 1-thread
/// decode steps spent 5–10% less time in attention.
#[inline(always)]
pub fn prefetch_kv_row(row: *const u8, stride: usize, bytes: usize) {
    if NTA.load(Ordering::Relaxed) {
        prefetch_with::<_MM_HINT_NTA>(row.wrapping_add(8 * stride), bytes);
    } else {
        prefetch(row.wrapping_add(4 * stride), bytes);
    }
}

/// Prefetches the weight stream's cache line ahead of `p` ([`prefetch_stream`]).
#[inline(always)]
pub fn prefetch_ahead(p: *const u8) {
    prefetch_stream(p, 1);
}

/// 64 bytes from `p` (any alignment) as two 256-bit loads, in inline assembly so that LLVM
/// cannot merge them back into one 512-bit load. On Zen 5 a 512-bit load that straddles two
/// cache lines of a stream from DRAM is slow where 256-bit ones are not: the Q4 head's 72-byte
/// groups straddle 7 times in 8, and its kernel streamed at 17.5–19 GiB/s with one 512-bit
/// load per group against 32 with two 256-bit ones (`cargo bench --bench kernels --
/// head_q4`); decode 30 → 33 tokens/s. (Aligned 512-bit loads stream at full speed.)
///
/// # Safety
/// The CPU must support AVX-512 F; `p` is valid for reading 64 bytes.
#[target_feature(enable = "avx512f")]
pub unsafe fn load_512_as_halves(p: *const u8) -> __m512i {
    let (lo, hi): (__m256i, __m256i);
    std::arch::asm!(
        "vmovdqu {lo}, ymmword ptr [{p}]",
        "vmovdqu {hi}, ymmword ptr [{p} + 32]",
        p = in(reg) p,
        lo = out(ymm_reg) lo,
        hi = out(ymm_reg) hi,
        options(pure, readonly, nostack, preserves_flags),
    );
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

#[target_feature(enable = "avx2")]
pub(super) unsafe fn hsum_epi32_avx2(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// The four 2-bit fields of 64 T2 bytes as bytes (`mask`: 3 in every byte): field `j` of byte
/// `m` is element `m + 64j` of the block.
///
/// # Safety
/// Inlined into AVX-512 F/BW code only.
#[inline(always)]
unsafe fn t2_fields(v: __m512i, mask: __m512i) -> [__m512i; 4] {
    [
        _mm512_and_si512(v, mask),
        _mm512_and_si512(_mm512_srli_epi16::<2>(v), mask),
        _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask),
        _mm512_and_si512(_mm512_srli_epi16::<6>(v), mask),
    ]
}

/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI. Same shape rules as the AVX2 version.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn dot_t2_offset_avx512(row: &[u8], act: &[i8]) -> i32 {
    let mut out = [0];
    dot_t2_offset_rows_avx512([row], row.len(), act, [&mut out]);
    out[0]
}

/// [`dot_t2_offset_avx512`] of the consecutive rows (`row_bytes` each) of `R` streams read side
/// by side against one activation vector: row `i` of stream `s` into `out[s][i]` (integer
/// sums: the same values as a call per row). Each activation load serves every stream, and
/// decode reads two far-apart streams per thread, which one Zen 5 core streams faster than one
/// run (the Q4 head: 36–38 GB/s against 32–33).
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI. `act` holds `4 · row_bytes` values and every
/// stream the rows `out` asks of it (checked).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
// row `i` indexes the row offset of every stream and every stream's output
#[allow(clippy::needless_range_loop)]
pub unsafe fn dot_t2_offset_rows_avx512<const R: usize>(
    streams: [&[u8]; R],
    row_bytes: usize,
    act: &[i8],
    out: [&mut [i32]; R],
) {
    let n = out.first().map_or(0, |o| o.len());
    assert!(out.iter().all(|o| o.len() == n));
    assert!(streams.iter().all(|s| s.len() >= n * row_bytes));
    assert!(act.len() >= 4 * row_bytes);
    let mask = _mm512_set1_epi8(3);
    let blocks = row_bytes / 64;
    for i in 0..n {
        // one accumulator per field and stream: a single one chained four `vpdpbusd` per block,
        // each waiting for the last (19.2 GiB/s on one Zen 4 core, L2-resident; 26.3 with four)
        let mut acc = [[_mm512_setzero_si512(); 4]; R];
        for b in 0..blocks {
            let p = act.as_ptr().add(256 * b);
            let mut x = [_mm512_setzero_si512(); 4];
            for (j, x) in x.iter_mut().enumerate() {
                *x = _mm512_loadu_si512(p.add(64 * j) as *const _);
            }
            for s in 0..R {
                let q = streams[s].as_ptr().add(row_bytes * i + 64 * b);
                prefetch_ahead(q);
                let c = t2_fields(_mm512_loadu_si512(q as *const _), mask);
                for j in 0..4 {
                    acc[s][j] = _mm512_dpbusd_epi32(acc[s][j], c[j], x[j]);
                }
            }
        }
        for s in 0..R {
            let a = &acc[s];
            let sum = _mm512_add_epi32(_mm512_add_epi32(a[0], a[1]), _mm512_add_epi32(a[2], a[3]));
            out[s][i] = _mm512_reduce_add_epi32(sum);
        }
    }
}

/// # Safety
/// The CPU must support AVX2. `act.len() == 8 * row.len()`, `row.len()` a multiple of 32.
#[target_feature(enable = "avx2")]
pub unsafe fn dot_b1_ones_avx2(row: &[u8], act: &[i8]) -> i32 {
    let ones = _mm256_set1_epi16(1);
    let one8 = _mm256_set1_epi8(1);
    let mut acc = _mm256_setzero_si256();
    for (block, a) in row.chunks_exact(32).zip(act.chunks_exact(256)) {
        let v = _mm256_loadu_si256(block.as_ptr() as *const __m256i);
        for j in 0..8 {
            // bit j of each byte as 0/1 bytes
            let bits = match j {
                0 => v,
                1 => _mm256_srli_epi16::<1>(v),
                2 => _mm256_srli_epi16::<2>(v),
                3 => _mm256_srli_epi16::<3>(v),
                4 => _mm256_srli_epi16::<4>(v),
                5 => _mm256_srli_epi16::<5>(v),
                6 => _mm256_srli_epi16::<6>(v),
                _ => _mm256_srli_epi16::<7>(v),
            };
            let b = _mm256_and_si256(bits, one8);
            let x = _mm256_loadu_si256(a.as_ptr().add(32 * j) as *const __m256i);
            let p = _mm256_maddubs_epi16(b, x);
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
        }
    }
    hsum_epi32_avx2(acc)
}
