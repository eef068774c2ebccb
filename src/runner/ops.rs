//! The float operations of the forward pass, written as transformers computes them in float32.
//! Both the reference and the fast runner use these; they differ in how they compute the
//! integer dot products, in caching and in parallelism. Each takes the kernel path it runs
//! on: the SIMD paths' versions give the bits of the scalar ones (tests/runner.rs), and the
//! reference runs the scalar ones.

use crate::kernels::Kernel;
use crate::model::Activation;

/// RMSNorm: `x · 1/sqrt(mean(x²) + eps)`, then times the weight.
pub fn rms_norm(kern: Kernel, x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    // eight interleaved lanes: a sequential sum cannot use vector registers and was a visible
    // share of a decode step (every thread normalizes 4 vectors per layer)
    let ms = dot(kern, x, x) / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = g * (v * r);
    }
}

/// `inv_freq[i] = 1 / θ^(2i/d)` in f32, as transformers' default RoPE computes it.
pub fn rope_inv_freq(theta: f64, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
        .collect()
}

/// Rotates one head in place at position `pos` (NeoX / `rotate_half` pairing: i with i + d/2).
pub fn rope(x: &mut [f32], pos: usize, inv_freq: &[f32]) {
    RopeAt::new(pos, inv_freq).apply(x)
}

/// The rotary cosines and sines of one position: computed once and shared by every head and
/// layer (a `sin_cos` per pair per head per layer was ~2% of a decode step).
pub struct RopeAt {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeAt {
    pub fn new(pos: usize, inv_freq: &[f32]) -> Self {
        let (sin, cos) = inv_freq.iter().map(|&f| (pos as f32 * f).sin_cos()).unzip();
        RopeAt { cos, sin }
    }

