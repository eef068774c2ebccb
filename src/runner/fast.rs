//! The fast runner: SIMD integer kernels reading packed weights straight from the mapping,
//! a KV cache, prompts processed as a batch (every weight row is read once for all prompt
//! tokens), multithreaded over output rows with rayon; one-token steps (decode) go to
//! [`super::decode`], which runs the whole step in one parallel region.

use super::ops::{attend_group, gated, rms_norm, rope_inv_freq, KvCache, KvHead, RopeAt};
use super::weights::{Linear, Weights};
use crate::error::Result;
use crate::format::bnet::DType;
use crate::kernels::{q4::Q8Blocks, tl, Kernel};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::RwLock;

/// int8 activations of a batch of tokens, quantized once and shared by every projection that
/// reads the same input.
#[derive(Default)]
pub struct QuantizedBatch {
    q: Vec<i8>,
    k_pad: usize,
    scales: Vec<f32>,
    sums: Vec<i32>,
    /// TL lookup tables, `chunks · tl_lut_layout().chunk_bytes()` bytes per token (empty unless
    /// a TL projection reads this input).
    lut: Vec<u8>,
    lut_len: usize,
}

impl QuantizedBatch {
    /// Quantizes the tokens of `x` (`k` values each) into this batch's buffers, reusing them.
    fn quantize(&mut self, x: &[f32], k: usize, kern: Kernel) {
        let t = x.len() / k;
        let k_pad = k.div_ceil(256) * 256;
        self.k_pad = k_pad;
        // every byte is written (quantize_act zero-pads), so stale contents do not matter
        self.q.resize(t * k_pad, 0);
        self.lut_len = 0;
        self.scales.clear();
        self.sums.clear();
        // one token, as in decode, stays on its thread; a prompt's tokens run in parallel
        // (serial work here would idle the other cores)
        if t == 1 {
            let (s, sum) = kern.quantize_act(&x[..k], &mut self.q);
            self.scales.push(s);
            self.sums.push(sum);
            return;
        }
        let sq: Vec<(f32, i32)> = x
            .par_chunks_exact(k)
            .zip(self.q.par_chunks_exact_mut(k_pad))
            .map(|(xt, qt)| kern.quantize_act(xt, qt))
            .collect();
        for (s, sum) in sq {
            self.scales.push(s);
            self.sums.push(sum);
        }
    }

    /// The input of projections `ls`: quantized, plus the lookup tables when one of them is TL
    /// and the batch is small enough to use them (built once per token and shared, like the
    /// int8 values).
    pub fn for_layers(x: &[f32], k: usize, kern: Kernel, ls: &[&Linear]) -> Self {
        let mut a = QuantizedBatch::default();
        a.refill(x, k, kern, ls);
        a
    }

    /// [`QuantizedBatch::for_layers`] into this batch's buffers: decode refills one batch per
    /// phase for every layer instead of allocating and zeroing (a down projection's tables
    /// are 144 KiB) 120 times a token, ~0.5% of a one-thread step.
    pub fn refill(&mut self, x: &[f32], k: usize, kern: Kernel, ls: &[&Linear]) {
        self.quantize(x, k, kern);
        let lookup = self.tokens() <= TL_LUT_TOKENS;
        if let Some(l) = ls.iter().find(|l| l.dtype == DType::TL).filter(|_| lookup) {
            let chunks = l.tl_chunks();
            self.lut_len = chunks * kern.tl_lut_layout().chunk_bytes();
            // every table byte is written (tests/kernels.rs builds over a filled buffer)
            self.lut.resize(self.tokens() * self.lut_len, 0);
            let build = |(q, lut): (&[i8], &mut [u8])| kern.tl_lut(q, chunks, lut);
            if self.tokens() > 1 {
                self.q
                    .par_chunks_exact(self.k_pad)
                    .zip(self.lut.par_chunks_exact_mut(self.lut_len))
                    .for_each(build);
            } else {
                self.q
                    .chunks_exact(self.k_pad)
                    .zip(self.lut.chunks_exact_mut(self.lut_len))
                    .for_each(build);
            }
        }
    }

    fn tokens(&self) -> usize {
        self.scales.len()
    }