    /// Rotates one head in place.
    pub fn apply(&self, x: &mut [f32]) {
        let half = self.cos.len();
        for (i, (&cos, &sin)) in self.cos.iter().zip(&self.sin).enumerate() {
            let (a, b) = (x[i], x[i + half]);
            x[i] = a * cos + (-b) * sin;
            x[i + half] = b * cos + a * sin;
        }
    }
}

/// In-place softmax in f32. The exponentials ([`exp`], eight at a time) are taken
/// in a loop of their own and summed in eight lanes (the order of [`dot`]): one running sum
/// carried through each libm `expf` call made the loop a chain of call latencies, a third of
/// attention's time in perf, and `expf` itself was 3% of a decode step. The maximum is also
/// taken in lanes; a maximum does not depend on the order (NaN is skipped either way).
pub fn softmax(kern: Kernel, x: &mut [f32]) {
    let mut max = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    for (m, &v) in max.iter_mut().zip(chunks.remainder()) {
        *m = m.max(v);
    }
    for c in chunks {
        for (m, &v) in max.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    let max = max.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    exp_shifted(kern, x, max);
    let sum = sum_lanes(x);
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// `e^x` in f32 to within one ulp (tests/runner.rs measures it against f64), in plain f32
/// operations that the AVX2 version repeats lane by lane, so every path and the reference get
/// the same bits (softmax and SiLU call it; libm `expf` was about 3% of a decode step):
/// `x = n·ln 2 + r` with `n` rounded to nearest even and `|r| ≤ ln 2 / 2` (Cody–Waite, ln 2
/// in two parts), `e^r` by the Cephes degree-7 polynomial, times `2^n` built in the exponent
/// bits (in two factors, so `n = 128` overflows to infinity as it should). Below −87
/// (`e^x` < 1.7e-38, a weight no sum can notice) the result is 0; NaN stays NaN.
pub fn exp(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < EXP_MIN {
        return 0.0;
    }
    let x = x.min(EXP_MAX);
    let n = crate::quant::round_half_even_small(x * EXP_C[0]);
    let r = (x - n * EXP_C[1]) - n * EXP_C[2];
    let mut p = EXP_C[3];
    for &c in &EXP_C[4..] {
        p = p * r + c;
    }
    let y = (p * (r * r) + r) + 1.0;
    let pow2 = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    let (n, n1) = (n as i32, (n as i32).min(127));
    (y * pow2(n1)) * pow2(n - n1)
}

/// The smallest argument [`exp`] does not round to 0.
const EXP_MIN: f32 = -87.0;
/// Arguments above this are taken as it: `e^89` overflows to infinity, as every argument from
/// 88.73 on does.
const EXP_MAX: f32 = 89.0;

/// log2 e; ln 2 as a 9-bit high part (so `n · ln2_hi` is exact) and the rest; then the
/// polynomial's coefficients, highest power first (Cephes `expf`).
const EXP_C: [f32; 9] = [
    std::f32::consts::LOG2_E,
    355.0 / 512.0,
    -2.121_944_4e-4,
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// `x[i] = exp(x[i] - shift)` for every element, eight at a time on the SIMD paths.
pub fn exp_shifted(kern: Kernel, x: &mut [f32], shift: f32) {
    #[cfg(target_arch = "x86_64")]
    if kern.simd() {
        // SAFETY: a SIMD path exists only on a CPU with AVX2.
        return unsafe { exp_shifted_avx2(x, shift) };
    }
    for v in x.iter_mut() {
        *v = exp(*v - shift);
    }
}

/// [`exp`] in eight lanes: the same operations in the same order on each lane
/// (`vroundps` to nearest even is the scalar's rounding), lanes below the minimum set to 0 and
/// NaN lanes kept, as the scalar's early returns do.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_shifted_avx2(x: &mut [f32], shift: f32) {
    use std::arch::x86_64::*;
    let c = EXP_C.map(|c| _mm256_set1_ps(c));
    let (shiftv, lo, hi, zero, one) = (
        _mm256_set1_ps(shift),
        _mm256_set1_ps(EXP_MIN),
        _mm256_set1_ps(EXP_MAX),
        _mm256_setzero_ps(),
        _mm256_set1_ps(1.0),
    );
    // the exponent bias, and the largest n one factor of 2^n takes
    let k127 = _mm256_set1_epi32(127);
    let chunks = x.len() / 8;
    for i in 0..chunks {
        let p = x.as_mut_ptr().add(8 * i);
        let v = _mm256_sub_ps(_mm256_loadu_ps(p), shiftv);
        let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v);
        let small = _mm256_cmp_ps::<_CMP_LT_OQ>(v, lo);
        let xv = _mm256_min_ps(v, hi);
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(xv, c[0]),
        );
        let r = _mm256_sub_ps(
            _mm256_sub_ps(xv, _mm256_mul_ps(n, c[1])),
            _mm256_mul_ps(n, c[2]),
        );
        let mut q = c[3];
        for ck in &c[4..] {
            q = _mm256_add_ps(_mm256_mul_ps(q, r), *ck);
        }
        let y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(q, _mm256_mul_ps(r, r)), r), one);
        let n = _mm256_cvtps_epi32(n);
        let n1 = _mm256_min_epi32(n, k127);
        let pow2_n1 = _mm256_slli_epi32::<23>(_mm256_add_epi32(n1, k127));
        let pow2_rest = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_sub_epi32(n, n1), k127));
        let out = _mm256_mul_ps(
            _mm256_mul_ps(y, _mm256_castsi256_ps(pow2_n1)),
            _mm256_castsi256_ps(pow2_rest),
        );
        let out = _mm256_blendv_ps(out, zero, small);
        _mm256_storeu_ps(p, _mm256_blendv_ps(out, v, nan));
    }
    for v in &mut x[8 * chunks..] {
        *v = exp(*v - shift);
    }
}

/// Σ x in the eight-lane order of [`dot`].
fn sum_lanes(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    for (a, &v) in acc.iter_mut().zip(rest) {
        *a += v;
    }
    reduce_lanes(acc)
}

/// `act(gate) · up`.
#[inline]
pub fn gated(kern: Kernel, act: Activation, gate: &[f32], up: &[f32], out: &mut [f32]) {
    match act {
        Activation::Relu2 => {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                let r = g.max(0.0);
                *o = (r * r) * u;
            }
        }
        Activation::Silu => {
            // e^−g for the whole vector first, eight at a time
            for (o, &g) in out.iter_mut().zip(gate) {
                *o = -g;
            }
            exp_shifted(kern, out, 0.0);
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = (g / (1.0 + *o)) * u;
            }
        }
    }
}

/// Dot product of two f32 slices, summed in eight interleaved lanes (a fixed order, so the
/// reference and the fast runner agree bit for bit; it lets the compiler use vector registers,
/// where a strictly sequential sum cannot be vectorized). With AVX2 the same lanes sit in one
/// 256-bit register instead of two 128-bit ones: the arithmetic, and so the result, is identical.
pub fn dot(kern: Kernel, a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if kern.simd() {
        // SAFETY: a SIMD path exists only on a CPU with AVX2.
        return unsafe { dot_avx2(a, b) };
    }
    dot_lanes(a, b)
}

/// `dot_lanes` written out in AVX2 (LLVM's own vectorization of it shuffled scalars): the
/// eight lanes of one register, a multiply then an add per step, the same final reduction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let full = n / 8 * 8;
    let mut v = _mm256_setzero_ps();
    for i in (0..full).step_by(8) {
        let x = _mm256_loadu_ps(a.as_ptr().add(i));
        v = _mm256_add_ps(v, _mm256_mul_ps(x, _mm256_loadu_ps(b.as_ptr().add(i))));
    }
    let mut acc = [0f32; 8];
    _mm256_storeu_ps(acc.as_mut_ptr(), v);
    for (l, (x, y)) in a[full..n].iter().zip(&b[full..n]).enumerate() {
        acc[l] += x * y;
    }
    reduce_lanes(acc)
}

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[l] += x * y;
    }
    reduce_lanes(acc)
}

#[inline(always)]
fn reduce_lanes(acc: [f32; 8]) -> f32 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `y += a · x` element by element (a multiply, then an add: no fused rounding, so every
/// vector width gives the same result).
#[inline(always)]
fn axpy_lanes(a: f32, x: &[f32], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o += a * v;
    }
}

/// 64 bytes of the cache, aligned to a cache line: every head starts on one (its offset is a
/// multiple of 64 positions' rows), so the 512-bit loads of the AVX-512 value pass never
/// straddle two lines (criterion `attention` from memory: 4.9–5.0 ms aligned, 5.3 not).
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([f32; 16]);

const _: () = assert!(std::mem::size_of::<Line>() == 64);

/// Zeroed cache lines in one allocation, written as soon as allocated so that no page faults
/// in later, mid-decode. From 2 MiB on, 2 MiB-aligned, rounded up to whole 2 MiB and advised
/// as transparent huge pages (Linux; the kernel's `madvise` mode serves only advised memory):
/// attention then walks its streams with fewer TLB misses. Decode of a 2B-4T T2 q4 file, 128 +
/// 128 tokens, one thread: 45.1–46.9 tokens/s against 44.0–46.3 with a 4 KiB-paged cache per
/// layer (4 of 4 alternating pairs; 90–94% of the bandwidth limit against 88–90); two threads
/// +0.2–1.4%; TL within the noise.
struct Lines {
    ptr: std::ptr::NonNull<Line>,
    len: usize,
    layout: std::alloc::Layout,
}

// SAFETY: `Lines` owns its allocation like a `Vec<Line>` (plain floats, no shared state).
unsafe impl Send for Lines {}
unsafe impl Sync for Lines {}

impl Lines {
    const HUGE: usize = 2 << 20;

    fn zeroed(len: usize) -> Lines {
        const TOO_LARGE: &str = "a KV cache within the address space";
        let array = std::alloc::Layout::array::<Line>(len).expect(TOO_LARGE);
        let layout = if array.size() >= Self::HUGE {
            array.align_to(Self::HUGE).expect(TOO_LARGE).pad_to_align()
        } else {
            array
        };
        if layout.size() == 0 {
            let ptr = std::ptr::NonNull::dangling();
            return Lines { ptr, len, layout };
        }
        // SAFETY: the layout has a non-zero size; the memory is written in full before use.
        let ptr = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = std::ptr::NonNull::new(ptr.cast::<Line>()) else {
            std::alloc::handle_alloc_error(layout)
        };
        #[cfg(target_os = "linux")]
        if layout.align() == Self::HUGE {
            extern "C" {
                fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
            }
            const MADV_HUGEPAGE: i32 = 14;
            // SAFETY: advice about memory this allocation owns; a refusal changes nothing.
            unsafe { madvise(ptr.as_ptr().cast(), layout.size(), MADV_HUGEPAGE) };
        }
        // SAFETY: `ptr` is valid for `layout.size()` bytes; zero bytes are valid `Line`s.
        unsafe { std::ptr::write_bytes(ptr.as_ptr().cast::<u8>(), 0, layout.size()) };
        Lines { ptr, len, layout }
    }
}