    fn lut(&self, tok: usize) -> &[u8] {
        assert!(
            self.lut_len > 0,
            "a TL projection's input must come from QuantizedBatch::for_layers (it has no tables)"
        );
        &self.lut[tok * self.lut_len..(tok + 1) * self.lut_len]
    }
}

/// Rows per parallel task.
const ROWS: usize = 16;

/// f32 results written by whichever thread computed them. The end of the parallel region (or,
/// in decode, a barrier) orders the writes before the reads, so relaxed accesses suffice; they
/// compile to plain loads and stores.
pub(super) struct Shared(Vec<AtomicU32>);

impl Shared {
    pub(super) fn new(n: usize) -> Self {
        Shared((0..n).map(|_| AtomicU32::new(0)).collect())
    }
    pub(super) fn set(&self, i: usize, v: f32) {
        self.0[i].store(v.to_bits(), Ordering::Relaxed);
    }
    /// Hints that elements `i..i + n` will be written soon, so their cache lines are fetched
    /// while other work runs instead of stalling the stores (no-op off x86-64; a hint, so an
    /// out-of-range `i` is harmless).
    #[inline]
    fn prefetch(&self, i: usize, n: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            let p = self.0.as_ptr().wrapping_add(i) as *const u8;
            crate::kernels::x86::prefetch(p, 4 * n);
            // the run's last line, when it is not aligned to lines
            crate::kernels::x86::prefetch(p.wrapping_add((4 * n).saturating_sub(1)), 1);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (i, n);
    }
    pub(super) fn get(&self, i: usize) -> f32 {
        f32::from_bits(self.0[i].load(Ordering::Relaxed))
    }
    pub(super) fn range(&self, r: Range<usize>) -> Vec<f32> {
        r.map(|i| self.get(i)).collect()
    }
    /// The values in place, without copying them out one atomic load at a time (decode's
    /// attention output and FFN product: copying 2560 + 6912 values per layer was ~0.8% of a
    /// one-thread step).
    ///
    /// # Safety
    /// No thread may store into `self` while the slice lives: every store must happen before
    /// this call (a barrier between them), and the next only after the slice is dropped.
    pub(super) unsafe fn view(&self) -> &[f32] {
        // SAFETY: AtomicU32 has the size and alignment of f32; the caller rules out concurrent
        // stores, so these plain reads race with nothing.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<f32>(), self.0.len()) }
    }
    pub(super) fn into_vec(self) -> Vec<f32> {
        self.0
            .into_iter()
            .map(|a| f32::from_bits(a.into_inner()))
            .collect()
    }
}

/// One tile: rows `c·ROWS ..` of `l` (for TL, the 32 rows of block `c`) against every token of
/// the batch, written to `out` as `[token][row]`.
fn tile(kern: Kernel, l: &Linear, a: &QuantizedBatch, c: usize, out: &Shared) {
    if l.dtype == DType::TL {
        // the block re-laid out as T2 rows (a few % of the block's multiply time at 128
        // tokens), then T2's batched kernel, 16 rows at a time as for T2
        let first = tl::ROWS * c;
        if a.lut_len > 0 {
            // a token or two: the tables are cheaper than re-laying the block out
            let mut ys = [0f32; tl::ROWS];
            for tok in 0..a.tokens() {
                let (r0, n) = unit_rows(kern, l, a, tok, c, &mut ys);
                for (i, y) in ys[..n].iter().enumerate() {
                    out.set(tok * l.rows + r0 + i, *y);
                }
            }
            return;
        }
        let rb = tl::t2_row_bytes(l.k);
        TL_SCRATCH.with_borrow_mut(|(cols, t2)| {
            t2.resize(tl::ROWS * rb, 0);
            kern.tl_block_to_t2(l.block(c), l.k, cols, t2);
            for half in (first..(first + tl::ROWS).min(l.rows)).step_by(ROWS) {
                let rows = half..(half + ROWS).min(l.rows);
                t2_tile(kern, |r| &t2[(r - first) * rb..][..rb], l, rows, a, out);
            }
        });
        return;
    }
    t2_tile(
        kern,
        |r| l.row(r),
        l,
        c * ROWS..((c + 1) * ROWS).min(l.rows),
        a,
        out,
    )
}