impl Default for Lines {
    fn default() -> Self {
        Lines::zeroed(0)
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if self.layout.size() > 0 {
            // SAFETY: allocated in `zeroed` with this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), self.layout) }
        }
    }
}

impl std::ops::Deref for Lines {
    type Target = [Line];
    fn deref(&self) -> &[Line] {
        // SAFETY: `len` initialized lines (zeroed in `zeroed`) owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Lines {
    fn deref_mut(&mut self) -> &mut [Line] {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

/// A session's cached keys (or values) for every layer, stored
/// `[layer][kv_head][position][head_dim]` in one allocation (so a long cache sits in huge
/// pages, see [`Lines`]): each kv head's cache is one contiguous run that attention streams
/// front to back. With every kv head of a position stored together instead, a head's rows were
/// 2.5 KiB apart (2B-4T) and attention read them at well under the memory's sequential rate.
/// Room for `cap` positions per head, a multiple of 64 (a power of two when grown by a push, so
/// a prompt is followed by room for decoding, not by a copy at the first step).
#[derive(Default)]
pub struct KvCache {
    data: Lines,
    heads: usize,
    hd: usize,
    cap: usize,
    /// Positions cached per layer.
    len: Vec<usize>,
}

impl KvCache {
    pub fn new(layers: usize, heads: usize, hd: usize) -> Self {
        KvCache {
            heads,
            hd,
            len: vec![0; layers],
            ..Default::default()
        }
    }

    /// Room for `positions` in all (a multiple of 64, at least): a session that knows its
    /// length reserves it once, so decoding neither copies the cache when it outgrows its
    /// capacity nor stops to fault fresh pages in. (2B-4T, 16-token prompt, 256 decoded: the
    /// page faults were 1.7% of the run's perf samples, and decoding with the cache reserved
    /// read at 89.6–90.5% of the bandwidth limit against 87.4–89.7, T2 q4, one thread.)
    pub fn reserve(&mut self, positions: usize) {
        if positions > self.cap {
            self.grow(
                positions
                    .checked_next_multiple_of(64)
                    .expect("positions fit usize"),
            );
        }
    }

    /// Floats from the start to layer `l`'s kv head `h` (within the allocation, whose size
    /// `grow` checked).
    fn offset(&self, l: usize, h: usize) -> usize {
        (l * self.heads + h) * self.cap * self.hd
    }

    /// Moves the cache into room for `cap` positions.
    fn grow(&mut self, cap: usize) {
        let floats = [self.heads, cap, self.hd]
            .into_iter()
            .try_fold(self.len.len(), usize::checked_mul)
            .expect("a KV cache within the address space");
        let lines = floats.div_ceil(16);
        let mut grown = KvCache {
            data: Lines::zeroed(lines),
            cap,
            len: self.len.clone(),
            ..*self
        };
        for (l, &n) in self.len.iter().enumerate() {
            for h in 0..self.heads {
                let at = grown.offset(l, h);
                grown.floats_mut()[at..][..n * self.hd].copy_from_slice(self.head(l, h));
            }
        }
        *self = grown;
    }

    /// Appends positions to layer `l`, given as rows of `[heads · head_dim]` (the projection's
    /// layout).
    pub fn push(&mut self, l: usize, rows: &[f32]) {
        let (hd, width) = (self.hd, self.heads * self.hd);
        let t = rows.len().checked_div(width).unwrap_or(0);
        let need = self.len[l] + t;
        if need > self.cap {
            self.grow(
                need.checked_next_power_of_two()
                    .expect("positions fit usize")
                    .max(64),
            );
        }
        let (len, start) = (self.len[l], self.offset(l, 0));
        let cap = self.cap;
        let data = &mut self.floats_mut()[start..];
        for (i, row) in rows.chunks_exact(width).enumerate() {
            for (h, x) in row.chunks_exact(hd).enumerate() {
                data[(h * cap + len + i) * hd..][..hd].copy_from_slice(x);
            }
        }
        self.len[l] += t;
    }

    fn floats(&self) -> &[f32] {
        // SAFETY: a Line is 16 f32 with no padding (repr(C), size 64 = 16 · 4)
        unsafe { std::slice::from_raw_parts(self.data.as_ptr().cast(), self.data.len() * 16) }
    }

    fn floats_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `floats`
        unsafe {
            std::slice::from_raw_parts_mut(self.data.as_mut_ptr().cast(), self.data.len() * 16)
        }
    }

    /// Bytes of the cached positions of every layer (not of the spare capacity).
    pub fn bytes(&self) -> u64 {
        let positions: usize = self.len.iter().sum();
        (positions * self.heads * self.hd * std::mem::size_of::<f32>()) as u64
    }

    /// Layer `l`'s kv head `h` at every cached position, `[position][head_dim]`.
    pub fn head(&self, l: usize, h: usize) -> &[f32] {
        &self.floats()[self.offset(l, h)..][..self.len[l] * self.hd]
    }
}

/// One kv head's cached keys and values, `stride` floats per position.
#[derive(Clone, Copy)]
pub struct KvHead<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub stride: usize,
}

impl<'a> KvHead<'a> {
    /// Kv head `kv` of layer `l`'s caches.
    pub fn of(k: &'a KvCache, v: &'a KvCache, l: usize, kv: usize) -> Self {
        KvHead {
            k: k.head(l, kv),
            v: v.head(l, kv),
            stride: k.hd,
        }
    }
}

/// Attention of one query head over positions `0..n`: softmax of the scaled dot products with
/// the keys, then the weighted sum of the values, added to `out`. The plain definition, in the
/// eight-lane order every path uses; [`attend_group`] is what the runner calls.
pub fn attend(qh: &[f32], kv: KvHead, n: usize, scale: f32, out: &mut [f32]) {
    let hd = qh.len();
    let mut p: Vec<f32> = (0..n)
        .map(|s| dot_lanes(qh, &kv.k[s * kv.stride..][..hd]) * scale)
        .collect();
    softmax(Kernel::scalar(), &mut p);
    for (s, &ps) in p.iter().enumerate() {
        axpy_lanes(ps, &kv.v[s * kv.stride..][..hd], out);
    }
}

/// Attention of the query heads that share one kv head (grouped-query attention): `qs` and
/// `outs` hold the group's heads one after another, `hd` floats each. Every head's result is
/// exactly what [`attend`] gives it (the same products and sums in the same order, tested bit
/// for bit); the AVX2 build reads each cached key and value once for the whole group instead
/// of once per head (2B-4T: 4 heads per kv head), which made attention a tenth of a decode
/// step at a few hundred positions when each head streamed the cache itself.
pub fn attend_group(
    kern: Kernel,
    qs: &[f32],
    hd: usize,
    kv: KvHead,
    n: usize,
    scale: f32,
    outs: &mut [f32],
) {
    if qs.is_empty() {
        return; // no heads (a decode thread with no share of them)
    }
    #[cfg(target_arch = "x86_64")]
    if kern.simd() {
        let mut p = vec![0f32; qs.len() / hd * n];
        // SAFETY (all three): the SIMD paths exist only on CPUs with AVX2, the avx512 path
        // only on CPUs with AVX-512 F as well.
        unsafe { scores_avx2(qs, hd, kv, scale, &mut p) };
        p.chunks_exact_mut(n.max(1)).for_each(|p| softmax(kern, p));
        if kern.avx512() && hd.is_multiple_of(128) {
            unsafe { values_avx512(&p, hd, kv, n, outs) };
        } else {
            unsafe { values_avx2(&p, hd, kv, n, outs) };
        }
        return;
    }
    for (q, out) in qs.chunks_exact(hd).zip(outs.chunks_exact_mut(hd)) {
        attend(q, kv, n, scale, out);
    }
}

/// The scaled scores `[head][position]` into `p` (`n` positions per head), each key loaded
/// once for the group (and its value row prefetched, so the value pass reads from cache: 7%
/// faster from memory, criterion `attention`; `prefetch_kv_row` says how far ahead).
/// dot4_avx2(key, [4 heads]) multiplies the same pairs in the same order as
/// dot_avx2(head, key): products commute.
/// Eight positions at a time, a group of four heads' sums are reduced across lanes together
/// (`reduce8_avx2`, the same additions as `reduce_lanes`): one reduction per position and head
/// through memory was the largest share of attention in perf.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn scores_avx2(qs: &[f32], hd: usize, kv: KvHead, scale: f32, p: &mut [f32]) {
    use crate::kernels::x86::prefetch_kv_row;
    use std::arch::x86_64::*;
    let g = qs.len() / hd;
    let n = p.len() / g;
    let q = |h: usize| &qs[h * hd..][..hd];
    // the key and value rows ahead of position s (the value pass then reads from cache)
    let key = |s: usize| {
        let row = |c: &[f32]| c.as_ptr().wrapping_add(s * kv.stride) as *const u8;
        prefetch_kv_row(row(kv.k), 4 * kv.stride, 4 * hd);
        prefetch_kv_row(row(kv.v), 4 * kv.stride, 4 * hd);
        &kv.k[s * kv.stride..][..hd]
    };
    let heads4 = if hd.is_multiple_of(8) { g / 4 * 4 } else { 0 };
    let mut s0 = 0;
    while s0 + 8 <= n && heads4 > 0 {
        for h in (0..heads4).step_by(4) {
            let mut lanes = [[_mm256_setzero_ps(); 8]; 4];
            for j in 0..8 {
                let d = dot4_lanes_avx2(key(s0 + j), [q(h), q(h + 1), q(h + 2), q(h + 3)]);
                for (l, d) in lanes.iter_mut().zip(d) {
                    l[j] = d;
                }
            }
            for (u, l) in lanes.iter().enumerate() {
                let d = _mm256_mul_ps(reduce8_avx2(l), _mm256_set1_ps(scale));
                _mm256_storeu_ps(p[(h + u) * n + s0..][..8].as_mut_ptr(), d);
            }
        }
        for s in s0..s0 + 8 {
            for h in heads4..g {
                p[h * n + s] = dot_avx2(q(h), key(s)) * scale;
            }
        }
        s0 += 8;
    }
    for s in s0..n {
        let key = key(s);
        let mut h = 0;
        while h + 4 <= g {
            let d = dot4_avx2(key, [q(h), q(h + 1), q(h + 2), q(h + 3)]);
            for (u, d) in d.into_iter().enumerate() {
                p[(h + u) * n + s] = d * scale;
            }
            h += 4;
        }
        for h in h..g {
            p[h * n + s] = dot_avx2(q(h), key) * scale;
        }
    }
}

/// The weighted sum of the values, added to `outs`, in blocks of BLOCK positions whose rows
/// stay in L1: for each head, 64 floats of its output stay in registers while the block's
/// positions are added in order (the same multiply-then-add per element, in the same position
/// order, as `axpy_lanes`), so the cache is read from memory once for the whole group.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn values_avx2(p: &[f32], hd: usize, kv: KvHead, n: usize, outs: &mut [f32]) {
    use crate::kernels::x86::prefetch;
    use std::arch::x86_64::*;
    assert!(n == 0 || kv.v.len() >= (n - 1) * kv.stride + hd);
    for s0 in (0..n).step_by(BLOCK) {
        let s1 = (s0 + BLOCK).min(n);
        for (h, out) in outs.chunks_exact_mut(hd).enumerate() {
            let ph = &p[h * n..][s0..s1];
            let mut c = 0;
            while c + 64 <= hd {
                let o = out.as_mut_ptr().add(c);
                let mut acc = [_mm256_setzero_ps(); 8];
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_loadu_ps(o.add(8 * j));
                }
                for (s, &w) in (s0..).zip(ph) {
                    let (w, row) = (_mm256_set1_ps(w), kv.v.as_ptr().add(s * kv.stride + c));
                    if h == 0 && c == 0 {
                        // the next block's rows, while this one is in use
                        let next = kv.v.as_ptr().wrapping_add((s + BLOCK) * kv.stride);
                        prefetch(next as *const u8, 4 * hd);
                    }
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_add_ps(*a, _mm256_mul_ps(w, _mm256_loadu_ps(row.add(8 * j))));
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(o.add(8 * j), *a);
                }
                c += 64;
            }
            if c < hd {
                for (s, &w) in (s0..).zip(ph) {
                    axpy_lanes(w, &kv.v[s * kv.stride + c..][..hd - c], &mut out[c..]);
                }
            }
        }
    }
}