/// `rows` of a T2 or B1 projection (`row(r)`: the packed row) against every token. Tiles of
/// ROWS rows × 4 tokens keep both the rows' codes and the four tokens' activations in L1 while
/// they are multiplied; each token's ROWS results are contiguous.
fn t2_tile<'r>(
    kern: Kernel,
    row: impl Fn(usize) -> &'r [u8],
    l: &Linear,
    rows: Range<usize>,
    a: &QuantizedBatch,
    out: &Shared,
) {
    debug_assert!(rows.len() <= ROWS);
    let t = a.tokens();
    let act = |tok: usize| &a.q[tok * a.k_pad..(tok + 1) * a.k_pad];
    let mut tok = 0;
    if l.dtype != DType::B1 {
        let n = rows.len();
        let (mut dots, mut ys) = ([[0i32; ROWS]; 4], [0f32; ROWS]);
        while tok + 4 <= t {
            let acts = [act(tok), act(tok + 1), act(tok + 2), act(tok + 3)];
            // the next group's outputs are four runs of n floats far apart: fetching their
            // lines during this group's multiplies saves the stores a wait (~1–2% of a
            // 128-token projection in alternating runs)
            for u in 4..8 {
                out.prefetch((tok + u) * l.rows + rows.start, n);
            }
            // rows in fours, then the last 0-3 one at a time
            let quads = n / 4 * 4;
            for i in (0..quads).step_by(4) {
                let r = rows.start + i;
                let quad = [row(r), row(r + 1), row(r + 2), row(r + 3)];
                for (q, ds) in kern.dot_t2_offset_4x4(quad, acts).into_iter().enumerate() {
                    for (u, d) in ds.into_iter().enumerate() {
                        dots[u][i + q] = d - a.sums[tok + u];
                    }
                }
            }
            for (i, r) in rows.clone().enumerate().skip(quads) {
                for (u, d) in kern.dot_t2_offset_x4(row(r), acts).into_iter().enumerate() {
                    dots[u][i] = d - a.sums[tok + u];
                }
            }
            for (u, d) in dots.iter().enumerate() {
                l.finish_into(&d[..n], a.scales[tok + u], &mut ys[..n]);
                for (i, y) in ys[..n].iter().enumerate() {
                    out.set((tok + u) * l.rows + rows.start + i, *y);
                }
            }
            tok += 4;
        }
    }
    for tok in tok..t {
        for r in rows.clone() {
            out.set(tok * l.rows + r, packed_dot(kern, l, row(r), a, tok));
        }
    }
}