/// [`values_avx2`] in 512-bit registers, for head sizes that are multiples of 128: 128 floats
/// of a head's output in eight registers, the same operations on every element in the same
/// order, so the same bits. Criterion `attention` from memory: 4.9–5.0 ms against 5.9. (Scores
/// in 512-bit registers, two positions per register, were no faster from memory with any
/// prefetch pattern tried, and 2.7x slower with `array::from_fn` left out of line.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f")]
unsafe fn values_avx512(p: &[f32], hd: usize, kv: KvHead, n: usize, outs: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(hd.is_multiple_of(128) && p.len() * hd == n * outs.len());
    assert!(n == 0 || kv.v.len() >= (n - 1) * kv.stride + hd);
    for s0 in (0..n).step_by(BLOCK) {
        let s1 = (s0 + BLOCK).min(n);
        for (h, out) in outs.chunks_exact_mut(hd).enumerate() {
            let ph = &p[h * n..][s0..s1];
            for c in (0..hd).step_by(128) {
                let o = out.as_mut_ptr().add(c);
                let mut acc = [_mm512_setzero_ps(); 8];
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_loadu_ps(o.add(16 * j));
                }
                for (s, &w) in (s0..).zip(ph) {
                    let (w, r) = (_mm512_set1_ps(w), kv.v.as_ptr().add(s * kv.stride + c));
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_add_ps(*a, _mm512_mul_ps(w, _mm512_loadu_ps(r.add(16 * j))));
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(o.add(16 * j), *a);
                }
            }
        }
    }
}

/// Positions per block of the value pass: 32 rows of a 128-float head are 16 KiB, half of L1.
#[cfg(target_arch = "x86_64")]
const BLOCK: usize = 32;

/// The eight lane sums of [`dot4_avx2`] before the reduction: whole groups of eight elements
/// only (`a` is cut to a multiple of 8 and the `bs` to its length).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn dot4_lanes_avx2(a: &[f32], bs: [&[f32]; 4]) -> [std::arch::x86_64::__m256; 4] {
    use std::arch::x86_64::*;
    let full = a.len() / 8 * 8;
    assert!(bs.iter().all(|b| b.len() >= full));
    let mut v = [_mm256_setzero_ps(); 4];
    for i in (0..full).step_by(8) {
        let x = _mm256_loadu_ps(a.as_ptr().add(i));
        for (v, b) in v.iter_mut().zip(&bs) {
            *v = _mm256_add_ps(*v, _mm256_mul_ps(x, _mm256_loadu_ps(b.as_ptr().add(i))));
        }
    }
    v
}

/// [`reduce_lanes`] of eight vectors at once, the results in order: the same additions
/// (`(l0 + l4) + (l1 + l5)` and `(l2 + l6) + (l3 + l7)`, then their sum), made on lanes of
/// different vectors side by side.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn reduce8_avx2(v: &[std::arch::x86_64::__m256; 8]) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // [l0+l4 … l3+l7 of v[i] | the same of v[i + 4]]
    let fold = |i: usize| {
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(v[i], v[i + 4]),
            _mm256_permute2f128_ps::<0x31>(v[i], v[i + 4]),
        )
    };
    // hadd(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7]
    let (ab, cd) = (
        _mm256_hadd_ps(fold(0), fold(1)),
        _mm256_hadd_ps(fold(2), fold(3)),
    );
    _mm256_hadd_ps(ab, cd)
}

/// `dot_avx2` of one vector with four others, interleaved (each result is computed exactly as
/// `dot_avx2` computes it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn dot4_avx2(a: &[f32], bs: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = bs.iter().fold(a.len(), |n, b| n.min(b.len()));
    let full = n / 8 * 8;
    let v = dot4_lanes_avx2(&a[..full], bs);
    let mut out = [0f32; 4];
    for ((o, v), b) in out.iter_mut().zip(v).zip(&bs) {
        let mut acc = [0f32; 8];
        _mm256_storeu_ps(acc.as_mut_ptr(), v);
        for (l, (x, y)) in a[full..n].iter().zip(&b[full..n]).enumerate() {
            acc[l] += x * y;
        }
        *o = reduce_lanes(acc);
    }
    out
}