thread_local! {
    /// Per worker thread: the column codes and T2 rows of the TL block being re-laid out.
    static TL_SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<u8>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// Batches of at most this many tokens multiply TL blocks by table lookup (decode is one
/// token); larger ones re-lay each block out as T2 rows once and run T2's four-token kernel,
/// which does more multiplies per instruction than the lookups.
const TL_LUT_TOKENS: usize = 2;

/// Prompt tasks of a projection: tiles of ROWS rows, or TL blocks.
fn tiles(l: &Linear) -> usize {
    match l.dtype {
        DType::TL => l.units(),
        _ => l.rows.div_ceil(ROWS),
    }
}

/// The outputs of unit `u` of `l` (row `u`, or TL block `u`) for token `tok`, written to the
/// front of `ys`: returns the first row's index and how many (one, or up to 32). Written in
/// place: returning the 32-value buffer by value copied it once per T2 row, ~18% of a T2
/// decode step in perf.
#[inline]
pub(super) fn unit_rows(
    kern: Kernel,
    l: &Linear,
    a: &QuantizedBatch,
    tok: usize,
    u: usize,
    ys: &mut [f32; tl::ROWS],
) -> (usize, usize) {
    if l.dtype == DType::TL {
        block_out(
            l,
            u,
            &kern.dot_tl(l.block(u), a.lut(tok)),
            a.scales[tok],
            ys,
        )
    } else {
        ys[0] = packed_dot(kern, l, l.row(u), a, tok);
        (u, 1)
    }
}

/// [`unit_rows`] of two units (each a projection and a unit of it; one input length and
/// layout) into `ys[0]` and `ys[1]`, returning each one's first row and row count: TL blocks go
/// through one kernel call for both, which reads each table line once for the two.
#[inline]
pub(super) fn unit_rows_pair(
    kern: Kernel,
    units: [(&Linear, usize); 2],
    a: &QuantizedBatch,
    tok: usize,
    ys: [&mut [f32; tl::ROWS]; 2],
) -> [(usize, usize); 2] {
    let [y0, y1] = ys;
    let [(l0, u0), (l1, u1)] = units;
    // gate and up of mixed layouts are refused at load; matvec pairs only all-TL projections
    debug_assert_eq!(l0.dtype, l1.dtype, "a pair of one layout");
    if l0.dtype != DType::TL {
        return [
            unit_rows(kern, l0, a, tok, u0, y0),
            unit_rows(kern, l1, a, tok, u1, y1),
        ];
    }
    let [s0, s1] = kern.dot_tl_pair(l0.block(u0), l1.block(u1), a.lut(tok));
    [
        block_out(l0, u0, &s0, a.scales[tok], y0),
        block_out(l1, u1, &s1, a.scales[tok], y1),
    ]
}

/// Rows `ua .. ua + n` of T2 projection `la` and `ub .. ub + n` of `lb` (one input) against
/// token `tok`, finished into `ys[0][..n]` and `ys[1][..n]`: the two runs are read side by
/// side through one kernel call ([`Kernel::dot_t2_offset_rows`]), each row the value of
/// [`unit_rows`].
pub(super) fn t2_rows_pair(
    kern: Kernel,
    [(la, ua), (lb, ub)]: [(&Linear, usize); 2],
    n: usize,
    a: &QuantizedBatch,
    tok: usize,
    ys: [&mut [f32; tl::ROWS]; 2],
) {
    assert!(la.dtype == DType::T2 && lb.dtype == DType::T2 && la.unit_bytes == lb.unit_bytes);
    let act = &a.q[tok * a.k_pad..(tok + 1) * a.k_pad];
    let (mut da, mut db) = ([0i32; tl::ROWS], [0i32; tl::ROWS]);
    let streams = [la.rows_from(ua, n), lb.rows_from(ub, n)];
    kern.dot_t2_offset_rows(streams, la.unit_bytes, act, [&mut da[..n], &mut db[..n]]);
    let [ya, yb] = ys;
    for (y, (l, d)) in [ya, yb].into_iter().zip([(la, &da), (lb, &db)]) {
        for (y, &d) in y[..n].iter_mut().zip(d) {
            *y = l.finish(d - a.sums[tok], a.scales[tok]);
        }
    }
}

/// TL block `u`'s row sums finished into the front of `ys`: its first row and how many rows
/// it has (32, fewer in a projection's last block).
#[inline]
fn block_out(
    l: &Linear,
    u: usize,
    sums: &[i32; tl::ROWS],
    scale: f32,
    ys: &mut [f32; tl::ROWS],
) -> (usize, usize) {
    let n = (l.rows - tl::ROWS * u).min(tl::ROWS);
    l.finish_into(&sums[..n], scale, &mut ys[..n]);
    (tl::ROWS * u, n)
}

/// A T2 or B1 `row` of `l` (stored, or re-laid out from TL) against token `tok`.
#[inline]
fn packed_dot(kern: Kernel, l: &Linear, row: &[u8], a: &QuantizedBatch, tok: usize) -> f32 {
    let act = &a.q[tok * a.k_pad..(tok + 1) * a.k_pad];
    let d = match l.dtype {
        DType::B1 => 2 * kern.dot_b1_ones(row, act),
        _ => kern.dot_t2_offset(row, act),
    };
    l.finish(d - a.sums[tok], a.scales[tok])
}

/// `Y[t, r] = W[r] · x[t]` for several projections that read the same input (q, k, v; gate,
/// up), in one parallel region: fewer fork-joins per token, which matters when decoding.
/// Written straight into `[token][row]`: computing `[row][token]` and transposing after cost
/// ~7% of a 128-token prompt, the transpose reading one cache line per element.
pub fn matmul_many(kern: Kernel, ls: &[&Linear], a: &QuantizedBatch) -> Vec<Vec<f32>> {
    let t = a.tokens();
    let outs: Vec<Shared> = ls
        .iter()
        .map(|l| {
            debug_assert_eq!(a.k_pad, l.k_padded());
            Shared::new(l.rows * t)
        })
        .collect();
    let tasks: Vec<(usize, usize)> = ls
        .iter()
        .enumerate()
        .flat_map(|(li, l)| (0..tiles(l)).map(move |c| (li, c)))
        .collect();
    tasks
        .into_par_iter()
        .for_each(|(li, c)| tile(kern, ls[li], a, c, &outs[li]));
    outs.into_iter().map(Shared::into_vec).collect()
}

/// `Y[t, r] = W[r] · x[t]` for the batch, parallel over row blocks.
pub fn matmul(kern: Kernel, l: &Linear, a: &QuantizedBatch) -> Vec<f32> {
    matmul_many(kern, &[l], a).pop().expect("one output")
}

/// A generation session: the KV cache of one sequence.
pub struct Session<'w, 'a> {
    pub(super) w: &'w Weights<'a>,
    pub(super) kern: Kernel,
    pub(super) inv_freq: Vec<f32>,
    /// Cached keys and values of every layer. Locked only so one decode thread can append
    /// while the others wait ([`super::decode`]).
    pub(super) k_cache: RwLock<KvCache>,
    pub(super) v_cache: RwLock<KvCache>,
    pub(super) pos: usize,
}

impl<'w, 'a> Session<'w, 'a> {
    pub fn new(w: &'w Weights<'a>, kern: Kernel) -> Self {
        let n = w.layers.len();
        let (nkv, hd) = (w.cfg.num_key_value_heads as usize, w.cfg.head_dim as usize);
        Session {
            inv_freq: rope_inv_freq(w.cfg.rope_theta, hd),
            w,
            kern,
            k_cache: RwLock::new(KvCache::new(n, nkv, hd)),
            v_cache: RwLock::new(KvCache::new(n, nkv, hd)),
            pos: 0,
        }
    }

    /// Makes room in the KV cache for `positions` in all (capped at the model's context), so
    /// that the steps up to there never grow it (see [`KvCache::reserve`]). Optional: the
    /// cache grows as needed either way.
    pub fn reserve(&mut self, positions: usize) {
        let positions = positions.min(self.w.cfg.max_position_embeddings as usize);
        for c in [&mut self.k_cache, &mut self.v_cache] {
            c.get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .reserve(positions);
        }
    }

    /// Tokens processed so far.
    pub fn len(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// Bytes of cached keys and values: what the next decode step's attention reads, less the
    /// position it adds.
    pub fn kv_bytes(&self) -> u64 {
        let lock = |c: &RwLock<KvCache>| c.read().unwrap_or_else(|e| e.into_inner()).bytes();
        lock(&self.k_cache) + lock(&self.v_cache)
    }

    /// Appends `ids` and returns the logits of every new position (`all`) or of the last.
    pub fn forward(&mut self, ids: &[u32], all: bool) -> Result<Vec<Vec<f32>>> {
        super::check_ids(&self.w.cfg, ids)?;
        let c = &self.w.cfg;
        if self.pos + ids.len() > c.max_position_embeddings as usize {
            return Err(crate::Error::Usage(format!(
                "{} tokens exceed the model's context of {} (max_position_embeddings)",
                self.pos + ids.len(),
                c.max_position_embeddings
            )));
        }
        if ids.len() == 1 {
            return Ok(vec![super::decode::step(self, ids[0])]);
        }
        let (hd, nh, nkv) = (
            c.head_dim as usize,
            c.num_attention_heads as usize,
            c.num_key_value_heads as usize,
        );
        let (hidden, eps, t) = (c.hidden_size as usize, c.rms_norm_eps as f32, ids.len());
        let scale = (hd as f64).powf(-0.5) as f32;
        let kern = self.kern;
        let mut x = vec![0f32; t * hidden];
        for (xt, &id) in x.chunks_exact_mut(hidden).zip(ids) {
            self.w.embed.row(id as usize, xt);
        }
        let norm_rows = |x: &[f32], g: &[f32], k: usize| {
            let mut o = vec![0f32; x.len()];
            o.par_chunks_exact_mut(k)
                .zip(x.par_chunks_exact(k))
                .for_each(|(ot, xt)| rms_norm(kern, xt, g, eps, ot));
            o
        };
        let ropes: Vec<RopeAt> = (0..t)
            .map(|i| RopeAt::new(self.pos + i, &self.inv_freq))
            .collect();
        for (li, layer) in self.w.layers.iter().enumerate() {
            let xn = QuantizedBatch::for_layers(
                &norm_rows(&x, &layer.input_norm, hidden),
                hidden,
                kern,
                &[&layer.q, &layer.k, &layer.v],
            );
            let mut qkv = matmul_many(kern, &[&layer.q, &layer.k, &layer.v], &xn).into_iter();
            let (mut q, mut k, v) = (
                qkv.next().expect("q"),
                qkv.next().expect("k"),
                qkv.next().expect("v"),
            );
            for (i, (qt, kt)) in q
                .chunks_exact_mut(nh * hd)
                .zip(k.chunks_exact_mut(nkv * hd))
                .enumerate()
            {
                qt.chunks_exact_mut(hd).for_each(|h| ropes[i].apply(h));
                kt.chunks_exact_mut(hd).for_each(|h| ropes[i].apply(h));
            }
            let kc = self.k_cache.get_mut().unwrap_or_else(|e| e.into_inner());
            kc.push(li, &k);
            let vc = self.v_cache.get_mut().unwrap_or_else(|e| e.into_inner());
            vc.push(li, &v);
            let (kc, vc) = (&*kc, &*vc);
            let mut attn = vec![0f32; t * nh * hd];
            let pos0 = self.pos;
            // per token, one kv head and the query heads that share it per task
            let group = nh / nkv;
            attn.par_chunks_mut(group * hd)
                .enumerate()
                .for_each(|(i, out)| {
                    let (tok, kv) = (i / nkv, i % nkv);
                    let qs = &q[tok * nh * hd + kv * group * hd..][..group * hd];
                    attend_group(
                        self.kern,
                        qs,
                        hd,
                        KvHead::of(kc, vc, li, kv),
                        pos0 + tok + 1,
                        scale,
                        out,
                    );
                });
            if let Some(g) = &layer.attn_sub_norm {
                attn = norm_rows(&attn, g, nh * hd);
            }
            let a = QuantizedBatch::for_layers(&attn, nh * hd, kern, &[&layer.o]);
            let o = matmul(kern, &layer.o, &a);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let xn = QuantizedBatch::for_layers(
                &norm_rows(&x, &layer.post_norm, hidden),
                hidden,
                kern,
                &[&layer.gate, &layer.up],
            );
            let mut gu = matmul_many(kern, &[&layer.gate, &layer.up], &xn).into_iter();
            let (g, u) = (gu.next().expect("gate"), gu.next().expect("up"));
            let ff = layer.gate.rows;
            let mut m = vec![0f32; g.len()];
            let act = self.w.activation();
            m.par_chunks_mut(ff)
                .zip(g.par_chunks(ff).zip(u.par_chunks(ff)))
                .for_each(|(mt, (gt, ut))| gated(kern, act, gt, ut, mt));
            if let Some(s) = &layer.ffn_sub_norm {
                m = norm_rows(&m, s, ff);
            }
            let d = matmul(
                kern,
                &layer.down,
                &QuantizedBatch::for_layers(&m, ff, kern, &[&layer.down]),
            );
            x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        }
        self.pos += t;
        let first = if all { 0 } else { t - 1 };
        let h = norm_rows(&x[first * hidden..], &self.w.norm, hidden);
        Ok(lm_head_many(self.w, &h, kern))
    }
}

/// Positions per pass over a head row in [`lm_head_many`] (2, 4 and 8 measured within 5% of
/// each other on perplexity runs; 4 was the fastest).
const HEAD_POSITIONS: usize = 4;

/// Logits of several hidden states (`hs`: `[position][hidden]`), each with the bits of
/// [`lm_head`]. The head is read from memory once for all positions, 64 rows (kept in L2) at a
/// time, each row widened or unpacked once per HEAD_POSITIONS positions: reading the whole head
/// again for every position made perplexity and logit dumps memory-bound on it (bf16 head:
/// `--ppl` 2.2–2.4x faster; Q4 head: see [`Kernel::dot_q4_many`]).
pub fn lm_head_many(w: &Weights, hs: &[f32], kern: Kernel) -> Vec<Vec<f32>> {
    let head = &w.lm_head;
    let k = head.k;
    let t = hs.len() / k;
    if t == 1 {
        return vec![lm_head(w, hs, kern)];
    }
    const TILE: usize = 64;
    let rows = head.rows;
    // one buffer per position, handed back as it is (a ppl window's logits are hundreds of MB)
    let outs: Vec<Shared> = (0..t).map(|_| Shared::new(rows)).collect();
    let h = |p: usize| &hs[p * k..(p + 1) * k];
    // a Q4 head multiplies each position's hidden state quantized per block, as in lm_head
    let q4 = head.dtype == DType::Q4;
    let q8: Vec<Q8Blocks> = if q4 {
        hs.par_chunks_exact(k).map(Q8Blocks::new).collect()
    } else {
        Vec::new()
    };
    let many = |r: usize, p: usize| -> [f32; HEAD_POSITIONS] {
        if q4 {
            kern.dot_q4_many(head.stored_row(r), std::array::from_fn(|u| &q8[p + u]))
        } else {
            head_row_many(w, kern, std::array::from_fn(|u| h(p + u)), r)
        }
    };
    let one = |r: usize, p: usize| head_row(w, kern, h(p), q8.get(p), r);
    (0..rows.div_ceil(TILE)).into_par_iter().for_each(|c| {
        let tile = c * TILE..((c + 1) * TILE).min(rows);
        let mut p = 0;
        while p + HEAD_POSITIONS <= t {
            for r in tile.clone() {
                for (u, y) in many(r, p).into_iter().enumerate() {
                    outs[p + u].set(r, y);
                }
            }
            p += HEAD_POSITIONS;
        }
        for (p, out) in outs.iter().enumerate().skip(p) {
            for r in tile.clone() {
                out.set(r, one(r, p));
            }
        }
    });
    outs.into_iter().map(Shared::into_vec).collect()
}

/// Logit `r` of a float or int8 head for `P` hidden states at once.
fn head_row_many<const P: usize>(w: &Weights, kern: Kernel, hs: [&[f32]; P], r: usize) -> [f32; P] {
    let head = &w.lm_head;
    let ys = crate::kernels::float::dot_row_many(kern, head.dtype, head.stored_row(r), hs);
    ys.map(|y| head.scaled(r, y))
}

/// Logits of one hidden state, parallel over vocabulary rows, read from the mapping in place.
/// A Q4 head multiplies int8 activations (block-quantized once per token, [`Q8Blocks`]); float
/// and int8 heads take the f32 hidden state as it is.
pub fn lm_head(w: &Weights, h: &[f32], kern: Kernel) -> Vec<f32> {
    let q8 = (w.lm_head.dtype == DType::Q4).then(|| Q8Blocks::new(h));
    let mut out = vec![0f32; w.lm_head.rows];
    out.par_chunks_mut(256).enumerate().for_each(|(c, o)| {
        for (i, y) in o.iter_mut().enumerate() {
            *y = head_row(w, kern, h, q8.as_ref(), c * 256 + i);
        }
    });
    out
}

/// Logit `r` of hidden state `h` (`q8`: `h` block-quantized, for a Q4 head).
#[inline]
pub(super) fn head_row(
    w: &Weights,
    kern: Kernel,
    h: &[f32],
    q8: Option<&Q8Blocks>,
    r: usize,
) -> f32 {
    match q8 {
        Some(a) => kern.dot_q4(w.lm_head.stored_row(r), a),
        None => {
            let [y] = head_row_many(w, kern, [h], r);
            y
        }
    }
}
